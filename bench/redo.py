"""Redo benchmark: records/s and pages/s for pgbench-shaped pages with 1, 10 and 100
records after their base image.

    .venv/bin/python bench/redo.py [--transactions 20000] [--keep]

Makes real WAL: a PostgreSQL 15 primary, a base backup, `pgbench -i -s 1`, a CHECKPOINT
(so every page starts from a full-page image), then pgbench transactions.  Ingests it
offline, takes the chains of the pgbench tables' pages (image + records), cuts them to
1, 10 and 100 records, and times pagestore.redo.apply.reconstruct over them in this
process (one redo process).  Prints the figures beside the target:

    >= 20,000 records/s per redo process
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pagestore.keys import ForkNumber, rel_block_key  # noqa: E402
from pagestore.layers.layermap import ValueChain  # noqa: E402
from pagestore.lsn import Lsn  # noqa: E402
from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port  # noqa: E402
from pagestore.redo.apply import reconstruct  # noqa: E402
from services.ingest.offline import import_and_ingest  # noqa: E402

TARGET = 20_000
LENGTHS = (1, 10, 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transactions", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pagestore-bench-redo-"))
    base.chmod(0o755)
    primary = PgCluster(datadir=base / "primary", port=free_port(), bin_dir=find_pg_bin_dir(),
                        logfile=base / "primary.log",
                        settings={"wal_level": "replica", "max_wal_senders": "5",
                                  "wal_keep_size": "'2GB'", "autovacuum": "off"})
    try:
        primary.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        primary.start()
        conn = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user]
        subprocess.run([primary.bin("pg_basebackup"), *conn, "-D", str(base / "backup"), "-X",
                        "none", "-c", "fast", "--no-sync"], check=True, capture_output=True)
        start = Lsn.parse(re.search(r"START WAL LOCATION: (\S+)",
                                    (base / "backup" / "backup_label").read_text()).group(1))  # type: ignore[union-attr]
        subprocess.run([primary.bin("pgbench"), "-i", "-q", "-s", "1", *conn, "postgres"],
                       check=True, capture_output=True)
        rels = {}
        for name in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers"):
            rels[name] = int(primary.psql(f"SELECT pg_relation_filenode('{name}')"))
        db = int(primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        primary.psql("CHECKPOINT")
        subprocess.run([primary.bin("pgbench"), "-c", "4", "-j", "2", "-t",
                        str(args.transactions // 4), *conn, "postgres"], check=True,
                       capture_output=True)
        primary.stop()
        tl = import_and_ingest(base / "backup", start, primary.datadir / "pg_wal", base / "layers")

        chains: list[ValueChain] = []
        for relnode in rels.values():
            rel = next(r for r in tl.state.relsizes if r.relnode == relnode
                       and r.forknum == ForkNumber.MAIN and r.dbnode == db)
            for blk in range(tl.state.relsizes[rel]):
                chains.append(tl.layers.get(rel_block_key(rel, blk), tl.lsn, [tl.recent]))
        print(f"WAL: {tl.records} records ingested; {len(chains)} pgbench table pages")
        print(f"{'records/page':>12} {'pages':>8} {'pages/s':>10} {'records/s':>11}  target")
        for n in LENGTHS:
            cut = [ValueChain(c.key, c.lsn, c.image, c.image_lsn, c.records[:n])
                   for c in chains if c.image is not None and len(c.records) >= n]
            if not cut:
                print(f"{n:>12} {'-':>8}  (no page has {n} records after its image)")
                continue
            done = records = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                for c in cut:
                    reconstruct(tl.ctx, c)
                    records += n
                    done += 1
            dt = time.perf_counter() - t0
            verdict = "met" if records / dt >= TARGET else "MISSED"
            print(f"{n:>12} {len(cut):>8} {done / dt:>10,.0f} {records / dt:>11,.0f}  "
                  f">= {TARGET:,} records/s: {verdict}")
        return 0
    finally:
        primary.stop("immediate")
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
