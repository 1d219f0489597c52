"""The housekeeping service process: gRPC ``pagestore.housekeeping.v1.Housekeeping``.

Adapts RPCs to TenantManager; ids arrive as 32-hex strings and bad ones are
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from pagestore import metrics
from pagestore.catalog import repo
from pagestore.catalog.db import make_sessionmaker
from pagestore.config import Duration, TenantConfig, parse_tenant_setting
from pagestore.errors import (
    AlreadyExists,
    BadRequest,
    ConfigError,
    FailedPrecondition,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from pagestore.grpcutil import (
    channel,
    loop_status,
    timeline_metadata,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.pg.replication import mask_conninfo
from pagestore.proto import (
    common_pb2,
    housekeeping_pb2,
    housekeeping_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    pageread_pb2,
    pageread_pb2_grpc,
)
from pagestore.remote.layout import highest_generation
from pagestore.service import ServiceContext, run_service
from pagestore.supervise import describe
from services.housekeeping.http import ManagementApi
from services.housekeeping.jobs import Housekeeper
from services.housekeeping.remote import RemoteSync
from services.housekeeping.tenants import TenantManager

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from pagestore.catalog.repo import TenantRecord, TimelineRecord
    from pagestore.layers.desc import LayerDesc
    from services.housekeeping.remote import Progress

Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger(__name__)
ATTACH_TIMEOUT = 3600.0  # a base backup of a large database takes a while
#: An attach-source flushes ancestors and the old receiver, then checks the source.
ATTACH_SOURCE_TIMEOUT = 120.0


def parse_tenant_id(text: str, field: str = "tenant_id") -> TenantId:
    try:
        return TenantId.parse(text)
    except ValueError as e:
        raise BadRequest(f"{field}: {e}") from None


def parse_timeline_id(text: str, field: str = "timeline_id") -> TimelineId:
    try:
        return TimelineId.parse(text)
    except ValueError as e:
        raise BadRequest(f"{field}: {e}") from None


def _ts(value: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def tenant_info(rec: TenantRecord) -> housekeeping_pb2.TenantInfo:
    return housekeeping_pb2.TenantInfo(tenant_id=str(rec.tenant_id), state=rec.state,
                                       created_at=_ts(rec.created_at),
                                       generation=rec.generation)


def timeline_info(rec: TimelineRecord) -> housekeeping_pb2.TimelineInfo:
    return housekeeping_pb2.TimelineInfo(
        tenant_id=str(rec.tenant_id), timeline_id=str(rec.timeline_id),
        ancestor_timeline_id=str(rec.ancestor_timeline_id or ""),
        ancestor_lsn=int(rec.ancestor_lsn or 0),
        last_record_lsn=int(rec.last_record_lsn),
        disk_consistent_lsn=int(rec.disk_consistent_lsn),
        remote_consistent_lsn=int(rec.remote_consistent_lsn),
        gc_cutoff_lsn=int(rec.gc_cutoff_lsn), pg_version=rec.pg_version, state=rec.state,
        wal_source=mask_conninfo(rec.wal_source) if rec.wal_source else "",
        created_at=_ts(rec.created_at), min_readable_lsn=int(rec.min_readable_lsn),
        prev_record_lsn=int(rec.prev_record_lsn), state_reason=rec.state_reason or "",
        pitr_cutoff_lsn=int(rec.pitr_cutoff_lsn or 0))


def layer_stats(layers: list[LayerDesc]) -> list[housekeeping_pb2.LayerStats]:
    """Counts and bytes of the timeline's layers by kind (l0, l1, image)."""
    out = []
    for kind in ("l0", "l1", "image"):
        group = [d for d in layers if d.label == kind]
        out.append(housekeeping_pb2.LayerStats(kind=kind, count=len(group),
                                               bytes=sum(d.file_size for d in group)))
    return out


