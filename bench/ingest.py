"""Ingest benchmark: WAL as production makes it, through the stack and standalone.

    .venv/bin/python bench/ingest.py [--scale 20] [--duration 20] [--profile] [--keep]

Every page arrives through WAL: a PostgreSQL 15 primary is created empty, the stack (the
catalog and the five services, in a temporary workdir) is attached to it with a new
timeline, and pageread is made to serve that timeline (one GetRelSize through the page
API), so it subscribes to ingest's recent WAL as it does for a compute.  Then, in one run:

bulk load   `pgbench -i -s <scale>` (default 20): the primary's time (wall time of
            pgbench -i), the WAL it wrote (pg_current_wal_insert_lsn before, the flush
            LSN after; records counted by pg_waldump --stats), and pagestore's catch-up
            time: from the start of the load until ingest's last_record_lsn reaches the
            primary's end (WaitForLsn: ingest answers when it gets there, nothing polls
            it), and until the subscriber (pageread) has it too.  MB/s and records/s of
            both, and the ratio catch-up / primary time, target <= 1.1.
OLTP        `pgbench -c 4 -j 2 -T <duration>` (default 20 s): the primary's WAL rate in
            MB/s and records/s beside ingest's over the same run, ingest's lag (sampled
            every 0.5 s: max and at the end) and its catch-up after the run.
standalone  the same WAL again, in this process, with the code the ingest service runs
            (pagestore.pg.walfiles decoding, services/ingest/walingest.WalIngest, the
            InMemoryLayer), no network and no services: records/s and MB/s of the OLTP
            WAL (target >= 200,000 records/s) and of the bulk load's; beside them a
            decode-only pass over the same records (the floor under this code) and
            pg_waldump --stats over the same range (the peer: PostgreSQL's own decoder,
            in C).  Writing the in-memory layers out as L0 delta files (the flusher's
            work, a thread in the service) is timed apart.

MB is 10^6 bytes.  --profile adds a cProfile of the standalone OLTP pass (a copy of the
state, after the timed pass): the functions with the most own time.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import psycopg  # noqa: E402

from bench.redo import machine_facts  # noqa: E402
from pagestore import values  # noqa: E402
from pagestore.keys import KEY_MAX, KEY_MIN  # noqa: E402
from pagestore.layers.delta import DeltaLayerWriter  # noqa: E402
from pagestore.layers.format import FLAG_WILL_INIT  # noqa: E402
from pagestore.layers.image import ImageLayerReader  # noqa: E402
from pagestore.layers.inmemory import InMemoryLayer  # noqa: E402
from pagestore.layers.layermap import LayerMap  # noqa: E402
from pagestore.layers.names import LayerKind, is_temp_layer_file_name, parse_layer_name  # noqa: E402
from pagestore.lsn import Lsn  # noqa: E402
from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port  # noqa: E402
from pagestore.pg.walfiles import find_segments, read_wal_records  # noqa: E402
from pagestore.proto import (  # noqa: E402
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    page_service_pb2,
    page_service_pb2_grpc,
    pageread_pb2,
    pageread_pb2_grpc,
)
from pagestore.timeline import TimelineView  # noqa: E402
from services.ingest.timeline import load_state  # noqa: E402
from services.ingest.walingest import WalIngest  # noqa: E402

MB = 1_000_000
BULK_RATIO_TARGET = 1.1
OLTP_RECORDS_TARGET = 200_000
CHECKPOINT_DISTANCE = 64 * 1024 * 1024  # ingest.checkpoint_distance's default
SERVICES = ("ingest", "pageread", "redo", "housekeeping", "gateway")


def cli(workdir: Path, *args: str, timeout: float = 900) -> str:
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir),
                           *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"pagestore {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def new_primary(base: Path, **settings: str) -> PgCluster:
    """The primary a benchmark streams from (not created yet)."""
    conf = {"wal_level": "replica", "max_wal_senders": "10", "max_replication_slots": "10",
            "wal_keep_size": "'8GB'", "max_wal_size": "'4GB'", "shared_buffers": "'256MB'"}
    conf.update(settings)
    return PgCluster(datadir=base / "primary", port=free_port(), bin_dir=find_pg_bin_dir(),
                     logfile=base / "primary.log", settings=conf)


class PrimaryLsns:
    """The primary's WAL positions over one libpq connection (no psql per sample)."""

    def __init__(self, primary: PgCluster) -> None:
        self.conn = psycopg.connect(primary.conninfo(), autocommit=True)

    def _lsn(self, fn: str) -> Lsn:
        row = self.conn.execute(f"SELECT {fn}()::text").fetchone()
        assert row is not None
        return Lsn.parse(row[0])

    def insert(self) -> Lsn:
        return self._lsn("pg_current_wal_insert_lsn")

    def flush(self) -> Lsn:
        return self._lsn("pg_current_wal_flush_lsn")

    def close(self) -> None:
        self.conn.close()


