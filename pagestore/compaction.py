"""Compaction, image layer creation and GC planning: what housekeeping does to layers.

Each step reads layer files and writes new ones into the timeline directory; committing
the result (one catalog transaction that swaps the old layers for the new ones) and
removing files is the caller's (services/housekeeping/jobs.py).  Mirrors Neon's
pageserver/src/tenant/timeline/compaction.rs and gc in timeline.rs, simplified:

- **L0 -> L1** (``compact_level0``): once ``compaction_threshold`` L0 deltas exist, all
  of them are merged, in (key, LSN) order, into L1 deltas over their whole LSN range, cut
  into key partitions of about ``compaction_target_size`` bytes of values (a key's
  versions never straddle two files).  The partitions tile the key space from KEY_MIN to
  KEY_MAX.  Nothing is dropped: the L1s hold exactly the L0s' values.
- **Image layers** (``plan_images`` / ``write_image_layer``): the key space at an LSN
  (every key that exists there, from the metadata: TimelineView.keyspace) is cut into
  partitions of about ``compaction_target_size`` bytes of pages; a partition gets an image
  layer at that LSN when at least ``image_creation_threshold`` delta layers hold versions
  of its keys above its newest image.  A key absent from an image layer does not exist
  at its LSN, so dropped relations and truncated blocks leave no trace in images.
- **GC** (``plan_gc``): a layer can go when no read that must keep working needs it:
  reads at or above the GC cutoff, and reads at each retained LSN (a child branch point,
  an LSN lease).  A read at LSN R needs layer L if L holds versions at or below R
  (L.lsn_start <= R) and no image layer of a range covering L's key range sits at an LSN
  in [L.lsn_end - 1, R] (such an image holds everything L could give such a read).  The
  cutoff counts as one more retained LSN (every read above it also meets that image
  first).  Image layers are judged the same way, needing a newer image to go.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagestore import values
from pagestore.keys import BLCKSZ, KEY_MAX, KEY_MIN, Key
from pagestore.layers.delta import DeltaLayerReader, DeltaLayerWriter
from pagestore.layers.desc import LEVEL_L1, LayerDesc
from pagestore.layers.format import FLAG_WILL_INIT
from pagestore.layers.image import ImageLayerWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from pagestore.layers.layermap import ValueChain
    from pagestore.lsn import Lsn
    from pagestore.timeline import TimelineView

log = logging.getLogger(__name__)

#: The tag housekeeping's writers put in their temporary file names.
WRITER = "housekeeping"


@dataclass(frozen=True, slots=True)
class CompactionSettings:
    """The tenant settings compaction uses (Neon's names and defaults)."""

    compaction_threshold: int = 10
    compaction_target_size: int = 128 * 1024 * 1024
    image_creation_threshold: int = 3


# ------------------------------------------------------------------------ L0 -> L1

def l0_layers(layers: Iterable[LayerDesc]) -> list[LayerDesc]:
    """The L0 deltas, oldest first."""
    return sorted((d for d in layers if d.is_l0), key=lambda d: d.lsn_start)


def compact_level0(timeline_dir: Path, l0: Sequence[LayerDesc], target_size: int, *,
                   check: Callable[[], None] | None = None,
                   open_layer: Callable[[LayerDesc], DeltaLayerReader] | None = None
                   ) -> list[LayerDesc]:
    """Merge ``l0`` (oldest first, every one of them) into L1 deltas of about
    ``target_size`` bytes each over their whole LSN range; returns the new descriptors.
    The files are written and durable but not registered; on an error none is left.
    ``check`` is called between partitions (a failpoint or a cancellation); ``open_layer``
    opens an input (default: the file in ``timeline_dir``)."""
    if len(l0) < 2:
        raise ValueError("compaction needs at least two L0 layers")
    lsn_start, lsn_end = l0[0].lsn_start, l0[-1].lsn_end
    readers = [open_layer(d) if open_layer is not None
               else DeltaLayerReader(timeline_dir / d.file_name) for d in l0]
    out: list[LayerDesc] = []
    writer: DeltaLayerWriter | None = None
    try:
        merged: Iterator[tuple[bytes, int, int, bytes]] = heapq.merge(
            *(r.iter_entries() for r in readers))
        size = 0
        last_key = b""
        for kb, lsn, flags, value in merged:
            if writer is not None and size >= target_size and kb != last_key:
                writer.narrow_key_end(Key.from_bytes(kb))
                out.append(writer.finish().desc(LEVEL_L1))
                writer = None
                if check is not None:
                    check()
            if writer is None:
                start = Key.from_bytes(kb) if out else KEY_MIN
                writer = DeltaLayerWriter(timeline_dir, start, KEY_MAX, lsn_start, lsn_end,
                                          writer=WRITER)
                size = 0
            writer.put_raw(kb, lsn, flags & FLAG_WILL_INIT, value)
            size += len(value)
            last_key = kb
        if writer is not None:
            out.append(writer.finish().desc(LEVEL_L1))
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        for d in out:
            (timeline_dir / d.file_name).unlink(missing_ok=True)
        raise
    finally:
        for r in readers:
            r.close()
    log.info("compacted %d L0 layers [%s, %s) into %d L1 layers", len(l0), lsn_start,
             lsn_end, len(out))
    return out


# ------------------------------------------------------------------------ images

@dataclass(frozen=True, slots=True)
class KeyPartition:
    """A key range [key_start, key_end) and the keys in it that exist at the LSN."""

    key_start: bytes
    key_end: bytes
    keys: tuple[tuple[Key, bool], ...]  # (key, is a page)


def partition_keyspace(keyspace: Iterable[tuple[Key, bool]],
                       target_size: int) -> list[KeyPartition]:
    """Cut the keys into ranges of about ``target_size`` bytes (a page counts BLCKSZ,
    metadata a little), tiling [KEY_MIN, KEY_MAX)."""
    parts: list[KeyPartition] = []
    current: list[tuple[Key, bool]] = []
    size = 0
    start = KEY_MIN.to_bytes()
    for key, is_page in keyspace:
        if size >= target_size and current:
            kb = key.to_bytes()
            parts.append(KeyPartition(start, kb, tuple(current)))
            start, current, size = kb, [], 0
        current.append((key, is_page))
        size += BLCKSZ if is_page else 64
    parts.append(KeyPartition(start, KEY_MAX.to_bytes(), tuple(current)))
    return parts


def delta_depth(layers: Iterable[LayerDesc], key_start: bytes, key_end: bytes,
                lsn: Lsn) -> int:
    """How many delta layers hold versions of keys in [key_start, key_end) above the
    newest image layer covering the whole range, at or below ``lsn``."""
    layers = list(layers)
    base = max((int(d.lsn_start) for d in layers
                if d.is_image and d.lsn_start <= lsn and d.covers_keys(key_start, key_end)),
               default=-1)
    return sum(1 for d in layers if not d.is_image and d.lsn_end - 1 > base
               and d.lsn_start <= lsn and d.key_start < key_end and key_start < d.key_end)


def plan_images(layers: Sequence[LayerDesc], partitions: Sequence[KeyPartition], lsn: Lsn,
                threshold: int) -> list[KeyPartition]:
    """The partitions that get an image layer at ``lsn``."""
    return [p for p in partitions
            if delta_depth(layers, p.key_start, p.key_end, lsn) >= threshold]


def write_image_layer(timeline_dir: Path, view: TimelineView, part: KeyPartition, lsn: Lsn,
                      redo: Callable[[list[ValueChain]], list[bytes | None]], *,
                      batch: int = 256) -> LayerDesc:
    """An image layer at ``lsn`` holding every key of ``part`` that exists there: pages
    rebuilt through ``redo`` (in batches), metadata values as they are (tombstones left
    out).  Written and durable, not registered."""
    with ImageLayerWriter(timeline_dir, Key.from_bytes(part.key_start),
                          Key.from_bytes(part.key_end), lsn, writer=WRITER) as w:
        pending: list[ValueChain] = []

        def flush_pages() -> None:
            pages = redo([c for c in pending if c.records])
            it = iter(pages)
            for chain in pending:
                page = next(it) if chain.records else chain.image
                if page is not None:
                    w.put(chain.key, values.image(page))
            pending.clear()

        for key, is_page in part.keys:
            if is_page:
                chain = view.chain(key, lsn)
                if chain.found:
                    pending.append(chain)
                    if len(pending) >= batch:
                        flush_pages()
                continue
            if pending:
                flush_pages()
            data = view.image(key, lsn)
            if data is not None:
                w.put(key, values.image(data))
        if pending:
            flush_pages()
        return w.finish().desc(LEVEL_L1)


# ------------------------------------------------------------------------ GC

@dataclass(frozen=True, slots=True)
class GcPlan:
    """Which layers GC removes and why the others stay (Neon's GcResult counters)."""

    remove: tuple[LayerDesc, ...]
    total: int
    needed_by_cutoff: int
    needed_by_branches: int
    needed_by_leases: int


def _covered(key_start: bytes, key_end: bytes, ranges: Iterable[tuple[bytes, bytes]]) -> bool:
    """Does the union of ``ranges`` cover [key_start, key_end)?"""
    pos = key_start
    for start, end in sorted(ranges):
        if start > pos:
            return False
        if end > pos:
            pos = end
            if pos >= key_end:
                return True
    return pos >= key_end


def _needed_at(layer: LayerDesc, images: Sequence[LayerDesc], lsn: int) -> bool:
    """Does a read at ``lsn`` need ``layer`` (see the module docstring)?"""
    if layer.lsn_start > lsn:
        return False
    low = int(layer.lsn_end) - 1 if not layer.is_image else int(layer.lsn_start) + 1
    return not _covered(layer.key_start, layer.key_end,
                        ((img.key_start, img.key_end) for img in images
                         if low <= img.lsn_start <= lsn))


def plan_gc(layers: Sequence[LayerDesc], cutoff: Lsn, *, branch_points: Iterable[Lsn] = (),
            leases: Iterable[Lsn] = ()) -> GcPlan:
    """The layers GC may remove given the cutoff and the retained LSNs."""
    images = [d for d in layers if d.is_image]
    retain_branches = sorted({int(x) for x in branch_points})
    retain_leases = sorted({int(x) for x in leases})
    remove = []
    by_cutoff = by_branches = by_leases = 0
    for layer in layers:
        if layer.lsn_end - 1 > cutoff or _needed_at(layer, images, int(cutoff)):
            by_cutoff += 1
        elif any(_needed_at(layer, images, r) for r in retain_branches):
            by_branches += 1
        elif any(_needed_at(layer, images, r) for r in retain_leases):
            by_leases += 1
        else:
            remove.append(layer)
    return GcPlan(tuple(remove), len(layers), by_cutoff, by_branches, by_leases)
