"""Issue 14 acceptance, point-in-time restore by time: a primary streams to pagestore and
commits two transactions with a clear gap between their commit times; a time T taken on
the primary between them resolves (pageread's GetLsnByTimestamp) to an LSN that shows the
first and not the second, and ``pagestore restore --time T --start`` gives a running
vanilla PostgreSQL with exactly that data.  The commit timestamps pagestore keeps equal
the primary's own (track_commit_timestamp, pg_xact_commit_timestamp), read back through
GetTimestampOfLsn; an LSN restore, a time before any commit, a bad time string and a
non-empty target directory are checked too."""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from pagestore.lsn import Lsn
from pagestore.pg.cluster import POSTGRES_OS_USER, PgCluster, running_as_root
from pagestore.pg.replication import (
    PG_EPOCH_UNIX_US,
    datetime_to_pg_timestamp,
    pg_timestamp_to_datetime,
)
from pagestore.proto import pageread_pb2, pageread_pb2_grpc
from pagestore.restore import LOG_FILE
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import client_channel, wait_until
from tests.integration.test_ingest_service import attach, status

RFC3339_UTC = "YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\""


def _metadata(tenant: str, timeline: str) -> tuple[tuple[str, str], ...]:
    return (("neon-tenant-id", tenant), ("neon-timeline-id", timeline), ("neon-shard-id", "0000"))


class Extras:
    """pageread's PageReadExtras for one timeline; times as TimestampTz (µs since 2000)."""

    def __init__(self, stack: StackRunner, tenant: str, timeline: str) -> None:
        port = stack.status()["services"]["pageread"]["port"]
        self.channel = client_channel(f"127.0.0.1:{port}")
        self.stub = pageread_pb2_grpc.PageReadExtrasStub(self.channel)
        self.md = _metadata(tenant, timeline)

    def timestamp_of(self, lsn: Lsn) -> int:
        resp = self.stub.GetTimestampOfLsn(pageread_pb2.GetTimestampOfLsnRequest(lsn=int(lsn)),
                                           metadata=self.md, timeout=30)
        return resp.timestamp.ToMicroseconds() - PG_EPOCH_UNIX_US

    def lsn_by(self, ts: int) -> tuple[str, Lsn]:
        when = Timestamp()
        when.FromMicroseconds(ts + PG_EPOCH_UNIX_US)
        resp = self.stub.GetLsnByTimestamp(pageread_pb2.GetLsnByTimestampRequest(timestamp=when),
                                           metadata=self.md, timeout=30)
        return resp.kind, Lsn(resp.lsn)

    def status(self) -> pageread_pb2.TimelineReadStatus:
        return self.stub.GetTimelineStatus(pageread_pb2.GetTimelineStatusRequest(),
                                           metadata=self.md, timeout=30)


