"""Acceptance of WAL redo: every block of every relation (main and visibility-map forks)
rebuilt from the imported base backup plus the WAL equals the primary's own block after
CHECKPOINT and a clean shutdown, under wal_consistency_checking's masks (VM pages bit for
bit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.consistency import compare, rebuild, relation_kinds
from tests.fixtures.postgres import pg_basebackup
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
def test_pages_equal_postgres_replay_byte_for_byte(pg_factory, work_dir: Path,
                                                   workload: str) -> None:
    """The sharpest oracle: PostgreSQL replaying the same WAL from the same base backup
    (as a standby would), then shutting down, has exactly our pages, byte for byte."""
    from tests.fixtures.consistency import compare_exact, replay_with_postgres

    primary = pg_factory(settings={"full_page_writes": "on", "wal_keep_size": "'4GB'",
                                   "max_wal_size": "'4GB'"})
    start = pg_basebackup(primary, work_dir / "backup")
    WORKLOADS[workload](primary)
    primary.psql("CHECKPOINT")
    primary.stop()
    rebuilt = rebuild(work_dir / "backup", start, primary.datadir / "pg_wal", work_dir / "rebuild")
    replica = replay_with_postgres(primary, work_dir / "backup", work_dir / "replica",
                                   rebuilt.last_record)
    report = compare_exact(rebuilt, replica)
    assert not report.mismatches, "\n".join(report.mismatches)
    assert report.compared["main"] > 100
