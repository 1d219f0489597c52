"""The client side of PostgreSQL 15 physical streaming replication.

Mirrors the "Streaming Replication Protocol" section of the Frontend/Backend Protocol
chapter (doc/src/sgml/protocol.sgml) as src/backend/replication/walsender.c and
src/backend/backup/basebackup_copy.c implement it, and libpq's client side
(src/interfaces/libpq/fe-auth.c, fe-auth-scram.c) for authentication.

Two layers:

- Sans-IO codecs for what travels inside CopyData: ``XLogData`` ('w') and
  ``PrimaryKeepalive`` ('k') from the primary, ``StandbyStatusUpdate`` ('r') and
  ``HotStandbyFeedback`` ('h') from the standby, and BASE_BACKUP's 'n'/'d'/'p'/'m'
  messages; ``ScramSha256Client`` (RFC 5802 / RFC 7677 as PostgreSQL speaks it: empty
  user name, no channel binding, SASLprep as src/common/saslprep.c does it).  Malformed
  input is a ProtocolError naming what was wrong.
- ``ReplicationConnection``: an asyncio client in the frontend role over
  ``pagestore.pg.wire``.  It opens a walsender connection (``replication=true``),
  authenticates (trust, cleartext, MD5, SCRAM-SHA-256), runs replication commands with
  the simple query protocol, streams WAL in CopyBoth mode and takes base backups in
  CopyOut mode.

Rules:
- The connection is an explicit state machine (``ConnState``): a command may be sent only
  when IDLE; START_REPLICATION moves to COPY_BOTH, BASE_BACKUP to COPY_OUT, and both come
  back to IDLE at ReadyForQuery.  An ErrorResponse is read through to ReadyForQuery and
  raised as ``ReplicationServerError`` carrying the SQLSTATE; a broken transport or a
  malformed message makes the connection BROKEN, after which only ``close()`` is legal.
- ParameterStatus and NoticeResponse may arrive at any time and are absorbed where they
  arrive (parameters kept in ``parameters``, notices logged).
- Messages are capped at ``MAX_MESSAGE_SIZE`` by the codec before anything is buffered.
  The event loop never blocks: socket I/O is asyncio streams, and the PBKDF2 of SCRAM
  runs in a thread.
- LSNs are ``Lsn``; timestamps on the wire are microseconds since 2000-01-01 UTC.
- Only the default tablespace is supported in base backups; a backup of a cluster with
  other tablespaces fails with ``UnsupportedTablespaceError`` and closes the connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import enum
import getpass
import hashlib
import hmac
import logging
import os
import re
import secrets
import stringprep
import struct
import time
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import grpc
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pagestore.errors import BadRequest, PagestoreError, ProtocolError
from pagestore.lsn import Lsn
from pagestore.pg import wire
from pagestore.pg.tar import DEFAULT_WHOLE_FILE_LIMIT, TarChunk, TarEnd, TarMember, TarReader
from pagestore.pg.wire import AuthRequest, BackendMessage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)

Buffer = wire.Buffer

# --------------------------------------------------------------------------- CopyData codecs

XLOG_DATA_HEADER = struct.Struct("!cQQq")  # 'w', dataStart, walEnd, sendTime; WAL bytes follow
PRIMARY_KEEPALIVE = struct.Struct("!cQqB")  # 'k', walEnd, sendTime, replyRequested
STANDBY_STATUS_UPDATE = struct.Struct("!cQQQqB")  # 'r', write, flush, apply, clientTime, replyRequested
HOT_STANDBY_FEEDBACK = struct.Struct("!cqIIII")  # 'h', clientTime, xmin, xmin epoch, catalog_xmin, catalog_xmin epoch
BACKUP_PROGRESS = struct.Struct("!cq")  # 'p', bytes done in the current tablespace

XLOG_DATA = b"w"
KEEPALIVE = b"k"
STATUS_UPDATE = b"r"
STANDBY_FEEDBACK = b"h"
BACKUP_NEW_ARCHIVE = b"n"
BACKUP_DATA = b"d"
BACKUP_PROGRESS_REPORT = b"p"
BACKUP_MANIFEST = b"m"

#: Unix time of the PostgreSQL epoch, 2000-01-01 00:00:00 UTC, in microseconds.
PG_EPOCH_UNIX_US = 946_684_800 * 1_000_000
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
READ_SIZE = 256 * 1024
DEFAULT_PORT = 5432
DRAIN_AFTER_ERROR_TIMEOUT = 10.0


def pg_now() -> int:
    """The current time as PostgreSQL's TimestampTz: µs since 2000-01-01 UTC."""
    return time.time_ns() // 1000 - PG_EPOCH_UNIX_US


def pg_timestamp_to_unix(ts: int) -> float:
    return (ts + PG_EPOCH_UNIX_US) / 1_000_000


#: The PostgreSQL epoch as an aware datetime.
PG_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def pg_timestamp_to_datetime(ts: int) -> datetime.datetime:
    """A TimestampTz as an aware UTC datetime, exact to the microsecond (OverflowError
    outside datetime's years 1..9999, e.g. for -infinity/infinity)."""
    return PG_EPOCH + datetime.timedelta(microseconds=ts)


def datetime_to_pg_timestamp(when: datetime.datetime) -> int:
    """An aware datetime as a TimestampTz (µs since 2000-01-01 UTC); a naive datetime is
    a ValueError (whose local time would it be?)."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{when.isoformat()} has no time zone")
    return (when - PG_EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class XLogData:
    """'w': WAL bytes starting at ``data_start``; ``wal_end`` is the server's end of WAL."""

    data_start: Lsn
    wal_end: Lsn
    send_time: int
    data: memoryview | bytes

    @property
    def data_end(self) -> Lsn:
        """The LSN just past the last byte of ``data``."""
        return Lsn(self.data_start + len(self.data))

    def encode(self) -> bytes:
        return XLOG_DATA_HEADER.pack(XLOG_DATA, self.data_start, self.wal_end,
                                     self.send_time) + bytes(self.data)


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """'k': the server's end of WAL; ``reply_requested`` asks for a status update now."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool

    def encode(self) -> bytes:
        return PRIMARY_KEEPALIVE.pack(KEEPALIVE, self.wal_end, self.send_time,
                                      int(self.reply_requested))


@dataclass(frozen=True, slots=True)
class StandbyStatusUpdate:
    """'r': how far the standby has written, flushed and applied WAL."""

    write: Lsn
    flush: Lsn
    apply: Lsn
    client_time: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        return STANDBY_STATUS_UPDATE.pack(STATUS_UPDATE, self.write, self.flush, self.apply,
                                          self.client_time, int(self.reply_requested))


@dataclass(frozen=True, slots=True)
class HotStandbyFeedback:
    """'h': the standby's xmin and catalog_xmin with epochs; all zero turns feedback off."""

    client_time: int
    xmin: int
    xmin_epoch: int
    catalog_xmin: int
    catalog_xmin_epoch: int

    def encode(self) -> bytes:
        return HOT_STANDBY_FEEDBACK.pack(STANDBY_FEEDBACK, self.client_time, self.xmin,
                                         self.xmin_epoch, self.catalog_xmin,
                                         self.catalog_xmin_epoch)


