from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pagestore import keys
from pagestore.keys import KEY_MAX, KEY_MIN, Key, RelTag, rel_block_key


@given(st.lists(st.tuples(st.integers(0, 0x7F), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                          st.integers(0, 255), st.integers(0, 2**32 - 1)), min_size=2))
def test_byte_order_is_key_order(fields: list[tuple[int, ...]]) -> None:
    ks = [Key(*f) for f in fields]
    assert sorted(ks) == sorted(ks, key=Key.to_bytes)
    for k in ks:
        assert Key.from_bytes(k.to_bytes()) == k
        assert KEY_MIN <= k < KEY_MAX


def test_key_space_layout() -> None:
    rel = RelTag(1663, 5, 16384)
    assert keys.rel_block_key(rel, 7).to_bytes().hex() == (
        "00" "0000067f" "00000005" "00004000" "00" "00000007")
    # the size key sits right after the last block of its fork; relmap < reldir < blocks
    lo, hi = keys.rel_key_range(rel)
    assert lo <= keys.rel_block_key(rel, 2**32 - 2) < keys.rel_size_key(rel) < hi
    assert keys.relmap_key(1663, 5) < keys.rel_dir_key(1663, 5) < keys.rel_block_key(rel, 0)
    assert keys.rel_block_key(rel, 0).is_rel_block() and not keys.rel_size_key(rel).is_rel_block()
    assert keys.rel_size_key(rel).is_rel_size() and not keys.rel_dir_key(1663, 5).is_rel_size()
    assert keys.rel_block_key(rel, 3).rel_tag() == rel
    assert keys.slru_block_key(keys.SlruKind.CLOG, 0, 3).is_slru_block()
    assert not keys.slru_segment_size_key(keys.SlruKind.CLOG, 0).is_slru_block()
    ordered = [keys.dbdir_key(), keys.rel_block_key(rel, 0), keys.slru_dir_key(keys.SlruKind.CLOG),
               keys.twophase_dir_key(), keys.twophase_file_key(1000), keys.controlfile_key(),
               keys.checkpoint_key(), keys.commit_timestamp_key()]
    assert ordered == sorted(ordered)
    assert keys.commit_timestamp_key().is_metadata()
    assert str(RelTag(1663, 5, 16384, 2)) == "1663/5/16384_vm"


def test_key_bytes_helpers_equal_the_key_objects() -> None:
    from pagestore.keys import rel_block_key_bytes, rel_size_key, rel_size_key_bytes

    for rel in (RelTag(1663, 5, 16384, 0), RelTag(0xFFFF_FFFF, 1, 2, 3)):
        for blk in (0, 1, 0xFFFF_FFFE):
            assert rel_block_key_bytes(rel, blk) == rel_block_key(rel, blk).to_bytes()
        assert rel_size_key_bytes(rel) == rel_size_key(rel).to_bytes()
