"""Heap redo on hand-built pages and records: each HEAP/HEAP2 record type's effect, the
flag-driven variants, and the errors PostgreSQL would PANIC with.  The byte-for-byte
comparison with PostgreSQL's own after-images is tests/integration/test_heap_redo_oracle.py.
"""

from __future__ import annotations

import struct

import pytest

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.keys import ForkNumber
from pagestore.pg.rmgr import RmgrId
from pagestore.pg.xlogrecord import (
    BlockReference,
    DecodedRecord,
)
from pagestore.redo import heap
from pagestore.redo.bufpage import (
    LP_DEAD,
    LP_NORMAL,
    LP_REDIRECT,
    LP_UNUSED,
    PD_ALL_VISIBLE,
    PD_HAS_FREE_LINES,
    get_item_id,
    item_id_set_dead,
    item_id_set_unused,
    maxalign,
    new_page,
    page_add_item,
    page_get_lsn,
    page_get_max_offset_number,
    page_get_prune_xid,
    page_set_flag,
    page_set_lsn,
    page_set_prune_xid,
    pd_flags,
    pd_lower,
    pd_upper,
)
from pagestore.redo.context import ReadMode, RedoContext
from pagestore.redo.heap import HEAP_TUPLE_HEADER
from tests.unit import redo_records
from tests.unit.redo_records import CTX, END, REL, block

VM_REL = REL.with_fork(ForkNumber.VISIBILITYMAP)
XID = 1000
HINTS = RedoContext(wal_log_hints=True)

HEAP_XMIN_COMMITTED = 0x0100
HEAP_XMAX_INVALID = 0x0800
HEAP_HASVARWIDTH = 0x0002


def record(rmid: int, info: int, main: bytes, *blocks: BlockReference,
           xid: int = XID) -> DecodedRecord:
    return redo_records.record(rmid, info, main, *blocks, xid=xid)


def tuple_header(page: bytearray, offnum: int) -> tuple[int, ...]:
    """(xmin, xmax, cid, ctid block, ctid offset, infomask2, infomask, hoff)."""
    off, _flags, _len = get_item_id(page, offnum)
    xmin, xmax, cid, hi, lo, posid, im2, im, hoff = HEAP_TUPLE_HEADER.unpack_from(page, off)
    return xmin, xmax, cid, (hi << 16) | lo, posid, im2, im, hoff


def body_of(page: bytearray, offnum: int) -> bytes:
    off, _flags, length = get_item_id(page, offnum)
    return bytes(page[off + 23:off + length])


def raw_tuple(xmin: int = 900, xmax: int = 0, cid: int = 7, blkno: int = 0, offnum: int = 1,
              infomask2: int = 2, infomask: int = HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID,
              hoff: int = 24, body: bytes = b"\x00hello world") -> bytes:
    hdr = HEAP_TUPLE_HEADER.pack(xmin, xmax, cid, blkno >> 16, blkno & 0xFFFF, offnum,
                                 infomask2, infomask, hoff)
    return hdr + body


def heap_page(*tuples: bytes) -> bytearray:
    page = new_page(0)
    for i, t in enumerate(tuples, start=1):
        assert page_add_item(page, t, i) == i
    return page


def insert_data(body: bytes, infomask2: int = 2, infomask: int = HEAP_HASVARWIDTH,
                hoff: int = 24) -> bytes:
    return heap.XL_HEAP_HEADER.pack(infomask2, infomask, hoff) + body


# --------------------------------------------------------------------------- INSERT

def test_insert_with_init_page_builds_the_redo_tuple() -> None:
    body = b"\x00" + b"abcdefghi"  # null bitmap/padding byte, then 9 data bytes
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_INSERT | heap.XLOG_HEAP_INIT_PAGE,
                 heap.XL_HEAP_INSERT.pack(1, 0),
                 block(0, 7, insert_data(body, infomask=HEAP_HASVARWIDTH | heap.HEAP_COMBOCID),
                       will_init=True))
    page = bytearray(8192)
    heap.redo_block(CTX, rec, 0, page)
    newlen = 23 + len(body)
    assert get_item_id(page, 1) == (8192 - maxalign(newlen), LP_NORMAL, newlen)
    assert pd_lower(page) == 28 and pd_upper(page) == 8192 - maxalign(newlen)
    # xmin from the record, xmax 0, cid 0 (COMBOCID cleared), ctid = self
    assert tuple_header(page, 1) == (XID, 0, 0, 7, 1, 2, HEAP_HASVARWIDTH, 24)
    assert body_of(page, 1) == body
    assert page_get_lsn(page) == END


