"""The replication client against real PostgreSQL 15 primaries.

Oracles: the primary's own SQL views (pg_control_system, pg_replication_slots,
pg_stat_replication), its pg_wal segment files and data directory, and Python's tarfile.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from pagestore.lsn import Lsn
from pagestore.pg.cluster import PgCluster, free_port, give_to_server_user
from pagestore.pg.replication import (
    BackupArchiveStart,
    BackupData,
    BackupFinished,
    BackupStarted,
    ConnState,
    PrimaryKeepalive,
    ReplicationAuthError,
    ReplicationConnectError,
    ReplicationConnection,
    ReplicationError,
    ReplicationServerError,
    ReplicationSlotExists,
    UnsupportedTablespaceError,
    XLogData,
)
from pagestore.pg.tar import TarChunk, TarEnd, TarMember
from tests.fixtures.postgres import PgFactory
from tests.fixtures.util import wait_until

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 120) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)
    return asyncio.run(bounded())


async def psql(cluster: PgCluster, sql: str, dbname: str = "postgres") -> str:
    return await asyncio.to_thread(cluster.psql, sql, dbname)


async def wait_for(predicate: Callable[[], object], what: str) -> None:
    await asyncio.to_thread(wait_until, predicate, 30.0, 0.05, what)


async def connect(cluster: PgCluster, **kw: str) -> ReplicationConnection:
    return await ReplicationConnection.connect(cluster.conninfo(**kw))


def segment_bytes(cluster: PgCluster, timeline: int, start: Lsn, length: int,
                  seg_size: int) -> bytes:
    """``length`` WAL bytes from ``start`` read out of the primary's pg_wal files."""
    out = bytearray()
    pos = int(start)
    segs_per_id = 0x1_0000_0000 // seg_size
    while len(out) < length:
        segno, offset = divmod(pos, seg_size)
        name = f"{timeline:08X}{segno // segs_per_id:08X}{segno % segs_per_id:08X}"
        with open(cluster.datadir / "pg_wal" / name, "rb") as f:
            f.seek(offset)
            piece = f.read(min(seg_size - offset, length - len(out)))
        assert piece, f"segment {name} ends before {Lsn(pos)}"
        out += piece
        pos += len(piece)
    return bytes(out)


# --------------------------------------------------------------------------- commands

def test_identify_system_show_and_parameters(pg_factory: PgFactory) -> None:
    cluster = pg_factory()

    async def main() -> None:
        async with await connect(cluster, application_name="ingest_test") as conn:
            info = await conn.identify_system()
            systemid = int(await psql(cluster, "SELECT system_identifier FROM pg_control_system()"))
            flush = Lsn.parse(await psql(cluster, "SELECT pg_current_wal_flush_lsn()"))
            assert info.systemid == systemid
            assert info.timeline == 1 and info.dbname is None
            assert info.xlogpos <= flush
            assert await conn.show("wal_segment_size") == "16MB"
            assert await conn.show("wal_level") == "replica"
            assert conn.parameters["server_version"].startswith("15.")
            assert conn.parameters["client_encoding"] == "UTF8"
            assert conn.backend_pid is not None
            names = await psql(cluster, "SELECT application_name FROM pg_stat_activity "
                                        f"WHERE pid = {conn.backend_pid}")
            assert names == "ingest_test"
            # Anything that is not a replication command is SQL, refused in physical mode.
            with pytest.raises(ReplicationServerError,
                               match="cannot execute SQL commands in WAL sender") as e:
                await conn.query("SELECT 1")
            assert e.value.pgcode == "0A000"
            assert conn.state is ConnState.IDLE
            assert (await conn.identify_system()).systemid == systemid
        assert conn.state is ConnState.CLOSED

    run(main)


def test_slot_lifecycle(pg_factory: PgFactory) -> None:
    cluster = pg_factory()

    async def main() -> None:
        async with await connect(cluster) as conn:
            slot = await conn.create_physical_slot("pagestore_ingest")
            assert slot.slot_type == "physical" and slot.restart_tli == 1
            row = await psql(cluster, "SELECT slot_type, restart_lsn FROM pg_replication_slots "
                                      "WHERE slot_name = 'pagestore_ingest'")
            assert row == f"physical|{slot.restart_lsn}"
            with pytest.raises(ReplicationSlotExists) as e:
                await conn.create_physical_slot("pagestore_ingest")
            assert e.value.pgcode == "42710"
            assert await conn.read_replication_slot("pagestore_ingest") == slot
            lazy = await conn.create_physical_slot("lazy", reserve_wal=False)
            assert lazy.restart_lsn is None
            await conn.drop_slot("pagestore_ingest")
            await conn.drop_slot("lazy")
            assert await conn.read_replication_slot("pagestore_ingest") is None
            await conn.drop_slot("pagestore_ingest", missing_ok=True)
            with pytest.raises(ReplicationServerError) as e2:
                await conn.drop_slot("pagestore_ingest")
            assert e2.value.pgcode == "42704"
            assert await psql(cluster, "SELECT count(*) FROM pg_replication_slots") == "0"

    run(main)


