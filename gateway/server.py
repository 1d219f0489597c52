"""The gateway process: a libpq server (Neon's page service protocol) on
``gateway.listen_pg_addr``, plus a gRPC health service on ``gateway.listen_addr``.

Each client connection is served by gateway.session in its own task, and every page
service command becomes calls to the page-read service at
``config.service_addr("pageread")`` over one shared gRPC channel (HTTP/2 multiplexes the
connections' GetPages streams).  TCP_NODELAY is set on every connection, as Neon does.
At shutdown the listener closes first, then the open connections are cancelled, then the
channel closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys

from gateway.pageread import SharedGetPagesStreams
from gateway.pipeline import MAX_BATCH
from gateway.session import refuse_connection, serve_connection
from pagestore.grpcutil import channel as grpc_channel
from pagestore.service import ServiceContext, run_service

log = logging.getLogger(__name__)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def setup(ctx: ServiceContext) -> None:
    pageread_addr = ctx.config.service_addr("pageread")
    channel = grpc_channel(pageread_addr)
    connections: set[asyncio.Task[None]] = set()
    limit = ctx.config.gateway.max_connections
    max_batch = ctx.config.pageread.max_blocks_per_request
    streams = SharedGetPagesStreams(channel, max_batch=max(1, min(MAX_BATCH, max_batch)))
    refused = 0
    tls = None
    if ctx.config.tls:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(ctx.config.ssl_cert_file, ctx.config.ssl_key_file)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal refused
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(connections) >= limit:
            refused += 1
            log.warning("connection from %s refused: %d connections open, "
                        "gateway.max_connections is %d (%d refused so far)",
                        writer.get_extra_info("peername"), len(connections), limit, refused)
            await refuse_connection(reader, writer, "sorry, too many clients already "
                                    f"(gateway.max_connections = {limit})", tls)
            return
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await serve_connection(reader, writer, channel, max_batch=max_batch,
                                   streams=streams, verifier=ctx.pg_verifier, tls=tls)
        except asyncio.CancelledError:
            # Shutdown cancels open connections; this is the top of the connection's task
            # (asyncio would log a cancelled client task as an error).
            log.info("connection closed at shutdown")
        finally:
            connections.discard(task)

    host, port = split_addr(ctx.config.gateway.listen_pg_addr)
    server = await asyncio.start_server(on_connect, host, port)
    log.info("gateway serving libpq on %s (auth %s%s), page-read service at %s",
             ctx.config.gateway.listen_pg_addr,
             "NeonJWT" if ctx.pg_verifier is not None else "Trust",
             ", TLS" if tls is not None else "", pageread_addr)

    async def close() -> None:
        server.close()
        for task in list(connections):
            task.cancel()
        if connections:
            await asyncio.wait(list(connections), timeout=5)
        await server.wait_closed()
        await channel.close()

    ctx.grpc.on_shutdown.append(close)


def main() -> int:
    return run_service("gateway", setup, uses_catalog=False)


if __name__ == "__main__":
    sys.exit(main())
