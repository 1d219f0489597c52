"""Heap redo: every HEAP (rmid 10) and HEAP2 (rmid 9) record type of PostgreSQL 15, one
block at a time, byte for byte.

Mirrors src/backend/access/heap/heapam.c: heap_redo and heap2_redo, heap_xlog_insert,
heap_xlog_delete, heap_xlog_update (UPDATE and HOT_UPDATE), heap_xlog_confirm,
heap_xlog_lock, heap_xlog_inplace, heap_xlog_prune, heap_xlog_vacuum,
heap_xlog_freeze_page (with heap_execute_freeze_tuple), heap_xlog_visible,
heap_xlog_multi_insert, heap_xlog_lock_updated and fix_infomask_from_infobits; plus
heap_page_prune_execute (pruneheap.c) and visibilitymap_set / visibilitymap_clear
(visibilitymap.c).  Record layouts: src/include/access/heapam_xlog.h; tuple header:
src/include/access/htup_details.h.

Rules kept (see pagestore/redo/context.py for the contract):

- ``redo_block`` changes only the page of the block reference it is given, exactly as the
  C routine changes that buffer when it BLK_NEEDS_REDO (or is initialised), including
  PageSetLSN where PostgreSQL calls it.  For UPDATE/HOT_UPDATE on one page, block 0 gets
  both the old-tuple and the new-tuple change; across pages block 1 is the old page.
- Tuples are rebuilt the way redo builds them, not the way the primary had them:
  xmin := the record's xid, cid := FirstCommandId (0) with HEAP_COMBOCID cleared,
  t_ctid := the tuple's own TID, header bits from xl_heap_header, body from the record.
  PageAddItem runs with overwrite and is_heap (PAI_OVERWRITE | PAI_IS_HEAP).
- The free space map is never touched (XLogRecordPageWithFreeSpace updates the FSM fork,
  not the heap page).
- The visibility-map bits that heap records clear are not block references: ``vm_clears``
  lists them per record and ``vm_clear`` applies one to a VM page (no LSN change), as
  the C redo routines do before looking at the heap page.  HEAP2_VISIBLE's block 0 *is*
  the VM page (read with RBM_ZERO_ON_ERROR, see ``read_mode``); its heap page (block 1)
  gets PD_ALL_VISIBLE, and its LSN only when hint bits are WAL-logged.
- A record type this module does not know raises UnsupportedWalRecord; an inconsistent
  record or page (PostgreSQL's PANIC "invalid lp", "failed to add tuple", ...) raises
  CorruptWalError naming the record's LSN.  TRUNCATE, NEW_CID and REWRITE have no page
  effect and no block references.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.keys import ForkNumber, RelTag
from pagestore.pg import rmgr
from pagestore.pg.rmgr import RmgrId
from pagestore.redo.bufpage import (
    ITEM_POINTER,
    LP_DEAD,
    LP_NORMAL,
    PAI_IS_HEAP,
    PAI_OVERWRITE,
    PD_ALL_VISIBLE,
    U16,
    U32,
    get_item_id,
    item_id_set_dead,
    item_id_set_redirect,
    item_id_set_unused,
    page_add_item,
    page_clear_flag,
    page_get_lsn,
    page_get_max_offset_number,
    page_get_prune_xid,
    page_init,
    page_repair_fragmentation,
    page_set_flag,
    page_set_lsn,
    page_set_prune_xid,
    page_truncate_line_pointer_array,
)
from pagestore.redo.context import ReadMode
from pagestore.redo.visibilitymap import (
    MAP_OFFSET,
    VISIBILITYMAP_ALL_FROZEN,
    VISIBILITYMAP_VALID_BITS,
    vm_clear,
    vm_map_position,
    vm_prepare,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pagestore.pg.xlogrecord import BlockReference, DecodedRecord
    from pagestore.redo.context import RedoContext

__all__ = [
    "VmClear",
    "read_mode",
    "redo_block",
    "vm_clear",
    "vm_clears",
    "vm_set",
]

RM_HEAP2_ID = RmgrId.HEAP2
RM_HEAP_ID = RmgrId.HEAP

# --------------------------------------------------------------------------- record types

XLOG_HEAP_INSERT = 0x00
XLOG_HEAP_DELETE = 0x10
XLOG_HEAP_UPDATE = 0x20
XLOG_HEAP_TRUNCATE = 0x30
XLOG_HEAP_HOT_UPDATE = 0x40
XLOG_HEAP_CONFIRM = 0x50
XLOG_HEAP_LOCK = 0x60
XLOG_HEAP_INPLACE = 0x70
XLOG_HEAP_OPMASK = 0x70
XLOG_HEAP_INIT_PAGE = 0x80

XLOG_HEAP2_REWRITE = 0x00
XLOG_HEAP2_PRUNE = 0x10
XLOG_HEAP2_VACUUM = 0x20
XLOG_HEAP2_FREEZE_PAGE = 0x30
XLOG_HEAP2_VISIBLE = 0x40
XLOG_HEAP2_MULTI_INSERT = 0x50
XLOG_HEAP2_LOCK_UPDATED = 0x60
XLOG_HEAP2_NEW_CID = 0x70


# xl_heap_insert / xl_heap_multi_insert flags
XLH_INSERT_ALL_VISIBLE_CLEARED = 1 << 0
XLH_INSERT_LAST_IN_MULTI = 1 << 1
XLH_INSERT_IS_SPECULATIVE = 1 << 2
XLH_INSERT_CONTAINS_NEW_TUPLE = 1 << 3
XLH_INSERT_ON_TOAST_RELATION = 1 << 4
XLH_INSERT_ALL_FROZEN_SET = 1 << 5
# xl_heap_update flags
XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED = 1 << 0
XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED = 1 << 1
XLH_UPDATE_CONTAINS_OLD_TUPLE = 1 << 2
XLH_UPDATE_CONTAINS_OLD_KEY = 1 << 3
XLH_UPDATE_CONTAINS_NEW_TUPLE = 1 << 4
XLH_UPDATE_PREFIX_FROM_OLD = 1 << 5
XLH_UPDATE_SUFFIX_FROM_OLD = 1 << 6
# xl_heap_delete flags
XLH_DELETE_ALL_VISIBLE_CLEARED = 1 << 0
XLH_DELETE_CONTAINS_OLD_TUPLE = 1 << 1
XLH_DELETE_CONTAINS_OLD_KEY = 1 << 2
XLH_DELETE_IS_SUPER = 1 << 3
XLH_DELETE_IS_PARTITION_MOVE = 1 << 4
# xl_heap_lock / xl_heap_lock_updated flags
XLH_LOCK_ALL_FROZEN_CLEARED = 0x01
# infobits_set (compute_infobits)
XLHL_XMAX_IS_MULTI = 0x01
XLHL_XMAX_LOCK_ONLY = 0x02
XLHL_XMAX_EXCL_LOCK = 0x04
XLHL_XMAX_KEYSHR_LOCK = 0x08
XLHL_KEYS_UPDATED = 0x10
# xl_heap_freeze_tuple frzflags
XLH_FREEZE_XVAC = 0x02
XLH_INVALID_XVAC = 0x04

# --------------------------------------------------------------------------- record structs

# xl_heap_insert (SizeOfHeapInsert 3): offnum u16, flags u8
XL_HEAP_INSERT = struct.Struct("<HB")
# xl_heap_header (SizeOfHeapHeader 5): t_infomask2 u16, t_infomask u16, t_hoff u8
XL_HEAP_HEADER = struct.Struct("<HHB")
# xl_heap_delete (SizeOfHeapDelete 8): xmax u32, offnum u16, infobits_set u8, flags u8
XL_HEAP_DELETE = struct.Struct("<IHBB")
# xl_heap_update (SizeOfHeapUpdate 14): old_xmax u32, old_offnum u16, old_infobits_set u8,
# flags u8, new_xmax u32, new_offnum u16
XL_HEAP_UPDATE = struct.Struct("<IHBBIH")
# xl_heap_confirm (SizeOfHeapConfirm 2): offnum u16
XL_HEAP_CONFIRM = struct.Struct("<H")
# xl_heap_lock (SizeOfHeapLock 8): locking_xid u32, offnum u16, infobits_set i8 (bits,
# read unsigned), flags u8
XL_HEAP_LOCK = struct.Struct("<IHBB")
# xl_heap_inplace (SizeOfHeapInplace 2): offnum u16
XL_HEAP_INPLACE = struct.Struct("<H")
# xl_heap_prune (SizeOfHeapPrune 8): latestRemovedXid u32, nredirected u16, ndead u16
XL_HEAP_PRUNE = struct.Struct("<IHH")
# xl_heap_vacuum (SizeOfHeapVacuum 2): nunused u16
XL_HEAP_VACUUM = struct.Struct("<H")
# xl_heap_freeze_page (SizeOfHeapFreezePage 6): cutoff_xid u32, ntuples u16
XL_HEAP_FREEZE_PAGE = struct.Struct("<IH")
# xl_heap_freeze_tuple (sizeof 12): xmax u32, offset u16, t_infomask2 u16, t_infomask u16,
# frzflags u8, padding u8
XL_HEAP_FREEZE_TUPLE = struct.Struct("<IHHHBx")
# xl_heap_visible (SizeOfHeapVisible 5): cutoff_xid u32, flags u8
XL_HEAP_VISIBLE = struct.Struct("<IB")
# xl_heap_multi_insert (SizeOfHeapMultiInsert 4): flags u8, padding u8, ntuples u16; then
# offsets[ntuples] u16 unless XLOG_HEAP_INIT_PAGE
XL_HEAP_MULTI_INSERT = struct.Struct("<BxH")
# xl_multi_insert_tuple (SizeOfMultiInsertTuple 7): datalen u16, t_infomask2 u16,
# t_infomask u16, t_hoff u8
XL_MULTI_INSERT_TUPLE = struct.Struct("<HHHB")
# xl_heap_lock_updated (SizeOfHeapLockUpdated 8): xmax u32, offnum u16, infobits_set u8,
# flags u8
XL_HEAP_LOCK_UPDATED = struct.Struct("<IHBB")
OFFSET_NUMBER = struct.Struct("<H")

# --------------------------------------------------------------------------- tuple header

# HeapTupleHeaderData (SizeofHeapTupleHeader 23): t_xmin u32, t_xmax u32, t_cid/t_xvac u32,
# t_ctid (bi_hi u16, bi_lo u16, ip_posid u16), t_infomask2 u16, t_infomask u16, t_hoff u8
HEAP_TUPLE_HEADER = struct.Struct("<IIIHHHHHB")
SIZEOF_HEAP_TUPLE_HEADER = HEAP_TUPLE_HEADER.size  # 23
T_XMIN_OFF = 0
T_XMAX_OFF = 4
T_CID_OFF = 8  # also t_xvac
T_CTID_OFF = 12
T_INFOMASK2_OFF = 18
T_INFOMASK_OFF = 20
T_HOFF_OFF = 22
# ItemPointerData: bi_hi u16, bi_lo u16, ip_posid u16

MAX_HEAP_TUPLE_SIZE = 8192 - 32  # BLCKSZ - MAXALIGN(SizeOfPageHeaderData + sizeof(ItemIdData))

# t_infomask
HEAP_COMBOCID = 0x0020
HEAP_XMAX_KEYSHR_LOCK = 0x0010
HEAP_XMAX_EXCL_LOCK = 0x0040
HEAP_XMAX_LOCK_ONLY = 0x0080
HEAP_LOCK_MASK = HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK
HEAP_XMAX_COMMITTED = 0x0400
HEAP_XMAX_INVALID = 0x0800
HEAP_XMAX_IS_MULTI = 0x1000
HEAP_MOVED_OFF = 0x4000
HEAP_MOVED_IN = 0x8000
HEAP_MOVED = HEAP_MOVED_OFF | HEAP_MOVED_IN
HEAP_XMAX_BITS = (HEAP_XMAX_COMMITTED | HEAP_XMAX_INVALID | HEAP_XMAX_IS_MULTI
                  | HEAP_LOCK_MASK | HEAP_XMAX_LOCK_ONLY)
# t_infomask2
HEAP_KEYS_UPDATED = 0x2000
HEAP_HOT_UPDATED = 0x4000

FIRST_COMMAND_ID = 0
INVALID_TRANSACTION_ID = 0
FROZEN_TRANSACTION_ID = 2
FIRST_NORMAL_TRANSACTION_ID = 3
MOVED_PARTITIONS_BLOCK_NUMBER = 0xFFFF_FFFF
MOVED_PARTITIONS_OFFSET_NUMBER = 0xFFFD


def _u16(page: bytearray, at: int) -> int:
    return int(U16.unpack_from(page, at)[0])


def _set_u16(page: bytearray, at: int, v: int) -> None:
    U16.pack_into(page, at, v & 0xFFFF)


def _set_u32(page: bytearray, at: int, v: int) -> None:
    U32.pack_into(page, at, v & 0xFFFF_FFFF)


def _set_ctid(buf: bytearray, tup: int, blkno: int, offnum: int) -> None:
    """ItemPointerSet(&tup->t_ctid, blkno, offnum)."""
    ITEM_POINTER.pack_into(buf, tup + T_CTID_OFF, blkno >> 16, blkno & 0xFFFF, offnum)


def _transaction_id_precedes(id1: int, id2: int) -> bool:
    """TransactionIdPrecedes (transam.c): modulo-2^32 unless either is a permanent xid."""
    if id1 < FIRST_NORMAL_TRANSACTION_ID or id2 < FIRST_NORMAL_TRANSACTION_ID:
        return id1 < id2
    diff = (id1 - id2) & 0xFFFF_FFFF
    return diff >= 0x8000_0000


def page_set_prunable(page: bytearray, xid: int) -> None:
    """PageSetPrunable: pd_prune_xid := xid if it is unset or xid precedes it."""
    current = page_get_prune_xid(page)
    if current == INVALID_TRANSACTION_ID or _transaction_id_precedes(xid, current):
        page_set_prune_xid(page, xid)


def fix_infomask_from_infobits(infobits: int, infomask: int, infomask2: int) -> tuple[int, int]:
    """fix_infomask_from_infobits: the XLHL_* bits back into infomask/infomask2."""
    infomask &= ~(HEAP_XMAX_IS_MULTI | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_KEYSHR_LOCK
                  | HEAP_XMAX_EXCL_LOCK)
    infomask2 &= ~HEAP_KEYS_UPDATED
    if infobits & XLHL_XMAX_IS_MULTI:
        infomask |= HEAP_XMAX_IS_MULTI
    if infobits & XLHL_XMAX_LOCK_ONLY:
        infomask |= HEAP_XMAX_LOCK_ONLY
    if infobits & XLHL_XMAX_EXCL_LOCK:
        infomask |= HEAP_XMAX_EXCL_LOCK
    # HEAP_XMAX_SHR_LOCK is not considered here, as in PostgreSQL
    if infobits & XLHL_XMAX_KEYSHR_LOCK:
        infomask |= HEAP_XMAX_KEYSHR_LOCK
    if infobits & XLHL_KEYS_UPDATED:
        infomask2 |= HEAP_KEYS_UPDATED
    return infomask & 0xFFFF, infomask2 & 0xFFFF


def heap_xmax_is_locked_only(infomask: int) -> bool:
    """HEAP_XMAX_IS_LOCKED_ONLY."""
    return bool(infomask & HEAP_XMAX_LOCK_ONLY) or \
        (infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK)) == HEAP_XMAX_EXCL_LOCK


def form_redo_tuple(xid: int, blkno: int, offnum: int, infomask2: int, infomask: int,
                    hoff: int, body: bytes | bytearray | memoryview, xmax: int = 0) -> bytearray:
    """The tuple heap redo builds in its scratch buffer: 23 zero header bytes, the logged
    body (bitmap, padding, data), then t_infomask2/t_infomask/t_hoff from the record,
    HeapTupleHeaderSetXmin(xid), HeapTupleHeaderSetCmin(FirstCommandId) (which clears
    HEAP_COMBOCID), HeapTupleHeaderSetXmax(xmax) and t_ctid := (blkno, offnum)."""
    tup = bytearray(SIZEOF_HEAP_TUPLE_HEADER) + body
    HEAP_TUPLE_HEADER.pack_into(tup, 0, xid, xmax, FIRST_COMMAND_ID, blkno >> 16, blkno & 0xFFFF,
                                offnum, infomask2, infomask & ~HEAP_COMBOCID, hoff)
    return tup


# --------------------------------------------------------------------------- helpers

def _corrupt(rec: DecodedRecord, what: str) -> CorruptWalError:
    return CorruptWalError(f"{rec.rmgr_name} record at {rec.lsn} (info {rec.info:#04x}): {what}")


def _main(rec: DecodedRecord, st: struct.Struct) -> tuple[int, ...]:
    if len(rec.main_data) < st.size:
        raise _corrupt(rec, f"main data is {len(rec.main_data)} bytes, expected at least "
                            f"{st.size}")
    return st.unpack_from(rec.main_data, 0)


def _block(rec: DecodedRecord, block_id: int) -> BlockReference:
    blk = rec.block(block_id)
    if blk is None:
        raise _corrupt(rec, f"no block reference {block_id}")
    return blk


def _normal_item(rec: DecodedRecord, page: bytearray, offnum: int) -> tuple[int, int]:
    """(lp_off, lp_len) of a LP_NORMAL item; PostgreSQL PANICs "invalid lp" otherwise."""
    if offnum < 1 or page_get_max_offset_number(page) < offnum:
        raise _corrupt(rec, f"invalid lp: offset {offnum} beyond "
                            f"{page_get_max_offset_number(page)} line pointers")
    off, flags, length = get_item_id(page, offnum)
    if flags != LP_NORMAL:
        raise _corrupt(rec, f"invalid lp: line pointer {offnum} has flags {flags}")
    if length < SIZEOF_HEAP_TUPLE_HEADER or off + length > len(page):
        raise _corrupt(rec, f"invalid lp: line pointer {offnum} is ({off}, {length})")
    return off, length


def _check_new_offnum(rec: DecodedRecord, page: bytearray, offnum: int) -> None:
    if page_get_max_offset_number(page) + 1 < offnum:
        raise _corrupt(rec, f"invalid max offset number: offset {offnum} but "
                            f"{page_get_max_offset_number(page)} line pointers")


def _add_tuple(rec: DecodedRecord, page: bytearray, tup: bytearray, offnum: int) -> None:
    """PageAddItem(page, htup, newlen, offnum, true, true) or PANIC."""
    if len(tup) > MAX_HEAP_TUPLE_SIZE:
        raise _corrupt(rec, f"tuple of {len(tup)} bytes exceeds MaxHeapTupleSize")
    if page_add_item(page, tup, offnum, PAI_OVERWRITE | PAI_IS_HEAP) != offnum:
        raise _corrupt(rec, f"failed to add tuple at offset {offnum}")


def _reset_xmax_bits(page: bytearray, tup: int, infobits: int,
                     hot_updated: bool | None) -> None:
    """The common start of delete/update/lock redo on the target tuple:
    t_infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED); t_infomask2 &= ~HEAP_KEYS_UPDATED;
    optionally set or clear HEAP_HOT_UPDATED; fix_infomask_from_infobits."""
    infomask = _u16(page, tup + T_INFOMASK_OFF) & ~(HEAP_XMAX_BITS | HEAP_MOVED)
    infomask2 = _u16(page, tup + T_INFOMASK2_OFF) & ~HEAP_KEYS_UPDATED
    if hot_updated is True:
        infomask2 |= HEAP_HOT_UPDATED
    elif hot_updated is False:
        infomask2 &= ~HEAP_HOT_UPDATED
    infomask, infomask2 = fix_infomask_from_infobits(infobits, infomask, infomask2)
    _set_u16(page, tup + T_INFOMASK_OFF, infomask)
    _set_u16(page, tup + T_INFOMASK2_OFF, infomask2)


def _set_cmax_first(page: bytearray, tup: int) -> None:
    """HeapTupleHeaderSetCmax(tup, FirstCommandId, false)."""
    _set_u32(page, tup + T_CID_OFF, FIRST_COMMAND_ID)
    _set_u16(page, tup + T_INFOMASK_OFF, _u16(page, tup + T_INFOMASK_OFF) & ~HEAP_COMBOCID)


def _offsets(rec: DecodedRecord, data: bytes, count: int, what: str) -> list[int]:
    if len(data) < 2 * count:
        raise _corrupt(rec, f"{what}: {len(data)} bytes of block data for {count} offsets")
    return list(struct.unpack_from(f"<{count}H", data, 0))


# --------------------------------------------------------------------------- HEAP

def _heap_insert(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_insert."""
    blk = _block(rec, block_id)
    offnum, flags = _main(rec, XL_HEAP_INSERT)
    if rec.info & XLOG_HEAP_INIT_PAGE:
        page_init(page, 0)
    _check_new_offnum(rec, page, offnum)
    data = blk.data
    if len(data) <= XL_HEAP_HEADER.size:
        raise _corrupt(rec, f"insert block data is only {len(data)} bytes")
    infomask2, infomask, hoff = XL_HEAP_HEADER.unpack_from(data, 0)
    tup = form_redo_tuple(rec.xid, blk.blkno, offnum, infomask2, infomask, hoff,
                          memoryview(data)[XL_HEAP_HEADER.size:])
    _add_tuple(rec, page, tup, offnum)
    page_set_lsn(page, rec.end_lsn)
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
        page_clear_flag(page, PD_ALL_VISIBLE)


