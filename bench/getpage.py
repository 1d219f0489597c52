"""GetPage benchmark through the gateway (Neon's pagestream_v2 over libpq).

    .venv/bin/python bench/getpage.py [--scale 10] [--requests 2000] [--through-wal] [--keep]

Runs a PostgreSQL 15 primary with pgbench tables at --scale, the stack attached to it,
then random GetPage requests at the latest LSN for blocks of pgbench_accounts and its
primary key index: with 1 and 8 connections, unbatched (one request in flight per
connection) and batched (32 pipelined requests per connection).  Each connection asks for
distinct blocks first, so the unbatched single-connection run measures a cold page
cache.  Prints p50/p99 latency and pages/s, and the time to read the same blocks
straight from the primary's files (the floor), beside the targets.  By default the
timeline is attached after the load, so every page is an image of the attach-time
import; with --through-wal it is attached to the empty primary first and the pages
arrive through WAL (pgbench -i, then 20 s of pgbench -c 4): deltas that need redo, the
path users meet.  Targets:

    p50 <= 2 ms for one connection with a cold page cache
    >= 5,000 pages/s over 8 connections
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port  # noqa: E402

P50_TARGET_MS = 2.0
PAGES_PER_SEC_TARGET = 5000
BATCH = 32
LATEST = 0xFFFF_FFFF_FFFF_FFFF
# pagestream v2 GetPage request: tag u8, request_lsn u64, not_modified_since u64,
# spcnode u32, dbnode u32, relnode u32, forknum u8, blkno u32 (network order)
GETPAGE_V2 = struct.Struct("!BQQIIIBI")


def cli(workdir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir), *args],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"pagestore {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


class PagestreamConnection:
    """A minimal libpq client: startup, one simple query, then the CopyBoth stream."""

    def __init__(self, port: int, tenant: str, timeline: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        params = b"user\x00postgres\x00database\x00postgres\x00\x00"
        body = struct.pack("!i", 196608) + params
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        while self._message()[0] != b"Z":
            pass
        q = f"pagestream_v2 {tenant} {timeline}".encode() + b"\x00"
        self.sock.sendall(b"Q" + struct.pack("!i", len(q) + 4) + q)
        kind, body = self._message()
        if kind != b"W":
            raise SystemExit(f"pagestream refused: {kind!r} {body!r}")

    def _recv(self, n: int) -> None:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise SystemExit("gateway closed the connection")
            self.buf += data

    def _message(self) -> tuple[bytes, bytes]:
        self._recv(5)
        kind = bytes(self.buf[:1])
        (length,) = struct.unpack_from("!i", self.buf, 1)
        self._recv(1 + length)
        body = bytes(self.buf[5:1 + length])
        del self.buf[:1 + length]
        return kind, body

    def send(self, reqs: list[bytes]) -> None:
        self.sock.sendall(b"".join(b"d" + struct.pack("!i", len(r) + 4) + r for r in reqs))

    def page(self) -> bytes:
        kind, body = self._message()
        if kind != b"d" or body[0] != 102:
            raise SystemExit(f"GetPage failed: {body[:200]!r}")
        return body[1:]

    def close(self) -> None:
        self.sock.sendall(b"X\x00\x00\x00\x04")
        self.sock.close()


def run(port: int, tenant: str, timeline: str, work: list[list[tuple[int, int, int, int, int]]],
        nms: int, batch: int) -> tuple[list[float], float]:
    """Each connection fetches its list of (spc, db, rel, fork, blk); latencies, seconds."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(blocks: list[tuple[int, int, int, int, int]]) -> None:
        conn = PagestreamConnection(port, tenant, timeline)
        mine = []
        for i in range(0, len(blocks), batch):
            chunk = blocks[i:i + batch]
            t0 = time.perf_counter()
            conn.send([GETPAGE_V2.pack(2, LATEST, nms, *b) for b in chunk])
            for _ in chunk:
                conn.page()
                mine.append((time.perf_counter() - t0) * 1000)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in work]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(latencies), time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--requests", type=int, default=2000, help="per measurement")
    ap.add_argument("--through-wal", action="store_true",
                    help="attach before loading: pages arrive through WAL and need redo")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pagestore-bench-getpage-"))
    base.chmod(0o755)
    primary = PgCluster(datadir=base / "primary", port=free_port(), bin_dir=find_pg_bin_dir(),
                        logfile=base / "primary.log",
                        settings={"wal_level": "replica", "max_wal_senders": "5",
                                  "max_replication_slots": "5", "wal_keep_size": "'4GB'"})
    workdir = base / "ws"
    try:
        primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        primary.start()
        conn = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user]

        def load() -> None:
            subprocess.run([primary.bin("pgbench"), "-i", "-q", "-s", str(args.scale), *conn,
                            "postgres"], check=True, capture_output=True)
            primary.psql("CHECKPOINT")

        def attach() -> tuple[str, str]:
            cli(workdir, "init", "-c", "catalog.port=0", *[
                x for s in ("ingest", "pageread", "redo", "housekeeping", "gateway")
                for x in ("-c", f"{s}.listen_addr='127.0.0.1:0'")],
                "-c", "gateway.listen_pg_addr='127.0.0.1:0'")
            cli(workdir, "start")
            tenant = cli(workdir, "tenant", "create").strip()
            return tenant, cli(workdir, "timeline", "create", "--tenant", tenant,
                               "--wal-source",
                               f"host=127.0.0.1 port={primary.port} user={primary.user}").strip()

        if args.through_wal:
            tenant, timeline = attach()
            load()
            subprocess.run([primary.bin("pgbench"), "-c", "4", "-j", "2", "-T", "20", *conn,
                            "postgres"], check=True, capture_output=True)
        else:
            load()
            tenant, timeline = attach()
        db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        rels = []
        for name in ("pgbench_accounts", "pgbench_accounts_pkey"):
            relnode = int(primary.psql(f"SELECT pg_relation_filenode('{name}')"))
            nblocks = int(primary.psql(f"SELECT pg_relation_size('{name}')")) // 8192
            path = primary.datadir / primary.psql(f"SELECT pg_relation_filepath('{name}')")
            rels.append((relnode, nblocks, path))
        lsn = primary.psql("SELECT pg_current_wal_flush_lsn()")
        hi, lo = lsn.split("/")
        nms = (int(hi, 16) << 32) | int(lo, 16)
        while True:
            st = json.loads(cli(workdir, "timeline", "status", "--tenant", tenant, "--timeline",
                                timeline, "--json"))
            h, lw = st["last_record_lsn"].split("/")
            if ((int(h, 16) << 32) | int(lw, 16)) >= nms:
                break
            time.sleep(0.2)
        port = json.loads(cli(workdir, "status", "--json"))["services"]["gateway"]["port"]
        rng = random.Random(42)
        universe = [(relnode, blk) for relnode, n, _ in rels for blk in range(n)]
        rng.shuffle(universe)
        cursor = 0

        def blocks(count: int) -> list[tuple[int, int, int, int, int]]:
            nonlocal cursor
            out = [(1663, db, relnode, 0, blk) for relnode, blk in
                   (universe[(cursor + i) % len(universe)] for i in range(count))]
            cursor += count
            return out

        # The floor: the same kind of reads from the primary's own files.
        sample = blocks(args.requests)
        paths = {relnode: path for relnode, _, path in rels}
        fds = {r: os.open(p, os.O_RDONLY) for r, p in paths.items()}
        t0 = time.perf_counter()
        for _spc, _db, relnode, _fork, blk in sample:
            os.pread(fds[relnode], 8192, blk * 8192)
        floor_ms = (time.perf_counter() - t0) * 1000 / len(sample)
        for fd in fds.values():
            os.close(fd)

        print(f"gateway 127.0.0.1:{port}; pgbench scale {args.scale}; "
              f"{len(universe)} blocks of pgbench_accounts and its pkey; pages "
              + ("arrived through WAL (deltas + redo)" if args.through_wal
                 else "are attach-time images (no redo)"))
        print(f"floor: pread of a block from the primary's files: {floor_ms:.4f} ms")
        print(f"{'connections':>11} {'batch':>6} {'p50 ms':>8} {'p99 ms':>8} {'pages/s':>10}  target")
        for conns, batch in ((1, 1), (1, BATCH), (8, 1), (8, BATCH)):
            per = max(1, args.requests // conns)
            lat, secs = run(port, tenant, timeline, [blocks(per) for _ in range(conns)], nms,
                            batch)
            rate = len(lat) / secs
            target = ""
            if conns == 1 and batch == 1:
                p50 = pct(lat, 0.5)
                target = (f"p50 <= {P50_TARGET_MS} ms (cold cache): "
                          f"{'met' if p50 <= P50_TARGET_MS else 'MISSED'}")
            elif conns == 8:
                target = (f">= {PAGES_PER_SEC_TARGET:,} pages/s: "
                          f"{'met' if rate >= PAGES_PER_SEC_TARGET else 'MISSED'}")
            print(f"{conns:>11} {batch:>6} {pct(lat, 0.5):>8.2f} {pct(lat, 0.99):>8.2f} "
                  f"{rate:>10,.0f}  {target}")
        return 0
    finally:
        subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir), "stop"],
                       capture_output=True)
        primary.stop("immediate")
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
