"""GIN redo on hand-built pages and records: the posting-list varbyte codec of
ginpostinglist.c against bytes worked out by hand from the C algorithm, the segment
actions of ginRedoRecompress, and the errors for unknown and malformed records.  The
byte-for-byte comparison with PostgreSQL's own after-images is tests/workloads/gin.sql
through ``pagestore redo-check``."""

from __future__ import annotations

import struct

import pytest

from pagestore.errors import CorruptWalError, UnsupportedWalRecord
from pagestore.pg.rmgr import RmgrId
from pagestore.redo import gin
from pagestore.redo.bufpage import BLCKSZ, page_get_lsn, pd_lower
from pagestore.redo.masking import gin_mask
from tests.unit.redo_records import CTX, END, block, record_of

record = record_of(RmgrId.GIN)

K = gin.item_key


# --------------------------------------------------------------------------- the codec

# (0,1) (0,2) (1,1) (100000,5): integers 1, 2, 2049, 204800005; deltas 1, 2047 and
# 204797956 = 0x61 * 128^3 + 0x53 * 128^2 + 0x70 * 128 + 0x04, low 7 bits first with the
# continuation bit on all but the last byte.
HAND_ITEMS = [K(0, 1), K(0, 2), K(1, 1), K(100000, 5)]
HAND_SEGMENT = bytes([
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00,        # first: bi_hi 0, bi_lo 0, posid 1
    0x07, 0x00,                                # nbytes 7
    0x01,                                      # +1
    0xFF, 0x0F,                                # +2047
    0x84, 0xF0, 0xD3, 0x61,                    # +204797956
    0x00,                                      # padding to an even size
])


def test_item_key_is_block_then_eleven_offset_bits() -> None:
    assert K(1, 1) == 2049
    assert gin.item_from_key(K(0xFFFFFFFF, 2047)) == (0xFFFFFFFF, 2047)
    with pytest.raises(ValueError):
        K(1, 2048)


def test_compress_matches_hand_encoded_bytes() -> None:
    seg, npacked = gin.compress_posting_list(HAND_ITEMS, BLCKSZ)
    assert seg == HAND_SEGMENT
    assert npacked == 4
    assert gin.posting_list_size(seg, 0) == 16
    assert gin.decode_posting_lists(seg) == HAND_ITEMS