def test_insert_reuses_an_unused_line_pointer_and_refuses_a_used_one() -> None:
    page = heap_page(raw_tuple(), raw_tuple(offnum=2), raw_tuple(offnum=3))
    item_id_set_unused(page, 2)
    lower = pd_lower(page)
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_INSERT, heap.XL_HEAP_INSERT.pack(2, 0),
                 block(0, 0, insert_data(b"\x00new")))
    heap.redo_block(CTX, rec, 0, page)
    assert pd_lower(page) == lower  # overwrite: no shuffle, no new line pointer
    assert tuple_header(page, 2)[3:5] == (0, 2)
    with pytest.raises(CorruptWalError, match="failed to add tuple"):
        heap.redo_block(CTX, rec, 0, page)  # the slot is used now
    too_far = record(RmgrId.HEAP, heap.XLOG_HEAP_INSERT, heap.XL_HEAP_INSERT.pack(5, 0),
                     block(0, 0, insert_data(b"\x00x")))
    with pytest.raises(CorruptWalError, match="invalid max offset number"):
        heap.redo_block(CTX, too_far, 0, page)


def test_insert_all_visible_cleared_and_padding_left_alone() -> None:
    page = heap_page(raw_tuple())
    page_set_flag(page, PD_ALL_VISIBLE)
    upper = pd_upper(page)
    page[upper - 32:upper] = b"\xee" * 32  # stale bytes where the new tuple goes
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_INSERT,
                 heap.XL_HEAP_INSERT.pack(2, heap.XLH_INSERT_ALL_VISIBLE_CLEARED),
                 block(0, 0, insert_data(b"\x00\x01")))  # a 25-byte tuple
    heap.redo_block(CTX, rec, 0, page)
    assert not pd_flags(page) & PD_ALL_VISIBLE
    off, _f, length = get_item_id(page, 2)
    assert (off, length) == (upper - 32, 25)
    assert page[off + 25:off + 32] == b"\xee" * 7  # PageAddItem copies len, not MAXALIGN(len)
    assert heap.vm_clears(rec) == [heap.VmClear(VM_REL, 0, 0, heap.VISIBILITYMAP_VALID_BITS)]


def test_insert_into_a_toast_or_speculative_tuple_still_gets_self_ctid() -> None:
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_INSERT | heap.XLOG_HEAP_INIT_PAGE,
                 heap.XL_HEAP_INSERT.pack(1, heap.XLH_INSERT_IS_SPECULATIVE),
                 block(0, 3, insert_data(b"\x00spec"), will_init=True))
    page = bytearray(8192)
    heap.redo_block(CTX, rec, 0, page)
    assert tuple_header(page, 1)[3:5] == (3, 1)


# --------------------------------------------------------------------------- DELETE

def test_delete_resets_xmax_bits_and_sets_prunable() -> None:
    infomask = (HEAP_XMIN_COMMITTED | HEAP_XMAX_INVALID | heap.HEAP_COMBOCID
                | heap.HEAP_XMAX_LOCK_ONLY | heap.HEAP_MOVED_OFF | HEAP_HASVARWIDTH)
    infomask2 = 3 | heap.HEAP_HOT_UPDATED | heap.HEAP_KEYS_UPDATED
    page = heap_page(raw_tuple(infomask=infomask, infomask2=infomask2, cid=9))
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_DELETE,
                 heap.XL_HEAP_DELETE.pack(1234, 1, heap.XLHL_KEYS_UPDATED, 0), block(0, 4))
    heap.redo_block(CTX, rec, 0, page)
    xmin, xmax, cid, blk, off, im2, im, _hoff = tuple_header(page, 1)
    assert (xmin, xmax, cid, blk, off) == (900, 1234, 0, 4, 1)
    assert im == HEAP_XMIN_COMMITTED | HEAP_HASVARWIDTH
    assert im2 == 3 | heap.HEAP_KEYS_UPDATED
    assert page_get_prune_xid(page) == XID
    assert page_get_lsn(page) == END