def _heap_delete(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_delete."""
    blk = _block(rec, block_id)
    xmax, offnum, infobits, flags = _main(rec, XL_HEAP_DELETE)
    tup, _len = _normal_item(rec, page, offnum)
    _reset_xmax_bits(page, tup, infobits, hot_updated=False)
    if not flags & XLH_DELETE_IS_SUPER:
        _set_u32(page, tup + T_XMAX_OFF, xmax)
    else:
        _set_u32(page, tup + T_XMIN_OFF, INVALID_TRANSACTION_ID)
    _set_cmax_first(page, tup)
    page_set_prunable(page, rec.xid)
    if flags & XLH_DELETE_ALL_VISIBLE_CLEARED:
        page_clear_flag(page, PD_ALL_VISIBLE)
    if flags & XLH_DELETE_IS_PARTITION_MOVE:
        _set_ctid(page, tup, MOVED_PARTITIONS_BLOCK_NUMBER, MOVED_PARTITIONS_OFFSET_NUMBER)
    else:
        _set_ctid(page, tup, blk.blkno, offnum)
    page_set_lsn(page, rec.end_lsn)


def _update_old(rec: DecodedRecord, page: bytearray, hot: bool, newblk: int,
                xlrec: tuple[int, ...]) -> tuple[int, int]:
    """The old-tuple half of heap_xlog_update; returns the old tuple's (offset, length)."""
    old_xmax, old_offnum, old_infobits, flags, _new_xmax, new_offnum = xlrec
    tup, length = _normal_item(rec, page, old_offnum)
    _reset_xmax_bits(page, tup, old_infobits, hot_updated=hot)
    _set_u32(page, tup + T_XMAX_OFF, old_xmax)
    _set_cmax_first(page, tup)
    _set_ctid(page, tup, newblk, new_offnum)
    page_set_prunable(page, rec.xid)
    if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
        page_clear_flag(page, PD_ALL_VISIBLE)
    page_set_lsn(page, rec.end_lsn)
    return tup, length


def _update_new(rec: DecodedRecord, page: bytearray, newblk: int, xlrec: tuple[int, ...],
                oldtup: tuple[int, int] | None) -> None:
    """The new-tuple half of heap_xlog_update.  ``oldtup`` is the old tuple's
    (offset, length) on this same page, or None when it is on another page."""
    _old_xmax, _old_offnum, _old_infobits, flags, new_xmax, offnum = xlrec
    data = memoryview(_block(rec, 0).data)
    _check_new_offnum(rec, page, offnum)
    pos = 0
    prefixlen = suffixlen = 0
    if flags & XLH_UPDATE_PREFIX_FROM_OLD:
        if len(data) < pos + 2:
            raise _corrupt(rec, "update block data too short for the prefix length")
        (prefixlen,) = U16.unpack_from(data, pos)
        pos += 2
    if flags & XLH_UPDATE_SUFFIX_FROM_OLD:
        if len(data) < pos + 2:
            raise _corrupt(rec, "update block data too short for the suffix length")
        (suffixlen,) = U16.unpack_from(data, pos)
        pos += 2
    if (prefixlen or suffixlen) and oldtup is None:
        raise _corrupt(rec, "prefix/suffix from the old tuple, but it is on another page")
    if len(data) < pos + XL_HEAP_HEADER.size:
        raise _corrupt(rec, "update block data too short for xl_heap_header")
    infomask2, infomask, hoff = XL_HEAP_HEADER.unpack_from(data, pos)
    pos += XL_HEAP_HEADER.size
    rest = data[pos:]
    tuplen = len(rest)
    body = bytearray()
    if prefixlen > 0:
        assert oldtup is not None
        old_off, old_len = oldtup
        bitmap_len = hoff - SIZEOF_HEAP_TUPLE_HEADER
        if bitmap_len < 0 or bitmap_len > tuplen:
            raise _corrupt(rec, f"t_hoff {hoff} does not fit {tuplen} bytes of tuple data")
        old_hoff = page[old_off + T_HOFF_OFF]
        if old_hoff + prefixlen > old_len:
            raise _corrupt(rec, f"prefix of {prefixlen} bytes from an old tuple of {old_len} "
                                f"bytes with t_hoff {old_hoff}")
        body += rest[:bitmap_len]
        body += page[old_off + old_hoff:old_off + old_hoff + prefixlen]
        body += rest[bitmap_len:]
    else:
        body += rest
    if suffixlen > 0:
        assert oldtup is not None
        old_off, old_len = oldtup
        if suffixlen > old_len:
            raise _corrupt(rec, f"suffix of {suffixlen} bytes from an old tuple of {old_len}")
        body += page[old_off + old_len - suffixlen:old_off + old_len]
    tup = form_redo_tuple(rec.xid, newblk, offnum, infomask2, infomask, hoff, body,
                          xmax=new_xmax)
    _add_tuple(rec, page, tup, offnum)
    if flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED:
        page_clear_flag(page, PD_ALL_VISIBLE)
    page_set_lsn(page, rec.end_lsn)


def _heap_update(rec: DecodedRecord, block_id: int, page: bytearray, hot: bool) -> None:
    """heap_xlog_update: block 0 is the new page; block 1, if present, the old page."""
    xlrec = _main(rec, XL_HEAP_UPDATE)
    newblk = _block(rec, 0).blkno
    old_ref = rec.block(1)
    if block_id == 1:
        if old_ref is None:
            raise _corrupt(rec, "no block reference 1")
        _update_old(rec, page, hot, newblk, xlrec)
    elif block_id == 0:
        if old_ref is None:
            oldtup = _update_old(rec, page, hot, newblk, xlrec)
            _update_new(rec, page, newblk, xlrec, oldtup)
        else:
            if rec.info & XLOG_HEAP_INIT_PAGE:
                page_init(page, 0)
            _update_new(rec, page, newblk, xlrec, None)
    else:
        raise _corrupt(rec, f"unexpected block reference {block_id}")


def _heap_update_cold(ctx: RedoContext, rec: DecodedRecord, block_id: int,
                      page: bytearray) -> None:
    _heap_update(rec, block_id, page, hot=False)


def _heap_update_hot(ctx: RedoContext, rec: DecodedRecord, block_id: int,
                     page: bytearray) -> None:
    _heap_update(rec, block_id, page, hot=True)


def _heap_confirm(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_confirm: the speculative token in t_ctid becomes the tuple's own TID."""
    blk = _block(rec, block_id)
    (offnum,) = _main(rec, XL_HEAP_CONFIRM)
    tup, _len = _normal_item(rec, page, offnum)
    _set_ctid(page, tup, blk.blkno, offnum)
    page_set_lsn(page, rec.end_lsn)


def _heap_lock(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_lock."""
    blk = _block(rec, block_id)
    locking_xid, offnum, infobits, _flags = _main(rec, XL_HEAP_LOCK)
    tup, _len = _normal_item(rec, page, offnum)
    _reset_xmax_bits(page, tup, infobits, hot_updated=None)
    if heap_xmax_is_locked_only(_u16(page, tup + T_INFOMASK_OFF)):
        _set_u16(page, tup + T_INFOMASK2_OFF,
                 _u16(page, tup + T_INFOMASK2_OFF) & ~HEAP_HOT_UPDATED)
        _set_ctid(page, tup, blk.blkno, offnum)
    _set_u32(page, tup + T_XMAX_OFF, locking_xid)
    _set_cmax_first(page, tup)
    page_set_lsn(page, rec.end_lsn)


def _heap_inplace(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_inplace: overwrite the tuple's data (from t_hoff on), same length."""
    blk = _block(rec, block_id)
    (offnum,) = _main(rec, XL_HEAP_INPLACE)
    tup, length = _normal_item(rec, page, offnum)
    hoff = page[tup + T_HOFF_OFF]
    newtup = blk.data
    if length - hoff != len(newtup):
        raise _corrupt(rec, f"wrong tuple length: {length - hoff} on the page, "
                            f"{len(newtup)} in the record")
    page[tup + hoff:tup + length] = newtup
    page_set_lsn(page, rec.end_lsn)


def _no_page_effect(ctx: RedoContext, rec: DecodedRecord, block_id: int,
                    page: bytearray) -> None:
    """TRUNCATE, NEW_CID, REWRITE: nothing to do to any page."""


# --------------------------------------------------------------------------- HEAP2

def heap_page_prune_execute(page: bytearray, redirected: list[int], nowdead: list[int],
                            nowunused: list[int]) -> None:
    """heap_page_prune_execute: redirect (from, to) pairs, mark dead, mark unused, then
    PageRepairFragmentation.  ``redirected`` is the flat [from, to, from, to, ...] list."""
    maxoff = page_get_max_offset_number(page)
    for off in (*redirected[0::2], *nowdead, *nowunused):
        if off < 1 or off > maxoff:
            raise CorruptWalError(f"prune: offset {off} beyond {maxoff} line pointers")
    for i in range(0, len(redirected), 2):
        item_id_set_redirect(page, redirected[i], redirected[i + 1])
    for off in nowdead:
        item_id_set_dead(page, off)
    for off in nowunused:
        item_id_set_unused(page, off)
    page_repair_fragmentation(page)


def _heap2_prune(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_prune."""
    blk = _block(rec, block_id)
    _latest_removed, nredirected, ndead = _main(rec, XL_HEAP_PRUNE)
    data = blk.data
    if len(data) % 2:
        raise _corrupt(rec, f"prune block data has odd length {len(data)}")
    offs = _offsets(rec, data, len(data) // 2, "prune")
    if 2 * nredirected + ndead > len(offs):
        raise _corrupt(rec, f"prune: {nredirected} redirects and {ndead} dead items, but only "
                            f"{len(offs)} offsets")
    redirected = offs[:2 * nredirected]
    nowdead = offs[2 * nredirected:2 * nredirected + ndead]
    nowunused = offs[2 * nredirected + ndead:]
    try:
        heap_page_prune_execute(page, redirected, nowdead, nowunused)
    except CorruptWalError as e:
        raise _corrupt(rec, str(e)) from e
    page_set_lsn(page, rec.end_lsn)


def _heap2_vacuum(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_vacuum: LP_DEAD items become LP_UNUSED, then PageTruncateLinePointerArray."""
    blk = _block(rec, block_id)
    (nunused,) = _main(rec, XL_HEAP_VACUUM)
    maxoff = page_get_max_offset_number(page)
    for off in _offsets(rec, blk.data, nunused, "vacuum"):
        if off < 1 or off > maxoff:
            raise _corrupt(rec, f"vacuum: offset {off} beyond {maxoff} line pointers")
        _lp_off, flags, length = get_item_id(page, off)
        if flags != LP_DEAD or length != 0:
            raise _corrupt(rec, f"vacuum: line pointer {off} is not LP_DEAD without storage")
        item_id_set_unused(page, off)
    page_truncate_line_pointer_array(page)
    page_set_lsn(page, rec.end_lsn)


def _heap2_freeze_page(ctx: RedoContext, rec: DecodedRecord, block_id: int,
                       page: bytearray) -> None:
    """heap_xlog_freeze_page, applying heap_execute_freeze_tuple to each tuple."""
    blk = _block(rec, block_id)
    _cutoff_xid, ntuples = _main(rec, XL_HEAP_FREEZE_PAGE)
    data = blk.data
    if len(data) < ntuples * XL_HEAP_FREEZE_TUPLE.size:
        raise _corrupt(rec, f"freeze: {len(data)} bytes of block data for {ntuples} tuples")
    for i in range(ntuples):
        xmax, offnum, infomask2, infomask, frzflags = XL_HEAP_FREEZE_TUPLE.unpack_from(
            data, i * XL_HEAP_FREEZE_TUPLE.size)
        if offnum < 1 or offnum > page_get_max_offset_number(page):
            raise _corrupt(rec, f"freeze: offset {offnum} beyond the line pointers")
        tup, _flags, length = get_item_id(page, offnum)
        if length < SIZEOF_HEAP_TUPLE_HEADER:
            raise _corrupt(rec, f"freeze: line pointer {offnum} has no tuple")
        _set_u32(page, tup + T_XMAX_OFF, xmax)
        if frzflags & XLH_FREEZE_XVAC:
            _set_u32(page, tup + T_CID_OFF, FROZEN_TRANSACTION_ID)
        if frzflags & XLH_INVALID_XVAC:
            _set_u32(page, tup + T_CID_OFF, INVALID_TRANSACTION_ID)
        _set_u16(page, tup + T_INFOMASK_OFF, infomask)
        _set_u16(page, tup + T_INFOMASK2_OFF, infomask2)
    page_set_lsn(page, rec.end_lsn)


def vm_set(page: bytearray, heap_blkno: int, flags: int) -> bool:
    """visibilitymap_set on the map page of ``heap_blkno`` (already PageInit'ed): OR the
    bits in unless the block's two bits already equal ``flags``; True if it did (the
    caller then sets the VM page LSN, as visibilitymap_set does)."""
    _blk, byte, offset = vm_map_position(heap_blkno)
    at = MAP_OFFSET + byte
    if flags != (page[at] >> offset) & VISIBILITYMAP_VALID_BITS:
        page[at] = (page[at] | (flags << offset)) & 0xFF
        return True
    return False


def _heap2_visible(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """heap_xlog_visible: block 0 is the VM page, block 1 the heap page."""
    _cutoff_xid, flags = _main(rec, XL_HEAP_VISIBLE)
    heap_ref = _block(rec, 1)
    if block_id == 1:
        page_set_flag(page, PD_ALL_VISIBLE)
        if ctx.hint_bits_logged:
            page_set_lsn(page, rec.end_lsn)
    elif block_id == 0:
        vm_ref = _block(rec, 0)
        map_block, _byte, _offset = vm_map_position(heap_ref.blkno)
        if vm_ref.blkno != map_block:
            raise _corrupt(rec, f"VM block {vm_ref.blkno} does not map heap block "
                                f"{heap_ref.blkno}")
        vm_prepare(page)
        if rec.end_lsn > page_get_lsn(page) and vm_set(page, heap_ref.blkno, flags):
            page_set_lsn(page, rec.end_lsn)
    else:
        raise _corrupt(rec, f"unexpected block reference {block_id}")


def _heap2_multi_insert(ctx: RedoContext, rec: DecodedRecord, block_id: int,
                        page: bytearray) -> None:
    """heap_xlog_multi_insert."""
    blk = _block(rec, block_id)
    flags, ntuples = _main(rec, XL_HEAP_MULTI_INSERT)
    isinit = bool(rec.info & XLOG_HEAP_INIT_PAGE)
    offsets: list[int] = []
    if not isinit:
        need = XL_HEAP_MULTI_INSERT.size + 2 * ntuples
        if len(rec.main_data) < need:
            raise _corrupt(rec, f"multi-insert main data is {len(rec.main_data)} bytes, "
                                f"{need} needed for {ntuples} offsets")
        offsets = list(struct.unpack_from(f"<{ntuples}H", rec.main_data,
                                          XL_HEAP_MULTI_INSERT.size))
    if isinit:
        page_init(page, 0)
    data = memoryview(blk.data)
    pos = 0
    for i in range(ntuples):
        offnum = 1 + i if isinit else offsets[i]
        _check_new_offnum(rec, page, offnum)
        pos += pos & 1  # SHORTALIGN, relative to the MAXALIGNed start of the block data
        if pos + XL_MULTI_INSERT_TUPLE.size > len(data):
            raise _corrupt(rec, f"multi-insert tuple {i} header runs past the block data")
        datalen, infomask2, infomask, hoff = XL_MULTI_INSERT_TUPLE.unpack_from(data, pos)
        pos += XL_MULTI_INSERT_TUPLE.size
        if pos + datalen > len(data):
            raise _corrupt(rec, f"multi-insert tuple {i} data runs past the block data")
        tup = form_redo_tuple(rec.xid, blk.blkno, offnum, infomask2, infomask, hoff,
                              data[pos:pos + datalen])
        pos += datalen
        _add_tuple(rec, page, tup, offnum)
    if pos != len(data):
        raise _corrupt(rec, f"total tuple length mismatch: {pos} of {len(data)} bytes used")
    page_set_lsn(page, rec.end_lsn)
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
        page_clear_flag(page, PD_ALL_VISIBLE)
    if flags & XLH_INSERT_ALL_FROZEN_SET:
        page_set_flag(page, PD_ALL_VISIBLE)


def _heap2_lock_updated(ctx: RedoContext, rec: DecodedRecord, block_id: int,
                        page: bytearray) -> None:
    """heap_xlog_lock_updated: no cmax, ctid or HOT change."""
    xmax, offnum, infobits, _flags = _main(rec, XL_HEAP_LOCK_UPDATED)
    _block(rec, block_id)
    tup, _len = _normal_item(rec, page, offnum)
    _reset_xmax_bits(page, tup, infobits, hot_updated=None)
    _set_u32(page, tup + T_XMAX_OFF, xmax)
    page_set_lsn(page, rec.end_lsn)


# --------------------------------------------------------------------------- dispatch

_HEAP_REDO: dict[int, Callable[[RedoContext, DecodedRecord, int, bytearray], None]] = {
    XLOG_HEAP_INSERT: _heap_insert,
    XLOG_HEAP_DELETE: _heap_delete,
    XLOG_HEAP_UPDATE: _heap_update_cold,
    XLOG_HEAP_TRUNCATE: _no_page_effect,
    XLOG_HEAP_HOT_UPDATE: _heap_update_hot,
    XLOG_HEAP_CONFIRM: _heap_confirm,
    XLOG_HEAP_LOCK: _heap_lock,
    XLOG_HEAP_INPLACE: _heap_inplace,
}
_HEAP2_REDO: dict[int, Callable[[RedoContext, DecodedRecord, int, bytearray], None]] = {
    XLOG_HEAP2_REWRITE: _no_page_effect,
    XLOG_HEAP2_PRUNE: _heap2_prune,
    XLOG_HEAP2_VACUUM: _heap2_vacuum,
    XLOG_HEAP2_FREEZE_PAGE: _heap2_freeze_page,
    XLOG_HEAP2_VISIBLE: _heap2_visible,
    XLOG_HEAP2_MULTI_INSERT: _heap2_multi_insert,
    XLOG_HEAP2_LOCK_UPDATED: _heap2_lock_updated,
    XLOG_HEAP2_NEW_CID: _no_page_effect,
}


def record_type_name(rec: DecodedRecord) -> str:
    """The type of a HEAP/HEAP2 record as pg_waldump names it: 'INSERT', 'HOT_UPDATE',
    'PRUNE', ... with '+INIT' for XLOG_HEAP_INIT_PAGE (pagestore.pg.rmgr's catalog)."""
    return rmgr.record_type_name(rec.rmid, rec.rmgr_info)


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """Apply heap_redo / heap2_redo's change to block reference ``block_id`` (see the
    module docstring and pagestore/redo/context.py)."""
    if rec.rmid == RM_HEAP_ID:
        table = _HEAP_REDO
    elif rec.rmid == RM_HEAP2_ID:
        table = _HEAP2_REDO
    else:
        raise UnsupportedWalRecord(f"heap redo got a {rec.rmgr_name} record at {rec.lsn} "
                                   f"(info {rec.info:#04x})")
    handler = table.get(rec.rmgr_info & XLOG_HEAP_OPMASK)
    if handler is None:  # pragma: no cover - every opcode of the mask is in the tables
        raise UnsupportedWalRecord(f"{rec.rmgr_name} record at {rec.lsn} with unknown info "
                                   f"{rec.info:#04x}")
    handler(ctx, rec, block_id, page)


def read_mode(rec: DecodedRecord, block_id: int) -> ReadMode:
    """HEAP2_VISIBLE reads its VM page (block 0) with RBM_ZERO_ON_ERROR; every other
    heap block is read normally."""
    if (rec.rmid == RM_HEAP2_ID and rec.rmgr_info & XLOG_HEAP_OPMASK == XLOG_HEAP2_VISIBLE
            and block_id == 0):
        return ReadMode.ZERO_ON_ERROR
    return ReadMode.NORMAL


# --------------------------------------------------------------------------- VM clears

class VmClear(NamedTuple):
    """One visibilitymap_clear a heap record implies: clear ``flags`` of ``heap_blkno``
    on block ``vm_blkno`` of the VM fork ``vm_rel``."""

    vm_rel: RelTag
    vm_blkno: int
    heap_blkno: int
    flags: int


def _vm_clear_for(ref: BlockReference, heap_blkno: int, flags: int) -> VmClear:
    vm_blkno, _byte, _offset = vm_map_position(heap_blkno)
    return VmClear(ref.rel.with_fork(ForkNumber.VISIBILITYMAP), vm_blkno, heap_blkno, flags)


def vm_clears(rec: DecodedRecord) -> list[VmClear]:
    """The visibility-map bits a HEAP/HEAP2 record clears, in the order its redo clears
    them.  PostgreSQL does this whether or not the heap page needs redo, extending and
    PageInit'ing the VM page if needed (vm_readbuf), without changing the VM page LSN."""
    if rec.rmid not in (RM_HEAP_ID, RM_HEAP2_ID):
        return []
    op = rec.rmgr_info & XLOG_HEAP_OPMASK
    blk0 = rec.block(0)
    if blk0 is None:
        return []
    out: list[VmClear] = []
    if rec.rmid == RM_HEAP_ID:
        if op == XLOG_HEAP_INSERT:
            flags = _main(rec, XL_HEAP_INSERT)[1]
            if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
                out.append(_vm_clear_for(blk0, blk0.blkno, VISIBILITYMAP_VALID_BITS))
        elif op == XLOG_HEAP_DELETE:
            flags = _main(rec, XL_HEAP_DELETE)[3]
            if flags & XLH_DELETE_ALL_VISIBLE_CLEARED:
                out.append(_vm_clear_for(blk0, blk0.blkno, VISIBILITYMAP_VALID_BITS))
        elif op in (XLOG_HEAP_UPDATE, XLOG_HEAP_HOT_UPDATE):
            flags = _main(rec, XL_HEAP_UPDATE)[3]
            old_ref = rec.block(1) or blk0
            if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
                out.append(_vm_clear_for(old_ref, old_ref.blkno, VISIBILITYMAP_VALID_BITS))
            if flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED:
                out.append(_vm_clear_for(blk0, blk0.blkno, VISIBILITYMAP_VALID_BITS))
        elif op == XLOG_HEAP_LOCK:
            flags = _main(rec, XL_HEAP_LOCK)[3]
            if flags & XLH_LOCK_ALL_FROZEN_CLEARED:
                out.append(_vm_clear_for(blk0, blk0.blkno, VISIBILITYMAP_ALL_FROZEN))
    else:
        if op == XLOG_HEAP2_MULTI_INSERT:
            flags = _main(rec, XL_HEAP_MULTI_INSERT)[0]
            if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
                out.append(_vm_clear_for(blk0, blk0.blkno, VISIBILITYMAP_VALID_BITS))
        elif op == XLOG_HEAP2_LOCK_UPDATED:
            flags = _main(rec, XL_HEAP_LOCK_UPDATED)[3]
            if flags & XLH_LOCK_ALL_FROZEN_CLEARED:
                out.append(_vm_clear_for(blk0, blk0.blkno, VISIBILITYMAP_ALL_FROZEN))
    return out
