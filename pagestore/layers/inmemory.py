"""InMemoryLayer: the open layer that collects a timeline's newest values.

Rules:
- Values arrive in LSN order (ingest is sequential); per key they are appended, so each
  key's list stays sorted by LSN without sorting.
- The layer covers [start_lsn, end_lsn) once frozen; while open, end_lsn is None and
  every value has lsn >= start_lsn.
- Frozen layers are immutable; they are written to an L0 delta layer file in (key, lsn)
  order (``sorted_items``) and dropped once that file is registered in the catalog.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pagestore.keys import Key


@dataclass(slots=True)
class InMemoryLayer:
    start_lsn: Lsn
    end_lsn: Lsn | None = None
    # key bytes -> ([lsn...], [value...]) kept as two parallel lists for bisect
    entries: dict[bytes, tuple[list[int], list[bytes]]] = field(default_factory=dict)
    prev_record_lsn: Lsn = Lsn.INVALID  # start of the last record, set when frozen
    value_bytes: int = 0
    count: int = 0
    max_lsn: int = 0  # the newest value's LSN (values arrive in LSN order)
    created: float = field(default_factory=time.monotonic)

    @property
    def lsn_start(self) -> Lsn:
        return self.start_lsn

    def put(self, key: Key, lsn: Lsn, value: bytes) -> None:
        self.put_raw(key.to_bytes(), int(lsn), value)

    def put_raw(self, kb: bytes, lsn: int, value: bytes) -> None:
        """``put`` with the key already in its 18-byte form."""
        assert self.end_lsn is None, "put into a frozen layer"
        slot = self.entries.get(kb)
        if slot is None:
            self.entries[kb] = ([int(lsn)], [value])
        else:
            lsns, vals = slot
            if lsns[-1] >= lsn:
                raise ValueError(f"value for key {kb.hex().upper()} at {Lsn(lsn)} is not "
                                 f"newer than {Lsn(lsns[-1])}")
            lsns.append(int(lsn))
            vals.append(value)
        self.value_bytes += len(value)
        self.count += 1
        if lsn > self.max_lsn:
            self.max_lsn = lsn

    def freeze(self, end_lsn: Lsn) -> None:
        self.end_lsn = end_lsn

    def versions(self, key: Key, lsn_end: Lsn) -> list[tuple[Lsn, bytes]]:
        """Every version of ``key`` with lsn < lsn_end, ascending."""
        return self.versions_of(key.to_bytes(), lsn_end)

    def versions_of(self, key_bytes: bytes, lsn_end: int) -> list[tuple[Lsn, bytes]]:
        """``versions`` with the key in its 18-byte form (the read path's VersionSource)."""
        slot = self.entries.get(key_bytes)
        if slot is None:
            return []
        lsns, vals = slot
        n = bisect.bisect_left(lsns, int(lsn_end))
        return [(Lsn(lsns[i]), vals[i]) for i in range(n)]

    def sorted_items(self) -> Iterator[tuple[bytes, int, bytes]]:
        """(key bytes, lsn, value) in (key, lsn) order: what a flush writes."""
        entries = self.entries
        for kb in sorted(entries):
            lsns, vals = entries[kb]
            for lsn, val in zip(lsns, vals, strict=True):
                yield kb, lsn, val

    def items_in_range(self, key_start: bytes, key_end: bytes,
                       lsn_from: Lsn) -> Iterator[tuple[bytes, int, bytes]]:
        """(key bytes, lsn, value) with key in [key_start, key_end) and lsn > lsn_from."""
        for kb, (lsns, vals) in self.entries.items():
            if key_start <= kb < key_end:
                i = bisect.bisect_right(lsns, int(lsn_from))
                for j in range(i, len(lsns)):
                    yield kb, lsns[j], vals[j]
