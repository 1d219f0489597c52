"""Ingest without a server: import a base backup directory, then ingest WAL segment
files into one in-memory layer.  Used by the consistency harness, benchmarks and tools
that need a timeline's values without running the stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagestore import values
from pagestore.catalog.repo import LayerRecord
from pagestore.layers.inmemory import InMemoryLayer
from pagestore.layers.layermap import LayerMap
from pagestore.lsn import Lsn
from pagestore.pg.walfiles import find_segments, read_wal_records
from pagestore.redo.apply import reconstruct
from pagestore.redo.context import RedoContext
from services.ingest.importer import import_datadir
from services.ingest.walingest import TimelineState, WalIngest

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

    def get_page(self, key: Key, lsn: Lsn) -> bytes | None:
        """The page (or SLRU page) for ``key`` as of ``lsn``; None if it has no version."""
        chain = self.layers.get(key, lsn, [self.recent])
        return reconstruct(self.ctx, chain)

    def get_image(self, key: Key, lsn: Lsn) -> bytes | None:
        """A metadata key's value as of ``lsn``; None if absent."""
        return self.layers.get_image(key, lsn, [self.recent])

    def read_value(self, key: Key, lsn: Lsn) -> bytes:
        """A self-sufficient value for ``key`` as of ``lsn`` (see WalIngest.read_page)."""
        chain = self.layers.get(key, lsn, [self.recent])
        if not chain.records:
            assert chain.image is not None, f"no version of {key} at {lsn}"
            return values.image(chain.image)
        return values.materialize(key.to_bytes(), chain.image,
                                  [(int(k), v) for k, v in chain.records])


def import_and_ingest(backup: Path, start: Lsn, wal_dir: Path, work: Path, *,
                      end: Lsn | None = None,
                      on_record: Callable[[DecodedRecord], None] | None = None) -> OfflineTimeline:
    imported = import_datadir(backup, work, start)
    info = imported.layer
    layers = LayerMap(work, [LayerRecord("image", 0, info.key_start.to_bytes(),
                                         info.key_end.to_bytes(), info.lsn_start, info.lsn_end,
                                         info.file_name, info.file_size, info.checksum)])
    tl = OfflineTimeline(layers, InMemoryLayer(Lsn(start + 1)), imported.state, start,
                         RedoContext.from_control_file(imported.control.raw), 0)
    ingest = WalIngest(imported.state, read_page=tl.read_value)
    out: list[tuple[Key, Lsn, bytes]] = []
    for rec in read_wal_records(find_segments([wal_dir]), start, end):
        out.clear()
        ingest.ingest(rec, out)
        for key, lsn, value in out:
            tl.recent.put(key, lsn, value)
        tl.lsn = rec.end_lsn
        tl.records += 1
        if on_record is not None:
            on_record(rec)
    return tl