def _rpc_code(fn: Callable[[Lsn], object], lsn: Lsn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        fn(lsn)
    return e.value.code(), e.value.details()


def _restored(datadir: Path, stdout: str, pg: PgCluster) -> PgCluster:
    """The server `restore --start` left running, from the connection string it printed
    last: ``host=127.0.0.1 port=N user=postgres dbname=postgres``."""
    fields = dict(part.split("=", 1) for part in stdout.strip().splitlines()[-1].split())
    assert fields["host"] == "127.0.0.1" and fields["dbname"] == "postgres", stdout
    assert fields["user"] == "postgres"
    return PgCluster(datadir=datadir, port=int(fields["port"]), bin_dir=pg.bin_dir,
                     logfile=datadir / LOG_FILE)


def test_restore_to_a_point_in_time(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    primary = pg_factory(settings={"autovacuum": "off", "track_commit_timestamp": "on"})
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    primary.psql("CREATE TABLE marks (label text)")
    tenant, timeline = attach(stack, primary)
    min_readable = Lsn.parse(status(stack, tenant, timeline)["min_readable_lsn"])

    primary.psql("INSERT INTO marks VALUES ('first')")
    lsn1 = Lsn.parse(primary.psql("SELECT pg_current_wal_lsn()"))
    target_text = primary.psql(
        f"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', '{RFC3339_UTC}')")
    target = datetime_to_pg_timestamp(datetime.datetime.fromisoformat(target_text))
    # A clear gap: the second commit comes once the primary's clock is 50 ms past T.
    wait_until(lambda: primary.psql(
        f"SELECT clock_timestamp() > '{target_text}'::timestamptz + interval '50 ms'") == "t",
        timeout=10, what="the primary's clock past T + 50 ms")
    primary.psql("INSERT INTO marks VALUES ('second')")
    lsn2 = Lsn.parse(primary.psql("SELECT pg_current_wal_lsn()"))
    primary_ts = {
        label: datetime_to_pg_timestamp(datetime.datetime.fromisoformat(text))
        for label, text in (row.split("|") for row in primary.psql(
            "SELECT label, to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', "
            f"'{RFC3339_UTC}') FROM marks").splitlines())}

    extras = Extras(stack, tenant, timeline)
    with extras.channel:
        # Wait until pageread has the second commit (above its last record the RPC is
        # OUT_OF_RANGE), then read both commit timestamps back.
        def second_commit() -> int | None:
            try:
                return extras.timestamp_of(lsn2)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
                return None

        ts2 = wait_until(second_commit, timeout=60, what=f"pageread past {lsn2}")
        ts1 = extras.timestamp_of(lsn1)
        assert (ts1, ts2) == (primary_ts["first"], primary_ts["second"])
        assert ts1 <= target < target + 50_000 < ts2

        # The search: T falls between the two commits.
        kind, at = extras.lsn_by(target)
        assert kind == "present" and lsn1 <= at < lsn2 and at % 8 == 0
        assert extras.timestamp_of(at) == ts1 and extras.timestamp_of(Lsn(at + 8)) == ts2
        assert extras.lsn_by(ts1) == ("present", at)  # a commit at the target is before it
        assert extras.lsn_by(ts2)[0] == "future"
        last = Lsn(extras.status().last_record_lsn)
        assert extras.lsn_by(ts2 + 3_600_000_000) == ("future", last) and last >= lsn2
        assert extras.lsn_by(ts1 - 1) == ("past", min_readable)
        # GetTimestampOfLsn: out of range, and no commit at the first readable LSN.
        code, details = _rpc_code(extras.timestamp_of, Lsn(0x10))
        assert code == grpc.StatusCode.OUT_OF_RANGE and "first readable LSN" in details
        code, details = _rpc_code(extras.timestamp_of, Lsn(last + (1 << 30)))
        assert code == grpc.StatusCode.OUT_OF_RANGE and "beyond the last record" in details
        code, details = _rpc_code(extras.timestamp_of, min_readable)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not found" in details

        # A branch at T's LSN searches from its branch point on, reading its ancestor
        # there: the first commit is at the branch point, the second never happened.
        branch = stack.run("timeline", "create", "--tenant", tenant, "--ancestor", timeline,
                           "--ancestor-lsn", str(at)).stdout.strip()
        on_branch = Extras(stack, tenant, branch)
        with on_branch.channel:
            assert on_branch.timestamp_of(at) == ts1
            assert on_branch.lsn_by(ts1 - 1) == ("past", at)
            kind, branch_lsn = on_branch.lsn_by(ts2)
            assert kind == "future" and branch_lsn >= at

    restores = work_dir / "restores"
    restores.mkdir(mode=0o755)
    restores.chmod(0o755)
    started: list[PgCluster] = []
    try:
        # By time: the first transaction and not the second.
        d1 = restores / "by-time"
        out = stack.run("restore", "--tenant", tenant, "--timeline", timeline,
                        "--time", target_text, "--pgdata", str(d1), "--start").stdout
        assert f"resolved to LSN {at} (present" in out
        pg1 = _restored(d1, out, primary)
        started.append(pg1)
        assert pg1.psql("SELECT string_agg(label, ',' ORDER BY label) FROM marks") == "first"
        mode = os.stat(d1)
        assert stat.S_IMODE(mode.st_mode) == 0o700
        if running_as_root():
            import pwd

            assert pwd.getpwuid(mode.st_uid).pw_name == POSTGRES_OS_USER
        pg1.stop()

        # By LSN (with the port given): both.
        d2 = restores / "by-lsn"
        port = int(pg1.port)
        out = stack.run("restore", "--tenant", tenant, "--timeline", timeline,
                        "--lsn", str(lsn2), "--pgdata", str(d2), "--start",
                        "--port", str(port)).stdout
        pg2 = _restored(d2, out, primary)
        started.append(pg2)
        assert pg2.port == port
        assert pg2.psql("SELECT string_agg(label, ',' ORDER BY label) FROM marks") == \
            "first,second"
        pg2.stop()
    finally:
        for pg in started:
            pg.stop("immediate")

    # Errors: one clear line, non-zero, nothing written.
    d3 = restores / "too-early"
    before = pg_timestamp_to_datetime(ts1 - 1).isoformat()
    bad = stack.run("restore", "--tenant", tenant, "--timeline", timeline, "--time", before,
                    "--pgdata", str(d3), check=False)
    assert bad.returncode == 2 and "before the history" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not d3.exists()
    bad = stack.run("restore", "--tenant", tenant, "--timeline", timeline, "--time",
                    "yesterday at noon", "--pgdata", str(d3), check=False)
    assert bad.returncode == 2 and "invalid time 'yesterday at noon'" in bad.stderr
    bad = stack.run("restore", "--tenant", tenant, "--timeline", timeline, "--time",
                    "2026-03-04T05:06:07", "--pgdata", str(d3), check=False)
    assert bad.returncode == 2 and "has no time zone" in bad.stderr
    bad = stack.run("restore", "--tenant", tenant, "--timeline", timeline, "--lsn", str(lsn1),
                    "--pgdata", str(d1), check=False)
    assert bad.returncode == 2 and "is not empty" in bad.stderr
