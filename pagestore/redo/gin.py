"""GIN redo (src/backend/access/gin/ginxlog.c gin_redo), one block at a time.

Pages (src/include/access/ginblock.h): the special space is GinPageOpaqueData (8 bytes:
rightlink u32, maxoff u16, flags u16).  Block 0 is the metapage (GinMetaPageData after
the page header); entry-tree pages hold IndexTuples as items; posting-tree ("data")
pages keep, after the header, a right bound ItemPointer (padded to 8 bytes) and then
either PostingItems (internal pages: child block id + key, 10 bytes each, counted by
maxoff) or compressed GinPostingList segments (leaf pages, GIN_COMPRESSED: first item
pointer, nbytes u16, varbyte-encoded deltas, padded to an even size; pd_lower marks
their end); pending-list pages (GIN_LIST) hold IndexTuples, maxoff counting heap tuples.

Records (block ids as registered by the primary):

    CREATE_PTREE      block 0 (init): a compressed posting-tree leaf holding the posting
                      list in the main data
    INSERT            block 0: entry tree: a leaf may first lose the tuple at the offset
                      (isDelete), an internal page's tuple at the offset gets the split
                      child's right page as downlink, then the tuple is added at the
                      offset; data leaf: the segment actions of ginRedoRecompress; data
                      internal: the item at the offset points to the right page and the
                      new PostingItem goes in at the offset; block 1 (internal pages
                      only): the child whose split this completes loses
                      GIN_INCOMPLETE_SPLIT
    SPLIT             blocks 0, 1 (and 2, the root, on a root split): full-page images
                      only (redo fails without them); block 3 (non-leaf splits): the child
                      loses GIN_INCOMPLETE_SPLIT
    VACUUM_PAGE       block 0: a full-page image only
    VACUUM_DATA_LEAF_PAGE  block 0: the segment actions of ginRedoRecompress
    DELETE_PAGE       block 0: GIN_DELETED and the deleteXid in pd_prune_xid; block 1
                      (parent): the PostingItem at parentOffset deleted; block 2 (left
                      sibling): rightlink := the deleted page's rightlink
    UPDATE_META_PAGE  block 0 (init, even after an image): a fresh metapage with the
                      record's GinMetaPageData; block 1: ntuples > 0: the tuples in the
                      block data appended to the tail page, maxoff + 1; else if prevTail
                      is valid: the old tail's rightlink := newRightlink
    INSERT_LISTPAGE   block 0 (init): a GIN_LIST page with the tuples in the block data;
                      the tail of a sublist (no rightlink) gets GIN_LIST_FULLROW and
                      maxoff 1
    DELETE_LISTPAGE   block 0 (init): the metapage as in UPDATE_META_PAGE; blocks
                      1..ndeleted (init): empty GIN_DELETED pages

The blocks PostgreSQL reads with XLogInitBufferForRedo are rebuilt even when the record
restores their image (it ignores BLK_RESTORED): ``after_image``.

The posting-list codec of ginpostinglist.c works on item pointers as 43-bit integers
(block << 11 | offset), which is also their sort order for valid offsets (< 2048).
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
    ITEM_POINTER,
    SIZE_OF_PAGE_HEADER,
    U16,
    U32,
    get_item,
    maxalign,
    page_add_item,
    page_get_max_offset_number,
    page_index_tuple_delete,
    page_init,
    page_is_empty,
    page_set_lsn,
    page_set_prune_xid,
    pd_lower,
    pd_special,
    set_pd_lower,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pagestore.lsn import Lsn
    from pagestore.pg.xlogrecord import DecodedRecord
    from pagestore.redo.context import RedoContext

XLOG_GIN_CREATE_PTREE = 0x10
XLOG_GIN_INSERT = 0x20
XLOG_GIN_SPLIT = 0x30
XLOG_GIN_VACUUM_PAGE = 0x40
XLOG_GIN_DELETE_PAGE = 0x50
XLOG_GIN_UPDATE_META_PAGE = 0x60
XLOG_GIN_INSERT_LISTPAGE = 0x70
XLOG_GIN_DELETE_LISTPAGE = 0x80
XLOG_GIN_VACUUM_DATA_LEAF_PAGE = 0x90

# ginxlogInsert / ginxlogSplit flags
GIN_INSERT_ISDATA = 0x01
GIN_INSERT_ISLEAF = 0x02
GIN_SPLIT_ROOT = 0x04

# ginRedoRecompress segment actions
GIN_SEGMENT_UNMODIFIED = 0
GIN_SEGMENT_DELETE = 1
GIN_SEGMENT_INSERT = 2
GIN_SEGMENT_REPLACE = 3
GIN_SEGMENT_ADDITEMS = 4

# GinPageOpaqueData flags
GIN_DATA = 1 << 0
GIN_LEAF = 1 << 1
GIN_DELETED = 1 << 2
GIN_META = 1 << 3
GIN_LIST = 1 << 4
GIN_LIST_FULLROW = 1 << 5
GIN_INCOMPLETE_SPLIT = 1 << 6
GIN_COMPRESSED = 1 << 7

GIN_METAPAGE_BLKNO = 0
GIN_ROOT_BLKNO = 1
GIN_CURRENT_VERSION = 2

# GinPageOpaqueData: rightlink u32, maxoff u16, flags u16
GIN_OPAQUE = struct.Struct("<IHH")
GIN_RIGHTLINK_OFF = 0    # in the special space
GIN_MAXOFF_OFF = 4
GIN_FLAGS_OFF = 6

# GinMetaPageData: head u32, tail u32, tailFreeSize u32, nPendingPages u32,
# nPendingHeapTuples i64, nTotalPages u32, nEntryPages u32, nDataPages u32, (pad 4),
# nEntries i64, ginVersion i32, (pad 4)
GIN_META_PAGE_DATA = struct.Struct("<IIIIqIII4xqi4x")
META_OFF = maxalign(SIZE_OF_PAGE_HEADER)  # PageGetContents

# ItemPointerData: bi_hi u16, bi_lo u16, ip_posid u16
# PostingItem: child_blkno (bi_hi u16, bi_lo u16), key ItemPointerData
POSTING_ITEM_SIZE = 10
# GinPostingList: first ItemPointerData, nbytes u16, then the varbyte bytes
POSTING_LIST_HEADER = struct.Struct("<HHHH")
POSTING_LIST_HEADER_SIZE = POSTING_LIST_HEADER.size  # offsetof(GinPostingList, bytes)
# GinDataPageGetData / GinDataLeafPageGetPostingList: after the right bound
DATA_OFF = META_OFF + maxalign(ITEM_POINTER.size)
# GinDataPageMaxDataSize
DATA_PAGE_MAX_DATA_SIZE = BLCKSZ - DATA_OFF - maxalign(GIN_OPAQUE.size)
T_INFO_OFF = 6  # IndexTupleData: t_tid (6 bytes), t_info u16

# ginxlogCreatePostingTree: size u32; the posting list follows
XL_CREATE_PTREE = struct.Struct("<I")
# ginxlogInsert: flags u16; BlockIdData[2] (left, right child) follow on non-leaf pages
XL_INSERT = struct.Struct("<H")
XL_INSERT_CHILDREN = struct.Struct("<HHHH")
# ginxlogInsertEntry: offset u16, isDelete bool, (pad); the IndexTuple follows at 4
XL_INSERT_ENTRY = struct.Struct("<H?x")
# ginxlogInsertDataInternal: offset u16, PostingItem newitem
XL_INSERT_DATA_INTERNAL = struct.Struct("<H")
# ginxlogRecompressDataLeaf: nactions u16; actions (segno u8, type u8, data) follow
XL_RECOMPRESS = struct.Struct("<H")
# ginxlogSplit: node (3 x u32), rrlink u32, leftChildBlkno u32, rightChildBlkno u32,
# flags u16
XL_SPLIT = struct.Struct("<12xIIIH")
# ginxlogDeletePage: parentOffset u16, (pad), rightLink u32, deleteXid u32
XL_DELETE_PAGE = struct.Struct("<H2xII")
# ginxlogUpdateMeta: node (3 x u32), (pad to 8), GinMetaPageData metadata, prevTail u32,
# newRightlink u32, ntuples i32
XL_UPDATE_META_METADATA_OFF = 16
XL_UPDATE_META = struct.Struct("<16x56xIIi")
# ginxlogInsertListPage: rightlink u32, ntuples i32
XL_INSERT_LISTPAGE = struct.Struct("<Ii")
# ginxlogDeleteListPages: GinMetaPageData metadata, ndeleted i32
XL_DELETE_LISTPAGES_METADATA_OFF = 0
XL_DELETE_LISTPAGES = struct.Struct("<56xi")

# --------------------------------------------------------------------------- posting lists

MAX_HEAP_TUPLES_PER_PAGE_BITS = 11
OFFSET_MASK = (1 << MAX_HEAP_TUPLES_PER_PAGE_BITS) - 1
KEY_MASK = (1 << (32 + MAX_HEAP_TUPLES_PER_PAGE_BITS)) - 1
U64_MASK = (1 << 64) - 1
MAX_BYTES_PER_INTEGER = 7


def item_key(block: int, offset: int) -> int:
    """itemptr_to_uint64: an item pointer as the codec's integer."""
    if not 0 <= offset <= OFFSET_MASK:
        raise ValueError(f"item pointer ({block},{offset}): offset does not fit in "
                         f"{MAX_HEAP_TUPLES_PER_PAGE_BITS} bits")
    return (block << MAX_HEAP_TUPLES_PER_PAGE_BITS) | offset


