"""Redo of PostgreSQL 15 BTREE WAL records (rmid 11), one block reference at a time.

Mirrors btree_redo and the btree_xlog_* routines of src/backend/access/nbtree/nbtxlog.c
(btree_xlog_insert, btree_xlog_split, btree_xlog_dedup, btree_xlog_updates,
btree_xlog_vacuum, btree_xlog_delete, btree_xlog_mark_page_halfdead,
btree_xlog_unlink_page, btree_xlog_newroot, btree_xlog_reuse_page), with their helpers
_bt_restore_page, _bt_restore_meta and _bt_clear_incomplete_split; _bt_pageinit
(nbtpage.c); BTPageSetDeleted and the BTreeTuple* accessors (nbtree.h);
_bt_dedup_start_pending, _bt_dedup_save_htid, _bt_dedup_finish_pending,
_bt_form_posting, _bt_update_posting and _bt_swap_posting (nbtdedup.c); and
PageGetTempPageCopySpecial / PageRestoreTempPage (bufpage.c).

The contract is pagestore/redo/context.py: ``redo_block`` does to ``page`` what
btree_redo does to the buffer of block reference ``block_id`` once it needs redo, and
nothing to any other block.  Which block is which:

    INSERT_LEAF / INSERT_POST   0 = leaf
    INSERT_UPPER / INSERT_META  0 = internal page, 1 = child (INCOMPLETE_SPLIT cleared),
                                2 = metapage (INSERT_META only)
    SPLIT_L / SPLIT_R           0 = original (left) page, 1 = new right page,
                                2 = old right sibling (btpo_prev), 3 = child (level > 0)
    DEDUP, DELETE, VACUUM       0 = leaf
    MARK_PAGE_HALFDEAD          0 = leaf (rebuilt), 1 = subtree parent
    UNLINK_PAGE[_META]          0 = target (rebuilt), 1 = left sibling, 2 = right sibling,
                                3 = half-dead leaf (rebuilt), 4 = metapage (_META only)
    NEWROOT                     0 = new root (rebuilt), 1 = left child, 2 = metapage
    META_CLEANUP                0 = metapage
    REUSE_PAGE                  no blocks (a hot-standby conflict only)

Pages PostgreSQL rebuilds from scratch (every byte not written is zero, pd_flags and
pd_prune_xid are 0): the metapage (_bt_restore_meta), the right page of a split, the new
root, the half-dead leaf and the deleted target.  The left page of a split and a
deduplicated page are built on a temp page (PageInit with the same special size plus a
copy of the special area) that then replaces the whole page, so their header fields,
free space and line pointer padding are fresh too.  Everything else is changed in place
and keeps every untouched byte.

Layouts (little-endian):
    IndexTupleData (8): t_tid = (bi_hi u16, bi_lo u16, ip_posid u16), t_info u16
      (size = t_info & 0x1FFF; 0x2000 INDEX_ALT_TID_MASK).  A posting tuple has
      ip_posid = nhtids | BT_IS_POSTING and block = byte offset of its TID array.
    BTPageOpaqueData (16, at pd_special): btpo_prev, btpo_next, btpo_level u32,
      btpo_flags u16, btpo_cycleid u16.
    BTMetaPageData (48, at offset 24 of block 0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from pagestore.errors import CorruptionError, CorruptWalError, UnsupportedWalRecord
from pagestore.redo.bufpage import (
    BLCKSZ,
    FIRST_OFFSET_NUMBER,
    INDEX_SIZE_MASK,
    INVALID_OFFSET_NUMBER,
    ITEM_POINTER,
    SIZE_OF_PAGE_HEADER,
    U16,
    U32,
    get_item,
    maxalign,
    page_add_item,
    page_get_max_offset_number,
    page_index_multi_delete,
    page_index_tuple_delete,
    page_index_tuple_overwrite,
    page_init,
    page_set_lsn,
    pd_special,
    set_pd_lower,
    set_pd_upper,
)

if TYPE_CHECKING:
    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.redo.context import RedoContext

RM_BTREE_ID = 11

# Record types (nbtxlog.h), xl_info & 0xF0
XLOG_BTREE_INSERT_LEAF = 0x00
XLOG_BTREE_INSERT_UPPER = 0x10
XLOG_BTREE_INSERT_META = 0x20
XLOG_BTREE_SPLIT_L = 0x30
XLOG_BTREE_SPLIT_R = 0x40
XLOG_BTREE_INSERT_POST = 0x50
XLOG_BTREE_DEDUP = 0x60
XLOG_BTREE_DELETE = 0x70
XLOG_BTREE_UNLINK_PAGE = 0x80
XLOG_BTREE_UNLINK_PAGE_META = 0x90
XLOG_BTREE_NEWROOT = 0xA0
XLOG_BTREE_MARK_PAGE_HALFDEAD = 0xB0
XLOG_BTREE_VACUUM = 0xC0
XLOG_BTREE_REUSE_PAGE = 0xD0
XLOG_BTREE_META_CLEANUP = 0xE0

RECORD_NAMES = {
    XLOG_BTREE_INSERT_LEAF: "INSERT_LEAF",
    XLOG_BTREE_INSERT_UPPER: "INSERT_UPPER",
    XLOG_BTREE_INSERT_META: "INSERT_META",
    XLOG_BTREE_SPLIT_L: "SPLIT_L",
    XLOG_BTREE_SPLIT_R: "SPLIT_R",
    XLOG_BTREE_INSERT_POST: "INSERT_POST",
    XLOG_BTREE_DEDUP: "DEDUP",
    XLOG_BTREE_DELETE: "DELETE",
    XLOG_BTREE_UNLINK_PAGE: "UNLINK_PAGE",
    XLOG_BTREE_UNLINK_PAGE_META: "UNLINK_PAGE_META",
    XLOG_BTREE_NEWROOT: "NEWROOT",
    XLOG_BTREE_MARK_PAGE_HALFDEAD: "MARK_PAGE_HALFDEAD",
    XLOG_BTREE_VACUUM: "VACUUM",
    XLOG_BTREE_REUSE_PAGE: "REUSE_PAGE",
    XLOG_BTREE_META_CLEANUP: "META_CLEANUP",
}

# btpo_flags (nbtree.h)
BTP_LEAF = 1 << 0
BTP_ROOT = 1 << 1
BTP_DELETED = 1 << 2
BTP_META = 1 << 3
BTP_HALF_DEAD = 1 << 4
BTP_SPLIT_END = 1 << 5
BTP_HAS_GARBAGE = 1 << 6
BTP_INCOMPLETE_SPLIT = 1 << 7
BTP_HAS_FULLXID = 1 << 8

P_NONE = 0
P_HIKEY = 1
BTREE_METAPAGE = 0
BTREE_MAGIC = 0x053162

# IndexTupleData.t_info bits (itup.h) and BTreeTuple offset-number bits (nbtree.h)
INDEX_ALT_TID_MASK = 0x2000
BT_OFFSET_MASK = 0x0FFF
BT_IS_POSTING = 0x2000

# BTMaxItemSize(page): MAXALIGN_DOWN((8192 - MAXALIGN(24 + 3*4 + 3*6) - MAXALIGN(16)) / 3)
BT_MAX_ITEM_SIZE = ((BLCKSZ - maxalign(SIZE_OF_PAGE_HEADER + 3 * 4 + 3 * 6) - 16) // 3) & ~7

# BTPageOpaqueData: btpo_prev u32, btpo_next u32, btpo_level u32, btpo_flags u16,
# btpo_cycleid u16
BT_PAGE_OPAQUE = struct.Struct("<IIIHH")
BT_OPAQUE_FLAGS_OFF = 12
BT_OPAQUE_PREV_OFF = 0
BT_OPAQUE_NEXT_OFF = 4
# BTMetaPageData: btm_magic u32, btm_version u32, btm_root u32, btm_level u32,
# btm_fastroot u32, btm_fastlevel u32, btm_last_cleanup_num_delpages u32, pad 4,
# btm_last_cleanup_num_heap_tuples float8, btm_allequalimage bool, pad 7
BT_META_PAGE = struct.Struct("<7I4xd?7x")
# IndexTupleData: t_tid.bi_hi u16, t_tid.bi_lo u16, t_tid.ip_posid u16, t_info u16
INDEX_TUPLE = struct.Struct("<HHHH")
# ItemPointerData: bi_hi u16, bi_lo u16, ip_posid u16
# BlockIdData (ip_blkid, the start of ItemPointerData): bi_hi u16, bi_lo u16
BLOCK_ID = struct.Struct("<HH")
ITEM_POINTER_SIZE = ITEM_POINTER.size
T_INFO_OFF = 6
# BTDeletedPageData: safexid u64 (FullTransactionId)
BT_DELETED_PAGE = struct.Struct("<Q")

# xl_btree_metadata: version u32, root u32, level u32, fastroot u32, fastlevel u32,
# last_cleanup_num_delpages u32, allequalimage bool, pad 3 (logged with sizeof)
XL_BTREE_METADATA = struct.Struct("<6I?")
# xl_btree_insert: offnum u16
XL_BTREE_INSERT = struct.Struct("<H")
# xl_btree_split: level u32, firstrightoff u16, newitemoff u16, postingoff u16
XL_BTREE_SPLIT = struct.Struct("<IHHH")
# xl_btree_dedup: nintervals u16
XL_BTREE_DEDUP = struct.Struct("<H")
# BTDedupInterval: baseoff u16, nitems u16
BT_DEDUP_INTERVAL = struct.Struct("<HH")
# xl_btree_vacuum: ndeleted u16, nupdated u16
XL_BTREE_VACUUM = struct.Struct("<HH")
# xl_btree_delete: latestRemovedXid u32, ndeleted u16, nupdated u16
XL_BTREE_DELETE = struct.Struct("<IHH")
# xl_btree_mark_page_halfdead: poffset u16, pad 2, leafblk u32, leftblk u32, rightblk u32,
# topparent u32
XL_BTREE_MARK_PAGE_HALFDEAD = struct.Struct("<H2xIIII")
# xl_btree_unlink_page: leftsib u32, rightsib u32, level u32, pad 4, safexid u64,
# leafleftsib u32, leafrightsib u32, leaftopparent u32
XL_BTREE_UNLINK_PAGE = struct.Struct("<III4xQIII")
# xl_btree_newroot: rootblk u32, level u32
XL_BTREE_NEWROOT = struct.Struct("<II")

BT_PAGE_OPAQUE_SIZE = BT_PAGE_OPAQUE.size

Buffer = bytes | bytearray | memoryview


class BTPageOpaque(NamedTuple):
    btpo_prev: int
    btpo_next: int
    btpo_level: int
    btpo_flags: int
    btpo_cycleid: int


# --------------------------------------------------------------------------- record data

def _unpack(st: struct.Struct, data: Buffer, what: str, rec: DecodedRecord,
            offset: int = 0) -> tuple[int, ...]:
    if len(data) < offset + st.size:
        raise CorruptWalError(f"BTREE {what} record at {rec.lsn}: {len(data)} bytes of data, "
                              f"expected at least {offset + st.size}")
    return st.unpack_from(data, offset)


def _block_data(rec: DecodedRecord, block_id: int, what: str) -> bytes:
    blk = rec.block(block_id)
    if blk is None:
        raise CorruptWalError(f"BTREE {what} record at {rec.lsn} has no block {block_id}")
    return blk.data


def _u16_array(data: Buffer, offset: int, n: int) -> list[int]:
    """``n`` uint16 (OffsetNumber) values at ``offset``; the caller checked the length."""
    return [v for (v,) in U16.iter_unpack(data[offset:offset + 2 * n])]


def _blkno(rec: DecodedRecord, block_id: int) -> int | None:
    blk = rec.block(block_id)
    return None if blk is None else blk.blkno


# --------------------------------------------------------------------------- page helpers

def _opaque_off(page: bytearray) -> int:
    """Where BTPageGetOpaque points: pd_special, which must leave room for the opaque."""
    special = pd_special(page)
    if special < SIZE_OF_PAGE_HEADER or special + BT_PAGE_OPAQUE_SIZE > BLCKSZ:
        raise CorruptionError(f"btree page has pd_special {special}: no room for "
                              "BTPageOpaqueData")
    return special


def bt_page_get_opaque(page: bytearray) -> BTPageOpaque:
    """BTPageGetOpaque: the special area at pd_special."""
    return BTPageOpaque._make(BT_PAGE_OPAQUE.unpack_from(page, _opaque_off(page)))


def _set_opaque(page: bytearray, opaque: BTPageOpaque) -> None:
    BT_PAGE_OPAQUE.pack_into(page, _opaque_off(page), *opaque)


def _set_opaque_u32(page: bytearray, field_off: int, value: int) -> None:
    U32.pack_into(page, _opaque_off(page) + field_off, value)


def _set_flags(page: bytearray, flags: int) -> None:
    U16.pack_into(page, _opaque_off(page) + BT_OPAQUE_FLAGS_OFF, flags)


def _flags(page: bytearray) -> int:
    return int(U16.unpack_from(page, _opaque_off(page) + BT_OPAQUE_FLAGS_OFF)[0])


def bt_pageinit(page: bytearray) -> None:
    """_bt_pageinit: PageInit with a BTPageOpaqueData special area (all zero)."""
    page_init(page, BT_PAGE_OPAQUE_SIZE)


def p_firstdatakey(opaque: BTPageOpaque) -> int:
    """P_FIRSTDATAKEY: 1 on the rightmost page of a level (no high key), else 2."""
    return P_HIKEY if opaque.btpo_next == P_NONE else P_HIKEY + 1


def _temp_page_copy_special(page: bytearray) -> bytearray:
    """PageGetTempPageCopySpecial: a fresh page with ``page``'s special area."""
    special = pd_special(page)
    temp = bytearray(BLCKSZ)
    page_init(temp, BLCKSZ - special)
    temp[special:] = page[special:]
    return temp


