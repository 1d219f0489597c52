"""Catalog reads and writes for tenants and timelines, as plain functions on a Session.

Callers own the transaction (``with sessionmaker.begin() as s:``).  Ids go in and come
out as TenantId/TimelineId; rows are returned as the frozen TenantRecord/TimelineRecord
values so nothing outside this module holds an ORM object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from pagestore.catalog.models import Layer, LsnHistory, LsnLease, Tenant, Timeline
from pagestore.errors import (
    AlreadyExists,
    FailedPrecondition,
    PagestoreError,
    TenantNotFound,
    TimelineNotFound,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.layers.desc import LayerDesc
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    import datetime
    from collections.abc import Sequence

    from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class TenantRecord:
    tenant_id: TenantId
    state: str
    created_at: datetime.datetime
    generation: int = 1


@dataclass(frozen=True, slots=True)
class TimelineRecord:
    tenant_id: TenantId
    timeline_id: TimelineId
    ancestor_timeline_id: TimelineId | None
    ancestor_lsn: Lsn | None
    pg_version: int
    state: str
    wal_source: str | None
    min_readable_lsn: Lsn
    last_record_lsn: Lsn
    prev_record_lsn: Lsn
    disk_consistent_lsn: Lsn
    remote_consistent_lsn: Lsn
    gc_cutoff_lsn: Lsn
    created_at: datetime.datetime
    state_reason: str | None = None
    layers_version: int = 0
    pitr_cutoff_lsn: Lsn | None = None

    @property
    def resumable(self) -> bool:
        """Broken after its import finished: ingest resumes it from disk_consistent_lsn
        when it starts (its replication slot keeps the WAL meanwhile)."""
        return self.state == "broken" and self.wal_source is not None and \
            self.min_readable_lsn > 0


def _tenant_record(row: Tenant) -> TenantRecord:
    return TenantRecord(TenantId.parse(row.tenant_id), row.state, row.created_at,
                        row.generation)


def _timeline_record(row: Timeline) -> TimelineRecord:
    return TimelineRecord(
        tenant_id=TenantId.parse(row.tenant_id),
        timeline_id=TimelineId.parse(row.timeline_id),
        ancestor_timeline_id=(TimelineId.parse(row.ancestor_timeline_id)
                              if row.ancestor_timeline_id else None),
        ancestor_lsn=row.ancestor_lsn,
        pg_version=row.pg_version,
        state=row.state,
        wal_source=row.wal_source,
        min_readable_lsn=row.min_readable_lsn,
        last_record_lsn=row.last_record_lsn,
        prev_record_lsn=row.prev_record_lsn,
        disk_consistent_lsn=row.disk_consistent_lsn,
        remote_consistent_lsn=row.remote_consistent_lsn,
        gc_cutoff_lsn=row.gc_cutoff_lsn,
        created_at=row.created_at,
        state_reason=row.state_reason,
        layers_version=row.layers_version,
        pitr_cutoff_lsn=row.pitr_cutoff_lsn,
    )


def create_tenant(session: Session, tenant_id: TenantId, *, generation: int = 1,
                  config: dict[str, object] | None = None) -> TenantRecord:
    if session.get(Tenant, str(tenant_id)) is not None:
        raise AlreadyExists(f"tenant {tenant_id} already exists")
    row = Tenant(tenant_id=str(tenant_id), generation=generation, config=config or {})
    session.add(row)
    session.flush()
    session.refresh(row)
    return _tenant_record(row)


def get_tenant(session: Session, tenant_id: TenantId) -> TenantRecord:
    row = session.get(Tenant, str(tenant_id))
    if row is None:
        raise TenantNotFound(f"tenant {tenant_id} not found")
    return _tenant_record(row)


def list_tenants(session: Session) -> list[TenantRecord]:
    rows = session.scalars(sa.select(Tenant).order_by(Tenant.created_at, Tenant.tenant_id))
    return [_tenant_record(r) for r in rows]


def create_timeline(session: Session, tenant_id: TenantId, timeline_id: TimelineId, *,
                    pg_version: int = 15, wal_source: str | None = None,
                    ancestor: tuple[TimelineRecord, Lsn] | None = None) -> TimelineRecord:
    """A new timeline; with ``ancestor`` (its record and the branch point, already
    validated) a branch that shares the ancestor's history up to that LSN."""
    get_tenant(session, tenant_id)
    if session.get(Timeline, (str(tenant_id), str(timeline_id))) is not None:
        raise AlreadyExists(f"timeline {timeline_id} of tenant {tenant_id} already exists")
    row = Timeline(tenant_id=str(tenant_id), timeline_id=str(timeline_id),
                   pg_version=pg_version, wal_source=wal_source)
    if ancestor is not None:
        parent, lsn = ancestor
        row.ancestor_timeline_id = str(parent.timeline_id)
        row.ancestor_lsn = lsn
        row.pg_version = parent.pg_version
        row.state = "active"
        row.min_readable_lsn = parent.min_readable_lsn
        # Ingest of the branch (once a WAL source is attached) starts at the branch point.
        # prev_record_lsn stays 0, unknown: which record ends at an arbitrary LSN of the
        # parent is not kept, and a compute started from a full backup at the branch point
        # writes its first record with the xl_prev that backup was given (0 by default).
        row.last_record_lsn = row.disk_consistent_lsn = lsn
        row.prev_record_lsn = Lsn(0)
    session.add(row)
    session.flush()
    session.refresh(row)
    return _timeline_record(row)