def item_from_key(key: int) -> tuple[int, int]:
    """uint64_to_itemptr: (block, offset)."""
    return (key >> MAX_HEAP_TUPLES_PER_PAGE_BITS) & 0xFFFFFFFF, key & OFFSET_MASK


def _read_item_pointer(data: bytes | bytearray | memoryview, pos: int) -> int:
    hi, lo, posid = ITEM_POINTER.unpack_from(data, pos)
    return item_key((hi << 16) | lo, posid)


def encode_varbyte(val: int) -> bytes:
    """encode_varbyte: 7 bits a byte, low bits first, the high bit for "more follows"."""
    out = bytearray()
    while val > 0x7F:
        out.append(0x80 | (val & 0x7F))
        val >>= 7
    out.append(val)
    return bytes(out)


def compress_posting_list(items: Sequence[int], maxsize: int) -> tuple[bytes, int]:
    """ginCompressPostingList: one GinPostingList segment of at most ``maxsize`` bytes
    holding as many of ``items`` (codec integers, strictly ascending) as fit; returns
    the segment (padded to an even size with a zero byte) and how many items it holds."""
    if not items:
        raise ValueError("cannot compress an empty posting list")
    maxsize &= ~1  # SHORTALIGN_DOWN
    maxbytes = maxsize - POSTING_LIST_HEADER_SIZE
    if maxbytes <= 0:
        raise ValueError(f"posting list size limit {maxsize} leaves no room")
    prev = items[0]
    out = bytearray()
    npacked = 1
    for val in items[1:]:
        if val <= prev:
            raise ValueError(f"posting list items not in ascending order: {val} after {prev}")
        delta = val - prev
        if delta < 0x80:  # the common case: one byte
            if len(out) >= maxbytes:
                break
            out.append(delta)
        else:
            enc = encode_varbyte(delta)
            if len(enc) > maxbytes - len(out):
                break  # output is full
            out += enc
        prev = val
        npacked += 1
    nbytes = len(out)
    if nbytes & 1:
        out.append(0)
    block, offset = item_from_key(items[0])
    head = POSTING_LIST_HEADER.pack(block >> 16, block & 0xFFFF, offset, nbytes)
    return head + bytes(out), npacked


