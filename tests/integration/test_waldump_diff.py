"""`pagestore waldump` against the real pg_waldump, record by record.

Acceptance of the WAL decoder: over the WAL of (a) pgbench -i -s 5 + 2000 transactions
and (b) the maintenance workload with wal_compression lz4 and zstd, both tools see the
same records: same LSNs, rmgrs, xids, total lengths and block references (relation, fork,
block, full-page-image flag).  No record missing, none extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.waldump import run_pg_waldump
from tests.workloads import run_maintenance, run_pgbench


def pagestore_waldump(wal_dir: Path, *extra: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "waldump", str(wal_dir), *extra],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def comparable(rec: dict) -> dict:
    return {"lsn": rec["lsn"], "rmgr": rec["rmgr"], "xid": rec["xid"],
            "total_len": rec["total_len"],
            "blocks": [(b["rel"], b["fork"], b["blk"], b["image"]) for b in rec["blocks"]]}


def assert_same_records(ours: list[dict], theirs: list[dict]) -> None:
    assert len(theirs) > 100
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        assert comparable(a) == comparable(b), f"record #{i} differs"
    assert len(ours) == len(theirs), (
        f"pagestore waldump saw {len(ours)} records, pg_waldump {len(theirs)}")


def _dump_both(cluster, pg_bin_dir: Path) -> tuple[list[dict], list[dict]]:
    cluster.stop()  # a clean shutdown: every record is on disk
    wal_dir = cluster.datadir / "pg_wal"
    theirs = [r.as_dict() for r in run_pg_waldump(pg_bin_dir, wal_dir).records]
    return pagestore_waldump(wal_dir), theirs


def test_pgbench_wal(pg_factory, pg_bin_dir: Path) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'1GB'"})
    result = run_pgbench(primary, scale=5, transactions=2000)
    assert result.processed == 2000
    ours, theirs = _dump_both(primary, pg_bin_dir)
    assert_same_records(ours, theirs)
    assert any(b["image"] for r in ours for b in r["blocks"])
    assert any(b["will_init"] for r in ours for b in r["blocks"])


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_maintenance_wal(pg_factory, pg_bin_dir: Path, compression: str) -> None:
    primary = pg_factory(settings={"wal_compression": compression, "wal_keep_size": "'1GB'"})
    run_maintenance(primary)
    ours, theirs = _dump_both(primary, pg_bin_dir)
    assert_same_records(ours, theirs)
    rmgrs = {r["rmgr"] for r in ours}
    assert {"Heap", "Heap2", "Btree", "Transaction", "Storage", "Database", "Sequence",
            "XLOG", "MultiXact", "RelMap"} <= rmgrs


def test_start_and_end_options(pg_factory, pg_bin_dir: Path) -> None:
    primary = pg_factory()
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g")
    primary.stop()
    wal_dir = primary.datadir / "pg_wal"
    everything = pagestore_waldump(wal_dir)
    start, end = everything[10]["lsn"], everything[40]["lsn"]
    window = pagestore_waldump(wal_dir, "--start", start, "--end", end)
    assert window == everything[10:40]
    theirs = [r.as_dict() for r in run_pg_waldump(pg_bin_dir, wal_dir, start, end).records]
    assert [comparable(r) for r in window] == [comparable(r) for r in theirs]


def _first_segment(wal_dir: Path) -> Path:
    return sorted(p for p in wal_dir.iterdir() if len(p.name) == 24)[0]


def test_corrupt_and_truncated_segments(pg_factory, work_dir: Path) -> None:
    primary = pg_factory()
    primary.psql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    primary.stop()
    seg = _first_segment(primary.datadir / "pg_wal")
    records = pagestore_waldump(seg.parent)
    # Flip one byte inside the body of a record in the middle of the segment.
    victim = records[len(records) // 2]
    hi, lo = victim["lsn"].split("/")
    offset = ((int(hi, 16) << 32) | int(lo, 16)) % (16 * 1024 * 1024) + 30
    broken = work_dir / "broken"
    broken.mkdir()
    data = bytearray(seg.read_bytes())
    data[offset] ^= 0xFF
    (broken / seg.name).write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "waldump", str(broken)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"at {victim['lsn']}" in proc.stderr and "checksum" in proc.stderr
    assert len(proc.stdout.splitlines()) == len(records) // 2  # everything before it
    # A segment cut short in the middle of the written WAL is an error, not an end.
    short = work_dir / "short"
    short.mkdir()
    (short / seg.name).write_bytes(bytes(seg.read_bytes()[: offset + 5000]))
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "waldump", str(short)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "truncated" in proc.stderr
