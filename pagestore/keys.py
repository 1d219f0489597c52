"""The key space: RelTag, SlruKind and the 18-byte Key, following Neon's layout.

Source of truth: Neon's libs/pageserver_api/src/key.rs and pgdatadir_mapping.rs, as
summarised in shared/reference/neon-protocols.md section 4.  A key has six fields,
(field1 u8, field2 u32, field3 u32, field4 u32, field5 u8, field6 u32), ordered
lexicographically; its 18-byte big-endian encoding sorts the same way, so layer files
and indexes compare keys as bytes.

    kind                f1  f2    f3   f4      f5    f6
    DbDir               00  0     0    0       0     0
    Relmap file         00  spc   db   0       0     0
    RelDir              00  spc   db   0       0     1
    Rel block           00  spc   db   rel     fork  blkno
    Rel size            00  spc   db   rel     fork  FFFFFFFF
    SLRU dir            01  kind  0    0       0     0
    SLRU block          01  kind  1    segno   0     blkno
    SLRU segment size   01  kind  1    segno   0     FFFFFFFF
    TwoPhase dir        02  0     0    0       0     0
    TwoPhase file       02  0     0    0       0     xid
    Control file        03  0     0    0       0     0
    Checkpoint          03  0     0    0       0     1
    Commit timestamp    03  0     0    0       0     3

Rules: relnode 0 is never a relation (it marks the relmap and RelDir keys); field1 stays
below 0x80 for every real key, so ``Key.MAX`` (all bits set) is an exclusive upper bound.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

KEY_SIZE = 18
# field1 u8, field2 u32, field3 u32, field4 u32, field5 u8, field6 u32 (big-endian)
KEY_STRUCT = struct.Struct(">BIIIBI")

BLCKSZ = 8192
RELSEG_SIZE = 131072  # blocks per 1 GiB segment file
SLRU_PAGES_PER_SEGMENT = 32

DEFAULTTABLESPACE_OID = 1663
GLOBALTABLESPACE_OID = 1664

REL_SIZE_FIELD6 = 0xFFFF_FFFF


class ForkNumber(enum.IntEnum):
    """PostgreSQL's ForkNumber (src/include/common/relpath.h)."""

    MAIN = 0
    FSM = 1
    VISIBILITYMAP = 2
    INIT = 3

    @property
    def suffix(self) -> str:
        """The file name suffix and pg_waldump's fork label: '', 'fsm', 'vm', 'init'."""
        return ("", "fsm", "vm", "init")[self]

    @property
    def label(self) -> str:
        return ("main", "fsm", "vm", "init")[self]


class SlruKind(enum.IntEnum):
    """Neon's SlruKind numbering (also the pagestream and key field2 value)."""

    CLOG = 0
    MULTIXACT_MEMBERS = 1
    MULTIXACT_OFFSETS = 2

    @property
    def directory(self) -> str:
        return ("pg_xact", "pg_multixact/members", "pg_multixact/offsets")[self]


@dataclass(frozen=True, slots=True, order=True)
class RelTag:
    """A relation fork: RelFileNode (spcnode, dbnode, relnode) plus a fork number."""

    spcnode: int
    dbnode: int
    relnode: int
    forknum: int = ForkNumber.MAIN

    def __str__(self) -> str:
        fork = ForkNumber(self.forknum).suffix if 0 <= self.forknum <= 3 else str(self.forknum)
        base = f"{self.spcnode}/{self.dbnode}/{self.relnode}"
        return f"{base}_{fork}" if fork else base

    def with_fork(self, forknum: int) -> RelTag:
        return RelTag(self.spcnode, self.dbnode, self.relnode, forknum)


