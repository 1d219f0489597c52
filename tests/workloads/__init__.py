"""Workloads that write interesting WAL on a started PgCluster, for WAL and redo tests.

- ``run_pgbench``: ``pgbench -i -s <scale>`` then a TPC-B-like run against ``postgres``.
- ``run_maintenance``: maintenance.sql beside this file (DDL, TRUNCATE, VACUUM [FULL],
  CREATE DATABASE with both strategies, sequences, TOAST, subtransactions, two-phase
  commit, multixacts, an unlogged table, a final CHECKPOINT); its header lists what it
  leaves behind.
- ``current_lsn``, ``switch_and_checkpoint``: WAL positions to bracket a workload with.

Clients are the real pgbench and psql of the cluster's bin_dir, run as subprocesses over
TCP to 127.0.0.1 (the servers have no Unix socket); a non-zero exit raises
WorkloadError with the client's output.  Nothing here sleeps.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pagestore.pg.cluster import PgCluster

MAINTENANCE_SQL = Path(__file__).with_name("maintenance.sql")


class WorkloadError(Exception):
    """A workload client (pgbench, psql) failed."""


@dataclass(frozen=True, slots=True)
class PgbenchResult:
    scale: int
    clients: int
    transactions_per_client: int
    processed: int  # "number of transactions actually processed"
    output: str


def _client_env(cluster: PgCluster) -> dict[str, str]:
    env = {**os.environ, "LC_ALL": "C", "PGAPPNAME": "pagestore-workload"}
    if cluster.password is not None:
        env["PGPASSWORD"] = cluster.password
    return env


def _connection_args(cluster: PgCluster) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.user]


def _run_client(cluster: PgCluster, argv: list[str], timeout: float) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=_client_env(cluster),
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise WorkloadError(f"{' '.join(argv)} timed out after {timeout}s") from e
    if proc.returncode != 0:
        raise WorkloadError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                            f"{proc.stderr.strip()}\n{proc.stdout[-2000:].strip()}".rstrip())
    return proc.stdout + proc.stderr


def run_pgbench(cluster: PgCluster, scale: int, transactions: int, clients: int = 4,
                jobs: int = 2, *, checkpoint_before_run: bool = True,
                timeout: float = 600) -> PgbenchResult:
    """Initialize pgbench at ``scale`` and run about ``transactions`` TPC-B transactions.

    Each of the ``clients`` runs ``transactions // clients`` (at least 1) transactions.
    With ``checkpoint_before_run`` a CHECKPOINT separates initialization from the run,
    so the run's first change to every page carries a full-page image, as in production.
    """
    pgbench = cluster.bin("pgbench")
    _run_client(cluster, [pgbench, "-i", "-s", str(scale), *_connection_args(cluster),
                          "postgres"], timeout)
    if checkpoint_before_run:
        cluster.psql("CHECKPOINT")
    per_client = max(1, transactions // clients)
    out = _run_client(cluster, [pgbench, "-c", str(clients), "-j", str(jobs), "-t",
                                str(per_client), *_connection_args(cluster), "postgres"],
                      timeout)
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    if m is None:
        raise WorkloadError(f"pgbench printed no transaction count:\n{out}")
    return PgbenchResult(scale, clients, per_client, int(m[1]), out)


def run_maintenance(cluster: PgCluster, timeout: float = 300) -> str:
    """Run maintenance.sql with psql (ON_ERROR_STOP, no single transaction); its output."""
    return _run_client(cluster, [cluster.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                 *_connection_args(cluster), "-d", "postgres",
                                 "-f", str(MAINTENANCE_SQL)], timeout)


def run_sql_file(cluster: PgCluster, name: str, timeout: float = 300) -> str:
    """Run tests/workloads/<name> with psql (ON_ERROR_STOP, no single transaction)."""
    return _run_client(cluster, [cluster.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                 *_connection_args(cluster), "-d", "postgres",
                                 "-f", str(Path(__file__).parent / name)], timeout)


def current_lsn(cluster: PgCluster) -> str:
    """pg_current_wal_lsn(): how far WAL has been written out, ``X/Y``."""
    return cluster.psql("SELECT pg_current_wal_lsn()")


def switch_and_checkpoint(cluster: PgCluster) -> str:
    """pg_switch_wal() then CHECKPOINT; returns pg_current_wal_lsn() afterwards.

    The switch ends the current segment (the next record starts a new one) and the
    checkpoint moves the redo pointer, so the next change to any page logs a full-page
    image.
    """
    cluster.psql("SELECT pg_switch_wal()")
    cluster.psql("CHECKPOINT")
    return current_lsn(cluster)


# ---------------------------------------------------------------- the regression suite
#: PostgreSQL's own regression suite, put there by scripts/build-pg-regress (setup).
REGRESS_SUITE = Path(__file__).resolve().parents[2] / ".tools" / "pg-regress"


@dataclass(frozen=True, slots=True)
class RegressResult:
    tests: int          # tests pg_regress ran
    failed: list[str]   # those whose output differed from expected/ (not a workload error)
    output: str


def regression_schedule(suite: Path = REGRESS_SUITE) -> list[str]:
    """parallel_schedule's ``test:`` lines (each a group run in parallel), in order."""
    if not (suite / "regress.so").exists():
        raise WorkloadError(f"PostgreSQL's regression suite is not in {suite}: run "
                            "scripts/setup (it calls scripts/build-pg-regress)")
    return [line for line in (suite / "parallel_schedule").read_text().splitlines()
            if line.startswith("test:")]


