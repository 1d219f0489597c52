"""Base and full backups from a TimelineReader: the tar built by pagestore.basebackup
(in a worker thread), streamed as chunks of at most 256 KiB.

The builder reads pages one at a time through a synchronous PageSource; this adapter
answers from the event loop and fetches relation pages in runs of PREFETCH blocks, so a
full backup costs one redo batch per run, not one round trip per page.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import queue
import threading
from typing import TYPE_CHECKING, Any

from pagestore.keys import Key, RelTag, rel_block_key

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import AsyncIterator, Coroutine

    from pagestore.lsn import Lsn
    from services.pageread.timeline import TimelineReader

CHUNK = 256 * 1024
PREFETCH = 256


class ReaderPageSource:
    """pagestore.basebackup.PageSource over a TimelineReader, for a worker thread.

    While the builder writes one run of a relation's pages into the tar, the next run is
    already being fetched (looked up, and redone by the redo service): the two overlap
    instead of taking turns."""

    def __init__(self, reader: TimelineReader, loop: asyncio.AbstractEventLoop) -> None:
        self.reader = reader
        self.loop = loop
        self._pages: dict[bytes, bytes] = {}
        self._ahead: tuple[Lsn, list[Key], concurrent.futures.Future[list[bytes]]] | None = None

    def _call(self, coro: Coroutine[Any, Any, list[bytes]]) -> list[bytes]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def get_image(self, key: Key, lsn: Lsn) -> bytes | None:
        return self.reader.image(key, lsn)

    def get_page(self, key: Key, lsn: Lsn) -> bytes | None:
        page = self._pages.pop(key.to_bytes(), None)
        if page is not None:
            return page
        if not key.is_rel_block():
            return self._call(self.reader.pages([key], lsn))[0]
        rel = key.rel_tag()
        n = self.reader.rel_size(rel, lsn, allow_missing=True) or 0
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == lsn and ahead[1][0] == key:
            keys, pages = ahead[1], ahead[2].result()
        else:
            keys = _run(rel, key.block_number, n) or [key]
            pages = self._call(self.reader.pages(keys, lsn))
        following = _run(rel, keys[-1].block_number + 1, n)
        if following:
            self._ahead = (lsn, following, asyncio.run_coroutine_threadsafe(
                self.reader.pages(following, lsn), self.loop))
        for k, p in zip(keys[1:], pages[1:], strict=True):
            self._pages[k.to_bytes()] = p
        return pages[0]


def _run(rel: RelTag, start: int, nblocks: int) -> list[Key]:
    """The keys of up to PREFETCH blocks of ``rel`` from ``start``, below ``nblocks``."""
    return [rel_block_key(rel, b) for b in range(start, min(nblocks, start + PREFETCH))]


async def stream_backup(reader: TimelineReader, lsn: Lsn, *, prev_lsn: Lsn | None, full: bool,
                        replica: bool = False, compress: bool = False) -> AsyncIterator[bytes]:
    """The backup tar (gzip-compressed as one member if ``compress``), in chunks."""
    from pagestore.basebackup import write_basebackup

    loop = asyncio.get_running_loop()
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=64)

    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            data = bytes(b)
            for i in range(0, len(data), CHUNK):
                chunks.put(data[i:i + CHUNK])
            return len(data)

    def build() -> None:
        try:
            sink: io.RawIOBase = Sink()
            out = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1) if compress else sink
            write_basebackup(ReaderPageSource(reader, loop), out, lsn,  # type: ignore[arg-type]
                             prev_lsn=prev_lsn, full=full, replica=replica)
            if compress:
                out.close()
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