@dataclass(frozen=True, slots=True, order=True)
class Key:
    """An 18-byte key; field order is sort order."""

    field1: int
    field2: int
    field3: int
    field4: int
    field5: int
    field6: int

    def to_bytes(self) -> bytes:
        return KEY_STRUCT.pack(self.field1, self.field2, self.field3, self.field4,
                               self.field5, self.field6)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Key:
        if len(data) != KEY_SIZE:
            raise ValueError(f"a key is {KEY_SIZE} bytes, got {len(data)}")
        return cls(*KEY_STRUCT.unpack(data))

    def __str__(self) -> str:
        return self.to_bytes().hex().upper()

    # ---------------------------------------------------------------- classification
    def is_rel_block(self) -> bool:
        return self.field1 == 0x00 and self.field4 != 0 and self.field6 != REL_SIZE_FIELD6

    def is_rel_size(self) -> bool:
        return self.field1 == 0x00 and self.field4 != 0 and self.field6 == REL_SIZE_FIELD6

    def is_slru_block(self) -> bool:
        return self.field1 == 0x01 and self.field3 == 1 and self.field6 != REL_SIZE_FIELD6

    def is_metadata(self) -> bool:
        """Keys whose values are always whole images kept by ingest (sizes, dirs, ...)."""
        return not (self.is_rel_block() or self.is_slru_block())

    def rel_tag(self) -> RelTag:
        if self.field1 != 0x00 or self.field4 == 0:
            raise ValueError(f"key {self} is not a relation key")
        return RelTag(self.field2, self.field3, self.field4, self.field5)

    @property
    def block_number(self) -> int:
        return self.field6


KEY_MIN = Key(0, 0, 0, 0, 0, 0)
KEY_MAX = Key(0xFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFF, 0xFFFF_FFFF)


# ------------------------------------------------------------------------ constructors

def rel_block_key(rel: RelTag, blkno: int) -> Key:
    return Key(0x00, rel.spcnode, rel.dbnode, rel.relnode, rel.forknum, blkno)


def rel_size_key(rel: RelTag) -> Key:
    return Key(0x00, rel.spcnode, rel.dbnode, rel.relnode, rel.forknum, REL_SIZE_FIELD6)


def rel_block_key_bytes(rel: RelTag, blkno: int) -> bytes:
    """``rel_block_key(rel, blkno).to_bytes()`` without the Key object (hot paths)."""
    return KEY_STRUCT.pack(0x00, rel.spcnode, rel.dbnode, rel.relnode, rel.forknum, blkno)


def rel_size_key_bytes(rel: RelTag) -> bytes:
    """``rel_size_key(rel).to_bytes()`` without the Key object (hot paths)."""
    return rel_block_key_bytes(rel, REL_SIZE_FIELD6)


def rel_key_range(rel: RelTag) -> tuple[Key, Key]:
    """[first block key, one past the size key) of one relation fork."""
    return (Key(0x00, rel.spcnode, rel.dbnode, rel.relnode, rel.forknum, 0),
            Key(0x00, rel.spcnode, rel.dbnode, rel.relnode, rel.forknum + 1, 0))


def dbdir_key() -> Key:
    return Key(0x00, 0, 0, 0, 0, 0)


def relmap_key(spcnode: int, dbnode: int) -> Key:
    return Key(0x00, spcnode, dbnode, 0, 0, 0)


def rel_dir_key(spcnode: int, dbnode: int) -> Key:
    return Key(0x00, spcnode, dbnode, 0, 0, 1)


def rel_dir_shard_key(spcnode: int, dbnode: int, shard: int) -> Key:
    """One shard of a database's relation directory (pagestore.reldir)."""
    return Key(0x00, spcnode, dbnode, 0, 1, shard)


def db_key_range(spcnode: int, dbnode: int) -> tuple[Key, Key]:
    """Every key of one database (relmap, rel dir, all relations)."""
    return (Key(0x00, spcnode, dbnode, 0, 0, 0),
            Key(0x00, spcnode, dbnode + 1, 0, 0, 0))


def slru_dir_key(kind: SlruKind) -> Key:
    return Key(0x01, kind, 0, 0, 0, 0)


def slru_block_key(kind: SlruKind, segno: int, blkno: int) -> Key:
    return Key(0x01, kind, 1, segno, 0, blkno)


def slru_segment_size_key(kind: SlruKind, segno: int) -> Key:
    return Key(0x01, kind, 1, segno, 0, REL_SIZE_FIELD6)


def twophase_dir_key() -> Key:
    return Key(0x02, 0, 0, 0, 0, 0)


def twophase_file_key(xid: int) -> Key:
    return Key(0x02, 0, 0, (xid >> 40) & 0xFFFFFF, (xid >> 32) & 0xFF, xid & 0xFFFF_FFFF)


def controlfile_key() -> Key:
    return Key(0x03, 0, 0, 0, 0, 0)


def checkpoint_key() -> Key:
    return Key(0x03, 0, 0, 0, 0, 1)


def commit_timestamp_key() -> Key:
    """The newest commit timestamp so far (pagestore's own; Neon keeps commit
    timestamps on its CLOG pages instead): see pagestore.timestamps."""
    return Key(0x03, 0, 0, 0, 0, 3)
