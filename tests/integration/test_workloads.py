"""The reusable workloads (tests/workloads) on real primaries, and the WAL they write.

Each workload must finish with the results its description promises, and pg_waldump must
read every record it wrote: the resource managers WAL and redo tests rely on are all
there, and with wal_compression on, full-page images are compressed by that method.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pagestore.pg.cluster import PgCluster
from tests.fixtures.postgres import PgFactory
from tests.fixtures.waldump import WaldumpRecord, iter_blocks, run_pg_waldump
from tests.workloads import current_lsn, run_maintenance, run_pgbench, switch_and_checkpoint


def _wal_of(pg: PgCluster, pg_bin_dir: Path, start: str, end: str) -> list[WaldumpRecord]:
    records = run_pg_waldump(pg_bin_dir, pg.datadir / "pg_wal", start, end).records
    lsns = [r.lsn for r in records]
    assert lsns == sorted(set(lsns))
    return records


def _dboid(pg: PgCluster, name: str = "postgres") -> str:
    return pg.psql(f"SELECT oid FROM pg_database WHERE datname = '{name}'")


def _assert_compressed_images(records: list[WaldumpRecord], method: str) -> None:
    images = Counter(b.compression for _, b in iter_blocks(records) if b.image)
    assert images[method] > 0, f"no {method}-compressed full-page images: {images}"
    assert set(images) <= {method, None}, images  # uncompressed when it saves nothing


def test_pgbench_workload(pg_factory: PgFactory, pg_bin_dir: Path) -> None:
    pg = pg_factory(settings={"wal_compression": "lz4"})
    start = current_lsn(pg)
    result = run_pgbench(pg, scale=1, transactions=1000, clients=4, jobs=2)
    end = switch_and_checkpoint(pg)

    assert result.processed == 1000 == result.clients * result.transactions_per_client
    assert pg.psql("SELECT count(*) FROM pgbench_accounts") == "100000"
    assert pg.psql("SELECT count(*) FROM pgbench_branches") == "1"
    assert pg.psql("SELECT count(*) FROM pgbench_history") == "1000"
    # every transaction moves delta from an account to its teller and branch
    assert pg.psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts) = "
                   "(SELECT sum(bbalance) FROM pgbench_branches)") == "t"

    records = _wal_of(pg, pg_bin_dir, start, end)
    rmgrs = Counter(r.rmgr for r in records)
    assert {"Heap", "Heap2", "Btree", "Transaction", "Storage", "XLOG", "Standby"} <= set(
        rmgrs), rmgrs
    assert rmgrs["Transaction"] >= 1000
    _assert_compressed_images(records, "lz4")
    filenode = pg.psql("SELECT pg_relation_filenode('pgbench_accounts')")
    accounts = f"1663/{_dboid(pg)}/{filenode}"
    touched = {b.fork for _, b in iter_blocks(records) if b.rel == accounts}
    assert {"main", "vm"} <= touched  # pgbench -i vacuums: the visibility map is logged


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_maintenance_workload(pg_factory: PgFactory, pg_bin_dir: Path,
                              compression: str) -> None:
    pg = pg_factory(settings={"wal_compression": compression})
    start = current_lsn(pg)
    run_maintenance(pg)
    end = current_lsn(pg)

    q = pg.psql
    assert q("SELECT count(*), min(id), max(id), bool_and(balance = 10 * id + 20) "
             "FROM ws_accounts") == "4000|1|4000|t"
    assert q("SELECT count(*), max(id) FROM ws_events") == "1000|1000"
    assert q("SELECT kind, count(*), min(length(body)) > 2048 FROM ws_toast "
             "GROUP BY kind ORDER BY kind") == "compressible|19|t\nincompressible|19|t"
    # compressible values shrank; incompressible ones went to the TOAST table as they are
    assert q("SELECT kind, max(pg_column_size(body)) < 2048, min(pg_column_size(body)) > 6000 "
             "FROM ws_toast GROUP BY kind ORDER BY kind") == "compressible|t|f\nincompressible|f|t"
    toast = q("SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'ws_toast'")
    assert int(q(f"SELECT count(DISTINCT chunk_id) FROM {toast}")) == 19
    assert q("SELECT count(*), count(*) FILTER (WHERE v LIKE 'loop-%'), "
             "count(*) FILTER (WHERE v LIKE 'rolled-back%') FROM ws_subxact") == "53|50|0"
    assert q("SELECT string_agg(id::text, ',' ORDER BY id) FROM ws_prepared") == "1,3"
    assert q("SELECT count(*) FROM pg_prepared_xacts") == "0"
    assert q("SELECT balance FROM ws_multixact") == "2"
    assert q("SELECT last_value FROM ws_seq") == "5000"
    assert q("SELECT count(*) FROM ws_unlogged") == "100"
    assert q("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
             "WHERE datname LIKE 'ws_db_%'") == "ws_db_file_copy,ws_db_wal_log"
    for db in ("ws_db_wal_log", "ws_db_file_copy"):
        assert pg.psql("SELECT count(*) FROM ws_in_db", dbname=db) == "500"

    records = _wal_of(pg, pg_bin_dir, start, end)
    rmgrs = Counter(r.rmgr for r in records)
    assert {"Heap", "Heap2", "Btree", "Transaction", "Storage", "Database", "Sequence",
            "XLOG", "Standby", "MultiXact", "RelMap"} <= set(rmgrs), rmgrs
    kinds = {(r.rmgr, r.identity) for r in records}
    assert {("Database", "CREATE_WAL_LOG"), ("Database", "CREATE_FILE_COPY"),
            ("Database", "DROP"), ("Transaction", "PREPARE"),
            ("Transaction", "COMMIT_PREPARED"), ("Transaction", "ABORT_PREPARED"),
            ("Transaction", "ASSIGNMENT"), ("Storage", "CREATE"), ("Storage", "TRUNCATE"),
            ("Sequence", "LOG"), ("MultiXact", "CREATE_ID"), ("Heap2", "VISIBLE"),
            ("Heap2", "FREEZE_PAGE"), ("XLOG", "FPI"), ("XLOG", "CHECKPOINT_ONLINE")} <= kinds
    last_checkpoint = max(r.lsn for r in records if r.identity == "CHECKPOINT_ONLINE")
    assert last_checkpoint > max(r.lsn for r in records if r.rmgr == "Database")
    _assert_compressed_images(records, compression)
    forks = {b.fork for _, b in iter_blocks(records)}
    assert forks == {"main", "fsm", "vm", "init"}  # the unlogged table's init fork too
    # CREATE DATABASE ... STRATEGY wal_log copies its template page by page into the WAL
    wal_log_db = _dboid(pg, "ws_db_wal_log")
    assert any(b.rel.split("/")[1] == wal_log_db and b.image
               for r, b in iter_blocks(records) if r.identity == "FPI")
