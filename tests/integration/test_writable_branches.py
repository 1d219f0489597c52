"""Writable branches (issue 14): a branch's full backup starts a vanilla PostgreSQL, and
`pagestore timeline attach-source` makes pagestore ingest what that PostgreSQL writes.
Parent and child then take different writes; each timeline's full backup at its latest
LSN is its own primary's database, and the parent's at the branch point is still the
parent's database as of then.  A PostgreSQL of another system, and the parent's primary
for a child that has WAL of its own, are refused with nothing changed."""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING

import pytest

from pagestore.lsn import Lsn
from pagestore.pg.replication import timeline_slot_name
from tests.fixtures.restore import restore_backup
from tests.fixtures.util import wait_until
from tests.integration.test_fullbackup_gateway import pgbench, snapshot
from tests.integration.test_ingest_service import attach, caught_up, status

if TYPE_CHECKING:
    from pathlib import Path

    from pagestore.pg.cluster import PgCluster
    from tests.fixtures.stack import StackRunner

CHILD_ONLY = ("SELECT count(*), md5(string_agg(g || ':' || v, ',' ORDER BY g)) "
              "FROM child_only")


def _source(pg: PgCluster) -> str:
    return f"host=127.0.0.1 port={pg.port} user={pg.user}"


def _fullbackup(stack: StackRunner, pg: PgCluster, tenant: str, timeline: str, lsn: Lsn,
                out: Path) -> Path:
    port = stack.status()["services"]["gateway"]["port"]
    subprocess.run([pg.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port),
                    "-c", f"fullbackup {tenant} {timeline} {lsn}", "-o", str(out)],
                   check=True, capture_output=True, timeout=600)
    return out


def _restored_snapshot(stack: StackRunner, pg: PgCluster, tenant: str, timeline: str,
                       lsn: Lsn, root: Path, extra: str | None = None) -> dict[str, str]:
    """The pgbench tables (and ``extra``) of a vanilla PostgreSQL started from the
    timeline's full backup at ``lsn``."""
    restored = restore_backup(_fullbackup(stack, pg, tenant, timeline, lsn,
                                          root.with_suffix(".tar")), root, pg)
    restored.start()
    try:
        got = snapshot(restored)
        if extra is not None:
            got["extra"] = restored.psql(extra)
        return got
    finally:
        restored.stop()


