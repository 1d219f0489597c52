"""Issue 6 acceptance through the real stack: `psql -c "fullbackup <tenant> <timeline>
<lsn>" -o out.tar` against the gateway, at the latest LSN and at two earlier LSNs of the
same timeline; vanilla PostgreSQL 15 starts from each; row counts, sums and the md5 of
the sorted rows of the pgbench tables equal the primary's at that LSN (captured while it
was current); pg_amcheck --heapallindexed reports nothing; an INSERT commits."""

from __future__ import annotations

import subprocess

from pagestore.lsn import Lsn
from tests.fixtures.restore import amcheck, restore_backup
from tests.fixtures.stack import StackRunner
from tests.fixtures.util import wait_until
from tests.integration.test_ingest_service import attach, caught_up

QUERIES = {
    "accounts": "SELECT count(*), sum(abalance), md5(string_agg(aid || ':' || abalance, ',' "
                "ORDER BY aid)) FROM pgbench_accounts",
    "branches": "SELECT count(*), sum(bbalance), md5(string_agg(bid || ':' || bbalance, ',' "
                "ORDER BY bid)) FROM pgbench_branches",
    "tellers": "SELECT count(*), sum(tbalance), md5(string_agg(tid || ':' || tbalance, ',' "
               "ORDER BY tid)) FROM pgbench_tellers",
    "history": "SELECT count(*), sum(delta), md5(string_agg(tid || ':' || delta, ',' "
               "ORDER BY mtime, tid, delta)) FROM pgbench_history",
}


def snapshot(pg) -> dict[str, str]:
    return {name: pg.psql(sql) for name, sql in QUERIES.items()}


def pgbench(primary, *args: str) -> None:
    subprocess.run([primary.bin("pgbench"), "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                    primary.user, *args, "postgres"], check=True, capture_output=True,
                   timeout=600)


def test_fullbackup_through_the_gateway(stack: StackRunner, pg_factory, work_dir) -> None:
    primary = pg_factory(settings={"wal_keep_size": "'2GB'", "autovacuum": "off"})
    stack.init("ingest.checkpoint_timeout='1s'")
    stack.start()
    pgbench(primary, "-i", "-s", "1")
    tenant, timeline = attach(stack, primary)
    captures: list[tuple[Lsn, dict[str, str]]] = []
    for transactions in ("150", "150", "200"):
        pgbench(primary, "-c", "2", "-t", transactions)
        # Nothing else writes: the state now is the state at the current insert position.
        captures.append((Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()")),
                         snapshot(primary)))
    end = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_until(lambda: caught_up(stack, tenant, timeline, end), timeout=120, what="caught up")
    port = stack.status()["services"]["gateway"]["port"]
    for i, (lsn, expected) in enumerate(captures):
        out = work_dir / f"backup{i}.tar"
        subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(port),
                        "-c", f"fullbackup {tenant} {timeline} {lsn}", "-o", str(out)],
                       check=True, capture_output=True, timeout=600)
        restored = restore_backup(out, work_dir / f"restored{i}", primary)
        restored.start()
        try:
            assert snapshot(restored) == expected, f"backup at {lsn}"
            check = amcheck(restored)
            assert check.returncode == 0 and check.stdout.strip() == "", check.stdout + check.stderr
            # The restored cluster takes writes (pgbench's own deltas may include 42).
            had = int(restored.psql("SELECT count(*) FROM pgbench_history WHERE delta = 42"))
            restored.psql("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
                          "VALUES (1, 1, 1, 42, now())")
            assert int(restored.psql(
                "SELECT count(*) FROM pgbench_history WHERE delta = 42")) == had + 1
        finally:
            restored.stop()
    # The three points in time really differ.
    assert len({c[1]["history"] for c in captures}) == 3
