"""Values: what is stored for a key at an LSN (the contract between ingest and redo).

A value is a page image, or a record that changes the previous version of its key:

    tag  name                    payload
    0x00 Image                   the bytes (an 8192-byte page, or a metadata blob)
    0x01 PgRecord                flags u8 (bit 0 will_init), block_id u8, the whole raw
                                 XLogRecord; redo applies the part for this block
    0x02 ClearVmBits             heap_blkno_1 u32, heap_blkno_2 u32 (0xFFFFFFFF: none),
                                 flags u8: clear these VISIBILITYMAP_* bits of those heap
                                 blocks on this VM page (heap records imply it, section
                                 3.12 of the facts sheet: the VM page is no block ref)
    0x03 ClogSetStatus           status u8 (1 committed, 2 aborted), n u32, xids u32[n]:
                                 set their 2-bit CLOG status on this CLOG page
    0x04 SlruWriteU32            n u32, then n x (byte offset u32, value u32): little-endian
                                 words written into this SLRU page (multixact offsets)
    0x05 MultixactMembers        n u32, then n x (member offset u32, xid u32, status u32)
                                 on this members page (flags byte + xid slot)
    0x06 TruncateVm              trunc_byte u32, trunc_offs u8: clear map bits from there
                                 on this (new last) VM page (smgr truncate, no LSN change)
    0x07 FsmTruncate             first_removed_slot u32: fsm_truncate_avail on this page
    0x08 Materialize             source key (18 bytes), has_image u8, [image_len u32,
                                 image], n u32, then n x (lsn u64, len u32, value): a
                                 self-contained chain of the source key (a base image and
                                 the values after it) that redo applies in order;
                                 will_init.  Written where a page is copied as of
                                 an LSN (CREATE DATABASE ... FILE_COPY) without
                                 reconstructing it during ingest.

Metadata keys (sizes, directories, relmap, checkpoint, control file, twophase) only ever
hold Image values; an empty Image means "absent" (a tombstone).

Rules: the first byte always names the kind; unknown tags and short payloads are
CorruptionError (stored data we cannot read), never guessed.  All integers little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pagestore.errors import CorruptionError

TAG_IMAGE = 0x00
TAG_PG_RECORD = 0x01
TAG_CLEAR_VM_BITS = 0x02
TAG_CLOG_SET_STATUS = 0x03
TAG_SLRU_WRITE_U32 = 0x04
TAG_MULTIXACT_MEMBERS = 0x05
TAG_TRUNCATE_VM = 0x06
TAG_FSM_TRUNCATE = 0x07
TAG_MATERIALIZE = 0x08

NO_BLOCK = 0xFFFF_FFFF

# PgRecord header: tag u8, flags u8, block_id u8
PG_RECORD_HEADER = struct.Struct("<BBB")
# ClearVmBits: tag u8, heap_blkno_1 u32, heap_blkno_2 u32, flags u8
CLEAR_VM_BITS = struct.Struct("<BIIB")
# ClogSetStatus header: tag u8, status u8, n u32
CLOG_SET_STATUS = struct.Struct("<BBI")
U32 = struct.Struct("<I")
TAG_N = struct.Struct("<BI")
PAIR = struct.Struct("<II")
TRIPLE = struct.Struct("<III")
# TruncateVm: tag u8, trunc_byte u32, trunc_offs u8
TRUNCATE_VM = struct.Struct("<BIB")
FSM_TRUNCATE = struct.Struct("<BI")
# Materialize entry header: lsn u64, len u32
CHAIN_ENTRY = struct.Struct("<QI")


@dataclass(frozen=True, slots=True)
class PgRecord:
    will_init: bool
    block_id: int
    record: bytes


@dataclass(frozen=True, slots=True)
class ClearVmBits:
    heap_blkno_1: int
    heap_blkno_2: int
    flags: int


@dataclass(frozen=True, slots=True)
class ClogSetStatus:
    status: int
    xids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SlruWriteU32:
    writes: tuple[tuple[int, int], ...]  # (byte offset, value)


@dataclass(frozen=True, slots=True)
class MultixactMembers:
    members: tuple[tuple[int, int, int], ...]  # (member offset, xid, status)


@dataclass(frozen=True, slots=True)
class TruncateVm:
    trunc_byte: int
    trunc_offs: int


@dataclass(frozen=True, slots=True)
class FsmTruncate:
    first_removed_slot: int


@dataclass(frozen=True, slots=True)
class Materialize:
    source_key: bytes  # the key whose chain this is (its records refer to that key)
    image: bytes | None
    values: tuple[tuple[int, bytes], ...]  # (lsn, encoded value), oldest first


Record = Materialize | PgRecord | ClearVmBits | ClogSetStatus | SlruWriteU32 | MultixactMembers | TruncateVm | FsmTruncate


# --------------------------------------------------------------------------- encode

def image(data: bytes) -> bytes:
    return b"\x00" + data


def pg_record(raw: bytes, block_id: int, will_init: bool) -> bytes:
    return PG_RECORD_HEADER.pack(TAG_PG_RECORD, 1 if will_init else 0, block_id) + raw


def clear_vm_bits(heap_blkno_1: int, heap_blkno_2: int, flags: int) -> bytes:
    return CLEAR_VM_BITS.pack(TAG_CLEAR_VM_BITS, heap_blkno_1, heap_blkno_2, flags)


def clog_set_status(status: int, xids: list[int] | tuple[int, ...]) -> bytes:
    return CLOG_SET_STATUS.pack(TAG_CLOG_SET_STATUS, status, len(xids)) + struct.pack(
        f"<{len(xids)}I", *xids)


def slru_write_u32(writes: list[tuple[int, int]]) -> bytes:
    return TAG_N.pack(TAG_SLRU_WRITE_U32, len(writes)) + b"".join(PAIR.pack(o, v) for o, v in writes)


def multixact_members(members: list[tuple[int, int, int]]) -> bytes:
    return TAG_N.pack(TAG_MULTIXACT_MEMBERS, len(members)) + b"".join(
        TRIPLE.pack(*m) for m in members)


def truncate_vm(trunc_byte: int, trunc_offs: int) -> bytes:
    return TRUNCATE_VM.pack(TAG_TRUNCATE_VM, trunc_byte, trunc_offs)


def fsm_truncate(first_removed_slot: int) -> bytes:
    return FSM_TRUNCATE.pack(TAG_FSM_TRUNCATE, first_removed_slot)


def materialize(source_key: bytes, image: bytes | None, chain: list[tuple[int, bytes]]) -> bytes:
    if len(source_key) != 18:
        raise ValueError("a Materialize value needs the 18-byte source key")
    parts = [bytes([TAG_MATERIALIZE]), source_key, bytes([1 if image is not None else 0])]
    if image is not None:
        parts.append(U32.pack(len(image)))
        parts.append(image)
    parts.append(U32.pack(len(chain)))
    for lsn, value in chain:
        parts.append(CHAIN_ENTRY.pack(lsn, len(value)))
        parts.append(value)
    return b"".join(parts)


# --------------------------------------------------------------------------- decode

def is_image(value: bytes) -> bool:
    return len(value) > 0 and value[0] == TAG_IMAGE


def will_init(value: bytes) -> bool:
    """Whether a value needs no older version (images, and will_init records)."""
    if not value:
        raise CorruptionError("empty value")
    tag = value[0]
    if tag == TAG_IMAGE:
        return True
    if tag == TAG_PG_RECORD:
        return bool(value[1] & 1)
    return tag == TAG_MATERIALIZE


def image_bytes(value: bytes) -> bytes:
    if not value or value[0] != TAG_IMAGE:
        raise CorruptionError(f"expected an image value, got tag {value[:1].hex() or 'none'}")
    return value[1:]


def decode_record_value(value: bytes) -> Record:
    """Decode a non-image value."""
    try:
        tag = value[0]
        if tag == TAG_PG_RECORD:
            _, flags, block_id = PG_RECORD_HEADER.unpack_from(value, 0)
            return PgRecord(bool(flags & 1), block_id, value[PG_RECORD_HEADER.size:])
        if tag == TAG_CLEAR_VM_BITS:
            _, b1, b2, flags = CLEAR_VM_BITS.unpack(value)
            return ClearVmBits(b1, b2, flags)
        if tag == TAG_CLOG_SET_STATUS:
            _, status, n = CLOG_SET_STATUS.unpack_from(value, 0)
            xids = struct.unpack_from(f"<{n}I", value, CLOG_SET_STATUS.size)
            if len(value) != CLOG_SET_STATUS.size + 4 * n:
                raise CorruptionError("ClogSetStatus value has trailing bytes")
            return ClogSetStatus(status, tuple(xids))
        if tag == TAG_SLRU_WRITE_U32:
            _, n = TAG_N.unpack_from(value, 0)
            if len(value) != TAG_N.size + PAIR.size * n:
                raise CorruptionError("SlruWriteU32 value has the wrong length")
            return SlruWriteU32(tuple(PAIR.unpack_from(value, TAG_N.size + PAIR.size * i)
                                      for i in range(n)))
        if tag == TAG_MULTIXACT_MEMBERS:
            _, n = TAG_N.unpack_from(value, 0)
            if len(value) != TAG_N.size + TRIPLE.size * n:
                raise CorruptionError("MultixactMembers value has the wrong length")
            return MultixactMembers(tuple(TRIPLE.unpack_from(value, TAG_N.size + TRIPLE.size * i)
                                          for i in range(n)))
        if tag == TAG_TRUNCATE_VM:
            _, trunc_byte, trunc_offs = TRUNCATE_VM.unpack(value)
            return TruncateVm(trunc_byte, trunc_offs)
        if tag == TAG_FSM_TRUNCATE:
            _, slot = FSM_TRUNCATE.unpack(value)
            return FsmTruncate(slot)
        if tag == TAG_MATERIALIZE:
            source_key = value[1:19]
            if len(source_key) != 18:
                raise CorruptionError("Materialize value: truncated source key")
            pos = 20
            image: bytes | None = None
            if value[19]:
                (n,) = U32.unpack_from(value, pos)
                image = value[pos + 4:pos + 4 + n]
                if len(image) != n:
                    raise CorruptionError("Materialize value: truncated image")
                pos += 4 + n
            (count,) = U32.unpack_from(value, pos)
            pos += 4
            chain = []
            for _ in range(count):
                lsn, n = CHAIN_ENTRY.unpack_from(value, pos)
                pos += CHAIN_ENTRY.size
                item = value[pos:pos + n]
                if len(item) != n:
                    raise CorruptionError("Materialize value: truncated entry")
                chain.append((lsn, item))
                pos += n
            if pos != len(value):
                raise CorruptionError("Materialize value has trailing bytes")
            return Materialize(source_key, image, tuple(chain))
    except (struct.error, IndexError) as e:
        raise CorruptionError(f"malformed value (tag {value[:1].hex()}): {e}") from None
    raise CorruptionError(f"unknown value tag {value[:1].hex() or 'none'}")


# --------------------------------------------------------------------------- batches

#: A packed value's header after its 18-byte key: lsn u64, value length u32 (big-endian).
PACKED_VALUE_HEADER = struct.Struct(">QI")
_PACKED_KEY = 18


def pack_values(batch: list[tuple[bytes, int, bytes]]) -> bytes:
    """(key bytes, lsn, value) triples back to back: how ingest streams the recent tail
    (WalBatch.packed_values), one bytes field instead of a message per value."""
    pack = PACKED_VALUE_HEADER.pack
    parts: list[bytes] = []
    for kb, lsn, value in batch:
        parts += (kb, pack(lsn, len(value)), value)
    return b"".join(parts)


def unpack_values(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """``pack_values`` undone; a truncated or overlong entry is a CorruptionError."""
    out: list[tuple[bytes, int, bytes]] = []
    unpack = PACKED_VALUE_HEADER.unpack_from
    pos, end = 0, len(data)
    head = _PACKED_KEY + PACKED_VALUE_HEADER.size
    while pos < end:
        if pos + head > end:
            raise CorruptionError(f"packed values: a header at offset {pos} runs past the "
                                  f"end ({end} bytes)")
        lsn, n = unpack(data, pos + _PACKED_KEY)
        start = pos + head
        if start + n > end:
            raise CorruptionError(f"packed values: the value at offset {pos} is {n} bytes, "
                                  f"past the end ({end} bytes)")
        out.append((data[pos:pos + _PACKED_KEY], lsn, data[start:start + n]))
        pos = start + n
    return out