def posting_list_size(data: bytes | bytearray | memoryview, pos: int) -> int:
    """SizeOfGinPostingList of the segment at ``pos``."""
    nbytes = int(U16.unpack_from(data, pos + 6)[0])
    return POSTING_LIST_HEADER_SIZE + ((nbytes + 1) & ~1)


def decode_posting_lists(data: bytes | bytearray | memoryview, pos: int = 0,
                         end: int | None = None) -> list[int]:
    """ginPostingListDecodeAllSegments: the items of the segments in data[pos:end]."""
    if end is None:
        end = len(data)
    if end > len(data):
        raise ValueError(f"posting list segments end at {end}, past {len(data)} bytes")
    out: list[int] = []
    append = out.append
    while pos < end:
        hi, lo, posid, nbytes = POSTING_LIST_HEADER.unpack_from(data, pos)
        val = item_key((hi << 16) | lo, posid)
        append(val)
        p = pos + POSTING_LIST_HEADER_SIZE
        segend = p + nbytes
        if segend > end:
            raise ValueError(f"posting list segment at {pos} has {nbytes} bytes, past the "
                             f"end of its data at {end}")
        while p < segend:
            c = data[p]
            p += 1
            if c < 0x80:
                val += c
            else:
                delta = c & 0x7F
                shift = 7
                while True:
                    c = data[p]
                    p += 1
                    if shift == 42:  # the 7th byte: all of it, no continuation bit
                        delta |= c << 42
                        break
                    delta |= (c & 0x7F) << shift
                    if not c & 0x80:
                        break
                    shift += 7
                val = (val + delta) & U64_MASK
            append(val & KEY_MASK)
        if p > segend:
            raise ValueError(f"posting list segment at {pos}: an integer runs past its "
                             f"{nbytes} bytes")
        pos = segend + (nbytes & 1)
    return out


