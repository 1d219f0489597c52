"""PostgreSQL frontend/backend protocol v3: a sans-IO codec for both roles.

Source of truth: PostgreSQL's "Frontend/Backend Protocol" chapter (message formats),
src/include/libpq/pqcomm.h (startup codes).  All integers are big-endian (network order).

Rules:
- No I/O here.  ``MessageReader.feed(data)`` buffers bytes, ``next_message()`` returns a
  parsed ``Message`` or None when more bytes are needed.  The same reader serves the
  backend role (the gateway reads frontend messages, the first being a startup packet
  without a type byte) and the frontend role (a replication client reads backend
  messages).  Frontend and backend type codes are separate enums because the protocol
  reuses letters (``E`` is Execute one way and ErrorResponse the other).
- Lengths are checked before anything is buffered beyond the header: a message longer
  than ``max_message_size`` is a ProtocolError, never a memory blow-up.
- Builders return complete messages as bytes with the length filled in.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pagestore.errors import ProtocolError

Buffer = bytes | bytearray | memoryview

INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")
INT16 = struct.Struct("!h")
HEADER = struct.Struct("!cI")  # message type byte, length (counts itself, not the type)

PROTOCOL_VERSION_3 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_STARTUP_PACKET = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH


class FrontendMessage(bytes, enum.Enum):
    """Type bytes of messages a client sends."""

    QUERY = b"Q"
    TERMINATE = b"X"
    COPY_DATA = b"d"
    COPY_DONE = b"c"
    COPY_FAIL = b"f"
    PARSE = b"P"
    BIND = b"B"
    DESCRIBE = b"D"
    EXECUTE = b"E"
    SYNC = b"S"
    CLOSE = b"C"
    FLUSH = b"H"
    PASSWORD = b"p"


class BackendMessage(bytes, enum.Enum):
    """Type bytes of messages a server sends."""

    AUTHENTICATION = b"R"
    PARAMETER_STATUS = b"S"
    BACKEND_KEY_DATA = b"K"
    READY_FOR_QUERY = b"Z"
    ERROR_RESPONSE = b"E"
    NOTICE_RESPONSE = b"N"
    COMMAND_COMPLETE = b"C"
    ROW_DESCRIPTION = b"T"
    DATA_ROW = b"D"
    EMPTY_QUERY_RESPONSE = b"I"
    COPY_IN_RESPONSE = b"G"
    COPY_OUT_RESPONSE = b"H"
    COPY_BOTH_RESPONSE = b"W"
    COPY_DATA = b"d"
    COPY_DONE = b"c"
    PARSE_COMPLETE = b"1"
    BIND_COMPLETE = b"2"
    CLOSE_COMPLETE = b"3"
    NO_DATA = b"n"
    PARAMETER_DESCRIPTION = b"t"


class StartupKind(enum.Enum):
    STARTUP = "startup"
    SSL_REQUEST = "ssl"
    GSSENC_REQUEST = "gssenc"
    CANCEL_REQUEST = "cancel"


@dataclass(frozen=True, slots=True)
class StartupPacket:
    kind: StartupKind
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class Message:
    """One typed message: its type byte and its body (without type and length)."""

    type: bytes
    body: bytes


class MessageReader:
    """Incremental parser.  ``expect_startup`` makes the first message a startup packet."""

    def __init__(self, *, expect_startup: bool = False,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.expect_startup = expect_startup
        self.max_message_size = max_message_size

    def feed(self, data: Buffer) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_startup(self) -> StartupPacket | None:
        if len(self._buf) < 8:
            return None
        (length,) = INT32.unpack_from(self._buf, 0)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(self._buf) < length:
            return None
        packet = bytes(self._buf[4:length])
        del self._buf[:length]
        (code,) = INT32.unpack_from(packet, 0)
        if code == SSL_REQUEST_CODE:
            return StartupPacket(StartupKind.SSL_REQUEST, {})
        if code == GSSENC_REQUEST_CODE:
            return StartupPacket(StartupKind.GSSENC_REQUEST, {})
        if code == CANCEL_REQUEST_CODE:
            return StartupPacket(StartupKind.CANCEL_REQUEST, {})
        if code != PROTOCOL_VERSION_3:
            raise ProtocolError(
                f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                "only 3.0 is supported")
        self.expect_startup = False
        return StartupPacket(StartupKind.STARTUP, _parse_startup_parameters(packet[4:]))

    def next_message(self) -> Message | None:
        if self.expect_startup:
            raise ProtocolError("a startup packet is expected first")
        if len(self._buf) < HEADER.size:
            return None
        mtype, length = HEADER.unpack_from(self._buf, 0)
        if length < 4:
            raise ProtocolError(f"invalid message length {length} for message type {mtype!r}")
        if length > self.max_message_size:
            raise ProtocolError(
                f"message of type {mtype!r} is {length} bytes, over the "
                f"{self.max_message_size}-byte limit")
        total = 1 + length
        if len(self._buf) < total:
            return None
        body = bytes(self._buf[5:total])
        del self._buf[:total]
        return Message(mtype, body)


def _parse_startup_parameters(data: bytes) -> dict[str, str]:
    params: dict[str, str] = {}
    parts = data.split(b"\x00")
    # The list ends with an empty name (the terminating NUL), then the trailing split.
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolError("startup packet parameters are not NUL-terminated")
    items = parts[:-2]
    if len(items) % 2:
        raise ProtocolError("startup packet has a parameter name without a value")
    for i in range(0, len(items), 2):
        try:
            params[items[i].decode()] = items[i + 1].decode()
        except UnicodeDecodeError:
            raise ProtocolError("startup packet parameters are not valid UTF-8") from None
    return params


def cstring(body: bytes, offset: int = 0) -> tuple[str, int]:
    """A NUL-terminated string at ``offset`` and the offset after its NUL."""
    end = body.find(b"\x00", offset)
    if end < 0:
        raise ProtocolError("string is not NUL-terminated")
    try:
        return body[offset:end].decode(), end + 1
    except UnicodeDecodeError:
        raise ProtocolError("string is not valid UTF-8") from None


# --------------------------------------------------------------------------- builders

def message(mtype: bytes, body: Buffer = b"") -> bytes:
    return HEADER.pack(mtype, len(body) + 4) + bytes(body)


def startup_message(params: dict[str, str]) -> bytes:
    body = INT32.pack(PROTOCOL_VERSION_3) + b"".join(
        k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params.items()) + b"\x00"
    return INT32.pack(len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(FrontendMessage.QUERY.value, sql.encode() + b"\x00")


def authentication_ok() -> bytes:
    return message(BackendMessage.AUTHENTICATION.value, INT32.pack(0))


def authentication_cleartext_password() -> bytes:
    return message(BackendMessage.AUTHENTICATION.value, INT32.pack(AuthRequest.CLEARTEXT_PASSWORD))


def parameter_status(name: str, value: str) -> bytes:
    return message(BackendMessage.PARAMETER_STATUS.value,
                   name.encode() + b"\x00" + value.encode() + b"\x00")


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(BackendMessage.READY_FOR_QUERY.value, status)


def command_complete(tag: str) -> bytes:
    return message(BackendMessage.COMMAND_COMPLETE.value, tag.encode() + b"\x00")


def error_response(message_text: str, sqlstate: str = "XX000", severity: str = "ERROR") -> bytes:
    fields = (b"S" + severity.encode() + b"\x00" + b"V" + severity.encode() + b"\x00"
              + b"C" + sqlstate.encode() + b"\x00" + b"M" + message_text.encode() + b"\x00"
              + b"\x00")
    return message(BackendMessage.ERROR_RESPONSE.value, fields)


def parse_error_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields keyed by their one-letter codes."""
    out: dict[str, str] = {}
    i = 0
    while i < len(body) and body[i] != 0:
        code = chr(body[i])
        value, i = cstring(body, i + 1)
        out[code] = value
    return out


