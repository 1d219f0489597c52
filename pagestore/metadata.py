"""Encodings of the metadata values ingest keeps (Neon's bincode-BE shapes).

    DbDir          u64 count, then (spcnode u32, dbnode u32, has_relmap u8) each
    RelDir         u64 count, then (relnode u32, forknum u8) each
    SlruDir        u64 count, then segno u32 each
    TwoPhaseDir    u64 count, then xid u32 each
    rel size       u32 little-endian block count
    SLRU seg size  u32 little-endian block count

Counts and members are big-endian, as Neon's bincode; entries are written sorted so
that equal contents encode to equal bytes.  An empty value means the key is absent.
"""

from __future__ import annotations

import struct

from pagestore.errors import CorruptionError

U64_BE = struct.Struct(">Q")
DBDIR_ENTRY = struct.Struct(">IIB")
RELDIR_ENTRY = struct.Struct(">IB")
U32_BE = struct.Struct(">I")
U32_LE = struct.Struct("<I")


def _entries(data: bytes, entry: struct.Struct, what: str) -> list[tuple[int, ...]]:
    if len(data) < U64_BE.size:
        raise CorruptionError(f"{what} value of {len(data)} bytes")
    (n,) = U64_BE.unpack_from(data, 0)
    if len(data) != U64_BE.size + n * entry.size:
        raise CorruptionError(f"{what} value: {n} entries but {len(data)} bytes")
    return [entry.unpack_from(data, U64_BE.size + i * entry.size) for i in range(n)]


def encode_dbdir(dbs: dict[tuple[int, int], bool]) -> bytes:
    return U64_BE.pack(len(dbs)) + b"".join(
        DBDIR_ENTRY.pack(spc, db, 1 if has_relmap else 0) for (spc, db), has_relmap in sorted(dbs.items()))


def decode_dbdir(data: bytes) -> dict[tuple[int, int], bool]:
    return {(spc, db): bool(flag) for spc, db, flag in _entries(data, DBDIR_ENTRY, "DbDir")}


def encode_reldir(rels: set[tuple[int, int]]) -> bytes:
    return U64_BE.pack(len(rels)) + b"".join(RELDIR_ENTRY.pack(r, f) for r, f in sorted(rels))


def decode_reldir(data: bytes) -> set[tuple[int, int]]:
    return {(r, f) for r, f in _entries(data, RELDIR_ENTRY, "RelDir")}


def encode_u32_set(items: set[int]) -> bytes:
    return U64_BE.pack(len(items)) + b"".join(U32_BE.pack(i) for i in sorted(items))


def decode_u32_set(data: bytes, what: str = "directory") -> set[int]:
    return {i for (i,) in _entries(data, U32_BE, what)}


def encode_nblocks(n: int) -> bytes:
    return U32_LE.pack(n)


def decode_nblocks(data: bytes) -> int:
    if len(data) != 4:
        raise CorruptionError(f"size value of {len(data)} bytes (expected 4)")
    return int(U32_LE.unpack(data)[0])
