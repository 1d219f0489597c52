"""GiST redo (src/backend/access/gist/gistxlog.c gist_redo), one block at a time.

Pages (src/include/access/gist.h): the special space is GISTPageOpaqueData (16 bytes):
the NSN (an LSN: xlogid u32, xrecoff u32), rightlink u32, flags u16, gist_page_id u16
(0xFF81).  Items are IndexTuples (t_tid 6 bytes, t_info u16 whose low 13 bits are the
tuple's size).

Records:

    PAGE_UPDATE   block 0: ntodelete offsets then tuples in the block data; one delete +
                  one insert overwrites in place, else multi-delete (a leaf gets
                  F_TUPLES_DELETED) then the tuples appended; block 1 (optional): the child
                  whose split this completes: NSN = LSN, F_FOLLOW_RIGHT cleared
    DELETE        block 0: the offsets in the main data deleted; F_HAS_GARBAGE cleared,
                  F_TUPLES_DELETED set
    PAGE_SPLIT    blocks 1..npage (init): each page's tuples (an int count, then tuples),
                  leaf flag, rightlinks chained (the last gets the old rightlink), NSN, and
                  F_FOLLOW_RIGHT on all but the last (not for a root split); block 0
                  (optional): the child, as in PAGE_UPDATE
    PAGE_DELETE   block 0: F_DELETED with the deleteXid after the header; block 1: the
                  parent's downlink deleted
    PAGE_REUSE, ASSIGN_LSN    no page changes (hot-standby conflicts, a new LSN)

The child of PAGE_UPDATE and PAGE_SPLIT gets its NSN and flag even when the record
restores its full-page image (the image was taken before the LSN was known):
``after_image``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.keys import BLCKSZ
from pagestore.redo.bufpage import (
    FIRST_OFFSET_NUMBER,
    INDEX_SIZE_MASK,
    INVALID_BLOCK_NUMBER,
    SIZE_OF_PAGE_HEADER,
    U16,
    U32,
    maxalign,
    page_add_item,
    page_get_max_offset_number,
    page_index_multi_delete,
    page_index_tuple_delete,
    page_index_tuple_overwrite,
    page_init,
    page_is_empty,
    page_set_lsn,
    set_pd_lower,
)

if TYPE_CHECKING:
    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.redo.context import RedoContext

XLOG_GIST_PAGE_UPDATE = 0x00
XLOG_GIST_DELETE = 0x10
XLOG_GIST_PAGE_REUSE = 0x20
XLOG_GIST_PAGE_SPLIT = 0x30
XLOG_GIST_PAGE_DELETE = 0x60
XLOG_GIST_ASSIGN_LSN = 0x70

F_LEAF = 1 << 0
F_DELETED = 1 << 1
F_TUPLES_DELETED = 1 << 2
F_FOLLOW_RIGHT = 1 << 3
F_HAS_GARBAGE = 1 << 4
GIST_PAGE_ID = 0xFF81
GIST_ROOT_BLKNO = 0

# GISTPageOpaqueData: nsn (xlogid u32, xrecoff u32), rightlink u32, flags u16, page id u16
GIST_OPAQUE = struct.Struct("<IIIHH")
GIST_NSN_OFF = 0         # in the special space
GIST_RIGHTLINK_OFF = 8
GIST_FLAGS_OFF = 12
OPAQUE_OFF = BLCKSZ - GIST_OPAQUE.size
NSN_OFF = OPAQUE_OFF + GIST_NSN_OFF
RIGHTLINK_OFF = OPAQUE_OFF + GIST_RIGHTLINK_OFF
FLAGS_OFF = OPAQUE_OFF + GIST_FLAGS_OFF
NSN = struct.Struct("<II")
I32 = struct.Struct("<i")
U64 = struct.Struct("<Q")
T_INFO_OFF = 6  # IndexTupleData: t_tid (6 bytes), t_info u16

# gistxlogPageUpdate: ntodelete u16, ntoinsert u16
XL_PAGE_UPDATE = struct.Struct("<HH")
# gistxlogDelete: latestRemovedXid u32, ntodelete u16; the offsets follow in the main data
XL_DELETE = struct.Struct("<IH")
# gistxlogPageSplit: origrlink u32, (pad), orignsn u64, origleaf bool, (pad), npage u16,
# markfollowright bool
XL_PAGE_SPLIT = struct.Struct("<I4xQ?xH?")
# gistxlogPageDelete: deleteXid u64 (FullTransactionId), downlinkOffset u16
XL_PAGE_DELETE = struct.Struct("<QH")


def flags(page: bytearray) -> int:
    return int(U16.unpack_from(page, FLAGS_OFF)[0])


def set_flags(page: bytearray, value: int) -> None:
    U16.pack_into(page, FLAGS_OFF, value)


def _set_nsn(page: bytearray, lsn: int) -> None:
    NSN.pack_into(page, NSN_OFF, lsn >> 32, lsn & 0xFFFFFFFF)


def gist_init_page(page: bytearray, page_flags: int) -> None:
    """gistinitpage: PageInit with the opaque area, no right sibling, the flags."""
    page_init(page, GIST_OPAQUE.size)
    GIST_OPAQUE.pack_into(page, OPAQUE_OFF, 0, 0, INVALID_BLOCK_NUMBER, page_flags, GIST_PAGE_ID)


def index_tuple_size(data: bytes | memoryview, pos: int) -> int:
    size = int(U16.unpack_from(data, pos + T_INFO_OFF)[0]) & INDEX_SIZE_MASK
    if size == 0 or pos + size > len(data):
        raise ValueError(f"index tuple at {pos} of {len(data)} bytes has size {size}")
    return size


def _append_tuples(page: bytearray, data: bytes | memoryview, pos: int, lsn: int) -> int:
    """Add the index tuples in data[pos:] after the last item (gistfillbuffer); returns
    how many."""
    off = (FIRST_OFFSET_NUMBER if page_is_empty(page)
           else page_get_max_offset_number(page) + 1)
    n = 0
    while pos < len(data):
        size = index_tuple_size(data, pos)
        if page_add_item(page, data[pos:pos + size], off) == 0:
            raise CorruptWalError(f"GiST record at {lsn}: failed to add item to GiST index "
                                  f"page, size {size} bytes")
        pos += size
        off += 1
        n += 1
    return n


def _clear_follow_right(page: bytearray, lsn: int) -> None:
    """gistRedoClearFollowRight: the child's split is complete."""
    _set_nsn(page, lsn)
    set_flags(page, flags(page) & ~F_FOLLOW_RIGHT)


