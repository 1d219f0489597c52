"""LayerMap: which layers hold a key at an LSN, and the versions needed to rebuild it.

The read path (ARCHITECTURE.md): to get key K as of LSN X, walk the timeline's layers
from the newest down, collecting K's versions below X, until a version that needs
nothing older (an image, or a record with will_init) or the bottom is reached.

Rules:
- ``cont_lsn`` (exclusive) only ever decreases: a layer contributes the versions in
  [its lsn_start, cont_lsn), then cont_lsn becomes its lsn_start.  Layers are tried in
  descending lsn_end, an image layer before a delta layer ending at the same LSN, so
  overlapping layers never yield a version twice.
- An image layer whose key range holds K ends the walk: it has K's image at its LSN, or
  K did not exist then.
- Extra sources (ingest's in-memory layers, pageread's recent-WAL tail) take part like
  delta layers, through the ``VersionSource`` protocol.
- Values are ``pagestore.values`` encodings in every kind of source.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pagestore import values
from pagestore.errors import NotFound
from pagestore.layers.delta import DeltaLayerReader
from pagestore.layers.image import ImageLayerReader
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from pagestore.catalog.repo import LayerRecord
    from pagestore.keys import Key


class VersionSource(Protocol):
    """Anything that holds versions of keys over an LSN range, like a delta layer."""

    @property
    def lsn_start(self) -> Lsn: ...

    def versions(self, key: Key, lsn_end: Lsn) -> list[tuple[Lsn, bytes]]: ...


@dataclass(slots=True)
class ValueChain:
    """What it takes to rebuild one key: a base image (or none, when the first record
    initialises the page) and the records after it, oldest first."""

    key: Key
    lsn: Lsn
    image: bytes | None = None
    image_lsn: Lsn | None = None
    records: list[tuple[Lsn, bytes]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.image is not None or bool(self.records)


class LayerMap:
    """The layers of one timeline, with a small cache of open readers."""

    def __init__(self, timeline_dir: Path, layers: Sequence[LayerRecord], *,
                 max_open: int = 256) -> None:
        self.timeline_dir = timeline_dir
        self.layers = sorted(layers, key=lambda r: (r.lsn_end, r.kind == "image"), reverse=True)
        self._readers: OrderedDict[str, DeltaLayerReader | ImageLayerReader] = OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()

    def _reader(self, rec: LayerRecord) -> DeltaLayerReader | ImageLayerReader:
        with self._lock:
            r = self._readers.get(rec.file_name)
            if r is not None:
                self._readers.move_to_end(rec.file_name)
                return r
        path = self.timeline_dir / rec.file_name
        if not path.exists():
            raise NotFound(f"layer file {path} is registered but missing on local disk")
        r = DeltaLayerReader(path) if rec.kind == "delta" else ImageLayerReader(path)
        with self._lock:
            self._readers[rec.file_name] = r
            while len(self._readers) > self._max_open:
                _, old = self._readers.popitem(last=False)
                old.close()
        return r

    def add(self, rec: LayerRecord) -> None:
        """Register a newly written layer (keeps the newest-first order)."""
        with self._lock:
            self.layers = sorted([*self.layers, rec],
                                 key=lambda r: (r.lsn_end, r.kind == "image"), reverse=True)

    def has(self, file_name: str) -> bool:
        with self._lock:
            return any(r.file_name == file_name for r in self.layers)

    def replace(self, layers: Sequence[LayerRecord]) -> None:
        """Take a new list of layers (a catalog reload), keeping the open readers of
        files that stay; a read in progress keeps working with what it already has."""
        names = {r.file_name for r in layers}
        with self._lock:
            self.layers = sorted(layers, key=lambda r: (r.lsn_end, r.kind == "image"),
                                 reverse=True)
            for name in [n for n in self._readers if n not in names]:
                self._readers.pop(name).close()

    def close(self) -> None:
        with self._lock:
            for r in self._readers.values():
                r.close()
            self._readers.clear()

    def get(self, key: Key, lsn: Lsn, extra: Sequence[VersionSource] = ()) -> ValueChain:
        """The versions of ``key`` needed to rebuild it as of ``lsn`` (inclusive)."""
        chain = ValueChain(key, lsn)
        cont = Lsn(lsn + 1)
        newer: list[list[tuple[Lsn, bytes]]] = []  # per source, newest source first

        def take(found: list[tuple[Lsn, bytes]]) -> bool:
            """Keep versions from the newest self-sufficient one; True when complete."""
            for i in range(len(found) - 1, -1, -1):
                if values.will_init(found[i][1]):
                    if values.is_image(found[i][1]):
                        chain.image = values.image_bytes(found[i][1])
                        chain.image_lsn = found[i][0]
                        newer.append(found[i + 1:])
                    else:
                        newer.append(found[i:])
                    return True
            newer.append(found)
            return False

        done = False
        for src in sorted(extra, key=lambda s: s.lsn_start, reverse=True):
            if src.lsn_start >= cont:
                continue
            found = src.versions(key, cont)
            cont = src.lsn_start
            if found and take(found):
                done = True
                break
        if not done:
            kb = key.to_bytes()
            for rec in self.layers:
                if rec.lsn_start >= cont or not rec.key_start <= kb < rec.key_end:
                    continue
                reader = self._reader(rec)
                if isinstance(reader, ImageLayerReader):
                    value = reader.get(key)
                    if value is not None:
                        take([(rec.lsn_start, value)])
                    break
                found = [(v.lsn, v.value) for v in reader.versions(key, cont)]
                cont = rec.lsn_start
                if found and take(found):
                    break
        for part in reversed(newer):
            chain.records.extend(part)
        return chain

    def get_image(self, key: Key, lsn: Lsn, extra: Sequence[VersionSource] = ()) -> bytes | None:
        """A metadata key's value as of ``lsn``; None if absent (or a tombstone)."""
        chain = self.get(key, lsn, extra)
        if chain.records:
            last = chain.records[-1][1]
            data = values.image_bytes(last)
        elif chain.image is not None:
            data = chain.image
        else:
            return None
        return data if data else None
