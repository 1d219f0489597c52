"""Full backup benchmark: `fullbackup` through the gateway beside pg_basebackup -Ft of
the same primary, both timed in the same run.

    .venv/bin/python bench/fullbackup.py [--scale 10] [--load-seconds 10] [--no-direct]
        [--keep]

A PostgreSQL 15 primary is attached to pagestore while still empty, then `pgbench -i -s
<scale>` and `pgbench -c 4 -j 2 -T <load-seconds>` run (autovacuum off), so every page
arrives through WAL; the benchmark waits until pagestore has ingested up to the
primary's flush LSN and written it to layer files (ingest idle).
Housekeeping's compaction is paused for the tenant (tenant compaction_period 0s) so the
first measurement sees the pages as the WAL delivered them (L0 delta layers: images
where the WAL had full-page images, delta chains elsewhere).

Timed, in this order (each full backup at a new LSN, one committed row of a side table
after the previous one; pageread's page cache is off, page_cache_pages=0, as in
bench/getpage.py, so every backup redoes what it reads):

1. `pg_basebackup -Ft -X none -c fast --no-sync -D <dir>` of the primary (the peer);
2. `psql -h <gateway> -c "fullbackup <tenant> <timeline> <lsn>" -o full.tar` (the
   target: <= 1.5x the time of 1.);
3. the same backup asked of pageread directly over gRPC (PageReadExtras.GetFullBackup,
   no gateway: what the gateway adds), unless --no-direct;
4. after `pagestore timeline compact --force-l0 --force-images` (L0 -> L1, an image
   layer at the latest LSN for every partition): `fullbackup` through the gateway again
   and pg_basebackup again.

For each: seconds, output bytes, MB/s and pages/s, and the CPU each pagestore service,
the primary and the client used meanwhile (the profile: which process is busy; 'other'
is whatever else ran on the machine).  Target (issue 13; a figure, not a test):

    full backup through the gateway <= 1.5x the time of pg_basebackup -Ft
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.getpage import (  # noqa: E402
    Bench,
    cli,
    fmt_cores,
    lsn_text,
    machine_facts,
    verdict,
)

RATIO_TARGET = 1.5
MB = 1_000_000


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tar_members(path: Path) -> int:
    with tarfile.open(path) as t:
        return sum(1 for _ in t)


class FullBackupBench(Bench):
    def timed(self, argv: list[str]) -> tuple[float, dict[str, float], float]:
        """Run argv; (seconds, cores busy per group, the client's cores)."""
        c0 = children_cpu()
        self.meter.mark()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        cores = self.meter.cores()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
        return secs, cores, (children_cpu() - c0) / secs

    def basebackup(self, target: Path) -> tuple[float, int, dict[str, float], float]:
        shutil.rmtree(target, ignore_errors=True)
        secs, cores, client = self.timed(
            [self.primary.bin("pg_basebackup"), *self.conn, "-D", str(target), "-Ft",
             "-X", "none", "-c", "fast", "--no-sync"])
        size = sum(p.stat().st_size for p in target.glob("*.tar"))
        return secs, size, cores, client

    def fullbackup(self, out: Path) -> tuple[float, int, dict[str, float], float]:
        self.tick()
        secs, cores, client = self.timed(
            [self.primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p",
             str(self.gateway_port), "-c",
             f"fullbackup {self.tenant} {self.timeline} {lsn_text(self.nms)}", "-o", str(out)])
        size = out.stat().st_size
        if size == 0 or tar_members(out) == 0:
            raise SystemExit(f"fullbackup wrote no tar ({size} bytes)")
        return secs, size, cores, client

    def direct(self, out: Path) -> tuple[float, int, dict[str, float], float]:
        """GetFullBackup straight to pageread over gRPC, written to ``out``."""
        import grpc

        from pagestore.grpcutil import (
            SHARD_METADATA_KEY,
            TENANT_METADATA_KEY,
            TIMELINE_METADATA_KEY,
        )
        from pagestore.proto import pageread_pb2, pageread_pb2_grpc

        self.tick()
        md = ((TENANT_METADATA_KEY, self.tenant), (TIMELINE_METADATA_KEY, self.timeline),
              (SHARD_METADATA_KEY, "0000"))
        channel = grpc.insecure_channel(f"127.0.0.1:{self.pageread_port}",
                                        options=[("grpc.max_receive_message_length", -1)])
        try:
            stub = pageread_pb2_grpc.PageReadExtrasStub(channel)
            self.meter.mark()
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            size = 0
            with open(out, "wb") as f:
                for chunk in stub.GetFullBackup(pageread_pb2.GetFullBackupRequest(
                        lsn=self.nms, prev_lsn=0), metadata=md):
                    f.write(chunk.chunk)
                    size += len(chunk.chunk)
            secs = time.perf_counter() - t0
            return secs, size, self.meter.cores(), (time.process_time() - cpu0) / secs
        finally:
            channel.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--load-seconds", type=int, default=10, help="pgbench -c4 after -i")
    ap.add_argument("--no-direct", action="store_true",
                    help="skip the full backup asked of pageread directly (no gateway)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pagestore-bench-fullbackup-"))
    base.chmod(0o755)  # the postgres OS user runs the primary when we are root
    b = FullBackupBench(base, args)
    try:
        print(machine_facts(b.primary.bin_dir))
        b.primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        b.primary.start()
        t0 = time.perf_counter()
        b.attach(pause_compaction=True)
        b.load()
        loaded = time.perf_counter() - t0
        lag = b.catch_up()
        b.flushed()  # ingest idle: nothing competes with what is timed
        size = int(b.primary.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        print(f"setup: attached to the empty primary, then pgbench -i -s {args.scale} + "
              f"pgbench -c 4 -j 2 -T {args.load_seconds} ({loaded:.0f} s; pagestore caught up "
              f"{lag:.1f} s later); databases {size / MB:.1f} MB; compaction paused")

        def layers() -> str:
            return ", ".join(f"{k} {v['count']}" for k, v in b.status()["layers"].items())

        def line(label: str, secs: float, nbytes: int, peer: float | None = None) -> str:
            text = (f"{label}: {secs:.2f} s, {nbytes / MB:.1f} MB "
                    f"({nbytes / MB / secs:.1f} MB/s, {nbytes / 8192 / secs:,.0f} pages/s)")
            if peer is not None:
                ratio = secs / peer
                text += (f"; {ratio:.1f}x pg_basebackup; target <= {RATIO_TARGET}x: "
                         f"{verdict(ratio <= RATIO_TARGET)}")
            return text

        pb_secs, pb_size, pb_cores, pb_client = b.basebackup(base / "basebackup")
        print(line("pg_basebackup -Ft -X none -c fast --no-sync", pb_secs, pb_size))
        print(f"    {fmt_cores(pb_cores, pb_client, 'pg_basebackup')}")

        print(f"pages as the WAL delivered them (layers: {layers()}):")
        fb_secs, fb_size, fb_cores, fb_client = b.fullbackup(base / "full.tar")
        print("  " + line(f"fullbackup through the gateway at {lsn_text(b.nms)}", fb_secs,
                          fb_size, pb_secs))
        print(f"    {fmt_cores(fb_cores, fb_client, 'psql')}")
        if not args.no_direct:
            d_secs, d_size, d_cores, d_client = b.direct(base / "direct.tar")
            print("  " + line("GetFullBackup straight to pageread over gRPC (no gateway)",
                              d_secs, d_size, pb_secs))
            print(f"    {fmt_cores(d_cores, d_client, 'gRPC client')}")

        t0 = time.perf_counter()
        cli(b.workdir, "timeline", "compact", "--tenant", b.tenant, "--timeline", b.timeline,
            "--force-l0", "--force-images")
        compact = time.perf_counter() - t0
        print(f"after timeline compact --force-l0 --force-images ({compact:.1f} s; layers: "
              f"{layers()}):")
        fb2_secs, fb2_size, fb2_cores, fb2_client = b.fullbackup(base / "full2.tar")
        pb2_secs, pb2_size, _, _ = b.basebackup(base / "basebackup2")
        print("  " + line(f"fullbackup through the gateway at {lsn_text(b.nms)}", fb2_secs,
                          fb2_size, pb2_secs))
        print(f"    {fmt_cores(fb2_cores, fb2_client, 'psql')}")
        print("  " + line("pg_basebackup again", pb2_secs, pb2_size))
        return 0
    finally:
        b.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
