"""pagestore.basebackup on a hand-built key space: tar entry order and modes, file
contents, the synthesized pg_control (CRC, fields) and WAL (page headers and the
shutdown-checkpoint record decoded with WalStreamDecoder, CRC checked), PREV LSN rules."""

from __future__ import annotations

import io
import struct
import tarfile
from dataclasses import dataclass, field

import crc32c
import pytest

from pagestore import basebackup, metadata
from pagestore.basebackup import (
    CHECKPOINT_RECORD_LEN,
    CONTROL_RECOVERY,
    CONTROL_RECOVERY_OFFSET,
    PGDATA_SUBDIRS,
    normalize_lsn,
    page_checksum,
    shutdown_checkpoint_wal,
    signal_file_content,
    write_basebackup,
)
from pagestore.errors import BadRequest, CorruptionError
from pagestore.keys import (
    BLCKSZ,
    Key,
    RelTag,
    SlruKind,
    checkpoint_key,
    controlfile_key,
    dbdir_key,
    rel_block_key,
    rel_dir_key,
    rel_size_key,
    relmap_key,
    slru_block_key,
    slru_dir_key,
    slru_segment_size_key,
    twophase_dir_key,
    twophase_file_key,
)
from pagestore.lsn import Lsn
from pagestore.pg.controlfile import (
    CATALOG_VERSION_NO,
    CONTROL_CRC_OFFSET,
    CONTROL_HEAD,
    PG_CONTROL_FILE_SIZE,
    PG_CONTROL_VERSION,
    CheckPoint,
    ControlFile,
)
from pagestore.pg.rmgr import RmgrId
from pagestore.pg.waldecoder import (
    LONG_PAGE_HEADER,
    PAGE_HEADER,
    WAL_SEGMENT_SIZE,
    XLOG_BLCKSZ,
    XLOG_PAGE_MAGIC,
    XLP_FIRST_IS_CONTRECORD,
    XLP_LONG_HEADER,
    EndOfWal,
    WalStreamDecoder,
)

SYSID = 7_300_000_000_000_000_123
SEG = WAL_SEGMENT_SIZE
DB = 5
HEAP = RelTag(1663, DB, 16384)
UNLOGGED = RelTag(1663, DB, 16390)
SHARED = RelTag(1664, 0, 1262)
EMPTY = RelTag(1663, DB, 16400)
PREPARED_XID = 745
DB_SHUTDOWNED = 1
DB_IN_PRODUCTION = 6


def _page(tag: int) -> bytes:
    """An initialized heap-like page: pd_lower 24, pd_upper = pd_special = 8192."""
    page = bytearray(BLCKSZ)
    struct.pack_into("<QHHHHHHI", page, 0, 0x1_0000_0000 + tag, 0, 0, 24, 8192, 8192,
                     8192 | 4, 0)
    page[100:104] = tag.to_bytes(4, "little")
    return bytes(page)


def _tracked_checkpoint(next_xid: int = 750) -> CheckPoint:
    return CheckPoint(redo=0, this_timeline=1, prev_timeline=1, full_page_writes=True,
                      next_xid=(1 << 32) | next_xid, next_oid=24576, next_multi=3,
                      next_multi_offset=5, oldest_xid=716, oldest_xid_db=1, oldest_multi=1,
                      oldest_multi_db=1, time=1_700_000_000, oldest_commit_ts_xid=0,
                      newest_commit_ts_xid=0, oldest_active_xid=740)


def _control(*, checksums: bool = False) -> bytes:
    buf = bytearray(PG_CONTROL_FILE_SIZE)
    CONTROL_HEAD.pack_into(buf, 0, SYSID, PG_CONTROL_VERSION, CATALOG_VERSION_NO,
                           DB_IN_PRODUCTION, 1_700_000_000, 0x3000060)
    buf[40:128] = _tracked_checkpoint().pack()
    # unloggedLSN, minRecoveryPoint, TLI, backupStart, backupEnd, backupEndRequired,
    # wal_level, wal_log_hints, max_connections, workers, senders, prepared, locks, commit_ts
    CONTROL_RECOVERY.pack_into(buf, CONTROL_RECOVERY_OFFSET, 1000, 0x3001000, 1, 0x3000028,
                               0x3002000, True, 1, False, 100, 8, 10, 7, 64, False)
    struct.pack_into("<I", buf, 252, 1 if checksums else 0)
    struct.pack_into("<I", buf, CONTROL_CRC_OFFSET, crc32c.crc32c(bytes(buf[:CONTROL_CRC_OFFSET])))
    return bytes(buf)