@pytest.mark.parametrize(("current", "xid", "expected"), [
    (0, 1000, 1000),            # unset: set
    (2000, 1000, 1000),         # older xid wins
    (500, 1000, 500),           # newer xid does not replace
    (0xFFFF_FF00, 5, 0xFFFF_FF00),  # 5 is after 0xFFFFFF00 modulo 2^32
    (5, 0xFFFF_FF00, 0xFFFF_FF00),  # and 0xFFFFFF00 precedes 5
])
def test_page_set_prunable(current: int, xid: int, expected: int) -> None:
    page = new_page(0)
    page_set_prune_xid(page, current)
    heap.page_set_prunable(page, xid)
    assert page_get_prune_xid(page) == expected


def test_delete_super_and_partition_move_and_all_visible() -> None:
    page = heap_page(raw_tuple(), raw_tuple(offnum=2))
    page_set_flag(page, PD_ALL_VISIBLE)
    flags = heap.XLH_DELETE_IS_SUPER | heap.XLH_DELETE_ALL_VISIBLE_CLEARED
    heap.redo_block(CTX, record(RmgrId.HEAP, heap.XLOG_HEAP_DELETE,
                                heap.XL_HEAP_DELETE.pack(777, 1, 0, flags), block(0, 0)), 0, page)
    assert tuple_header(page, 1)[:2] == (0, 0)  # xmin invalidated, xmax untouched
    assert not pd_flags(page) & PD_ALL_VISIBLE
    heap.redo_block(CTX, record(RmgrId.HEAP, heap.XLOG_HEAP_DELETE,
                                heap.XL_HEAP_DELETE.pack(777, 2, 0,
                                                         heap.XLH_DELETE_IS_PARTITION_MOVE),
                                block(0, 0)), 0, page)
    assert tuple_header(page, 2)[1:5] == (777, 0, 0xFFFF_FFFF, 0xFFFD)


def test_delete_of_a_non_normal_line_pointer_is_corrupt() -> None:
    page = heap_page(raw_tuple())
    item_id_set_dead(page, 1)
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_DELETE, heap.XL_HEAP_DELETE.pack(1, 1, 0, 0),
                 block(0, 0))
    with pytest.raises(CorruptWalError, match="invalid lp"):
        heap.redo_block(CTX, rec, 0, page)
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_DELETE, heap.XL_HEAP_DELETE.pack(1, 9, 0, 0),
                 block(0, 0))
    with pytest.raises(CorruptWalError, match="invalid lp"):
        heap.redo_block(CTX, rec, 0, page)
    with pytest.raises(CorruptWalError, match="main data"):
        heap.redo_block(CTX, record(RmgrId.HEAP, heap.XLOG_HEAP_DELETE, b"\x00", block(0, 0)),
                        0, page)


# --------------------------------------------------------------------------- UPDATE

def test_hot_update_on_one_page_with_prefix_and_suffix() -> None:
    old_body = b"\x00" + b"PREFIX-old-middle-SUFFIX"
    page = heap_page(raw_tuple(body=old_body, infomask2=2))
    new_middle = b"NEW MIDDLE"
    data = (struct.pack("<HH", 7, 7) + heap.XL_HEAP_HEADER.pack(2, HEAP_HASVARWIDTH, 24)
            + b"\x00" + new_middle)
    flags = heap.XLH_UPDATE_PREFIX_FROM_OLD | heap.XLH_UPDATE_SUFFIX_FROM_OLD
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_HOT_UPDATE,
                 heap.XL_HEAP_UPDATE.pack(XID, 1, 0, flags, 0, 2), block(0, 6, data))
    heap.redo_block(CTX, rec, 0, page)
    # old tuple: HOT_UPDATED, xmax, ctid -> new version
    _xmin, xmax, cid, blk, off, im2, _im, _ = tuple_header(page, 1)
    assert (xmax, cid, blk, off) == (XID, 0, 6, 2)
    assert im2 & heap.HEAP_HOT_UPDATED
    assert body_of(page, 2) == b"\x00PREFIX-" + new_middle + b"-SUFFIX"[-7:]
    assert tuple_header(page, 2)[:5] == (XID, 0, 0, 6, 2)
    assert page_get_prune_xid(page) == XID
    assert page_get_lsn(page) == END


