"""Commit timestamps (pagestore/timestamps.py): the search by time over a fake history,
checked case by case and against a linear scan; ingest writing the key from commit
records; the key kept by image layers through GC; TimestampTz <-> datetime."""

from __future__ import annotations

import datetime
import math
import random
from pathlib import Path

import pytest

from pagestore import values
from pagestore.compaction import partition_keyspace, plan_gc, write_image_layer
from pagestore.errors import CorruptionError, LsnOutOfRange
from pagestore.keys import KEY_MAX, KEY_MIN, commit_timestamp_key
from pagestore.layers.delta import DeltaLayerWriter
from pagestore.layers.desc import LEVEL_L0
from pagestore.layers.image import ImageLayerReader, ImageLayerWriter
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from pagestore.pg.replication import (
    datetime_to_pg_timestamp,
    pg_timestamp_to_datetime,
    pg_timestamp_to_unix,
)
from pagestore.pg.rmgr import RmgrId
from pagestore.pg.xlogrecord import DecodedRecord, XLogRecordHeader
from pagestore.timeline import TimelineView
from pagestore.timestamps import (
    COMMIT_TIMESTAMP,
    LsnKind,
    commit_timestamp_reader,
    decode_commit_timestamp,
    encode_commit_timestamp,
    find_lsn_by_timestamp,
    timestamp_of_lsn,
)
from services.ingest.timeline import load_state
from services.ingest.walingest import (
    XACT_XINFO_HAS_TWOPHASE,
    XLOG_XACT_ABORT,
    XLOG_XACT_COMMIT,
    XLOG_XACT_COMMIT_PREPARED,
    XLOG_XACT_HAS_INFO,
    TimelineState,
    Values,
    WalIngest,
)

KEY_BYTES = commit_timestamp_key().to_bytes()


class History:
    """Commit records (end LSN, xact_time) as ingest stores them: the key holds the
    newest timestamp so far.  ``reads`` counts the reads of the key."""

    def __init__(self, commits: list[tuple[int, int]]) -> None:
        self.versions: list[tuple[int, int]] = []
        newest: int | None = None
        for lsn, ts in sorted(commits):
            if newest is None or ts > newest:
                newest = ts
                self.versions.append((lsn, ts))
        self.reads = 0

    def __call__(self, lsn: Lsn) -> int | None:
        self.reads += 1
        found = None
        for at, ts in self.versions:
            if at <= lsn:
                found = ts
        return found


COMMITS = [(0x100, 1000), (0x200, 2000), (0x300, 3000)]


