"""Issue 10 acceptance: compaction, image layers and GC keep every page PostgreSQL has.

- After L0 compaction, image creation and GC with pitr_interval 0, every page at the
  latest LSN equals a physical standby's replay of the same WAL, byte for byte, including
  relations that were truncated, dropped and re-created; layer bytes stay within 2x the
  primary's data size; and reads running all the while (GetPages at one LSN, while layers
  are swapped and removed) never fail and never change.
- A PITR window keeps an earlier LSN readable (a full backup there starts and matches the
  primary's data then); once the window closes, a read there is an error naming the
  cutoff.  A branch made before GC, and an LSN lease, keep their pages.
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import TYPE_CHECKING

import grpc
import pytest

from pagestore.keys import ForkNumber, RelTag
from pagestore.lsn import Lsn
from pagestore.proto import page_service_pb2 as pb
from tests.fixtures.consistency import relation_kinds, replay_with_postgres
from tests.fixtures.postgres import pg_basebackup
from tests.fixtures.restore import restore_backup
from tests.fixtures.standby import PageApiClient, compare_with_standby, last_checkpoint
from tests.fixtures.util import wait_until
from tests.integration.test_fullbackup_gateway import pgbench, snapshot
from tests.integration.test_ingest_service import attach, status

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.stack import StackRunner

#: Housekeeping only when asked (each test runs the steps itself), small layers.
SETTINGS = ("ingest.checkpoint_distance=262144", "ingest.checkpoint_timeout='1s'",
            "tenant.compaction_period='0s'", "tenant.gc_period='0s'",
            "tenant.compaction_threshold=3", "tenant.compaction_target_size=4194304")


def run_json(stack: StackRunner, *args: str) -> dict:
    return json.loads(stack.run(*args, "--json", timeout=600).stdout)


def compact(stack: StackRunner, tenant: str, timeline: str, *flags: str) -> dict:
    return run_json(stack, "timeline", "compact", "--tenant", tenant, "--timeline", timeline,
                    *flags)


def gc(stack: StackRunner, tenant: str, timeline: str) -> dict:
    return run_json(stack, "timeline", "gc", "--tenant", tenant, "--timeline", timeline)


def flushed_to(stack: StackRunner, tenant: str, timeline: str, lsn: Lsn) -> Lsn:
    """Wait until ingest has flushed WAL past ``lsn``; the disk_consistent_lsn then."""
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"]) >= lsn,
               timeout=120, what=f"layers flushed past {lsn}")
    return Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])


def layer_bytes(stack: StackRunner, tenant: str, timeline: str) -> dict[str, dict[str, int]]:
    return status(stack, tenant, timeline)["layers"]


def client(stack: StackRunner, tenant: str, timeline: str) -> PageApiClient:
    return PageApiClient(stack.status()["services"]["pageread"]["port"], tenant, timeline)


def read_forks(c: PageApiClient, db: int, lsn: Lsn) -> dict[RelTag, list[bytes]]:
    """Every page of every main fork of a database at ``lsn``."""
    forks = [(rel, n) for rel, n in c.relations(1663, db, lsn).items()
             if rel.forknum == ForkNumber.MAIN and n]
    return dict(c.pages(forks, lsn))


def test_compaction_images_and_gc_keep_every_page(stack: StackRunner, pg_factory,
                                                  work_dir: Path) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    pgbench(primary, "-i", "-s", "1")
    primary.psql("CHECKPOINT")
    stack.init(*SETTINGS, "tenant.pitr_interval='0s'", "tenant.gc_horizon=0")
    stack.start()
    tenant, timeline = attach(stack, primary)
    standby_base = work_dir / "standby-base"
    pg_basebackup(primary, standby_base)
    db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))

    pgbench(primary, "-c", "2", "-t", "300")
    # Truncated, dropped, re-created relations.
    primary.psql("CREATE TABLE shrink AS SELECT i, repeat('x', 200) AS t "
                 "FROM generate_series(1, 20000) i")
    primary.psql("DELETE FROM shrink WHERE i > 500")
    primary.psql("VACUUM shrink")  # truncates the relation
    primary.psql("CREATE TABLE dropme AS SELECT generate_series(1, 5000) AS i")
    primary.psql("DROP TABLE dropme")
    primary.psql("CREATE TABLE again (i int, t text)")
    primary.psql("INSERT INTO again SELECT i, 'first' FROM generate_series(1, 3000) i")
    primary.psql("DROP TABLE again")
    primary.psql("CREATE TABLE again (i int, t text)")
    primary.psql("INSERT INTO again SELECT i, 'second' FROM generate_series(1, 2000) i")
    primary.psql("TRUNCATE pgbench_history")
    pgbench(primary, "-c", "2", "-t", "300")
    data_size = int(primary.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
    kinds = relation_kinds(primary)
    # The primary stops: its shutdown checkpoint is the last record, nothing moves after.
    primary.stop()
    last_record = last_checkpoint(primary)
    final = flushed_to(stack, tenant, timeline, Lsn(last_record + 1))
    before = layer_bytes(stack, tenant, timeline)
    assert before["l0"]["count"] >= 3, before
    c = client(stack, tenant, timeline)
    reference = read_forks(c, db, final)
    assert sum(len(p) for p in reference.values()) > 500

    # Reads at `final` all along, while layers are swapped and removed under them.
    passes: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        rc = client(stack, tenant, timeline)
        try:
            while not stop.is_set():
                got = read_forks(rc, db, final)
                if got != reference:
                    problems.append(f"pass {len(passes)}: pages differ")
                passes.append(1)
        except (AssertionError, grpc.RpcError) as e:
            problems.append(f"pass {len(passes)}: {e}")
        finally:
            rc.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        done = compact(stack, tenant, timeline, "--force-images")
        assert done["l0_compacted"] >= 3 and done["l1_created"] >= 1, done
        assert done["images_created"] >= 2 and done["image_lsn"] == str(final), done
        removed = gc(stack, tenant, timeline)
        # The images at `final` hold everything: every older layer goes.
        assert removed["gc_cutoff_lsn"] == str(final), removed
        assert removed["layers_removed"] >= 2 and removed["layers_needed_by_cutoff"] == \
            done["images_created"], removed
        done_at = len(passes)
        wait_until(lambda: len(passes) >= done_at + 2 or problems, timeout=120,
                   what="reads after GC")
    finally:
        stop.set()
        t.join(timeout=120)
    assert not problems, problems[:3]
    after = layer_bytes(stack, tenant, timeline)
    assert after["image"]["count"] == done["images_created"] and after["l1"]["count"] == 0
    total = sum(v["bytes"] for v in after.values())
    assert total <= 2 * data_size, (after, data_size)
    assert total < sum(v["bytes"] for v in before.values()), (before, after)

    # Every page against PostgreSQL's own replay of the same WAL.
    datadir = replay_with_postgres(primary, standby_base, work_dir / "standby", last_record)
    result = compare_with_standby(c, final, datadir, kinds)
    c.close()
    assert not result.mismatches, "\n".join(result.mismatches)
    assert result.compared["main"] > 500 and result.compared["vm"] > 0


@pytest.mark.slow
def test_pitr_window_branches_and_leases(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    pgbench(primary, "-i", "-s", "1")
    stack.init(*SETTINGS, "tenant.gc_horizon=0")
    stack.start()
    tenant, timeline = attach(stack, primary)
    db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
    accounts = RelTag(1663, db, int(primary.psql(
        "SELECT pg_relation_filenode('pgbench_accounts')")), 0)

    pgbench(primary, "-c", "2", "-t", "200")
    early = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    early_data = snapshot(primary)
    pgbench(primary, "-c", "2", "-t", "200")
    branch_at = flushed_to(stack, tenant, timeline,
                           Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()")))
    branch = stack.run("timeline", "create", "--tenant", tenant, "--ancestor", timeline,
                       "--ancestor-lsn", str(branch_at)).stdout.strip()
    bc = client(stack, tenant, branch)
    branch_pages = read_forks(bc, db, branch_at)
    pgbench(primary, "-c", "2", "-t", "200")
    leased = flushed_to(stack, tenant, timeline,
                        Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()")))
    c = client(stack, tenant, timeline)
    leased_pages = read_forks(c, db, leased)
    lease = c.stub.LeaseLsn(pb.LeaseLsnRequest(lsn=int(leased)), metadata=c.md, timeout=30)
    assert lease.expires.seconds > 0
    pgbench(primary, "-c", "2", "-t", "200")
    flushed_to(stack, tenant, timeline, Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()")))

    # A PITR window of an hour covers everything: GC keeps `early` readable.
    config = json.loads(stack.run("tenant", "config", "--tenant", tenant,
                                  "pitr_interval='1h'", "--json").stdout)
    assert config["effective"]["pitr_interval"] == "'1h'" and "pitr_interval" in config["overrides"]
    done = compact(stack, tenant, timeline, "--force-l0", "--force-images")
    assert done["l1_created"] >= 1 and done["images_created"] >= 1, done
    kept = gc(stack, tenant, timeline)
    assert Lsn.parse(kept["gc_cutoff_lsn"]) < early, kept
    port = stack.status()["services"]["gateway"]["port"]
    backup = work_dir / "early.tar"
    subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port),
                    "-c", f"fullbackup {tenant} {timeline} {early}", "-o", str(backup)],
                   check=True, capture_output=True, timeout=600)
    restored = restore_backup(backup, work_dir / "restored", primary)
    restored.start()
    try:
        assert snapshot(restored) == early_data
    finally:
        restored.stop()

    # More history, compacted with images above it; then the window closes: the cutoff
    # moves up to the newest flush; `early` is gone with a clear error, the branch point
    # and the lease keep theirs.
    pgbench(primary, "-c", "2", "-t", "200")
    flushed_to(stack, tenant, timeline, Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()")))
    again = compact(stack, tenant, timeline, "--force-l0", "--force-images")
    assert again["l1_created"] >= 1 and again["images_created"] >= 1, again
    stack.run("tenant", "config", "--tenant", tenant, "pitr_interval='0s'")
    removed = gc(stack, tenant, timeline)
    cutoff = Lsn.parse(removed["gc_cutoff_lsn"])
    assert cutoff > leased > branch_at > early, removed
    # What the last round wrote above the branch point and the lease is superseded by its
    # images and goes; the branch point keeps the layers below it.
    assert removed["layers_removed"] >= 1 and removed["layers_needed_by_branches"] >= 1, removed
    assert status(stack, tenant, timeline)["gc_cutoff_lsn"] == str(cutoff)

    def refused() -> str:
        """The error a read at `early` gets, once pageread has the new map (its reload on
        the catalog's notification follows GC's commit)."""
        try:
            list(c.pages([(accounts, 1)], early))
        except AssertionError as e:
            return str(e)
        return ""

    error = wait_until(refused, timeout=30, what="reads below the new cutoff refused")
    assert f"garbage collected. requested at {early} gc cutoff {cutoff}" in error, error
    out = subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port),
                          "-c", f"fullbackup {tenant} {timeline} {early}",
                          "-o", str(work_dir / "gone.tar")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode != 0 and str(cutoff) in out.stderr, out.stderr
    assert read_forks(bc, db, branch_at) == branch_pages
    assert read_forks(c, db, leased) == leased_pages
    c.close()
    bc.close()

    # A bad setting names itself and changes nothing.
    bad = stack.run("tenant", "config", "--tenant", tenant, "pitr_intervall=1", check=False)
    assert bad.returncode != 0 and "unknown tenant setting 'pitr_intervall'" in bad.stderr
    bad = stack.run("tenant", "config", "--tenant", tenant, "gc_horizon='lots'", check=False)
    assert bad.returncode != 0 and "tenant.gc_horizon" in bad.stderr


def files_on_disk(stack: StackRunner, tenant: str, timeline: str) -> set[str]:
    """Complete layer files in the timeline's directory (not temporary ones)."""
    directory = stack.workdir / "tenants" / tenant / "timelines" / timeline
    return {p.name for p in directory.iterdir() if "__" in p.name and "___temp" not in p.name}


