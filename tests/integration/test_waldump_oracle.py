"""The pg_waldump oracle on a real primary: what it reports matches what we did.

These tests pin down the oracle itself (tests/fixtures/waldump.py) before our own WAL
decoder is compared with it: record order, heap inserts on a known relfilenode, the
full-page image after a CHECKPOINT, an image kept only for WAL verification, records that
span pages and a segment boundary, the end of WAL, and corruption that must not pass for
the end of WAL.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster
from tests.fixtures.postgres import PgFactory
from tests.fixtures.waldump import (
    PgWaldumpError,
    WaldumpFn,
    WaldumpRecord,
    pg_waldump_records,
    segment_file_name,
    segment_size,
    wal_segments,
)
from tests.workloads import current_lsn

LSN_TEXT = re.compile(r"^(0|[1-9A-F][0-9A-F]*)/(0|[1-9A-F][0-9A-F]*)$")
BLOCK_KEYS = {"rel", "fork", "blk", "image", "apply_image"}


def _insert_lsn(pg: PgCluster) -> Lsn:
    return Lsn.parse(pg.psql("SELECT pg_current_wal_insert_lsn()"))


def _rel(pg: PgCluster, table: str) -> str:
    filenode = pg.psql(f"SELECT pg_relation_filenode('{table}')")
    dboid = pg.psql("SELECT oid FROM pg_database WHERE datname = current_database()")
    return f"1663/{dboid}/{filenode}"


def _touching(records: list[WaldumpRecord], rel: str) -> list[WaldumpRecord]:
    return [r for r in records if any(b.rel == rel for b in r.blocks)]


def _assert_well_formed(dicts: list[dict[str, object]]) -> None:
    for d in dicts:
        assert set(d) == {"lsn", "rmgr", "xid", "total_len", "blocks"}, d
        assert isinstance(d["lsn"], str) and LSN_TEXT.match(d["lsn"]), d
        assert isinstance(d["total_len"], int) and d["total_len"] >= 24, d
        assert isinstance(d["blocks"], list)
        for b in d["blocks"]:
            assert set(b) == BLOCK_KEYS, b
            assert b["fork"] in ("main", "fsm", "vm", "init"), b
            assert re.fullmatch(r"\d+/\d+/\d+", b["rel"]), b
            assert not b["apply_image"] or b["image"], b
    lsns = [Lsn.parse(str(d["lsn"])) for d in dicts]
    assert lsns == sorted(set(lsns)), "records are not in strictly ascending LSN order"


def test_heap_inserts_and_full_page_images(pg_factory: PgFactory, pg_bin_dir: Path,
                                           waldump: WaldumpFn) -> None:
    pg = pg_factory()
    wal_dir = pg.datadir / "pg_wal"
    start = current_lsn(pg)
    pg.psql("CREATE TABLE oracle_t (id integer, v text)")
    rel = _rel(pg, "oracle_t")
    pg.psql("INSERT INTO oracle_t SELECT g, 'row ' || g FROM generate_series(1, 50) g")
    xid = int(pg.psql("SELECT DISTINCT xmin::text FROM oracle_t"))
    pg.psql("CHECKPOINT")
    pg.psql("UPDATE oracle_t SET v = 'after checkpoint' WHERE id = 1")
    pg.psql("SET wal_consistency_checking = 'heap'; "
            "UPDATE oracle_t SET v = 'verified' WHERE id = 2")
    end = current_lsn(pg)

    run = waldump(wal_dir, start, end)
    records = run.records
    dicts = pg_waldump_records(pg_bin_dir, wal_dir, start, end)
    assert dicts == [r.as_dict() for r in records]
    _assert_well_formed(dicts)
    assert Lsn.parse(start) <= records[0].lsn and records[-1].lsn < Lsn.parse(end)
    assert run.end_of_wal is None  # an explicit end inside valid WAL: a clean exit

    # CREATE TABLE: the Storage CREATE record names the new file
    dboid, filenode = rel.split("/")[1:]
    assert any(r.rmgr == "Storage" and r.identity == "CREATE"
               and f"base/{dboid}/{filenode}" in r.desc for r in records)

    # 50 single-row heap inserts, by our transaction, into block 0 of our relation
    inserts = [r for r in _touching(records, rel)
               if r.rmgr == "Heap" and r.identity.startswith("INSERT")]
    assert len(inserts) == 50
    assert inserts[0].identity == "INSERT+INIT"  # the first tuple initializes the page
    for r in inserts:
        assert r.xid == xid
        (b,) = r.blocks
        assert (b.rel, b.fork, b.blk, b.image) == (rel, "main", 0, False)
    commits = [r for r in records if r.rmgr == "Transaction" and r.xid == xid]
    assert [r.identity for r in commits] == ["COMMIT"]
    assert commits[0].lsn > inserts[-1].lsn

    # the first change after the CHECKPOINT carries an image to apply ...
    checkpoint = next(r for r in records
                      if r.rmgr == "XLOG" and r.identity == "CHECKPOINT_ONLINE")
    updates = [r for r in _touching(records, rel)
               if r.rmgr == "Heap" and "UPDATE" in r.identity]
    assert len(updates) == 2 and updates[0].lsn > checkpoint.lsn
    first_update, verified_update = updates
    (b,) = first_update.blocks
    assert (b.rel, b.blk, b.image, b.apply_image) == (rel, 0, True, True)
    assert b.compression is None  # wal_compression is off
    assert first_update.total_len > first_update.rec_len
    # ... the second one only an image for wal_consistency_checking
    (b,) = verified_update.blocks
    assert (b.image, b.apply_image) == (True, False)

    # the whole directory from its oldest segment: initdb's WAL and ours, same records
    everything = pg_waldump_records(pg_bin_dir, wal_dir)
    _assert_well_formed(everything)
    seg = segment_size(wal_dir)
    first = Lsn.parse(everything[0]["lsn"])
    assert segment_file_name(first, seg) == wal_segments(wal_dir)[0].name
    by_lsn = {d["lsn"]: d for d in everything}
    assert all(by_lsn[d["lsn"]] == d for d in dicts)


def test_records_spanning_pages_and_segments(pg_factory: PgFactory,
                                             waldump: WaldumpFn) -> None:
    pg = pg_factory()
    wal_dir = pg.datadir / "pg_wal"
    seg = segment_size(wal_dir)
    # move the insert position to 20-200 kB before a segment boundary with a filler
    # record that stays outside the range we dump (its hex description would be huge)
    for _ in range(3):
        remaining = seg - _insert_lsn(pg).segment_offset(seg)
        if 20_000 <= remaining <= 200_000:
            break
        distance = remaining - 100_000 if remaining > 200_000 else remaining + seg - 100_000
        payload = distance * 8168 // 8192  # 24-byte page headers take the rest
        pg.psql(f"SELECT pg_logical_emit_message(false, 'filler', repeat('f', {payload}))")
    else:
        pytest.fail("could not bring the WAL insert position near a segment boundary")
    start = _insert_lsn(pg)
    pg.psql("SELECT pg_logical_emit_message(false, 'pagestore-span', repeat('x', 300000))")
    pg.psql("CREATE TABLE after_span AS SELECT 1 AS a")  # its commit flushes the message
    end = current_lsn(pg)

    records = waldump(wal_dir, str(start), end).records
    _assert_well_formed([r.as_dict() for r in records])
    (span,) = [r for r in records if r.rmgr == "LogicalMessage"
               and 'prefix "pagestore-span"' in r.desc]
    assert "payload (300000 bytes)" in span.desc
    assert span.total_len > 300000
    assert span.lsn // seg != (span.lsn + span.total_len) // seg  # crosses a segment
    following = [r for r in records if r.lsn > span.lsn]
    assert following and following[0].lsn // seg > span.lsn // seg
    assert any(r.rmgr == "Transaction" and r.identity == "COMMIT" for r in following)


def test_end_of_wal_and_corruption(pg_factory: PgFactory, work_dir: Path,
                                   waldump: WaldumpFn) -> None:
    pg = pg_factory()
    wal_dir = pg.datadir / "pg_wal"
    seg = segment_size(wal_dir)
    start = current_lsn(pg)
    pg.psql("CREATE TABLE oracle_c (id integer)")
    pg.psql("INSERT INTO oracle_c SELECT generate_series(1, 100)")
    end = Lsn.parse(current_lsn(pg))

    # without an end, the dump stops at the end of valid WAL, which pg_waldump reports
    # as an error that is not one
    run = waldump(wal_dir, start)
    assert run.end_of_wal is not None and run.end_of_wal >= end
    assert run.records[-1].lsn < run.end_of_wal

    # asking for WAL beyond what was written is an error, not a short answer
    beyond = Lsn(min(int(run.end_of_wal) + 65536, (run.end_of_wal // seg + 1) * seg))
    with pytest.raises(PgWaldumpError, match="before the requested end"):
        waldump(wal_dir, start, str(beyond))

    # a flipped byte inside a record fails its CRC: that is corruption, not the end
    victim = next(r for r in run.records if r.rmgr == "Heap" and r.total_len > 40
                  and r.lsn % 8192 < 8192 - r.total_len)
    copy = work_dir / "corrupt_wal"
    copy.mkdir()
    for segment in wal_segments(wal_dir):
        shutil.copyfile(segment, copy / segment.name)
    path = copy / segment_file_name(victim.lsn, seg)
    data = bytearray(path.read_bytes())
    data[victim.lsn % seg + victim.total_len - 1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PgWaldumpError, match="incorrect resource manager data checksum"):
        waldump(copy, start)
