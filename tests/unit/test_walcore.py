"""The compiled WAL decoder core against the pure-Python reference.

pagestore/pg/_walcore.c must give exactly what xlogrecord.decode_record_py and the
pure-Python WalStreamDecoder give: the same records, field for field, and the same
errors, word for word, on real records, on mutated ones and on WAL streams fed in any
chunking.  tests/integration/test_walcore_diff.py does the same over real workloads' WAL.

scripts/setup builds the core wherever a C compiler exists, so it is a failure here, not
a skip, when it is missing.
"""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagestore.errors import CorruptWalError
from pagestore.lsn import Lsn
from pagestore.pg import xlogrecord
from pagestore.pg.waldecoder import (
    LONG_PAGE_HEADER,
    PAGE_HEADER,
    XLOG_BLCKSZ,
    XLOG_PAGE_MAGIC,
    XLP_FIRST_IS_CONTRECORD,
    XLP_LONG_HEADER,
    EndOfWal,
    WalStreamDecoder,
    maxalign,
)
from pagestore.pg.xlogrecord import DecodedRecord, decode_record_py, record_crc
from tests.unit.test_wal_fuzz import SEEDS

pytestmark = pytest.mark.unit

try:
    from pagestore.pg import _walcore
except ImportError as e:  # pragma: no cover - the failure is the message
    raise ImportError("the compiled WAL decoder core is not built: run scripts/setup "
                      "(it needs gcc and the Python headers)") from e

_walcore.configure(DecodedRecord, xlogrecord.BlockReference, xlogrecord.RelTag,
                   xlogrecord.XLogRecordHeader, Lsn)

SEGMENT = 16 * 1024 * 1024
START = 0x1000000


def fields(rec: DecodedRecord) -> tuple:
    """Every field of a record, with types: a Lsn must stay a Lsn, bytes stay bytes."""
    blocks = tuple((type(b).__name__, b.block_id, b.rel, type(b.rel).__name__, b.blkno,
                    b.fork_flags, b.bimg_info, b.hole_offset, b.hole_length, b.image, b.data)
                   for b in rec.blocks)
    return (type(rec).__name__, rec.lsn, type(rec.lsn).__name__, rec.end_lsn,
            type(rec.end_lsn).__name__, rec.header, type(rec.header).__name__, blocks,
            rec.main_data, rec.origin, rec.toplevel_xid, rec.raw)


def outcome_py(raw: bytes, lsn: Lsn, end: Lsn, check_crc: bool = True) -> object:
    try:
        return fields(decode_record_py(raw, lsn, end, check_crc=check_crc))
    except CorruptWalError as e:
        return ("error", str(e))


def outcome_c(raw: bytes, lsn: Lsn, end: Lsn, check_crc: bool = True) -> object:
    rec = _walcore.decode_record(raw, lsn, end, check_crc)
    if rec is None:  # the reference judges it: it must refuse it
        result = outcome_py(raw, lsn, end, check_crc)
        assert isinstance(result, tuple) and result[0] == "error", \
            "the compiled core refused a record the reference accepts"
        return result
    return fields(rec)


def _seed(name: str) -> tuple[Lsn, Lsn, bytes]:
    lsn, end, raw = SEEDS[name]
    return Lsn.parse(lsn), Lsn.parse(end), raw


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_records_decode_the_same(name: str) -> None:
    lsn, end, raw = _seed(name)
    ours = outcome_c(raw, lsn, end)
    assert ours == outcome_py(raw, lsn, end)
    assert ours[0] == "DecodedRecord"


def test_crc32c_matches_the_reference_library() -> None:
    data = bytes(range(256)) * 41 + b"tail"
    for n in (0, 1, 7, 8, 9, 63, 64, 65, len(data)):
        for start in (0, 1, 3):
            chunk = data[start:start + n]
            assert _walcore.crc32c(chunk) == crc32c.crc32c(chunk)
            assert _walcore.crc32c(chunk, 0xDEADBEEF) == crc32c.crc32c(chunk, 0xDEADBEEF)
    assert _walcore.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_mutated_records_decode_the_same(name: str, data: st.DataObject) -> None:
    """Flipped, truncated and extended records (with the CRC fixed up half the time, so
    the header and block parsing is reached): same record or same error."""
    lsn, end, raw = _seed(name)
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from(["none", "truncate", "extend"]))
    if cut == "truncate":
        buf = buf[:data.draw(st.integers(0, len(buf)))]
    elif cut == "extend":
        buf += data.draw(st.binary(min_size=1, max_size=40))
    if data.draw(st.booleans()) and len(buf) >= 24:
        struct.pack_into("<I", buf, 0, len(buf))
        struct.pack_into("<I", buf, 20, record_crc(buf))
    mutated = bytes(buf)
    check = data.draw(st.booleans())
    assert outcome_c(mutated, lsn, end, check) == outcome_py(mutated, lsn, end, check)


# --------------------------------------------------------------------------- streams

