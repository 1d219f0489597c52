"""The record-level oracle over the acceptance workloads: with wal_consistency_checking =
all, `pagestore redo-check` replays every record with pagestore's redo and compares each
block with PostgreSQL's own after-image.  No mismatch, and nothing unsupported."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import record_redo_check_coverage
from tests.workloads import run_maintenance, run_pgbench, run_sql_file

WORKLOADS = {
    "pgbench": lambda p: run_pgbench(p, scale=10, transactions=5000, clients=4),
    "maintenance": run_maintenance,
    "btree": lambda p: run_sql_file(p, "btree.sql"),
    "visibility": lambda p: run_sql_file(p, "visibility.sql"),
    "brin": lambda p: run_sql_file(p, "brin.sql"),
    "gist": lambda p: run_sql_file(p, "gist.sql"),
    "hash": lambda p: run_sql_file(p, "hash.sql"),
    "gin": lambda p: run_sql_file(p, "gin.sql"),
    "spgist": lambda p: run_sql_file(p, "spgist.sql"),
}

#: Record types each AM workload must have checked.  Left out, because the primary always
#: logs the block as an image to apply (nothing to redo, so nothing to check): Hash
#: SPLIT_PAGE (0x50, REGBUF_FORCE_IMAGE) and Gin VACUUM_PAGE (0x40, always a full image).
MUST_CHECK = {
    "gist": {"Gist/0x00", "Gist/0x10", "Gist/0x30", "Gist/0x60"},
    "brin": {f"BRIN/{info:#04x}" for info in (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x90, 0xa0)},
    "hash": {f"Hash/{info:#04x}" for info in (0x00, 0x10, 0x20, 0x30, 0x40, 0x60, 0x70, 0x80,
                                               0x90, 0xa0, 0xb0, 0xc0)},
    "gin": {f"Gin/{info:#04x}" for info in (0x10, 0x20, 0x30, 0x50, 0x60, 0x70, 0x80, 0x90)},
    "spgist": {f"SPGist/{info:#04x}" for info in range(0x10, 0x90, 0x10)},
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_redo_check_passes(pg_factory, wal_coverage, workload: str) -> None:
    primary = pg_factory(settings={"wal_consistency_checking": "'all'", "full_page_writes": "on",
                                   "wal_keep_size": "'8GB'", "max_wal_size": "'8GB'"})
    WORKLOADS[workload](primary)
    primary.stop()
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "redo-check",
                           str(primary.datadir / "pg_wal"), "--all"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    record_redo_check_coverage(wal_coverage, proc.stdout)
    m = re.search(r"(\d+) records, (\d+) blocks checked, 0 mismatches", proc.stdout)
    assert m, proc.stdout
    assert int(m.group(2)) > 1000
    assert "unsupported" not in proc.stdout, proc.stdout
    checked = set(re.findall(r"checked\s+(\S+)", proc.stdout))
    assert {"Heap/0x00", "Btree/0x00"} <= checked
    if workload == "btree":
        assert {"Btree/0x30", "Btree/0x60"} & checked  # splits, dedup
    assert MUST_CHECK.get(workload, set()) <= checked, checked


def test_redo_check_finds_a_wrong_redo(pg_factory, monkeypatch) -> None:
    """The oracle can fail: a redo that gets one byte of tuple data wrong (something no
    mask hides) is reported, with the record."""
    from pagestore.pg.walfiles import find_segments, read_wal_records
    from pagestore.redo import heap
    from pagestore.redo.check import check_records
    from pagestore.redo.context import RedoContext

    primary = pg_factory(settings={"wal_consistency_checking": "'heap'"})
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    primary.psql("INSERT INTO t VALUES (1)")
    primary.stop()
    real = heap.redo_block

    def broken(ctx, rec, block_id, page):
        real(ctx, rec, block_id, page)
        word = int.from_bytes(page[24:28], "little")  # line pointer 1
        off, length = word & 0x7FFF, word >> 17
        page[off + length - 1] ^= 0x01  # the last byte of its tuple data

    monkeypatch.setattr(heap, "redo_block", broken)
    mismatches = list(check_records(read_wal_records(find_segments([primary.datadir / "pg_wal"])),
                                    RedoContext()))
    assert mismatches and mismatches[0].rmgr == "Heap"


def test_postgresql_own_redo_diverges_on_gist_delete(pg_factory, work_dir) -> None:
    """The divergence check.py sets aside (POSTGRES_DIVERGENCES) is PostgreSQL's own: a
    standby replaying gist.sql's WAL, with the primary's check images, stops with
    "inconsistent page found" on a Gist/DELETE record."""
    from tests.fixtures.consistency import replay_with_postgres
    from tests.fixtures.postgres import pg_basebackup
    from tests.fixtures.standby import last_checkpoint

    primary = pg_factory(settings={"wal_consistency_checking": "'gist'",
                                   "wal_keep_size": "'8GB'", "max_wal_size": "'8GB'"})
    pg_basebackup(primary, work_dir / "base")
    run_sql_file(primary, "gist.sql")
    primary.stop()
    with pytest.raises(AssertionError) as failed:
        replay_with_postgres(primary, work_dir / "base", work_dir / "standby",
                             last_checkpoint(primary))
    log = str(failed.value)
    assert "inconsistent page found" in log and "Gist/DELETE" in log, log[-2000:]
