"""Remote storage benchmark: a cold node against S3 (moto's server on loopback).

    .venv/bin/python bench/remote.py [--scale 10] [--transactions 5000] [--pages 200]

A primary streams into a stack with S3 remote storage (pgbench -i at --scale, then
--transactions pgbench transactions over 4 clients: pages arrive through WAL), until
remote_consistent_lsn reaches the end.  Then, twice, with ranged reads on and off
(pageread.ranged_reads): the stack stops, its workdir is wiped, a new stack attaches the
tenant from the bucket; printed are the attach time, the first GetPage's latency (through
the gateway, at the latest LSN, a random pgbench_accounts block), p50 of --pages more
random GetPages and the bytes pageread fetched from the bucket for them.  Beside them, in
the same run: the same GetPages once the layers are local (the floor), one ranged GET of
64 KiB from the bucket (the per-request floor of a cold read) and the time to download
every object of the tenant with boto3 (the floor of a whole-file warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from bench.getpage import GETPAGE_V2, LATEST, PagestreamConnection, cli, pct  # noqa: E402
from bench.storage import bench_primary, lsn_int  # noqa: E402
from pagestore.pg.cluster import free_port  # noqa: E402

BUCKET = "pagestore-bench"


class Bench:
    def __init__(self, base: Path, scale: int) -> None:
        self.base = base
        self.scale = scale
        self.primary = bench_primary(base)
        self.conn = ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", self.primary.user]
        self.moto_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.moto_port}"
        self.moto: subprocess.Popen[bytes] | None = None
        self.tenant = self.timeline = ""
        self.workdir = base / "ws"

    def start(self) -> None:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        moto = str(Path(sys.executable).parent / "moto_server")
        self.moto = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.moto_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                self.s3().create_bucket(Bucket=BUCKET)
                break
            except Exception:  # not listening yet
                time.sleep(0.05)
        self.primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        self.primary.start()

    def s3(self) -> Any:
        return boto3.client("s3", region_name="us-east-1", endpoint_url=self.endpoint)

    def init_stack(self, *extra: str) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        remote = (f"remote_storage={{bucket_name='{BUCKET}', bucket_region='us-east-1', "
                  f"endpoint='{self.endpoint}'}}")
        cli(self.workdir, "init", "-c", "catalog.port=0", *[
            x for s in ("ingest", "pageread", "redo", "housekeeping", "gateway")
            for k in ("listen_addr", "listen_http_addr")
            for x in ("-c", f"{s}.{k}='127.0.0.1:0'")],
            "-c", "gateway.listen_pg_addr='127.0.0.1:0'", "-c", remote,
            "-c", "housekeeping.upload_period='0.5s'", "-c", "pageread.eviction_period='1s'",
            *[x for e in extra for x in ("-c", e)])
        cli(self.workdir, "start")

    def pgbench(self, *args: str) -> None:
        subprocess.run([self.primary.bin("pgbench"), *args, *self.conn, "postgres"],
                       check=True, capture_output=True)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(cli(
            self.workdir, "timeline", "status", "--tenant", self.tenant,
            "--timeline", self.timeline, "--json"))
        return out

    def load(self, transactions: int) -> None:
        self.init_stack()
        self.tenant = cli(self.workdir, "tenant", "create").strip()
        self.timeline = cli(self.workdir, "timeline", "create", "--tenant", self.tenant,
                            "--wal-source", f"host=127.0.0.1 port={self.primary.port} "
                            f"user={self.primary.user}").strip()
        self.pgbench("-i", "-s", str(self.scale))
        self.pgbench("-c", "4", "-j", "2", "-t", str(transactions // 4))
        self.db = int(self.primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        self.accounts = int(self.primary.psql("SELECT pg_relation_filenode('pgbench_accounts')"))
        self.nblocks = int(self.primary.psql(
            "SELECT pg_relation_size('pgbench_accounts')")) // 8192
        end = lsn_int(self.primary.psql("SELECT pg_current_wal_flush_lsn()"))
        while lsn_int(self.status()["remote_consistent_lsn"]) < end:
            time.sleep(0.5)
        self.nms = end

    def gateway_port(self) -> int:
        port: int = json.loads(cli(self.workdir, "status", "--json"))["services"]["gateway"]["port"]
        return port

    def getpages(self, blocks: list[int]) -> list[float]:
        conn = PagestreamConnection(self.gateway_port(), self.tenant, self.timeline)
        lat = []
        try:
            for blk in blocks:
                t0 = time.perf_counter()
                conn.send([GETPAGE_V2.pack(2, LATEST, self.nms, 1663, self.db, self.accounts,
                                           0, blk)])
                conn.page()
                lat.append((time.perf_counter() - t0) * 1000)
        finally:
            conn.close()
        return lat

    def fetched(self) -> tuple[int, int, int]:
        """(ranged GETs, bytes by ranges, bytes by whole downloads) pageread fetched."""
        for lp in self.status()["loops"]:
            if lp["service"] == "pageread" and lp["name"] == "eviction":
                m = re.search(r"(\d+) ranged GETs \((\d+) bytes\), \d+ downloads \((\d+) bytes",
                              lp["detail"])
                if m:
                    return int(m.group(1)), int(m.group(2)), int(m.group(3))
        return 0, 0, 0

    def cold(self, ranged: bool, pages: int, seed: int) -> dict[str, float]:
        cli(self.workdir, "stop")
        self.init_stack(f"pageread.ranged_reads={'true' if ranged else 'false'}",
                        "pageread.download_after_reads=1000000")
        t0 = time.perf_counter()
        cli(self.workdir, "tenant", "attach", self.tenant)
        attach = time.perf_counter() - t0
        # Everything on local disk now came from the bucket (the workdir was empty):
        # what ingest's resume (its state at disk_consistent_lsn) fetched whole.
        at_attach = self.local_bytes()
        rng = random.Random(seed)
        blocks = [rng.randrange(self.nblocks) for _ in range(pages + 1)]
        lat = self.getpages(blocks)
        time.sleep(1.5)  # the stats line is refreshed every eviction_period
        gets, rbytes, dbytes = self.fetched()
        warm = sorted(self.getpages(blocks[1:]))  # now cached/local: the floor
        rest = sorted(lat[1:])
        return {"attach": attach, "first": lat[0], "p50": pct(rest, 0.5),
                "warm_p50": pct(warm, 0.5), "gets": gets, "ranged": rbytes,
                "whole": dbytes + max(self.local_bytes() - at_attach - dbytes, 0),
                "at_attach": at_attach}

    def local_bytes(self) -> int:
        root = self.workdir / "tenants"
        return sum(p.stat().st_size for p in root.glob("*/timelines/*/*__*")
                   if not p.name.endswith("___temp"))

    def floors(self) -> tuple[float, float, int]:
        s3 = self.s3()
        objs = [o for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"tenants/{self.tenant}/") for o in page.get("Contents", ())]
        big = max(objs, key=lambda o: o["Size"])
        t0 = time.perf_counter()
        s3.get_object(Bucket=BUCKET, Key=big["Key"], Range="bytes=0-65535")["Body"].read()
        ranged_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        total = 0
        for o in objs:
            total += len(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
        return ranged_ms, time.perf_counter() - t0, total

    def stop(self, keep: bool) -> None:
        subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(self.workdir),
                        "stop"], capture_output=True)
        self.primary.stop("immediate")
        if self.moto is not None:
            self.moto.kill()
            self.moto.wait()
        if keep:
            print(f"kept {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--transactions", type=int, default=5000)
    p.add_argument("--pages", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pagestore-bench-remote-"))
    base.chmod(0o755)  # the postgres OS user runs the primary when we are root
    b = Bench(base, args.scale)
    try:
        b.start()
        t0 = time.perf_counter()
        b.load(args.transactions)
        print(f"loaded: pgbench scale {args.scale} + {args.transactions} transactions through "
              f"WAL, uploaded, in {time.perf_counter() - t0:.1f} s")
        ranged_ms, download_s, total = b.floors()
        print(f"bucket: {total / 2**20:.1f} MiB for the tenant; floors (boto3, same run): one "
              f"64 KiB ranged GET {ranged_ms:.1f} ms, every object downloaded {download_s:.2f} s")
        for ranged in (True, False):
            r = b.cold(ranged, args.pages, args.seed)
            label = "ranged reads" if ranged else "whole files "
            mib = 2**20
            print(f"{label}: attach {r['attach']:.2f} s (ingest's resume fetched "
                  f"{r['at_attach'] / mib:.2f} MiB whole); first GetPage {r['first']:.1f} ms; "
                  f"next {args.pages} random GetPages p50 {r['p50']:.2f} ms (same pages "
                  f"again, now local or cached: {r['warm_p50']:.2f} ms); the GetPages fetched "
                  f"{r['ranged'] / mib:.2f} MiB in {int(r['gets'])} ranged GETs + "
                  f"{r['whole'] / mib:.2f} MiB whole "
                  f"({(r['ranged'] + r['whole']) / max(total, 1) * 100:.0f}% of the bucket)")
    finally:
        b.stop(args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
