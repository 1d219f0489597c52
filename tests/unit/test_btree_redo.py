"""BTREE redo on hand-built pages and records: each record type's effect on the block it
names, the posting list helpers of nbtdedup.c, and the errors for malformed records.
The byte-for-byte comparison with PostgreSQL's own after-images is
tests/integration/test_btree_redo_oracle.py.
"""

from __future__ import annotations

import struct

import pytest

from pagestore.errors import CorruptionError, CorruptWalError, UnsupportedWalRecord
from pagestore.pg.xlogrecord import DecodedRecord
from pagestore.redo import btree
from pagestore.redo.btree import (
    BT_META_PAGE,
    BT_PAGE_OPAQUE,
    BTP_DELETED,
    BTP_HALF_DEAD,
    BTP_HAS_FULLXID,
    BTP_HAS_GARBAGE,
    BTP_INCOMPLETE_SPLIT,
    BTP_LEAF,
    BTP_META,
    BTP_ROOT,
    BTP_SPLIT_END,
    BTPageOpaque,
    bt_form_posting,
    bt_page_get_opaque,
    bt_pageinit,
    bt_swap_posting,
    bt_update_posting,
)
from pagestore.redo.bufpage import (
    BLCKSZ,
    get_item,
    page_add_item,
    page_get_lsn,
    page_get_max_offset_number,
    page_set_lsn,
    pd_flags,
    pd_lower,
    pd_special,
    pd_upper,
    set_pd_flags,
)
from tests.unit.redo_records import CTX, END, block, record_of

record = record_of(btree.RM_BTREE_ID)


def tid(blkno: int, off: int) -> bytes:
    return struct.pack("<HHH", blkno >> 16, blkno & 0xFFFF, off)


def itup(key: int, heap: tuple[int, int] = (1, 1)) -> bytes:
    """A 16-byte leaf tuple with an int4 key: t_tid, t_info = 16, key, padding."""
    return tid(*heap) + struct.pack("<H", 16) + struct.pack("<i", key) + bytes(4)


def pivot(key: int, downlink: int) -> bytes:
    """A 16-byte pivot tuple: downlink in t_tid, one key attribute."""
    return (tid(downlink, 1) + struct.pack("<H", 16 | btree.INDEX_ALT_TID_MASK)
            + struct.pack("<i", key) + bytes(4))


def posting(key: int, heaps: list[tuple[int, int]]) -> bytes:
    base = itup(key, heaps[0])
    return bytes(bt_form_posting(base, b"".join(tid(*h) for h in heaps)))


def bt_page(items: list[bytes], *, prev: int = 0, nxt: int = 0, level: int = 0,
            flags: int = BTP_LEAF, lsn: int = 0x1000) -> bytearray:
    page = bytearray(BLCKSZ)
    bt_pageinit(page)
    BT_PAGE_OPAQUE.pack_into(page, pd_special(page), prev, nxt, level, flags, 0)
    for i, it in enumerate(items, start=1):
        assert page_add_item(page, it, i) == i
    page_set_lsn(page, lsn)
    return page


def items(page: bytearray) -> list[bytes]:
    out = []
    for i in range(1, page_get_max_offset_number(page) + 1):
        off, length = get_item(page, i)
        out.append(bytes(page[off:off + length]))
    return out


def metadata(root: int = 3, level: int = 1, fastroot: int = 3, fastlevel: int = 1,
             delpages: int = 0, allequalimage: bool = True) -> bytes:
    return struct.pack("<6I?3x", 4, root, level, fastroot, fastlevel, delpages, allequalimage)


# --------------------------------------------------------------------------- metapage

def test_meta_cleanup_rebuilds_the_metapage() -> None:
    page = bytearray(BLCKSZ)
    rec = record(btree.XLOG_BTREE_META_CLEANUP, b"",
                 block(0, 0, metadata(delpages=7), will_init=True))
    btree.redo_block(CTX, rec, 0, page)
    assert BT_META_PAGE.unpack_from(page, 24) == (0x053162, 4, 3, 1, 3, 1, 7, -1.0, True)
    assert (pd_lower(page), pd_upper(page), pd_special(page)) == (72, 8176, 8176)
    assert bt_page_get_opaque(page) == BTPageOpaque(0, 0, 0, BTP_META, 0)
    assert page_get_lsn(page) == END
    assert page[72:8176] == bytes(8176 - 72)


