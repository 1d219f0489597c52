"""IngestManager: the timelines this ingest process serves, their receivers, waiters and
recent-WAL subscribers.

Rules:
- A timeline is attached once (``attach``: slot, base backup, import, catalog) and from
  then on streamed whenever the service runs (``start_existing`` on startup).  A
  timeline found in state ``importing`` at startup was interrupted mid-import and is
  marked broken; it must be created again.
- Subscribers (page readers) get every value above their ``from_lsn`` that is still in
  memory, then each new batch as it is ingested, filtered by key range.  Values at or
  below disk_consistent_lsn may already be only in layer files, so a subscription below
  it is refused.  A subscriber that falls ``MAX_QUEUED_BATCHES`` behind is cut off.
- Everything runs on the service's event loop except disk and catalog work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagestore.catalog import repo
from pagestore.catalog.db import make_sessionmaker
from pagestore.errors import (
    AlreadyExists,
    BadRequest,
    FailedPrecondition,
    LsnOutOfRange,
    LsnTimeout,
    PagestoreError,
    ProtocolError,
    TimelineNotFound,
    Unavailable,
)
from pagestore.lsn import Lsn
from pagestore.pg.replication import (
    BackupFinished,
    BackupStarted,
    ReplicationConnection,
    ReplicationError,
    ReplicationSlotExists,
)
from pagestore.pg.tar import TarChunk, TarEnd, TarEvent, TarMember
from services.ingest.importer import TarStager, import_datadir
from services.ingest.receiver import WalReceiver, redact_conninfo, slot_name
from services.ingest.timeline import IngestSettings, TimelineIngest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import sqlalchemy as sa

    from pagestore.ids import TenantId, TimelineId
    from pagestore.keys import Key

log = logging.getLogger(__name__)

MAX_QUEUED_BATCHES = 1000
TICK_INTERVAL = 0.5


@dataclass(slots=True)
class Batch:
    values: list[tuple[bytes, int, bytes]]  # (key bytes, lsn, value)
    last_record_lsn: Lsn
    disk_consistent_lsn: Lsn


@dataclass(slots=True)
class Subscriber:
    key_start: bytes
    key_end: bytes
    queue: asyncio.Queue[Batch | None] = field(default_factory=asyncio.Queue)
    overflowed: bool = False


@dataclass(slots=True)
class TimelineEntry:
    tli: TimelineIngest
    receiver: WalReceiver | None = None
    task: asyncio.Task[None] | None = None
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    subscribers: list[Subscriber] = field(default_factory=list)
    min_readable_lsn: Lsn = Lsn.INVALID


class IngestManager:
    def __init__(self, engine: sa.Engine, workdir: Path, settings: IngestSettings) -> None:
        self.sessions = make_sessionmaker(engine)
        self.workdir = workdir
        self.settings = settings
        self.timelines: dict[tuple[TenantId, TimelineId], TimelineEntry] = {}
        self._attaching: set[tuple[TenantId, TimelineId]] = set()
        self._ticker: asyncio.Task[None] | None = None

    def timeline_dir(self, tenant: TenantId, timeline: TimelineId) -> Path:
        return self.workdir / "tenants" / str(tenant) / "timelines" / str(timeline)

    def entry(self, tenant: TenantId, timeline: TimelineId) -> TimelineEntry:
        e = self.timelines.get((tenant, timeline))
        if e is None:
            raise TimelineNotFound(f"timeline {timeline} of tenant {tenant} is not ingested "
                                   "by this ingest service")
        return e

    # ------------------------------------------------------------------ lifecycle
    async def start_existing(self) -> None:
        with self.sessions.begin() as s:
            rows = repo.list_all_timelines(s)
        for row in rows:
            if not row.wal_source:
                continue
            if row.state == "importing":
                log.error("timeline import was interrupted; marking it broken tenant=%s "
                          "timeline=%s", row.tenant_id, row.timeline_id)
                await asyncio.to_thread(self._set_state, row.tenant_id, row.timeline_id,
                                        "broken")
                continue
            if row.state != "active":
                continue
            tli = await asyncio.to_thread(self._load, row.tenant_id, row.timeline_id)
            self._start(tli, row.wal_source, row.min_readable_lsn)
        self._ticker = asyncio.create_task(self._tick(), name="ingest-ticker")

    async def shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for e in self.timelines.values():
            if e.receiver is not None:
                e.receiver.stop()
        for e in self.timelines.values():
            if e.task is not None:
                with contextlib.suppress(BaseException):
                    await e.task
            for sub in e.subscribers:
                sub.queue.put_nowait(None)
            # Flush what is in memory, so a restart need not stream it again.
            layer = e.tli.freeze()
            if layer is not None:
                try:
                    await asyncio.to_thread(e.tli.flush, layer)
                except PagestoreError as err:
                    log.error("final flush failed: %s", err.message)

    def _load(self, tenant: TenantId, timeline: TimelineId) -> TimelineIngest:
        return TimelineIngest.load(tenant, timeline, self.timeline_dir(tenant, timeline),
                                   self.sessions, self.settings)

    def _set_state(self, tenant: TenantId, timeline: TimelineId, state: str) -> None:
        with self.sessions.begin() as s:
            repo.update_timeline(s, tenant, timeline, state=state)

    def _start(self, tli: TimelineIngest, wal_source: str, min_readable: Lsn) -> None:
        key = (tli.tenant_id, tli.timeline_id)
        entry = TimelineEntry(tli, min_readable_lsn=min_readable)
        self.timelines[key] = entry

        def reload() -> TimelineIngest:
            new = self._load(tli.tenant_id, tli.timeline_id)
            entry.tli = new
            return new

        entry.receiver = WalReceiver(
            tli, wal_source, reload=reload,
            on_values=lambda batch: self._publish(entry, batch),
            on_progress=lambda: self._progress(entry),
            mark_broken=lambda reason: self._set_state(tli.tenant_id, tli.timeline_id, "broken"))
        entry.task = asyncio.create_task(entry.receiver.run(),
                                         name=f"receiver-{tli.timeline_id}")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)  # a periodic timer, not a wait for a condition
            now = time.monotonic()
            for e in self.timelines.values():
                if e.receiver is not None and e.receiver.tli.should_freeze(now):
                    e.receiver.freeze_if_due()

    # ------------------------------------------------------------------ attach
    async def attach(self, tenant: TenantId, timeline: TimelineId, wal_source: str) -> TimelineEntry:
        key = (tenant, timeline)
        if key in self.timelines or key in self._attaching:
            raise AlreadyExists(f"timeline {timeline} is already attached")
        if not wal_source:
            raise BadRequest("wal_source is empty")
        self._attaching.add(key)
        tl_dir = self.timeline_dir(tenant, timeline)
        staging = tl_dir / ".import-staging"
        try:
            await asyncio.to_thread(self._set_state, tenant, timeline, "importing")
            start, end, system_id = await self._base_backup(timeline, wal_source, staging)
            result = await asyncio.to_thread(import_datadir, staging, tl_dir, start)
            if result.control.system_identifier != system_id:
                raise FailedPrecondition(
                    f"the base backup's pg_control has system identifier "
                    f"{result.control.system_identifier}, the source reports {system_id}")
            info = result.layer
            with self.sessions.begin() as s:
                repo.add_layer(s, tenant, timeline, repo.LayerRecord(
                    "image", 0, info.key_start.to_bytes(), info.key_end.to_bytes(),
                    info.lsn_start, info.lsn_end, info.file_name, info.file_size,
                    info.checksum))
                repo.update_timeline(s, tenant, timeline, state="active", wal_source=wal_source,
                                     disk_consistent_lsn=start, last_record_lsn=start,
                                     prev_record_lsn=Lsn(0), min_readable_lsn=end)
            log.info("timeline attached base_lsn=%s min_readable_lsn=%s relations=%d "
                     "pages=%d tenant=%s timeline=%s", start, end, result.relations,
                     result.pages, tenant, timeline)
        except BaseException:
            await asyncio.to_thread(self._set_state, tenant, timeline, "broken")
            raise
        finally:
            self._attaching.discard(key)
            await asyncio.to_thread(shutil.rmtree, staging, True)
        tli = await asyncio.to_thread(self._load, tenant, timeline)
        self._start(tli, wal_source, end)
        return self.timelines[key]

    async def _base_backup(self, timeline: TimelineId, wal_source: str,
                           staging: Path) -> tuple[Lsn, Lsn, int]:
        """Create (or reuse) the slot, run BASE_BACKUP into ``staging``."""
        where = redact_conninfo(wal_source)
        try:
            conn = await ReplicationConnection.connect(wal_source, connect_timeout=10)
        except ReplicationError as e:
            raise Unavailable(f"cannot connect to the WAL source {where}: {e.message}") from e
        except ProtocolError as e:
            raise Unavailable(f"the WAL source {where} does not speak the PostgreSQL "
                              f"protocol: {e.message}") from e
        try:
            system = await conn.identify_system()
            try:
                await conn.create_physical_slot(slot_name(timeline), reserve_wal=True)
            except ReplicationSlotExists:
                log.info("reusing replication slot %s", slot_name(timeline))
            stager = TarStager(staging)
            start = end = None
            tar_events: list[TarEvent] = []
            async for ev in conn.base_backup(label=f"pagestore {timeline}", fast_checkpoint=True):
                if isinstance(ev, BackupStarted):
                    start = ev.start_lsn
                elif isinstance(ev, BackupFinished):
                    end = ev.end_lsn
                elif isinstance(ev, TarMember | TarChunk | TarEnd):
                    tar_events.append(ev)
                    if len(tar_events) >= 256:
                        await asyncio.to_thread(stager.feed, tar_events)
                        tar_events = []
            await asyncio.to_thread(stager.feed, tar_events)
            await asyncio.to_thread(stager.finish)
            if start is None or end is None:
                raise Unavailable("BASE_BACKUP ended without its start and end positions")
            return start, end, system.systemid
        finally:
            await conn.close()

    # ------------------------------------------------------------------ reads
    async def wait_for_lsn(self, tenant: TenantId, timeline: TimelineId, lsn: Lsn,
                           timeout: float) -> TimelineEntry:
        e = self.entry(tenant, timeline)
        if lsn < e.min_readable_lsn:
            raise LsnOutOfRange(
                f"LSN {lsn} is below {e.min_readable_lsn}, the first readable LSN of timeline "
                f"{timeline} (where its base backup becomes consistent)")
        if e.tli.last_record_lsn >= lsn:
            return e
        try:
            async with e.progress:
                await asyncio.wait_for(
                    e.progress.wait_for(lambda: e.tli.last_record_lsn >= lsn), timeout)
        except TimeoutError:
            raise LsnTimeout(f"timed out after {timeout:.1f}s waiting for WAL up to {lsn} on "
                             f"timeline {timeline} (last_record_lsn {e.tli.last_record_lsn})") from None
        return e

    def _progress(self, entry: TimelineEntry) -> None:
        async def notify() -> None:
            async with entry.progress:
                entry.progress.notify_all()

        asyncio.get_running_loop().create_task(notify())
        batch = Batch([], entry.tli.last_record_lsn, entry.tli.disk_consistent_lsn)
        for sub in entry.subscribers:
            if sub.queue.empty():
                sub.queue.put_nowait(batch)

    def _publish(self, entry: TimelineEntry, batch: list[tuple[Key, Lsn, bytes]]) -> None:
        if not entry.subscribers:
            return
        encoded = [(k.to_bytes(), int(lsn), v) for k, lsn, v in batch]
        for sub in list(entry.subscribers):
            picked = [kv for kv in encoded if sub.key_start <= kv[0] < sub.key_end]
            if not picked:
                continue
            if sub.queue.qsize() >= MAX_QUEUED_BATCHES:
                sub.overflowed = True
                entry.subscribers.remove(sub)
                sub.queue.put_nowait(None)
                continue
            sub.queue.put_nowait(Batch(picked, entry.tli.last_record_lsn,
                                       entry.tli.disk_consistent_lsn))

    async def subscribe(self, tenant: TenantId, timeline: TimelineId, from_lsn: Lsn,
                        key_start: bytes, key_end: bytes) -> AsyncIterator[Batch]:
        e = self.entry(tenant, timeline)
        tli = e.tli
        if from_lsn < tli.disk_consistent_lsn:
            raise FailedPrecondition(
                f"values at or below {tli.disk_consistent_lsn} are in layer files; subscribe "
                f"from disk_consistent_lsn or later (asked for {from_lsn})")
        sub = Subscriber(key_start, key_end)
        # Snapshot and registration happen without an await in between: nothing is missed.
        backlog: list[tuple[bytes, int, bytes]] = []
        for layer in reversed(tli.sources()):  # oldest first
            backlog.extend(layer.items_in_range(key_start, key_end, from_lsn))
        backlog.sort(key=lambda kv: kv[1])
        e.subscribers.append(sub)
        try:
            yield Batch(backlog, tli.last_record_lsn, tli.disk_consistent_lsn)
            while True:
                item = await sub.queue.get()
                if item is None:
                    if sub.overflowed:
                        raise Unavailable("subscriber fell too far behind and was cut off")
                    return
                yield item
        finally:
            if sub in e.subscribers:
                e.subscribers.remove(sub)