@dataclass
class FakeSource:
    """A PageSource over dicts; every read must be at the backup LSN."""

    lsn: Lsn
    pages: dict[Key, bytes] = field(default_factory=dict)
    images: dict[Key, bytes] = field(default_factory=dict)

    def get_page(self, key: Key, lsn: Lsn) -> bytes | None:
        assert lsn == self.lsn
        return self.pages.get(key)

    def get_image(self, key: Key, lsn: Lsn) -> bytes | None:
        assert lsn == self.lsn
        return self.images.get(key)

    def rel(self, rel: RelTag, nblocks: int) -> None:
        self.images[rel_size_key(rel)] = metadata.encode_nblocks(nblocks)
        for blk in range(nblocks):
            self.pages[rel_block_key(rel, blk)] = _page(rel.relnode * 100 + blk)


def _source(lsn: Lsn, *, checksums: bool = False, next_xid: int = 750) -> FakeSource:
    src = FakeSource(lsn)
    im = src.images
    im[dbdir_key()] = metadata.encode_dbdir({(1664, 0): True, (1663, 1): True,
                                             (1663, DB): True, (1663, 9): False})
    for spc, db in ((1664, 0), (1663, 1), (1663, DB)):
        im[relmap_key(spc, db)] = bytes([db + 1]) * 512
        im[rel_dir_key(spc, db)] = metadata.encode_reldir(set())
    im[rel_dir_key(1664, 0)] = metadata.encode_reldir({(SHARED.relnode, 0)})
    im[rel_dir_key(1663, DB)] = metadata.encode_reldir(
        {(HEAP.relnode, 0), (HEAP.relnode, 1), (UNLOGGED.relnode, 0), (UNLOGGED.relnode, 3),
         (EMPTY.relnode, 0)})
    src.rel(SHARED, 1)
    src.rel(HEAP, 3)
    src.rel(HEAP.with_fork(1), 1)
    src.rel(UNLOGGED.with_fork(3), 1)
    src.rel(EMPTY, 0)
    im[rel_size_key(UNLOGGED)] = metadata.encode_nblocks(0)
    for kind in SlruKind:
        im[slru_dir_key(kind)] = metadata.encode_u32_set({0} if kind else {0, 1})
    for kind, segno, nblocks in ((SlruKind.CLOG, 0, 2), (SlruKind.CLOG, 1, 1),
                                 (SlruKind.MULTIXACT_MEMBERS, 0, 1),
                                 (SlruKind.MULTIXACT_OFFSETS, 0, 1)):
        im[slru_segment_size_key(kind, segno)] = metadata.encode_nblocks(nblocks)
        for blk in range(nblocks):
            page = bytes([kind * 16 + segno * 4 + blk + 1]) * BLCKSZ
            if kind == SlruKind.CLOG:
                page += (123456).to_bytes(8, "big")  # ingest's appended commit timestamp
            src.pages[slru_block_key(kind, segno, blk)] = page
    im[twophase_dir_key()] = metadata.encode_u32_set({PREPARED_XID})
    im[twophase_file_key(PREPARED_XID)] = b"two-phase state" * 3
    im[controlfile_key()] = _control(checksums=checksums)
    im[checkpoint_key()] = _tracked_checkpoint(next_xid).pack()
    return src


def _backup(src: FakeSource, *, full: bool, prev: Lsn | None = None,
            ancestor: Lsn | None = None) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = io.BytesIO()
    write_basebackup(src, out, src.lsn, prev_lsn=prev, full=full, ancestor_lsn=ancestor)
    raw = out.getvalue()
    assert len(raw) % 512 == 0 and raw.endswith(bytes(1024))
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m)
            members.append((m, f.read() if f else b""))
    return members


def _files(members: list[tuple[tarfile.TarInfo, bytes]]) -> dict[str, bytes]:
    return {m.name: data for m, data in members if m.isfile()}


def _wal_stream(files: dict[str, bytes]) -> tuple[int, bytes]:
    """The WAL segments of a backup, concatenated: (LSN of the first byte, bytes)."""
    names = sorted(n for n in files if n.startswith("pg_wal/"))
    assert names
    first = int(names[0][-8:], 16) + (int(names[0][-16:-8], 16) << 8)
    for i, n in enumerate(names):
        assert len(files[n]) == SEG
        assert int(n[-8:], 16) + (int(n[-16:-8], 16) << 8) == first + i
    return first * SEG, b"".join(files[n] for n in names)