# --------------------------------------------------------------------------- inserts

def test_insert_leaf_shifts_line_pointers() -> None:
    page = bt_page([itup(10), itup(30)])
    rec = record(btree.XLOG_BTREE_INSERT_LEAF, struct.pack("<H", 2),
                 block(0, 5, itup(20)))
    btree.redo_block(CTX, rec, 0, page)
    assert items(page) == [itup(10), itup(20), itup(30)]
    assert page_get_lsn(page) == END


def test_insert_upper_clears_incomplete_split_on_the_child() -> None:
    child = bt_page([itup(1)], flags=BTP_LEAF | BTP_INCOMPLETE_SPLIT | BTP_HAS_GARBAGE)
    rec = record(btree.XLOG_BTREE_INSERT_UPPER, struct.pack("<H", 2),
                 block(0, 3, pivot(5, 9)), block(1, 4))
    btree.redo_block(CTX, rec, 1, child)
    assert bt_page_get_opaque(child).btpo_flags == BTP_LEAF | BTP_HAS_GARBAGE
    assert page_get_lsn(child) == END


def test_insert_post_swaps_the_posting_list() -> None:
    opost = posting(7, [(1, 1), (1, 3), (1, 5)])
    page = bt_page([itup(5), opost])
    data = struct.pack("<H", 1) + itup(7, (1, 2))
    rec = record(btree.XLOG_BTREE_INSERT_POST, struct.pack("<H", 3), block(0, 2, data))
    btree.redo_block(CTX, rec, 0, page)
    assert items(page) == [itup(5), posting(7, [(1, 1), (1, 2), (1, 3)]), itup(7, (1, 5))]


# --------------------------------------------------------------------------- posting lists

def test_form_posting_layout() -> None:
    p = posting(7, [(1, 1), (2, 4)])
    # keysize 16, 2 TIDs -> MAXALIGN(16 + 12) = 32
    assert len(p) == 32
    assert struct.unpack_from("<HHHH", p) == (0, 16, 2 | 0x2000, 32 | 0x2000)
    assert p[16:28] == tid(1, 1) + tid(2, 4) and p[28:] == bytes(4)
    assert bt_form_posting(itup(7, (1, 1)), tid(3, 3)) == bytearray(itup(7, (3, 3)))


def test_update_posting_to_a_plain_tuple_and_a_shorter_list() -> None:
    p = posting(7, [(1, 1), (1, 2), (1, 3)])
    assert bt_update_posting(p, [0, 2]) == bytearray(itup(7, (1, 2)))
    assert bt_update_posting(p, [1]) == bytearray(posting(7, [(1, 1), (1, 3)]))
    with pytest.raises(CorruptionError):
        bt_update_posting(p, [0, 1, 2])


def test_swap_posting_rejects_bad_offsets() -> None:
    p = posting(7, [(1, 1), (1, 3)])
    with pytest.raises(CorruptionError, match="cannot be split at offset 2"):
        bt_swap_posting(bytearray(itup(7, (1, 2))), p, 2)
    newitem = bytearray(itup(7, (1, 2)))
    assert bt_swap_posting(newitem, p, 1) == bytearray(posting(7, [(1, 1), (1, 2)]))
    assert newitem == bytearray(itup(7, (1, 3)))


# --------------------------------------------------------------------------- splits

def split_record(info: int, firstrightoff: int, newitemoff: int, left: bytes,
                 right: bytes, *, level: int = 0, postingoff: int = 0,
                 sibling: int | None = None) -> DecodedRecord:
    blocks = [block(0, 1, left), block(1, 2, right, will_init=True)]
    if sibling is not None:
        blocks.append(block(2, sibling))
    main = struct.pack("<IHHH", level, firstrightoff, newitemoff, postingoff)
    return record(info, main, *blocks)


