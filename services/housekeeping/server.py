"""The housekeeping service process: gRPC ``pagestore.housekeeping.v1.Housekeeping``.

Adapts RPCs to TenantManager; ids arrive as 32-hex strings and bad ones are
INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from pagestore.errors import BadRequest
from pagestore.ids import TenantId, TimelineId
from pagestore.proto import common_pb2, housekeeping_pb2, housekeeping_pb2_grpc
from pagestore.service import ServiceContext, run_service
from services.housekeeping.tenants import TenantManager

if TYPE_CHECKING:
    from pagestore.catalog.repo import TenantRecord, TimelineRecord

Context = grpc.aio.ServicerContext[Any, Any]


def parse_tenant_id(text: str, field: str = "tenant_id") -> TenantId:
    try:
        return TenantId.parse(text)
    except ValueError as e:
        raise BadRequest(f"{field}: {e}") from None


def parse_timeline_id(text: str, field: str = "timeline_id") -> TimelineId:
    try:
        return TimelineId.parse(text)
    except ValueError as e:
        raise BadRequest(f"{field}: {e}") from None


def _ts(value: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def tenant_info(rec: TenantRecord) -> housekeeping_pb2.TenantInfo:
    return housekeeping_pb2.TenantInfo(tenant_id=str(rec.tenant_id), state=rec.state,
                                       created_at=_ts(rec.created_at))


def timeline_info(rec: TimelineRecord) -> housekeeping_pb2.TimelineInfo:
    return housekeeping_pb2.TimelineInfo(
        tenant_id=str(rec.tenant_id), timeline_id=str(rec.timeline_id),
        ancestor_timeline_id=str(rec.ancestor_timeline_id or ""),
        ancestor_lsn=int(rec.ancestor_lsn or 0),
        last_record_lsn=int(rec.last_record_lsn),
        disk_consistent_lsn=int(rec.disk_consistent_lsn),
        remote_consistent_lsn=int(rec.remote_consistent_lsn),
        gc_cutoff_lsn=int(rec.gc_cutoff_lsn), pg_version=rec.pg_version, state=rec.state,
        wal_source=rec.wal_source or "", created_at=_ts(rec.created_at))


class HousekeepingServicer(housekeeping_pb2_grpc.HousekeepingServicer):
    def __init__(self, tenants: TenantManager) -> None:
        self.tenants = tenants

    async def CreateTenant(self, request: housekeeping_pb2.CreateTenantRequest,
                           context: Context) -> housekeeping_pb2.TenantInfo:
        tid = parse_tenant_id(request.tenant_id) if request.tenant_id else None
        return tenant_info(await asyncio.to_thread(self.tenants.create_tenant, tid))

    async def ListTenants(self, request: housekeeping_pb2.ListTenantsRequest,
                          context: Context) -> housekeeping_pb2.ListTenantsResponse:
        recs = await asyncio.to_thread(self.tenants.list_tenants)
        return housekeeping_pb2.ListTenantsResponse(tenants=[tenant_info(r) for r in recs])

    async def CreateTimeline(self, request: housekeeping_pb2.CreateTimelineRequest,
                             context: Context) -> housekeeping_pb2.TimelineInfo:
        tid = parse_tenant_id(request.tenant_id)
        tlid = parse_timeline_id(request.timeline_id) if request.timeline_id else None
        rec = await asyncio.to_thread(self.tenants.create_timeline, tid, tlid,
                                      pg_version=request.pg_version or 15,
                                      wal_source=request.wal_source or None)
        return timeline_info(rec)

    async def ListTimelines(self, request: housekeeping_pb2.ListTimelinesRequest,
                            context: Context) -> housekeeping_pb2.ListTimelinesResponse:
        recs = await asyncio.to_thread(self.tenants.list_timelines,
                                       parse_tenant_id(request.tenant_id))
        return housekeeping_pb2.ListTimelinesResponse(timelines=[timeline_info(r) for r in recs])

    async def GetTimeline(self, request: common_pb2.TimelineRef,
                          context: Context) -> housekeeping_pb2.TimelineInfo:
        rec = await asyncio.to_thread(self.tenants.get_timeline,
                                      parse_tenant_id(request.tenant_id),
                                      parse_timeline_id(request.timeline_id))
        return timeline_info(rec)


async def setup(ctx: ServiceContext) -> None:
    assert ctx.catalog is not None
    manager = TenantManager(ctx.catalog, ctx.workdir)
    housekeeping_pb2_grpc.add_HousekeepingServicer_to_server(HousekeepingServicer(manager),
                                                             ctx.grpc.server)


def main() -> int:
    return run_service("housekeeping", setup, uses_catalog=True)


if __name__ == "__main__":
    sys.exit(main())