# ----------------------------------------------------------------------------- LSN rules

def test_normalize_lsn() -> None:
    assert normalize_lsn(Lsn(SEG * 3)) == SEG * 3 + 40
    assert normalize_lsn(Lsn(SEG * 3 + 8192)) == SEG * 3 + 8192 + 24
    assert normalize_lsn(Lsn(SEG * 3 + 8192 + 200)) == SEG * 3 + 8192 + 200
    assert normalize_lsn(Lsn(SEG * 3 + 8192 + 201)) == SEG * 3 + 8192 + 208


def test_prev_lsn_signal_rules() -> None:
    lsn = Lsn(0x3000100)
    assert signal_file_content(lsn, Lsn(0x30000C8), None) == b"PREV LSN: 0/30000C8"
    assert signal_file_content(lsn, Lsn(0x1_0000_00C8), lsn) == b"PREV LSN: 1/C8"
    assert signal_file_content(lsn, None, lsn) == b"PREV LSN: none"
    assert signal_file_content(lsn, Lsn(0), lsn) == b"PREV LSN: none"
    assert signal_file_content(lsn, None, Lsn(0x2000000)) == b"PREV LSN: invalid"
    assert signal_file_content(lsn, None, None) == b"PREV LSN: invalid"

    files = _files(_backup(_source(lsn), full=False, prev=Lsn(0x30000C8)))
    assert files["neon.signal"] == files["zenith.signal"] == b"PREV LSN: 0/30000C8"
    files = _files(_backup(_source(lsn), full=True, ancestor=lsn))
    assert files["neon.signal"] == files["zenith.signal"] == b"PREV LSN: none"


# ----------------------------------------------------------------------------- the tar

def _expected_order(full: bool) -> list[str]:
    dirs = [f"{d}/" for d in PGDATA_SUBDIRS]
    conf = ["pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf"]
    if full:
        conf.append("postgresql.conf")
    slru = ["pg_xact/0000", "pg_xact/0001", "pg_multixact/members/0000",
            "pg_multixact/offsets/0000"]
    db1 = ["base/1/", "base/1/PG_VERSION", "base/1/pg_filenode.map"]
    db5 = ["base/5/", "base/5/PG_VERSION", "base/5/pg_filenode.map"]
    rels = (["base/5/16384", "base/5/16384_fsm"] if full else []) + [
        "base/5/16390_init", "base/5/16390"] + (["base/5/16400"] if full else [])
    glob = ["PG_VERSION", "global/pg_filenode.map"] + (["global/1262"] if full else [])
    tail = [f"pg_twophase/{PREPARED_XID:08X}", "neon.signal", "zenith.signal",
            "global/pg_control", "pg_wal/000000010000000000000003"]
    return [*dirs, *conf, *slru, *db1, *db5, *rels, *glob, *tail]


@pytest.mark.parametrize("full", [False, True])
def test_entry_order_modes_and_contents(full: bool) -> None:
    lsn = Lsn(0x3000100)
    members = _backup(_source(lsn), full=full, prev=Lsn(0x30000C8))
    names = [m.name + ("/" if m.isdir() else "") for m, _ in members]
    assert names == _expected_order(full)
    for m, data in members:
        assert m.mode == (0o755 if m.isdir() else 0o600), m.name
        assert m.mtime > 1_700_000_000
        assert len(data) == m.size
    files = _files(members)
    assert files["PG_VERSION"] == files["base/5/PG_VERSION"] == b"15"
    hba = files["pg_hba.conf"].decode()
    assert 4700 < len(hba) < 4900
    for line in ("local   all             all                                     trust",
                 "host    all             all             127.0.0.1/32            trust",
                 "host    all             all             ::1/128                 trust",
                 "local   replication     all                                     trust",
                 "host    replication     all             127.0.0.1/32            trust",
                 "host    replication     all             ::1/128                 trust"):
        assert line in hba.splitlines()
    assert files["pg_ident.conf"] == files["postgresql.auto.conf"] == b""
    # SLRU: blocks 0..n, clog pages cut to 8192 bytes
    assert files["pg_xact/0000"] == bytes([1]) * BLCKSZ + bytes([2]) * BLCKSZ
    assert files["pg_xact/0001"] == bytes([5]) * BLCKSZ
    assert files["pg_multixact/offsets/0000"] == bytes([33]) * BLCKSZ
    assert files["base/5/pg_filenode.map"] == bytes([6]) * 512
    assert files["global/pg_filenode.map"] == bytes([1]) * 512
    # the unlogged relation: its init fork, and the same content as its main fork
    assert files["base/5/16390_init"] == files["base/5/16390"] == _page(1639000)
    state = b"two-phase state" * 3
    assert files[f"pg_twophase/{PREPARED_XID:08X}"] == state + struct.pack(
        "<I", crc32c.crc32c(state))
    if full:
        assert files["base/5/16384"] == b"".join(_page(1638400 + b) for b in range(3))
        assert files["base/5/16400"] == b""  # a 0-block relation is an empty file
        assert files["global/1262"] == _page(126200)
        conf = files["postgresql.conf"].decode().splitlines()
        assert "max_prepared_transactions = 7" in conf and "wal_level = replica" in conf


