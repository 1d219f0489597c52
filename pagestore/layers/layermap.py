"""LayerMap: which layers can hold a key at an LSN, and the versions needed to rebuild it.

The read path (ARCHITECTURE.md): to get key K as of LSN X, walk the timeline's sources
from the newest down, collecting K's versions at or below X, until a version that needs
nothing older (an image, or a record with will_init) or the bottom is reached.  The
sources are the extra in-memory ones (ingest's open and frozen layers, pageread's
recent-WAL tail), then the layer files.  ``cont`` (exclusive) is the LSN below which
versions are still wanted; it only ever decreases, so no version is taken twice.

The layer files are searched, not scanned (Neon's layer_map.rs does the same with a
persistent tree; this is a simpler static index, rebuilt when the set of layers changes):

- L0 deltas cover the whole key range: they are kept apart, sorted by LSN.
- L1 deltas and image layers are indexed by key: the key space is cut at every layer's
  key_start and key_end into segments; each segment lists the layers covering it (deltas
  by LSN, images by LSN).  A lookup bisects to the key's segment and never visits a layer
  whose key range does not hold the key.
- Delta layers that hold one key have disjoint LSN ranges (ingest flushes are
  contiguous; compaction swaps L0s for L1s over the same LSN range in one transaction),
  so "the delta to read next" is the one with the highest lsn_start below ``cont``.
- Each step takes the newer of that delta and the newest image layer below ``cont``: if
  the image is at least as new as everything the delta holds below ``cont``, the image
  ends the walk (holding K's image at its LSN, or saying K did not exist then);
  otherwise the delta's versions above the image are read (lsn >= image LSN + 1) and the
  walk goes on from there.
- Inside a delta layer only the versions needed are read (DeltaLayerReader.needed_versions).

A file that is registered but missing (compaction or GC removed it after this map was
read) is LayerFileMissing: the caller reloads the map and retries (TimelineView does).
Values are ``pagestore.values`` encodings in every kind of source.
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pagestore import values
from pagestore.errors import LayerFileMissing
from pagestore.layers.delta import DeltaLayerReader
from pagestore.layers.image import ImageLayerReader
from pagestore.lsn import Lsn

LayerReader = DeltaLayerReader | ImageLayerReader

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from pagestore.keys import Key
    from pagestore.layers.desc import LayerDesc


class VersionSource(Protocol):
    """Anything that holds versions of keys from an LSN up, like an in-memory layer."""

    @property
    def lsn_start(self) -> Lsn: ...

    def versions_of(self, key_bytes: bytes, lsn_end: int) -> list[tuple[Lsn, bytes]]:
        """Every version of the key with lsn < lsn_end, oldest first."""
        ...


@dataclass(slots=True)
class ValueChain:
    """What it takes to rebuild one key: a base image (or none, when the first record
    initialises the page) and the records after it, oldest first."""

    key: Key
    lsn: Lsn
    image: bytes | None = None
    image_lsn: Lsn | None = None
    records: list[tuple[Lsn, bytes]] = field(default_factory=list)
    #: The walk ended at an image layer holding the key's range: what it found (or that
    #: the key did not exist then) is final; nothing older, not even an ancestor, counts.
    settled: bool = False

    @property
    def found(self) -> bool:
        return self.image is not None or bool(self.records)

    @property
    def complete(self) -> bool:
        """Needs nothing older: a base image, or a first record that initialises the key."""
        return self.image is not None or bool(
            self.records and values.will_init(self.records[0][1]))


def _by_lsn_start(layer: LayerDesc) -> int:
    return layer.lsn_start


class _Segment:
    """The L1 deltas and image layers covering one key segment, each sorted by LSN."""

    __slots__ = ("delta_starts", "deltas", "image_lsns", "images")

    def __init__(self, layers: Iterable[LayerDesc]) -> None:
        deltas = sorted((d for d in layers if not d.is_image), key=_by_lsn_start)
        images = sorted((d for d in layers if d.is_image), key=_by_lsn_start)
        self.deltas = deltas
        self.delta_starts = [int(d.lsn_start) for d in deltas]
        self.images = images
        self.image_lsns = [int(d.lsn_start) for d in images]


class LayerIndex:
    """An immutable search structure over one set of layers (see the module docstring)."""

    def __init__(self, layers: Iterable[LayerDesc]) -> None:
        self.layers: tuple[LayerDesc, ...] = tuple(sorted(
            layers, key=lambda d: (d.lsn_end, d.is_image, d.file_name), reverse=True))
        l0 = sorted((d for d in self.layers if d.is_l0), key=_by_lsn_start)
        self.l0 = l0
        self.l0_starts = [int(d.lsn_start) for d in l0]
        rest = [d for d in self.layers if not d.is_l0]
        bounds = sorted({b for d in rest for b in (d.key_start, d.key_end)})
        members: list[list[LayerDesc]] = [[] for _ in range(max(len(bounds) - 1, 0))]
        for d in rest:
            for i in range(bisect_left(bounds, d.key_start), bisect_left(bounds, d.key_end)):
                members[i].append(d)
        self.bounds = bounds
        self.segments = [_Segment(m) for m in members]
        self.names = {d.file_name for d in self.layers}

    def segment(self, key_bytes: bytes) -> _Segment | None:
        i = bisect_right(self.bounds, key_bytes) - 1
        if 0 <= i < len(self.segments):
            return self.segments[i]
        return None

    def next_delta(self, seg: _Segment | None, cont: int) -> LayerDesc | None:
        """The delta layer holding the key with the highest lsn_start below ``cont``."""
        best = None
        i = bisect_left(self.l0_starts, cont) - 1
        if i >= 0:
            best = self.l0[i]
        if seg is not None:
            j = bisect_left(seg.delta_starts, cont) - 1
            if j >= 0 and (best is None or seg.deltas[j].lsn_start > best.lsn_start):
                best = seg.deltas[j]
        return best

    @staticmethod
    def next_image(seg: _Segment | None, cont: int) -> LayerDesc | None:
        """The newest image layer holding the key's range at an LSN below ``cont``."""
        if seg is None:
            return None
        i = bisect_left(seg.image_lsns, cont) - 1
        return seg.images[i] if i >= 0 else None

    def search(self, key_bytes: bytes, cont: int) -> tuple[LayerDesc, int] | None:
        """The next layer to read for a key whose versions below ``cont`` are wanted, and
        the lowest LSN to take from it (an image layer: its LSN); None at the bottom."""
        seg = self.segment(key_bytes)
        delta = self.next_delta(seg, cont)
        image = self.next_image(seg, cont)
        if image is not None and (delta is None
                                  or min(int(delta.lsn_end), cont) <= image.lsn_start + 1):
            return image, int(image.lsn_start)
        if delta is None:
            return None
        floor = int(delta.lsn_start)
        if image is not None and image.lsn_start + 1 > floor:
            floor = image.lsn_start + 1
        return delta, floor


