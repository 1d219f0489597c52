"""The WAL receiver of one timeline: stream from the source, decode, ingest, flush,
acknowledge -- and come back after the source, the catalog or its own code fails.

Two supervised loops (pagestore.supervise) per timeline:

- ``receiver``: one replication session per run.  Streaming uses the timeline's
  physical slot (``pagestore_<timeline id>``) and starts at last_record_lsn (after a
  restart that equals disk_consistent_lsn; the slot keeps the WAL from there).  The
  flush position sent to the source is disk_consistent_lsn, never more (with remote
  storage on, remote_consistent_lsn when that is lower: what the bucket holds); the
  slot's restart_lsn follows it, so the source keeps whatever is not yet durable.
  write = the end of the WAL received; apply = flush.  A session the source ends, or a
  connection or protocol failure, is run again after a backoff.  Any other failure
  (corrupt or unsupported WAL, a bug) may have left the in-memory state half-way through
  a record: the receiver waits for the frozen layers to be flushed, reloads the state
  from disk_consistent_lsn and streams again from there.  After ``MAX_DECODE_FAILURES``
  such failures in a row the timeline is marked broken (state and reason in the
  catalog) and the receiver ends, instead of looping; its slot is kept, so it can resume
  once the cause is fixed.
- ``flusher``: flushes frozen layers one at a time, oldest first, in a thread (the loop
  never blocks on disk or catalog I/O).  A failed flush is retried with backoff, the same
  layer again; nothing is dropped.

A clean stop (``stop(drain=True)``) ends the session, freezes what is in memory and
flushes every frozen layer in LSN order before it returns, so disk_consistent_lsn ends at
the last record received and a restart streams nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from pagestore import failpoints
from pagestore.errors import FailedPrecondition, ProtocolError
from pagestore.lsn import Lsn
from pagestore.pg.replication import (
    PrimaryKeepalive,
    ReplicationConnection,
    ReplicationError,
    XLogData,
    mask_conninfo,
    timeline_slot_name,
)
from pagestore.pg.waldecoder import WalStreamDecoder
from pagestore.supervise import SupervisedLoop, describe
from services.ingest.lag import IngestLag

if TYPE_CHECKING:
    from collections.abc import Callable

    from services.ingest.timeline import TimelineIngest
    from services.ingest.walingest import Values

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
MAX_DECODE_FAILURES = 3
#: Failures that leave the in-memory state as it was (between two records): reconnect.
CONNECTION_ERRORS = (ReplicationError, ProtocolError, OSError, ConnectionError)


class WalReceiver:
    def __init__(self, tli: TimelineIngest, wal_source: str, *,
                 reload: Callable[[], TimelineIngest],
                 on_values: Callable[[Values], None],
                 on_progress: Callable[[], None],
                 mark_broken: Callable[[str], None]) -> None:
        self.tli = tli
        self.wal_source = wal_source
        self._reload = reload
        self._on_values = on_values
        self._on_progress = on_progress
        self._mark_broken = mark_broken
        self.flush_reported = Lsn(0)
        self.received_lsn = tli.last_record_lsn
        self.lag = IngestLag()  # the source's end of WAL, for /metrics
        self.broken_reason: str | None = None
        self._decode_failures = 0
        self._reload_pending = False
        self._system_id: int | None = None  # the timeline's, read on the first connect
        self._frozen_ready = asyncio.Event()
        self._flushed = asyncio.Event()
        self._closing = False   # stop() was called: the flusher ends when it has nothing to do
        self._drain = True      # ... after flushing every frozen layer
        self.receiver = SupervisedLoop("ingest", "receiver", self._receive,
                                       tenant=tli.tenant_id, timeline=tli.timeline_id,
                                       restart_on_return=True)
        self.flusher = SupervisedLoop("ingest", "flusher", self._flush_loop,
                                      tenant=tli.tenant_id, timeline=tli.timeline_id)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.flusher.start()
        self.receiver.start()

    @property
    def state(self) -> str:
        if self.broken_reason is not None:
            return "broken"
        return self.receiver.detail or str(self.receiver.state)

    def loops(self) -> list[SupervisedLoop]:
        return [self.receiver, self.flusher]

    async def stop(self, *, drain: bool, timeout: float) -> bool:
        """End streaming; with ``drain``, freeze the open layer and flush every frozen
        layer (oldest first) before returning.  True if nothing was left unflushed."""
        await self.receiver.stop(grace=min(5.0, timeout))
        self._closing, self._drain = True, drain
        if drain:
            self._freeze()
        self._frozen_ready.set()
        try:
            await asyncio.wait_for(self.flusher.wait(), timeout)
        except TimeoutError:
            pass
        await self.flusher.stop()
        left = len(self.tli.frozen)
        if drain and left:
            log.error("stopped with %d frozen layers not flushed (disk_consistent_lsn %s): "
                      "streaming will resume from there", left, self.tli.disk_consistent_lsn)
        return not left

    # ------------------------------------------------------------------ receiving
    async def _receive(self, loop: SupervisedLoop) -> None:
        """One run of the receiver loop: start from a consistent state, stream."""
        if self.broken_reason is not None:  # marking it broken failed last time: again
            await asyncio.to_thread(self._mark_broken, self.broken_reason)
            loop.finish()
            return
        if self._reload_pending:
            # The last run failed inside decoding or ingesting, perhaps half-way through a
            # record: drop the in-memory state and reload it from disk_consistent_lsn.
            loop.detail = "reloading"
            await self._wait_flushed()
            self.tli = await asyncio.to_thread(self._reload)
            self.received_lsn = self.tli.last_record_lsn
            self._reload_pending = False
        try:
            await self._stream_once(loop)
        except CONNECTION_ERRORS as e:
            loop.detail = "disconnected"
            raise ReplicationError(f"WAL source {mask_conninfo(self.wal_source)} failed: "
                                   f"{describe(e)}") from e
        except Exception as e:
            self._decode_failures += 1
            if self._decode_failures >= MAX_DECODE_FAILURES:
                reason = (f"ingest stopped after {self._decode_failures} failures in a row at "
                          f"{self.tli.last_record_lsn}: {describe(e)}")
                log.error("%s; the timeline is broken (its slot is kept: it resumes from "
                          "disk_consistent_lsn %s once the cause is fixed)", reason,
                          self.tli.disk_consistent_lsn)
                self.broken_reason = reason
                loop.detail = "broken"
                await asyncio.to_thread(self._mark_broken, reason)
                loop.finish()
                return
            self._reload_pending = True
            log.warning("cannot ingest WAL: %s; reloading from disk_consistent_lsn %s",
                        describe(e), self.tli.disk_consistent_lsn)
            raise

    async def _stream_once(self, loop: SupervisedLoop) -> None:
        tl = self.tli
        loop.detail = "connecting"
        conn = await ReplicationConnection.connect(
            self.wal_source, application_name=timeline_slot_name(tl.timeline_id), connect_timeout=10)
        try:
            system = await conn.identify_system()
            if self._system_id is None:
                self._system_id = await asyncio.to_thread(tl.system_identifier)
            if system.systemid != self._system_id:
                # The connection string now reaches another database system: streaming
                # from it would mix two histories.
                raise FailedPrecondition(
                    f"the WAL source {mask_conninfo(self.wal_source)} has system identifier "
                    f"{system.systemid}, the timeline's is {self._system_id}")
            start = tl.last_record_lsn
            stream = await conn.start_replication(start, slot=timeline_slot_name(tl.timeline_id))
            decoder = WalStreamDecoder(start, system_id=self._system_id,
                                       prev_lsn=tl.prev_record_lsn or None)
            loop.detail = "streaming"
            last_status = 0.0
            stop_task = asyncio.create_task(loop.wait_stop_requested())
            try:
                it = stream.__aiter__()
                while True:
                    next_msg = asyncio.create_task(it.__anext__())
                    while True:
                        done, _ = await asyncio.wait({next_msg, stop_task},
                                                     timeout=STATUS_INTERVAL,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if stop_task in done:
                            next_msg.cancel()
                            with contextlib.suppress(BaseException):
                                await next_msg
                            return
                        if next_msg in done:
                            break
                        # No message within the interval: keep the flush position flowing
                        # while the read goes on.
                        await self._send_status(conn, force=True)
                    try:
                        msg = await next_msg
                    except StopAsyncIteration:
                        loop.detail = "source ended the stream"
                        return
                    if isinstance(msg, XLogData):
                        await failpoints.acheck("ingest-receiver-record")
                        self._handle_xlog(decoder, msg)
                    elif isinstance(msg, PrimaryKeepalive):
                        self.lag.reported(msg.wal_end)
                        if msg.reply_requested:
                            await self._send_status(conn, force=True)
                    now = time.monotonic()
                    if (now - last_status >= STATUS_INTERVAL
                            or self.flush_reported != self.flush_position()):
                        await self._send_status(conn)
                        last_status = now
            finally:
                stop_task.cancel()
        finally:
            if loop.detail == "streaming":
                loop.detail = "disconnected"
            await conn.close()

    def _handle_xlog(self, decoder: WalStreamDecoder, msg: XLogData) -> None:
        tl = self.tli
        if msg.data_start != decoder.buffered_end:
            raise ProtocolError(f"WAL from the source starts at {msg.data_start}, expected "
                                f"{decoder.buffered_end}")
        decoder.feed(msg.data)
        self.received_lsn = decoder.buffered_end
        self.lag.reported(msg.wal_end)
        batch: Values = []
        try:
            while (rec := decoder.poll()) is not None:
                batch.extend(tl.ingest(rec))
                if tl.should_freeze():
                    self._freeze()
        except BaseException:
            # A record may be half ingested: the next run reloads from disk.  The records
            # before it are whole: subscribers get them below, so that no progress
            # reported later claims values they never received.
            self._reload_pending = True
            raise
        finally:
            if batch:
                self._on_values(batch)
        self._decode_failures = 0
        self._on_progress()

    def flush_position(self) -> Lsn:
        """What the source may forget: disk_consistent_lsn, or with remote storage on
        what is also in the bucket (a lost disk then loses nothing the source dropped)."""
        tl = self.tli
        remote = tl.remote_consistent_lsn
        if remote is None:
            return tl.disk_consistent_lsn
        return min(tl.disk_consistent_lsn, remote)

    async def _send_status(self, conn: ReplicationConnection, force: bool = False) -> None:
        flush = self.flush_position()
        if not force and flush == self.flush_reported:
            return
        await conn.send_status(self.received_lsn, flush, flush)
        self.flush_reported = flush

    # ------------------------------------------------------------------ flushing
    def _freeze(self) -> None:
        if self._reload_pending:
            return  # the open layer may hold half a record: the reload discards it
        if self.tli.freeze() is not None:
            self._frozen_ready.set()

    def freeze_if_due(self) -> None:
        """Called by the service's timer: freeze at checkpoint_timeout."""
        if self.tli.should_freeze():
            self._freeze()

    async def _flush_loop(self, loop: SupervisedLoop) -> None:
        while True:
            tl = self.tli
            layer = tl.oldest_frozen()
            if layer is None or (self._closing and not self._drain):
                if self._closing:
                    loop.detail = "done"
                    return
                loop.detail = "idle"
                self._frozen_ready.clear()
                if tl.oldest_frozen() is None:
                    await self._frozen_ready.wait()
                continue
            loop.detail = f"flushing [{layer.start_lsn}, {layer.end_lsn})"
            flush = asyncio.ensure_future(asyncio.to_thread(tl.flush, layer))
            try:
                await asyncio.shield(flush)
            except asyncio.CancelledError:
                # A flush in its thread cannot be cut short: the loop ends only once it
                # has, so no other flusher ever writes this layer at the same time.
                with contextlib.suppress(BaseException):
                    await flush
                raise
            self._flushed.set()
            self._on_progress()

    async def flush_through(self, lsn: Lsn) -> None:
        """Freeze and flush now until disk_consistent_lsn reaches ``lsn`` (which must be
        received already): a branch at ``lsn`` is about to read this timeline's layer
        files.  The caller bounds the wait."""
        while self.tli.disk_consistent_lsn < lsn:
            self._freeze()
            self._flushed.clear()
            if self.tli.disk_consistent_lsn >= lsn:
                break
            await self._flushed.wait()

    async def _wait_flushed(self) -> None:
        """Until every frozen layer is flushed (the flusher retries failures itself)."""
        while self.tli.oldest_frozen() is not None:
            self._flushed.clear()
            self._frozen_ready.set()
            if self.tli.oldest_frozen() is None:
                break
            await self._flushed.wait()
