"""The page-read service's recent tail and layer-map reloads, without servers: values sent
again are skipped, the tail's size is accounted, an older layer map never replaces a
newer one, and Exists (GetRelSize with allow_missing) answers from the relation
directory for every fork."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pagestore import metadata, values
from pagestore.errors import CorruptionError, NotFound
from pagestore.ids import TenantId, TimelineId
from pagestore.keys import ForkNumber, RelTag, rel_block_key, rel_dir_key, rel_size_key
from pagestore.layers.desc import LayerDesc
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from services.pageread.timeline import RecentTail, TimelineReader

K = rel_block_key(RelTag(1663, 5, 16384), 0).to_bytes()


def _reader() -> TimelineReader:
    async def no_redo(chains):
        raise AssertionError("no redo expected")

    return TimelineReader(TenantId.generate(), TimelineId.generate(),
                          LayerMap(Path("/nonexistent"), []), min_readable_lsn=Lsn(0x10),
                          gc_cutoff_lsn=Lsn(0), wait_timeout=0.2, redo=no_redo, cache_pages=4)


def test_values_sent_again_are_skipped() -> None:
    tail = RecentTail()
    assert tail.add([(K, 0x100, b"\x00a"), (K, 0x200, b"\x00b")]) == 2
    tail.last_record_lsn = Lsn(0x200)
    # A resubscription (or an ingest that restarted) sends from an older LSN again:
    # what is at or below last_record_lsn is held already.
    assert tail.add([(K, 0x100, b"\x00a"), (K, 0x200, b"\x00b"), (K, 0x300, b"\x00c")]) == 1
    lsns, vals = tail.chunks[-1].entries[K]
    assert lsns == [0x100, 0x200, 0x300] and vals == [b"\x00a", b"\x00b", b"\x00c"]


def test_tail_bytes_follow_adds_and_drops() -> None:
    tail = RecentTail()
    tail.add([(K, 0x100, b"\x00" * 100)])
    tail.chunks.append(tail.chunks[-1].__class__(Lsn(0x200)))  # a chunk boundary
    tail.add([(K, 0x200, b"\x00" * 50)])
    assert tail.bytes == 150 + 2 * RecentTail.VALUE_OVERHEAD
    tail.drop_through(Lsn(0x100))
    assert tail.bytes == 50 + RecentTail.VALUE_OVERHEAD and len(tail.chunks) == 1
    tail.drop_through(Lsn(0x200))
    assert tail.bytes == 0 and tail.chunks == []


def test_chunks_are_cut_by_size() -> None:
    tail = RecentTail(chunk_bytes=1000)
    big = b"\x00" * 501
    tail.add([(K, 0x100, big), (K, 0x200, big), (K, 0x300, b"\x00x")])
    assert [c.start_lsn for c in tail.chunks] == [0x100, 0x300]
    tail.drop_through(Lsn(0x200))  # the first chunk is wholly in layer files now
    assert [c.start_lsn for c in tail.chunks] == [0x300]


def test_a_record_is_never_split_across_chunks() -> None:
    # Two values of one record (one LSN): a full chunk still takes the second, so a read
    # that takes the newer chunk's versions from its start LSN up loses neither.
    k2 = rel_block_key(RelTag(1663, 5, 16384), 1).to_bytes()
    tail = RecentTail(chunk_bytes=100)
    tail.add([(K, 0x100, b"\x00" * 200), (k2, 0x100, b"\x00" * 200), (K, 0x200, b"\x00x")])
    assert [(c.start_lsn, c.max_lsn) for c in tail.chunks] == [(0x100, 0x100), (0x200, 0x200)]
    assert k2 in tail.chunks[0].entries


def _layer(name: str, lsn_start: int, lsn_end: int) -> LayerDesc:
    return LayerDesc("delta", 0, b"\x00" * 18, b"\xff" * 18, Lsn(lsn_start), Lsn(lsn_end),
                       name, 1, 0)


def test_an_older_layer_map_never_replaces_a_newer_one() -> None:
    r = _reader()
    r.tail.add([(K, 0x150, b"\x00a"), (K, 0x250, b"\x00b")])
    r.tail.chunks.append(r.tail.chunks[-1].__class__(Lsn(0x350)))
    r.tail.add([(K, 0x350, b"\x00c")])
    r.tail.last_record_lsn = Lsn(0x350)
    v2 = [_layer("a", 0x101, 0x201), _layer("b", 0x201, 0x301)]
    assert r.apply_layer_map(2, v2, Lsn(0x300))
    assert len(r.tail.chunks) == 1 and r.layers_disk_consistent_lsn == 0x300
    # A reload that read the catalog earlier (version 1) finishes late: ignored.  Applying
    # it would lose what the tail dropped for version 2.
    assert not r.apply_layer_map(1, v2[:1], Lsn(0x200))
    assert [x.file_name for x in r.layers.layers] == ["b", "a"]
    assert r.layers_version == 2 and r.layers_disk_consistent_lsn == 0x300
    assert not r.apply_layer_map(2, v2, Lsn(0x300))  # the same version again: nothing
    assert r.layers_changed.is_set()


def test_applying_a_layer_map_makes_its_lsns_readable() -> None:
    r = _reader()

    async def run() -> None:
        waiter = asyncio.create_task(r.wait_for(Lsn(0x300), timeout=60))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        r.apply_layer_map(1, [_layer("a", 0x101, 0x301)], Lsn(0x300))
        await asyncio.wait_for(waiter, 5)

    asyncio.run(run())
    assert r.last_record_lsn == 0x300


@pytest.mark.parametrize("fork", list(ForkNumber))
def test_exists_answers_from_the_relation_directory(fork: ForkNumber) -> None:
    r = _reader()
    rel = RelTag(1663, 5, 16384, fork)
    other = RelTag(1663, 5, 16384, ForkNumber.MAIN if fork != ForkNumber.MAIN else ForkNumber.VISIBILITYMAP)
    reldir = metadata.encode_reldir({(other.relnode, other.forknum)})
    r.tail.add([(rel_dir_key(1663, 5).to_bytes(), 0x100, values.image(reldir)),
                (rel_size_key(other).to_bytes(), 0x100, values.image(metadata.encode_nblocks(3)))])
    r.tail.last_record_lsn = Lsn(0x100)
    lsn = Lsn(0x100)
    # The fork is not in the directory: missing, whichever fork it is.
    assert r.rel_size(rel, lsn, allow_missing=True) is None
    assert r.rel_size(other, lsn, allow_missing=True) == 3
    # Nblocks (no allow_missing): a missing FSM or VM fork is 0, any other is an error.
    if fork in (ForkNumber.FSM, ForkNumber.VISIBILITYMAP):
        assert r.rel_size(rel, lsn) == 0
    else:
        with pytest.raises(NotFound):
            r.rel_size(rel, lsn)


def test_relation_sizes_are_cached_at_the_latest_lsn_until_a_new_version_arrives() -> None:
    r = _reader()
    rel = RelTag(1663, 5, 16384)
    sk = rel_size_key(rel).to_bytes()

    def size_value(n: int) -> bytes:
        return values.image(metadata.encode_nblocks(n))

    r.add_tail([(sk, 0x100, size_value(3))])
    r.tail.last_record_lsn = Lsn(0x200)
    assert r.rel_size(rel, Lsn(0x180)) == 3  # below the latest LSN: not cached
    assert r.sizes.misses == 1 and r.sizes.get(sk, 0x200) is None
    assert r.rel_size(rel, Lsn(0x200)) == 3  # at the latest: cached from its version on
    assert r.sizes.get(sk, 0x100) == 3 and r.sizes.get(sk, 0x300) == 3
    assert r.sizes.get(sk, 0xFF) is None  # below the version: looked up
    hits = r.sizes.hits
    r.tail.last_record_lsn = Lsn(0x300)
    assert r.rel_size(rel, Lsn(0x300)) == 3
    assert r.sizes.hits == hits + 1
    # A new size version through the tail drops the entry: the next read sees it.
    r.add_tail([(sk, 0x350, size_value(7))])
    r.tail.last_record_lsn = Lsn(0x400)
    assert r.sizes.get(sk, 0x400) is None
    assert r.rel_size(rel, Lsn(0x400)) == 7
    assert r.rel_size(rel, Lsn(0x300)) == 3  # older LSNs still read their own version
    # A lookup that raced an invalidation does not store its (maybe stale) answer.
    gen = r.sizes.generation
    r.add_tail([(sk, 0x450, size_value(9))])
    r.sizes.put(sk, 7, 0x350, gen)
    assert r.sizes.get(sk, 0x500) is None


def test_pages_needing_redo_are_cached_by_their_newest_version() -> None:
    redone: list[int] = []

    async def redo(chains):
        redone.extend(int(c.records[-1][0]) for c in chains)
        return [bytes([len(c.records)]) * 8192 for c in chains]

    r = TimelineReader(TenantId.generate(), TimelineId.generate(),
                       LayerMap(Path("/nonexistent"), []), min_readable_lsn=Lsn(0x10),
                       gc_cutoff_lsn=Lsn(0), wait_timeout=0.2, redo=redo, cache_pages=4)
    key = rel_block_key(RelTag(1663, 5, 16384), 0)
    rec = values.pg_record(b"\x00" * 30, 0, False)
    r.add_tail([(K, 0x100, values.image(bytes(8192))), (K, 0x200, rec)])
    r.tail.last_record_lsn = Lsn(0x300)

    async def read(lsn: int) -> bytes:
        return (await r.pages([key], Lsn(lsn)))[0]

    assert asyncio.run(read(0x250)) == b"\x01" * 8192
    # WAL moved on but did not touch the page: the same version, no redo.
    assert asyncio.run(read(0x300)) == b"\x01" * 8192
    assert redone == [0x200] and r.cache.hits == 1
    # A newer version of the page: redone again.
    r.add_tail([(K, 0x350, rec)])
    r.tail.last_record_lsn = Lsn(0x400)
    assert asyncio.run(read(0x400)) == b"\x02" * 8192
    assert redone == [0x200, 0x350]
    # An image alone never goes to redo.
    assert asyncio.run(read(0x150)) == bytes(8192)
    assert redone == [0x200, 0x350]


def test_packed_values_round_trip_and_refuse_truncation() -> None:
    batch = [(K, 0x100, values.image(bytes(8192))), (rel_size_key(RelTag(1663, 5, 1)).to_bytes(),
             (1 << 63) + 5, b""), (K, 0x200, values.pg_record(b"r" * 70, 3, True))]
    packed = values.pack_values(batch)
    assert values.unpack_values(packed) == batch
    assert values.unpack_values(b"") == []
    for cut in (1, 18 + 12 - 1, len(packed) - 1):
        with pytest.raises(CorruptionError, match="packed values"):
            values.unpack_values(packed[:cut])


def test_relation_sizes_are_not_cached_past_what_the_tail_saw() -> None:
    """Two ways a newer size reaches pageread without an invalidate of its key: it sits
    in the tail above last_record_lsn (added, not yet advanced), or it comes in layer
    files while the follower was away.  Neither may leave a stale size behind."""
    r = _reader()
    rel = RelTag(1663, 5, 16384)
    sk = rel_size_key(rel).to_bytes()
    size = values.image(metadata.encode_nblocks(3))
    r.add_tail([(sk, 0x100, size), (K, 0x250, values.image(bytes(8192)))])
    r.tail.last_record_lsn = Lsn(0x200)  # 0x250 received, not yet advanced to
    assert r.rel_size(rel, Lsn(0x200)) == 3
    assert r.sizes.get(sk, 0x200) is None  # not cached: the tail holds WAL above 0x200
    r.tail.last_record_lsn = Lsn(0x250)
    assert r.rel_size(rel, Lsn(0x250)) == 3
    assert r.sizes.get(sk, 0x250) == 3  # cached now
    # Layer files move the timeline past what the tail received: every size goes.
    r.apply_layer_map(1, [_layer("a", 0x101, 0x401)], Lsn(0x400))
    assert r.sizes.get(sk, 0x400) is None
