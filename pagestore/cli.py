"""The `pagestore` command line.

Every command takes ``--workdir DIR`` (default $PAGESTORE_WORKDIR, else ./.pagestore) and
repeatable ``-c key=value`` config overrides (TOML syntax).  Tenant and timeline commands
are clients of the running stack's housekeeping service; ids print as 32 hex chars.
Exit codes: 0 success, 1 an operation failed, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import grpc

from pagestore.config import resolve_workdir
from pagestore.errors import (
    ERROR_CLASS_METADATA_KEY,
    BadRequest,
    ConfigError,
    PagestoreError,
    Unavailable,
    from_rpc_error,
)
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.stack import Stack

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

log = logging.getLogger("pagestore.cli")


def _common(sub: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if sub else None
    p.add_argument("--workdir", default=default,
                   help="working directory (default: $PAGESTORE_WORKDIR, else ./.pagestore)")
    p.add_argument("-c", dest="overrides", action="append", default=default, metavar="KEY=VALUE",
                   help="config override in TOML syntax, e.g. -c log.level='debug' (repeatable)")
    return p


def _timeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--timeline", required=True, help="timeline id")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from pagestore.pg.xlogrecord import decoder_implementation

    try:
        v = version("pagestore")
    except PackageNotFoundError:
        v = "unknown"
    return f"pagestore {v} (PostgreSQL 15; WAL decoder: {decoder_implementation()})"


def build_parser() -> argparse.ArgumentParser:
    common = _common(sub=True)
    parser = argparse.ArgumentParser(prog="pagestore", parents=[_common(sub=False)],
                                     description="A page server for PostgreSQL 15.")
    parser.add_argument("--version", action="version", version=_version())
    cmds = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = cmds.add_parser("init", parents=[common], help="write <workdir>/pagestore.toml")
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    cmds.add_parser("start", parents=[common], help="start the catalog and the five services")
    cmds.add_parser("stop", parents=[common], help="stop every service and the catalog")
    p = cmds.add_parser("status", parents=[common], help="pid, port and health of each service")
    p.add_argument("--json", action="store_true")

    tenant = cmds.add_parser("tenant", parents=[common], help="tenants")
    tcmds = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    p = tcmds.add_parser("create", parents=[common], help="create a tenant; prints its id")
    p.add_argument("--tenant-id", help="32 hex chars (default: generated)")
    p = tcmds.add_parser("list", parents=[common], help="list tenants")
    p.add_argument("--json", action="store_true")
    p = tcmds.add_parser("attach", parents=[common],
                         help="rebuild a tenant from remote storage here and resume its ingest")
    p.add_argument("tenant_id", metavar="TENANT")
    p.add_argument("--warm", action="store_true",
                   help="download every layer now (default: on demand, when reads need them)")
    p = tcmds.add_parser("detach", parents=[common],
                         help="upload what is missing, then drop the local copy of a tenant")
    p.add_argument("tenant_id", metavar="TENANT")
    p.add_argument("--force", action="store_true",
                   help="detach even if something could not be uploaded (it is lost)")
    p = tcmds.add_parser("config", parents=[common],
                         help="show a tenant's settings, or change them: KEY=VALUE ...")
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="e.g. pitr_interval='1h' gc_horizon=0 (docs/housekeeping.md)")
    p.add_argument("--reset", action="append", default=[], metavar="KEY",
                   help="back to the server-wide default (repeatable)")
    p.add_argument("--json", action="store_true")

    timeline = cmds.add_parser("timeline", parents=[common], help="timelines")
    lcmds = timeline.add_subparsers(dest="timeline_command", required=True, metavar="ACTION")
    p = lcmds.add_parser("create", parents=[common], help="create a timeline; prints its id")
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--timeline-id", help="32 hex chars (default: generated)")
    p.add_argument("--pg-version", type=int, default=15)
    p.add_argument("--wal-source", metavar="CONNSTR",
                   help="attach a running primary: slot, base backup, import, then streaming")
    p.add_argument("--ancestor", metavar="TIMELINE",
                   help="create a branch of this timeline (no data is copied)")
    p.add_argument("--ancestor-lsn", metavar="X/Y",
                   help="the branch point (default: the ancestor's last record)")
    p = lcmds.add_parser("list", parents=[common], help="list a tenant's timelines")
    p.add_argument("--tenant", required=True, help="tenant id")
    p.add_argument("--json", action="store_true")
    p = lcmds.add_parser("status", parents=[common],
                         help="LSNs, WAL source, state, background loops, replication slot")
    _timeline_options(p)
    p.add_argument("--json", action="store_true")
    p = lcmds.add_parser("compact", parents=[common],
                         help="compact L0 layers and create image layers now; waits for it")
    _timeline_options(p)
    p.add_argument("--force-l0", action="store_true",
                   help="compact the L0 layers even below compaction_threshold")
    p.add_argument("--force-images", action="store_true",
                   help="an image layer for every key partition with a delta above its image")
    p.add_argument("--json", action="store_true")
    p = lcmds.add_parser("gc", parents=[common],
                         help="garbage-collect layers below the GC cutoff now; waits for it")
    _timeline_options(p)
    p.add_argument("--json", action="store_true")
    p = lcmds.add_parser("upload", parents=[common],
                         help="upload new layers and the index to remote storage now")
    _timeline_options(p)
    p.add_argument("--json", action="store_true")
    p = lcmds.add_parser("delete", parents=[common],
                         help="stop ingest, drop the replication slot, remove the timeline")
    _timeline_options(p)
    p.add_argument("--force", action="store_true",
                   help="delete even if the slot cannot be dropped (the source is unreachable)")
    p = lcmds.add_parser("attach-source", parents=[common],
                         help="stream an existing timeline (a branch, or one whose primary "
                              "moved) from a new WAL source, after checking its history")
    _timeline_options(p)
    p.add_argument("--wal-source", metavar="CONNSTR", required=True,
                   help="the PostgreSQL started from the timeline (or its new primary)")
    p.add_argument("--json", action="store_true")

    p = cmds.add_parser("waldump", parents=[common],
                        help="decode WAL segment files; one JSON object per record")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a pg_wal directory or segment files")
    p.add_argument("--start", help="first LSN (X/Y); default: the start of the first segment")
    p.add_argument("--end", help="stop before this LSN (X/Y); default: the end of the WAL")
    p.add_argument("--timeline", type=int, help="timeline of the segment files (default: lowest)")

    p = cmds.add_parser("redo-check", parents=[common],
                        help="replay WAL written with wal_consistency_checking=all and compare "
                             "pagestore's redo with PostgreSQL's after-images")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a pg_wal directory or segment files")
    p.add_argument("--start", help="first LSN (X/Y)")
    p.add_argument("--end", help="stop before this LSN (X/Y)")
    p.add_argument("--timeline", type=int, help="timeline of the segment files (default: lowest)")
    p.add_argument("--all", action="store_true", help="report every mismatch, not just the first")
    p.add_argument("--data-checksums", action="store_true",
                   help="the cluster has data checksums (redo then stamps LSNs on hint-only changes)")

    p = cmds.add_parser("failpoint", parents=[common],
                        help="list or set a service's failpoints (docs/operations.md)")
    p.add_argument("service", choices=SERVICES)
    p.add_argument("name", nargs="?", help="failpoint name (none: list them)")
    p.add_argument("action", nargs="?", default="return",
                   help="off, return, kill, pause, sleep(MS), optionally N*ACTION "
                        "(default: return)")

    p = cmds.add_parser("restore", parents=[common],
                        help="write a timeline's full backup at an LSN or a point in time "
                             "into a new data directory; optionally start PostgreSQL on it")
    _timeline_options(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--lsn", help="the LSN to restore (X/Y)")
    target.add_argument("--time", metavar="TIMESTAMP",
                        help="the point in time to restore: RFC 3339 / ISO 8601 with a time "
                             "zone (2026-03-04T05:06:07Z); every commit at or before it, "
                             "none after")
    p.add_argument("--pgdata", required=True, metavar="DIR",
                   help="the data directory to create (must be absent or empty)")
    p.add_argument("--start", action="store_true",
                   help="start PostgreSQL 15 on it and print its connection string")
    p.add_argument("--port", type=int,
                   help="its port (default: a free one with --start, else 5432)")
    p.add_argument("--user", default="postgres",
                   help="the role in the printed connection string (default: postgres)")

    authp = cmds.add_parser("auth", parents=[common],
                            help="keys and tokens for NeonJWT ports (docs/security.md)")
    acmds = authp.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    p = acmds.add_parser("keygen", parents=[common], help="write a new Ed25519 key pair")
    p.add_argument("--private-key", default=None, metavar="FILE",
                   help="where the private key goes (default: <workdir>/auth_private_key.pem)")
    p.add_argument("--public-key", default=None, metavar="FILE",
                   help="where the public key goes (default: <workdir>/auth_public_key.pem; "
                        "name it, or its directory, in auth_validation_public_key_path)")
    p = acmds.add_parser("token", parents=[common], help="print a token signed by a private key")
    p.add_argument("--scope", required=True,
                   help="tenant (with --tenant) or pageserverapi (everything)")
    p.add_argument("--tenant", help="the tenant a 'tenant' token is for")
    p.add_argument("--ttl", help="lifetime, e.g. 1h or 30m (default: no expiry)")
    p.add_argument("--private-key", default=None, metavar="FILE",
                   help="the signing key (default: <workdir>/auth_private_key.pem)")
    acmds.add_parser("internal", parents=[common],
                     help="make the services' own key pair and token under <workdir>/run/auth "
                          "(`pagestore start` does it; for services started by hand)")

    catalog = cmds.add_parser("catalog", parents=[common], help="the catalog database")
    ccmds = catalog.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    p = ccmds.add_parser("upgrade", parents=[common], help="run the Alembic migrations")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    ccmds.add_parser("status", parents=[common], help="current and needed revision")
    return parser


# --------------------------------------------------------------------------- helpers

def _stack(args: argparse.Namespace) -> Stack:
    return Stack(resolve_workdir(args.workdir), args.overrides or [])


def _connect(stack: Stack, addr: str) -> grpc.Channel:
    """A channel to one of the stack's gRPC ports: with its TLS trust, and the token from
    $PAGESTORE_AUTH_TOKEN or else the stack's own (the CLI runs beside the stack, as its
    operator; docs/security.md)."""
    from pagestore import auth
    from pagestore.grpcutil import configure_clients, sync_channel

    cfg = stack.effective_config()
    token = os.environ.get(auth.TOKEN_ENV) or auth.internal_token(stack.workdir)
    configure_clients(token=token, root_certificates=auth.trusted_certificates(cfg))
    return sync_channel(addr)


SERVICES = ("ingest", "pageread", "redo", "housekeeping", "gateway")


def _call(stack: Stack, method: str, request: Any, timeout: float | None = 30, *,
          admin_of: str | None = None) -> Any:
    """One RPC of the running stack's housekeeping service, or with ``admin_of`` of the
    Admin service (failpoints) of that service."""
    from pagestore.proto import admin_pb2_grpc, housekeeping_pb2_grpc

    service = admin_of or "housekeeping"
    addr = stack.effective_config().service_addr(service)
    ch = _connect(stack, addr)
    stub: Any = (admin_pb2_grpc.AdminStub(ch) if admin_of
                 else housekeeping_pb2_grpc.HousekeepingStub(ch))
    try:
        return getattr(stub, method)(request, timeout=timeout)
    except grpc.RpcError as e:
        raise _rpc_failure(e, stack, service, addr) from None
    finally:
        ch.close()


def _rpc_failure(e: grpc.RpcError, stack: Stack, service: str, addr: str) -> Exception:
    """The error to show for a failed RPC: the service's own, or "not running"."""
    from_service = any(getattr(m, "key", None) == ERROR_CLASS_METADATA_KEY
                       for m in e.trailing_metadata() or ())
    if e.code() == grpc.StatusCode.UNAVAILABLE and not from_service:
        return Unavailable(f"the {service} service at {addr} is not reachable: is the "
                           f"stack in {stack.workdir} running? (pagestore start)")
    return from_rpc_error(e)