def _get_item_bytes(page: bytearray, offnum: int, what: str) -> tuple[int, bytes]:
    """(lp_off, item bytes of lp_len) of the item at ``offnum``."""
    if offnum < FIRST_OFFSET_NUMBER or offnum > page_get_max_offset_number(page):
        raise CorruptionError(f"btree {what}: offset {offnum} is not on the page "
                              f"(max {page_get_max_offset_number(page)})")
    off, length = get_item(page, offnum)
    if off + length > BLCKSZ:
        raise CorruptionError(f"btree {what}: item {offnum} runs past the page")
    return off, bytes(page[off:off + length])


def _add_item(page: bytearray, item: Buffer, offnum: int, what: str) -> None:
    if page_add_item(page, item, offnum) == INVALID_OFFSET_NUMBER:
        raise CorruptionError(f"btree redo: {what} (offset {offnum}, size {len(item)})")


# --------------------------------------------------------------------------- index tuples

def index_tuple_size(itup: Buffer, offset: int = 0) -> int:
    """IndexTupleSize: t_info & INDEX_SIZE_MASK."""
    return int(U16.unpack_from(itup, offset + T_INFO_OFF)[0]) & INDEX_SIZE_MASK


def _t_info(itup: Buffer) -> int:
    return int(U16.unpack_from(itup, T_INFO_OFF)[0])


