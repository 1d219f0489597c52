"""BRIN redo (src/backend/access/brin/brin_xlog.c brin_redo), one block at a time.

Pages (src/include/access/brin_page.h): every BRIN page has an 8-byte special space
(BrinSpecialSpace, four uint16: flags at [2], page type at [3]).  Block 0 is the metapage
(BrinMetaPageData after the page header: magic, version, pagesPerRange, lastRevmapPage);
revmap pages hold an array of ItemPointerData (6 bytes: block hi, block lo, offset), one
per page range; regular pages hold BrinTuples as items.

Records (info & XLOG_BRIN_OPMASK; XLOG_BRIN_INIT_PAGE re-initialises block 0):

    CREATE_INDEX       block 0 (init): the metapage
    INSERT             block 0: the tuple at offnum; block 1: the revmap entry -> (blk 0, offnum)
    UPDATE             block 2: the old tuple deleted (no compaction); then as INSERT
    SAMEPAGE_UPDATE    block 0: the tuple at offnum overwritten
    REVMAP_EXTEND      block 0: metapage lastRevmapPage; block 1 (init): a new revmap page
    DESUMMARIZE        block 0: the revmap entry invalidated; block 1: the tuple deleted
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.keys import BLCKSZ
from pagestore.redo.bufpage import (
    INVALID_BLOCK_NUMBER,
    ITEM_POINTER,
    PAI_OVERWRITE,
    SIZE_OF_PAGE_HEADER,
    U32,
    maxalign,
    page_add_item,
    page_get_max_offset_number,
    page_index_tuple_delete_no_compact,
    page_index_tuple_overwrite,
    page_init,
    page_set_lsn,
    set_pd_lower,
)

if TYPE_CHECKING:
    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.redo.context import RedoContext

XLOG_BRIN_CREATE_INDEX = 0x00
XLOG_BRIN_INSERT = 0x10
XLOG_BRIN_UPDATE = 0x20
XLOG_BRIN_SAMEPAGE_UPDATE = 0x30
XLOG_BRIN_REVMAP_EXTEND = 0x40
XLOG_BRIN_DESUMMARIZE = 0x50
XLOG_BRIN_OPMASK = 0x70
XLOG_BRIN_INIT_PAGE = 0x80

BRIN_PAGETYPE_META = 0xF091
BRIN_PAGETYPE_REVMAP = 0xF092
BRIN_PAGETYPE_REGULAR = 0xF093
BRIN_META_MAGIC = 0xA8109CFA

# BrinSpecialSpace: uint16 vector[MAXALIGN(1) / 2] = 4; flags = vector[2], type = vector[3]
BRIN_SPECIAL_SPACE = struct.Struct("<HHHH")
BRIN_SPECIAL_SIZE = BRIN_SPECIAL_SPACE.size
BRIN_FLAGS_OFF = 4
BRIN_TYPE_OFF = 6
BRIN_TYPE = struct.Struct("<H")
BRIN_EVACUATE_PAGE = 1 << 0
# BrinMetaPageData: brinMagic u32, brinVersion u32, pagesPerRange u32, lastRevmapPage u32
BRIN_META = struct.Struct("<IIII")
BRIN_META_LAST_REVMAP_OFF = 12
# ItemPointerData: bi_hi u16, bi_lo u16, ip_posid u16
# RevmapContents: ItemPointerData rm_tids[REVMAP_PAGE_MAXITEMS] right after the header
REVMAP_PAGE_MAXITEMS = (BLCKSZ - maxalign(SIZE_OF_PAGE_HEADER) - BRIN_SPECIAL_SIZE) \
    // ITEM_POINTER.size

# xl_brin_createidx: pagesPerRange u32, version u16
XL_BRIN_CREATEIDX = struct.Struct("<IH")
# xl_brin_insert: heapBlk u32, pagesPerRange u32, offnum u16
XL_BRIN_INSERT = struct.Struct("<IIH")
# xl_brin_update: oldOffnum u16, (pad 2), xl_brin_insert
XL_BRIN_UPDATE_OLD = struct.Struct("<H")
XL_BRIN_UPDATE_INSERT_OFF = 4
# xl_brin_samepage_update: offnum u16
XL_BRIN_SAMEPAGE = struct.Struct("<H")
# xl_brin_desummarize: pagesPerRange u32, heapBlk u32, regOffset u16
XL_BRIN_DESUMMARIZE = struct.Struct("<IIH")


def brin_page_init(page: bytearray, page_type: int) -> None:
    page_init(page, BRIN_SPECIAL_SIZE)
    BRIN_TYPE.pack_into(page, BLCKSZ - BRIN_SPECIAL_SIZE + BRIN_TYPE_OFF, page_type)


def brin_metapage_init(page: bytearray, pages_per_range: int, version: int) -> None:
    brin_page_init(page, BRIN_PAGETYPE_META)
    contents = maxalign(SIZE_OF_PAGE_HEADER)
    BRIN_META.pack_into(page, contents, BRIN_META_MAGIC, version, pages_per_range, 0)
    set_pd_lower(page, contents + BRIN_META.size)


def set_revmap_entry(page: bytearray, pages_per_range: int, heap_blk: int,
                     blkno: int, offnum: int) -> None:
    """brinSetHeapBlockItemptr: the revmap slot of ``heap_blk``'s range points at
    (blkno, offnum); blkno INVALID_BLOCK_NUMBER makes it invalid (offset 0)."""
    if pages_per_range == 0:
        raise ValueError("pagesPerRange is 0")
    index = (heap_blk // pages_per_range) % REVMAP_PAGE_MAXITEMS
    if blkno == INVALID_BLOCK_NUMBER:
        offnum = 0
    ITEM_POINTER.pack_into(page, maxalign(SIZE_OF_PAGE_HEADER) + index * ITEM_POINTER.size,
                           blkno >> 16, blkno & 0xFFFF, offnum)


def _insert(rec: DecodedRecord, block_id: int, page: bytearray, insert_off: int) -> None:
    """The common part of INSERT and UPDATE for blocks 0 (the tuple) and 1 (revmap)."""
    heap_blk, pages_per_range, offnum = XL_BRIN_INSERT.unpack_from(rec.main_data, insert_off)
    if block_id == 0:
        if rec.rmgr_info & XLOG_BRIN_INIT_PAGE:
            brin_page_init(page, BRIN_PAGETYPE_REGULAR)
        blk = rec.block(0)
        assert blk is not None
        if page_get_max_offset_number(page) + 1 < offnum:
            raise CorruptWalError(f"brin insert at {rec.lsn}: invalid max offset number")
        if page_add_item(page, blk.data, offnum, PAI_OVERWRITE) == 0:
            raise CorruptWalError(f"brin insert at {rec.lsn}: failed to add tuple")
    elif block_id == 1:
        regular = rec.block(0)
        assert regular is not None
        set_revmap_entry(page, pages_per_range, heap_blk, regular.blkno, offnum)
    else:
        raise CorruptWalError(f"brin insert at {rec.lsn}: unexpected block {block_id}")


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    op = rec.rmgr_info & XLOG_BRIN_OPMASK
    data = rec.main_data
    if op == XLOG_BRIN_CREATE_INDEX:
        pages_per_range, version = XL_BRIN_CREATEIDX.unpack_from(data)
        brin_metapage_init(page, pages_per_range, version)
    elif op == XLOG_BRIN_INSERT:
        _insert(rec, block_id, page, 0)
    elif op == XLOG_BRIN_UPDATE:
        if block_id == 2:
            (old_offnum,) = XL_BRIN_UPDATE_OLD.unpack_from(data)
            page_index_tuple_delete_no_compact(page, old_offnum)
        else:
            _insert(rec, block_id, page, XL_BRIN_UPDATE_INSERT_OFF)
    elif op == XLOG_BRIN_SAMEPAGE_UPDATE:
        (offnum,) = XL_BRIN_SAMEPAGE.unpack_from(data)
        blk = rec.block(0)
        assert blk is not None
        if not page_index_tuple_overwrite(page, offnum, blk.data):
            raise CorruptWalError(f"brin samepage update at {rec.lsn}: failed to replace tuple")
    elif op == XLOG_BRIN_REVMAP_EXTEND:
        if block_id == 0:
            U32.pack_into(page, maxalign(SIZE_OF_PAGE_HEADER) + BRIN_META_LAST_REVMAP_OFF,
                          U32.unpack_from(data)[0])
            set_pd_lower(page, maxalign(SIZE_OF_PAGE_HEADER) + BRIN_META.size)
        else:
            brin_page_init(page, BRIN_PAGETYPE_REVMAP)
    elif op == XLOG_BRIN_DESUMMARIZE:
        pages_per_range, heap_blk, reg_offset = XL_BRIN_DESUMMARIZE.unpack_from(data)
        if block_id == 0:
            set_revmap_entry(page, pages_per_range, heap_blk, INVALID_BLOCK_NUMBER, 0)
        else:
            page_index_tuple_delete_no_compact(page, reg_offset)
    else:
        raise UnsupportedWalRecord(f"no redo for WAL record at {rec.lsn}: resource manager "
                                   f"BRIN, info {rec.info:#04x} (unknown BRIN record type)")
    page_set_lsn(page, rec.end_lsn)
