"""Issue 11: remote storage under faults, a local disk budget, and generations.

- Uploads fail for a while (failpoint ``remote-upload`` in housekeeping): remote_consistent
  _lsn stops where the bucket's index is and never passes it, the replication slot on the
  primary stays at or below it (ingest reports it as its flush position) while
  disk_consistent_lsn moves on; once the store works again everything is uploaded.  With
  a local disk budget far below the timeline's layers, pageread evicts uploaded layers and
  reads them back with ranged GETs (some of which fail first: ``remote-download``), and
  every page still equals a physical standby's replay of the same WAL.
- Two nodes attached in turn: node B attaches the tenant from the bucket (generation 2)
  while node A (generation 1) still runs; A's compaction then wants to delete layers B's
  index names: A finds itself stale, deletes nothing and stops moving its
  remote_consistent_lsn; B's index is never overwritten; B serves the tenant's data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.remote.layout import index_key, read_latest_index
from tests.fixtures.consistency import relation_kinds
from tests.fixtures.postgres import pg_basebackup
from tests.fixtures.stack import StackRunner, processes_mentioning
from tests.fixtures.standby import stop_primary_and_compare
from tests.fixtures.util import wait_until
from tests.integration.test_fullbackup_gateway import pgbench, snapshot
from tests.integration.test_ingest_service import attach, caught_up, status
from tests.integration.test_remote_storage import fullbackup_matches, remote_lsn

if TYPE_CHECKING:
    from pathlib import Path

BASE = ("ingest.checkpoint_distance=262144", "ingest.checkpoint_timeout='1s'",
        "housekeeping.upload_period='0.3s'", "tenant.compaction_period='0s'",
        "tenant.gc_period='0s'")


def loop(st: dict, service: str, name: str) -> dict:
    found = [lp for lp in st["loops"] if lp["service"] == service and lp["name"] == name]
    assert found, f"no {service}/{name} loop in {st['loops']}"
    return found[0]


def evicted(stack: StackRunner, tenant: str, timeline: str) -> int:
    """Layer files pageread has evicted so far (its eviction loop's status line)."""
    m = re.search(r"evicted (\d+) files", loop(status(stack, tenant, timeline),
                                                "pageread", "eviction")["detail"])
    return int(m.group(1)) if m else 0


@pytest.mark.slow
def test_upload_and_download_faults_and_a_small_disk_budget(
        stack: StackRunner, pg_factory, work_dir: Path, remote_storage) -> None:
    target = remote_storage("local")
    # The standby replays the primary's own pg_wal: keep it all.
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    pgbench(primary, "-i", "-s", "1")
    primary.psql("CHECKPOINT")
    stack.init(*BASE, target.override(), "pageread.layer_disk_budget=262144",
               "pageread.eviction_period='0.3s'", "pageread.download_after_reads=1000000")
    stack.start()
    stack.allowed_errors += [r"upload failed", r"failed \(attempt"]
    tenant, timeline = attach(stack, primary)
    standby_base = work_dir / "standby-base"
    pg_basebackup(primary, standby_base)  # the primary is idle: the same images as ours
    t, tl = TenantId.parse(tenant), TimelineId.parse(timeline)
    pgbench(primary, "-c", "2", "-t", "100")
    first = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: remote_lsn(stack, tenant, timeline) >= first, timeout=120,
               what="the first uploads")

    # The object store fails every put for a while.
    stack.run("failpoint", "housekeeping", "remote-upload", "return")
    pgbench(primary, "-c", "2", "-t", "200")
    during = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
               >= during, timeout=120, what="layers flushed while uploads fail")
    for _ in range(5):
        st = status(stack, tenant, timeline)
        remote = Lsn.parse(st["remote_consistent_lsn"])
        index = read_latest_index(target.storage, t, tl)
        assert index is not None and remote <= index.disk_consistent_lsn
        assert Lsn.parse(st["disk_consistent_lsn"]) > remote
        slot = Lsn.parse(st["slot"]["restart_lsn"])
        assert slot <= remote, f"the slot at {slot} passed remote_consistent_lsn {remote}"
        assert st["layers_not_uploaded"] > 0
        assert loop(st, "housekeeping", "remote")["state"] == "failing"
    hits = re.search(r"hits=(\d+)", stack.run("failpoint", "housekeeping",
                                              "remote-upload", "off").stdout)
    assert hits and int(hits.group(1)) > 0

    # The store works again: everything gets there.
    pgbench(primary, "-c", "2", "-t", "100")
    kinds = relation_kinds(primary)
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: remote_lsn(stack, tenant, timeline) >= end, timeout=120,
               what="uploads after the faults")
    st = status(stack, tenant, timeline)
    assert st["layers_not_uploaded"] == 0
    assert loop(st, "housekeeping", "remote")["state"] == "ok"

    # pageread keeps its local layers under the budget: it evicts, then reads by ranges,
    # some of which fail first.
    wait_until(lambda: evicted(stack, tenant, timeline) > 0, timeout=60,
               what="layers evicted to the budget")
    stack.run("failpoint", "pageread", "remote-download", "3*return")
    result = stop_primary_and_compare(stack, primary, tenant, timeline, standby_base,
                                      work_dir, kinds)
    assert not result.mismatches, "\n".join(result.mismatches)
    assert result.compared["main"] > 100
    detail = loop(status(stack, tenant, timeline), "pageread", "eviction")["detail"]
    gets = re.search(r"(\d+) ranged GETs", detail)
    assert gets and int(gets.group(1)) > 0, detail
    hits = re.search(r"hits=(\d+)", stack.run("failpoint", "pageread", "remote-download").stdout)
    assert hits and int(hits.group(1)) == 3


