"""The gateway's side of the page-read service: page_api.PageService and
pagestore.pageread.v1.PageReadExtras calls for one tenant, timeline and shard.

Mirrors the client half of shared/reference/neon-protocols.md section 2: every call
carries the metadata ``neon-tenant-id``, ``neon-timeline-id`` and ``neon-shard-id``
("0000" unsharded); GetPages is one long-lived bidirectional stream per timeline
(``GetPagesStream``), shared by every libpq connection reading that timeline
(``SharedGetPagesStreams``), whose responses are matched to requests by request id.

Rules kept:
- A failed call raises the PagestoreError the service raised, rebuilt by
  ``pagestore.errors.from_rpc_error`` from the trailing metadata (a transport failure
  such as a refused connection becomes Unavailable).
- Page reads carry no client deadline: the service bounds them with
  ``pageread.wait_lsn_timeout`` and answers "LSN timeout: ...".
- A GetPages stream that ends (a stream-level error, or the service going away) fails
  every request still waiting on it with that error; the next request opens a new
  stream.  Per-request failures arrive as status codes inside a response and are
  turned into exceptions of the matching class (``page_status_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
from typing import TYPE_CHECKING, Any

import grpc

from pagestore import metrics
from pagestore.errors import (
    BadRequest,
    LsnTimeout,
    NotFound,
    PagestoreError,
    Unavailable,
    from_rpc_error,
)
from pagestore.grpcutil import (
    ANSWER_ORDER_METADATA_KEY,
    REQUEST_METADATA_KEY,
    SHARD_METADATA_KEY,
    TENANT_METADATA_KEY,
    TIMELINE_METADATA_KEY,
    auth_metadata,
)
from pagestore.proto import page_service_pb2 as pb
from pagestore.proto import page_service_pb2_grpc, pageread_pb2, pageread_pb2_grpc

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Coroutine

    from pagestore.ids import TenantId, TimelineId
    from pagestore.keys import RelTag
    from pagestore.lsn import Lsn

log = logging.getLogger(__name__)

BLCKSZ = 8192
#: How long a LeaseLsn or the first chunk of a backup may take before the gateway gives up
#: (backups wait for their LSN first, up to the service's wait_lsn_timeout).
CONTROL_TIMEOUT = 600.0


class SlowDown(PagestoreError):
    """The page-read service asked the client to slow down (GET_PAGE_STATUS_CODE_SLOW_DOWN)."""


def page_status_error(status: int, reason: str) -> PagestoreError:
    """The exception for a non-OK GetPageResponse status code."""
    if status == pb.GET_PAGE_STATUS_CODE_NOT_FOUND:
        return NotFound(reason or "not found")
    if status == pb.GET_PAGE_STATUS_CODE_INVALID_REQUEST:
        return BadRequest(reason or "invalid request")
    if status == pb.GET_PAGE_STATUS_CODE_SLOW_DOWN:
        return SlowDown(reason or "slow down")
    if reason.startswith("LSN timeout"):  # INTERNAL_ERROR carries the timeout (section 2.4)
        return LsnTimeout(reason)
    return PagestoreError(reason or f"GetPages status {status}")


def read_lsn(request_lsn: int, not_modified_since: int) -> pb.ReadLsn:
    """A libpq request's LSNs as a gRPC ReadLsn.

    In gRPC a not_modified_since of 0 means "equal to request_lsn" (wait for it); in
    libpq it means "no constraint" (read at min(last_record_lsn, request_lsn)).  1 keeps
    the libpq meaning: it is never ahead of what the timeline has ingested.
    """
    return pb.ReadLsn(request_lsn=request_lsn, not_modified_since_lsn=not_modified_since or 1)


def rel_tag(rel: RelTag) -> pb.RelTag:
    return pb.RelTag(spc_oid=rel.spcnode, db_oid=rel.dbnode, rel_number=rel.relnode,
                     fork_number=rel.forknum)


class PageReadClient:
    """Calls for one (tenant, timeline, shard) over a shared channel."""

    def __init__(self, channel: grpc.aio.Channel, tenant: TenantId, timeline: TimelineId,
                 shard: str = "0000", request_tag: str = "") -> None:
        self.tenant = tenant
        self.timeline = timeline
        self.shard = shard
        md = [(TENANT_METADATA_KEY, str(tenant)), (TIMELINE_METADATA_KEY, str(timeline)),
              (SHARD_METADATA_KEY, shard)]
        if request_tag:
            md.append((REQUEST_METADATA_KEY, request_tag))
        # The services' token, explicitly: the GetPages stream is a bidirectional call,
        # which the channel's interceptors do not cover (grpcutil.aio_token).
        self.metadata = (*md, *auth_metadata())
        self.pages = page_service_pb2_grpc.PageServiceStub(channel)
        self.extras = pageread_pb2_grpc.PageReadExtrasStub(channel)

    async def rel_size(self, lsn: pb.ReadLsn, rel: RelTag, *,
                       allow_missing: bool) -> int | None:
        """Blocks in a relation fork; None if it is missing (with allow_missing)."""
        try:
            resp = await self.pages.GetRelSize(
                pb.GetRelSizeRequest(read_lsn=lsn, rel=rel_tag(rel), allow_missing=allow_missing),
                metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return None if resp.missing else resp.num_blocks

    async def db_size(self, lsn: pb.ReadLsn, dbnode: int) -> int:
        try:
            resp = await self.pages.GetDbSize(pb.GetDbSizeRequest(read_lsn=lsn, db_oid=dbnode),
                                              metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return resp.num_bytes

    async def slru_segment(self, lsn: pb.ReadLsn, kind: int, segno: int) -> bytes:
        try:
            resp = await self.pages.GetSlruSegment(
                pb.GetSlruSegmentRequest(read_lsn=lsn, kind=kind, segno=segno),
                metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return resp.segment

    async def lease_lsn(self, lsn: Lsn) -> datetime.datetime | None:
        """The lease's expiry, or None if the service refused it (FailedPrecondition)."""
        try:
            resp = await self.pages.LeaseLsn(pb.LeaseLsnRequest(lsn=lsn),
                                             metadata=self.metadata, timeout=CONTROL_TIMEOUT)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.info("lease at %s refused: %s", lsn, e.details())
                return None
            raise from_rpc_error(e) from None
        return resp.expires.ToDatetime(tzinfo=datetime.UTC)

    async def base_backup(self, lsn: Lsn | None, *, gzip: bool,
                          replica: bool) -> AsyncGenerator[bytes, None]:
        """The tar (or tar.gz) of a Neon basebackup, in chunks."""
        call = self.pages.GetBaseBackup(pb.GetBaseBackupRequest(
            lsn=lsn or 0, replica=replica, full=False,
            compression=(pb.BASE_BACKUP_COMPRESSION_GZIP if gzip
                         else pb.BASE_BACKUP_COMPRESSION_NONE)), metadata=self.metadata)
        try:
            async for chunk in call:
                yield chunk.chunk
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()

    async def full_backup(self, lsn: Lsn | None, prev_lsn: Lsn | None
                          ) -> AsyncGenerator[bytes, None]:
        """The tar of a full backup (every relation page) at lsn, with prev_lsn."""
        call = self.extras.GetFullBackup(pageread_pb2.GetFullBackupRequest(
            lsn=lsn or 0, prev_lsn=prev_lsn or 0), metadata=self.metadata)
        try:
            async for chunk in call:
                yield chunk.chunk
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()