def waldump_stats(primary: PgCluster, start: Lsn, end: Lsn) -> tuple[int, float]:
    """Records pg_waldump decodes in [start, end) of the primary's pg_wal, and its time."""
    argv = [primary.bin("pg_waldump"), "--stats", "-p", str(primary.datadir / "pg_wal"),
            "-s", str(start), "-e", str(end)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    secs = time.perf_counter() - t0
    m = re.search(r"^Total\s+(\d+)", proc.stdout, re.M)
    if m is None:
        raise SystemExit(f"{' '.join(argv)}: no Total line\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-2000:]}")
    return int(m.group(1)), secs


class Stack:
    """The pagestore stack in ``workdir``, attached to ``primary`` with a new timeline,
    with gRPC stubs to ask ingest and pageread where they are."""

    def __init__(self, workdir: Path, primary: PgCluster) -> None:
        self.workdir = workdir
        self.primary = primary
        self.tenant = self.timeline = ""
        self.channels: list[grpc.Channel] = []

    def start(self, *config: str) -> float:
        """Init, start, create a tenant and attach a timeline; the attach's seconds."""
        cli(self.workdir, "init", "-c", "catalog.port=0",
            *[x for s in SERVICES for k in ("listen_addr", "listen_http_addr")
              for x in ("-c", f"{s}.{k}='127.0.0.1:0'")],
            "-c", "gateway.listen_pg_addr='127.0.0.1:0'", *[x for c in config for x in ("-c", c)])
        cli(self.workdir, "start")
        self.tenant = cli(self.workdir, "tenant", "create").strip()
        t0 = time.perf_counter()
        self.timeline = cli(self.workdir, "timeline", "create", "--tenant", self.tenant,
                            "--wal-source", f"host=127.0.0.1 port={self.primary.port} "
                            f"user={self.primary.user}").strip()
        attach = time.perf_counter() - t0
        ports = {name: svc["port"] for name, svc in
                 json.loads(cli(self.workdir, "status", "--json"))["services"].items()}
        ingest = grpc.insecure_channel(f"127.0.0.1:{ports['ingest']}")
        pageread = grpc.insecure_channel(f"127.0.0.1:{ports['pageread']}")
        self.channels = [ingest, pageread]
        self.ingest = ingest_pb2_grpc.IngestStub(ingest)
        self.pages = page_service_pb2_grpc.PageServiceStub(pageread)
        self.extras = pageread_pb2_grpc.PageReadExtrasStub(pageread)
        self.ref = common_pb2.TimelineRef(tenant_id=self.tenant, timeline_id=self.timeline)
        self.md = (("neon-tenant-id", self.tenant), ("neon-timeline-id", self.timeline),
                   ("neon-shard-id", "0000"))
        return attach

    @property
    def timeline_dir(self) -> Path:
        return self.workdir / "tenants" / self.tenant / "timelines" / self.timeline

    def lsns(self) -> ingest_pb2.TimelineLsns:
        return self.ingest.GetTimelineLsns(self.ref, timeout=10)

    def ingest_lsn(self) -> Lsn:
        return Lsn(self.lsns().last_record_lsn)

    def wait_ingest(self, lsn: Lsn, timeout: float = 3600) -> None:
        """Until ingest's last_record_lsn >= lsn: ingest answers when it gets there."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ingest.WaitForLsn(ingest_pb2.WaitForLsnRequest(
                    timeline=self.ref, lsn=int(lsn), timeout_ms=30_000), timeout=60)
                return
            except grpc.RpcError as e:
                if (e.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                        or time.monotonic() > deadline):
                    raise

    def wait_disk_consistent(self, lsn: Lsn, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while Lsn(self.lsns().disk_consistent_lsn) < lsn:
            if time.monotonic() > deadline:
                raise SystemExit(f"disk_consistent_lsn did not reach {lsn} in {timeout:.0f} s")
            time.sleep(0.5)

    def pageread_status(self) -> pageread_pb2.TimelineReadStatus:
        return self.extras.GetTimelineStatus(pageread_pb2.GetTimelineStatusRequest(),
                                             metadata=self.md, timeout=10)

    def follower(self) -> str:
        """pageread's tail follower of the timeline: its state and what it says."""
        for lp in self.pageread_status().loops:
            if lp.name == "tail-follower":
                return f"{lp.state}: {lp.detail}" + (f" (last error: {lp.last_error})"
                                                     if lp.last_error else "")
        return "none"

    def serve_from_pageread(self) -> None:
        """One GetRelSize (pg_class of the postgres database) through the page API:
        pageread loads the timeline and subscribes to ingest's recent WAL."""
        db = int(self.primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        relnode = int(self.primary.psql("SELECT pg_relation_filenode('pg_class')"))
        lsn = self.ingest_lsn()
        self.pages.GetRelSize(page_service_pb2.GetRelSizeRequest(
            read_lsn=page_service_pb2.ReadLsn(request_lsn=int(lsn)),
            rel=page_service_pb2.RelTag(spc_oid=1663, db_oid=db, rel_number=relnode,
                                        fork_number=0)), metadata=self.md, timeout=60)
        deadline = time.monotonic() + 60
        while "following" not in self.follower():
            if time.monotonic() > deadline:
                raise SystemExit(f"pageread does not follow ingest: {self.follower()}")
            time.sleep(0.1)

    def wait_pageread(self, lsn: Lsn, timeout: float) -> bool:
        """Until pageread's last_record_lsn >= lsn (polled every 50 ms); False on timeout."""
        deadline = time.monotonic() + timeout
        while Lsn(self.pageread_status().last_record_lsn) < lsn:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def layer_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.timeline_dir.iterdir()
                   if "__" in p.name and not is_temp_layer_file_name(p.name))

    def stop(self) -> None:
        for ch in self.channels:
            ch.close()
        subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(self.workdir),
                        "stop"], capture_output=True)