def _posid(itup: Buffer) -> int:
    return int(U16.unpack_from(itup, 4)[0])


def _tid_block(itup: Buffer) -> int:
    """ItemPointerGetBlockNumberNoCheck(&itup->t_tid)."""
    hi, lo = BLOCK_ID.unpack_from(itup, 0)
    return int((hi << 16) | lo)


def _set_tid_block(itup: bytearray, blkno: int, offset: int = 0) -> None:
    """ItemPointerSetBlockNumber(&itup->t_tid, blkno)."""
    BLOCK_ID.pack_into(itup, offset, blkno >> 16, blkno & 0xFFFF)


def bt_tuple_is_posting(itup: Buffer) -> bool:
    """BTreeTupleIsPosting."""
    return bool(_t_info(itup) & INDEX_ALT_TID_MASK) and bool(_posid(itup) & BT_IS_POSTING)


def bt_tuple_is_pivot(itup: Buffer) -> bool:
    """BTreeTupleIsPivot."""
    return bool(_t_info(itup) & INDEX_ALT_TID_MASK) and not (_posid(itup) & BT_IS_POSTING)


def bt_tuple_get_n_posting(itup: Buffer) -> int:
    """BTreeTupleGetNPosting."""
    return _posid(itup) & BT_OFFSET_MASK


