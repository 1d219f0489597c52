"""The redo service process: gRPC ``pagestore.redo.v1.Redo``.

A thin adapter around pagestore.redo.apply.reconstruct (the same library tests and
benchmarks call in-process).  Redo is CPU work, and Python's runs under one GIL per
process, so the service applies it in worker processes (``RedoPool``): a batch with at
least ``redo.parallel_min_records`` WAL records is split into one slice per worker
(``redo.processes``, default one per core), a smaller one is redone in a worker thread
of the service process, where no hand-off is paid; either way the event loop keeps
answering health checks.  Each request of a batch succeeds or fails on its own; the
``redo-apply`` failpoint fires in the service process, before a request is handed to a
worker, so it works whichever process would redo it.  A worker that dies breaks the
pool: every request the workers held then fails (INTERNAL, "redo worker died"; not
retried, it may be the cause), the pool is started again, and the death is logged once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from pagestore import failpoints, metrics
from pagestore.errors import PagestoreError
from pagestore.proto import redo_pb2, redo_pb2_grpc
from pagestore.service import ServiceContext, run_service
from services.redo.worker import INTERNAL, redo_batch, redo_batch_bytes, redo_one, worker_init

if TYPE_CHECKING:
    import grpc
    Context = grpc.aio.ServicerContext[Any, Any]


log = logging.getLogger(__name__)

#: How long stopping the pool waits for its workers to exit before killing them.
STOP_TIMEOUT = 5.0


def _records(reqs: list[redo_pb2.RedoRequest]) -> int:
    return sum(len(r.records) for r in reqs)


def split_evenly(reqs: list[redo_pb2.RedoRequest], parts: int) -> list[list[redo_pb2.RedoRequest]]:
    """Contiguous slices with about the same number of WAL records each (none empty)."""
    total = max(1, _records(reqs) + len(reqs))
    slices: list[list[redo_pb2.RedoRequest]] = []
    current: list[redo_pb2.RedoRequest] = []
    done = 0
    for i, r in enumerate(reqs):
        current.append(r)
        done += len(r.records) + 1
        left = len(reqs) - i - 1
        wanted = parts - len(slices) - 1  # slices still to fill after this one
        if wanted and left >= wanted and done * parts >= total * (len(slices) + 1):
            slices.append(current)
            current = []
    if current:
        slices.append(current)
    return slices


class RedoPool:
    """The service's redo workers (see the module docstring)."""

    def __init__(self, processes: int, parallel_min_records: int) -> None:
        self.processes = processes if processes > 0 else (os.cpu_count() or 1)
        self.parallel_min_records = parallel_min_records
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._restarting = asyncio.Lock()
        self.worker_deaths = 0
        self.batches_in_workers = 0
        self.batches_in_service = 0

    def start(self) -> None:
        if self.processes > 1 and self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_init)
            # Start every worker now, not on the first read's clock.
            list(self._pool.map(_records, [[]] * self.processes))

    def stop(self) -> None:
        """Stop the workers (blocking for at most STOP_TIMEOUT: run it in a thread).

        The workers get the executor's shutdown message and exit; those still there after
        STOP_TIMEOUT are killed, so none outlives the service to find its pipes closed
        (a traceback in the log).  ``shutdown(wait=True)`` is not used: after a worker
        died it can wait forever for the executor's manager thread."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        workers = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in workers:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in workers:
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)

    async def run(self, reqs: list[redo_pb2.RedoRequest]) -> redo_pb2.RedoBatchResponse:
        results: list[redo_pb2.RedoResult | None] = [None] * len(reqs)
        todo: list[int] = []
        for i in range(len(reqs)):
            try:
                await failpoints.acheck("redo-apply")  # sleep/pause must not stall the loop
                todo.append(i)
            except PagestoreError as e:
                results[i] = redo_pb2.RedoResult(grpc_code=e.grpc_code.value[0], error=e.message)
            except Exception as e:  # FailpointError: as a bug in that request's redo would
                results[i] = redo_pb2.RedoResult(
                    grpc_code=INTERNAL, error=f"internal error in redo: {type(e).__name__}: {e}")
        work = [reqs[i] for i in todo]
        if work:
            for i, res in zip(todo, await self._redo(work), strict=True):
                results[i] = res
        return redo_pb2.RedoBatchResponse(results=[r for r in results if r is not None])

    async def _redo(self, reqs: list[redo_pb2.RedoRequest]) -> list[redo_pb2.RedoResult]:
        if self._pool is None or len(reqs) < 2 or _records(reqs) < self.parallel_min_records:
            self.batches_in_service += 1
            return list((await asyncio.to_thread(redo_batch, reqs)).results)
        loop = asyncio.get_running_loop()
        slices = split_evenly(reqs, self.processes)
        payloads = [redo_pb2.RedoBatchRequest(requests=s).SerializeToString() for s in slices]
        pool = self._pool
        try:
            futures = [loop.run_in_executor(pool, redo_batch_bytes, p) for p in payloads]
        except BrokenProcessPool:
            # A worker died while idle: nothing was handed to it; start again and retry.
            await self._restart(pool)
            pool = self._pool
            if pool is None:
                return list((await asyncio.to_thread(redo_batch, reqs)).results)
            futures = [loop.run_in_executor(pool, redo_batch_bytes, p) for p in payloads]
        self.batches_in_workers += 1
        out: list[redo_pb2.RedoResult] = []
        broken = False
        for s, answer in zip(slices, await asyncio.gather(*futures, return_exceptions=True),
                             strict=True):
            if isinstance(answer, bytes):
                out.extend(redo_pb2.RedoBatchResponse.FromString(answer).results)
                continue
            if not isinstance(answer, Exception):
                raise answer
            broken = broken or isinstance(answer, BrokenProcessPool)
            out.extend(redo_pb2.RedoResult(
                grpc_code=INTERNAL, error=f"redo worker died: {type(answer).__name__}: {answer}")
                for _ in s)
        if broken:
            await self._restart(pool)
        return out

    async def _restart(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        async with self._restarting:
            if self._pool is not broken:
                return  # another batch restarted it already
            self.worker_deaths += 1
            metrics.REDO_WORKER_DEATHS.inc()
            log.error("a redo worker process died (%d so far); the requests the workers "
                      "held failed; starting the workers again", self.worker_deaths)
            await asyncio.to_thread(self.stop)
            await asyncio.to_thread(self.start)


class RedoServicer(redo_pb2_grpc.RedoServicer):
    def __init__(self, pool: RedoPool) -> None:
        self.pool = pool

    async def Redo(self, request: redo_pb2.RedoRequest,
                   context: Context) -> redo_pb2.RedoResponse:
        started = time.perf_counter()
        await failpoints.acheck("redo-apply")
        page = await asyncio.to_thread(redo_one, request)
        metrics.REDO_RECORDS.inc(len(request.records))
        metrics.REDO_PAGES.inc()
        metrics.REDO_LATENCY.observe(time.perf_counter() - started)
        return redo_pb2.RedoResponse(page=page)

    async def RedoBatch(self, request: redo_pb2.RedoBatchRequest,
                        context: Context) -> redo_pb2.RedoBatchResponse:
        started = time.perf_counter()
        reqs = list(request.requests)
        resp = await self.pool.run(reqs)
        done = [req for req, res in zip(reqs, resp.results, strict=True) if not res.error]
        metrics.REDO_RECORDS.inc(_records(done))
        metrics.REDO_PAGES.inc(len(done))
        metrics.REDO_LATENCY.observe(time.perf_counter() - started)
        return resp


async def setup(ctx: ServiceContext) -> None:
    cfg = ctx.config.redo
    pool = RedoPool(cfg.processes, cfg.parallel_min_records)
    await asyncio.to_thread(pool.start)
    log.info("redo processes=%d parallel_min_records=%d", pool.processes,
             pool.parallel_min_records)
    redo_pb2_grpc.add_RedoServicer_to_server(RedoServicer(pool), ctx.grpc.server)

    async def stop() -> None:
        await asyncio.to_thread(pool.stop)

    ctx.grpc.on_shutdown.append(stop)


def main() -> int:
    return run_service("redo", setup, uses_catalog=False)


if __name__ == "__main__":
    sys.exit(main())