def test_update_across_pages_init_new_page() -> None:
    old = heap_page(raw_tuple(infomask2=2 | heap.HEAP_HOT_UPDATED))
    page_set_flag(old, PD_ALL_VISIBLE)
    flags = heap.XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | heap.XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED
    main = heap.XL_HEAP_UPDATE.pack(XID, 1, heap.XLHL_KEYS_UPDATED, flags, 55, 1)
    data = heap.XL_HEAP_HEADER.pack(2, HEAP_HASVARWIDTH, 24) + b"\x00moved"
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_UPDATE | heap.XLOG_HEAP_INIT_PAGE, main,
                 block(0, 9, data, will_init=True), block(1, 2))
    heap.redo_block(CTX, rec, 1, old)
    _xmin, xmax, _cid, blk, off, im2, _im, _ = tuple_header(old, 1)
    assert (xmax, blk, off) == (XID, 9, 1)
    assert im2 == 2 | heap.HEAP_KEYS_UPDATED  # HOT_UPDATED cleared for a cold update
    assert not pd_flags(old) & PD_ALL_VISIBLE
    new = bytearray(8192)
    heap.redo_block(CTX, rec, 0, new)
    assert tuple_header(new, 1)[:5] == (XID, 55, 0, 9, 1)
    assert body_of(new, 1) == b"\x00moved"
    assert page_get_lsn(new) == page_get_lsn(old) == END
    assert heap.vm_clears(rec) == [heap.VmClear(VM_REL, 0, 2, 3), heap.VmClear(VM_REL, 0, 9, 3)]


def test_update_prefix_from_an_old_tuple_on_another_page_is_corrupt() -> None:
    main = heap.XL_HEAP_UPDATE.pack(XID, 1, 0, heap.XLH_UPDATE_PREFIX_FROM_OLD, 0, 1)
    data = struct.pack("<H", 3) + heap.XL_HEAP_HEADER.pack(2, 0, 24) + b"\x00x"
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_UPDATE, main, block(0, 9, data), block(1, 2))
    with pytest.raises(CorruptWalError, match="another page"):
        heap.redo_block(CTX, rec, 0, heap_page(raw_tuple()))


# --------------------------------------------------------------------------- LOCK etc.

def test_lock_only_resets_ctid_and_hot_flag() -> None:
    page = heap_page(raw_tuple(blkno=8, offnum=5, infomask2=2 | heap.HEAP_HOT_UPDATED, cid=4))
    infobits = heap.XLHL_XMAX_LOCK_ONLY | heap.XLHL_XMAX_EXCL_LOCK
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_LOCK,
                 heap.XL_HEAP_LOCK.pack(4321, 1, infobits, 0), block(0, 3))
    heap.redo_block(CTX, rec, 0, page)
    _xmin, xmax, cid, blk, off, im2, im, _ = tuple_header(page, 1)
    assert (xmax, cid, blk, off, im2) == (4321, 0, 3, 1, 2)
    assert im == (HEAP_XMIN_COMMITTED | heap.HEAP_XMAX_LOCK_ONLY | heap.HEAP_XMAX_EXCL_LOCK)


def test_lock_by_a_multixact_with_an_update_keeps_the_chain() -> None:
    page = heap_page(raw_tuple(blkno=8, offnum=5, infomask2=2 | heap.HEAP_HOT_UPDATED))
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_LOCK,
                 heap.XL_HEAP_LOCK.pack(77, 1, heap.XLHL_XMAX_IS_MULTI | heap.XLHL_XMAX_EXCL_LOCK,
                                        heap.XLH_LOCK_ALL_FROZEN_CLEARED), block(0, 3))
    heap.redo_block(CTX, rec, 0, page)
    assert tuple_header(page, 1)[1:6] == (77, 0, 8, 5, 2 | heap.HEAP_HOT_UPDATED)
    assert heap.vm_clears(rec) == [heap.VmClear(VM_REL, 0, 3, heap.VISIBILITYMAP_ALL_FROZEN)]