PrimaryMessage = XLogData | PrimaryKeepalive
StandbyMessage = StandbyStatusUpdate | HotStandbyFeedback


def _kind(payload: Buffer, what: str) -> bytes:
    if len(payload) < 1:
        raise ProtocolError(f"empty CopyData message in {what}")
    return bytes(payload[:1])


def parse_primary_message(payload: Buffer) -> PrimaryMessage:
    """A CopyData payload the primary sends while streaming: 'w' or 'k'."""
    kind = _kind(payload, "the replication stream")
    view = memoryview(payload)
    if kind == XLOG_DATA:
        if len(view) < XLOG_DATA_HEADER.size:
            raise ProtocolError(
                f"XLogData message is {len(view)} bytes, shorter than its "
                f"{XLOG_DATA_HEADER.size}-byte header")
        _, start, end, send_time = XLOG_DATA_HEADER.unpack_from(view, 0)
        return XLogData(Lsn(start), Lsn(end), send_time, view[XLOG_DATA_HEADER.size:])
    if kind == KEEPALIVE:
        if len(view) != PRIMARY_KEEPALIVE.size:
            raise ProtocolError(
                f"primary keepalive message is {len(view)} bytes, expected "
                f"{PRIMARY_KEEPALIVE.size}")
        _, end, send_time, reply = PRIMARY_KEEPALIVE.unpack_from(view, 0)
        if reply not in (0, 1):
            raise ProtocolError(f"primary keepalive has replyRequested {reply}, not 0 or 1")
        return PrimaryKeepalive(Lsn(end), send_time, bool(reply))
    raise ProtocolError(f"unknown replication message type {kind!r} from the primary "
                        "(expected 'w' XLogData or 'k' keepalive)")


def parse_standby_message(payload: Buffer) -> StandbyMessage:
    """A CopyData payload a standby sends: 'r' or 'h'."""
    kind = _kind(payload, "the standby's replies")
    if kind == STATUS_UPDATE:
        if len(payload) != STANDBY_STATUS_UPDATE.size:
            raise ProtocolError(
                f"standby status update is {len(payload)} bytes, expected "
                f"{STANDBY_STATUS_UPDATE.size}")
        _, write, flush, apply, ts, reply = STANDBY_STATUS_UPDATE.unpack_from(payload, 0)
        if reply not in (0, 1):
            raise ProtocolError(f"standby status update has replyRequested {reply}")
        return StandbyStatusUpdate(Lsn(write), Lsn(flush), Lsn(apply), ts, bool(reply))
    if kind == STANDBY_FEEDBACK:
        if len(payload) != HOT_STANDBY_FEEDBACK.size:
            raise ProtocolError(
                f"hot standby feedback is {len(payload)} bytes, expected "
                f"{HOT_STANDBY_FEEDBACK.size}")
        _, ts, xmin, xmin_epoch, cxmin, cxmin_epoch = HOT_STANDBY_FEEDBACK.unpack_from(payload, 0)
        return HotStandbyFeedback(ts, xmin, xmin_epoch, cxmin, cxmin_epoch)
    raise ProtocolError(f"unknown standby message type {kind!r} (expected 'r' or 'h')")


def standby_status_update(write: Lsn, flush: Lsn, apply: Lsn, *,
                          client_time: int | None = None,
                          reply_requested: bool = False) -> bytes:
    """The 'r' CopyData payload."""
    return StandbyStatusUpdate(write, flush, apply,
                               pg_now() if client_time is None else client_time,
                               reply_requested).encode()


def hot_standby_feedback(xmin: int, xmin_epoch: int, catalog_xmin: int = 0,
                         catalog_xmin_epoch: int = 0, *,
                         client_time: int | None = None) -> bytes:
    """The 'h' CopyData payload."""
    return HotStandbyFeedback(pg_now() if client_time is None else client_time, xmin,
                              xmin_epoch, catalog_xmin, catalog_xmin_epoch).encode()


# --- BASE_BACKUP's CopyOut payloads (basebackup_copy.c)

@dataclass(frozen=True, slots=True)
class BackupArchiveStart:
    """'n': a new archive; ``location`` is "" for the main data directory."""

    name: str
    location: str


@dataclass(frozen=True, slots=True)
class BackupData:
    """'d': archive (or, after 'm', manifest) bytes."""

    data: memoryview | bytes


@dataclass(frozen=True, slots=True)
class BackupProgress:
    """'p': bytes of the current tablespace sent so far."""

    bytes_done: int


@dataclass(frozen=True, slots=True)
class BackupManifestStart:
    """'m': the backup manifest follows as 'd' messages."""


BackupCopyMessage = BackupArchiveStart | BackupData | BackupProgress | BackupManifestStart


def parse_backup_message(payload: Buffer) -> BackupCopyMessage:
    """A CopyData payload of BASE_BACKUP's CopyOut stream: 'n', 'd', 'p' or 'm'."""
    kind = _kind(payload, "a base backup")
    if kind == BACKUP_DATA:
        return BackupData(memoryview(payload)[1:])
    if kind == BACKUP_NEW_ARCHIVE:
        body = bytes(payload[1:])
        name, offset = wire.cstring(body)
        location, offset = wire.cstring(body, offset)
        if offset != len(body):
            raise ProtocolError(f"base backup new-archive message for {name!r} has "
                                f"{len(body) - offset} trailing bytes")
        return BackupArchiveStart(name, location)
    if kind == BACKUP_PROGRESS_REPORT:
        if len(payload) != BACKUP_PROGRESS.size:
            raise ProtocolError(f"base backup progress message is {len(payload)} bytes, "
                                f"expected {BACKUP_PROGRESS.size}")
        return BackupProgress(BACKUP_PROGRESS.unpack_from(payload, 0)[1])
    if kind == BACKUP_MANIFEST:
        if len(payload) != 1:
            raise ProtocolError(f"base backup manifest message has {len(payload) - 1} "
                                "unexpected bytes")
        return BackupManifestStart()
    raise ProtocolError(f"unknown base backup message type {kind!r} "
                        "(expected 'n', 'd', 'p' or 'm')")


