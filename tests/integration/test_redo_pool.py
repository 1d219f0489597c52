"""The redo service's worker processes (services/redo/server.py RedoPool).

Real worker processes (spawned, as the service runs them): a big batch is split across
them and answers exactly what the service process itself would, request for request;
a bad request fails alone; the redo-apply failpoint fires per request before any hand-off;
a worker that dies while idle costs nothing (the pool starts again and the batch is
redone), one that dies holding requests fails those requests with a clear error and the
pool starts again, serving the next batch.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from pagestore import failpoints, values
from pagestore.lsn import Lsn
from pagestore.pg.xlogrecord import decode_record
from pagestore.proto import common_pb2, redo_pb2
from pagestore.redo.bufpage import new_page, page_add_item
from services.redo.server import RedoPool, split_evenly
from services.redo.worker import redo_batch
from tests.integration.test_redo_service import _heap_insert

pytestmark = pytest.mark.integration


def _requests(n: int) -> list[redo_pb2.RedoRequest]:
    """n heap-insert redo requests over base pages that differ (so do the answers), with
    one bad request (a short base image) among them."""
    key, lsn, raw = _heap_insert()
    offnum = int.from_bytes(decode_record(raw, Lsn(0), lsn).main_data[0:2], "little")
    record = common_pb2.KeyValue(key=key, lsn=int(lsn), value=values.pg_record(raw, 0, False))
    reqs = []
    for i in range(n):
        page = new_page(0)
        for off in range(1, offnum):  # the items before the one the record inserts
            page_add_item(page, bytes([i % 251]) * (24 + 8 * (i % 5)), off)
        base = bytes(page) if i != n // 2 else b"short"
        reqs.append(redo_pb2.RedoRequest(key=key, lsn=int(lsn), base_image=base,
                                         records=[record]))
    return reqs


def test_split_evenly_keeps_order_and_balances_records() -> None:
    reqs = _requests(10)
    for parts in (1, 2, 3, 10, 20):
        slices = split_evenly(reqs, parts)
        assert [r for s in slices for r in s] == reqs
        assert 1 <= len(slices) <= min(parts, len(reqs)) and all(slices)


def test_workers_answer_as_the_service_process_does() -> None:
    reqs = _requests(40)
    expected = list(redo_batch(reqs).results)
    assert len({r.page for r in expected}) == 40  # 39 different pages and one error
    assert sum(1 for r in expected if r.grpc_code) == 1  # the short base image

    async def run() -> None:
        pool = RedoPool(2, parallel_min_records=8)
        await asyncio.to_thread(pool.start)
        try:
            assert len(pool._pool._processes) == 2  # type: ignore[union-attr]
            got = list((await pool.run(reqs)).results)
            assert got == expected
            assert (pool.batches_in_workers, pool.batches_in_service) == (1, 0)
            small = reqs[:3]  # fewer records than parallel_min_records: no hand-off
            assert list((await pool.run(small)).results) == expected[:3]
            assert pool.batches_in_service == 1
            failpoints.configure("redo-apply", "2*return")
            try:
                got = list((await pool.run(reqs)).results)
            finally:
                failpoints.configure("redo-apply", "off")
            assert [r.grpc_code != 0 for r in got[:2]] == [True, True]
            assert "FailpointError: failpoint redo-apply" in got[0].error
            assert got[2:] == expected[2:]
        finally:
            pool.stop()

    asyncio.run(run())


def test_a_dead_worker_fails_only_what_it_held_and_the_pool_comes_back(monkeypatch) -> None:
    reqs = _requests(20)
    expected = list(redo_batch(reqs).results)

    async def run() -> None:
        pool = RedoPool(2, parallel_min_records=8)
        await asyncio.to_thread(pool.start)
        try:
            # Killed while idle: nothing was handed to it, the batch is answered in full.
            assert pool._pool is not None
            victim = next(iter(pool._pool._processes))  # a worker's pid
            os.kill(victim, signal.SIGKILL)
            for _ in range(200):  # the executor notices the death (its sentinel) quickly
                if pool._pool._broken:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.01)
            assert list((await pool.run(reqs)).results) == expected
            assert pool.worker_deaths == 1
            # Dying while holding requests: those fail, clearly; the pool starts again.
            pool.stop()
            monkeypatch.setenv(failpoints.ENV_VAR, "redo-worker-batch=kill")
            await asyncio.to_thread(pool.start)
            got = list((await pool.run(reqs)).results)
            assert all(r.grpc_code != 0 and "redo worker died" in r.error for r in got)
            assert pool.worker_deaths == 2
            pool.stop()
            monkeypatch.delenv(failpoints.ENV_VAR)
            await asyncio.to_thread(pool.start)
            assert list((await pool.run(reqs)).results) == expected
        finally:
            pool.stop()

    asyncio.run(run())