@pytest.mark.parametrize("target,min_lsn,max_lsn,kind,lsn", [
    # Between two commits: the LSN before the first commit after the target.
    (2500, 0x80, 0x400, LsnKind.PRESENT, 0x2F8),
    (1500, 0x80, 0x400, LsnKind.PRESENT, 0x1F8),
    # A commit exactly at the target counts as before it; one microsecond less does not.
    (2000, 0x80, 0x400, LsnKind.PRESENT, 0x2F8),
    (1999, 0x80, 0x400, LsnKind.PRESENT, 0x1F8),
    (1000, 0x80, 0x400, LsnKind.PRESENT, 0x1F8),
    # Every commit at or before the target: the newest LSN.
    (3000, 0x80, 0x400, LsnKind.FUTURE, 0x400),
    (10**12, 0x80, 0x400, LsnKind.FUTURE, 0x400),
    # Before every commit, nothing committed at the oldest LSN: past.
    (999, 0x80, 0x400, LsnKind.PAST, 0x80),
    # The oldest readable LSN already shows a newer commit: past.
    (1500, 0x208, 0x400, LsnKind.PAST, 0x208),
    # Only the first commit is readable at min_lsn: one before it still is present.
    (1500, 0x100, 0x400, LsnKind.PRESENT, 0x1F8),
    # The range ends before any commit: no data; and before the later ones: future.
    (2500, 0x10, 0xF8, LsnKind.NODATA, 0xF8),
    (2500, 0x10, 0x2F8, LsnKind.FUTURE, 0x2F8),
    # Unaligned bounds are probed as they are, never crossed.
    (1000, 0x103, 0x2FD, LsnKind.PRESENT, 0x1F8),
    (500, 0x103, 0x2FD, LsnKind.PAST, 0x103),
    (2500, 0x103, 0x2FD, LsnKind.FUTURE, 0x2FD),
    (1500, 0x1FD, 0x2FD, LsnKind.PRESENT, 0x1FD),
    # A range of one LSN.
    (1500, 0x100, 0x100, LsnKind.FUTURE, 0x100),
    (500, 0x100, 0x100, LsnKind.PAST, 0x100),
    (500, 0xF8, 0xF8, LsnKind.NODATA, 0xF8),
])
def test_find_lsn_by_timestamp_kinds(target: int, min_lsn: int, max_lsn: int, kind: LsnKind,
                                     lsn: int) -> None:
    history = History(COMMITS)
    found = find_lsn_by_timestamp(history, target, Lsn(min_lsn), Lsn(max_lsn))
    assert (found.kind, found.lsn) == (kind, Lsn(lsn))
    # A binary search: about log2 of the range in reads, never a scan.
    assert history.reads <= math.ceil(math.log2((max_lsn - min_lsn) // 8 + 2)) + 2


def test_no_commit_at_all_is_nodata_at_the_newest_lsn() -> None:
    found = find_lsn_by_timestamp(History([]), 1000, Lsn(0x100), Lsn(0x10000))
    assert (found.kind, found.lsn) == (LsnKind.NODATA, Lsn(0x10000))


def test_equal_timestamps_are_one_point_in_time() -> None:
    # Two commits with the same timestamp (the second does not move the key): a target
    # at that time shows both, a target just before it neither.
    history = History([(0x100, 1000), (0x200, 2000), (0x300, 2000), (0x400, 3000)])
    assert history.versions == [(0x100, 1000), (0x200, 2000), (0x400, 3000)]
    at = find_lsn_by_timestamp(history, 2000, Lsn(0x8), Lsn(0x500))
    assert (at.kind, at.lsn) == (LsnKind.PRESENT, Lsn(0x3F8))
    before = find_lsn_by_timestamp(history, 1999, Lsn(0x8), Lsn(0x500))
    assert (before.kind, before.lsn) == (LsnKind.PRESENT, Lsn(0x1F8))


def test_a_clock_going_backwards_keeps_the_newest() -> None:
    history = History([(0x100, 1000), (0x200, 3000), (0x300, 2000), (0x400, 4000)])
    assert timestamp_of_lsn(history, Lsn(0x300)) == 3000
    found = find_lsn_by_timestamp(history, 2500, Lsn(0x8), Lsn(0x500))
    assert (found.kind, found.lsn) == (LsnKind.PRESENT, Lsn(0x1F8))


def test_search_equals_a_linear_scan() -> None:
    rng = random.Random(14)
    for _ in range(300):
        commits = [(rng.randrange(1, 200) * 8, rng.randrange(0, 50)) for _ in range(rng.randint(0, 8))]
        history = History(commits)
        lo = rng.randrange(0, 120) * 8
        hi = lo + rng.randrange(0, 120) * 8
        target = rng.randrange(-1, 52)
        found = find_lsn_by_timestamp(history, target, Lsn(lo), Lsn(hi))
        # The definition, LSN by LSN.
        after = [x for x in range(lo, hi + 1, 8) if (history(Lsn(x)) or -1) > target]
        if history(Lsn(hi)) is None:
            want = (LsnKind.NODATA, hi)
        elif not after:
            want = (LsnKind.FUTURE, hi)
        elif after[0] == lo or history(Lsn(after[0] - 8)) is None:
            want = (LsnKind.PAST, lo)
        else:
            want = (LsnKind.PRESENT, after[0] - 8)
        assert (found.kind, int(found.lsn)) == want, (commits, lo, hi, target)


def test_timestamp_of_lsn_and_bad_ranges() -> None:
    history = History(COMMITS)
    assert timestamp_of_lsn(history, Lsn(0xF8)) is None
    assert timestamp_of_lsn(history, Lsn(0x100)) == 1000
    assert timestamp_of_lsn(history, Lsn(0x2FF)) == 2000
    with pytest.raises(LsnOutOfRange, match="0/208 is above the newest 0/200"):
        find_lsn_by_timestamp(history, 1000, Lsn(0x208), Lsn(0x200))


def test_value_encoding() -> None:
    raw = encode_commit_timestamp(-5)
    assert raw == (-5).to_bytes(8, "little", signed=True)
    assert decode_commit_timestamp(raw) == -5
    with pytest.raises(CorruptionError, match="7 bytes"):
        decode_commit_timestamp(raw[:7])


def test_timestamptz_and_datetime() -> None:
    utc = datetime.UTC
    assert pg_timestamp_to_datetime(0) == datetime.datetime(2000, 1, 1, tzinfo=utc)
    when = datetime.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=utc)
    ts = datetime_to_pg_timestamp(when)
    assert pg_timestamp_to_datetime(ts) == when
    assert abs(pg_timestamp_to_unix(ts) - when.timestamp()) < 1e-6
    # The same instant in another zone; before the epoch is negative.
    plus2 = when.astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert datetime_to_pg_timestamp(plus2) == ts
    assert datetime_to_pg_timestamp(datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=utc)) \
        == -1_000_000
    with pytest.raises(ValueError, match="no time zone"):
        datetime_to_pg_timestamp(datetime.datetime(2026, 1, 1))


