"""The ingest service process: the WAL receiver, gRPC ``pagestore.ingest.v1.Ingest``.

Adapts RPCs to IngestManager (services/ingest/manager.py); at startup it resumes
streaming for every attached timeline, at shutdown it flushes what is in memory.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pagestore import metrics, values
from pagestore.errors import BadRequest
from pagestore.grpcutil import loop_status
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.proto import common_pb2, ingest_pb2, ingest_pb2_grpc
from pagestore.service import ServiceContext, run_service
from services.ingest.manager import IngestManager, TimelineEntry
from services.ingest.timeline import IngestSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import grpc
    from prometheus_client.metrics_core import Metric

    Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_WAIT_MS = 30_000


def parse_timeline_ref(ref: common_pb2.TimelineRef) -> tuple[TenantId, TimelineId]:
    try:
        return TenantId.parse(ref.tenant_id), TimelineId.parse(ref.timeline_id)
    except ValueError as e:
        raise BadRequest(f"timeline: {e}") from None


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(self, manager: IngestManager) -> None:
        self.manager = manager

    def lsns(self, e: TimelineEntry) -> ingest_pb2.TimelineLsns:
        rx = e.receiver
        tli = e.tli
        return ingest_pb2.TimelineLsns(
            last_record_lsn=int(tli.last_record_lsn),
            disk_consistent_lsn=int(tli.disk_consistent_lsn),
            remote_consistent_lsn=int(tli.remote_consistent_lsn or 0),
            flush_reported_lsn=int(rx.flush_reported) if rx else 0,
            min_readable_lsn=int(e.min_readable_lsn), prev_record_lsn=int(tli.prev_record_lsn),
            state=rx.state if rx else "idle", loops=loop_status(self.manager.loops(e)))

    async def AttachTimeline(self, request: ingest_pb2.AttachTimelineRequest,
                             context: Context) -> ingest_pb2.TimelineLsns:
        tenant, timeline = parse_timeline_ref(request.timeline)
        return self.lsns(await self.manager.attach(tenant, timeline, request.wal_source))

    async def WaitForLsn(self, request: ingest_pb2.WaitForLsnRequest,
                         context: Context) -> ingest_pb2.TimelineLsns:
        tenant, timeline = parse_timeline_ref(request.timeline)
        timeout = (request.timeout_ms or DEFAULT_WAIT_MS) / 1000
        return self.lsns(await self.manager.wait_for_lsn(tenant, timeline, Lsn(request.lsn),
                                                         timeout))

    async def GetTimelineLsns(self, request: common_pb2.TimelineRef,
                              context: Context) -> ingest_pb2.TimelineLsns:
        tenant, timeline = parse_timeline_ref(request)
        return self.lsns(self.manager.entry(tenant, timeline))

    async def DetachTimeline(self, request: ingest_pb2.DetachTimelineRequest,
                             context: Context) -> ingest_pb2.TimelineLsns:
        tenant, timeline = parse_timeline_ref(request.timeline)
        return self.lsns(await self.manager.detach(tenant, timeline, flush=request.flush))

    async def ResumeTimeline(self, request: common_pb2.TimelineRef,
                             context: Context) -> ingest_pb2.TimelineLsns:
        tenant, timeline = parse_timeline_ref(request)
        return self.lsns(await self.manager.resume(tenant, timeline))

    async def AttachSource(self, request: ingest_pb2.AttachSourceRequest,
                           context: Context) -> ingest_pb2.AttachSourceResponse:
        tenant, timeline = parse_timeline_ref(request.timeline)
        # Shielded: a caller that goes away (deadline, Ctrl-C) must not cut the switch
        # short between the catalog commit and the receiver start; it runs to its end
        # (bounded by its own timeouts) and `timeline status` shows the outcome.
        entry, note = await asyncio.shield(
            self.manager.attach_source(tenant, timeline, request.wal_source))
        return ingest_pb2.AttachSourceResponse(lsns=self.lsns(entry), old_slot_note=note)

    async def CheckpointTimeline(self, request: common_pb2.TimelineRef,
                                 context: Context) -> ingest_pb2.TimelineLsns:
        tenant, timeline = parse_timeline_ref(request)
        return self.lsns(await self.manager.checkpoint(tenant, timeline, CHECKPOINT_TIMEOUT))

    async def SubscribeWal(self, request: ingest_pb2.SubscribeWalRequest,
                           context: Context) -> AsyncIterator[ingest_pb2.WalBatch]:
        tenant, timeline = parse_timeline_ref(request.timeline)
        key_start = request.key_start or b""
        key_end = request.key_end or b"\xff" * 19
        async for batch in self.manager.subscribe(tenant, timeline, Lsn(request.from_lsn),
                                                  key_start, key_end):
            yield ingest_pb2.WalBatch(
                packed_values=values.pack_values(batch.values),
                last_record_lsn=int(batch.last_record_lsn),
                disk_consistent_lsn=int(batch.disk_consistent_lsn))


#: How long a checkpoint waits for its flush.
CHECKPOINT_TIMEOUT = 60.0


def collect_metrics(manager: IngestManager) -> Iterator[Metric]:
    """Per-timeline ingest state for /metrics: LSNs, lag behind the WAL source, records."""
    labels = ["tenant_id", "timeline_id"]
    lag_bytes = GaugeMetricFamily("pagestore_ingest_lag_bytes", "WAL the source has "
                                  "(its reported end of WAL) that ingest has not received.",
                                  labels=labels)
    lag_seconds = GaugeMetricFamily("pagestore_ingest_lag_seconds", "How long the oldest "
                                    "WAL the source reported and ingest has not received "
                                    "yet has been waiting (0: caught up).", labels=labels)
    records = CounterMetricFamily("pagestore_wal_records", "WAL records ingested (since "
                                  "the timeline was loaded by this process).", labels=labels)
    last = GaugeMetricFamily("pagestore_last_record_lsn", "The end of the last WAL record "
                             "ingested.", labels=labels)
    disk = GaugeMetricFamily("pagestore_disk_consistent_lsn", "The LSN up to which "
                             "ingested WAL is in layer files.", labels=labels)
    for (tenant, timeline), e in list(manager.timelines.items()):
        ids = [str(tenant), str(timeline)]
        records.add_metric(ids, e.tli.records)
        last.add_metric(ids, int(e.tli.last_record_lsn))
        disk.add_metric(ids, int(e.tli.disk_consistent_lsn))
        if e.receiver is not None:
            got = int(e.receiver.received_lsn)
            lag_bytes.add_metric(ids, e.receiver.lag.bytes_behind(got))
            lag_seconds.add_metric(ids, e.receiver.lag.seconds_behind(got))
    yield from (lag_bytes, lag_seconds, records, last, disk)


async def setup(ctx: ServiceContext) -> None:
    assert ctx.catalog is not None
    cfg = ctx.config.ingest
    # Leave the stack's stop a margin after draining before it would kill the process.
    budget = max(1.0, float(ctx.config.shutdown_timeout) - 5.0)
    manager = IngestManager(ctx.catalog, ctx.workdir,
                            IngestSettings(cfg.checkpoint_distance, float(cfg.checkpoint_timeout)),
                            shutdown_budget=budget, layer_files=ctx.layer_files)
    ingest_pb2_grpc.add_IngestServicer_to_server(IngestServicer(manager), ctx.grpc.server)
    metrics.register_collector(lambda: collect_metrics(manager))
    await manager.start_existing()
    ctx.grpc.on_shutdown.append(manager.shutdown)


def main() -> int:
    return run_service("ingest", setup, uses_catalog=True)


if __name__ == "__main__":
    sys.exit(main())