def backup_archive_start(name: str, location: str = "") -> bytes:
    return BACKUP_NEW_ARCHIVE + name.encode() + b"\x00" + location.encode() + b"\x00"


def backup_progress(bytes_done: int) -> bytes:
    return BACKUP_PROGRESS.pack(BACKUP_PROGRESS_REPORT, bytes_done)


# --------------------------------------------------------------------------- errors

class ReplicationError(PagestoreError):
    """Replication with the primary failed: connecting, the protocol, or the server."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNAVAILABLE
    sqlstate: ClassVar[str] = "08006"  # connection_failure


class ReplicationConnectError(ReplicationError):
    """The primary cannot be reached, or it closed the connection."""


class ReplicationServerError(ReplicationError):
    """An ErrorResponse from the primary; ``pgcode`` is its SQLSTATE."""

    def __init__(self, message: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields: dict[str, str] = dict(fields or {})

    @property
    def pgcode(self) -> str:
        return self.fields.get("C", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def primary_message(self) -> str:
        return self.fields.get("M", "")

    @property
    def detail(self) -> str | None:
        return self.fields.get("D")

    @property
    def hint(self) -> str | None:
        return self.fields.get("H")

    @classmethod
    def from_fields(cls, fields: Mapping[str, str],
                    context: str = "") -> ReplicationServerError:
        code = fields.get("C", "")
        sub: type[ReplicationServerError] = cls
        if code.startswith("28"):
            sub = ReplicationAuthError
        elif code == "42710":
            sub = ReplicationSlotExists
        text = (f"{fields.get('V') or fields.get('S', 'ERROR')}: {fields.get('M', '')} "
                f"(SQLSTATE {code or '?'})")
        if context:
            text = f"{context}: {text}"
        if "D" in fields:
            text += f"; DETAIL: {fields['D']}"
        if "H" in fields:
            text += f"; HINT: {fields['H']}"
        return sub(text, fields)


class ReplicationAuthError(ReplicationServerError):
    """Authentication failed (SQLSTATE class 28), on the server's side or ours."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    sqlstate = "28000"  # invalid_authorization_specification


class ReplicationSlotExists(ReplicationServerError):
    """CREATE_REPLICATION_SLOT for a name that is taken (SQLSTATE 42710); reuse it."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    sqlstate = "42710"  # duplicate_object


class UnsupportedTablespaceError(ReplicationError):
    """A base backup of a cluster with tablespaces other than the default one."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    sqlstate = "0A000"  # feature_not_supported


# --------------------------------------------------------------------------- conninfo

@dataclass(frozen=True, slots=True)
class ConnParams:
    """Where and as whom to connect.  ``password`` is kept out of repr."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    user: str = ""
    password: str | None = dataclasses.field(default=None, repr=False)
    application_name: str = "pagestore"
    dbname: str | None = None
    connect_timeout: float | None = 30.0

    def replace(self, **changes: object) -> ConnParams:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_CONNINFO_KEYS = {"host", "hostaddr", "port", "user", "password", "dbname",
                  "application_name", "fallback_application_name", "connect_timeout",
                  "sslmode", "replication"}
_ENV_KEYS = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "application_name": "PGAPPNAME", "connect_timeout": "PGCONNECT_TIMEOUT",
             "sslmode": "PGSSLMODE", "dbname": "PGDATABASE"}


def conninfo_dict(conninfo: str) -> dict[str, str]:
    """The options a libpq connection string (``key=value ...`` or a URI) gives, parsed by
    libpq itself (psycopg.conninfo); a malformed string is a BadRequest with libpq's
    message."""
    try:
        return {k: str(v) for k, v in conninfo_to_dict(conninfo.strip()).items()}
    except psycopg.Error as e:
        raise BadRequest(str(e).strip()) from None


def mask_conninfo(conninfo: str) -> str:
    """A connection string fit to show or log: the password replaced by ``********``.
    A string libpq cannot parse is shown as a placeholder (it might hold a password)."""
    try:
        given = conninfo_dict(conninfo)
    except BadRequest:
        return "<unparseable connection string>"
    if "password" not in given:
        return conninfo
    return make_conninfo(**{**given, "password": "********"})


def parse_conninfo(conninfo: str = "", *, env: Mapping[str, str] | None = None) -> ConnParams:
    """A libpq connection string: ``key=value ...`` or a ``postgresql://`` URI.

    Keys missing from the string come from the PG* environment variables (``env``,
    os.environ by default), then libpq's defaults (localhost, 5432, the OS user).  SSL
    is not supported: sslmode require/verify-* is a BadRequest.
    """
    given = conninfo_dict(conninfo)
    unknown = sorted(set(given) - _CONNINFO_KEYS)
    if unknown:
        raise BadRequest(f"invalid connection option {unknown[0]!r}")
    environ = os.environ if env is None else env
    values: dict[str, str] = {}
    for key, var in _ENV_KEYS.items():
        if var in environ and environ[var] != "":
            values[key] = environ[var]
    values.update({k: v for k, v in given.items() if v != "" or k == "password"})
    if "hostaddr" in values:
        values["host"] = values.pop("hostaddr")
    if values.get("sslmode", "disable") not in ("disable", "allow", "prefer"):
        raise BadRequest(f"sslmode={values['sslmode']} is not supported: the replication "
                         "client speaks plain TCP only")
    host = values.get("host", "localhost")
    if "," in host or host.startswith("/"):
        raise BadRequest(f"host {host!r}: only a single TCP host is supported")
    try:
        port = int(values.get("port", DEFAULT_PORT))
        timeout = float(values["connect_timeout"]) if "connect_timeout" in values else 30.0
    except ValueError as e:
        raise BadRequest(f"invalid port or connect_timeout in connection string: {e}") from None
    if not 0 < port < 65536:
        raise BadRequest(f"invalid port {port} in connection string")
    return ConnParams(
        host=host, port=port, user=values.get("user") or getpass.getuser(),
        password=values.get("password"),
        application_name=(values.get("application_name")
                          or values.get("fallback_application_name") or "pagestore"),
        dbname=values.get("dbname"), connect_timeout=timeout if timeout > 0 else None)


# --------------------------------------------------------------------------- authentication

def md5_password(user: str, password: str, salt: bytes) -> str:
    """AUTH_REQ_MD5's answer: 'md5' + md5(md5(password + user) + salt), in hex."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def saslprep(password: str) -> str:
    """pg_saslprep (RFC 4013) as PostgreSQL applies it; the password itself if prohibited.

    Like src/common/saslprep.c, pure ASCII passes through untouched and the prohibited
    and bidirectional checks look at the mapped input before normalization.
    """
    if password.isascii():
        return password
    mapped = [" " if stringprep.in_table_c12(c) else c for c in password
              if not stringprep.in_table_b1(c)]
    if not mapped:
        return password
    for c in mapped:
        if (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c)
                or stringprep.in_table_c3(c) or stringprep.in_table_c4(c)
                or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
                or stringprep.in_table_c7(c) or stringprep.in_table_c8(c)
                or stringprep.in_table_c9(c) or stringprep.in_table_a1(c)):
            return password
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped):
            return password
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return password
    return unicodedata.normalize("NFKC", "".join(mapped))