def _is_child_block(rec: DecodedRecord, block_id: int) -> bool:
    info = rec.rmgr_info
    return ((info == XLOG_GIST_PAGE_UPDATE and block_id == 1)
            or (info == XLOG_GIST_PAGE_SPLIT and block_id == 0))


def after_image(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """A block restored from its image (BLK_RESTORED) that redo still changes."""
    if _is_child_block(rec, block_id):
        _clear_follow_right(page, rec.end_lsn)


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    info = rec.rmgr_info
    lsn = rec.end_lsn
    data = rec.main_data
    if _is_child_block(rec, block_id):
        _clear_follow_right(page, lsn)
    elif info == XLOG_GIST_PAGE_UPDATE:
        ntodelete, ntoinsert = XL_PAGE_UPDATE.unpack_from(data)
        blk = rec.block(0)
        assert blk is not None
        bdata = memoryview(blk.data)
        if ntodelete == 1 and ntoinsert == 1:
            (offnum,) = U16.unpack_from(bdata, 0)
            size = index_tuple_size(bdata, 2)
            if not page_index_tuple_overwrite(page, offnum, bdata[2:2 + size]):
                raise CorruptWalError(f"GiST record at {rec.lsn}: failed to add item to "
                                      f"GiST index page, size {size} bytes")
            inserted = 1
        else:
            pos = 2 * ntodelete
            if ntodelete > 0:
                todelete = list(struct.unpack_from(f"<{ntodelete}H", bdata, 0))
                page_index_multi_delete(page, todelete)
                if flags(page) & F_LEAF:
                    set_flags(page, flags(page) | F_TUPLES_DELETED)
            inserted = _append_tuples(page, bdata, pos, rec.lsn)
        if inserted != ntoinsert:
            raise CorruptWalError(f"GiST record at {rec.lsn}: {inserted} tuples in the "
                                  f"record, its header says {ntoinsert}")
    elif info == XLOG_GIST_DELETE:
        _, ntodelete = XL_DELETE.unpack_from(data)
        if len(data) > XL_DELETE.size:
            todelete = list(struct.unpack_from(f"<{ntodelete}H", data, XL_DELETE.size))
            page_index_multi_delete(page, todelete)
        set_flags(page, (flags(page) & ~F_HAS_GARBAGE) | F_TUPLES_DELETED)
    elif info == XLOG_GIST_PAGE_SPLIT:
        origrlink, orignsn, origleaf, npage, markfollowright = XL_PAGE_SPLIT.unpack_from(data)
        i = block_id - 1
        if not 0 <= i < npage:
            raise CorruptWalError(f"GiST split at {rec.lsn}: block {block_id} of {npage} pages")
        blk = rec.block(block_id)
        assert blk is not None
        blkno = blk.blkno
        first = rec.block(1)
        isrootsplit = first is not None and first.blkno == GIST_ROOT_BLKNO
        gist_init_page(page, F_LEAF if origleaf and blkno != GIST_ROOT_BLKNO else 0)
        bdata = memoryview(blk.data)
        (count,) = I32.unpack_from(bdata, 0)
        if _append_tuples(page, bdata, I32.size, rec.lsn) != count:
            raise CorruptWalError(f"GiST split at {rec.lsn}: block {block_id} holds a "
                                  f"different number of tuples than its count {count}")
        if blkno == GIST_ROOT_BLKNO:
            U32.pack_into(page, RIGHTLINK_OFF, INVALID_BLOCK_NUMBER)
            _set_nsn(page, orignsn)
            set_flags(page, flags(page) & ~F_FOLLOW_RIGHT)
        else:
            if i < npage - 1:
                nxt = rec.block(block_id + 1)
                if nxt is None:
                    raise CorruptWalError(f"GiST split at {rec.lsn}: no block {block_id + 1}")
                U32.pack_into(page, RIGHTLINK_OFF, nxt.blkno)
            else:
                U32.pack_into(page, RIGHTLINK_OFF, origrlink)
            _set_nsn(page, orignsn)
            if i < npage - 1 and not isrootsplit and markfollowright:
                set_flags(page, flags(page) | F_FOLLOW_RIGHT)
            else:
                set_flags(page, flags(page) & ~F_FOLLOW_RIGHT)
    elif info == XLOG_GIST_PAGE_DELETE:
        delete_xid, downlink = XL_PAGE_DELETE.unpack_from(data)
        if block_id == 0:
            set_flags(page, flags(page) | F_DELETED)
            contents = maxalign(SIZE_OF_PAGE_HEADER)
            set_pd_lower(page, contents + U64.size)
            U64.pack_into(page, contents, delete_xid)
        else:
            page_index_tuple_delete(page, downlink)
    else:
        raise UnsupportedWalRecord(f"no redo for WAL record at {rec.lsn}: resource manager "
                                   f"Gist, info {rec.info:#04x} (no page changes expected)")
    page_set_lsn(page, lsn)