def _settled_lsn(stack: StackRunner, tenant: str, timeline: str, pg: PgCluster) -> Lsn:
    """Once ``pg`` has stopped writing: wait until pagestore has ingested its WAL, and
    return the timeline's last record (the state there is the primary's now)."""
    end = Lsn.parse(pg.psql("SELECT pg_current_wal_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=120,
               what=f"timeline {timeline} caught up with {end}")
    return Lsn.parse(status(stack, tenant, timeline)["last_record_lsn"])


def _slots(pg: PgCluster) -> list[str]:
    out = pg.psql("SELECT slot_name FROM pg_replication_slots ORDER BY 1")
    return out.split() if out else []


@pytest.mark.slow
def test_writable_branch(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    parent_pg = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    pgbench(parent_pg, "-i", "-s", "1")
    tenant, parent = attach(stack, parent_pg)
    pgbench(parent_pg, "-c", "2", "-t", "100")

    # The branch point: writes have stopped, so the parent's state now is its state at X.
    x = Lsn.parse(parent_pg.psql("SELECT pg_current_wal_insert_lsn()"))
    at_x = snapshot(parent_pg)
    wait_until(lambda: caught_up(stack, tenant, parent, x), timeout=120, what="caught up")
    branch = stack.run("timeline", "create", "--tenant", tenant, "--ancestor", parent,
                       "--ancestor-lsn", str(x)).stdout.strip()
    info = status(stack, tenant, branch)
    assert Lsn.parse(info["ancestor_lsn"]) == x
    assert Lsn.parse(info["last_record_lsn"]) == Lsn.parse(info["disk_consistent_lsn"]) == x
    assert info["wal_source"] is None and info["slot"]["status"] == "none"

    # A vanilla PostgreSQL started from the branch's full backup at X is the child.
    child = restore_backup(_fullbackup(stack, parent_pg, tenant, branch, x,
                                       work_dir / "branch.tar"), work_dir / "child", parent_pg)
    with open(child.datadir / "postgresql.conf", "a") as f:
        f.write("autovacuum = off\n")
    child.start()
    try:
        assert snapshot(child) == at_x

        # Another database system is refused, and nothing changes: no source, no slot.
        other = pg_factory()
        other_id = other.psql("SELECT system_identifier FROM pg_control_system()")
        own_id = parent_pg.psql("SELECT system_identifier FROM pg_control_system()")
        refused = stack.run("timeline", "attach-source", "--tenant", tenant, "--timeline",
                            branch, "--wal-source", _source(other), check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert (f"system identifier {other_id}, the timeline's is {own_id}"
                in refused.stderr), refused.stderr
        info = status(stack, tenant, branch)
        assert info["wal_source"] is None and Lsn.parse(info["last_record_lsn"]) == x
        assert _slots(other) == []

        # The parent's primary at X is not a PostgreSQL started from the branch's backup:
        # a branch with no WAL of its own takes only one (its first record is the backup's
        # shutdown checkpoint at X), never the parent's history by mistake.
        refused = stack.run("timeline", "attach-source", "--tenant", tenant, "--timeline",
                            branch, "--wal-source", _source(parent_pg), check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "not a PostgreSQL started from" in refused.stderr, refused.stderr
        assert status(stack, tenant, branch)["wal_source"] is None
        assert timeline_slot_name(branch) not in _slots(parent_pg)

        # The child: attached right after it started (its WAL from X is still there).
        out = stack.run("timeline", "attach-source", "--tenant", tenant, "--timeline",
                        branch, "--wal-source", _source(child)).stdout
        assert "no earlier WAL source" in out, out
        assert _slots(child) == [timeline_slot_name(branch)]
        info = status(stack, tenant, branch)
        assert info["wal_source"] == _source(child) and info["slot"]["status"] == "present"

        # Different writes on each side.
        pgbench(parent_pg, "-c", "2", "-t", "200")
        pgbench(child, "-c", "1", "-t", "120")
        child.psql("CREATE TABLE child_only AS SELECT g, md5(g::text) AS v "
                   "FROM generate_series(1, 3000) g")

        # A restarted ingest resumes the branch (its state read through the parent) from
        # disk_consistent_lsn, through its slot.
        stack.kill("ingest")
        stack.run("start")

        # The same server by another name: the switch keeps its slot.
        same = f"postgresql://{child.user}@127.0.0.1:{child.port}/postgres"
        out = stack.run("timeline", "attach-source", "--tenant", tenant, "--timeline",
                        branch, "--wal-source", same).stdout
        assert "same server" in out, out
        assert _slots(child) == [timeline_slot_name(branch)]

        # The parent's primary does not continue the child's history: refused, and the
        # child goes on streaming from its own primary.
        child_at = Lsn.parse(child.psql("SELECT pg_current_wal_lsn()"))
        parent_pg.psql("CREATE TABLE filler (x int)")
        while Lsn.parse(parent_pg.psql("SELECT pg_current_wal_lsn()")) <= child_at:
            parent_pg.psql("INSERT INTO filler SELECT generate_series(1, 50000)")
        refused = stack.run("timeline", "attach-source", "--tenant", tenant, "--timeline",
                            branch, "--wal-source", _source(parent_pg), check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "does not continue the history" in refused.stderr, refused.stderr
        assert timeline_slot_name(branch) not in _slots(parent_pg)
        assert status(stack, tenant, branch)["wal_source"] == same
        child.psql("INSERT INTO child_only VALUES (0, 'after the refused attach')")

        # Each timeline's latest full backup is its own primary's database.
        parent_end = _settled_lsn(stack, tenant, parent, parent_pg)
        child_end = _settled_lsn(stack, tenant, branch, child)
        parent_now, child_now = snapshot(parent_pg), snapshot(child)
        child_now["extra"] = child.psql(CHILD_ONLY)
        assert parent_now != child_now and parent_now != at_x
        # Image layers of the branch hold its whole key space: the pages it never wrote
        # come from the parent as of the branch point (read below through them).
        report = json.loads(stack.run("timeline", "compact", "--tenant", tenant, "--timeline",
                                      branch, "--force-l0", "--force-images", "--json").stdout)
        assert report["images_created"] > 0, report
        assert _restored_snapshot(stack, parent_pg, tenant, branch, child_end,
                                  work_dir / "child-latest", CHILD_ONLY) == child_now
        assert _restored_snapshot(stack, parent_pg, tenant, parent, parent_end,
                                  work_dir / "parent-latest") == parent_now
        # ... and the parent's at the branch point is still the parent's as of then.
        assert _restored_snapshot(stack, parent_pg, tenant, parent, x,
                                  work_dir / "parent-at-x") == at_x
    finally:
        child.stop()
    stack.allowed_errors.append(r"rpc failed")
