"""Ingest benchmark: a primary under pgbench with the stack attached.

    .venv/bin/python bench/ingest.py [--duration 60] [--scale 10] [--keep]

Runs a PostgreSQL 15 primary (pgbench scale 10), the pagestore stack in a temporary
workdir, attaches a timeline to the primary, then runs `pgbench -c 4 -j 2 -T <duration>`
while sampling the replay lag (primary's flushed WAL minus ingest's last_record_lsn)
every 0.5 s.  Afterwards it replays the same WAL range standalone, in this process
(decode + records to values + open layer + L0 delta layer files), to measure ingest's
throughput apart from the network and the primary.  Prints each figure with its target:

    lag at the end of the run <= 16 MiB
    standalone decode+store throughput >= 3x the primary's WAL rate in the same run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pagestore import values  # noqa: E402
from pagestore.keys import KEY_MAX, KEY_MIN  # noqa: E402
from pagestore.layers.delta import DeltaLayerWriter  # noqa: E402
from pagestore.layers.inmemory import InMemoryLayer  # noqa: E402
from pagestore.layers.layermap import LayerMap  # noqa: E402
from pagestore.lsn import Lsn  # noqa: E402
from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port  # noqa: E402
from pagestore.pg.walfiles import find_segments, read_wal_records  # noqa: E402
from services.ingest.timeline import load_state  # noqa: E402
from services.ingest.walingest import WalIngest  # noqa: E402

MIB = 1024 * 1024
LAG_TARGET = 16 * MIB
THROUGHPUT_FACTOR = 3.0
CHECKPOINT_DISTANCE = 64 * MIB


def cli(workdir: Path, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir),
                           *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"pagestore {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def standalone(tl_dir: Path, wal_dir: Path, start: Lsn, end: Lsn, out_dir: Path) -> tuple[float, int, int]:
    """Decode + ingest + write L0 layers for WAL [start, end); (seconds, records, bytes)."""
    from pagestore.layers.image import ImageLayerReader
    from pagestore.timeline import TimelineView

    image = next(p for p in tl_dir.iterdir() if "__" in p.name and "-" not in p.name.split("__")[1])
    with ImageLayerReader(image) as r:
        rec = r.desc()
    base = Lsn(int(image.name.split("__")[1], 16))
    state = load_state(TimelineView(LayerMap(tl_dir, [rec])), base)
    ingest = WalIngest(state, read_page=lambda key, lsn: values.image(b""))
    segments = find_segments([wal_dir])
    # Bring the state up to `start` without timing it.
    out: list = []
    records = nbytes = 0
    layer = InMemoryLayer(Lsn(start))
    t0 = 0.0
    for r in read_wal_records(segments, base):
        if r.lsn >= end:
            break
        out.clear()
        if r.lsn < start:
            ingest.ingest(r, out)
            continue
        if not t0:
            t0 = time.perf_counter()
        ingest.ingest(r, out)
        for key, lsn, value in out:
            layer.put(key, lsn, value)
        records += 1
        nbytes += r.end_lsn - r.lsn
        if r.end_lsn - layer.start_lsn >= CHECKPOINT_DISTANCE:
            _write(layer, r.end_lsn, out_dir)
            layer = InMemoryLayer(Lsn(r.end_lsn + 1))
    if layer.count:
        _write(layer, Lsn(end), out_dir)
    return time.perf_counter() - t0, records, nbytes


def _write(layer: InMemoryLayer, last: Lsn, out_dir: Path) -> None:
    with DeltaLayerWriter(out_dir, KEY_MIN, KEY_MAX, layer.start_lsn, Lsn(last + 1)) as w:
        for key, lsn, value in layer.sorted_items():
            w.put(key, lsn, value, values.will_init(value))
        w.finish()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=60, help="pgbench -T seconds (default 60)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    base_dir = Path(tempfile.mkdtemp(prefix="pagestore-bench-"))
    base_dir.chmod(0o755)
    primary = PgCluster(datadir=base_dir / "primary", port=free_port(), bin_dir=find_pg_bin_dir(),
                        logfile=base_dir / "primary.log",
                        settings={"wal_level": "replica", "max_wal_senders": "10",
                                  "max_replication_slots": "10", "wal_keep_size": "'4GB'",
                                  "shared_buffers": "'256MB'", "max_wal_size": "'4GB'"})
    workdir = base_dir / "ws"
    try:
        primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        primary.start()
        conn = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user]
        subprocess.run([primary.bin("pgbench"), "-i", "-q", "-s", str(args.scale), *conn,
                        "postgres"], check=True, capture_output=True)
        cli(workdir, "init", "-c", "catalog.port=0", *[
            x for s in ("ingest", "pageread", "redo", "housekeeping", "gateway")
            for x in ("-c", f"{s}.listen_addr='127.0.0.1:0'")],
            "-c", "gateway.listen_pg_addr='127.0.0.1:0'")
        cli(workdir, "start")
        tenant = cli(workdir, "tenant", "create").strip()
        t_attach = time.perf_counter()
        timeline = cli(workdir, "timeline", "create", "--tenant", tenant, "--wal-source",
                       f"host=127.0.0.1 port={primary.port} user={primary.user}").strip()
        attach_s = time.perf_counter() - t_attach

        import grpc

        from pagestore.proto import common_pb2, ingest_pb2_grpc

        port = json.loads(cli(workdir, "status", "--json"))["services"]["ingest"]["port"]
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = ingest_pb2_grpc.IngestStub(channel)
        ref = common_pb2.TimelineRef(tenant_id=tenant, timeline_id=timeline)

        def ingest_lsn() -> Lsn:
            return Lsn(stub.GetTimelineLsns(ref, timeout=10).last_record_lsn)

        def primary_lsn() -> Lsn:
            return Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))

        while ingest_lsn() < primary_lsn():
            time.sleep(0.2)
        start = primary_lsn()
        t0 = time.perf_counter()
        bench = subprocess.Popen([primary.bin("pgbench"), "-c", "4", "-j", "2", "-T",
                                  str(args.duration), *conn, "postgres"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        max_lag = 0
        while bench.poll() is None:
            ours = ingest_lsn()  # read before the primary's: the lag is never understated
            max_lag = max(max_lag, primary_lsn() - ours)
            time.sleep(0.5)
        elapsed = time.perf_counter() - t0
        ours = ingest_lsn()
        end = primary_lsn()
        end_lag = end - ours
        max_lag = max(max_lag, end_lag)
        output = bench.stdout.read() if bench.stdout else ""
        tps = next((line.split("=")[1].split()[0] for line in output.splitlines()
                    if line.startswith("tps")), "?")
        t_catch = time.perf_counter()
        while ingest_lsn() < end:
            time.sleep(0.1)
        catch_up = time.perf_counter() - t_catch
        primary_rate = (end - start) / elapsed

        out_dir = base_dir / "standalone"
        out_dir.mkdir()
        tl_dir = workdir / "tenants" / tenant / "timelines" / timeline
        secs, records, nbytes = standalone(tl_dir, primary.datadir / "pg_wal", start, end, out_dir)
        rate = nbytes / secs

        print(f"attach (base backup + import of scale {args.scale}): {attach_s:.1f} s")
        print(f"pgbench -c 4 -j 2 -T {args.duration}: {tps} tps")
        print(f"primary WAL rate:                     {primary_rate / MIB:8.2f} MiB/s "
              f"({end - start} bytes in {elapsed:.1f} s)")
        print(f"ingest WAL rate while streaming:      {(ours - start) / elapsed / MIB:8.2f} MiB/s")
        print(f"replay lag, max:                      {max_lag / MIB:8.2f} MiB")
        print(f"replay lag, at the end:               {end_lag / MIB:8.2f} MiB   "
              f"target <= {LAG_TARGET / MIB:.0f} MiB: {'met' if end_lag <= LAG_TARGET else 'MISSED'}")
        print(f"catch-up after the run:               {catch_up:8.2f} s")
        print(f"standalone decode+store:              {rate / MIB:8.2f} MiB/s, "
              f"{records / secs:,.0f} records/s ({records} records, {secs:.1f} s)")
        print(f"  vs primary WAL rate:                {rate / primary_rate:8.2f}x   "
              f"target >= {THROUGHPUT_FACTOR:.0f}x: "
              f"{'met' if rate >= THROUGHPUT_FACTOR * primary_rate else 'MISSED'}")
        return 0
    finally:
        subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir), "stop"],
                       capture_output=True)
        primary.stop("fast")
        if not args.keep:
            shutil.rmtree(base_dir, ignore_errors=True)
        else:
            print(f"kept {base_dir}")


if __name__ == "__main__":
    sys.exit(main())
