from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pagestore.errors import ProtocolError
from pagestore.pg import wire
from pagestore.pg.wire import StartupKind


def test_startup_then_messages_split_anywhere() -> None:
    stream = (wire.startup_message({"user": "u", "application_name": "1234"})
              + wire.query("set datestyle to iso") + wire.message(b"X"))
    for cut in range(len(stream) + 1):
        r = wire.MessageReader(expect_startup=True)
        out: list[object] = []
        for chunk in (stream[:cut], stream[cut:]):
            r.feed(chunk)
            while True:
                item = r.next_startup() if r.expect_startup else r.next_message()
                if item is None:
                    break
                out.append(item)
        assert out[0] == wire.StartupPacket(StartupKind.STARTUP,
                                            {"user": "u", "application_name": "1234"})
        assert out[1] == wire.Message(b"Q", b"set datestyle to iso\x00")
        assert out[2] == wire.Message(b"X", b"")


def test_ssl_request_and_bad_version() -> None:
    r = wire.MessageReader(expect_startup=True)
    r.feed(struct.pack("!ii", 8, wire.SSL_REQUEST_CODE))
    assert r.next_startup() == wire.StartupPacket(StartupKind.SSL_REQUEST, {})
    r.feed(struct.pack("!ii", 8, 2 << 16))
    with pytest.raises(ProtocolError, match=r"unsupported frontend protocol 2\.0"):
        r.next_startup()


def test_length_limits() -> None:
    r = wire.MessageReader(max_message_size=1000)
    r.feed(b"Q" + struct.pack("!I", 5000))
    with pytest.raises(ProtocolError, match="over the 1000-byte limit"):
        r.next_message()
    r = wire.MessageReader()
    r.feed(b"Q" + struct.pack("!I", 2))
    with pytest.raises(ProtocolError, match="invalid message length 2"):
        r.next_message()
    r = wire.MessageReader(expect_startup=True)
    r.feed(struct.pack("!i", 1_000_000))
    r.feed(b"\x00" * 4)
    with pytest.raises(ProtocolError, match="invalid startup packet length"):
        r.next_startup()


def test_error_response_roundtrip() -> None:
    msg = wire.error_response("tenant x not found", "42704")
    r = wire.MessageReader()
    r.feed(msg)
    m = r.next_message()
    assert m is not None and m.type == b"E"
    fields = wire.parse_error_fields(m.body)
    assert fields["S"] == "ERROR" and fields["C"] == "42704"
    assert fields["M"] == "tenant x not found"


@given(st.binary(max_size=200))
def test_garbage_gives_error_or_waits(data: bytes) -> None:
    """Any bytes: a parsed packet, a clear ProtocolError, or a request for more data."""
    r = wire.MessageReader(expect_startup=True, max_message_size=1 << 16)
    r.feed(data)
    try:
        while True:
            item = r.next_startup() if r.expect_startup else r.next_message()
            if item is None:
                break
            if isinstance(item, wire.StartupPacket) and item.kind is not StartupKind.STARTUP:
                continue
    except ProtocolError:
        pass
    assert r.buffered <= len(data)


def test_random_message_streams() -> None:
    rng = random.Random(7)
    msgs = [wire.message(bytes([rng.choice(b"QdcX")]), rng.randbytes(rng.randint(0, 300)))
            for _ in range(200)]
    blob = b"".join(msgs)
    r = wire.MessageReader()
    got = []
    pos = 0
    while pos < len(blob):
        step = rng.randint(1, 97)
        r.feed(blob[pos:pos + step])
        pos += step
        while (m := r.next_message()) is not None:
            got.append(wire.message(m.type, m.body))
    assert got == msgs