def test_relation_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(basebackup, "RELSEG_SIZE", 2)
    src = _source(Lsn(0x3000100))
    src.rel(HEAP, 5)
    files = _files(_backup(src, full=True))
    assert files["base/5/16384"] == _page(1638400) + _page(1638401)
    assert files["base/5/16384.1"] == _page(1638402) + _page(1638403)
    assert files["base/5/16384.2"] == _page(1638404)
    assert "base/5/16384.3" not in files


def test_missing_page_or_bad_relmap_is_an_error() -> None:
    src = _source(Lsn(0x3000100))
    del src.pages[rel_block_key(HEAP, 1)]
    with pytest.raises(CorruptionError, match="16384 block 1"):
        _backup(src, full=True)
    _backup(src, full=False)  # the basebackup does not read main forks
    src = _source(Lsn(0x3000100))
    src.images[relmap_key(1663, DB)] = bytes(100)
    with pytest.raises(CorruptionError, match="relmap"):
        _backup(src, full=False)
    src = _source(Lsn(0x3000100))
    src.images[dbdir_key()] = metadata.encode_dbdir({(1700, 5): True})
    src.images[relmap_key(1700, 5)] = bytes(512)
    with pytest.raises(BadRequest, match="tablespace 1700"):
        _backup(src, full=False)


# ----------------------------------------------------------------------------- pg_control

def test_basebackup_pg_control_is_neons() -> None:
    lsn = Lsn(0x3000100)
    files = _files(_backup(_source(lsn), full=False))
    raw = files["global/pg_control"]
    assert len(raw) == PG_CONTROL_FILE_SIZE
    cf = ControlFile.parse(raw)  # checks the CRC
    assert cf.state == DB_SHUTDOWNED and cf.checkpoint_lsn == 0
    assert cf.system_identifier == SYSID
    want = _tracked_checkpoint()
    want.redo = lsn
    assert cf.checkpoint == want  # everything else kept, oldestActiveXid too
    assert raw[CONTROL_RECOVERY_OFFSET:CONTROL_CRC_OFFSET] == \
        _control()[CONTROL_RECOVERY_OFFSET:CONTROL_CRC_OFFSET]

    _, _, was_shutdown = basebackup.generate_pg_control(_control(), want.pack(), lsn)
    assert was_shutdown
    _, _, was_shutdown = basebackup.generate_pg_control(_control(), want.pack(), Lsn(lsn + 8))
    assert not was_shutdown


def test_fullbackup_pg_control_points_at_a_shutdown_checkpoint() -> None:
    lsn = Lsn(0x3000100)
    files = _files(_backup(_source(lsn), full=True))
    raw = files["global/pg_control"]
    assert len(raw) == PG_CONTROL_FILE_SIZE and raw[CONTROL_CRC_OFFSET + 4:] == bytes(
        PG_CONTROL_FILE_SIZE - CONTROL_CRC_OFFSET - 4)
    cf = ControlFile.parse(raw)
    assert cf.state == DB_SHUTDOWNED
    assert cf.checkpoint_lsn == cf.checkpoint.redo == lsn
    tracked = _tracked_checkpoint()
    ck = cf.checkpoint
    assert (ck.next_xid, ck.next_oid, ck.next_multi, ck.next_multi_offset, ck.oldest_xid,
            ck.oldest_multi) == (tracked.next_xid, tracked.next_oid, tracked.next_multi,
                                 tracked.next_multi_offset, tracked.oldest_xid,
                                 tracked.oldest_multi)
    assert ck.oldest_active_xid == 0 and ck.this_timeline == ck.prev_timeline == 1
    assert ck.time > 1_700_000_000
    _sysid, _v, _c, _state, ctime, _ckpt = CONTROL_HEAD.unpack_from(raw, 0)
    assert ctime == ck.time
    (unlogged, minrec, minrec_tli, bstart, bend, bend_req, wal_level, *_rest) = \
        CONTROL_RECOVERY.unpack_from(raw, CONTROL_RECOVERY_OFFSET)
    assert (unlogged, minrec, minrec_tli, bstart, bend, bend_req, wal_level) == (
        1000, 0, 0, 0, 0, False, 1)