class LayerMap:
    """The layer files of one timeline: a LayerIndex, the map's version (the catalog's
    layers_version it was read at) and a small cache of open readers."""

    def __init__(self, timeline_dir: Path, layers: Sequence[LayerDesc] = (), *,
                 version: int = -1, max_open: int = 256,
                 opener: Callable[[LayerDesc], LayerReader] | None = None) -> None:
        self.timeline_dir = timeline_dir
        # How a layer is opened: from timeline_dir, or (remote storage on) through
        # pagestore.remote.ondemand.LayerFiles, which fetches what is not on local disk.
        self._opener = opener
        self._index = LayerIndex(layers)
        self.version = version
        self._readers: OrderedDict[str, LayerReader] = OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()

    @property
    def layers(self) -> tuple[LayerDesc, ...]:
        """Every layer, newest (by lsn_end) first."""
        return self._index.layers

    def open(self, desc: LayerDesc) -> LayerReader:
        """A new reader of one of the map's layers (for scans: compaction), not cached."""
        if self._opener is not None:
            return self._opener(desc)
        path = self.timeline_dir / desc.file_name
        try:
            return ImageLayerReader(path) if desc.is_image else DeltaLayerReader(path)
        except FileNotFoundError:
            raise LayerFileMissing(f"layer file {path} is in the layer map but not on local "
                                   "disk (removed by compaction or GC since the map was "
                                   "read?)") from None

    def _reader(self, desc: LayerDesc) -> LayerReader:
        with self._lock:
            r = self._readers.get(desc.file_name)
            if r is not None:
                self._readers.move_to_end(desc.file_name)
                return r
        r = self.open(desc)
        with self._lock:
            self._readers[desc.file_name] = r
            while len(self._readers) > self._max_open:
                self._readers.popitem(last=False)  # closed once no read holds it
        return r

    def add(self, desc: LayerDesc, version: int | None = None) -> None:
        """Register a layer this process wrote and committed (ingest's own flush), which
        made the catalog's layers_version ``version``.  The map takes that version only
        if it held the one just before: otherwise someone else changed the catalog's map
        in between, and the next ``replace`` must not be refused."""
        with self._lock:
            if desc.file_name not in self._index.names:
                self._index = LayerIndex([*self._index.layers, desc])
            if version is not None and version == self.version + 1:
                self.version = version

    def replace(self, layers: Sequence[LayerDesc], version: int) -> bool:
        """Take a layer map read from the catalog at ``version``, unless the map held is
        as new already (a late read never replaces a newer map).  Readers of files that
        stay are kept; the others are dropped from the cache, and a read that holds one
        keeps reading it (the file is closed when the last reference goes).  True if
        applied."""
        with self._lock:
            if version <= self.version:
                return False
            index = LayerIndex(layers)
            # A reader opened before its layer was uploaded knows no remote copy: drop
            # it once the layer has one (the next read opens it with its generation).
            generations = {d.file_name: d.generation for d in layers}
            before = {d.file_name: d.generation for d in self._index.layers}
            self._index = index
            self.version = version
            for name in [n for n in self._readers
                         if n not in index.names or generations[n] != before.get(n)]:
                del self._readers[name]
            return True

    def close(self) -> None:
        with self._lock:
            for r in self._readers.values():
                r.close()
            self._readers.clear()

    def get(self, key: Key, lsn: Lsn, extra: Sequence[VersionSource] = ()) -> ValueChain:
        """The versions of ``key`` needed to rebuild it as of ``lsn`` (inclusive), from the
        extra sources and this map's layer files (not the ancestor: TimelineView)."""
        chain = ValueChain(key, lsn)
        cont = int(lsn) + 1
        newer: list[list[tuple[Lsn, bytes]]] = []  # per source, newest source first

        def take(found: list[tuple[Lsn, bytes]]) -> bool:
            """Keep versions from the newest self-sufficient one; True when complete."""
            for i in range(len(found) - 1, -1, -1):
                if values.will_init(found[i][1]):
                    if values.is_image(found[i][1]):
                        chain.image = values.image_bytes(found[i][1])
                        chain.image_lsn = Lsn(found[i][0])
                        newer.append(found[i + 1:])
                    else:
                        newer.append(found[i:])
                    return True
            newer.append(found)
            return False

        kb = key.to_bytes()
        done = False
        for src in sorted(extra, key=_source_start, reverse=True):
            if src.lsn_start >= cont:
                continue
            found = src.versions_of(kb, cont)
            cont = int(src.lsn_start)
            if found and take(found):
                done = True
                break
        index = self._index
        while not done:
            step = index.search(kb, cont)
            if step is None:
                break
            desc, floor = step
            reader = self._reader(desc)
            if isinstance(reader, ImageLayerReader):
                value = reader.get_raw(kb)
                if value is not None:
                    take([(desc.lsn_start, value)])
                chain.settled = True
                break
            got = reader.needed_versions(kb, floor, cont)
            cont = floor
            if got and take([(Lsn(lsn_), v) for lsn_, v in got]):
                break
        for part in reversed(newer):
            chain.records.extend(part)
        return chain


    def get_many(self, keys: Sequence[Key], lsn: Lsn,
                 extra: Sequence[VersionSource] = ()) -> list[ValueChain]:
        """``[self.get(key, lsn, extra) for key in keys]``, reading each layer file once
        per run of keys that reach it at the same step of the walk.

        A full backup reads a relation's blocks in runs, a batched GetPage reads blocks of
        one relation: keys that are dense (a run's block numbers span at most
        DENSE_SPAN times its length; same relation) share one range lookup per layer
        instead of one lookup per key.  Sparse keys are read one by one, as ``get`` does,
        so a range never drags in versions of many keys nobody asked for."""
        if len(keys) < MIN_RUN:
            return [self.get(k, lsn, extra) for k in keys]
        kbs = [k.to_bytes() for k in keys]
        order = sorted(range(len(keys)), key=kbs.__getitem__)
        if not _dense([kbs[i] for i in order]):
            return [self.get(k, lsn, extra) for k in keys]
        chains = [ValueChain(k, lsn) for k in keys]
        newer: list[list[list[tuple[Lsn, bytes]]]] = [[] for _ in keys]
        conts = [int(lsn) + 1] * len(keys)

        def take(i: int, found: list[tuple[Lsn, bytes]]) -> bool:
            """``get``'s take() for key i: True when its chain is complete."""
            for j in range(len(found) - 1, -1, -1):
                if values.will_init(found[j][1]):
                    if values.is_image(found[j][1]):
                        chains[i].image = values.image_bytes(found[j][1])
                        chains[i].image_lsn = Lsn(found[j][0])
                        newer[i].append(found[j + 1:])
                    else:
                        newer[i].append(found[j:])
                    return True
            newer[i].append(found)
            return False

        sources = sorted(extra, key=_source_start, reverse=True)
        pending: list[int] = []
        for i in order:  # the in-memory sources: a dict lookup per key
            cont = conts[i]
            complete = False
            for src in sources:
                if src.lsn_start >= cont:
                    continue
                found = src.versions_of(kbs[i], cont)
                cont = int(src.lsn_start)
                if found and take(i, found):
                    complete = True
                    break
            conts[i] = cont
            if not complete:
                pending.append(i)
        index = self._index
        while pending:
            groups: dict[tuple[str, int, int], tuple[LayerDesc, list[int]]] = {}
            for i in pending:
                step = index.search(kbs[i], conts[i])
                if step is not None:
                    desc, floor = step
                    groups.setdefault((desc.file_name, floor, conts[i]), (desc, []))[1].append(i)
            pending = []
            for (_, floor, cont), (desc, members) in groups.items():
                reader = self._reader(desc)
                first, last = kbs[members[0]], kbs[members[-1]]
                if isinstance(reader, ImageLayerReader):
                    images = {kb: v for kb, _, _, v in reader.lookup_keyed(
                        first + _LSN_ZERO, last + _LSN_ALL)}
                    for i in members:
                        value = images.get(kbs[i])
                        if value is not None:
                            take(i, [(desc.lsn_start, value)])
                        chains[i].settled = True
                    continue
                found_by_key: dict[bytes, list[tuple[Lsn, bytes]]] = {}
                if cont > reader.lsn_start:
                    for kb, lsn_, _, v in reader.lookup_keyed(
                            first + _LSN_BE.pack(max(floor, 0)), last + _LSN_BE.pack(cont)):
                        if floor <= lsn_ < cont:
                            found_by_key.setdefault(kb, []).append((Lsn(lsn_), v))
                for i in members:
                    conts[i] = floor
                    got = found_by_key.get(kbs[i])
                    if not (got and take(i, got)):
                        pending.append(i)
            pending.sort(key=kbs.__getitem__)
        for i, chain in enumerate(chains):
            for part in reversed(newer[i]):
                chain.records.extend(part)
        return chains


#: get_many: fewer keys than this are read one by one.
MIN_RUN = 4
#: get_many: a run of keys is dense when its block numbers span at most this many times
#: its length (and its keys share everything but the block number).
DENSE_SPAN = 4
_LSN_BE = struct.Struct(">Q")
_LSN_ZERO = bytes(8)
_LSN_ALL = b"\xff" * 8


def _dense(sorted_kbs: list[bytes]) -> bool:
    first, last = sorted_kbs[0], sorted_kbs[-1]
    if first[:14] != last[:14]:
        return False
    span = int.from_bytes(last[14:], "big") - int.from_bytes(first[14:], "big") + 1
    return span <= DENSE_SPAN * len(sorted_kbs)


def _source_start(src: VersionSource) -> int:
    return int(src.lsn_start)


def latest_value(chain: ValueChain) -> bytes | None:
    """A metadata key's value from its chain (metadata values are images): the newest
    one; None when the key is absent or its newest value is a tombstone (empty)."""
    if chain.records:
        data = values.image_bytes(chain.records[-1][1])
    elif chain.image is not None:
        data = chain.image
    else:
        return None
    return data if data else None
