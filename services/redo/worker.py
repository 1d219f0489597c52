"""The redo service's work, as its worker processes run it (and the service itself, for
small batches): RedoRequests in, RedoResults out (see services/redo/server.py).

Kept out of the service's main module so a worker process imports only this and the
redo library, by name.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys

import grpc

from pagestore import failpoints
from pagestore.errors import BadRequest, PagestoreError
from pagestore.keys import Key
from pagestore.layers.layermap import ValueChain
from pagestore.lsn import Lsn
from pagestore.proto import redo_pb2
from pagestore.redo.apply import reconstruct
from pagestore.redo.context import RedoContext

log = logging.getLogger(__name__)

INTERNAL = grpc.StatusCode.INTERNAL.value[0]


def redo_one(req: redo_pb2.RedoRequest) -> bytes:
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


def redo_result(req: redo_pb2.RedoRequest) -> redo_pb2.RedoResult:
    try:
        return redo_pb2.RedoResult(page=redo_one(req))
    except PagestoreError as e:
        return redo_pb2.RedoResult(grpc_code=e.grpc_code.value[0], error=e.message)
    except Exception as e:  # a bug in one request's redo fails that request alone
        log.exception("redo of one request failed unexpectedly")
        return redo_pb2.RedoResult(grpc_code=INTERNAL,
                                   error=f"internal error in redo: {type(e).__name__}: {e}")


def redo_batch(reqs: list[redo_pb2.RedoRequest]) -> redo_pb2.RedoBatchResponse:
    """Every request's result, in order (failpoints checked by the caller)."""
    return redo_pb2.RedoBatchResponse(results=[redo_result(r) for r in reqs])


def redo_batch_bytes(serialized: bytes) -> bytes:
    """A worker process's job: a serialized RedoBatchRequest in, the response out."""
    failpoints.check("redo-worker-batch")
    reqs = redo_pb2.RedoBatchRequest.FromString(serialized).requests
    return redo_batch(list(reqs)).SerializeToString()


def worker_init() -> None:
    """In each worker: die with the service (a SIGKILLed service leaves no orphans) and
    leave SIGINT/SIGTERM to the service, which stops the pool itself."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    failpoints.configure_from_env()
