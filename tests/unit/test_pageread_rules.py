"""The page-read service's LSN rules and caches, without servers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pagestore.errors import BadRequest, LsnOutOfRange, LsnTimeout
from pagestore.ids import TenantId, TimelineId
from pagestore.keys import Key, RelTag, rel_block_key
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from services.pageread.timeline import PageCache, RecentTail, TimelineReader


def _reader(last: int, min_readable: int = 0x100, gc_cutoff: int = 0) -> TimelineReader:
    async def no_redo(chains):
        raise AssertionError("no redo expected")

    r = TimelineReader(TenantId.generate(), TimelineId.generate(), LayerMap(Path("/nonexistent"), []),
                       min_readable_lsn=Lsn(min_readable), gc_cutoff_lsn=Lsn(gc_cutoff),
                       wait_timeout=0.2, redo=no_redo, cache_pages=4)
    r.tail.last_record_lsn = Lsn(last)
    return r


@pytest.mark.parametrize(("request_lsn", "nms", "last", "expected"), [
    (0xFFFF_FFFF_FFFF_FFFF, 0x200, 0x1000, 0x1000),   # "latest": the last record
    (0x800, 0x200, 0x1000, 0x800),                    # a replica reading in the past
    (0x800, 0, 0x1000, 0x800),                        # not_modified_since 0 = request_lsn
])
def test_effective_lsn(request_lsn: int, nms: int, last: int, expected: int) -> None:
    assert asyncio.run(_reader(last).effective_lsn(request_lsn, nms)) == expected


def test_effective_lsn_refusals() -> None:
    r = _reader(0x1000, min_readable=0x400, gc_cutoff=0x300)
    with pytest.raises(BadRequest, match="invalid LSN"):
        asyncio.run(r.effective_lsn(0, 0))
    with pytest.raises(BadRequest, match="not_modified_since"):
        asyncio.run(r.effective_lsn(0x500, 0x600))
    with pytest.raises(LsnOutOfRange, match="garbage collected"):
        asyncio.run(r.effective_lsn(0x200, 0x200))
    with pytest.raises(LsnOutOfRange, match="first readable LSN"):
        asyncio.run(r.effective_lsn(0x350, 0x350))
    with pytest.raises(LsnTimeout, match="LSN timeout"):
        asyncio.run(r.effective_lsn(0x5000, 0x5000))  # waits 0.2 s for WAL that never comes


def test_wait_is_woken_by_progress() -> None:
    async def still_pending(task: asyncio.Task[object]) -> bool:
        # A bounded wait that lets the event loop run: the task gets every chance to
        # finish (or to park itself on the condition) and must not.
        done, _ = await asyncio.wait({task}, timeout=0.1)
        return not done

    async def run() -> None:
        r = _reader(0x1000)
        r.wait_timeout = 60  # far longer than any wait below: only progress can end them
        far = asyncio.create_task(r.effective_lsn(0x2000, 0x2000))
        near = asyncio.create_task(r.wait_for(Lsn(0x1800)))
        # Both are blocked on WAL that has not arrived, before anything advances.
        assert await still_pending(far) and await still_pending(near)

        # Progress that satisfies only the nearer waiter wakes it, not the other.
        await r.advance(Lsn(0x1800))
        await asyncio.wait_for(near, timeout=10)
        assert await still_pending(far)

        # Progress up to the farther LSN wakes it (both were parked on the condition
        # at once: a single notify() instead of notify_all() would leave one asleep).
        await r.advance(Lsn(0x2000))
        assert await asyncio.wait_for(far, timeout=10) == 0x2000

    asyncio.run(run())


def test_recent_tail_and_drop() -> None:
    tail = RecentTail()
    k = rel_block_key(RelTag(1663, 5, 16384), 0)
    tail.add([(k.to_bytes(), 0x100, b"\x00a"), (k.to_bytes(), 0x200, b"\x00b")])
    tail.chunks.append(tail.chunks[-1].__class__(Lsn(0x300)))
    tail.add([(k.to_bytes(), 0x300, b"\x00c")])
    assert [v for _, v in tail.chunks[0].versions(k, Lsn(0x1000))] == [b"\x00a", b"\x00b"]
    tail.drop_through(Lsn(0x200))
    assert len(tail.chunks) == 1 and tail.chunks[0].versions(k, Lsn(0x1000))[0][1] == b"\x00c"


def test_page_cache_is_bounded_lru() -> None:
    c = PageCache(2)
    keys = [Key(0, 1663, 5, 1, 0, b) for b in range(3)]
    c.put(keys[0], Lsn(1), b"a")
    c.put(keys[1], Lsn(1), b"b")
    assert c.get(keys[0], Lsn(1)) == b"a"
    c.put(keys[2], Lsn(1), b"c")  # evicts keys[1], the least recently used
    assert c.get(keys[1], Lsn(1)) is None and c.get(keys[0], Lsn(1)) == b"a"
    assert c.get(keys[0], Lsn(2)) is None  # another LSN is another entry
