"""Sans-IO pieces of the replication client: CopyData codecs, SCRAM, conninfo, TAR."""

from __future__ import annotations

import base64
import io
import random
import struct
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagestore.errors import BadRequest, ProtocolError
from pagestore.lsn import Lsn
from pagestore.pg import replication as rep
from pagestore.pg import tar, wire
from pagestore.pg.tar import TarChunk, TarEnd, TarFormatError, TarMember, TarReader, TarType

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u32 = st.integers(0, 2**32 - 1)


# --------------------------------------------------------------------------- CopyData codecs

@given(u64, u64, i64, st.binary(max_size=300))
def test_xlogdata_roundtrip(start: int, end: int, ts: int, data: bytes) -> None:
    msg = rep.XLogData(Lsn(start), Lsn(end), ts, data)
    encoded = msg.encode()
    assert len(encoded) == rep.XLOG_DATA_HEADER.size + len(data) == 25 + len(data)
    parsed = rep.parse_primary_message(encoded)
    assert isinstance(parsed, rep.XLogData)
    assert (parsed.data_start, parsed.wal_end, parsed.send_time) == (start, end, ts)
    assert isinstance(parsed.data_start, Lsn)
    assert isinstance(parsed.data, memoryview) and parsed.data == data
    if start + len(data) < 2**64:
        assert parsed.data_end == start + len(data)


@given(u64, i64, st.booleans())
def test_keepalive_roundtrip(end: int, ts: int, reply: bool) -> None:
    encoded = rep.PrimaryKeepalive(Lsn(end), ts, reply).encode()
    assert len(encoded) == 18
    assert rep.parse_primary_message(encoded) == rep.PrimaryKeepalive(Lsn(end), ts, reply)


@given(u64, u64, u64, i64, st.booleans())
def test_status_update_roundtrip(w: int, f: int, a: int, ts: int, reply: bool) -> None:
    encoded = rep.standby_status_update(Lsn(w), Lsn(f), Lsn(a), client_time=ts,
                                        reply_requested=reply)
    assert len(encoded) == 34 and encoded[:1] == b"r"
    assert rep.parse_standby_message(encoded) == rep.StandbyStatusUpdate(
        Lsn(w), Lsn(f), Lsn(a), ts, reply)


@given(i64, u32, u32, u32, u32)
def test_hot_standby_feedback_roundtrip(ts: int, x: int, xe: int, c: int, ce: int) -> None:
    encoded = rep.hot_standby_feedback(x, xe, c, ce, client_time=ts)
    assert len(encoded) == 25 and encoded[:1] == b"h"
    assert rep.parse_standby_message(encoded) == rep.HotStandbyFeedback(ts, x, xe, c, ce)


def test_status_update_layout_matches_protocol_doc() -> None:
    encoded = rep.standby_status_update(Lsn.parse("1/2"), Lsn.parse("3/4"), Lsn.parse("5/6"),
                                        client_time=7, reply_requested=True)
    assert encoded == (b"r" + struct.pack("!QQQq", 0x1_00000002, 0x3_00000004, 0x5_00000006, 7)
                       + b"\x01")


def test_pg_now_is_microseconds_since_2000() -> None:
    now = rep.pg_now()
    # 2024-01-01 is 24 years after the PostgreSQL epoch; 2100 is far away.
    assert 24 * 365 * 86400 * 10**6 < now < 100 * 365 * 86400 * 10**6
    assert abs(rep.pg_timestamp_to_unix(0) - 946684800) < 1e-9


