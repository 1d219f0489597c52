"""The process entry shared by every service: arguments, config, logging, the catalog
revision check, and the asyncio run loop.

A service module provides ``async def setup(ctx: ServiceContext) -> None`` that adds its
servicers to ``ctx.grpc`` (and may start background tasks); ``run_service`` does the
rest.  Every service also serves HTTP on its ``listen_http_addr``: ``GET /metrics``
(pagestore.metrics, Prometheus text), plus whatever routes ``setup`` adds to
``ctx.http`` (housekeeping's management API).  The HTTP port listens before the gRPC
health service reports SERVING, and closes after gRPC has stopped.  `pagestore start` launches each service as
``python -m services.<name>.server --workdir W --config W/run/stack.toml``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from pagestore import auth, failpoints, metrics
from pagestore.catalog import schema
from pagestore.catalog.db import make_engine
from pagestore.config import SERVICE_SECTIONS, Config, load_config
from pagestore.errors import ConfigError, PagestoreError
from pagestore.grpcutil import GrpcService, configure_clients
from pagestore.logs import setup_logging
from pagestore.remote import open_remote_storage
from pagestore.remote.ondemand import LayerFiles

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import sqlalchemy as sa

    from pagestore.auth import JwtVerifier
    from pagestore.remote.storage import RemoteStorage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServiceContext:
    name: str
    config: Config
    workdir: Path
    grpc: GrpcService
    catalog: sa.Engine | None = None
    # Remote storage (None when off) and the layer opener that falls back on it; set for
    # the services that use the catalog.
    remote: RemoteStorage | None = None
    layer_files: LayerFiles | None = None
    # The HTTP application on listen_http_addr (/metrics is there already) and the
    # coroutines /metrics awaits before rendering (gauges read from the catalog).
    http: web.Application = field(default_factory=web.Application)
    metrics_refresh: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Token checks of the HTTP API and the libpq port (None: Trust); gRPC's is in grpc.
    http_verifier: JwtVerifier | None = None
    pg_verifier: JwtVerifier | None = None


def _parse_args(name: str, argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"pagestore-{name}", description=f"pagestore {name} service")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default: <workdir>/pagestore.toml)")
    p.add_argument("-c", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def open_catalog(config: Config) -> sa.Engine:
    """Connect to the catalog and refuse to go on at another revision than head."""
    if not config.catalog.url:
        raise PagestoreError("catalog.url is empty: `pagestore start` fills it in for a "
                             "private catalog; set it when running a service by hand")
    engine = make_engine(config.catalog.url)
    try:
        schema.check_revision(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def run_service(name: str, setup: Callable[[ServiceContext], Awaitable[None]], *,
                uses_catalog: bool, argv: Sequence[str] | None = None) -> int:
    args = _parse_args(name, argv)
    workdir = args.workdir.resolve()
    try:
        config = load_config(args.config or workdir / "pagestore.toml", args.overrides)
    except PagestoreError as e:
        print(f"pagestore {name}: {e.message}", file=sys.stderr)
        return 2
    setup_logging(name, config.log.level)
    try:
        failpoints.configure_from_env()
    except PagestoreError as e:
        log.error("%s cannot start: %s", name, e.message)
        return 2

    from pagestore.pg.xlogrecord import decoder_implementation

    log.info("%s starting wal_decoder=%s", name, decoder_implementation())

    try:
        verifiers, tls = security(config, name, workdir)
    except PagestoreError as e:
        log.error("%s cannot start: %s", name, e.message)
        return 2

    async def main() -> None:
        service = GrpcService(name, getattr(config, name).listen_addr,
                              verifier=verifiers.get("grpc"), tls=tls)
        ctx = ServiceContext(name=name, config=config, workdir=workdir, grpc=service,
                             http_verifier=verifiers.get("http"),
                             pg_verifier=verifiers.get("pg"))
        if uses_catalog:
            ctx.catalog = await asyncio.to_thread(open_catalog, config)
            ctx.remote = await asyncio.to_thread(open_remote_storage, config.remote_storage)
            if ctx.remote is not None:
                log.info("remote storage: %s", ctx.remote.describe())
            ctx.layer_files = LayerFiles(workdir, ctx.remote, ranged=config.pageread.ranged_reads,
                                         download_after=config.pageread.download_after_reads,
                                         owner=name)
            if ctx.remote is not None:
                await asyncio.to_thread(ctx.layer_files.sweep)
        http: web.AppRunner | None = None
        try:
            await setup(ctx)
            try:
                http = await start_http(ctx, getattr(config, name).listen_http_addr)
                await service.start()
            except BaseException:
                await service.run_shutdown_hooks()
                raise
            await service.run_until_stopped()
        finally:
            if http is not None:
                await http.cleanup()
            if ctx.catalog is not None:
                ctx.catalog.dispose()
            if ctx.layer_files is not None:
                ctx.layer_files.close()
            if ctx.remote is not None:
                ctx.remote.close()

    try:
        with asyncio.Runner(loop_factory=_loop_factory(config.event_loop)) as runner:
            runner.run(main())
    except PagestoreError as e:
        log.error("%s cannot start: %s", name, e.message)
        return 1
    except OSError as e:
        log.error("%s cannot start: %s", name, e)
        return 1
    return 0


async def start_http(ctx: ServiceContext, addr: str) -> web.AppRunner:
    """Serve ``ctx.http`` (with ``GET /metrics`` added) on ``addr``."""
    async def get_metrics(request: web.Request) -> web.Response:
        for refresh in ctx.metrics_refresh:
            try:
                await refresh()
            except Exception as e:  # a scrape shows what it can; the log says why
                log.warning("metrics refresh failed: %s", e)
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    ctx.http.router.add_get("/metrics", get_metrics)
    runner = web.AppRunner(ctx.http, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = addr.rpartition(":")
    try:
        await web.TCPSite(runner, host.strip("[]") or None, int(port)).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("%s serving HTTP on %s", ctx.name, addr)
    return runner


def security(config: Config, name: str, workdir: Path
             ) -> tuple[dict[str, JwtVerifier], tuple[bytes, bytes] | None]:
    """The token checks of this service's ports that need them ('grpc', 'http', 'pg'),
    its TLS certificate and key, and its clients' token and trust (configure_clients)."""
    section = getattr(config, name)
    ports = [("grpc", section.listen_addr)]
    if name == "housekeeping":  # the management API (/metrics stays open everywhere)
        ports.append(("http", section.listen_http_addr))
    if name == "gateway":
        ports.append(("pg", section.listen_pg_addr))
    verifiers: dict[str, JwtVerifier] = {}
    needed = [port for port, addr in ports if config.auth_type(port, addr) == "NeonJWT"]
    if needed:
        verifier = auth.verifier_for(config.auth_validation_public_key_path, workdir)
        if verifier is None:
            raise ConfigError(f"{', '.join(needed)} auth is NeonJWT but there is no key to "
                              "verify tokens: set auth_validation_public_key_path (or start "
                              "the stack with `pagestore start`, which makes its own)")
        verifiers = dict.fromkeys(needed, verifier)
    # The services call each other's gRPC ports with the stack's own token when any of
    # them needs one.
    token = ""
    if any(config.auth_type("grpc", getattr(config, s).listen_addr) == "NeonJWT"
           for s in SERVICE_SECTIONS):
        token = auth.internal_token(workdir)
        if not token:
            raise ConfigError(f"grpc auth is NeonJWT but {auth.internal_dir(workdir)} has no "
                              "token for the services: start them with `pagestore start` "
                              "(or `pagestore auth internal` first)")
    configure_clients(token=token, root_certificates=auth.trusted_certificates(config))
    tls = None
    if config.tls:
        try:
            tls = (Path(config.ssl_cert_file).read_bytes(), Path(config.ssl_key_file).read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read the TLS certificate or key: {e}") from None
    return verifiers, tls


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for config ``event_loop`` (None: asyncio's default)."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise PagestoreError("event_loop = 'uvloop' but the uvloop package is not "
                                 "installed (pip install uvloop)") from None
        return uvloop.new_event_loop
    raise PagestoreError(f"event_loop must be 'asyncio' or 'uvloop', not {name!r}")