# ------------------------------------------------------------------------- ingest

def _xact(info: int, main: bytes, end: int, xid: int = 700) -> DecodedRecord:
    hdr = XLogRecordHeader(0, xid, 0, info, RmgrId.XACT, 0)
    return DecodedRecord(lsn=Lsn(end - 0x40), end_lsn=Lsn(end), header=hdr, blocks=(),
                         main_data=main, origin=None, toplevel_xid=None, raw=b"")


def _commit_ts_values(out: Values) -> list[tuple[int, int]]:
    return [(lsn, decode_commit_timestamp(values.image_bytes(v)))
            for k, lsn, v in out if k == KEY_BYTES]


def test_ingest_writes_the_newest_commit_timestamp() -> None:
    state = TimelineState()
    ingest = WalIngest(state)
    out: Values = []
    ingest.ingest(_xact(XLOG_XACT_COMMIT, COMMIT_TIMESTAMP.pack(5000), 0x1000), out)
    ingest.ingest(_xact(XLOG_XACT_ABORT, COMMIT_TIMESTAMP.pack(9000), 0x1040), out)
    # The clock went backwards: no new version, the key keeps 5000.
    ingest.ingest(_xact(XLOG_XACT_COMMIT, COMMIT_TIMESTAMP.pack(4000), 0x1080), out)
    ingest.ingest(_xact(XLOG_XACT_COMMIT, COMMIT_TIMESTAMP.pack(5000), 0x10C0), out)
    prepared = (COMMIT_TIMESTAMP.pack(7000) + XACT_XINFO_HAS_TWOPHASE.to_bytes(4, "little")
                + (650).to_bytes(4, "little"))
    ingest.ingest(_xact(XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, prepared, 0x1100,
                        xid=0), out)
    assert _commit_ts_values(out) == [(0x1000, 5000), (0x1100, 7000)]
    assert state.commit_timestamp == 7000


def test_image_layers_keep_the_key_through_gc(tmp_path: Path) -> None:
    """keyspace yields the key, so an image layer of the whole key range holds it and GC
    can drop the layers below without losing the value."""
    with ImageLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(0x100)) as w:
        w.put(commit_timestamp_key(), values.image(encode_commit_timestamp(1000)))
        base = w.finish().desc(LEVEL_L0)
    with DeltaLayerWriter(tmp_path, KEY_MIN, KEY_MAX, Lsn(0x101), Lsn(0x300)) as dw:
        for lsn, ts in ((0x180, 2000), (0x280, 3000)):
            dw.put(commit_timestamp_key(), Lsn(lsn),
                   values.image(encode_commit_timestamp(ts)), True)
        delta = dw.finish().desc(LEVEL_L0)
    view = TimelineView(LayerMap(tmp_path, [base, delta]))
    lsn = Lsn(0x2FF)
    assert (commit_timestamp_key(), False) in list(view.keyspace(lsn))
    images = [write_image_layer(tmp_path, view, part, lsn, lambda chains: [None] * len(chains))
              for part in partition_keyspace(view.keyspace(lsn), 4 * 8192)]
    held = [ImageLayerReader(tmp_path / d.file_name).get(commit_timestamp_key()) for d in images]
    assert [h for h in held if h is not None] == [values.image(encode_commit_timestamp(3000))]
    plan = plan_gc([base, delta, *images], lsn)
    assert set(plan.remove) == {base, delta}
    after = TimelineView(LayerMap(tmp_path, images))
    read = commit_timestamp_reader(after.image)
    assert read(lsn) == 3000
    found = find_lsn_by_timestamp(read, 2500, lsn, lsn)
    assert (found.kind, found.lsn) == (LsnKind.PAST, lsn)
    # Ingest restarting on these layers goes on from the newest timestamp.
    assert load_state(after, lsn).commit_timestamp == 3000
    assert load_state(TimelineView(LayerMap(tmp_path, [])), lsn).commit_timestamp is None
