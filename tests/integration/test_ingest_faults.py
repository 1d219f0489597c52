"""Faults in ingest's receiver and flusher, made certain with failpoints
(pagestore.failpoints): each happens, ingest recovers by itself (or after the restart a
kill calls for), nothing acknowledged is lost, nothing is stored twice, and every page
equals a physical standby's replay of the same WAL.

One timeline goes through every fault in turn (they share the set-up, not their state):
a decode that fails once; flushes failing before the file, after the file and after the
catalog commit; a kill between a layer file and its row; and a clean stop while several
frozen layers wait to be flushed slowly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pagestore.layers.names import LayerKind, parse_layer_name
from pagestore.lsn import Lsn
from tests.fixtures.consistency import relation_kinds
from tests.fixtures.postgres import pg_basebackup
from tests.fixtures.stack import StackRunner
from tests.fixtures.standby import stop_primary_and_compare
from tests.fixtures.util import wait_until
from tests.integration.test_ingest_service import (
    attach,
    compare_with_reference,
    image_layer_lsn,
    quiesce_housekeeping,
    status,
)


def failpoint(stack: StackRunner, service: str, name: str, action: str) -> None:
    stack.run("failpoint", service, name, action)


def hits(stack: StackRunner, service: str, name: str) -> int:
    out = stack.run("failpoint", service).stdout
    m = re.search(rf"^{re.escape(name)}\s+\S+\s+hits=(\d+)$", out, re.MULTILINE)
    assert m, out
    return int(m.group(1))


def loop_status(stack: StackRunner, tenant: str, timeline: str, service: str,
                name: str) -> dict:
    st = status(stack, tenant, timeline)
    found = [lp for lp in st["loops"] if (lp["service"], lp["name"]) == (service, name)]
    assert len(found) == 1, st["loops"]
    return found[0]


def log_since(stack: StackRunner, service: str, offset: int) -> str:
    return (stack.workdir / "logs" / f"{service}.log").read_text()[offset:]


def log_size(stack: StackRunner, service: str) -> int:
    return len((stack.workdir / "logs" / f"{service}.log").read_text())


@pytest.mark.slow
def test_ingest_faults_lose_nothing(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    primary.psql("CREATE TABLE t (id int, v text)")
    primary.psql("CHECKPOINT")
    stack.init("ingest.checkpoint_distance=262144", "ingest.checkpoint_timeout='1s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    standby_base = work_dir / "standby-base"
    pg_basebackup(primary, standby_base)  # the primary is idle: the same images as ours
    tl_dir = stack.workdir / "tenants" / tenant / "timelines" / timeline
    stack.allowed_errors += [r"flusher loop failed unexpectedly", r"receiver loop failed"]
    rows = 0

    def insert(n: int) -> Lsn:
        nonlocal rows
        primary.psql(f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series({rows + 1}, "
                     f"{rows + n}) g")
        rows += n
        return Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))

    def durable(lsn: Lsn, what: str) -> None:
        wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
                   >= lsn, timeout=120, what=what)

    # A record that cannot be ingested (here: an unexpected error before decoding) makes
    # the receiver reload from disk_consistent_lsn and stream again.
    failpoint(stack, "ingest", "ingest-receiver-record", "1*return")
    durable(insert(500), "WAL after a failed decode")
    assert hits(stack, "ingest", "ingest-receiver-record") == 1
    receiver = loop_status(stack, tenant, timeline, "ingest", "receiver")
    assert receiver["restarts"] == 1 and receiver["state"] == "running"
    assert "FailpointError: failpoint ingest-receiver-record" in receiver["last_error"]
    assert "reloading from disk_consistent_lsn" in log_since(stack, "ingest", 0)

    # A flush that fails is retried, with backoff, the same layer: never abandoned.
    failpoint(stack, "ingest", "ingest-flush-start", "2*return")
    durable(insert(2000), "layers flushed after two failed flushes")
    assert hits(stack, "ingest", "ingest-flush-start") == 2
    flusher = loop_status(stack, tenant, timeline, "ingest", "flusher")
    assert flusher["restarts"] == 2
    assert flusher["last_error"] == "FailpointError: failpoint ingest-flush-start"

    # Failing after the file is linked, before its row: the retry replaces the file.
    failpoint(stack, "ingest", "ingest-flush-after-write", "1*return")
    durable(insert(2000), "layers flushed after a failed commit")
    assert hits(stack, "ingest", "ingest-flush-after-write") == 1

    # Failing after the commit (its answer lost): the retry finds the flush registered.
    offset = log_size(stack, "ingest")
    failpoint(stack, "ingest", "ingest-flush-after-commit", "1*return")
    durable(insert(2000), "layers flushed after a lost commit answer")
    assert hits(stack, "ingest", "ingest-flush-after-commit") == 1
    assert "(registered by an earlier attempt)" in log_since(stack, "ingest", offset)

    # Killed between a layer file and its row: the restart sweeps the file away and
    # streams that WAL again.
    failpoint(stack, "ingest", "ingest-flush-after-write", "1*kill")
    insert(2000)
    wait_until(lambda: stack.status()["services"]["ingest"]["health"] == "DOWN", timeout=60,
               what="ingest killed by the failpoint")
    registered = Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
    orphans = [p.name for p in tl_dir.iterdir() if "__" in p.name and not
               p.name.endswith("___temp") and parse_layer_name(p.name).kind is LayerKind.DELTA
               and parse_layer_name(p.name).lsn_start == registered + 1]
    assert len(orphans) == 1, orphans  # written, linked, never registered
    offset = log_size(stack, "ingest")
    stack.run("start")
    durable(insert(100), "WAL after the restart")
    assert f"removed leftover layer file {tl_dir / orphans[0]} (not registered)" in \
        log_since(stack, "ingest", offset)

    # A clean stop while frozen layers wait for slow flushes: every one of them is
    # flushed, oldest first, before ingest exits; the restart streams nothing twice.
    failpoint(stack, "ingest", "ingest-flush-start", "sleep(700)")
    end = insert(15000)
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["last_record_lsn"]) >= end,
               timeout=120, what="all WAL received")
    queued = Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
    assert queued < end, "nothing was waiting to be flushed: the stop tests nothing"
    offset = log_size(stack, "ingest")
    stack.run("stop")
    stack.run("start")
    loaded = re.search(r"timeline loaded disk_consistent_lsn=(\S+)",
                       log_since(stack, "ingest", offset))
    assert loaded and Lsn.parse(loaded.group(1)) >= end, loaded
    assert "frozen layers not flushed" not in log_since(stack, "ingest", offset)
    durable(insert(100), "WAL after the clean restart")

    # Nothing lost, nothing twice: the stored values are exactly those of a straight
    # decode of the primary's WAL, and every page equals PostgreSQL's own replay.
    kinds = relation_kinds(primary)
    result = stop_primary_and_compare(stack, primary, tenant, timeline, standby_base,
                                      work_dir, kinds)
    quiesce_housekeeping(stack, tenant, timeline)
    compare_with_reference(primary, tl_dir, image_layer_lsn(tl_dir))
    assert not result.mismatches, "\n".join(result.mismatches)
    assert result.compared["main"] > 100
