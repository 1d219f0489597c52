"""HASH index redo (src/backend/access/hash/hash_xlog.c hash_redo), one block at a time.

Also mirrors the page initialisers redo calls: _hash_pageinit, _hash_initbuf and
_hash_init_metabuffer (hashpage.c), _hash_initbitmapbuffer (hashovfl.c), and
_hash_spareindex / _hash_get_totalbuckets (hashutil.c).

Pages (src/include/access/hash.h): every hash page has a 16-byte special space,
HashPageOpaqueData: hasho_prevblkno u32, hasho_nextblkno u32, hasho_bucket u32,
hasho_flag u16 (page type LH_* plus state bits), hasho_page_id u16 (0xFF80).  Block 0 is
the metapage: HashMetaPageData at PageGetContents (offset 24), pd_lower just past it.
A bitmap page holds a uint32 array of bmsize bytes at offset 24 (a bit per overflow
page, set = in use).  Bucket and overflow pages hold IndexTuples as items.

Records and what each does to each block reference:

    INIT_META_PAGE      0 (init): the metapage (_hash_init_metabuffer)
    INIT_BITMAP_PAGE    0 (init): a bitmap page, all bits set; 1: metapage, the new map
                        recorded at hashm_mapp[nmaps] = maxbucket + 2, nmaps + 1
    INSERT              0: the tuple (block data) added at offnum; 1: metapage ntuples + 1
    ADD_OVFL_PAGE       0 (init): the overflow page (bucket number in the block data,
                        prev = block 1); 1: the previous page's nextblkno = block 0;
                        2 (optional): bitmap bit set; 3 (optional, init): a new bitmap
                        page; 4: metapage firstfree, and unless bmpage_found spares
                        (+ the new map in mapp)
    SPLIT_ALLOCATE_PAGE 0: old bucket's flag and prevblkno (= new bucket); 1 (init): the
                        new bucket page; 2: metapage maxbucket, masks, splitpoint
    SPLIT_PAGE          0: a full-page image only (an error without one)
    SPLIT_COMPLETE      0, 1: old and new bucket flags
    MOVE_PAGE_CONTENTS  0: primary bucket page, locked only; 1: tuples added at given
                        offsets; 2: the moved tuples deleted
    SQUEEZE_PAGE        0: primary bucket page, locked only; 1: tuples added (and
                        nextblkno if it precedes the freed page); 2: the freed page
                        re-initialised as LH_UNUSED_PAGE; 3: previous page's nextblkno;
                        4 (optional): next page's prevblkno; 5: bitmap bit cleared;
                        6 (optional): metapage firstfree
    DELETE              0: primary bucket page, locked only; 1: tuples deleted, and
                        LH_PAGE_HAS_DEAD_TUPLES cleared if clear_dead_marking
    SPLIT_CLEANUP       0: LH_BUCKET_NEEDS_SPLIT_CLEANUP cleared
    UPDATE_META_PAGE    0: metapage ntuples
    VACUUM_ONE_PAGE     0: the offsets in the main data deleted, LH_PAGE_HAS_DEAD_TUPLES
                        cleared; 1: metapage ntuples - ntuples

A block PostgreSQL only locks (the primary bucket page registered for a cleanup lock)
is left untouched, LSN included.  The blocks PostgreSQL (re)initialises, and the bucket
pages of SPLIT_ALLOCATE_PAGE (block 0) and SPLIT_COMPLETE, are changed even when their
full-page image was restored (BLK_RESTORED): ``after_image``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from pagestore.errors import CorruptionError, CorruptWalError, UnsupportedWalRecord
from pagestore.keys import BLCKSZ
from pagestore.redo.bufpage import (
    INDEX_SIZE_MASK,
    INVALID_BLOCK_NUMBER,
    SIZE_OF_PAGE_HEADER,
    U16,
    U32,
    maxalign,
    page_add_item,
    page_index_multi_delete,
    page_init,
    page_set_lsn,
    pd_special,
    set_pd_lower,
)

if TYPE_CHECKING:
    from pagestore.pg.xlogrecord import BlockReference, DecodedRecord
    from pagestore.redo.context import RedoContext

XLOG_HASH_INIT_META_PAGE = 0x00
XLOG_HASH_INIT_BITMAP_PAGE = 0x10
XLOG_HASH_INSERT = 0x20
XLOG_HASH_ADD_OVFL_PAGE = 0x30
XLOG_HASH_SPLIT_ALLOCATE_PAGE = 0x40
XLOG_HASH_SPLIT_PAGE = 0x50
XLOG_HASH_SPLIT_COMPLETE = 0x60
XLOG_HASH_MOVE_PAGE_CONTENTS = 0x70
XLOG_HASH_SQUEEZE_PAGE = 0x80
XLOG_HASH_DELETE = 0x90
XLOG_HASH_SPLIT_CLEANUP = 0xA0
XLOG_HASH_UPDATE_META_PAGE = 0xB0
XLOG_HASH_VACUUM_ONE_PAGE = 0xC0

# xl_hash_split_allocate_page.flags
XLH_SPLIT_META_UPDATE_MASKS = 1 << 0
XLH_SPLIT_META_UPDATE_SPLITPOINT = 1 << 1

# hasho_flag: the page type ...
LH_UNUSED_PAGE = 0
LH_OVERFLOW_PAGE = 1 << 0
LH_BUCKET_PAGE = 1 << 1
LH_BITMAP_PAGE = 1 << 2
LH_META_PAGE = 1 << 3
# ... and state bits
LH_BUCKET_BEING_POPULATED = 1 << 4
LH_BUCKET_BEING_SPLIT = 1 << 5
LH_BUCKET_NEEDS_SPLIT_CLEANUP = 1 << 6
LH_PAGE_HAS_DEAD_TUPLES = 1 << 7
LH_PAGE_TYPE = LH_OVERFLOW_PAGE | LH_BUCKET_PAGE | LH_BITMAP_PAGE | LH_META_PAGE

HASHO_PAGE_ID = 0xFF80
INVALID_BUCKET = 0xFFFFFFFF
HASH_MAGIC = 0x6440640
HASH_VERSION = 4
BYTE_TO_BIT = 3

# HashPageOpaqueData: hasho_prevblkno u32, hasho_nextblkno u32, hasho_bucket u32,
# hasho_flag u16, hasho_page_id u16 (offsets below are within the special space)
HASH_PAGE_OPAQUE = struct.Struct("<IIIHH")
HASHO_PREVBLKNO_OFF = 0
HASHO_NEXTBLKNO_OFF = 4
HASHO_BUCKET_OFF = 8
HASHO_FLAG_OFF = 12

# HashMetaPageData, at PageGetContents (MAXALIGN(SizeOfPageHeaderData)):
#   hashm_magic u32, hashm_version u32, hashm_ntuples double, hashm_ffactor u16,
#   hashm_bsize u16, hashm_bmsize u16, hashm_bmshift u16, hashm_maxbucket u32,
#   hashm_highmask u32, hashm_lowmask u32, hashm_ovflpoint u32, hashm_firstfree u32,
#   hashm_nmaps u32, hashm_procid u32 (RegProcedure),
#   hashm_spares u32[HASH_MAX_SPLITPOINTS], hashm_mapp u32[HASH_MAX_BITMAPS]
HASH_META_HEAD = struct.Struct("<IIdHHHHIIIIIII")
HASH_SPLITPOINT_PHASE_BITS = 2
HASH_SPLITPOINT_PHASE_MASK = (1 << HASH_SPLITPOINT_PHASE_BITS) - 1
HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE = 10
HASH_MAX_SPLITPOINT_GROUP = 32
HASH_MAX_SPLITPOINTS = ((HASH_MAX_SPLITPOINT_GROUP - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE)
                        << HASH_SPLITPOINT_PHASE_BITS) + HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE
HASH_MAX_BITMAPS = min(BLCKSZ // 8, 1024)
META_OFF = maxalign(SIZE_OF_PAGE_HEADER)
META_NTUPLES_OFF = META_OFF + 8
META_MAXBUCKET_OFF = META_OFF + 24
META_HIGHMASK_OFF = META_OFF + 28
META_LOWMASK_OFF = META_OFF + 32
META_OVFLPOINT_OFF = META_OFF + 36
META_FIRSTFREE_OFF = META_OFF + 40
META_NMAPS_OFF = META_OFF + 44
META_SPARES_OFF = META_OFF + HASH_META_HEAD.size
META_MAPP_OFF = META_SPARES_OFF + 4 * HASH_MAX_SPLITPOINTS
# sizeof(HashMetaPageData): the arrays' end rounded up to the double's alignment
HASH_META_SIZE = maxalign(HASH_META_HEAD.size + 4 * (HASH_MAX_SPLITPOINTS + HASH_MAX_BITMAPS))
F64 = struct.Struct("<d")

# HashPageGetBitmap: uint32 words at PageGetContents; HashGetMaxBitmapSize bytes at most
BITMAP_OFF = META_OFF
HASH_MAX_BITMAP_SIZE = BLCKSZ - (META_OFF + maxalign(HASH_PAGE_OPAQUE.size))
BITS_PER_MAP = 32

T_INFO_OFF = 6  # IndexTupleData: t_tid (6 bytes), t_info u16

# xl_hash_init_meta_page: num_tuples double, procid u32 (RegProcedure), ffactor u16
XL_INIT_META_PAGE = struct.Struct("<dIH")
# xl_hash_init_bitmap_page: bmsize u16
XL_INIT_BITMAP_PAGE = struct.Struct("<H")
# xl_hash_insert: offnum u16
XL_INSERT = struct.Struct("<H")
# xl_hash_add_ovfl_page: bmsize u16, bmpage_found bool
XL_ADD_OVFL_PAGE = struct.Struct("<H?")
# xl_hash_split_allocate_page: new_bucket u32, old_bucket_flag u16, new_bucket_flag u16,
# flags u8
XL_SPLIT_ALLOCATE_PAGE = struct.Struct("<IHHB")
# xl_hash_split_complete: old_bucket_flag u16, new_bucket_flag u16
XL_SPLIT_COMPLETE = struct.Struct("<HH")
# xl_hash_move_page_contents: ntups u16, is_prim_bucket_same_wrt bool
XL_MOVE_PAGE_CONTENTS = struct.Struct("<H?")
# xl_hash_squeeze_page: prevblkno u32, nextblkno u32, ntups u16,
# is_prim_bucket_same_wrt bool, is_prev_bucket_same_wrt bool
XL_SQUEEZE_PAGE = struct.Struct("<IIH??")
# xl_hash_delete: clear_dead_marking bool, is_primary_bucket_page bool
XL_DELETE = struct.Struct("<??")
# xl_hash_update_meta_page: ntuples double
XL_UPDATE_META_PAGE = struct.Struct("<d")
# xl_hash_vacuum_one_page: latestRemovedXid u32, ntuples int; the offsets follow
XL_VACUUM_ONE_PAGE = struct.Struct("<Ii")


# --------------------------------------------------------------------------- page helpers

def opaque_off(page: bytearray) -> int:
    """HashPageGetOpaque: the special space at pd_special."""
    special = pd_special(page)
    if special + HASH_PAGE_OPAQUE.size > BLCKSZ:
        raise CorruptionError(f"hash page: pd_special {special} leaves no room for its "
                              f"{HASH_PAGE_OPAQUE.size}-byte special area")
    return special


def page_flag(page: bytearray) -> int:
    return int(U16.unpack_from(page, opaque_off(page) + HASHO_FLAG_OFF)[0])


def set_page_flag(page: bytearray, value: int) -> None:
    U16.pack_into(page, opaque_off(page) + HASHO_FLAG_OFF, value)


def _set_opaque_u32(page: bytearray, field_off: int, value: int) -> None:
    U32.pack_into(page, opaque_off(page) + field_off, value)


def hash_pageinit(page: bytearray) -> None:
    """_hash_pageinit: PageInit with room for HashPageOpaqueData."""
    page_init(page, HASH_PAGE_OPAQUE.size)


def hash_initbuf(page: bytearray, max_bucket: int, num_bucket: int, flag: int) -> None:
    """_hash_initbuf(initpage = true): a bucket or overflow page; hasho_prevblkno holds
    max_bucket (the maxbucket the page was made under)."""
    hash_pageinit(page)
    HASH_PAGE_OPAQUE.pack_into(page, opaque_off(page), max_bucket, INVALID_BLOCK_NUMBER,
                               num_bucket, flag, HASHO_PAGE_ID)


def hash_initbitmapbuffer(page: bytearray, bmsize: int) -> None:
    """_hash_initbitmapbuffer(initpage = true): every bit of the bmsize-byte map set."""
    if bmsize > HASH_MAX_BITMAP_SIZE:
        raise ValueError(f"bitmap size {bmsize} exceeds {HASH_MAX_BITMAP_SIZE}")
    hash_pageinit(page)
    HASH_PAGE_OPAQUE.pack_into(page, opaque_off(page), INVALID_BLOCK_NUMBER,
                               INVALID_BLOCK_NUMBER, INVALID_BUCKET, LH_BITMAP_PAGE,
                               HASHO_PAGE_ID)
    page[BITMAP_OFF:BITMAP_OFF + bmsize] = b"\xff" * bmsize
    set_pd_lower(page, BITMAP_OFF + bmsize)


def _ceil_log2_32(num: int) -> int:
    """pg_ceil_log2_32."""
    return 0 if num < 2 else (num - 1).bit_length()


def hash_spareindex(num_bucket: int) -> int:
    """_hash_spareindex: the splitpoint phase that ``num_bucket`` buckets need."""
    group = _ceil_log2_32(num_bucket)
    if group < HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE:
        return group
    phases = HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE
    phases += (group - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE) << HASH_SPLITPOINT_PHASE_BITS
    phases += (((num_bucket - 1) >> (group - (HASH_SPLITPOINT_PHASE_BITS + 1)))
               & HASH_SPLITPOINT_PHASE_MASK)
    return phases


def hash_get_totalbuckets(splitpoint_phase: int) -> int:
    """_hash_get_totalbuckets: buckets allocated up to and including this phase."""
    if splitpoint_phase < HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE:
        return 1 << splitpoint_phase
    group = HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE + (
        (splitpoint_phase - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE) >> HASH_SPLITPOINT_PHASE_BITS)
    total = 1 << (group - 1)
    within = ((splitpoint_phase - HASH_SPLITPOINT_GROUPS_WITH_ONE_PHASE)
              & HASH_SPLITPOINT_PHASE_MASK) + 1
    return total + ((1 << (group - 1)) >> HASH_SPLITPOINT_PHASE_BITS) * within


def hash_init_metabuffer(page: bytearray, num_tuples: float, procid: int, ffactor: int) -> None:
    """_hash_init_metabuffer(initpage = true)."""
    if ffactor == 0 or math.isnan(num_tuples):
        raise ValueError(f"metapage with ffactor {ffactor} and num_tuples {num_tuples}")
    dnumbuckets = num_tuples / ffactor
    if dnumbuckets <= 2.0:
        num_buckets = 2
    elif dnumbuckets >= float(0x40000000):
        num_buckets = 0x40000000
    else:  # the double is passed as a uint32: truncated
        num_buckets = hash_get_totalbuckets(hash_spareindex(int(dnumbuckets)))
    spare_index = hash_spareindex(num_buckets)

    hash_pageinit(page)
    HASH_PAGE_OPAQUE.pack_into(page, opaque_off(page), INVALID_BLOCK_NUMBER,
                               INVALID_BLOCK_NUMBER, INVALID_BUCKET, LH_META_PAGE,
                               HASHO_PAGE_ID)
    bsize = HASH_MAX_BITMAP_SIZE
    lshift = bsize.bit_length() - 1  # pg_leftmost_one_pos32
    highmask = (1 << num_buckets.bit_length()) - 1  # pg_nextpower2_32(num_buckets + 1) - 1
    HASH_META_HEAD.pack_into(
        page, META_OFF, HASH_MAGIC, HASH_VERSION, 0.0, ffactor, bsize, 1 << lshift,
        lshift + BYTE_TO_BIT, num_buckets - 1, highmask, highmask >> 1,
        spare_index, 0, 0, procid)
    # spares and mapp are zero (PageInit zeroed the page) but for one spare page after
    # the initial splitpoints
    U32.pack_into(page, META_SPARES_OFF + 4 * spare_index, 1)
    set_pd_lower(page, META_OFF + HASH_META_SIZE)


def _meta_u32(page: bytearray, off: int) -> int:
    return int(U32.unpack_from(page, off)[0])


def _meta_array_off(rec: DecodedRecord, array_off: int, index: int, length: int,
                    what: str) -> int:
    if not 0 <= index < length:
        raise CorruptWalError(f"hash record at {rec.lsn}: metapage {what} index {index} "
                              f"outside 0..{length - 1}")
    return array_off + 4 * index


def _bitmap_word_off(rec: DecodedRecord, blk: BlockReference) -> tuple[int, int]:
    """The byte offset of the bitmap word holding the bit in the block data, and the
    bit's mask within it."""
    if len(blk.data) != U32.size:
        raise CorruptWalError(f"hash record at {rec.lsn}: bitmap block data is "
                              f"{len(blk.data)} bytes, not {U32.size}")
    (bit,) = U32.unpack_from(blk.data)
    word = bit // BITS_PER_MAP
    if 4 * word + 4 > HASH_MAX_BITMAP_SIZE:
        raise CorruptWalError(f"hash record at {rec.lsn}: bitmap bit {bit} is outside "
                              "the bitmap page")
    return BITMAP_OFF + 4 * word, 1 << (bit % BITS_PER_MAP)