def registered(stack: StackRunner, tenant: str, timeline: str) -> int:
    return sum(v["count"] for v in layer_bytes(stack, tenant, timeline).values())


@pytest.mark.slow
def test_housekeeping_killed_or_failing_loses_nothing(stack: StackRunner, pg_factory) -> None:
    """Housekeeping killed after writing its files but before the swap, and after the swap
    but before unlinking what it replaced; GC failing before its commit.  Each time the
    next job cleans up, and every page read at a fixed LSN stays the same."""
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    pgbench(primary, "-i", "-s", "1")
    stack.init(*SETTINGS, "tenant.pitr_interval='0s'", "tenant.gc_horizon=0")
    stack.start()
    tenant, timeline = attach(stack, primary)
    db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
    pgbench(primary, "-c", "2", "-t", "300")
    primary.stop()  # nothing moves after its shutdown checkpoint
    at = flushed_to(stack, tenant, timeline, Lsn(last_checkpoint(primary) + 1))
    c = client(stack, tenant, timeline)
    reference = read_forks(c, db, at)
    stack.allowed_errors += [r"loop failed", r"pagestream request failed",
                             r"rpc failed with an unexpected error"]

    # Killed with its new L1 and image files written, before the catalog swap.
    before = registered(stack, tenant, timeline)
    stack.run("failpoint", "housekeeping", "housekeeping-before-swap", "1*kill")
    assert stack.run("timeline", "compact", "--tenant", tenant, "--timeline", timeline,
                     "--force-images", check=False).returncode != 0
    stack.run("start")  # housekeeping again (status goes through it)
    assert registered(stack, tenant, timeline) == before, "nothing was registered"
    assert len(files_on_disk(stack, tenant, timeline)) > before, "its files are left behind"
    done = compact(stack, tenant, timeline, "--force-images")
    assert done["l0_compacted"] >= 3 and done["images_created"] >= 1, done
    assert len(files_on_disk(stack, tenant, timeline)) == registered(stack, tenant, timeline)
    assert read_forks(c, db, at) == reference

    # GC fails before its commit: nothing changes; then it works.
    cutoff = status(stack, tenant, timeline)["gc_cutoff_lsn"]
    stack.run("failpoint", "housekeeping", "housekeeping-gc-before-commit", "1*return")
    failed = stack.run("timeline", "gc", "--tenant", tenant, "--timeline", timeline,
                       check=False)
    # A `return` failpoint stands for an unexpected error: INTERNAL, logged with its trace.
    assert failed.returncode != 0 and "internal error" in failed.stderr, failed.stderr
    assert status(stack, tenant, timeline)["gc_cutoff_lsn"] == cutoff
    assert len(files_on_disk(stack, tenant, timeline)) == registered(stack, tenant, timeline)

    # Killed after the swap, before unlinking the layers it replaced.
    stack.run("failpoint", "housekeeping", "housekeeping-after-swap", "1*kill")
    assert stack.run("timeline", "gc", "--tenant", tenant, "--timeline", timeline,
                     check=False).returncode != 0
    stack.run("start")
    assert Lsn.parse(status(stack, tenant, timeline)["gc_cutoff_lsn"]) >= at, "GC committed"
    left = len(files_on_disk(stack, tenant, timeline)) - registered(stack, tenant, timeline)
    assert left >= 1, "the replaced files are still on disk"
    compact(stack, tenant, timeline)  # sweeps before it works
    assert len(files_on_disk(stack, tenant, timeline)) == registered(stack, tenant, timeline)
    assert read_forks(c, db, at) == reference
    c.close()
    loops = {(lp["service"], lp["name"]): lp for lp in status(stack, tenant, timeline)["loops"]}
    assert loops[("housekeeping", "scheduler")]["state"] == "running", loops
    assert loops[("housekeeping", "jobs")]["state"] == "ok", loops