def copy_import_images(tl_dir: Path, dest: Path) -> None:
    """Copy the attach-time import's image layer files (the oldest images) to dest."""
    images = [(parse_layer_name(p.name), p) for p in tl_dir.iterdir()
              if "__" in p.name and not is_temp_layer_file_name(p.name)]
    images = [(n, p) for n, p in images if n.kind is LayerKind.IMAGE]
    first = min(n.lsn for n, _ in images)
    dest.mkdir()
    for n, p in images:
        if n.lsn == first:
            shutil.copy2(p, dest / p.name)


@dataclass
class Pass:
    records: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    write_seconds: float = 0.0  # the L0 delta layer files, timed apart
    decode_seconds: float = 0.0  # a decode-only pass over the same records

    def rate(self) -> float:
        return self.records / self.seconds


def write_l0(layer: InMemoryLayer, end: Lsn, out_dir: Path) -> None:
    """What the flusher does with a frozen layer (the catalog commit aside)."""
    layer.freeze(Lsn(end + 1))
    with DeltaLayerWriter(out_dir, KEY_MIN, KEY_MAX, layer.start_lsn, Lsn(end + 1)) as w:
        for key, lsn, value in layer.sorted_items():
            w.put_raw(key, lsn, FLAG_WILL_INIT if values.will_init(value) else 0, value)
        w.finish()


