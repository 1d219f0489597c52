"""Tenant and timeline lifecycle: catalog rows plus their directories on local disk.

Plain synchronous logic (the gRPC servicer calls it in a thread).  A tenant lives under
``<workdir>/tenants/<tenant_id>``, a timeline under ``.../timelines/<timeline_id>``;
the catalog row is committed only after the directory exists, so a listed timeline
always has its directory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pagestore.catalog import repo
from pagestore.catalog.db import make_sessionmaker
from pagestore.errors import BadRequest, FailedPrecondition, LsnOutOfRange
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn

if TYPE_CHECKING:
    from pathlib import Path

    import sqlalchemy as sa

log = logging.getLogger(__name__)

SUPPORTED_PG_VERSIONS = (15,)


def tenant_dir(workdir: Path, tenant_id: TenantId) -> Path:
    return workdir / "tenants" / str(tenant_id)


def timeline_dir(workdir: Path, tenant_id: TenantId, timeline_id: TimelineId) -> Path:
    return tenant_dir(workdir, tenant_id) / "timelines" / str(timeline_id)


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
            parent = repo.get_timeline(s, tenant_id, ancestor_id)
            last = ancestor_last_record_lsn or parent.last_record_lsn
            lsn = Lsn((int(ancestor_lsn) + 7) & ~7) if ancestor_lsn else last
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
