"""TimelineReader: one timeline's read path in the page-read service.

Where a version of a key can be (ARCHITECTURE.md, "Data flow"):

- layer files registered in the catalog, up to the timeline's disk_consistent_lsn
  (the LayerMap, reloaded when the catalog NOTIFYs a change);
- the recent tail above it, streamed from the ingest service (SubscribeWal) and kept
  here in memory until a layer file covers it.

A read at LSN X walks tail then layers (LayerMap.get), then redo turns the chain into a
page: an image alone needs nothing; records go to the redo service in one batch per
request.  Metadata reads (sizes, directories, SLRU segments) read images only.

LSN rules (shared/reference/neon-protocols.md section 5.2): request_lsn 0 or below
not_modified_since is a bad request; below the GC cutoff or the first readable LSN (the
end of the base backup) is out of range, naming it; the effective LSN is
not_modified_since when that is ahead of the last record (then wait for it), else
min(last record, request_lsn).  Waits are bounded (pageread.wait_lsn_timeout).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pagestore.errors import BadRequest, FailedPrecondition, LsnOutOfRange, LsnTimeout, NotFound
from pagestore.keys import (
    BLCKSZ,
    Key,
    RelTag,
    SlruKind,
    rel_block_key,
    rel_size_key_bytes,
    slru_block_key,
)
from pagestore.layers.inmemory import InMemoryLayer
from pagestore.lsn import Lsn
from pagestore.timeline import TimelineView
from pagestore.timestamps import (
    LsnForTimestamp,
    commit_timestamp_reader,
    find_lsn_by_timestamp,
    timestamp_of_lsn,
)
from pagestore.waiting import LsnWaiter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pagestore.ids import TenantId, TimelineId
    from pagestore.layers.desc import LayerDesc
    from pagestore.layers.layermap import LayerMap, ValueChain

log = logging.getLogger(__name__)

T = TypeVar("T")

ZERO_PAGE = bytes(BLCKSZ)


#: A chunk of the recent tail is dropped whole: its size bounds how far past its limit the
#: tail can stay while layer files already cover most of it.
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class FoundPages:
    """What a lookup of pages found: ``pages`` (None where redo is still needed) and the
    chains to redo, by position."""

    pages: list[bytes | None]
    todo: list[tuple[int, ValueChain]]


class RecentTail:
    """Values above the layer files' disk_consistent_lsn, in chunks by LSN.

    Invariant: every value at or below ``last_record_lsn`` is here or in the layer map.
    So a value at or below it that arrives again (a resubscription, or an ingest that
    restarted or reloaded and streams again what it had in memory) is one already held,
    and is skipped.  ``progress`` wakes readers waiting for last_record_lsn to move.
    """

    CHUNK_VALUES = 100_000
    VALUE_OVERHEAD = 64  # bytes per value beyond its payload (key, LSN, list slots)

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self.chunks: list[InMemoryLayer] = []
        self.progress = LsnWaiter()
        self.bytes = 0

    @property
    def last_record_lsn(self) -> Lsn:
        return self.progress.lsn

    @last_record_lsn.setter
    def last_record_lsn(self, lsn: Lsn) -> None:
        """Moves forward only (and wakes the readers waiting for it)."""
        self.progress.advance(lsn)

    @property
    def received_lsn(self) -> int:
        """The newest LSN of any value received (at least last_record_lsn)."""
        chunks = self.chunks
        newest = chunks[-1].max_lsn if chunks else 0
        return max(int(self.progress.lsn), newest)

    def add(self, values: list[tuple[bytes, int, bytes]]) -> int:
        """Add values newer than last_record_lsn (older ones are held already); returns
        how many were added."""
        held = int(self.last_record_lsn)
        added = 0
        chunk = self.chunks[-1] if self.chunks else None
        for kb, lsn, value in values:
            if lsn <= held:
                continue
            # A chunk is cut between LSNs, never between two values of one record: a
            # read takes a chunk's versions from its start LSN up, the older chunks'
            # below it (LayerMap.get), so a record split across two would lose a value.
            if chunk is None or ((chunk.count >= self.CHUNK_VALUES
                                  or chunk.value_bytes >= self.chunk_bytes)
                                 and lsn > chunk.max_lsn):
                chunk = InMemoryLayer(Lsn(lsn))
                self.chunks.append(chunk)
            chunk.put_raw(kb, lsn, value)
            self.bytes += len(value) + self.VALUE_OVERHEAD
            added += 1
        return added

    def drop_through(self, lsn: Lsn) -> None:
        """Forget chunks whose every value is at or below ``lsn`` (now in layer files)."""
        keep = []
        for c in self.chunks:
            if c.max_lsn > lsn:
                keep.append(c)
            else:
                self.bytes -= c.value_bytes + c.count * self.VALUE_OVERHEAD
        self.chunks = keep


class PageCache:
    """A bounded LRU of materialized pages, keyed by (key, LSN of its newest version).

    A page depends only on the versions it was rebuilt from: the page as of any LSN at or
    above its newest version's LSN (and below the next version's) is the same page.  So
    while WAL flows and the read LSN moves on, a read of a page nobody changed since finds
    it here: the lookup of its versions still runs (it says which version is newest), the
    redo does not.  ``hits``/``misses`` count the lookups of pages that need redo.
    Lookups run on the event loop and in worker threads (backups, remote reads): a lock
    keeps the LRU whole."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pages: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key_bytes: bytes, last_modified: int) -> bytes | None:
        k = (key_bytes, last_modified)
        with self._lock:
            page = self._pages.get(k)
            if page is None:
                self.misses += 1
                return None
            self._pages.move_to_end(k)
            self.hits += 1
            return page

    def put(self, key_bytes: bytes, last_modified: int, page: bytes) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._pages[(key_bytes, last_modified)] = page
            if len(self._pages) > self.capacity:
                self._pages.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._pages.clear()


