"""A pagestream session (``pagestream_v2`` / ``pagestream_v3``): pipelined requests
translated to page-read gRPC calls, answered in request order.

Mirrors Neon's ``PageServerHandler::handle_pagerequests`` (pageserver/src/page_service.rs;
shared/reference/neon-protocols.md sections 1.4 and 1.5, LSN rules in section 5).

How the pipeline works:
- After CopyBothResponse the *reader* parses CopyData requests as they arrive and, for
  each, puts a future in ``slots`` (a bounded FIFO, MAX_IN_FLIGHT deep, which is the
  backpressure: the reader stops reading when that many answers are outstanding).  The
  *writer* takes futures from ``slots`` in order, waits for each and sends its CopyData;
  so answers leave in request order however the calls finish.
- GetPage requests go over the connection's one GetPages bidi stream (request ids match
  answers).  Consecutive GetPages for the same relation fork and the same
  (request_lsn, not_modified_since) that are already buffered are coalesced into one
  GetPageRequest of up to MAX_BATCH blocks, or pageread.max_blocks_per_request if that
  is lower (the group is sent when the next request
  differs, when it is full, when the reader has to wait for the socket, or when slots is
  full).  If a coalesced call fails with an internal error other than an LSN timeout,
  its blocks are asked again one by one, so a batch never changes an answer.
- Exists and Nblocks use GetRelSize (allow_missing for Exists: the fork exists unless the
  answer says missing, which pageread takes from the relation directory; Nblocks
  without it: a missing FSM or VM fork is 0 blocks), DbSize GetDbSize, GetSlruSegment
  GetSlruSegment; each runs as its own task, concurrently with the others.
- A request's LSNs go to gRPC unchanged except not_modified_since 0, sent as 1 (see
  gateway.pageread.read_lsn), so the section 5.2 rules apply as for libpq.

Errors (section 1.4 table):
- a request the service refuses (bad or GC'd LSN, missing relation or key, LSN wait
  timeout, a read error), and a GetPage whose tenant or timeline cannot be resolved:
  pagestream Error (tag 103) "Bad request: ...", "Not found: ...", "LSN timeout: ...",
  "Read error: ..."; the stream goes on;
- Exists, Nblocks, DbSize or GetSlruSegment whose tenant or timeline cannot be resolved,
  an unparseable request or unknown tag, a message other than CopyData: libpq
  ErrorResponse (the error's SQLSTATE), the pagestream ends and the connection returns to
  idle (ReadyForQuery);
- the service unavailable or the stream ended by it (Neon's "reconnect"), an oversized
  message, an unexpected failure: ErrorResponse, then the connection closes;
- Terminate or EOF: the session ends (answers still in flight are dropped).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.pageread import GetPagesStream, PageReadClient, SharedGetPagesStreams, read_lsn
from pagestore import metrics
from pagestore.errors import (
    BadRequest,
    LsnTimeout,
    NotFound,
    PagestoreError,
    ProtocolError,
    TenantNotFound,
    TimelineNotFound,
    Unavailable,
)
from pagestore.pg import pagestream as ps
from pagestore.pg import wire
from pagestore.pg.wire import FrontendMessage

if TYPE_CHECKING:
    from gateway.connection import Connection
    from pagestore.keys import RelTag
    from pagestore.proto import page_service_pb2 as pb

log = logging.getLogger(__name__)
#: This service's GetPage series, bound once (a label lookup per request costs a lock).
_LATENCY = metrics.GETPAGE_LATENCY.labels("gateway")
_PAGES = metrics.GETPAGE_PAGES.labels("gateway")

MAX_IN_FLIGHT = 256  # answers outstanding before the reader stops reading
MAX_BATCH = 32  # blocks per coalesced GetPageRequest (Neon's max_batch_size)


class Outcome(enum.Enum):
    """How a pagestream ended, i.e. what the session does next."""

    TERMINATED = "terminated"  # Terminate or EOF: end the session
    IDLE = "idle"  # an ErrorResponse was sent: ReadyForQuery, back to the command loop
    CLOSE = "close"  # an ErrorResponse was sent: close the connection


class PagestreamFatal(Exception):
    """Ends the pagestream with a libpq ErrorResponse carrying ``err``."""

    def __init__(self, err: PagestoreError, *, close: bool) -> None:
        super().__init__(err.message)
        self.err = err
        self.close = close


def error_text(err: PagestoreError) -> str:
    """The pagestream Error message: Neon's prefix for the error's kind, then ours."""
    if isinstance(err, LsnTimeout):
        prefix = "LSN timeout"
    elif isinstance(err, NotFound):
        prefix = "Not found"
    elif isinstance(err, BadRequest):
        prefix = "Bad request"
    else:
        prefix = "Read error"
    text = err.message
    return text if text.startswith(prefix) else f"{prefix}: {text}"


def _observe_getpage(started: float, fut: asyncio.Future[bytes]) -> None:
    """A pagestream GetPage is answered (a page or an error): its latency for /metrics."""
    _LATENCY.observe(time.perf_counter() - started)


def _retry_singly(err: PagestoreError) -> bool:
    """Whether a failed coalesced GetPage may have failed for one of its blocks only."""
    return type(err) is PagestoreError


class Pagestream:
    def __init__(self, conn: Connection, client: PageReadClient,
                 version: ps.PagestreamVersion, *, max_batch: int = MAX_BATCH,
                 streams: SharedGetPagesStreams | None = None) -> None:
        self.conn = conn
        self.client = client
        self.version = version
        # Never more blocks per GetPageRequest than the page-read service takes.
        self.max_batch = max(1, min(MAX_BATCH, max_batch))
        # The timeline's shared GetPages stream (or, without a registry, one of its own).
        self._streams = streams
        self.stream: GetPagesStream  # taken in run(), given back when it ends
        self.calls = 0   # GetPageRequests this connection sent
        self.blocks = 0  # blocks asked for in them
        self._slots: asyncio.Queue[asyncio.Future[bytes]] = asyncio.Queue(MAX_IN_FLIGHT)
        self._group: list[tuple[ps.GetPageRequest, asyncio.Future[bytes]]] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self.served = 0

    async def run(self) -> Outcome:
        self.conn.write(wire.copy_both_response())
        await self.conn.flush()
        # From here to the try: no await, so the stream taken is always given back.
        client, streams = self.client, self._streams
        self.stream = (streams.acquire(client.tenant, client.timeline, client.shard)
                       if streams is not None else GetPagesStream(client, self.max_batch))
        reader = asyncio.create_task(self._read_requests())
        writer = asyncio.create_task(self._write_responses())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:  # an ErrorResponse ended it, or the client went away
                return writer.result()
            outcome = reader.result()
            if outcome is not None:
                return outcome
            return await writer  # the reader queued a fatal answer: write up to it
        finally:
            tasks = (reader, writer, *self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _, fut in self._group:
                fut.cancel()
            if self._streams is not None:
                await self._streams.release(self.stream)
            else:
                await self.stream.close()
            self._drop_unsent()
            log.info("pagestream v%d ended after %d requests (%d GetPage blocks in %d "
                     "GetPageRequests)", self.version.value, self.served, self.blocks,
                     self.calls)

    def _drop_unsent(self) -> None:
        """Answers that will never be written: cancelled, or their errors retrieved (so
        asyncio does not report them as lost)."""
        while not self._slots.empty():
            fut = self._slots.get_nowait()
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()

    # ------------------------------------------------------------------ reading
    async def _read_requests(self) -> Outcome | None:
        """Parse and dispatch requests; TERMINATED at Terminate/EOF, None after queueing
        a fatal answer (the writer ends the stream when it gets there)."""
        codec = self.conn.codec
        while True:
            try:
                msg = codec.next_message()
            except ProtocolError as e:  # the framing is lost: nothing after it can be read
                await self._enqueue_fatal(e, close=True)
                return None
            if msg is None:
                await self._flush_group()
                if not await self.conn.read_more():
                    return Outcome.TERMINATED
                continue
            if msg.type == FrontendMessage.TERMINATE.value:
                return Outcome.TERMINATED
            if msg.type != FrontendMessage.COPY_DATA.value:
                await self._enqueue_fatal(ProtocolError(
                    f"unexpected message {msg.type!r} during COPY"), close=False)
                return None
            try:
                req = ps.decode_request(msg.body, self.version)
            except ProtocolError as e:
                await self._enqueue_fatal(e, close=False)
                return None
            await self._dispatch(req)

    async def _enqueue(self, fut: asyncio.Future[bytes]) -> None:
        if self._slots.full():
            await self._flush_group()  # the writer may be waiting for the group
        await self._slots.put(fut)

    async def _enqueue_fatal(self, err: PagestoreError, *, close: bool) -> None:
        await self._flush_group()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        fut.set_exception(PagestreamFatal(err, close=close))
        await self._enqueue(fut)

    async def _dispatch(self, req: ps.Request) -> None:
        self.served += 1
        if isinstance(req, ps.GetPageRequest):
            if self._group:
                head = self._group[0][0]
                if (len(self._group) >= self.max_batch or head.rel != req.rel
                        or head.hdr.request_lsn != req.hdr.request_lsn
                        or head.hdr.not_modified_since != req.hdr.not_modified_since):
                    await self._flush_group()
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(functools.partial(_observe_getpage, time.perf_counter()))
            self._group.append((req, fut))
            await self._enqueue(fut)
            return
        await self._flush_group()
        task = asyncio.create_task(self._serve_unary(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await self._enqueue(task)

    # ------------------------------------------------------------------ GetPage
    async def _flush_group(self) -> None:
        if not self._group:
            return
        members, self._group = self._group, []
        await self._send_group(members)

    async def _send_group(self, members: list[tuple[ps.GetPageRequest,
                                                    asyncio.Future[bytes]]], *,
                          coalesce: bool = True) -> None:
        head = members[0][0]
        self.calls += 1
        self.blocks += len(members)
        pages = await self.stream.get_pages(
            read_lsn(head.hdr.request_lsn, head.hdr.not_modified_since), head.rel,
            [req.blkno for req, _ in members], coalesce=coalesce)
        task = asyncio.create_task(self._complete_group(members, pages, coalesce))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete_group(self, members: list[tuple[ps.GetPageRequest,
                                                        asyncio.Future[bytes]]],
                              pages: asyncio.Future[list[bytes]], coalesce: bool) -> None:
        try:
            images = await pages
        except PagestoreError as e:
            # Coalesced with this connection's or (the stream is shared) another's
            # requests, the batch may have failed for a block that is not this one.
            if _retry_singly(e) and (len(members) > 1 or coalesce):
                log.info("coalesced GetPage of %d blocks of %s failed (%s); asking singly",
                         len(members), members[0][0].rel, e.message)
                for member in members:  # alone: never merged with other requests again
                    await self._send_group([member], coalesce=False)
                return
            for req, fut in members:
                self._settle_error(fut, req, e)
            return
        except Exception as e:  # a bug: the writer logs it once
            for _, fut in members:
                if not fut.done():
                    fut.set_exception(e)
            return
        _PAGES.inc(len(members))
        for (req, fut), image in zip(members, images, strict=True):
            if not fut.done():
                fut.set_result(ps.encode_response(ps.GetPageResponse(image), req, self.version))

    def _settle_error(self, fut: asyncio.Future[bytes], req: ps.Request,
                      err: PagestoreError) -> None:
        if fut.done():
            return
        metrics.ERRORS.labels("gateway", type(err).__name__).inc()
        try:
            fut.set_result(self._error_answer(req, err))
        except PagestreamFatal as f:
            fut.set_exception(f)

    # ------------------------------------------------------------------ the others
    async def _serve_unary(self, req: ps.Request) -> bytes:
        hdr = req.hdr
        lsn = read_lsn(hdr.request_lsn, hdr.not_modified_since)
        resp: ps.Response
        try:
            match req:
                case ps.ExistsRequest(rel=rel):
                    n = await self.client.rel_size(lsn, rel, allow_missing=True)
                    resp = ps.ExistsResponse(n is not None)
                case ps.NblocksRequest(rel=rel):
                    resp = ps.NblocksResponse(await self._nblocks(lsn, rel))
                case ps.DbSizeRequest(dbnode=dbnode):
                    resp = ps.DbSizeResponse(await self.client.db_size(lsn, dbnode))
                case ps.GetSlruSegmentRequest(kind=kind, segno=segno):
                    resp = ps.GetSlruSegmentResponse(
                        await self.client.slru_segment(lsn, kind, segno))
                case _:
                    raise AssertionError(f"unexpected request {req!r}")
        except PagestoreError as e:
            return self._error_answer(req, e)
        return ps.encode_response(resp, req, self.version)

    async def _nblocks(self, lsn: pb.ReadLsn, rel: RelTag) -> int:
        # pageread answers 0 for a missing FSM or VM fork and NotFound for a missing main.
        n = await self.client.rel_size(lsn, rel, allow_missing=False)
        assert n is not None
        return n

    def _error_answer(self, req: ps.Request, err: PagestoreError) -> bytes:
        """The pagestream Error answering ``req``, or PagestreamFatal if ``err`` ends the
        stream (section 1.4's table)."""
        if isinstance(err, Unavailable) and not isinstance(err, LsnTimeout):
            raise PagestreamFatal(err, close=True)
        if (isinstance(err, TenantNotFound | TimelineNotFound)
                and not isinstance(req, ps.GetPageRequest)):
            raise PagestreamFatal(err, close=False)
        text = error_text(err)
        log.info("pagestream request failed: %s", text)
        return ps.encode_response(ps.ErrorResponse(text), req, self.version)

    # ------------------------------------------------------------------ writing
    async def _write_responses(self) -> Outcome:
        conn = self.conn
        while True:
            if self._slots.empty():
                await conn.flush()
            fut = await self._slots.get()
            if not fut.done():
                await conn.flush()
            try:
                payload = await fut
            except PagestreamFatal as f:
                log.info("pagestream ended by %s: %s", type(f.err).__name__, f.err.message)
                conn.write(wire.error_response(f.err.message, f.err.sqlstate))
                await conn.flush()
                return Outcome.CLOSE if f.close else Outcome.IDLE
            except Exception:
                log.exception("pagestream request failed unexpectedly")
                conn.write(wire.error_response("internal error (see the gateway log)"))
                await conn.flush()
                return Outcome.CLOSE
            conn.write(wire.copy_data(payload))
