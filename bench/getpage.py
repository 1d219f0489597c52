"""GetPage benchmark through the gateway (Neon's pagestream_v2 over libpq), with its peers
and floors measured in the same run.

    .venv/bin/python bench/getpage.py [--scale 10] [--seconds 10] [--warmup 2]
        [--processes 8] [--load-seconds 20] [--redo-blocks 360] [--images] [--compaction]
        [--auth] [--keep]

The path users meet (the default): the timeline is attached to an empty PostgreSQL 15
primary (autovacuum off: nothing changes the pages behind the benchmark's back) first,
then `pgbench -i -s <scale>` and `pgbench -c 4 -j 2 -T <load-seconds>` run, so every page
arrives through WAL (an image where the WAL has a full-page image, a delta chain that
needs redo elsewhere).  Housekeeping's compaction is paused for the tenant (tenant
compaction_period 0s) so no image layer replaces those chains mid-run; --compaction
leaves it on its schedule.  With --images the timeline is attached after the load
instead: every page is an image of the attach-time import, no redo (what this benchmark
measured before issue 13).  The benchmark waits until pagestore has ingested up to the
primary's flush LSN.

Runs: GetPage of blocks of pgbench_accounts and its primary key, each client a separate
process with its own connection and its own share of the blocks, a --warmup period not
measured, then a fixed --seconds window: QD1 over 1 connection and over --processes
connections; batched (32 requests pipelined per connection, the 32 blocks of a batch
from ONE relation, so the gateway coalesces them into one GetPages request) over 1 and
--processes connections.  Cold page cache: pageread's page cache is switched off
(pageread.page_cache_pages=0; it is keyed by a page's newest version, so a page read
again at another LSN would be a hit); a client's first pass over its blocks reads at the
latest LSN, a new one for each run (a committed row of a side table); pass p reads at the
p-th such LSN before it; a (block, LSN) asked twice is counted and printed.  For each run: p50/p99 latency (per request at QD1, per batch
when batched), pages/s, the gateway's coalescing ratio (GetPage blocks per upstream
GetPageRequest: the connections' GetPage blocks, from the gateway log's end-of-pagestream
lines, over the requests the timeline's shared GetPages stream sent upstream, from the
line the gateway logs when that stream closes; warm-up included) and
the profile: cores each service, the primary, the clients and anything else kept busy
during the window.

Needs redo: after a CHECKPOINT on the primary, --redo-blocks pgbench_accounts blocks
get 1..6 single-row UPDATEs each (the first logs the block's full-page image, each later
one an UPDATE record and mostly a PRUNE record), so each block's latest version is that
image plus 0..~10 records; pg_waldump of that WAL counts them exactly per block.  Each
block is then read once at QD1 on one connection (cold): p50/p99 per record count, the
image-only blocks being the same run's peer.

Peers and floors, same run: the primary's own `pgbench -S -n` (select-only) over 1 and
--processes clients for --seconds; pread of the same blocks from the primary's files;
a grpc.health.v1 Check round trip to pageread over one channel (the gRPC floor); cold
QD1 GetPages sent to pageread directly over gRPC (no gateway).

With --auth every port checks tokens (NeonJWT, docs/security.md): the clients send a
tenant token as the libpq password, the gRPC peers a Bearer header, and the services
their own pageserverapi token on every internal call (pageread -> redo per batch); run
with and without it to see what authentication costs on this path.

Targets (issue 13; figures, not tests; 2-core machine), latest LSN, cold page cache:

    1 connection QD1:              p50 <= 0.5 ms
    8 client processes QD1:        >= 8,000 pages/s
    batched:                       >= 25,000 pages/s
    pages needing redo of 1-10 records: p50 <= 1 ms
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port  # noqa: E402

P50_TARGET_MS = 0.5  # 1 connection, QD1, cold
QD1_RATE_TARGET = 8_000  # pages/s, 8 client processes at QD1
BATCHED_RATE_TARGET = 25_000  # pages/s, batched
REDO_P50_TARGET_MS = 1.0  # pages needing redo of 1-10 records
BATCH = 32
UPDATES_MAX = 6  # per block in the needs-redo run: about 2 records per UPDATE after the first
LATEST = 0xFFFF_FFFF_FFFF_FFFF
# pagestream v2 GetPage request: tag u8, request_lsn u64, not_modified_since u64,
# spcnode u32, dbnode u32, relnode u32, forknum u8, blkno u32 (network order)
GETPAGE_V2 = struct.Struct("!BQQIIIBI")
SERVICES = ("gateway", "pageread", "redo", "ingest", "housekeeping")
ENDED = re.compile(r"pagestream v2 ended after (\d+) requests \((\d+) GetPage blocks in "
                   r"(\d+) GetPageRequests\)")
SHARED_CLOSED = re.compile(r"GetPages stream of timeline \w+ closed: (\d+) blocks asked, sent as "
                           r"(\d+) blocks in (\d+) upstream GetPageRequests")
BLKREF = re.compile(r"blkref #\d+: rel (\d+)/(\d+)/(\d+)(?: fork (\w+))? blk (\d+)( FPW)?")


def cli(workdir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir), *args],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"pagestore {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


#: AuthenticationCleartextPassword's code in an 'R' message.
AUTH_CLEARTEXT_PASSWORD = struct.pack("!i", 3)


def getpage_message(nms: int, spc: int, db: int, rel: int, blk: int,
                    request_lsn: int = LATEST) -> bytes:
    """One GetPage request (at the latest LSN by default), framed as a CopyData message."""
    req = GETPAGE_V2.pack(2, request_lsn, nms, spc, db, rel, 0, blk)
    return b"d" + struct.pack("!i", len(req) + 4) + req


class PagestreamConnection:
    """A minimal libpq client: startup, one simple query, then the CopyBoth stream."""

    def __init__(self, port: int, tenant: str, timeline: str, password: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        params = b"user\x00postgres\x00database\x00postgres\x00\x00"
        body = struct.pack("!i", 196608) + params
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        while True:
            kind, body = self._message()
            if kind == b"Z":
                break
            if kind == b"E":
                raise SystemExit(f"gateway refused the connection: {body!r}")
            if kind == b"R" and body[:4] == AUTH_CLEARTEXT_PASSWORD:
                pw = password.encode() + b"\x00"
                self.sock.sendall(b"p" + struct.pack("!i", len(pw) + 4) + pw)
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

    def send_raw(self, messages: bytes) -> None:
        self.sock.sendall(messages)

    def page(self) -> bytes:
        kind, body = self._message()
        if kind != b"d" or body[0] != 102:
            raise SystemExit(f"GetPage failed: {body[:200]!r}")
        return body[1:]

    def close(self) -> None:
        self.sock.sendall(b"X\x00\x00\x00\x04")
        self.sock.close()


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFF_FFFF:X}"


def machine_facts(bin_dir: Path) -> str:
    from bench.redo import machine_facts as facts
    return facts(bin_dir)


# --------------------------------------------------------------------------- the profile

TICKS = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, float, float]]:
    """pid -> (ppid, CPU seconds of its threads, CPU seconds of its reaped children)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS,
                                   (int(fields[13]) + int(fields[14])) / TICKS)
            except (OSError, IndexError, ValueError):
                continue
    return out


