"""Commit timestamps: the LSN of a point in time, and the time of an LSN.

pagestore keeps no pg_commit_ts and, unlike Neon, appends no timestamps to CLOG pages.
One metadata key, ``commit_timestamp_key()`` (03 0 0 0 0 3; 03 0 0 0 0 2 is Neon's
legacy aux-files key, left unused), holds the newest commit timestamp so far: ingest
(services/ingest/walingest.py) reads ``xact_time`` (the first field of xl_xact_commit,
src/include/access/xact.h) of every XLOG_XACT_COMMIT and
XLOG_XACT_COMMIT_PREPARED record and, when it is newer than the value it holds, writes
it at the record's end LSN.  Rules that follow:

- The value read at an LSN is the newest commit timestamp of any commit record ending at
  or below it, and it never decreases with the LSN (a primary's clock going backwards
  leaves the value where it was), so a binary search over LSNs is exact.
- The value is a PostgreSQL TimestampTz: int64 little-endian, microseconds since
  2000-01-01 00:00:00 UTC (``COMMIT_TIMESTAMP``).  No value (before the first commit)
  reads as None.

``find_lsn_by_timestamp`` is Neon's ``find_lsn_for_timestamp``
(pageserver/src/pgdatadir_mapping.rs): a binary search over LSN/8 for the first LSN whose
newest commit is after the target, classified as Neon's LsnForTimestamp.  Two choices
differ from Neon and are deliberate: a commit exactly AT the target counts as before it
(a restore to T keeps what committed at T, like PostgreSQL's recovery_target_time with
recovery_target_inclusive = on; Neon's probe is ``>=``), and ``nodata`` answers
``max_lsn`` (current Neon answers min_lsn).  TimestampTz <-> datetime conversions are
pagestore.pg.replication's (``pg_timestamp_to_datetime``, ``datetime_to_pg_timestamp``).
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING, NamedTuple

from pagestore.errors import CorruptionError, LsnOutOfRange
from pagestore.keys import commit_timestamp_key
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from collections.abc import Callable

    from pagestore.keys import Key

#: The value of commit_timestamp_key(): TimestampTz, int64 little-endian.
COMMIT_TIMESTAMP = struct.Struct("<q")

def encode_commit_timestamp(ts: int) -> bytes:
    return COMMIT_TIMESTAMP.pack(ts)


def decode_commit_timestamp(raw: bytes) -> int:
    if len(raw) != COMMIT_TIMESTAMP.size:
        raise CorruptionError(f"commit timestamp value of {len(raw)} bytes, expected "
                              f"{COMMIT_TIMESTAMP.size}")
    return int(COMMIT_TIMESTAMP.unpack(raw)[0])


def commit_timestamp_reader(image: Callable[[Key, Lsn], bytes | None]
                            ) -> Callable[[Lsn], int | None]:
    """The reader over a view's ``image(key, lsn)`` (TimelineView.image and the like)."""
    key = commit_timestamp_key()

    def read(lsn: Lsn) -> int | None:
        raw = image(key, lsn)
        return decode_commit_timestamp(raw) if raw else None

    return read


class LsnKind(enum.StrEnum):
    """Where the target time lies (Neon's LsnForTimestamp variants)."""

    PRESENT = "present"  # commits before (or at) and after it: the LSN between them
    FUTURE = "future"    # every commit is at or before it: the newest LSN
    PAST = "past"        # no commit at or before it is readable: the oldest LSN
    NODATA = "nodata"    # no commit timestamp at all


class LsnForTimestamp(NamedTuple):
    kind: LsnKind
    lsn: Lsn


def find_lsn_by_timestamp(read: Callable[[Lsn], int | None], target_ts: int,
                          min_lsn: Lsn, max_lsn: Lsn) -> LsnForTimestamp:
    """The LSN that shows every commit at or before ``target_ts`` (a TimestampTz) and none
    after it, searched in [``min_lsn``, ``max_lsn``] with ``read`` (newest commit
    timestamp at or below an LSN, None when no commit).

    A binary search over LSN/8 finds the first LSN whose newest commit is after the
    target (probes are clamped into the range, so an unaligned bound is probed as is).
    Kinds:

    - ``present``: commits on both sides; the LSN is that first LSN minus 8 (never below
      ``min_lsn``): the last LSN whose newest commit is at or before the target.
    - ``future``: every commit up to ``max_lsn`` is at or before the target: ``max_lsn``.
    - ``past``: the newest commit visible at ``min_lsn`` is already after the target, or
      no commit at or before the target lies in the range while later ones do: nothing
      older is readable, ``min_lsn``.
    - ``nodata``: no commit timestamp at or below ``max_lsn`` at all (nothing committed
      since the timeline's data began): ``max_lsn``, the newest readable LSN.

    ``min_lsn > max_lsn`` (no readable range) is LsnOutOfRange.
    """
    if min_lsn > max_lsn:
        raise LsnOutOfRange(f"no readable LSN range to search: the oldest readable LSN "
                            f"{min_lsn} is above the newest {max_lsn}")
    seen: dict[int, int | None] = {}

    def probe(i: int) -> Lsn:
        return Lsn(min(max(i * 8, min_lsn), max_lsn))

    def at(i: int) -> int | None:
        lsn = probe(i)
        if lsn not in seen:
            seen[lsn] = read(lsn)
        return seen[lsn]

    first_index, last_index = min_lsn // 8, -(-max_lsn // 8)
    low, high = first_index, last_index + 1
    while low < high:
        mid = (low + high) // 2
        ts = at(mid)
        if ts is not None and ts > target_ts:
            high = mid
        else:
            low = mid + 1
    if low == first_index:
        return LsnForTimestamp(LsnKind.PAST, min_lsn)
    if low > last_index:
        kind = LsnKind.NODATA if at(last_index) is None else LsnKind.FUTURE
        return LsnForTimestamp(kind, max_lsn)
    if at(low - 1) is None:
        return LsnForTimestamp(LsnKind.PAST, min_lsn)
    return LsnForTimestamp(LsnKind.PRESENT, probe(low - 1))


def timestamp_of_lsn(read: Callable[[Lsn], int | None], lsn: Lsn) -> int | None:
    """The newest commit timestamp at or below ``lsn`` (None: no commit there)."""
    return read(lsn)