def merge_item_pointers(a: list[int], b: list[int]) -> list[int]:
    """ginMergeItemPointers: two ascending arrays merged, duplicates kept once (arrays
    that do not overlap are simply concatenated)."""
    if not a or not b or a[-1] < b[0]:
        return a + b
    if b[-1] < a[0]:
        return b + a
    out: list[int] = []
    ia = ib = 0
    na, nb = len(a), len(b)
    while ia < na and ib < nb:
        x, y = a[ia], b[ib]
        if x > y:
            out.append(y)
            ib += 1
        elif x == y:
            out.append(y)
            ia += 1
            ib += 1
        else:
            out.append(x)
            ia += 1
    out.extend(a[ia:])
    out.extend(b[ib:])
    return out


# --------------------------------------------------------------------------- page helpers

def _opaque_off(page: bytearray) -> int:
    """GinPageGetOpaque: the special space, which must hold GinPageOpaqueData."""
    special = pd_special(page)
    if special + GIN_OPAQUE.size > BLCKSZ:
        raise CorruptWalError(f"GIN page has pd_special {special}, no room for its opaque data")
    return special


def page_flags(page: bytearray) -> int:
    return int(U16.unpack_from(page, _opaque_off(page) + GIN_FLAGS_OFF)[0])


def set_page_flags(page: bytearray, value: int) -> None:
    U16.pack_into(page, _opaque_off(page) + GIN_FLAGS_OFF, value)


def page_maxoff(page: bytearray) -> int:
    return int(U16.unpack_from(page, _opaque_off(page) + GIN_MAXOFF_OFF)[0])


def set_page_maxoff(page: bytearray, value: int) -> None:
    U16.pack_into(page, _opaque_off(page) + GIN_MAXOFF_OFF, value)


def set_page_rightlink(page: bytearray, blkno: int) -> None:
    U32.pack_into(page, _opaque_off(page) + GIN_RIGHTLINK_OFF, blkno)


def gin_init_page(page: bytearray, page_flags: int) -> None:
    """GinInitPage: PageInit with the opaque area, the flags, no right sibling."""
    page_init(page, GIN_OPAQUE.size)
    GIN_OPAQUE.pack_into(page, BLCKSZ - GIN_OPAQUE.size, INVALID_BLOCK_NUMBER, 0, page_flags)


def gin_init_metapage(page: bytearray) -> None:
    """GinInitMetabuffer: an empty pending list, zero statistics, the current version,
    pd_lower just past the metadata."""
    gin_init_page(page, GIN_META)
    GIN_META_PAGE_DATA.pack_into(page, META_OFF, INVALID_BLOCK_NUMBER, INVALID_BLOCK_NUMBER,
                                 0, 0, 0, 0, 0, 0, 0, GIN_CURRENT_VERSION)
    set_pd_lower(page, META_OFF + GIN_META_PAGE_DATA.size)


def set_data_size(page: bytearray, size: int) -> None:
    """GinDataPageSetDataSize."""
    if not 0 <= size <= DATA_PAGE_MAX_DATA_SIZE:
        raise CorruptWalError(f"GIN data page content of {size} bytes exceeds the "
                              f"{DATA_PAGE_MAX_DATA_SIZE} bytes a page holds")
    set_pd_lower(page, DATA_OFF + size)


def _posting_item_off(offnum: int) -> int:
    return DATA_OFF + (offnum - 1) * POSTING_ITEM_SIZE


def _set_block_id(page: bytearray, pos: int, blkno: int) -> None:
    """BlockIdSet."""
    U16.pack_into(page, pos, blkno >> 16)
    U16.pack_into(page, pos + 2, blkno & 0xFFFF)


