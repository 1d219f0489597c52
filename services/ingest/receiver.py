"""The WAL receiver of one timeline: stream from the source, decode, ingest, flush,
acknowledge -- and come back after the source goes away.

Rules:
- Streaming uses the timeline's physical slot (``pagestore_<timeline id>``) and starts
  at last_record_lsn (after a restart that equals disk_consistent_lsn; the slot keeps
  the WAL from there).
- The flush position sent to the source is disk_consistent_lsn, never more: the slot's
  restart_lsn follows it, so the source keeps whatever is not yet in a registered layer.
  write = the end of the WAL received; apply = flush.
- Frozen layers are flushed in order by one task, in a thread; the loop never blocks on
  disk or catalog I/O.
- Connection or protocol failures: log once, back off (0.5 s doubling to 30 s) and
  reconnect from last_record_lsn.  A record that cannot be decoded or ingested (corrupt
  or unsupported WAL) drops the in-memory layers, reloads the state from disk and
  retries from disk_consistent_lsn; after ``MAX_DECODE_FAILURES`` failures in a row the
  timeline is marked broken (state and reason in the catalog) and the receiver stops,
  instead of looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from pagestore.errors import CorruptionError, PagestoreError, ProtocolError, UnsupportedWalRecord
from pagestore.lsn import Lsn
from pagestore.pg.replication import (
    PrimaryKeepalive,
    ReplicationConnection,
    ReplicationError,
    XLogData,
)
from pagestore.pg.waldecoder import EndOfWal, WalStreamDecoder

if TYPE_CHECKING:
    from collections.abc import Callable

    from pagestore.keys import Key
    from services.ingest.timeline import TimelineIngest

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
MAX_DECODE_FAILURES = 3


def slot_name(timeline_id: object) -> str:
    return f"pagestore_{timeline_id}"


class WalReceiver:
    def __init__(self, tli: TimelineIngest, wal_source: str, *,
                 reload: Callable[[], TimelineIngest],
                 on_values: Callable[[list[tuple[Key, Lsn, bytes]]], None],
                 on_progress: Callable[[], None],
                 mark_broken: Callable[[str], None]) -> None:
        self.tli = tli
        self.wal_source = wal_source
        self._reload = reload
        self._on_values = on_values
        self._on_progress = on_progress
        self._mark_broken = mark_broken
        self.state = "starting"
        self.flush_reported = Lsn(0)
        self.received_lsn = tli.last_record_lsn
        self._flush_queue: asyncio.Queue[object] = asyncio.Queue()
        self._stopped = asyncio.Event()
        self._decode_failures = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_loop(), name="flush")
        try:
            await self._stream_forever()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher

    async def _stream_forever(self) -> None:
        backoff = BACKOFF_START
        tl = self.tli
        while not self._stopped.is_set():
            self.state = "connecting"
            try:
                await self._stream_once()
                backoff = BACKOFF_START
            except (ReplicationError, ProtocolError, OSError, ConnectionError) as e:
                self.state = "disconnected"
                self.last_error = str(e)
                log.warning("WAL source %s failed: %s; reconnecting in %.1fs tenant=%s "
                            "timeline=%s", redact_conninfo(self.wal_source), e, backoff,
                            tl.tenant_id, tl.timeline_id)
            except (CorruptionError, UnsupportedWalRecord, EndOfWal) as e:
                self._decode_failures += 1
                self.last_error = str(e)
                if self._decode_failures >= MAX_DECODE_FAILURES:
                    self.state = "broken"
                    log.error("ingest stopped after %d failures: %s tenant=%s timeline=%s",
                              self._decode_failures, e, tl.tenant_id, tl.timeline_id)
                    await asyncio.to_thread(self._mark_broken, str(e))
                    return
                log.warning("cannot ingest WAL: %s; reloading from disk_consistent_lsn %s "
                            "tenant=%s timeline=%s", e, tl.disk_consistent_lsn, tl.tenant_id,
                            tl.timeline_id)
                await self._drain_flushes()
                self.tli = tl = await asyncio.to_thread(self._reload)
            if self._stopped.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _stream_once(self) -> None:
        tl = self.tli
        conn = await ReplicationConnection.connect(
            self.wal_source, application_name=slot_name(tl.timeline_id), connect_timeout=10)
        try:
            await conn.identify_system()
            start = tl.last_record_lsn
            stream = await conn.start_replication(start, slot=slot_name(tl.timeline_id))
            decoder = WalStreamDecoder(start, prev_lsn=tl.prev_record_lsn or None)
            self.state = "streaming"
            last_status = 0.0
            stop_task = asyncio.create_task(self._stopped.wait())
            try:
                it = stream.__aiter__()
                while True:
                    next_msg = asyncio.create_task(it.__anext__())
                    done, _ = await asyncio.wait({next_msg, stop_task}, timeout=STATUS_INTERVAL,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if stop_task in done:
                        next_msg.cancel()
                        with contextlib.suppress(BaseException):
                            await next_msg
                        return
                    if next_msg not in done:
                        # No message within the interval: keep the flush position flowing
                        # while the read goes on.
                        await self._send_status(conn, force=True)
                    try:
                        msg = await next_msg
                    except StopAsyncIteration:
                        return
                    if isinstance(msg, XLogData):
                        self._handle_xlog(decoder, msg)
                    elif isinstance(msg, PrimaryKeepalive) and msg.reply_requested:
                        await self._send_status(conn, force=True)
                    now = time.monotonic()
                    if (now - last_status >= STATUS_INTERVAL
                            or self.flush_reported != tl.disk_consistent_lsn):
                        await self._send_status(conn)
                        last_status = now
            finally:
                stop_task.cancel()
        finally:
            self.state = "disconnected" if not self._stopped.is_set() else "stopped"
            await conn.close()

    def _handle_xlog(self, decoder: WalStreamDecoder, msg: XLogData) -> None:
        tl = self.tli
        if msg.data_start != decoder.buffered_end:
            raise ProtocolError(f"WAL from the source starts at {msg.data_start}, expected "
                                f"{decoder.buffered_end}")
        decoder.feed(msg.data)
        self.received_lsn = decoder.buffered_end
        batch: list[tuple[Key, Lsn, bytes]] = []
        while (rec := decoder.poll()) is not None:
            batch.extend(tl.ingest(rec))
            if tl.should_freeze():
                layer = tl.freeze()
                if layer is not None:
                    self._flush_queue.put_nowait(layer)
        self._decode_failures = 0
        if batch:
            self._on_values(batch)
        self._on_progress()

    async def _send_status(self, conn: ReplicationConnection, force: bool = False) -> None:
        flush = self.tli.disk_consistent_lsn
        if not force and flush == self.flush_reported:
            return
        await conn.send_status(self.received_lsn, flush, flush)
        self.flush_reported = flush

    # ------------------------------------------------------------------ flushing
    def freeze_if_due(self) -> None:
        """Called by the service's timer: freeze at checkpoint_timeout."""
        if self.tli.should_freeze():
            layer = self.tli.freeze()
            if layer is not None:
                self._flush_queue.put_nowait(layer)

    async def _flush_loop(self) -> None:
        while True:
            layer = await self._flush_queue.get()
            tl = self.tli
            try:
                await asyncio.to_thread(tl.flush, layer)  # type: ignore[arg-type]
            except PagestoreError as e:
                log.error("flush failed: %s tenant=%s timeline=%s", e.message, tl.tenant_id,
                          tl.timeline_id)
                raise
            finally:
                self._flush_queue.task_done()
            self._on_progress()

    async def _drain_flushes(self) -> None:
        await self._flush_queue.join()


def redact_conninfo(conninfo: str) -> str:
    """A connection string without its password, for logs."""
    import re

    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", re.sub(
        r"(://[^:/@]+:)[^@]*@", r"\1***@", conninfo))