def bt_tuple_get_posting_offset(itup: Buffer) -> int:
    """BTreeTupleGetPostingOffset: the TID array's byte offset (in t_tid's block)."""
    return _tid_block(itup)


def _posting_tids(itup: Buffer) -> bytes:
    """BTreeTupleGetPosting as bytes: nhtids 6-byte ItemPointerData."""
    start = bt_tuple_get_posting_offset(itup)
    end = start + ITEM_POINTER_SIZE * bt_tuple_get_n_posting(itup)
    if end > len(itup):
        raise CorruptionError(f"btree posting list tuple of {len(itup)} bytes has its "
                              f"{bt_tuple_get_n_posting(itup)} TIDs at {start}")
    return bytes(itup[start:end])


def _heap_tids(itup: Buffer) -> bytes:
    """The heap TID(s) of a non-pivot tuple: its posting list, or its t_tid."""
    if bt_tuple_is_posting(itup):
        return _posting_tids(itup)
    return bytes(itup[:ITEM_POINTER_SIZE])


def _set_posting(itup: bytearray, nhtids: int, postingoffset: int) -> None:
    """BTreeTupleSetPosting."""
    U16.pack_into(itup, T_INFO_OFF, _t_info(itup) | INDEX_ALT_TID_MASK)
    U16.pack_into(itup, 4, nhtids | BT_IS_POSTING)
    _set_tid_block(itup, postingoffset)


def _form_with_tids(base: Buffer, keysize: int, htids: bytes) -> bytearray:
    """The common body of _bt_form_posting and _bt_update_posting: a palloc0'd tuple of
    the key part of ``base`` with ``htids`` as its posting list (or its t_tid if one)."""
    nhtids = len(htids) // ITEM_POINTER_SIZE
    if nhtids > 1:
        newsize = maxalign(keysize + nhtids * ITEM_POINTER_SIZE)
    else:
        newsize = keysize
    if newsize > INDEX_SIZE_MASK or keysize > len(base):
        raise CorruptionError(f"btree posting list tuple of {newsize} bytes (key {keysize})")
    itup = bytearray(newsize)
    itup[:keysize] = base[:keysize]
    t_info = (_t_info(itup) & ~INDEX_SIZE_MASK) | newsize
    U16.pack_into(itup, T_INFO_OFF, t_info)
    if nhtids > 1:
        _set_posting(itup, nhtids, keysize)
        itup[keysize:keysize + len(htids)] = htids
    else:
        U16.pack_into(itup, T_INFO_OFF, t_info & ~INDEX_ALT_TID_MASK)
        itup[:ITEM_POINTER_SIZE] = htids
    return itup


def bt_form_posting(base: Buffer, htids: bytes) -> bytearray:
    """_bt_form_posting: ``base``'s key with the (sorted, unique) heap TIDs ``htids``."""
    if bt_tuple_is_posting(base):
        keysize = bt_tuple_get_posting_offset(base)
    else:
        keysize = index_tuple_size(base)
    return _form_with_tids(base, keysize, htids)


def bt_update_posting(origtuple: Buffer, deletetids: list[int]) -> bytearray:
    """_bt_update_posting: ``origtuple`` without the posting list entries whose 0-based
    positions are in ``deletetids`` (ascending)."""
    if not bt_tuple_is_posting(origtuple):
        raise CorruptionError("btree redo: updated item is not a posting list tuple")
    tids = _posting_tids(origtuple)
    n = len(tids) // ITEM_POINTER_SIZE
    if not 0 < n - len(deletetids) < n:
        raise CorruptionError(f"btree redo: cannot delete {len(deletetids)} of {n} TIDs "
                              "from a posting list tuple")
    kept = bytearray()
    d = 0
    for i in range(n):
        if d < len(deletetids) and deletetids[d] == i:
            d += 1
            continue
        kept += tids[i * ITEM_POINTER_SIZE:(i + 1) * ITEM_POINTER_SIZE]
    if d != len(deletetids):
        raise CorruptionError(f"btree redo: deleted TID positions {deletetids} are not "
                              f"ascending positions below {n}")
    return _form_with_tids(origtuple, bt_tuple_get_posting_offset(origtuple), bytes(kept))


def bt_swap_posting(newitem: bytearray, oposting: Buffer, postingoff: int) -> bytearray:
    """_bt_swap_posting: return the new version of posting tuple ``oposting`` with
    ``newitem``'s heap TID inserted at ``postingoff`` (dropping its max TID), and give
    ``newitem`` that max TID instead (``newitem`` is modified in place)."""
    if not bt_tuple_is_posting(oposting):
        raise CorruptionError("btree redo: posting list split target is not a posting tuple")
    nhtids = bt_tuple_get_n_posting(oposting)
    if not 0 < postingoff < nhtids:
        raise CorruptionError(f"posting list tuple with {nhtids} items cannot be split at "
                              f"offset {postingoff}")
    nposting = bytearray(oposting[:index_tuple_size(oposting)])
    base = bt_tuple_get_posting_offset(nposting)
    replacepos = base + postingoff * ITEM_POINTER_SIZE
    nmovebytes = (nhtids - postingoff - 1) * ITEM_POINTER_SIZE
    if base + nhtids * ITEM_POINTER_SIZE > len(nposting):
        raise CorruptionError("btree redo: posting list runs past its tuple")
    nposting[replacepos + ITEM_POINTER_SIZE:replacepos + ITEM_POINTER_SIZE + nmovebytes] = \
        nposting[replacepos:replacepos + nmovebytes]
    nposting[replacepos:replacepos + ITEM_POINTER_SIZE] = newitem[:ITEM_POINTER_SIZE]
    maxtid = base + (nhtids - 1) * ITEM_POINTER_SIZE
    newitem[:ITEM_POINTER_SIZE] = oposting[maxtid:maxtid + ITEM_POINTER_SIZE]
    return nposting


