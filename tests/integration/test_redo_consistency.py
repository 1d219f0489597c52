"""Acceptance of WAL redo: every block of every relation (main and visibility-map forks)
rebuilt from the imported base backup plus the WAL equals the primary's own block after
CHECKPOINT and a clean shutdown, under wal_consistency_checking's masks (VM pages bit for
bit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.consistency import compare, pg_basebackup, rebuild, relation_kinds
from tests.workloads import run_maintenance, run_pgbench, run_sql_file


def _pgbench(primary) -> None:
    run_pgbench(primary, scale=10, transactions=5000, clients=4)


WORKLOADS = {
    "pgbench": _pgbench,
    "maintenance": run_maintenance,
    "btree": lambda p: run_sql_file(p, "btree.sql"),
    "visibility": lambda p: run_sql_file(p, "visibility.sql"),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_pages_match_the_primary(pg_factory, work_dir: Path, workload: str) -> None:
    primary = pg_factory(settings={"full_page_writes": "on", "wal_keep_size": "'4GB'",
                                   "max_wal_size": "'4GB'"})
    start = pg_basebackup(primary, work_dir / "backup")
    WORKLOADS[workload](primary)
    primary.psql("CHECKPOINT")
    kinds = relation_kinds(primary)
    primary.stop()
    rebuilt = rebuild(work_dir / "backup", start, primary.datadir / "pg_wal", work_dir / "rebuild")
    report = compare(rebuilt, primary.datadir, kinds)
    assert not report.mismatches, "\n".join(report.mismatches)
    assert report.compared["Heap"] > 100 and report.compared["Btree"] > 50, report.compared
    if workload in ("pgbench", "visibility"):
        assert report.compared["vm"] > 0


@pytest.mark.parametrize("workload", ["maintenance", "visibility"])
def test_pages_equal_a_standby_byte_for_byte(pg_factory, work_dir: Path, workload: str) -> None:
    """The sharpest oracle: a physical standby started from the same base backup, after
    replaying to the end and a clean shutdown, has exactly our pages."""
    from pagestore.lsn import Lsn
    from pagestore.pg.cluster import free_port
    from tests.fixtures.consistency import compare_exact, start_standby
    from tests.fixtures.util import wait_until

    primary = pg_factory(settings={"full_page_writes": "on", "wal_keep_size": "'4GB'",
                                   "max_wal_size": "'4GB'"})
    start = pg_basebackup(primary, work_dir / "backup")
    standby = start_standby(primary, work_dir / "backup", work_dir / "standby", free_port())
    try:
        WORKLOADS[workload](primary)
        primary.psql("CHECKPOINT")
        primary.stop()
        rebuilt = rebuild(work_dir / "backup", start, primary.datadir / "pg_wal",
                          work_dir / "rebuild")
        wait_until(lambda: Lsn.parse(standby.psql("SELECT pg_last_wal_replay_lsn()"))
                   >= rebuilt.lsn, timeout=120, what="standby replayed everything")
    finally:
        standby.stop()
    report = compare_exact(rebuilt, standby.datadir)
    assert not report.mismatches, "\n".join(report.mismatches)
    assert report.compared["main"] > 100
