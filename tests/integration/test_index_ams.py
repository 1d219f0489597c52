"""Every index access method through the stack: a GIN, a GiST, an SP-GiST, a BRIN, a hash
and a bloom index (bloom logs Generic WAL) created after the attach and updated under a
concurrent pgbench load.  Then every page pagestore serves equals a physical standby's
replay of the same WAL byte for byte, and a full backup restored from pagestore answers
an index scan on each (enable_seqscan off) exactly like the primary did."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pagestore.lsn import Lsn
from tests.fixtures.consistency import replay_with_postgres
from tests.fixtures.postgres import pg_basebackup
from tests.fixtures.restore import restore_backup
from tests.fixtures.stack import StackRunner
from tests.fixtures.standby import PageApiClient, compare_every_relation, last_checkpoint
from tests.fixtures.util import wait_until
from tests.integration.test_ingest_service import attach, status

SCHEMA = """
CREATE EXTENSION bloom;
CREATE TABLE docs (id int PRIMARY KEY, p point, words text[], body tsvector, t text,
                   a int, b int, c int, created bigint);
INSERT INTO docs SELECT g, point(g % 1000, g / 1000),
       ARRAY['w' || g % 50, 'w' || g % 7, 'x' || g % 1000],
       to_tsvector('simple', 'word' || g % 100 || ' term' || g % 13),
       'k' || (g * 7919) % 100000, g % 5000, g % 101, g % 13, g
  FROM generate_series(1, 20000) g;
CREATE INDEX docs_words ON docs USING gin (words) WITH (fastupdate = on);
CREATE INDEX docs_body ON docs USING gin (body) WITH (fastupdate = off);
CREATE INDEX docs_p ON docs USING gist (p);
CREATE INDEX docs_t ON docs USING spgist (t);
CREATE INDEX docs_created ON docs USING brin (created) WITH (pages_per_range = 4);
CREATE INDEX docs_a ON docs USING hash (a);
CREATE INDEX docs_bc ON docs USING bloom (b, c);
"""

# pgbench's script: upserts (new keys extend every index, updates move entries), deletes.
LOAD = r"""
\set id random(1, 60000)
\set k random(1, 1000000)
INSERT INTO docs VALUES (:id, point(:k % 1000, :k % 997),
    ARRAY['w' || :k % 50, 'y' || :k % 300], to_tsvector('simple', 'word' || :k % 100),
    'k' || :k, :k % 5000, :k % 101, :k % 13, 20000 + :id)
  ON CONFLICT (id) DO UPDATE SET p = EXCLUDED.p, words = EXCLUDED.words, t = EXCLUDED.t,
    a = EXCLUDED.a, b = EXCLUDED.b, c = EXCLUDED.c;
\set d random(1, 60000)
DELETE FROM docs WHERE id = :d;
"""

# One query per index; the plan must name the index (enable_seqscan off).
QUERIES = {
    "docs_words": "SELECT count(*), sum(id) FROM docs WHERE words @> ARRAY['w7']",
    "docs_body": "SELECT count(*), sum(id) FROM docs WHERE body @@ 'word42'::tsquery",
    "docs_p": "SELECT count(*), sum(id) FROM docs WHERE p <@ box '((100,10),(400,300))'",
    "docs_t": "SELECT count(*), sum(id) FROM docs WHERE t >= 'k12' AND t < 'k13'",
    "docs_created": "SELECT count(*), sum(id) FROM docs WHERE created BETWEEN 5000 AND 9000",
    "docs_a": "SELECT count(*), sum(id) FROM docs WHERE a = 42",
    "docs_bc": "SELECT count(*), sum(id) FROM docs WHERE b = 7 AND c = 3",
}


def index_scans(pg) -> dict[str, tuple[str, str]]:
    """Each query's result and plan, with sequential scans off."""
    out = {}
    for index, query in QUERIES.items():
        plan = pg.psql(f"SET enable_seqscan = off; EXPLAIN (COSTS OFF) {query}")
        result = pg.psql(f"SET enable_seqscan = off; {query}")
        out[index] = (result, plan)
    return out


@pytest.mark.slow
def test_every_index_am_under_load(stack: StackRunner, pg_factory, work_dir: Path) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'4GB'", "autovacuum": "off"})
    # Layers flushed within a second, so the flush position the primary's walsender waits
    # for at shutdown keeps up.
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    tenant, timeline = attach(stack, primary)
    standby_base = work_dir / "standby-base"
    pg_basebackup(primary, standby_base)

    primary.psql(SCHEMA)
    script = work_dir / "load.sql"
    script.write_text(LOAD)
    for _ in range(2):  # two rounds with a VACUUM between (index cleanup, page reuse)
        subprocess.run([primary.bin("pgbench"), "-n", "-c", "4", "-j", "2", "-t", "1500",
                        "-f", str(script), "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                        primary.user, "postgres"], check=True, capture_output=True,
                       timeout=600)
        primary.psql("VACUUM docs")
    primary.psql("SELECT gin_clean_pending_list('docs_words')")
    expected = index_scans(primary)
    for index, (result, plan) in expected.items():
        assert index in plan, plan
        assert int(result.split("|")[0]) > 0, (index, result)

    primary.stop()
    last_record = last_checkpoint(primary)

    def flushed() -> Lsn | None:
        st = status(stack, tenant, timeline)
        last, disk = Lsn.parse(st["last_record_lsn"]), Lsn.parse(st["disk_consistent_lsn"])
        return last if last > last_record and disk >= last else None

    final = wait_until(flushed, timeout=300, interval=0.2, what="ingested and flushed")
    standby = replay_with_postgres(primary, standby_base, work_dir / "standby", last_record)
    client = PageApiClient(stack.status()["services"]["pageread"]["port"], tenant, timeline)
    try:
        result = compare_every_relation(client, final, standby)
    finally:
        client.close()
    print("byte-equal pages:", dict(sorted(result.compared.items())))
    assert not result.mismatches, "\n".join(result.mismatches)
    assert {"heap", "btree", "gin", "gist", "spgist", "brin", "hash", "bloom"} <= set(
        result.compared), result.compared

    out = work_dir / "full.tar"
    port = stack.status()["services"]["gateway"]["port"]
    subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port),
                    "-c", f"fullbackup {tenant} {timeline} {final}", "-o", str(out)],
                   check=True, capture_output=True, timeout=600)
    restored = restore_backup(out, work_dir / "restored", primary)
    restored.start()
    try:
        assert index_scans(restored) == expected
    finally:
        restored.stop()
