"""Chaos: pgbench streams into the stack while services are SIGKILLed and the whole stack
is stopped and started; afterwards every page equals PostgreSQL's own redo of the WAL.

The stack runs with small layers (checkpoint_distance 1 MiB, checkpoint_timeout 2 s) so
flushes happen all the time and kills land among them.  A reader thread asks the gateway
for pages during the whole run (pages that need redo: pgbench_accounts at the latest
LSN); its errors are allowed only from a disruption until the stack answers again.  At
the end the primary stops cleanly and a physical standby, started from a pg_basebackup
taken right after the attach, replays the same WAL to the last record: every main and
VM fork of every heap, btree and sequence relation, its existence and its size, served at
the final LSN, equals the standby's, byte for byte (tests/fixtures/standby.py).  The
layer files hold every value of the WAL exactly once (no gap, no overlap).

The schedule is random; PAGESTORE_CHAOS_SEED replays one (the seed is printed).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pagestore.lsn import Lsn
from tests.fixtures.consistency import relation_kinds
from tests.fixtures.postgres import pg_basebackup
from tests.fixtures.stack import StackRunner
from tests.fixtures.standby import stop_primary_and_compare
from tests.fixtures.util import wait_until
from tests.integration.test_gateway import REL, V2_HDR, RawClient, v2_get_page
from tests.integration.test_ingest_service import (
    attach,
    compare_with_reference,
    image_layer_lsn,
    quiesce_housekeeping,
    status,
)

SERVICES = ("ingest", "pageread", "redo", "gateway", "housekeeping")
NBLOCKS_TAG, GET_PAGE_TAG = 1, 2
NBLOCKS_ANSWER, GET_PAGE_ANSWER = 101, 102


@dataclass
class Reads:
    """What the reader thread saw: (monotonic time, error or None)."""

    results: list[tuple[float, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, error: str | None) -> None:
        with self.lock:
            self.results.append((time.monotonic(), error))

    def ok_since(self, t: float) -> bool:
        with self.lock:
            return any(when >= t and err is None for when, err in self.results)


def gateway_reader(stack: StackRunner, tenant: str, timeline: str, rel: tuple[int, int, int, int],
                   since_lsn: Lsn, reads: Reads, stop: threading.Event) -> None:
    """Read pages of ``rel`` at the latest LSN through the gateway until ``stop``."""
    rng = random.Random(1)
    client: RawClient | None = None
    while not stop.is_set():
        try:
            if client is None:
                port = stack.status()["services"]["gateway"]["port"]
                client = RawClient(port, timeout=30)
                client.start_pagestream(2, tenant, timeline)
            latest = 0xFFFF_FFFF_FFFF_FFF0
            client.copy_data(V2_HDR.pack(NBLOCKS_TAG, latest, int(since_lsn)) + REL.pack(*rel))
            answer = client.response()
            assert answer[0] == NBLOCKS_ANSWER, answer[:200]
            nblocks = struct.unpack("!I", answer[1:5])[0]
            assert nblocks > 0
            for blkno in rng.sample(range(nblocks), min(8, nblocks)):
                client.copy_data(v2_get_page(latest, int(since_lsn), rel, blkno))
                answer = client.response()
                assert answer[0] == GET_PAGE_ANSWER and len(answer) == 8193, answer[:200]
            reads.add(None)
        except Exception as e:  # recorded and judged against the disruption windows
            reads.add(f"{type(e).__name__}: {e}")
            if client is not None:
                client.close()
            client = None
            stop.wait(0.2)  # pace reconnect attempts while a service is down
    if client is not None:
        client.close()


def pgbench_loop(primary, stop: threading.Event, failures: list[str]) -> None:
    """Short pgbench runs back to back until ``stop`` (each run checked)."""
    while not stop.is_set():
        proc = subprocess.run(
            # Throttled (-R): the stack on two cores must keep up with it.
            [primary.bin("pgbench"), "-n", "-c", "2", "-j", "1", "-R", "150", "-T", "3",
             "-h", "127.0.0.1",
             "-p", str(primary.port), "-U", primary.user, "postgres"],
            capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            failures.append(proc.stderr[-2000:])
            return


@pytest.mark.slow
def test_chaos_kills_and_restarts_lose_nothing(stack: StackRunner, pg_factory,
                                               work_dir: Path) -> None:
    seed = int(os.environ.get("PAGESTORE_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"chaos seed {seed} (PAGESTORE_CHAOS_SEED={seed} replays this schedule)")
    rng = random.Random(seed)
    # autovacuum off until both base backups are taken: nothing may change the primary's
    # files without WAL between pagestore's base backup and the standby's.
    primary = pg_factory(settings={"wal_keep_size": "'4GB'", "autovacuum": "off"})
    subprocess.run([primary.bin("pgbench"), "-i", "-s", "2", "-h", "127.0.0.1", "-p",
                    str(primary.port), "-U", primary.user, "postgres"],
                   check=True, capture_output=True, timeout=300)
    primary.psql("CREATE SEQUENCE chaos_seq")
    primary.psql("CHECKPOINT")
    stack.init("ingest.checkpoint_distance=1048576", "ingest.checkpoint_timeout='2s'",
               "pageread.wait_lsn_timeout='10s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    min_readable = Lsn.parse(status(stack, tenant, timeline)["min_readable_lsn"])
    standby_base = work_dir / "standby-base"
    pg_basebackup(primary, standby_base)
    primary.psql("ALTER SYSTEM SET autovacuum = on")
    primary.psql("SELECT pg_reload_conf()")
    db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
    accounts = int(primary.psql("SELECT pg_relation_filenode('pgbench_accounts')"))

    # Expected on the way: the other side of each kill and stop.
    stack.allowed_errors += [r"WAL source .* failed", r"loop failed",
                             r"the redo service failed", r"pagestream request failed"]
    reads, stop_reads, stop_load = Reads(), threading.Event(), threading.Event()
    load_failures: list[str] = []
    load = threading.Thread(target=pgbench_loop, args=(primary, stop_load, load_failures))
    reader = threading.Thread(target=gateway_reader, args=(
        stack, tenant, timeline, (1663, db, accounts, 0), min_readable, reads, stop_reads))
    load.start()
    reader.start()

    schedule = [*SERVICES, rng.choice(SERVICES)]
    rng.shuffle(schedule)
    for _ in range(2):
        schedule.insert(rng.randrange(len(schedule) + 1), "stop-start")
    print("chaos schedule:", schedule)
    t0 = time.monotonic()
    windows: list[tuple[float, float]] = []
    try:
        for event in schedule:
            # Let the WAL move and some of it reach layer files first.
            mark = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
            wait_until(lambda m=mark: Lsn.parse(status(stack, tenant, timeline)[
                "disk_consistent_lsn"]) >= m, timeout=120,
                what=f"layers flushed past {mark} before {event}")
            if rng.random() < 0.5:
                primary.psql("VACUUM pgbench_accounts")  # visibility-map changes too
            primary.psql("SELECT nextval('chaos_seq')")
            started = time.monotonic()
            if event == "stop-start":
                stack.run("stop")
                stack.run("start")
            else:
                stack.kill(event)
                stack.run("start")  # starts what is missing
            assert all(s["health"] == "SERVING" for s in stack.status()["services"].values())
            restarted = time.monotonic()
            wait_until(lambda t=restarted: reads.ok_since(t), timeout=90,
                       what=f"gateway reads after {event}")
            windows.append((started, time.monotonic()))
            print(f"{event}: {time.monotonic() - started:.1f}s to answer again "
                  f"(at {time.monotonic() - t0:.1f}s)")
    finally:
        stop_load.set()
        load.join(timeout=180)
        stop_reads.set()
        reader.join(timeout=60)
    print(f"chaos phase took {time.monotonic() - t0:.1f}s")
    assert not load_failures, load_failures
    assert not load.is_alive() and not reader.is_alive()

    # Reads failed only while something was down (or until it answered again).
    stray = [(t, err) for t, err in reads.results if err is not None
             and not any(a <= t <= b for a, b in windows)]
    assert not stray, stray[:5]
    assert sum(1 for _, err in reads.results if err is None) >= len(schedule)

    primary.psql("VACUUM")
    kinds = relation_kinds(primary)
    result = stop_primary_and_compare(stack, primary, tenant, timeline, standby_base,
                                      work_dir, kinds)
    print(f"compared {result.relations} relations: {dict(result.compared)} at "
          f"{time.monotonic() - t0:.1f}s")
    assert not result.mismatches, "\n".join(result.mismatches)
    assert result.compared["main"] > 300 and result.compared["vm"] > 0

    # Every value of every record from the base backup on is stored exactly once: no
    # gap and no overlap between layers however the flushes were cut short.
    tl_dir = stack.workdir / "tenants" / tenant / "timelines" / timeline
    quiesce_housekeeping(stack, tenant, timeline)
    compare_with_reference(primary, tl_dir, image_layer_lsn(tl_dir))