class _Stream:
    """One GetPages call: its requests in flight, keyed by request id."""

    def __init__(self, call: grpc.aio.StreamStreamCall[pb.GetPageRequest, pb.GetPageResponse]
                 ) -> None:
        self.call = call
        self.pending: dict[int, tuple[asyncio.Future[list[bytes]], int]] = {}
        self.failed: PagestoreError | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        err: PagestoreError
        try:
            while True:
                resp = await self.call.read()
                if resp is grpc.aio.EOF:
                    err = Unavailable("reconnect: the page-read service ended the GetPages "
                                      "stream")
                    break
                assert isinstance(resp, pb.GetPageResponse)
                entry = self.pending.pop(resp.request_id.id, None)
                if entry is None:
                    log.warning("GetPages response for unknown request id %d",
                                resp.request_id.id)
                    continue
                fut, nblocks = entry
                if fut.done():
                    continue
                if resp.status_code != pb.GET_PAGE_STATUS_CODE_OK:
                    fut.set_exception(page_status_error(resp.status_code, resp.reason))
                elif len(resp.page) != nblocks or any(len(p.image) != BLCKSZ
                                                      for p in resp.page):
                    fut.set_exception(PagestoreError(
                        f"Read error: GetPages answered request {resp.request_id.id} with "
                        f"{len(resp.page)} pages of sizes {[len(p.image) for p in resp.page]} "
                        f"for {nblocks} blocks"))
                else:
                    fut.set_result([p.image for p in resp.page])
        except grpc.RpcError as e:
            err = from_rpc_error(e)
        except asyncio.CancelledError:
            self.fail(None)
            raise
        self.fail(err)

    def fail(self, err: PagestoreError | None) -> None:
        """End the stream: its waiting requests get ``err`` (None: they are cancelled,
        as nobody is left to read an error)."""
        if self.failed is None:
            self.failed = err or Unavailable("the GetPages stream was closed")
        pending, self.pending = self.pending, {}
        for fut, _ in pending.values():
            if fut.done():
                continue
            if err is None:
                fut.cancel()
            else:
                fut.set_exception(err)

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        self.fail(None)