def test_largest_gap_takes_seven_bytes_without_a_continuation_bit() -> None:
    items = [K(0, 1), K(0xFFFFFFFF, 2047)]
    seg, npacked = gin.compress_posting_list(items, BLCKSZ)
    delta = items[1] - items[0]  # 2^43 - 2: bits 1..42; the 7th byte holds bit 42
    assert delta == (1 << 43) - 2
    assert seg[6:8] == b"\x07\x00"
    assert seg[8:15] == bytes([0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    assert seg[15] == 0  # padding
    assert npacked == 2
    assert gin.decode_posting_lists(seg) == items
    assert gin.encode_varbyte(0x7F) == b"\x7f"
    assert gin.encode_varbyte(0x80) == b"\x80\x01"


def test_max_size_stops_before_an_item_that_does_not_fit() -> None:
    # maxsize 11 rounds down to 10: 2 bytes after the header; +1 fits, +2047 needs 2.
    seg, npacked = gin.compress_posting_list([K(0, 1), K(0, 2), K(1, 1)], 11)
    assert npacked == 2
    assert seg == bytes([0, 0, 0, 0, 1, 0, 1, 0, 0x01, 0x00])
    # with 3 bytes (maxsize 12) both deltas fit
    seg, npacked = gin.compress_posting_list([K(0, 1), K(0, 2), K(1, 1)], 12)
    assert npacked == 3
    assert seg[6:8] == b"\x03\x00"
    with pytest.raises(ValueError):
        gin.compress_posting_list([K(0, 2), K(0, 2)], BLCKSZ)


def test_round_trip_of_many_segments() -> None:
    items = [K(b, o) for b in range(0, 5000, 7) for o in (1, 3, 200)]
    segments = []
    rest = items
    while rest:
        seg, n = gin.compress_posting_list(rest, 256)
        assert len(seg) <= 256
        segments.append(seg)
        rest = rest[n:]
    assert len(segments) > 5
    assert gin.decode_posting_lists(b"".join(segments)) == items


def test_merge_keeps_one_copy_and_concatenates_disjoint_arrays() -> None:
    assert gin.merge_item_pointers([1, 5, 9], [2, 5, 10]) == [1, 2, 5, 9, 10]
    assert gin.merge_item_pointers([7, 8], [1, 2]) == [1, 2, 7, 8]
    assert gin.merge_item_pointers([], [3]) == [3]


# --------------------------------------------------------------------------- pages

def data_leaf(segments: list[bytes]) -> bytearray:
    page = bytearray(BLCKSZ)
    gin.gin_init_page(page, gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_COMPRESSED)
    body = b"".join(segments)
    gin.set_data_size(page, len(body))
    page[gin.DATA_OFF:gin.DATA_OFF + len(body)] = body
    return page


def leaf_items(page: bytearray) -> list[int]:
    return gin.decode_posting_lists(page, gin.DATA_OFF, pd_lower(page))


def test_recompress_additems_insert_replace_delete() -> None:
    seg0, _ = gin.compress_posting_list([K(1, 1), K(1, 2)], BLCKSZ)
    seg1, _ = gin.compress_posting_list([K(2, 1), K(2, 5)], BLCKSZ)
    seg2, _ = gin.compress_posting_list([K(3, 1)], BLCKSZ)
    seg3, _ = gin.compress_posting_list([K(4, 1)], BLCKSZ)
    page = data_leaf([seg0, seg1, seg2, seg3])
    newseg, _ = gin.compress_posting_list([K(3, 7), K(3, 8)], BLCKSZ)
    actions = (struct.pack("<H", 4)
               + bytes([1, gin.GIN_SEGMENT_ADDITEMS]) + struct.pack("<H", 1)
               + struct.pack("<HHH", 0, 2, 3)
               + bytes([2, gin.GIN_SEGMENT_INSERT]) + newseg
               + bytes([2, gin.GIN_SEGMENT_DELETE])
               + bytes([3, gin.GIN_SEGMENT_REPLACE]) + seg0)
    rec = record(gin.XLOG_GIN_INSERT, struct.pack("<H", gin.GIN_INSERT_ISDATA
                                                  | gin.GIN_INSERT_ISLEAF),
                 block(0, 7, actions))
    gin.redo_block(CTX, rec, 0, page)
    assert leaf_items(page) == [K(1, 1), K(1, 2), K(2, 1), K(2, 3), K(2, 5), K(3, 7), K(3, 8),
                                K(1, 1), K(1, 2)]
    assert page_get_lsn(page) == END


def test_recompress_without_actions_empties_the_page_as_postgres_does() -> None:
    seg, _ = gin.compress_posting_list([K(1, 1)], BLCKSZ)
    page = data_leaf([seg])
    gin.recompress(page, struct.pack("<H", 0), END)
    assert pd_lower(page) == gin.DATA_OFF


def test_insert_listpage_and_delete_listpage() -> None:
    tup = struct.pack("<HHHH", 0, 1, 1, 16) + b"abcdefgh"
    main = struct.pack("<Ii", gin.INVALID_BLOCK_NUMBER, 2)
    rec = record(gin.XLOG_GIN_INSERT_LISTPAGE, main, block(0, 3, tup + tup, will_init=True))
    page = bytearray(BLCKSZ)
    gin.redo_block(CTX, rec, 0, page)
    assert gin.page_flags(page) == gin.GIN_LIST | gin.GIN_LIST_FULLROW
    assert gin.page_maxoff(page) == 1
    assert pd_lower(page) == 24 + 2 * 4
    metadata = struct.pack("<IIIIqIII4xqi4x", 5, 6, 100, 2, 10, 0, 0, 0, 0, 2)
    rec = record(gin.XLOG_GIN_DELETE_LISTPAGE, metadata + struct.pack("<i4x", 1),
                 block(0, 0, will_init=True), block(1, 3, will_init=True))
    gin.redo_block(CTX, rec, 1, page)
    assert gin.page_flags(page) == gin.GIN_DELETED
    meta = bytearray(BLCKSZ)
    gin.redo_block(CTX, rec, 0, meta)
    assert meta[24:24 + 56] == metadata
    assert pd_lower(meta) == 80
    masked = bytearray(page)
    gin_mask(masked, 3)  # a deleted page: everything after the header is masked
    assert masked[24:] == bytes(BLCKSZ - 24)
    assert gin.page_flags(meta) == gin.GIN_META


# --------------------------------------------------------------------------- errors

def test_unknown_info_raises_unsupported_naming_gin() -> None:
    page = data_leaf([])
    with pytest.raises(UnsupportedWalRecord, match=r"Gin, info 0xf0"):
        gin.redo_block(CTX, record(0xF0, b""), 0, page)


def test_split_without_images_is_corrupt() -> None:
    main = struct.pack("<12xIIIH", 1, 2, 3, gin.GIN_INSERT_ISLEAF)
    with pytest.raises(CorruptWalError, match="full-page image of left page"):
        gin.redo_block(CTX, record(gin.XLOG_GIN_SPLIT, main, block(0, 4)), 0, data_leaf([]))


def test_recompress_rejects_unknown_action() -> None:
    seg, _ = gin.compress_posting_list([K(1, 1)], BLCKSZ)
    page = data_leaf([seg])
    with pytest.raises(CorruptWalError, match="unexpected GIN leaf action: 9"):
        gin.recompress(page, struct.pack("<H", 1) + bytes([0, 9]), END)


def posting_item(child: int, blk: int, off: int) -> bytes:
    return struct.pack("<HHHHH", child >> 16, child & 0xFFFF, blk >> 16, blk & 0xFFFF, off)


def data_internal(items: list[bytes]) -> bytearray:
    page = bytearray(BLCKSZ)
    gin.gin_init_page(page, gin.GIN_DATA)
    for i, item in enumerate(items, 1):
        gin.add_posting_item(page, item, i)
    return page


def test_insert_data_internal_relinks_the_split_child_and_clears_its_flag() -> None:
    page = data_internal([posting_item(5, 10, 1), posting_item(6, 0xFFFFFFFF, 0xFFFF)])
    main = struct.pack("<HHHHH", gin.GIN_INSERT_ISDATA, 0, 5, 0, 9)  # children 5 -> 9
    rec = record(gin.XLOG_GIN_INSERT, main,
                 block(0, 2, struct.pack("<H", 1) + posting_item(5, 7, 3)), block(1, 5))
    gin.redo_block(CTX, rec, 0, page)
    assert gin.page_maxoff(page) == 3
    assert pd_lower(page) == gin.DATA_OFF + 30
    body = page[gin.DATA_OFF:gin.DATA_OFF + 30]
    assert body == (posting_item(5, 7, 3) + posting_item(9, 10, 1)
                    + posting_item(6, 0xFFFFFFFF, 0xFFFF))
    child = data_leaf([])
    gin.set_page_flags(child, gin.page_flags(child) | gin.GIN_INCOMPLETE_SPLIT)
    gin.redo_block(CTX, rec, 1, child)
    assert gin.page_flags(child) == gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_COMPRESSED
    assert page_get_lsn(child) == END


def test_delete_page_blocks() -> None:
    main = struct.pack("<H2xII", 2, 77, 1234)
    rec = record(gin.XLOG_GIN_DELETE_PAGE, main, block(0, 8), block(1, 2), block(2, 7))
    parent = data_internal([posting_item(7, 1, 1), posting_item(8, 2, 1), posting_item(9, 3, 1)])
    gin.redo_block(CTX, rec, 1, parent)
    assert gin.page_maxoff(parent) == 2
    assert parent[gin.DATA_OFF:gin.DATA_OFF + 20] == posting_item(7, 1, 1) + posting_item(9, 3, 1)
    assert pd_lower(parent) == gin.DATA_OFF + 20
    deleted, left = data_leaf([]), data_leaf([])
    gin.redo_block(CTX, rec, 0, deleted)
    assert gin.page_flags(deleted) & gin.GIN_DELETED
    assert struct.unpack_from("<I", deleted, 20)[0] == 1234
    gin.redo_block(CTX, rec, 2, left)
    assert struct.unpack_from("<I", left, BLCKSZ - 8)[0] == 77


def test_update_meta_rebuilds_the_metapage_even_after_an_image() -> None:
    metadata = struct.pack("<IIIIqIII4xqi4x", 3, 4, 500, 2, 9, 0, 0, 0, 0, 2)
    main = struct.pack("<12x4x") + metadata + struct.pack("<IIi4x", 3, 4, 0)
    rec = record(gin.XLOG_GIN_UPDATE_META_PAGE, main, block(0, 0, will_init=True),
                 block(1, 3))
    restored = bytearray(b"\xAA" * BLCKSZ)
    gin.after_image(CTX, rec, 0, restored)
    assert restored[24:80] == metadata
    assert restored[80:BLCKSZ - 8] == bytes(BLCKSZ - 88)
    tail = bytearray(BLCKSZ)
    gin.gin_init_page(tail, gin.GIN_LIST)
    before = bytes(tail)
    gin.after_image(CTX, rec, 1, tail)  # a restored tail page stays as restored
    assert tail == before
    gin.redo_block(CTX, rec, 1, tail)  # prevTail 3: the old tail links to the new sublist
    assert struct.unpack_from("<I", tail, BLCKSZ - 8)[0] == 4
