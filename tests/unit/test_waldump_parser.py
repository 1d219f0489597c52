"""The pg_waldump output parser, on lines written from pg_waldump.c's printf formats.

Record lines follow XLogDumpDisplayRecord ("rmgr: %-11s len (rec/tot): %6u/%6u, tx: %10u,
lsn: %X/%08X, prev %X/%08X, desc: ..."), block lines XLogRecGetBlockRefInfo's detailed
format ("\\tblkref #%d: rel %u/%u/%u fork %s blk %u" and the FPW suffixes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pagestore.lsn import Lsn
from tests.fixtures.waldump import (
    BlockRef,
    PgWaldumpError,
    end_of_wal,
    parse_block_line,
    parse_waldump_output,
    segment_file_name,
    segment_size,
    segment_start_lsn,
    wal_segments,
)

MB = 1024 * 1024

OUTPUT = """\
first record is after 0/1500000, at 0/15000B0, skipping over 176 bytes
rmgr: Heap        len (rec/tot):     61/    61, tx:        724, lsn: 0/01515370, prev 0/01515330, desc: INSERT off 96 flags 0x00
\tblkref #0: rel 1663/5/16384 fork main blk 0
rmgr: Standby     len (rec/tot):     54/    54, tx:          0, lsn: 0/01515640, prev 0/015155F0, desc: RUNNING_XACTS nextXid 725 latestCompletedXid 723 oldestRunningXid 724; 1 xacts: 724
rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/01515678, prev 0/01515640, desc: CHECKPOINT_ONLINE redo 0/15155F0; tli 1; prev tli 1; fpw true; xid 0:725; oid 24576; multi 1; offset 0; oldest xid 716 in DB 1; oldest multi 1 in DB 1; oldest/newest commit timestamp xid: 0/0; oldest running xid 724; online
rmgr: Heap        len (rec/tot):     67/  1472, tx:        724, lsn: 0/015156F0, prev 0/01515678, desc: HOT_UPDATE off 5 xmax 724 flags 0x20 ; new off 101 xmax 0
\tblkref #0: rel 1663/5/16384 fork main blk 0 (FPW); hole: offset: 428, length: 4532, compression saved: 2255, method: lz4
rmgr: Heap2       len (rec/tot):     59/  8247, tx:          0, lsn: 0/01516010, prev 0/015156F0, desc: VISIBLE cutoff xid 724 flags 0x01
\tblkref #0: rel 1663/5/16384 fork vm blk 0 (FPW); hole: offset: 24, length: 0
\tblkref #1: rel 1663/5/16384 fork main blk 0 (FPW for WAL verification); hole: offset: 428, length: 4532
rmgr: Btree       len (rec/tot):     64/    64, tx:        725, lsn: 1/0A000028, prev 1/09FFFFD8, desc: INSERT_LEAF off 99
\tblkref #2: rel 1663/16385/16390 fork init blk 4294967294
rmgr: ReplicationOrigin len (rec/tot):     38/    38, tx:          0, lsn: 1/0A000068, prev 1/0A000028, desc: SET set 1; lsn 0/0; force: 0
"""
# pg_waldump prints "desc: UNKNOWN (%x) " with a trailing space
OUTPUT += ("rmgr: Heap        len (rec/tot):     23/    23, tx:        726, lsn: 1/0A000090, "
           "prev 1/0A000068, desc: UNKNOWN (70) \n")


def test_records_and_fields() -> None:
    records = parse_waldump_output(OUTPUT)
    assert [str(r.lsn) for r in records] == [
        "0/1515370", "0/1515640", "0/1515678", "0/15156F0", "0/1516010", "1/A000028",
        "1/A000068", "1/A000090"]
    insert = records[0]
    assert (insert.rmgr, insert.identity, insert.xid) == ("Heap", "INSERT", 724)
    assert (insert.rec_len, insert.total_len) == (61, 61)
    assert insert.prev == Lsn.parse("0/1515330")
    assert insert.desc == "off 96 flags 0x00"
    assert insert.blocks == (BlockRef(0, "1663/5/16384", "main", 0, image=False,
                                      apply_image=False),)
    checkpoint = records[2]
    assert (checkpoint.rmgr, checkpoint.identity, checkpoint.blocks) == (
        "XLOG", "CHECKPOINT_ONLINE", ())
    assert checkpoint.desc.startswith("redo 0/15155F0; tli 1;")
    assert records[7].identity == "UNKNOWN (70)"
    assert records[7].desc == ""
    assert records[6].rmgr == "ReplicationOrigin"


def test_full_page_images() -> None:
    records = parse_waldump_output(OUTPUT)
    (hot,) = records[3].blocks
    assert (hot.image, hot.apply_image) == (True, True)
    assert (hot.hole_offset, hot.hole_length) == (428, 4532)
    assert (hot.compression, hot.compression_saved) == ("lz4", 2255)
    assert records[3].rec_len == 67 and records[3].total_len == 1472
    vm, main = records[4].blocks
    assert (vm.fork, vm.image, vm.apply_image, vm.compression) == ("vm", True, True, None)
    assert (vm.hole_offset, vm.hole_length) == (24, 0)
    assert (main.block_id, main.image, main.apply_image) == (1, True, False)
    (init,) = records[5].blocks
    assert (init.block_id, init.fork, init.blk, init.image) == (2, "init", 4294967294, False)


def test_dict_shape() -> None:
    records = parse_waldump_output(OUTPUT)
    assert records[3].as_dict() == {
        "lsn": "0/15156F0", "rmgr": "Heap", "xid": 724, "total_len": 1472,
        "blocks": [{"rel": "1663/5/16384", "fork": "main", "blk": 0, "image": True,
                    "apply_image": True}]}
    assert records[5].as_dict()["lsn"] == "1/A000028"
    # pg_waldump cannot show BKPBLOCK_WILL_INIT: the key is left out, never guessed
    assert all("will_init" not in b for r in records for b in r.as_dict()["blocks"])


def test_description_with_newlines() -> None:
    text = (
        "rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/02000028, "
        "prev 0/01FFFFA0, desc: RESTORE_POINT two\n"
        "line name\n"
        "rmgr: Heap        len (rec/tot):     61/    61, tx:        800, lsn: 0/02000090, "
        "prev 0/02000028, desc: INSERT+INIT off 1 flags 0x00\n"
        "\tblkref #0: rel 1663/5/16400 fork main blk 7\n")
    restore, insert = parse_waldump_output(text)
    assert restore.desc == "two\nline name"
    assert insert.identity == "INSERT+INIT"
    assert insert.blocks[0].blk == 7


def test_empty_output() -> None:
    assert parse_waldump_output("") == []


@pytest.mark.parametrize("text", [
    "\tblkref #0: rel 1663/5/16384 fork main blk 0\n",  # block before any record
    "some banner\n",
    "rmgr: Heap        len (rec/tot):     61/    61, tx: 7, lsn: 0/1, desc: INSERT\n",
    "rmgr: Heap        len (rec/tot):     61/    61, tx:        724, lsn: 0/01515370, "
    "prev 0/01515330, desc: INSERT off 96 flags 0x00\n"
    "\tblkref #0: rel 1663/5/16384 fork main blk 0\n"
    "stray text after a block line\n",
])
def test_rejects_unexpected_lines(text: str) -> None:
    with pytest.raises(PgWaldumpError):
        parse_waldump_output(text)


@pytest.mark.parametrize("line", [
    "\tblkref #0: rel 1663/5/16384 fork other blk 0",
    "\tblkref #0: rel 1663/5 fork main blk 0",
    "\tblkref #0: rel 1663/5/16384 fork main blk 0 (FPW)",
    "\tblkref #0: rel 1663/5/16384 fork main blk 0 FPW",
])
def test_rejects_bad_block_lines(line: str) -> None:
    with pytest.raises(PgWaldumpError):
        parse_block_line(line)


@pytest.mark.parametrize(("stderr", "expected"), [
    ("pg_waldump: error: error in WAL record at 0/1515CF0: invalid record length at "
     "0/1516240: wanted 24, got 0\n", "0/1516240"),
    ("pg_waldump: error: error in WAL record at 0/2FFFF90: invalid magic number 0000 in "
     "log segment 000000010000000000000003, offset 0\n", "0/3000000"),
    ("pg_waldump: error: error in WAL record at 0/3001F90: unexpected pageaddr 0/1002000 "
     "in log segment 000000010000000000000003, offset 8192\n", "0/3002000"),
    ("pg_waldump: error: error in WAL record at 0/1515CF0: incorrect resource manager data "
     "checksum in record at 0/1516240\n", None),
    ("pg_waldump: error: error in WAL record at 0/1515CF0: invalid record length at "
     "0/1516240: wanted 24, got 17\n", None),
    ("pg_waldump: error: could not find file \"000000010000000000000009\": No such file "
     "or directory\n", None),
    ("", None),
])
def test_end_of_wal(stderr: str, expected: str | None) -> None:
    reached = end_of_wal(stderr)
    assert (str(reached) if reached is not None else None) == expected


def test_end_of_wal_in_large_segments() -> None:
    stderr = ("pg_waldump: error: error in WAL record at 0/BFFFF90: invalid magic number "
              "0000 in log segment 000000010000000000000003, offset 16384\n")
    assert end_of_wal(stderr, 64 * MB) == Lsn.parse("0/C004000")


@pytest.mark.parametrize(("name", "size", "lsn"), [
    ("000000010000000000000001", 16 * MB, "0/1000000"),
    ("00000001000000010000000A", 16 * MB, "1/A000000"),
    ("0000000200000000000000FF", 16 * MB, "0/FF000000"),
    ("000000010000000000000003", 64 * MB, "0/C000000"),
    ("000000010000000200000001", 1024 * MB, "2/40000000"),
])
def test_segment_start_lsn_and_file_name(name: str, size: int, lsn: str) -> None:
    start = segment_start_lsn(name, size)
    assert str(start) == lsn
    timeline = int(name[:8], 16)
    assert segment_file_name(start, size, timeline) == name
    assert segment_file_name(Lsn(start + size - 1), size, timeline) == name


def test_wal_segments_and_size(tmp_path: Path) -> None:
    for name in ["000000010000000000000002", "000000010000000000000001",
                 "000000020000000000000003"]:
        with open(tmp_path / name, "wb") as f:
            f.truncate(16 * MB)  # sparse
    (tmp_path / "000000010000000000000003.partial").write_bytes(b"")
    (tmp_path / "00000002.history").write_text("1\t0/3000000\tno recovery target\n")
    (tmp_path / "archive_status").mkdir()
    assert [p.name for p in wal_segments(tmp_path, 1)] == [
        "000000010000000000000001", "000000010000000000000002"]
    assert [p.name for p in wal_segments(tmp_path, 2)] == ["000000020000000000000003"]
    assert segment_size(tmp_path, 1) == 16 * MB
    with open(tmp_path / "000000010000000000000004", "wb") as f:
        f.truncate(8 * MB)
    with pytest.raises(PgWaldumpError, match="segment size"):
        segment_size(tmp_path, 1)
