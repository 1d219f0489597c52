"""The local stack: start, stop and inspect the five services and the catalog.

Layout under the workdir:

    pagestore.toml          the user's config (`pagestore init`)
    run/stack.toml          the resolved config a running stack uses (ports chosen,
                            catalog URL filled in); mode 0600: it may hold a password
    run/<service>.json      {"pid": ..., "port": ..., "grpc_port": ...} per service
    logs/<service>.log      each service's stdout/stderr (one line per event)
    logs/catalog.log        the private catalog server's log
    catalog/pgdata          the private catalog cluster (when catalog.url is empty)
    catalog/password        its password (0600)
    tenants/<tenant_id>/... layer files

Rules: `start` returns only when every service answers SERVING on grpc.health.v1 (or
fails, stopping what it started and quoting the failing service's log); `stop` sends
SIGTERM, waits shutdown_timeout, then SIGKILLs, and checks a pid still belongs to our
service (its command line names the service and this workdir) before signalling it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from pagestore.auth import make_internal_credentials, trusted_certificates
from pagestore.catalog import schema
from pagestore.catalog.db import make_engine
from pagestore.config import CONFIG_FILE_NAME, Config, load_config, render_config
from pagestore.errors import PagestoreError
from pagestore.grpcutil import check_health, configure_clients
from pagestore.pg.cluster import PgCluster, find_pg_bin_dir, free_port

log = logging.getLogger(__name__)

# Start order: dependencies first (pageread needs redo and ingest; gateway needs pageread).
SERVICES = ("redo", "ingest", "pageread", "housekeeping", "gateway")
SERVICE_MODULES = {
    "redo": "services.redo.server",
    "ingest": "services.ingest.server",
    "pageread": "services.pageread.server",
    "housekeeping": "services.housekeeping.server",
    "gateway": "gateway.server",
}
CATALOG_DB = "pagestore"
CATALOG_USER = "pagestore"


class StackError(PagestoreError):
    """The stack could not be started or stopped."""


class PortTaken(StackError):
    """A service could not bind its port: another process took it after the probe."""


#: Fresh starts tried when a port picked for "port 0" was taken before its service bound
#: it (the probe releases the port at once, so another process may bind it first).
PORT_RACE_ATTEMPTS = 3


def needs_tokens(cfg: Config) -> bool:
    """Whether any port of the stack checks tokens (then the services need their own)."""
    for name in SERVICES:
        section = getattr(cfg, name)
        if cfg.auth_type("grpc", section.listen_addr) == "NeonJWT":
            return True
    return (cfg.auth_type("http", cfg.housekeeping.listen_http_addr) == "NeonJWT"
            or cfg.auth_type("pg", cfg.gateway.listen_pg_addr) == "NeonJWT")


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise StackError(f"invalid address {addr!r}: expected host:port")
    return host, int(port)


def _with_port(addr: str, taken: set[int]) -> str:
    """``addr`` with port 0 replaced by a free port not in ``taken`` (which it joins):
    each probe's port is released at once, so two probes may get the same one."""
    host, port = split_addr(addr)
    while not port or port in taken:
        if port:
            raise StackError(f"port {port} is configured for two services")
        port = free_port()
        if port in taken:
            port = 0
    taken.add(port)
    return f"{host}:{port}"