def test_lock_updated_keeps_cid_ctid_and_hot() -> None:
    page = heap_page(raw_tuple(blkno=8, offnum=5, infomask2=2 | heap.HEAP_HOT_UPDATED, cid=4,
                               infomask=heap.HEAP_COMBOCID | HEAP_XMAX_INVALID))
    rec = record(RmgrId.HEAP2, heap.XLOG_HEAP2_LOCK_UPDATED,
                 heap.XL_HEAP_LOCK_UPDATED.pack(88, 1, heap.XLHL_XMAX_KEYSHR_LOCK, 0),
                 block(0, 3))
    heap.redo_block(CTX, rec, 0, page)
    _xmin, xmax, cid, blk, off, im2, im, _ = tuple_header(page, 1)
    assert (xmax, cid, blk, off, im2) == (88, 4, 8, 5, 2 | heap.HEAP_HOT_UPDATED)
    assert im == heap.HEAP_COMBOCID | heap.HEAP_XMAX_KEYSHR_LOCK
    assert page_get_lsn(page) == END


def test_confirm_and_inplace() -> None:
    page = heap_page(raw_tuple(blkno=1, offnum=0xFFFE, body=b"\x00abcdefgh"))
    heap.redo_block(CTX, record(RmgrId.HEAP, heap.XLOG_HEAP_CONFIRM,
                                heap.XL_HEAP_CONFIRM.pack(1), block(0, 12)), 0, page)
    assert tuple_header(page, 1)[3:5] == (12, 1)
    heap.redo_block(CTX, record(RmgrId.HEAP, heap.XLOG_HEAP_INPLACE,
                                heap.XL_HEAP_INPLACE.pack(1), block(0, 12, b"ABCDEFGH")), 0, page)
    assert body_of(page, 1) == b"\x00ABCDEFGH"  # t_hoff 24: data starts after the bitmap
    with pytest.raises(CorruptWalError, match="wrong tuple length"):
        heap.redo_block(CTX, record(RmgrId.HEAP, heap.XLOG_HEAP_INPLACE,
                                    heap.XL_HEAP_INPLACE.pack(1), block(0, 12, b"short")),
                        0, page)


@pytest.mark.parametrize(("infobits", "infomask", "infomask2"), [
    (0, 0, 0),
    (heap.XLHL_XMAX_IS_MULTI, heap.HEAP_XMAX_IS_MULTI, 0),
    (heap.XLHL_XMAX_LOCK_ONLY, heap.HEAP_XMAX_LOCK_ONLY, 0),
    (heap.XLHL_XMAX_EXCL_LOCK, heap.HEAP_XMAX_EXCL_LOCK, 0),
    (heap.XLHL_XMAX_KEYSHR_LOCK, heap.HEAP_XMAX_KEYSHR_LOCK, 0),
    (heap.XLHL_KEYS_UPDATED, 0, heap.HEAP_KEYS_UPDATED),
])
def test_fix_infomask_from_infobits(infobits: int, infomask: int, infomask2: int) -> None:
    stale = (heap.HEAP_XMAX_IS_MULTI | heap.HEAP_XMAX_LOCK_ONLY | heap.HEAP_XMAX_EXCL_LOCK
             | heap.HEAP_XMAX_KEYSHR_LOCK)
    assert heap.fix_infomask_from_infobits(infobits, stale | 0x0003, heap.HEAP_KEYS_UPDATED | 5) \
        == (infomask | 0x0003, infomask2 | 5)


# --------------------------------------------------------------------------- HEAP2

def test_prune_compacts_in_line_pointer_order() -> None:
    page = heap_page(raw_tuple(body=b"\x00one"), raw_tuple(body=b"\x00two-two"),
                     raw_tuple(body=b"\x00three"), raw_tuple(body=b"\x00four"))
    # lp 2 re-used for a tuple below lp 4: line-pointer order is no longer physical order
    item_id_set_unused(page, 2)
    assert page_add_item(page, raw_tuple(body=b"\x00TWO"), 2, heap.PAI_OVERWRITE) == 2
    redirect_to = 3
    offsets = struct.pack("<4H", 1, redirect_to, 4, 0)[:6]  # redirect 1->3, dead 4
    rec = record(RmgrId.HEAP2, heap.XLOG_HEAP2_PRUNE, heap.XL_HEAP_PRUNE.pack(5, 1, 1),
                 block(0, 0, offsets))
    heap.redo_block(CTX, rec, 0, page)
    assert get_item_id(page, 1) == (3, LP_REDIRECT, 0)
    assert get_item_id(page, 4) == (0, LP_DEAD, 0)
    len2 = 23 + 4
    len3 = 23 + 6
    # lp 2 first (top of the page), then lp 3 below it
    assert get_item_id(page, 2) == (8192 - maxalign(len2), LP_NORMAL, len2)
    assert get_item_id(page, 3) == (8192 - maxalign(len2) - maxalign(len3), LP_NORMAL, len3)
    assert body_of(page, 2) == b"\x00TWO" and body_of(page, 3) == b"\x00three"
    assert pd_upper(page) == 8192 - maxalign(len2) - maxalign(len3)
    assert not pd_flags(page) & PD_HAS_FREE_LINES
    assert page_get_lsn(page) == END