def _stream(stack: Stack, method: str, request: Any, timeout: float | None = None
            ) -> Iterator[Any]:
    """A server-streaming RPC of the housekeeping service: its messages as they come."""
    from pagestore.proto import housekeeping_pb2_grpc

    addr = stack.effective_config().service_addr("housekeeping")
    with _connect(stack, addr) as ch:
        stub: Any = housekeeping_pb2_grpc.HousekeepingStub(ch)
        try:
            yield from getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise _rpc_failure(e, stack, "housekeeping", addr) from None


def _show_progress(messages: Iterable[Any]) -> Any:
    """Print each progress line (with bytes done of total when given); returns the
    TenantInfo of the last message."""
    result = None
    for m in messages:
        line = m.message
        if m.total_bytes:
            line += f"  [{m.done_bytes / 1e6:.1f} of {m.total_bytes / 1e6:.1f} MB]"
        elif m.done_bytes:
            line += f"  [{m.done_bytes / 1e6:.1f} MB]"
        print(line, flush=True)
        if m.HasField("tenant"):
            result = m.tenant
    return result


def _parse_id(cls: type[TenantId] | type[TimelineId], text: str, option: str) -> str:
    try:
        return str(cls.parse(text))
    except ValueError as e:
        raise BadRequest(f"{option}: {e}") from None


