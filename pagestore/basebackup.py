"""Basebackup and fullbackup tar streams, built from any page source at one LSN.

Mirrors Neon's ``pageserver/src/basebackup.rs`` and ``postgres_ffi``'s
``generate_pg_control`` / ``generate_wal_segment``, as summarised in
shared/reference/neon-protocols.md section 3 (entry order, contents, the synthesized
pg_control and WAL segment) and section 4 (the key space read).  The synthesized pg_control
and WAL follow ControlFileData / CheckPoint (src/include/catalog/pg_control.h),
XLogPageHeaderData (src/include/access/xlog_internal.h) and XLogRecord
(src/include/access/xlogrecord.h) of PostgreSQL 15.

Entry order (section 3.2): the 22 PGDATA directories (mode 0755); pg_hba.conf (trust for
local, 127.0.0.1/32 and ::1/128, ``all`` and ``replication``), empty pg_ident.conf and
postgresql.auto.conf; every SLRU segment (clog, members, offsets; segno ascending); per
database (sorted): the relmap files and PG_VERSION, then the relation files (basebackup:
init forks only, each also copied as the main fork; full: every fork, a main fork with an
init fork only through the init path), split into 1 GiB segments, a 0-block relation as an
empty file; pg_twophase/<XID> (the state + its CRC-32C); neon.signal and zenith.signal
(``PREV LSN: X/Y``, ``none`` at the branch point, otherwise ``invalid``); global/pg_control;
the WAL segment.  Files are 0600, mtime now.  The aux files, restart.lsn and
pg_logical/replorigin_checkpoint entries (items 5, 6 and 8) do not exist here: pagestore's
key space keeps no aux files or replication origins.  ``replica`` only suppresses
pg_replslot/* aux files in Neon, so it changes nothing here.  The archive is written
with pagestore.pg.tar's ustar TarWriter (uname/gname "postgres"), not GNU headers.

The two modes differ beyond the relation files, and that is deliberate:

- **basebackup** (``full=False``) keeps Neon's exact shape, for Neon's patched compute:
  pg_control has ``checkPoint = 0``, ``checkPointCopy.redo = normalize(lsn)`` and
  ``state = DB_SHUTDOWNED``; the WAL segment holds only page headers (a long header at the
  segment start and a short one on lsn's page, each with a fake XLP_FIRST_IS_CONTRECORD
  continuation that ends at lsn).  It starts only under Neon's compute, whose neon
  extension sees zenith.signal and skips WAL replay: vanilla PostgreSQL stops at once with
  "control file contains invalid checkpoint location".
- **fullbackup** (``full=True``) is our vanilla-startable variant (no pg_resetwal, no
  Neon code): a real XLOG_CHECKPOINT_SHUTDOWN record is written at R = normalize(lsn),
  and pg_control points at it as a cleanly shut down cluster would.  What PostgreSQL 15
  checks, and how each is met:

  * StartupXLOG: ``XRecOffIsValid(ControlFile->checkPoint)`` -> ``checkPoint = R``, which
    normalize keeps past any page header; state DB_SHUTDOWNED, so no crash recovery and
    no data-directory fsync.
  * InitWalRecovery / ReadCheckpointRecord: the record at R must read back: the segment
    file named by (ThisTimeLineID, segno) exists and is wal_segment_size long; page headers
    pass XLogReaderValidatePageHeader (magic 0xD110, only known xlp_info bits, a long
    header exactly at each segment start with matching sysid/seg_size/blcksz, pageaddr =
    the page's LSN, TLI not decreasing); the record must not sit right after a page header
    flagged XLP_FIRST_IS_CONTRECORD ("contrecord is requested"), so the fake continuation
    is dropped when it would be empty; ValidXLogRecordHeader with randAccess demands
    ``xl_prev < R`` (we store prev_lsn, the start of the record ending at lsn, or 0);
    ValidXLogRecord checks the CRC-32C; rmid XLOG, info CHECKPOINT_SHUTDOWN and
    ``xl_tot_len = 24 + 2 + 88``.  A record that does not fit on R's page continues on the
    next page(s) with XLP_FIRST_IS_CONTRECORD and the exact xlp_rem_len, in a second segment
    file if it crosses a segment boundary.
  * ``checkPoint.redo == R`` (a shutdown checkpoint's redo is its own start; ``redo < R``
    would force recovery, ``redo > R`` PANICs), nextXid must be a normal XID, and the
    record's CheckPoint and pg_control's checkPointCopy are the same bytes (InitWalRecovery
    reads the record, StartupXLOG the copy).  nextXid, nextOid, nextMulti/Offset, oldest*
    come from the tracked checkpoint value at lsn (ingest keeps them at least as high as
    anything in the WAL; nextOid follows XLOG_NEXTOID, which is logged ahead of use);
    oldestActiveXid is 0 as in every shutdown checkpoint; ThisTimeLineID = PrevTimeLineID =
    the tracked timeline.
  * minRecoveryPoint/TLI, backupStartPoint, backupEndPoint are 0 and backupEndRequired
    false, so nothing waits for a backup end; time is now; the CRC-32C is recomputed over
    bytes [0, 288).
  * With data checksums on, every initialized relation page gets its pg_checksum_page
    value (redo never sets it; PostgreSQL would refuse the pages).
  * Vanilla PostgreSQL will not start without postgresql.conf, so full mode also writes
    one (after postgresql.auto.conf) carrying the parameters pg_control records
    (wal_level, wal_log_hints, max_connections, max_worker_processes, max_wal_senders,
    max_prepared_transactions, max_locks_per_transaction, track_commit_timestamp): the
    source cluster's values, which keep prepared transactions restorable and a minimal
    wal_level consistent.  Listen address and port are the caller's to add.

  PostgreSQL then logs "database system was shut down at ...", finds the checkpoint,
  replays nothing and appends new WAL after the record (its xl_prev = R).
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

import crc32c

from pagestore import metadata, reldir
from pagestore.errors import BadRequest, CorruptionError
from pagestore.keys import (
    BLCKSZ,
    DEFAULTTABLESPACE_OID,
    GLOBALTABLESPACE_OID,
    RELSEG_SIZE,
    ForkNumber,
    RelTag,
    SlruKind,
    checkpoint_key,
    controlfile_key,
    dbdir_key,
    rel_block_key,
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
    CHECKPOINT,
    CHECKPOINT_COPY_OFFSET,
    CONTROL_CRC_OFFSET,
    CONTROL_HEAD,
    FIRST_NORMAL_TRANSACTION_ID,
    PG_CONTROL_FILE_SIZE,
    CheckPoint,
    ControlFile,
)
from pagestore.pg.rmgr import RmgrId
from pagestore.pg.tar import TarWriter
from pagestore.pg.waldecoder import (
    LONG_PAGE_HEADER,
    PAGE_HEADER,
    SIZE_OF_LONG_PHD,
    SIZE_OF_SHORT_PHD,
    WAL_SEGMENT_SIZE,
    XLOG_BLCKSZ,
    XLOG_PAGE_MAGIC,
    XLP_FIRST_IS_CONTRECORD,
    XLP_LONG_HEADER,
    maxalign,
    page_header_size,
)
from pagestore.pg.walfiles import segment_file_name
from pagestore.pg.xlogrecord import (
    SIZE_OF_XLOG_RECORD,
    XL_CRC_OFFSET,
    XLOG_RECORD,
    XLR_BLOCK_ID_DATA_SHORT,
    record_crc,
)
from pagestore.redo.bufpage import PD_CHECKSUM_OFF, PD_UPPER_OFF

if TYPE_CHECKING:
    from pagestore.keys import Key
    from pagestore.pg.xlogrecord import DecodedRecord

log = logging.getLogger(__name__)

PG_VERSION = 15
PG_TLI = 1  # Neon always names and stamps its WAL with timeline 1
DB_SHUTDOWNED = 1
XLOG_CHECKPOINT_SHUTDOWN = 0x00
SIZEOF_RELMAPFILE = 512  # PG14/15
DIR_MODE = 0o755
FILE_MODE = 0o600

# initdb.c's subdirs, in Neon's PGDATA_SUBDIRS order (PG15: no pg_wal/summaries)
PGDATA_SUBDIRS = (
    "global", "pg_wal/archive_status", "pg_commit_ts", "pg_dynshmem", "pg_notify",
    "pg_serial", "pg_snapshots", "pg_subtrans", "pg_twophase", "pg_multixact",
    "pg_multixact/members", "pg_multixact/offsets", "base", "base/1", "pg_replslot",
    "pg_tblspc", "pg_stat", "pg_stat_tmp", "pg_xact", "pg_logical", "pg_logical/snapshots",
    "pg_logical/mappings",
)

# XLogRecordDataHeaderShort: id u8 (XLR_BLOCK_ID_DATA_SHORT), data_length u8
DATA_HEADER_SHORT = struct.Struct("<BB")
CHECKPOINT_RECORD_LEN = SIZE_OF_XLOG_RECORD + DATA_HEADER_SHORT.size + CHECKPOINT.size  # 114
CRC_LE = struct.Struct("<I")  # a CRC-32C appended to a file (twophase state)
U16 = struct.Struct("<H")  # pd_upper, pd_checksum

# ControlFileData from offset 128 (after checkPointCopy): unloggedLSN u64,
# minRecoveryPoint u64, minRecoveryPointTLI u32 (+4 pad), backupStartPoint u64,
# backupEndPoint u64, backupEndRequired bool (+3 pad), wal_level i32, wal_log_hints bool
# (+3 pad), MaxConnections i32, max_worker_processes i32, max_wal_senders i32,
# max_prepared_xacts i32, max_locks_per_xact i32, track_commit_timestamp bool
CONTROL_RECOVERY = struct.Struct("<QQI4xQQ?3xi?3xiiiii?")
CONTROL_RECOVERY_OFFSET = CHECKPOINT_COPY_OFFSET + CHECKPOINT.size  # 128
WAL_LEVELS = ("minimal", "replica", "logical")

# storage/checksum_impl.h: FNV-1a in 32 parallel lanes
N_SUMS = 32
FNV_PRIME = 16777619
CHECKSUM_BASE_OFFSETS = (
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2,
    0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C,
    0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979,
    0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
    0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
)
# PGChecksummablePage: the page as BLCKSZ / 4 u32 words, 32 lanes per row
PAGE_WORDS = struct.Struct(f"<{BLCKSZ // 4}I")

_ZEROS = bytes(1 << 16)

# Neon's libs/postgres_ffi/samples/pg_hba.conf: initdb's sample with trust everywhere
PG_HBA = """\
# PostgreSQL Client Authentication Configuration File
# ===================================================
#
# Refer to the "Client Authentication" section in the PostgreSQL
# documentation for a complete description of this file.  A short
# synopsis follows.
#
# This file controls: which hosts are allowed to connect, how clients
# are authenticated, which PostgreSQL user names they can use, which
# databases they can access.  Records take one of these forms:
#
# local         DATABASE  USER  METHOD  [OPTIONS]
# host          DATABASE  USER  ADDRESS  METHOD  [OPTIONS]
# hostssl       DATABASE  USER  ADDRESS  METHOD  [OPTIONS]
# hostnossl     DATABASE  USER  ADDRESS  METHOD  [OPTIONS]
# hostgssenc    DATABASE  USER  ADDRESS  METHOD  [OPTIONS]
# hostnogssenc  DATABASE  USER  ADDRESS  METHOD  [OPTIONS]
#
# (The uppercase items must be replaced by actual values.)
#
# The first field is the connection type:
# - "local" is a Unix-domain socket
# - "host" is a TCP/IP socket (encrypted or not)
# - "hostssl" is a TCP/IP socket that is SSL-encrypted
# - "hostnossl" is a TCP/IP socket that is not SSL-encrypted
# - "hostgssenc" is a TCP/IP socket that is GSSAPI-encrypted
# - "hostnogssenc" is a TCP/IP socket that is not GSSAPI-encrypted
#
# DATABASE can be "all", "sameuser", "samerole", "replication", a
# database name, or a comma-separated list thereof. The "all"
# keyword does not match "replication". Access to replication
# must be enabled in a separate record (see example below).
#
# USER can be "all", a user name, a group name prefixed with "+", or a
# comma-separated list thereof.  In both the DATABASE and USER fields
# you can also write a file name prefixed with "@" to include names
# from a separate file.
#
# ADDRESS specifies the set of hosts the record matches.  It can be a
# host name, or it is made up of an IP address and a CIDR mask that is
# an integer (between 0 and 32 (IPv4) or 128 (IPv6) inclusive) that
# specifies the number of significant bits in the mask.  A host name
# that starts with a dot (.) matches a suffix of the actual host name.
# Alternatively, you can write an IP address and netmask in separate
# columns to specify the set of hosts.  Instead of a CIDR-address, you
# can write "samehost" to match any of the server's own IP addresses,
# or "samenet" to match any address in any subnet that the server is
# directly connected to.
#
# METHOD can be "trust", "reject", "md5", "password", "scram-sha-256",
# "gss", "sspi", "ident", "peer", "pam", "ldap", "radius" or "cert".
# Note that "password" sends passwords in clear text; "md5" or
# "scram-sha-256" are preferred since they send encrypted passwords.
#
# OPTIONS are a set of options for the authentication in the format
# NAME=VALUE.  The available options depend on the different
# authentication methods -- refer to the "Client Authentication"
# section in the documentation for a list of which options are
# available for which authentication methods.
#
# Database and user names containing spaces, commas, quotes and other
# special characters must be quoted.  Quoting one of the keywords
# "all", "sameuser", "samerole" or "replication" makes the name lose
# its special character, and just match a database or username with
# that name.
#
# This file is read on server startup and when the server receives a
# SIGHUP signal.  If you edit the file on a running system, you have to
# SIGHUP the server for the changes to take effect, run "pg_ctl reload",
# or execute "SELECT pg_reload_conf()".
#
# Put your actual configuration here
# ----------------------------------
#
# If you want to allow non-local connections, you need to add more
# "host" records.  In that case you will also need to make PostgreSQL
# listen on a non-local interface via the listen_addresses
# configuration parameter, or via the -i or -h command line switches.

