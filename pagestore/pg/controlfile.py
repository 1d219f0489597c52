"""pg_control (ControlFileData) and the CheckPoint struct, PostgreSQL 15.

Source of truth: src/include/catalog/pg_control.h; offsets in
shared/reference/pg15-wal-facts.md section 8 (x86-64 / aarch64 layout, little-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c

from pagestore.errors import CorruptionError

# CheckPoint (sizeof 88): redo u64, ThisTimeLineID u32, PrevTimeLineID u32,
# fullPageWrites bool (+7 pad), nextXid u64 (FullTransactionId), nextOid u32, nextMulti u32,
# nextMultiOffset u32, oldestXid u32, oldestXidDB u32, oldestMulti u32, oldestMultiDB u32
# (+4 pad), time i64, oldestCommitTsXid u32, newestCommitTsXid u32, oldestActiveXid u32 (+4 pad)
CHECKPOINT = struct.Struct("<QII?7xQIIIIIII4xqIII4x")
assert CHECKPOINT.size == 88

PG_CONTROL_FILE_SIZE = 8192
PG_CONTROL_VERSION = 1300
CATALOG_VERSION_NO = 202209061
CONTROL_CRC_OFFSET = 288
CHECKPOINT_COPY_OFFSET = 40
# ControlFileData head: system_identifier u64, pg_control_version u32, catalog_version_no u32,
# state i32 (+4 pad), time i64, checkPoint u64
CONTROL_HEAD = struct.Struct("<QIIi4xqQ")

WAL_LOG_HINTS_OFFSET = 176       # bool
DATA_CHECKSUM_VERSION_OFFSET = 252  # u32

FIRST_NORMAL_TRANSACTION_ID = 3


@dataclass(slots=True)
class CheckPoint:
    redo: int
    this_timeline: int
    prev_timeline: int
    full_page_writes: bool
    next_xid: int          # FullTransactionId: epoch << 32 | xid
    next_oid: int
    next_multi: int
    next_multi_offset: int
    oldest_xid: int
    oldest_xid_db: int
    oldest_multi: int
    oldest_multi_db: int
    time: int
    oldest_commit_ts_xid: int
    newest_commit_ts_xid: int
    oldest_active_xid: int

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, offset: int = 0) -> CheckPoint:
        try:
            return cls(*CHECKPOINT.unpack_from(data, offset))
        except struct.error as e:
            raise CorruptionError(f"CheckPoint struct: {e}") from None

    def pack(self) -> bytes:
        return CHECKPOINT.pack(
            self.redo, self.this_timeline, self.prev_timeline, self.full_page_writes,
            self.next_xid, self.next_oid, self.next_multi, self.next_multi_offset,
            self.oldest_xid, self.oldest_xid_db, self.oldest_multi, self.oldest_multi_db,
            self.time, self.oldest_commit_ts_xid, self.newest_commit_ts_xid,
            self.oldest_active_xid)

    def advance_next_xid(self, xid: int) -> bool:
        """AdvanceNextFullTransactionIdPastXid: make nextXid > xid (epoch-aware)."""
        if xid < FIRST_NORMAL_TRANSACTION_ID:
            return False
        next_epoch, next_xid = self.next_xid >> 32, self.next_xid & 0xFFFF_FFFF
        # TransactionIdFollowsOrEquals(xid, next_xid), modulo-2^32 comparison
        if ((xid - next_xid) & 0xFFFF_FFFF) >= 0x8000_0000:
            return False
        new_xid = (xid + 1) & 0xFFFF_FFFF
        epoch = next_epoch + (1 if new_xid < next_xid else 0)
        if new_xid < FIRST_NORMAL_TRANSACTION_ID:
            new_xid = FIRST_NORMAL_TRANSACTION_ID
        self.next_xid = (epoch << 32) | new_xid
        return True


@dataclass(frozen=True, slots=True)
class ControlFile:
    """The fields of pg_control pagestore reads; ``raw`` keeps the whole 8192 bytes."""

    system_identifier: int
    pg_control_version: int
    catalog_version_no: int
    state: int
    checkpoint_lsn: int
    checkpoint: CheckPoint
    raw: bytes

    @property
    def wal_log_hints(self) -> bool:
        return bool(self.raw[WAL_LOG_HINTS_OFFSET])

    @property
    def data_checksums(self) -> bool:
        return bool(struct.unpack_from("<I", self.raw, DATA_CHECKSUM_VERSION_OFFSET)[0])

    @classmethod
    def parse(cls, raw: bytes) -> ControlFile:
        if len(raw) < CONTROL_CRC_OFFSET + 4:
            raise CorruptionError(f"pg_control is {len(raw)} bytes")
        (stored,) = struct.unpack_from("<I", raw, CONTROL_CRC_OFFSET)
        computed = crc32c.crc32c(raw[:CONTROL_CRC_OFFSET])
        if stored != computed:
            raise CorruptionError(f"pg_control checksum mismatch: stored {stored:08X}, "
                                  f"computed {computed:08X}")
        sysid, version, catversion, state, _time, ckpt_lsn = CONTROL_HEAD.unpack_from(raw, 0)
        if version != PG_CONTROL_VERSION:
            raise CorruptionError(f"pg_control version {version}; PostgreSQL 15 writes "
                                  f"{PG_CONTROL_VERSION}")
        return cls(sysid, version, catversion, state, ckpt_lsn,
                   CheckPoint.unpack(raw, CHECKPOINT_COPY_OFFSET), bytes(raw))