def test_split_rebuilds_both_halves() -> None:
    orig = bt_page([itup(10), itup(20), itup(30), itup(40)], prev=0, nxt=7,
                   flags=BTP_LEAF | BTP_HAS_GARBAGE | BTP_SPLIT_END)
    orig[8192 - 2:] = b"\x05\x00"  # a cycle id
    hikey_orig = items(orig)[0]
    # offset 1 is the high key (not rightmost); 20 stays left, with the new item 15
    # going before it; 30 and 40 go right under the old high key
    left_hikey = itup(20)
    # the right page's bytes [pd_upper, pd_special) as on the primary
    right = bt_page([hikey_orig, itup(30), itup(40)])
    right_data = bytes(right[pd_upper(right):pd_special(right)])
    rec = split_record(btree.XLOG_BTREE_SPLIT_L, 3, 2, itup(15) + left_hikey, right_data,
                       sibling=7)

    new_right = bytearray(BLCKSZ)
    btree.redo_block(CTX, rec, 1, new_right)
    assert items(new_right) == [hikey_orig, itup(30), itup(40)]
    assert bt_page_get_opaque(new_right) == BTPageOpaque(1, 7, 0, BTP_LEAF, 0)

    btree.redo_block(CTX, rec, 0, orig)
    assert items(orig) == [left_hikey, itup(15), itup(20)]
    assert bt_page_get_opaque(orig) == BTPageOpaque(0, 2, 0, BTP_LEAF | BTP_INCOMPLETE_SPLIT, 0)
    assert pd_flags(orig) == 0 and page_get_lsn(orig) == END

    sib = bt_page([itup(50)], prev=1)
    btree.redo_block(CTX, rec, 2, sib)
    assert bt_page_get_opaque(sib).btpo_prev == 2


def test_split_left_page_is_a_fresh_page() -> None:
    orig = bt_page([itup(10), itup(20), itup(30)], nxt=0)
    set_pd_flags(orig, 0x2)  # PD_PAGE_FULL, gone after the temp page copy
    orig[5000:5008] = b"stalestf"  # free space garbage, zeroed by the temp page
    right = bt_page([itup(30)])
    rec = split_record(btree.XLOG_BTREE_SPLIT_R, 3, 4, itup(25),
                       bytes(right[pd_upper(right):pd_special(right)]))
    btree.redo_block(CTX, rec, 0, orig)
    assert items(orig) == [itup(25), itup(10), itup(20)]
    assert pd_flags(orig) == 0 and orig[5000:5008] == bytes(8)


# --------------------------------------------------------------------------- dedup, vacuum

def test_dedup_merges_the_logged_intervals() -> None:
    page = bt_page([itup(1, (1, 1)), itup(1, (1, 2)), itup(1, (2, 1)), itup(2, (3, 3))],
                   flags=BTP_LEAF | BTP_HAS_GARBAGE)
    rec = record(btree.XLOG_BTREE_DEDUP, struct.pack("<H", 1),
                 block(0, 1, struct.pack("<HH", 1, 3)))
    btree.redo_block(CTX, rec, 0, page)
    assert items(page) == [posting(1, [(1, 1), (1, 2), (2, 1)]), itup(2, (3, 3))]
    assert bt_page_get_opaque(page).btpo_flags == BTP_LEAF


def test_vacuum_updates_posting_lists_then_deletes() -> None:
    page = bt_page([itup(1), posting(2, [(1, 1), (1, 2), (1, 3)]), itup(3), itup(4),
                    itup(5)], flags=BTP_LEAF | BTP_HAS_GARBAGE)
    data = struct.pack("<3H", 1, 3, 5) + struct.pack("<H", 2) + struct.pack("<HH", 1, 1)
    rec = record(btree.XLOG_BTREE_VACUUM, struct.pack("<HH", 3, 1), block(0, 1, data))
    btree.redo_block(CTX, rec, 0, page)
    assert items(page) == [posting(2, [(1, 1), (1, 3)]), itup(4)]
    assert bt_page_get_opaque(page).btpo_flags == BTP_LEAF


def test_delete_record_layout() -> None:
    page = bt_page([itup(1), itup(2)])
    rec = record(btree.XLOG_BTREE_DELETE, struct.pack("<IHH", 900, 1, 0),
                 block(0, 1, struct.pack("<H", 2)))
    btree.redo_block(CTX, rec, 0, page)
    assert items(page) == [itup(1)]


# --------------------------------------------------------------------------- page deletion