def _timeline_json(t: Any) -> dict[str, Any]:
    return {
        "tenant_id": t.tenant_id, "timeline_id": t.timeline_id,
        "ancestor_timeline_id": t.ancestor_timeline_id or None,
        "ancestor_lsn": str(Lsn(t.ancestor_lsn)) if t.ancestor_timeline_id else None,
        "last_record_lsn": str(Lsn(t.last_record_lsn)),
        "disk_consistent_lsn": str(Lsn(t.disk_consistent_lsn)),
        "remote_consistent_lsn": str(Lsn(t.remote_consistent_lsn)),
        "min_readable_lsn": str(Lsn(t.min_readable_lsn)),
        "pg_version": t.pg_version, "state": t.state, "wal_source": t.wal_source or None,
        "state_reason": t.state_reason or None,
        "gc_cutoff_lsn": str(Lsn(t.gc_cutoff_lsn)),
        "pitr_cutoff_lsn": str(Lsn(t.pitr_cutoff_lsn)),
    }


def _status_json(t: Any) -> dict[str, Any]:
    """`timeline status`: the timeline, its loops and its replication slot."""
    out = _timeline_json(t)
    out["loops"] = [{
        "service": lp.service, "name": lp.name, "state": lp.state, "detail": lp.detail,
        "restarts": lp.restarts, "last_error": lp.last_error or None,
        "last_error_at": lp.last_error_at or None} for lp in t.loops]
    out["slot"] = {"name": t.slot.name or None, "status": t.slot.status,
                   "restart_lsn": str(Lsn(t.slot.restart_lsn)) if t.slot.restart_lsn else None,
                   "note": t.slot.note}
    out["layers"] = {st.kind: {"count": st.count, "bytes": st.bytes} for st in t.layers}
    out["generation"] = t.generation
    out["layers_not_uploaded"] = t.layers_not_uploaded
    return out