def _scram_attributes(message: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ProtocolError(f"malformed SCRAM {what} attribute {part!r}")
        out.setdefault(part[0], part[2:])
    return out


class ScramSha256Client:
    """SCRAM-SHA-256 (RFC 5802, RFC 7677), client side, no channel binding ("n,,").

    PostgreSQL ignores the SCRAM user name (it uses the startup packet's) and libpq
    sends it empty; pass ``username`` only to reproduce RFC test vectors.
    """

    MECHANISM: ClassVar[str] = "SCRAM-SHA-256"
    RAW_NONCE_LEN: ClassVar[int] = 18  # SCRAM_RAW_NONCE_LEN
    GS2_HEADER: ClassVar[str] = "n,,"

    def __init__(self, password: str, *, username: str = "",
                 client_nonce: str | None = None) -> None:
        self._password = saslprep(password)
        self.username = username
        self.client_nonce = client_nonce or base64.b64encode(
            secrets.token_bytes(self.RAW_NONCE_LEN)).decode()
        user = username.replace("=", "=3D").replace(",", "=2C")
        self.client_first_bare = f"n={user},r={self.client_nonce}"
        self._server_signature: bytes | None = None
        self.verified = False

    def client_first_message(self) -> bytes:
        return (self.GS2_HEADER + self.client_first_bare).encode()

    def client_final_message(self, server_first: bytes) -> bytes:
        """Answer the server-first message (runs PBKDF2: call it off the event loop)."""
        try:
            text = server_first.decode()
        except UnicodeDecodeError:
            raise ProtocolError("SCRAM server-first message is not valid UTF-8") from None
        attrs = _scram_attributes(text, "server-first-message")
        if "m" in attrs:
            raise ProtocolError("SCRAM server-first message requires an unsupported extension")
        try:
            nonce, salt_b64, iterations_text = attrs["r"], attrs["s"], attrs["i"]
        except KeyError as e:
            raise ProtocolError(f"SCRAM server-first message lacks attribute {e.args[0]!r}") from None
        if not nonce.startswith(self.client_nonce) or len(nonce) <= len(self.client_nonce):
            raise ProtocolError("SCRAM server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            iterations = int(iterations_text)
        except ValueError:
            raise ProtocolError("SCRAM server-first message has a malformed salt or "
                                "iteration count") from None
        if iterations < 1 or not salt:
            raise ProtocolError(f"SCRAM server-first message has iteration count {iterations} "
                                f"and a {len(salt)}-byte salt")
        salted = hashlib.pbkdf2_hmac("sha256", self._password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        channel = base64.b64encode(self.GS2_HEADER.encode()).decode()
        without_proof = f"c={channel},r={nonce}"
        auth_message = f"{self.client_first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server's signature; a mismatch or 'e=' is an authentication error."""
        if self._server_signature is None:
            raise ProtocolError("SCRAM server-final message before server-first")
        try:
            attrs = _scram_attributes(server_final.decode(), "server-final-message")
        except UnicodeDecodeError:
            raise ProtocolError("SCRAM server-final message is not valid UTF-8") from None
        if "e" in attrs:
            raise ReplicationAuthError(f"SCRAM authentication failed: server says {attrs['e']}",
                                       {"C": "28000"})
        try:
            verifier = base64.b64decode(attrs["v"], validate=True)
        except (KeyError, ValueError):
            raise ProtocolError("SCRAM server-final message lacks a valid verifier") from None
        if not hmac.compare_digest(verifier, self._server_signature):
            raise ReplicationAuthError("SCRAM server signature is wrong: the server does not "
                                       "know the password", {"C": "28000"})
        self.verified = True


# --------------------------------------------------------------------------- connection

class ConnState(enum.Enum):
    STARTUP = "startup"        # connected, authenticating, waiting for ReadyForQuery
    IDLE = "idle"              # ReadyForQuery seen: a command may be sent
    BUSY = "busy"              # a simple query is running
    COPY_BOTH = "copy both"    # START_REPLICATION is streaming
    COPY_OUT = "copy out"      # BASE_BACKUP is sending archives
    BROKEN = "broken"          # transport or protocol failure: only close() is legal
    CLOSED = "closed"


Row = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class ResultSet:
    columns: tuple[str, ...]
    rows: list[Row]
    command_tag: str


@dataclass(frozen=True, slots=True)
class SystemInfo:
    """IDENTIFY_SYSTEM's row."""

    systemid: int
    timeline: int
    xlogpos: Lsn
    dbname: str | None


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """READ_REPLICATION_SLOT's row for an existing slot."""

    name: str
    slot_type: str
    restart_lsn: Lsn | None
    restart_tli: int | None


@dataclass(frozen=True, slots=True)
class TimelineSwitch:
    """The result set after the server ends a historic timeline's stream."""

    next_tli: int
    next_tli_startpos: Lsn


@dataclass(frozen=True, slots=True)
class TablespaceInfo:
    oid: int | None
    location: str | None
    size_kb: int | None


@dataclass(frozen=True, slots=True)
class BackupStarted:
    """BASE_BACKUP's first result sets: start position, timeline, tablespaces."""

    start_lsn: Lsn
    timeline: int
    tablespaces: tuple[TablespaceInfo, ...]


@dataclass(frozen=True, slots=True)
class BackupManifestData:
    data: bytes


@dataclass(frozen=True, slots=True)
class BackupFinished:
    """BASE_BACKUP's last result set: the end position and its timeline."""

    end_lsn: Lsn
    timeline: int


BackupEvent = (BackupStarted | BackupArchiveStart | TarMember | TarChunk | TarEnd
               | BackupData | BackupProgress | BackupManifestData | BackupFinished)

_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")


def _slot_name(name: str) -> str:
    if not _SLOT_NAME.fullmatch(name):
        raise BadRequest(f"invalid replication slot name {name!r}: use 1-63 lowercase "
                         "letters, digits and underscores")
    return name


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _lsn(value: str | None, what: str) -> Lsn:
    if value is None:
        raise ProtocolError(f"{what} is NULL")
    try:
        return Lsn.parse(value)
    except ValueError as e:
        raise ProtocolError(f"{what}: {e}") from None


def _int(value: str | None, what: str) -> int:
    try:
        return int(value if value is not None else "NULL")
    except ValueError:
        raise ProtocolError(f"{what} is {value!r}, not an integer") from None


class ReplicationConnection:
    """One walsender connection to a PostgreSQL 15 primary.  See the module docstring."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 params: ConnParams) -> None:
        self.params = params
        self._reader = reader
        self._writer = writer
        self._codec = wire.MessageReader(max_message_size=MAX_MESSAGE_SIZE)
        self._write_lock = asyncio.Lock()
        self.state = ConnState.STARTUP
        self.parameters: dict[str, str] = {}
        self.backend_pid: int | None = None
        self.backend_key: int | None = None
        self.last_status = StandbyStatusUpdate(Lsn(0), Lsn(0), Lsn(0), 0)

    # ----------------------------------------------------------------- connect / close
    @classmethod
    async def connect(cls, conninfo: str | ConnParams = "", *, host: str | None = None,
                      port: int | None = None, user: str | None = None,
                      password: str | None = None, application_name: str | None = None,
                      connect_timeout: float | None = None) -> ReplicationConnection:
        """Connect and authenticate with ``replication=true`` (a physical walsender)."""
        params = parse_conninfo(conninfo) if isinstance(conninfo, str) else conninfo
        overrides = {k: v for k, v in (("host", host), ("port", port), ("user", user),
                                       ("password", password),
                                       ("application_name", application_name),
                                       ("connect_timeout", connect_timeout)) if v is not None}
        params = params.replace(**overrides)
        where = f"{params.host}:{params.port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(params.host, params.port), params.connect_timeout)
        except TimeoutError:
            raise ReplicationConnectError(
                f"could not connect to {where}: timed out after {params.connect_timeout}s"
            ) from None
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise ReplicationConnectError(f"could not connect to {where}: {reason}") from e
        conn = cls(reader, writer, params)
        try:
            await asyncio.wait_for(conn._startup(), params.connect_timeout)
        except TimeoutError:
            conn._abort()
            raise ReplicationConnectError(
                f"{where}: no answer to the startup packet within "
                f"{params.connect_timeout}s") from None
        except BaseException:
            conn._abort()
            raise
        log.info("replication connection established server=%s user=%s server_version=%s",
                 where, params.user, conn.parameters.get("server_version", "?"))
        return conn

    async def __aenter__(self) -> ReplicationConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Send Terminate (when the connection is usable) and close the socket."""
        if self.state is ConnState.CLOSED:
            return
        if self.state is not ConnState.BROKEN:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(wire.terminate())
        self.state = ConnState.CLOSED
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    def _abort(self) -> None:
        self.state = ConnState.BROKEN
        self._writer.close()

    @property
    def where(self) -> str:
        return f"{self.params.host}:{self.params.port}"

    # ----------------------------------------------------------------- low-level I/O
    async def _send(self, data: bytes) -> None:
        async with self._write_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (OSError, RuntimeError) as e:
                self.state = ConnState.BROKEN
                raise ReplicationConnectError(
                    f"lost the connection to {self.where} while sending: {e}") from e

    async def _recv(self) -> wire.Message:
        """The next message, ParameterStatus and NoticeResponse absorbed."""
        while True:
            try:
                msg = self._codec.next_message()
            except ProtocolError:
                self.state = ConnState.BROKEN
                raise
            if msg is None:
                try:
                    data = await self._reader.read(READ_SIZE)
                except OSError as e:
                    self.state = ConnState.BROKEN
                    raise ReplicationConnectError(
                        f"lost the connection to {self.where}: {e}") from e
                if not data:
                    self.state = ConnState.BROKEN
                    raise ReplicationConnectError(
                        f"server {self.where} closed the connection unexpectedly")
                self._codec.feed(data)
                continue
            if msg.type == BackendMessage.PARAMETER_STATUS:
                name, value = wire.parse_parameter_status(msg.body)
                self.parameters[name] = value
                continue
            if msg.type == BackendMessage.NOTICE_RESPONSE:
                fields = wire.parse_error_fields(msg.body)
                log.info("server notice server=%s severity=%s message=%s", self.where,
                         fields.get("V") or fields.get("S"), fields.get("M"))
                continue
            return msg

    def _require(self, *states: ConnState, what: str) -> None:
        if self.state not in states:
            raise ReplicationError(
                f"cannot {what}: the connection to {self.where} is {self.state.value}, "
                f"not {' or '.join(s.value for s in states)}")

    def _unexpected(self, msg: wire.Message, during: str) -> ProtocolError:
        self.state = ConnState.BROKEN
        return ProtocolError(f"unexpected message type {msg.type!r} from {self.where} "
                             f"during {during}")

    async def _error_then_ready(self, body: bytes, context: str) -> ReplicationServerError:
        """Build the exception for an ErrorResponse and read on to ReadyForQuery."""
        error = ReplicationServerError.from_fields(wire.parse_error_fields(body), context)
        if error.severity in ("FATAL", "PANIC"):
            self._abort()
            return error
        try:
            async with asyncio.timeout(DRAIN_AFTER_ERROR_TIMEOUT):
                while True:
                    msg = await self._recv()
                    if msg.type == BackendMessage.READY_FOR_QUERY:
                        self.state = ConnState.IDLE
                        break
        except (ReplicationError, ProtocolError, TimeoutError):
            self._abort()
        return error

    # ----------------------------------------------------------------- startup
    async def _startup(self) -> None:
        params = self.params
        await self._send(wire.startup_message({
            "user": params.user, "replication": "true",
            "application_name": params.application_name, "client_encoding": "UTF8"}))
        scram: ScramSha256Client | None = None
        while True:
            msg = await self._recv()
            if msg.type == BackendMessage.ERROR_RESPONSE:
                self._abort()
                raise ReplicationServerError.from_fields(
                    wire.parse_error_fields(msg.body), f"connecting to {self.where}")
            if msg.type != BackendMessage.AUTHENTICATION:
                raise self._unexpected(msg, "authentication")
            code, data = wire.parse_authentication(msg.body)
            if code == AuthRequest.OK:
                if scram is not None and not scram.verified:
                    raise ReplicationAuthError(
                        "server accepted SCRAM authentication without proving it knows the "
                        "password", {"C": "28000"})
                break
            if code == AuthRequest.CLEARTEXT_PASSWORD:
                log.debug("authenticating with a cleartext password user=%s", params.user)
                await self._send(wire.password_message(self._password("password")))
            elif code == AuthRequest.MD5:
                if len(data) != 4:
                    raise ProtocolError(f"MD5 authentication request has a {len(data)}-byte "
                                        "salt, expected 4")
                log.debug("authenticating with MD5 user=%s", params.user)
                await self._send(wire.password_message(
                    md5_password(params.user, self._password("md5"), data)))
            elif code == AuthRequest.SASL:
                mechanisms = wire.parse_sasl_mechanisms(data)
                if ScramSha256Client.MECHANISM not in mechanisms:
                    raise ReplicationAuthError(
                        f"server offers SASL mechanisms {mechanisms}; only "
                        f"{ScramSha256Client.MECHANISM} is supported", {"C": "28000"})
                log.debug("authenticating with SCRAM-SHA-256 user=%s", params.user)
                scram = ScramSha256Client(self._password("SCRAM-SHA-256"))
                await self._send(wire.sasl_initial_response(scram.MECHANISM,
                                                            scram.client_first_message()))
            elif code == AuthRequest.SASL_CONTINUE:
                if scram is None:
                    raise ProtocolError("SASL continue message before SASL started")
                final = await asyncio.to_thread(scram.client_final_message, data)
                await self._send(wire.sasl_response(final))
            elif code == AuthRequest.SASL_FINAL:
                if scram is None:
                    raise ProtocolError("SASL final message before SASL started")
                scram.verify_server_final(data)
            else:
                try:
                    method = AuthRequest(code).name
                except ValueError:
                    method = str(code)
                raise ReplicationAuthError(
                    f"server {self.where} requests authentication method {method}, which "
                    "is not supported (use trust, password, md5 or scram-sha-256)",
                    {"C": "28000"})
        while True:
            msg = await self._recv()
            if msg.type == BackendMessage.BACKEND_KEY_DATA:
                self.backend_pid, self.backend_key = wire.parse_backend_key_data(msg.body)
            elif msg.type == BackendMessage.READY_FOR_QUERY:
                self.state = ConnState.IDLE
                return
            elif msg.type == BackendMessage.ERROR_RESPONSE:
                self._abort()
                raise ReplicationServerError.from_fields(
                    wire.parse_error_fields(msg.body), f"connecting to {self.where}")
            else:
                raise self._unexpected(msg, "startup")

    def _password(self, method: str) -> str:
        if self.params.password is None:
            raise ReplicationAuthError(
                f"server {self.where} requests {method} authentication for user "
                f"{self.params.user!r} but no password was given", {"C": "28000"})
        return self.params.password

    # ----------------------------------------------------------------- simple queries
    async def query_results(self, sql: str) -> list[ResultSet]:
        """Run one command with the simple query protocol; every result set it returns."""
        self._require(ConnState.IDLE, what=f"run {sql.split(' ', 1)[0]}")
        self.state = ConnState.BUSY
        await self._send(wire.query(sql))
        return await self._collect_results(sql)

    async def _collect_results(self, sql: str, *, until_ready: bool = True,
                               sets: int | None = None) -> list[ResultSet]:
        """Read result sets up to ReadyForQuery (or until ``sets`` CommandCompletes)."""
        results: list[ResultSet] = []
        columns: tuple[str, ...] = ()
        rows: list[Row] = []
        command = sql.split(" ", 1)[0]
        while True:
            msg = await self._recv()
            t = msg.type
            if t == BackendMessage.ROW_DESCRIPTION:
                columns = tuple(f.name for f in wire.parse_row_description(msg.body))
                rows = []
            elif t == BackendMessage.DATA_ROW:
                rows.append(self._decode_row(wire.parse_data_row(msg.body), command))
            elif t == BackendMessage.COMMAND_COMPLETE:
                tag, _ = wire.cstring(msg.body)
                results.append(ResultSet(columns, rows, tag))
                columns, rows = (), []
                if sets is not None and len(results) == sets:
                    return results
            elif t == BackendMessage.EMPTY_QUERY_RESPONSE:
                continue
            elif t == BackendMessage.ERROR_RESPONSE:
                raise await self._error_then_ready(msg.body, command)
            elif t == BackendMessage.READY_FOR_QUERY and until_ready:
                self.state = ConnState.IDLE
                return results
            else:
                raise self._unexpected(msg, command)

    def _decode_row(self, values: list[bytes | None], command: str) -> Row:
        try:
            return tuple(None if v is None else v.decode() for v in values)
        except UnicodeDecodeError:
            self.state = ConnState.BROKEN
            raise ProtocolError(f"{command} returned a value that is not UTF-8") from None

    async def query(self, sql: str) -> list[Row]:
        """The rows of the command's last result set (text values, None for NULL)."""
        results = await self.query_results(sql)
        for result in reversed(results):
            if result.columns:
                return result.rows
        return []

    async def _one_row(self, sql: str) -> Row:
        rows = await self.query(sql)
        if len(rows) != 1:
            raise ProtocolError(f"{sql.split(' ', 1)[0]} returned {len(rows)} rows, expected 1")
        return rows[0]

    async def identify_system(self) -> SystemInfo:
        row = await self._one_row("IDENTIFY_SYSTEM")
        if len(row) != 4:
            raise ProtocolError(f"IDENTIFY_SYSTEM returned {len(row)} columns, expected 4")
        return SystemInfo(_int(row[0], "IDENTIFY_SYSTEM systemid"),
                          _int(row[1], "IDENTIFY_SYSTEM timeline"),
                          _lsn(row[2], "IDENTIFY_SYSTEM xlogpos"), row[3])

    async def show(self, name: str) -> str:
        """``SHOW name``: a server setting's value as text."""
        if not _GUC_NAME.fullmatch(name):
            raise BadRequest(f"invalid setting name {name!r}")
        value = (await self._one_row(f"SHOW {name}"))[0]
        if value is None:
            raise ProtocolError(f"SHOW {name} returned NULL")
        return value

    async def create_physical_slot(self, name: str, *, reserve_wal: bool = True,
                                   temporary: bool = False) -> SlotInfo:
        """CREATE_REPLICATION_SLOT ... PHYSICAL; then its state from READ_REPLICATION_SLOT.

        A slot that exists already raises ReplicationSlotExists (SQLSTATE 42710): callers
        that want to reuse it catch that and call ``read_replication_slot``.
        """
        _slot_name(name)
        sql = (f"CREATE_REPLICATION_SLOT {name}{' TEMPORARY' if temporary else ''} PHYSICAL "
               f"(RESERVE_WAL {'true' if reserve_wal else 'false'})")
        await self.query_results(sql)
        log.info("created physical replication slot slot=%s server=%s reserve_wal=%s",
                 name, self.where, reserve_wal)
        slot = await self.read_replication_slot(name)
        if slot is None:
            raise ProtocolError(f"replication slot {name!r} is missing right after creation")
        return slot

    async def read_replication_slot(self, name: str) -> SlotInfo | None:
        """READ_REPLICATION_SLOT (PG15): the slot's type and restart point, None if absent."""
        row = await self._one_row(f"READ_REPLICATION_SLOT {_slot_name(name)}")
        if len(row) != 3:
            raise ProtocolError(f"READ_REPLICATION_SLOT returned {len(row)} columns, expected 3")
        slot_type, restart_lsn, restart_tli = row
        if slot_type is None:
            return None
        return SlotInfo(name, slot_type,
                        None if restart_lsn is None else _lsn(restart_lsn, "restart_lsn"),
                        None if restart_tli is None else _int(restart_tli, "restart_tli"))

    async def drop_slot(self, name: str, *, wait: bool = False,
                        missing_ok: bool = False) -> None:
        try:
            await self.query_results(
                f"DROP_REPLICATION_SLOT {_slot_name(name)}{' WAIT' if wait else ''}")
        except ReplicationServerError as e:
            if missing_ok and e.pgcode == "42704":
                return
            raise
        log.info("dropped replication slot slot=%s server=%s", name, self.where)

    # ----------------------------------------------------------------- streaming
    async def start_replication(self, start_lsn: Lsn, *, slot: str | None = None,
                                timeline: int | None = None,
                                auto_reply: bool = True) -> ReplicationStream:
        """START_REPLICATION [SLOT s] PHYSICAL X/Y [TIMELINE t]; the CopyBoth stream.

        walsender.c answers CopyBothResponse before it checks the start point, so errors
        such as "requested starting point ... is ahead of the WAL flush position" or a
        removed WAL segment come out of the stream's first ``__anext__``, not from here.

        With ``auto_reply`` a keepalive asking for a reply is answered at once with the
        positions last given to ``send_status`` (0/0 before the first one, which moves
        nothing on the primary); the keepalive is handed to the caller either way.
        """
        self._require(ConnState.IDLE, what="start replication")
        sql = "START_REPLICATION"
        if slot is not None:
            sql += f" SLOT {_slot_name(slot)}"
        sql += f" PHYSICAL {Lsn(start_lsn)}"
        if timeline is not None:
            sql += f" TIMELINE {int(timeline)}"
        self.state = ConnState.BUSY
        await self._send(wire.query(sql))
        while True:
            msg = await self._recv()
            if msg.type == BackendMessage.COPY_BOTH_RESPONSE:
                wire.parse_copy_response(msg.body)
                break
            if msg.type == BackendMessage.ERROR_RESPONSE:
                raise await self._error_then_ready(msg.body, "START_REPLICATION")
            raise self._unexpected(msg, "START_REPLICATION")
        self.state = ConnState.COPY_BOTH
        log.info("streaming started server=%s start_lsn=%s slot=%s timeline=%s",
                 self.where, Lsn(start_lsn), slot, timeline)
        return ReplicationStream(self, Lsn(start_lsn), auto_reply)

    async def send_status(self, write: Lsn, flush: Lsn, apply: Lsn, *,
                          reply_requested: bool = False) -> None:
        """Send a standby status update ('r'); flush moves a physical slot's restart_lsn."""
        self._require(ConnState.COPY_BOTH, what="send a standby status update")
        status = StandbyStatusUpdate(Lsn(write), Lsn(flush), Lsn(apply), pg_now(),
                                     reply_requested)
        self.last_status = status
        await self._send(wire.copy_data(status.encode()))

    async def send_hot_standby_feedback(self, xmin: int, xmin_epoch: int,
                                        catalog_xmin: int = 0,
                                        catalog_xmin_epoch: int = 0) -> None:
        self._require(ConnState.COPY_BOTH, what="send hot standby feedback")
        await self._send(wire.copy_data(
            hot_standby_feedback(xmin, xmin_epoch, catalog_xmin, catalog_xmin_epoch)))

    # ----------------------------------------------------------------- base backup
    async def base_backup(self, label: str = "pagestore", *, fast_checkpoint: bool = True,
                          max_rate_kb: int | None = None, manifest: bool = False,
                          raw: bool = False,
                          whole_file_limit: int = DEFAULT_WHOLE_FILE_LIMIT,
                          ) -> AsyncIterator[BackupEvent]:
        """BASE_BACKUP (PG15 option syntax), as a stream of events.

        Order: ``BackupStarted``; ``BackupArchiveStart`` for base.tar; the archive as
        ``TarMember``/``TarChunk``.../``TarEnd`` (or raw ``BackupData`` with ``raw``);
        ``BackupProgress`` now and then; ``BackupManifestData`` when ``manifest``; last
        ``BackupFinished``.  WAL is not included (it is streamed) and the server does not
        wait for WAL archiving.  Stopping early breaks the connection.
        """
        self._require(ConnState.IDLE, what="take a base backup")
        options = [f"LABEL {_sql_string(label)}",
                   f"CHECKPOINT '{'fast' if fast_checkpoint else 'spread'}'",
                   "WAL false", "WAIT false",
                   f"MANIFEST '{'yes' if manifest else 'no'}'"]
        if max_rate_kb:
            options.append(f"MAX_RATE {int(max_rate_kb)}")
        sql = f"BASE_BACKUP ({', '.join(options)})"
        self.state = ConnState.BUSY
        await self._send(wire.query(sql))
        done = False
        try:
            start_set, = await self._collect_results("BASE_BACKUP", until_ready=False, sets=1)
            start_lsn, start_tli = self._position(start_set, "start")
            tablespace_set, = await self._collect_results("BASE_BACKUP", until_ready=False,
                                                          sets=1)
            tablespaces = tuple(
                TablespaceInfo(None if r[0] is None else _int(r[0], "spcoid"), r[1],
                               None if r[2] is None else _int(r[2], "size"))
                for r in tablespace_set.rows)
            others = [t for t in tablespaces if t.location]
            if others:
                self._abort()
                raise UnsupportedTablespaceError(
                    f"base backup from {self.where}: unsupported tablespace(s) "
                    + ", ".join(f"{t.oid} at {t.location}" for t in others)
                    + "; only the default tablespace is supported")
            log.info("base backup started server=%s label=%s start_lsn=%s timeline=%d",
                     self.where, label, start_lsn, start_tli)
            yield BackupStarted(start_lsn, start_tli, tablespaces)
            msg = await self._recv()
            if msg.type == BackendMessage.ERROR_RESPONSE:
                raise await self._error_then_ready(msg.body, "BASE_BACKUP")
            if msg.type != BackendMessage.COPY_OUT_RESPONSE:
                raise self._unexpected(msg, "BASE_BACKUP")
            wire.parse_copy_response(msg.body)
            self.state = ConnState.COPY_OUT
            tar: TarReader | None = None
            in_manifest = False
            while True:
                msg = await self._recv()
                if msg.type == BackendMessage.COPY_DONE:
                    break
                if msg.type == BackendMessage.ERROR_RESPONSE:
                    raise await self._error_then_ready(msg.body, "BASE_BACKUP")
                if msg.type != BackendMessage.COPY_DATA:
                    raise self._unexpected(msg, "BASE_BACKUP's COPY")
                try:
                    item = parse_backup_message(msg.body)
                except ProtocolError:
                    self.state = ConnState.BROKEN
                    raise
                if isinstance(item, BackupArchiveStart):
                    if item.location:
                        self._abort()
                        raise UnsupportedTablespaceError(
                            f"base backup from {self.where}: archive {item.name} of "
                            f"unsupported tablespace {item.location}")
                    if tar is not None:
                        tar.finish()
                    tar = None if raw else TarReader(whole_file_limit=whole_file_limit)
                    yield item
                elif isinstance(item, BackupData):
                    if in_manifest:
                        yield BackupManifestData(bytes(item.data))
                    elif tar is None:
                        yield item
                    else:
                        tar.feed(item.data)
                        while (event := tar.next_event()) is not None:
                            yield event
                elif isinstance(item, BackupManifestStart):
                    if tar is not None:
                        tar.finish()
                        tar = None
                    in_manifest = True
                else:
                    yield item
            if tar is not None:
                tar.finish()
            self.state = ConnState.BUSY
            end_set, = await self._collect_results("BASE_BACKUP", until_ready=False, sets=1)
            end_lsn, end_tli = self._position(end_set, "end")
            await self._collect_results("BASE_BACKUP")
            done = True
            log.info("base backup finished server=%s label=%s start_lsn=%s end_lsn=%s",
                     self.where, label, start_lsn, end_lsn)
            yield BackupFinished(end_lsn, end_tli)
        finally:
            if not done and self.state not in (ConnState.IDLE, ConnState.CLOSED):
                self._abort()

    @staticmethod
    def _position(result: ResultSet, what: str) -> tuple[Lsn, int]:
        if len(result.rows) != 1 or len(result.rows[0]) != 2:
            raise ProtocolError(f"BASE_BACKUP {what} position has an unexpected shape: "
                                f"{result.rows!r}")
        recptr, tli = result.rows[0]
        return _lsn(recptr, f"BASE_BACKUP {what} position"), _int(tli, "BASE_BACKUP timeline")


class ReplicationStream:
    """START_REPLICATION's CopyBoth stream: async-iterate for XLogData and keepalives.

    Iteration ends when the server ends the stream (the end of a historic timeline:
    ``timeline_switch`` then holds the next timeline) or after ``stop()``.
    """

    def __init__(self, conn: ReplicationConnection, start_lsn: Lsn, auto_reply: bool) -> None:
        self.conn = conn
        self.start_lsn = start_lsn
        self.received_lsn = start_lsn
        self.auto_reply = auto_reply
        self.timeline_switch: TimelineSwitch | None = None
        self._finished = False
        self._client_done = False

    def __aiter__(self) -> ReplicationStream:
        return self

    async def __anext__(self) -> PrimaryMessage:
        if self._finished:
            raise StopAsyncIteration
        conn = self.conn
        while True:
            msg = await conn._recv()
            if msg.type == BackendMessage.COPY_DATA:
                if self._client_done:
                    continue  # in flight when we sent CopyDone
                try:
                    item = parse_primary_message(msg.body)
                except ProtocolError:
                    conn.state = ConnState.BROKEN
                    raise
                if isinstance(item, XLogData):
                    if item.data_start != self.received_lsn:
                        log.warning("XLogData does not continue the stream server=%s "
                                    "expected=%s got=%s", conn.where, self.received_lsn,
                                    item.data_start)
                    self.received_lsn = item.data_end
                elif item.reply_requested and self.auto_reply:
                    last = conn.last_status
                    await conn.send_status(last.write, last.flush, last.apply)
                return item
            if msg.type == BackendMessage.COPY_DONE:
                await self._finish_after_copy_done()
                raise StopAsyncIteration
            if msg.type == BackendMessage.ERROR_RESPONSE:
                self._finished = True
                raise await conn._error_then_ready(msg.body, "streaming replication")
            raise conn._unexpected(msg, "streaming replication")

    async def _finish_after_copy_done(self) -> None:
        conn = self.conn
        if not self._client_done:
            self._client_done = True
            await conn._send(wire.copy_done())
        conn.state = ConnState.BUSY
        results = await conn._collect_results("START_REPLICATION")
        for result in results:
            if result.columns and result.rows:
                row = result.rows[0]
                if len(row) == 2:
                    self.timeline_switch = TimelineSwitch(
                        _int(row[0], "next_tli"), _lsn(row[1], "next_tli_startpos"))
        self._finished = True
        log.info("streaming ended server=%s received_lsn=%s timeline_switch=%s",
                 conn.where, self.received_lsn, self.timeline_switch)

    async def send_status(self, write: Lsn, flush: Lsn, apply: Lsn, *,
                          reply_requested: bool = False) -> None:
        await self.conn.send_status(write, flush, apply, reply_requested=reply_requested)

    async def stop(self) -> None:
        """End streaming with CopyDone; the connection is IDLE again afterwards."""
        if self._finished:
            return
        self._client_done = True
        await self.conn._send(wire.copy_done())
        while True:
            try:
                await self.__anext__()
            except StopAsyncIteration:
                return


# --------------------------------------------------------------------------- slots

def timeline_slot_name(timeline_id: object) -> str:
    """The physical replication slot a timeline streams through."""
    return f"pagestore_{timeline_id}"


async def read_slot_at(conninfo: str, name: str, *, timeout: float = 10) -> SlotInfo | None:
    """The slot on the server ``conninfo`` names (None if it has no such slot)."""
    conn = await ReplicationConnection.connect(conninfo, connect_timeout=timeout)
    try:
        return await asyncio.wait_for(conn.read_replication_slot(name), timeout)
    finally:
        await conn.close()


async def drop_slot_at(conninfo: str, name: str, *, timeout: float = 30) -> bool:
    """Drop the slot on the server ``conninfo`` names, waiting (bounded) for a walsender
    still using it to let go; False if there was no such slot."""
    conn = await ReplicationConnection.connect(conninfo, connect_timeout=timeout)
    try:
        if await asyncio.wait_for(conn.read_replication_slot(name), timeout) is None:
            return False
        await asyncio.wait_for(conn.drop_slot(name, wait=True, missing_ok=True), timeout)
        return True
    finally:
        await conn.close()