# --------------------------------------------------------------------------- streaming

def test_stream_wal_matches_segment_files_and_feedback_moves_slot(
        pg_factory: PgFactory) -> None:
    cluster = pg_factory()

    async def main() -> None:
        async with await connect(cluster) as conn:
            info = await conn.identify_system()
            seg_size = int(await psql(cluster, "SELECT setting FROM pg_settings "
                                               "WHERE name = 'wal_segment_size'"))
            slot = await conn.create_physical_slot("ingest")
            assert slot.restart_lsn is not None
            stream = await conn.start_replication(slot.restart_lsn, slot="ingest")
            assert conn.state is ConnState.COPY_BOTH
            await psql(cluster, "CREATE TABLE t (id int PRIMARY KEY, v text); "
                                "INSERT INTO t SELECT g, repeat('x', 200) "
                                "FROM generate_series(1, 5000) g")
            target = Lsn.parse(await psql(cluster, "SELECT pg_current_wal_flush_lsn()"))
            received = bytearray()
            async for msg in stream:
                if isinstance(msg, XLogData):
                    assert msg.data_start == slot.restart_lsn + len(received)
                    assert len(msg.data) <= 16 * 8192
                    assert msg.wal_end >= msg.data_end
                    received += msg.data
                    if msg.data_end >= target:
                        break
            assert stream.received_lsn == slot.restart_lsn + len(received) >= target
            assert len(received) > 1_000_000  # 5000 rows of 200 bytes plus the index
            on_disk = segment_bytes(cluster, info.timeline, slot.restart_lsn, len(received),
                                    seg_size)
            assert bytes(received) == on_disk

            await stream.send_status(target, target, target)

            def slot_and_stat_caught_up() -> bool:
                restart = cluster.psql("SELECT restart_lsn FROM pg_replication_slots "
                                       "WHERE slot_name = 'ingest'")
                stat = cluster.psql("SELECT write_lsn, flush_lsn, replay_lsn "
                                    "FROM pg_stat_replication")
                return restart == str(target) and stat == f"{target}|{target}|{target}"

            await wait_for(slot_and_stat_caught_up, "slot restart_lsn and pg_stat_replication")
            await stream.stop()
            assert conn.state is ConnState.IDLE
            assert (await conn.identify_system()).systemid == info.systemid
            # Streaming again from where we stopped works on the same connection.
            again = await conn.start_replication(target, slot="ingest")
            await psql(cluster, "INSERT INTO t VALUES (0, 'again')")
            async for msg in again:
                if isinstance(msg, XLogData):
                    assert msg.data_start == target
                    break
            await again.stop()

    run(main)


def test_keepalive_reply_requested_is_answered(pg_factory: PgFactory) -> None:
    cluster = pg_factory(settings={"wal_sender_timeout": "'1s'"})

    async def main() -> None:
        async with await connect(cluster) as conn:
            info = await conn.identify_system()
            stream = await conn.start_replication(info.xlogpos)
            assert await psql(cluster, "SELECT reply_time IS NULL FROM pg_stat_replication") == "t"
            began = time.monotonic()
            requested = 0
            async for msg in stream:
                if isinstance(msg, PrimaryKeepalive) and msg.reply_requested:
                    requested += 1
                    # Replies keep the stream alive well past wal_sender_timeout.
                    if requested >= 3 and time.monotonic() - began > 2.5:
                        break
            await wait_for(lambda: cluster.psql("SELECT reply_time IS NOT NULL "
                                                "FROM pg_stat_replication") == "t",
                           "pg_stat_replication.reply_time")
            # Hot standby feedback shows up as the walsender's xmin.
            snapshot_xmin = int(await psql(cluster, "SELECT txid_snapshot_xmin("
                                                    "txid_current_snapshot())"))
            xmin, epoch = snapshot_xmin & 0xFFFF_FFFF, snapshot_xmin >> 32
            await conn.send_hot_standby_feedback(xmin, epoch)
            await wait_for(lambda: cluster.psql("SELECT backend_xmin FROM pg_stat_replication")
                           == str(xmin), "pg_stat_replication.backend_xmin")
            # Our own replyRequested makes the primary send a keepalive straight away.
            await stream.send_status(info.xlogpos, info.xlogpos, info.xlogpos,
                                     reply_requested=True)
            async for msg in stream:
                if isinstance(msg, PrimaryKeepalive) and not msg.reply_requested:
                    break
            await stream.stop()

    run(main)