class GetPagesStream:
    """A timeline's GetPages stream, opened on first use and after a failure.

    Requests for the same relation fork at the same (request_lsn, not_modified_since)
    that arrive within one turn of the event loop, from any connection sharing the
    stream, go out as one GetPageRequest of up to ``max_batch`` distinct blocks; each
    caller gets its own blocks' pages, in its order.  A merged request that fails fails
    every caller in it with the same error (the pagestream pipeline then asks its blocks
    again one by one, uncoalesced: ``coalesce=False``).  ``calls``/``blocks`` count what
    went upstream; ``asked`` the blocks callers asked for (asked/calls is the
    coalescing ratio)."""

    def __init__(self, client: PageReadClient, max_batch: int = 32) -> None:
        self.client = client
        self.max_batch = max(1, max_batch)
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()  # grpc.aio allows one pending write per call
        self._waiting: dict[tuple[bytes, int, int],
                            list[tuple[list[int], asyncio.Future[list[bytes]]]]] = {}
        self._rels: dict[tuple[bytes, int, int], tuple[pb.ReadLsn, RelTag]] = {}
        self._flush_scheduled = False
        self._sending: set[asyncio.Future[None]] = set()
        self._closed = False
        self.calls = 0  # GetPageRequests sent
        self.blocks = 0  # blocks asked for in them
        self.asked = 0  # blocks callers asked for

    def _open(self) -> _Stream:
        if self._stream is None or self._stream.failed is not None:
            # Answers as they finish: the stream carries many connections' requests, and
            # one waiting for WAL must hold up no other (_Stream matches by request id).
            call = self.client.pages.GetPages(
                metadata=(*self.client.metadata, (ANSWER_ORDER_METADATA_KEY, "any")))
            self._stream = _Stream(call)
        return self._stream

    async def get_pages(self, lsn: pb.ReadLsn, rel: RelTag, blocks: list[int], *,
                        coalesce: bool = True) -> asyncio.Future[list[bytes]]:
        """Ask for ``blocks``; the future gets their pages in ``blocks`` order."""
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self.asked += len(blocks)
        metrics.GATEWAY_BLOCKS_ASKED.inc(len(blocks))
        if not coalesce or len(blocks) >= self.max_batch:
            # The write runs in the stream's own task: a connection that goes away while
            # it waits (cancelled) must not cut a write on the stream others share short
            # (a grpc.aio write cancelled half way leaves the call unusable).
            await asyncio.shield(self._spawn(self._send(lsn, rel, blocks, [(blocks, fut)])))
            return fut
        key = (rel_tag(rel).SerializeToString(), lsn.request_lsn, lsn.not_modified_since_lsn)
        self._waiting.setdefault(key, []).append((blocks, fut))
        self._rels.setdefault(key, (lsn, rel))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        """Merge what arrived this turn into requests of at most max_batch blocks."""
        self._flush_scheduled = False
        waiting, self._waiting = self._waiting, {}
        rels, self._rels = self._rels, {}
        for key, members in waiting.items():
            lsn, rel = rels[key]
            group: list[tuple[list[int], asyncio.Future[list[bytes]]]] = []
            union: dict[int, None] = {}
            for blocks, fut in members:
                grown = union | dict.fromkeys(blocks)
                if group and len(grown) > self.max_batch:
                    self._spawn(self._send(lsn, rel, list(union), group))
                    group, grown = [], dict.fromkeys(blocks)
                group.append((blocks, fut))
                union = grown
            self._spawn(self._send(lsn, rel, list(union), group))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(coro)
        self._sending.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._sending.discard)
        return task

    async def _send(self, lsn: pb.ReadLsn, rel: RelTag, blocks: list[int],
                    members: list[tuple[list[int], asyncio.Future[list[bytes]]]]) -> None:
        """One GetPageRequest for ``blocks``; its pages are handed to ``members``."""
        whole: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        if len(members) == 1 and members[0][0] == blocks:
            whole = members[0][1]
        else:
            whole.add_done_callback(lambda f: _hand_out(f, blocks, members))
        async with self._write_lock:
            if self._closed:  # the last connection left while this waited
                if not whole.done():
                    whole.set_exception(Unavailable("the GetPages stream was closed"))
                return
            stream = self._open()
            request_id = next(self._ids)
            stream.pending[request_id] = (whole, len(blocks))
            self.calls += 1
            self.blocks += len(blocks)
            metrics.GATEWAY_UPSTREAM_REQUESTS.inc()
            metrics.GATEWAY_UPSTREAM_BLOCKS.inc(len(blocks))
            try:
                await stream.call.write(pb.GetPageRequest(
                    request_id=pb.RequestID(id=request_id),
                    request_class=pb.GET_PAGE_CLASS_NORMAL,
                    read_lsn=lsn, rel=rel_tag(rel), block_number=blocks))
            except grpc.RpcError as e:
                stream.fail(from_rpc_error(e))
            except asyncio.InvalidStateError:  # the call finished (with OK) before the write
                stream.fail(Unavailable("reconnect: the page-read service ended the "
                                        "GetPages stream"))
        if stream.failed is not None and not whole.done():
            whole.set_exception(stream.failed)

    async def close(self) -> None:
        self._closed = True  # no write opens a new call from here on
        for task in list(self._sending):
            task.cancel()
        if self._stream is not None:
            await self._stream.close()
            self._stream = None