# --------------------------------------------------------------------------- frontend role
#
# What a client (pagestore.pg.replication) needs: the messages it sends, and parsers for
# the backend messages it receives.  AUTH_REQ_* codes mirror src/include/libpq/pqcomm.h.

INT64 = struct.Struct("!q")
UINT64 = struct.Struct("!Q")
FIELD_DESCRIPTION = struct.Struct("!IhIhih")  # table oid, attnum, type oid, typlen, typmod, format
COPY_RESPONSE_HEADER = struct.Struct("!bh")  # overall format (0 text, 1 binary), column count


class AuthRequest(enum.IntEnum):
    """The Int32 code that opens every AuthenticationXXX ('R') message."""

    OK = 0
    KRB5 = 2
    CLEARTEXT_PASSWORD = 3
    CRYPT = 4
    MD5 = 5
    SCM_CREDS = 6
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription ('T') message."""

    name: str
    table_oid: int
    column_number: int
    type_oid: int
    type_size: int
    type_modifier: int
    format_code: int


def password_message(password: str | bytes) -> bytes:
    """PasswordMessage ('p'): a cleartext or MD5-hashed password, NUL-terminated."""
    raw = password.encode() if isinstance(password, str) else password
    return message(FrontendMessage.PASSWORD.value, raw + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """SASLInitialResponse ('p'): mechanism name, Int32 length of data, data."""
    return message(FrontendMessage.PASSWORD.value,
                   mechanism.encode() + b"\x00" + INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """SASLResponse ('p'): the mechanism's data, no length prefix."""
    return message(FrontendMessage.PASSWORD.value, data)