def test_unanswered_keepalives_end_in_a_clear_error(pg_factory: PgFactory) -> None:
    cluster = pg_factory(settings={"wal_sender_timeout": "'1s'"})

    async def main() -> None:
        conn = await connect(cluster)
        info = await conn.identify_system()
        stream = await conn.start_replication(info.xlogpos, auto_reply=False)
        with pytest.raises(ReplicationConnectError, match="closed the connection unexpectedly"):
            async for _ in stream:
                pass
        assert conn.state is ConnState.BROKEN
        with pytest.raises(ReplicationError, match=r"connection to .* is broken"):
            await conn.identify_system()
        await conn.close()

    run(main)


def test_start_replication_errors_leave_connection_usable(pg_factory: PgFactory) -> None:
    cluster = pg_factory()

    async def main() -> None:
        async with await connect(cluster) as conn:
            info = await conn.identify_system()
            ahead = Lsn(info.xlogpos + 0x1000_0000)
            # walsender.c sends CopyBothResponse before checking the start point, so
            # this error is the stream's first item, and the connection is IDLE after it.
            stream = await conn.start_replication(ahead)
            with pytest.raises(ReplicationServerError, match="ahead of the WAL flush position"):
                await anext(stream)
            assert conn.state is ConnState.IDLE
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
            with pytest.raises(ReplicationServerError, match="does not exist") as e:
                await conn.start_replication(info.xlogpos, slot="missing")
            assert e.value.pgcode == "42704"
            assert conn.state is ConnState.IDLE
            stream = await conn.start_replication(info.xlogpos)
            with pytest.raises(ReplicationError, match="cannot run IDENTIFY_SYSTEM"):
                await conn.identify_system()
            await stream.stop()
            assert (await conn.identify_system()).systemid == info.systemid

    run(main)


# --------------------------------------------------------------------------- base backup

def test_base_backup_members_match_data_directory(pg_factory: PgFactory) -> None:
    cluster = pg_factory()
    cluster.psql("CREATE TABLE bb (a int); INSERT INTO bb SELECT generate_series(1, 20000)")
    rel_paths = [cluster.psql(f"SELECT pg_relation_filepath('{rel}')", dbname)
                 for rel, dbname in (("pg_class", "template1"), ("pg_proc", "template1"),
                                     ("pg_attribute", "postgres"), ("bb", "postgres"))]
    assert rel_paths[0].startswith("base/1/")

    async def main() -> tuple[list[object], dict[str, TarMember], dict[str, int],
                              dict[str, bytes]]:
        async with await connect(cluster) as conn:
            events: list[object] = []
            members: dict[str, TarMember] = {}
            sizes: dict[str, int] = {}
            small: dict[str, bytes] = {}
            async for ev in conn.base_backup("pagestore test", whole_file_limit=8192):
                if isinstance(ev, TarMember):
                    members[ev.path] = ev
                    sizes[ev.path] = 0
                    events.append("member")
                elif isinstance(ev, TarChunk):
                    sizes[ev.member.path] += len(ev.data)
                    if ev.member.size <= 8192:
                        small[ev.member.path] = ev.data
                else:
                    events.append(ev)
            assert conn.state is ConnState.IDLE
            await conn.identify_system()
            return events, members, sizes, small

    events, members, sizes, small = run(main)
    started, archive = events[0], events[1]
    assert isinstance(started, BackupStarted) and started.timeline == 1
    assert [t.location for t in started.tablespaces] == [None]
    assert archive == BackupArchiveStart("base.tar", "")
    finished = events[-1]
    assert isinstance(finished, BackupFinished) and finished.timeline == 1
    assert started.start_lsn < finished.end_lsn
    assert sum(isinstance(e, TarEnd) for e in events) == 1
    assert not any(isinstance(e, BackupData) for e in events)

    label = small["backup_label"].decode()
    assert f"START WAL LOCATION: {started.start_lsn} (file " in label
    assert "LABEL: pagestore test" in label and "START TIMELINE: 1" in label
    assert next(iter(members)) == "backup_label"
    assert list(members)[-1] == "global/pg_control"  # basebackup.c sends it last
    assert members["global/pg_control"].size == 8192 == sizes["global/pg_control"]
    assert small["PG_VERSION"] == (cluster.datadir / "PG_VERSION").read_bytes() == b"15\n"
    assert members["base"].is_dir and members["pg_wal"].is_dir
    assert "pg_wal/archive_status" in members  # written as "./pg_wal/archive_status/"
    assert not any(p.startswith("pg_wal/0000") for p in members)
    assert "postmaster.pid" not in members
    for rel in rel_paths:
        on_disk = (cluster.datadir / rel).stat().st_size
        assert members[rel].size == sizes[rel] == on_disk, rel
    for path, member in members.items():
        assert sizes[path] == member.size, path