@pytest.mark.parametrize(("payload", "match"), [
    (b"", "empty CopyData"),
    (b"w" + bytes(10), "XLogData message is 11 bytes, shorter than its 25-byte header"),
    (b"k" + bytes(16), "keepalive message is 17 bytes, expected 18"),
    (b"k" + bytes(18), "keepalive message is 19 bytes"),
    (b"k" + bytes(16) + b"\x02", "replyRequested 2"),
    (b"z" + bytes(30), "unknown replication message type b'z'"),
    (b"r" + bytes(33), "unknown replication message type b'r'"),
])
def test_malformed_primary_messages(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        rep.parse_primary_message(payload)


@pytest.mark.parametrize(("payload", "match"), [
    (b"r" + bytes(32), "standby status update is 33 bytes, expected 34"),
    (b"h" + bytes(25), "hot standby feedback is 26 bytes, expected 25"),
    (b"w" + bytes(30), "unknown standby message type b'w'"),
])
def test_malformed_standby_messages(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        rep.parse_standby_message(payload)


@given(st.binary(max_size=60))
def test_primary_parser_never_fails_otherwise(payload: bytes) -> None:
    try:
        rep.parse_primary_message(payload)
    except ProtocolError:
        pass


def test_backup_messages() -> None:
    assert rep.parse_backup_message(rep.backup_archive_start("base.tar")) == \
        rep.BackupArchiveStart("base.tar", "")
    assert rep.parse_backup_message(rep.backup_archive_start("16384.tar", "/ts/a")) == \
        rep.BackupArchiveStart("16384.tar", "/ts/a")
    assert rep.parse_backup_message(rep.backup_progress(12345)) == rep.BackupProgress(12345)
    assert rep.parse_backup_message(b"m") == rep.BackupManifestStart()
    data = rep.parse_backup_message(b"dhello")
    assert isinstance(data, rep.BackupData) and data.data == b"hello"
    with pytest.raises(ProtocolError, match="progress message is 5 bytes"):
        rep.parse_backup_message(b"p1234")
    with pytest.raises(ProtocolError, match="not NUL-terminated"):
        rep.parse_backup_message(b"nbase.tar")
    with pytest.raises(ProtocolError, match="trailing bytes"):
        rep.parse_backup_message(b"nbase.tar\x00\x00junk")
    with pytest.raises(ProtocolError, match="unknown base backup message type b'x'"):
        rep.parse_backup_message(b"x")


# --------------------------------------------------------------------------- wire (frontend)

def test_row_description_and_data_row() -> None:
    body = (struct.pack("!h", 2) + b"systemid\x00" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
            + b"timeline\x00" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0))
    fields = wire.parse_row_description(body)
    assert [f.name for f in fields] == ["systemid", "timeline"]
    assert fields[1].type_oid == 23 and fields[1].type_size == 4
    with pytest.raises(ProtocolError, match=r"field 1 \('timeline'\) is truncated"):
        wire.parse_row_description(body[:-3])
    row = struct.pack("!hi", 3, 3) + b"abc" + struct.pack("!i", -1) + struct.pack("!i", 0)
    assert wire.parse_data_row(row) == [b"abc", None, b""]
    with pytest.raises(ProtocolError, match="column 0 has invalid length 3"):
        wire.parse_data_row(struct.pack("!hi", 1, 3) + b"ab")
    with pytest.raises(ProtocolError, match="bytes after its 1 columns"):
        wire.parse_data_row(struct.pack("!hi", 1, 1) + b"ab")


def test_frontend_builders() -> None:
    assert wire.password_message("pw") == b"p\x00\x00\x00\x07pw\x00"
    assert wire.sasl_initial_response("SCRAM-SHA-256", b"abc") == (
        b"p" + struct.pack("!I", 4 + 14 + 4 + 3) + b"SCRAM-SHA-256\x00" + struct.pack("!i", 3)
        + b"abc")
    assert wire.sasl_response(b"xyz") == b"p\x00\x00\x00\x07xyz"
    assert wire.copy_done() == b"c\x00\x00\x00\x04"
    assert wire.terminate() == b"X\x00\x00\x00\x04"
    assert wire.parse_sasl_mechanisms(b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00") == [
        "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert wire.parse_authentication(struct.pack("!i", 5) + b"salt") == (5, b"salt")
    assert wire.parse_copy_response(b"\x00\x00\x00") == (0, [])
    with pytest.raises(ProtocolError, match="copy response has 4 bytes for 1 columns"):
        wire.parse_copy_response(b"\x00\x00\x01\x00")


# --------------------------------------------------------------------------- authentication

def test_scram_rfc7677_vector() -> None:
    client = rep.ScramSha256Client("pencil", username="user",
                                   client_nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.client_first_message() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.client_final_message(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert client.verified


def test_scram_rejects_bad_server_messages() -> None:
    client = rep.ScramSha256Client("pencil", client_nonce="abc")
    assert client.client_first_message() == b"n,,n=,r=abc"  # libpq sends an empty name
    with pytest.raises(ProtocolError, match="does not extend the client nonce"):
        client.client_final_message(b"r=xyz123,s=QUJD,i=4096")
    with pytest.raises(ProtocolError, match="lacks attribute 'i'"):
        client.client_final_message(b"r=abcdef,s=QUJD")
    with pytest.raises(ProtocolError, match="iteration count 0"):
        client.client_final_message(b"r=abcdef,s=QUJD,i=0")
    client.client_final_message(b"r=abcdef,s=QUJD,i=16")
    with pytest.raises(rep.ReplicationAuthError, match="server signature is wrong"):
        client.verify_server_final(b"v=" + base64.b64encode(bytes(32)))
    with pytest.raises(rep.ReplicationAuthError, match="server says invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")
    assert not client.verified


def test_saslprep_like_postgres() -> None:
    assert rep.saslprep("pencil") == "pencil"
    assert rep.saslprep("\x07bell") == "\x07bell"  # ASCII passes through untouched
    assert rep.saslprep("I\u00adX") == "IX"  # soft hyphen maps to nothing
    assert rep.saslprep("a\u00a0b") == "a b"  # non-ASCII space maps to SPACE
    assert rep.saslprep("\u00aa") == "a"  # NFKC
    assert rep.saslprep("\u2168") == "IX"
    assert rep.saslprep("\u0627\u0031") == "\u0627\u0031"  # bidi violation: used as is
    assert rep.saslprep("caf\u00e9\u0007") == "caf\u00e9\u0007"  # prohibited: used as is


def test_md5_password() -> None:
    # md5(md5("postgrespostgres") + salt); the inner hash is the well-known pg_authid value.
    inner = "3175bce1d3201d16594cebf9d7eb3f9d"
    import hashlib
    expect = "md5" + hashlib.md5(inner.encode() + b"\x01\x02\x03\x04").hexdigest()
    assert rep.md5_password("postgres", "postgres", b"\x01\x02\x03\x04") == expect


def test_server_error_classification() -> None:
    e = rep.ReplicationServerError.from_fields(
        {"S": "ERROR", "V": "ERROR", "C": "42710", "M": 'replication slot "s" already exists'},
        "CREATE_REPLICATION_SLOT")
    assert isinstance(e, rep.ReplicationSlotExists)
    assert e.pgcode == "42710" and e.severity == "ERROR"
    assert str(e) == ('CREATE_REPLICATION_SLOT: ERROR: replication slot "s" already exists '
                      "(SQLSTATE 42710)")
    auth = rep.ReplicationServerError.from_fields({"S": "FATAL", "C": "28P01", "M": "no",
                                                   "D": "d", "H": "h"})
    assert isinstance(auth, rep.ReplicationAuthError)
    assert str(auth) == "FATAL: no (SQLSTATE 28P01); DETAIL: d; HINT: h"
    assert (auth.detail, auth.hint) == ("d", "h")


# --------------------------------------------------------------------------- conninfo

def test_conninfo_keyvalue() -> None:
    p = rep.parse_conninfo("host=127.0.0.1 port = 5433 user=repl password=pw dbname=postgres "
                           "application_name=ingest connect_timeout=5", env={})
    assert (p.host, p.port, p.user, p.password, p.dbname, p.application_name,
            p.connect_timeout) == ("127.0.0.1", 5433, "repl", "pw", "postgres", "ingest", 5.0)


def test_conninfo_keyvalue_quoting() -> None:
    p = rep.parse_conninfo(r"user=u password='a b\'c\\d' host=h", env={})
    assert p.password == "a b'c\\d" and p.user == "u" and p.host == "h"
    assert "a b" not in repr(p)
    p = rep.parse_conninfo(r"password=x\ y", env={})
    assert p.password == "x y"


def test_conninfo_uri_and_env() -> None:
    p = rep.parse_conninfo("postgresql://rep%40l:p%3Ass@[::1]:6543/db?application_name=x",
                           env={})
    assert (p.user, p.password, p.host, p.port, p.dbname, p.application_name) == (
        "rep@l", "p:ss", "::1", 6543, "db", "x")
    p = rep.parse_conninfo("", env={"PGHOST": "h", "PGPORT": "7", "PGUSER": "u",
                                    "PGPASSWORD": "secret"})
    assert (p.host, p.port, p.user, p.password) == ("h", 7, "u", "secret")
    p = rep.parse_conninfo("port=8", env={"PGPORT": "7"})
    assert p.port == 8


@pytest.mark.parametrize(("text", "match"), [
    ("host", 'missing "=" after'),
    ("password='abc", "unterminated quoted string"),
    ("bogus=1", 'invalid connection option "bogus"'),  # libpq's own wording
    ("dbname=x options=y", "invalid connection option 'options'"),  # libpq's, not ours
    ("sslmode=require", "sslmode=require is not supported"),
    ("port=abc", "invalid port"),
    ("port=70000", "invalid port 70000"),
    ("host=a,b", "only a single TCP host"),
])
def test_conninfo_errors(text: str, match: str) -> None:
    with pytest.raises(BadRequest, match=match):
        rep.parse_conninfo(text, env={})


@pytest.mark.parametrize("text", [
    "host=h user=u password=s3cr3t dbname=d",
    r"host=h password='s3cr3t with \'quote' user=u",
    "postgresql://u:s3cr3t@h:5432/d",
    "postgresql://u:s3cr3t@h/d?password=s3cr3t",
])
def test_mask_conninfo_hides_the_password(text: str) -> None:
    masked = rep.mask_conninfo(text)
    assert "s3cr3t" not in masked and "********" in masked
    p = rep.parse_conninfo(masked, env={})
    assert (p.host, p.user) == ("h", "u")


def test_mask_conninfo_leaves_strings_without_password_alone() -> None:
    text = "host=127.0.0.1 port=5432 user=postgres"
    assert rep.mask_conninfo(text) == text
    assert rep.mask_conninfo("host='unterminated password=x") == "<unparseable connection string>"


# --------------------------------------------------------------------------- TAR

def _sample_members(rng: random.Random) -> list[tuple[str, bytes | None, str | None]]:
    """(name, content or None for a directory, symlink target)."""
    out: list[tuple[str, bytes | None, str | None]] = [
        ("global", None, None),
        ("global/pg_control", rng.randbytes(8192), None),
        ("PG_VERSION", b"15\n", None),
        ("base/1/1259", rng.randbytes(8192 * 5 + 17), None),
        ("empty", b"", None),
        ("pg_tblspc/16384", None, "/some/where/else"),
        ("pg_tblspc/16385", None, "/long/" + "t" * 120),  # GNU 'K' or pax linkpath
        ("d/" + "x" * 120 + "/long_name_file", rng.randbytes(1000), None),
        ("unicode/fïlé", b"abc", None),
    ]
    for i in range(5):
        out.append((f"base/5/{16384 + i}", rng.randbytes(rng.randrange(0, 70000)), None))
    return out


def _tarfile_archive(members: list[tuple[str, bytes | None, str | None]], fmt: int) -> bytes:
    buf = io.BytesIO()
    pax_headers = {"comment": "a pax global header"} if fmt == tarfile.PAX_FORMAT else None
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers) as tf:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if link is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
                tf.addfile(info)
            elif content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tf.addfile(info)
            else:
                info.size, info.mode = len(content), 0o600
                tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _read_split(data: bytes, rng: random.Random, whole_file_limit: int
                ) -> tuple[list[TarMember], dict[str, bytes], TarEnd | None]:
    reader = TarReader(whole_file_limit=whole_file_limit)
    members: list[TarMember] = []
    contents: dict[str, bytes] = {}
    end: TarEnd | None = None
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 7, 511, 512, 513, 4096, 65536, rng.randrange(1, 20000)])
        reader.feed(data[pos:pos + step])
        pos += step
        while (event := reader.next_event()) is not None:
            if isinstance(event, TarMember):
                members.append(event)
                contents[event.path] = b""
            elif isinstance(event, TarChunk):
                assert event.member is members[-1]
                assert event.offset == len(contents[event.member.path])
                if event.member.size <= whole_file_limit:
                    assert event.offset == 0 and event.last
                contents[event.member.path] += event.data
            else:
                end = event
    reader.finish()
    return members, contents, end


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("seed", range(4))
def test_tar_reader_over_tarfile_archives(fmt: int, seed: int) -> None:
    rng = random.Random(seed)
    sample = _sample_members(rng)
    if fmt == tarfile.USTAR_FORMAT:  # ustar has no room for the 120-byte names
        sample = [m for m in sample if "/long_name" not in m[0] and "/long/" not in (m[2] or "")]
    data = _tarfile_archive(sample, fmt)
    for limit in (0, 8192, 1 << 20):
        members, contents, end = _read_split(data, rng, limit)
        assert end == TarEnd(len(sample))
        assert [m.path for m in members] == [name for name, _, _ in sample]
        for (name, content, link), m in zip(sample, members, strict=True):
            assert m.mtime == 1_700_000_000
            if link is not None:
                assert m.type is TarType.SYMLINK and m.linkname == link and m.size == 0
            elif content is None:
                assert m.is_dir and m.mode == 0o700
            else:
                assert m.is_file and m.size == len(content) and m.mode == 0o600
                assert contents[name] == content


def test_tar_writer_roundtrip_with_tarfile() -> None:
    rng = random.Random(7)
    big = rng.randbytes(100_000)
    buf = io.BytesIO()
    w = tar.TarWriter(buf)
    w.add_directory("global", mtime=5)
    w.add_file("global/pg_control", b"c" * 8192, mtime=5)
    w.add_symlink("pg_tblspc/1", "/elsewhere")
    w.begin_file("./base/1/1259", len(big), mode=0o640)
    w.write(big[:3])
    w.write(big[3:])
    w.end_file()
    w.add_file("p/" + "y" * 150, b"long")  # a pax header carries the long name
    w.close()
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
        # Like tarCreateHeader, the symlink's name ends in "/" (tarfile keeps it).
        assert names == ["global", "global/pg_control", "pg_tblspc/1/", "./base/1/1259",
                         "p/" + "y" * 150]
        f = tf.extractfile("./base/1/1259")
        assert f is not None and f.read() == big
        assert tf.getmembers()[2].linkname == "/elsewhere"
    members, contents, end = _read_split(data, rng, 1 << 20)
    assert [m.path for m in members] == ["global", "global/pg_control", "pg_tblspc/1",
                                         "base/1/1259", "p/" + "y" * 150]
    assert contents["base/1/1259"] == big and members[3].mode == 0o640
    assert end == TarEnd(5)


def test_tar_numbers() -> None:
    assert tar.print_tar_number(0o644, 8) == b"0000644 "
    big = 1 << 40  # over 8 GiB: base-256 in the 12-byte size field
    field = tar.print_tar_number(big, 12)
    assert field[0] == 0x80 and tar.read_tar_number(field, "size", "x") == big
    assert tar.read_tar_number(b"  644\x00  ", "mode", "x") == 0o644
    with pytest.raises(TarFormatError, match=r"mode field .* is not octal"):
        tar.read_tar_number(b"12x4", "mode", "m")
    header = tar.tar_header("huge", size=big)
    reader = TarReader()
    reader.feed(header)
    member = reader.next_event()
    assert isinstance(member, TarMember) and member.size == big


def test_tar_postgres_style_names() -> None:
    # basebackup.c writes one directory with a leading "./" and directories with "/".
    reader = TarReader()
    reader.feed(tar.tar_header("./pg_wal/archive_status", type=TarType.DIRECTORY)
                + tar.tar_header("pg_wal", type=TarType.DIRECTORY) + tar.END_OF_ARCHIVE)
    first, second, end = list(reader)
    assert isinstance(first, TarMember) and first.name == "./pg_wal/archive_status/"
    assert first.path == "pg_wal/archive_status"
    assert isinstance(second, TarMember) and second.name == "pg_wal/"
    assert end == TarEnd(2)


def test_tar_malformed() -> None:
    good = tar.tar_header("f", size=3) + b"abc" + bytes(509) + tar.END_OF_ARCHIVE
    bad = bytearray(good)
    bad[0] = ord("g")  # name changed, checksum not
    r = TarReader()
    r.feed(bytes(bad))
    with pytest.raises(TarFormatError, match="tar member 'g': header checksum"):
        r.next_event()
    r = TarReader()
    r.feed(good[:600])
    assert isinstance(r.next_event(), TarMember)
    assert isinstance(r.next_event(), TarChunk)
    assert r.next_event() is None
    with pytest.raises(TarFormatError, match="ends inside member 'f'"):
        r.finish()
    r = TarReader()
    r.feed(good[:1024])
    assert len(list(r)) == 2
    with pytest.raises(TarFormatError, match="without its end-of-archive marker"):
        r.finish()
    r = TarReader()
    r.feed(bytes(512) + good)
    with pytest.raises(TarFormatError, match="lone zero block"):
        list(r)
    sparse = bytearray(tar.tar_header("s", size=0))
    sparse[156:157] = b"S"
    sparse[148:156] = tar.print_tar_number(tar.tar_checksum(sparse)[0], 8)
    r = TarReader()
    r.feed(bytes(sparse))
    with pytest.raises(TarFormatError, match="tar member 's' has unsupported type b'S'"):
        r.next_event()
    r = TarReader()
    r.feed(tar.tar_header("x", type=TarType.REGULAR, size=0)[:0]
           + _pax_header_of_size(tar.MAX_EXTENDED_HEADER + 1))
    with pytest.raises(TarFormatError, match="over the 1048576-byte limit"):
        r.next_event()


def _pax_header_of_size(size: int) -> bytes:
    block = bytearray(tar.tar_header("././@PaxHeader", size=size))
    block[156:157] = b"x"
    block[148:156] = tar.print_tar_number(tar.tar_checksum(block)[0], 8)
    return bytes(block)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_tar_reader_fuzz(data: st.DataObject) -> None:
    archive = bytearray(_tarfile_archive(
        [("a", b"x" * 700, None), ("dir", None, None), ("b", b"y" * 10, None)],
        tarfile.PAX_FORMAT))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(archive) - 1))
        archive[pos] = data.draw(st.integers(0, 255))
    reader = TarReader(whole_file_limit=data.draw(st.sampled_from([0, 100, 10_000])))
    try:
        reader.feed(bytes(archive))
        for _ in reader:
            pass
        reader.finish()
    except TarFormatError:
        pass


def test_tar_writer_refuses_misuse() -> None:
    w = tar.TarWriter(io.BytesIO())
    w.begin_file("x", 1)
    with pytest.raises(ValueError, match="past its declared size 1"):
        w.write(b"ab")
    with pytest.raises(ValueError, match="'x' is still open"):
        w.add_directory("d")
    with pytest.raises(ValueError, match="0 bytes written, 1 declared"):
        w.end_file()