def _hand_out(whole: asyncio.Future[list[bytes]], blocks: list[int],
              members: list[tuple[list[int], asyncio.Future[list[bytes]]]]) -> None:
    """A merged request's outcome, to each caller in it."""
    if whole.cancelled():
        for _, fut in members:
            fut.cancel()
        return
    err = whole.exception()
    if err is not None:
        for _, fut in members:
            if not fut.done():
                fut.set_exception(err)
        return
    by_block = dict(zip(blocks, whole.result(), strict=True))
    for wanted, fut in members:
        if not fut.done():
            fut.set_result([by_block[b] for b in wanted])


class SharedGetPagesStreams:
    """The gateway's GetPages streams: one per (tenant, timeline, shard), shared by every
    pagestream connection reading it, so the page-read service sees few streams however
    many computes' backends connect, and serves their requests side by side (its redo
    batches span them).  A stream lives while a connection holds it."""

    def __init__(self, channel: grpc.aio.Channel, max_batch: int = 32) -> None:
        self.channel = channel
        self.max_batch = max_batch
        self._streams: dict[tuple[str, str, str], tuple[GetPagesStream, int]] = {}

    def acquire(self, tenant: TenantId, timeline: TimelineId,
                shard: str = "0000") -> GetPagesStream:
        key = (str(tenant), str(timeline), shard)
        entry = self._streams.get(key)
        if entry is None:
            client = PageReadClient(self.channel, tenant, timeline, shard,
                                    request_tag="gw-shared")
            entry = (GetPagesStream(client, self.max_batch), 0)
        self._streams[key] = (entry[0], entry[1] + 1)
        return entry[0]

    async def release(self, stream: GetPagesStream) -> None:
        c = stream.client
        key = (str(c.tenant), str(c.timeline), c.shard)
        entry = self._streams.get(key)
        if entry is None or entry[0] is not stream:
            return
        if entry[1] > 1:
            self._streams[key] = (stream, entry[1] - 1)
            return
        del self._streams[key]
        await stream.close()
        log.info("GetPages stream of timeline %s closed: %d blocks asked, sent as %d blocks in "
                 "%d upstream GetPageRequests", c.timeline, stream.asked, stream.blocks,
                 stream.calls)

    def __len__(self) -> int:
        return len(self._streams)
