"""HASH redo on hand-built pages and records: the page initialisers (metapage, bitmap,
bucket pages), the splitpoint arithmetic of hashutil.c, a few records' effect on the
block they name, and the errors for unknown or malformed records.  The byte-for-byte
comparison with PostgreSQL's after-images is the record-level oracle run on
tests/workloads/hash.sql (pagestore redo-check)."""

from __future__ import annotations

import struct

import pytest

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.pg.rmgr import RmgrId
from pagestore.redo import hash as h
from pagestore.redo.apply import redo_block
from pagestore.redo.bufpage import (
    BLCKSZ,
    get_item,
    page_add_item,
    page_get_lsn,
    page_get_max_offset_number,
    page_set_lsn,
    pd_lower,
    pd_special,
    pd_upper,
)
from tests.unit.redo_records import CTX, END, block, record_of

record = record_of(RmgrId.HASH)


def itup(key: int, heap_off: int) -> bytes:
    """A 16-byte hash index tuple: t_tid, t_info = 16, the uint32 hash key, padding."""
    return struct.pack("<HHHHI4x", 0, 1, heap_off, 16, key)


def bucket_page(ntuples: int, flag: int = h.LH_BUCKET_PAGE) -> bytearray:
    page = bytearray(BLCKSZ)
    h.hash_initbuf(page, 3, 1, flag)
    for i in range(1, ntuples + 1):
        assert page_add_item(page, itup(0xABCD, i), 0) == i
    page_set_lsn(page, END - 0x1000)
    return page


def test_metapage_layout() -> None:
    page = bytearray(BLCKSZ)
    h.hash_init_metabuffer(page, 2000.0, 450, 307)  # 6.5 buckets' worth -> 8 buckets
    (magic, version, ntuples, ffactor, bsize, bmsize, bmshift, maxbucket, highmask, lowmask,
     ovflpoint, firstfree, nmaps, procid) = h.HASH_META_HEAD.unpack_from(page, 24)
    assert (magic, version, ntuples, ffactor, procid) == (0x6440640, 4, 0.0, 307, 450)
    assert (bsize, bmsize, bmshift) == (8152, 4096, 15)
    assert (maxbucket, highmask, lowmask, ovflpoint, firstfree, nmaps) == (7, 15, 7, 3, 0, 0)
    spares = struct.unpack_from(f"<{h.HASH_MAX_SPLITPOINTS}I", page, h.META_SPARES_OFF)
    assert spares[3] == 1 and sum(spares) == 1
    assert pd_lower(page) == 24 + 4544 and pd_upper(page) == pd_special(page) == BLCKSZ - 16
    assert h.HASH_PAGE_OPAQUE.unpack_from(page, BLCKSZ - 16) == (
        0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, h.LH_META_PAGE, 0xFF80)


def test_splitpoint_arithmetic() -> None:
    assert [h.hash_spareindex(n) for n in (1, 2, 3, 512, 513, 640, 641, 1024)] == \
        [0, 1, 2, 9, 10, 10, 11, 13]
    for n in range(2, 70000, 7):
        phase = h.hash_spareindex(n)
        assert h.hash_get_totalbuckets(phase) >= n > h.hash_get_totalbuckets(phase - 1)


def test_bitmap_page_and_bits() -> None:
    page = bytearray(BLCKSZ)
    h.hash_initbitmapbuffer(page, 4096)
    assert pd_lower(page) == 24 + 4096 and page[24:24 + 4096] == b"\xff" * 4096
    assert page[24 + 4096:BLCKSZ - 16] == bytes(BLCKSZ - 16 - 24 - 4096)
    page_set_lsn(page, END - 0x1000)
    # SQUEEZE_PAGE block 5 clears bit 37 (word 1, bit 5); block 0..4 are not needed here
    main = h.XL_SQUEEZE_PAGE.pack(7, 0xFFFFFFFF, 0, True, True)
    rec = record(h.XLOG_HASH_SQUEEZE_PAGE, main, block(5, 9, struct.pack("<I", 37)))
    out = redo_block(CTX, rec, 5, page)
    assert out is not None
    assert struct.unpack_from("<I", out, 28)[0] == 0xFFFFFFFF & ~(1 << 5)
    assert page_get_lsn(out) == END


