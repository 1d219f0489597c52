"""WAL segment files: names, discovery, and decoding records out of them.

Segment file names are ``%08X%08X%08X`` (timeline, segno // segments-per-xlogid,
segno % segments-per-xlogid), as XLogFileName in src/include/access/xlog_internal.h.
``read_wal_records`` feeds consecutive segments to a WalStreamDecoder and yields the
records in [start, end); a missing segment in the middle is an error, the end of written
WAL is not (see waldecoder.EndOfWal).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagestore.errors import BadRequest, CorruptWalError
from pagestore.keys import ForkNumber
from pagestore.lsn import Lsn
from pagestore.pg.waldecoder import WAL_SEGMENT_SIZE, EndOfWal, WalStreamDecoder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pagestore.pg.xlogrecord import DecodedRecord

log = logging.getLogger(__name__)

SEGMENT_NAME_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class SegmentFile:
    timeline: int
    segno: int
    path: Path


def segment_file_name(timeline: int, segno: int, segment_size: int = WAL_SEGMENT_SIZE) -> str:
    per_id = 0x1_0000_0000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def parse_segment_name(name: str, segment_size: int = WAL_SEGMENT_SIZE) -> tuple[int, int] | None:
    m = SEGMENT_NAME_RE.match(name)
    if not m:
        return None
    per_id = 0x1_0000_0000 // segment_size
    return int(m.group(1), 16), int(m.group(2), 16) * per_id + int(m.group(3), 16)


def find_segments(paths: list[Path], timeline: int | None = None,
                  segment_size: int = WAL_SEGMENT_SIZE) -> list[SegmentFile]:
    """Segment files named by ``paths`` (files, or directories holding them), sorted."""
    found: list[SegmentFile] = []
    for p in paths:
        candidates = sorted(p.iterdir()) if p.is_dir() else [p]
        if not p.exists():
            raise BadRequest(f"{p}: no such file or directory")
        for c in candidates:
            parsed = parse_segment_name(c.name, segment_size)
            if parsed is None:
                if not p.is_dir():
                    raise BadRequest(f"{c}: not a WAL segment file name")
                continue
            found.append(SegmentFile(parsed[0], parsed[1], c))
    if not found:
        raise BadRequest(f"no WAL segment files in {', '.join(map(str, paths))}")
    tli = timeline if timeline is not None else min(s.timeline for s in found)
    return sorted(s for s in found if s.timeline == tli)


def read_wal_records(segments: list[SegmentFile], start: Lsn | None = None,
                     end: Lsn | None = None, *,
                     segment_size: int = WAL_SEGMENT_SIZE) -> Iterator[DecodedRecord]:
    """Records starting in [start, end) from consecutive segment files.

    Stops quietly at the end of written WAL (after logging where and why); raises
    CorruptWalError for anything else that is wrong, and BadRequest when ``start`` lies
    outside the files or a segment is missing.
    """
    if not segments:
        return
    first = segments[0].segno * segment_size
    if start is None:
        start = Lsn(first)
    by_segno = {s.segno: s for s in segments}
    seg = start // segment_size
    if seg not in by_segno:
        raise BadRequest(f"start LSN {start} is not in the given WAL files "
                         f"(first segment starts at {Lsn(first)})")
    page_start = start - start % 8192
    # Start at the page boundary so the page header is validated; records starting
    # before ``start`` are skipped below.
    decoder = WalStreamDecoder(Lsn(page_start), segment_size=segment_size)
    pos = page_start
    last_segno = max(by_segno)
    while True:
        try:
            while (rec := decoder.poll()) is not None:
                if rec.lsn < start:
                    continue
                if end is not None and rec.lsn >= end:
                    return
                yield rec
        except EndOfWal as e:
            log.info("stopped: %s", e)
            return
        seg = pos // segment_size
        if seg not in by_segno:
            if seg > last_segno:
                if end is not None and decoder.lsn < end:
                    raise CorruptWalError(f"WAL ends at {decoder.lsn}, before the end LSN {end}")
                return
            raise BadRequest(f"WAL segment for {Lsn(pos)} is missing "
                             f"({segment_file_name(segments[0].timeline, seg, segment_size)})")
        wanted = min(READ_CHUNK, segment_size - pos % segment_size)
        with open(by_segno[seg].path, "rb") as f:
            f.seek(pos % segment_size)
            chunk = f.read(wanted)
        decoder.feed(chunk)
        pos += len(chunk)
        if len(chunk) < wanted:
            # A short read inside a segment: the file is shorter than a segment.
            try:
                while (rec := decoder.poll()) is not None:
                    if rec.lsn >= start and (end is None or rec.lsn < end):
                        yield rec
            except EndOfWal as e:
                log.info("stopped: %s", e)
                return
            raise CorruptWalError(f"WAL segment file {by_segno[seg].path} is truncated: "
                                  f"{pos % segment_size} of {segment_size} bytes")


def record_summary(rec: DecodedRecord) -> dict[str, object]:
    """The JSON object `pagestore waldump` prints for one record."""
    return {
        "lsn": str(rec.lsn),
        "rmgr": rec.rmgr_name,
        "info": rec.info,
        "xid": rec.xid,
        "total_len": rec.header.xl_tot_len,
        "blocks": [
            {"rel": f"{b.rel.spcnode}/{b.rel.dbnode}/{b.rel.relnode}",
             "fork": ForkNumber(b.rel.forknum).label if 0 <= b.rel.forknum <= 3 else str(b.rel.forknum),
             "blk": b.blkno, "image": b.has_image, "will_init": b.will_init}
            for b in rec.blocks
        ],
    }