def test_prune_now_unused_truncates_trailing_line_pointers() -> None:
    page = heap_page(raw_tuple(), raw_tuple(), raw_tuple())
    rec = record(RmgrId.HEAP2, heap.XLOG_HEAP2_PRUNE, heap.XL_HEAP_PRUNE.pack(5, 0, 0),
                 block(0, 0, struct.pack("<2H", 2, 3)))
    heap.redo_block(CTX, rec, 0, page)
    assert page_get_max_offset_number(page) == 1
    bad = record(RmgrId.HEAP2, heap.XLOG_HEAP2_PRUNE, heap.XL_HEAP_PRUNE.pack(5, 0, 0),
                 block(0, 0, struct.pack("<H", 7)))
    with pytest.raises(CorruptWalError, match="offset 7"):
        heap.redo_block(CTX, bad, 0, page)


def test_vacuum_sets_dead_unused_and_truncates_the_array() -> None:
    page = heap_page(raw_tuple(), raw_tuple(), raw_tuple(), raw_tuple())
    for off in (1, 3, 4):
        item_id_set_dead(page, off)
    upper = pd_upper(page)
    rec = record(RmgrId.HEAP2, heap.XLOG_HEAP2_VACUUM, heap.XL_HEAP_VACUUM.pack(3),
                 block(0, 0, struct.pack("<3H", 1, 3, 4)))
    heap.redo_block(CTX, rec, 0, page)
    assert page_get_max_offset_number(page) == 2
    assert get_item_id(page, 1) == (0, LP_UNUSED, 0)
    assert pd_flags(page) & PD_HAS_FREE_LINES
    assert pd_upper(page) == upper  # no defragmentation
    with pytest.raises(CorruptWalError, match="not LP_DEAD"):
        heap.redo_block(CTX, record(RmgrId.HEAP2, heap.XLOG_HEAP2_VACUUM,
                                    heap.XL_HEAP_VACUUM.pack(1), block(0, 0, b"\x02\x00")),
                        0, page)


def test_freeze_page() -> None:
    page = heap_page(raw_tuple(xmax=5, cid=3), raw_tuple(xmax=6, cid=3))
    frz = (heap.XL_HEAP_FREEZE_TUPLE.pack(0, 1, 2, 0x0B02, heap.XLH_FREEZE_XVAC)
           + heap.XL_HEAP_FREEZE_TUPLE.pack(9, 2, 0x4002, 0x0302, heap.XLH_INVALID_XVAC))
    rec = record(RmgrId.HEAP2, heap.XLOG_HEAP2_FREEZE_PAGE,
                 heap.XL_HEAP_FREEZE_PAGE.pack(100, 2), block(0, 0, frz))
    heap.redo_block(CTX, rec, 0, page)
    assert tuple_header(page, 1)[1:3] == (0, 2)
    assert tuple_header(page, 1)[5:7] == (2, 0x0B02)
    assert tuple_header(page, 2)[1:3] == (9, 0)
    assert tuple_header(page, 2)[5:7] == (0x4002, 0x0302)
    assert page_get_lsn(page) == END


def visible(heap_blkno: int, flags: int, vm_blkno: int = 0) -> DecodedRecord:
    return record(RmgrId.HEAP2, heap.XLOG_HEAP2_VISIBLE, heap.XL_HEAP_VISIBLE.pack(50, flags),
                  block(0, vm_blkno, rel=VM_REL), block(1, heap_blkno))


