"""Timeline lifecycle against real primaries, through the real CLI and processes:
`timeline delete` (slot dropped, rows and files gone, pageread stops serving it; refused
while branches exist; an unreachable source stops the delete unless forced), a failed
import drops its slot, a timeline that ingest broke keeps its slot and resumes when
ingest starts again, and a WAL source's password is never shown or logged.

Waiting for LSNs goes through the housekeeping gRPC service directly (what `timeline
status` asks), which is much faster than a CLI process per poll; what a user sees is
checked through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import grpc
import pytest

from pagestore.keys import RelTag
from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster, give_to_server_user
from pagestore.proto import (
    common_pb2,
    housekeeping_pb2,
    housekeeping_pb2_grpc,
    ingest_pb2_grpc,
)
from tests.fixtures.stack import StackRunner
from tests.fixtures.standby import PageApiClient
from tests.fixtures.util import client_channel, wait_until
from tests.integration.test_ingest_service import attach, status

MASK = "********"
PASSWORD = "s3cr3t-pw"


class Housekeeping:
    """A gRPC client of the stack's housekeeping service."""

    def __init__(self, port: int) -> None:
        self.channel = client_channel(f"127.0.0.1:{port}")
        self.stub = housekeeping_pb2_grpc.HousekeepingStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def timeline(self, tenant: str, timeline: str) -> housekeeping_pb2.TimelineInfo:
        return self.stub.GetTimeline(common_pb2.TimelineRef(tenant_id=tenant,
                                                            timeline_id=timeline), timeout=30)

    def wait_caught_up(self, tenant: str, timeline: str, lsn: Lsn, timeout: float = 60) -> None:
        wait_until(lambda: Lsn(self.timeline(tenant, timeline).last_record_lsn) >= lsn,
                   timeout=timeout, what=f"timeline {timeline} caught up to {lsn}")


def slot_count(primary: PgCluster, slot: str | None = None) -> int:
    where = f" WHERE slot_name = '{slot}'" if slot else ""
    return int(primary.psql(f"SELECT count(*) FROM pg_replication_slots{where}"))


def flush_lsn(primary: PgCluster) -> Lsn:
    return Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))


