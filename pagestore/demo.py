"""The demo behind scripts/demo: the stack, plus a small PostgreSQL 15 primary attached
to a new timeline, with some pgbench traffic.

    python -m pagestore.demo [start]   set everything up (idempotent) and show the result
    python -m pagestore.demo stop      stop the primary and the stack

The workdir is $PAGESTORE_WORKDIR (else ./.pagestore); the primary lives in
<workdir>/demo/primary and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from pagestore.config import resolve_workdir
from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port


def _cli(workdir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir), *args],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"pagestore {' '.join(args)} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def _primary(workdir: Path) -> PgCluster:
    demo = workdir / "demo"
    state = demo / "primary.json"
    port = json.loads(state.read_text())["port"] if state.exists() else free_port()
    cluster = PgCluster(datadir=demo / "primary", port=port, bin_dir=find_pg_bin_dir(),
                        logfile=demo / "primary.log",
                        settings={"wal_level": "replica", "max_wal_senders": "5",
                                  "max_replication_slots": "5"})
    if not cluster.initialized:
        demo.mkdir(parents=True, exist_ok=True)
        demo.chmod(0o755)
        cluster.initdb(extra_hba=["host replication all 127.0.0.1/32 trust"])
        state.write_text(json.dumps({"port": port}))
    return cluster


def start(workdir: Path) -> None:
    if not (workdir / "pagestore.toml").exists():
        _cli(workdir, "init")
    if json.loads(subprocess.run(
            [sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir), "status", "--json"],
            capture_output=True, text=True).stdout)["services"]["ingest"]["health"] != "SERVING":
        print(_cli(workdir, "start").rstrip())
    primary = _primary(workdir)
    if not primary.is_running():
        primary.start()
    conn = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user]
    marker = workdir / "demo" / "timeline.json"
    if not marker.exists():
        print("demo: initializing pgbench tables (scale 1) on the primary")
        subprocess.run([primary.bin("pgbench"), "-i", "-q", "-s", "1", *conn, "postgres"],
                       check=True, capture_output=True)
        tenant = _cli(workdir, "tenant", "create").strip()
        print("demo: attaching the primary to a new timeline (slot, base backup, import)")
        timeline = _cli(workdir, "timeline", "create", "--tenant", tenant, "--wal-source",
                        f"host=127.0.0.1 port={primary.port} user={primary.user}").strip()
        marker.write_text(json.dumps({"tenant": tenant, "timeline": timeline}))
    ids = json.loads(marker.read_text())
    subprocess.run([primary.bin("pgbench"), "-c", "2", "-T", "2", *conn, "postgres"],
                   check=True, capture_output=True)
    # A moment to come back to: the balance total now, and the WAL position after it.
    past_sum = primary.psql("SELECT sum(abalance) FROM pgbench_accounts")
    past_lsn = Lsn.parse(primary.psql("SELECT pg_current_wal_insert_lsn()"))
    print("demo: running pgbench for 5 seconds")
    subprocess.run([primary.bin("pgbench"), "-c", "2", "-T", "5", *conn, "postgres"],
                   check=True, capture_output=True)
    target = Lsn.parse(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    deadline = time.monotonic() + 60
    while True:
        st = json.loads(_cli(workdir, "timeline", "status", "--tenant", ids["tenant"],
                             "--timeline", ids["timeline"], "--json"))
        if Lsn.parse(st["last_record_lsn"]) >= target or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    now_sum = primary.psql("SELECT sum(abalance) FROM pgbench_accounts")
    print(f"demo: taking a full backup at {past_lsn} through the gateway (psql fullbackup)")
    restored_sum = _restore_past(workdir, primary, ids, past_lsn)
    print(f"  sum(abalance) on the primary now:              {now_sum}")
    print(f"  sum(abalance) at {past_lsn}, on the primary:  {past_sum}")
    print(f"  sum(abalance) in vanilla PostgreSQL restored from pagestore at {past_lsn}: "
          f"{restored_sum}")
    print()
    print(f"primary: 127.0.0.1:{primary.port} (data in {primary.datadir})")
    print(f"tenant {ids['tenant']}, timeline {ids['timeline']}:")
    print(_cli(workdir, "timeline", "status", "--tenant", ids["tenant"], "--timeline",
               ids["timeline"]).rstrip())
    print()
    print(_cli(workdir, "status").rstrip())
    print()
    print(f"stop everything with: {sys.executable} -m pagestore.demo stop")


def _restore_past(workdir: Path, primary: PgCluster, ids: dict[str, str], lsn: Lsn) -> str:
    """fullbackup through the gateway with the real psql, then vanilla PostgreSQL on it."""
    import os
    import shutil
    import tarfile

    from pagestore.pg.cluster import give_to_server_user

    status = json.loads(subprocess.run(
        [sys.executable, "-m", "pagestore.cli", "--workdir", str(workdir), "status", "--json"],
        capture_output=True, text=True).stdout)
    gw_port = status["services"]["gateway"]["port"]
    past = workdir / "demo" / "past"
    shutil.rmtree(past, ignore_errors=True)
    past.mkdir(parents=True)
    past.chmod(0o755)
    tar_path = past / "fullbackup.tar"
    subprocess.run([primary.bin("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(gw_port),
                    "-c", f"fullbackup {ids['tenant']} {ids['timeline']} {lsn}",
                    "-o", str(tar_path)], check=True, capture_output=True, timeout=600)
    datadir = past / "pgdata"
    with tarfile.open(tar_path) as tf:
        tf.extractall(datadir, filter="tar")
    datadir.chmod(0o700)
    for root, dirs, files in os.walk(datadir):
        give_to_server_user(Path(root))
        for name in dirs + files:
            give_to_server_user(Path(root) / name)
    port = free_port()
    with open(datadir / "postgresql.conf", "a") as f:
        f.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n")
    restored = PgCluster(datadir=datadir, port=port, bin_dir=primary.bin_dir,
                         logfile=past / "postgres.log")
    restored.logfile.touch()
    give_to_server_user(restored.logfile)
    restored.start()
    try:
        return restored.psql("SELECT sum(abalance) FROM pgbench_accounts")
    finally:
        restored.stop()


def stop(workdir: Path) -> None:
    if (workdir / "demo" / "primary").exists():
        _primary(workdir).stop()
    print(_cli(workdir, "stop").rstrip())


def main(argv: list[str]) -> int:
    workdir = resolve_workdir(None)
    action = argv[0] if argv else "start"
    if action == "start":
        start(workdir)
    elif action == "stop":
        stop(workdir)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
