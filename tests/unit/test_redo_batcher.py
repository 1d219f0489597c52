"""pageread's RedoBatcher: the pages that concurrent requests need redone go to the redo
service together, each caller gets its own results in order, and a failed call fails
only the callers that were in it."""

from __future__ import annotations

import asyncio

import pytest

from pagestore.errors import Unavailable
from pagestore.proto import redo_pb2
from services.pageread import manager
from services.pageread.manager import RedoBatcher


def _reqs(tag: int, n: int) -> list[redo_pb2.RedoRequest]:
    return [redo_pb2.RedoRequest(key=bytes([tag]) * 18, lsn=i + 1) for i in range(n)]


def test_concurrent_submits_share_one_call_and_get_their_own_results() -> None:
    calls: list[int] = []

    async def send(reqs):
        calls.append(len(reqs))
        return [r.key[:1] + bytes([r.lsn]) for r in reqs]

    async def run() -> list[list]:
        b = RedoBatcher(send)
        got = await asyncio.gather(*(b.submit(_reqs(t, t)) for t in (1, 2, 3)))
        assert (b.batches, b.pages) == (1, 6)
        return got

    got = asyncio.run(run())
    assert calls == [6]
    assert got == [[b"\x01\x01"], [b"\x02\x01", b"\x02\x02"],
                   [b"\x03\x01", b"\x03\x02", b"\x03\x03"]]


def test_batches_are_capped_and_a_failure_stays_in_its_batch(monkeypatch) -> None:
    monkeypatch.setattr(manager, "REDO_BATCH_MAX", 4)
    calls: list[list[int]] = []

    async def send(reqs):
        tags = sorted({r.key[0] for r in reqs})
        calls.append(tags)
        if 9 in tags:
            raise Unavailable("Read error: the redo service failed: gone")
        return [b"ok"] * len(reqs)

    async def run() -> list:
        b = RedoBatcher(send)
        return await asyncio.gather(b.submit(_reqs(1, 3)), b.submit(_reqs(2, 3)),
                                    b.submit(_reqs(9, 1)), return_exceptions=True)

    first, second, third = asyncio.run(run())
    assert calls == [[1], [2, 9]]  # 3 + 3 > 4: two calls
    assert first == [b"ok"] * 3
    assert isinstance(second, Unavailable) and isinstance(third, Unavailable)


def test_a_short_answer_is_an_error_not_a_shifted_page() -> None:
    async def send(reqs):
        return [b"page"] * (len(reqs) - 1)

    async def run() -> None:
        await RedoBatcher(send).submit(_reqs(1, 2))

    with pytest.raises(Unavailable, match="answered 1 of 2"):
        asyncio.run(run())
