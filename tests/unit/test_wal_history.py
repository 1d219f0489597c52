"""A WAL stream must continue the timeline's history: WalStreamDecoder checks every
record's xl_prev (the first one against the timeline's prev_record_lsn when known), and
the receiver ingests nothing of a record that fails it, nor anything after it: the WAL of
two histories is never mixed (attach-source relies on both)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pagestore.basebackup import checkpoint_record
from pagestore.errors import CorruptWalError
from pagestore.lsn import Lsn
from pagestore.pg.controlfile import CheckPoint
from pagestore.pg.replication import XLogData
from pagestore.pg.waldecoder import WalStreamDecoder, maxalign
from pagestore.pg.xlogrecord import DecodedRecord
from services.ingest.receiver import WalReceiver

START = Lsn(0x1000100)  # inside a segment's first page: no page header in the way
PREV = Lsn(0x10000A8)   # the record before START (it is not in the stream)


def _checkpoint(n: int) -> CheckPoint:
    return CheckPoint(redo=0, this_timeline=1, prev_timeline=1, full_page_writes=True,
                      next_xid=(1 << 32) | (750 + n), next_oid=24576, next_multi=1,
                      next_multi_offset=0, oldest_xid=716, oldest_xid_db=1, oldest_multi=1,
                      oldest_multi_db=1, time=1_700_000_000 + n, oldest_commit_ts_xid=0,
                      newest_commit_ts_xid=0, oldest_active_xid=0)


def _stream(n: int, *, wrong_prev_at: int | None = None) -> tuple[bytes, list[Lsn]]:
    """``n`` consecutive records from START, each linking back to the one before (the
    first to PREV); the record at index ``wrong_prev_at`` links elsewhere, as a record of
    another history at that position would."""
    out = bytearray()
    lsns: list[Lsn] = []
    prev = PREV
    for i in range(n):
        lsn = Lsn(START + len(out))
        xl_prev = Lsn(prev - 0x40) if i == wrong_prev_at else prev
        raw = checkpoint_record(_checkpoint(i), int(xl_prev))
        out += raw.ljust(maxalign(len(raw)), b"\0")
        lsns.append(lsn)
        prev = lsn
    return bytes(out), lsns


def _poll_all(dec: WalStreamDecoder) -> list[DecodedRecord]:
    out = []
    while (rec := dec.poll()) is not None:
        out.append(rec)
    return out


@pytest.mark.parametrize("compiled", [True, False])
def test_the_decoder_checks_the_first_record_against_the_known_prev(compiled: bool) -> None:
    data, lsns = _stream(3)
    dec = WalStreamDecoder(START, prev_lsn=PREV, compiled=compiled)
    dec.feed(data)
    assert [r.lsn for r in _poll_all(dec)] == lsns

    other = WalStreamDecoder(START, prev_lsn=Lsn(PREV + 8), compiled=compiled)
    other.feed(data)
    with pytest.raises(CorruptWalError, match=f"incorrect prev-link {PREV} at {START}"):
        other.poll()

    unknown = WalStreamDecoder(START, prev_lsn=None, compiled=compiled)  # a fresh branch
    unknown.feed(data)
    assert [r.lsn for r in _poll_all(unknown)] == lsns


@pytest.mark.parametrize("compiled", [True, False])
def test_the_decoder_stops_where_another_history_begins(compiled: bool) -> None:
    data, lsns = _stream(3, wrong_prev_at=1)
    dec = WalStreamDecoder(START, prev_lsn=PREV, compiled=compiled)
    dec.feed(data)
    first = dec.poll()
    assert first is not None and first.lsn == lsns[0]
    with pytest.raises(CorruptWalError, match=f"incorrect prev-link .* at {lsns[1]}"):
        dec.poll()


@dataclass
class FakeTimeline:
    """What WalReceiver._handle_xlog uses of a TimelineIngest."""

    tenant_id: str = "t"
    timeline_id: str = "tl"
    last_record_lsn: Lsn = START
    prev_record_lsn: Lsn = PREV
    ingested: list[Lsn] = field(default_factory=list)

    def ingest(self, rec: DecodedRecord) -> list[tuple[bytes, int, bytes]]:
        self.ingested.append(rec.lsn)
        self.prev_record_lsn, self.last_record_lsn = rec.lsn, rec.end_lsn
        return [(b"k" * 18, int(rec.end_lsn), b"v")]

    def should_freeze(self) -> bool:
        return False


def test_the_receiver_ingests_nothing_of_another_history() -> None:
    data, lsns = _stream(4, wrong_prev_at=2)
    tl = FakeTimeline()
    published: list[list[tuple[bytes, int, bytes]]] = []
    progress: list[Lsn] = []
    rx = WalReceiver(tl, "host=127.0.0.1", reload=lambda: tl,  # type: ignore[arg-type]
                     on_values=published.append,
                     on_progress=lambda: progress.append(tl.last_record_lsn),
                     mark_broken=lambda reason: None)
    decoder = WalStreamDecoder(START, prev_lsn=tl.prev_record_lsn)
    with pytest.raises(CorruptWalError, match="incorrect prev-link"):
        rx._handle_xlog(decoder, XLogData(START, Lsn(START + len(data)), 0, data))
    # The two records of the timeline's own history are ingested (and published), the
    # third and everything after it are not; the next run reloads from disk.
    assert tl.ingested == lsns[:2]
    assert [v[1] for batch in published for v in batch] == [int(lsns[1]), int(lsns[2])]
    assert progress == []
    assert rx._reload_pending