def add_posting_item(page: bytearray, item: bytes | memoryview, offnum: int) -> None:
    """GinDataPageAddPostingItem: ``item`` at ``offnum`` (0: at the end) of an internal
    data page, the items after it moved up."""
    maxoff = page_maxoff(page)
    if offnum == 0:
        pos = _posting_item_off(maxoff + 1)
    else:
        if not FIRST_OFFSET_NUMBER <= offnum <= maxoff + 1:
            raise CorruptWalError(f"GIN posting item offset {offnum} on a page of {maxoff}")
        pos = _posting_item_off(offnum)
        if offnum != maxoff + 1:
            end = _posting_item_off(maxoff + 1)
            page[pos + POSTING_ITEM_SIZE:end + POSTING_ITEM_SIZE] = page[pos:end]
    page[pos:pos + POSTING_ITEM_SIZE] = item
    maxoff += 1
    set_page_maxoff(page, maxoff)
    set_data_size(page, maxoff * POSTING_ITEM_SIZE)


def delete_posting_item(page: bytearray, offnum: int) -> None:
    """GinPageDeletePostingItem."""
    maxoff = page_maxoff(page)
    if not FIRST_OFFSET_NUMBER <= offnum <= maxoff:
        raise CorruptWalError(f"GIN posting item offset {offnum} on a page of {maxoff}")
    if offnum != maxoff:
        pos = _posting_item_off(offnum)
        end = _posting_item_off(maxoff + 1)
        page[pos:end - POSTING_ITEM_SIZE] = page[pos + POSTING_ITEM_SIZE:end]
    maxoff -= 1
    set_page_maxoff(page, maxoff)
    set_data_size(page, maxoff * POSTING_ITEM_SIZE)


def _index_tuple_size(data: bytes | memoryview, pos: int) -> int:
    size = int(U16.unpack_from(data, pos + T_INFO_OFF)[0]) & INDEX_SIZE_MASK
    if size == 0 or pos + size > len(data):
        raise ValueError(f"index tuple at {pos} of {len(data)} bytes has size {size}")
    return size


def _add_tuples(rec: DecodedRecord, page: bytearray, data: bytes, ntuples: int,
                off: int) -> None:
    """Add ``ntuples`` IndexTuples laid end to end in ``data`` at offsets off, off+1..."""
    view = memoryview(data)
    pos = 0
    for _ in range(ntuples):
        size = _index_tuple_size(view, pos)
        if page_add_item(page, view[pos:pos + size], off) == 0:
            raise CorruptWalError(f"GIN record at {rec.lsn}: failed to add item to index page")
        pos += size
        off += 1
    if pos != len(data):
        raise CorruptWalError(f"GIN record at {rec.lsn}: {len(data)} bytes of tuples, "
                              f"{ntuples} tuples use {pos}")


# --------------------------------------------------------------------------- recompression

def _to_uncompressed(page: bytearray) -> None:
    """The pre-9.4 leaf conversion at the start of ginRedoRecompress: the ItemPointer
    array becomes one compressed segment."""
    n = page_maxoff(page)
    if n > 0:
        raw = page[DATA_OFF:DATA_OFF + n * ITEM_POINTER.size]
        items = [item_key((hi << 16) | lo, posid)
                 for hi, lo, posid in ITEM_POINTER.iter_unpack(raw)]
        seg, npacked = compress_posting_list(items, BLCKSZ)
        if npacked != n or len(seg) > DATA_PAGE_MAX_DATA_SIZE:
            raise CorruptWalError(f"GIN uncompressed leaf of {n} items does not fit in one "
                                  "compressed segment")
        page[DATA_OFF:DATA_OFF + len(seg)] = seg
        total = len(seg)
    else:
        total = 0
    set_data_size(page, total)
    set_page_flags(page, page_flags(page) | GIN_COMPRESSED)
    set_page_maxoff(page, 0)