def test_visible_sets_vm_bits_and_the_vm_lsn_only_on_change() -> None:
    vm = bytearray(8192)  # read as zeros (RBM_ZERO_ON_ERROR): PageInit first
    heap.redo_block(CTX, visible(5, 0x01), 0, vm)
    assert pd_lower(vm) == 24 and pd_upper(vm) == 8192
    assert vm[24 + 1] == 0x01 << 2 and page_get_lsn(vm) == END
    page_set_lsn(vm, 0x10)
    heap.redo_block(CTX, visible(5, 0x01), 0, vm)
    assert page_get_lsn(vm) == 0x10  # bits already as asked: no change, no LSN
    heap.redo_block(CTX, visible(5, 0x02), 0, vm)
    assert vm[25] == 0x03 << 2 and page_get_lsn(vm) == END
    with pytest.raises(CorruptWalError, match="does not map"):
        heap.redo_block(CTX, visible(5, 0x01, vm_blkno=1), 0, vm)


@pytest.mark.parametrize(("ctx", "lsn_changes"), [(CTX, False), (HINTS, True)])
def test_visible_heap_page(ctx: RedoContext, lsn_changes: bool) -> None:
    page = heap_page(raw_tuple())
    page_set_lsn(page, 0x20)
    heap.redo_block(ctx, visible(5, 0x03), 1, page)
    assert pd_flags(page) & PD_ALL_VISIBLE
    assert page_get_lsn(page) == (END if lsn_changes else 0x20)


def test_read_mode() -> None:
    assert heap.read_mode(visible(5, 1), 0) is ReadMode.ZERO_ON_ERROR
    assert heap.read_mode(visible(5, 1), 1) is ReadMode.NORMAL
    rec = record(RmgrId.HEAP, heap.XLOG_HEAP_DELETE, heap.XL_HEAP_DELETE.pack(1, 1, 0, 0),
                 block(0, 0))
    assert heap.read_mode(rec, 0) is ReadMode.NORMAL


def multi_tuple(body: bytes, infomask2: int = 2, infomask: int = 0, hoff: int = 24) -> bytes:
    return heap.XL_MULTI_INSERT_TUPLE.pack(len(body), infomask2, infomask, hoff) + body


def test_multi_insert_init_page_short_aligns_each_tuple_header() -> None:
    t1 = multi_tuple(b"\x00abc")  # 7 + 4 = 11 bytes: the next header starts at 12
    t2 = multi_tuple(b"\x00defgh")
    data = t1 + b"\x00" + t2
    main = heap.XL_HEAP_MULTI_INSERT.pack(heap.XLH_INSERT_ALL_FROZEN_SET, 2)
    rec = record(RmgrId.HEAP2, heap.XLOG_HEAP2_MULTI_INSERT | heap.XLOG_HEAP_INIT_PAGE, main,
                 block(0, 4, data, will_init=True))
    page = bytearray(8192)
    heap.redo_block(CTX, rec, 0, page)
    assert page_get_max_offset_number(page) == 2
    assert body_of(page, 1) == b"\x00abc" and body_of(page, 2) == b"\x00defgh"
    assert tuple_header(page, 2)[:5] == (XID, 0, 0, 4, 2)
    assert pd_flags(page) & PD_ALL_VISIBLE


def test_multi_insert_with_offsets_and_length_check() -> None:
    page = heap_page(raw_tuple(), raw_tuple(), raw_tuple())
    item_id_set_unused(page, 2)
    page_set_flag(page, PD_ALL_VISIBLE)
    main = heap.XL_HEAP_MULTI_INSERT.pack(heap.XLH_INSERT_ALL_VISIBLE_CLEARED, 2) + \
        struct.pack("<2H", 2, 4)
    data = multi_tuple(b"\x00xyz") + b"\x00" + multi_tuple(b"\x00z")
    rec = record(RmgrId.HEAP2, heap.XLOG_HEAP2_MULTI_INSERT, main, block(0, 0, data))
    heap.redo_block(CTX, rec, 0, page)
    assert body_of(page, 2) == b"\x00xyz" and body_of(page, 4) == b"\x00z"
    assert not pd_flags(page) & PD_ALL_VISIBLE
    assert heap.vm_clears(rec) == [heap.VmClear(VM_REL, 0, 0, 3)]
    long = record(RmgrId.HEAP2, heap.XLOG_HEAP2_MULTI_INSERT, main,
                  block(0, 0, data + b"\x00\x00"))
    fresh = heap_page(raw_tuple(), raw_tuple(), raw_tuple())
    item_id_set_unused(fresh, 2)
    with pytest.raises(CorruptWalError, match="total tuple length mismatch"):
        heap.redo_block(CTX, long, 0, fresh)


