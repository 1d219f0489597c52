"""SP-GiST redo (src/backend/access/spgist/spgxlog.c spg_redo), one block at a time.

Pages (src/include/access/spgist_private.h): the special space is SpGistPageOpaqueData
(8 bytes: flags u16, nRedirection u16, nPlaceholder u16, spgist_page_id u16 = 0xFF82).
SpGistInitPage is PageInit with that special space, the flags and the page id.

Tuples (all MAXALIGNed in size; their first word is a bitfield whose low 2 bits are the
tupstate LIVE/REDIRECT/DEAD/PLACEHOLDER):

    inner  word: tupstate:2, allTheSame:1, nNodes:13, prefixSize:16; size u16; then
           (from byte 8, SGITHDRSZ) the prefix (prefixSize bytes), then nNodes node
           tuples, IndexTuples (t_tid 6 bytes, t_info u16 whose low 13 bits are the
           node's size); the node's t_tid is the downlink
    leaf   word: tupstate:2, size:30; t_info u16 (low 14 bits: nextOffset in the chain);
           heapPtr (6 bytes); the datum
    dead   word: tupstate:2, size:30 (= 16); t_info u16 (0); pointer (6 bytes, the
           redirection target for REDIRECT, else invalid); xid u32 (REDIRECT only)

Records (the tuples in the main data are unaligned; "init" flags in the main data
re-initialise a block the record marks BKPBLOCK_WILL_INIT):

    ADD_LEAF         block 0 (init if newPage): the leaf tuple added (or replacing a
                     placeholder) at offnumLeaf, the chain head at offnumHeadLeaf linked
                     to it; or, offnumLeaf == offnumHeadLeaf, a DEAD tuple replaced in
                     place; block 1 (if offnumParent): the parent's node nodeI -> the leaf
    MOVE_LEAFS       block 1 (init if newPage): the leaf tuples added at toInsert[];
                     block 0: toDelete[] replaced by a REDIRECT (the first) to the last
                     inserted tuple and PLACEHOLDERs; block 2: the parent's node -> there
    ADD_NODE         no block 1: block 0's inner tuple replaced in place; else block 1
                     (init if newPage): the new inner tuple at offnumNew; block 0: the
                     old one replaced by a REDIRECT to it; the parent's node -> it, on
                     block parentBlk (0, 1 or 2)
    SPLIT_TUPLE      block 1 (unless postfixBlkSame; init if newPage): the postfix tuple;
                     block 0: the prefix tuple replaces the old one (and the postfix
                     tuple is added there when postfixBlkSame)
    PICKSPLIT        block 0 (src, not for a root split; init if initSrc, else toDelete[]
                     replaced by a REDIRECT to the new inner tuple and PLACEHOLDERs) and
                     block 1 (dest; init if initDest): the leaf tuples whose
                     leafPageSelect says so; block 2 (init if initInner): the new inner
                     tuple (and the parent's node -> it if innerIsParent); block 3: the
                     parent's node -> the new inner tuple
    VACUUM_LEAF      block 0: tuples made DEAD, made PLACEHOLDER, moved (line pointers
                     swapped, the sources made PLACEHOLDER), chains re-linked
    VACUUM_ROOT      block 0: the tuples deleted (PageIndexMultiDelete)
    VACUUM_REDIRECT  block 0: REDIRECTs made PLACEHOLDERs; trailing placeholders from
                     firstPlaceholder on deleted

A REDIRECT replacing moved tuples is a PLACEHOLDER instead when the record's
stateSrc.isBuild is set (never in WAL from PostgreSQL 15, which does not log index
builds tuple by tuple).  Every change is made only when the block needs redo; nothing
is changed after a full-page image is restored.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.keys import BLCKSZ
from pagestore.redo.bufpage import (
    INDEX_SIZE_MASK,
    INVALID_BLOCK_NUMBER,
    INVALID_OFFSET_NUMBER,
    ITEM_ID_SIZE,
    ITEM_POINTER,
    U16,
    U32,
    get_item_id,
    item_id_offset,
    page_add_item,
    page_get_max_offset_number,
    page_index_multi_delete,
    page_index_tuple_delete,
    page_init,
    page_set_lsn,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.redo.context import RedoContext

XLOG_SPGIST_ADD_LEAF = 0x10
XLOG_SPGIST_MOVE_LEAFS = 0x20
XLOG_SPGIST_ADD_NODE = 0x30
XLOG_SPGIST_SPLIT_TUPLE = 0x40
XLOG_SPGIST_PICKSPLIT = 0x50
XLOG_SPGIST_VACUUM_LEAF = 0x60
XLOG_SPGIST_VACUUM_ROOT = 0x70
XLOG_SPGIST_VACUUM_REDIRECT = 0x80

# page flags (SpGistPageOpaqueData.flags)
SPGIST_META = 1 << 0
SPGIST_DELETED = 1 << 1
SPGIST_LEAF = 1 << 2
SPGIST_NULLS = 1 << 3
SPGIST_PAGE_ID = 0xFF82

# tupstate
SPGIST_LIVE = 0
SPGIST_REDIRECT = 1
SPGIST_DEAD = 2
SPGIST_PLACEHOLDER = 3
TUPSTATE_MASK = 0x3

INVALID_TRANSACTION_ID = 0

# SpGistPageOpaqueData: flags u16, nRedirection u16, nPlaceholder u16, spgist_page_id u16
SPG_OPAQUE = struct.Struct("<HHHH")
OPAQUE_OFF = BLCKSZ - SPG_OPAQUE.size
FLAGS_OFF = OPAQUE_OFF
N_REDIRECTION_OFF = OPAQUE_OFF + 2
N_PLACEHOLDER_OFF = OPAQUE_OFF + 4

# SpGistDeadTupleData: word u32 (tupstate:2, size:30), t_info u16,
# pointer ItemPointerData (bi_hi u16, bi_lo u16, ip_posid u16), xid u32; SGDTSIZE = 16
DEAD_TUPLE = struct.Struct("<IHHHHI")
SGDTSIZE = DEAD_TUPLE.size
DEAD_POINTER_OFF = 6
# ItemPointerData: bi_hi u16, bi_lo u16, ip_posid u16
# SpGistLeafTupleData: word u32 (tupstate:2, size:30), t_info u16, heapPtr (6 bytes)
LEAF_HEADER = struct.Struct("<IH")
LEAF_T_INFO_OFF = 4
SGLT_NEXTOFFSET_MASK = 0x3FFF
# SpGistInnerTupleData: word u32 (tupstate:2, allTheSame:1, nNodes:13, prefixSize:16),
# size u16; SGITHDRSZ = MAXALIGN(8) = 8
INNER_HEADER = struct.Struct("<IH")
SGITHDRSZ = 8
# SpGistNodeTupleData = IndexTupleData: t_tid (6 bytes), t_info u16 (size in low 13 bits)
NODE_T_INFO_OFF = 6

# spgxlogAddLeaf: newPage bool, storesNulls bool, offnumLeaf u16, offnumHeadLeaf u16,
# offnumParent u16, nodeI u16; sizeof = 10, the leaf tuple follows
XL_ADD_LEAF = struct.Struct("<??HHHH")
# spgxlogMoveLeafs: nMoves u16, newPage bool, replaceDead bool, storesNulls bool, (pad),
# offnumParent u16, nodeI u16, (pad 2), stateSrc (myXid u32, isBuild bool, pad 3);
# offsets[] at offsetof = 20
XL_MOVE_LEAFS = struct.Struct("<H???xHH2xI?")
XL_MOVE_LEAFS_OFFSETS = 20
# spgxlogAddNode: offnum u16, offnumNew u16, newPage bool, parentBlk int8, offnumParent
# u16, nodeI u16, (pad 2), stateSrc; sizeof = 20, the inner tuple follows
XL_ADD_NODE = struct.Struct("<HH?bHH2xI?")
XL_ADD_NODE_SIZE = 20
# spgxlogSplitTuple: offnumPrefix u16, offnumPostfix u16, newPage bool, postfixBlkSame
# bool; sizeof = 6, the prefix then the postfix inner tuple follow
XL_SPLIT_TUPLE = struct.Struct("<HH??")
# spgxlogPickSplit: isRootSplit bool, (pad), nDelete u16, nInsert u16, initSrc bool,
# initDest bool, offnumInner u16, initInner bool, storesNulls bool, innerIsParent bool,
# (pad), offnumParent u16, nodeI u16, (pad 2), stateSrc; offsets[] at offsetof = 28
XL_PICKSPLIT = struct.Struct("<?xHH??H???xHH2xI?")
XL_PICKSPLIT_OFFSETS = 28
# spgxlogVacuumLeaf: nDead u16, nPlaceholder u16, nMove u16, nChain u16, stateSrc;
# offsets[] at offsetof = 16
XL_VACUUM_LEAF = struct.Struct("<HHHHI?")
XL_VACUUM_LEAF_OFFSETS = 16
# spgxlogVacuumRoot: nDelete u16, (pad 2), stateSrc; offsets[] at offsetof = 12
XL_VACUUM_ROOT = struct.Struct("<H")
XL_VACUUM_ROOT_OFFSETS = 12
# spgxlogVacuumRedirect: nToPlaceholder u16, firstPlaceholder u16, newestRedirectXid u32;
# offsets[] at offsetof = 8
XL_VACUUM_REDIRECT = struct.Struct("<HHI")
XL_VACUUM_REDIRECT_OFFSETS = 8


# --------------------------------------------------------------------------- pages

def spgist_init_page(page: bytearray, page_flags: int) -> None:
    """SpGistInitPage: PageInit with the opaque area, the flags and the page id."""
    page_init(page, SPG_OPAQUE.size)
    SPG_OPAQUE.pack_into(page, OPAQUE_OFF, page_flags, 0, 0, SPGIST_PAGE_ID)


def _leaf_flags(stores_nulls: bool) -> int:
    return SPGIST_LEAF | (SPGIST_NULLS if stores_nulls else 0)


def _u16_at(page: bytearray, off: int) -> int:
    return int(U16.unpack_from(page, off)[0])


def n_redirection(page: bytearray) -> int:
    return _u16_at(page, N_REDIRECTION_OFF)


def n_placeholder(page: bytearray) -> int:
    return _u16_at(page, N_PLACEHOLDER_OFF)


def _add_n_redirection(page: bytearray, delta: int) -> None:
    # uint16 arithmetic, as in C (the Asserts guarding it are not in production builds)
    U16.pack_into(page, N_REDIRECTION_OFF, (n_redirection(page) + delta) & 0xFFFF)


def _add_n_placeholder(page: bytearray, delta: int) -> None:
    U16.pack_into(page, N_PLACEHOLDER_OFF, (n_placeholder(page) + delta) & 0xFFFF)


def _item(page: bytearray, offnum: int, min_size: int) -> int:
    """PageGetItem(page, PageGetItemId(page, offnum)): the item's byte offset, checked to
    exist and hold at least ``min_size`` bytes."""
    if not 1 <= offnum <= page_get_max_offset_number(page):
        raise CorruptWalError(f"SP-GiST redo: offset {offnum} is not on the page "
                              f"(max offset {page_get_max_offset_number(page)})")
    off, _flags, length = get_item_id(page, offnum)
    if length < min_size or off < item_id_offset(1) or off + length > BLCKSZ:
        raise CorruptWalError(f"SP-GiST redo: item {offnum} (offset {off}, length {length})"
                              f" cannot hold an SP-GiST tuple")
    return off


def _tupstate(page: bytearray, item_off: int) -> int:
    return int(U32.unpack_from(page, item_off)[0]) & TUPSTATE_MASK


# --------------------------------------------------------------------------- tuples

def form_dead_tuple(tupstate: int, blkno: int = INVALID_BLOCK_NUMBER,
                    offnum: int = INVALID_OFFSET_NUMBER,
                    xid: int = INVALID_TRANSACTION_ID) -> bytes:
    """spgFormDeadTuple: a REDIRECT points at (blkno, offnum) with the record's xid; any
    other state has an invalid pointer and xid.  t_info (nextOffset) is 0."""
    if tupstate != SPGIST_REDIRECT:
        blkno, offnum, xid = INVALID_BLOCK_NUMBER, INVALID_OFFSET_NUMBER, INVALID_TRANSACTION_ID
    return DEAD_TUPLE.pack(tupstate | (SGDTSIZE << 2), 0, blkno >> 16, blkno & 0xFFFF,
                           offnum, xid)


def leaf_tuple_size(data: bytes | memoryview, pos: int) -> int:
    """The size field of the (unaligned) leaf tuple at data[pos:]."""
    (word,) = U32.unpack_from(data, pos)
    size = int(word) >> 2
    if size < LEAF_HEADER.size or pos + size > len(data):
        raise CorruptWalError(f"SP-GiST record: leaf tuple at {pos} of {len(data)} bytes "
                              f"has size {size}")
    return size


def inner_tuple_size(data: bytes | memoryview, pos: int) -> int:
    """The size field of the (unaligned) inner tuple at data[pos:]."""
    size = int(U16.unpack_from(data, pos + 4)[0])
    if size < SGITHDRSZ or pos + size > len(data):
        raise CorruptWalError(f"SP-GiST record: inner tuple at {pos} of {len(data)} bytes "
                              f"has size {size}")
    return size


def set_leaf_next_offset(page: bytearray, offnum: int, next_offnum: int) -> None:
    """SGLT_SET_NEXTOFFSET on the leaf tuple at ``offnum`` (the flag bits stay)."""
    at = _item(page, offnum, LEAF_HEADER.size) + LEAF_T_INFO_OFF
    t_info = _u16_at(page, at)
    U16.pack_into(page, at, (t_info & 0xC000) | (next_offnum & SGLT_NEXTOFFSET_MASK))


def update_node_link(page: bytearray, offnum: int, node_n: int, blkno: int,
                     target: int) -> None:
    """spgUpdateNodeLink on the inner tuple at ``offnum``: node ``node_n``'s t_tid :=
    (blkno, target)."""
    item_off = _item(page, offnum, SGITHDRSZ)
    word, size = INNER_HEADER.unpack_from(page, item_off)
    n_nodes = (word >> 3) & 0x1FFF
    prefix_size = word >> 16
    end = item_off + size
    node = item_off + SGITHDRSZ + prefix_size
    for i in range(n_nodes):
        if node + NODE_T_INFO_OFF + 2 > end:
            raise CorruptWalError(f"SP-GiST redo: node {i} of the inner tuple at offset "
                                  f"{offnum} runs past the tuple")
        if i == node_n:
            ITEM_POINTER.pack_into(page, node, blkno >> 16, blkno & 0xFFFF, target)
            return
        node += _u16_at(page, node + NODE_T_INFO_OFF) & INDEX_SIZE_MASK
    raise CorruptWalError(f"SP-GiST redo: failed to find requested node {node_n} in "
                          f"SPGiST inner tuple at offset {offnum}")


# --------------------------------------------------------------------------- page edits

def _add_at(page: bytearray, tup: bytes | memoryview, offnum: int) -> None:
    """PageAddItem(page, tup, size, offnum, false, false), which must land at offnum."""
    if page_add_item(page, tup, offnum) != offnum:
        raise CorruptWalError(f"SP-GiST redo: failed to add item of size {len(tup)} to "
                              f"SPGiST index page at offset {offnum}")


def _replace_at(page: bytearray, tup: bytes | memoryview, offnum: int) -> None:
    """PageIndexTupleDelete then PageAddItem at the same offset."""
    page_index_tuple_delete(page, offnum)
    _add_at(page, tup, offnum)


def add_or_replace_tuple(page: bytearray, tup: bytes | memoryview, offnum: int) -> None:
    """addOrReplaceTuple: add at ``offnum``; an existing tuple there must be a
    placeholder, which is replaced (nPlaceholder decremented)."""
    if offnum <= page_get_max_offset_number(page):
        if _tupstate(page, _item(page, offnum, 4)) != SPGIST_PLACEHOLDER:
            raise CorruptWalError(f"SP-GiST redo: SPGiST tuple to be replaced at offset "
                                  f"{offnum} is not a placeholder")
        _add_n_placeholder(page, -1)
        page_index_tuple_delete(page, offnum)
    _add_at(page, tup, offnum)


def spg_page_index_multi_delete(page: bytearray, itemnos: list[int], firststate: int,
                                reststate: int, blkno: int = INVALID_BLOCK_NUMBER,
                                offnum: int = INVALID_OFFSET_NUMBER,
                                xid: int = INVALID_TRANSACTION_ID) -> None:
    """spgPageIndexMultiDelete: delete the items, keeping their offsets with dead tuples
    (the first listed gets ``firststate``, the others ``reststate``)."""
    if not itemnos:
        return
    sortednos = sorted(itemnos)
    page_index_multi_delete(page, sortednos)
    first = itemnos[0]
    for itemno in sortednos:
        tupstate = firststate if itemno == first else reststate
        _add_at(page, form_dead_tuple(tupstate, blkno, offnum, xid), itemno)
        if tupstate == SPGIST_REDIRECT:
            _add_n_redirection(page, 1)
        elif tupstate == SPGIST_PLACEHOLDER:
            _add_n_placeholder(page, 1)


# --------------------------------------------------------------------------- records

def _offsets(data: bytes, pos: int, n: int) -> list[int]:
    return list(struct.unpack_from(f"<{n}H", data, pos))


def _blkno(rec: DecodedRecord, block_id: int) -> int:
    """XLogRecGetBlockTag(record, block_id, ...): the block number, which must exist."""
    blk = rec.block(block_id)
    if blk is None:
        raise CorruptWalError(f"SP-GiST record at {rec.lsn} has no block reference "
                              f"{block_id}")
    return blk.blkno


def _check_init(rec: DecodedRecord, block_id: int, init: bool) -> None:
    """The record's init flag and BKPBLOCK_WILL_INIT agree (else PostgreSQL PANICs in
    XLogReadBufferForRedoExtended)."""
    blk = rec.block(block_id)
    if blk is None or bool(blk.will_init) != init:
        raise CorruptWalError(f"SP-GiST record at {rec.lsn}: block {block_id} init flag "
                              f"{init} does not match its BKPBLOCK_WILL_INIT")


def _untouched(rec: DecodedRecord, block_id: int) -> CorruptWalError:
    return CorruptWalError(f"SP-GiST record at {rec.lsn} (info {rec.rmgr_info:#04x}): "
                           f"redo does not use block reference {block_id}")


def _redo_add_leaf(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    data = rec.main_data
    new_page, stores_nulls, off_leaf, off_head, off_parent, node_i = \
        XL_ADD_LEAF.unpack_from(data)
    pos = XL_ADD_LEAF.size
    leaf = memoryview(data)[pos:pos + leaf_tuple_size(data, pos)]
    if block_id == 0:
        _check_init(rec, 0, new_page)
        if new_page:
            spgist_init_page(page, _leaf_flags(stores_nulls))
        if off_leaf != off_head:
            # added by SpGistPageAddNewItem; the chain head now links to it
            add_or_replace_tuple(page, leaf, off_leaf)
            if off_head != INVALID_OFFSET_NUMBER:
                set_leaf_next_offset(page, off_head, off_leaf)
        else:
            # a DEAD tuple replaced in place
            _replace_at(page, leaf, off_leaf)
    elif block_id == 1 and off_parent != INVALID_OFFSET_NUMBER:
        update_node_link(page, off_parent, node_i, _blkno(rec, 0), off_leaf)
    else:
        raise _untouched(rec, block_id)


def _redo_move_leafs(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    data = rec.main_data
    n_moves, new_page, replace_dead, stores_nulls, off_parent, node_i, my_xid, is_build = \
        XL_MOVE_LEAFS.unpack_from(data)
    n_insert = 1 if replace_dead else n_moves + 1
    pos = XL_MOVE_LEAFS_OFFSETS
    to_delete = _offsets(data, pos, n_moves)
    pos += 2 * n_moves
    to_insert = _offsets(data, pos, n_insert)
    pos += 2 * n_insert
    blkno_dst = _blkno(rec, 1)
    last = to_insert[-1]
    if block_id == 1:
        _check_init(rec, 1, new_page)
        if new_page:
            spgist_init_page(page, _leaf_flags(stores_nulls))
        for offnum in to_insert:
            size = leaf_tuple_size(data, pos)
            add_or_replace_tuple(page, memoryview(data)[pos:pos + size], offnum)
            pos += size
    elif block_id == 0:
        spg_page_index_multi_delete(page, to_delete,
                                    SPGIST_PLACEHOLDER if is_build else SPGIST_REDIRECT,
                                    SPGIST_PLACEHOLDER, blkno_dst, last, my_xid)
    elif block_id == 2:
        update_node_link(page, off_parent, node_i, blkno_dst, last)
    else:
        raise _untouched(rec, block_id)


def _redo_add_node(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    data = rec.main_data
    offnum, offnum_new, new_page, parent_blk, off_parent, node_i, my_xid, is_build = \
        XL_ADD_NODE.unpack_from(data)
    pos = XL_ADD_NODE_SIZE
    inner = memoryview(data)[pos:pos + inner_tuple_size(data, pos)]
    if rec.block(1) is None:
        # the inner tuple updated in place
        if block_id != 0:
            raise _untouched(rec, block_id)
        _replace_at(page, inner, offnum)
        return
    blkno_new = _blkno(rec, 1)
    if block_id == 1:
        # the new tuple goes in first, so that the redirect is valid
        _check_init(rec, 1, new_page)
        if new_page:
            spgist_init_page(page, 0)  # ADD_NODE is not used for nulls pages
        add_or_replace_tuple(page, inner, offnum_new)
    elif block_id == 0:
        if is_build:
            dead = form_dead_tuple(SPGIST_PLACEHOLDER)
        else:
            dead = form_dead_tuple(SPGIST_REDIRECT, blkno_new, offnum_new, my_xid)
        _replace_at(page, dead, offnum)
        if is_build:
            _add_n_placeholder(page, 1)
        else:
            _add_n_redirection(page, 1)
    elif block_id != 2 or parent_blk != 2:
        raise _untouched(rec, block_id)
    if parent_blk == block_id:
        update_node_link(page, off_parent, node_i, blkno_new, offnum_new)


def _redo_split_tuple(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    data = rec.main_data
    off_prefix, off_postfix, new_page, postfix_same = XL_SPLIT_TUPLE.unpack_from(data)
    pos = XL_SPLIT_TUPLE.size
    prefix_size = inner_tuple_size(data, pos)
    prefix = memoryview(data)[pos:pos + prefix_size]
    pos += prefix_size
    postfix = memoryview(data)[pos:pos + inner_tuple_size(data, pos)]
    if block_id == 1 and not postfix_same:
        # the postfix tuple first, to avoid a dangling link
        _check_init(rec, 1, new_page)
        if new_page:
            spgist_init_page(page, 0)  # SPLIT_TUPLE is not used for nulls pages
        add_or_replace_tuple(page, postfix, off_postfix)
    elif block_id == 0:
        _replace_at(page, prefix, off_prefix)
        if postfix_same:
            add_or_replace_tuple(page, postfix, off_postfix)
    else:
        raise _untouched(rec, block_id)


def _redo_picksplit(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    data = rec.main_data
    (is_root_split, n_delete, n_insert, init_src, init_dest, off_inner, init_inner,
     stores_nulls, inner_is_parent, off_parent, node_i, my_xid, is_build) = \
        XL_PICKSPLIT.unpack_from(data)
    pos = XL_PICKSPLIT_OFFSETS
    to_delete = _offsets(data, pos, n_delete)
    pos += 2 * n_delete
    to_insert = _offsets(data, pos, n_insert)
    pos += 2 * n_insert
    leaf_page_select = data[pos:pos + n_insert]
    if len(leaf_page_select) != n_insert:
        raise CorruptWalError(f"SP-GiST pick-split at {rec.lsn}: record too short")
    pos += n_insert
    inner_size = inner_tuple_size(data, pos)
    inner = memoryview(data)[pos:pos + inner_size]
    pos += inner_size
    blkno_inner = _blkno(rec, 2)

    if block_id in (0, 1):
        to_dest = block_id == 1
        if to_dest:
            # the dest page: re-initialised, or as it was
            _check_init(rec, 1, init_dest)
            if init_dest:
                spgist_init_page(page, _leaf_flags(stores_nulls))
        elif is_root_split:
            raise _untouched(rec, block_id)  # the root is touched only as the inner page
        else:
            _check_init(rec, 0, init_src)
            if init_src:
                spgist_init_page(page, _leaf_flags(stores_nulls))
            elif is_build:
                spg_page_index_multi_delete(page, to_delete, SPGIST_PLACEHOLDER,
                                            SPGIST_PLACEHOLDER)
            else:
                spg_page_index_multi_delete(page, to_delete, SPGIST_REDIRECT,
                                            SPGIST_PLACEHOLDER, blkno_inner, off_inner,
                                            my_xid)
        # the leaf tuples of this page (all are walked: they are unaligned, back to back)
        for i in range(n_insert):
            size = leaf_tuple_size(data, pos)
            if bool(leaf_page_select[i]) == to_dest:
                add_or_replace_tuple(page, memoryview(data)[pos:pos + size], to_insert[i])
            pos += size
    elif block_id == 2:
        _check_init(rec, 2, init_inner)
        if init_inner:
            spgist_init_page(page, SPGIST_NULLS if stores_nulls else 0)
        add_or_replace_tuple(page, inner, off_inner)
        if inner_is_parent:
            update_node_link(page, off_parent, node_i, blkno_inner, off_inner)
    elif block_id == 3:
        update_node_link(page, off_parent, node_i, blkno_inner, off_inner)
    else:
        raise _untouched(rec, block_id)


def _redo_vacuum_leaf(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id != 0:
        raise _untouched(rec, block_id)
    data = rec.main_data
    n_dead, n_placeholder, n_move, n_chain, _my_xid, _is_build = \
        XL_VACUUM_LEAF.unpack_from(data)
    pos = XL_VACUUM_LEAF_OFFSETS
    to_dead = _offsets(data, pos, n_dead)
    pos += 2 * n_dead
    to_placeholder = _offsets(data, pos, n_placeholder)
    pos += 2 * n_placeholder
    move_src = _offsets(data, pos, n_move)
    pos += 2 * n_move
    move_dest = _offsets(data, pos, n_move)
    pos += 2 * n_move
    chain_src = _offsets(data, pos, n_chain)
    pos += 2 * n_chain
    chain_dest = _offsets(data, pos, n_chain)

    spg_page_index_multi_delete(page, to_dead, SPGIST_DEAD, SPGIST_DEAD)
    spg_page_index_multi_delete(page, to_placeholder, SPGIST_PLACEHOLDER, SPGIST_PLACEHOLDER)
    # moves: swap the line pointers (see vacuumLeafPage), then the sources become
    # placeholders
    maxoff = page_get_max_offset_number(page)
    for src, dest in zip(move_src, move_dest, strict=True):
        if not (1 <= src <= maxoff and 1 <= dest <= maxoff):
            raise CorruptWalError(f"SP-GiST vacuum leaf at {rec.lsn}: move {src} -> {dest} "
                                  f"beyond max offset {maxoff}")
        s, d = item_id_offset(src), item_id_offset(dest)
        page[s:s + ITEM_ID_SIZE], page[d:d + ITEM_ID_SIZE] = \
            page[d:d + ITEM_ID_SIZE], page[s:s + ITEM_ID_SIZE]
    spg_page_index_multi_delete(page, move_src, SPGIST_PLACEHOLDER, SPGIST_PLACEHOLDER)
    for src, dest in zip(chain_src, chain_dest, strict=True):
        set_leaf_next_offset(page, src, dest)


def _redo_vacuum_root(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id != 0:
        raise _untouched(rec, block_id)
    data = rec.main_data
    (n_delete,) = XL_VACUUM_ROOT.unpack_from(data)
    # the tuple numbers are in order
    page_index_multi_delete(page, _offsets(data, XL_VACUUM_ROOT_OFFSETS, n_delete))


def _redo_vacuum_redirect(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id != 0:
        raise _untouched(rec, block_id)
    data = rec.main_data
    n_to_placeholder, first_placeholder, _newest_redirect_xid = \
        XL_VACUUM_REDIRECT.unpack_from(data)
    # redirects become plain placeholders (the xid field stays)
    for offnum in _offsets(data, XL_VACUUM_REDIRECT_OFFSETS, n_to_placeholder):
        item_off = _item(page, offnum, SGDTSIZE)
        (word,) = U32.unpack_from(page, item_off)
        U32.pack_into(page, item_off, (word & ~TUPSTATE_MASK) | SPGIST_PLACEHOLDER)
        ITEM_POINTER.pack_into(page, item_off + DEAD_POINTER_OFF, INVALID_BLOCK_NUMBER >> 16,
                               INVALID_BLOCK_NUMBER & 0xFFFF, INVALID_OFFSET_NUMBER)
    _add_n_redirection(page, -n_to_placeholder)
    _add_n_placeholder(page, n_to_placeholder)
    # placeholders at the end of the page removed
    if first_placeholder != INVALID_OFFSET_NUMBER:
        maxoff = page_get_max_offset_number(page)
        _add_n_placeholder(page, -(maxoff - first_placeholder + 1))
        page_index_multi_delete(page, list(range(first_placeholder, maxoff + 1)))


_REDO: dict[int, Callable[[DecodedRecord, int, bytearray], None]] = {
    XLOG_SPGIST_ADD_LEAF: _redo_add_leaf,
    XLOG_SPGIST_MOVE_LEAFS: _redo_move_leafs,
    XLOG_SPGIST_ADD_NODE: _redo_add_node,
    XLOG_SPGIST_SPLIT_TUPLE: _redo_split_tuple,
    XLOG_SPGIST_PICKSPLIT: _redo_picksplit,
    XLOG_SPGIST_VACUUM_LEAF: _redo_vacuum_leaf,
    XLOG_SPGIST_VACUUM_ROOT: _redo_vacuum_root,
    XLOG_SPGIST_VACUUM_REDIRECT: _redo_vacuum_redirect,
}


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    redo = _REDO.get(rec.rmgr_info)
    if redo is None:
        raise UnsupportedWalRecord(f"no redo for WAL record at {rec.lsn}: resource manager "
                                   f"SPGist, info {rec.info:#04x} (unknown SP-GiST record "
                                   "type)")
    redo(rec, block_id, page)
    page_set_lsn(page, rec.end_lsn)