def recompress(page: bytearray, data: bytes | memoryview, lsn: Lsn) -> None:
    """ginRedoRecompress: apply the segment actions of a data leaf record.

    The result is the unchanged segments before the first action, then the segments as
    the actions rewrite them, then the rest, written from GinDataLeafPageGetPostingList
    on; bytes past the new end keep their old content, as in PostgreSQL."""
    if not page_flags(page) & GIN_COMPRESSED:
        _to_uncompressed(page)
    lower = pd_lower(page)
    if lower < DATA_OFF:
        raise CorruptWalError(f"GIN data leaf page has pd_lower {lower}")
    old = bytes(page[DATA_OFF:lower])  # the tail copy: unprocessed segments
    segmentend = len(old)
    (nactions,) = XL_RECOMPRESS.unpack_from(data, 0)
    walpos = XL_RECOMPRESS.size
    out: list[bytes | memoryview] = []
    segptr = 0  # the next unprocessed old segment
    segno = 0
    for _ in range(nactions):
        a_segno = data[walpos]
        a_action = data[walpos + 1]
        walpos += 2
        newseg: bytes | memoryview = b""
        items: list[int] = []
        if a_action in (GIN_SEGMENT_INSERT, GIN_SEGMENT_REPLACE):
            size = posting_list_size(data, walpos)
            if walpos + size > len(data):
                raise CorruptWalError(f"GIN record at {lsn}: segment of {size} bytes past "
                                      "the end of the record")
            newseg = memoryview(data)[walpos:walpos + size]
            walpos += size
        elif a_action == GIN_SEGMENT_ADDITEMS:
            (nitems,) = U16.unpack_from(data, walpos)
            walpos += 2
            end = walpos + nitems * ITEM_POINTER.size
            if end > len(data):
                raise CorruptWalError(f"GIN record at {lsn}: {nitems} items past the end "
                                      "of the record")
            items = [item_key((hi << 16) | lo, posid)
                     for hi, lo, posid in ITEM_POINTER.iter_unpack(data[walpos:end])]
            walpos = end
        if a_segno < segno:
            raise CorruptWalError(f"GIN record at {lsn}: action on segment {a_segno} after "
                                  f"segment {segno}")
        start = segptr
        while segno < a_segno:  # skip to the segment this action concerns
            if segptr >= segmentend:
                raise CorruptWalError(f"GIN record at {lsn}: action on segment {a_segno}, "
                                      f"the page has {segno}")
            segptr += posting_list_size(old, segptr)
            segno += 1
        if segptr > segmentend:
            raise CorruptWalError(f"GIN record at {lsn}: segments overrun the page's data")
        out.append(old[start:segptr])
        segsize = posting_list_size(old, segptr) if segptr != segmentend else 0
        if a_action == GIN_SEGMENT_ADDITEMS:
            if segsize == 0:
                raise CorruptWalError(f"GIN record at {lsn}: items added to segment "
                                      f"{a_segno} past the last one")
            olditems = decode_posting_lists(old, segptr, segptr + segsize)
            newitems = merge_item_pointers(items, olditems)
            newseg, npacked = compress_posting_list(newitems, BLCKSZ)
            if npacked != len(newitems):
                raise CorruptWalError(f"GIN record at {lsn}: segment {a_segno} of "
                                      f"{len(newitems)} items does not fit in a page")
            a_action = GIN_SEGMENT_REPLACE
        if a_action == GIN_SEGMENT_DELETE:
            segptr += segsize
            segno += 1
        elif a_action == GIN_SEGMENT_INSERT:
            out.append(newseg)
        elif a_action == GIN_SEGMENT_REPLACE:
            out.append(newseg)
            segptr += segsize
            segno += 1
        else:
            raise CorruptWalError(f"GIN record at {lsn}: unexpected GIN leaf action: "
                                  f"{a_action}")
    if segptr < segmentend and nactions > 0:
        # PostgreSQL copies the rest only once an action has copied the tail: with no
        # action at all the page is left with no segments.
        out.append(old[segptr:])
    result = b"".join(out)
    set_data_size(page, len(result))
    page[DATA_OFF:DATA_OFF + len(result)] = result


# --------------------------------------------------------------------------- records

def _block_data(rec: DecodedRecord, block_id: int) -> bytes:
    blk = rec.block(block_id)
    assert blk is not None
    return blk.data


def _clear_incomplete_split(page: bytearray) -> None:
    """ginRedoClearIncompleteSplit (for BLK_NEEDS_REDO)."""
    set_page_flags(page, page_flags(page) & ~GIN_INCOMPLETE_SPLIT)


