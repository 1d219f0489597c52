"""Branches: a timeline created at an LSN of its parent shares the parent's history,
without copying data: a full backup of the branch, through the gateway, is the parent's
database as of the branch point; bad branch points are refused."""

from __future__ import annotations

import json
import subprocess

from pagestore.lsn import Lsn
from tests.fixtures.restore import restore_backup
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import wait_until
from tests.integration.test_fullbackup_gateway import pgbench, snapshot
from tests.integration.test_ingest_service import attach, caught_up, status


def test_branch_reads_the_parent_below_the_branch_point(stack: StackRunner, pg_factory,
                                                        work_dir) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    pgbench(primary, "-i", "-s", "1")
    tenant, parent = attach(stack, primary)
    pgbench(primary, "-c", "2", "-t", "150")
    point = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    expected = snapshot(primary)
    pgbench(primary, "-c", "2", "-t", "150")  # the parent moves on
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, parent, end), timeout=120, what="caught up")

    branch = stack.run("timeline", "create", "--tenant", tenant, "--ancestor", parent,
                       "--ancestor-lsn", str(point)).stdout.strip()
    info = status(stack, tenant, branch)
    assert info["ancestor_timeline_id"] == parent
    assert Lsn.parse(info["ancestor_lsn"]) == Lsn((int(point) + 7) & ~7)
    assert info["state"] == "active"
    # No layer files were written for it.
    branch_dir = stack.workdir / "tenants" / tenant / "timelines" / branch
    assert branch_dir.is_dir() and not any(branch_dir.iterdir())

    port = stack.status()["services"]["gateway"]["port"]
    out = work_dir / "branch.tar"
    subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port),
                    "-c", f"fullbackup {tenant} {branch}", "-o", str(out)],
                   check=True, capture_output=True, timeout=600)
    restored = restore_backup(out, work_dir / "restored", primary)
    restored.start()
    try:
        assert snapshot(restored) == expected
    finally:
        restored.stop()
    assert snapshot(primary) != expected  # the parent really moved on

    # Branch points outside the parent's readable history are refused.
    too_far = stack.run("timeline", "create", "--tenant", tenant, "--ancestor", parent,
                        "--ancestor-lsn", str(Lsn(end + (1 << 30))), check=False)
    assert too_far.returncode == 2 and "beyond the last record" in too_far.stderr
    too_early = stack.run("timeline", "create", "--tenant", tenant, "--ancestor", parent,
                          "--ancestor-lsn", "0/10", check=False)
    assert too_early.returncode == 2 and "first readable LSN" in too_early.stderr
    listed = json.loads(stack.run("timeline", "list", "--tenant", tenant, "--json").stdout)
    assert {t["timeline_id"] for t in listed} == {parent, branch}
    stack.allowed_errors.append(r"rpc failed")
