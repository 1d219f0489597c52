"""IngestManager: the timelines this ingest process serves, their receivers, waiters and
recent-WAL subscribers.

Rules:
- A timeline is attached once (``attach``: slot, base backup, import, catalog) and from
  then on streamed whenever the service runs (``start_existing`` on startup).  A
  timeline found in state ``importing`` at startup was interrupted mid-import and is
  marked broken; it must be created again.
- An attach whose import fails is final: the timeline is marked broken with the reason
  and the replication slot it created is dropped (nothing can resume from it).
- Subscribers (page readers) get every value above their ``from_lsn`` that is still in
  memory, then each new batch as it is ingested, filtered by key range.  Values at or
  below disk_consistent_lsn may already be only in layer files, so a subscription below
  it is refused; the in-memory layers and disk_consistent_lsn are read together (one
  lock), so a flush finishing meanwhile cannot hide values from the snapshot.  A
  subscriber that falls ``MAX_QUEUED_BATCHES`` behind is cut off.
- A clean shutdown stops every receiver with a drain: nothing received is left unflushed.
- Everything runs on the service's event loop except disk and catalog work; background
  loops are supervised (pagestore.supervise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagestore import failpoints
from pagestore.ancestors import ancestors_behind
from pagestore.basebackup import is_backup_checkpoint
from pagestore.catalog import repo
from pagestore.catalog.db import make_sessionmaker
from pagestore.errors import (
    AlreadyExists,
    BadRequest,
    CorruptWalError,
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
    ReplicationServerError,
    ReplicationSlotExists,
    XLogData,
    drop_slot_at,
    mask_conninfo,
    timeline_slot_name,
)
from pagestore.pg.tar import TarChunk, TarEnd, TarEvent, TarMember
from pagestore.pg.waldecoder import EndOfWal, WalStreamDecoder
from pagestore.supervise import SupervisedLoop, describe
from pagestore.timeline import timeline_dir
from pagestore.waiting import LsnWaiter
from services.ingest.importer import TarStager, import_datadir
from services.ingest.receiver import WalReceiver
from services.ingest.timeline import IngestSettings, TimelineIngest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import sqlalchemy as sa

    from pagestore.ids import TenantId, TimelineId
    from pagestore.pg.replication import SystemInfo
    from pagestore.remote.ondemand import LayerFiles
    from services.ingest.walingest import Values

log = logging.getLogger(__name__)

MAX_QUEUED_BATCHES = 1000
TICK_INTERVAL = 0.5
#: Seconds for the first record at the position a new WAL source must continue from.
HISTORY_CHECK_TIMEOUT = 10.0
#: Seconds for each step of dropping the slot on a timeline's old WAL source.
SLOT_DROP_TIMEOUT = 10.0


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
    progress: LsnWaiter = field(default_factory=LsnWaiter)  # last_record_lsn
    subscribers: list[Subscriber] = field(default_factory=list)
    min_readable_lsn: Lsn = Lsn.INVALID


class IngestManager:
    def __init__(self, engine: sa.Engine, workdir: Path, settings: IngestSettings, *,
                 shutdown_budget: float = 15.0, layer_files: LayerFiles | None = None) -> None:
        self.sessions = make_sessionmaker(engine)
        self.layer_files = layer_files
        # With remote storage on, the flush position reported to the WAL source is
        # remote_consistent_lsn (what is in the bucket), refreshed by the ticker.
        self.remote = layer_files is not None and layer_files.storage is not None
        self.workdir = workdir
        self.settings = settings
        self.shutdown_budget = shutdown_budget
        self.timelines: dict[tuple[TenantId, TimelineId], TimelineEntry] = {}
        self._attaching: set[tuple[TenantId, TimelineId]] = set()
        self._ticker = SupervisedLoop("ingest", "ticker", self._tick)

    def timeline_dir(self, tenant: TenantId, timeline: TimelineId) -> Path:
        return timeline_dir(self.workdir, tenant, timeline)

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
                reason = "the import was interrupted (the ingest service stopped during it)"
                log.error("timeline import was interrupted; marking it broken tenant=%s "
                          "timeline=%s", row.tenant_id, row.timeline_id)
                await asyncio.to_thread(self._set_state, row.tenant_id, row.timeline_id,
                                        "broken", reason)
                await self._drop_slot_after_failed_import(row.timeline_id, row.wal_source)
                continue
            if row.resumable:
                log.info("resuming broken timeline from disk_consistent_lsn %s (it broke: "
                         "%s) tenant=%s timeline=%s", row.disk_consistent_lsn,
                         row.state_reason, row.tenant_id, row.timeline_id)
                await asyncio.to_thread(self._set_state, row.tenant_id, row.timeline_id,
                                        "active", f"resumed after: {row.state_reason}")
            elif row.state != "active":
                continue
            tli = await asyncio.to_thread(self._load, row.tenant_id, row.timeline_id)
            self._start(tli, row.wal_source, row.min_readable_lsn)
        self._ticker.start()

    async def shutdown(self) -> None:
        """Stop every receiver, flushing what is in memory (a restart streams nothing
        twice), within the shutdown budget."""
        await self._ticker.stop()
        entries = list(self.timelines.values())
        await asyncio.gather(*(e.receiver.stop(drain=True, timeout=self.shutdown_budget)
                               for e in entries if e.receiver is not None))
        for e in entries:
            for sub in e.subscribers:
                sub.queue.put_nowait(None)

    async def detach(self, tenant: TenantId, timeline: TimelineId, *,
                     flush: bool = False) -> TimelineEntry:
        """Stop streaming a timeline and forget it: without flushing before a delete,
        with ``flush`` (what is in memory goes to layer files first) before a tenant
        detach."""
        self._refuse_while_attaching(tenant, timeline)
        e = self.entry(tenant, timeline)
        drained = True
        if e.receiver is not None:
            drained = await e.receiver.stop(drain=flush, timeout=self.shutdown_budget)
        for sub in e.subscribers:
            sub.queue.put_nowait(None)
        self.timelines.pop((tenant, timeline), None)
        log.info("timeline detached tenant=%s timeline=%s", tenant, timeline)
        if flush and not drained:
            raise Unavailable(f"timeline {timeline} could not flush its in-memory WAL in "
                              "time; it stopped streaming (its slot keeps the WAL)")
        return e

    def loops(self, e: TimelineEntry) -> list[SupervisedLoop]:
        own = e.receiver.loops() if e.receiver is not None else []
        return [*own, self._ticker]

    def _load(self, tenant: TenantId, timeline: TimelineId) -> TimelineIngest:
        return TimelineIngest.load(tenant, timeline, self.timeline_dir(tenant, timeline),
                                   self.sessions, self.settings, layer_files=self.layer_files)

    def _set_state(self, tenant: TenantId, timeline: TimelineId, state: str,
                   reason: str | None = None) -> None:
        with self.sessions.begin() as s:
            repo.update_timeline(s, tenant, timeline, state=state, state_reason=reason)

    def _start(self, tli: TimelineIngest, wal_source: str, min_readable: Lsn) -> None:
        entry = self._register(tli, min_readable)
        self._start_receiver(entry, wal_source)

    def _register(self, tli: TimelineIngest, min_readable: Lsn) -> TimelineEntry:
        entry = TimelineEntry(tli, min_readable_lsn=min_readable)
        self.timelines[(tli.tenant_id, tli.timeline_id)] = entry
        entry.progress.advance(tli.last_record_lsn)
        return entry

    def _start_receiver(self, entry: TimelineEntry, wal_source: str) -> None:
        """Stream the entry's timeline from ``wal_source``, from its last_record_lsn."""
        tli = entry.tli

        def reload() -> TimelineIngest:
            new = self._load(tli.tenant_id, tli.timeline_id)
            entry.tli = new
            return new

        entry.receiver = WalReceiver(
            tli, wal_source, reload=reload,
            on_values=lambda batch: self._publish(entry, batch),
            on_progress=lambda: self._progress(entry),
            mark_broken=lambda reason: self._set_state(tli.tenant_id, tli.timeline_id,
                                                       "broken", reason))
        entry.receiver.start()

    async def _tick(self, loop: SupervisedLoop) -> None:
        loop.detail = "freezing layers at checkpoint_timeout"
        while not await loop.sleep(TICK_INTERVAL):  # a periodic timer
            now = time.monotonic()
            for e in list(self.timelines.values()):
                if e.receiver is not None and e.receiver.tli.should_freeze(now):
                    e.receiver.freeze_if_due()
            if self.remote and self.timelines:
                await self.refresh_remote_consistent()

    async def refresh_remote_consistent(self) -> None:
        """Read every timeline's remote_consistent_lsn (housekeeping advances it once
        layers and index are uploaded): the receivers report it as the flush position."""
        def read() -> dict[tuple[TenantId, TimelineId], Lsn]:
            with self.sessions.begin() as s:
                return repo.remote_consistent_lsns(s)
        lsns = await asyncio.to_thread(read)
        for key, e in list(self.timelines.items()):
            if key in lsns:
                e.tli.remote_consistent_lsn = lsns[key]

    async def resume(self, tenant: TenantId, timeline: TimelineId) -> TimelineEntry:
        """Start streaming a timeline the catalog holds already (rebuilt from remote
        storage by a tenant attach): from disk_consistent_lsn, through its slot."""
        key = (tenant, timeline)
        self._refuse_while_attaching(tenant, timeline)
        if key in self.timelines:
            return self.timelines[key]
        with self.sessions.begin() as s:
            row = repo.get_timeline(s, tenant, timeline)
        if row.state != "active" or not row.wal_source:
            raise FailedPrecondition(f"timeline {timeline} is {row.state} and has "
                                     f"{'a' if row.wal_source else 'no'} WAL source: "
                                     "nothing to resume")
        tli = await asyncio.to_thread(self._load, tenant, timeline)
        self._start(tli, row.wal_source, row.min_readable_lsn)
        log.info("timeline resumed disk_consistent_lsn=%s tenant=%s timeline=%s",
                 tli.disk_consistent_lsn, tenant, timeline)
        return self.timelines[key]

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
                repo.add_layer(s, tenant, timeline, info.desc())
                repo.update_timeline(s, tenant, timeline, state="active", wal_source=wal_source,
                                     disk_consistent_lsn=start, last_record_lsn=start,
                                     prev_record_lsn=Lsn(0), min_readable_lsn=end)
            log.info("timeline attached base_lsn=%s min_readable_lsn=%s relations=%d "
                     "pages=%d tenant=%s timeline=%s", start, end, result.relations,
                     result.pages, tenant, timeline)
        except BaseException as e:
            reason = f"the import failed: {describe(e)}"
            await asyncio.to_thread(self._set_state, tenant, timeline, "broken", reason)
            await self._drop_slot_after_failed_import(timeline, wal_source)
            raise
        finally:
            self._attaching.discard(key)
            await asyncio.to_thread(shutil.rmtree, staging, True)
        tli = await asyncio.to_thread(self._load, tenant, timeline)
        self._start(tli, wal_source, end)
        return self.timelines[key]

    async def _drop_slot_after_failed_import(self, timeline: TimelineId, wal_source: str) -> None:
        """A failed import cannot resume: its slot would only make the source keep WAL."""
        slot = timeline_slot_name(timeline)
        try:
            dropped = await drop_slot_at(wal_source, slot, timeout=10)
        except (PagestoreError, OSError, TimeoutError) as e:
            log.warning("could not drop replication slot %s on %s after the failed import: "
                        "%s; `pagestore timeline delete` drops it", slot,
                        mask_conninfo(wal_source), describe(e))
            return
        if dropped:
            log.info("dropped replication slot %s of the failed import", slot)

    async def _base_backup(self, timeline: TimelineId, wal_source: str,
                           staging: Path) -> tuple[Lsn, Lsn, int]:
        """Create (or reuse) the slot, run BASE_BACKUP into ``staging``."""
        conn = await _connect_source(wal_source)
        try:
            system = await conn.identify_system()
            try:
                await conn.create_physical_slot(timeline_slot_name(timeline), reserve_wal=True)
            except ReplicationSlotExists:
                log.info("reusing replication slot %s", timeline_slot_name(timeline))
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

    def _refuse_while_attaching(self, tenant: TenantId, timeline: TimelineId) -> None:
        """A delete, detach or resume waits for an attach in progress to end: it would
        otherwise take the timeline away half-way (a receiver restarted on a forgotten
        entry would stream on unseen)."""
        if (tenant, timeline) in self._attaching:
            raise FailedPrecondition(f"timeline {timeline} is being attached to a WAL source; "
                                     "retry when that is done")

    # ------------------------------------------------------------------ attach a source
    async def attach_source(self, tenant: TenantId, timeline: TimelineId,
                            wal_source: str) -> tuple[TimelineEntry, str]:
        """Stream an existing timeline from a (new) WAL source: a branch that has none
        yet, or a timeline whose primary moved.  Nothing changes unless every check
        passes: the source's system identifier is the timeline's, it has WAL up to the
        timeline's last_record_lsn, and its record there continues the timeline's history
        (xl_prev).  A running receiver is stopped and flushed first (so the position is
        fixed) and streams on from its old source if the attach fails.  Returns the entry
        and what became of the slot on the old source (dropped when it is another
        server)."""
        key = (tenant, timeline)
        if not wal_source:
            raise BadRequest("wal_source is empty")
        if key in self._attaching:
            raise FailedPrecondition(f"timeline {timeline} is being attached already")
        self._attaching.add(key)
        try:
            row = await asyncio.to_thread(self._row, tenant, timeline)
            if row.state == "broken" and row.resumable:
                # Its receiver gave up (e.g. the source became another server): a new
                # source is the cure.  Start from its flushed state, as a restart would.
                old = self.timelines.pop(key, None)
                if old is not None and old.receiver is not None:
                    await old.receiver.stop(drain=False, timeout=self.shutdown_budget)
                    for sub in old.subscribers:
                        sub.queue.put_nowait(None)
            elif row.state != "active":
                raise FailedPrecondition(
                    f"timeline {timeline} is {row.state}: a WAL source can be attached to an "
                    "active timeline (or a broken one whose import finished) only")
            if not row.wal_source and row.ancestor_timeline_id is None:
                raise FailedPrecondition(f"timeline {timeline} holds no data: create it with "
                                         "--wal-source (import) or --ancestor (branch)")
            if row.ancestor_timeline_id is not None:
                await self._flush_ancestors(row)
            entry, checked = await self._switch_source(row, wal_source)
            note = "no earlier WAL source: no slot to drop"
            if row.wal_source:
                note = await self._drop_old_slot(tenant, timeline, row.wal_source, wal_source,
                                                 checked=checked)
        finally:
            self._attaching.discard(key)
        log.info("WAL source attached source=%s start_lsn=%s old_source=%s (%s) tenant=%s "
                 "timeline=%s", mask_conninfo(wal_source), entry.tli.last_record_lsn,
                 mask_conninfo(row.wal_source) if row.wal_source else "-", note, tenant,
                 timeline)
        return entry, note

    async def _flush_ancestors(self, row: repo.TimelineRecord) -> None:
        """A branch reads below its branch point from its ancestors' layer files
        (pagestore.ancestors): their WAL up to there must be flushed.  An ancestor this
        service streams is flushed now; any other must be flushed already."""
        for anc, need in await asyncio.to_thread(ancestors_behind, self.sessions, row):
            e = self.timelines.get((anc.tenant_id, anc.timeline_id))
            if e is None or e.receiver is None:
                raise FailedPrecondition(
                    f"ancestor timeline {anc.timeline_id} has its WAL in layer files up to "
                    f"{anc.disk_consistent_lsn} only, and timeline {row.timeline_id} reads it "
                    f"up to {need}; it is not streamed here to flush the rest")
            log.info("flushing ancestor timeline %s through %s for its branch tenant=%s "
                     "timeline=%s", anc.timeline_id, need, row.tenant_id, row.timeline_id)
            try:
                async with asyncio.timeout(self.shutdown_budget):
                    if not await e.progress.wait(need, self.shutdown_budget):
                        raise TimeoutError
                    await e.receiver.flush_through(need)
            except TimeoutError:
                raise Unavailable(
                    f"ancestor timeline {anc.timeline_id} did not flush its WAL through "
                    f"{need} within {self.shutdown_budget:.0f}s (disk_consistent_lsn "
                    f"{e.tli.disk_consistent_lsn}); retry") from None

    async def _switch_source(self, row: repo.TimelineRecord,
                             wal_source: str) -> tuple[TimelineEntry, bool]:
        """The checks, then the switch: slot, catalog row, receiver (``attach_source``).
        Also says whether the source's WAL at the start was checked (False: it has none
        beyond it yet; the receiver's decoder checks the first record)."""
        tenant, timeline = row.tenant_id, row.timeline_id
        key = (tenant, timeline)
        where = mask_conninfo(wal_source)
        slot = timeline_slot_name(timeline)
        entry = self.timelines.get(key)
        tli = entry.tli if entry is not None else await asyncio.to_thread(self._load, tenant,
                                                                          timeline)
        system_id = await asyncio.to_thread(tli.system_identifier)
        conn = await _connect_source(wal_source)
        stopped = registered = created_slot = committed = False
        try:
            system = await conn.identify_system()
            if system.systemid != system_id:
                raise FailedPrecondition(
                    f"the WAL source {where} has system identifier {system.systemid}, the "
                    f"timeline's is {system_id}: it is not a PostgreSQL of timeline "
                    f"{timeline}'s history")
            if entry is not None and entry.receiver is not None:
                # Stop and flush: the position to check (and to stream from) is then fixed.
                receiver, entry.receiver = entry.receiver, None
                stopped = True
                # (stop returns once its flusher has ended, a flush in progress included:
                # the receiver restarted below never flushes beside it)
                if not await receiver.stop(drain=True, timeout=self.shutdown_budget):
                    raise Unavailable(f"timeline {timeline} could not flush its in-memory "
                                      "WAL in time; it streams on from its old source")
                tli = entry.tli
                system = await conn.identify_system()
            start, prev = tli.last_record_lsn, tli.prev_record_lsn
            if system.xlogpos < start:
                raise FailedPrecondition(
                    f"the WAL source {where} has WAL up to {system.xlogpos} only; timeline "
                    f"{timeline} continues from {start} (it must be the PostgreSQL started "
                    "from this timeline, or a standby of it that has caught up)")
            try:
                await conn.create_physical_slot(slot, reserve_wal=True)
                created_slot = True
            except ReplicationSlotExists:
                log.info("reusing replication slot %s on %s tenant=%s timeline=%s", slot,
                         where, tenant, timeline)
            fresh_branch = (row.ancestor_lsn is not None and start == row.ancestor_lsn
                            and not row.wal_source)
            checked = await _check_history(conn, tenant, timeline, where, start, prev, system,
                                           slot=slot if created_slot else None,
                                           fresh_branch=fresh_branch)
            if entry is None:
                # Registered before the catalog says there is a source: a page reader
                # that learns of it at once finds the timeline to subscribe to.
                entry = self._register(tli, row.min_readable_lsn)
                registered = True
            await asyncio.to_thread(self._set_source, tenant, timeline, wal_source)
            committed = True
            self._start_receiver(entry, wal_source)
            return entry, checked
        except BaseException:
            if created_slot and not committed:
                await conn.close()  # its walsender may hold the slot (the history check)
                try:
                    await drop_slot_at(wal_source, slot, timeout=SLOT_DROP_TIMEOUT)
                except (PagestoreError, OSError, TimeoutError) as e:
                    log.warning("could not drop replication slot %s on %s after the refused "
                                "attach: %s; drop it by hand: SELECT "
                                "pg_drop_replication_slot('%s') tenant=%s timeline=%s", slot,
                                where, describe(e), slot, tenant, timeline)
            if not committed:
                if registered:
                    self.timelines.pop(key, None)
                if stopped and entry is not None and row.wal_source:
                    log.info("streaming on from the old WAL source %s tenant=%s timeline=%s",
                             mask_conninfo(row.wal_source), tenant, timeline)
                    self._start_receiver(entry, row.wal_source)
            raise
        finally:
            await conn.close()

    def _row(self, tenant: TenantId, timeline: TimelineId) -> repo.TimelineRecord:
        with self.sessions.begin() as s:
            return repo.get_timeline(s, tenant, timeline)

    def _set_source(self, tenant: TenantId, timeline: TimelineId, wal_source: str) -> None:
        """The catalog row gets the source; page readers are told (they start following
        the timeline's recent WAL)."""
        with self.sessions.begin() as s:
            repo.update_timeline(s, tenant, timeline, wal_source=wal_source, state="active",
                                 state_reason=None)
            repo.notify_layers(s, tenant, timeline)

    async def _drop_old_slot(self, tenant: TenantId, timeline: TimelineId, old_source: str,
                             new_source: str, *, checked: bool) -> str:
        """Drop the timeline's slot on the source it streamed from before, unless that is
        the server it streams from now, or the new source's history could not be checked
        yet (it had no WAL beyond the start: the way back stays open until its first
        record is); what happened, for the operator."""
        slot = timeline_slot_name(timeline)
        old = mask_conninfo(old_source)
        try:
            if await _same_server(old_source, new_source):
                return f"slot {slot} kept: the old WAL source {old} is the same server"
            if not checked:
                return (f"slot {slot} on the old WAL source {old} kept: the new source has "
                        "no WAL beyond the timeline's last record yet, so its history is "
                        "checked when its first record arrives; drop the old slot once the "
                        "timeline streams (`timeline status`): SELECT "
                        f"pg_drop_replication_slot('{slot}')")
            dropped = await drop_slot_at(old_source, slot, timeout=SLOT_DROP_TIMEOUT)
        except (PagestoreError, OSError, TimeoutError) as e:
            note = (f"slot {slot} on the old WAL source {old} could NOT be dropped "
                    f"({describe(e)}): drop it there by hand, it keeps WAL: SELECT "
                    f"pg_drop_replication_slot('{slot}')")
            log.warning("%s tenant=%s timeline=%s", note, tenant, timeline)
            return note
        if dropped:
            return f"dropped slot {slot} on the old WAL source {old}"
        return f"slot {slot} was not on the old WAL source {old}"

    # ------------------------------------------------------------------ reads
    async def wait_for_lsn(self, tenant: TenantId, timeline: TimelineId, lsn: Lsn,
                           timeout: float) -> TimelineEntry:
        e = self.entry(tenant, timeline)
        if lsn < e.min_readable_lsn:
            raise LsnOutOfRange(
                f"LSN {lsn} is below {e.min_readable_lsn}, the first readable LSN of timeline "
                f"{timeline} (where its base backup becomes consistent)")
        if not await e.progress.wait(lsn, timeout):
            raise LsnTimeout(f"timed out after {timeout:.1f}s waiting for WAL up to {lsn} on "
                             f"timeline {timeline} (last_record_lsn {e.tli.last_record_lsn})")
        return e

    async def checkpoint(self, tenant: TenantId, timeline: TimelineId,
                         timeout: float) -> TimelineEntry:
        """Freeze the open layer and flush until disk_consistent_lsn reaches the
        last_record_lsn of now (the management API's checkpoint)."""
        e = self.entry(tenant, timeline)
        if e.receiver is None:
            raise FailedPrecondition(f"timeline {timeline} is not streaming: nothing to flush")
        target = e.tli.last_record_lsn
        try:
            async with asyncio.timeout(timeout):
                await e.receiver.flush_through(target)
        except TimeoutError:
            raise Unavailable(f"timeline {timeline} did not flush through {target} within "
                              f"{timeout:.0f}s (disk_consistent_lsn "
                              f"{e.tli.disk_consistent_lsn}); retry") from None
        log.info("checkpoint: flushed through %s tenant=%s timeline=%s", target, tenant,
                 timeline)
        return e

    def _progress(self, entry: TimelineEntry) -> None:
        entry.progress.advance(entry.tli.last_record_lsn)
        batch = Batch([], entry.tli.last_record_lsn, entry.tli.disk_consistent_lsn)
        for sub in entry.subscribers:
            if sub.queue.empty():
                sub.queue.put_nowait(batch)

    def _publish(self, entry: TimelineEntry, batch: Values) -> None:
        if not entry.subscribers:
            return
        encoded = batch  # key bytes already: published as they are
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
        await failpoints.acheck("ingest-subscribe-snapshot")
        tli = e.tli
        # The in-memory layers and disk_consistent_lsn come from one snapshot (a flush
        # finishing in its thread changes both at once), and registration follows
        # without an await in between: nothing is missed, nothing is hidden.
        sources, disk_consistent = tli.snapshot()
        if from_lsn < disk_consistent:
            raise FailedPrecondition(
                f"values at or below {disk_consistent} are in layer files; subscribe "
                f"from disk_consistent_lsn or later (asked for {from_lsn})")
        sub = Subscriber(key_start, key_end)
        backlog: list[tuple[bytes, int, bytes]] = []
        for layer in reversed(sources):  # oldest first
            backlog.extend(layer.items_in_range(key_start, key_end, from_lsn))
        backlog.sort(key=lambda kv: kv[1])
        e.subscribers.append(sub)
        try:
            yield Batch(backlog, tli.last_record_lsn, disk_consistent)
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


