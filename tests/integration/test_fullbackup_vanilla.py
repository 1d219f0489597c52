"""Issue 6 acceptance: a full backup written by pagestore at an LSN starts under vanilla
PostgreSQL 15 (no pg_resetwal, no Neon code) and holds exactly the data of that LSN.

A primary runs pgbench in three phases; after each, a marker transaction commits and the
test captures row counts, balances and md5s of the sorted rows of every pgbench table.
The second capture is taken while one transaction is in flight (its row written to WAL,
not committed) and one is prepared.  Then the primary stops; its base backup plus WAL are
imported and ingested offline, and for each capture a full backup is written at the end
LSN of the marker's commit record, untarred into a fresh data directory and started with
pg_ctl.  The restored server must report a clean shutdown (no redo), return the captured
results, pass pg_amcheck --heapallindexed on every database, keep the prepared
transaction (and commit it), accept a committed INSERT, and survive an immediate stop:
crash recovery then replays from the synthesized checkpoint record.  The test runs with
and without data checksums (pg_checksums --enable on the fresh primary); with them,
every page the backup writes must carry PostgreSQL's own checksum.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pagestore.basebackup import page_checksum, write_basebackup
from pagestore.keys import BLCKSZ
from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster, as_server_user
from pagestore.pg.controlfile import ControlFile
from pagestore.pg.rmgr import RmgrId
from pagestore.pg.xlogrecord import DecodedRecord
from services.ingest.offline import import_and_ingest
from tests.fixtures.postgres import PgFactory, pg_basebackup
from tests.fixtures.restore import amcheck as _amcheck
from tests.fixtures.restore import restore_backup as _restore

XLOG_XACT_COMMIT = 0x00
XACT_OPMASK = 0x70

QUERIES = {
    "accounts": "SELECT count(*), sum(abalance), md5(string_agg(a::text, ',' ORDER BY aid)) "
                "FROM pgbench_accounts a",
    "branches": "SELECT count(*), sum(bbalance), md5(string_agg(b::text, ',' ORDER BY bid)) "
                "FROM pgbench_branches b",
    "tellers": "SELECT count(*), sum(tbalance), md5(string_agg(t::text, ',' ORDER BY tid)) "
               "FROM pgbench_tellers t",
    "history": "SELECT count(*), sum(delta), md5(string_agg(h::text, ',' ORDER BY h::text)) "
               "FROM pgbench_history h",
    "marks": "SELECT string_agg(label, ',' ORDER BY label) FROM backup_marks",
}


@dataclass(frozen=True)
class Capture:
    label: str
    xid: int                  # the marker transaction's (32-bit) XID
    results: dict[str, str]
    prepared: tuple[str, ...]  # prepared transactions open at the capture


def _query_all(conn: psycopg.Connection) -> dict[str, str]:
    out = {}
    for name, sql in QUERIES.items():
        row = conn.execute(sql).fetchone()
        assert row is not None
        out[name] = "|".join(str(v) for v in row)
    return out


def _capture(conn: psycopg.Connection, label: str) -> Capture:
    """Commit a marker transaction, then read the state it left (nothing else writes)."""
    with conn.transaction():
        conn.execute("INSERT INTO backup_marks VALUES (%s)", (label,))
        row = conn.execute("SELECT txid_current()").fetchone()
    assert row is not None
    prepared = tuple(r[0] for r in conn.execute(
        "SELECT gid FROM pg_prepared_xacts ORDER BY gid").fetchall())
    return Capture(label, int(row[0]) & 0xFFFF_FFFF, _query_all(conn), prepared)


def _pgbench(pg: PgCluster, *args: str) -> None:
    subprocess.run([pg.bin("pgbench"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user,
                    *args, "postgres"], check=True, capture_output=True, timeout=600,
                   env={**os.environ, "LC_ALL": "C"})


def _stored_checksums_match(pg: PgCluster) -> int:
    """Oracle for page_checksum: pages of the stopped primary, as PostgreSQL wrote them."""
    checked = 0
    for path in sorted((pg.datadir / "base" / "5").iterdir()):
        if not path.name.isdigit():
            continue
        data = path.read_bytes()
        for blk in range(len(data) // BLCKSZ):
            page = data[blk * BLCKSZ:(blk + 1) * BLCKSZ]
            if int.from_bytes(page[14:16], "little") == 0:
                continue  # a new page carries no checksum
            assert int.from_bytes(page[8:10], "little") == page_checksum(page, blk), \
                f"{path} block {blk}"
            checked += 1
    return checked


@pytest.mark.parametrize("checksums", [False, True], ids=["plain", "data_checksums"])
def test_fullbackup_starts_under_vanilla_postgres(pg_factory: PgFactory, work_dir: Path,
                                                  checksums: bool) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'4GB'"}, start=False)
    if checksums:
        subprocess.run(as_server_user([primary.bin("pg_checksums"), "--enable", "-D",
                                       str(primary.datadir)]), check=True, capture_output=True)
    primary.start()
    primary.psql("CREATE TABLE backup_marks (label text PRIMARY KEY)")
    start = pg_basebackup(primary, work_dir / "backup")

    captures: list[Capture] = []
    with psycopg.connect(primary.conninfo(), autocommit=True) as conn, \
            psycopg.connect(primary.conninfo(), autocommit=True) as inflight:
        _pgbench(primary, "-i", "-s", "2")
        captures.append(_capture(conn, "1-init"))
        # A prepared transaction and one in flight (its row is in the WAL, uncommitted).
        with psycopg.connect(primary.conninfo(), autocommit=True) as prep:
            prep.execute("BEGIN")
            prep.execute("INSERT INTO backup_marks VALUES ('prepared')")
            prep.execute("PREPARE TRANSACTION 'bb_prepared'")
        inflight.execute("BEGIN")
        inflight.execute("INSERT INTO backup_marks VALUES ('in-flight')")
        _pgbench(primary, "-c", "4", "-j", "2", "-t", "50")
        captures.append(_capture(conn, "2-mid"))
        inflight.execute("ROLLBACK")
        conn.execute("COMMIT PREPARED 'bb_prepared'")
        _pgbench(primary, "-c", "4", "-j", "2", "-t", "75")
        conn.execute("VACUUM pgbench_history")
        captures.append(_capture(conn, "3-end"))
    assert [c.prepared for c in captures] == [(), ("bb_prepared",), ()]
    # each pgbench run first vacuums and truncates pgbench_history
    assert [c.results["history"].split("|")[0] for c in captures] == ["0", "200", "300"]
    assert len({c.results["accounts"] for c in captures}) == 3
    primary.stop()
    if checksums:
        assert _stored_checksums_match(primary) > 100

    commits: dict[int, tuple[Lsn, Lsn]] = {}

    def note(rec: DecodedRecord) -> None:
        if rec.rmid == RmgrId.XACT and rec.info & XACT_OPMASK == XLOG_XACT_COMMIT:
            commits[rec.xid] = (rec.lsn, rec.end_lsn)

    tl = import_and_ingest(work_dir / "backup", start, primary.datadir / "pg_wal",
                           work_dir / "ingest", on_record=note)

    for cap in captures:
        prev, lsn = commits[cap.xid]
        assert lsn <= tl.lsn
        tar_path = work_dir / f"full-{cap.label}.tar"
        with open(tar_path, "wb") as out:
            write_basebackup(tl, out, lsn, prev_lsn=prev, full=True)
        restored = _restore(tar_path, work_dir / f"restore-{cap.label}", primary)
        control = ControlFile.parse((restored.datadir / "global" / "pg_control").read_bytes())
        assert control.data_checksums == checksums
        assert "max_prepared_transactions = 10" in (
            restored.datadir / "postgresql.conf").read_text()
        try:
            restored.start()
            log = restored.logfile.read_text()
            assert "database system was shut down at" in log, log
            assert "redo starts" not in log and "automatic recovery" not in log, log
            with psycopg.connect(restored.conninfo(), autocommit=True) as rc:
                assert _query_all(rc) == cap.results, cap.label
                gids = tuple(r[0] for r in rc.execute(
                    "SELECT gid FROM pg_prepared_xacts ORDER BY gid").fetchall())
                assert gids == cap.prepared, cap.label
                for gid in gids:
                    rc.execute(f"COMMIT PREPARED '{gid}'")
            amcheck = _amcheck(restored)
            assert amcheck.returncode == 0 and amcheck.stdout == amcheck.stderr == "", (
                cap.label, amcheck.returncode, amcheck.stdout, amcheck.stderr)
            with psycopg.connect(restored.conninfo(), autocommit=True) as rc:
                rc.execute("INSERT INTO backup_marks VALUES ('restored')")
                rc.execute("CREATE TABLE after_restore AS SELECT g FROM generate_series(1, 1000) g")
                marks = rc.execute("SELECT string_agg(label, ',' ORDER BY label) "
                                   "FROM backup_marks").fetchone()
            want = sorted([*cap.results["marks"].split(","), "restored",
                           *(["prepared"] if cap.prepared else [])])
            assert marks is not None and marks[0] == ",".join(want)
            # Crash recovery starts at the synthesized checkpoint and replays what
            # the restored server wrote after it.
            restored.stop("immediate")
            restored.start()
            assert "redo starts at" in restored.logfile.read_text()
            with psycopg.connect(restored.conninfo(), autocommit=True) as rc:
                row = rc.execute("SELECT (SELECT string_agg(label, ',' ORDER BY label) "
                                 "FROM backup_marks), (SELECT sum(g) FROM after_restore)"
                                 ).fetchone()
            assert row == (",".join(want), 500500)
        finally:
            restored.stop("immediate")