def test_vacuum_one_page_deletes_and_clears_dead_flag() -> None:
    page = bucket_page(4, h.LH_BUCKET_PAGE | h.LH_PAGE_HAS_DEAD_TUPLES)
    main = h.XL_VACUUM_ONE_PAGE.pack(123, 2) + struct.pack("<HH", 2, 3)
    rec = record(h.XLOG_HASH_VACUUM_ONE_PAGE, main, block(0, 1), block(1, 0))
    out = redo_block(CTX, rec, 0, page)
    assert out is not None
    assert page_get_max_offset_number(out) == 2
    off, length = get_item(out, 2)
    assert out[off:off + length] == itup(0xABCD, 4)
    assert h.page_flag(out) == h.LH_BUCKET_PAGE
    assert page_get_lsn(out) == END


def test_primary_bucket_block_is_left_alone() -> None:
    page = bucket_page(3)
    before = bytes(page)
    main = h.XL_DELETE.pack(True, False)
    rec = record(h.XLOG_HASH_DELETE, main, block(0, 1), block(1, 9, struct.pack("<H", 1)))
    out = redo_block(CTX, rec, 0, page)
    assert out is not None and bytes(out) == before  # not even the LSN


def test_squeeze_frees_the_overflow_page() -> None:
    page = bucket_page(5, h.LH_OVERFLOW_PAGE)
    main = h.XL_SQUEEZE_PAGE.pack(7, 0xFFFFFFFF, 0, True, True)
    rec = record(h.XLOG_HASH_SQUEEZE_PAGE, main, block(1, 7), block(2, 9), block(5, 3))
    out = redo_block(CTX, rec, 2, page)
    assert out is not None
    assert page_get_max_offset_number(out) == 0
    assert h.HASH_PAGE_OPAQUE.unpack_from(out, BLCKSZ - 16) == (
        0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, h.LH_UNUSED_PAGE, 0xFF80)


def test_move_page_contents_adds_at_offsets() -> None:
    page = bucket_page(2)
    data = struct.pack("<HH", 1, 4) + itup(0x11, 7) + itup(0x22, 8)
    main = h.XL_MOVE_PAGE_CONTENTS.pack(2, True)
    rec = record(h.XLOG_HASH_MOVE_PAGE_CONTENTS, main, block(1, 1, data), block(2, 9))
    out = redo_block(CTX, rec, 1, page)
    assert out is not None and page_get_max_offset_number(out) == 4
    off, length = get_item(out, 1)
    assert out[off:off + length] == itup(0x11, 7)
    off, length = get_item(out, 4)
    assert out[off:off + length] == itup(0x22, 8)
    # one tuple more than the header says: an error, and the page is not touched
    bad = record(h.XLOG_HASH_MOVE_PAGE_CONTENTS, h.XL_MOVE_PAGE_CONTENTS.pack(1, True),
                 block(1, 1, data), block(2, 9))
    page = bucket_page(2)
    before = bytes(page)
    with pytest.raises(CorruptWalError):
        redo_block(CTX, bad, 1, page)
    assert bytes(page) == before


def test_unknown_info_and_split_page_without_image() -> None:
    page = bucket_page(1)
    with pytest.raises(UnsupportedWalRecord, match="Hash, info 0xd0"):
        redo_block(CTX, record(0xD0, b"", block(0, 1)), 0, page)
    with pytest.raises(CorruptWalError, match="full-page image"):
        redo_block(CTX, record(h.XLOG_HASH_SPLIT_PAGE, b"", block(0, 1)), 0, page)
    with pytest.raises(CorruptWalError):  # main data too short for xl_hash_insert
        redo_block(CTX, record(h.XLOG_HASH_INSERT, b"", block(0, 1, itup(1, 1))), 0, page)


def test_split_complete_sets_flag_after_a_restored_image() -> None:
    page = bucket_page(1, h.LH_BUCKET_PAGE | h.LH_BUCKET_BEING_SPLIT)
    main = h.XL_SPLIT_COMPLETE.pack(h.LH_BUCKET_PAGE | h.LH_BUCKET_NEEDS_SPLIT_CLEANUP,
                                    h.LH_BUCKET_PAGE)
    rec = record(h.XLOG_HASH_SPLIT_COMPLETE, main, block(0, 1), block(1, 5))
    h.after_image(CTX, rec, 0, page)
    assert h.page_flag(page) == h.LH_BUCKET_PAGE | h.LH_BUCKET_NEEDS_SPLIT_CLEANUP
    assert page_get_lsn(page) == END
    # an INSERT's block is not touched after its image
    other = bucket_page(1)
    before = bytes(other)
    h.after_image(CTX, record(h.XLOG_HASH_INSERT, b"\x01\x00", block(0, 1)), 0, other)
    assert bytes(other) == before