def is_rel_size_key(kb: bytes) -> bool:
    """Key.is_rel_size on the 18-byte form: field1 0, relnode (bytes 9-12) not 0, field6
    (bytes 14-17) all ones."""
    return kb[0] == 0 and kb[14:] == _ALL_ONES and kb[9:13] != _NO_RELNODE


_ALL_ONES = b"\xff\xff\xff\xff"
_NO_RELNODE = bytes(4)


class RelSizeCache:
    """Relation sizes at the latest LSN, as Neon's pageserver keeps them.

    An entry (nblocks, version LSN) is stored when a size was read at or above every LSN
    the tail has received; it answers any read at an LSN at or above that version, because
    a newer size version can reach pageread only two ways, and both drop entries: through
    the tail (``invalidate`` of that key) or through layer files that move the timeline
    past what the tail held (a follower that left a full tail or lost ingest: ``clear``).
    Reads below the version LSN, and of relations not cached, look the size up.
    ``generation`` counts invalidations: a lookup that raced one (it ran in a worker
    thread while the tail moved) does not store its answer."""

    MAX_ENTRIES = 1_000_000

    def __init__(self) -> None:
        self._sizes: dict[bytes, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.generation = 0
        self.hits = self.misses = 0

    def get(self, size_key: bytes, lsn: int) -> int | None:
        entry = self._sizes.get(size_key)
        if entry is None or lsn < entry[1]:
            self.misses += 1
            return None
        self.hits += 1
        return entry[0]

    def put(self, size_key: bytes, nblocks: int, version_lsn: int, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return
            if len(self._sizes) >= self.MAX_ENTRIES:
                self._sizes.clear()
            self._sizes[size_key] = (nblocks, version_lsn)

    def invalidate(self, size_key: bytes) -> None:
        with self._lock:
            self.generation += 1
            self._sizes.pop(size_key, None)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._sizes.clear()


class TimelineReader:
    """The page-read service's state for one timeline: its TimelineView (layer files,
    the recent tail as the view's in-memory source, the ancestor), LSN waits, the page
    cache and the redo strategy (batches to the redo service)."""

    def __init__(self, tenant_id: TenantId, timeline_id: TimelineId, layers: LayerMap, *,
                 min_readable_lsn: Lsn, gc_cutoff_lsn: Lsn, wait_timeout: float,
                 redo: Callable[[list[ValueChain]], Awaitable[list[bytes | Exception]]],
                 cache_pages: int, max_tail_bytes: int | None = None,
                 refresh: Callable[[Lsn], bool] | None = None, offload: bool = False) -> None:
        self.tenant_id = tenant_id
        # With remote storage on, a lookup may wait for ranged GETs or a download: reads
        # then run in worker threads, never on the event loop (``run``).
        self.offload = offload
        self.timeline_id = timeline_id
        self.layers = layers
        self.tail = RecentTail() if max_tail_bytes is None else RecentTail(
            max(64 * 1024, min(CHUNK_BYTES, max_tail_bytes // 8)))
        self.view = TimelineView(layers, sources=self._tail_chunks, refresh=refresh)
        self.layers_version = -1  # of the last map applied (apply_layer_map)
        self.layers_disk_consistent_lsn = Lsn.INVALID
        self.layers_changed = asyncio.Event()  # set by every apply_layer_map
        self.min_readable_lsn = min_readable_lsn
        self.gc_cutoff_lsn = gc_cutoff_lsn
        self.leases: set[int] = set()  # LSNs with an active lease (readable below the cutoff)
        self.wait_timeout = wait_timeout
        self._redo = redo
        self.cache = PageCache(cache_pages)
        self.sizes = RelSizeCache()
        self.ancestor: TimelineReader | None = None

    def _tail_chunks(self) -> list[InMemoryLayer]:
        return self.tail.chunks

    def set_ancestor(self, ancestor: TimelineReader, ancestor_lsn: Lsn) -> None:
        """A branch: versions at or below ancestor_lsn come from the ancestor timeline."""
        self.ancestor = ancestor
        self.view.ancestor = ancestor.view
        self.view.ancestor_lsn = ancestor_lsn

    # the read path (pagestore.timeline) -------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args)`` of the read path: in a worker thread when layers may have to come
        from remote storage, else here (a local lookup costs microseconds)."""
        if self.offload:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def chain(self, key: Key, lsn: Lsn) -> ValueChain:
        return self.view.chain(key, lsn)

    def image(self, key: Key, lsn: Lsn) -> bytes | None:
        return self.view.image(key, lsn)

    def rel_size(self, rel: RelTag, lsn: Lsn, *, allow_missing: bool = False) -> int | None:
        if allow_missing or rel.relnode == 0:
            return self.view.rel_size(rel, lsn, allow_missing=allow_missing)
        kb = rel_size_key_bytes(rel)
        cached = self.sizes.get(kb, lsn)
        if cached is not None:
            return cached
        generation = self.sizes.generation
        # At or above everything received, not only last_record_lsn: values are added to
        # the tail before last_record_lsn moves, and a read in a worker thread may run in
        # between (then a newer size may already sit in the tail above its LSN).
        at_latest = lsn >= self.tail.received_lsn
        nblocks, version = self.view.rel_size_version(rel, lsn)
        if at_latest and version is not None:
            self.sizes.put(kb, nblocks, int(version), generation)
        return nblocks

    def add_tail(self, values: list[tuple[bytes, int, bytes]]) -> int:
        """Take values from ingest's stream into the tail; a new size version of a
        relation drops its cached size."""
        added = self.tail.add(values)
        for kb, _lsn, _value in values:
            if is_rel_size_key(kb):
                self.sizes.invalidate(kb)
        return added

    def rel_exists(self, rel: RelTag, lsn: Lsn) -> bool:
        return self.view.rel_exists(rel, lsn)

    def list_relations(self, spcnode: int, dbnode: int, lsn: Lsn) -> list[tuple[RelTag, int]]:
        return self.view.list_relations(spcnode, dbnode, lsn)

    def db_size(self, dbnode: int, lsn: Lsn) -> int:
        return self.view.db_size(dbnode, lsn)

    # ------------------------------------------------------------------ LSNs
    @property
    def last_record_lsn(self) -> Lsn:
        return self.tail.last_record_lsn

    async def advance(self, last_record_lsn: Lsn) -> None:
        """The tail holds every value up to ``last_record_lsn`` now."""
        self.tail.last_record_lsn = last_record_lsn

    async def wait_for(self, lsn: Lsn, timeout: float | None = None) -> None:
        timeout = self.wait_timeout if timeout is None else timeout
        if not await self.tail.progress.wait(lsn, timeout):
            raise LsnTimeout(f"LSN timeout: timed out after {timeout:.1f}s waiting for WAL up "
                             f"to {lsn} (last record {self.tail.last_record_lsn})")

    def apply_layer_map(self, version: int, layers: list[LayerDesc],
                        disk_consistent_lsn: Lsn) -> bool:
        """Take a layer map read from the catalog, if it is newer than the one held (an
        older read finishing late never replaces a newer map); the tail then forgets what
        the map's layers hold, and reads up to its disk_consistent_lsn need no WAL from
        the tail.  True if applied."""
        self.layers.replace(layers, version)  # refused if a read's reload took it already
        if version <= self.layers_version:
            return False
        self.layers_version = version
        self.layers_disk_consistent_lsn = disk_consistent_lsn
        if disk_consistent_lsn > self.tail.received_lsn:
            # The layers hold WAL the tail never saw (its follower left a full tail or
            # lost ingest): size versions in it passed no invalidate.
            self.sizes.clear()
        self.tail.drop_through(disk_consistent_lsn)
        self.tail.last_record_lsn = disk_consistent_lsn
        self.layers_changed.set()
        return True

    async def effective_lsn(self, request_lsn: int, not_modified_since: int) -> Lsn:
        """The LSN a request is served at (neon-protocols.md 5.2), waiting if needed."""
        if request_lsn == 0:
            raise BadRequest("invalid LSN(0) in request")
        if not_modified_since == 0:
            not_modified_since = request_lsn
        if request_lsn < not_modified_since:
            raise BadRequest(f"invalid request with request LSN {Lsn(request_lsn)} and "
                             f"not_modified_since {Lsn(not_modified_since)}")
        if request_lsn < self.gc_cutoff_lsn and request_lsn not in self.leases:
            raise LsnOutOfRange(f"tried to request a page version that was garbage "
                                f"collected. requested at {Lsn(request_lsn)} gc cutoff "
                                f"{self.gc_cutoff_lsn}")
        last = self.tail.last_record_lsn
        if not_modified_since > last:
            await self.wait_for(Lsn(not_modified_since))
            effective = Lsn(not_modified_since)
        else:
            effective = Lsn(min(last, request_lsn))
        if effective < self.min_readable_lsn:
            raise LsnOutOfRange(
                f"LSN {effective} is below {self.min_readable_lsn}, the first readable LSN of "
                f"timeline {self.timeline_id} (where its base backup becomes consistent)")
        return effective

    # ------------------------------------------------------------------ time
    def timestamp_search_range(self) -> tuple[Lsn, Lsn]:
        """[oldest, newest] LSN a search by time reads: from the GC cutoff, the first
        readable LSN and, for a branch, its branch point (whichever is highest) to the last
        record received."""
        low = max(self.gc_cutoff_lsn, self.min_readable_lsn,
                  self.view.ancestor_lsn if self.ancestor is not None else Lsn.INVALID)
        return Lsn(low), self.last_record_lsn

    async def lsn_by_timestamp(self, target_ts: int) -> LsnForTimestamp:
        """pagestore.timestamps.find_lsn_by_timestamp over this timeline's view (its tail,
        layers and ancestor) in ``timestamp_search_range``."""
        low, high = self.timestamp_search_range()
        return await self.run(find_lsn_by_timestamp, commit_timestamp_reader(self.view.image),
                              target_ts, low, high)

    async def timestamp_of_lsn(self, lsn: Lsn) -> int:
        """The newest commit timestamp at or below ``lsn``.  Out of range (beyond the last
        record, or below what effective_lsn serves) is LsnOutOfRange, no commit there
        FailedPrecondition."""
        last = self.last_record_lsn
        if lsn > last:
            raise LsnOutOfRange(f"LSN {lsn} is beyond the last record {last} of timeline "
                                f"{self.timeline_id}")
        lsn = await self.effective_lsn(lsn, 0)  # <= last: no wait, the usual range checks
        ts = await self.run(timestamp_of_lsn, commit_timestamp_reader(self.view.image), lsn)
        if ts is None:
            raise FailedPrecondition(f"Timestamp for lsn {lsn} not found: no transaction "
                                     f"commit at or below it in timeline {self.timeline_id}")
        return ts

    # ------------------------------------------------------------------ metadata
    async def slru_segment(self, kind: SlruKind, segno: int, lsn: Lsn) -> bytes:
        n = await self.run(self.view.slru_segment_blocks, kind, segno, lsn)
        pages = await self.pages([slru_block_key(kind, segno, b) for b in range(n)], lsn)
        return b"".join(p[:BLCKSZ] for p in pages)

    # ------------------------------------------------------------------ pages
    async def pages(self, keys: list[Key], lsn: Lsn) -> list[bytes]:
        """Pages of ``keys`` as of ``lsn``; one redo batch for all that need redo."""
        if self.offload:
            found = await asyncio.to_thread(self.look_up_pages, keys, lsn)
        else:
            found = self.look_up_pages(keys, lsn)
        return await self.finish_pages(found, lsn)

    def look_up_pages(self, keys: list[Key], lsn: Lsn) -> FoundPages:
        """The synchronous half of ``pages`` (any thread): every key's versions; the
        pages that need no redo (images, cached pages) are done."""
        found = FoundPages([None] * len(keys), [])
        for i, chain in enumerate(self.view.chains(keys, lsn)):
            if not chain.found:
                raise NotFound(f"Not found: no version of key {keys[i]} at or below {lsn}")
            if not chain.records:
                assert chain.image is not None
                found.pages[i] = chain.image  # an image needs no redo (and no cache)
                continue
            cached = self.cache.get(chain.key.to_bytes(), int(chain.records[-1][0]))
            if cached is not None:
                found.pages[i] = cached
            else:
                found.todo.append((i, chain))
        return found

    async def finish_pages(self, found: FoundPages, lsn: Lsn) -> list[bytes]:
        """The asynchronous half of ``pages`` (on the event loop): the redo."""
        out = found.pages
        if found.todo:
            results = await self._redo([c for _, c in found.todo])
            for (i, chain), result in zip(found.todo, results, strict=True):
                if isinstance(result, Exception):
                    lsns = [str(lsn_) for lsn_, _ in chain.records]
                    log.warning("redo of key %s at %s failed: %s (base image at %s, %d records: "
                                "%s)", chain.key, lsn, result, chain.image_lsn, len(lsns),
                                ", ".join(lsns if len(lsns) <= 12 else [*lsns[:4], "...",
                                                                       *lsns[-8:]]))
                    raise result
                out[i] = result
                self.cache.put(chain.key.to_bytes(), int(chain.records[-1][0]), result)
        return [p if p is not None else ZERO_PAGE for p in out]

    async def rel_pages(self, rel: RelTag, blocks: list[int], lsn: Lsn) -> list[bytes]:
        """GetPage semantics: blocks past the relation's end are zero pages."""
        nblocks = await self.run(self.rel_size, rel, lsn)
        assert nblocks is not None
        inside = [b for b in blocks if b < nblocks]
        got = dict(zip(inside, await self.pages([rel_block_key(rel, b) for b in inside], lsn),
                       strict=True))
        return [got.get(b, ZERO_PAGE) for b in blocks]
