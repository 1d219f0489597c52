"""Lsn: a 64-bit WAL position, written ``X/Y`` (high and low 32 bits in hex).

Mirrors PostgreSQL's XLogRecPtr and its ``%X/%X`` notation (pg_lsn's text form, as
printed by pg_waldump and pg_stat_replication): uppercase hex, no zero padding, and the
slash is required when parsing.
"""

from __future__ import annotations

from typing import SupportsIndex

U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class Lsn(int):
    """A WAL position.  Sorts, hashes and packs like an int; prints as ``X/Y``."""

    __slots__ = ()

    INVALID: Lsn
    MAX: Lsn

    def __new__(cls, value: SupportsIndex = 0) -> Lsn:
        v = int(value)
        if not 0 <= v <= U64_MAX:
            raise ValueError(f"LSN {v} is outside the 64-bit range")
        return super().__new__(cls, v)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        """Parse ``X/Y``; anything else is a ValueError naming the text."""
        hi, sep, lo = text.strip().partition("/")
        if not sep or not hi or not lo or len(hi) > 8 or len(lo) > 8:
            raise ValueError(f"invalid LSN {text!r}: expected X/Y in hex, e.g. 0/16B3748")
        try:
            return cls((int(hi, 16) << 32) | int(lo, 16))
        except ValueError:
            raise ValueError(f"invalid LSN {text!r}: expected X/Y in hex, e.g. 0/16B3748") from None

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFF_FFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn({self})"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(self, spec)

    def segment_number(self, segment_size: int = 16 * 1024 * 1024) -> int:
        return int(self) // segment_size

    def segment_offset(self, segment_size: int = 16 * 1024 * 1024) -> int:
        return int(self) % segment_size


Lsn.INVALID = Lsn(0)
Lsn.MAX = Lsn(U64_MAX)