@pytest.mark.slow
def test_two_nodes_attached_in_turn(stack: StackRunner, pg_factory, work_dir: Path,
                                    remote_storage) -> None:
    target = remote_storage("local")
    primary = pg_factory(settings={"wal_keep_size": "0", "autovacuum": "off"})
    pgbench(primary, "-i", "-s", "1")
    stack.init(*BASE, target.override())
    stack.start()
    tenant, timeline = attach(stack, primary)
    t, tl = TenantId.parse(tenant), TimelineId.parse(timeline)
    pgbench(primary, "-c", "2", "-t", "300")
    lsn = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    expected = snapshot(primary)
    wait_until(lambda: remote_lsn(stack, tenant, timeline) >= lsn, timeout=120,
               what="node A's uploads")

    node_b = StackRunner(work_dir / "node-b")
    try:
        node_b.init(*BASE, target.override())
        node_b.start()
        out = node_b.run("tenant", "attach", tenant, timeout=600).stdout
        assert "attached with generation 2" in out, out
        wait_until(lambda: (target.storage.head(index_key(t, tl, 2)) is not None),
                   timeout=60, what="node B's index")
        b_index = target.storage.get(index_key(t, tl, 2))
        named = read_latest_index(target.storage, t, tl)
        assert named is not None and named.generation == 2

        # Node A goes on: new WAL, then a compaction whose old L0s B's index names.
        pgbench(primary, "-c", "2", "-t", "100")
        a_before = remote_lsn(stack, tenant, timeline)
        stack.allowed_errors += [r"stale generation"]
        stack.run("timeline", "compact", "--tenant", tenant, "--timeline", timeline,
                  "--force-l0", timeout=600)

        def a_stale() -> bool:
            return loop(status(stack, tenant, timeline), "housekeeping",
                        "remote")["state"] == "stale"
        wait_until(a_stale, timeout=60, what="node A stale")
        assert "generation 2" in loop(status(stack, tenant, timeline), "housekeeping",
                                      "remote")["detail"]
        # A never overwrote B's index, deleted nothing B names, and stopped telling its
        # WAL source that WAL is stored.
        assert target.storage.get(index_key(t, tl, 2)) == b_index
        present = set(target.keys(f"tenants/{tenant}/timelines/{timeline}/"))
        for d in named.layers:
            key = f"tenants/{tenant}/timelines/{timeline}/{d.file_name}-{d.generation:08x}"
            assert key in present, f"{key} (named by node B's index) was deleted"
        assert remote_lsn(stack, tenant, timeline) == a_before

        # Node A leaves; node B serves the data of the LSN both had.
        stack.run("stop")
        fullbackup_matches(node_b, primary, tenant, timeline, lsn, expected, work_dir,
                           "restored-from-b")
        end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
        wait_until(lambda: caught_up(node_b, tenant, timeline, end), timeout=120,
                   what="node B streaming once the slot is free")
        st = json.loads(node_b.run("timeline", "status", "--tenant", tenant, "--timeline",
                                   timeline, "--json").stdout)
        assert st["generation"] == 2
    finally:
        node_b.run("stop", check=False)
        assert not processes_mentioning(str(node_b.workdir))
        # B's receiver could not take the slot while A streamed through it.
        node_b.allowed_errors += [r"replication slot .* is active", r"receiver loop failed"]
        errors = node_b.log_errors()
        shutil.rmtree(node_b.workdir, ignore_errors=True)
    assert not errors, "\n".join(errors)


