"""The ingest service attached to a real primary, through the real CLI and processes:
attach (slot, base backup, import), streaming, the durability rule for the flush
position, kill -9 and resume, and bad sources."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from pagestore.layers.delta import DeltaLayerReader
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from pagestore.pg.walfiles import find_segments, read_wal_records
from services.ingest.timeline import load_state
from services.ingest.walingest import WalIngest
from tests.fixtures.consistency import relation_kinds
from tests.fixtures.postgres import pg_basebackup
from tests.fixtures.stack import StackRunner
from tests.fixtures.standby import stop_primary_and_compare
from tests.fixtures.util import client_channel, wait_until


def attach(stack: StackRunner, primary) -> tuple[str, str]:
    tenant = stack.run("tenant", "create").stdout.strip()
    source = f"host=127.0.0.1 port={primary.port} user={primary.user}"
    timeline = stack.run("timeline", "create", "--tenant", tenant, "--wal-source", source,
                         timeout=600).stdout.strip()
    return tenant, timeline


def status(stack: StackRunner, tenant: str, timeline: str) -> dict:
    out = stack.run("timeline", "status", "--tenant", tenant, "--timeline", timeline, "--json")
    return json.loads(out.stdout)


def caught_up(stack: StackRunner, tenant: str, timeline: str, lsn: Lsn) -> bool:
    return Lsn.parse(status(stack, tenant, timeline)["last_record_lsn"]) >= lsn


@pytest.mark.slow
def test_attach_stream_kill_and_resume(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    # autovacuum off: nothing may change the primary's files without WAL between our base
    # backup and the standby's (see tests/fixtures/standby.py).
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    primary.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 50000) g")
    primary.psql("VACUUM t")
    primary.psql("CHECKPOINT")
    stack.init("ingest.checkpoint_distance=1048576", "ingest.checkpoint_timeout='1s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    standby_base = work_dir / "standby-base"
    pg_basebackup(primary, standby_base)
    st = status(stack, tenant, timeline)
    assert st["state"] == "active" and st["wal_source"].startswith("host=127.0.0.1")
    tl_dir = stack.workdir / "tenants" / tenant / "timelines" / timeline
    base = image_layer_lsn(tl_dir)  # the base backup's start LSN
    assert Lsn.parse(st["min_readable_lsn"]) > base > Lsn(0)
    assert Lsn.parse(st["disk_consistent_lsn"]) >= base
    slot = f"pagestore_{timeline}"
    assert primary.psql(f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'") == "1"

    # Flush position seen by the primary never exceeds what is durable.

    from pagestore.proto import common_pb2, housekeeping_pb2_grpc

    violations: list[str] = []
    samples = collections.Counter[str]()  # "compared", "streaming" (a walsender was there)
    swallowed: list[str] = []  # failed samples (the stack is being restarted)
    stop_sampling = threading.Event()
    housekeeping = f"127.0.0.1:{stack.status()['services']['housekeeping']['port']}"
    ref = common_pb2.TimelineRef(tenant_id=tenant, timeline_id=timeline)

    def sample() -> None:
        # disk_consistent_lsn as `pagestore timeline status` gets it (the housekeeping
        # service's GetTimeline: ingest's live LSNs, the catalog's while ingest is down),
        # over one channel rather than a CLI process per sample, so that samples are many.
        with client_channel(housekeeping) as ch:
            stub = housekeeping_pb2_grpc.HousekeepingStub(ch)
            while not stop_sampling.is_set():
                try:
                    flush = primary.psql(
                        "SELECT coalesce(max(flush_lsn), '0/0') FROM pg_stat_replication")
                    durable = Lsn(stub.GetTimeline(ref, timeout=10).disk_consistent_lsn)
                except Exception as e:  # the stack is being restarted
                    swallowed.append(f"{type(e).__name__}: {str(e)[:200]}")
                    stop_sampling.wait(0.2)
                    continue
                samples["compared"] += 1
                if Lsn.parse(flush) > Lsn(0):
                    samples["streaming"] += 1
                if Lsn.parse(flush) > durable:
                    violations.append(f"flush {flush} > disk_consistent {durable}")
                stop_sampling.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    pgbench = subprocess.Popen(
        [primary.bin("pgbench"), "-i", "-s", "3", "-h", "127.0.0.1", "-p", str(primary.port),
         "-U", primary.user, "postgres"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = pgbench.communicate(timeout=300)
    assert pgbench.returncode == 0, err
    run = subprocess.Popen(
        [primary.bin("pgbench"), "-c", "4", "-j", "2", "-T", "12", "-h", "127.0.0.1", "-p",
         str(primary.port), "-U", primary.user, "postgres"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Let some layers reach the disk, then kill the ingest process without warning.
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"]) > base
               + 4 * 1024 * 1024, timeout=120, what="layers flushed")
    ingest_pid = stack.status()["services"]["ingest"]["pid"]
    os.kill(ingest_pid, signal.SIGKILL)
    wait_until(lambda: stack.status()["services"]["ingest"]["health"] == "DOWN", timeout=30,
               what="ingest down")
    stack.allowed_errors.append(r"WAL source .* failed")  # the other side of the kill
    log_before = (stack.workdir / "logs" / "ingest.log").read_text()
    stack.run("start")  # starts only the missing service
    # The restarted ingest streams from disk_consistent_lsn, as loaded from the layers.
    def resumed() -> tuple[str, str] | None:
        log = (stack.workdir / "logs" / "ingest.log").read_text()[len(log_before):]
        loaded = re.search(r"timeline loaded disk_consistent_lsn=(\S+)", log)
        started = re.search(r"streaming started .* start_lsn=(\S+)", log)
        return (loaded.group(1), started.group(1)) if loaded and started else None
    loaded_at, started_at = wait_until(resumed, timeout=60, what="streaming resumed")
    assert loaded_at == started_at
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=180, what="caught up")
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"]) >= end,
               timeout=60, what="flushed to disk")
    wait_until(lambda: Lsn.parse(primary.psql(
        f"SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")) >= end,
        timeout=30, what="slot restart_lsn advanced")
    stop_sampling.set()
    sampler.join(timeout=60)
    assert not sampler.is_alive(), "the flush-position sampler did not stop"
    assert not violations, violations[:5]
    # The check above ran for real: many comparisons, at least ten of them against a live
    # walsender's flush position (not the 0/0 of an empty pg_stat_replication), and the
    # failures it swallowed (the restart window) are the exception, not the rule.
    sampled = (f"{samples['compared']} samples compared ({samples['streaming']} while "
               f"streaming), {len(swallowed)} failed: {swallowed[:5]}")
    assert samples["compared"] >= 10, sampled
    assert samples["streaming"] >= 10, sampled
    assert len(swallowed) < samples["compared"], sampled

    # After the kill, every page served equals PostgreSQL's own replay of the same WAL
    # (a standby from the same images, replayed to the primary's last record).
    kinds = relation_kinds(primary)
    result = stop_primary_and_compare(stack, primary, tenant, timeline, standby_base,
                                      work_dir, kinds)
    assert not result.mismatches, "\n".join(result.mismatches)
    assert result.compared["main"] > 1000
    quiesce_housekeeping(stack, tenant, timeline)
    stack.run("stop")
    # Stored (key, lsn) pairs: exactly those a straight decode of the primary's WAL gives.
    compare_with_reference(primary, tl_dir, base)


def quiesce_housekeeping(stack: StackRunner, tenant: str, timeline: str) -> None:
    """No scheduled housekeeping job from now on, and none running: after the last one
    (a compaction run now waits for a running job, and sweeps what killed ones left), the
    directory holds exactly the registered layer files."""
    stack.run("tenant", "config", "--tenant", tenant, "compaction_period='0s'",
              "gc_period='0s'")
    stack.run("timeline", "compact", "--tenant", tenant, "--timeline", timeline, timeout=600)


def layer_files(tl_dir: Path) -> tuple[list[Path], list[Path]]:
    """The image layers (the attach-time import first) and the delta layers (L0s, and the
    L1s compaction made of them: the same values)."""
    names = [p for p in tl_dir.iterdir() if "__" in p.name and not p.name.endswith("___temp")]
    image = sorted((p for p in names if "-" not in p.name.split("__")[1]),
                   key=lambda p: p.name.split("__")[1])
    deltas = [p for p in names if "-" in p.name.split("__")[1]]
    return image, deltas


def image_layer_lsn(tl_dir: Path) -> Lsn:
    """The attach-time import's LSN (housekeeping's images are newer)."""
    image, _ = layer_files(tl_dir)
    assert image
    return Lsn(int(image[0].name.split("__")[1], 16))


def compare_with_reference(primary, tl_dir: Path, base: Lsn) -> None:
    image, deltas = layer_files(tl_dir)
    image = image[:1]
    assert deltas
    stored: collections.Counter[tuple[bytes, int]] = collections.Counter()
    last = Lsn(0)
    for p in deltas:
        with DeltaLayerReader(p) as r:
            last = max(last, Lsn(r.lsn_end - 1))
            for key, lsn, _w, _v in r.iter_all():
                stored[(key.to_bytes(), int(lsn))] += 1
    assert max(stored.values()) == 1, "a (key, lsn) pair is stored twice"
    from pagestore import values
    from pagestore.layers.image import ImageLayerReader
    from pagestore.timeline import TimelineView

    with ImageLayerReader(image[0]) as r:
        rec = r.desc()
    state = load_state(TimelineView(LayerMap(tl_dir, [rec])), base)
    reference = WalIngest(state, read_page=lambda key, lsn: values.image(b""))
    out: list = []
    for record in read_wal_records(find_segments([primary.datadir / "pg_wal"]), base):
        if record.end_lsn > last:
            break
        reference.ingest(record, out)
    expected = {(k, int(lsn)) for k, lsn, _ in out}
    assert set(stored) == expected


def test_nonsense_source_at_attach(stack: StackRunner, pg_factory, proxy_factory) -> None:
    primary = pg_factory()
    proxy = proxy_factory(primary.port)
    proxy.mode = "garbage"
    stack.init()
    stack.start()
    tenant = stack.run("tenant", "create").stdout.strip()
    stack.allowed_errors.append(r"rpc failed")
    proc = stack.run("timeline", "create", "--tenant", tenant, "--wal-source",
                     f"host=127.0.0.1 port={proxy.port} user={primary.user}", check=False)
    assert proc.returncode == 1
    assert "does not speak the PostgreSQL protocol" in proc.stderr, proc.stderr
    assert f"port={proxy.port}" in proc.stderr
    timelines = json.loads(stack.run("timeline", "list", "--tenant", tenant, "--json").stdout)
    assert [t["state"] for t in timelines] == ["broken"]
    assert stack.status()["services"]["ingest"]["health"] == "SERVING"
    # Nothing was created on the real primary behind the proxy.
    assert primary.psql("SELECT count(*) FROM pg_replication_slots") == "0"


def test_source_turns_to_nonsense_midstream(stack: StackRunner, pg_factory, proxy_factory) -> None:
    primary = pg_factory()
    proxy = proxy_factory(primary.port)
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    tenant = stack.run("tenant", "create").stdout.strip()
    timeline = stack.run("timeline", "create", "--tenant", tenant, "--wal-source",
                         f"host=127.0.0.1 port={proxy.port} user={primary.user}").stdout.strip()
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    lsn = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"]) >= lsn,
               timeout=60, what="first rows durable")
    ingest_pid = stack.status()["services"]["ingest"]["pid"]
    slot = f"pagestore_{timeline}"

    proxy.mode = "garbage"
    proxy.cut()
    stack.allowed_errors.append(r"WAL source .* failed")
    primary.psql("INSERT INTO t SELECT g FROM generate_series(1, 5000) g")
    before = proxy.connections
    wait_until(lambda: proxy.connections >= before + 2, timeout=60, what="reconnect attempts")
    log = (stack.workdir / "logs" / "ingest.log").read_text()
    assert re.search(r"receiver loop failed.*WAL source .* failed.*restarting in", log)
    durable = Lsn.parse(status(stack, tenant, timeline)["disk_consistent_lsn"])
    restart = Lsn.parse(primary.psql(
        f"SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"))
    assert restart <= durable  # nothing acknowledged beyond what is stored
    assert stack.status()["services"]["ingest"] == {**stack.status()["services"]["ingest"],
                                                    "pid": ingest_pid, "health": "SERVING"}

    proxy.mode = "forward"
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=90, what="recovered")


def test_ingest_grpc_api(stack: StackRunner, pg_factory) -> None:
    import grpc

    from pagestore import keys, values
    from pagestore.errors import ERROR_CLASS_METADATA_KEY
    from pagestore.proto import common_pb2, ingest_pb2, ingest_pb2_grpc

    primary = pg_factory()
    primary.psql("CREATE TABLE t (a int, b text)")
    stack.init()
    stack.start()
    tenant, timeline = attach(stack, primary)
    port = stack.status()["services"]["ingest"]["port"]
    ref = common_pb2.TimelineRef(tenant_id=tenant, timeline_id=timeline)
    with client_channel(f"127.0.0.1:{port}") as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        lsns = stub.GetTimelineLsns(ref, timeout=10)
        assert lsns.state == "streaming" or lsns.state == "connecting"
        assert lsns.last_record_lsn >= lsns.disk_consistent_lsn > 0

        # WaitForLsn: returns once the WAL is ingested; times out with LsnTimeout.
        target = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
        got = stub.WaitForLsn(ingest_pb2.WaitForLsnRequest(timeline=ref, lsn=target,
                                                           timeout_ms=30000), timeout=40)
        assert got.last_record_lsn >= target
        try:
            stub.WaitForLsn(ingest_pb2.WaitForLsnRequest(timeline=ref, lsn=lsns.min_readable_lsn - 8,
                                                         timeout_ms=300), timeout=10)
            raise AssertionError("WaitForLsn below the first readable LSN returned")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.OUT_OF_RANGE
            assert str(Lsn(lsns.min_readable_lsn)) in e.details()
        try:
            stub.WaitForLsn(ingest_pb2.WaitForLsnRequest(timeline=ref, lsn=target + (1 << 40),
                                                         timeout_ms=300), timeout=10)
            raise AssertionError("WaitForLsn for an LSN that never arrives returned")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert (ERROR_CLASS_METADATA_KEY, "LsnTimeout") in tuple(
                (m.key, m.value) for m in e.trailing_metadata())

        # SubscribeWal: values of the table's blocks arrive as rows are inserted.
        relnode = int(primary.psql("SELECT pg_relation_filenode('t')"))
        dboid = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        lo, hi = keys.rel_key_range(keys.RelTag(1663, dboid, relnode, 0))
        stream = stub.SubscribeWal(ingest_pb2.SubscribeWalRequest(
            timeline=ref, from_lsn=got.disk_consistent_lsn, key_start=lo.to_bytes(),
            key_end=hi.to_bytes()), timeout=60)
        primary.psql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g")
        seen = []
        for batch in stream:
            assert not batch.values  # ingest sends them packed
            for kb, _lsn, value in values.unpack_values(batch.packed_values):
                assert lo.to_bytes() <= kb < hi.to_bytes()
                assert value
                seen.append(kb)
            if seen:
                break
        stream.cancel()
        assert keys.Key.from_bytes(seen[0]).rel_tag().relnode == relnode

        # Errors: below disk_consistent_lsn, and unknown timelines.
        try:
            next(iter(stub.SubscribeWal(ingest_pb2.SubscribeWalRequest(
                timeline=ref, from_lsn=1), timeout=10)))
            raise AssertionError("a subscription below disk_consistent_lsn was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        try:
            stub.GetTimelineLsns(common_pb2.TimelineRef(tenant_id=tenant, timeline_id="0" * 32),
                                 timeout=10)
            raise AssertionError("an unknown timeline was found")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