def _insert_entry(rec: DecodedRecord, page: bytearray, data: bytes, rightblkno: int) -> None:
    """ginRedoInsertEntry."""
    offset, is_delete = XL_INSERT_ENTRY.unpack_from(data, 0)
    maxoff = page_get_max_offset_number(page)
    if rightblkno != INVALID_BLOCK_NUMBER:
        if not FIRST_OFFSET_NUMBER <= offset <= maxoff:
            raise CorruptWalError(f"GIN insert at {rec.lsn}: downlink offset {offset} on a "
                                  f"page of {maxoff} items")
        item_off, _len = get_item(page, offset)
        ITEM_POINTER.pack_into(page, item_off, rightblkno >> 16, rightblkno & 0xFFFF, 0)
    if is_delete:
        page_index_tuple_delete(page, offset)
    view = memoryview(data)
    pos = XL_INSERT_ENTRY.size
    size = _index_tuple_size(view, pos)
    if page_add_item(page, view[pos:pos + size], offset) == 0:
        raise CorruptWalError(f"GIN insert at {rec.lsn}: failed to add item to index page")


def _insert(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    (flags,) = XL_INSERT.unpack_from(rec.main_data, 0)
    is_leaf = bool(flags & GIN_INSERT_ISLEAF)
    if block_id == 1:
        if not is_leaf:
            _clear_incomplete_split(page)
            page_set_lsn(page, rec.end_lsn)
        return
    if block_id != 0:
        return  # PostgreSQL reads no other block
    rightblkno = INVALID_BLOCK_NUMBER
    if not is_leaf:
        _lhi, _llo, rhi, rlo = XL_INSERT_CHILDREN.unpack_from(rec.main_data, XL_INSERT.size)
        rightblkno = (rhi << 16) | rlo
    data = _block_data(rec, 0)
    if flags & GIN_INSERT_ISDATA:
        if is_leaf:
            recompress(page, data, rec.lsn)
        else:
            (offset,) = XL_INSERT_DATA_INTERNAL.unpack_from(data, 0)
            newitem = data[XL_INSERT_DATA_INTERNAL.size:
                           XL_INSERT_DATA_INTERNAL.size + POSTING_ITEM_SIZE]
            if len(newitem) != POSTING_ITEM_SIZE:
                raise CorruptWalError(f"GIN insert at {rec.lsn}: short posting item")
            maxoff = page_maxoff(page)
            if not FIRST_OFFSET_NUMBER <= offset <= maxoff + 1:
                raise CorruptWalError(f"GIN insert at {rec.lsn}: posting item offset "
                                      f"{offset} on a page of {maxoff}")
            _set_block_id(page, _posting_item_off(offset), rightblkno)
            add_posting_item(page, newitem, offset)
    else:
        _insert_entry(rec, page, data, rightblkno)
    page_set_lsn(page, rec.end_lsn)


def _update_meta(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    data = rec.main_data
    prev_tail, new_rightlink, ntuples = XL_UPDATE_META.unpack_from(data, 0)
    if block_id == 0:
        _init_metapage(page, data, XL_UPDATE_META_METADATA_OFF)
        page_set_lsn(page, rec.end_lsn)
    elif block_id == 1:
        if ntuples > 0:
            off = (FIRST_OFFSET_NUMBER if page_is_empty(page)
                   else page_get_max_offset_number(page) + 1)
            _add_tuples(rec, page, _block_data(rec, 1), ntuples, off)
            set_page_maxoff(page, (page_maxoff(page) + 1) & 0xFFFF)
            page_set_lsn(page, rec.end_lsn)
        elif prev_tail != INVALID_BLOCK_NUMBER:
            set_page_rightlink(page, new_rightlink)
            page_set_lsn(page, rec.end_lsn)


def _init_metapage(page: bytearray, data: bytes, metadata_off: int) -> None:
    """GinInitMetabuffer, then the record's GinMetaPageData copied over it."""
    gin_init_metapage(page)
    size = GIN_META_PAGE_DATA.size
    metadata = data[metadata_off:metadata_off + size]
    if len(metadata) != size:
        raise CorruptWalError(f"GIN metapage record of {len(data)} bytes has no metadata")
    page[META_OFF:META_OFF + size] = metadata


def _is_init_block(rec: DecodedRecord, block_id: int) -> bool:
    """Blocks PostgreSQL reads with XLogInitBufferForRedo (rebuilt even when restored)."""
    info = rec.rmgr_info
    if info in (XLOG_GIN_CREATE_PTREE, XLOG_GIN_INSERT_LISTPAGE, XLOG_GIN_UPDATE_META_PAGE):
        return block_id == 0
    if info == XLOG_GIN_DELETE_LISTPAGE:
        ndeleted = int(XL_DELETE_LISTPAGES.unpack_from(rec.main_data, 0)[0])
        return 0 <= block_id <= ndeleted
    return False


def after_image(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """A block restored from its image (BLK_RESTORED) that redo still rebuilds."""
    if _is_init_block(rec, block_id):
        redo_block(ctx, rec, block_id, page)


def _needs_image(rec: DecodedRecord, what: str) -> CorruptWalError:
    return CorruptWalError(f"GIN record at {rec.lsn}: {what}")


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    info = rec.rmgr_info
    lsn = rec.end_lsn
    data = rec.main_data
    if info == XLOG_GIN_INSERT:
        _insert(rec, block_id, page)
    elif info == XLOG_GIN_VACUUM_DATA_LEAF_PAGE:
        if block_id == 0:
            recompress(page, _block_data(rec, 0), rec.lsn)
            page_set_lsn(page, lsn)
    elif info == XLOG_GIN_UPDATE_META_PAGE:
        _update_meta(rec, block_id, page)
    elif info == XLOG_GIN_INSERT_LISTPAGE:
        if block_id == 0:
            rightlink, ntuples = XL_INSERT_LISTPAGE.unpack_from(data, 0)
            gin_init_page(page, GIN_LIST)
            set_page_rightlink(page, rightlink)
            if rightlink == INVALID_BLOCK_NUMBER:  # the tail of a sublist
                set_page_flags(page, page_flags(page) | GIN_LIST_FULLROW)
                set_page_maxoff(page, 1)
            else:
                set_page_maxoff(page, 0)
            _add_tuples(rec, page, _block_data(rec, 0), ntuples, FIRST_OFFSET_NUMBER)
            page_set_lsn(page, lsn)
    elif info == XLOG_GIN_DELETE_LISTPAGE:
        (ndeleted,) = XL_DELETE_LISTPAGES.unpack_from(data, 0)
        if block_id == 0:
            _init_metapage(page, data, XL_DELETE_LISTPAGES_METADATA_OFF)
            page_set_lsn(page, lsn)
        elif block_id <= ndeleted:
            gin_init_page(page, GIN_DELETED)
            page_set_lsn(page, lsn)
    elif info == XLOG_GIN_CREATE_PTREE:
        if block_id == 0:
            (size,) = XL_CREATE_PTREE.unpack_from(data, 0)
            plist = data[XL_CREATE_PTREE.size:XL_CREATE_PTREE.size + size]
            if len(plist) != size:
                raise CorruptWalError(f"GIN record at {rec.lsn}: posting list of {size} "
                                      f"bytes in {len(data)} bytes of main data")
            gin_init_page(page, GIN_DATA | GIN_LEAF | GIN_COMPRESSED)
            set_data_size(page, size)
            page[DATA_OFF:DATA_OFF + size] = plist
            page_set_lsn(page, lsn)
    elif info == XLOG_GIN_SPLIT:
        _rrlink, _lchild, _rchild, flags = XL_SPLIT.unpack_from(data, 0)
        if block_id == 3:
            if not flags & GIN_INSERT_ISLEAF:
                _clear_incomplete_split(page)
                page_set_lsn(page, lsn)
        elif block_id in (0, 1) or (block_id == 2 and flags & GIN_SPLIT_ROOT):
            page_name = ("left", "right", "root")[block_id]
            raise _needs_image(rec, f"GIN split record did not contain a full-page image "
                                    f"of {page_name} page")
    elif info == XLOG_GIN_VACUUM_PAGE:
        if block_id == 0:
            raise _needs_image(rec, "replay of gin entry tree page vacuum did not restore "
                                    "the page")
    elif info == XLOG_GIN_DELETE_PAGE:
        parent_offset, right_link, delete_xid = XL_DELETE_PAGE.unpack_from(data, 0)
        if block_id == 2:  # the left sibling
            set_page_rightlink(page, right_link)
        elif block_id == 0:  # the deleted page
            set_page_flags(page, page_flags(page) | GIN_DELETED)
            page_set_prune_xid(page, delete_xid)  # GinPageSetDeleteXid
        elif block_id == 1:  # the parent
            delete_posting_item(page, parent_offset)
        else:
            return
        page_set_lsn(page, lsn)
    else:
        raise UnsupportedWalRecord(f"no redo for WAL record at {rec.lsn}: resource manager "
                                   f"Gin, info {rec.info:#04x} (unknown GIN record type)")
