"""The page-read service process: ``page_api.PageService`` (wire-compatible with Neon's)
and ``pagestore.pageread.v1.PageReadExtras`` on one gRPC port.

Validation and status codes follow shared/reference/neon-protocols.md section 2:
tenant, timeline and shard come from the request metadata (``neon-tenant-id``,
``neon-timeline-id``, ``neon-shard-id``; missing or invalid: INVALID_ARGUMENT; only shard
0000 / unsharded is served); GetPages answers every request in order with a status code
inside the response, and ends the stream only for errors that are not the request's
(UNAVAILABLE and the like).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from pagestore import metrics
from pagestore.errors import BadRequest, NotFound, PagestoreError
from pagestore.grpcutil import (
    ANSWER_ORDER_METADATA_KEY,
    SHARD_METADATA_KEY,
    TENANT_METADATA_KEY,
    TIMELINE_METADATA_KEY,
    loop_status,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.keys import RelTag, SlruKind
from pagestore.lsn import Lsn
from pagestore.pg.replication import PG_EPOCH_UNIX_US
from pagestore.proto import page_service_pb2 as pb
from pagestore.proto import page_service_pb2_grpc, pageread_pb2, pageread_pb2_grpc
from pagestore.service import ServiceContext, run_service
from services.pageread.backup import FULLBACKUP_CHUNK, stream_backup
from services.pageread.manager import PageReadManager

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from services.pageread.timeline import TimelineReader

    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)
#: This service's GetPage series, bound once (a label lookup per request costs a lock).
_LATENCY = metrics.GETPAGE_LATENCY.labels("pageread")
_PAGES = metrics.GETPAGE_PAGES.labels("pageread")

#: GetPages requests of one stream served at once.  The gateway's stream carries every
#: connection of a timeline; past this many the service stops reading the stream and
#: gRPC's flow control holds the sender back.
MAX_IN_FLIGHT = 256

STATUS_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: pb.GET_PAGE_STATUS_CODE_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST,
    grpc.StatusCode.ALREADY_EXISTS: pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST,
    grpc.StatusCode.INTERNAL: pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR,
    grpc.StatusCode.DATA_LOSS: pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR,
    grpc.StatusCode.DEADLINE_EXCEEDED: pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR,  # LSN timeout
    grpc.StatusCode.UNIMPLEMENTED: pb.GET_PAGE_STATUS_CODE_INTERNAL_ERROR,
    grpc.StatusCode.RESOURCE_EXHAUSTED: pb.GET_PAGE_STATUS_CODE_SLOW_DOWN,
}


def request_ids(context: Context) -> tuple[TenantId, TimelineId]:
    md = {k: v for k, v in context.invocation_metadata() or ()}
    for name in (TENANT_METADATA_KEY, TIMELINE_METADATA_KEY, SHARD_METADATA_KEY):
        if name not in md:
            raise BadRequest(f"missing request metadata {name}")
    try:
        tenant = TenantId.parse(str(md[TENANT_METADATA_KEY]))
        timeline = TimelineId.parse(str(md[TIMELINE_METADATA_KEY]))
    except ValueError as e:
        raise BadRequest(str(e)) from None
    shard = str(md[SHARD_METADATA_KEY])
    if len(shard) != 4 or not all(c in "0123456789abcdefABCDEF" for c in shard):
        raise BadRequest(f"invalid {SHARD_METADATA_KEY} {shard!r}: expected NNCC hex")
    if int(shard[:2], 16) != 0:
        raise BadRequest(f"shard {shard} is not served here (only shard 0 / unsharded)")
    return tenant, timeline


def rel_tag(rel: pb.RelTag) -> RelTag:
    if rel.fork_number > 255:
        raise BadRequest(f"invalid fork number {rel.fork_number}")
    return RelTag(rel.spc_oid, rel.db_oid, rel.rel_number, rel.fork_number)


class PageService(page_service_pb2_grpc.PageServiceServicer):
    def __init__(self, manager: PageReadManager) -> None:
        self.manager = manager
        self.max_blocks = manager.config.pageread.max_blocks_per_request
        self.oversized_requests = 0

    async def _reader(self, context: Context) -> TimelineReader:
        tenant, timeline = request_ids(context)
        return await self.manager.reader(tenant, timeline)

    async def _effective(self, r: TimelineReader, read_lsn: pb.ReadLsn) -> Any:
        if not read_lsn.request_lsn:
            raise BadRequest("required field 'read_lsn.request_lsn' is missing")
        return await r.effective_lsn(read_lsn.request_lsn, read_lsn.not_modified_since_lsn)

    async def GetPages(self, request_iterator: AsyncIterator[pb.GetPageRequest],
                       context: Context) -> AsyncIterator[pb.GetPageResponse]:
        """Requests are served concurrently, up to MAX_IN_FLIGHT of them (their lookups
        overlap the others' redo, and their redo goes out in shared batches); answers
        leave in request order.  An error that is not the request's (UNAVAILABLE) ends
        the stream where it occurs, as before."""
        r = await self._reader(context)
        md = {k: v for k, v in context.invocation_metadata() or ()}
        if md.get(ANSWER_ORDER_METADATA_KEY) == "any":
            async for resp in self._get_pages_as_they_finish(r, request_iterator):
                yield resp
            return
        # A slot is taken before a request's task exists and given back once its answer
        # is yielded: at most MAX_IN_FLIGHT requests served or answers held at a time.
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        in_flight: asyncio.Queue[asyncio.Task[pb.GetPageResponse] | None] = asyncio.Queue()

        async def read_requests() -> None:
            try:
                async for req in request_iterator:
                    await slots.acquire()
                    in_flight.put_nowait(asyncio.ensure_future(self._get_page(r, req)))
            finally:
                in_flight.put_nowait(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (task := await in_flight.get()) is not None:
                try:
                    yield await task
                finally:
                    slots.release()
            await reader  # the client's stream ended; raise what ended it, if anything
        finally:
            reader.cancel()
            while not in_flight.empty():
                left = in_flight.get_nowait()
                if left is not None:
                    left.cancel()

    async def _get_pages_as_they_finish(
            self, r: TimelineReader, request_iterator: AsyncIterator[pb.GetPageRequest]
    ) -> AsyncIterator[pb.GetPageResponse]:
        """GetPages answered as each request finishes (ANSWER_ORDER_METADATA_KEY "any"):
        a request waiting for WAL holds up no other.  Up to MAX_IN_FLIGHT at a time."""
        finished: asyncio.Queue[pb.GetPageResponse | BaseException | None] = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        serving: set[asyncio.Task[None]] = set()

        async def serve(req: pb.GetPageRequest) -> None:
            # The slot is given back once the answer is yielded (below): answers waiting
            # for a slow reader count against MAX_IN_FLIGHT too.
            try:
                finished.put_nowait(await self._get_page(r, req))
            except BaseException as e:  # not the request's: ends the stream
                finished.put_nowait(e)
                if isinstance(e, asyncio.CancelledError):
                    raise

        async def read_requests() -> None:
            try:
                async for req in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(serve(req))
                    serving.add(task)
                    task.add_done_callback(serving.discard)
                if serving:
                    await asyncio.wait(set(serving))
                finished.put_nowait(None)
            except BaseException as e:
                finished.put_nowait(e)
                raise

        reader = asyncio.create_task(read_requests())
        try:
            while (item := await finished.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                try:
                    yield item
                finally:
                    slots.release()
        finally:
            reader.cancel()
            for task in list(serving):
                task.cancel()

    async def _get_page(self, r: TimelineReader, req: pb.GetPageRequest) -> pb.GetPageResponse:
        started = time.perf_counter()
        resp = pb.GetPageResponse(request_id=req.request_id)
        try:
            if not req.HasField("request_id"):
                raise BadRequest("required field 'request_id' is missing")
            if not req.HasField("read_lsn"):
                raise BadRequest("required field 'read_lsn' is missing")
            if not req.HasField("rel"):
                raise BadRequest("required field 'rel' is missing")
            if not req.block_number:
                raise BadRequest("required field 'block_number' is missing")
            if len(req.block_number) > self.max_blocks:
                self.oversized_requests += 1
                log.warning("GetPages request for %d blocks refused: over "
                            "pageread.max_blocks_per_request %d (%d refused so far)",
                            len(req.block_number), self.max_blocks,
                            self.oversized_requests)
                raise BadRequest(f"a GetPages request may ask for at most {self.max_blocks} "
                                 f"blocks (pageread.max_blocks_per_request); this one asks "
                                 f"for {len(req.block_number)}")
            rel = rel_tag(req.rel)
            lsn = await self._effective(r, req.read_lsn)
            blocks = list(req.block_number)
            pages = await r.rel_pages(rel, blocks, lsn)
            resp.status_code = pb.GET_PAGE_STATUS_CODE_OK
            resp.rel.CopyFrom(req.rel)
            resp.page.extend(pb.Page(block_number=b, image=p) for b, p in zip(blocks, pages, strict=True))
            _PAGES.inc(len(blocks))
        except PagestoreError as e:
            code = STATUS_BY_CODE.get(e.grpc_code)
            if code is None:
                raise  # e.g. UNAVAILABLE: ends the stream (grpcutil maps it)
            resp.status_code = code
            resp.reason = e.message
            metrics.ERRORS.labels("pageread", type(e).__name__).inc()
        _LATENCY.observe(time.perf_counter() - started)
        return resp

    async def GetRelSize(self, request: pb.GetRelSizeRequest,
                         context: Context) -> pb.GetRelSizeResponse:
        r = await self._reader(context)
        lsn = await self._effective(r, request.read_lsn)
        n = await r.run(r.rel_size, rel_tag(request.rel), lsn,
                        allow_missing=request.allow_missing)
        if n is None:
            return pb.GetRelSizeResponse(num_blocks=0, missing=True)
        return pb.GetRelSizeResponse(num_blocks=n)

    async def GetDbSize(self, request: pb.GetDbSizeRequest,
                        context: Context) -> pb.GetDbSizeResponse:
        r = await self._reader(context)
        lsn = await self._effective(r, request.read_lsn)
        return pb.GetDbSizeResponse(num_bytes=await r.run(r.db_size, request.db_oid, lsn))

    async def GetSlruSegment(self, request: pb.GetSlruSegmentRequest,
                             context: Context) -> pb.GetSlruSegmentResponse:
        r = await self._reader(context)
        if request.kind > 2:
            raise BadRequest(f"invalid SLRU kind {request.kind}")
        lsn = await self._effective(r, request.read_lsn)
        data = await r.slru_segment(SlruKind(request.kind), request.segno, lsn)
        return pb.GetSlruSegmentResponse(segment=data)

    async def GetBaseBackup(self, request: pb.GetBaseBackupRequest,
                            context: Context) -> AsyncIterator[pb.GetBaseBackupResponseChunk]:
        r = await self._reader(context)
        if request.compression == pb.BASE_BACKUP_COMPRESSION_UNKNOWN:
            raise BadRequest("compression must be NONE or GZIP")
        lsn = Lsn(request.lsn) if request.lsn else r.last_record_lsn
        lsn = await r.effective_lsn(lsn, 0)
        async for chunk in stream_backup(
                r, lsn, prev_lsn=None, full=request.full, replica=request.replica,
                compress=request.compression == pb.BASE_BACKUP_COMPRESSION_GZIP):
            yield pb.GetBaseBackupResponseChunk(chunk=chunk)

    async def LeaseLsn(self, request: pb.LeaseLsnRequest,
                       context: Context) -> pb.LeaseLsnResponse:
        r = await self._reader(context)
        if not request.lsn:
            raise BadRequest("required field 'lsn' is missing")
        until = await self.manager.grant_lease(r, Lsn(request.lsn))
        if until is None:
            from pagestore.errors import FailedPrecondition

            await self.manager.reload_layers(r)
            raise FailedPrecondition(f"cannot lease LSN {Lsn(request.lsn)}: it is below the "
                                     f"GC cutoff {r.gc_cutoff_lsn}")
        ts = Timestamp()
        ts.FromDatetime(until)
        return pb.LeaseLsnResponse(expires=ts)


class PageReadExtras(pageread_pb2_grpc.PageReadExtrasServicer):
    def __init__(self, manager: PageReadManager) -> None:
        self.manager = manager

    async def GetFullBackup(self, request: pageread_pb2.GetFullBackupRequest,
                            context: Context) -> AsyncIterator[pageread_pb2.BackupChunk]:
        tenant, timeline = request_ids(context)
        r = await self.manager.reader(tenant, timeline)
        lsn = await r.effective_lsn(request.lsn or r.last_record_lsn, 0)
        async for chunk in stream_backup(r, lsn, prev_lsn=Lsn(request.prev_lsn) or None,
                                         full=True, chunk_size=FULLBACKUP_CHUNK):
            yield pageread_pb2.BackupChunk(chunk=chunk)

    async def GetTimelineStatus(self, request: pageread_pb2.GetTimelineStatusRequest,
                                context: Context) -> pageread_pb2.TimelineReadStatus:
        tenant, timeline = request_ids(context)
        if request.with_logical_size:
            with contextlib.suppress(NotFound):  # no data to read: no size either
                await self.manager.reader(tenant, timeline)
        r = self.manager.readers.get((tenant, timeline))
        loops = loop_status(self.manager.loops(tenant, timeline))
        if r is None:
            return pageread_pb2.TimelineReadStatus(loaded=False, loops=loops)
        out = pageread_pb2.TimelineReadStatus(
            loaded=True, last_record_lsn=int(r.last_record_lsn),
            disk_consistent_lsn=int(r.layers_disk_consistent_lsn),
            layers_version=r.layers_version, tail_bytes=r.tail.bytes, loops=loops)
        if request.with_logical_size:
            out.logical_size = await r.run(r.view.logical_size, r.last_record_lsn)
            out.logical_size_known = True
        return out

    async def GetLsnByTimestamp(self, request: pageread_pb2.GetLsnByTimestampRequest,
                                context: Context) -> pageread_pb2.GetLsnByTimestampResponse:
        tenant, timeline = request_ids(context)
        if not request.HasField("timestamp"):
            raise BadRequest("required field 'timestamp' is missing")
        r = await self.manager.reader(tenant, timeline)
        target = request.timestamp.ToMicroseconds() - PG_EPOCH_UNIX_US
        found = await r.lsn_by_timestamp(target)
        log.info("lsn by timestamp timestamp=%s kind=%s lsn=%s",
                 request.timestamp.ToJsonString(), found.kind.value, found.lsn)
        return pageread_pb2.GetLsnByTimestampResponse(lsn=int(found.lsn), kind=found.kind.value)

    async def GetTimestampOfLsn(self, request: pageread_pb2.GetTimestampOfLsnRequest,
                                context: Context) -> pageread_pb2.GetTimestampOfLsnResponse:
        tenant, timeline = request_ids(context)
        r = await self.manager.reader(tenant, timeline)
        ts = await r.timestamp_of_lsn(Lsn(request.lsn))
        out = Timestamp()
        out.FromMicroseconds(ts + PG_EPOCH_UNIX_US)
        return pageread_pb2.GetTimestampOfLsnResponse(timestamp=out)

    async def ListRelations(self, request: pageread_pb2.ListRelationsRequest,
                            context: Context) -> pageread_pb2.ListRelationsResponse:
        tenant, timeline = request_ids(context)
        r = await self.manager.reader(tenant, timeline)
        lsn = await r.effective_lsn(request.lsn or r.last_record_lsn, 0)
        return pageread_pb2.ListRelationsResponse(relations=[
            pageread_pb2.RelationFork(spc_oid=rel.spcnode, db_oid=rel.dbnode,
                                      rel_number=rel.relnode, fork_number=rel.forknum,
                                      num_blocks=n)
            for rel, n in await r.run(r.list_relations, request.spc_oid, request.db_oid, lsn)])


async def setup(ctx: ServiceContext) -> None:
    assert ctx.catalog is not None
    manager = PageReadManager(ctx.catalog, ctx.workdir, ctx.config, layer_files=ctx.layer_files)
    await manager.start()
    metrics.register_collector(manager.collect_metrics)
    page_service_pb2_grpc.add_PageServiceServicer_to_server(PageService(manager), ctx.grpc.server)
    pageread_pb2_grpc.add_PageReadExtrasServicer_to_server(PageReadExtras(manager),
                                                           ctx.grpc.server)
    ctx.grpc.on_shutdown.append(manager.shutdown)


def main() -> int:
    return run_service("pageread", setup, uses_catalog=True)


if __name__ == "__main__":
    sys.exit(main())