def _settings_text(cfg: TenantConfig) -> dict[str, str]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = value.to_toml() if isinstance(value, Duration) else str(value)
    return out


class HousekeepingServicer(housekeeping_pb2_grpc.HousekeepingServicer):
    def __init__(self, tenants: TenantManager, housekeeper: Housekeeper, ingest_addr: str,
                 pageread_addr: str, remote: RemoteSync | None = None) -> None:
        self.tenants = tenants
        self.remote = remote
        self.housekeeper = housekeeper
        self.ingest_addr = ingest_addr
        self.pageread_addr = pageread_addr
        self._ingest: ingest_pb2_grpc.IngestAsyncStub | None = None
        self._pageread: pageread_pb2_grpc.PageReadExtrasAsyncStub | None = None

    def ingest(self) -> ingest_pb2_grpc.IngestAsyncStub:
        if self._ingest is None:
            self._ingest = ingest_pb2_grpc.IngestStub(channel(self.ingest_addr))
        return self._ingest

    def pageread(self) -> pageread_pb2_grpc.PageReadExtrasAsyncStub:
        if self._pageread is None:
            self._pageread = pageread_pb2_grpc.PageReadExtrasStub(channel(self.pageread_addr))
        return self._pageread

    async def _live(self, info: housekeeping_pb2.TimelineInfo) -> housekeeping_pb2.TimelineInfo:
        """Overlay what the ingest service knows: its live LSNs for an active timeline (the
        catalog has them as of the last flush) and its loops (a broken timeline's receiver
        says why it ended)."""
        if not info.wal_source or info.state not in ("active", "broken"):
            return info
        try:
            live = await self.ingest().GetTimelineLsns(
                common_pb2.TimelineRef(tenant_id=info.tenant_id, timeline_id=info.timeline_id),
                timeout=5)
        except grpc.aio.AioRpcError as e:
            log.info("live LSNs unavailable from ingest: %s", e.details())
            return info
        if info.state == "active":
            info.last_record_lsn = live.last_record_lsn
            info.disk_consistent_lsn = live.disk_consistent_lsn
        info.loops.extend(live.loops)
        return info

    async def status(self, rec: TimelineRecord, *,
                     logical_size: bool = False) -> housekeeping_pb2.TimelineInfo:
        """Everything `timeline status` shows: the catalog row, ingest's live LSNs and
        loops, pageread's loops, the replication slot on the WAL source; with
        ``logical_size``, the size of every relation at the last record (the management
        API's timeline detail: it reads every relation's size)."""
        info = await self._live(timeline_info(rec))
        try:
            read = await self.pageread().GetTimelineStatus(
                pageread_pb2.GetTimelineStatusRequest(with_logical_size=logical_size),
                timeout=60 if logical_size else 5,
                metadata=timeline_metadata(info.tenant_id, info.timeline_id))
            info.loops.extend(read.loops)
            if read.logical_size_known:
                info.current_logical_size = read.logical_size
                info.current_logical_size_known = True
        except grpc.aio.AioRpcError as e:
            log.info("loop states unavailable from pageread: %s", e.details())
        info.loops.extend(loop_status([self.housekeeper.scheduler]))
        info.loops.append(self.housekeeper.job_status(rec.tenant_id, rec.timeline_id))
        info.slot.CopyFrom(await self.tenants.slot_status(rec))
        layers = await asyncio.to_thread(self.tenants.layers, rec.tenant_id, rec.timeline_id)
        info.layers.extend(layer_stats(layers))
        info.generation = (await asyncio.to_thread(self.tenants.get_tenant,
                                                   rec.tenant_id)).generation
        if self.remote is not None:
            info.layers_not_uploaded = sum(1 for d in layers if not d.uploaded)
            info.loops.extend(loop_status([self.remote.loop]))
            state, detail = self.remote.status(rec.tenant_id, rec.timeline_id)
            info.loops.append(common_pb2.LoopStatus(
                service="housekeeping", name="remote", state=state, detail=detail,
                last_error=detail if state in ("failing", "stale") else ""))
        return info

    def _remote(self) -> RemoteSync:
        if self.remote is None:
            raise FailedPrecondition("remote storage is not configured on this node "
                                     "(set [remote_storage] in the config)")
        return self.remote

    async def UploadTimeline(self, request: common_pb2.TimelineRef,
                             context: Context) -> housekeeping_pb2.UploadTimelineResponse:
        remote = self._remote()
        r = await remote.sync(parse_tenant_id(request.tenant_id),
                              parse_timeline_id(request.timeline_id))
        return housekeeping_pb2.UploadTimelineResponse(
            layers_uploaded=r.layers_uploaded, bytes_uploaded=r.bytes_uploaded,
            objects_deleted=r.objects_deleted, remote_consistent_lsn=r.remote_consistent_lsn,
            generation=r.generation)

    async def _with_progress(self, run: Callable[[Progress], Awaitable[T]]
                             ) -> AsyncIterator[housekeeping_pb2.TenantProgress | T]:
        """Run ``run(progress)``; yield the progress messages it reports (from any
        thread) as they come, then its result."""
        queue: asyncio.Queue[housekeeping_pb2.TenantProgress] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def progress(message: str, done: int, total: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, housekeeping_pb2.TenantProgress(
                message=message, done_bytes=done, total_bytes=total))

        job = asyncio.ensure_future(run(progress))
        while not job.done() or not queue.empty():
            with contextlib.suppress(TimeoutError):
                yield await asyncio.wait_for(queue.get(), 0.2)
        yield job.result()

    async def AttachTenant(self, request: housekeeping_pb2.AttachTenantRequest,
                           context: Context) -> AsyncIterator[housekeeping_pb2.TenantProgress]:
        remote = self._remote()
        tid = parse_tenant_id(request.tenant_id)
        rec: TenantRecord | None = None
        async for item in self._with_progress(
                lambda p: asyncio.to_thread(remote.attach_tenant, tid, p)):
            if isinstance(item, housekeeping_pb2.TenantProgress):
                yield item
            else:
                rec = item
        assert rec is not None
        # Ingest first: the WAL source's slot is holding WAL for it; warming can wait.
        for tl in await asyncio.to_thread(self.tenants.list_timelines, tid):
            if not tl.wal_source:
                continue
            try:
                lsns = await self.ingest().ResumeTimeline(
                    common_pb2.TimelineRef(tenant_id=str(tid), timeline_id=str(tl.timeline_id)),
                    timeout=ATTACH_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                raise type(err)(f"tenant {tid} is attached, but ingest did not resume timeline "
                                f"{tl.timeline_id}: {err.message} (it resumes when the ingest "
                                "service restarts)") from None
            yield housekeeping_pb2.TenantProgress(
                message=f"timeline {tl.timeline_id}: ingest resumed from "
                        f"{Lsn(lsns.disk_consistent_lsn)} ({mask_conninfo(tl.wal_source)})")
        if request.warm:
            async for got in self._with_progress(lambda p: asyncio.to_thread(remote.warm, tid, p)):
                if isinstance(got, housekeeping_pb2.TenantProgress):
                    yield got
        yield housekeeping_pb2.TenantProgress(
            message=f"tenant {tid} attached with generation {rec.generation}",
            tenant=tenant_info(rec))

    async def DetachTenant(self, request: housekeeping_pb2.DetachTenantRequest,
                           context: Context) -> AsyncIterator[housekeeping_pb2.TenantProgress]:
        remote = self._remote()
        tid = parse_tenant_id(request.tenant_id)
        rec = await asyncio.to_thread(self.tenants.get_tenant, tid)
        timelines = await asyncio.to_thread(self.tenants.list_timelines, tid)
        stopped: list[common_pb2.TimelineRef] = []
        detached = False
        try:
            for tl in timelines:
                if not tl.wal_source or tl.state not in ("active", "broken"):
                    continue
                ref = common_pb2.TimelineRef(tenant_id=str(tid), timeline_id=str(tl.timeline_id))
                # Resumed below if anything fails, even this stop (ingest forgets the
                # timeline before it reports a flush that ran out of time).
                stopped.append(ref)
                try:
                    await self.ingest().DetachTimeline(
                        ingest_pb2.DetachTimelineRequest(timeline=ref, flush=True), timeout=60)
                    yield housekeeping_pb2.TenantProgress(
                        message=f"timeline {tl.timeline_id}: ingest stopped and flushed")
                except grpc.aio.AioRpcError as e:
                    err = from_rpc_error(e)
                    if not isinstance(err, NotFound):
                        raise err from None
            problems: list[str] = []
            for tl in timelines:
                try:
                    async for item in self._with_progress(
                            lambda p, t=tl.timeline_id: remote.sync(tid, t, p)):  # type: ignore[misc]
                        if isinstance(item, housekeeping_pb2.TenantProgress):
                            yield item
                        else:
                            yield housekeeping_pb2.TenantProgress(
                                message=f"timeline {tl.timeline_id}: uploaded "
                                        f"{item.layers_uploaded} layers ({item.bytes_uploaded} "
                                        f"bytes), remote_consistent_lsn "
                                        f"{Lsn(item.remote_consistent_lsn)}")
                except Exception as e:
                    problems.append(f"timeline {tl.timeline_id}: upload failed: {describe(e)}")
            problems += await asyncio.to_thread(remote.check_detachable, tid)
            if problems and not request.force:
                raise FailedPrecondition(
                    f"tenant {tid} not detached: " + "; ".join(problems) +
                    " (retry when remote storage works, or force it and lose that data)")
            detached = True
        finally:
            if not detached:
                for ref in stopped:  # ingest goes on: nothing was dropped
                    try:
                        await self.ingest().ResumeTimeline(ref, timeout=ATTACH_TIMEOUT)
                    except grpc.aio.AioRpcError as e:
                        log.error("could not resume ingest after a refused detach: %s "
                                  "(it resumes when ingest restarts) tenant=%s timeline=%s",
                                  from_rpc_error(e).message, tid, ref.timeline_id)
        for p in problems:
            log.warning("detach by force loses: %s tenant=%s", p, tid)
        await asyncio.to_thread(remote.drop_local, tid)
        yield housekeeping_pb2.TenantProgress(
            message=f"tenant {tid} detached (generation {rec.generation}); its data stays in "
                    f"{remote.storage.describe()}", tenant=tenant_info(rec))

    async def CompactTimeline(self, request: housekeeping_pb2.CompactTimelineRequest,
                              context: Context) -> housekeeping_pb2.CompactTimelineResponse:
        r = await self.housekeeper.compact(
            parse_tenant_id(request.tenant_id), parse_timeline_id(request.timeline_id),
            force_l0=request.force_l0_compaction,
            force_images=request.force_image_layer_creation)
        return housekeeping_pb2.CompactTimelineResponse(
            l0_compacted=r.l0_compacted, l1_created=r.l1_created,
            images_created=r.images_created, image_lsn=int(r.image_lsn),
            bytes_written=r.bytes_written, elapsed_seconds=r.elapsed)

    async def GcTimeline(self, request: common_pb2.TimelineRef,
                         context: Context) -> housekeeping_pb2.GcTimelineResponse:
        r = await self.housekeeper.gc(parse_tenant_id(request.tenant_id),
                                      parse_timeline_id(request.timeline_id))
        return housekeeping_pb2.GcTimelineResponse(
            gc_cutoff_lsn=int(r.gc_cutoff_lsn), pitr_cutoff_lsn=int(r.pitr_cutoff_lsn),
            layers_total=r.plan.total, layers_needed_by_cutoff=r.plan.needed_by_cutoff,
            layers_needed_by_branches=r.plan.needed_by_branches,
            layers_needed_by_leases=r.plan.needed_by_leases,
            layers_removed=len(r.plan.remove), bytes_removed=r.bytes_removed,
            elapsed_seconds=r.elapsed)

    async def GetTenantConfig(self, request: housekeeping_pb2.GetTenantConfigRequest,
                              context: Context) -> housekeeping_pb2.TenantConfigResponse:
        tid = parse_tenant_id(request.tenant_id)
        effective, overrides = await asyncio.to_thread(self.tenants.tenant_config, tid,
                                                       self.housekeeper.config.tenant)
        return housekeeping_pb2.TenantConfigResponse(
            effective=_settings_text(effective),
            overrides={k: str(v) for k, v in overrides.items()})

    async def SetTenantConfig(self, request: housekeeping_pb2.SetTenantConfigRequest,
                              context: Context) -> housekeeping_pb2.TenantConfigResponse:
        tid = parse_tenant_id(request.tenant_id)
        try:
            changes = dict(parse_tenant_setting(f"{k}={v}") for k, v in request.set.items())
            known = {f.name for f in dataclasses.fields(TenantConfig)}
            for key in request.reset:
                if key not in known:
                    raise ConfigError(f"unknown tenant setting '{key}' (known: "
                                      f"{', '.join(sorted(known))})")
        except ConfigError as e:
            raise BadRequest(str(e)) from None
        effective, overrides = await asyncio.to_thread(
            self.tenants.set_tenant_config, tid, self.housekeeper.config.tenant, changes,
            list(request.reset))
        if self.remote is not None:
            await asyncio.to_thread(self.remote.put_manifest, tid)
        return housekeeping_pb2.TenantConfigResponse(
            effective=_settings_text(effective),
            overrides={k: str(v) for k, v in overrides.items()})

    async def CreateTenant(self, request: housekeeping_pb2.CreateTenantRequest,
                           context: Context) -> housekeeping_pb2.TenantInfo:
        tid = parse_tenant_id(request.tenant_id) if request.tenant_id else None
        if tid is not None and self.remote is not None:
            storage = self.remote.storage
            found = await asyncio.to_thread(highest_generation, storage, tid)
            if found:
                raise AlreadyExists(f"tenant {tid} exists in {storage.describe()} (generation "
                                    f"{found}): attach it with `pagestore tenant attach`")
        return tenant_info(await asyncio.to_thread(self.tenants.create_tenant, tid))

    async def ListTenants(self, request: housekeeping_pb2.ListTenantsRequest,
                          context: Context) -> housekeeping_pb2.ListTenantsResponse:
        recs = await asyncio.to_thread(self.tenants.list_tenants)
        return housekeeping_pb2.ListTenantsResponse(tenants=[tenant_info(r) for r in recs])

    async def CreateTimeline(self, request: housekeeping_pb2.CreateTimelineRequest,
                             context: Context) -> housekeeping_pb2.TimelineInfo:
        tid = parse_tenant_id(request.tenant_id)
        tlid = parse_timeline_id(request.timeline_id) if request.timeline_id else None
        if request.ancestor_timeline_id:
            if request.wal_source:
                raise BadRequest("a branch takes its history from its ancestor, not a WAL source")
            ancestor = parse_timeline_id(request.ancestor_timeline_id, "ancestor_timeline_id")
            parent = await self._live(timeline_info(await asyncio.to_thread(
                self.tenants.get_timeline, tid, ancestor)))
            rec = await asyncio.to_thread(
                self.tenants.create_branch, tid, tlid, ancestor,
                Lsn(request.ancestor_lsn) if request.ancestor_lsn else None,
                Lsn(parent.last_record_lsn))
            return timeline_info(rec)
        rec = await asyncio.to_thread(self.tenants.create_timeline, tid, tlid,
                                      pg_version=request.pg_version or 15,
                                      wal_source=request.wal_source or None)
        if request.wal_source:
            # Attaching a primary: the ingest service takes the base backup, imports it
            # and starts streaming; the call returns once the import is registered.
            try:
                await self.ingest().AttachTimeline(ingest_pb2.AttachTimelineRequest(
                    timeline=common_pb2.TimelineRef(tenant_id=str(rec.tenant_id),
                                                    timeline_id=str(rec.timeline_id)),
                    wal_source=request.wal_source), timeout=ATTACH_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                raise from_rpc_error(e) from None
            rec = await asyncio.to_thread(self.tenants.get_timeline, rec.tenant_id,
                                          rec.timeline_id)
        return await self._live(timeline_info(rec))

    async def ListTimelines(self, request: housekeeping_pb2.ListTimelinesRequest,
                            context: Context) -> housekeeping_pb2.ListTimelinesResponse:
        recs = await asyncio.to_thread(self.tenants.list_timelines,
                                       parse_tenant_id(request.tenant_id))
        return housekeeping_pb2.ListTimelinesResponse(timelines=[timeline_info(r) for r in recs])

    async def GetTimeline(self, request: common_pb2.TimelineRef,
                          context: Context) -> housekeeping_pb2.TimelineInfo:
        rec = await asyncio.to_thread(self.tenants.get_timeline,
                                      parse_tenant_id(request.tenant_id),
                                      parse_timeline_id(request.timeline_id))
        return await self.status(rec)

    async def AttachSource(self, request: housekeeping_pb2.AttachSourceRequest,
                           context: Context) -> housekeeping_pb2.AttachSourceResponse:
        """A (new) WAL source for an existing timeline: the ingest service checks it and
        switches (services/ingest/manager.py, ``attach_source``)."""
        tid = parse_tenant_id(request.tenant_id)
        tlid = parse_timeline_id(request.timeline_id)
        if not request.wal_source:
            raise BadRequest("wal_source is empty")
        try:
            resp = await self.ingest().AttachSource(ingest_pb2.AttachSourceRequest(
                timeline=common_pb2.TimelineRef(tenant_id=str(tid), timeline_id=str(tlid)),
                wal_source=request.wal_source), timeout=ATTACH_SOURCE_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Unavailable(
                    f"the attach of timeline {tlid} to {mask_conninfo(request.wal_source)} "
                    f"did not finish within {ATTACH_SOURCE_TIMEOUT:.0f}s; it goes on in the "
                    "ingest service: `pagestore timeline status` shows its outcome") from None
            raise from_rpc_error(e) from None
        rec = await asyncio.to_thread(self.tenants.get_timeline, tid, tlid)
        return housekeeping_pb2.AttachSourceResponse(
            timeline=await self._live(timeline_info(rec)), old_slot_note=resp.old_slot_note)

    async def DeleteTimeline(self, request: housekeeping_pb2.DeleteTimelineRequest,
                             context: Context) -> housekeeping_pb2.DeleteTimelineResponse:
        tid = parse_tenant_id(request.tenant_id)
        tlid = parse_timeline_id(request.timeline_id)

        async def detach() -> None:
            try:
                await self.ingest().DetachTimeline(ingest_pb2.DetachTimelineRequest(
                    timeline=common_pb2.TimelineRef(tenant_id=str(tid), timeline_id=str(tlid))),
                    timeout=30)
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                if not isinstance(err, NotFound):
                    raise err from None

        remote = self.remote

        async def remove_remote() -> str:
            assert remote is not None
            async with self.housekeeper.lock(tid, tlid):  # no upload round meanwhile
                n = await asyncio.to_thread(remote.delete_timeline_objects, tid, tlid)
            return f"{n} remote objects deleted"

        note = await self.tenants.delete_timeline(
            tid, tlid, detach=detach, force=request.force,
            remove_remote=remove_remote if remote is not None else None)
        return housekeeping_pb2.DeleteTimelineResponse(slot_note=note)


    async def delete_tenant(self, tid: TenantId, *, force: bool = False) -> None:
        """Delete every timeline of the tenant (branches before their ancestors, each as
        DeleteTimeline does, ``force`` as there: a slot that cannot be dropped is left
        and logged), its remote objects, then the tenant.  Without force, a timeline whose
        slot cannot be dropped stops it there (412): the timelines before it are gone, the
        rest and the tenant stay, and the delete can be repeated."""
        timelines = await asyncio.to_thread(self.tenants.list_timelines, tid)
        by_id = {t.timeline_id: t for t in timelines}

        def depth(t: TimelineRecord) -> int:
            n = 0
            while t.ancestor_timeline_id is not None and t.ancestor_timeline_id in by_id:
                t, n = by_id[t.ancestor_timeline_id], n + 1
            return n

        for tl in sorted(timelines, key=depth, reverse=True):
            await self.DeleteTimeline(housekeeping_pb2.DeleteTimelineRequest(
                tenant_id=str(tid), timeline_id=str(tl.timeline_id), force=force),
                None)  # type: ignore[arg-type]
        if self.remote is not None:
            n = await asyncio.to_thread(self.remote.delete_tenant_objects, tid)
            log.info("deleted %d remote objects of tenant %s", n, tid)
        await asyncio.to_thread(self.tenants.delete_tenant, tid)

    async def refresh_metrics(self) -> None:
        """Layer counts and bytes by kind, and the upload queue, from the catalog."""
        def read() -> list[LayerDesc]:
            out: list[LayerDesc] = []
            with self.tenants.sessions.begin() as s:
                for tl in repo.list_all_timelines(s):
                    out += repo.list_layers(s, tl.tenant_id, tl.timeline_id)
            return out

        layers = await asyncio.to_thread(read)
        for st in layer_stats(layers):
            metrics.LAYERS.labels(st.kind).set(st.count)
            metrics.LAYER_BYTES.labels(st.kind).set(st.bytes)
        if self.remote is not None:
            queued = [d for d in layers if not d.uploaded]
            metrics.REMOTE_UPLOAD_QUEUE.set(len(queued))
            metrics.REMOTE_UPLOAD_QUEUE_BYTES.set(sum(d.file_size for d in queued))


async def setup(ctx: ServiceContext) -> None:
    assert ctx.catalog is not None
    manager = TenantManager(ctx.catalog, ctx.workdir)
    sessions = make_sessionmaker(ctx.catalog)
    housekeeper = Housekeeper(sessions, ctx.workdir, ctx.config, layer_files=ctx.layer_files)
    remote = None
    if ctx.remote is not None:
        assert ctx.layer_files is not None
        remote = RemoteSync(sessions, ctx.workdir, ctx.remote, ctx.layer_files,
                            period=float(ctx.config.housekeeping.upload_period),
                            lock=housekeeper.lock)
    servicer = HousekeepingServicer(manager, housekeeper, ctx.config.service_addr("ingest"),
                                    ctx.config.service_addr("pageread"), remote)
    housekeeping_pb2_grpc.add_HousekeepingServicer_to_server(servicer, ctx.grpc.server)
    ManagementApi(servicer, ctx.config.tenant, node_id=ctx.config.node_id,
                  verifier=ctx.http_verifier).routes(ctx.http)
    ctx.metrics_refresh.append(servicer.refresh_metrics)
    housekeeper.scheduler.start()
    ctx.grpc.on_shutdown.append(housekeeper.scheduler.stop)
    if remote is not None:
        remote.loop.start()
        ctx.grpc.on_shutdown.append(remote.loop.stop)


def main() -> int:
    return run_service("housekeeping", setup, uses_catalog=True)


if __name__ == "__main__":
    sys.exit(main())