# --------------------------------------------------------------------------- commands

def cmd_init(args: argparse.Namespace) -> int:
    path = _stack(args).init(force=args.force)
    print(f"wrote {path}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    stack = _stack(args)
    cfg, started = stack.start()
    if len(started) < 5:
        print(f"started {', '.join(started)} (the rest of the stack was running)")
        return 0
    print(f"pagestore is running in {stack.workdir}")
    print(f"  gateway (libpq): {cfg.gateway.listen_pg_addr}")
    for name in ("ingest", "pageread", "redo", "housekeeping"):
        print(f"  {name} (gRPC): {getattr(cfg, name).listen_addr}")
    print(f"  logs: {stack.logs_dir}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stopped = stack.stop()
    print("stopped " + (", ".join(stopped) if stopped else "nothing (no service was running)"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"{'SERVICE':<13} {'PID':>8} {'PORT':>6} {'HTTP':>6}  HEALTH")
        for name, s in status["services"].items():
            pid = s["pid"] if s["pid"] is not None else "-"
            http = s.get("http_port", "-")
            print(f"{name:<13} {pid!s:>8} {s['port']!s:>6} {http!s:>6}  {s['health']}")
    healthy = all(s["health"] == "SERVING" for s in status["services"].values())
    return 0 if healthy else 1


def cmd_tenant(args: argparse.Namespace) -> int:
    from pagestore.proto import housekeeping_pb2

    stack = _stack(args)
    if args.tenant_command == "create":
        tid = _parse_id(TenantId, args.tenant_id, "--tenant-id") if args.tenant_id else ""
        info = _call(stack, "CreateTenant", housekeeping_pb2.CreateTenantRequest(tenant_id=tid))
        print(info.tenant_id)
        return 0
    if args.tenant_command == "attach":
        tid = _parse_id(TenantId, args.tenant_id, "TENANT")
        _show_progress(_stream(stack, "AttachTenant",
                               housekeeping_pb2.AttachTenantRequest(tenant_id=tid, warm=args.warm)))
        return 0
    if args.tenant_command == "detach":
        tid = _parse_id(TenantId, args.tenant_id, "TENANT")
        _show_progress(_stream(stack, "DetachTenant", housekeeping_pb2.DetachTenantRequest(
            tenant_id=tid, force=args.force)))
        return 0
    if args.tenant_command == "config":
        tid = _parse_id(TenantId, args.tenant, "--tenant")
        if args.settings or args.reset:
            sets = {}
            for arg in args.settings:
                key, sep, value = arg.partition("=")
                if not sep:
                    raise BadRequest(f"cannot parse {arg!r}: expected KEY=VALUE")
                sets[key.strip()] = value.strip()
            resp = _call(stack, "SetTenantConfig", housekeeping_pb2.SetTenantConfigRequest(
                tenant_id=tid, set=sets, reset=args.reset))
        else:
            resp = _call(stack, "GetTenantConfig",
                         housekeeping_pb2.GetTenantConfigRequest(tenant_id=tid))
        if args.json:
            print(json.dumps({"effective": dict(resp.effective),
                              "overrides": dict(resp.overrides)}, indent=2))
        else:
            for key in sorted(resp.effective):
                mark = "  (tenant)" if key in resp.overrides else ""
                print(f"{key:<26} {resp.effective[key]}{mark}")
        return 0
    resp = _call(stack, "ListTenants", housekeeping_pb2.ListTenantsRequest())
    if args.json:
        print(json.dumps([{"tenant_id": t.tenant_id, "state": t.state,
                           "generation": t.generation,
                           "created_at": t.created_at.ToJsonString()} for t in resp.tenants],
                         indent=2))
    else:
        for t in resp.tenants:
            print(f"{t.tenant_id}  {t.state}  generation {t.generation}  "
                  f"{t.created_at.ToJsonString()}")
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    from pagestore.proto import housekeeping_pb2

    stack = _stack(args)
    tenant = _parse_id(TenantId, args.tenant, "--tenant")
    if args.timeline_command == "create":
        tlid = _parse_id(TimelineId, args.timeline_id, "--timeline-id") if args.timeline_id else ""
        ancestor = _parse_id(TimelineId, args.ancestor, "--ancestor") if args.ancestor else ""
        ancestor_lsn = _lsn_arg(args.ancestor_lsn, "--ancestor-lsn")
        info = _call(stack, "CreateTimeline", housekeeping_pb2.CreateTimelineRequest(
            tenant_id=tenant, timeline_id=tlid, pg_version=args.pg_version,
            wal_source=args.wal_source or "", ancestor_timeline_id=ancestor,
            ancestor_lsn=int(ancestor_lsn or 0)), timeout=None if args.wal_source else 30)
        print(info.timeline_id)
        return 0
    if args.timeline_command == "status":
        tlid = _parse_id(TimelineId, args.timeline, "--timeline")
        from pagestore.proto import common_pb2

        info = _call(stack, "GetTimeline", common_pb2.TimelineRef(tenant_id=tenant,
                                                                  timeline_id=tlid))
        status = _status_json(info)
        if args.json:
            print(json.dumps(status, indent=2))
            return 0
        for k in ("timeline_id", "state", "state_reason", "wal_source", "last_record_lsn",
                  "disk_consistent_lsn", "min_readable_lsn", "remote_consistent_lsn",
                  "gc_cutoff_lsn", "pitr_cutoff_lsn"):
            print(f"{k:<22} {status[k] if status[k] is not None else '-'}")
        print(f"{'layers':<22} " + ", ".join(f"{kind} {v['count']} ({v['bytes']} bytes)"
                                             for kind, v in status["layers"].items()))
        slot = status["slot"]
        print(f"{'slot':<22} {slot['name'] or '-'} {slot['status']}"
              + (f" restart_lsn={slot['restart_lsn']}" if slot["restart_lsn"] else "")
              + f" ({slot['note']})")
        for lp in status["loops"]:
            line = f"{lp['service'] + '.' + lp['name']:<22} {lp['state']}"
            if lp["detail"]:
                line += f": {lp['detail']}"
            if lp["last_error"]:
                line += f" (restarts {lp['restarts']}, last error: {lp['last_error']})"
            print(line)
        return 0
    if args.timeline_command == "compact":
        tlid = _parse_id(TimelineId, args.timeline, "--timeline")
        r = _call(stack, "CompactTimeline", housekeeping_pb2.CompactTimelineRequest(
            tenant_id=tenant, timeline_id=tlid, force_l0_compaction=args.force_l0,
            force_image_layer_creation=args.force_images), timeout=None)
        report = {"l0_compacted": r.l0_compacted, "l1_created": r.l1_created,
                  "images_created": r.images_created,
                  "image_lsn": str(Lsn(r.image_lsn)) if r.image_lsn else None,
                  "bytes_written": r.bytes_written, "elapsed_s": round(r.elapsed_seconds, 3)}
        print(json.dumps(report, indent=2) if args.json else
              " ".join(f"{k}={v}" for k, v in report.items()))
        return 0
    if args.timeline_command == "upload":
        from pagestore.proto import common_pb2

        tlid = _parse_id(TimelineId, args.timeline, "--timeline")
        u = _call(stack, "UploadTimeline", common_pb2.TimelineRef(tenant_id=tenant,
                                                                  timeline_id=tlid), timeout=None)
        up = {"layers_uploaded": u.layers_uploaded, "bytes_uploaded": u.bytes_uploaded,
              "objects_deleted": u.objects_deleted, "generation": u.generation,
              "remote_consistent_lsn": str(Lsn(u.remote_consistent_lsn))}
        print(json.dumps(up, indent=2) if args.json else
              "  ".join(f"{k}={v}" for k, v in up.items()))
        return 0
    if args.timeline_command == "gc":
        from pagestore.proto import common_pb2

        tlid = _parse_id(TimelineId, args.timeline, "--timeline")
        g = _call(stack, "GcTimeline", common_pb2.TimelineRef(tenant_id=tenant,
                                                              timeline_id=tlid), timeout=None)
        report = {"gc_cutoff_lsn": str(Lsn(g.gc_cutoff_lsn)),
                  "pitr_cutoff_lsn": str(Lsn(g.pitr_cutoff_lsn)),
                  "layers_total": g.layers_total,
                  "layers_needed_by_cutoff": g.layers_needed_by_cutoff,
                  "layers_needed_by_branches": g.layers_needed_by_branches,
                  "layers_needed_by_leases": g.layers_needed_by_leases,
                  "layers_removed": g.layers_removed, "bytes_removed": g.bytes_removed,
                  "elapsed_s": round(g.elapsed_seconds, 3)}
        print(json.dumps(report, indent=2) if args.json else
              " ".join(f"{k}={v}" for k, v in report.items()))
        return 0
    if args.timeline_command == "delete":
        tlid = _parse_id(TimelineId, args.timeline, "--timeline")
        resp = _call(stack, "DeleteTimeline", housekeeping_pb2.DeleteTimelineRequest(
            tenant_id=tenant, timeline_id=tlid, force=args.force), timeout=120)
        print(f"deleted timeline {tlid}: {resp.slot_note}")
        return 0
    if args.timeline_command == "attach-source":
        tlid = _parse_id(TimelineId, args.timeline, "--timeline")
        a = _call(stack, "AttachSource", housekeeping_pb2.AttachSourceRequest(
            tenant_id=tenant, timeline_id=tlid, wal_source=args.wal_source), timeout=180)
        attached = {**_timeline_json(a.timeline), "old_slot": a.old_slot_note}
        if args.json:
            print(json.dumps(attached, indent=2))
        else:
            print(f"timeline {tlid} streams from {attached['wal_source']} from "
                  f"{attached['last_record_lsn']}; old slot: {a.old_slot_note}")
        return 0
    resp = _call(stack, "ListTimelines", housekeeping_pb2.ListTimelinesRequest(tenant_id=tenant))
    if args.json:
        print(json.dumps([_timeline_json(t) for t in resp.timelines], indent=2))
    else:
        for t in resp.timelines:
            print(f"{t.timeline_id}  {t.state}  last_record_lsn={Lsn(t.last_record_lsn)}")
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from pagestore.catalog import schema
    from pagestore.catalog.db import make_engine

    stack = _stack(args)
    cfg = stack.effective_config()
    started_here = False
    if not cfg.catalog.url:
        if not stack.config_path.exists():
            raise ConfigError(f"{stack.config_path} does not exist: run `pagestore init` first")
        stack.ensure_private_catalog(cfg)
        started_here = not stack.running_services()
    engine = make_engine(stack.catalog_url(cfg))
    try:
        if args.catalog_command == "upgrade":
            before = schema.current_revision(engine)
            schema.upgrade(engine, args.revision)
            after = schema.current_revision(engine)
            print(f"catalog at revision {after} (was {before or 'empty'})")
        else:
            current = schema.current_revision(engine)
            print(f"current revision: {current or 'none'}")
            print(f"needed revision:  {schema.head_revision()}")
    finally:
        engine.dispose()
        if started_here and not stack.resolved_config_path.exists():
            stack._stop_catalog(cfg)
    return 0


def _lsn_arg(text: str | None, option: str) -> Lsn | None:
    if text is None:
        return None
    try:
        return Lsn.parse(text)
    except ValueError as e:
        raise BadRequest(f"{option}: {e}") from None


def cmd_waldump(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pagestore.pg.walfiles import find_segments, read_wal_records, record_summary

    segments = find_segments([Path(p) for p in args.paths], args.timeline)
    out = sys.stdout
    for rec in read_wal_records(segments, _lsn_arg(args.start, "--start"),
                                _lsn_arg(args.end, "--end")):
        out.write(json.dumps(record_summary(rec), separators=(", ", ": ")))
        out.write("\n")
    return 0


def cmd_redo_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pagestore.pg.rmgr import ALL_RECORD_KINDS
    from pagestore.pg.walfiles import find_segments, read_wal_records
    from pagestore.redo.check import CheckStats, check_records
    from pagestore.redo.context import RedoContext

    segments = find_segments([Path(p) for p in args.paths], args.timeline)
    stats = CheckStats()
    records = read_wal_records(segments, _lsn_arg(args.start, "--start"), _lsn_arg(args.end, "--end"))
    failed = False
    for mismatch in check_records(records, RedoContext(data_checksums=args.data_checksums), stats):
        failed = True
        print(mismatch.describe())
        if not args.all:
            break
    print(f"{stats.records} records, {stats.checked_blocks} blocks checked, "
          f"{stats.mismatches} mismatches")
    for kind, n in sorted(stats.checked.items()):
        print(f"  checked     {kind:<24} {n}")
    for kind, n in sorted(stats.unsupported.items()):
        print(f"  unsupported {kind:<24} {n}")
    for kind, n in sorted(stats.postgres_divergences.items()):
        print(f"  postgres-divergence {kind:<16} {n}  (PostgreSQL's own redo differs from "
              "the primary here; pagestore follows the redo: pagestore/redo/check.py)")
    for kind, n in sorted(stats.seen.items()):
        print(f"  seen        {kind} {n}")
    never_seen = [kind for kind in ALL_RECORD_KINDS if kind not in stats.seen]
    print(f"never seen: {', '.join(never_seen)}")
    return 1 if failed else 0


def cmd_failpoint(args: argparse.Namespace) -> int:
    from pagestore.proto import admin_pb2

    stack = _stack(args)
    if args.name:
        resp = _call(stack, "ConfigureFailpoints", admin_pb2.ConfigureFailpointsRequest(
            failpoints=[admin_pb2.Failpoint(name=args.name, action=args.action)]),
            admin_of=args.service)
    else:
        resp = _call(stack, "ListFailpoints", admin_pb2.ListFailpointsRequest(),
                     admin_of=args.service)
    for fp in resp.failpoints:
        if not args.name or fp.name == args.name:
            print(f"{fp.name:<28} {fp.action:<12} hits={fp.hits}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """A timeline's full backup at an LSN (or at the LSN a time resolves to, through
    pageread's GetLsnByTimestamp) unpacked into --pgdata; --start starts it
    (pagestore/restore.py, docs/operations.md)."""
    from pathlib import Path

    from google.protobuf.timestamp_pb2 import Timestamp

    from pagestore import restore
    from pagestore.grpcutil import timeline_metadata
    from pagestore.pg.cluster import (
        POSTGRES_OS_USER,
        find_pg_bin_dir,
        free_port,
        running_as_root,
    )
    from pagestore.pg.replication import PG_EPOCH_UNIX_US, datetime_to_pg_timestamp
    from pagestore.proto import pageread_pb2, pageread_pb2_grpc

    tenant = _parse_id(TenantId, args.tenant, "--tenant")
    tlid = _parse_id(TimelineId, args.timeline, "--timeline")
    lsn = _lsn_arg(args.lsn, "--lsn")
    when = restore.parse_time(args.time) if args.time is not None else None
    if args.port is not None and not 0 < args.port < 65536:
        raise BadRequest(f"--port {args.port}: expected 1..65535")
    datadir = Path(args.pgdata).absolute()
    restore.check_datadir(datadir)
    stack = _stack(args)
    cfg = stack.effective_config()
    bin_dir = find_pg_bin_dir(cfg.pg_bin_dir) if args.start else None
    addr = cfg.service_addr("pageread")
    md = timeline_metadata(tenant, tlid)
    with _connect(stack, addr) as ch:
        stub: Any = pageread_pb2_grpc.PageReadExtrasStub(ch)
        try:
            if when is not None:
                ts = Timestamp()
                ts.FromMicroseconds(datetime_to_pg_timestamp(when) + PG_EPOCH_UNIX_US)
                found = stub.GetLsnByTimestamp(
                    pageread_pb2.GetLsnByTimestampRequest(timestamp=ts), metadata=md,
                    timeout=60)
                lsn, message = restore.resolution(when, found.kind, Lsn(found.lsn), tlid)
                print(message, flush=True)
            assert lsn is not None
            print(f"writing the full backup of timeline {tlid} at {lsn} into {datadir}",
                  flush=True)
            backup = stub.GetFullBackup(pageread_pb2.GetFullBackupRequest(lsn=int(lsn)),
                                        metadata=md)
            size = restore.unpack_backup((c.chunk for c in backup), datadir)
        except grpc.RpcError as e:
            raise _rpc_failure(e, stack, "pageread", addr) from None
    port = args.port or (free_port() if args.start else 5432)
    restore.configure(datadir, port)
    print(f"restored {size / 1e6:.1f} MB at {lsn} into {datadir}", flush=True)
    if bin_dir is None:
        return 0
    cluster = restore.start(datadir, port, bin_dir, args.user)
    as_user = f" as the {POSTGRES_OS_USER} OS user" if running_as_root() else ""
    print(f"PostgreSQL started on 127.0.0.1:{port} (pid {cluster.pid()}, log "
          f"{cluster.logfile}); stop it with pg_ctl -D {datadir} stop{as_user}")
    print(cluster.conninfo())
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pagestore import auth
    from pagestore.config import Duration

    workdir = resolve_workdir(args.workdir)
    if args.auth_command == "internal":
        auth.make_internal_credentials(workdir)
        print(f"wrote the services' key pair and token into {auth.internal_dir(workdir)}")
        return 0
    private = Path(args.private_key) if args.private_key else workdir / "auth_private_key.pem"
    if args.auth_command == "keygen":
        public = Path(args.public_key) if args.public_key else workdir / "auth_public_key.pem"
        auth.generate_keypair(private, public)
        print(f"private key: {private} (keep it secret: it signs tokens)")
        print(f"public key:  {public} (set auth_validation_public_key_path to it or its "
              "directory)")
        return 0
    tenant = TenantId.parse(_parse_id(TenantId, args.tenant, "--tenant")) if args.tenant \
        else None
    try:
        ttl = float(Duration.parse(args.ttl)) if args.ttl else None
    except ValueError as e:
        raise BadRequest(f"--ttl: {e}") from None
    print(auth.make_token(auth.load_private_key(private), args.scope, tenant, ttl=ttl))
    return 0


COMMANDS = {
    "init": cmd_init, "start": cmd_start, "stop": cmd_stop, "status": cmd_status,
    "tenant": cmd_tenant, "timeline": cmd_timeline, "catalog": cmd_catalog,
    "waldump": cmd_waldump, "failpoint": cmd_failpoint,
    "redo-check": cmd_redo_check,
    "restore": cmd_restore,
    "auth": cmd_auth,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="pagestore: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"pagestore: {e.message}", file=sys.stderr)
        return 2
    except BadRequest as e:
        print(f"pagestore: {e.message}", file=sys.stderr)
        return 2
    except PagestoreError as e:
        print(f"pagestore: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `pagestore waldump ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
