"""Storage benchmark: what compaction, image layers and GC do to size and read speed.

    .venv/bin/python bench/storage.py [--scale 10] [--transactions 20000] [--keep]
    .venv/bin/python bench/storage.py --soak [--minutes 30]

The stack is attached to an empty primary first, so every page arrives through WAL as in
production (pgbench -i at --scale, then --transactions pgbench transactions over 4
clients).  Then, before and after one round of compaction + image creation + GC (tenant
settings pitr_interval 0 and gc_horizon 0: keep no history), it prints the layer count
and bytes by kind, the primary's data size, GetPage p50/p99 through the gateway at the
latest LSN (random pgbench_accounts blocks, one connection, one request in flight), and
the time of a full backup through the gateway, beside pg_basebackup -Ft of the same
primary measured in the same run.  Targets (figures, not a test):

    layer bytes after <= 2x the primary's data size
    GetPage p50 after <= before

--soak keeps pgbench running (-c 4, throttled to --rate tps) with housekeeping on its
schedule (compaction every 20 s, GC every minute, pitr 0, gc_horizon 16 MiB) and prints
layer count, bytes and GetPage p50 every minute; at the end, whether count and p50 level
off (the last third of the run against the middle third).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.getpage import GETPAGE_V2, LATEST, PagestreamConnection, cli, pct  # noqa: E402
from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port  # noqa: E402


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def bench_primary(base: Path) -> PgCluster:
    """The primary a benchmark streams from (not started)."""
    return PgCluster(
        datadir=base / "primary", port=free_port(), bin_dir=find_pg_bin_dir(),
        logfile=base / "primary.log",
        settings={"wal_level": "replica", "max_wal_senders": "5",
                  "max_replication_slots": "5", "wal_keep_size": "'8GB'"})


class Bench:
    def __init__(self, base: Path, soak: bool) -> None:
        self.base = base
        self.workdir = base / "ws"
        self.primary = bench_primary(base)
        self.conn = ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", self.primary.user]
        self.soak = soak
        self.tenant = self.timeline = ""
        self.db = self.accounts = self.nblocks = 0

    # ------------------------------------------------------------------ setup
    def start(self) -> None:
        self.primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        self.primary.start()
        tenant_settings = (["tenant.compaction_period='20s'", "tenant.gc_period='1m'",
                            "tenant.pitr_interval='0s'", "tenant.gc_horizon=16777216"]
                           if self.soak else
                           ["tenant.compaction_period='0s'", "tenant.gc_period='0s'",
                            "tenant.pitr_interval='0s'", "tenant.gc_horizon=0"])
        cli(self.workdir, "init", "-c", "catalog.port=0", *[
            x for s in ("ingest", "pageread", "redo", "housekeeping", "gateway")
            for k in ("listen_addr", "listen_http_addr")
            for x in ("-c", f"{s}.{k}='127.0.0.1:0'")],
            "-c", "gateway.listen_pg_addr='127.0.0.1:0'",
            *[x for setting in tenant_settings for x in ("-c", setting)])
        cli(self.workdir, "start")
        self.tenant = cli(self.workdir, "tenant", "create").strip()
        self.timeline = cli(self.workdir, "timeline", "create", "--tenant", self.tenant,
                            "--wal-source", f"host=127.0.0.1 port={self.primary.port} "
                            f"user={self.primary.user}").strip()

    def pgbench(self, *args: str) -> None:
        subprocess.run([self.primary.bin("pgbench"), *args, *self.conn, "postgres"],
                       check=True, capture_output=True)

    def locate(self) -> None:
        self.db = int(self.primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        self.accounts = int(self.primary.psql("SELECT pg_relation_filenode('pgbench_accounts')"))
        self.nblocks = int(self.primary.psql(
            "SELECT pg_relation_size('pgbench_accounts')")) // 8192

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(cli(
            self.workdir, "timeline", "status", "--tenant", self.tenant,
            "--timeline", self.timeline, "--json"))
        return out

    def wait_flushed(self) -> None:
        target = lsn_int(self.primary.psql("SELECT pg_current_wal_flush_lsn()"))
        while lsn_int(self.status()["disk_consistent_lsn"]) < target:
            time.sleep(0.5)

    # ------------------------------------------------------------------ measures
    def gateway_port(self) -> int:
        port: int = json.loads(cli(self.workdir, "status", "--json"))["services"]["gateway"]["port"]
        return port

    def getpage(self, requests: int, seed: int) -> tuple[float, float]:
        """p50 and p99 ms of GetPage at the latest LSN, one connection, one in flight."""
        rng = random.Random(seed)
        nms = lsn_int(self.primary.psql("SELECT pg_current_wal_flush_lsn()"))
        conn = PagestreamConnection(self.gateway_port(), self.tenant, self.timeline)
        lat = []
        try:
            for _ in range(requests):
                blk = rng.randrange(self.nblocks)
                t0 = time.perf_counter()
                conn.send([GETPAGE_V2.pack(2, LATEST, nms, 1663, self.db, self.accounts, 0, blk)])
                conn.page()
                lat.append((time.perf_counter() - t0) * 1000)
        finally:
            conn.close()
        lat.sort()
        return pct(lat, 0.5), pct(lat, 0.99)

    def fullbackup_seconds(self) -> float:
        out = self.base / "full.tar"
        t0 = time.perf_counter()
        subprocess.run([self.primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p",
                        str(self.gateway_port()), "-c",
                        f"fullbackup {self.tenant} {self.timeline}", "-o", str(out)],
                       check=True, capture_output=True)
        secs = time.perf_counter() - t0
        out.unlink()
        return secs

    def basebackup_seconds(self) -> float:
        target = self.base / "basebackup"
        t0 = time.perf_counter()
        subprocess.run([self.primary.bin("pg_basebackup"), *self.conn, "-D", str(target),
                        "-Ft", "-X", "none", "-c", "fast", "--no-sync"], check=True,
                       capture_output=True)
        secs = time.perf_counter() - t0
        shutil.rmtree(target)
        return secs

    def data_size(self) -> int:
        return int(self.primary.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))

    def layers(self) -> dict[str, dict[str, int]]:
        layers: dict[str, dict[str, int]] = self.status()["layers"]
        return layers

    def stop(self, keep: bool) -> None:
        subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(self.workdir),
                        "stop"], capture_output=True)
        self.primary.stop("immediate")
        if keep:
            print(f"kept {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def fmt_layers(layers: dict[str, dict[str, int]]) -> str:
    total = sum(v["count"] for v in layers.values())
    size = sum(v["bytes"] for v in layers.values())
    parts = ", ".join(f"{k} {v['count']}/{v['bytes'] / 2**20:.1f} MiB" for k, v in layers.items())
    return f"{total} layers, {size / 2**20:.1f} MiB ({parts})"


def measure(b: Bench, label: str, requests: int, seed: int) -> dict[str, float]:
    layers = b.layers()
    p50, p99 = b.getpage(requests, seed)
    full = b.fullbackup_seconds()
    base = b.basebackup_seconds()
    size = sum(v["bytes"] for v in layers.values())
    print(f"{label:<7} {fmt_layers(layers)}")
    print(f"{'':<7} GetPage p50 {p50:.2f} ms, p99 {p99:.2f} ms; full backup {full:.2f} s "
          f"(pg_basebackup -Ft of the primary, same run: {base:.2f} s, {full / base:.1f}x)")
    return {"bytes": size, "count": sum(v["count"] for v in layers.values()), "p50": p50,
            "full": full}


def run_once(b: Bench, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    b.pgbench("-i", "-q", "-s", str(args.scale))
    b.pgbench("-c", "4", "-j", "2", "-t", str(args.transactions // 4))
    b.locate()
    b.wait_flushed()
    print(f"load arrived through WAL: pgbench -i -s {args.scale} and {args.transactions:,} "
          f"transactions in {time.perf_counter() - t0:.1f} s")
    data = b.data_size()
    print(f"primary's data size: {data / 2**20:.1f} MiB")
    before = measure(b, "before", args.requests, 1)
    t0 = time.perf_counter()
    compact = json.loads(cli(b.workdir, "timeline", "compact", "--tenant", b.tenant,
                             "--timeline", b.timeline, "--force-l0", "--force-images", "--json"))
    gc = json.loads(cli(b.workdir, "timeline", "gc", "--tenant", b.tenant, "--timeline",
                        b.timeline, "--json"))
    print(f"compaction + images + GC took {time.perf_counter() - t0:.1f} s: "
          f"{compact['l0_compacted']} L0 -> {compact['l1_created']} L1, "
          f"{compact['images_created']} image layers, {gc['layers_removed']} layers removed")
    after = measure(b, "after", args.requests, 2)
    ok_size = after["bytes"] <= 2 * data
    ok_p50 = after["p50"] <= before["p50"]
    print(f"target: layer bytes after <= 2x data size ({2 * data / 2**20:.1f} MiB): "
          f"{after['bytes'] / 2**20:.1f} MiB {'met' if ok_size else 'MISSED'}")
    print(f"target: GetPage p50 after <= before: {after['p50']:.2f} ms vs "
          f"{before['p50']:.2f} ms {'met' if ok_p50 else 'MISSED'}")


def run_soak(b: Bench, args: argparse.Namespace) -> None:
    b.pgbench("-i", "-q", "-s", str(args.scale))
    b.locate()
    b.wait_flushed()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            b.pgbench("-c", "4", "-j", "2", "-T", "30", "-R", str(args.rate))

    t = threading.Thread(target=load, daemon=True)
    t.start()
    rows = []
    print(f"{'minute':>6} {'layers':>7} {'MiB':>8} {'p50 ms':>7}  by kind")
    try:
        for minute in range(1, args.minutes + 1):
            time.sleep(60)
            layers = b.layers()
            p50, _ = b.getpage(200, minute)
            count = sum(v["count"] for v in layers.values())
            size = sum(v["bytes"] for v in layers.values()) / 2**20
            rows.append((count, size, p50))
            print(f"{minute:>6} {count:>7} {size:>8.1f} {p50:>7.2f}  "
                  + ", ".join(f"{k} {v['count']}" for k, v in layers.items()), flush=True)
    finally:
        stop.set()
        t.join(timeout=60)
    third = max(1, len(rows) // 3)
    mid, last = rows[third:2 * third] or rows, rows[-third:]

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    for i, name in ((0, "layer count"), (2, "GetPage p50")):
        m, lst = mean([r[i] for r in mid]), mean([r[i] for r in last])
        print(f"target: {name} levels off: middle third {m:.2f}, last third {lst:.2f} "
              f"{'met' if lst <= m * 1.25 + (1 if i == 0 else 0.1) else 'MISSED'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--transactions", type=int, default=20000)
    ap.add_argument("--requests", type=int, default=1000, help="GetPages per measurement")
    ap.add_argument("--soak", action="store_true")
    ap.add_argument("--minutes", type=int, default=30, help="soak length")
    ap.add_argument("--rate", type=int, default=300, help="soak pgbench tps")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pagestore-bench-storage-"))
    base.chmod(0o755)
    b = Bench(base, args.soak)
    try:
        b.start()
        if args.soak:
            run_soak(b, args)
        else:
            run_once(b, args)
        return 0
    finally:
        b.stop(args.keep)


if __name__ == "__main__":
    sys.exit(main())