def test_base_backup_raw_archive_reads_with_tarfile(pg_factory: PgFactory) -> None:
    cluster = pg_factory()

    async def main() -> tuple[bytes, BackupStarted, BackupFinished]:
        async with await connect(cluster) as conn:
            raw = bytearray()
            started = finished = None
            async for ev in conn.base_backup("raw", raw=True):
                if isinstance(ev, BackupData):
                    raw += ev.data
                elif isinstance(ev, BackupStarted):
                    started = ev
                elif isinstance(ev, BackupFinished):
                    finished = ev
                else:
                    assert not isinstance(ev, TarMember | TarChunk)
            assert started is not None and finished is not None
            return bytes(raw), started, finished

    raw, started, finished = run(main)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        names = {m.name.removeprefix("./") for m in tf.getmembers()}
        pg_control = tf.extractfile("global/pg_control")
        assert pg_control is not None and len(pg_control.read()) == 8192
    assert {"backup_label", "PG_VERSION", "global/pg_control", "base/1/PG_VERSION"} <= names
    assert any(n.startswith("base/1/") and n.split("/")[-1].isdigit() for n in names)
    assert started.start_lsn <= finished.end_lsn


def test_base_backup_with_tablespace_is_refused(pg_factory: PgFactory) -> None:
    cluster = pg_factory()
    location = cluster.datadir.parent / "tablespace"
    location.mkdir()
    give_to_server_user(location)
    cluster.psql(f"CREATE TABLESPACE extra LOCATION '{location}'")

    async def main() -> None:
        conn = await connect(cluster)
        with pytest.raises(UnsupportedTablespaceError,
                           match=f"unsupported tablespace.* at {location}"):
            async for _ in conn.base_backup("ts"):
                pass
        assert conn.state is ConnState.BROKEN
        await conn.close()
        # The primary aborted the backup: a new one can start.
        await wait_for(lambda: cluster.psql("SELECT count(*) FROM pg_stat_progress_basebackup")
                       == "0", "the aborted backup to end")

    run(main)


# --------------------------------------------------------------------------- authentication

def _add_password_roles(cluster: PgCluster) -> None:
    cluster.psql("SET password_encryption = 'md5'; "
                 "CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5 secret'")
    cluster.psql("SET password_encryption = 'scram-sha-256'; "
                 "CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'scr\u00e4m secret'; "
                 "CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'plain secret'")
    hba: Path = cluster.datadir / "pg_hba.conf"
    # pg_hba.conf is first-match: these must come before initdb's trust lines.
    hba.write_text("host replication md5user 127.0.0.1/32 md5\n"
                   "host replication scramuser 127.0.0.1/32 scram-sha-256\n"
                   "host replication pwuser 127.0.0.1/32 password\n" + hba.read_text())
    cluster.psql("SELECT pg_reload_conf()")


def test_password_authentication(pg_factory: PgFactory) -> None:
    cluster = pg_factory()
    _add_password_roles(cluster)

    async def attempt(user: str, password: str | None) -> None:
        conn = await ReplicationConnection.connect(host="127.0.0.1", port=cluster.port,
                                                   user=user, password=password)
        try:
            await conn.identify_system()
        finally:
            await conn.close()

    def reloaded() -> bool:
        try:
            asyncio.run(attempt("md5user", None))
        except ReplicationAuthError as e:
            return "no password was given" in str(e)
        return False

    wait_until(reloaded, what="pg_hba.conf reload")

    async def main() -> None:
        await attempt("md5user", "md5 secret")
        await attempt("scramuser", "scr\u00e4m secret")
        await attempt("pwuser", "plain secret")
        for user in ("md5user", "scramuser", "pwuser"):
            with pytest.raises(ReplicationAuthError,
                               match=f'password authentication failed for user "{user}"') as e:
                await attempt(user, "wrong")
            assert e.value.pgcode == "28P01" and e.value.severity == "FATAL"
        with pytest.raises(ReplicationAuthError, match="requests SCRAM-SHA-256 authentication "
                                                       "for user 'scramuser' but no password"):
            await attempt("scramuser", None)
        # The URI form with a percent-encoded password.
        conn = await ReplicationConnection.connect(
            f"postgresql://scramuser:scr%C3%A4m%20secret@127.0.0.1:{cluster.port}/")
        assert (await conn.identify_system()).timeline == 1
        await conn.close()

    run(main)


def test_connect_errors(pg_factory: PgFactory) -> None:
    cluster = pg_factory()
    port = free_port()

    async def main() -> None:
        with pytest.raises(ReplicationConnectError,
                           match=f"could not connect to 127.0.0.1:{port}: Connection refused"):
            await ReplicationConnection.connect(f"host=127.0.0.1 port={port} user=x")
        with pytest.raises(ReplicationServerError, match='role "nobody" does not exist'):
            await ReplicationConnection.connect(cluster.conninfo(), user="nobody")

    run(main)
