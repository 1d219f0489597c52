"""Fuzzing the WAL parsers: any bytes give a decoded record, a clear CorruptWalError or
EndOfWal, or a request for more bytes; never another exception, a hang, or a wrong page.

Seeds are real records captured from a PostgreSQL 15.18 primary (hex below).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagestore.errors import CorruptionError, CorruptWalError, UnsupportedWalRecord
from pagestore.lsn import Lsn
from pagestore.pg.waldecoder import LONG_PAGE_HEADER, XLOG_PAGE_MAGIC, EndOfWal, WalStreamDecoder
from pagestore.pg.xlogrecord import decode_record, record_crc, restore_block_image
from pagestore.redo.apply import redo_block
from pagestore.redo.context import RedoContext

SEEDS = {
    "fpi_hole": ("0/10000C0", "0/1000150", bytes.fromhex(
        "8900000001000000a000000100000000b0000000d17d1c7d0010000058004800037f060000010000"
        "00e5170000000000000000000000000000000000004800f01ff01f04200000000062310500040000"
        "00000000000000000000000000000000000000000000000000000000000000f0bf01000000000000"
        "0000000000000000000000000008000000"
    )),
    "btree_insert_leaf": ("0/10B8388", "0/10B83C8", bytes.fromhex(
        "400000000400000028830b0100000000000b0000b8b3fee1002010007f06000001000000130a0000"
        "01000000ff02000000000100100000000000000000000100"
    )),
    "heap_insert": ("0/10BD0B0", "0/10BD178", bytes.fromhex(
        "c30000000500000080d00b0100000000000a0000db05449b002092007f060000010000002e0a0000"
        "00000000ff031a00030820ffff070000000000008427000070675f70726f635f70726f6e616d655f"
        "617267735f6e73705f696e6465780000000000000000000000000000000000000000000000000000"
        "00000000000000000b00000075000001e704000000000000830a0000000000000000000020202001"
        "0000000001370100000000000000150000000300000001000000020014000300020000"
    )),
    "heap_update_2blocks": ("0/10BE238", "0/10BE310", bytes.fromhex(
        "d80000000a00000000e20b0100000000200a00007b27a4d3002094007f06000001000000320a0000"
        "030000000180000000000000ff0e1500032820ffff07000000000000660a0000eb04000001000100"
        "01000100010001000101000068000000010000000000000015000000010000000000000001000000"
        "7000000001000000000000001a000000010000000000000000000000700000000100000000000000"
        "1a0000000100000000000000bd070000680000000100000000000000150000000100000000000000"
        "00000a0000002b000000000000001900"
    )),
    "commit": ("0/131D310", "0/131D338", bytes.fromhex(
        "2200000007020000c8d23101000000000001000028de6062ff0801b29f2c0d040300"
    )),
}


def _seed(name: str) -> tuple[Lsn, Lsn, bytes]:
    lsn, end, raw = SEEDS[name]
    return Lsn.parse(lsn), Lsn.parse(end), raw


def test_seeds_decode_and_check() -> None:
    for name in SEEDS:
        lsn, end, raw = _seed(name)
        rec = decode_record(raw, lsn, end)
        assert rec.header.xl_crc == record_crc(raw)
    lsn, end, raw = _seed("fpi_hole")
    page = restore_block_image(decode_record(raw, lsn, end).blocks[0], lsn)
    assert len(page) == 8192


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_mutated_records(name: str, data: st.DataObject) -> None:
    lsn, end, raw = _seed(name)
    buf = bytearray(raw)
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "length"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    elif how == "extend":
        buf += data.draw(st.binary(min_size=1, max_size=64))
    else:
        struct.pack_into("<I", buf, 0, data.draw(st.integers(0, 2**32 - 1)))
    mutated = bytes(buf)
    # With the CRC checked, every mutation is caught.
    if mutated != raw:
        try:
            decode_record(mutated, lsn, end)
            raise AssertionError(f"a mutated {name} record was accepted")
        except CorruptWalError:
            pass
    # Without it, the structural checks alone give a record or a clear error, and redo
    # of whatever decoded gives a page or a clear error.
    try:
        rec = decode_record(mutated, lsn, end, check_crc=False)
    except CorruptWalError:
        return
    for blk in rec.blocks:
        try:
            page = redo_block(RedoContext(), rec, blk.block_id, bytearray(8192))
        except (CorruptWalError, CorruptionError, UnsupportedWalRecord):
            continue
        assert page is None or len(page) == 8192


@settings(max_examples=200)
@given(st.binary(max_size=2000), st.integers(0, 3))
def test_stream_decoder_on_garbage(garbage: bytes, chunks: int) -> None:
    """A valid long page header followed by garbage: records, clear errors or NEED_DATA."""
    header = LONG_PAGE_HEADER.pack(XLOG_PAGE_MAGIC, 0x0002, 1, 0x1000000, 0, 42, 16 * 1024 * 1024, 8192)
    stream = header + garbage
    dec = WalStreamDecoder(Lsn(0x1000000))
    step = max(1, len(stream) // (chunks + 1))
    try:
        for i in range(0, len(stream), step):
            dec.feed(stream[i:i + step])
            for _ in range(1000):  # bounded: a decoder that loops forever fails here
                if dec.poll() is None:
                    break
            else:
                raise AssertionError("decoder did not ask for more data")
    except (CorruptWalError, EndOfWal):
        pass


# --------------------------------------------------------------------------- record header limits

def _first_page(tot_len: int, rmid: int, xl_prev: int) -> bytes:
    """A segment's first page: a long header, then a record header (xl_tot_len, xid,
    xl_prev, info, rmid, crc) that claims ``tot_len`` bytes, then filler to the page end."""
    header = LONG_PAGE_HEADER.pack(XLOG_PAGE_MAGIC, 0x0002, 1, 0x1000000, 0, 42,
                                   16 * 1024 * 1024, 8192)
    record = struct.pack("<IIQBB2xI", tot_len, 7, xl_prev, 0, rmid, 0)
    return (header + record).ljust(8192, b"\x01")


def test_a_long_record_with_a_bad_header_fails_before_it_is_assembled() -> None:
    # 100 MB claimed: the decoder must refuse from the first page, not buffer 100 MB.
    for rmid, prev, match in [(50, 0xFFFFD0, "invalid resource manager ID 50"),
                              (10, 0x123456, "incorrect prev-link 0/123456")]:
        dec = WalStreamDecoder(Lsn(0x1000000), prev_lsn=Lsn(0xFFFFD0))
        dec.feed(_first_page(100 * 1024 * 1024, rmid, prev))
        try:
            dec.poll()
            raise AssertionError("a record with a bad header was accepted")
        except CorruptWalError as e:
            assert match in str(e) and "record length 104857600" in str(e)


def test_a_record_longer_than_postgresql_can_write_is_refused_at_once() -> None:
    dec = WalStreamDecoder(Lsn(0x1000000))
    dec.feed(_first_page(0x40000000, 10, 0))  # MaxAllocSize + 1
    try:
        dec.poll()
        raise AssertionError("a 1 GiB record was accepted")
    except CorruptWalError as e:
        assert "invalid record length" in str(e) and "1073741824" in str(e)
    ok = WalStreamDecoder(Lsn(0x1000000), prev_lsn=Lsn(0xFFFFD0))
    ok.feed(_first_page(0x3FFFFFFF, 10, 0xFFFFD0))  # the largest possible: more is needed
    assert ok.poll() is None