def _dummy_high_key(topparent: int) -> bytes:
    """The 8-byte high key of a half-dead leaf: BTreeTupleSetTopParent on a zeroed
    IndexTupleData with t_info = sizeof(IndexTupleData)."""
    return INDEX_TUPLE.pack(topparent >> 16, topparent & 0xFFFF, 0,
                            INDEX_TUPLE.size | INDEX_ALT_TID_MASK)


# --------------------------------------------------------------------------- building blocks

def _restore_page(page: bytearray, data: Buffer, rec: DecodedRecord) -> None:
    """_bt_restore_page: re-add the tuples of a page's [pd_upper, pd_special) copy, which
    holds them in descending offset order, so the first becomes the last offset."""
    items: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + INDEX_TUPLE.size > len(data):
            raise CorruptWalError(f"BTREE record at {rec.lsn}: page data ends inside a tuple")
        itemsz = maxalign(index_tuple_size(data, pos))
        if itemsz == 0 or pos + itemsz > len(data):
            raise CorruptWalError(f"BTREE record at {rec.lsn}: tuple of {itemsz} bytes at "
                                  f"{pos} of {len(data)} bytes of page data")
        items.append(bytes(data[pos:pos + itemsz]))
        pos += itemsz
    nitems = len(items)
    for i in range(nitems - 1, -1, -1):
        if page_add_item(page, items[i], nitems - i) == INVALID_OFFSET_NUMBER:
            raise CorruptionError(f"_bt_restore_page: cannot add item to page "
                                  f"(WAL record at {rec.lsn})")