# --------------------------------------------------------------------------- VM, dispatch

def test_vm_clear_and_set() -> None:
    vm = bytearray(8192)
    heap.vm_clear(vm, 40000, 0x03)  # a new page is PageInit'ed first, LSN untouched
    assert pd_upper(vm) == 8192 and page_get_lsn(vm) == 0
    blkno = 32672 + 6  # the second VM page's heap block 6: byte 1, shift 4
    assert heap.vm_set(vm, blkno, 0x03)
    assert vm[25] == 0x30
    heap.vm_clear(vm, blkno, heap.VISIBILITYMAP_ALL_FROZEN)
    assert vm[25] == 0x10
    assert not heap.vm_set(vm, blkno, 0x01)


def test_vm_clears_of_each_record_type() -> None:
    def rec(rmid: int, info: int, main: bytes, *blocks: BlockReference) -> DecodedRecord:
        return record(rmid, info, main, *(blocks or (block(0, 70000),)))

    all_bits = heap.VISIBILITYMAP_VALID_BITS
    assert heap.vm_clears(rec(RmgrId.HEAP, 0, heap.XL_HEAP_INSERT.pack(1, 1))) == \
        [heap.VmClear(VM_REL, 2, 70000, all_bits)]
    assert heap.vm_clears(rec(RmgrId.HEAP, 0, heap.XL_HEAP_INSERT.pack(1, 0))) == []
    assert heap.vm_clears(rec(RmgrId.HEAP, heap.XLOG_HEAP_DELETE,
                              heap.XL_HEAP_DELETE.pack(1, 1, 0, 1))) == \
        [heap.VmClear(VM_REL, 2, 70000, all_bits)]
    assert heap.vm_clears(rec(RmgrId.HEAP, heap.XLOG_HEAP_HOT_UPDATE,
                              heap.XL_HEAP_UPDATE.pack(1, 1, 0, 1, 0, 2))) == \
        [heap.VmClear(VM_REL, 2, 70000, all_bits)]
    assert heap.vm_clears(rec(RmgrId.HEAP2, heap.XLOG_HEAP2_LOCK_UPDATED,
                              heap.XL_HEAP_LOCK_UPDATED.pack(1, 1, 0, 1))) == \
        [heap.VmClear(VM_REL, 2, 70000, heap.VISIBILITYMAP_ALL_FROZEN)]
    assert heap.vm_clears(rec(RmgrId.HEAP2, heap.XLOG_HEAP2_PRUNE,
                              heap.XL_HEAP_PRUNE.pack(1, 0, 0))) == []
    assert heap.vm_clears(record(RmgrId.HEAP2, heap.XLOG_HEAP2_NEW_CID, b"\x00" * 34)) == []
    assert heap.vm_clears(rec(RmgrId.BTREE, 0, b"")) == []


def test_records_without_page_effect_and_unknown_rmgrs() -> None:
    page = heap_page(raw_tuple())
    before = bytes(page)
    for rmid, info in ((RmgrId.HEAP, heap.XLOG_HEAP_TRUNCATE),
                       (RmgrId.HEAP2, heap.XLOG_HEAP2_NEW_CID),
                       (RmgrId.HEAP2, heap.XLOG_HEAP2_REWRITE)):
        heap.redo_block(CTX, record(rmid, info, b"\x00" * 40), 0, page)
    assert bytes(page) == before
    with pytest.raises(UnsupportedWalRecord, match="Btree"):
        heap.redo_block(CTX, record(RmgrId.BTREE, 0, b"", block(0, 0)), 0, page)


def test_record_type_names() -> None:
    assert heap.record_type_name(record(RmgrId.HEAP, 0x80 | 0x02, b"")) == "INSERT+INIT"
    assert heap.record_type_name(record(RmgrId.HEAP2, heap.XLOG_HEAP2_VISIBLE, b"")) == "VISIBLE"
