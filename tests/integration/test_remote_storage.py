"""Issue 11 acceptance: a node with an empty disk recovers from the bucket.

For each backend (a local directory, S3 through moto's server, Azure through Azurite): a
timeline loaded with pgbench streams into a stack with remote storage on; a branch is
made at an earlier LSN; once remote_consistent_lsn has reached the end, the stack stops
and its whole workdir (layer files and the private catalog) is wiped.  A new stack on
the empty workdir runs `pagestore tenant attach`: tenant, timelines (the branch with its
ancestor) and layer map come back from the indexes, with a new generation.  A full
backup at the pre-wipe LSN, read through the gateway from layers that are only in the
bucket, starts a vanilla PostgreSQL whose query checksums equal the primary's at that
LSN; the branch's does too; and ingest resumes from remote_consistent_lsn (the
primary's slot kept the WAL, since the flush position reported was the remote one).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
from typing import TYPE_CHECKING

import pytest

from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.remote.layout import read_latest_index, remote_timelines
from tests.fixtures.restore import amcheck, restore_backup
from tests.fixtures.standby import PageApiClient
from tests.fixtures.util import wait_until
from tests.integration.test_fullbackup_gateway import pgbench, snapshot
from tests.integration.test_ingest_service import attach, caught_up, status

if TYPE_CHECKING:
    from pathlib import Path

    from tests.fixtures.remote import RemoteTarget
    from tests.fixtures.stack import StackRunner

SETTINGS = ("ingest.checkpoint_timeout='1s'", "housekeeping.upload_period='0.3s'",
            "tenant.compaction_period='2s'", "tenant.compaction_threshold=3")


def remote_lsn(stack: StackRunner, tenant: str, timeline: str) -> Lsn:
    return Lsn.parse(status(stack, tenant, timeline)["remote_consistent_lsn"])


def fullbackup_matches(stack: StackRunner, primary, tenant: str, timeline: str, lsn: Lsn,
                       expected: dict[str, str], work_dir: Path, name: str) -> None:
    port = stack.status()["services"]["gateway"]["port"]
    out = work_dir / f"{name}.tar"
    subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port),
                    "-c", f"fullbackup {tenant} {timeline} {lsn}", "-o", str(out)],
                   check=True, capture_output=True, timeout=600)
    restored = restore_backup(out, work_dir / name, primary)
    restored.start()
    try:
        assert snapshot(restored) == expected, f"{name}: backup at {lsn}"
        check = amcheck(restored)
        assert check.returncode == 0 and check.stdout.strip() == "", check.stdout + check.stderr
    finally:
        restored.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ("local", "s3", "azure"))
def test_empty_node_recovers_from_the_bucket(stack: StackRunner, pg_factory, work_dir: Path,
                                             remote_storage, proxy_factory, kind: str) -> None:
    target: RemoteTarget = remote_storage(kind)
    override = target.override()
    proxy = None
    if kind == "s3":
        # The stack reaches moto through a proxy that drops connections for a while.
        proxy = proxy_factory(int(target.config.endpoint.rsplit(":", 1)[1]))
        override = dataclasses.replace(target, config=dataclasses.replace(
            target.config, endpoint=f"http://127.0.0.1:{proxy.port}")).override()
        stack.allowed_errors += [r"upload failed", r"failed \(attempt"]
    primary = pg_factory(settings={"wal_keep_size": "0", "autovacuum": "off"})
    stack.init(*SETTINGS, override)
    stack.start()
    pgbench(primary, "-i", "-s", "1")
    tenant, timeline = attach(stack, primary)
    t, tl = TenantId.parse(tenant), TimelineId.parse(timeline)
    pgbench(primary, "-c", "2", "-t", "100")
    pre_lsn = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    pre = snapshot(primary)
    if proxy is not None:
        proxy.mode = "drop"
        proxy.cut()
    pgbench(primary, "-c", "2", "-t", "100")
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    if proxy is not None:
        # While the store is unreachable: remote_consistent_lsn stays at or below what
        # the bucket's index holds, and below what is on local disk.
        wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
                   >= end, timeout=120, what="flushed while the store is unreachable")
        remote = remote_lsn(stack, tenant, timeline)
        index = read_latest_index(target.storage, t, tl)
        assert index is not None and remote <= index.disk_consistent_lsn < end
        assert proxy.dropped > 0
        proxy.mode = "forward"
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=120, what="caught up")
    branch = stack.run("timeline", "create", "--tenant", tenant, "--ancestor", timeline,
                       "--ancestor-lsn", str(pre_lsn)).stdout.strip()
    wait_until(lambda: remote_lsn(stack, tenant, timeline) >= end, timeout=120,
               what="remote_consistent_lsn at the end of the workload")
    wait_until(lambda: remote_lsn(stack, tenant, branch) >= pre_lsn, timeout=60,
               what="the branch's index uploaded")
    st = status(stack, tenant, timeline)
    assert st["generation"] == 1
    # What the bucket holds: both timelines, each with an index of generation 1 that
    # names only objects that are there.
    assert set(map(str, remote_timelines(target.storage, t))) == {timeline, branch}
    index = read_latest_index(target.storage, t, tl)
    assert index is not None and index.generation == 1 and index.disk_consistent_lsn >= end
    present = set(target.keys(f"tenants/{tenant}/timelines/{timeline}/"))
    for d in index.layers:
        assert f"tenants/{tenant}/timelines/{timeline}/{d.file_name}-{d.generation:08x}" in present

    # The disk is lost: the stack stops, its workdir (layers and catalog) goes.
    stack.run("stop")
    shutil.rmtree(stack.workdir)
    stack.init(*SETTINGS, override)
    stack.start()
    assert json.loads(stack.run("tenant", "list", "--json").stdout) == []
    if proxy is not None:
        # Over S3 the attach's first requests meet dropped connections for a while: retried.
        proxy.mode = "drop"
        proxy.cut()  # the services' pooled connections too
        dropped = proxy.dropped
        threading.Timer(2.5, lambda: setattr(proxy, "mode", "forward")).start()
    out = stack.run("tenant", "attach", tenant, timeout=600).stdout
    if proxy is not None:
        assert proxy.dropped > dropped
    assert f"tenant {tenant} attached with generation 2" in out, out
    assert f"timeline {timeline}: ingest resumed" in out, out
    st = status(stack, tenant, timeline)
    assert st["generation"] == 2
    assert Lsn.parse(st["remote_consistent_lsn"]) >= end
    bst = status(stack, tenant, branch)
    assert bst["ancestor_timeline_id"] == timeline and Lsn.parse(bst["ancestor_lsn"]) == pre_lsn

    # Reads come from the bucket: the pre-wipe LSN's data, on the timeline and the branch.
    fullbackup_matches(stack, primary, tenant, timeline, pre_lsn, pre, work_dir, "restored")
    if kind == "local":
        fullbackup_matches(stack, primary, tenant, branch, pre_lsn, pre, work_dir, "branch")
    else:  # the same layers as above: reading a sample of pages through the branch will do
        port = stack.status()["services"]["pageread"]["port"]
        main, child = (PageApiClient(port, tenant, x) for x in (timeline, branch))
        try:
            db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
            forks = [(rel, n) for rel, n in main.relations(1663, db, pre_lsn).items()
                     if rel.forknum == 0 and 0 < n <= 100][:20]
            assert forks and dict(child.pages(forks, pre_lsn)) == dict(main.pages(forks, pre_lsn))
        finally:
            main.close()
            child.close()

    # Ingest resumed where the bucket ends: new WAL arrives and is uploaded again, now
    # under generation 2.
    pgbench(primary, "-c", "2", "-t", "100")
    later = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, later), timeout=120,
               what="caught up after the attach")
    wait_until(lambda: remote_lsn(stack, tenant, timeline) >= later, timeout=120,
               what="uploads of generation 2")
    index2 = read_latest_index(target.storage, t, tl)
    assert index2 is not None and index2.generation == 2
    assert any(d.generation == 2 for d in index2.layers)
    assert target.keys(f"tenants/{tenant}/tenant-manifest-00000002.json")
    if kind != "local":
        return

    # Detach refuses while the bucket lacks something (uploads fail), and ingest goes on;
    # once uploads work it frees the local copy, and the tenant attaches again.
    stack.allowed_errors += [r"upload failed", r"failed \(attempt"]
    stack.run("failpoint", "housekeeping", "remote-upload", "return")
    pgbench(primary, "-c", "2", "-t", "50")
    more = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
               >= more, timeout=120, what="flushed while uploads fail")
    refused = stack.run("tenant", "detach", tenant, check=False, timeout=600)
    assert refused.returncode != 0 and "not detached" in refused.stderr, refused.stderr
    assert status(stack, tenant, timeline)["state"] == "active"
    stack.run("failpoint", "housekeeping", "remote-upload", "off")
    out = stack.run("tenant", "detach", tenant, timeout=600).stdout
    assert f"tenant {tenant} detached" in out, out
    assert not (stack.workdir / "tenants" / tenant).exists()
    assert json.loads(stack.run("tenant", "list", "--json").stdout) == []
    out = stack.run("tenant", "attach", tenant, "--warm", timeout=600).stdout
    assert "attached with generation 3" in out and "downloaded" in out, out
    assert Lsn.parse(status(stack, tenant, timeline)["remote_consistent_lsn"]) >= more
    # pageread served the tenant before the detach: it reads the new attach's map now.
    fullbackup_matches(stack, primary, tenant, timeline, pre_lsn, pre, work_dir, "reattached")
