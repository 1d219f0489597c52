"""Redo benchmark: records/s per access method, beside PostgreSQL's own replay of the
same WAL in the same run.

    .venv/bin/python bench/redo.py [--scale 5] [--transactions 8000] [--chains] [--keep]

Makes real WAL: a PostgreSQL 15 primary (wal_level replica, full_page_writes on,
autovacuum off, no wal_consistency_checking), a base backup, then the workloads of every
access method: `pgbench -i -s <scale>`, a CHECKPOINT and --transactions pgbench
transactions (heap and btree), the SQL workloads of tests/workloads/ that exist (btree,
brin, gist, hash, gin, spgist), a bloom index (Generic WAL records) and a sequence, then a
clean stop.

pagestore: one pass over that WAL from the backup's start (read_wal_records) keeps the
current page of every block, starting from the full-page images as they appear
(restored as the dispatcher does) and applying each record in order with
pagestore.redo.apply.redo_block; only the redo_block calls of blocks without an image
are timed -- what a GetPage@LSN pays per record of a chain.  Blocks whose page is not
known yet (no image seen, not BKPBLOCK_WILL_INIT) are skipped and counted; a record
without redo here (UnsupportedWalRecord) is counted and named, never fatal.  Per
resource manager it prints records and blocks redone, records/s and microseconds per
block, beside the target:

    >= 20,000 records/s per redo process

The peer, same run: a copy of the base backup recovers the same WAL with PostgreSQL
(restore_command cp from the stopped primary's pg_wal, through the last record, then
shutdown), timed end to end (process start to exit, shutdown restartpoint included) and
from its log (redo starts .. recovery stopping: the redo loop).  Its overall records/s
stands beside pagestore's over the same records: the whole pass (decode, image restore,
redo), with a decode-only pass reported separately.

With --chains it also ingests the WAL offline and times pagestore.redo.apply.reconstruct
over the pgbench tables' page chains (image + records) cut to 1, 10 and 100 records.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pagestore.errors import PagestoreError, UnsupportedWalRecord  # noqa: E402
from pagestore.keys import ForkNumber, RelTag, rel_block_key  # noqa: E402
from pagestore.lsn import Lsn  # noqa: E402
from pagestore.pg.cluster import (  # noqa: E402
    PgCluster,
    as_server_user,
    find_pg_bin_dir,
    free_port,
    give_to_server_user,
)
from pagestore.pg.rmgr import RmgrId, rmgr_name  # noqa: E402
from pagestore.pg.walfiles import SegmentFile, find_segments, read_wal_records  # noqa: E402
from pagestore.redo.apply import reconstruct, redo_block  # noqa: E402
from pagestore.redo.context import RedoContext  # noqa: E402

TARGET = 20_000
LENGTHS = (1, 10, 100)
WORKLOADS = ROOT / "tests" / "workloads"
SQL_WORKLOADS = ("btree.sql", "brin.sql", "gist.sql", "hash.sql", "gin.sql", "spgist.sql")
# The access methods' resource managers, in the order printed.
AMS = (RmgrId.HEAP, RmgrId.HEAP2, RmgrId.BTREE, RmgrId.HASH, RmgrId.GIN, RmgrId.GIST,
       RmgrId.SPGIST, RmgrId.BRIN, RmgrId.SEQ, RmgrId.GENERIC)

EXTRA_SQL = """\
-- bloom: an index of an extension, logged with Generic WAL records (build, inserts,
-- VACUUM's page updates and deletions); then a sequence.
CREATE EXTENSION IF NOT EXISTS bloom;
DROP TABLE IF EXISTS bl;
CREATE TABLE bl (i1 int, i2 int, i3 int, i4 int, i5 int, t text);
INSERT INTO bl SELECT g, g % 97, g % 1013, g * 7 % 10007, g % 13, 'row ' || g
  FROM generate_series(1, 20000) g;
CREATE INDEX bl_idx ON bl USING bloom (i1, i2, i3, i4, i5) WITH (length = 80, col1 = 2);
INSERT INTO bl SELECT g, g % 97, g % 1013, g * 7 % 10007, g % 13, 'row ' || g
  FROM generate_series(20001, 50000) g;
UPDATE bl SET i3 = i3 + 1 WHERE i1 % 5 = 0;
DELETE FROM bl WHERE i1 % 3 = 0;
VACUUM bl;
DELETE FROM bl WHERE i1 BETWEEN 1 AND 20000;
VACUUM bl;
INSERT INTO bl SELECT g, g % 97, g % 1013, g * 7 % 10007, g % 13, 'row ' || g
  FROM generate_series(50001, 60000) g;
-- A sequence (nextval logs every 32 values; setval and ALTER log the page too).
DROP SEQUENCE IF EXISTS bs;
CREATE SEQUENCE bs;
SELECT count(nextval('bs')) FROM generate_series(1, 20000);
SELECT setval('bs', 1);
ALTER SEQUENCE bs INCREMENT BY 3;
SELECT count(nextval('bs')) FROM generate_series(1, 5000);
"""


def run_client(argv: list[str], timeout: float = 600) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def machine_facts(bin_dir: Path) -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True,
                        text=True).stdout.strip()
    return (f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()} "
            f"({platform.python_implementation()}), {pg}")


def make_wal(base: Path, args: argparse.Namespace) -> tuple[PgCluster, Lsn, list[str]]:
    """The primary, stopped, its WAL since the base backup in base/backup; the start LSN
    and the workloads run."""
    primary = PgCluster(datadir=base / "primary", port=free_port(), bin_dir=find_pg_bin_dir(),
                        logfile=base / "primary.log",
                        settings={"wal_level": "replica", "full_page_writes": "on",
                                  "max_wal_senders": "5", "wal_keep_size": "'8GB'",
                                  "max_wal_size": "'8GB'", "checkpoint_timeout": "'1h'",
                                  "autovacuum": "off", "fsync": "off",
                                  "shared_buffers": "'128MB'"})
    primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
    primary.start()
    conn = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user]
    run_client([primary.bin("pg_basebackup"), *conn, "-D", str(base / "backup"), "-X", "none",
                "-c", "fast", "--no-sync"])
    m = re.search(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)",
                  (base / "backup" / "backup_label").read_text())
    if m is None:
        raise SystemExit("backup_label without START WAL LOCATION")
    start = Lsn.parse(m.group(1))
    done = [f"pgbench -i -s {args.scale}"]
    run_client([primary.bin("pgbench"), "-i", "-q", "-s", str(args.scale), *conn, "postgres"])
    primary.psql("CHECKPOINT")
    run_client([primary.bin("pgbench"), "-c", "4", "-j", "2", "-t",
                str(max(1, args.transactions // 4)), *conn, "postgres"])
    done.append(f"{args.transactions} pgbench transactions")
    extra = base / "bloom-and-sequence.sql"
    extra.write_text(EXTRA_SQL)
    files = [WORKLOADS / n for n in SQL_WORKLOADS if (WORKLOADS / n).exists()] + [extra]
    for f in files:
        run_client([primary.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *conn,
                    "-d", "postgres", "-f", str(f)])
        done.append(f.name)
    primary.stop()
    return primary, start, done


class AmStats:
    __slots__ = ("blocks", "errors", "records", "seconds", "skipped", "unsupported")

    def __init__(self) -> None:
        self.records = self.blocks = self.skipped = self.errors = 0
        self.seconds = 0.0
        self.unsupported: Counter[int] = Counter()  # info -> records


def decode_pass(segments: list[SegmentFile], start: Lsn) -> tuple[int, float, Lsn]:
    """Records, seconds and the last record's LSN of a pass that only decodes."""
    n = 0
    last = start
    t0 = time.perf_counter()
    for rec in read_wal_records(segments, start):
        n += 1
        last = rec.lsn
    return n, time.perf_counter() - t0, last


def redo_pass(segments: list[SegmentFile], start: Lsn, ctx: RedoContext
              ) -> tuple[int, float, dict[int, AmStats], list[str]]:
    """Records, seconds of the whole pass, per-rmgr stats and the first problems seen."""
    pages: dict[tuple[RelTag, int], bytearray] = {}
    stats: dict[int, AmStats] = {int(rmid): AmStats() for rmid in AMS}
    problems: list[str] = []
    perf = time.perf_counter
    n = 0
    t0 = perf()
    for rec in read_wal_records(segments, start):
        n += 1
        if not rec.blocks:
            continue
        st = stats.get(rec.rmid)
        redone = False
        for blk in rec.blocks:
            key = (blk.rel, blk.blkno)
            if blk.apply_image:  # restored as the dispatcher does (untimed)
                page = redo_block(ctx, rec, blk.block_id, None)
                if page is not None:
                    pages[key] = page
                continue
            if st is None:  # XLOG FPI_FOR_HINT without an image, or no AM at all
                continue
            page = pages.get(key)
            if page is None and not blk.will_init:
                st.skipped += 1
                continue
            try:
                b0 = perf()
                out = redo_block(ctx, rec, blk.block_id, page)
                st.seconds += perf() - b0
            except UnsupportedWalRecord:
                st.unsupported[rec.rmgr_info] += 1
                for other in rec.blocks:  # their state is unknown from here on
                    if not other.apply_image:
                        pages.pop((other.rel, other.blkno), None)
                break
            except PagestoreError as e:
                st.errors += 1
                pages.pop(key, None)
                if len(problems) < 10:
                    problems.append(f"{rec.lsn} {rmgr_name(rec.rmid)}/{rec.rmgr_info:#04x} "
                                    f"{blk.rel} blk {blk.blkno}: {e}")
                continue
            st.blocks += 1
            redone = True
            if out is not None:
                pages[key] = out
        if redone:
            assert st is not None  # a block was redone: the record is of an AM
            st.records += 1
    return n, perf() - t0, stats, problems


def postgres_replay(primary: PgCluster, backup: Path, target: Path,
                    last_record: Lsn) -> tuple[float, float | None]:
    """PostgreSQL's replay of the WAL from the backup through ``last_record``: seconds
    end to end, and seconds of the redo loop from its log (None if not found)."""
    shutil.copytree(backup, target)
    (target / "recovery.signal").write_text("")
    with open(target / "postgresql.auto.conf", "a") as f:
        f.write(f"restore_command = 'cp {primary.datadir / 'pg_wal'}/%f %p'\n"
                f"recovery_target_lsn = '{last_record}'\n"
                "recovery_target_inclusive = on\n"
                "recovery_target_action = 'shutdown'\n"
                "hot_standby = off\n"
                f"port = {free_port()}\n"
                "log_line_prefix = '%m '\n")
    target.chmod(0o700)
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            give_to_server_user(Path(root) / name)
    give_to_server_user(target)
    t0 = time.perf_counter()
    proc = subprocess.run(as_server_user([primary.bin("postgres"), "-D", str(target)]),
                          capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    log = proc.stderr
    (target.parent / "replay.log").write_text(log)
    if "shutdown at recovery target" not in log:
        raise SystemExit(f"PostgreSQL's replay did not stop at {last_record}:\n{log[-3000:]}")

    def when(marker: str) -> datetime | None:
        for line in log.splitlines():
            if marker in line:
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
        return None

    begin, end = when("redo starts at"), when("recovery stopping after")
    loop = (end - begin).total_seconds() if begin is not None and end is not None else None
    return seconds, loop


def chains(base: Path, primary: PgCluster, start: Lsn, seconds: float) -> None:
    """The chain-length measurement: reconstruct over pgbench page chains of 1/10/100."""
    from pagestore.layers.layermap import ValueChain
    from services.ingest.offline import import_and_ingest

    primary.start()
    try:
        db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        rels = [int(primary.psql(f"SELECT pg_relation_filenode('{name}')"))
                for name in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers")]
    finally:
        primary.stop()
    tl = import_and_ingest(base / "backup", start, primary.datadir / "pg_wal", base / "layers")
    all_chains: list[ValueChain] = []
    for relnode in rels:
        rel = next(r for r in tl.state.relsizes if r.relnode == relnode
                   and r.forknum == ForkNumber.MAIN and r.dbnode == db)
        for blk in range(tl.state.relsizes[rel]):
            all_chains.append(tl.layers.get(rel_block_key(rel, blk), tl.lsn, [tl.recent]))
    print(f"\nchains ({tl.records:,} records ingested; {len(all_chains)} pgbench table pages):")
    print(f"{'records/page':>12} {'pages':>8} {'pages/s':>10} {'records/s':>11}  target")
    for n in LENGTHS:
        cut = [ValueChain(c.key, c.lsn, c.image, c.image_lsn, c.records[:n])
               for c in all_chains if c.image is not None and len(c.records) >= n]
        if not cut:
            print(f"{n:>12} {'-':>8}  (no page has {n} records after its image)")
            continue
        done = records = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for c in cut:
                reconstruct(tl.ctx, c)
                records += n
                done += 1
        dt = time.perf_counter() - t0
        verdict = "met" if records / dt >= TARGET else "MISSED"
        print(f"{n:>12} {len(cut):>8} {done / dt:>10,.0f} {records / dt:>11,.0f}  "
              f">= {TARGET:,} records/s: {verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=5, help="pgbench scale")
    ap.add_argument("--transactions", type=int, default=8000,
                    help="pgbench transactions after pgbench -i (4 clients)")
    ap.add_argument("--chains", action="store_true",
                    help="also time reconstruct over pgbench page chains of 1/10/100 records")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="time per --chains measurement")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pagestore-bench-redo-"))
    base.chmod(0o755)
    primary: PgCluster | None = None
    try:
        print(machine_facts(find_pg_bin_dir()), flush=True)
        t0 = time.perf_counter()
        primary, start, done = make_wal(base, args)
        segments = find_segments([primary.datadir / "pg_wal"])
        ctx = RedoContext.from_control_file(
            (base / "backup" / "global" / "pg_control").read_bytes())
        total, decode_s, last = decode_pass(segments, start)
        wal_bytes = last - start
        print(f"WAL: {total:,} records, {wal_bytes / 2**20:.1f} MiB from {start} to {last} "
              f"(made in {time.perf_counter() - t0:.0f} s: {', '.join(done)})", flush=True)

        n, pass_s, stats, problems = redo_pass(segments, start, ctx)
        assert n == total, (n, total)
        pg_s, pg_loop = postgres_replay(primary, base / "backup", base / "replay", last)

        print(f"\npagestore redo_block per resource manager (one process; only blocks "
              f"without an image timed), target >= {TARGET:,} records/s:")
        for rmid in AMS:
            st = stats[rmid]
            name = rmgr_name(rmid) + (" (bloom)" if rmid == RmgrId.GENERIC else "")
            extra = []
            if st.skipped:
                extra.append(f"{st.skipped} blocks skipped (page unknown)")
            if st.unsupported:
                extra.append("UNSUPPORTED " + ", ".join(
                    f"info {info:#04x}: {k} records" for info, k in
                    sorted(st.unsupported.items())))
            if st.errors:
                extra.append(f"{st.errors} redo errors")
            if not st.records:
                print(f"{name:<16} {'-':>8} records" + (f"  ({'; '.join(extra)})"
                                                       if extra else ""))
                continue
            rate = st.records / st.seconds
            verdict = "met" if rate >= TARGET else "MISSED"
            print(f"{name:<16} {st.records:>8,} records  {st.blocks:>8,} blocks  "
                  f"{rate:>9,.0f} records/s  {st.seconds / st.blocks * 1e6:>7.1f} us/block  "
                  f"[{verdict}]" + (f"  ({'; '.join(extra)})" if extra else ""))
        for p in problems:
            print(f"  redo error: {p}")
        redo_s = sum(st.seconds for st in stats.values())
        redo_r = sum(st.records for st in stats.values())
        print(f"{'all of them':<16} {redo_r:>8,} records  "
              f"{sum(st.blocks for st in stats.values()):>8,} blocks  "
              f"{redo_r / redo_s:>9,.0f} records/s  (redo_block only, {redo_s:.2f} s)")

        print(f"\noverall, all {total:,} records of the WAL:")
        print(f"pagestore (decode + images + redo): {total / pass_s:>9,.0f} records/s "
              f"({pass_s:.2f} s; decode alone {decode_s:.2f} s = {total / decode_s:,.0f} "
              f"records/s)")
        loop = (f"; redo loop {pg_loop:.2f} s = {total / pg_loop:,.0f} records/s"
                if pg_loop else "")
        print(f"PostgreSQL replay (same WAL):       {total / pg_s:>9,.0f} records/s overall "
              f"({pg_s:.2f} s end to end{loop})")
        print(f"PostgreSQL replays {pass_s / pg_s:.0f}x faster end to end"
              + (f", {pass_s / pg_loop:.0f}x in its redo loop" if pg_loop else "")
              + f"; pagestore's decode alone takes {decode_s / pg_s:.0f}x its end-to-end time")
        if args.chains:
            chains(base, primary, start, args.seconds)
        return 0
    finally:
        if primary is not None:
            primary.stop("immediate")
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