def _block_u32(rec: DecodedRecord, block_id: int) -> int:
    blk = _block(rec, block_id)
    if len(blk.data) != U32.size:
        raise CorruptWalError(f"hash record at {rec.lsn}: block {block_id} data is "
                              f"{len(blk.data)} bytes, not {U32.size}")
    return int(U32.unpack_from(blk.data)[0])


def _block(rec: DecodedRecord, block_id: int) -> BlockReference:
    blk = rec.block(block_id)
    if blk is None:
        raise CorruptWalError(f"hash record at {rec.lsn} has no block reference {block_id}")
    return blk


def _index_tuple_size(data: bytes, pos: int) -> int:
    size = int(U16.unpack_from(data, pos + T_INFO_OFF)[0]) & INDEX_SIZE_MASK
    if size == 0:
        raise ValueError(f"index tuple at {pos} has size 0")
    return size


def _add_tuples(rec: DecodedRecord, page: bytearray, data: bytes, ntups: int,
                what: str) -> None:
    """The tuple loop of hash_xlog_move_page_contents / squeeze_page: ``ntups`` offsets,
    then MAXALIGNed IndexTuples, each added at its offset.  The record is parsed whole
    before the page is touched."""
    pos = 2 * ntups
    if pos > len(data):
        raise CorruptWalError(f"hash {what} at {rec.lsn}: {len(data)} bytes of block data "
                              f"cannot hold {ntups} offsets")
    towrite = struct.unpack_from(f"<{ntups}H", data)
    tuples: list[tuple[int, bytes]] = []
    while pos < len(data):
        itemsz = maxalign(_index_tuple_size(data, pos))
        if pos + itemsz > len(data) or len(tuples) >= ntups:
            raise CorruptWalError(f"hash {what} at {rec.lsn}: the block data holds more "
                                  f"than {ntups} tuples or a truncated tuple")
        tuples.append((towrite[len(tuples)], data[pos:pos + itemsz]))
        pos += itemsz
    if len(tuples) != ntups:
        raise CorruptWalError(f"hash {what} at {rec.lsn}: {len(tuples)} tuples in the "
                              f"record, its header says {ntups}")
    for offnum, itup in tuples:
        if page_add_item(page, itup, offnum) == 0:
            raise CorruptWalError(f"hash {what} at {rec.lsn}: failed to add item to hash "
                                  f"index page, size {len(itup)} bytes")


