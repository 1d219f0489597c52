"""The gateway process: a libpq server (Neon's page service protocol) on
``gateway.listen_pg_addr``, plus a gRPC health service on ``gateway.listen_addr``."""

from __future__ import annotations

import asyncio
import logging
import sys

from gateway.session import serve_connection
from pagestore.service import ServiceContext, run_service

log = logging.getLogger(__name__)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def setup(ctx: ServiceContext) -> None:
    host, port = split_addr(ctx.config.gateway.listen_pg_addr)
    server = await asyncio.start_server(serve_connection, host, port)
    log.info("gateway serving libpq on %s", ctx.config.gateway.listen_pg_addr)

    async def close() -> None:
        server.close()
        await server.wait_closed()

    ctx.grpc.on_shutdown.append(close)


def main() -> int:
    return run_service("gateway", setup, uses_catalog=False)


if __name__ == "__main__":
    sys.exit(main())
