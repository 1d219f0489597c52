"""One compute connection to the gateway: the libpq handshake, the query loop and the
page service commands, translated to page-read gRPC calls.

Speaks the backend role of pagestore.pg.wire and mirrors Neon's page service
(``libs/postgres_backend`` and ``pageserver/src/page_service.rs``; facts in
shared/reference/neon-protocols.md sections 1.1-1.3):

- Handshake: SSLRequest and GSSENCRequest get 'N'; the StartupMessage gets
  AuthenticationOk, ParameterStatus client_encoding=UTF8, integer_datetimes=on,
  server_version=14.1 and ReadyForQuery (trust mode; no JWT).  A CancelRequest closes the
  connection (no BackendKeyData is ever sent).
- Simple query: the command's messages, then ReadyForQuery; a refused command sends
  ErrorResponse, then ReadyForQuery, and the connection goes on.  Extended query (as
  rust-postgres ``copy_out`` uses): Parse keeps the query string, Bind/Describe/Close
  are acknowledged, Execute runs it without ReadyForQuery, Sync sends ReadyForQuery;
  after an error, messages up to Sync are skipped (PostgreSQL's rule).
- Commands (gateway.commands): ``set`` is a no-op answering SELECT 1;
  ``pagestream_v2|v3`` runs gateway.pipeline.Pagestream; ``basebackup`` and
  ``fullbackup`` send CopyOutResponse (format 0, no columns), the tar in CopyData,
  CopyDone and CommandComplete SELECT 1 (an error before the first chunk is a plain
  ErrorResponse; one after it is an ErrorResponse after the data); ``lease lsn`` sends a
  text column ``valid_until`` with the expiry in milliseconds since the Unix epoch, NULL
  when the service refuses the lease.
- A connection is bound to the first tenant a command names; a command for another tenant
  fails (SwitchedTenant, 55000).
- ErrorResponses carry the SQLSTATE of the pagestore error class; the ones for refused
  commands are listed in gateway.commands.  CopyData, CopyDone and CopyFail outside a
  copy are ignored, as PostgreSQL does (a client may still be sending after a pagestream
  ended with an error).
- Every read waits at most 10 minutes (gateway.connection.IDLE_TIMEOUT).  Each
  connection runs in its own task; its failure is logged once, here, and never touches
  another connection.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import TYPE_CHECKING

from gateway.commands import (
    BasebackupCommand,
    Command,
    FullbackupCommand,
    LeaseLsnCommand,
    PagestreamCommand,
    SetCommand,
    SwitchedTenant,
    command_tenant,
    parse_command,
)
from gateway.connection import Connection, IdleTimeout
from gateway.pageread import PageReadClient, SharedGetPagesStreams
from gateway.pipeline import MAX_BATCH, Outcome, Pagestream
from pagestore.errors import AuthenticationError, PagestoreError, ProtocolError
from pagestore.logs import request_var, tenant_var, timeline_var
from pagestore.pg import wire
from pagestore.pg.wire import FrontendMessage, StartupKind

if TYPE_CHECKING:
    import asyncio
    import ssl
    from collections.abc import AsyncGenerator

    import grpc

    from pagestore.auth import Claims, JwtVerifier
    from pagestore.ids import TenantId

log = logging.getLogger(__name__)

_connection_ids = itertools.count(1)
_IGNORED_OUTSIDE_COPY = (FrontendMessage.COPY_DATA.value, FrontendMessage.COPY_DONE.value,
                         FrontendMessage.COPY_FAIL.value)


async def read_startup(conn: Connection, tls: ssl.SSLContext | None = None
                       ) -> wire.StartupPacket | None:
    """The StartupMessage; None at EOF or for a CancelRequest.  GSSENC requests are
    declined; an SSLRequest is declined without ``tls``, else answered 'S' and the
    connection turns TLS; with ``tls``, a StartupMessage before that is refused (FATAL
    08P01 "must connect with TLS", as Neon answers)."""
    codec = conn.codec
    secured = False
    while True:
        packet = codec.next_startup()
        if packet is None:
            if not await conn.read_more():
                return None
            continue
        if packet.kind is StartupKind.SSL_REQUEST and tls is not None and not secured:
            await conn.send(b"S")
            await conn.start_tls(tls)
            secured = True
            continue
        if packet.kind in (StartupKind.SSL_REQUEST, StartupKind.GSSENC_REQUEST):
            await conn.send(b"N")
            continue
        if packet.kind is StartupKind.CANCEL_REQUEST:
            log.info("cancel request from %s ignored: no backend keys are issued", conn.peer)
            return None
        if tls is not None and not secured:
            raise ProtocolError("must connect with TLS (this port has TLS on: sslmode=require)")
        return packet


class Session:
    """The state of one connection: its bound tenant and the extended-query state."""

    def __init__(self, conn: Connection, channel: grpc.aio.Channel, conn_id: int, *,
                 max_batch: int = MAX_BATCH,
                 streams: SharedGetPagesStreams | None = None,
                 verifier: JwtVerifier | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.conn = conn
        self.verifier = verifier  # None: Trust
        self.tls = tls
        self.claims: Claims | None = None  # the client's token's, with NeonJWT
        self.channel = channel
        self.streams = streams
        self.conn_id = conn_id
        self.max_batch = max_batch
        self.tenant: TenantId | None = None
        self._statement = ""  # the query of the last Parse (extended protocol)
        self._skip_until_sync = False

    # ------------------------------------------------------------------ handshake
    async def handshake(self) -> bool:
        packet = await read_startup(self.conn, self.tls)
        if packet is None:
            return False
        log.info("connection %d from %s started application_name=%s", self.conn_id,
                 self.conn.peer, packet.parameters.get("application_name", ""))
        if self.verifier is not None:
            # Neon's NeonJWT: the token is the password (cleartext; use TLS off loopback).
            await self.conn.send(wire.authentication_cleartext_password())
            msg = await self.conn.next_message()
            if msg is None:
                return False
            if msg.type != FrontendMessage.PASSWORD.value:
                raise ProtocolError("expected a password message (the token) after "
                                    "AuthenticationCleartextPassword")
            token = bytes(msg.body).rstrip(b"\x00").decode(errors="replace")
            try:
                self.claims = self.verifier.verify(token)
            except AuthenticationError as e:
                log.info("connection %d from %s refused: %s", self.conn_id, self.conn.peer,
                         e.message)
                await self.conn.send(wire.error_response(f"JWT authentication error: "
                                                         f"{e.message}", e.sqlstate, "FATAL"))
                return False
        await self.conn.send(wire.authentication_ok()
                             + wire.parameter_status("client_encoding", "UTF8")
                             + wire.parameter_status("integer_datetimes", "on")
                             + wire.parameter_status("server_version", "14.1")
                             + wire.ready_for_query())
        return True

    # ------------------------------------------------------------------ query loop
    async def run(self) -> None:
        if not await self.handshake():
            return
        while True:
            msg = await self.conn.next_message()
            if msg is None or msg.type == FrontendMessage.TERMINATE.value:
                return
            if not await self._message(msg):
                return

    async def _message(self, msg: wire.Message) -> bool:
        """Handle one message in the idle state; False ends the connection."""
        t = msg.type
        if t == FrontendMessage.QUERY.value:
            text, _ = wire.cstring(msg.body)
            keep = await self._execute(text)
            if keep:
                await self.conn.send(wire.ready_for_query())
            return keep
        if t == FrontendMessage.SYNC.value:
            self._skip_until_sync = False
            await self.conn.send(wire.ready_for_query())
            return True
        if t in _IGNORED_OUTSIDE_COPY:
            return True
        if self._skip_until_sync:
            return True
        if t == FrontendMessage.PARSE.value:
            _name, offset = wire.cstring(msg.body)
            self._statement, _ = wire.cstring(msg.body, offset)
            self.conn.write(wire.parse_complete())
        elif t == FrontendMessage.BIND.value:
            self.conn.write(wire.bind_complete())
        elif t == FrontendMessage.DESCRIBE.value:
            if msg.body[:1] == b"S":
                self.conn.write(wire.parameter_description())
            self.conn.write(wire.no_data())
        elif t == FrontendMessage.EXECUTE.value:
            return await self._execute(self._statement, extended=True)
        elif t == FrontendMessage.CLOSE.value:
            self.conn.write(wire.close_complete())
        elif t == FrontendMessage.FLUSH.value:
            await self.conn.flush()
        else:
            raise ProtocolError(f"unexpected message type {msg.type!r}")
        return True

    async def _execute(self, text: str, *, extended: bool = False) -> bool:
        """Run one command; False if the connection must end (no ReadyForQuery)."""
        try:
            command = parse_command(text)
            self._bind_tenant(command)
            return await self._run_command(command)
        except PagestoreError as e:
            log.info("command %r failed: %s: %s", text.strip()[:200], type(e).__name__,
                     e.message)
            self.conn.write(wire.error_response(e.message, e.sqlstate))
            self._skip_until_sync = extended
            await self.conn.flush()
            return True

    def _bind_tenant(self, command: Command) -> None:
        tenant = command_tenant(command)
        if tenant is None:
            return
        if self.claims is not None:
            self.claims.check_tenant(tenant)  # PermissionDenied: 28000, nothing served
        if self.tenant is None:
            self.tenant = tenant
            tenant_var.set(str(tenant))
        elif tenant != self.tenant:
            raise SwitchedTenant(f"this connection is bound to tenant {self.tenant}; a "
                                 f"command for tenant {tenant} needs a new connection")

    def _client(self, command: PagestreamCommand | BasebackupCommand | FullbackupCommand
                | LeaseLsnCommand) -> PageReadClient:
        timeline_var.set(str(command.timeline))
        shard = command.shard if isinstance(command, LeaseLsnCommand) else "0000"
        return PageReadClient(self.channel, command.tenant, command.timeline, shard,
                              request_tag=f"gw-{self.conn_id}")

    async def _run_command(self, command: Command) -> bool:
        match command:
            case SetCommand():
                self.conn.write(wire.command_complete("SELECT 1"))
            case PagestreamCommand():
                log.info("pagestream v%d for timeline %s", command.version.value,
                         command.timeline)
                outcome = await Pagestream(self.conn, self._client(command), command.version,
                                           max_batch=self.max_batch,
                                           streams=self.streams).run()
                return outcome is Outcome.IDLE
            case BasebackupCommand():
                client = self._client(command)
                await self._copy_out(client.base_backup(command.lsn, gzip=command.gzip,
                                                        replica=command.replica))
            case FullbackupCommand():
                client = self._client(command)
                await self._copy_out(client.full_backup(command.lsn, command.prev_lsn))
            case LeaseLsnCommand():
                expires = await self._client(command).lease_lsn(command.lsn)
                value = None if expires is None else str(
                    int(expires.timestamp() * 1000)).encode()
                self.conn.write(wire.row_description([wire.text_field("valid_until")])
                                + wire.data_row([value])
                                + wire.command_complete("SELECT 1"))
        await self.conn.flush()
        return True

    async def _copy_out(self, chunks: AsyncGenerator[bytes, None]) -> None:
        """A backup as COPY OUT data.  Errors before the first chunk raise (a plain
        ErrorResponse); errors after it end the copy with an ErrorResponse."""
        conn = self.conn
        async with contextlib.aclosing(chunks) as it:
            first = await anext(it, None)
            conn.write(wire.copy_out_response())
            sent = 0
            if first is not None:
                conn.write(wire.copy_data(first))
                sent += len(first)
            try:
                async for chunk in it:
                    conn.write(wire.copy_data(chunk))
                    sent += len(chunk)
                    await conn.flush()
            except PagestoreError as e:
                log.info("backup failed after %d bytes: %s: %s", sent, type(e).__name__,
                         e.message)
                conn.write(wire.error_response(e.message, e.sqlstate))
                return
        log.info("backup sent: %d bytes", sent)
        conn.write(wire.copy_done() + wire.command_complete("SELECT 1"))


async def refuse_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            message: str, tls: ssl.SSLContext | None = None) -> None:
    """Answer the client's startup with FATAL 53300 (too_many_connections), as
    PostgreSQL does when max_connections is reached, and close."""
    conn = Connection(reader, writer, idle_timeout=10.0)
    try:
        if await read_startup(conn, tls) is not None:
            await conn.send(wire.error_response(message, "53300", "FATAL"))
    except (ConnectionError, ProtocolError, IdleTimeout) as e:
        log.info("refused connection from %s ended: %s", conn.peer, e)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           channel: grpc.aio.Channel, *, max_batch: int = MAX_BATCH,
                           streams: SharedGetPagesStreams | None = None,
                           verifier: JwtVerifier | None = None,
                           tls: ssl.SSLContext | None = None) -> None:
    """Serve one client until it leaves; every failure is logged here, once."""
    conn = Connection(reader, writer)
    conn_id = next(_connection_ids)
    request_var.set(f"gw-{conn_id}")
    session = Session(conn, channel, conn_id, max_batch=max_batch, streams=streams,
                      verifier=verifier, tls=tls)
    try:
        await session.run()
    except ProtocolError as e:
        log.warning("protocol error from %s: %s", conn.peer, e.message)
        with contextlib.suppress(ConnectionError):
            await conn.send(wire.error_response(e.message, e.sqlstate, "FATAL"))
    except IdleTimeout as e:
        log.info("closing idle connection %d: %s", conn_id, e)
        with contextlib.suppress(ConnectionError):
            await conn.send(wire.error_response(
                "terminating connection due to idle timeout", "57P05", "FATAL"))
    except ConnectionError as e:
        log.info("connection %d from %s lost: %s", conn_id, conn.peer, e)
    except Exception:
        log.exception("connection %d from %s failed", conn_id, conn.peer)
        with contextlib.suppress(ConnectionError):
            await conn.send(wire.error_response("internal error (see the gateway log)",
                                                "XX000", "FATAL"))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        log.info("connection %d closed", conn_id)
