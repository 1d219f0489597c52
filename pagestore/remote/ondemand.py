"""Layer files on demand: open a layer from local disk, else from remote storage.

``LayerFiles`` is what the services open layer files through when remote storage is on
(``LayerFiles.opener`` gives a LayerMap its opener):

- a layer on local disk is read with ``os.pread``, as without remote storage;
- a layer that is not (an attach rebuilt the map from the bucket, or the page reader
  evicted it) is read with ranged GETs: opening it fetches the header and the summary,
  a lookup one index block and one data block, each verified by its CRC32C like a local
  read (``ranged=False`` downloads the whole file first instead);
- a layer read remotely ``download_after`` times is downloaded whole in the background;
  readers already open switch to the local file once it is there;
- a whole download is checked against the size and CRC32C the catalog (from the index)
  records before it is renamed into place: a corrupt copy is an error, never a layer;
- ``evict_to(budget, uploaded)`` unlinks the least recently used uploaded layers until
  the local files fit the budget.  An open reader of an evicted file goes on with ranged
  reads; a read in progress finishes on the local file first (each source's lock).

Counters (``stats``) say how many bytes came over the network and how.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pagestore.errors import CorruptLayerError, LayerFileMissing, RemoteObjectNotFound
from pagestore.layers.delta import DeltaLayerReader
from pagestore.layers.format import file_checksum, fsync_directory, temp_writer
from pagestore.layers.image import ImageLayerReader
from pagestore.layers.names import TEMP_SUFFIX, parse_layer_name
from pagestore.remote.layout import layer_key
from pagestore.remote.storage import retrying
from pagestore.timeline import timeline_dir

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from pagestore.ids import TenantId, TimelineId
    from pagestore.layers.desc import LayerDesc
    from pagestore.layers.layermap import LayerReader
    from pagestore.remote.storage import RemoteStorage

log = logging.getLogger(__name__)

#: The writer tag of a download's temporary file (format.temp_writer reads it), followed
#: by the service's name: each service sweeps only what its own downloads left.
DOWNLOAD_WRITER = "download_"
DEFAULT_DOWNLOAD_AFTER = 8



@dataclass(slots=True)
class RemoteReadStats:
    ranged_gets: int = 0
    ranged_bytes: int = 0
    downloads: int = 0
    download_bytes: int = 0
    evictions: int = 0
    evicted_bytes: int = 0

    @property
    def bytes_downloaded(self) -> int:
        return self.ranged_bytes + self.download_bytes


class LayerSource:
    """The bytes of one layer file for one reader: the local file while it is on disk,
    else ranged GETs of its remote copy (pagestore.layers.format.ByteSource)."""

    def __init__(self, files: LayerFiles, path: Path, key: str | None, file_size: int,
                 checksum: int) -> None:
        self.files = files
        self.path = path
        self.key = key
        self.file_size = file_size
        self.checksum = checksum  # a whole download must match it
        self.fd = -1
        self.lock = threading.Lock()
        self.closed = False

    def open_local(self) -> bool:
        """Switch to the local file; False when it is not on disk."""
        with self.lock:
            if self.closed:
                return False
            if self.fd >= 0:
                return True
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            return True

    def drop_local(self) -> None:
        """The local file is being evicted: later reads go remote.  A read in progress
        (holding the lock) finishes first."""
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def size(self) -> int:
        with self.lock:
            if self.fd >= 0:
                return os.fstat(self.fd).st_size
        return self.file_size

    def pread(self, size: int, offset: int) -> bytes:
        with self.lock:
            if self.closed:
                raise ValueError(f"layer file {self.path} is closed")
            if self.fd >= 0:
                self.files.touch(self.path)
                return os.pread(self.fd, size, offset)
        if self.key is None:
            raise LayerFileMissing(f"layer file {self.path} left local disk and has no "
                                   "remote copy")
        return self.files.ranged_read(self, offset, offset + size)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1


class LayerFiles:
    """Opens a node's layer files from local disk or remote storage (module docstring)."""

    def __init__(self, workdir: Path, storage: RemoteStorage | None, *, ranged: bool = True,
                 download_after: int = DEFAULT_DOWNLOAD_AFTER, owner: str = "local") -> None:
        self.workdir = workdir
        self.writer = DOWNLOAD_WRITER + owner
        self.storage = storage
        self.ranged = ranged
        self.download_after = download_after
        self.stats = RemoteReadStats()
        self._lock = threading.Lock()
        self._sources: dict[Path, weakref.WeakSet[LayerSource]] = {}
        self._access: dict[Path, float] = {}
        self._remote_reads: dict[Path, int] = {}
        self._downloads: dict[Path, Future[Path]] = {}
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="layer-download")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def sweep(self) -> int:
        """Remove what this owner's interrupted downloads left (at start)."""
        removed = 0
        for tl_dir in (self.workdir / "tenants").glob("*/timelines/*"):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(tl_dir):
                    if temp_writer(entry.name) == self.writer:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed += 1
        if removed:
            log.info("removed %d leftover download files", removed)
        return removed

    # ------------------------------------------------------------------ opening
    def opener(self, tenant: TenantId, timeline: TimelineId
               ) -> Callable[[LayerDesc], LayerReader] | None:
        """A LayerMap's opener for the timeline; None without remote storage (the map
        then opens its local files itself)."""
        if self.storage is None:
            return None
        return lambda desc: self.open(tenant, timeline, desc)

    def open(self, tenant: TenantId, timeline: TimelineId, desc: LayerDesc, *,
             whole: bool = False) -> LayerReader:
        """A reader of the layer: local if on disk; else ranged reads of the remote copy
        (or the whole file downloaded first, with ``whole`` or ranged reads off)."""
        path = timeline_dir(self.workdir, tenant, timeline) / desc.file_name
        cls = ImageLayerReader if desc.is_image else DeltaLayerReader
        key = (layer_key(tenant, timeline, desc.file_name, desc.generation)
               if desc.uploaded and self.storage is not None else None)
        source = LayerSource(self, path, key, desc.file_size, desc.checksum)
        if not source.open_local():
            if key is None:
                raise LayerFileMissing(
                    f"layer file {path} is in the layer map but not on local disk "
                    "(removed by compaction or GC since the map was read?)")
            if whole or not self.ranged:
                try:
                    self.download(tenant, timeline, desc).result()
                except RemoteObjectNotFound:
                    raise LayerFileMissing(f"layer {desc.file_name} is neither on local disk "
                                           f"nor in remote storage ({key}): replaced since "
                                           "the map was read?") from None
                if not source.open_local():
                    raise LayerFileMissing(f"layer file {path} was downloaded and is gone")
        with self._lock:
            self._sources.setdefault(path, weakref.WeakSet()).add(source)
            if source.fd >= 0:
                self._access[path] = time.monotonic()
            else:  # read by ranges again: a later burst of reads may download it
                self._remote_reads.pop(path, None)
        try:
            return cls(path, source=source)
        except BaseException:
            source.close()
            raise

    def touch(self, path: Path) -> None:
        self._access[path] = time.monotonic()

    # ------------------------------------------------------------------ remote reads
    def ranged_read(self, source: LayerSource, start: int, end: int) -> bytes:
        storage = self.storage
        assert storage is not None and source.key is not None
        key = source.key
        try:
            data = retrying(lambda: storage.get(key, start, end), f"ranged read of {key}")
        except RemoteObjectNotFound:
            # Compaction or GC replaced the layer and its remote copy went after the next
            # index: the reader's map is old; it reloads and retries.
            raise LayerFileMissing(f"layer {source.path.name} is neither on local disk nor "
                                   f"in remote storage ({key}): replaced since the map was "
                                   "read?") from None
        source_touch = time.monotonic()
        with self._lock:
            self.stats.ranged_gets += 1
            self.stats.ranged_bytes += len(data)
            self._access[source.path] = source_touch
            n = self._remote_reads.get(source.path, 0) + 1
            self._remote_reads[source.path] = n
        if n == self.download_after:
            self._schedule_download(source)
        return data

    def _schedule_download(self, source: LayerSource) -> None:
        parts = source.path.parts  # .../tenants/<tenant>/timelines/<timeline>/<file>
        assert parts[-5] == "tenants" and parts[-3] == "timelines", source.path
        assert source.key is not None
        fut = self._download(source.path, source.key, source.file_size, source.checksum)
        path = source.path

        def done(f: Future[Path]) -> None:
            if not f.cancelled() and f.exception() is not None:
                with self._lock:
                    self._remote_reads.pop(path, None)
            self._log_background_failure(f)
        fut.add_done_callback(done)

    def _log_background_failure(self, fut: Future[Path]) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is not None:
            # Reads go on by ranges; another download_after of them try again.
            log.warning("background download failed: %s", exc)

    def download(self, tenant: TenantId, timeline: TimelineId, desc: LayerDesc,
                 progress: Callable[[int], None] | None = None) -> Future[Path]:
        """Download the layer whole (once, however many ask); the future's result is
        the local path once the file is verified and in place."""
        if not desc.uploaded or self.storage is None:
            raise LayerFileMissing(f"layer {desc.file_name} has no remote copy")
        path = timeline_dir(self.workdir, tenant, timeline) / desc.file_name
        key = layer_key(tenant, timeline, desc.file_name, desc.generation)
        return self._download(path, key, desc.file_size, desc.checksum, progress)

    def _download(self, path: Path, key: str, size: int, checksum: int,
                  progress: Callable[[int], None] | None = None) -> Future[Path]:
        with self._lock:
            running = self._downloads.get(path)
            if running is not None:
                return running
            if path.exists():
                done: Future[Path] = Future()
                done.set_result(path)
                return done
            fut = self._pool.submit(self._fetch, path, key, size, checksum, progress)
            self._downloads[path] = fut
        fut.add_done_callback(lambda _f: self._download_done(path))
        return fut

    def _download_done(self, path: Path) -> None:
        with self._lock:
            self._downloads.pop(path, None)

    def _fetch(self, path: Path, key: str, size: int, checksum: int,
               progress: Callable[[int], None] | None) -> Path:
        storage = self.storage
        assert storage is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{self.writer}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
        t0 = time.monotonic()
        try:
            got = retrying(lambda: storage.download(key, tmp), f"download of {key}")
            crc = file_checksum(tmp)
            if got != size or crc != checksum:
                raise CorruptLayerError(
                    f"{storage.describe()}: {key}: downloaded {got} bytes with CRC32C "
                    f"{crc:08X}; the index says {size} bytes with CRC32C {checksum:08X}")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_directory(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self.stats.downloads += 1
            self.stats.download_bytes += size
            self._access[path] = time.monotonic()
            sources = list(self._sources.get(path, ()))
        for s in sources:
            s.open_local()
        if progress is not None:
            progress(size)
        log.info("downloaded layer %s bytes=%d elapsed=%.2fs", path.name, size,
                 time.monotonic() - t0)
        return path

    # ------------------------------------------------------------------ eviction
    def local_layer_files(self) -> dict[Path, int]:
        """Every layer file under the workdir's tenants, with its size."""
        out: dict[Path, int] = {}
        root = self.workdir / "tenants"
        for tl_dir in root.glob("*/timelines/*"):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(tl_dir):
                    if entry.name.endswith(TEMP_SUFFIX):
                        continue
                    try:
                        parse_layer_name(entry.name)
                    except ValueError:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        out[Path(entry.path)] = entry.stat().st_size
        return out

    def evict_to(self, budget: int, uploaded: Collection[Path]) -> list[Path]:
        """Unlink least recently used layer files that have a remote copy (``uploaded``)
        until the local layer files total at most ``budget`` bytes; returns what went."""
        files = self.local_layer_files()
        total = sum(files.values())
        if total <= budget:
            return []
        now = time.monotonic()
        with self._lock:
            for p in files:  # written or downloaded by another service: as if used now
                self._access.setdefault(p, now)
            last_use = dict(self._access)
        candidates = [p for p in files if p in uploaded]
        candidates.sort(key=lambda p: last_use[p])
        evicted: list[Path] = []
        for p in candidates:
            if total <= budget:
                break
            with self._lock:
                sources = list(self._sources.get(p, ()))
                self._access.pop(p, None)
                self._remote_reads.pop(p, None)
            for s in sources:
                if s.key is not None:  # else it keeps reading the unlinked file
                    s.drop_local()
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            total -= files[p]
            evicted.append(p)
            with self._lock:
                self.stats.evictions += 1
                self.stats.evicted_bytes += files[p]
        for d in {p.parent for p in evicted}:
            with contextlib.suppress(FileNotFoundError):
                fsync_directory(d)
        if evicted:
            log.info("evicted %d layer files (%d bytes) to fit the local budget of %d bytes",
                     len(evicted), sum(files[p] for p in evicted), budget)
        return evicted
