"""One compute connection to the gateway: the libpq handshake and the command loop.

Speaks the backend role of pagestore.pg.wire.  Command parsing follows Neon's page
service (shared/reference/neon-protocols.md section 1): the query string is trimmed and
split at the first space, the command word matched case-insensitively; a string without
a space is rejected.  Errors are ErrorResponses with a SQLSTATE, followed by
ReadyForQuery; one connection's failure never touches another's.

The page service commands themselves (pagestream, basebackup, fullbackup, lease lsn)
are translated to pageread gRPC calls by the page-read issue; until then they answer
feature_not_supported naming the command.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pagestore.errors import PagestoreError, ProtocolError
from pagestore.pg import wire
from pagestore.pg.wire import FrontendMessage, StartupKind

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

PAGE_SERVICE_COMMANDS = ("pagestream_v2", "pagestream_v3", "basebackup", "fullbackup", "lease")


class CommandError(PagestoreError):
    """A command the gateway refuses; the connection goes on."""

    sqlstate = "0A000"


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     codec: wire.MessageReader) -> bool:
    while True:
        packet = codec.next_startup()
        if packet is None:
            data = await reader.read(65536)
            if not data:
                return False
            codec.feed(data)
            continue
        if packet.kind in (StartupKind.SSL_REQUEST, StartupKind.GSSENC_REQUEST):
            await _send(writer, b"N")
            continue
        if packet.kind is StartupKind.CANCEL_REQUEST:
            return False
        log.info("connection started application_name=%s",
                 packet.parameters.get("application_name", ""))
        await _send(writer, wire.authentication_ok()
                    + wire.parameter_status("client_encoding", "UTF8")
                    + wire.parameter_status("integer_datetimes", "on")
                    + wire.parameter_status("server_version", "14.1")
                    + wire.ready_for_query())
        return True


def run_command(text: str) -> bytes:
    """The response to one simple-query command, without ReadyForQuery."""
    stripped = text.strip().rstrip(";").strip()
    word, sep, _rest = stripped.partition(" ")
    if not sep:
        raise CommandError(f"cannot parse query: {text!r}")
    cmd = word.lower()
    if cmd == "set":
        return wire.command_complete("SELECT 1")
    if cmd in PAGE_SERVICE_COMMANDS:
        raise CommandError(f"{cmd} is not implemented by this pagestore version yet")
    raise CommandError(f"unsupported command: {word}")


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    codec = wire.MessageReader(expect_startup=True)
    try:
        if not await _handshake(reader, writer, codec):
            return
        while True:
            msg = codec.next_message()
            if msg is None:
                data = await reader.read(65536)
                if not data:
                    return
                codec.feed(data)
                continue
            if msg.type == FrontendMessage.TERMINATE.value:
                return
            if msg.type != FrontendMessage.QUERY.value:
                raise ProtocolError(f"unexpected message type {msg.type!r}: the gateway "
                                    "accepts simple queries only")
            text, _ = wire.cstring(msg.body)
            try:
                out = run_command(text)
            except PagestoreError as e:
                log.info("command failed: %s", e.message)
                out = wire.error_response(e.message, e.sqlstate)
            await _send(writer, out + wire.ready_for_query())
    except ProtocolError as e:
        log.warning("protocol error from %s: %s", peer, e.message)
        try:
            await _send(writer, wire.error_response(e.message, e.sqlstate, "FATAL"))
        except ConnectionError:
            pass
    except ConnectionError as e:
        log.info("connection from %s lost: %s", peer, e)
    finally:
        writer.close()
