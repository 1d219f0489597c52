"""SLRU page updates that pagestore stores as values: CLOG status bits and multixact
offsets and members (src/backend/access/transam/clog.c TransactionIdSetStatusBit,
multixact.c RecordNewMultiXact).

SLRU pages have no header and no LSN: these functions change exactly the bytes
PostgreSQL's SLRU code changes and nothing else.
"""

from __future__ import annotations

import struct

from pagestore.errors import CorruptionError

BLCKSZ = 8192
CLOG_BITS_PER_XACT = 2
CLOG_XACTS_PER_BYTE = 4
CLOG_XACTS_PER_PAGE = BLCKSZ * CLOG_XACTS_PER_BYTE
CLOG_XACT_BITMASK = (1 << CLOG_BITS_PER_XACT) - 1

# multixact members: groups of 4 flag bytes then 4 xids (20 bytes), 409 groups per page
MULTIXACT_FLAGBYTES_PER_GROUP = 4
MULTIXACT_MEMBERS_PER_MEMBERGROUP = 4
MULTIXACT_MEMBERGROUP_SIZE = 4 * MULTIXACT_MEMBERS_PER_MEMBERGROUP + MULTIXACT_FLAGBYTES_PER_GROUP
MULTIXACT_MEMBERGROUPS_PER_PAGE = BLCKSZ // MULTIXACT_MEMBERGROUP_SIZE
MULTIXACT_MEMBERS_PER_PAGE = MULTIXACT_MEMBERGROUPS_PER_PAGE * MULTIXACT_MEMBERS_PER_MEMBERGROUP
MXACT_MEMBER_BITS_PER_XACT = 8
MXACT_MEMBER_XACT_BITMASK = (1 << MXACT_MEMBER_BITS_PER_XACT) - 1

U32 = struct.Struct("<I")


def _check(page: bytearray, what: str) -> None:
    if len(page) != BLCKSZ:
        raise CorruptionError(f"{what}: SLRU page is {len(page)} bytes, expected {BLCKSZ}")


def clog_set_status(page: bytearray, xids: tuple[int, ...] | list[int], status: int) -> None:
    """Set the 2-bit status of each xid (all on this page)."""
    _check(page, "CLOG")
    for xid in xids:
        byteno = (xid % CLOG_XACTS_PER_PAGE) // CLOG_XACTS_PER_BYTE
        bshift = (xid % CLOG_XACTS_PER_BYTE) * CLOG_BITS_PER_XACT
        page[byteno] = (page[byteno] & ~(CLOG_XACT_BITMASK << bshift) & 0xFF) | (status << bshift)


def write_u32(page: bytearray, writes: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> None:
    """Little-endian words at byte offsets (multixact offsets entries)."""
    _check(page, "multixact offsets")
    for offset, value in writes:
        if not 0 <= offset <= BLCKSZ - 4:
            raise CorruptionError(f"SLRU write at offset {offset} is outside the page")
        U32.pack_into(page, offset, value)


def multixact_members(page: bytearray,
                      members: tuple[tuple[int, int, int], ...] | list[tuple[int, int, int]]) -> None:
    """(member offset, xid, status) triples whose member offsets lie on this page."""
    _check(page, "multixact members")
    for offset, xid, status in members:
        flagsoff = ((offset // MULTIXACT_MEMBERS_PER_MEMBERGROUP) % MULTIXACT_MEMBERGROUPS_PER_PAGE
                    ) * MULTIXACT_MEMBERGROUP_SIZE
        bshift = (offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP) * MXACT_MEMBER_BITS_PER_XACT
        memberoff = flagsoff + MULTIXACT_FLAGBYTES_PER_GROUP + (
            offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP) * 4
        U32.pack_into(page, memberoff, xid)
        (flags,) = U32.unpack_from(page, flagsoff)
        flags &= ~(MXACT_MEMBER_XACT_BITMASK << bshift) & 0xFFFF_FFFF
        flags |= status << bshift
        U32.pack_into(page, flagsoff, flags)