# CAUTION: Configuring the system for local "trust" authentication
# allows any local user to connect as any PostgreSQL user, including
# the database superuser.  If you do not trust all your local users,
# use another authentication method.


# TYPE  DATABASE        USER            ADDRESS                 METHOD

# "local" is for Unix domain socket connections only
local   all             all                                     trust
# IPv4 local connections:
host    all             all             127.0.0.1/32            trust
# IPv6 local connections:
host    all             all             ::1/128                 trust
# Allow replication connections from localhost, by a user with the
# replication privilege.
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
host    replication     all             ::1/128                 trust
"""


class PageSource(Protocol):
    """Where pages come from: a timeline (OfflineTimeline, the pageread service ...)."""

    def get_page(self, key: Key, lsn: Lsn) -> bytes | None:
        """A relation or SLRU page as of ``lsn``; None if the key has no version."""

    def get_image(self, key: Key, lsn: Lsn) -> bytes | None:
        """A metadata value as of ``lsn``; None if absent."""


# ----------------------------------------------------------------------------- LSNs

def normalize_lsn(lsn: int) -> Lsn:
    """Neon's normalize_lsn: where the first record at ``lsn`` can start.

    At a page boundary, past the page header (40 at a segment start, 24 otherwise);
    elsewhere rounded up to 8.  (Rounding that lands on a page boundary also skips the
    header; record end LSNs are 8-aligned, so for them this is Neon's function.)
    """
    pos = maxalign(int(lsn))
    if pos % XLOG_BLCKSZ == 0:
        pos += page_header_size(pos)
    return Lsn(pos)


def signal_file_content(lsn: Lsn, prev_lsn: Lsn | None, ancestor_lsn: Lsn | None) -> bytes:
    """neon.signal / zenith.signal: ``PREV LSN: X/Y``, or ``none`` at the branch point
    (prev unknown and lsn is the ancestor LSN), otherwise ``invalid``.  No newline."""
    if prev_lsn:
        return f"PREV LSN: {Lsn(prev_lsn)}".encode()
    if ancestor_lsn is not None and ancestor_lsn == lsn:
        return b"PREV LSN: none"
    return b"PREV LSN: invalid"


# ----------------------------------------------------------------------------- pg_control

def _finish_control(buf: bytearray) -> bytes:
    """Store the CRC-32C of bytes [0, 288) at 288; zero-pad to PG_CONTROL_FILE_SIZE."""
    del buf[CONTROL_CRC_OFFSET:]
    buf += CRC_LE.pack(crc32c.crc32c(bytes(buf)))
    buf += bytes(PG_CONTROL_FILE_SIZE - len(buf))
    return bytes(buf)


def _set_control_head(buf: bytearray, *, state: int, time_: int | None, checkpoint_lsn: int) -> None:
    sysid, version, catversion, _state, old_time, _ckpt = CONTROL_HEAD.unpack_from(buf, 0)
    CONTROL_HEAD.pack_into(buf, 0, sysid, version, catversion, state,
                           old_time if time_ is None else time_, checkpoint_lsn)


def generate_pg_control(control: bytes, checkpoint: bytes, lsn: Lsn) -> tuple[bytes, int, bool]:
    """Neon's generate_pg_control: (pg_control bytes, system_identifier, was_shutdown).

    was_shutdown: the tracked checkpoint's redo (the end of a shutdown checkpoint record,
    Neon's convention) equals lsn.  Then redo = normalize(lsn), checkPoint = 0,
    checkPointCopy = the checkpoint, state = DB_SHUTDOWNED; all else is kept.
    """
    cf = ControlFile.parse(control)
    ckpt = CheckPoint.unpack(checkpoint)
    was_shutdown = ckpt.redo == lsn
    ckpt.redo = normalize_lsn(lsn)
    buf = bytearray(cf.raw)
    _set_control_head(buf, state=DB_SHUTDOWNED, time_=None, checkpoint_lsn=0)
    buf[CHECKPOINT_COPY_OFFSET:CHECKPOINT_COPY_OFFSET + CHECKPOINT.size] = ckpt.pack()
    return _finish_control(buf), cf.system_identifier, was_shutdown


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """The parameters pg_control records (CheckRequiredParameterValues' list)."""

    wal_level: int
    wal_log_hints: bool
    max_connections: int
    max_worker_processes: int
    max_wal_senders: int
    max_prepared_xacts: int
    max_locks_per_xact: int
    track_commit_timestamp: bool

    @classmethod
    def from_control(cls, raw: bytes) -> ControlSettings:
        (_unlogged, _minrec, _minrec_tli, _bstart, _bend, _bend_req, wal_level, hints,
         max_conn, max_workers, max_senders, max_prepared, max_locks,
         commit_ts) = CONTROL_RECOVERY.unpack_from(raw, CONTROL_RECOVERY_OFFSET)
        return cls(wal_level, hints, max_conn, max_workers, max_senders, max_prepared,
                   max_locks, commit_ts)

    def postgresql_conf(self) -> bytes:
        def on_off(flag: bool) -> str:
            return "on" if flag else "off"

        level = WAL_LEVELS[self.wal_level] if 0 <= self.wal_level < len(WAL_LEVELS) \
            else "replica"
        lines = [
            "# Written by pagestore's full backup: vanilla PostgreSQL needs a postgresql.conf.",
            "# The parameters the source cluster recorded in pg_control:",
            f"wal_level = {level}",
            f"wal_log_hints = {on_off(self.wal_log_hints)}",
            f"max_connections = {self.max_connections}",
            f"max_worker_processes = {self.max_worker_processes}",
            f"max_wal_senders = {self.max_wal_senders}",
            f"max_prepared_transactions = {self.max_prepared_xacts}",
            f"max_locks_per_transaction = {self.max_locks_per_xact}",
            f"track_commit_timestamp = {on_off(self.track_commit_timestamp)}",
        ]
        return ("\n".join(lines) + "\n").encode()


def shutdown_checkpoint(tracked: CheckPoint, record_lsn: Lsn, *, now: int) -> CheckPoint:
    """The CheckPoint a clean shutdown at ``record_lsn`` would log, from the tracked one."""
    tli = tracked.this_timeline or PG_TLI
    next_xid = tracked.next_xid
    if next_xid & 0xFFFF_FFFF < FIRST_NORMAL_TRANSACTION_ID:
        next_xid = (next_xid & ~0xFFFF_FFFF) | FIRST_NORMAL_TRANSACTION_ID
    return CheckPoint(
        redo=int(record_lsn), this_timeline=tli, prev_timeline=tli,
        full_page_writes=tracked.full_page_writes, next_xid=next_xid,
        next_oid=tracked.next_oid, next_multi=tracked.next_multi or 1,
        next_multi_offset=tracked.next_multi_offset, oldest_xid=tracked.oldest_xid,
        oldest_xid_db=tracked.oldest_xid_db, oldest_multi=tracked.oldest_multi or 1,
        oldest_multi_db=tracked.oldest_multi_db, time=now,
        oldest_commit_ts_xid=tracked.oldest_commit_ts_xid,
        newest_commit_ts_xid=tracked.newest_commit_ts_xid, oldest_active_xid=0)


def vanilla_pg_control(control: bytes, ckpt: CheckPoint, *, now: int) -> bytes:
    """pg_control of a cluster cleanly shut down at the checkpoint record ``ckpt.redo``."""
    buf = bytearray(ControlFile.parse(control).raw)
    _set_control_head(buf, state=DB_SHUTDOWNED, time_=now, checkpoint_lsn=ckpt.redo)
    buf[CHECKPOINT_COPY_OFFSET:CHECKPOINT_COPY_OFFSET + CHECKPOINT.size] = ckpt.pack()
    (unlogged, _minrec, _minrec_tli, _bstart, _bend, _bend_req,
     *settings) = CONTROL_RECOVERY.unpack_from(buf, CONTROL_RECOVERY_OFFSET)
    CONTROL_RECOVERY.pack_into(buf, CONTROL_RECOVERY_OFFSET, unlogged, 0, 0, 0, 0, False,
                               *settings)
    return _finish_control(buf)


# ----------------------------------------------------------------------------- WAL

def checkpoint_record(ckpt: CheckPoint, xl_prev: int) -> bytes:
    """An XLOG_CHECKPOINT_SHUTDOWN record: header, short main-data header, CheckPoint."""
    body = DATA_HEADER_SHORT.pack(XLR_BLOCK_ID_DATA_SHORT, CHECKPOINT.size) + ckpt.pack()
    raw = bytearray(XLOG_RECORD.pack(CHECKPOINT_RECORD_LEN, 0, xl_prev,
                                     XLOG_CHECKPOINT_SHUTDOWN, RmgrId.XLOG, 0) + body)
    CRC_LE.pack_into(raw, XL_CRC_OFFSET, record_crc(raw))
    return bytes(raw)


def is_backup_checkpoint(rec: DecodedRecord, lsn: Lsn) -> bool:
    """Whether ``rec`` is the record a full backup at ``lsn`` starts its WAL with (what a
    PostgreSQL started from it streams first): a shutdown checkpoint at normalize(lsn)
    whose redo is itself."""
    return (rec.rmid == RmgrId.XLOG and rec.rmgr_info == XLOG_CHECKPOINT_SHUTDOWN
            and rec.lsn == normalize_lsn(lsn) and len(rec.main_data) >= 8
            and CheckPoint.unpack(rec.main_data).redo == rec.lsn)


@dataclass(frozen=True, slots=True)
class WalSegment:
    """A synthesized segment file: zeros except ``patches`` (offset, bytes), sorted."""

    name: str
    segno: int
    patches: tuple[tuple[int, bytes], ...]
    size: int = WAL_SEGMENT_SIZE

    def to_bytes(self) -> bytes:
        buf = bytearray(self.size)
        for off, data in self.patches:
            buf[off:off + len(data)] = data
        return bytes(buf)


def _long_header(pageaddr: int, info: int, rem_len: int, tli: int, sysid: int) -> bytes:
    return LONG_PAGE_HEADER.pack(XLOG_PAGE_MAGIC, XLP_LONG_HEADER | info, tli, pageaddr,
                                 rem_len, sysid, WAL_SEGMENT_SIZE, XLOG_BLCKSZ)


def _short_header(pageaddr: int, info: int, rem_len: int, tli: int) -> bytes:
    return PAGE_HEADER.pack(XLOG_PAGE_MAGIC, info, tli, pageaddr, rem_len)


def _headers(segno: int, system_id: int, lsn: int, tli: int, *,
             keep_empty_contrecord: bool) -> list[tuple[int, bytes]]:
    """Neon's generate_wal_segment headers: the long header at the segment start and a
    short one on lsn's page, each with a fake continuation ending at lsn."""
    seg_start = segno * WAL_SEGMENT_SIZE
    seg_off = lsn - seg_start
    page_off = lsn % XLOG_BLCKSZ
    patches: list[tuple[int, bytes]] = []
    if seg_off < XLOG_BLCKSZ:
        rem = seg_off - SIZE_OF_LONG_PHD if seg_off > 0 else 0
        flag = XLP_FIRST_IS_CONTRECORD if seg_off > 0 and (rem or keep_empty_contrecord) else 0
        patches.append((0, _long_header(seg_start, flag, rem if flag else 0, tli, system_id)))
        return patches
    patches.append((0, _long_header(seg_start, 0, 0, tli, system_id)))
    rem = page_off - SIZE_OF_SHORT_PHD if page_off > 0 else 0
    flag = XLP_FIRST_IS_CONTRECORD if page_off > 0 and (rem or keep_empty_contrecord) else 0
    patches.append((seg_off - page_off, _short_header(lsn - page_off, flag,
                                                      rem if flag else 0, tli)))
    return patches


def generate_wal_segment(segno: int, system_id: int, lsn: Lsn) -> WalSegment:
    """Neon's generate_wal_segment: page headers only (timeline 1)."""
    seg_off = lsn - segno * WAL_SEGMENT_SIZE
    if not 0 <= seg_off < WAL_SEGMENT_SIZE:
        raise ValueError(f"LSN {lsn} is not in WAL segment {segno}")
    if 0 < seg_off % XLOG_BLCKSZ < page_header_size(lsn - lsn % XLOG_BLCKSZ):
        raise BadRequest(f"LSN {lsn} lies inside a WAL page header")
    return WalSegment(segment_file_name(PG_TLI, segno), segno,
                      tuple(_headers(segno, system_id, int(lsn), PG_TLI,
                                     keep_empty_contrecord=True)))


def shutdown_checkpoint_wal(system_id: int, lsn: Lsn, record: bytes, tli: int) -> list[WalSegment]:
    """The segment(s) holding ``record`` at normalize(lsn), with valid page headers.

    lsn's page keeps Neon's fake continuation up to lsn (omitted when empty, as PostgreSQL
    rejects a record right after a header flagged XLP_FIRST_IS_CONTRECORD); a record that
    crosses into the next page continues after its header, flagged with the exact
    xlp_rem_len, in the next segment file if the page starts one.
    """
    pos = int(normalize_lsn(lsn))
    if 0 < lsn % XLOG_BLCKSZ < page_header_size(lsn - lsn % XLOG_BLCKSZ):
        raise BadRequest(f"LSN {lsn} lies inside a WAL page header")
    segno = pos // WAL_SEGMENT_SIZE
    page = pos - pos % XLOG_BLCKSZ
    # The fake continuation is on lsn's page; if rounding moved past it, none is needed.
    head = int(lsn) if lsn - lsn % XLOG_BLCKSZ == page else page
    segments: dict[int, list[tuple[int, bytes]]] = {
        segno: _headers(segno, system_id, head, tli, keep_empty_contrecord=False)}
    rest = memoryview(record)
    while True:
        page_end = pos - pos % XLOG_BLCKSZ + XLOG_BLCKSZ
        take = min(len(rest), page_end - pos)
        segments.setdefault(pos // WAL_SEGMENT_SIZE, []).append(
            (pos % WAL_SEGMENT_SIZE, bytes(rest[:take])))
        rest = rest[take:]
        if not rest:
            break
        pos = page_end
        if pos % WAL_SEGMENT_SIZE == 0:
            header = _long_header(pos, XLP_FIRST_IS_CONTRECORD, len(rest), tli, system_id)
        else:
            header = _short_header(pos, XLP_FIRST_IS_CONTRECORD, len(rest), tli)
        segments.setdefault(pos // WAL_SEGMENT_SIZE, []).append(
            (pos % WAL_SEGMENT_SIZE, header))
        pos += len(header)
    return [WalSegment(segment_file_name(tli, s), s, tuple(sorted(p, key=lambda x: x[0])))
            for s, p in sorted(segments.items())]


# ----------------------------------------------------------------------------- pages

def page_checksum(page: bytes | bytearray, blkno: int) -> int:
    """pg_checksum_page: the pd_checksum of an initialized page at block ``blkno``."""
    words = list(PAGE_WORDS.unpack(page))
    words[PD_CHECKSUM_OFF // 4] &= 0xFFFF_0000  # pd_checksum is the low half (LE)
    result = 0
    prime = FNV_PRIME
    for lane in range(N_SUMS):
        s = CHECKSUM_BASE_OFFSETS[lane]
        for v in words[lane::N_SUMS]:
            tmp = s ^ v
            s = ((tmp * prime) & 0xFFFF_FFFF) ^ (tmp >> 17)
        for _ in range(2):
            s = ((s * prime) & 0xFFFF_FFFF) ^ (s >> 17)
        result ^= s
    return ((result ^ blkno) % 65535) + 1


def set_page_checksum(page: bytes, blkno: int) -> bytes:
    """The page with pd_checksum set (PageSetChecksumCopy); new pages are left alone."""
    if U16.unpack_from(page, PD_UPPER_OFF)[0] == 0:
        return page
    out = bytearray(page)
    U16.pack_into(out, PD_CHECKSUM_OFF, page_checksum(out, blkno))
    return bytes(out)


def rel_segment_path(rel: RelTag, segno: int) -> str:
    """The file of one 1 GiB segment of a relation fork (relpath plus ``.segno``)."""
    if rel.spcnode == GLOBALTABLESPACE_OID:
        base = f"global/{rel.relnode}"
    elif rel.spcnode == DEFAULTTABLESPACE_OID:
        base = f"base/{rel.dbnode}/{rel.relnode}"
    else:
        raise BadRequest(f"relation {rel} is in tablespace {rel.spcnode}; basebackup "
                         "supports only pg_default and pg_global")
    suffix = ForkNumber(rel.forknum).suffix
    if suffix:
        base += f"_{suffix}"
    return f"{base}.{segno}" if segno else base


# ----------------------------------------------------------------------------- the tar

@dataclass(slots=True)
class _Backup:
    src: PageSource
    tar: TarWriter
    lsn: Lsn
    full: bool
    mtime: int
    checksums: bool

    def image(self, key: Key) -> bytes | None:
        value = self.src.get_image(key, self.lsn)
        return value if value else None

    def page(self, key: Key, what: str) -> bytes:
        page = self.src.get_page(key, self.lsn)
        if page is None:
            raise CorruptionError(f"basebackup at {self.lsn}: {what} (key {key}) has no version")
        return page

    def add_file(self, name: str, data: bytes) -> None:
        self.tar.add_file(name, data, mode=FILE_MODE, mtime=self.mtime)

    def add_dir(self, name: str) -> None:
        self.tar.add_directory(name, mode=DIR_MODE, mtime=self.mtime)

    # -------------------------------------------------------------- SLRU
    def slru_segments(self) -> None:
        for kind in SlruKind:
            raw = self.image(slru_dir_key(kind))
            segnos = metadata.decode_u32_set(raw, "SLRU directory") if raw else set()
            for segno in sorted(segnos):
                size = self.image(slru_segment_size_key(kind, segno))
                nblocks = metadata.decode_nblocks(size) if size else 0
                name = f"{kind.directory}/{segno:04X}"
                self.tar.begin_file(name, nblocks * BLCKSZ, mode=FILE_MODE, mtime=self.mtime)
                for blk in range(nblocks):
                    page = self.page(slru_block_key(kind, segno, blk), f"{name} block {blk}")
                    if len(page) not in (BLCKSZ, BLCKSZ + 8):
                        raise CorruptionError(f"{name} block {blk} is {len(page)} bytes")
                    self.tar.write(page[:BLCKSZ])
                self.tar.end_file()

    # -------------------------------------------------------------- databases
    def databases(self, pg_version: bytes) -> None:
        raw = self.image(dbdir_key())
        dbs = metadata.decode_dbdir(raw) if raw else {}
        for (spc, db), has_relmap in sorted(dbs.items()):
            rels = self.rels(spc, db)
            if not self.dbdir(spc, db, has_relmap, rels, pg_version):
                continue
            for rel in rels:
                if rel.forknum == ForkNumber.INIT:
                    self.rel_file(rel, rel)
                    self.rel_file(rel, rel.with_fork(ForkNumber.MAIN))
                elif self.full:
                    if rel.forknum == ForkNumber.MAIN and rel.with_fork(ForkNumber.INIT) in rels:
                        continue  # written through the init fork
                    self.rel_file(rel, rel)

    def rels(self, spc: int, db: int) -> list[RelTag]:
        entries = reldir.read(self.image, spc, db).entries()
        return [RelTag(spc, db, relnode, fork) for relnode, fork in entries]

    def dbdir(self, spc: int, db: int, has_relmap: bool, rels: list[RelTag],
              pg_version: bytes) -> bool:
        relmap: bytes | None = None
        if has_relmap:
            relmap = self.image(relmap_key(spc, db))
            if relmap is None or len(relmap) != SIZEOF_RELMAPFILE:
                raise CorruptionError(
                    f"relmap of database {spc}/{db} at {self.lsn} is "
                    f"{len(relmap) if relmap else 0} bytes, expected {SIZEOF_RELMAPFILE}")
        if spc == GLOBALTABLESPACE_OID:
            self.add_file("PG_VERSION", pg_version)
            if relmap is not None:
                self.add_file("global/pg_filenode.map", relmap)
            else:
                log.warning("basebackup at %s: global/pg_filenode.map is missing", self.lsn)
            return True
        if relmap is None and not rels:
            return False  # an empty leftover directory entry (Neon skips it too)
        if spc != DEFAULTTABLESPACE_OID:
            raise BadRequest(f"database {db} is in tablespace {spc}; basebackup supports "
                             "only pg_default and pg_global")
        self.add_dir(f"base/{db}")
        if relmap is not None:
            self.add_file(f"base/{db}/PG_VERSION", pg_version)
            self.add_file(f"base/{db}/pg_filenode.map", relmap)
        return True

    def rel_file(self, src: RelTag, dst: RelTag) -> None:
        """Write ``src``'s blocks as ``dst``'s files, one per RELSEG_SIZE blocks."""
        raw = self.image(rel_size_key(src))
        if raw is None:
            raise CorruptionError(f"relation {src} is listed but has no size at {self.lsn}")
        nblocks = metadata.decode_nblocks(raw)
        if nblocks == 0:
            self.add_file(rel_segment_path(dst, 0), b"")
            return
        for segno, start in enumerate(range(0, nblocks, RELSEG_SIZE)):
            end = min(start + RELSEG_SIZE, nblocks)
            self.tar.begin_file(rel_segment_path(dst, segno), (end - start) * BLCKSZ,
                                mode=FILE_MODE, mtime=self.mtime)
            for blk in range(start, end):
                page = self.page(rel_block_key(src, blk), f"relation {src} block {blk}")
                if len(page) != BLCKSZ:
                    raise CorruptionError(f"relation {src} block {blk} is {len(page)} bytes")
                self.tar.write(set_page_checksum(page, blk) if self.checksums else page)
            self.tar.end_file()

    # -------------------------------------------------------------- two-phase
    def twophase(self) -> None:
        raw = self.image(twophase_dir_key())
        for xid in sorted(metadata.decode_u32_set(raw, "TwoPhase directory") if raw else ()):
            state = self.image(twophase_file_key(xid))
            if state is None:
                raise CorruptionError(f"two-phase state of XID {xid} is listed but missing "
                                      f"at {self.lsn}")
            self.add_file(f"pg_twophase/{xid:08X}", state + CRC_LE.pack(crc32c.crc32c(state)))

    def wal_segment(self, seg: WalSegment) -> None:
        self.tar.begin_file(f"pg_wal/{seg.name}", seg.size, mode=FILE_MODE, mtime=self.mtime)
        pos = 0
        for off, data in seg.patches:
            _write_zeros(self.tar, off - pos)
            self.tar.write(data)
            pos = off + len(data)
        _write_zeros(self.tar, seg.size - pos)
        self.tar.end_file()


def _write_zeros(tar: TarWriter, n: int) -> None:
    while n > 0:
        chunk = min(n, len(_ZEROS))
        tar.write(_ZEROS[:chunk] if chunk < len(_ZEROS) else _ZEROS)
        n -= chunk


def write_basebackup(src: PageSource, out: BinaryIO, lsn: Lsn, *, prev_lsn: Lsn | None,
                     full: bool, replica: bool = False, ancestor_lsn: Lsn | None = None,
                     pg_version: int = 15) -> None:
    """Write the basebackup (``full=False``) or fullbackup tar of ``src`` at ``lsn``.

    ``prev_lsn`` is the start of the record that ends at ``lsn`` when known (section 3.1
    resolves it), else None; it goes into neon.signal and, in full mode, into the
    checkpoint record's xl_prev.  ``ancestor_lsn`` is the timeline's branch point.  The
    archive is streamed: one page in memory at a time (plus one SLRU or WAL patch).
    """
    if pg_version != PG_VERSION:
        raise BadRequest(f"basebackup supports PostgreSQL {PG_VERSION}, not {pg_version}")
    now = int(time.time())
    control_raw = src.get_image(controlfile_key(), lsn)
    checkpoint_raw = src.get_image(checkpoint_key(), lsn)
    if not control_raw or not checkpoint_raw:
        raise CorruptionError(f"basebackup at {lsn}: the timeline has no "
                              f"{'control file' if not control_raw else 'checkpoint'} value")
    control = ControlFile.parse(control_raw)
    segments: list[WalSegment]
    if full:
        record_lsn = normalize_lsn(lsn)
        ckpt = shutdown_checkpoint(CheckPoint.unpack(checkpoint_raw), record_lsn, now=now)
        xl_prev = int(prev_lsn) if prev_lsn and prev_lsn < record_lsn else 0
        pg_control = vanilla_pg_control(control_raw, ckpt, now=now)
        segments = shutdown_checkpoint_wal(control.system_identifier, lsn,
                                           checkpoint_record(ckpt, xl_prev), ckpt.this_timeline)
    else:
        pg_control, sysid, _was_shutdown = generate_pg_control(control_raw, checkpoint_raw, lsn)
        segments = [generate_wal_segment(lsn // WAL_SEGMENT_SIZE, sysid, lsn)]
    log.info("basebackup lsn=%s prev_lsn=%s full=%s replica=%s", lsn, prev_lsn, full, replica)

    b = _Backup(src, TarWriter(out), lsn, full, now, full and control.data_checksums)
    for d in PGDATA_SUBDIRS:
        b.add_dir(d)
    b.add_file("pg_hba.conf", PG_HBA.encode())
    b.add_file("pg_ident.conf", b"")
    b.add_file("postgresql.auto.conf", b"")
    if full:
        b.add_file("postgresql.conf", ControlSettings.from_control(control_raw).postgresql_conf())
    b.slru_segments()
    b.databases(str(pg_version).encode())
    b.twophase()
    signal = signal_file_content(lsn, prev_lsn, ancestor_lsn)
    for name in ("neon.signal", "zenith.signal"):
        b.add_file(name, signal)
    b.add_file("global/pg_control", pg_control)
    for seg in segments:
        b.wal_segment(seg)
    b.tar.close()

