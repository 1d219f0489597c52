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
from typing import TYPE_CHECKING

from pagestore.keys import Key, rel_block_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pagestore.lsn import Lsn
    from services.pageread.timeline import TimelineReader

CHUNK = 256 * 1024
PREFETCH = 256


class ReaderPageSource:
    """pagestore.basebackup.PageSource over a TimelineReader, for a worker thread."""

    def __init__(self, reader: TimelineReader, loop: asyncio.AbstractEventLoop) -> None:
        self.reader = reader
        self.loop = loop
        self._pages: dict[bytes, bytes] = {}

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def get_image(self, key: Key, lsn: Lsn) -> bytes | None:
        return self.reader.image(key, lsn)

    def get_page(self, key: Key, lsn: Lsn) -> bytes | None:
        kb = key.to_bytes()
        page = self._pages.pop(kb, None)
        if page is not None:
            return page
        keys = [key]
        if key.is_rel_block():
            rel = key.rel_tag()
            n = self.reader.rel_size(rel, lsn, allow_missing=True) or 0
            keys = [rel_block_key(rel, b) for b in range(key.block_number,
                                                         min(n, key.block_number + PREFETCH))] or [key]
        pages = self._call(self.reader.pages(keys, lsn))
        assert isinstance(pages, list)
        for k, p in zip(keys[1:], pages[1:], strict=True):
            self._pages[k.to_bytes()] = p
        return pages[0]  # type: ignore[no-any-return]


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
