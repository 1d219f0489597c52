"""The sharded relation directory: a create or drop writes one small shard (and the root
only when a shard appears or empties), reads see exactly the entries written, and an
unsharded directory of an older pagestore is read as it is and rewritten sharded."""

from __future__ import annotations

from pagestore import metadata, reldir
from pagestore.keys import Key, RelTag, rel_block_key, rel_dir_key, rel_dir_shard_key, relmap_key
from pagestore.reldir import SHARD_SIZE, RelDir

SPC, DB = 1663, 5


def apply(store: dict[Key, bytes], changes: dict[Key, bytes]) -> None:
    for key, value in changes.items():
        if value:
            store[key] = value
        else:
            store.pop(key, None)


def test_a_create_writes_one_bounded_value_whatever_the_directory_size() -> None:
    rd, store = RelDir(), {}
    sizes = []
    for relnode in range(16384, 16384 + 20_000):
        changes = rd.add(SPC, DB, (relnode, 0))
        apply(store, changes)
        sizes.append(sum(len(v) for v in changes.values()))
    # Bounded by one full shard (plus the root when a shard appears), not by 20,000.
    assert max(sizes) <= 8 + SHARD_SIZE * metadata.RELDIR_ENTRY.size + 4 + 8 + 4 * 100
    assert sizes[-1] < 8 + SHARD_SIZE * metadata.RELDIR_ENTRY.size
    assert len(rd) == 20_000
    assert reldir.read(store.get, SPC, DB) == rd
    # The root names every shard; it was written only when a shard appeared.
    assert reldir.decode_root(store[rel_dir_key(SPC, DB)]) == (set(rd.shards), None)
    assert sum(rel_dir_key(SPC, DB) in c for c in [rd.add(SPC, DB, (160 * SHARD_SIZE + i, 0))
                                                   for i in range(SHARD_SIZE)]) == 1


def test_drops_remove_emptied_shards_and_reads_follow() -> None:
    rd, store = RelDir(), {}
    for relnode in (100, 101, 300, 70_000):
        apply(store, rd.add(SPC, DB, (relnode, 0)))
    apply(store, rd.add(SPC, DB, (100, 2)))
    assert reldir.contains(store.get, SPC, DB, (100, 2))
    assert not reldir.contains(store.get, SPC, DB, (100, 1))
    assert not reldir.contains(store.get, SPC, DB, (5000, 0))
    changes = rd.discard(SPC, DB, (70_000, 0))
    assert changes == {rel_dir_shard_key(SPC, DB, reldir.shard_of(70_000)): b"",
                       rel_dir_key(SPC, DB): reldir.encode_root({0, 1})}
    apply(store, changes)
    assert rd.discard(SPC, DB, (70_000, 0)) == {}  # already gone: nothing to write
    assert reldir.read(store.get, SPC, DB).entries() == [(100, 0), (100, 2), (101, 0), (300, 0)]
    assert reldir.stored_keys(store.get, SPC, DB) == [
        rel_dir_key(SPC, DB), rel_dir_shard_key(SPC, DB, 0), rel_dir_shard_key(SPC, DB, 1)]


def test_an_unsharded_directory_is_read_and_rewritten_sharded() -> None:
    old = metadata.encode_reldir({(100, 0), (600, 0)})
    store = {rel_dir_key(SPC, DB): old}
    rd = reldir.read(store.get, SPC, DB)
    assert rd.entries() == [(100, 0), (600, 0)] and rd.unsharded_on_disk
    assert reldir.contains(store.get, SPC, DB, (600, 0))
    assert reldir.stored_keys(store.get, SPC, DB) == [rel_dir_key(SPC, DB)]
    apply(store, rd.add(SPC, DB, (101, 0)))  # the first change writes every shard
    assert store[rel_dir_key(SPC, DB)].startswith(reldir.SHARD_ROOT_MAGIC)
    assert reldir.read(store.get, SPC, DB).entries() == [(100, 0), (101, 0), (600, 0)]
    assert not rd.unsharded_on_disk


def test_shard_keys_sort_between_the_root_and_the_relations() -> None:
    rel = RelTag(SPC, DB, 1, 0)
    assert (relmap_key(SPC, DB).to_bytes() < rel_dir_key(SPC, DB).to_bytes()
            < rel_dir_shard_key(SPC, DB, 0).to_bytes()
            < rel_dir_shard_key(SPC, DB, 0xFFFFFF).to_bytes()
            < rel_block_key(rel, 0).to_bytes())
    assert rel_dir_shard_key(SPC, DB, 3).is_metadata()