def test_fullbackup_makes_next_xid_normal() -> None:
    files = _files(_backup(_source(Lsn(0x3000100), next_xid=1), full=True))
    assert ControlFile.parse(files["global/pg_control"]).checkpoint.next_xid == (1 << 32) | 3


# ----------------------------------------------------------------------------- WAL

def _page_header(seg: bytes, page_lsn: int, base: int) -> tuple[int, ...]:
    off = page_lsn - base
    if page_lsn % SEG == 0:
        return tuple(LONG_PAGE_HEADER.unpack_from(seg, off))
    return tuple(PAGE_HEADER.unpack_from(seg, off))


@pytest.mark.parametrize("lsn", [
    SEG * 3 + 0x100,              # inside the segment's first page
    SEG * 3 + 5 * 8192 + 0x1F8,   # inside a later page
    SEG * 3 + 5 * 8192,           # a page boundary: the record goes after the header
    SEG * 3,                      # a segment boundary: after the long header
    SEG * 3 + 5 * 8192 - 64,      # the record crosses into the next page
    SEG * 3 + 5 * 8192 - 8,       # only xl_tot_len fits on the first page
    SEG * 4 - 32,                 # the record crosses into the next segment
])
def test_fullbackup_wal_holds_a_valid_checkpoint_record(lsn: int) -> None:
    prev = Lsn(lsn - 0x58)
    files = _files(_backup(_source(Lsn(lsn)), full=True, prev=prev))
    cf = ControlFile.parse(files["global/pg_control"])
    record_lsn = int(normalize_lsn(Lsn(lsn)))
    assert cf.checkpoint_lsn == cf.checkpoint.redo == record_lsn
    base, wal = _wal_stream(files)
    crosses_segment = (record_lsn + CHECKPOINT_RECORD_LEN) // SEG != record_lsn // SEG
    assert len(wal) == SEG * (2 if crosses_segment else 1)
    assert base == (lsn // SEG) * SEG
    long_hdr = LONG_PAGE_HEADER.unpack_from(wal, 0)
    assert long_hdr[0] == XLOG_PAGE_MAGIC and long_hdr[1] & XLP_LONG_HEADER
    assert long_hdr[3] == base and long_hdr[5:] == (SYSID, SEG, XLOG_BLCKSZ)

    # PostgreSQL reads the checkpoint by random access; we start at the record's page
    page = record_lsn - record_lsn % XLOG_BLCKSZ
    hdr = _page_header(wal, page, base)
    assert hdr[0] == XLOG_PAGE_MAGIC and hdr[3] == page
    if record_lsn == page + (40 if page % SEG == 0 else 24):
        assert not hdr[1] & XLP_FIRST_IS_CONTRECORD  # else "contrecord is requested"
    dec = WalStreamDecoder(Lsn(page), system_id=SYSID, prev_lsn=prev)
    dec.feed(wal[page - base:])
    rec = dec.poll()
    assert rec is not None
    assert rec.lsn == record_lsn
    assert rec.rmid == RmgrId.XLOG and rec.info == 0x00 and rec.xid == 0
    assert rec.header.xl_tot_len == CHECKPOINT_RECORD_LEN == 114
    assert rec.header.xl_prev == prev
    assert not rec.blocks and rec.main_data == cf.checkpoint.pack()
    assert rec.raw[24:26] == bytes([0xFF, 88])
    with pytest.raises(EndOfWal) as end:
        while dec.poll() is not None:
            pass
    assert end.value.lsn == rec.end_lsn
    # a record that does not fit continues after the next header with the exact rem_len
    if rec.end_lsn - rec.end_lsn % XLOG_BLCKSZ != page:
        nxt = page + XLOG_BLCKSZ
        nhdr = _page_header(wal, nxt, base)
        assert nhdr[1] & XLP_FIRST_IS_CONTRECORD and nhdr[3] == nxt
        assert nhdr[4] == record_lsn + CHECKPOINT_RECORD_LEN - page - XLOG_BLCKSZ
        assert bool(nhdr[1] & XLP_LONG_HEADER) == crosses_segment


def test_fullbackup_record_crc_is_checked() -> None:
    lsn = SEG * 3 + 5 * 8192 + 0x1F8
    files = _files(_backup(_source(Lsn(lsn)), full=True))
    base, wal = _wal_stream(files)
    corrupt = bytearray(wal)
    corrupt[lsn - base + 60] ^= 1  # a byte of the CheckPoint body
    dec = WalStreamDecoder(Lsn(lsn - lsn % XLOG_BLCKSZ), system_id=SYSID)
    dec.feed(bytes(corrupt[lsn - lsn % XLOG_BLCKSZ - base:]))
    with pytest.raises(CorruptionError, match="checksum"):
        dec.poll()


@pytest.mark.parametrize("lsn", [SEG * 3 + 0x100, SEG * 3 + 5 * 8192 + 0x1F8,
                                 SEG * 3 + 5 * 8192, SEG * 3])
def test_basebackup_wal_is_neons_fake_continuation(lsn: int) -> None:
    files = _files(_backup(_source(Lsn(lsn)), full=False))
    base, wal = _wal_stream(files)
    assert len(wal) == SEG and base == SEG * 3
    page = lsn - lsn % XLOG_BLCKSZ
    long_hdr = LONG_PAGE_HEADER.unpack_from(wal, 0)
    assert long_hdr[1] & XLP_LONG_HEADER and long_hdr[2] == 1 and long_hdr[5] == SYSID
    hdr = _page_header(wal, page, base)
    page_off = lsn - page
    if page_off:
        hsize = 40 if page == base else 24
        assert hdr[1] & XLP_FIRST_IS_CONTRECORD and hdr[4] == page_off - hsize
    else:
        assert not hdr[1] & XLP_FIRST_IS_CONTRECORD and hdr[4] == 0
    # nonzero bytes only in the headers
    nonzero = [i for i in range(0, SEG, XLOG_BLCKSZ) if any(wal[i:i + XLOG_BLCKSZ])]
    assert nonzero == sorted({0, page - base})
    # the fake continuation ends exactly at lsn; WAL ends there
    dec = WalStreamDecoder(Lsn(page), system_id=SYSID)
    dec.feed(wal[page - base:page - base + 2 * XLOG_BLCKSZ])
    with pytest.raises(EndOfWal) as end:
        dec.poll()
    assert end.value.lsn == normalize_lsn(Lsn(lsn))


def test_checkpoint_wal_rejects_lsn_inside_a_header() -> None:
    with pytest.raises(BadRequest):
        shutdown_checkpoint_wal(SYSID, Lsn(SEG * 3 + 8192 + 8), b"x" * 114, 1)


# ----------------------------------------------------------------------------- checksums

def test_full_backup_sets_page_checksums_when_the_cluster_has_them() -> None:
    lsn = Lsn(0x3000100)
    plain = _files(_backup(_source(lsn), full=True))["base/5/16384"]
    summed = _files(_backup(_source(lsn, checksums=True), full=True))["base/5/16384"]
    assert plain == b"".join(_page(1638400 + b) for b in range(3))
    for blk in range(3):
        page = summed[blk * BLCKSZ:(blk + 1) * BLCKSZ]
        stored = struct.unpack_from("<H", page, 8)[0]
        assert stored == page_checksum(page, blk) != 0
        assert page_checksum(page, blk) != page_checksum(page, blk + 1)
        assert page[:8] + page[10:] == _page(1638400 + blk)[:8] + _page(1638400 + blk)[10:]
    # the basebackup keeps Neon's shape: no checksums
    base = _files(_backup(_source(lsn, checksums=True), full=False))
    assert base["base/5/16390_init"] == _page(1639000)
    # the stored checksum does not feed into the computation
    other = bytearray(_page(7))
    first = page_checksum(other, 0)
    other[8:10] = b"\xff\xff"
    assert page_checksum(other, 0) == first