def copy_data(data: Buffer) -> bytes:
    return message(FrontendMessage.COPY_DATA.value, data)


def copy_done() -> bytes:
    return message(FrontendMessage.COPY_DONE.value)


def copy_fail(reason: str) -> bytes:
    return message(FrontendMessage.COPY_FAIL.value, reason.encode() + b"\x00")


def terminate() -> bytes:
    return message(FrontendMessage.TERMINATE.value)


def parse_authentication(body: bytes) -> tuple[int, bytes]:
    """An Authentication ('R') message: its AUTH_REQ code and the bytes after it."""
    if len(body) < INT32.size:
        raise ProtocolError(f"Authentication message is {len(body)} bytes, shorter than its code")
    (code,) = INT32.unpack_from(body, 0)
    return code, body[INT32.size:]


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    """AuthenticationSASL's list: NUL-terminated names ending with an empty name."""
    names: list[str] = []
    offset = 0
    while True:
        name, offset = cstring(data, offset)
        if not name:
            return names
        names.append(name)


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    name, offset = cstring(body)
    value, _ = cstring(body, offset)
    return name, value


def parse_backend_key_data(body: bytes) -> tuple[int, int]:
    """BackendKeyData ('K'): process id and secret key."""
    if len(body) != 2 * INT32.size:
        raise ProtocolError(f"BackendKeyData is {len(body)} bytes, expected 8")
    pid, key = struct.unpack("!ii", body)
    return pid, key


def parse_row_description(body: bytes) -> list[FieldDescription]:
    if len(body) < INT16.size:
        raise ProtocolError("RowDescription is shorter than its field count")
    (count,) = INT16.unpack_from(body, 0)
    if count < 0:
        raise ProtocolError(f"RowDescription has a negative field count {count}")
    offset = INT16.size
    fields: list[FieldDescription] = []
    for i in range(count):
        name, offset = cstring(body, offset)
        if offset + FIELD_DESCRIPTION.size > len(body):
            raise ProtocolError(f"RowDescription field {i} ({name!r}) is truncated")
        fields.append(FieldDescription(name, *FIELD_DESCRIPTION.unpack_from(body, offset)))
        offset += FIELD_DESCRIPTION.size
    if offset != len(body):
        raise ProtocolError(
            f"RowDescription has {len(body) - offset} bytes after its {count} fields")
    return fields