def build_stream(records: list[bytes], *, start: int = START, prev: int = 0) -> bytes:
    """WAL as PostgreSQL lays it out from ``start`` (a segment start): page headers
    (long on the segment's first page), records at MAXALIGNed positions chained by
    xl_prev with their CRCs recomputed, continuations across pages flagged
    XLP_FIRST_IS_CONTRECORD with the remaining length."""
    out = bytearray()
    pos = start

    def page_header(at: int, rem: int) -> bytes:
        info = XLP_FIRST_IS_CONTRECORD if rem else 0
        if at % SEGMENT == 0:
            return LONG_PAGE_HEADER.pack(XLOG_PAGE_MAGIC, info | XLP_LONG_HEADER, 1, at, rem,
                                         7, SEGMENT, XLOG_BLCKSZ)
        return PAGE_HEADER.pack(XLOG_PAGE_MAGIC, info, 1, at, rem)

    out += page_header(pos, 0)
    pos += len(out)
    for raw in records:
        rec = bytearray(raw)
        struct.pack_into("<Q", rec, 8, prev)
        struct.pack_into("<I", rec, 20, record_crc(rec))
        pad = maxalign(pos) - pos
        out += bytes(pad)
        pos += pad
        if pos % XLOG_BLCKSZ == 0:
            hdr = page_header(pos, 0)
            out += hdr
            pos += len(hdr)
        prev = pos
        rest = bytes(rec)
        while rest:
            room = XLOG_BLCKSZ - pos % XLOG_BLCKSZ
            piece, rest = rest[:room], rest[room:]
            out += piece
            pos += len(piece)
            if rest and pos % XLOG_BLCKSZ == 0:
                hdr = page_header(pos, len(rest))  # 24 or 40 bytes: MAXALIGNed
                out += hdr
                pos += len(hdr)
    return bytes(out)


def decode_stream(stream: bytes, chunk: int, compiled: bool) -> list[object]:
    dec = WalStreamDecoder(Lsn(START), compiled=compiled)
    got: list[object] = []
    try:
        for i in range(0, len(stream), chunk):
            dec.feed(stream[i:i + chunk])
            for _ in range(100_000):
                rec = dec.poll()
                if rec is None:
                    break
                got.append(fields(rec))
            else:
                raise AssertionError("the decoder did not ask for more data")
    except (CorruptWalError, EndOfWal) as e:
        got.append((type(e).__name__, str(e)))
    got.append(("next", dec.lsn))
    return got


def _long_record(n: int) -> bytes:
    """A record of ``n`` bytes of main data (XLOG NOOP), to span pages."""
    body = (b"\xff" + bytes([n]) if n < 256 else b"\xfe" + struct.pack("<I", n)) + bytes(
        (i * 7) & 0xFF for i in range(n))
    return struct.pack("<IIQBB2xI", 24 + len(body), 0, 0, 0x20, 0, 0) + body


STREAM_RECORDS = [_seed(n)[2] for n in sorted(SEEDS)] * 30 + [_long_record(20_000)] + [
    _seed(n)[2] for n in sorted(SEEDS)] * 40 + [_long_record(300)] * 10


@pytest.mark.parametrize("chunk", [1, 7, 100, 8192, 100_000, 1 << 24])
def test_streams_decode_the_same_in_any_chunking(chunk: int) -> None:
    stream = build_stream(STREAM_RECORDS)
    ours = decode_stream(stream, chunk, compiled=True)
    assert ours == decode_stream(stream, chunk, compiled=False)
    assert len(ours) == len(STREAM_RECORDS) + 1, ours[-2:]  # every record, then "next"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_mutated_streams_decode_the_same(data: st.DataObject) -> None:
    """Byte flips anywhere in a stream (page headers, lengths, prev-links, record
    bodies), any chunking: the same records, then the same error or end."""
    n = data.draw(st.integers(1, 60))
    stream = bytearray(build_stream([*STREAM_RECORDS[:n], _long_record(9000), *STREAM_RECORDS[n:n + 20]]))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(stream) // 2, len(stream)))
    chunk = data.draw(st.sampled_from([3, 500, 4096, 1 << 20]))
    mutated = bytes(stream[:cut])
    assert decode_stream(mutated, chunk, True) == decode_stream(mutated, chunk, False)


def test_xlog_switch_and_the_next_segment() -> None:
    """An XLOG_SWITCH ends its segment; the compiled scan leaves it to the reference."""
    switch = struct.pack("<IIQBB2xI", 24, 0, 0, 0x40, 0, 0)
    head = build_stream([_seed("commit")[2], switch])
    switch_at = START + len(head) - 24
    next_seg = START + SEGMENT
    stream = bytearray(head.ljust(SEGMENT, b"\x00"))
    stream += build_stream([_seed("commit")[2]] * 3, start=next_seg, prev=switch_at)
    ours = decode_stream(bytes(stream), 1 << 20, True)
    assert ours == decode_stream(bytes(stream), 1 << 20, False)
    assert [r[1] for r in ours[:-1]][2] == Lsn(next_seg + 40)


@pytest.mark.parametrize(("env", "expected"), [("1", "pure-python"), ("0", "compiled"),
                                                ("", "compiled")])
def test_the_environment_variable_switches_the_core_off(env: str, expected: str) -> None:
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pagestore.cli", "--version"], capture_output=True, text=True,
        env={**os.environ, xlogrecord.PURE_PYTHON_ENV: env}, timeout=60, check=True)
    assert proc.stdout.strip().endswith(f"WAL decoder: {expected})"), proc.stdout


def test_without_a_compiler_the_build_warns_and_pagestore_falls_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """setup.py with no working C compiler: a clear warning, a successful build without
    the extension, and pagestore running its pure-Python decoder."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(root / name, tmp_path / name)
    shutil.copytree(root / "protos", tmp_path / "protos")
    shutil.copytree(root / "pagestore", tmp_path / "pagestore",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CC": str(tmp_path / "no-such-compiler")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "could not build pagestore.pg._walcore" in proc.stderr
    assert "pure-Python WAL decoder" in proc.stderr
    assert not list((tmp_path / "pagestore" / "pg").glob("_walcore*.so"))
    check = subprocess.run(
        [sys.executable, "-c", "import pagestore.pg.xlogrecord as x; "
         "print(x.__file__, x.decoder_implementation())"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert check.stdout.split() == [str(tmp_path / "pagestore" / "pg" / "xlogrecord.py"),
                                    "pure-python"], check.stderr