def run_regression_suite(cluster: PgCluster, work: Path, groups: list[str], *,
                         create_database: bool, suite: Path = REGRESS_SUITE,
                         timeout: float = 900) -> RegressResult:
    """Run ``groups`` (lines of parallel_schedule) with pg_regress against ``cluster``.

    pg_regress creates the ``regression`` database (and its roles) unless
    ``create_database`` is false, which continues in the database an earlier call left.
    The suite is copied under ``work`` and pg_regress runs as the server's OS user, so
    the server can read its data files and write the files its COPY TO tests write.
    Tests whose output differs from expected/ are listed, not raised: the WAL they write
    is the point; a pg_regress that cannot run at all raises WorkloadError.
    """
    import shutil

    from pagestore.pg.cluster import as_server_user, give_to_server_user

    regress = work / "pg-regress"
    if not regress.exists():
        shutil.copytree(suite, regress)
    out = work / f"pg-regress-out-{len(list(work.glob('pg-regress-out-*')))}"
    out.mkdir()
    give_to_server_user(out)
    schedule = out / "schedule"
    schedule.write_text("\n".join(groups) + "\n")
    pg_regress = cluster.bin_dir.parent / "lib" / "pgxs" / "src" / "test" / "regress" / "pg_regress"
    argv = [str(pg_regress), "--host=127.0.0.1", f"--port={cluster.port}",
            f"--user={cluster.user}", f"--inputdir={regress}", f"--outputdir={out}",
            f"--dlpath={regress}", f"--bindir={cluster.bin_dir}", f"--schedule={schedule}",
            "--max-connections=20"]
    if not create_database:
        argv.append("--use-existing")
    env = {**_client_env(cluster), "PGTZ": "PST8PDT", "PGDATESTYLE": "Postgres, MDY"}
    try:
        proc = subprocess.run(as_server_user(argv), capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=out)
    except subprocess.TimeoutExpired as e:
        raise WorkloadError(f"pg_regress timed out after {timeout}s") from e
    text = proc.stdout + proc.stderr
    ran = re.findall(r"^\s*(?:test\s+)?(\S+)\s+\.\.\. (ok|FAILED|failed \(ignored\))", text,
                     re.MULTILINE)
    if proc.returncode not in (0, 1) or not ran:
        raise WorkloadError(f"pg_regress exited {proc.returncode}:\n{text[-3000:]}")
    return RegressResult(len(ran), [name for name, verdict in ran if verdict != "ok"], text)