def standalone(images: Path, wal_dir: Path, ranges: list[tuple[Lsn, Lsn]], out_dir: Path,
               profile: bool) -> tuple[list[Pass], pstats.Stats | None]:
    """Ingest the WAL from the import's LSN through the last range, timing each range:
    decode + WalIngest + InMemoryLayer.put (the layer rolled at checkpoint_distance as
    ingest does), then the L0 writes, then a decode-only pass.  The records between the
    ranges are ingested untimed (the state must follow them)."""
    descs = []
    for p in sorted(images.iterdir()):
        with ImageLayerReader(p) as r:
            descs.append(r.desc())
    base = Lsn(min(d.lsn_start for d in descs))
    view = TimelineView(LayerMap(images, descs))
    ingest = WalIngest(load_state(view, base), read_page=view.value)
    segments = find_segments([wal_dir])
    out: list[tuple[bytes, int, bytes]] = []  # walingest.Values
    pos = base
    passes = []
    perf = time.perf_counter
    snapshot = None
    for i, (start, end) in enumerate(ranges):
        for rec in read_wal_records(segments, pos, start):
            out.clear()
            ingest.ingest(rec, out)
        if profile and i == len(ranges) - 1:
            snapshot = copy.deepcopy(ingest.state)
        ps = Pass(nbytes=end - start)
        layer = InMemoryLayer(Lsn(start + 1))
        frozen = []
        wal_start = last = int(start)
        put = layer.put_raw
        t0 = perf()
        for rec in read_wal_records(segments, start, end):
            out.clear()
            ingest.ingest(rec, out)
            for key, lsn, value in out:
                put(key, lsn, value)
            ps.records += 1
            last = rec.end_lsn
            if last - wal_start >= CHECKPOINT_DISTANCE:
                frozen.append((layer, Lsn(last)))
                layer = InMemoryLayer(Lsn(last + 1))
                put = layer.put_raw
                wal_start = last
        ps.seconds = perf() - t0
        frozen.append((layer, Lsn(last)))
        t0 = perf()
        for lay, last in frozen:
            if lay.count:
                write_l0(lay, last, out_dir)
        ps.write_seconds = perf() - t0
        del frozen, layer
        n = 0
        t0 = perf()
        for _ in read_wal_records(segments, start, end):
            n += 1
        ps.decode_seconds = perf() - t0
        assert n == ps.records, (n, ps.records)
        passes.append(ps)
        pos = end
    if snapshot is not None:
        start, end = ranges[-1]
        again = WalIngest(snapshot, read_page=view.value)
        layer = InMemoryLayer(Lsn(start + 1))

        def run() -> None:
            for rec in read_wal_records(segments, start, end):
                out.clear()
                again.ingest(rec, out)
                for key, lsn, value in out:
                    layer.put_raw(key, lsn, value)

        prof = cProfile.Profile()
        prof.runcall(run)
        return passes, pstats.Stats(prof, stream=sys.stdout)
    return passes, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=20, help="pgbench -i scale (default 20)")
    ap.add_argument("--duration", type=int, default=20, help="pgbench -T seconds (default 20)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the standalone OLTP pass (cProfile)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    base_dir = Path(tempfile.mkdtemp(prefix="pagestore-bench-ingest-"))
    base_dir.chmod(0o755)  # the postgres OS user runs the primary when we are root
    primary = new_primary(base_dir)
    stack = Stack(base_dir / "ws", primary)
    lsns: PrimaryLsns | None = None
    try:
        print(f"{machine_facts(primary.bin_dir)}; load average {os.getloadavg()[0]:.2f}",
              flush=True)
        primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        primary.start()
        conn = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user]
        attach_s = stack.start()
        copy_import_images(stack.timeline_dir, base_dir / "import")
        stack.serve_from_pageread()
        lsns = PrimaryLsns(primary)
        stack.wait_ingest(lsns.flush())
        print(f"stack attached to an empty primary in {attach_s:.1f} s; pageread's tail "
              f"follower: {stack.follower()}", flush=True)

        # ---- bulk load through the stack
        bulk_start = lsns.insert()
        t0 = time.perf_counter()
        subprocess.run([primary.bin("pgbench"), "-i", "-q", "-s", str(args.scale), *conn,
                        "postgres"], check=True, capture_output=True)
        bulk_primary_s = time.perf_counter() - t0
        bulk_end = lsns.flush()
        stack.wait_ingest(bulk_end)
        bulk_ingest_s = time.perf_counter() - t0
        pr_ok = stack.wait_pageread(bulk_end, timeout=300)
        bulk_pageread_s = time.perf_counter() - t0
        bulk_follower = stack.follower()

        # ---- OLTP through the stack
        stack.wait_ingest(lsns.flush())
        oltp_start = lsns.flush()
        t0 = time.perf_counter()
        bench = subprocess.Popen([primary.bin("pgbench"), "-c", "4", "-j", "2", "-T",
                                  str(args.duration), *conn, "postgres"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        max_lag = 0
        while bench.poll() is None:
            ours = stack.ingest_lsn()  # read before the primary's: never understated
            max_lag = max(max_lag, lsns.flush() - ours)
            time.sleep(0.5)
        oltp_primary_s = time.perf_counter() - t0
        ours = stack.ingest_lsn()
        oltp_end = lsns.flush()
        end_lag = max(0, oltp_end - ours)
        max_lag = max(max_lag, end_lag)
        stack.wait_ingest(oltp_end)
        oltp_ingest_s = time.perf_counter() - t0
        oltp_pr_ok = stack.wait_pageread(oltp_end, timeout=120)
        oltp_pageread_s = time.perf_counter() - t0
        output = bench.stdout.read() if bench.stdout else ""
        tps = next((f"{float(line.split('=')[1].split()[0]):,.0f}"
                    for line in output.splitlines() if line.startswith("tps")), "?")
        lsns.close()
        lsns = None
        stack.stop()
        primary.stop("fast")

        bulk_records, bulk_dump_s = waldump_stats(primary, bulk_start, bulk_end)
        oltp_records, oltp_dump_s = waldump_stats(primary, oltp_start, oltp_end)

        # ---- standalone, same WAL
        out_dir = base_dir / "standalone"
        out_dir.mkdir()
        (bulk, oltp), prof = standalone(base_dir / "import", primary.datadir / "pg_wal",
                                [(bulk_start, bulk_end), (oltp_start, oltp_end)], out_dir,
                                args.profile)

        def mbs(nbytes: int, secs: float) -> str:
            return f"{nbytes / MB / secs:7.1f} MB/s"

        def rps(records: int, secs: float) -> str:
            return f"{records / secs:>9,.0f} records/s"

        nb = bulk_end - bulk_start
        ratio = bulk_ingest_s / bulk_primary_s
        print(f"\nbulk load, pgbench -i -s {args.scale} through the stack: "
              f"{nb / MB:.0f} MB of WAL, {bulk_records:,} records")
        print(f"  primary writes it       {bulk_primary_s:6.1f} s  {mbs(nb, bulk_primary_s)}"
              f"  {rps(bulk_records, bulk_primary_s)}")
        print(f"  ingest has it after     {bulk_ingest_s:6.1f} s  {mbs(nb, bulk_ingest_s)}"
              f"  {rps(bulk_records, bulk_ingest_s)}")
        print(f"  pageread has it after   {bulk_pageread_s:6.1f} s"
              + ("" if pr_ok else " (NOT reached: timed out)")
              + f"  (tail follower: {bulk_follower})")
        print(f"  catch-up / primary time {ratio:6.2f}x   target <= {BULK_RATIO_TARGET}: "
              f"{'met' if ratio <= BULK_RATIO_TARGET else 'MISSED'}")

        nb = oltp_end - oltp_start
        print(f"\nOLTP, pgbench -c 4 -j 2 -T {args.duration} through the stack: {tps} tps, "
              f"{nb / MB:.0f} MB of WAL, {oltp_records:,} records "
              f"({nb / max(oltp_records, 1):.0f} bytes each)")
        print(f"  primary writes it       {oltp_primary_s:6.1f} s  {mbs(nb, oltp_primary_s)}"
              f"  {rps(oltp_records, oltp_primary_s)}")
        print(f"  ingest has it after     {oltp_ingest_s:6.1f} s  {mbs(nb, oltp_ingest_s)}"
              f"  {rps(oltp_records, oltp_ingest_s)}  (ratio {oltp_ingest_s / oltp_primary_s:.2f}x)")
        print(f"  pageread has it after   {oltp_pageread_s:6.1f} s"
              + ("" if oltp_pr_ok else " (NOT reached: timed out)"))
        print(f"  ingest lag              max {max_lag / MB:.1f} MB, at the end "
              f"{end_lag / MB:.1f} MB")

        print("\nstandalone, in this process, same WAL (decode + WalIngest + InMemoryLayer; "
              "no network, no services):")
        for name, ps, records, dump_s, target in (
                ("OLTP WAL", oltp, oltp_records, oltp_dump_s, OLTP_RECORDS_TARGET),
                ("bulk-load WAL", bulk, bulk_records, bulk_dump_s, None)):
            verdict = (f"   target >= {target:,} records/s: "
                       f"{'met' if ps.rate() >= target else 'MISSED'}" if target else "")
            print(f"  {name}: {ps.records:,} records, {ps.nbytes / MB:.0f} MB")
            print(f"    decode + ingest       {ps.seconds:6.2f} s  {mbs(ps.nbytes, ps.seconds)}"
                  f"  {rps(ps.records, ps.seconds)}{verdict}")
            total = ps.seconds + ps.write_seconds
            print(f"    + L0 layer writes     {total:6.2f} s  {mbs(ps.nbytes, total)}"
                  f"  {rps(ps.records, total)}  (writes {ps.write_seconds:.2f} s)")
            print(f"    decode only (floor)   {ps.decode_seconds:6.2f} s  "
                  f"{mbs(ps.nbytes, ps.decode_seconds)}  {rps(ps.records, ps.decode_seconds)}")
            print(f"    pg_waldump (peer)     {dump_s:6.3f} s  {mbs(ps.nbytes, dump_s)}"
                  f"  {rps(records, dump_s)}  (--stats, {records:,} records)")
        if prof is not None:
            print("\ncProfile of the standalone OLTP pass (decode + WalIngest + InMemoryLayer),"
                  " top 25 by own time:")
            prof.sort_stats("tottime").print_stats(25)
        return 0
    finally:
        if lsns is not None:
            lsns.close()
        stack.stop()
        primary.stop("immediate")
        if args.keep:
            print(f"kept {base_dir}")
        else:
            shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