def tree_cpu(table: dict[int, tuple[int, float, float]], root: int | None) -> float:
    """CPU seconds of a process and its children, reaped ones included (a PostgreSQL
    server: the postmaster and its backends)."""
    if root is None or root not in table:
        return 0.0
    _, own, reaped = table[root]
    return own + reaped + sum(cpu for ppid, cpu, _ in table.values() if ppid == root)


def machine_busy() -> tuple[float, float]:
    """CPU seconds of the machine since boot: (busy, of which irq + softirq); iowait
    counts as idle."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / TICKS, (vals[5] + vals[6]) / TICKS


class CpuMeter:
    """CPU seconds each pagestore service, the primary, the catalog, the kernel and the
    machine used between mark() and cores(), as cores kept busy."""

    def __init__(self, pids: dict[str, int], primary: PgCluster | None = None,
                 catalog: int | None = None) -> None:
        self.pids = pids
        self.primary = primary
        self.catalog = catalog
        self._start: tuple[float, dict[str, float], dict[int, float]] | None = None

    def _sample(self) -> tuple[dict[str, float], dict[int, float]]:
        table = proc_table()
        out = {s: table[p][1] if p in table else 0.0 for s, p in self.pids.items()}
        out["primary"] = tree_cpu(table, self.primary.pid() if self.primary else None)
        out["catalog"] = tree_cpu(table, self.catalog)
        busy, irq = machine_busy()
        out["kernel"] = irq  # interrupts; kernel threads are added per thread in cores()
        out["machine"] = busy
        # Kernel threads (kthreadd's children: writeback, ksoftirqd...); they come and go.
        kthreads = {pid: cpu for pid, (ppid, cpu, _) in table.items() if ppid == 2 or pid == 2}
        return out, kthreads

    def mark(self) -> None:
        self._start = (time.monotonic(), *self._sample())

    def cores(self) -> dict[str, float]:
        assert self._start is not None
        t0, before, kbefore = self._start
        secs = max(time.monotonic() - t0, 1e-9)
        after, kafter = self._sample()
        out = {k: (after[k] - before[k]) / secs for k in after}
        out["kernel"] += sum(cpu - kbefore.get(pid, 0.0) for pid, cpu in kafter.items()) / secs
        return out


def fmt_cores(cores: dict[str, float], clients: float | None = None,
              client_name: str = "clients") -> str:
    """The profile line: cores busy per process group; 'other' is what the machine did
    besides (another workload on it shows there)."""
    groups = [*(s for s in SERVICES if s in cores), "catalog", "primary"]
    parts = [f"{g} {cores.get(g, 0.0):.2f}" for g in groups]
    ours = sum(cores.get(g, 0.0) for g in (*groups, "kernel"))
    if clients is not None:
        parts.append(f"{client_name} {clients:.2f}")
        ours += clients
    parts.append(f"kernel {cores.get('kernel', 0.0):.2f}")
    parts.append(f"other {max(0.0, cores['machine'] - ours):.2f}")
    return (f"CPU (cores busy in the window): {', '.join(parts)}; machine "
            f"{cores['machine']:.2f} of {os.cpu_count()}")


class GatewayLog:
    """The gateway's end-of-pagestream lines: requests, GetPage blocks, GetPageRequests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def coalescing(self, streams: int, timeout: float = 5.0) -> tuple[int, int, int, int]:
        """(pagestreams seen, GetPage blocks, upstream GetPageRequests, blocks sent in them)
        since mark(): from the end-of-pagestream lines and the line the gateway writes
        when the timeline's shared GetPages stream closes (after the last pagestream)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                text = f.read().decode(errors="replace")
            found = [m for m in ENDED.finditer(text)]
            shared = [m for m in SHARED_CLOSED.finditer(text)]
            if (len(found) >= streams and shared) or time.monotonic() > deadline:
                return (len(found), sum(int(m.group(2)) for m in found),
                        sum(int(m.group(3)) for m in shared),
                        sum(int(m.group(2)) for m in shared))
            time.sleep(0.1)


# --------------------------------------------------------------------------- client processes

def client(port: int, tenant: str, timeline: str, password: str, db: int, lsns: list[int],
           units: list[list[tuple[int, int]]], warm: float, secs: float, barrier: Any,
           results: Any) -> None:
    """One client process: one connection, one unit (1 block, or a batch of one
    relation's blocks) in flight, over its own units until the window closes.  Pass p
    over the units reads at lsns[p] (pass 0: the latest LSN), so no page is asked twice
    at one LSN (a page cache hit) unless the passes outrun ``lsns``."""
    conn = PagestreamConnection(port, tenant, timeline, password)
    barrier.wait()
    t0 = time.monotonic()
    t_measure, t_end = t0 + warm, t0 + warm + secs
    lat: list[float] = []
    pages = 0
    i = 0
    n = len(units)
    cpu0: float | None = None
    while True:
        start = time.monotonic()
        if start >= t_end:
            break
        if cpu0 is None and start >= t_measure:
            cpu0 = time.process_time()
        unit = units[i % n]
        lsn = lsns[(i // n) % len(lsns)]
        request = LATEST if i < n else lsn
        i += 1
        conn.send_raw(b"".join(getpage_message(lsn, 1663, db, rel, blk, request)
                               for rel, blk in unit))
        for _ in unit:
            conn.page()
        done = time.monotonic()
        if start >= t_measure and done <= t_end:
            lat.append((done - start) * 1000)
            pages += len(unit)
    cpu = time.process_time() - cpu0 if cpu0 is not None else 0.0
    conn.close()
    results.put((lat, pages, i, cpu))


def run_load(b: Bench, units: list[list[tuple[int, int]]], processes: int, warm: float,
             secs: float) -> dict[str, Any]:
    """Run ``processes`` client processes, each over its own slice of ``units``; the
    figures of the measured window."""
    lsns = b.ticks()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    n = len(units)
    cuts = [i * n // processes for i in range(processes + 1)]
    slices = [units[cuts[i]:cuts[i + 1]] for i in range(processes)]
    procs = [ctx.Process(target=client, args=(b.gateway_port, b.tenant, b.timeline, b.token, b.db,
                                              lsns, part, warm, secs, barrier, results))
             for part in slices]
    b.gateway_log.mark()
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    t0 = time.monotonic()
    time.sleep(warm)
    b.meter.mark()
    time.sleep(max(0.0, t0 + warm + secs - time.monotonic()))
    cores = b.meter.cores()
    got = []
    for _ in procs:
        try:
            got.append(results.get(timeout=120))
        except queue.Empty:
            raise SystemExit("a client process did not report") from None
    for p in procs:
        p.join()
    lat = sorted(x for r in got for x in r[0])
    pages = sum(r[1] for r in got)
    asked = sum(r[2] for r in got)
    # Units asked again at an LSN they were already read at (possible cache hits).
    repeats = sum(max(0, r[2] - len(part) * len(lsns)) for part, r in zip(slices, got,
                                                                          strict=True))
    passes = max(r[2] / len(part) for part, r in zip(slices, got, strict=True))
    streams, blocks, calls, sent = b.gateway_log.coalescing(processes)
    return {"lat": lat, "rate": pages / secs, "pages": pages, "cores": cores,
            "clients": sum(r[3] for r in got) / secs, "repeats": repeats, "asked": asked,
            "passes": passes, "streams": streams, "blocks": blocks, "calls": calls,
            "sent": sent}


# --------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, base: Path, args: argparse.Namespace) -> None:
        self.base = base
        self.args = args
        self.workdir = base / "ws"
        self.primary = PgCluster(
            datadir=base / "primary", port=free_port(), bin_dir=find_pg_bin_dir(),
            logfile=base / "primary.log",
            settings={"wal_level": "replica", "max_wal_senders": "5",
                      "max_replication_slots": "5", "wal_keep_size": "'4GB'",
                      # Nothing changes the pages behind the benchmark's back.
                      "autovacuum": "off"})
        self.conn = ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", self.primary.user]
        self.tenant = self.timeline = self.token = ""
        self.db = self.nms = self.gateway_port = self.pageread_port = 0
        self.rels: list[tuple[str, int, int, Path]] = []  # name, relnode, nblocks, file
        self.meter = CpuMeter({})
        self.gateway_log = GatewayLog(self.workdir / "logs" / "gateway.log")

    # ------------------------------------------------------------------ setup
    def pgbench(self, *args: str) -> str:
        proc = subprocess.run([self.primary.bin("pgbench"), *args, *self.conn, "postgres"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pgbench {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        return proc.stdout

    def auth_settings(self) -> list[str]:
        """--auth: a key pair, and NeonJWT on every port (the `init` overrides)."""
        if not self.args.auth:
            return []
        private, public = self.base / "auth" / "private.pem", self.base / "auth" / "public.pem"
        cli(self.workdir, "auth", "keygen", "--private-key", str(private),
            "--public-key", str(public))
        return ["-c", f"auth_validation_public_key_path='{public}'",
                *[x for port in ("pg", "http", "grpc") for x in ("-c", f"{port}_auth_type='NeonJWT'")]]

    def attach(self, pause_compaction: bool) -> None:
        auth = self.auth_settings()
        cli(self.workdir, "init", *auth, "-c", "catalog.port=0", *[
            x for s in ("ingest", "pageread", "redo", "housekeeping", "gateway")
            for k in ("listen_addr", "listen_http_addr")
            for x in ("-c", f"{s}.{k}='127.0.0.1:0'")],
            "-c", "gateway.listen_pg_addr='127.0.0.1:0'",
            # A cold page cache for every read: no cache at all (see the docstring).
            "-c", "pageread.page_cache_pages=0",
            "-c", f"event_loop='{getattr(self.args, 'event_loop', 'uvloop')}'")
        cli(self.workdir, "start")
        self.tenant = cli(self.workdir, "tenant", "create").strip()
        if self.args.auth:
            self.token = cli(self.workdir, "auth", "token", "--scope", "tenant", "--tenant",
                             self.tenant, "--private-key",
                             str(self.base / "auth" / "private.pem")).strip()
        self.timeline = cli(self.workdir, "timeline", "create", "--tenant", self.tenant,
                            "--wal-source", f"host=127.0.0.1 port={self.primary.port} "
                            f"user={self.primary.user}").strip()
        if pause_compaction:
            cli(self.workdir, "tenant", "config", "--tenant", self.tenant,
                "compaction_period='0s'")
        services = json.loads(cli(self.workdir, "status", "--json"))["services"]
        self.gateway_port = services["gateway"]["port"]
        self.pageread_port = services["pageread"]["port"]
        self.meter = CpuMeter({s: services[s]["pid"] for s in SERVICES}, self.primary,
                              services.get("catalog", {}).get("pid"))

    def load(self) -> None:
        self.pgbench("-i", "-q", "-s", str(self.args.scale))
        self.primary.psql("CREATE TABLE bench_tick (at timestamptz)")
        self.pgbench("-c", "4", "-j", "2", "-T", str(self.args.load_seconds))

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = json.loads(cli(self.workdir, "timeline", "status", "--tenant",
                                            self.tenant, "--timeline", self.timeline, "--json"))
        return st

    def catch_up(self) -> float:
        """Wait until pagestore has ingested up to the primary's flush LSN; seconds."""
        target = lsn_int(self.primary.psql("SELECT pg_current_wal_flush_lsn()"))
        t0 = time.perf_counter()
        while lsn_int(self.status()["last_record_lsn"]) < target:
            time.sleep(0.2)
        self.nms = target
        return time.perf_counter() - t0

    def flushed(self) -> float:
        """Wait until ingest has written everything up to the last catch-up to layer
        files (it is idle then); seconds."""
        t0 = time.perf_counter()
        while lsn_int(self.status()["disk_consistent_lsn"]) < self.nms:
            time.sleep(0.5)
        return time.perf_counter() - t0

    def tick(self) -> None:
        """A new latest LSN (one committed row), ingested: a cold page cache for reads."""
        self.primary.psql("INSERT INTO bench_tick VALUES (now())")
        self.catch_up()

    def ticks(self, count: int = 64) -> list[int]:
        """``count`` new LSNs, each after one committed row of bench_tick (nothing the
        benchmark reads changes between them), newest first, all ingested."""
        out = subprocess.run(
            [self.primary.bin("psql"), "-X", "-q", "-At", *self.conn, "-d", "postgres",
             "-v", "ON_ERROR_STOP=1"], capture_output=True, text=True, check=True,
            input="INSERT INTO bench_tick VALUES (now()); "
                  "SELECT pg_current_wal_flush_lsn();\n" * count).stdout
        lsns = [lsn_int(x) for x in out.split()]
        self.catch_up()
        return lsns[::-1]

    def locate(self) -> None:
        self.db = int(self.primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        self.rels = []
        for name in ("pgbench_accounts", "pgbench_accounts_pkey"):
            relnode = int(self.primary.psql(f"SELECT pg_relation_filenode('{name}')"))
            nblocks = int(self.primary.psql(f"SELECT pg_relation_size('{name}')")) // 8192
            path = self.primary.datadir / self.primary.psql(
                f"SELECT pg_relation_filepath('{name}')")
            self.rels.append((name, relnode, nblocks, path))

    # ------------------------------------------------------------------ the work
    def singles(self, seed: int) -> list[list[tuple[int, int]]]:
        """Every block of the relations once, shuffled: QD1 units."""
        units = [[(relnode, blk)] for _, relnode, n, _ in self.rels for blk in range(n)]
        random.Random(seed).shuffle(units)
        return units

    def batches(self, seed: int) -> list[list[tuple[int, int]]]:
        """Batches of BATCH distinct blocks of one relation each, shuffled."""
        rng = random.Random(seed)
        units = []
        for _, relnode, n, _ in self.rels:
            blocks = list(range(n))
            rng.shuffle(blocks)
            units += [[(relnode, blk) for blk in blocks[i:i + BATCH]]
                      for i in range(0, n - BATCH + 1, BATCH)]
        rng.shuffle(units)
        return units

    # ------------------------------------------------------------------ peers and floors
    def pgbench_select(self, clients: int) -> tuple[float, float]:
        """The primary's own select-only pgbench: (tps, average latency ms)."""
        out = self.pgbench("-S", "-n", "-c", str(clients), "-j", str(min(clients, 2)),
                           "-T", str(int(self.args.seconds)))
        tps = re.search(r"tps = ([\d.]+)", out)
        lat = re.search(r"latency average = ([\d.]+) ms", out)
        if not tps or not lat:
            raise SystemExit(f"pgbench -S output not understood:\n{out}")
        return float(tps.group(1)), float(lat.group(1))

    def pread_floor(self, units: list[list[tuple[int, int]]]) -> float:
        """ms per block to read the same blocks from the primary's files (OS cache)."""
        fds = {relnode: os.open(path, os.O_RDONLY) for _, relnode, _, path in self.rels}
        try:
            t0 = time.perf_counter()
            count = 0
            for unit in units:
                for relnode, blk in unit:
                    os.pread(fds[relnode], 8192, blk * 8192)
                    count += 1
            return (time.perf_counter() - t0) * 1000 / max(count, 1)
        finally:
            for fd in fds.values():
                os.close(fd)

    def grpc_peers(self, units: list[list[tuple[int, int]]], seconds: float
                   ) -> tuple[list[float], list[float]]:
        """(health Check round trips, cold QD1 GetPages straight to pageread), ms."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from pagestore.grpcutil import (
            AUTHORIZATION_METADATA_KEY,
            SHARD_METADATA_KEY,
            TENANT_METADATA_KEY,
            TIMELINE_METADATA_KEY,
        )
        from pagestore.proto import page_service_pb2 as pb
        from pagestore.proto import page_service_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{self.pageread_port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)
            checks = []
            for _ in range(50):  # warm-up
                health.Check(health_pb2.HealthCheckRequest())
            for _ in range(1000):
                t0 = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest())
                checks.append((time.perf_counter() - t0) * 1000)
            md: tuple[tuple[str, str], ...] = (
                (TENANT_METADATA_KEY, self.tenant), (TIMELINE_METADATA_KEY, self.timeline),
                (SHARD_METADATA_KEY, "0000"))
            if self.token:
                md += ((AUTHORIZATION_METADATA_KEY, f"Bearer {self.token}"),)
            requests: queue.Queue[Any] = queue.Queue()
            responses = page_service_pb2_grpc.PageServiceStub(channel).GetPages(
                iter(requests.get, None), metadata=md)
            lat = []
            t_end = time.monotonic() + seconds
            for i, unit in enumerate(units):
                relnode, blk = unit[0]
                t0 = time.perf_counter()
                requests.put(pb.GetPageRequest(
                    request_id=pb.RequestID(id=i + 1), request_class=pb.GET_PAGE_CLASS_NORMAL,
                    read_lsn=pb.ReadLsn(request_lsn=LATEST, not_modified_since_lsn=self.nms),
                    rel=pb.RelTag(spc_oid=1663, db_oid=self.db, rel_number=relnode,
                                  fork_number=0),
                    block_number=[blk]))
                resp = next(responses)
                if resp.status_code != pb.GET_PAGE_STATUS_CODE_OK:
                    raise SystemExit(f"GetPages to pageread failed: {resp.reason}")
                lat.append((time.perf_counter() - t0) * 1000)
                if time.monotonic() >= t_end:
                    break
            requests.put(None)
            responses.cancel()
            return sorted(checks), sorted(lat[20:])  # the first 20: warm-up
        finally:
            channel.close()

    # ------------------------------------------------------------------ needs redo
    def redo_set(self, count: int, seed: int) -> dict[int, int | None]:
        """Blocks of pgbench_accounts whose latest version is an image + k records:
        block -> records after its last full-page image (pg_waldump; None: no image)."""
        name, relnode, nblocks, _ = self.rels[0]
        rng = random.Random(seed)
        candidates = rng.sample(range(nblocks), min(nblocks, count * 2))
        rows = self.primary.psql(
            f"SELECT (ctid::text::point)[0]::int, aid FROM {name} WHERE "
            f"(ctid::text::point)[0]::int = ANY('{{{','.join(map(str, candidates))}}}') "
            "ORDER BY 1, 2")
        aids: dict[int, list[int]] = {}
        for line in rows.splitlines():
            blk, aid = map(int, line.split("|"))
            aids.setdefault(blk, []).append(aid)
        chosen = [blk for blk in candidates if len(aids.get(blk, ())) >= UPDATES_MAX][:count]
        plan = {blk: 1 + i % UPDATES_MAX for i, blk in enumerate(chosen)}  # updates per block
        self.primary.psql("CHECKPOINT")
        start = self.primary.psql("SELECT redo_lsn FROM pg_control_checkpoint()")
        script = self.base / "redo-updates.sql"
        lines = ["SET synchronous_commit = off;"]
        for r in range(UPDATES_MAX):  # round r: the r-th row of every block that gets > r updates
            lines += [f"UPDATE {name} SET abalance = abalance + 1 WHERE aid = {aids[blk][r]};"
                      for blk, n in plan.items() if n > r]
        script.write_text("\n".join(lines) + "\n")
        subprocess.run([self.primary.bin("psql"), "-X", "-q", *self.conn, "-d", "postgres",
                        "-v", "ON_ERROR_STOP=1", "-f", str(script)], check=True,
                       capture_output=True)
        self.tick()
        chains = self.wal_chains(lsn_int(start), self.nms, relnode)
        return {blk: (n if fpw else None) for blk, (n, fpw) in
                ((blk, chains.get(blk, (0, False))) for blk in plan)}

    def wal_chains(self, start: int, end: int, relnode: int) -> dict[int, tuple[int, bool]]:
        """Per block of the relation's main fork touched by the WAL in [start, end):
        (records after its last full-page image, or all of them; whether it had one)."""
        dump = subprocess.run(
            [self.primary.bin("pg_waldump"), "-p", str(self.primary.datadir / "pg_wal"),
             "-s", lsn_text(start), "-e", lsn_text(end), "-R", f"1663/{self.db}/{relnode}"],
            capture_output=True, text=True)
        chains: dict[int, tuple[int, bool]] = {}
        for line in dump.stdout.splitlines():
            for m in BLKREF.finditer(line):
                if int(m.group(3)) != relnode or m.group(4) not in (None, "main"):
                    continue
                blk = int(m.group(5))
                if m.group(6):
                    chains[blk] = (0, True)
                else:
                    n, fpw = chains.get(blk, (0, False))
                    chains[blk] = (n + 1, fpw)
        return chains

    def composition(self, start: int) -> str:
        """What the runs read, from the WAL since ``start`` (the attach): the blocks by
        records after their last full-page image."""
        parts = []
        for name, relnode, nblocks, _ in self.rels:
            chains = self.wal_chains(start, self.nms, relnode)
            counts = sorted(chains.get(blk, (0, False))[0] for blk in range(nblocks))
            image = sum(1 for n in counts if n == 0)
            short = sum(1 for n in counts if 1 <= n <= 10)
            more = nblocks - image - short
            parts.append(f"{name}: image only {image * 100 / nblocks:.0f}%, 1-10 records "
                         f"{short * 100 / nblocks:.0f}%, more {more * 100 / nblocks:.0f}% "
                         f"(median {counts[nblocks // 2]}, max {counts[-1]})")
        return "; ".join(parts)

    def read_once(self, blocks: list[int], relnode: int) -> dict[int, float]:
        """Each block once at QD1 on one connection (after a short warm-up): ms."""
        conn = PagestreamConnection(self.gateway_port, self.tenant, self.timeline, self.token)
        try:
            _, pkey, n, _ = self.rels[1]
            for blk in range(min(20, n)):  # warm the connection and its stream
                conn.send_raw(getpage_message(self.nms, 1663, self.db, pkey, blk))
                conn.page()
            out = {}
            for blk in blocks:
                msg = getpage_message(self.nms, 1663, self.db, relnode, blk)
                t0 = time.perf_counter()
                conn.send_raw(msg)
                conn.page()
                out[blk] = (time.perf_counter() - t0) * 1000
            return out
        finally:
            conn.close()

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(self.workdir),
                        "stop"], capture_output=True)
        self.primary.stop("immediate")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10, help="measured window of each run")
    ap.add_argument("--warmup", type=float, default=2, help="unmeasured start of each run")
    ap.add_argument("--processes", type=int, default=8, help="client processes of the wide runs")
    ap.add_argument("--load-seconds", type=int, default=20, help="pgbench -c4 after -i")
    ap.add_argument("--redo-blocks", type=int, default=360,
                    help="pgbench_accounts blocks of the needs-redo run")
    ap.add_argument("--images", action="store_true",
                    help="attach after the load: every page an attach-time image (no redo)")
    ap.add_argument("--compaction", action="store_true",
                    help="leave housekeeping's compaction on its schedule (default: paused, "
                         "so no image layer replaces the WAL's delta chains mid-run)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--event-loop", choices=["asyncio", "uvloop"], default="uvloop",
                    help="the services' event loop (config event_loop)")
    ap.add_argument("--auth", action="store_true",
                    help="NeonJWT on every port: tokens on every connection and call")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pagestore-bench-getpage-"))
    base.chmod(0o755)  # the postgres OS user runs the primary when we are root
    b = Bench(base, args)
    try:
        print(machine_facts(b.primary.bin_dir))
        b.primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        b.primary.start()
        t0 = time.perf_counter()
        if args.images:
            b.load()
            b.primary.psql("CHECKPOINT")
            b.attach(pause_compaction=not args.compaction)
        else:
            b.attach(pause_compaction=not args.compaction)
            attached = lsn_int(b.primary.psql("SELECT pg_current_wal_insert_lsn()"))
            b.load()
        loaded = time.perf_counter() - t0
        lag = b.catch_up()
        b.flushed()  # ingest idle: nothing competes with the peers
        b.locate()
        nblocks = sum(r[2] for r in b.rels)
        print(f"setup: pgbench -i -s {args.scale} + pgbench -c 4 -j 2 -T {args.load_seconds} "
              + ("BEFORE attaching: every page is an attach-time image (no redo)" if args.images
                 else "AFTER attaching: pages arrived through WAL (images and delta chains)")
              + f"; {loaded:.0f} s, then {lag:.1f} s until pagestore had ingested up to the "
              f"primary's flush LSN {lsn_text(b.nms)}")
        print("auth: " + ("NeonJWT on every port (a tenant token as the libpq password, the "
                          "services' pageserverapi token on their calls)" if args.auth
                          else "off (Trust on loopback)"))

        # Peers and floors, same run (pgbench -S prunes heap pages: WAL, ingested too).
        single_units = b.singles(args.seed)
        pread_ms = b.pread_floor(single_units[:5000])
        sel1 = b.pgbench_select(1)
        seln = b.pgbench_select(args.processes)
        b.tick()
        layers = b.status()["layers"]
        print(f"blocks read: {nblocks} ({', '.join(f'{r[0]} {r[2]}' for r in b.rels)}); layers: "
              + ", ".join(f"{k} {v['count']}" for k, v in layers.items())
              + ("; compaction on its schedule" if args.compaction else
                 "; compaction paused (tenant compaction_period 0s): no image layer made "
                 "after the WAL"))
        if not args.images:
            t1 = time.perf_counter()
            mix = b.composition(attached)
            print(f"what they hold, by records after each block's last full-page image in the "
                  f"WAL since the attach (pg_waldump, {time.perf_counter() - t1:.0f} s): {mix}")
        print(f"runs: {args.warmup:g} s warm-up + {args.seconds:g} s measured; clients are "
              "separate processes, one connection each, each over its own share of the "
              "blocks; cold page cache: pageread's is off (page_cache_pages=0); a run's "
              "first pass over its blocks reads at the latest LSN, pass p at the p-th LSN "
              "before it (one committed bench_tick row apart)")
        checks, direct = b.grpc_peers(single_units[len(single_units) // 2:], args.seconds)
        print(f"peers (same run): primary pgbench -S -c 1: {sel1[0]:,.0f} tps "
              f"({sel1[1]:.3f} ms/txn); pgbench -S -c {args.processes}: {seln[0]:,.0f} tps; "
              f"pread of a block from the primary's files: {pread_ms * 1000:.1f} us")
        print(f"        gRPC floor: health Check to pageread, one channel: p50 "
              f"{pct(checks, 0.5):.3f} ms, p99 {pct(checks, 0.99):.3f} ms; GetPages straight to "
              f"pageread (no gateway), QD1, cold: p50 {pct(direct, 0.5):.2f} ms, p99 "
              f"{pct(direct, 0.99):.2f} ms, {len(direct)} pages")

        runs = (("QD1", 1), ("QD1", args.processes), ("batched", 1),
                ("batched", args.processes))
        print()
        print(f"{'run':<9} {'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'pages/s':>9}  "
              "target / peer (same run)")
        for kind, procs in runs:
            units = single_units if kind == "QD1" else b.batches(args.seed + procs)
            r = run_load(b, units, procs, args.warmup, args.seconds)
            lat = r["lat"]
            if kind == "QD1" and procs == 1:
                note = (f"p50 <= {P50_TARGET_MS} ms: {verdict(pct(lat, 0.5) <= P50_TARGET_MS)}; "
                        f"pgbench -S -c 1 {sel1[1]:.3f} ms/txn; pageread direct p50 "
                        f"{pct(direct, 0.5):.2f} ms")
            elif kind == "QD1":
                note = (f">= {QD1_RATE_TARGET:,} pages/s: "
                        f"{verdict(r['rate'] >= QD1_RATE_TARGET)}; pgbench -S -c "
                        f"{args.processes} {seln[0]:,.0f} tps")
            else:
                note = (f">= {BATCHED_RATE_TARGET:,} pages/s: "
                        f"{verdict(r['rate'] >= BATCHED_RATE_TARGET)}; latency per batch of "
                        f"{BATCH}")
            label = kind if kind == "QD1" else f"batch {BATCH}"
            print(f"{label:<9} {procs:>5} {pct(lat, 0.5):>8.2f} {pct(lat, 0.99):>8.2f} "
                  f"{r['rate']:>9,.0f}  {note}")
            ratio = (f"{r['blocks'] / r['calls']:.1f} GetPage blocks per upstream GetPageRequest "
                     f"({r['blocks']} in {r['calls']} requests of {r['sent']} distinct blocks, "
                     "all connections sharing the timeline's stream; warm-up included)"
                     if r["calls"] else "not exposed")
            if r["streams"] < procs:
                ratio += f" [{r['streams']} of {procs} pagestream lines found]"
            print(f"{'':<9} gateway coalescing: {ratio}; {r['passes']:.1f} passes over the "
                  f"blocks, {r['repeats']} of {r['asked']} requests repeated a (block, LSN)")
            print(f"{'':<9} {fmt_cores(r['cores'], r['clients'])}")

        # Needs redo: image + k records.
        print()
        if args.compaction:
            cli(b.workdir, "tenant", "config", "--tenant", b.tenant, "compaction_period='0s'")
        images_before = b.status()["layers"].get("image", {}).get("count", 0)
        chains = b.redo_set(args.redo_blocks, args.seed)
        _, relnode, _, _ = b.rels[0]
        order = list(chains)
        random.Random(args.seed).shuffle(order)
        b.meter.mark()
        times = b.read_once(order, relnode)
        cores = b.meter.cores()
        images_after = b.status()["layers"].get("image", {}).get("count", 0)
        if args.compaction:
            cli(b.workdir, "tenant", "config", "--tenant", b.tenant, "--reset",
                "compaction_period")
        by_len: dict[int | None, list[float]] = {}
        for blk, n in chains.items():
            by_len.setdefault(n if n is None or n <= 10 else 11, []).append(times[blk])
        print(f"needs redo: {len(chains)} pgbench_accounts blocks updated after a CHECKPOINT "
              f"(1..{UPDATES_MAX} single-row UPDATEs each; the first logs the block's image, "
              "each later one an UPDATE and mostly a PRUNE record), read once each at QD1 on "
              "one connection, cold; records after each block's image counted by pg_waldump")
        print(f"{'records':>9} {'blocks':>6} {'p50 ms':>8} {'p99 ms':>8}")
        for n in sorted(k for k in by_len if k is not None):
            v = sorted(by_len[n])
            label = ">10" if n == 11 else str(n)
            extra = "  (image only: the same run's peer)" if n == 0 else ""
            print(f"{label:>9} {len(v):>6} {pct(v, 0.5):>8.2f} {pct(v, 0.99):>8.2f}{extra}")
        if None in by_len:
            print(f"{'no image':>9} {len(by_len[None]):>6} (no full-page image in the window)")
        redo = sorted(x for n, v in by_len.items() if n is not None and 1 <= n <= 10 for x in v)
        img = sorted(by_len.get(0, []))
        print(f"{'1-10':>9} {len(redo):>6} {pct(redo, 0.5):>8.2f} {pct(redo, 0.99):>8.2f}  "
              f"p50 <= {REDO_P50_TARGET_MS} ms: {verdict(pct(redo, 0.5) <= REDO_P50_TARGET_MS)}; "
              f"image-only p50 {pct(img, 0.5):.2f} ms")
        print(f"          {fmt_cores(cores)}")
        if images_after != images_before:
            print(f"          note: image layers went from {images_before} to {images_after} "
                  "during this run; some chains may have been read from an image layer")
        return 0
    finally:
        b.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