def get_timeline(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> TimelineRecord:
    row = session.get(Timeline, (str(tenant_id), str(timeline_id)))
    if row is None:
        get_tenant(session, tenant_id)
        raise TimelineNotFound(f"timeline {timeline_id} of tenant {tenant_id} not found")
    return _timeline_record(row)


def list_timelines(session: Session, tenant_id: TenantId) -> list[TimelineRecord]:
    get_tenant(session, tenant_id)
    rows = session.scalars(sa.select(Timeline).where(Timeline.tenant_id == str(tenant_id))
                           .order_by(Timeline.created_at, Timeline.timeline_id))
    return [_timeline_record(r) for r in rows]


# --------------------------------------------------------------------------- layers

def _layer_desc(row: Layer) -> LayerDesc:
    return LayerDesc(row.kind, row.level, bytes(row.key_start), bytes(row.key_end),
                     row.lsn_start, row.lsn_end, row.file_name, row.file_size, row.checksum,
                     generation=row.generation)


def _layer_row(tenant_id: TenantId, timeline_id: TimelineId, d: LayerDesc) -> Layer:
    return Layer(tenant_id=str(tenant_id), timeline_id=str(timeline_id), kind=d.kind,
                 level=d.level, key_start=d.key_start, key_end=d.key_end,
                 lsn_start=d.lsn_start, lsn_end=d.lsn_end, file_name=d.file_name,
                 file_size=d.file_size, checksum=d.checksum, generation=d.generation,
                 remote_state="uploaded" if d.uploaded else "none")


def add_layer(session: Session, tenant_id: TenantId, timeline_id: TimelineId,
              layer: LayerDesc) -> int:
    """Register a layer file; bumps the timeline's layers_version and returns it."""
    version = bump_layers_version(session, tenant_id, timeline_id)
    session.add(_layer_row(tenant_id, timeline_id, layer))
    return version


def bump_layers_version(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> int:
    """Move the timeline's layers_version on; returns the new version."""
    version = session.scalar(
        sa.update(Timeline)
        .where(Timeline.tenant_id == str(tenant_id), Timeline.timeline_id == str(timeline_id))
        .values(layers_version=Timeline.layers_version + 1)
        .returning(Timeline.layers_version))
    if version is None:
        raise TimelineNotFound(f"timeline {timeline_id} of tenant {tenant_id} not found")
    return int(version)


def commit_flush(session: Session, tenant_id: TenantId, timeline_id: TimelineId, *,
                 layer: LayerDesc | None, lsn_start: Lsn, disk_consistent_lsn: Lsn,
                 prev_record_lsn: Lsn) -> int | None:
    """Register an L0 flush covering [lsn_start, disk_consistent_lsn]: the layer (if it
    holds values) and the new disk_consistent_lsn, in the caller's transaction.

    The timeline row is locked first.  A flush must start right after the registered
    disk_consistent_lsn (no gap, never backwards); the same flush committed before (a
    retry after a commit whose answer was lost: disk_consistent_lsn is already its end,
    which only this flush can have set; compaction may even have merged its layer since)
    is recognised and is a no-op.  Returns None for such a repeat, else the timeline's
    new layers_version."""
    row = session.scalar(
        sa.select(Timeline)
        .where(Timeline.tenant_id == str(tenant_id), Timeline.timeline_id == str(timeline_id))
        .with_for_update())
    if row is None:
        raise TimelineNotFound(f"timeline {timeline_id} of tenant {tenant_id} not found")
    current = row.disk_consistent_lsn
    if current == disk_consistent_lsn:
        return None
    if current + 1 != lsn_start:
        raise PagestoreError(
            f"flush of [{lsn_start}, {disk_consistent_lsn}] does not follow the registered "
            f"disk_consistent_lsn {current} of timeline {timeline_id} (tenant {tenant_id}): "
            "refusing to leave a gap or go backwards")
    if layer is not None:
        version = add_layer(session, tenant_id, timeline_id, layer)
    else:
        # No file (no record of the range made a value), but the map still moves on: a
        # reader must learn the new disk_consistent_lsn, which its subscription needs.
        version = bump_layers_version(session, tenant_id, timeline_id)
    update_timeline(session, tenant_id, timeline_id, disk_consistent_lsn=disk_consistent_lsn,
                    last_record_lsn=disk_consistent_lsn, prev_record_lsn=prev_record_lsn)
    session.add(LsnHistory(tenant_id=str(tenant_id), timeline_id=str(timeline_id),
                           lsn=disk_consistent_lsn))
    return version


def read_layer_map(session: Session, tenant_id: TenantId,
                   timeline_id: TimelineId) -> tuple[TimelineRecord, list[LayerDesc]]:
    """The timeline row and its layers from one snapshot (the caller's transaction is
    switched to REPEATABLE READ): the layers are exactly those of that layers_version."""
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    return get_timeline(session, tenant_id, timeline_id), list_layers(session, tenant_id,
                                                                       timeline_id)


def refuse_if_branched(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> None:
    """FailedPrecondition if branches of the timeline exist (they read its history)."""
    children = session.scalars(
        sa.select(Timeline.timeline_id)
        .where(Timeline.tenant_id == str(tenant_id),
               Timeline.ancestor_timeline_id == str(timeline_id))).all()
    if children:
        raise FailedPrecondition(f"timeline {timeline_id} has branches ({', '.join(children)}); "
                                 "delete them first")


def delete_timeline(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> None:
    """Remove a timeline row (its layers and leases go with it); refused while branches
    of it exist."""
    get_timeline(session, tenant_id, timeline_id)
    refuse_if_branched(session, tenant_id, timeline_id)
    session.execute(sa.delete(Timeline).where(Timeline.tenant_id == str(tenant_id),
                                              Timeline.timeline_id == str(timeline_id)))


def list_layers(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> list[LayerDesc]:
    rows = session.scalars(
        sa.select(Layer).where(Layer.tenant_id == str(tenant_id),
                               Layer.timeline_id == str(timeline_id),
                               Layer.local_state != "deleted")
        .order_by(Layer.lsn_end, Layer.file_name))
    return [_layer_desc(r) for r in rows]


def update_timeline(session: Session, tenant_id: TenantId, timeline_id: TimelineId,
                    **fields: object) -> None:
    """Set columns of a timeline row (LSNs, state, ...) and bump updated_at."""
    allowed = {"state", "state_reason", "wal_source", "min_readable_lsn", "last_record_lsn",
               "prev_record_lsn", "disk_consistent_lsn", "remote_consistent_lsn",
               "gc_cutoff_lsn", "pitr_cutoff_lsn"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot update timeline columns {sorted(unknown)}")
    result = session.execute(
        sa.update(Timeline)
        .where(Timeline.tenant_id == str(tenant_id), Timeline.timeline_id == str(timeline_id))
        .values(**fields, updated_at=sa.func.now()))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise TimelineNotFound(f"timeline {timeline_id} of tenant {tenant_id} not found")


def list_all_timelines(session: Session) -> list[TimelineRecord]:
    rows = session.scalars(sa.select(Timeline).order_by(Timeline.tenant_id, Timeline.timeline_id))
    return [_timeline_record(r) for r in rows]


def lock_timeline(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> TimelineRecord:
    """The timeline row, locked until the transaction ends (FOR UPDATE): what GC, a
    layer swap, a branch or a lease reads and then changes depending on it."""
    row = session.scalar(
        sa.select(Timeline)
        .where(Timeline.tenant_id == str(tenant_id), Timeline.timeline_id == str(timeline_id))
        .with_for_update())
    if row is None:
        get_tenant(session, tenant_id)
        raise TimelineNotFound(f"timeline {timeline_id} of tenant {tenant_id} not found")
    return _timeline_record(row)


def swap_layers(session: Session, tenant_id: TenantId, timeline_id: TimelineId, *,
                remove: Sequence[LayerDesc], add: Sequence[LayerDesc], **timeline_fields: object
                ) -> int:
    """Replace layers in one step (compaction, image creation, GC), with any timeline
    columns that go with it (GC's cutoffs), in the caller's transaction: readers see the
    map before or after, never a gap or a double.  Every layer to remove must still be
    registered (else FailedPrecondition: the map changed under the caller, who retries
    on the new one).  Bumps layers_version (returned) and notifies the readers."""
    lock_timeline(session, tenant_id, timeline_id)
    names = [d.file_name for d in remove]
    if names:
        deleted = session.execute(
            sa.delete(Layer).where(Layer.tenant_id == str(tenant_id),
                                   Layer.timeline_id == str(timeline_id),
                                   Layer.file_name.in_(names)))
        if deleted.rowcount != len(set(names)):  # type: ignore[attr-defined]
            raise FailedPrecondition(
                f"layer map of timeline {timeline_id} changed during the job: "
                f"{len(names) - deleted.rowcount} of its layers are gone")  # type: ignore[attr-defined]
    version = bump_layers_version(session, tenant_id, timeline_id)
    for d in add:
        session.add(_layer_row(tenant_id, timeline_id, d))
    if timeline_fields:
        update_timeline(session, tenant_id, timeline_id, **timeline_fields)
    notify_layers(session, tenant_id, timeline_id)
    return version


def notify_layers(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> None:
    """Tell the page readers (LISTEN pagestore_layers) to reload the timeline's map, also
    when no layer row changed (a GC that only moved the cutoff)."""
    session.execute(sa.select(sa.func.pg_notify("pagestore_layers",
                                                f"{tenant_id}/{timeline_id}")))


def branch_points(session: Session, tenant_id: TenantId, timeline_id: TimelineId) -> list[Lsn]:
    """The ancestor LSNs of the timeline's children (GC keeps what reads there need)."""
    return [lsn for lsn in session.scalars(
        sa.select(Timeline.ancestor_lsn)
        .where(Timeline.tenant_id == str(tenant_id),
               Timeline.ancestor_timeline_id == str(timeline_id))) if lsn is not None]


def active_leases(session: Session, tenant_id: TenantId, timeline_id: TimelineId,
                  now: datetime.datetime) -> list[Lsn]:
    """LSNs of the timeline's leases still valid at ``now``."""
    return list(session.scalars(
        sa.select(LsnLease.lsn)
        .where(LsnLease.tenant_id == str(tenant_id), LsnLease.timeline_id == str(timeline_id),
               LsnLease.valid_until > now)))


def grant_lease(session: Session, tenant_id: TenantId, timeline_id: TimelineId, lsn: Lsn,
                valid_until: datetime.datetime) -> datetime.datetime | None:
    """Hold GC back at ``lsn`` until ``valid_until`` (a lease at the same LSN is extended,
    never shortened).  None when the LSN is below the GC cutoff already (Neon answers the
    lease with NULL then)."""
    tl = lock_timeline(session, tenant_id, timeline_id)
    if lsn < tl.gc_cutoff_lsn:
        return None
    row = session.get(LsnLease, (str(tenant_id), str(timeline_id), lsn))
    if row is None:
        session.add(LsnLease(tenant_id=str(tenant_id), timeline_id=str(timeline_id), lsn=lsn,
                             valid_until=valid_until))
        return valid_until
    if row.valid_until < valid_until:
        row.valid_until = valid_until
    return row.valid_until


def lsn_reached_before(session: Session, tenant_id: TenantId, timeline_id: TimelineId,
                       when: datetime.datetime) -> Lsn | None:
    """The newest disk_consistent_lsn recorded before ``when``: every record at or below
    it was written before then.  None if nothing was recorded that early."""
    lsn: Lsn | None = session.scalar(
        sa.select(sa.func.max(LsnHistory.lsn))
        .where(LsnHistory.tenant_id == str(tenant_id),
               LsnHistory.timeline_id == str(timeline_id), LsnHistory.recorded_at < when))
    return lsn


def prune_lsn_history(session: Session, tenant_id: TenantId, timeline_id: TimelineId,
                      below: Lsn) -> None:
    """Forget the times of LSNs below ``below`` (GC's cutoff: older ones answer nothing)."""
    session.execute(sa.delete(LsnHistory).where(
        LsnHistory.tenant_id == str(tenant_id), LsnHistory.timeline_id == str(timeline_id),
        LsnHistory.lsn < below))
    session.execute(sa.delete(LsnLease).where(
        LsnLease.tenant_id == str(tenant_id), LsnLease.timeline_id == str(timeline_id),
        LsnLease.valid_until < sa.func.now()))


def get_tenant_config(session: Session, tenant_id: TenantId) -> dict[str, object]:
    """The tenant's setting overrides (pagestore.config.tenant_settings applies them)."""
    row = session.get(Tenant, str(tenant_id))
    if row is None:
        raise TenantNotFound(f"tenant {tenant_id} not found")
    return dict(row.config)


def set_tenant_config(session: Session, tenant_id: TenantId, changes: dict[str, object],
                      reset: Sequence[str] = ()) -> dict[str, object]:
    """Merge ``changes`` into the tenant's overrides, drop the ``reset`` keys; returns the
    new overrides (validated by the caller)."""
    row = session.get(Tenant, str(tenant_id), with_for_update=True)
    if row is None:
        raise TenantNotFound(f"tenant {tenant_id} not found")
    config = {k: v for k, v in {**row.config, **changes}.items() if k not in reset}
    row.config = config
    return config


# --------------------------------------------------------------------------- remote storage

def mark_uploaded(session: Session, tenant_id: TenantId, timeline_id: TimelineId,
                  file_name: str, generation: int) -> bool:
    """Record that a layer's remote copy is stored under ``generation``.  False when the
    layer is no longer registered (swapped out meanwhile)."""
    result = session.execute(
        sa.update(Layer)
        .where(Layer.tenant_id == str(tenant_id), Layer.timeline_id == str(timeline_id),
               Layer.file_name == file_name)
        .values(generation=generation, remote_state="uploaded"))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def advance_remote_consistent_lsn(session: Session, tenant_id: TenantId,
                                  timeline_id: TimelineId, lsn: Lsn) -> None:
    """Move remote_consistent_lsn up to ``lsn`` (never down)."""
    session.execute(
        sa.update(Timeline)
        .where(Timeline.tenant_id == str(tenant_id), Timeline.timeline_id == str(timeline_id),
               Timeline.remote_consistent_lsn < lsn)
        .values(remote_consistent_lsn=lsn, updated_at=sa.func.now()))


def uploaded_layer_files(session: Session) -> list[tuple[TenantId, TimelineId, str]]:
    """(tenant, timeline, file name) of every layer with a remote copy (evictable)."""
    rows = session.execute(sa.select(Layer.tenant_id, Layer.timeline_id, Layer.file_name)
                           .where(Layer.generation > 0))
    return [(TenantId.parse(t), TimelineId.parse(tl), name) for t, tl, name in rows]


def remote_consistent_lsns(session: Session) -> dict[tuple[TenantId, TimelineId], Lsn]:
    """Every timeline's remote_consistent_lsn (ingest reports it as its flush position)."""
    rows = session.execute(sa.select(Timeline.tenant_id, Timeline.timeline_id,
                                     Timeline.remote_consistent_lsn))
    return {(TenantId.parse(t), TimelineId.parse(tl)): lsn for t, tl, lsn in rows}


def restore_timeline(session: Session, tenant_id: TenantId, timeline_id: TimelineId, *,
                     pg_version: int, ancestor: tuple[TimelineId, Lsn] | None,
                     wal_source: str | None, min_readable_lsn: Lsn, prev_record_lsn: Lsn,
                     disk_consistent_lsn: Lsn, gc_cutoff_lsn: Lsn, pitr_cutoff_lsn: Lsn,
                     layers: Sequence[LayerDesc]) -> TimelineRecord:
    """A timeline rebuilt from its remote index (tenant attach): every LSN column at the
    index's disk_consistent_lsn (all of it is stored remotely), its layers registered as
    uploaded and not on local disk."""
    get_tenant(session, tenant_id)
    if session.get(Timeline, (str(tenant_id), str(timeline_id))) is not None:
        raise AlreadyExists(f"timeline {timeline_id} of tenant {tenant_id} already exists")
    row = Timeline(tenant_id=str(tenant_id), timeline_id=str(timeline_id),
                   pg_version=pg_version, wal_source=wal_source, state="active",
                   ancestor_timeline_id=str(ancestor[0]) if ancestor else None,
                   ancestor_lsn=ancestor[1] if ancestor else None,
                   min_readable_lsn=min_readable_lsn, prev_record_lsn=prev_record_lsn,
                   last_record_lsn=disk_consistent_lsn, disk_consistent_lsn=disk_consistent_lsn,
                   remote_consistent_lsn=disk_consistent_lsn, gc_cutoff_lsn=gc_cutoff_lsn,
                   pitr_cutoff_lsn=pitr_cutoff_lsn, layers_version=1)
    session.add(row)
    session.flush()
    for d in layers:
        if not d.uploaded:
            raise ValueError(f"layer {d.file_name} of a restored timeline has no generation")
        layer = _layer_row(tenant_id, timeline_id, d)
        layer.local_state = "evicted"
        session.add(layer)
    session.add(LsnHistory(tenant_id=str(tenant_id), timeline_id=str(timeline_id),
                           lsn=disk_consistent_lsn))
    session.flush()
    session.refresh(row)
    return _timeline_record(row)


def delete_tenant(session: Session, tenant_id: TenantId) -> None:
    """Remove a tenant and everything of it from the catalog (detach)."""
    get_tenant(session, tenant_id)
    # Children first: a branch's row references its ancestor's.
    rows = list_timelines(session, tenant_id)
    by_depth = sorted(rows, key=lambda r: _depth(r, {x.timeline_id: x for x in rows}),
                      reverse=True)
    for r in by_depth:
        session.execute(sa.delete(Timeline).where(Timeline.tenant_id == str(tenant_id),
                                                  Timeline.timeline_id == str(r.timeline_id)))
    session.execute(sa.delete(Tenant).where(Tenant.tenant_id == str(tenant_id)))


def _depth(rec: TimelineRecord, by_id: dict[TimelineId, TimelineRecord]) -> int:
    depth = 0
    while rec.ancestor_timeline_id is not None and rec.ancestor_timeline_id in by_id:
        rec = by_id[rec.ancestor_timeline_id]
        depth += 1
    return depth