class Stack:
    def __init__(self, workdir: Path, overrides: list[str] | None = None) -> None:
        self.workdir = workdir
        self.overrides = list(overrides or [])
        self.run_dir = workdir / "run"
        self.logs_dir = workdir / "logs"
        self.catalog_dir = workdir / "catalog"

    # ------------------------------------------------------------------ config
    @property
    def config_path(self) -> Path:
        return self.workdir / CONFIG_FILE_NAME

    @property
    def resolved_config_path(self) -> Path:
        return self.run_dir / "stack.toml"

    def user_config(self) -> Config:
        return load_config(self.config_path, self.overrides)

    def effective_config(self) -> Config:
        """The running stack's resolved config, else the user's."""
        if self.resolved_config_path.exists():
            return load_config(self.resolved_config_path, self.overrides)
        return self.user_config()

    def init(self, force: bool = False) -> Path:
        if self.config_path.exists() and not force:
            raise StackError(f"{self.config_path} already exists (use --force to overwrite)")
        cfg = self.user_config()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(cfg))
        return self.config_path

    # ------------------------------------------------------------------ catalog
    def private_catalog(self, cfg: Config, port: int | None = None) -> PgCluster:
        pwfile = self.catalog_dir / "password"
        password = pwfile.read_text().strip() if pwfile.exists() else None
        return PgCluster(datadir=self.catalog_dir / "pgdata",
                         port=port if port is not None else cfg.catalog.port,
                         bin_dir=find_pg_bin_dir(cfg.pg_bin_dir),
                         logfile=self.logs_dir / "catalog.log", user=CATALOG_USER,
                         password=password)

    def _recorded_catalog_port(self) -> int | None:
        try:
            return int(json.loads((self.run_dir / "catalog.json").read_text())["port"])
        except (OSError, ValueError, KeyError):
            return None

    def ensure_private_catalog(self, cfg: Config,
                               taken: set[int] | None = None) -> tuple[PgCluster, bool]:
        """Start (initdb first if new) the private catalog; returns (cluster, created).
        A port chosen for it avoids ``taken`` (the services' ports)."""
        cluster = self.private_catalog(cfg)
        if cluster.is_running():
            cluster.port = self._recorded_catalog_port() or cluster.port
            return cluster, False
        created = False
        port = cfg.catalog.port or split_addr(_with_port("127.0.0.1:0", set(taken or ())))[1]
        if not cluster.initialized:
            self.catalog_dir.mkdir(parents=True, exist_ok=True)
            password = secrets.token_urlsafe(24)
            pwfile = self.catalog_dir / "password"
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            cluster.password = password
            cluster.port = port
            cluster.initdb(auth_host="scram-sha-256")
            created = True
        elif port != self._configured_port(cluster):
            cluster.set_port(port)
        cluster.port = port
        cluster.start()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "catalog.json").write_text(json.dumps({"port": port}))
        if created:
            cluster.psql(f"CREATE DATABASE {CATALOG_DB}")
            engine = make_engine(cluster.sqlalchemy_url(CATALOG_DB))
            try:
                schema.upgrade(engine)
            finally:
                engine.dispose()
        return cluster, created

    @staticmethod
    def _configured_port(cluster: PgCluster) -> int | None:
        port = None
        with contextlib.suppress(OSError):
            for line in (cluster.datadir / "postgresql.conf").read_text().splitlines():
                k, _, v = line.partition("=")
                if k.strip() == "port":
                    with contextlib.suppress(ValueError):
                        port = int(v.split("#")[0].strip())
        return port

    def catalog_url(self, cfg: Config) -> str:
        if cfg.catalog.url:
            return cfg.catalog.url
        cluster = self.private_catalog(cfg, self._recorded_catalog_port())
        return cluster.sqlalchemy_url(CATALOG_DB)

    # ------------------------------------------------------------------ processes
    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _read_pidfile(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._pidfile(name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _owned_pid(self, name: str) -> int | None:
        """The service's pid if that process is alive and is our service."""
        info = self._read_pidfile(name)
        if not info:
            return None
        pid = int(info["pid"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
        except OSError:
            return None
        args = [a.decode(errors="replace") for a in cmdline]
        if SERVICE_MODULES[name] in args and str(self.workdir) in args:
            return pid
        return None

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.logs_dir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", SERVICE_MODULES[name], "--workdir", str(self.workdir),
                 "--config", str(self.resolved_config_path)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.workdir)
        finally:
            logf.close()

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logs_dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def _wait_healthy(self, name: str, proc: subprocess.Popen[bytes], addr: str,
                      timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rc = proc.poll()
            if rc is not None:
                tail = self.log_tail(name)
                error = PortTaken if "address already in use" in tail.lower() else StackError
                raise error(f"{name} exited with code {rc} while starting; its log "
                            f"({self.logs_dir / (name + '.log')}) ends with:\n{tail}")
            if check_health(addr, timeout=1.0) == "SERVING":
                return
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not report SERVING on {addr} within "
                                 f"{timeout:.0f}s; its log ends with:\n{self.log_tail(name)}")
            time.sleep(0.05)  # poll interval of a condition wait, not a fixed delay

    def running_services(self) -> list[str]:
        return [n for n in SERVICES if self._owned_pid(n) is not None]

    def start(self) -> tuple[Config, list[str]]:
        """Start every service that is not running; returns the config and their names.

        With the whole stack down, ports are resolved afresh and the catalog is started.
        With part of it running (a service crashed or was killed), the missing services
        are started with the running stack's resolved config, so addresses stay the same.
        A fresh start whose service found a port picked for it taken (PortTaken) is
        stopped and tried again with new ports, up to PORT_RACE_ATTEMPTS times; a port
        set in the config is never changed.
        """
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            fresh = not self.running_services()
            try:
                return self._start_once()
            except PortTaken as e:
                if not fresh or attempt == PORT_RACE_ATTEMPTS or self._ports_fixed():
                    raise StackError(e.message) from None
                log.warning("a port picked for the stack was taken before its service "
                            "bound it; starting again with new ports (attempt %d of %d)",
                            attempt + 1, PORT_RACE_ATTEMPTS)
        raise AssertionError("unreachable")

    def _ports_fixed(self) -> bool:
        """Every service port is set in the config (none is picked by a probe)."""
        cfg = self.user_config()
        return all(split_addr(getattr(getattr(cfg, n), k))[1]
                   for n in SERVICES for k in ("listen_addr", "listen_http_addr",
                                               *(["listen_pg_addr"] if n == "gateway" else [])))

    def _start_once(self) -> tuple[Config, list[str]]:
        if not self.config_path.exists():
            raise StackError(f"{self.config_path} does not exist: run `pagestore init` first")
        running = self.running_services()
        if len(running) == len(SERVICES):
            raise StackError(f"the stack in {self.workdir} is already running")
        started_catalog = False
        if running and self.resolved_config_path.exists():
            cfg = load_config(self.resolved_config_path)
        else:
            cfg = self.user_config()
            # Resolve "port 0" addresses to concrete free ports once, for every service,
            # every port distinct (explicit ones first, so a probe never picks them).
            taken: set[int] = set()
            addrs = [(name, key) for name in SERVICES
                     for key in ("listen_addr", "listen_http_addr",
                                 *(["listen_pg_addr"] if name == "gateway" else []))]
            explicit = [(n, k) for n, k in addrs if split_addr(getattr(getattr(cfg, n), k))[1]]
            resolved: dict[tuple[str, str], str] = {}
            for name, key in [*explicit, *[a for a in addrs if a not in explicit]]:
                resolved[(name, key)] = _with_port(getattr(getattr(cfg, name), key), taken)
            for name in SERVICES:
                section = getattr(cfg, name)
                changes = {k: v for (n, k), v in resolved.items() if n == name}
                cfg = replace(cfg, **{name: replace(section, **changes)})
            if not cfg.catalog.url:
                self.ensure_private_catalog(cfg, taken)
                started_catalog = True
                cfg = replace(cfg, catalog=replace(cfg.catalog, url=self.catalog_url(cfg),
                                                   port=self._recorded_catalog_port() or 0))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run_dir.chmod(0o700)
            self.resolved_config_path.write_text(render_config(cfg))
            self.resolved_config_path.chmod(0o600)
            if needs_tokens(cfg):
                # The services' own key pair and token, new at every start of the whole
                # stack (docs/security.md); a partial restart keeps the running ones'.
                make_internal_credentials(self.workdir)
        configure_clients(root_certificates=trusted_certificates(cfg))
        started: list[str] = []
        try:
            # All at once (each finds its peers when it needs them; a service that calls
            # another before it serves retries), then wait until every one serves.
            procs: dict[str, subprocess.Popen[bytes]] = {}
            for name in SERVICES:
                if name in running:
                    continue
                proc = self._spawn(name)
                section = getattr(cfg, name)
                info: dict[str, Any] = {"pid": proc.pid, "port": split_addr(
                    section.listen_pg_addr if name == "gateway" else section.listen_addr)[1]}
                if name == "gateway":
                    info["grpc_port"] = split_addr(section.listen_addr)[1]
                self._pidfile(name).write_text(json.dumps(info))
                started.append(name)
                procs[name] = proc
            for name, proc in procs.items():
                self._wait_healthy(name, proc, getattr(cfg, name).listen_addr,
                                   cfg.startup_timeout)
                log.info("%s is serving pid=%d", name, proc.pid)
        except BaseException:
            self._stop_services(cfg, started)
            if started_catalog:
                self._stop_catalog(cfg)
            raise
        return cfg, started

    def _stop_services(self, cfg: Config, names: list[str]) -> None:
        pids: dict[str, int] = {}
        for name in reversed(names):
            pid = self._owned_pid(name)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                pids[name] = pid
        deadline = time.monotonic() + cfg.shutdown_timeout
        for name, pid in pids.items():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                log.warning("%s did not stop within %.0fs; killing pid=%d", name,
                            cfg.shutdown_timeout, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        for name in names:
            self._pidfile(name).unlink(missing_ok=True)

    def _stop_catalog(self, cfg: Config) -> None:
        if cfg.catalog.url and not (self.catalog_dir / "pgdata").exists():
            return
        cluster = self.private_catalog(cfg)
        if (self.catalog_dir / "pgdata").exists():
            cluster.stop()
        (self.run_dir / "catalog.json").unlink(missing_ok=True)

    def stop(self) -> list[str]:
        cfg = self.effective_config()
        names = [n for n in SERVICES if self._pidfile(n).exists()]
        self._stop_services(cfg, names)
        user_cfg = self.user_config()
        if not user_cfg.catalog.url:
            self._stop_catalog(user_cfg)
        self.resolved_config_path.unlink(missing_ok=True)
        return names

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        cfg = self.effective_config()
        configure_clients(root_certificates=trusted_certificates(cfg))  # TLS health checks
        services: dict[str, Any] = {}
        for name in SERVICES:
            section = getattr(cfg, name)
            info = self._read_pidfile(name) or {}
            pid = self._owned_pid(name)
            grpc_addr = section.listen_addr
            port = split_addr(section.listen_pg_addr if name == "gateway" else grpc_addr)[1]
            entry: dict[str, Any] = {
                "pid": pid if pid is not None else info.get("pid"),
                "port": info.get("port", port),
                "health": check_health(grpc_addr) if pid is not None else "DOWN",
            }
            if name == "gateway":
                entry["grpc_port"] = info.get("grpc_port", split_addr(grpc_addr)[1])
            entry["http_port"] = split_addr(section.listen_http_addr)[1]
            services[name] = entry
        services["catalog"] = self._catalog_status(cfg)
        return {"services": services}

    def _catalog_status(self, cfg: Config) -> dict[str, Any]:
        user_cfg = self.user_config()
        if user_cfg.catalog.url:
            from sqlalchemy.engine import make_url

            url = make_url(user_cfg.catalog.url)
            return {"pid": None, "port": url.port or 5432,
                    "health": _pg_health(user_cfg.catalog.url)}
        cluster = self.private_catalog(cfg, self._recorded_catalog_port())
        pid = cluster.pid()
        health = _pg_health(cluster.sqlalchemy_url(CATALOG_DB)) if pid else "DOWN"
        return {"pid": pid, "port": cluster.port, "health": health}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pg_health(sqlalchemy_url: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url)
    try:
        with psycopg.connect(host=url.host or "127.0.0.1", port=url.port or 5432,
                             user=url.username, password=url.password,
                             dbname=url.database, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return "DOWN"
    return "SERVING"
