"""One libpq connection's byte streams: the wire codec, buffered writes, the idle timeout.

The I/O half of the gateway's sessions (pagestore.pg.wire is the sans-IO half).  Rules
kept: every read waits at most ``idle_timeout`` (Neon's page service: 10 minutes), after
which IdleTimeout ends the connection; messages longer than the codec's cap are a
ProtocolError before they are buffered (MAX_CLIENT_MESSAGE: a compute only sends short
queries and pagestream requests); writes are queued with ``write`` and pushed with
``flush``, so a response made of several messages goes out together.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pagestore.pg import wire

if TYPE_CHECKING:
    import ssl

    from pagestore.pg.wire import Message

IDLE_TIMEOUT = 600.0  # seconds; Neon's page service read timeout
#: The longest message a client may send: queries and pagestream requests are small.
MAX_CLIENT_MESSAGE = 1024 * 1024
READ_SIZE = 256 * 1024
#: ``flush`` waits while more than this is queued for the client: a backup's CopyData
#: messages (up to 1 MiB) keep flowing while the client reads the previous ones (asyncio's
#: default, 64 KiB, made every chunk wait for the client to drain the one before).
WRITE_BUFFER_HIGH = 2 * 1024 * 1024


class IdleTimeout(Exception):
    """The client sent nothing for ``idle_timeout`` seconds."""


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_timeout = idle_timeout
        self.codec = wire.MessageReader(expect_startup=True,
                                       max_message_size=MAX_CLIENT_MESSAGE)
        self.peer = str(writer.get_extra_info("peername"))
        transport = writer.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    async def read_more(self) -> bool:
        """Feed the codec with what the socket has; False at EOF."""
        try:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), self.idle_timeout)
        except TimeoutError:
            raise IdleTimeout(f"no message from {self.peer} for {self.idle_timeout:.0f}s") \
                from None
        if not data:
            return False
        self.codec.feed(data)
        return True

    async def next_message(self) -> Message | None:
        """The next typed message, or None at EOF."""
        while True:
            msg = self.codec.next_message()
            if msg is not None:
                return msg
            if not await self.read_more():
                return None

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Turn the connection into TLS (after answering an SSLRequest with 'S')."""
        await self.writer.start_tls(context)  # the reader then reads the TLS stream

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def flush(self) -> None:
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
