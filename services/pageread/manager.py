"""PageReadManager: the timelines the page-read service serves.

Rules:
- A timeline is loaded on its first request: its catalog row (unknown tenant or timeline
  is NotFound), its layers (LayerMap) and a subscription to the ingest service's recent
  WAL from the layer files' disk_consistent_lsn.
- A LISTEN on the catalog's ``pagestore_layers`` channel reloads a timeline's layer map
  when ingest registers a layer, and drops the part of the recent tail it covers.
  Reloads of one timeline run one at a time, read the timeline row and its layers from
  one snapshot, and apply only a map whose ``layers_version`` is newer than the one held.
- The tail follower is a supervised loop (pagestore.supervise): if the subscription
  ends or fails, it is resumed from the (reloaded) layer map's disk_consistent_lsn after
  a backoff; values ingest sends again are skipped (RecentTail); reads meanwhile wait
  (bounded) for LSNs they need.  When the tail outgrows ``pageread.max_tail_bytes`` the
  follower leaves the subscription and waits for layer files to cover the tail: reads
  then wait for the next layer file instead of memory growing without bound.
- Redo goes to the redo service with the cluster settings (data checksums, wal_log_hints)
  from the timeline's control file.  The pages that requests need redone within one turn
  of the event loop (the concurrent requests of every stream and timeline) go out as one
  RedoBatch (RedoBatcher), up to REDO_BATCH_MAX pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import TYPE_CHECKING

import grpc
import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy.engine import make_url

from pagestore import failpoints, values
from pagestore.catalog import repo
from pagestore.catalog.db import make_sessionmaker
from pagestore.config import tenant_settings
from pagestore.errors import (
    FailedPrecondition,
    LsnOutOfRange,
    PagestoreError,
    TenantNotFound,
    TimelineNotFound,
    Unavailable,
    from_rpc_error,
)
from pagestore.grpcutil import channel
from pagestore.keys import controlfile_key
from pagestore.layers.layermap import LayerMap, ValueChain
from pagestore.lsn import Lsn
from pagestore.proto import common_pb2, ingest_pb2, ingest_pb2_grpc, redo_pb2, redo_pb2_grpc
from pagestore.redo.context import RedoContext
from pagestore.supervise import SupervisedLoop
from pagestore.timeline import timeline_dir
from services.pageread.timeline import TimelineReader

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    import sqlalchemy as sa
    from prometheus_client.metrics_core import Metric

    from pagestore.config import Config
    from pagestore.ids import TenantId, TimelineId
    from pagestore.layers.desc import LayerDesc
    from pagestore.remote.ondemand import LayerFiles

log = logging.getLogger(__name__)

#: The tail follower retries at least this often while ingest is away, so reads see new
#: WAL soon after ingest is back.
FOLLOWER_BACKOFF_MAX = 5.0
#: While the tail is full, reload the layer map at least this often.
TAIL_FULL_RECHECK = 10.0

#: Pages redone in one RedoBatch at most (a request asks for up to 32 or
#: pageread.max_blocks_per_request blocks; many requests' pages share a batch).
REDO_BATCH_MAX = 256


class RedoBatcher:
    """Redo requests submitted within one turn of the event loop go out together.

    ``submit`` queues a request list and waits; the first submit of a turn schedules a
    flush for the end of that turn (``call_soon``), which sends everything queued as
    RedoBatch calls of up to REDO_BATCH_MAX pages and hands each caller its own results
    in order.  A failed call fails the callers in it, and only them.  ``batches`` and
    ``pages`` count what went out (their ratio is the mean batch size)."""

    def __init__(self, send: Callable[[list[redo_pb2.RedoRequest]],
                                      Awaitable[list[bytes | Exception]]]) -> None:
        self._send = send
        self._queued: list[tuple[list[redo_pb2.RedoRequest],
                                 asyncio.Future[list[bytes | Exception]]]] = []
        self._flush_scheduled = False
        self._running: set[asyncio.Future[None]] = set()
        self.batches = 0
        self.pages = 0

    async def submit(self, reqs: list[redo_pb2.RedoRequest]) -> list[bytes | Exception]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[bytes | Exception]] = loop.create_future()
        self._queued.append((reqs, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        group: list[tuple[list[redo_pb2.RedoRequest],
                          asyncio.Future[list[bytes | Exception]]]] = []
        size = 0
        for item in queued:
            if group and size + len(item[0]) > REDO_BATCH_MAX:
                self._start(group)
                group, size = [], 0
            group.append(item)
            size += len(item[0])
        if group:
            self._start(group)

    def _start(self, group: list[tuple[list[redo_pb2.RedoRequest],
                                       asyncio.Future[list[bytes | Exception]]]]) -> None:
        task = asyncio.ensure_future(self._run(group))
        self._running.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._running.discard)

    async def _run(self, group: list[tuple[list[redo_pb2.RedoRequest],
                                           asyncio.Future[list[bytes | Exception]]]]) -> None:
        reqs = [r for item in group for r in item[0]]
        self.batches += 1
        self.pages += len(reqs)
        try:
            results = await self._send(reqs)
            if len(results) != len(reqs):
                raise Unavailable(f"Read error: the redo service answered {len(results)} of "
                                  f"{len(reqs)} pages")
        except BaseException as e:
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else
                                      Unavailable("Read error: redo was cancelled"))
            if not isinstance(e, Exception):
                raise
            return
        pos = 0
        for item_reqs, fut in group:
            n = len(item_reqs)
            if not fut.done():  # its caller may have gone (a cancelled stream)
                fut.set_result(results[pos:pos + n])
            pos += n


class PageReadManager:
    def __init__(self, engine: sa.Engine, workdir: Path, config: Config, *,
                 layer_files: LayerFiles | None = None) -> None:
        self.engine = engine
        self.layer_files = layer_files
        self.sessions = make_sessionmaker(engine)
        self.workdir = workdir
        self.config = config
        self.readers: dict[tuple[TenantId, TimelineId], TimelineReader] = {}
        # Cache lookups (hits, misses, size hits, size misses) of readers unloaded since.
        self._retired_lookups = (0, 0, 0, 0)
        self._loading: dict[tuple[TenantId, TimelineId], asyncio.Lock] = {}
        self._reloading: dict[tuple[TenantId, TimelineId], asyncio.Lock] = {}
        self.followers: dict[tuple[TenantId, TimelineId], SupervisedLoop] = {}
        self.listener = SupervisedLoop("pageread", "layer-listener", self._listen,
                                       restart_on_return=True)
        self.tail_full_events = 0
        self._ingest: ingest_pb2_grpc.IngestAsyncStub | None = None
        self._redo: redo_pb2_grpc.RedoAsyncStub | None = None
        self.redo_batcher = RedoBatcher(self._send_redo)
        self._ctx: dict[tuple[TenantId, TimelineId], RedoContext] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # With remote storage: keeps the local layers under the budget (if one is set) by
        # evicting the least recently used, and shows what came over the network.
        self.evictor: SupervisedLoop | None = None
        if layer_files is not None and layer_files.storage is not None:
            self.evictor = SupervisedLoop("pageread", "eviction", self._evict,
                                          restart_on_return=True)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ingest = ingest_pb2_grpc.IngestStub(channel(self.config.service_addr("ingest")))
        self._redo = redo_pb2_grpc.RedoStub(channel(self.config.service_addr("redo")))
        self.listener.start()
        if self.evictor is not None:
            self.evictor.start()

    async def shutdown(self) -> None:
        await asyncio.gather(self.listener.stop(), *(f.stop() for f in self.followers.values()),
                             *([self.evictor.stop()] if self.evictor else []))

    def collect_metrics(self) -> Iterator[Metric]:
        """Per-timeline read state and the caches' counters, for /metrics."""
        labels = ["tenant_id", "timeline_id"]
        last = GaugeMetricFamily("pagestore_pageread_last_record_lsn", "The newest LSN "
                                 "the page-read service can serve without waiting.", labels=labels)
        tail = GaugeMetricFamily("pagestore_pageread_tail_bytes", "Recent WAL values held "
                                 "in memory (not yet in a layer file).", labels=labels)
        cache = CounterMetricFamily("pagestore_page_cache_lookups", "Page cache lookups of "
                                    "pages that need redo, by result.", labels=["result"])
        sizes = CounterMetricFamily("pagestore_rel_size_cache_lookups", "Relation size "
                                    "cache lookups, by result.", labels=["result"])
        hits, misses, size_hits, size_misses = self._retired_lookups
        for (tenant, timeline), r in list(self.readers.items()):
            ids = [str(tenant), str(timeline)]
            last.add_metric(ids, int(r.last_record_lsn))
            tail.add_metric(ids, r.tail.bytes)
            hits += r.cache.hits
            misses += r.cache.misses
            size_hits += r.sizes.hits
            size_misses += r.sizes.misses
        cache.add_metric(["hit"], hits)
        cache.add_metric(["miss"], misses)
        sizes.add_metric(["hit"], size_hits)
        sizes.add_metric(["miss"], size_misses)
        yield from (last, tail, cache, sizes)

    def loops(self, tenant: TenantId, timeline: TimelineId) -> list[SupervisedLoop]:
        follower = self.followers.get((tenant, timeline))
        return [*([follower] if follower else []), self.listener,
                *([self.evictor] if self.evictor else [])]

    async def _evict(self, loop: SupervisedLoop) -> None:
        """Keep the local layer files under pageread.layer_disk_budget: evict the least
        recently used ones that have a remote copy (the catalog says which)."""
        files = self.layer_files
        assert files is not None
        budget = self.config.pageread.layer_disk_budget
        shown = f"budget {budget} bytes" if budget else "no budget"
        loop.detail = shown
        while not await loop.sleep(float(self.config.pageread.eviction_period)):
            def run() -> int:
                with self.sessions.begin() as s:
                    uploaded = {timeline_dir(self.workdir, t, tl) / name
                                for t, tl, name in repo.uploaded_layer_files(s)}
                return len(files.evict_to(budget, uploaded))
            n = await asyncio.to_thread(run) if budget else 0
            st = files.stats
            loop.detail = (f"{shown}; evicted {st.evictions} files so far ({n} now); "
                           f"{st.ranged_gets} ranged GETs ({st.ranged_bytes} bytes), "
                           f"{st.downloads} downloads ({st.download_bytes} bytes)")

    def timeline_dir(self, tenant: TenantId, timeline: TimelineId) -> Path:
        return timeline_dir(self.workdir, tenant, timeline)

    # ------------------------------------------------------------------ timelines
    async def reader(self, tenant: TenantId, timeline: TimelineId) -> TimelineReader:
        key = (tenant, timeline)
        r = self.readers.get(key)
        if r is not None:
            return r
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            r = self.readers.get(key)
            if r is not None:
                return r
            row, rows, leases = await asyncio.to_thread(self._load_rows, tenant, timeline)
            layers = LayerMap(self.timeline_dir(tenant, timeline), [],
                              opener=self.layer_files.opener(tenant, timeline)
                              if self.layer_files is not None else None)
            is_branch = row.ancestor_timeline_id is not None
            if (not row.wal_source and not is_branch) or row.state not in ("active",):
                raise TimelineNotFound(f"Not found: timeline {timeline} of tenant {tenant} "
                                       f"has no data to read (state {row.state})")
            ancestor = None
            if row.ancestor_timeline_id is not None:
                ancestor = await self.reader(tenant, row.ancestor_timeline_id)
            cfg = self.config.pageread
            r = TimelineReader(tenant, timeline, layers, min_readable_lsn=row.min_readable_lsn,
                               gc_cutoff_lsn=row.gc_cutoff_lsn,
                               wait_timeout=float(cfg.wait_lsn_timeout),
                               redo=lambda chains, k=key: self._redo_chains(k, chains),  # type: ignore[misc]
                               cache_pages=cfg.page_cache_pages,
                               max_tail_bytes=cfg.max_tail_bytes,
                               refresh=lambda lsn, k=key: self._reload_now(k, lsn),  # type: ignore[misc]
                               offload=self.layer_files is not None
                               and self.layer_files.storage is not None)
            r.apply_layer_map(row.layers_version, rows, row.disk_consistent_lsn)
            r.leases = leases
            if ancestor is not None:
                assert row.ancestor_lsn is not None
                r.set_ancestor(ancestor, row.ancestor_lsn)
            raw = await r.run(r.image, controlfile_key(), Lsn(Lsn.MAX - 1))
            self._ctx[key] = RedoContext.from_control_file(raw) if raw else RedoContext()
            self.readers[key] = r
            self._follow_if_streamed(r, row)
            log.info("timeline loaded layers=%d disk_consistent_lsn=%s layers_version=%d "
                     "tenant=%s timeline=%s", len(rows), row.disk_consistent_lsn,
                     row.layers_version, tenant, timeline)
            return r

    def _follow_if_streamed(self, r: TimelineReader, row: repo.TimelineRecord) -> None:
        """Start the tail follower of a timeline that has a WAL source (at load, or when
        the catalog says a branch got one: ``attach-source``); a branch without one has
        no new WAL to follow."""
        key = (r.tenant_id, r.timeline_id)
        if not row.wal_source or key in self.followers or self.readers.get(key) is not r:
            return
        self.followers[key] = SupervisedLoop(
            "pageread", "tail-follower", lambda loop: self._follow(loop, r),
            tenant=r.tenant_id, timeline=r.timeline_id, restart_on_return=True,
            backoff_max=FOLLOWER_BACKOFF_MAX).start()
        log.info("following the timeline's recent WAL from %s tenant=%s timeline=%s",
                 r.layers_disk_consistent_lsn, r.tenant_id, r.timeline_id)

    def _load_rows(self, tenant: TenantId, timeline: TimelineId
                   ) -> tuple[repo.TimelineRecord, list[LayerDesc], set[int]]:
        """The timeline row and its layers (one snapshot), and its active lease LSNs."""
        with self.sessions.begin() as s:
            row, rows = repo.read_layer_map(s, tenant, timeline)
            leases = repo.active_leases(s, tenant, timeline,
                                        datetime.datetime.now(datetime.UTC))
        return row, rows, {int(x) for x in leases}

    def _forget(self, tenant: TenantId, timeline: TimelineId) -> None:
        """The timeline is gone from the catalog (deleted): stop serving it."""
        key = (tenant, timeline)
        r = self.readers.pop(key, None)
        if r is not None:
            # Counters are cumulative: an unloaded timeline's lookups stay counted.
            h, m, sh, sm = self._retired_lookups
            self._retired_lookups = (h + r.cache.hits, m + r.cache.misses, sh + r.sizes.hits,
                                     sm + r.sizes.misses)
            r.layers.close()
            log.info("timeline no longer in the catalog: unloaded tenant=%s timeline=%s",
                     tenant, timeline)
        follower = self.followers.pop(key, None)
        if follower is not None:
            follower.request_stop()
        self._ctx.pop(key, None)

    def _reload_now(self, key: tuple[TenantId, TimelineId], lsn: Lsn) -> bool:
        """A read found a layer file gone (compaction or GC removed it after the map was
        read): reload the map now, in the reading thread (the event loop or a backup's
        worker), before the notification's reload comes.  Only the layer map is replaced
        here (it is thread-safe); the rest of apply_layer_map follows on the event loop.
        True if the map changed (then the read retries)."""
        r = self.readers.get(key)
        if r is None or self._loop is None:
            return False
        row, rows, leases = self._load_rows(*key)
        applied = r.layers.replace(rows, row.layers_version)
        if lsn < row.gc_cutoff_lsn and int(lsn) not in leases:
            raise LsnOutOfRange(
                f"tried to request a page version that was garbage collected. requested at "
                f"{lsn} gc cutoff {row.gc_cutoff_lsn}")
        if applied:
            log.info("layer map reloaded after a missing layer file layers=%d "
                     "layers_version=%d", len(rows), row.layers_version)
        self._loop.call_soon_threadsafe(r.apply_layer_map, row.layers_version, rows,
                                        row.disk_consistent_lsn)
        return applied

    async def reload_layers(self, r: TimelineReader) -> None:
        """Read the timeline's layer map from the catalog and apply it if newer.  One
        reload of a timeline at a time: a later one always reads a later snapshot."""
        key = (r.tenant_id, r.timeline_id)
        async with self._reloading.setdefault(key, asyncio.Lock()):
            try:
                row, rows, leases = await asyncio.to_thread(self._load_rows, r.tenant_id,
                                                    r.timeline_id)
            except TenantNotFound:
                # The whole tenant left (detached): the timeline goes with it.
                self._forget(r.tenant_id, r.timeline_id)
                raise TimelineNotFound(f"timeline {r.timeline_id} of tenant {r.tenant_id} "
                                       "not found (the tenant is gone)") from None
            except TimelineNotFound:
                self._forget(r.tenant_id, r.timeline_id)
                raise
            if r.apply_layer_map(row.layers_version, rows, row.disk_consistent_lsn):
                r.gc_cutoff_lsn = row.gc_cutoff_lsn
                r.leases = leases
                log.debug("layer map reloaded layers=%d layers_version=%d "
                          "disk_consistent_lsn=%s", len(rows), row.layers_version,
                          row.disk_consistent_lsn)
            self._follow_if_streamed(r, row)

    async def _follow(self, loop: SupervisedLoop, r: TimelineReader) -> None:
        """Keep the recent tail current from the ingest service (one subscription)."""
        assert self._ingest is not None
        limit = self.config.pageread.max_tail_bytes
        try:
            while r.tail.bytes > limit // 2 and not loop.stopping:
                # The tail outgrew its limit: wait until layer files cover most of it
                # (the listener reloads the map on each new layer; reload here too, in
                # case a notification was missed).
                loop.detail = f"tail full ({r.tail.bytes} bytes): waiting for layer files"
                r.layers_changed.clear()
                await self.reload_layers(r)
                if r.tail.bytes > limit // 2:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(r.layers_changed.wait(), TAIL_FULL_RECHECK)
            await self.reload_layers(r)
        except TimelineNotFound:
            loop.finish()
            return
        from_lsn = r.layers_disk_consistent_lsn
        ref = common_pb2.TimelineRef(tenant_id=str(r.tenant_id), timeline_id=str(r.timeline_id))
        loop.detail = f"subscribing from {from_lsn}"
        stream = self._ingest.SubscribeWal(ingest_pb2.SubscribeWalRequest(
            timeline=ref, from_lsn=int(from_lsn)))
        try:
            async for batch in stream:
                loop.detail = "following"
                await failpoints.acheck("pageread-tail-batch")
                r.add_tail(values.unpack_values(batch.packed_values) if batch.packed_values
                           else [(kv.key, kv.lsn, kv.value) for kv in batch.values])
                await r.advance(Lsn(batch.last_record_lsn))
                if r.tail.bytes > limit:
                    self.tail_full_events += 1
                    log.warning("recent tail holds %d bytes, over pageread.max_tail_bytes %d "
                                "(%d times so far): leaving the subscription until layer "
                                "files cover it; reads above %s wait for them", r.tail.bytes,
                                limit, self.tail_full_events, r.last_record_lsn)
                    stream.cancel()
                    return
        except grpc.aio.AioRpcError as e:
            err = from_rpc_error(e)
            if isinstance(err, FailedPrecondition):
                # Ingest flushed past our layer map (or restarted): reload, resubscribe.
                loop.note_error(err)
                loop.detail = f"resubscribing: {err.message}"
                log.info("recent-WAL subscription ended: %s; resubscribing", err.message)
                return
            loop.detail = "ingest unavailable" if isinstance(err, Unavailable) else "failed"
            raise err from None
        loop.detail = "subscription ended; resubscribing"

    async def _listen(self, loop: SupervisedLoop) -> None:
        """LISTEN pagestore_layers: reload a timeline's layer map when it changes."""
        url = make_url(self.config.catalog.url)
        loop.detail = "connecting"
        try:
            async with await psycopg.AsyncConnection.connect(
                    host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                    password=url.password, dbname=url.database, autocommit=True) as conn:
                await conn.execute("LISTEN pagestore_layers")
                loop.detail = "listening"
                # Changes made while not listening: reload every timeline once.
                for r in list(self.readers.values()):
                    await self._reload_quietly(r)
                async for note in conn.notifies():
                    await failpoints.acheck("pageread-notify-reload")
                    tenant, _, timeline = note.payload.partition("/")
                    for (t, tl), r in list(self.readers.items()):
                        if str(t) == tenant and str(tl) == timeline:
                            await self._reload_quietly(r)
        except psycopg.Error as e:
            raise Unavailable(f"catalog LISTEN failed: {e}") from None

    async def _reload_quietly(self, r: TimelineReader) -> None:
        """A reload for the listener: a deleted timeline is unloaded, not an error."""
        with contextlib.suppress(TimelineNotFound):
            await self.reload_layers(r)

    async def grant_lease(self, r: TimelineReader, lsn: Lsn) -> datetime.datetime | None:
        """Hold GC back at ``lsn`` for the tenant's lsn_lease_length; the expiry, or None
        when the LSN is below the GC cutoff already."""

        def write() -> datetime.datetime | None:
            with self.sessions.begin() as s:
                settings = tenant_settings(self.config.tenant,
                                           repo.get_tenant_config(s, r.tenant_id))
                until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                    seconds=float(settings.lsn_lease_length))
                return repo.grant_lease(s, r.tenant_id, r.timeline_id, lsn, until)

        until = await asyncio.to_thread(write)
        if until is not None:
            r.leases.add(int(lsn))
        return until

    # ------------------------------------------------------------------ redo
    async def _redo_chains(self, key: tuple[TenantId, TimelineId],
                           chains: list[ValueChain]) -> list[bytes | Exception]:
        ctx = self._ctx.get(key, RedoContext())
        reqs = [redo_pb2.RedoRequest(
                    key=kb, lsn=int(c.lsn),
                    base_image=c.image if c.image is not None else None,
                    records=[common_pb2.KeyValue(key=kb, lsn=int(lsn), value=v)
                             for lsn, v in c.records],
                    data_checksums=ctx.data_checksums, wal_log_hints=ctx.wal_log_hints)
                for c in chains for kb in (c.key.to_bytes(),)]
        return await self.redo_batcher.submit(reqs)

    async def _send_redo(self, reqs: list[redo_pb2.RedoRequest]) -> list[bytes | Exception]:
        assert self._redo is not None
        try:
            resp = await self._redo.RedoBatch(redo_pb2.RedoBatchRequest(requests=reqs),
                                              timeout=60)
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"Read error: the redo service failed: {e.details()}") from None
        out: list[bytes | Exception] = []
        for res in resp.results:
            if res.grpc_code:
                out.append(PagestoreError(f"Read error: redo failed: {res.error}"))
            else:
                out.append(res.page)
        return out
