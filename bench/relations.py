"""Many relations: pagestore's ingest time per block of new tables, beside the primary's.

    .venv/bin/python bench/relations.py [--tables 100000] [--block 10000] [--batch 1000] [--keep]

The target, at 100,000 relations: ingest time per 10,000 new tables stays flat, the last
10,000's <= 1.5x the first's.  The relation directory is sharded (pagestore/reldir.py),
so a create rewrites one small shard; before that, every new relation rewrote the whole
directory value of its database, O(N^2) over a run: 30,000 tables took 6.5 minutes here
(blocks of 10,000: 36, 110 and 233 s of ingest against 2-4 s on the primary) and left
1.3 GB of layer files for 135 MB of WAL.  With the shards, 100,000 tables take about two
minutes (blocks of 8-11 s, the last 1.27x the first; 248 MB of layers for 447 MB of WAL).

A PostgreSQL 15 primary is created empty and the stack attached to it with a new
timeline; pageread serves the timeline (one GetRelSize through the page API), so it
follows ingest's recent WAL as it does for a compute (bench/ingest.py sets this up).
Then blocks of --block tables, `CREATE TABLE t_<n> (a int)`, --batch of them per
transaction over one libpq connection.  For each block: the primary's time, the WAL it
wrote, and pagestore's ingest time: from the start of the block until ingest's
last_record_lsn reaches the primary's flush LSN after the block (WaitForLsn; the next
block starts only then, so blocks never overlap), the ratio of the two, and the ingest
time's ratio to the first block's.  At the end, once everything is flushed, the size of
the timeline's layer files beside the WAL's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import MB, PrimaryLsns, Stack, new_primary, waldump_stats  # noqa: E402
from bench.redo import machine_facts  # noqa: E402

FLAT_TARGET = 1.5
TARGET_TABLES = 100_000


def create_tables(lsns: PrimaryLsns, first: int, count: int, batch: int) -> None:
    """CREATE TABLE t_<first> .. t_<first + count - 1>, ``batch`` per transaction (one
    simple-protocol round trip each)."""
    for lo in range(first, first + count, batch):
        hi = min(lo + batch, first + count)
        lsns.conn.execute("BEGIN;" + "".join(f"CREATE TABLE t_{n} (a int);"
                                              for n in range(lo, hi)) + "COMMIT;")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=100_000,
                    help=f"tables to create (default and the target's measurement: "
                         f"{TARGET_TABLES:,})")
    ap.add_argument("--block", type=int, default=10_000, help="tables per measured block")
    ap.add_argument("--batch", type=int, default=1000, help="tables per transaction")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.tables < args.block or args.block < 1 or args.batch < 1:
        ap.error("--tables must be at least one --block; --block and --batch positive")

    base_dir = Path(tempfile.mkdtemp(prefix="pagestore-bench-relations-"))
    base_dir.chmod(0o755)  # the postgres OS user runs the primary when we are root
    primary = new_primary(base_dir)
    stack = Stack(base_dir / "ws", primary)
    lsns: PrimaryLsns | None = None
    try:
        print(f"{machine_facts(primary.bin_dir)}; load average {os.getloadavg()[0]:.2f}",
              flush=True)
        primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        primary.start()
        attach_s = stack.start()
        stack.serve_from_pageread()
        lsns = PrimaryLsns(primary)
        stack.wait_ingest(lsns.flush())
        print(f"stack attached to an empty primary in {attach_s:.1f} s; pageread's tail "
              f"follower: {stack.follower()}")
        print(f"{args.tables:,} tables `CREATE TABLE t_<n> (a int)`, {args.batch} per "
              f"transaction; per block of {args.block:,}:", flush=True)
        print(f"{'tables':>15} {'WAL MB':>7} {'records':>9} {'primary s':>10} {'ingest s':>9} "
              f"{'ingest/primary':>15} {'ingest/first':>13}")
        run_start = lsns.insert()
        first_ingest = 0.0
        last_ratio = 0.0
        primary_total = ingest_total = 0.0
        blocks = []
        for lo in range(0, args.tables, args.block):
            count = min(args.block, args.tables - lo)
            start = lsns.insert()
            t0 = time.perf_counter()
            create_tables(lsns, lo, count, args.batch)
            primary_s = time.perf_counter() - t0
            end = lsns.flush()
            stack.wait_ingest(end)
            ingest_s = time.perf_counter() - t0
            first_ingest = first_ingest or ingest_s
            last_ratio = ingest_s / first_ingest
            primary_total += primary_s
            ingest_total += ingest_s
            blocks.append((start, end))
            # pg_waldump reads the primary's files: after the timing, outside it.
            records, _ = waldump_stats(primary, start, end)
            print(f"{lo + 1:>7,}-{lo + count:<7,} {(end - start) / MB:>7.1f} {records:>9,} "
                  f"{primary_s:>10.1f} {ingest_s:>9.1f} {ingest_s / primary_s:>14.1f}x "
                  f"{last_ratio:>12.2f}x", flush=True)
        run_end = blocks[-1][1]
        print(f"{'all':>15} {(run_end - run_start) / MB:>7.1f} {'':>9} {primary_total:>10.1f} "
              f"{ingest_total:>9.1f} {ingest_total / primary_total:>14.1f}x")
        scope = ("" if args.tables >= TARGET_TABLES else
                 f" (at {args.tables:,} tables; the target is defined at {TARGET_TABLES:,})")
        print(f"last block / first block ingest time: {last_ratio:.2f}x   target <= "
              f"{FLAT_TARGET}{scope}: {'met' if last_ratio <= FLAT_TARGET else 'MISSED'}")
        print(f"pageread's tail follower: {stack.follower()}", flush=True)
        t0 = time.perf_counter()
        stack.wait_disk_consistent(run_end, timeout=3600)
        print(f"flushed {time.perf_counter() - t0:.1f} s later: layer files "
              f"{stack.layer_bytes() / MB:,.0f} MB for {(run_end - run_start) / MB:,.0f} MB "
              f"of WAL since the first table (the attach-time import included)")
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
