"""The gateway shares one GetPages stream per timeline among its connections.

A real grpc.aio server (a PageService that answers GetPages with pages naming the
request) on a free port, the gateway's SharedGetPagesStreams over a real channel: two
connections' requests go over one stream and each gets its own answers; the stream is
closed when the last connection lets go, and a new one opens on the next use; a second
timeline gets a stream of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from gateway.pageread import SharedGetPagesStreams, read_lsn
from pagestore.errors import NotFound
from pagestore.grpcutil import TIMELINE_METADATA_KEY, channel
from pagestore.ids import TenantId, TimelineId
from pagestore.keys import RelTag
from pagestore.pg.cluster import free_port
from pagestore.proto import page_service_pb2 as pb
from pagestore.proto import page_service_pb2_grpc

pytestmark = pytest.mark.integration


class CountingPageService(page_service_pb2_grpc.PageServiceServicer):
    def __init__(self) -> None:
        self.streams_opened = 0
        self.streams_open = 0
        self.timelines: list[str] = []
        self.requests: list[tuple[int, list[int]]] = []  # (request_lsn, blocks)

    async def GetPages(self, request_iterator, context):
        self.streams_opened += 1
        self.streams_open += 1
        md = dict(context.invocation_metadata())
        self.timelines.append(md[TIMELINE_METADATA_KEY])
        try:
            async for req in request_iterator:
                self.requests.append((req.read_lsn.request_lsn, list(req.block_number)))
                if 666 in req.block_number:
                    yield pb.GetPageResponse(request_id=req.request_id,
                                             status_code=pb.GET_PAGE_STATUS_CODE_NOT_FOUND,
                                             reason="Not found: block 666")
                    continue
                yield pb.GetPageResponse(
                    request_id=req.request_id, status_code=pb.GET_PAGE_STATUS_CODE_OK,
                    rel=req.rel, page=[pb.Page(block_number=b, image=b.to_bytes(4, "little")
                                               * 2048) for b in req.block_number])
        finally:
            self.streams_open -= 1


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[CountingPageService, grpc.aio.Channel]]:
    """The counting service on a free port, and a channel to it."""
    service = CountingPageService()
    server = grpc.aio.server()
    page_service_pb2_grpc.add_PageServiceServicer_to_server(service, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ch = channel(f"127.0.0.1:{port}")
    try:
        yield service, ch
    finally:
        await ch.close()
        await server.stop(None)


def test_connections_to_one_timeline_share_a_stream() -> None:
    async def run() -> None:
        async with serving() as (service, ch):
            streams = SharedGetPagesStreams(ch)
            tenant, tl, other_tl = TenantId.generate(), TimelineId.generate(), TimelineId.generate()
            a = streams.acquire(tenant, tl)
            b = streams.acquire(tenant, tl)
            assert a is b and len(streams) == 1
            rel = RelTag(1663, 5, 16384)
            lsn = read_lsn(0x1000, 0)
            futs = [await s.get_pages(lsn, rel, [n, n + 1]) for n, s in
                    ((1, a), (10, b), (20, a), (30, b))]
            got = await asyncio.gather(*futs)
            for n, pages in zip((1, 10, 20, 30), got, strict=True):
                assert pages == [n.to_bytes(4, "little") * 2048, (n + 1).to_bytes(4, "little") * 2048]
            assert service.streams_opened == 1
            c = streams.acquire(tenant, other_tl)
            assert c is not a
            await (await c.get_pages(lsn, rel, [5]))
            assert service.streams_opened == 2
            assert service.timelines == [str(tl), str(other_tl)]
            await streams.release(a)
            assert len(streams) == 2  # b still holds the first timeline's stream
            await (await b.get_pages(lsn, rel, [7]))
            await streams.release(b)
            await streams.release(c)
            assert len(streams) == 0
            for _ in range(100):
                if service.streams_open == 0:
                    break
                await asyncio.sleep(0.05)
            assert service.streams_open == 0, "released streams were not closed"
            d = streams.acquire(tenant, tl)
            assert d is not a
            await (await d.get_pages(lsn, rel, [9]))
            assert service.streams_opened == 3
            await streams.release(d)

    asyncio.run(run())


def test_requests_of_many_connections_coalesce_into_one() -> None:
    """Same relation and LSN in one turn of the loop: one upstream request of the distinct
    blocks (up to max_batch); each caller gets its own pages in its order; another LSN is
    another request; a merged request's failure reaches every caller in it, and an
    uncoalesced request stays alone."""
    async def run() -> None:
        async with serving() as (service, ch):
            streams = SharedGetPagesStreams(ch, max_batch=4)
            s = streams.acquire(TenantId.generate(), TimelineId.generate())
            rel = RelTag(1663, 5, 16384)
            a, b = read_lsn(0x1000, 0), read_lsn(0x2000, 0)

            def page(n: int) -> bytes:
                return n.to_bytes(4, "little") * 2048

            futs = [await s.get_pages(a, rel, [3]), await s.get_pages(a, rel, [1, 3]),
                    await s.get_pages(b, rel, [1]), await s.get_pages(a, rel, [2]),
                    await s.get_pages(a, rel, [7, 8])]
            got = await asyncio.gather(*futs)
            assert got == [[page(3)], [page(1), page(3)], [page(1)], [page(2)],
                           [page(7), page(8)]]
            # 3,1,2 fit one request of 4 (3 distinct); 7,8 would make 5: a second one.
            assert sorted(service.requests) == sorted([(0x1000, [3, 1, 2]), (0x1000, [7, 8]),
                                                       (0x2000, [1])])
            assert (s.calls, s.blocks, s.asked) == (3, 6, 7)
            service.requests.clear()
            bad = [await s.get_pages(a, rel, [666]), await s.get_pages(a, rel, [5])]
            results = await asyncio.gather(*bad, return_exceptions=True)
            assert all(isinstance(r, NotFound) for r in results)  # merged: both failed
            alone = await s.get_pages(a, rel, [5], coalesce=False)
            assert await alone == [page(5)]
            assert service.requests == [(0x1000, [666, 5]), (0x1000, [5])]
            await streams.release(s)

    asyncio.run(run())


def test_a_caller_cancelled_mid_write_leaves_the_shared_stream_usable() -> None:
    """A connection that goes away while its request is being written (its task is
    cancelled) must not break the stream the other connections share."""
    async def run() -> None:
        async with serving() as (_service, ch):
            streams = SharedGetPagesStreams(ch, max_batch=4)
            s = streams.acquire(TenantId.generate(), TimelineId.generate())
            rel = RelTag(1663, 5, 16384)
            lsn = read_lsn(0x1000, 0)
            await (await s.get_pages(lsn, rel, [1], coalesce=False))  # the stream is open
            for n in range(50):
                caller = asyncio.ensure_future(s.get_pages(lsn, rel, [n, n + 1, n + 2, n + 3]))
                for _ in range(n % 3):
                    await asyncio.sleep(0)
                caller.cancel()
                await asyncio.gather(caller, return_exceptions=True)
                answer = await asyncio.wait_for(await s.get_pages(lsn, rel, [7]), 10)
                assert answer == [(7).to_bytes(4, "little") * 2048]
            await streams.release(s)

    asyncio.run(run())