def _restore_meta(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """_bt_restore_meta: rebuild the metapage from the block's xl_btree_metadata."""
    data = _block_data(rec, block_id, "metapage")
    (version, root, level, fastroot, fastlevel, last_cleanup_num_delpages,
     allequalimage) = _unpack(XL_BTREE_METADATA, data, "metapage", rec)
    bt_pageinit(page)
    BT_META_PAGE.pack_into(page, SIZE_OF_PAGE_HEADER, BTREE_MAGIC, version, root, level,
                           fastroot, fastlevel, last_cleanup_num_delpages, -1.0,
                           allequalimage)
    _set_flags(page, BTP_META)
    set_pd_lower(page, SIZE_OF_PAGE_HEADER + BT_META_PAGE.size)
    page_set_lsn(page, rec.end_lsn)


def _clear_incomplete_split(rec: DecodedRecord, page: bytearray) -> None:
    """_bt_clear_incomplete_split."""
    _set_flags(page, _flags(page) & ~BTP_INCOMPLETE_SPLIT)
    page_set_lsn(page, rec.end_lsn)


def _init_half_dead_leaf(page: bytearray, leftsib: int, rightsib: int,
                         topparent: int) -> None:
    bt_pageinit(page)
    _set_opaque(page, BTPageOpaque(leftsib, rightsib, 0, BTP_HALF_DEAD | BTP_LEAF, 0))
    if page_add_item(page, _dummy_high_key(topparent), P_HIKEY) == INVALID_OFFSET_NUMBER:
        raise CorruptionError("could not add dummy high key to half-dead page")


# --------------------------------------------------------------------------- record types

def _redo_insert(rec: DecodedRecord, page: bytearray, posting: bool) -> None:
    """btree_xlog_insert, block 0."""
    (offnum,) = _unpack(XL_BTREE_INSERT, rec.main_data, "insert", rec)
    data = _block_data(rec, 0, "insert")
    if not posting:
        _add_item(page, data, offnum, "failed to add new item")
    else:
        (postingoff,) = _unpack(U16, data, "insert_post block", rec)
        orignewitem = data[U16.size:]
        if len(orignewitem) < INDEX_TUPLE.size:
            raise CorruptWalError(f"BTREE INSERT_POST record at {rec.lsn}: no new item")
        newitem = bytearray(orignewitem[:index_tuple_size(orignewitem)])
        if len(newitem) != len(orignewitem):
            raise CorruptWalError(f"BTREE INSERT_POST record at {rec.lsn}: new item size "
                                  f"{len(newitem)} but {len(orignewitem)} bytes logged")
        opost_off, oposting = _get_item_bytes(page, offnum - 1, "INSERT_POST")
        nposting = bt_swap_posting(newitem, oposting, postingoff)
        # memcpy(oposting, nposting, MAXALIGN(IndexTupleSize(nposting)))
        page[opost_off:opost_off + len(nposting)] = nposting
        _add_item(page, newitem, offnum, "failed to add posting split new item")
    page_set_lsn(page, rec.end_lsn)


def _redo_split_right(rec: DecodedRecord, page: bytearray, level: int) -> None:
    """btree_xlog_split: rebuild the new right page (block 1) from scratch."""
    origpagenumber = _blkno(rec, 0)
    if origpagenumber is None:
        raise CorruptWalError(f"BTREE split record at {rec.lsn} has no block 0")
    spagenumber = _blkno(rec, 2)
    bt_pageinit(page)
    _set_opaque(page, BTPageOpaque(origpagenumber, P_NONE if spagenumber is None else spagenumber,
                                   level, BTP_LEAF if level == 0 else 0, 0))
    _restore_page(page, _block_data(rec, 1, "split"), rec)
    page_set_lsn(page, rec.end_lsn)


def _redo_split_left(rec: DecodedRecord, page: bytearray, newitemonleft: bool,
                     level: int, firstrightoff: int, newitemoff: int,
                     postingoff: int) -> None:
    """btree_xlog_split: rebuild the original (left) page on a temp page."""
    rightpagenumber = _blkno(rec, 1)
    if rightpagenumber is None:
        raise CorruptWalError(f"BTREE split record at {rec.lsn} has no block 1")
    data = _block_data(rec, 0, "split")
    pos = 0
    newitem = bytearray()
    newitemsz = 0
    nposting: bytes | bytearray = b""
    replacepostingoff = INVALID_OFFSET_NUMBER
    if newitemonleft or postingoff != 0:
        if len(data) < INDEX_TUPLE.size:
            raise CorruptWalError(f"BTREE split record at {rec.lsn}: no new item")
        newitemsz = maxalign(index_tuple_size(data))
        newitem = bytearray(data[:newitemsz])
        pos += newitemsz
        if postingoff != 0:
            replacepostingoff = newitemoff - 1
            _off, oposting = _get_item_bytes(page, replacepostingoff, "split posting list")
            nposting = bt_swap_posting(newitem, oposting, postingoff)
    if len(data) < pos + INDEX_TUPLE.size:
        raise CorruptWalError(f"BTREE split record at {rec.lsn}: no left high key")
    left_hikeysz = maxalign(index_tuple_size(data, pos))
    left_hikey = data[pos:pos + left_hikeysz]
    if pos + left_hikeysz != len(data):
        raise CorruptWalError(f"BTREE split record at {rec.lsn}: {len(data)} bytes of left "
                              f"page data, expected {pos + left_hikeysz}")

    oopaque = bt_page_get_opaque(page)
    leftpage = _temp_page_copy_special(page)
    _add_item(leftpage, left_hikey, P_HIKEY, "failed to add high key to left page after split")
    leftoff = P_HIKEY + 1
    off = p_firstdatakey(oopaque)
    while off < firstrightoff:
        if off == replacepostingoff:
            _add_item(leftpage, nposting[:maxalign(index_tuple_size(nposting))], leftoff,
                      "failed to add new posting list item to left page after split")
            leftoff += 1
            off += 1
            continue
        elif newitemonleft and off == newitemoff:
            _add_item(leftpage, newitem[:newitemsz], leftoff,
                      "failed to add new item to left page after split")
            leftoff += 1
        _off, item = _get_item_bytes(page, off, "split")
        _add_item(leftpage, item, leftoff, "failed to add old item to left page after split")
        leftoff += 1
        off += 1
    if newitemonleft and off == newitemoff:
        _add_item(leftpage, newitem[:newitemsz], leftoff,
                  "failed to add new item to left page after split")

    # PageRestoreTempPage, then fix the opaque fields
    page[:] = leftpage
    flags = BTP_INCOMPLETE_SPLIT | (BTP_LEAF if level == 0 else 0)
    _set_opaque(page, BTPageOpaque(oopaque.btpo_prev, rightpagenumber, oopaque.btpo_level,
                                   flags, 0))
    page_set_lsn(page, rec.end_lsn)


def _redo_split(rec: DecodedRecord, block_id: int, page: bytearray,
                newitemonleft: bool) -> None:
    """btree_xlog_split."""
    level, firstrightoff, newitemoff, postingoff = _unpack(XL_BTREE_SPLIT, rec.main_data,
                                                           "split", rec)
    if block_id == 0:
        _redo_split_left(rec, page, newitemonleft, level, firstrightoff, newitemoff,
                         postingoff)
    elif block_id == 1:
        _redo_split_right(rec, page, level)
    elif block_id == 2:
        rightpagenumber = _blkno(rec, 1)
        if rightpagenumber is None:
            raise CorruptWalError(f"BTREE split record at {rec.lsn} has no block 1")
        _set_opaque_u32(page, BT_OPAQUE_PREV_OFF, rightpagenumber)
        page_set_lsn(page, rec.end_lsn)
    elif block_id == 3 and level > 0:
        _clear_incomplete_split(rec, page)
    else:
        raise _bad_block(rec, block_id)


@dataclass(slots=True)
class _DedupState:
    """BTDedupStateData, as much of it as redo uses."""

    maxpostingsize: int
    base: bytes = b""
    baseoff: int = INVALID_OFFSET_NUMBER
    basetupsize: int = 0
    htids: bytearray = field(default_factory=bytearray)
    nitems: int = 0
    nintervals: int = 0

    def start_pending(self, base: bytes, baseoff: int) -> None:
        """_bt_dedup_start_pending."""
        if bt_tuple_is_posting(base):
            self.htids = bytearray(_posting_tids(base))
            self.basetupsize = bt_tuple_get_posting_offset(base)
        else:
            self.htids = bytearray(base[:ITEM_POINTER_SIZE])
            self.basetupsize = index_tuple_size(base)
        self.nitems = 1
        self.base = base
        self.baseoff = baseoff

    def save_htid(self, itup: bytes) -> bool:
        """_bt_dedup_save_htid."""
        htids = _heap_tids(itup)
        # MAXALIGN(basetupsize + (state->nhtids + nhtids) * sizeof(ItemPointerData))
        mergedtupsz = maxalign(self.basetupsize + len(self.htids) + len(htids))
        if mergedtupsz > self.maxpostingsize:
            return False
        self.nitems += 1
        self.htids += htids
        return True

    def finish_pending(self, newpage: bytearray) -> None:
        """_bt_dedup_finish_pending."""
        tupoff = page_get_max_offset_number(newpage) + 1
        if self.nitems == 1:
            item = self.base[:index_tuple_size(self.base)]
        else:
            item = bytes(bt_form_posting(self.base, bytes(self.htids)))
            self.nintervals += 1
        _add_item(newpage, item, tupoff, "deduplication failed to add tuple to page")
        self.htids = bytearray()
        self.nitems = 0


def _redo_dedup(rec: DecodedRecord, page: bytearray) -> None:
    """btree_xlog_dedup."""
    (nintervals,) = _unpack(XL_BTREE_DEDUP, rec.main_data, "dedup", rec)
    data = _block_data(rec, 0, "dedup")
    if len(data) < nintervals * BT_DEDUP_INTERVAL.size:
        raise CorruptWalError(f"BTREE DEDUP record at {rec.lsn}: {nintervals} intervals but "
                              f"{len(data)} bytes of block data")
    intervals = [BT_DEDUP_INTERVAL.unpack_from(data, i * BT_DEDUP_INTERVAL.size)
                 for i in range(nintervals)]
    opaque = bt_page_get_opaque(page)
    state = _DedupState(maxpostingsize=BT_MAX_ITEM_SIZE)
    minoff = p_firstdatakey(opaque)
    maxoff = page_get_max_offset_number(page)
    if minoff > maxoff:
        raise CorruptionError(f"btree DEDUP record at {rec.lsn} for a page without items")
    newpage = _temp_page_copy_special(page)
    if opaque.btpo_next != P_NONE:
        _off, hikey = _get_item_bytes(page, P_HIKEY, "dedup")
        _add_item(newpage, hikey, P_HIKEY, "deduplication failed to add highkey")
    for offnum in range(minoff, maxoff + 1):
        off, _len = get_item(page, offnum)
        if off + INDEX_TUPLE.size > BLCKSZ:
            raise CorruptionError(f"btree dedup: item {offnum} runs past the page")
        itup = bytes(page[off:off + index_tuple_size(page, off)])
        if offnum == minoff:
            state.start_pending(itup, offnum)
        elif (state.nintervals < nintervals
              and state.baseoff == intervals[state.nintervals][0]
              and state.nitems < intervals[state.nintervals][1]):
            if not state.save_htid(itup):
                raise CorruptionError("deduplication failed to add heap tid to pending "
                                      f"posting list (WAL record at {rec.lsn})")
        else:
            state.finish_pending(newpage)
            state.start_pending(itup, offnum)
    state.finish_pending(newpage)
    if opaque.btpo_flags & BTP_HAS_GARBAGE:
        _set_flags(newpage, _flags(newpage) & ~BTP_HAS_GARBAGE)
    page[:] = newpage
    page_set_lsn(page, rec.end_lsn)


def _redo_updates_and_deletes(rec: DecodedRecord, page: bytearray, ndeleted: int,
                              nupdated: int, what: str) -> None:
    """The common body of btree_xlog_vacuum and btree_xlog_delete (with
    btree_xlog_updates)."""
    data = _block_data(rec, 0, what)
    need = 2 * (ndeleted + nupdated)
    if len(data) < need:
        raise CorruptWalError(f"BTREE {what} record at {rec.lsn}: {len(data)} bytes of block "
                              f"data, expected at least {need}")
    deleted = _u16_array(data, 0, ndeleted)
    if nupdated > 0:
        updatedoffsets = _u16_array(data, 2 * ndeleted, nupdated)
        pos = need
        for updatedoffset in updatedoffsets:
            (ndeletedtids,) = _unpack(U16, data, what, rec, pos)
            pos += U16.size
            if pos + 2 * ndeletedtids > len(data):
                raise CorruptWalError(f"BTREE {what} record at {rec.lsn}: update entry "
                                      "runs past the block data")
            deletetids = _u16_array(data, pos, ndeletedtids)
            pos += 2 * ndeletedtids
            off, _item = _get_item_bytes(page, updatedoffset, what)
            origtuple = bytes(page[off:off + index_tuple_size(page, off)])
            itup = bt_update_posting(origtuple, deletetids)
            itup = itup + bytes(maxalign(len(itup)) - len(itup))
            if not page_index_tuple_overwrite(page, updatedoffset, itup):
                raise CorruptionError("failed to update partially dead item")
    if ndeleted > 0:
        page_index_multi_delete(page, deleted)
    _set_flags(page, _flags(page) & ~BTP_HAS_GARBAGE)
    page_set_lsn(page, rec.end_lsn)


def _redo_mark_page_halfdead(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """btree_xlog_mark_page_halfdead."""
    poffset, _leafblk, leftblk, rightblk, topparent = _unpack(
        XL_BTREE_MARK_PAGE_HALFDEAD, rec.main_data, "mark_page_halfdead", rec)
    if block_id == 1:
        nextoffset = poffset + 1
        _off, nextitup = _get_item_bytes(page, nextoffset, "MARK_PAGE_HALFDEAD")
        rightsib = _tid_block(nextitup)
        off, _itup = _get_item_bytes(page, poffset, "MARK_PAGE_HALFDEAD")
        _set_tid_block(page, rightsib, off)
        page_index_tuple_delete(page, nextoffset)
        page_set_lsn(page, rec.end_lsn)
    elif block_id == 0:
        _init_half_dead_leaf(page, leftblk, rightblk, topparent)
        page_set_lsn(page, rec.end_lsn)
    else:
        raise _bad_block(rec, block_id)


def _redo_unlink_page(rec: DecodedRecord, block_id: int, page: bytearray,
                      info: int) -> None:
    """btree_xlog_unlink_page."""
    (leftsib, rightsib, level, safexid, leafleftsib, leafrightsib,
     leaftopparent) = _unpack(XL_BTREE_UNLINK_PAGE, rec.main_data, "unlink_page", rec)
    if block_id == 1 and leftsib != P_NONE:
        _set_opaque_u32(page, BT_OPAQUE_NEXT_OFF, rightsib)
    elif block_id == 0:
        bt_pageinit(page)
        # BTPageSetDeleted, then BTP_LEAF for a leaf
        flags = BTP_DELETED | BTP_HAS_FULLXID | (BTP_LEAF if level == 0 else 0)
        _set_opaque(page, BTPageOpaque(leftsib, rightsib, level, flags, 0))
        set_pd_lower(page, maxalign(SIZE_OF_PAGE_HEADER) + BT_DELETED_PAGE.size)
        set_pd_upper(page, pd_special(page))
        BT_DELETED_PAGE.pack_into(page, SIZE_OF_PAGE_HEADER, safexid)
    elif block_id == 2:
        _set_opaque_u32(page, BT_OPAQUE_PREV_OFF, leftsib)
    elif block_id == 3:
        _init_half_dead_leaf(page, leafleftsib, leafrightsib, leaftopparent)
    elif block_id == 4 and info == XLOG_BTREE_UNLINK_PAGE_META:
        _restore_meta(rec, 4, page)
        return
    else:
        raise _bad_block(rec, block_id)
    page_set_lsn(page, rec.end_lsn)


def _redo_newroot(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """btree_xlog_newroot."""
    _rootblk, level = _unpack(XL_BTREE_NEWROOT, rec.main_data, "newroot", rec)
    if block_id == 0:
        bt_pageinit(page)
        _set_opaque(page, BTPageOpaque(P_NONE, P_NONE, level,
                                       BTP_ROOT | (BTP_LEAF if level == 0 else 0), 0))
        if level > 0:
            _restore_page(page, _block_data(rec, 0, "newroot"), rec)
        page_set_lsn(page, rec.end_lsn)
    elif block_id == 1 and level > 0:
        _clear_incomplete_split(rec, page)
    elif block_id == 2:
        _restore_meta(rec, 2, page)
    else:
        raise _bad_block(rec, block_id)


def _bad_block(rec: DecodedRecord, block_id: int) -> CorruptWalError:
    name = RECORD_NAMES.get(rec.rmgr_info, hex(rec.rmgr_info))
    return CorruptWalError(f"BTREE {name} record at {rec.lsn} has no use for block {block_id}")



# --------------------------------------------------------------------------- entry point

def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """btree_redo, restricted to block reference ``block_id`` (see the module docstring)."""
    info = rec.rmgr_info
    if info in (XLOG_BTREE_INSERT_LEAF, XLOG_BTREE_INSERT_POST):
        if block_id != 0:
            raise _bad_block(rec, block_id)
        _redo_insert(rec, page, posting=info == XLOG_BTREE_INSERT_POST)
    elif info in (XLOG_BTREE_INSERT_UPPER, XLOG_BTREE_INSERT_META):
        if block_id == 0:
            _redo_insert(rec, page, posting=False)
        elif block_id == 1:
            _clear_incomplete_split(rec, page)
        elif block_id == 2 and info == XLOG_BTREE_INSERT_META:
            _restore_meta(rec, 2, page)
        else:
            raise _bad_block(rec, block_id)
    elif info in (XLOG_BTREE_SPLIT_L, XLOG_BTREE_SPLIT_R):
        _redo_split(rec, block_id, page, newitemonleft=info == XLOG_BTREE_SPLIT_L)
    elif info == XLOG_BTREE_DEDUP:
        if block_id != 0:
            raise _bad_block(rec, block_id)
        _redo_dedup(rec, page)
    elif info == XLOG_BTREE_VACUUM:
        if block_id != 0:
            raise _bad_block(rec, block_id)
        ndeleted, nupdated = _unpack(XL_BTREE_VACUUM, rec.main_data, "vacuum", rec)
        _redo_updates_and_deletes(rec, page, ndeleted, nupdated, "VACUUM")
    elif info == XLOG_BTREE_DELETE:
        if block_id != 0:
            raise _bad_block(rec, block_id)
        _xid, ndeleted, nupdated = _unpack(XL_BTREE_DELETE, rec.main_data, "delete", rec)
        _redo_updates_and_deletes(rec, page, ndeleted, nupdated, "DELETE")
    elif info == XLOG_BTREE_MARK_PAGE_HALFDEAD:
        _redo_mark_page_halfdead(rec, block_id, page)
    elif info in (XLOG_BTREE_UNLINK_PAGE, XLOG_BTREE_UNLINK_PAGE_META):
        _redo_unlink_page(rec, block_id, page, info)
    elif info == XLOG_BTREE_NEWROOT:
        _redo_newroot(rec, block_id, page)
    elif info == XLOG_BTREE_META_CLEANUP:
        if block_id != 0:
            raise _bad_block(rec, block_id)
        _restore_meta(rec, 0, page)
    elif info == XLOG_BTREE_REUSE_PAGE:
        raise _bad_block(rec, block_id)
    else:
        raise UnsupportedWalRecord(f"btree_redo: unknown op code {info:#04x} "
                                   f"(rmgr Btree, WAL record at {rec.lsn})")