def test_mark_page_halfdead() -> None:
    parent = bt_page([pivot(0, 1), pivot(10, 4), pivot(20, 5)], level=1, flags=0)
    main = struct.pack("<H2xIIII", 2, 4, 3, 5, 0xFFFF_FFFF)
    rec = record(btree.XLOG_BTREE_MARK_PAGE_HALFDEAD, main, block(0, 4, will_init=True),
                 block(1, 8))
    btree.redo_block(CTX, rec, 1, parent)
    assert items(parent) == [pivot(0, 1), pivot(10, 5)]
    leaf = bytearray(BLCKSZ)
    btree.redo_block(CTX, rec, 0, leaf)
    assert bt_page_get_opaque(leaf) == BTPageOpaque(3, 5, 0, BTP_HALF_DEAD | BTP_LEAF, 0)
    assert items(leaf) == [struct.pack("<HHHH", 0xFFFF, 0xFFFF, 0, 8 | 0x2000)]


def test_unlink_page_blocks() -> None:
    main = struct.pack("<III4xQIII", 3, 5, 1, 0x1_0000_0400, 10, 11, 12)
    rec = record(btree.XLOG_BTREE_UNLINK_PAGE_META, main, block(0, 4, will_init=True),
                 block(1, 3), block(2, 5), block(3, 9, will_init=True),
                 block(4, 0, metadata(), will_init=True))
    target = bytearray(BLCKSZ)
    btree.redo_block(CTX, rec, 0, target)
    assert bt_page_get_opaque(target) == BTPageOpaque(3, 5, 1, BTP_DELETED | BTP_HAS_FULLXID, 0)
    assert (pd_lower(target), pd_upper(target)) == (32, 8176)
    assert struct.unpack_from("<Q", target, 24) == (0x1_0000_0400,)
    left, right = bt_page([itup(1)], nxt=4), bt_page([itup(9)], prev=4)
    btree.redo_block(CTX, rec, 1, left)
    btree.redo_block(CTX, rec, 2, right)
    assert bt_page_get_opaque(left).btpo_next == 5 and bt_page_get_opaque(right).btpo_prev == 3
    leaf = bytearray(BLCKSZ)
    btree.redo_block(CTX, rec, 3, leaf)
    assert bt_page_get_opaque(leaf) == BTPageOpaque(10, 11, 0, BTP_HALF_DEAD | BTP_LEAF, 0)
    meta = bytearray(BLCKSZ)
    btree.redo_block(CTX, rec, 4, meta)
    assert bt_page_get_opaque(meta).btpo_flags == BTP_META


def test_newroot_restores_items_in_order() -> None:
    primary_root = bt_page([pivot(0, 1), pivot(50, 2)], level=1, flags=BTP_ROOT)
    data = bytes(primary_root[pd_upper(primary_root):pd_special(primary_root)])
    rec = record(btree.XLOG_BTREE_NEWROOT, struct.pack("<II", 3, 1),
                 block(0, 3, data, will_init=True), block(1, 1),
                 block(2, 0, metadata(), will_init=True))
    root = bytearray(BLCKSZ)
    btree.redo_block(CTX, rec, 0, root)
    assert root[24:] == primary_root[24:]
    assert bt_page_get_opaque(root) == BTPageOpaque(0, 0, 1, BTP_ROOT, 0)


# --------------------------------------------------------------------------- errors

def test_unknown_and_malformed_records() -> None:
    page = bt_page([itup(1)])
    with pytest.raises(UnsupportedWalRecord, match="0xf0"):
        btree.redo_block(CTX, record(0xF0, b""), 0, page)
    with pytest.raises(CorruptWalError, match="no use for block 0"):
        btree.redo_block(CTX, record(btree.XLOG_BTREE_REUSE_PAGE, bytes(24), block(0, 1)), 0,
                         page)
    with pytest.raises(CorruptWalError, match="expected at least 10"):
        btree.redo_block(CTX, record(btree.XLOG_BTREE_SPLIT_L, bytes(4), block(0, 1)), 0, page)
    with pytest.raises(CorruptWalError, match="no use for block 1"):
        btree.redo_block(CTX, record(btree.XLOG_BTREE_INSERT_LEAF, bytes(2), block(1, 1)), 1,
                         page)
