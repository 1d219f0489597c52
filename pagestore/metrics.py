"""Prometheus metrics: the series every service exports on ``GET /metrics``.

One module defines every metric (prometheus_client, the process's default registry), so
a name is spelled once and the docs (docs/operations.md, "Metrics") can list them all.
Each service process imports the ones it updates; series a service never touches are
not exported by it (a labelled metric has no sample until a label set is used).

Rules:
- Counters and histograms are updated where the event happens, at the edge of a request
  (one ``observe`` per request, not per page), so the hot paths pay a few microseconds.
- Gauges that describe state someone else owns (ingest lag, layers in the catalog, the
  upload queue) are computed when scraped: by a ``Collector`` over the owner's live
  objects, or by a refresh hook the HTTP handler awaits before rendering (catalog
  queries run in a thread, never on the event loop).
- Labels are bounded: ``service``, a job or error class name, and ``tenant_id`` /
  ``timeline_id`` for per-timeline state (as Neon labels its pageserver series).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from prometheus_client.metrics_core import Metric

#: The content type of the text exposition format (version 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets from 100 us to 60 s: a page from cache to a redo behind a long wait.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets for background jobs (compaction, GC, uploads): 10 ms to 30 min.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0)

# ---------------------------------------------------------------------- every service
ERRORS = Counter(
    "pagestore_errors", "Requests that failed, by the error class they failed with "
    "(pagestore.errors names; 'internal' for an unexpected exception).",
    ["service", "class"])

# ---------------------------------------------------------------------- GetPage
GETPAGE_LATENCY = Histogram(
    "pagestore_getpage_latency_seconds", "Time to answer one GetPage request (all its "
    "blocks), from the request's arrival to its answer, in the service that observed it "
    "(gateway: a pagestream request; pageread: one GetPages request).",
    ["service"], buckets=LATENCY_BUCKETS)
GETPAGE_PAGES = Counter(
    "pagestore_getpage_pages", "Pages answered by GetPage requests.", ["service"])

GATEWAY_BLOCKS_ASKED = Counter(
    "pagestore_gateway_blocks_asked", "GetPage blocks the gateway's clients asked for.")
GATEWAY_UPSTREAM_REQUESTS = Counter(
    "pagestore_gateway_upstream_requests", "GetPageRequests the gateway sent to the "
    "page-read service (blocks_asked / upstream_requests is its coalescing ratio).")
GATEWAY_UPSTREAM_BLOCKS = Counter(
    "pagestore_gateway_upstream_blocks", "Blocks asked for in those GetPageRequests.")

# ---------------------------------------------------------------------- redo
REDO_RECORDS = Counter(
    "pagestore_redo_records", "WAL records applied by the redo service.")
REDO_PAGES = Counter(
    "pagestore_redo_pages", "Pages reconstructed by the redo service.")
REDO_LATENCY = Histogram(
    "pagestore_redo_latency_seconds", "Time the redo service took for one Redo or "
    "RedoBatch call.", buckets=LATENCY_BUCKETS)
REDO_WORKER_DEATHS = Counter(
    "pagestore_redo_worker_deaths", "Redo worker processes that died (the pool restarts).")

# ---------------------------------------------------------------------- housekeeping
JOB_DURATION = Histogram(
    "pagestore_housekeeping_job_seconds", "Duration of housekeeping jobs that ran "
    "(compaction, gc, upload); the _count is the number of runs.", ["job"],
    buckets=JOB_BUCKETS)
JOB_FAILURES = Counter(
    "pagestore_housekeeping_job_failures", "Housekeeping jobs that failed.", ["job"])
LAYERS = Gauge(
    "pagestore_layers", "Layer files in the catalog, by kind (l0, l1, image).", ["kind"])
LAYER_BYTES = Gauge(
    "pagestore_layer_bytes", "Bytes of the layer files in the catalog, by kind.", ["kind"])
REMOTE_UPLOAD_QUEUE = Gauge(
    "pagestore_remote_upload_queue_layers", "Layer files not yet uploaded to remote "
    "storage (only with remote storage configured).")
REMOTE_UPLOAD_QUEUE_BYTES = Gauge(
    "pagestore_remote_upload_queue_bytes", "Bytes of the layer files not yet uploaded.")
HTTP_REQUESTS = Counter(
    "pagestore_http_requests", "Management API requests, by route and status code.",
    ["route", "status"])


class JobTimer:
    """``with JobTimer("gc"): ...``: a run of a housekeeping job for /metrics (its
    duration when it succeeds, a failure when it raises)."""

    __slots__ = ("_job", "_started")

    def __init__(self, job: str) -> None:
        self._job = job
        self._started = 0.0

    def __enter__(self) -> JobTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            JOB_DURATION.labels(self._job).observe(time.perf_counter() - self._started)
        elif issubclass(kind, Exception):
            JOB_FAILURES.labels(self._job).inc()


class FunctionCollector(Collector):
    """A collector whose samples come from a function called at scrape time (state a
    service object owns, read on the scrape's thread: the function must only read)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())


def register_collector(collect: Callable[[], Iterable[Metric]]) -> Collector:
    """Register ``collect`` with the process's registry; returns the collector (pass it
    to ``unregister`` when the owner goes away)."""
    collector = FunctionCollector(collect)
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    REGISTRY.unregister(collector)


def render() -> bytes:
    """Every metric of this process in the text exposition format."""
    return generate_latest(REGISTRY)