# --------------------------------------------------------------------------- WAL sources

async def _connect_source(wal_source: str) -> ReplicationConnection:
    """A replication connection to a WAL source; Unavailable naming it if that fails."""
    where = mask_conninfo(wal_source)
    try:
        return await ReplicationConnection.connect(wal_source, connect_timeout=10)
    except ReplicationError as e:
        raise Unavailable(f"cannot connect to the WAL source {where}: {e.message}") from e
    except ProtocolError as e:
        raise Unavailable(f"the WAL source {where} does not speak the PostgreSQL "
                          f"protocol: {e.message}") from e


async def _check_history(conn: ReplicationConnection, tenant: TenantId, timeline: TimelineId,
                         where: str, start: Lsn, prev: Lsn, system: SystemInfo, *,
                         slot: str | None, fresh_branch: bool = False) -> bool:
    """The source's WAL at ``start`` must continue the timeline: a valid record there
    whose xl_prev is ``prev`` (when known; WalStreamDecoder checks it, as the receiver
    does).  Streams through ``slot`` (one just created) if given, reporting ``start``
    as flushed first, so the slot keeps the WAL from there.  A source with no WAL beyond
    ``start`` yet has nothing to compare: the receiver's decoder checks its first record
    when it comes (False is returned then).  A branch that has no WAL of its own yet
    (``fresh_branch``) has no xl_prev to compare: its source must be a PostgreSQL started
    from the branch's full backup, whose first record is the shutdown checkpoint that
    backup wrote at the branch point (pagestore.basebackup) -- anything else (e.g. the
    parent's primary) is refused."""
    if system.xlogpos <= start:
        if fresh_branch:
            raise FailedPrecondition(
                f"the WAL source {where} has no WAL beyond {start}, the branch point of "
                f"timeline {timeline}: it is not a PostgreSQL started from the branch's full "
                "backup (that one has the backup's checkpoint record there)")
        log.info("the WAL source %s has no WAL beyond %s yet: its first record is checked "
                 "when it arrives tenant=%s timeline=%s", where, start, tenant, timeline)
        return False
    stream = await conn.start_replication(start, slot=slot)
    decoder = WalStreamDecoder(start, system_id=system.systemid, prev_lsn=prev or None)
    try:
        async with asyncio.timeout(HISTORY_CHECK_TIMEOUT):
            if slot is not None:
                await stream.send_status(start, start, start)
            async for msg in stream:
                if not isinstance(msg, XLogData):
                    continue
                if msg.data_start != decoder.buffered_end:
                    raise ProtocolError(f"WAL from {where} starts at {msg.data_start}, "
                                        f"expected {decoder.buffered_end}")
                decoder.feed(msg.data)
                rec = decoder.poll()
                if rec is not None:
                    if fresh_branch and not is_backup_checkpoint(rec, start):
                        raise FailedPrecondition(
                            f"the WAL of {where} at {start} is not the shutdown checkpoint "
                            f"a full backup of timeline {timeline} at its branch point "
                            f"starts with ({rec.rmgr_name} record at {rec.lsn}): it is not "
                            "a PostgreSQL started from that backup (the parent's primary, "
                            "or a sibling branch's?)")
                    log.info("the WAL source %s continues the timeline: record at %s, "
                             "xl_prev %s tenant=%s timeline=%s", where, rec.lsn,
                             Lsn(rec.header.xl_prev), tenant, timeline)
                    break
            else:
                raise Unavailable(f"the WAL source {where} ended the stream before a whole "
                                  f"record at {start}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HISTORY_CHECK_TIMEOUT):
                await stream.stop()
    except (CorruptWalError, EndOfWal) as e:
        raise FailedPrecondition(
            f"the WAL of {where} at {start} does not continue the history of timeline "
            f"{timeline} (its last record starts at {prev or 'an unknown LSN'}): "
            f"{describe(e)}") from None
    except ReplicationServerError as e:
        raise FailedPrecondition(
            f"the WAL source {where} cannot stream from {start}, where timeline {timeline} "
            f"continues: {e.message} (its WAL from there is gone: the timeline cannot "
            "continue from this source)") from None
    except TimeoutError:
        raise Unavailable(f"the WAL source {where} sent no whole record at {start} within "
                          f"{HISTORY_CHECK_TIMEOUT:.0f}s (its end of WAL is "
                          f"{system.xlogpos}); retry") from None
    return True


async def _same_server(a: str, b: str) -> bool:
    """Whether two connection strings reach the same server: a temporary slot made
    through ``b`` is looked for through ``a`` (it goes when its session ends)."""
    if a == b:
        return True
    probe = f"pagestore_probe_{secrets.token_hex(8)}"
    conn_b = await ReplicationConnection.connect(b, connect_timeout=SLOT_DROP_TIMEOUT)
    try:
        await conn_b.create_physical_slot(probe, reserve_wal=False, temporary=True)
        conn_a = await ReplicationConnection.connect(a, connect_timeout=SLOT_DROP_TIMEOUT)
        try:
            found = await asyncio.wait_for(conn_a.read_replication_slot(probe),
                                           SLOT_DROP_TIMEOUT)
        finally:
            await conn_a.close()
        return found is not None
    finally:
        await conn_b.close()
