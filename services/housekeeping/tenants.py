"""Tenant and timeline lifecycle: catalog rows plus their directories on local disk.

Synchronous logic (the gRPC servicer calls it in a thread), except the two calls that
talk to a timeline's WAL source (``slot_status``, ``delete_timeline``), which are
coroutines.  A tenant lives under ``<workdir>/tenants/<tenant_id>``, a timeline under
``.../timelines/<timeline_id>``; the catalog row is committed only after the directory
exists, so a listed timeline always has its directory.

Replication slots: a timeline with a WAL source streams through the physical slot
``pagestore_<timeline_id>`` on it.  An active timeline uses it; a broken one keeps it
while it can resume (its import finished: ingest resumes it from disk_consistent_lsn
when it starts again), and a failed import drops it.  Deleting a timeline stops its
ingest, drops the slot, then removes the catalog rows and the files; if the slot cannot
be dropped (the source is unreachable) the delete stops there (state ``stopping``) unless
forced, so a slot is never forgotten silently.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING

from pagestore.catalog import repo
from pagestore.catalog.db import make_sessionmaker
from pagestore.config import tenant_settings
from pagestore.errors import (
    BadRequest,
    ConfigError,
    FailedPrecondition,
    LsnOutOfRange,
    PagestoreError,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.pg.replication import (
    drop_slot_at,
    mask_conninfo,
    read_slot_at,
    timeline_slot_name,
)
from pagestore.proto import housekeeping_pb2
from pagestore.supervise import describe
from pagestore.timeline import tenant_dir, timeline_dir

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    import sqlalchemy as sa

    from pagestore.config import TenantConfig
    from pagestore.layers.desc import LayerDesc

log = logging.getLogger(__name__)

SUPPORTED_PG_VERSIONS = (15,)
SLOT_TIMEOUT = 5.0  # seconds for a status read of the slot on the WAL source


class TenantManager:
    def __init__(self, engine: sa.Engine, workdir: Path) -> None:
        self.sessions = make_sessionmaker(engine)
        self.workdir = workdir

    def create_tenant(self, tenant_id: TenantId | None) -> repo.TenantRecord:
        tid = tenant_id or TenantId.generate()
        with self.sessions.begin() as s:
            rec = repo.create_tenant(s, tid)
            tenant_dir(self.workdir, tid).joinpath("timelines").mkdir(parents=True,
                                                                      exist_ok=True)
        log.info("tenant created tenant=%s", tid)
        return rec

    def get_tenant(self, tenant_id: TenantId) -> repo.TenantRecord:
        with self.sessions.begin() as s:
            return repo.get_tenant(s, tenant_id)

    def list_tenants(self) -> list[repo.TenantRecord]:
        with self.sessions.begin() as s:
            return repo.list_tenants(s)

    def create_branch(self, tenant_id: TenantId, timeline_id: TimelineId | None,
                      ancestor_id: TimelineId, ancestor_lsn: Lsn | None,
                      ancestor_last_record_lsn: Lsn | None) -> repo.TimelineRecord:
        """A branch of ``ancestor_id`` at ``ancestor_lsn`` (rounded up to a multiple of 8,
        as Neon does; default: the ancestor's last record), created in O(1): no data is
        copied, reads below the branch point go to the ancestor."""
        tlid = timeline_id or TimelineId.generate()
        with self.sessions.begin() as s:
            # Locked: GC of the parent decides under the same lock, so its cutoff cannot
            # pass a branch point being created.
            parent = repo.lock_timeline(s, tenant_id, ancestor_id)
            last = ancestor_last_record_lsn or parent.last_record_lsn
            wanted = (int(ancestor_lsn) + 7) & ~7 if ancestor_lsn else int(last)
            if wanted > last:  # (also what would not fit an LSN once rounded up)
                raise LsnOutOfRange(f"branch point {Lsn(ancestor_lsn or last)} is beyond the "
                                    f"last record {last} of timeline {ancestor_id}")
            lsn = Lsn(wanted)
            if parent.state != "active":
                raise FailedPrecondition(f"ancestor timeline {ancestor_id} is {parent.state}")
            if lsn < parent.min_readable_lsn:
                raise LsnOutOfRange(f"branch point {lsn} is below {parent.min_readable_lsn}, "
                                    f"the first readable LSN of timeline {ancestor_id}")
            if lsn < parent.gc_cutoff_lsn:
                raise LsnOutOfRange(f"branch point {lsn} is below the GC cutoff "
                                    f"{parent.gc_cutoff_lsn} of timeline {ancestor_id}")
            if lsn > last:
                raise LsnOutOfRange(f"branch point {lsn} is beyond the last record {last} of "
                                    f"timeline {ancestor_id}")
            rec = repo.create_timeline(s, tenant_id, tlid, ancestor=(parent, lsn))
            timeline_dir(self.workdir, tenant_id, tlid).mkdir(parents=True, exist_ok=True)
        log.info("branch created ancestor=%s ancestor_lsn=%s tenant=%s timeline=%s",
                 ancestor_id, lsn, tenant_id, tlid)
        return rec

    def layers(self, tenant_id: TenantId, timeline_id: TimelineId) -> list[LayerDesc]:
        with self.sessions.begin() as s:
            return repo.list_layers(s, tenant_id, timeline_id)

    def tenant_config(self, tenant_id: TenantId, defaults: TenantConfig
                      ) -> tuple[TenantConfig, dict[str, object]]:
        """The tenant's effective settings and its own overrides."""
        with self.sessions.begin() as s:
            overrides = repo.get_tenant_config(s, tenant_id)
        return tenant_settings(defaults, overrides), overrides

    def set_tenant_config(self, tenant_id: TenantId, defaults: TenantConfig,
                          changes: dict[str, object], reset: list[str]
                          ) -> tuple[TenantConfig, dict[str, object]]:
        """Change the tenant's overrides (validated before they are stored)."""
        with self.sessions.begin() as s:
            overrides = repo.set_tenant_config(s, tenant_id, changes, reset)
            try:
                effective = tenant_settings(defaults, overrides)
            except ConfigError as e:
                raise BadRequest(str(e)) from None
        log.info("tenant config changed set=%s reset=%s tenant=%s", changes, reset, tenant_id)
        return effective, overrides

    def create_timeline(self, tenant_id: TenantId, timeline_id: TimelineId | None, *,
                        pg_version: int, wal_source: str | None) -> repo.TimelineRecord:
        if pg_version not in SUPPORTED_PG_VERSIONS:
            raise BadRequest(f"pg_version {pg_version} is not supported (supported: "
                             f"{', '.join(map(str, SUPPORTED_PG_VERSIONS))})")
        tlid = timeline_id or TimelineId.generate()
        with self.sessions.begin() as s:
            rec = repo.create_timeline(s, tenant_id, tlid, pg_version=pg_version,
                                       wal_source=wal_source)
            timeline_dir(self.workdir, tenant_id, tlid).mkdir(parents=True, exist_ok=True)
        log.info("timeline created tenant=%s timeline=%s", tenant_id, tlid)
        return rec

    def list_timelines(self, tenant_id: TenantId) -> list[repo.TimelineRecord]:
        with self.sessions.begin() as s:
            return repo.list_timelines(s, tenant_id)

    def get_timeline(self, tenant_id: TenantId, timeline_id: TimelineId) -> repo.TimelineRecord:
        with self.sessions.begin() as s:
            return repo.get_timeline(s, tenant_id, timeline_id)

    # ------------------------------------------------------------------ slots and delete
    async def slot_status(self, rec: repo.TimelineRecord) -> housekeeping_pb2.ReplicationSlot:
        """The timeline's slot on its WAL source, and what it is kept for."""
        name = timeline_slot_name(rec.timeline_id)
        if not rec.wal_source:
            return housekeeping_pb2.ReplicationSlot(status="none",
                                                    note="no WAL source: no slot")
        try:
            slot = await read_slot_at(rec.wal_source, name, timeout=SLOT_TIMEOUT)
        except (PagestoreError, OSError, TimeoutError) as e:
            return housekeeping_pb2.ReplicationSlot(
                name=name, status="unknown",
                note=f"the WAL source {mask_conninfo(rec.wal_source)} cannot be asked: "
                     f"{describe(e)}")
        if slot is None:
            note = ("missing: ingest cannot stream until it exists again"
                    if rec.state == "active" else "none on the source")
            return housekeeping_pb2.ReplicationSlot(name=name, status="missing", note=note)
        if rec.state == "active":
            note = "in use: the source keeps WAL from restart_lsn for ingest"
        elif rec.resumable:
            note = (f"kept: the timeline resumes from disk_consistent_lsn "
                    f"{rec.disk_consistent_lsn} when ingest starts after the cause is fixed; "
                    "the source keeps WAL until then (`pagestore timeline delete` drops it)")
        else:
            note = ("left over: nothing will resume from it; `pagestore timeline delete` "
                    "drops it")
        return housekeeping_pb2.ReplicationSlot(
            name=name, status="present", restart_lsn=int(slot.restart_lsn or 0), note=note)

    async def delete_timeline(self, tenant_id: TenantId, timeline_id: TimelineId, *,
                              detach: Callable[[], Awaitable[None]], force: bool,
                              remove_remote: Callable[[], Awaitable[str]] | None = None) -> str:
        """Stop ingest (``detach``), drop the slot, remove the remote objects (with remote
        storage on: ``remove_remote``; before the rows, so a failure leaves the timeline
        in the catalog to delete again, never an index that would bring it back), then
        the rows and the files.  Returns what became of the slot and the objects."""
        def begin() -> repo.TimelineRecord:
            with self.sessions.begin() as s:
                rec = repo.get_timeline(s, tenant_id, timeline_id)
                repo.refuse_if_branched(s, tenant_id, timeline_id)
                repo.update_timeline(s, tenant_id, timeline_id, state="stopping",
                                     state_reason="being deleted")
                return rec

        rec = await asyncio.to_thread(begin)
        if rec.wal_source:
            await detach()
        note = "no WAL source: no slot"
        if rec.wal_source:
            name = timeline_slot_name(timeline_id)
            where = mask_conninfo(rec.wal_source)
            try:
                dropped = await drop_slot_at(rec.wal_source, name, timeout=30)
                note = (f"dropped slot {name} on {where}" if dropped
                        else f"slot {name} was not on {where}")
            except (PagestoreError, OSError, TimeoutError) as e:
                reason = f"slot {name} on {where} could not be dropped: {describe(e)}"
                if not force:
                    await asyncio.to_thread(self._set_reason, tenant_id, timeline_id,
                                            f"delete incomplete: {reason}")
                    raise FailedPrecondition(
                        f"timeline {timeline_id} not deleted: {reason}; retry when the "
                        "source is reachable, or force it and drop the slot by hand "
                        f"(SELECT pg_drop_replication_slot('{name}'))") from None
                note = (f"NOT dropped ({reason}): drop it by hand on the source: "
                        f"SELECT pg_drop_replication_slot('{name}')")
                log.warning("timeline deleted by force; %s", note)

        if remove_remote is not None:
            try:
                note += "; " + await remove_remote()
            except PagestoreError as e:
                reason = f"its remote objects could not be deleted: {describe(e)}"
                await asyncio.to_thread(self._set_reason, tenant_id, timeline_id,
                                        f"delete incomplete: {reason}")
                raise FailedPrecondition(f"timeline {timeline_id} not deleted: {reason}; "
                                         "retry when remote storage works") from None

        def finish() -> None:
            with self.sessions.begin() as s:
                repo.delete_timeline(s, tenant_id, timeline_id)
            shutil.rmtree(timeline_dir(self.workdir, tenant_id, timeline_id),
                          ignore_errors=True)

        await asyncio.to_thread(finish)
        log.info("timeline deleted: %s tenant=%s timeline=%s", note, tenant_id, timeline_id)
        return note

    def delete_tenant(self, tenant_id: TenantId) -> None:
        """Remove the tenant's row and directory (its timelines are deleted already)."""
        with self.sessions.begin() as s:
            repo.delete_tenant(s, tenant_id)
        shutil.rmtree(tenant_dir(self.workdir, tenant_id), ignore_errors=True)
        log.info("tenant deleted tenant=%s", tenant_id)

    def _set_reason(self, tenant_id: TenantId, timeline_id: TimelineId, reason: str) -> None:
        with self.sessions.begin() as s:
            repo.update_timeline(s, tenant_id, timeline_id, state_reason=reason)
