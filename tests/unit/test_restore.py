"""pagestore restore's pieces without servers (pagestore/restore.py): time parsing, what
each GetLsnByTimestamp kind turns into, and unpacking a streamed archive into a new data
directory, cleaning up after a broken stream or a member that escapes it.  Directories
come from ``work_dir`` (reachable by the postgres OS user, who gets the data directory
when the tests run as root)."""

from __future__ import annotations

import datetime
import io
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pagestore.errors import BadRequest, FailedPrecondition, LsnOutOfRange
from pagestore.lsn import Lsn
from pagestore.pg.tar import TarWriter
from pagestore.restore import (
    RestoreError,
    check_datadir,
    configure,
    parse_time,
    resolution,
    unpack_backup,
)


def _archive(*, escape: bool = False) -> bytes:
    out = io.BytesIO()
    tar = TarWriter(out)
    tar.add_directory("global", mode=0o755)
    tar.add_file("PG_VERSION", b"15\n")
    tar.add_file("global/pg_control", bytes(range(256)) * 32)
    tar.add_file("postgresql.conf", b"wal_level = replica\n")
    if escape:
        tar.add_file("../outside", b"x")
    tar.close()
    return out.getvalue()


def _chunks(data: bytes, size: int = 700) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("text,want", [
    ("2026-03-04T05:06:07Z", datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)),
    ("2026-03-04 05:06:07.123456+00",
     datetime.datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=datetime.UTC)),
    (" 2026-03-04T07:06:07.5+02:00 ",
     datetime.datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=datetime.UTC)),
])
def test_parse_time(text: str, want: datetime.datetime) -> None:
    assert parse_time(text) == want


def test_parse_time_refuses_garbage_and_missing_zones() -> None:
    with pytest.raises(BadRequest, match="invalid time 'last tuesday'"):
        parse_time("last tuesday")
    with pytest.raises(BadRequest, match="has no time zone"):
        parse_time("2026-03-04T05:06:07")


def test_resolution_of_each_kind() -> None:
    when = datetime.datetime(2026, 3, 4, tzinfo=datetime.UTC)
    lsn = Lsn(0x16B3748)
    present = resolution(when, "present", lsn, "tl")
    assert present.lsn == lsn and "resolved to LSN 0/16B3748 (present" in present.message
    future = resolution(when, "future", lsn, "tl")
    assert future.lsn == lsn and "restoring the latest LSN 0/16B3748" in future.message
    with pytest.raises(LsnOutOfRange, match="before the history timeline tl holds"):
        resolution(when, "past", lsn, "tl")
    with pytest.raises(FailedPrecondition, match="no transaction commit up to LSN 0/16B3748"):
        resolution(when, "nodata", lsn, "tl")
    with pytest.raises(RestoreError, match="unknown kind 'soon'"):
        resolution(when, "soon", lsn, "tl")


def test_unpack_into_a_new_directory(work_dir: Path) -> None:
    datadir = work_dir / "a" / "pgdata"
    data = _archive()
    assert unpack_backup(_chunks(data), datadir) == len(data)
    assert (datadir / "PG_VERSION").read_bytes() == b"15\n"
    assert (datadir / "global" / "pg_control").read_bytes() == bytes(range(256)) * 32
    assert stat.S_IMODE(datadir.stat().st_mode) == 0o700
    assert (datadir / "log").is_dir()
    configure(datadir, 6543)
    conf = (datadir / "postgresql.conf").read_text()
    assert conf.startswith("wal_level = replica\n")
    assert conf.endswith("listen_addresses = '127.0.0.1'\nport = 6543\n"
                         "unix_socket_directories = ''\n")
    with pytest.raises(BadRequest, match="is not empty"):
        unpack_backup(_chunks(data), datadir)


def test_a_broken_stream_leaves_nothing(work_dir: Path) -> None:
    data = _archive()
    created = work_dir / "new"
    with pytest.raises(RestoreError, match="could not be unpacked"):
        unpack_backup(_chunks(data[:5000]), created)
    assert not created.exists()
    existing = work_dir / "empty"
    existing.mkdir()
    with pytest.raises(RestoreError):
        unpack_backup(_chunks(data[:5000]), existing)
    assert existing.is_dir() and not any(existing.iterdir())

    def chunks() -> Iterator[bytes]:
        yield from _chunks(data)[:3]
        raise ConnectionError("stream cut")

    with pytest.raises(ConnectionError, match="stream cut"):
        unpack_backup(chunks(), created)
    assert not created.exists()


def test_members_stay_inside(work_dir: Path) -> None:
    datadir = work_dir / "pgdata"
    with pytest.raises(RestoreError, match="outside"):
        unpack_backup(_chunks(_archive(escape=True)), datadir)
    assert not datadir.exists() and not (work_dir / "outside").exists()


def test_check_datadir(work_dir: Path) -> None:
    check_datadir(work_dir / "absent")
    check_datadir(work_dir)
    (work_dir / "file").write_text("x")
    with pytest.raises(BadRequest, match="is not empty"):
        check_datadir(work_dir)
    with pytest.raises(BadRequest, match="is not a directory"):
        check_datadir(work_dir / "file")