@pytest.mark.slow
def test_services_killed_during_remote_io_lose_nothing(stack: StackRunner, pg_factory,
                                                        work_dir: Path, remote_storage) -> None:
    """Housekeeping dies (SIGKILL) in the middle of an upload, pageread in the middle of a
    download, ingest while the slot is held back at remote_consistent_lsn: after each
    restart the bucket's index names only objects that are there, remote_consistent_lsn
    catches up, and a full backup read from evicted layers equals the primary's data."""
    target = remote_storage("local")
    primary = pg_factory(settings={"wal_keep_size": "0", "autovacuum": "off"})
    pgbench(primary, "-i", "-s", "1")
    stack.init(*BASE, target.override(), "pageread.layer_disk_budget=262144",
               "pageread.eviction_period='0.3s'", "pageread.download_after_reads=1000000")
    stack.start()
    tenant, timeline = attach(stack, primary)
    t, tl = TenantId.parse(tenant), TimelineId.parse(timeline)

    def down(service: str) -> bool:
        return stack.status()["services"][service]["health"] == "DOWN"

    def index_consistent() -> Lsn:
        index = read_latest_index(target.storage, t, tl)
        assert index is not None
        present = set(target.keys(f"tenants/{tenant}/timelines/{timeline}/"))
        for d in index.layers:
            assert (f"tenants/{tenant}/timelines/{timeline}/{d.file_name}-"
                    f"{d.generation:08x}") in present
        return index.disk_consistent_lsn

    # housekeeping: killed at its next put (a layer or an index)
    stack.run("failpoint", "housekeeping", "remote-upload", "1*kill")
    pgbench(primary, "-c", "2", "-t", "100")
    wait_until(lambda: down("housekeeping"), timeout=60, what="housekeeping killed")
    stack.run("start")
    # read in this order, the catalog's LSN can only be behind the bucket's index
    assert remote_lsn(stack, tenant, timeline) <= index_consistent()
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: remote_lsn(stack, tenant, timeline) >= end, timeout=120,
               what="uploads after the housekeeping restart")
    assert index_consistent() >= end

    # ingest: killed and restarted; the slot never passed what the bucket holds
    stack.kill("ingest")
    slot = Lsn.parse(primary.psql(
        f"SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pagestore_{timeline}'"))
    assert slot <= remote_lsn(stack, tenant, timeline)
    stack.run("start")
    pgbench(primary, "-c", "2", "-t", "100")
    expected = snapshot(primary)
    lsn = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    wait_until(lambda: remote_lsn(stack, tenant, timeline) >= lsn, timeout=120,
               what="uploads after the ingest restart")

    # pageread: evicts to its budget, then dies at its first ranged read of the bucket
    wait_until(lambda: evicted(stack, tenant, timeline) > 0, timeout=60,
               what="layers evicted to the budget")
    stack.run("failpoint", "pageread", "remote-download", "1*kill")
    port = stack.status()["services"]["gateway"]["port"]
    failed = subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p",
                             str(port), "-c", f"fullbackup {tenant} {timeline} {lsn}",
                             "-o", str(work_dir / "lost.tar")], capture_output=True, timeout=600)
    assert failed.returncode != 0
    wait_until(lambda: down("pageread"), timeout=60, what="pageread killed")
    stack.run("start")
    fullbackup_matches(stack, primary, tenant, timeline, lsn, expected, work_dir, "after-kills")
