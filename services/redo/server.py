"""The redo service process: gRPC ``pagestore.redo.v1.Redo``.

A thin adapter around pagestore.redo.apply.reconstruct (the same library tests and
benchmarks call in-process).  Redo is CPU work: it runs in a worker thread so the event
loop keeps answering health checks; the service is its own process so it never competes
with page reads for the GIL.  Each request of a batch succeeds or fails on its own.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Any

import grpc

from pagestore import failpoints
from pagestore.errors import BadRequest, PagestoreError
from pagestore.keys import Key
from pagestore.layers.layermap import ValueChain
from pagestore.lsn import Lsn
from pagestore.proto import redo_pb2, redo_pb2_grpc
from pagestore.redo.apply import reconstruct
from pagestore.redo.context import RedoContext
from pagestore.service import ServiceContext, run_service

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]


log = logging.getLogger(__name__)


def redo_one(req: redo_pb2.RedoRequest) -> bytes:
    failpoints.check("redo-apply")
    try:
        key = Key.from_bytes(req.key)
    except ValueError as e:
        raise BadRequest(f"key: {e}") from None
    if not req.HasField("base_image") and not req.records:
        raise BadRequest(f"nothing to redo for key {key}: no base image and no records")
    if req.HasField("base_image") and len(req.base_image) != 8192 and key.is_rel_block():
        raise BadRequest(f"base image of key {key} is {len(req.base_image)} bytes, not 8192")
    prev = 0
    for r in req.records:
        if r.lsn < prev:
            raise BadRequest(f"records of key {key} are not in LSN order ({Lsn(r.lsn)} after "
                             f"{Lsn(prev)})")
        prev = r.lsn
    chain = ValueChain(key, Lsn(req.lsn),
                       image=req.base_image if req.HasField("base_image") else None,
                       records=[(Lsn(r.lsn), r.value) for r in req.records])
    page = reconstruct(RedoContext(req.data_checksums, req.wal_log_hints), chain)
    if page is None:
        raise BadRequest(f"key {key}: the records do not create the page and there is no base image")
    return page


def redo_batch(reqs: list[redo_pb2.RedoRequest]) -> redo_pb2.RedoBatchResponse:
    out = redo_pb2.RedoBatchResponse()
    for req in reqs:
        try:
            out.results.append(redo_pb2.RedoResult(page=redo_one(req)))
        except PagestoreError as e:
            out.results.append(redo_pb2.RedoResult(grpc_code=e.grpc_code.value[0], error=e.message))
        except Exception as e:  # a bug in one request's redo fails that request alone
            log.exception("redo of one request failed unexpectedly")
            out.results.append(redo_pb2.RedoResult(
                grpc_code=grpc.StatusCode.INTERNAL.value[0],
                error=f"internal error in redo: {type(e).__name__}: {e}"))
    return out


class RedoServicer(redo_pb2_grpc.RedoServicer):
    async def Redo(self, request: redo_pb2.RedoRequest,
                   context: Context) -> redo_pb2.RedoResponse:
        return redo_pb2.RedoResponse(page=await asyncio.to_thread(redo_one, request))

    async def RedoBatch(self, request: redo_pb2.RedoBatchRequest,
                        context: Context) -> redo_pb2.RedoBatchResponse:
        return await asyncio.to_thread(redo_batch, list(request.requests))


async def setup(ctx: ServiceContext) -> None:
    redo_pb2_grpc.add_RedoServicer_to_server(RedoServicer(), ctx.grpc.server)


def main() -> int:
    return run_service("redo", setup, uses_catalog=False)


if __name__ == "__main__":
    sys.exit(main())
