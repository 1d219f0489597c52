"""TenantId and TimelineId: 16-byte identifiers written as 32 lowercase hex characters.

Same form as Neon's TenantId/TimelineId (shared/reference/neon-protocols.md): the text is
exactly 32 hex digits; upper case is accepted on input and printed lower case.
"""

from __future__ import annotations

import secrets
from typing import Self


class _Id16:
    __slots__ = ("_bytes",)
    kind = "id"

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 16:
            raise ValueError(f"a {self.kind} is 16 bytes, got {len(raw)}")
        self._bytes = bytes(raw)

    @classmethod
    def parse(cls, text: str) -> Self:
        t = text.strip()
        if len(t) != 32:
            raise ValueError(f"invalid {cls.kind} {text!r}: expected 32 hex characters")
        try:
            return cls(bytes.fromhex(t))
        except ValueError:
            raise ValueError(f"invalid {cls.kind} {text!r}: expected 32 hex characters") from None

    @classmethod
    def generate(cls) -> Self:
        return cls(secrets.token_bytes(16))

    @property
    def bytes(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        return self._bytes.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._bytes.hex()!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Id16)
        return self._bytes == other._bytes

    def __lt__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Id16)
        return self._bytes < other._bytes

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._bytes))


class TenantId(_Id16):
    __slots__ = ()
    kind = "tenant id"


class TimelineId(_Id16):
    __slots__ = ()
    kind = "timeline id"
