"""Point-in-time restore: a timeline's full backup at an LSN, unpacked into a new
PostgreSQL data directory, optionally started (``pagestore restore``, docs/operations.md).

The backup is pagestore/basebackup.py's full backup (pageread's GetFullBackup): vanilla
PostgreSQL 15 starts from it with nothing to replay.  A point in time becomes an LSN
through pageread's GetLsnByTimestamp (pagestore/timestamps.py); ``resolution`` turns its
answer into the LSN to restore or a clear error.

Rules:
- A time must carry its time zone (``Z`` or an offset such as ``+02:00``): a time without
  one is refused rather than guessed (the caller's zone or the server's?).  Digits past
  the microsecond are dropped (commit timestamps have microseconds).
- The data directory must be absent or empty.  It is created 0700 and, when we are root,
  it and everything in it go to the postgres OS user (PostgreSQL refuses a data directory
  it does not own or that others can read).  If unpacking fails, what it wrote is
  removed again.
- The archive is unpacked as it streams (tarfile's stream mode with its ``tar`` filter:
  members must stay inside the directory), never held whole in memory.
- The server listens on 127.0.0.1 only, without a Unix socket, like pagestore's other
  PostgreSQL servers (pagestore.pg.cluster): ``configure`` appends the address settings
  to the postgresql.conf the backup carries.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pagestore.errors import BadRequest, FailedPrecondition, LsnOutOfRange, PagestoreError
from pagestore.pg.cluster import (
    PgCluster,
    check_server_user_can_write,
    give_to_server_user,
)
from pagestore.timestamps import LsnKind

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from pagestore.lsn import Lsn

log = logging.getLogger(__name__)

#: The server's log, inside the data directory (logging_collector stays off).
LOG_FILE = "log/postgresql.log"


class RestoreError(PagestoreError):
    """The backup could not be unpacked (a broken or cut-off archive)."""


def parse_time(text: str, field: str = "") -> datetime.datetime:
    """An RFC 3339 / ISO 8601 time with a time zone, e.g. ``2026-03-04T05:06:07.5Z`` or
    ``2026-03-04 05:06:07+02`` (what PostgreSQL's ``SELECT now()`` prints), in UTC.
    BadRequest (its message prefixed with ``field``, the parameter's name) otherwise.
    The one parser of such times (the CLI's restore, the management API)."""
    prefix = f"{field}: " if field else ""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{prefix}invalid time {text!r}: expected RFC 3339 / ISO 8601 with a "
                         "time zone, e.g. 2026-03-04T05:06:07Z") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise BadRequest(f"{prefix}time {text!r} has no time zone: add Z for UTC or an "
                         "offset such as +02:00")
    try:
        return when.astimezone(datetime.UTC)
    except OverflowError:
        raise BadRequest(f"{prefix}time {text!r} is out of range") from None


class Resolution(NamedTuple):
    lsn: Lsn
    message: str  # what the time resolved to, for the operator


def resolution(when: datetime.datetime, kind: str, lsn: Lsn, timeline: str) -> Resolution:
    """The LSN to restore for GetLsnByTimestamp's answer, or the error that says why the
    time cannot be restored (``past``, ``nodata``)."""
    shown = when.isoformat()
    if kind == LsnKind.PRESENT:
        return Resolution(lsn, f"{shown} resolved to LSN {lsn} (present: every commit at or "
                               "before that time, none after)")
    if kind == LsnKind.FUTURE:
        return Resolution(lsn, f"{shown} is at or after the newest commit timeline "
                               f"{timeline} holds: restoring the latest LSN {lsn} (future)")
    if kind == LsnKind.PAST:
        raise LsnOutOfRange(f"time {shown} is before the history timeline {timeline} holds: "
                            f"its oldest restorable LSN {lsn} already shows a later commit "
                            "(past); pick a later time, or an LSN with --lsn")
    if kind == LsnKind.NODATA:
        raise FailedPrecondition(f"timeline {timeline} has no transaction commit up to LSN "
                                 f"{lsn}, so no time can be resolved (nodata); restore an "
                                 "LSN with --lsn")
    raise RestoreError(f"GetLsnByTimestamp answered an unknown kind {kind!r} for {shown}")


def check_datadir(datadir: Path) -> None:
    """Refuse a data directory that exists and is not an empty directory."""
    if datadir.exists() or datadir.is_symlink():
        if not datadir.is_dir():
            raise BadRequest(f"{datadir} exists and is not a directory")
        if any(datadir.iterdir()):
            raise BadRequest(f"{datadir} is not empty: restore writes into an empty or new "
                             "directory")


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the gRPC stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._view = memoryview(b"")
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view = memoryview(chunk)
            self.bytes += len(chunk)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n

    def drain(self) -> None:
        """Read the stream to its end (tarfile stops at the end-of-archive marker): the
        RPC then finishes, or raises what ended it."""
        for chunk in self._chunks:
            self.bytes += len(chunk)


def unpack_backup(chunks: Iterable[bytes], datadir: Path) -> int:
    """Create ``datadir`` (absent or empty, see ``check_datadir``) and unpack the full
    backup streamed as ``chunks`` into it; returns the archive's size in bytes.  On any
    failure what was written is removed again (and the directory, if this created it)."""
    check_datadir(datadir)
    created = not datadir.exists()
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    reader = _ChunkReader(chunks)
    try:
        datadir.chmod(0o700)
        give_to_server_user(datadir)
        check_server_user_can_write(datadir, "choose another --pgdata")
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                tar.extractall(datadir, filter="tar")
            reader.drain()
        except (tarfile.TarError, EOFError) as e:
            raise RestoreError(f"the full backup stream could not be unpacked into "
                               f"{datadir} after {reader.bytes} bytes: {e}") from None
        (datadir / LOG_FILE).parent.mkdir(exist_ok=True)
        datadir.chmod(0o700)  # whatever the archive said about "."
        for dirpath, dirnames, filenames in os.walk(datadir):
            give_to_server_user(Path(dirpath))
            for name in dirnames + filenames:
                give_to_server_user(Path(dirpath, name))
    except BaseException:
        if created:
            shutil.rmtree(datadir, ignore_errors=True)
        else:
            for child in datadir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    log.info("full backup unpacked datadir=%s bytes=%d", datadir, reader.bytes)
    return reader.bytes


def configure(datadir: Path, port: int) -> None:
    """Append the address settings to the restored postgresql.conf (the last setting of
    a name wins): 127.0.0.1 on ``port``, no Unix socket."""
    with open(datadir / "postgresql.conf", "a") as f:
        f.write("\n# added by pagestore restore\n"
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                "unix_socket_directories = ''\n")


def start(datadir: Path, port: int, bin_dir: Path, user: str) -> PgCluster:
    """Start PostgreSQL 15 on the restored directory (as the postgres OS user when we are
    root); returns once it accepts connections (pg_ctl -w).  It keeps running."""
    logfile = datadir / LOG_FILE
    logfile.touch()
    give_to_server_user(logfile)
    cluster = PgCluster(datadir=datadir, port=port, bin_dir=bin_dir, logfile=logfile,
                        user=user)
    cluster.start()
    return cluster
