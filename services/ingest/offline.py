"""Ingest without a server: import a base backup directory, then ingest WAL segment
files into one in-memory layer.  Used by the consistency harness, benchmarks and tools
that need a timeline's values without running the stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagestore.layers.inmemory import InMemoryLayer
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from pagestore.pg.walfiles import find_segments, read_wal_records
from pagestore.redo.context import RedoContext
from pagestore.timeline import TimelineView
from services.ingest.importer import import_datadir
from services.ingest.walingest import TimelineState, Values, WalIngest

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pagestore.keys import Key
    from pagestore.pg.xlogrecord import DecodedRecord


@dataclass
class OfflineTimeline:
    layers: LayerMap          # the imported image layer
    recent: InMemoryLayer     # every value ingested from the WAL
    state: TimelineState      # metadata as of ``lsn``
    lsn: Lsn                  # end of the last record ingested
    ctx: RedoContext          # the cluster's settings, for redo
    records: int
    view: TimelineView = field(init=False)

    def __post_init__(self) -> None:
        self.view = TimelineView(self.layers, sources=lambda: (self.recent,))

    def get_page(self, key: Key, lsn: Lsn) -> bytes | None:
        """The page (or SLRU page) for ``key`` as of ``lsn``; None if it has no version."""
        return self.view.page(self.ctx, key, lsn)

    def get_image(self, key: Key, lsn: Lsn) -> bytes | None:
        """A metadata key's value as of ``lsn``; None if absent."""
        return self.view.image(key, lsn)


def import_and_ingest(backup: Path, start: Lsn, wal_dir: Path, work: Path, *,
                      end: Lsn | None = None,
                      on_record: Callable[[DecodedRecord], None] | None = None) -> OfflineTimeline:
    imported = import_datadir(backup, work, start)
    info = imported.layer
    layers = LayerMap(work, [info.desc()])
    tl = OfflineTimeline(layers, InMemoryLayer(Lsn(start + 1)), imported.state, start,
                         RedoContext.from_control_file(imported.control.raw), 0)
    ingest = WalIngest(imported.state, read_page=tl.view.value)
    out: Values = []
    for rec in read_wal_records(find_segments([wal_dir]), start, end):
        out.clear()
        ingest.ingest(rec, out)
        for key, lsn, value in out:
            tl.recent.put_raw(key, lsn, value)
        tl.lsn = rec.end_lsn
        tl.records += 1
        if on_record is not None:
            on_record(rec)
    return tl
