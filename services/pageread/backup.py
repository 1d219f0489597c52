"""Base and full backups from a TimelineReader: the tar built by pagestore.basebackup
(in a worker thread), streamed in chunks: at most 256 KiB for page_api's GetBaseBackup
(Neon's contract), 1 MiB for PageReadExtras.GetFullBackup.

The builder reads pages one at a time through a synchronous PageSource.  This one looks
relation pages up in runs of PREFETCH blocks, in the builder's own thread (one range read
per layer file for the run: LayerMap.get_many), and hands only the pages that need redo
to the event loop, as one redo batch per run; while the builder writes one run into the
tar, the next run's redo is already under way.  Pages that are images (everything an
image layer holds) never leave the builder's thread.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import queue
import threading
from typing import TYPE_CHECKING

from pagestore.keys import Key, RelTag, rel_block_key

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import AsyncIterator

    from pagestore.lsn import Lsn
    from services.pageread.timeline import TimelineReader

#: page_api GetBaseBackup: chunks of at most 256 KiB (neon-protocols.md section 2).
BASEBACKUP_CHUNK = 256 * 1024
#: PageReadExtras.GetFullBackup: bigger chunks, fewer messages.
FULLBACKUP_CHUNK = 1024 * 1024
PREFETCH = 256


class _Run:
    """One run of a relation's pages: looked up, its redo (if any) under way."""

    def __init__(self, reader: TimelineReader, loop: asyncio.AbstractEventLoop,
                 keys: list[Key], lsn: Lsn) -> None:
        self.keys = keys
        self.lsn = lsn
        found = reader.look_up_pages(keys, lsn)
        self._done: list[bytes] | None = None
        self._redo: concurrent.futures.Future[list[bytes]] | None = None
        if found.todo:
            self._redo = asyncio.run_coroutine_threadsafe(reader.finish_pages(found, lsn), loop)
        else:
            self._done = [p for p in found.pages if p is not None]

    def pages(self) -> list[bytes]:
        if self._redo is not None:
            return self._redo.result()
        assert self._done is not None
        return self._done


class ReaderPageSource:
    """pagestore.basebackup.PageSource over a TimelineReader, for a worker thread."""

    def __init__(self, reader: TimelineReader, loop: asyncio.AbstractEventLoop) -> None:
        self.reader = reader
        self.loop = loop
        self._pages: dict[bytes, bytes] = {}
        self._ahead: _Run | None = None

    def get_image(self, key: Key, lsn: Lsn) -> bytes | None:
        return self.reader.image(key, lsn)

    def get_page(self, key: Key, lsn: Lsn) -> bytes | None:
        page = self._pages.pop(key.to_bytes(), None)
        if page is not None:
            return page
        if not key.is_rel_block():
            return _Run(self.reader, self.loop, [key], lsn).pages()[0]
        rel = key.rel_tag()
        n = self.reader.rel_size(rel, lsn, allow_missing=True) or 0
        run, self._ahead = self._ahead, None
        if run is None or run.lsn != lsn or run.keys[0] != key:
            run = _Run(self.reader, self.loop, _run(rel, key.block_number, n) or [key], lsn)
        following = _run(rel, run.keys[-1].block_number + 1, n)
        if following:  # its redo overlaps this run's tar writing
            self._ahead = _Run(self.reader, self.loop, following, lsn)
        pages = run.pages()
        for k, p in zip(run.keys[1:], pages[1:], strict=True):
            self._pages[k.to_bytes()] = p
        return pages[0]


def _run(rel: RelTag, start: int, nblocks: int) -> list[Key]:
    """The keys of up to PREFETCH blocks of ``rel`` from ``start``, below ``nblocks``."""
    return [rel_block_key(rel, b) for b in range(start, min(nblocks, start + PREFETCH))]


async def stream_backup(reader: TimelineReader, lsn: Lsn, *, prev_lsn: Lsn | None, full: bool,
                        replica: bool = False, compress: bool = False,
                        chunk_size: int = BASEBACKUP_CHUNK) -> AsyncIterator[bytes]:
    """The backup tar (gzip-compressed as one member if ``compress``), in chunks."""
    from pagestore.basebackup import write_basebackup

    loop = asyncio.get_running_loop()
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)

    class Sink(io.RawIOBase):
        """Collects the tar's many small writes (a page, a header) into chunk_size
        messages: one queue hand-off and one gRPC message per chunk, not per page (one
        per 8 KiB page made a 200 MB backup take 8 s instead of 1)."""

        def __init__(self) -> None:
            super().__init__()
            self.buf = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            buf = self.buf
            buf += b
            while len(buf) >= chunk_size:
                chunks.put(bytes(buf[:chunk_size]))
                del buf[:chunk_size]
            return len(b)

        def flush(self) -> None:
            if self.buf:
                chunks.put(bytes(self.buf))
                self.buf.clear()

    def build() -> None:
        try:
            sink: io.RawIOBase = Sink()
            out = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1) if compress else sink
            write_basebackup(ReaderPageSource(reader, loop), out, lsn,  # type: ignore[arg-type]
                             prev_lsn=prev_lsn, full=full, replica=replica)
            if compress:
                out.close()
            sink.flush()
            chunks.put(None)
        except BaseException as e:
            chunks.put(e)

    threading.Thread(target=build, name="backup", daemon=True).start()
    while True:
        item = await asyncio.to_thread(chunks.get)
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