def insert_rows(primary: PgCluster, rows: int = 500) -> Lsn:
    """Write WAL on the primary (into table t); the flush LSN after it."""
    primary.psql(f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")
    return flush_lsn(primary)


def listed(stack: StackRunner, tenant: str) -> dict[str, dict]:
    out = stack.run("timeline", "list", "--tenant", tenant, "--json").stdout
    return {t["timeline_id"]: t for t in json.loads(out)}


def delete(stack: StackRunner, tenant: str, timeline: str, *extra: str,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return stack.run("timeline", "delete", "--tenant", tenant, "--timeline", timeline, *extra,
                     check=check)


def create_timeline(stack: StackRunner, tenant: str, wal_source: str) -> str:
    return stack.run("timeline", "create", "--tenant", tenant, "--wal-source", wal_source,
                     timeout=600).stdout.strip()


@pytest.mark.slow
def test_delete_timeline(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory()
    primary.psql("CREATE TABLE t (a int, b text)")
    stack.init("ingest.checkpoint_timeout='1s'")  # a primary's fast stop waits for flushes
    stack.start()
    tenant, timeline = attach(stack, primary)
    services = stack.status()["services"]
    hk = Housekeeping(services["housekeeping"]["port"])
    slot = f"pagestore_{timeline}"
    tl_dir = stack.workdir / "tenants" / tenant / "timelines" / timeline
    assert slot_count(primary, slot) == 1 and tl_dir.is_dir()
    end = insert_rows(primary)
    hk.wait_caught_up(tenant, timeline, end)

    # A timeline with a branch is not deleted: the error names the branch, nothing goes.
    branch = stack.run("timeline", "create", "--tenant", tenant, "--ancestor",
                       timeline).stdout.strip()
    refused = delete(stack, tenant, timeline, check=False)
    assert refused.returncode == 1, refused
    assert f"timeline {timeline} has branches ({branch}); delete them first" in refused.stderr
    assert slot_count(primary, slot) == 1
    assert tl_dir.is_dir()
    end = insert_rows(primary)
    hk.wait_caught_up(tenant, timeline, end)  # still streaming
    st = status(stack, tenant, timeline)
    assert st["state"] == "active" and st["state_reason"] is None, st
    assert Lsn.parse(st["last_record_lsn"]) >= end

    out = delete(stack, tenant, branch).stdout
    assert out.strip() == f"deleted timeline {branch}: no WAL source: no slot"
    assert set(listed(stack, tenant)) == {timeline}

    # Pageread serves the timeline before the delete ...
    dboid = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
    rel = RelTag(1663, dboid, int(primary.psql("SELECT pg_relation_filenode('t')")), 0)
    client = PageApiClient(services["pageread"]["port"], tenant, timeline)
    try:
        assert client.rel_size(rel, end, allow_missing=False).num_blocks > 0

        out = delete(stack, tenant, timeline).stdout
        assert out.startswith(f"deleted timeline {timeline}: dropped slot {slot} on "
                              f"host=127.0.0.1 port={primary.port}"), out
        assert slot_count(primary, slot) == 0
        assert timeline not in listed(stack, tenant)
        assert not tl_dir.exists()
        gone = stack.run("timeline", "status", "--tenant", tenant, "--timeline", timeline,
                         check=False)
        assert gone.returncode == 1
        assert f"timeline {timeline} of tenant {tenant} not found" in gone.stderr, gone.stderr

        # ... and not once it has seen the delete (the catalog's notification).
        pageread_log = stack.workdir / "logs" / "pageread.log"
        wait_until(lambda: re.search(r"timeline no longer in the catalog: unloaded .*"
                                     f"timeline={timeline}", pageread_log.read_text()),
                   timeout=30, what="pageread unloaded the deleted timeline")
        with pytest.raises(grpc.RpcError) as e:
            client.rel_size(rel, end, allow_missing=False)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value
        assert timeline in e.value.details()
    finally:
        client.close()

    # An unreachable source: the delete stops, naming the slot and how to drop it by
    # hand; forced, it goes on and says the slot was left.
    timeline2 = create_timeline(stack, tenant,
                                f"host=127.0.0.1 port={primary.port} user={primary.user}")
    slot2 = f"pagestore_{timeline2}"
    tl2_dir = stack.workdir / "tenants" / tenant / "timelines" / timeline2
    assert slot_count(primary, slot2) == 1
    primary.stop()
    failed = delete(stack, tenant, timeline2, check=False)
    assert failed.returncode == 1, failed
    assert f"timeline {timeline2} not deleted: slot {slot2} on " in failed.stderr, failed.stderr
    assert "could not be dropped" in failed.stderr
    assert f"SELECT pg_drop_replication_slot('{slot2}')" in failed.stderr
    assert "force it" in failed.stderr
    st = status(stack, tenant, timeline2)
    assert st["state"] == "stopping", st
    assert st["state_reason"].startswith(f"delete incomplete: slot {slot2} on "), st
    assert tl2_dir.is_dir()

    forced = delete(stack, tenant, timeline2, "--force").stdout
    assert forced.startswith(f"deleted timeline {timeline2}: NOT dropped (slot {slot2} on "), forced
    assert f"drop it by hand on the source: SELECT pg_drop_replication_slot('{slot2}')" in forced
    assert timeline2 not in listed(stack, tenant)
    assert not tl2_dir.exists()
    primary.start()
    assert slot_count(primary, slot2) == 1  # really left behind, as the output says
    hk.close()


def test_failed_import_drops_its_slot(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    primary = pg_factory()
    location = work_dir / "tblspc"
    location.mkdir()
    give_to_server_user(location)  # the server (the postgres OS user) writes into it
    primary.psql(f"CREATE TABLESPACE extra LOCATION '{location}'")
    stack.init()
    stack.start()
    tenant = stack.run("tenant", "create").stdout.strip()
    proc = stack.run("timeline", "create", "--tenant", tenant, "--wal-source",
                     f"host=127.0.0.1 port={primary.port} user={primary.user}", check=False)
    assert proc.returncode == 1, proc
    assert "unsupported tablespace" in proc.stderr and str(location) in proc.stderr, proc.stderr
    assert "only the default tablespace is supported" in proc.stderr

    [row] = listed(stack, tenant).values()
    assert row["state"] == "broken", row
    assert row["state_reason"].startswith("the import failed: "), row
    assert "unsupported tablespace" in row["state_reason"]
    slot = f"pagestore_{row['timeline_id']}"
    # The attach made the slot before the base backup failed, and dropped it again.
    ingest_log = (stack.workdir / "logs" / "ingest.log").read_text()
    assert f"dropped replication slot {slot} of the failed import" in ingest_log
    assert slot_count(primary) == 0
    st = status(stack, tenant, row["timeline_id"])
    assert st["state"] == "broken"
    assert st["slot"] == {"name": slot, "status": "missing", "restart_lsn": None,
                          "note": "none on the source"}, st["slot"]


def test_broken_timeline_keeps_slot_and_resumes(stack: StackRunner, pg_factory) -> None:
    primary = pg_factory()
    primary.psql("CREATE TABLE t (a int, b text)")
    stack.init()
    stack.start()
    tenant, timeline = attach(stack, primary)
    services = stack.status()["services"]
    hk = Housekeeping(services["housekeeping"]["port"])
    slot = f"pagestore_{timeline}"
    hk.wait_caught_up(tenant, timeline, insert_rows(primary))

    # Every batch of WAL fails to ingest: after 3 failures in a row the timeline breaks.
    stack.allowed_errors += [
        r"ERROR ingest pagestore\.supervise: receiver loop failed unexpectedly; restarting "
        r"in .*FailpointError: failpoint ingest-receiver-record",
        r"ERROR ingest services\.ingest\.receiver: ingest stopped after 3 failures in a row "
        r"at \S+: FailpointError: failpoint ingest-receiver-record; the timeline is broken",
    ]
    stack.run("failpoint", "ingest", "ingest-receiver-record", "3*return")
    unreached = insert_rows(primary, 100)
    wait_until(lambda: hk.timeline(tenant, timeline).state == "broken", timeout=60,
               what="timeline broken")
    hits = stack.run("failpoint", "ingest").stdout
    assert re.search(r"^ingest-receiver-record +off +hits=3$", hits, re.M), hits

    st = status(stack, tenant, timeline)
    assert st["state"] == "broken"
    assert "failures in a row" in st["state_reason"], st
    assert "failpoint ingest-receiver-record" in st["state_reason"], st
    assert st["slot"]["name"] == slot and st["slot"]["status"] == "present", st["slot"]
    assert "kept" in st["slot"]["note"], st["slot"]
    assert slot_count(primary, slot) == 1
    assert Lsn.parse(st["last_record_lsn"]) < unreached
    # The receiver loop, as the ingest service reports it: finished, with its last error.
    with client_channel(f"127.0.0.1:{services['ingest']['port']}") as ch:
        lsns = ingest_pb2_grpc.IngestStub(ch).GetTimelineLsns(
            common_pb2.TimelineRef(tenant_id=tenant, timeline_id=timeline), timeout=30)
    assert lsns.state == "broken"
    [receiver] = [lp for lp in lsns.loops if lp.name == "receiver"]
    assert receiver.state == "finished", receiver
    assert "FailpointError: failpoint ingest-receiver-record" in receiver.last_error, receiver
    broken_status = st

    # Ingest starts again: the timeline resumes from its slot and catches up.
    stack.kill("ingest")
    stack.run("start")
    wait_until(lambda: hk.timeline(tenant, timeline).state == "active", timeout=60,
               what="timeline active again")
    end = insert_rows(primary)
    hk.wait_caught_up(tenant, timeline, end)
    st = status(stack, tenant, timeline)
    assert st["state"] == "active"
    assert st["state_reason"].startswith("resumed after: ingest stopped after 3 failures"), st
    assert Lsn.parse(st["last_record_lsn"]) >= end > unreached
    assert st["slot"]["status"] == "present" and st["slot"]["note"].startswith("in use")
    [receiver_loop] = [lp for lp in st["loops"] if (lp["service"], lp["name"]) ==
                       ("ingest", "receiver")]
    assert receiver_loop["state"] == "running", receiver_loop
    hk.close()

    # `timeline status` of the broken timeline listed that finished receiver loop too.
    receivers = [lp for lp in broken_status["loops"]
                 if (lp["service"], lp["name"]) == ("ingest", "receiver")]
    assert receivers, broken_status["loops"]  # the receiver says why it ended
    assert receivers[0]["state"] == "finished" and receivers[0]["last_error"], receivers


def scram_primary(pg_factory) -> PgCluster:
    """A primary on which the role ``repl`` must give its password (SCRAM), for
    replication and for normal connections from 127.0.0.1."""
    primary = pg_factory(start=False)
    hba = primary.datadir / "pg_hba.conf"  # the first matching line wins
    hba.write_text("host replication repl 127.0.0.1/32 scram-sha-256\n"
                   "host all repl 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    primary.start()
    primary.psql(f"CREATE ROLE repl LOGIN REPLICATION PASSWORD '{PASSWORD}'")
    primary.psql("CREATE TABLE t (a int, b text)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for sql, extra in (("SELECT 1", ""), ("IDENTIFY_SYSTEM", " replication=true")):
        for password in (None, PASSWORD):
            proc = subprocess.run(
                [primary.bin("psql"), "-X", "-w", "-At", "-c", sql,
                 f"host=127.0.0.1 port={primary.port} user=repl dbname=postgres{extra}"],
                capture_output=True, text=True, timeout=60,
                env={**env, "PGPASSWORD": password} if password else env)
            if password:
                assert proc.returncode == 0, proc
            else:
                assert proc.returncode != 0 and "password" in proc.stderr, proc
    return primary


def assert_masked_everywhere(stack: StackRunner, hk: Housekeeping, tenant: str,
                             timelines: list[str], port: int) -> dict[str, dict]:
    """`timeline status` (text and JSON), `timeline list --json` and housekeeping's gRPC
    answers show each WAL source with its password masked, and host, port and user.
    Returns the status JSON of each timeline."""
    statuses = {}
    for tl in timelines:
        text = stack.run("timeline", "status", "--tenant", tenant, "--timeline", tl).stdout
        assert PASSWORD not in text
        [wal_source] = re.findall(r"^wal_source +(.*)$", text, re.M)
        assert f"password={MASK}" in wal_source, wal_source
        assert "host=127.0.0.1" in wal_source and f"port={port}" in wal_source, wal_source
        assert "user=repl" in wal_source, wal_source
        st = statuses[tl] = status(stack, tenant, tl)
        assert PASSWORD not in json.dumps(st)
        assert st["wal_source"] == wal_source
        info = hk.timeline(tenant, tl)
        assert PASSWORD not in str(info) and PASSWORD.encode() not in info.SerializeToString()
        assert info.wal_source == wal_source
    shown = listed(stack, tenant)
    assert set(shown) == set(timelines)
    for tl, t in shown.items():
        assert PASSWORD not in json.dumps(t)
        assert t["wal_source"] == statuses[tl]["wal_source"]
    answer = hk.stub.ListTimelines(housekeeping_pb2.ListTimelinesRequest(tenant_id=tenant),
                                   timeout=30)
    assert {t.timeline_id for t in answer.timelines} == set(timelines)
    assert PASSWORD.encode() not in answer.SerializeToString()
    return statuses


def assert_not_logged(stack: StackRunner, *secrets: str) -> None:
    logs = [p for p in (stack.workdir / "logs").rglob("*") if p.is_file()]
    assert {"ingest.log", "housekeeping.log", "pageread.log"} <= {p.name for p in logs}
    for p in logs:
        content = p.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, (p, secret)


def test_wal_source_password_is_never_shown(stack: StackRunner, pg_factory) -> None:
    primary = scram_primary(pg_factory)
    stack.init("ingest.checkpoint_timeout='1s'")  # a primary's fast stop waits for flushes
    stack.start()
    hk = Housekeeping(stack.status()["services"]["housekeeping"]["port"])
    tenant = stack.run("tenant", "create").stdout.strip()
    keyword = create_timeline(stack, tenant, f"host=127.0.0.1 port={primary.port} user=repl "
                                             f"password={PASSWORD} dbname=postgres")
    # The URI form, through the gRPC API: its answer shows the source masked too.
    created = hk.stub.CreateTimeline(housekeeping_pb2.CreateTimelineRequest(
        tenant_id=tenant, pg_version=15,
        wal_source=f"postgresql://repl:{PASSWORD}@127.0.0.1:{primary.port}/postgres"),
        timeout=600)
    assert PASSWORD.encode() not in created.SerializeToString()
    assert f"password={MASK}" in created.wal_source, created.wal_source
    uri = created.timeline_id
    timelines = [keyword, uri]
    assert all(slot_count(primary, f"pagestore_{tl}") == 1 for tl in timelines)

    # A wrong password: the attach fails, and says so without showing it.
    wrong = "n0t-the-pw"
    other = stack.run("tenant", "create").stdout.strip()
    failed = stack.run("timeline", "create", "--tenant", other, "--wal-source",
                       f"host=127.0.0.1 port={primary.port} user=repl password={wrong}",
                       check=False)
    assert failed.returncode == 1, failed
    assert "password authentication failed" in failed.stderr, failed.stderr
    assert f"password={MASK}" in failed.stderr and wrong not in failed.stderr, failed.stderr
    [broken] = listed(stack, other).values()
    assert broken["state"] == "broken" and f"password={MASK}" in broken["state_reason"], broken
    assert wrong not in json.dumps(broken)

    end = insert_rows(primary)  # streaming works with the password
    for tl in timelines:
        hk.wait_caught_up(tenant, tl, end)
    statuses = assert_masked_everywhere(stack, hk, tenant, timelines, primary.port)
    assert all(st["state"] == "active" and st["slot"]["status"] == "present"
               for st in statuses.values()), statuses
    assert_not_logged(stack, PASSWORD, wrong)

    # The source goes away for a while: reconnect attempts are logged, the slot status
    # cannot be read (the note names the source, masked); still no password anywhere.
    ingest_log = stack.workdir / "logs" / "ingest.log"
    offset = len(ingest_log.read_text())
    primary.stop()

    def reconnects_logged() -> bool:
        new = ingest_log.read_text()[offset:]
        return all(len(re.findall(r"receiver loop failed.*WAL source .*could not connect.*"
                                  f"timeline={tl}", new)) >= 2 for tl in timelines)

    wait_until(reconnects_logged, timeout=60, what="reconnect attempts logged")
    statuses = assert_masked_everywhere(stack, hk, tenant, timelines, primary.port)
    for st in statuses.values():
        assert st["slot"]["status"] == "unknown", st["slot"]
        assert st["slot"]["note"].startswith(f"the WAL source {st['wal_source']} cannot be "
                                             "asked: "), st["slot"]
    primary.start()
    end = insert_rows(primary)
    for tl in timelines:
        hk.wait_caught_up(tenant, tl, end)
    hk.close()
    # The sources are in the log, masked (so the check below is not vacuous).
    log = ingest_log.read_text()
    assert all(f"WAL source {st['wal_source']} failed" in log for st in statuses.values())
    assert_not_logged(stack, PASSWORD, wrong)
