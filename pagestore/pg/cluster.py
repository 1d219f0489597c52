"""PgCluster: a real PostgreSQL 15 server in a directory of ours, on a TCP port.

Used by `pagestore start` for the private catalog cluster and by the test harness for
catalogs and WAL primaries: one implementation for both.

Rules:
- initdb and postgres refuse to run as root.  When our effective uid is 0, every server
  binary runs as the ``postgres`` OS user (``runuser -u postgres --``) and the data
  directory and log file are chowned to it.  Its parent directories must be reachable
  by that user; if not, initdb fails with a message that says so.
- The server listens on 127.0.0.1 only and has no Unix socket (socket paths under deep
  temp directories exceed the 107-byte limit); clients connect over TCP.
- ``start`` returns only once the server accepts connections (pg_ctl -w), never after a
  sleep.  Failures raise PgClusterError with the tail of the server log.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pagestore.errors import PagestoreError

log = logging.getLogger(__name__)

PG_MAJOR = 15
DEFAULT_BIN_DIRS = (f"/usr/lib/postgresql/{PG_MAJOR}/bin",)
POSTGRES_OS_USER = "postgres"


class PgClusterError(PagestoreError):
    """A PostgreSQL server could not be created, started or stopped."""


def find_pg_bin_dir(configured: str = "") -> Path:
    """The directory holding PostgreSQL 15's initdb/postgres/pg_ctl/pg_waldump."""
    candidates: list[str] = []
    if configured:
        candidates.append(configured)
    env = os.environ.get("PG_BIN_DIR")
    if env:
        candidates.append(env)
    candidates.extend(DEFAULT_BIN_DIRS)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.CalledProcessError):
            pass
    for c in candidates:
        postgres = Path(c) / "postgres"
        if postgres.exists():
            version = subprocess.run([str(postgres), "--version"], capture_output=True,
                                     text=True).stdout
            if f" {PG_MAJOR}." in version:
                return Path(c)
            if configured and c == configured:
                raise PgClusterError(
                    f"pg_bin_dir {configured} holds {version.strip()!r}, not PostgreSQL {PG_MAJOR}")
    raise PgClusterError(
        f"PostgreSQL {PG_MAJOR} server binaries not found (looked in "
        f"{', '.join(dict.fromkeys(candidates))}); install postgresql-{PG_MAJOR} "
        "(scripts/setup does) or set pg_bin_dir")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_server_user(argv: list[str]) -> list[str]:
    """Prefix argv so it runs as the postgres OS user when we are root."""
    if running_as_root():
        return ["runuser", "-u", POSTGRES_OS_USER, "--", *argv]
    return argv


def give_to_server_user(path: Path) -> None:
    """chown ``path`` to the postgres OS user when we are root (no-op otherwise)."""
    if running_as_root():
        pw = pwd.getpwnam(POSTGRES_OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def check_server_user_can_write(datadir: Path, advice: str) -> None:
    """When we are root: refuse a data directory the postgres OS user cannot write (one
    under a directory it cannot traverse), naming ``advice`` as the way out."""
    if not running_as_root():
        return
    probe = subprocess.run(as_server_user(["test", "-w", str(datadir)]), capture_output=True)
    if probe.returncode != 0:
        raise PgClusterError(
            f"the {POSTGRES_OS_USER} OS user cannot write {datadir}: PostgreSQL refuses to "
            "run as root, so its data directory must lie under directories that user can "
            f"traverse (not under /root or another 0700 directory); {advice}")


def _pid_alive(pid: int) -> bool:
    """Is the process running (a zombie waiting to be reaped counts as gone)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass(slots=True)
class PgCluster:
    """One PostgreSQL 15 server: ``datadir`` on 127.0.0.1:``port``."""

    datadir: Path
    port: int
    bin_dir: Path
    logfile: Path
    user: str = "postgres"
    password: str | None = None
    settings: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _run(self, argv: list[str], *, what: str, timeout: float = 120) -> str:
        try:
            proc = subprocess.run(as_server_user(argv), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise PgClusterError(f"{what} timed out after {timeout}s: {' '.join(argv)}") from e
        if proc.returncode != 0:
            raise PgClusterError(
                f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                f"{proc.stderr.strip() or proc.stdout.strip()}\n{self.log_tail()}".rstrip())
        return proc.stdout

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "server log tail:\n" + "\n".join(text) if text else ""

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    # ------------------------------------------------------------------ lifecycle
    def initdb(self, *, auth_host: str = "trust", extra_hba: list[str] | None = None) -> None:
        """Create the cluster.  ``auth_host``: trust or scram-sha-256 (needs password)."""
        if self.initialized:
            raise PgClusterError(f"{self.datadir} already holds a PostgreSQL cluster")
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        give_to_server_user(self.datadir)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.touch()
        give_to_server_user(self.logfile)
        check_server_user_can_write(self.datadir, "choose another --workdir")
        argv = [self.bin("initdb"), "-D", str(self.datadir), "-U", self.user,
                "--encoding=UTF8", "--locale=C", "--auth-local=trust",
                f"--auth-host={auth_host}", "--no-sync"]
        pwfile: Path | None = None
        if self.password is not None:
            pwfile = self.datadir.parent / f".{self.datadir.name}.pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            give_to_server_user(pwfile)
            argv.append(f"--pwfile={pwfile}")
        try:
            self._run(argv, what="initdb")
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "port": str(self.port),
            "fsync": "on",
            "logging_collector": "off",
        }
        conf.update(self.settings)
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# added by pagestore\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        if extra_hba:
            with open(self.datadir / "pg_hba.conf", "a") as f:
                f.write("\n".join(extra_hba) + "\n")
        log.info("initdb done datadir=%s port=%d", self.datadir, self.port)

    def set_port(self, port: int) -> None:
        """Change the port (appends to postgresql.conf; the last setting wins)."""
        self.port = port
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(f"port = {port}\n")

    def start(self, timeout: float = 60) -> None:
        self._run([self.bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                   "-w", "-t", str(int(timeout)), "start"], what="pg_ctl start",
                  timeout=timeout + 10)
        log.info("postgres started datadir=%s port=%d", self.datadir, self.port)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            self._run([self.bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
                       "-t", str(int(timeout)), "stop"], what="pg_ctl stop",
                      timeout=timeout + 10)
        except PgClusterError:
            if mode == "immediate":
                raise
            log.warning("pg_ctl stop -m %s failed; stopping immediately datadir=%s",
                        mode, self.datadir)
            self.stop("immediate", timeout)
            return
        # pg_ctl returns once postmaster.pid is gone; the postmaster removes it just
        # before it exits.  Stopped means the process is gone too.
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, if it is alive."""
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    # ------------------------------------------------------------------ connecting
    def conninfo(self, dbname: str = "postgres", **extra: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "user": self.user,
                 "dbname": dbname, **extra}
        if self.password is not None:
            parts["password"] = self.password
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    def sqlalchemy_url(self, dbname: str = "postgres") -> str:
        from urllib.parse import quote

        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with the real psql; returns unaligned, tuples-only output."""
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        proc = subprocess.run(
            [self.bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", self.user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise PgClusterError(f"psql failed: {proc.stderr.strip()} (sql: {sql[:200]})")
        return proc.stdout.strip()


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "._-/:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