def _delete_offsets(page: bytearray, data: bytes) -> None:
    """PageIndexMultiDelete of the OffsetNumber array ``data`` (if any)."""
    if len(data) % 2:
        raise ValueError(f"offset array of {len(data)} bytes")
    n = len(data) // 2
    if n > 0:
        page_index_multi_delete(page, list(struct.unpack_from(f"<{n}H", data)))


# --------------------------------------------------------------------------- records

def _init_meta_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id == 0:
        num_tuples, procid, ffactor = XL_INIT_META_PAGE.unpack_from(rec.main_data)
        hash_init_metabuffer(page, num_tuples, procid, ffactor)
        page_set_lsn(page, rec.end_lsn)


def _init_bitmap_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id == 0:
        (bmsize,) = XL_INIT_BITMAP_PAGE.unpack_from(rec.main_data)
        hash_initbitmapbuffer(page, bmsize)
    elif block_id == 1:
        num_buckets = _meta_u32(page, META_MAXBUCKET_OFF) + 1
        nmaps = _meta_u32(page, META_NMAPS_OFF)
        U32.pack_into(page, _meta_array_off(rec, META_MAPP_OFF, nmaps, HASH_MAX_BITMAPS, "mapp"),
                      (num_buckets + 1) & 0xFFFFFFFF)
        U32.pack_into(page, META_NMAPS_OFF, nmaps + 1)
    else:
        return
    page_set_lsn(page, rec.end_lsn)


