"""PostgreSQL's own regression suite as the workload (parallel_schedule of the installed
version's source package, regress.so built by scripts/build-pg-regress).

- Through the stack: a primary attached to pagestore runs the whole suite; every page of
  every WAL-logged fork of every relation of every database served by pagestore equals,
  byte for byte, a physical standby's replay of the same WAL from the same base images,
  at the final LSN and at an LSN in the middle of the suite (a second standby stopped
  there with recovery_target_lsn).
- The record-level oracle: the suite again with wal_consistency_checking = all; every
  block of every record redone by pagestore equals PostgreSQL's after-image under the
  rmgr's mask, and no record is unsupported.

Both take minutes, so they carry the ``regression_suite`` marker: the default pytest run
leaves them out, and scripts/test (CI's command) runs them after it (docs/testing.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pagestore.lsn import Lsn
from tests.conftest import record_redo_check_coverage
from tests.fixtures.consistency import replay_with_postgres
from tests.fixtures.postgres import pg_basebackup
from tests.fixtures.stack import StackRunner
from tests.fixtures.standby import (
    PageApiClient,
    compare_every_relation,
    last_checkpoint,
)
from tests.fixtures.util import wait_until
from tests.integration.test_ingest_service import attach, status
from tests.workloads import regression_schedule, run_regression_suite

pytestmark = pytest.mark.regression_suite

#: Every index access method's pages must be among those compared.
PAGE_KINDS = {"heap", "btree", "hash", "gin", "gist", "spgist", "brin", "sequence"}


def test_regression_suite_through_pagestore(stack: StackRunner, pg_factory,
                                            work_dir: Path) -> None:
    # autovacuum off: nothing may change the primary's files without WAL between our base
    # backup and the standby's (tests/fixtures/standby.py).
    primary = pg_factory(settings={"wal_keep_size": "'16GB'", "max_wal_size": "'4GB'",
                                   "autovacuum": "off", "max_connections": "40"})
    groups = regression_schedule()
    # Layers flushed within a second, so the flush position the primary's walsender waits
    # for at shutdown keeps up.
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    standby_base = work_dir / "standby-base"
    pg_basebackup(primary, standby_base)

    first = run_regression_suite(primary, work_dir, groups[:len(groups) // 2],
                                 create_database=True)
    # The middle: a record whose end LSN pagestore is read at, and before the next of
    # which the second standby stops (recovery_target_inclusive = off).
    middle = Lsn.parse(primary.psql(
        "SELECT pg_logical_emit_message(false, 'pagestore', 'middle of the suite')"))
    second = run_regression_suite(primary, work_dir, groups[len(groups) // 2:],
                                  create_database=False)
    ran = first.tests + second.tests
    assert ran > 200, first.output[-2000:] + second.output[-2000:]
    # A few tests differ from expected/ for reasons of this environment (the workload,
    # not their output, is the point); most pass, so the suite really ran.
    failed = first.failed + second.failed
    assert len(failed) < ran // 10, failed

    primary.stop()
    last_record = last_checkpoint(primary)

    def lsns() -> tuple[Lsn, Lsn]:
        st = status(stack, tenant, timeline)
        return Lsn.parse(st["last_record_lsn"]), Lsn.parse(st["disk_consistent_lsn"])

    wait_until(lambda: lsns()[0] > last_record and lsns()[1] >= lsns()[0], timeout=600,
               interval=0.5, what="the whole suite ingested and flushed")
    final = lsns()[0]
    final_standby = replay_with_postgres(primary, standby_base, work_dir / "standby-final",
                                         last_record, timeout=900)
    middle_standby = replay_with_postgres(primary, standby_base, work_dir / "standby-middle",
                                          middle, timeout=900, inclusive=False)
    client = PageApiClient(stack.status()["services"]["pageread"]["port"], tenant, timeline)
    try:
        results = {"middle": compare_every_relation(client, middle, middle_standby),
                   "final": compare_every_relation(client, final, final_standby)}
    finally:
        client.close()
    for name, result in results.items():
        print(f"{name}: {result.relations} relations, byte-equal pages: "
              + ", ".join(f"{k} {v}" for k, v in sorted(result.compared.items())))
        assert not result.mismatches, f"{name}:\n" + "\n".join(result.mismatches)
        assert result.compared["main"] > 10000, result.compared
    # Every index AM the suite uses was compared (pages, not just relations), at the end
    # and in the middle; and the two points differ (the middle is not the end).
    for name, result in results.items():
        assert PAGE_KINDS <= set(result.compared), (name, result.compared)
    assert results["middle"].compared["main"] != results["final"].compared["main"]


def test_regression_suite_record_level_oracle(pg_factory, wal_coverage,
                                              work_dir: Path) -> None:
    primary = pg_factory(settings={"wal_consistency_checking": "'all'",
                                   "full_page_writes": "on", "wal_keep_size": "'32GB'",
                                   "max_wal_size": "'32GB'", "max_connections": "40"})
    suite = run_regression_suite(primary, work_dir, regression_schedule(),
                                 create_database=True)
    assert suite.tests > 200 and len(suite.failed) < suite.tests // 10, suite.failed
    primary.stop()
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "redo-check",
                           str(primary.datadir / "pg_wal"), "--all"],
                          capture_output=True, text=True, timeout=1800)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    record_redo_check_coverage(wal_coverage, proc.stdout)
    m = re.search(r"(\d+) records, (\d+) blocks checked, 0 mismatches", proc.stdout)
    assert m and int(m.group(1)) > 500_000, proc.stdout[-3000:]
    assert "unsupported" not in proc.stdout, proc.stdout
    checked = {kind.split("/")[0] for kind in re.findall(r"checked\s+(\S+)", proc.stdout)}
    assert {"Heap", "Heap2", "Btree", "Hash", "Gin", "Gist", "SPGist", "BRIN",
            "Sequence"} <= checked, checked
