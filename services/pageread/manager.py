"""PageReadManager: the timelines the page-read service serves.

Rules:
- A timeline is loaded on its first request: its catalog row (unknown tenant or timeline
  is NotFound), its layers (LayerMap) and a subscription to the ingest service's recent
  WAL from the layer files' disk_consistent_lsn.
- A LISTEN on the catalog's ``pagestore_layers`` channel reloads a timeline's layer map
  when ingest registers a layer, and drops the part of the recent tail it covers.
- If the subscription ends or fails, it is resumed from the (reloaded) layer map's
  disk_consistent_lsn after a short backoff; reads meanwhile wait (bounded) for LSNs
  they need.
- Redo goes to the redo service, one RedoBatch per request, with the cluster settings
  (data checksums, wal_log_hints) from the timeline's control file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc
import psycopg
from sqlalchemy.engine import make_url

from pagestore.catalog import repo
from pagestore.catalog.db import make_sessionmaker
from pagestore.errors import (
    FailedPrecondition,
    PagestoreError,
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
from services.pageread.timeline import TimelineReader

if TYPE_CHECKING:
    from pathlib import Path

    import sqlalchemy as sa

    from pagestore.config import Config
    from pagestore.ids import TenantId, TimelineId

log = logging.getLogger(__name__)

RESUBSCRIBE_DELAY = 0.5


class PageReadManager:
    def __init__(self, engine: sa.Engine, workdir: Path, config: Config) -> None:
        self.engine = engine
        self.sessions = make_sessionmaker(engine)
        self.workdir = workdir
        self.config = config
        self.readers: dict[tuple[TenantId, TimelineId], TimelineReader] = {}
        self._loading: dict[tuple[TenantId, TimelineId], asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ingest: ingest_pb2_grpc.IngestAsyncStub | None = None
        self._redo: redo_pb2_grpc.RedoAsyncStub | None = None
        self._ctx: dict[tuple[TenantId, TimelineId], RedoContext] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._ingest = ingest_pb2_grpc.IngestStub(channel(self.config.service_addr("ingest")))
        self._redo = redo_pb2_grpc.RedoStub(channel(self.config.service_addr("redo")))
        self._tasks.append(asyncio.create_task(self._listen(), name="layer-notify"))

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t

    def timeline_dir(self, tenant: TenantId, timeline: TimelineId) -> Path:
        return self.workdir / "tenants" / str(tenant) / "timelines" / str(timeline)

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
            row, rows = await asyncio.to_thread(self._load_rows, tenant, timeline)
            layers = LayerMap(self.timeline_dir(tenant, timeline), rows)
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
                               cache_pages=cfg.page_cache_pages)
            r.tail.last_record_lsn = row.disk_consistent_lsn
            r.tail.disk_consistent_lsn = row.disk_consistent_lsn
            if ancestor is not None:
                assert row.ancestor_lsn is not None
                r.ancestor, r.ancestor_lsn = ancestor, row.ancestor_lsn
            raw = r.image(controlfile_key(), Lsn(Lsn.MAX - 1))
            self._ctx[key] = RedoContext.from_control_file(raw) if raw else RedoContext()
            self.readers[key] = r
            if row.wal_source:  # a branch without a compute writing to it has no new WAL
                self._tasks.append(asyncio.create_task(self._follow(r),
                                                       name=f"tail-{timeline}"))
            log.info("timeline loaded layers=%d disk_consistent_lsn=%s tenant=%s timeline=%s",
                     len(layers.layers), row.disk_consistent_lsn, tenant, timeline)
            return r

    def _load_rows(self, tenant: TenantId,
                   timeline: TimelineId) -> tuple[repo.TimelineRecord, list[repo.LayerRecord]]:
        with self.sessions.begin() as s:
            return repo.get_timeline(s, tenant, timeline), repo.list_layers(s, tenant, timeline)

    async def _reload_layers(self, r: TimelineReader) -> Lsn:
        row, rows = await asyncio.to_thread(self._load_rows, r.tenant_id, r.timeline_id)
        r.layers.replace(rows)
        r.tail.drop_through(row.disk_consistent_lsn)
        r.gc_cutoff_lsn = row.gc_cutoff_lsn
        return row.disk_consistent_lsn

    async def _follow(self, r: TimelineReader) -> None:
        """Keep the recent tail current from the ingest service."""
        assert self._ingest is not None
        ref = common_pb2.TimelineRef(tenant_id=str(r.tenant_id), timeline_id=str(r.timeline_id))
        while True:
            try:
                from_lsn = await self._reload_layers(r)
                stream = self._ingest.SubscribeWal(ingest_pb2.SubscribeWalRequest(
                    timeline=ref, from_lsn=int(from_lsn)))
                async for batch in stream:
                    r.tail.add([(kv.key, kv.lsn, kv.value) for kv in batch.values])
                    await r.advance(Lsn(batch.last_record_lsn), Lsn(batch.disk_consistent_lsn))
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                level = logging.INFO if isinstance(err, FailedPrecondition | Unavailable) \
                    else logging.WARNING
                log.log(level, "recent-WAL subscription ended: %s; resubscribing tenant=%s "
                        "timeline=%s", err.message, r.tenant_id, r.timeline_id)
            except PagestoreError as e:
                log.warning("recent-WAL subscription failed: %s tenant=%s timeline=%s",
                            e.message, r.tenant_id, r.timeline_id)
            await asyncio.sleep(RESUBSCRIBE_DELAY)  # backoff between attempts

    async def _listen(self) -> None:
        """LISTEN pagestore_layers: reload a timeline's layer map when it changes."""
        url = make_url(self.config.catalog.url)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                        password=url.password, dbname=url.database, autocommit=True) as conn:
                    await conn.execute("LISTEN pagestore_layers")
                    async for note in conn.notifies():
                        tenant, _, timeline = note.payload.partition("/")
                        for (t, tl), r in list(self.readers.items()):
                            if str(t) == tenant and str(tl) == timeline:
                                # The new layer holds what the tail held: cached
                                # pages (key, LSN) stay right.
                                await self._reload_layers(r)
            except asyncio.CancelledError:
                raise
            except psycopg.Error as e:
                log.warning("catalog LISTEN failed: %s; retrying", e)
                await asyncio.sleep(1.0)  # backoff before reconnecting

    async def add_lease(self, r: TimelineReader, lsn: int, until: object) -> None:
        from pagestore.catalog.models import LsnLease

        def write() -> None:
            with self.sessions.begin() as s:
                s.merge(LsnLease(tenant_id=str(r.tenant_id), timeline_id=str(r.timeline_id),
                                 lsn=Lsn(lsn), valid_until=until))

        await asyncio.to_thread(write)

    # ------------------------------------------------------------------ redo
    async def _redo_chains(self, key: tuple[TenantId, TimelineId],
                           chains: list[ValueChain]) -> list[bytes | Exception]:
        assert self._redo is not None
        ctx = self._ctx.get(key, RedoContext())
        req = redo_pb2.RedoBatchRequest(requests=[
            redo_pb2.RedoRequest(
                key=c.key.to_bytes(), lsn=int(c.lsn),
                base_image=c.image if c.image is not None else None,
                records=[common_pb2.KeyValue(key=c.key.to_bytes(), lsn=int(lsn), value=v)
                         for lsn, v in c.records],
                data_checksums=ctx.data_checksums, wal_log_hints=ctx.wal_log_hints)
            for c in chains])
        try:
            resp = await self._redo.RedoBatch(req, timeout=60)
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"Read error: the redo service failed: {e.details()}") from None
        out: list[bytes | Exception] = []
        for res in resp.results:
            if res.grpc_code:
                out.append(PagestoreError(f"Read error: redo failed: {res.error}"))
            else:
                out.append(res.page)
        return out