def parse_data_row(body: bytes) -> list[bytes | None]:
    """DataRow ('D'): each column's raw value, None for SQL NULL (length -1)."""
    if len(body) < INT16.size:
        raise ProtocolError("DataRow is shorter than its column count")
    (count,) = INT16.unpack_from(body, 0)
    if count < 0:
        raise ProtocolError(f"DataRow has a negative column count {count}")
    offset = INT16.size
    values: list[bytes | None] = []
    for i in range(count):
        if offset + INT32.size > len(body):
            raise ProtocolError(f"DataRow column {i} length is truncated")
        (length,) = INT32.unpack_from(body, offset)
        offset += INT32.size
        if length == -1:
            values.append(None)
            continue
        if length < 0 or offset + length > len(body):
            raise ProtocolError(f"DataRow column {i} has invalid length {length}")
        values.append(body[offset:offset + length])
        offset += length
    if offset != len(body):
        raise ProtocolError(f"DataRow has {len(body) - offset} bytes after its {count} columns")
    return values


def parse_copy_response(body: bytes) -> tuple[int, list[int]]:
    """CopyIn/CopyOut/CopyBothResponse: overall format and per-column format codes."""
    if len(body) < COPY_RESPONSE_HEADER.size:
        raise ProtocolError("copy response is shorter than its header")
    overall, count = COPY_RESPONSE_HEADER.unpack_from(body, 0)
    if count < 0 or len(body) != COPY_RESPONSE_HEADER.size + count * INT16.size:
        raise ProtocolError(f"copy response has {len(body)} bytes for {count} columns")
    formats = [INT16.unpack_from(body, COPY_RESPONSE_HEADER.size + i * INT16.size)[0]
               for i in range(count)]
    return overall, formats


# --------------------------------------------------------------------------- backend role
#
# What a server (the gateway) sends beyond the handshake: copy responses, result rows,
# and the extended-query acknowledgements.

TEXT_OID = 25  # pg_type oid of text


def copy_out_response(columns: int = 0, overall_format: int = 0) -> bytes:
    """CopyOutResponse ('H'): overall format, column count, then each column's format."""
    return message(BackendMessage.COPY_OUT_RESPONSE.value,
                   COPY_RESPONSE_HEADER.pack(overall_format, columns)
                   + INT16.pack(overall_format) * columns)


def copy_both_response(columns: int = 0, overall_format: int = 0) -> bytes:
    """CopyBothResponse ('W'): same layout as CopyOutResponse."""
    return message(BackendMessage.COPY_BOTH_RESPONSE.value,
                   COPY_RESPONSE_HEADER.pack(overall_format, columns)
                   + INT16.pack(overall_format) * columns)


def row_description(fields: list[FieldDescription]) -> bytes:
    """RowDescription ('T'): the field count, then each field's name and description."""
    body = INT16.pack(len(fields)) + b"".join(
        f.name.encode() + b"\x00" + FIELD_DESCRIPTION.pack(
            f.table_oid, f.column_number, f.type_oid, f.type_size, f.type_modifier,
            f.format_code)
        for f in fields)
    return message(BackendMessage.ROW_DESCRIPTION.value, body)


def text_field(name: str) -> FieldDescription:
    """A text column not taken from a table (type oid 25, typlen -1, text format)."""
    return FieldDescription(name, 0, 0, TEXT_OID, -1, -1, 0)


def data_row(values: list[bytes | None]) -> bytes:
    """DataRow ('D'): the column count, then each value with its length (-1: NULL)."""
    body = INT16.pack(len(values)) + b"".join(
        INT32.pack(-1) if v is None else INT32.pack(len(v)) + v for v in values)
    return message(BackendMessage.DATA_ROW.value, body)


def parse_complete() -> bytes:
    return message(BackendMessage.PARSE_COMPLETE.value)


def bind_complete() -> bytes:
    return message(BackendMessage.BIND_COMPLETE.value)


def close_complete() -> bytes:
    return message(BackendMessage.CLOSE_COMPLETE.value)


def no_data() -> bytes:
    return message(BackendMessage.NO_DATA.value)


def parameter_description(type_oids: list[int] | None = None) -> bytes:
    """ParameterDescription ('t'): the parameter count and each parameter's type oid."""
    oids = type_oids or []
    return message(BackendMessage.PARAMETER_DESCRIPTION.value,
                   INT16.pack(len(oids)) + b"".join(UINT32.pack(o) for o in oids))


def empty_query_response() -> bytes:
    return message(BackendMessage.EMPTY_QUERY_RESPONSE.value)
