"""The gateway shares one GetPages stream per timeline among its connections.

A real grpc.aio server (a PageService that answers GetPages with pages naming the
request) on a free port, the gateway's SharedGetPagesStreams over a real channel: two
connections' requests go over one stream and each gets its own answers; the stream is
closed when the last connection lets go, and a new one opens on the next use; a second
timeline gets a stream of its own.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.pageread import SharedGetPagesStreams, read_lsn
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

    async def GetPages(self, request_iterator, context):
        self.streams_opened += 1
        self.streams_open += 1
        md = dict(context.invocation_metadata())
        self.timelines.append(md[TIMELINE_METADATA_KEY])
        try:
            async for req in request_iterator:
                yield pb.GetPageResponse(
                    request_id=req.request_id, status_code=pb.GET_PAGE_STATUS_CODE_OK,
                    rel=req.rel, page=[pb.Page(block_number=b, image=b.to_bytes(4, "little")
                                               * 2048) for b in req.block_number])
        finally:
            self.streams_open -= 1


def test_connections_to_one_timeline_share_a_stream() -> None:
    async def run() -> None:
        service = CountingPageService()
        server = grpc.aio.server()
        page_service_pb2_grpc.add_PageServiceServicer_to_server(service, server)
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ch = channel(f"127.0.0.1:{port}")
        try:
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
        finally:
            await ch.close()
            await server.stop(None)

    asyncio.run(run())