def _insert(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id == 0:
        (offnum,) = XL_INSERT.unpack_from(rec.main_data)
        data = _block(rec, 0).data
        if page_add_item(page, data, offnum) == 0:
            raise CorruptWalError(f"hash insert at {rec.lsn}: failed to add item")
    elif block_id == 1:
        (ntuples,) = F64.unpack_from(page, META_NTUPLES_OFF)
        F64.pack_into(page, META_NTUPLES_OFF, ntuples + 1)
    else:
        return
    page_set_lsn(page, rec.end_lsn)


def _add_ovfl_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    bmsize, bmpage_found = XL_ADD_OVFL_PAGE.unpack_from(rec.main_data)
    if block_id == 0:
        hash_initbuf(page, INVALID_BLOCK_NUMBER, _block_u32(rec, 0), LH_OVERFLOW_PAGE)
        _set_opaque_u32(page, HASHO_PREVBLKNO_OFF, _block(rec, 1).blkno)
    elif block_id == 1:
        _set_opaque_u32(page, HASHO_NEXTBLKNO_OFF, _block(rec, 0).blkno)
    elif block_id == 2:
        word_off, mask = _bitmap_word_off(rec, _block(rec, 2))
        U32.pack_into(page, word_off, _meta_u32(page, word_off) | mask)
    elif block_id == 3:
        hash_initbitmapbuffer(page, bmsize)
    elif block_id == 4:
        U32.pack_into(page, META_FIRSTFREE_OFF, _block_u32(rec, 4))
        if not bmpage_found:
            ovflpoint = _meta_u32(page, META_OVFLPOINT_OFF)
            spare_off = _meta_array_off(rec, META_SPARES_OFF, ovflpoint,
                                        HASH_MAX_SPLITPOINTS, "spares")
            spares = _meta_u32(page, spare_off) + 1
            newmap = rec.block(3)
            if newmap is not None:
                nmaps = _meta_u32(page, META_NMAPS_OFF)
                U32.pack_into(page, _meta_array_off(rec, META_MAPP_OFF, nmaps,
                                                    HASH_MAX_BITMAPS, "mapp"), newmap.blkno)
                U32.pack_into(page, META_NMAPS_OFF, nmaps + 1)
                spares += 1
            U32.pack_into(page, spare_off, spares & 0xFFFFFFFF)
    else:
        return
    page_set_lsn(page, rec.end_lsn)


def _split_allocate_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    new_bucket, old_flag, new_flag, flags = XL_SPLIT_ALLOCATE_PAGE.unpack_from(rec.main_data)
    if block_id == 0:
        set_page_flag(page, old_flag)
        _set_opaque_u32(page, HASHO_PREVBLKNO_OFF, new_bucket)
    elif block_id == 1:
        hash_initbuf(page, new_bucket, new_bucket, new_flag)
    elif block_id == 2:
        data = _block(rec, 2).data
        pos = 0
        updates: list[tuple[int, int]] = [(META_MAXBUCKET_OFF, new_bucket)]
        if flags & XLH_SPLIT_META_UPDATE_MASKS:
            lowmask, highmask = struct.unpack_from("<II", data, pos)
            updates += [(META_LOWMASK_OFF, lowmask), (META_HIGHMASK_OFF, highmask)]
            pos += 8
        if flags & XLH_SPLIT_META_UPDATE_SPLITPOINT:
            ovflpoint, ovflpages = struct.unpack_from("<II", data, pos)
            spare_off = _meta_array_off(rec, META_SPARES_OFF, ovflpoint,
                                        HASH_MAX_SPLITPOINTS, "spares")
            updates += [(spare_off, ovflpages), (META_OVFLPOINT_OFF, ovflpoint)]
        for off, value in updates:
            U32.pack_into(page, off, value)
    else:
        return
    page_set_lsn(page, rec.end_lsn)


def _split_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    raise CorruptWalError(f"hash split record at {rec.lsn} did not contain a full-page image")


def _split_complete(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    old_flag, new_flag = XL_SPLIT_COMPLETE.unpack_from(rec.main_data)
    if block_id == 0:
        set_page_flag(page, old_flag)
    elif block_id == 1:
        set_page_flag(page, new_flag)
    else:
        return
    page_set_lsn(page, rec.end_lsn)


def _move_page_contents(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    ntups, _same_wrt = XL_MOVE_PAGE_CONTENTS.unpack_from(rec.main_data)
    if block_id == 1:
        if ntups > 0:
            _add_tuples(rec, page, _block(rec, 1).data, ntups, "move page contents")
    elif block_id == 2:
        _delete_offsets(page, _block(rec, 2).data)
    else:
        return  # block 0: the primary bucket page, registered for its cleanup lock
    page_set_lsn(page, rec.end_lsn)


def _squeeze_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    prevblkno, nextblkno, ntups, _prim_same, prev_same = XL_SQUEEZE_PAGE.unpack_from(
        rec.main_data)
    if block_id == 1:
        if ntups > 0:
            _add_tuples(rec, page, _block(rec, 1).data, ntups, "squeeze page")
        if prev_same:
            _set_opaque_u32(page, HASHO_NEXTBLKNO_OFF, nextblkno)
    elif block_id == 2:
        hash_pageinit(page)
        HASH_PAGE_OPAQUE.pack_into(page, opaque_off(page), INVALID_BLOCK_NUMBER,
                                   INVALID_BLOCK_NUMBER, INVALID_BUCKET, LH_UNUSED_PAGE,
                                   HASHO_PAGE_ID)
    elif block_id == 3 and not prev_same:
        _set_opaque_u32(page, HASHO_NEXTBLKNO_OFF, nextblkno)
    elif block_id == 4:
        _set_opaque_u32(page, HASHO_PREVBLKNO_OFF, prevblkno)
    elif block_id == 5:
        word_off, mask = _bitmap_word_off(rec, _block(rec, 5))
        U32.pack_into(page, word_off, _meta_u32(page, word_off) & ~mask & 0xFFFFFFFF)
    elif block_id == 6:
        U32.pack_into(page, META_FIRSTFREE_OFF, _block_u32(rec, 6))
    else:
        return  # block 0: the primary bucket page, registered for its cleanup lock
    page_set_lsn(page, rec.end_lsn)


def _delete(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    clear_dead_marking, _is_primary = XL_DELETE.unpack_from(rec.main_data)
    if block_id != 1:
        return  # block 0: the primary bucket page, registered for its cleanup lock
    _delete_offsets(page, _block(rec, 1).data)
    if clear_dead_marking:
        set_page_flag(page, page_flag(page) & ~LH_PAGE_HAS_DEAD_TUPLES)
    page_set_lsn(page, rec.end_lsn)


def _split_cleanup(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id != 0:
        return
    set_page_flag(page, page_flag(page) & ~LH_BUCKET_NEEDS_SPLIT_CLEANUP)
    page_set_lsn(page, rec.end_lsn)


def _update_meta_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    if block_id != 0:
        return
    (ntuples,) = XL_UPDATE_META_PAGE.unpack_from(rec.main_data)
    F64.pack_into(page, META_NTUPLES_OFF, ntuples)
    page_set_lsn(page, rec.end_lsn)


def _vacuum_one_page(rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    _latest_removed_xid, ntuples = XL_VACUUM_ONE_PAGE.unpack_from(rec.main_data)
    if block_id == 0:
        if len(rec.main_data) > XL_VACUUM_ONE_PAGE.size:
            end = XL_VACUUM_ONE_PAGE.size + 2 * ntuples
            if ntuples < 0 or end > len(rec.main_data):
                raise CorruptWalError(f"hash vacuum one page at {rec.lsn}: {ntuples} offsets "
                                      f"in {len(rec.main_data)} bytes of main data")
            _delete_offsets(page, rec.main_data[XL_VACUUM_ONE_PAGE.size:end])
        set_page_flag(page, page_flag(page) & ~LH_PAGE_HAS_DEAD_TUPLES)
    elif block_id == 1:
        (meta_ntuples,) = F64.unpack_from(page, META_NTUPLES_OFF)
        F64.pack_into(page, META_NTUPLES_OFF, meta_ntuples - ntuples)
    else:
        return
    page_set_lsn(page, rec.end_lsn)


_Handler = Callable[["DecodedRecord", int, bytearray], None]

_HANDLERS: dict[int, _Handler] = {
    XLOG_HASH_INIT_META_PAGE: _init_meta_page,
    XLOG_HASH_INIT_BITMAP_PAGE: _init_bitmap_page,
    XLOG_HASH_INSERT: _insert,
    XLOG_HASH_ADD_OVFL_PAGE: _add_ovfl_page,
    XLOG_HASH_SPLIT_ALLOCATE_PAGE: _split_allocate_page,
    XLOG_HASH_SPLIT_PAGE: _split_page,
    XLOG_HASH_SPLIT_COMPLETE: _split_complete,
    XLOG_HASH_MOVE_PAGE_CONTENTS: _move_page_contents,
    XLOG_HASH_SQUEEZE_PAGE: _squeeze_page,
    XLOG_HASH_DELETE: _delete,
    XLOG_HASH_SPLIT_CLEANUP: _split_cleanup,
    XLOG_HASH_UPDATE_META_PAGE: _update_meta_page,
    XLOG_HASH_VACUUM_ONE_PAGE: _vacuum_one_page,
}

#: Blocks hash_redo changes even after restoring their full-page image: those it
#: (re)initialises (XLogInitBufferForRedo, RBM_ZERO_AND_CLEANUP_LOCK) and the bucket
#: pages whose flags SPLIT_ALLOCATE_PAGE and SPLIT_COMPLETE set on BLK_RESTORED too.
_REDONE_AFTER_IMAGE = frozenset({
    (XLOG_HASH_INIT_META_PAGE, 0),
    (XLOG_HASH_INIT_BITMAP_PAGE, 0),
    (XLOG_HASH_ADD_OVFL_PAGE, 0),
    (XLOG_HASH_ADD_OVFL_PAGE, 3),
    (XLOG_HASH_SPLIT_ALLOCATE_PAGE, 0),
    (XLOG_HASH_SPLIT_ALLOCATE_PAGE, 1),
    (XLOG_HASH_SPLIT_COMPLETE, 0),
    (XLOG_HASH_SPLIT_COMPLETE, 1),
})


def after_image(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    """A block restored from its image (BLK_RESTORED) that redo still changes."""
    if (rec.rmgr_info, block_id) in _REDONE_AFTER_IMAGE:
        try:
            redo_block(ctx, rec, block_id, page)
        except (struct.error, IndexError, ValueError) as e:
            raise CorruptWalError(f"malformed hash WAL record at {rec.lsn} (info "
                                  f"{rec.info:#04x}) for block {block_id}: {e}") from e


def redo_block(ctx: RedoContext, rec: DecodedRecord, block_id: int, page: bytearray) -> None:
    handler = _HANDLERS.get(rec.rmgr_info)
    if handler is None:
        raise UnsupportedWalRecord(f"no redo for WAL record at {rec.lsn}: resource manager "
                                   f"Hash, info {rec.info:#04x} (unknown hash op code)")
    handler(rec, block_id, page)
