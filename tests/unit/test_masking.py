"""wal_consistency_checking masks on pages built here byte by byte: each mask hides what
PostgreSQL 15's hides (bufmask.c and the rm_mask functions) and nothing else."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagestore.errors import CorruptionError, UnsupportedWalRecord
from pagestore.pg.rmgr import RmgrId
from pagestore.redo import brin, bufpage
from pagestore.redo import masking as m

BLCKSZ = 8192
# PageHeaderData: lsn hi u32, lsn lo u32, checksum u16, flags u16, lower u16, upper u16,
# special u16, pagesize_version u16, prune_xid u32
HDR = struct.Struct("<IIHHHHHHI")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
# HeapTupleHeaderData up to t_hoff: xmin, xmax, cid, ctid (bi_hi, bi_lo, posid), infomask2,
# infomask, hoff
TUPLE = struct.Struct("<IIIHHHHHB")
# BTPageOpaqueData: prev, next, level, flags, cycleid
BTOPAQUE = struct.Struct("<IIIHH")


# --------------------------------------------------------------------------- page builders

def page_init(special_size: int = 0, *, lsn: int = 0x1_2345_6789, checksum: int = 0xBEEF,
              flags: int = 0, prune_xid: int = 0) -> bytearray:
    """PageInit, then a header with non-zero LSN and checksum, as on a primary."""
    page = bytearray(BLCKSZ)
    special = BLCKSZ - bufpage.maxalign(special_size)
    HDR.pack_into(page, 0, lsn >> 32, lsn & 0xFFFFFFFF, checksum, flags, 24, special, special,
                  8192 | 4, prune_xid)
    return page


def header(page: bytes | bytearray) -> tuple[int, ...]:
    return HDR.unpack_from(page)


def lp(page: bytes | bytearray, offnum: int) -> tuple[int, int, int]:
    word = U32.unpack_from(page, 24 + 4 * (offnum - 1))[0]
    return word & 0x7FFF, (word >> 15) & 3, word >> 17


def set_lp(page: bytearray, offnum: int, off: int, flags: int, length: int) -> None:
    U32.pack_into(page, 24 + 4 * (offnum - 1), off | flags << 15 | length << 17)


def add_item(page: bytearray, item: bytes, flags: int = bufpage.LP_NORMAL,
             stale: int = 0xAA) -> int:
    """PageAddItem at the end of the line pointer array; the MAXALIGN padding keeps
    ``stale`` bytes, as reused space does on a real page."""
    _a, _b, _c, _d, lower, upper, _s, _v, _p = header(page)
    upper -= bufpage.maxalign(len(item))
    page[upper:upper + bufpage.maxalign(len(item))] = bytes([stale]) * bufpage.maxalign(len(item))
    page[upper:upper + len(item)] = item
    offnum = (lower - 24) // 4 + 1
    set_lp(page, offnum, upper, flags, len(item))
    U16.pack_into(page, 12, lower + 4)
    U16.pack_into(page, 14, upper)
    return offnum


def heap_tuple(data: bytes, *, xmin: int = 1000, xmax: int = 0, cid: int = 3,
               ctid: tuple[int, int] = (0, 1), infomask2: int = 2, infomask: int = 0x0002,
               spec_token: int | None = None) -> bytes:
    if spec_token is not None:
        bi_hi, bi_lo, posid = spec_token >> 16, spec_token & 0xFFFF, m.SPEC_TOKEN_OFFSET_NUMBER
    else:
        bi_hi, bi_lo, posid = ctid[0] >> 16, ctid[0] & 0xFFFF, ctid[1]
    hdr = TUPLE.pack(xmin, xmax, cid, bi_hi, bi_lo, posid, infomask2, infomask, 24)
    return hdr + b"\x00" + data  # t_bits/alignment byte, then the data at t_hoff = 24


def heap_page(*tuples: bytes) -> bytearray:
    page = page_init(flags=m.PD_ALL_VISIBLE | m.PD_PAGE_FULL, prune_xid=777)
    page[24:BLCKSZ] = b"\x55" * (BLCKSZ - 24)  # stale bytes everywhere, as in reused space
    for t in tuples:
        add_item(page, t)
    return page


def btree_page(flags: int, *, cycleid: int = 0, items: int = 3) -> bytearray:
    page = page_init(BTOPAQUE.size)
    special = header(page)[6]
    BTOPAQUE.pack_into(page, special, 7, 9, 0 if flags & m.BTP_LEAF else 1, flags, cycleid)
    for i in range(items):  # IndexTupleData: t_tid (6 bytes), t_info u16 = size; int4 key
        add_item(page, struct.pack("<HHHHi4x", 0, 1, i + 1, 16, i * 10))
    return page


def masked(fn: m.MaskFunction, page: bytes | bytearray, blkno: int = 0) -> bytearray:
    copy = bytearray(page)
    fn(copy, blkno)
    return copy


def changed_offsets(a: bytes | bytearray, b: bytes | bytearray) -> set[int]:
    return {i for i in range(len(a)) if a[i] != b[i]}


# --------------------------------------------------------------------------- bufmask.c

def test_mask_page_lsn_and_checksum_zeroes_exactly_bytes_0_to_10() -> None:
    page = page_init(flags=0x7, prune_xid=5)
    page[24:] = b"\x11" * (BLCKSZ - 24)
    out = bytearray(page)
    m.mask_page_lsn_and_checksum(out)
    assert out[:10] == bytes(10)
    assert changed_offsets(page, out) <= set(range(10))
    assert changed_offsets(page, out)  # the LSN and checksum were non-zero


def test_mask_page_hint_bits() -> None:
    page = page_init(flags=0x7 | 0x8, prune_xid=0xDEADBEEF)  # 0x8 is no valid flag: kept
    out = bytearray(page)
    m.mask_page_hint_bits(out)
    assert header(out)[3] == 0x8
    assert header(out)[8] == 0
    assert changed_offsets(page, out) <= {10, 11, 20, 21, 22, 23}


def test_mask_unused_space_zeroes_the_hole_only() -> None:
    page = heap_page(heap_tuple(b"abc"))
    lower, upper = header(page)[4:6]
    out = bytearray(page)
    m.mask_unused_space(out)
    assert out[lower:upper] == bytes(upper - lower)
    assert out[:lower] == page[:lower] and out[upper:] == page[upper:]


@pytest.mark.parametrize(("lower", "upper", "special"), [
    (100, 90, 8192),   # pd_lower > pd_upper
    (24, 8192, 8000),  # pd_special < pd_upper
    (20, 100, 8192),   # pd_lower < SizeOfPageHeaderData
    (24, 8192, 8200),  # pd_special > BLCKSZ
    (0, 0, 0),         # an all-zero (new) page
])
def test_mask_unused_space_refuses_what_postgres_refuses(lower: int, upper: int,
                                                         special: int) -> None:
    page = page_init()
    U16.pack_into(page, 12, lower)
    U16.pack_into(page, 14, upper)
    U16.pack_into(page, 16, special)
    with pytest.raises(CorruptionError,
                       match=f"invalid page pd_lower {lower} pd_upper {upper} pd_special {special}"):
        m.mask_unused_space(page)


def test_mask_lp_flags_clears_flags_of_used_pointers_keeping_off_and_len() -> None:
    page = heap_page(heap_tuple(b"a"), heap_tuple(b"bb"), heap_tuple(b"ccc"))
    set_lp(page, 2, 0, bufpage.LP_UNUSED, 0)
    set_lp(page, 3, lp(page, 3)[0], bufpage.LP_DEAD, lp(page, 3)[2])
    U16.pack_into(page, 12, header(page)[4] + 4)
    set_lp(page, 4, 2, bufpage.LP_REDIRECT, 0)
    before = [lp(page, i) for i in range(1, 5)]
    out = bytearray(page)
    m.mask_lp_flags(out)
    assert [lp(out, i) for i in range(1, 5)] == [(off, 0, ln) for off, _f, ln in before]
    assert changed_offsets(page, out) <= set(range(24, 24 + 16))


def test_mask_page_content() -> None:
    page = btree_page(m.BTP_LEAF)
    out = bytearray(page)
    m.mask_page_content(out)
    assert out[24:] == bytes(BLCKSZ - 24)
    assert header(out)[4:6] == (0, 0)
    assert out[:12] == page[:12] and out[16:24] == page[16:24]  # pd_special etc. kept


# --------------------------------------------------------------------------- heap_mask

def test_heap_mask_hides_hint_bits_cid_padding_and_header_hints() -> None:
    t1 = heap_tuple(b"hello", xmin=1000, xmax=0, cid=5, infomask=0x0002 | m.HEAP_XMAX_INVALID)
    page = heap_page(t1)
    other = bytearray(page)
    off = lp(page, 1)[0]
    U16.pack_into(other, off + 20, 0x0002 | m.HEAP_XMIN_COMMITTED)  # hints differ
    U32.pack_into(other, off + 8, 0)                                # t_cid differs
    other[off + 29:off + 32] = b"\x00\x01\x02"                      # padding differs
    HDR.pack_into(other, 0, 9, 9, 1, 0, *header(page)[4:8], 0)     # lsn, checksum, hints
    assert m.first_difference(page, other) is not None
    assert masked(m.heap_mask, page) == masked(m.heap_mask, other)
    # and strictness sees every one of them
    assert m.mask_vm_page_strict(page) != m.mask_vm_page_strict(other)


def test_heap_mask_unfrozen_tuple_loses_all_xact_bits_not_just_hints() -> None:
    infomask = 0xFFF0 & ~m.HEAP_XMIN_INVALID | 0x000F  # everything but XMIN_INVALID
    page = heap_page(heap_tuple(b"x", infomask=infomask, infomask2=0x4002))
    out = masked(m.heap_mask, page)
    off = lp(page, 1)[0]
    assert U16.unpack_from(out, off + 20)[0] == 0x000F
    assert U16.unpack_from(out, off + 18)[0] == 0x4002  # t_infomask2 is not masked


def test_heap_mask_frozen_tuple_keeps_xact_bits_except_xmax_hints() -> None:
    infomask = m.HEAP_XMIN_FROZEN | m.HEAP_XMAX_INVALID | m.HEAP_XMAX_COMMITTED | 0x2000 | 0x0002
    page = heap_page(heap_tuple(b"x", infomask=infomask))
    out = masked(m.heap_mask, page)
    off = lp(page, 1)[0]
    assert U16.unpack_from(out, off + 20)[0] == m.HEAP_XMIN_FROZEN | 0x2000 | 0x0002
    # Unfreezing a tuple (clearing XMIN_INVALID) is therefore visible: HEAP_UPDATED goes.
    unfrozen = bytearray(page)
    U16.pack_into(unfrozen, off + 20, infomask & ~m.HEAP_XMIN_INVALID)
    assert masked(m.heap_mask, unfrozen) != out


def test_heap_mask_does_not_hide_data_xmin_xmax_or_ctid() -> None:
    page = heap_page(heap_tuple(b"hello world", xmax=0, ctid=(0, 1)))
    off = lp(page, 1)[0]
    base = masked(m.heap_mask, page)
    for pos, value in [(off + 24 + 3, ord("X")),  # tuple data
                       (off + 0, 0x42),           # t_xmin
                       (off + 4, 0x42),           # t_xmax
                       (off + 16, 0x02),          # t_ctid.ip_posid
                       (off + 18, 0x03),          # t_infomask2
                       (off + 22, 0x20)]:         # t_hoff
        other = bytearray(page)
        other[pos] = value
        assert m.first_difference(base, masked(m.heap_mask, other)) == pos


def test_heap_mask_speculative_ctid_becomes_blkno_and_offnum() -> None:
    page = heap_page(heap_tuple(b"a"), heap_tuple(b"spec", spec_token=0x00AB_CDEF))
    out = masked(m.heap_mask, page, blkno=0x0012_3456)
    off = lp(page, 2)[0]
    assert struct.unpack_from("<HHH", out, off + 12) == (0x0012, 0x3456, 2)
    # not speculative: ctid kept
    off1 = lp(page, 1)[0]
    assert out[off1 + 12:off1 + 18] == page[off1 + 12:off1 + 18]
    # two pages with different tokens mask alike
    other = heap_page(heap_tuple(b"a"), heap_tuple(b"spec", spec_token=7))
    assert masked(m.heap_mask, other, 0x0012_3456) == out


def test_heap_mask_padding_of_items_with_storage_of_any_flag() -> None:
    page = heap_page(heap_tuple(b"a"), heap_tuple(b"bb"))  # 25 and 26 bytes: padded to 32
    off2, _f, len2 = lp(page, 2)
    set_lp(page, 2, off2, bufpage.LP_DEAD, len2)  # dead with storage: padding still masked
    out = masked(m.heap_mask, page)
    for offnum in (1, 2):
        off, _f, ln = lp(page, offnum)
        assert page[off + ln:off + 32] != bytes(32 - ln)
        assert out[off + ln:off + 32] == bytes(32 - ln)
    # the LP_DEAD item's header is not touched (only LP_NORMAL tuples are)
    assert out[off2:off2 + len2] == page[off2:off2 + len2]


def test_heap_mask_leaves_line_pointer_flags() -> None:
    page = heap_page(heap_tuple(b"a"), heap_tuple(b"b"))
    other = bytearray(page)
    set_lp(other, 2, lp(page, 2)[0], bufpage.LP_DEAD, lp(page, 2)[2])
    assert masked(m.heap_mask, page) != masked(m.heap_mask, other)


def test_heap_mask_refuses_tuples_past_the_page() -> None:
    page = heap_page(heap_tuple(b"a"))
    set_lp(page, 1, 8180, bufpage.LP_NORMAL, 30)
    with pytest.raises(CorruptionError, match="runs past the page"):
        m.heap_mask(page, 0)
    assert len(page) == BLCKSZ


# --------------------------------------------------------------------------- btree_mask

def test_btree_mask_leaf_hides_flags_garbage_split_end_cycleid() -> None:
    page = btree_page(m.BTP_LEAF, cycleid=0)
    special = header(page)[6]
    other = bytearray(page)
    BTOPAQUE.pack_into(other, special, 7, 9, 0,
                       m.BTP_LEAF | m.BTP_HAS_GARBAGE | m.BTP_SPLIT_END, 0x1234)
    set_lp(other, 2, lp(page, 2)[0], bufpage.LP_DEAD, lp(page, 2)[2])
    out = masked(m.btree_mask, other)
    assert out == masked(m.btree_mask, page)
    assert BTOPAQUE.unpack_from(out, special)[3:] == (m.BTP_LEAF, 0)
    assert lp(out, 2)[1] == 0 and lp(out, 1)[1] == 0


def test_btree_mask_internal_page_keeps_lp_flags_and_other_flags() -> None:
    page = btree_page(1 << 1)  # BTP_ROOT, not BTP_LEAF
    other = bytearray(page)
    set_lp(other, 2, lp(page, 2)[0], bufpage.LP_DEAD, lp(page, 2)[2])
    # item 2's ItemIdData is bytes 28..31; LP_NORMAL -> LP_DEAD sets bit 16, in byte 30
    assert m.first_difference(masked(m.btree_mask, page), masked(m.btree_mask, other)) == 30
    incomplete = bytearray(page)
    special = header(page)[6]
    U16.pack_into(incomplete, special + 12, (1 << 1) | (1 << 7))  # BTP_INCOMPLETE_SPLIT
    assert masked(m.btree_mask, incomplete) != masked(m.btree_mask, page)


def test_btree_mask_item_data_is_compared() -> None:
    page = btree_page(m.BTP_LEAF)
    other = bytearray(page)
    off = lp(page, 3)[0]
    other[off + 8] ^= 1
    assert m.first_difference(masked(m.btree_mask, page), masked(m.btree_mask, other)) == off + 8


def deleted_btree_page(safexid: int, *, leaf: bool) -> bytearray:
    """_bt_unlink_halfdead_page on the primary: BTPageSetDeleted on the old page, whose
    stale tuples and line pointers stay beyond pd_lower = 32."""
    page = btree_page(m.BTP_LEAF if leaf else 0, items=5)
    special = header(page)[6]
    U16.pack_into(page, 12, 32)
    U16.pack_into(page, 14, special)
    struct.pack_into("<Q", page, 24, safexid)
    flags = m.BTP_DELETED | (1 << 8) | (m.BTP_LEAF if leaf else 0)  # | BTP_HAS_FULLXID
    BTOPAQUE.pack_into(page, special, 7, 9, 0, flags, 0)
    return page


@pytest.mark.parametrize("leaf", [True, False])
def test_btree_mask_deleted_page(leaf: bool) -> None:
    safexid = (3 << 32) | 0x0001_8123  # xid 0x18123: bits 15 and 16 set
    page = deleted_btree_page(safexid, leaf=leaf)
    out = masked(m.btree_mask, page)
    special = header(page)[6]
    # PG15: no mask_page_content for deleted pages; the stale content sits in the hole
    assert out[32:special] == bytes(special - 32)
    assert header(out)[4:7] == (32, special, special)
    xid_lo, epoch = struct.unpack_from("<II", out, 24)
    if leaf:  # mask_lp_flags reads the safexid as two "line pointers"
        assert (xid_lo, epoch) == (0x0001_8123 & ~0x18000, 3)
    else:
        assert (xid_lo, epoch) == (0x0001_8123, 3)
    other = deleted_btree_page(safexid + 1, leaf=leaf)
    assert m.first_difference(out, masked(m.btree_mask, other)) == 24


# --------------------------------------------------------------------------- seq, generic

def seq_page() -> bytearray:
    page = page_init(8, prune_xid=0)
    U32.pack_into(page, BLCKSZ - 8, 0x1717)  # sequence_magic
    # FormData_pg_sequence_data: last_value i64, log_cnt i64, is_called bool
    add_item(page, heap_tuple(struct.pack("<qqB", 1, 32, 1), xmin=2,
                              infomask=m.HEAP_XMIN_FROZEN | m.HEAP_XMAX_INVALID), stale=0)
    return page


@pytest.mark.parametrize("fn", [m.seq_mask, m.generic_mask])
def test_seq_and_generic_mask_hide_only_lsn_checksum_and_hole(fn: m.MaskFunction) -> None:
    page = seq_page()
    page[28:100] = b"\x33" * 72  # hole content
    out = masked(fn, page)
    assert out[:10] == bytes(10) and out[28:100] == bytes(72)
    assert changed_offsets(page, out) <= set(range(10)) | set(range(28, 100))
    off = lp(page, 1)[0]
    for pos, value in [(20, 9),                       # pd_prune_xid
                       (10, m.PD_ALL_VISIBLE),        # pd_flags
                       (off + 21, 0x08),              # the tuple's HEAP_XMAX_INVALID
                       (off + 8, 1),                  # t_cid
                       (off + 24, 2)]:                # last_value
        other = bytearray(page)
        other[pos] ^= value
        assert m.first_difference(out, masked(fn, other)) == pos


# --------------------------------------------------------------------------- other AMs

def test_hash_mask() -> None:
    page = page_init(16)
    special = header(page)[6]
    add_item(page, b"12345678")
    struct.pack_into("<IIIHH", page, special, 1, 2, 3, m.LH_BUCKET_PAGE | m.LH_PAGE_HAS_DEAD_TUPLES,
                     0xFF80)
    set_lp(page, 1, lp(page, 1)[0], bufpage.LP_DEAD, 8)
    out = masked(m.hash_mask, page)
    assert lp(out, 1)[1] == 0
    assert struct.unpack_from("<IIIHH", out, special) == (1, 2, 3, m.LH_BUCKET_PAGE, 0xFF80)
    unused = bytearray(page)
    U16.pack_into(unused, special + 12, m.LH_UNUSED_PAGE)
    out = masked(m.hash_mask, unused)
    assert out[24:] == bytes(BLCKSZ - 24) and header(out)[4:6] == (0, 0)
    bitmap = bytearray(page)
    U16.pack_into(bitmap, special + 12, m.LH_BITMAP_PAGE)
    assert lp(masked(m.hash_mask, bitmap), 1)[1] == bufpage.LP_DEAD


def test_gin_mask() -> None:
    page = page_init(8)
    special = header(page)[6]
    add_item(page, b"abcdefgh")
    page[28:64] = b"\x77" * 36
    out = masked(m.gin_mask, page)
    assert out[28:64] == bytes(36)
    U16.pack_into(page, special + 6, m.GIN_DELETED)
    out = masked(m.gin_mask, page)
    assert out[24:] == bytes(BLCKSZ - 24) and header(out)[4:6] == (0, 0)
    # pd_lower == 24 (e.g. an old metapage): the hole is not masked
    meta = page_init(8)
    meta[24:64] = b"\x77" * 40
    assert masked(m.gin_mask, meta)[24:64] == meta[24:64]


def test_gist_mask_sets_follow_right_and_zeroes_nsn() -> None:
    page = page_init(16)
    special = header(page)[6]
    add_item(page, b"abcdefgh")
    struct.pack_into("<IIIHH", page, special, 5, 6, 99, m.F_LEAF | m.F_HAS_GARBAGE, 0xFF81)
    set_lp(page, 1, lp(page, 1)[0], bufpage.LP_DEAD, 8)
    out = masked(m.gist_mask, page)
    assert struct.unpack_from("<IIIHH", out, special) == (0, 0, 99, m.F_LEAF | m.F_FOLLOW_RIGHT,
                                                          0xFF81)
    assert lp(out, 1)[1] == 0
    internal = bytearray(page)
    U16.pack_into(internal, special + 12, 0)
    assert lp(masked(m.gist_mask, internal), 1)[1] == bufpage.LP_DEAD


def test_spg_mask() -> None:
    page = page_init(8, prune_xid=4, flags=m.PD_PAGE_FULL)
    page[24:100] = b"\x12" * 76
    out = masked(m.spg_mask, page)
    assert out[24:100] == bytes(76) and header(out)[3] == 0 and header(out)[8] == 0
    U16.pack_into(page, 12, 0)  # pd_lower not set: no hole masking, no error
    assert masked(m.spg_mask, page)[24:100] == page[24:100]


@pytest.mark.parametrize(("pagetype", "lower", "hole_masked"), [
    (brin.BRIN_PAGETYPE_REGULAR, 24, True),
    (brin.BRIN_PAGETYPE_META, 24, False),
    (brin.BRIN_PAGETYPE_META, 48, True),
    (brin.BRIN_PAGETYPE_REVMAP, 24, False),
])
def test_brin_mask(pagetype: int, lower: int, hole_masked: bool) -> None:
    page = page_init(8)
    special = header(page)[6]
    U16.pack_into(page, 12, lower)
    page[24:200] = b"\x99" * 176
    struct.pack_into("<HHHH", page, special, 0, 0, brin.BRIN_EVACUATE_PAGE | 0x10, pagetype)
    out = masked(m.brin_mask, page)
    assert (out[lower:200] == bytes(200 - lower)) is hole_masked
    assert struct.unpack_from("<HH", out, special + 4) == (0x10, pagetype)


# --------------------------------------------------------------------------- dispatch

def test_rmgr_table_matches_rmgrlist() -> None:
    assert {r.name for r in m.CONSISTENCY_CHECKED_RMGRS} == {
        "HEAP2", "HEAP", "BTREE", "HASH", "GIN", "GIST", "SEQ", "SPGIST", "BRIN", "GENERIC"}
    assert m.rm_mask(RmgrId.HEAP) is m.heap_mask and m.rm_mask(RmgrId.HEAP2) is m.heap_mask
    assert m.rm_mask(RmgrId.XLOG) is None


def test_mask_page_dispatches_and_copies() -> None:
    page = heap_page(heap_tuple(b"abc"))
    snapshot = bytes(page)
    out = m.mask_page(RmgrId.HEAP2, page)
    assert isinstance(out, bytes) and out == bytes(masked(m.heap_mask, page))
    assert page == snapshot  # input untouched
    assert m.mask_page(RmgrId.SEQ, page) == bytes(masked(m.seq_mask, page))
    assert m.mask_page(RmgrId.SEQ, page) != out
    for rmid in set(RmgrId) - m.CONSISTENCY_CHECKED_RMGRS:
        assert m.mask_page(rmid, page) == snapshot  # raw compare
    # the fork does not matter, the block number only to speculative ctids
    assert m.mask_page(RmgrId.HEAP2, page, forknum=2, blkno=5) == out


def test_mask_page_refusals() -> None:
    page = heap_page(heap_tuple(b"abc"))
    with pytest.raises(UnsupportedWalRecord, match="custom130"):
        m.mask_page(130, page)
    with pytest.raises(ValueError, match="8192"):
        m.mask_page(RmgrId.HEAP, bytes(page) + b"\x00")
    with pytest.raises(ValueError):
        m.mask_page(RmgrId.HEAP, page, forknum=4)
    with pytest.raises(CorruptionError):
        m.mask_page(RmgrId.BTREE, page)  # no special area for a btree opaque
    with pytest.raises(CorruptionError):
        m.mask_page(RmgrId.HEAP, bytes(BLCKSZ))  # a new page: PG's "invalid page" too


# --------------------------------------------------------------------------- VM pages

def vm_page() -> bytearray:
    page = page_init()  # PageInit(page, BLCKSZ, 0): lower 24, upper = special = 8192
    page[24:24 + 100] = bytes(range(1, 101))
    return page


def test_heap_mask_hides_the_whole_vm_bitmap_strict_does_not() -> None:
    page = vm_page()
    assert masked(m.heap_mask, page)[24:] == bytes(BLCKSZ - 24)
    assert header(masked(m.heap_mask, page))[4:8] == (24, 8192, 8192, 8192 | 4)
    other = bytearray(page)
    other[24 + 50] ^= 0x01  # one all-visible bit
    assert masked(m.heap_mask, page) == masked(m.heap_mask, other)
    assert m.first_difference(m.mask_vm_page_strict(page), m.mask_vm_page_strict(other)) == 74
    hinted = page_init(flags=0x7, prune_xid=123)  # strictness: even header hints stay
    hinted[24:] = page[24:]
    strict = m.mask_vm_page_strict(hinted)
    assert strict[:10] == bytes(10) and strict[10:] == hinted[10:]


# --------------------------------------------------------------------------- helpers

def test_first_difference() -> None:
    a = bytes(8192)
    assert m.first_difference(a, a) is None
    for pos in (0, 63, 64, 65, 8191):
        b = bytearray(a)
        b[pos] = 1
        assert m.first_difference(a, b) == pos
    assert m.first_difference(b"abc", b"abcd") == 3


# --------------------------------------------------------------------------- properties

tuple_spec = st.tuples(st.binary(min_size=0, max_size=40), st.integers(0, 0xFFFF),
                       st.integers(0, 2**32 - 1), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(tuple_spec, min_size=0, max_size=30), st.integers(0, 2**32 - 1))
def test_heap_mask_idempotent_and_structure_preserving(tuples: list[tuple[bytes, int, int, bool]],
                                                       blkno: int) -> None:
    page = heap_page(*[heap_tuple(d, infomask=im, cid=cid, spec_token=5 if spec else None)
                       for d, im, cid, spec in tuples])
    once = masked(m.heap_mask, page, blkno)
    assert masked(m.heap_mask, once, blkno) == once
    assert header(once)[4:8] == header(page)[4:8]
    for i, (d, _im, _cid, _spec) in enumerate(tuples, start=1):
        off, flags, ln = lp(once, i)
        assert (flags, ln) == (bufpage.LP_NORMAL, len(d) + 24)
        assert once[off + 24:off + ln] == d  # data never masked
        assert once[off:off + 8] == page[off:off + 8]  # xmin, xmax never masked


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(RmgrId)), st.integers(0, 2**64), st.integers(24, 8192),
       st.integers(24, 8192), st.integers(0, 8192))
def test_any_page_masks_or_raises_corruption(rmid: RmgrId, seed: int, lower: int, upper: int,
                                             special: int) -> None:
    """Noise with plausible pointers: a masked page of the same size or CorruptionError,
    never another exception, a write past the page or a change to the input."""
    page = bytearray(random.Random(seed).randbytes(BLCKSZ))
    U16.pack_into(page, 12, lower)
    U16.pack_into(page, 14, upper)
    U16.pack_into(page, 16, special)
    snapshot = bytes(page)
    try:
        out = m.mask_page(rmid, page)
    except CorruptionError:
        return
    finally:
        assert page == snapshot
    assert len(out) == BLCKSZ
