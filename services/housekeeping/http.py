"""The management API: HTTP/JSON in Neon's shape, served by housekeeping on
``housekeeping.listen_http_addr`` beside ``/metrics``.

Paths, fields and status codes follow Neon's pageserver API
(shared/reference/neon-protocols.md section 6; docs/openapi.yaml is the contract, and a
test checks the running server against it).  Each handler is a thin adapter: it parses
the path and body, calls the same HousekeepingServicer method the gRPC API (and so the
CLI) uses, and renders the answer as Neon names it.  Rules:

- LSNs are "X/X" strings, ids 32 hex characters, times RFC 3339 (UTC).
- Errors are ``{"msg": "..."}`` with the status of the error's class (``STATUS``): 4xx
  for the caller's fault (a malformed id, LSN, body or unknown field is 400), 404 for a
  tenant or timeline that does not exist, 409/412 for conflicts and preconditions, 503
  when a service behind it is away; 500 only for a bug, logged with its traceback.
- Every response carries ``PAGESERVER_LAUNCH_TIMESTAMP`` (when this process started).
- pagestore extensions to Neon's shapes are additive fields (``wal_source`` on timeline
  create, ``layers`` on timeline detail, ...), so Neon's clients read what they expect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from pagestore import metrics
from pagestore.auth import bearer
from pagestore.config import Duration, TenantConfig, parse_tenant_setting, tenant_settings
from pagestore.errors import (
    AlreadyExists,
    AuthenticationError,
    BadRequest,
    ConfigError,
    CorruptionError,
    FailedPrecondition,
    LsnOutOfRange,
    LsnTimeout,
    NotFound,
    PagestoreError,
    PermissionDenied,
    RemoteStorageError,
    TenantNotFound,
    Unavailable,
    from_rpc_error,
)
from pagestore.grpcutil import timeline_metadata
from pagestore.ids import TenantId, TimelineId
from pagestore.lsn import Lsn
from pagestore.proto import (
    common_pb2,
    housekeeping_pb2,
    page_service_pb2,
    page_service_pb2_grpc,
    pageread_pb2,
)
from pagestore.restore import parse_time

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from pagestore.auth import Claims, JwtVerifier
    from pagestore.catalog.repo import TimelineRecord
    from services.housekeeping.server import HousekeepingServicer

log = logging.getLogger(__name__)

#: The OpenAPI document of this API (served at /swagger.yml, as Neon serves its own).
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"

#: HTTP status of each error class (the most specific class wins).
STATUS: list[tuple[type[PagestoreError], int]] = [
    (AuthenticationError, 401),
    (PermissionDenied, 403),
    (LsnTimeout, 408),
    (LsnOutOfRange, 400),
    (BadRequest, 400),
    (NotFound, 404),
    (AlreadyExists, 409),
    (FailedPrecondition, 412),
    (Unavailable, 503),
    (RemoteStorageError, 503),
    (CorruptionError, 500),
]

#: Routes open without a token, as Neon's allow-list (liveness, the spec, metrics).
OPEN_PATHS = frozenset({"/v1/status", "/swagger.yml", "/metrics"})

#: Timeline states as Neon names them (broken is an object with the reason).
TIMELINE_STATE = {"created": "Loading", "importing": "Loading", "active": "Active",
                  "stopping": "Stopping"}
TENANT_STATE = {"active": "Active", "stopping": "Stopping", "broken": "Broken"}

def status_of(err: PagestoreError) -> int:
    for cls, code in STATUS:
        if isinstance(err, cls):
            return code
    return 500


def lsn_text(lsn: int | None) -> str | None:
    return str(Lsn(lsn)) if lsn else None


def rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def parse_lsn(value: object, field: str) -> Lsn:
    if not isinstance(value, str):
        raise BadRequest(f"{field}: expected an LSN string like '0/16B3748', got {value!r}")
    try:
        return Lsn.parse(value)
    except ValueError:
        raise BadRequest(f"{field}: {value!r} is not an LSN (expected X/X in hex, e.g. "
                         "'0/16B3748')") from None


def parse_bool(request: web.Request, name: str, default: bool = False) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    if text.lower() in ("", "true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"query parameter {name}: expected true or false, got {text!r}")


def parse_id(kind: type[TenantId] | type[TimelineId], value: object, field: str) -> str:
    """A tenant or timeline id in its canonical text (BadRequest naming the field)."""
    if not isinstance(value, str):
        raise BadRequest(f"{field}: expected 32 hex characters, got {value!r}")
    try:
        return str(kind.parse(value))
    except ValueError as e:
        raise BadRequest(f"{field}: {e}") from None


def tenant_arg(request: web.Request) -> str:
    return parse_id(TenantId, request.match_info["tenant_id"], "tenant_id")


def timeline_arg(request: web.Request) -> str:
    return parse_id(TimelineId, request.match_info["timeline_id"], "timeline_id")


async def json_body(request: web.Request, allowed: set[str], *,
                    required: bool = True) -> dict[str, Any]:
    """The request's JSON object; unknown fields are refused (as Neon's serde does)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadRequest("a JSON request body is required")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(allowed))})")
    return body


def optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name}: expected a string, got {value!r}")
    return value


# ---------------------------------------------------------------------- renderings
def tenant_json(info: housekeeping_pb2.TenantInfo) -> dict[str, Any]:
    state = TENANT_STATE.get(info.state, info.state.capitalize())
    return {"id": info.tenant_id,
            "state": {"slug": state, "data": None},
            "attachment_status": {"slug": "attached"},
            "generation": info.generation,
            "created_at": rfc3339(info.created_at.ToDatetime(tzinfo=datetime.UTC))}


def timeline_json(t: housekeeping_pb2.TimelineInfo) -> dict[str, Any]:
    """Neon's TimelineInfo fields that pagestore has, plus its own (additive)."""
    state: Any = TIMELINE_STATE.get(t.state)
    if t.state == "broken":
        state = {"Broken": {"reason": t.state_reason, "backtrace": ""}}
    elif state is None:
        state = t.state.capitalize()
    out: dict[str, Any] = {
        "tenant_id": t.tenant_id,
        "timeline_id": t.timeline_id,
        "ancestor_timeline_id": t.ancestor_timeline_id or None,
        "ancestor_lsn": lsn_text(t.ancestor_lsn),
        "last_record_lsn": str(Lsn(t.last_record_lsn)),
        "prev_record_lsn": lsn_text(t.prev_record_lsn),
        "applied_gc_cutoff_lsn": str(Lsn(t.gc_cutoff_lsn)),
        "min_readable_lsn": str(Lsn(t.min_readable_lsn)),
        "disk_consistent_lsn": str(Lsn(t.disk_consistent_lsn)),
        "remote_consistent_lsn": str(Lsn(t.remote_consistent_lsn)),
        "remote_consistent_lsn_visible": str(Lsn(t.remote_consistent_lsn)),
        "pitr_cutoff_lsn": lsn_text(t.pitr_cutoff_lsn),
        "pg_version": t.pg_version,
        "state": state,
        "state_reason": t.state_reason or None,
        "wal_source_connstr": t.wal_source or None,
        "created_at": rfc3339(t.created_at.ToDatetime(tzinfo=datetime.UTC)),
    }
    if t.layers:  # the detail view (GET one timeline)
        out["layers"] = [{"kind": s.kind, "count": s.count, "bytes": s.bytes}
                         for s in t.layers]
        size = sum(s.bytes for s in t.layers)
        out["current_physical_size"] = size
        out["timeline_dir_layer_file_size_sum"] = size
        out["layers_not_uploaded"] = t.layers_not_uploaded
        if t.current_logical_size_known:
            out["current_logical_size"] = t.current_logical_size
            out["current_logical_size_is_accurate"] = True
        out["generation"] = t.generation
        receiver = [lp for lp in t.loops if lp.service == "ingest" and lp.name == "receiver"]
        out["walreceiver_status"] = receiver[0].detail or receiver[0].state if receiver \
            else None
        out["replication_slot"] = {"name": t.slot.name or None, "status": t.slot.status,
                                   "restart_lsn": lsn_text(t.slot.restart_lsn),
                                   "note": t.slot.note}
        out["loops"] = [{"service": lp.service, "name": lp.name, "state": lp.state,
                         "detail": lp.detail, "last_error": lp.last_error or None}
                        for lp in t.loops]
    return out


def settings_json(cfg: TenantConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = value.to_toml().strip("'") if isinstance(value, Duration) else value
    return out


def config_response(resp: housekeeping_pb2.TenantConfigResponse,
                    defaults: TenantConfig) -> dict[str, Any]:
    overrides = dict(parse_tenant_setting(f"{k}={v}") for k, v in resp.overrides.items())
    effective = tenant_settings(defaults, overrides)
    return {"tenant_specific_overrides": {k: (Duration.parse(v).to_toml().strip("'") if isinstance(
                getattr(effective, k), Duration) else v) for k, v in overrides.items()},
            "effective_config": settings_json(effective)}


# ---------------------------------------------------------------------- the API
class ManagementApi:
    def __init__(self, servicer: HousekeepingServicer, defaults: TenantConfig, *,
                 node_id: int, verifier: JwtVerifier | None = None) -> None:
        self.hk = servicer
        self.verifier = verifier  # None: Trust
        self.defaults = defaults
        self.node_id = node_id
        self.launched = rfc3339(datetime.datetime.now(datetime.UTC))
        self._pages: page_service_pb2_grpc.PageServiceAsyncStub | None = None

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)
        r = app.router
        r.add_get("/v1/status", self.status)
        r.add_get("/swagger.yml", self.swagger)
        r.add_get("/v1/tenant", self.list_tenants)
        r.add_post("/v1/tenant", self.create_tenant)
        r.add_put("/v1/tenant/config", self.put_tenant_config)
        r.add_patch("/v1/tenant/config", self.patch_tenant_config)
        r.add_get("/v1/tenant/{tenant_id}", self.get_tenant)
        r.add_delete("/v1/tenant/{tenant_id}", self.delete_tenant)
        r.add_get("/v1/tenant/{tenant_id}/config", self.get_tenant_config)
        r.add_put("/v1/tenant/{tenant_id}/location_config", self.location_config)
        r.add_post("/v1/tenant/{tenant_id}/attach", self.attach_tenant)
        r.add_post("/v1/tenant/{tenant_id}/detach", self.detach_tenant)
        tl = "/v1/tenant/{tenant_id}/timeline"
        r.add_get(tl, self.list_timelines)
        r.add_post(tl, self.create_timeline)
        one = tl + "/{timeline_id}"
        r.add_get(one, self.get_timeline)
        r.add_delete(one, self.delete_timeline)
        r.add_put(one + "/checkpoint", self.checkpoint)
        r.add_put(one + "/compact", self.compact)
        r.add_put(one + "/do_gc", self.do_gc)
        r.add_get(one + "/get_lsn_by_timestamp", self.get_lsn_by_timestamp)
        r.add_get(one + "/get_timestamp_of_lsn", self.get_timestamp_of_lsn)
        r.add_post(one + "/lsn_lease", self.lsn_lease)

    # ------------------------------------------------------------------ plumbing
    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        try:
            self._authenticate(request)
            resp = await handler(request)
        except web.HTTPException as e:  # aiohttp's own: unknown path, wrong method
            resp = web.json_response({"msg": e.reason if e.text is None else e.text},
                                     status=e.status)
            if e.status == 405 and "Allow" in e.headers:
                resp.headers["Allow"] = e.headers["Allow"]
        except PagestoreError as e:
            code = status_of(e)
            if code >= 500:
                log.error("%s %s failed: %s: %s", request.method, request.path,
                          type(e).__name__, e.message)
            else:
                log.info("%s %s refused (%d): %s", request.method, request.path, code,
                         e.message)
            metrics.ERRORS.labels("housekeeping", type(e).__name__).inc()
            resp = web.json_response({"msg": e.message}, status=code)
        except Exception:
            log.exception("%s %s failed with an unexpected error", request.method,
                          request.path)
            metrics.ERRORS.labels("housekeeping", "internal").inc()
            resp = web.json_response({"msg": "internal error (see the housekeeping log)"},
                                     status=500)
        resp.headers["PAGESERVER_LAUNCH_TIMESTAMP"] = self.launched
        route = request.match_info.route.resource
        metrics.HTTP_REQUESTS.labels(
            f"{request.method} {route.canonical if route is not None else 'unknown'}",
            str(resp.status)).inc()
        return resp

    def _authenticate(self, request: web.Request) -> None:
        """With NeonJWT: a valid Bearer token for every route but OPEN_PATHS; a route
        with a tenant in its path needs a token for that tenant (or pageserverapi), the
        server-wide ones pageserverapi; /v1/tenant/config checks the body's tenant."""
        if self.verifier is None or request.path in OPEN_PATHS:
            return
        claims = self.verifier.verify(bearer(request.headers.get("Authorization")))
        request["claims"] = claims
        tenant = request.match_info.get("tenant_id")
        if tenant is not None:
            claims.check_tenant(tenant_arg(request))
        elif request.path != "/v1/tenant/config":
            claims.check_server()

    @staticmethod
    def _authorize(request: web.Request, tenant: str) -> None:
        claims: Claims | None = request.get("claims")
        if claims is not None:
            claims.check_tenant(tenant)

    def pages(self) -> page_service_pb2_grpc.PageServiceAsyncStub:
        if self._pages is None:
            from pagestore.grpcutil import channel

            self._pages = page_service_pb2_grpc.PageServiceStub(channel(self.hk.pageread_addr))
        return self._pages

    async def _record(self, tenant: str, timeline: str) -> TimelineRecord:
        """The timeline's catalog row (TenantNotFound / TimelineNotFound: 404)."""
        return await asyncio.to_thread(self.hk.tenants.get_timeline, TenantId.parse(tenant),
                                       TimelineId.parse(timeline))

    @staticmethod
    async def _drain(stream: AsyncIterator[housekeeping_pb2.TenantProgress]
                     ) -> housekeeping_pb2.TenantProgress | None:
        last = None
        async for item in stream:
            log.info("%s", item.message)
            last = item
        return last

    # ------------------------------------------------------------------ server
    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"id": self.node_id})

    async def swagger(self, request: web.Request) -> web.Response:
        try:
            text = OPENAPI_PATH.read_text()
        except OSError:
            raise NotFound(f"the OpenAPI document is not installed here ({OPENAPI_PATH})") \
                from None
        return web.Response(text=text, content_type="application/yaml")

    # ------------------------------------------------------------------ tenants
    async def list_tenants(self, request: web.Request) -> web.Response:
        resp = await self.hk.ListTenants(housekeeping_pb2.ListTenantsRequest(), None)  # type: ignore[arg-type]
        return web.json_response([tenant_json(t) for t in resp.tenants])

    async def create_tenant(self, request: web.Request) -> web.Response:
        """Neon's (documented) POST /v1/tenant: {"new_tenant_id"?, ...TenantConfig}."""
        known = {f.name for f in dataclasses.fields(TenantConfig)}
        body = await json_body(request, {"new_tenant_id", *known}, required=False)
        tid = body.get("new_tenant_id")
        tid = parse_id(TenantId, tid, "new_tenant_id") if tid is not None else ""
        settings = {k: v for k, v in body.items() if k in known and v is not None}
        self._validate(settings)  # before the tenant exists: a bad setting creates nothing
        info = await self.hk.CreateTenant(housekeeping_pb2.CreateTenantRequest(tenant_id=tid),
                                          None)  # type: ignore[arg-type]
        if settings:
            await self._set_config(info.tenant_id, settings, [])
        return web.json_response(info.tenant_id, status=201)

    async def get_tenant(self, request: web.Request) -> web.Response:
        tid = tenant_arg(request)
        infos = await self.hk.ListTenants(housekeeping_pb2.ListTenantsRequest(), None)  # type: ignore[arg-type]
        found = [t for t in infos.tenants if t.tenant_id == tid]
        if not found:
            raise TenantNotFound(f"tenant {tid} not found")
        tls = await self.hk.ListTimelines(housekeeping_pb2.ListTimelinesRequest(tenant_id=tid),
                                          None)  # type: ignore[arg-type]
        out = tenant_json(found[0])
        out["walredo"] = None
        out["timelines"] = [t.timeline_id for t in tls.timelines]
        return web.json_response(out)

    async def delete_tenant(self, request: web.Request) -> web.Response:
        """Every timeline (branches first, each as DELETE timeline does: ingest stopped,
        slot dropped, remote objects removed), then the tenant.  200 also when the tenant
        is already gone, as Neon answers."""
        tid = tenant_arg(request)
        try:
            await self.hk.delete_tenant(TenantId.parse(tid), force=parse_bool(request, "force"))
        except TenantNotFound:
            pass
        return web.json_response(None, status=200)

    def _validate(self, settings: dict[str, Any]) -> None:
        """BadRequest naming the first setting that is not valid."""
        try:
            tenant_settings(self.defaults, dict(
                parse_tenant_setting(f"{k}={json.dumps(v)}") for k, v in settings.items()))
        except (ConfigError, ValueError) as e:
            raise BadRequest(str(e)) from None

    async def _set_config(self, tenant: str, changes: dict[str, Any], reset: list[str]
                          ) -> housekeeping_pb2.TenantConfigResponse:
        return await self.hk.SetTenantConfig(housekeeping_pb2.SetTenantConfigRequest(
            tenant_id=tenant, set={k: json.dumps(v) for k, v in changes.items()},
            reset=reset), None)  # type: ignore[arg-type]

    async def _tenant_config(self, request: web.Request, *, patch: bool) -> web.Response:
        known = {f.name for f in dataclasses.fields(TenantConfig)}
        body = await json_body(request, {"tenant_id", *known})
        if body.get("tenant_id") is None:
            raise BadRequest("tenant_id: required")
        tid = parse_id(TenantId, body["tenant_id"], "tenant_id")
        self._authorize(request, tid)
        changes = {k: v for k, v in body.items() if k in known and v is not None}
        if patch:  # null unsets a field, an absent one stays
            reset = [k for k, v in body.items() if k in known and v is None]
        else:  # the whole config: every field not given goes back to the default
            reset = sorted(known - set(changes))
        resp = await self._set_config(tid, changes, reset)
        return web.json_response(config_response(resp, self.defaults))

    async def put_tenant_config(self, request: web.Request) -> web.Response:
        return await self._tenant_config(request, patch=False)

    async def patch_tenant_config(self, request: web.Request) -> web.Response:
        return await self._tenant_config(request, patch=True)

    async def get_tenant_config(self, request: web.Request) -> web.Response:
        tid = tenant_arg(request)
        resp = await self.hk.GetTenantConfig(
            housekeeping_pb2.GetTenantConfigRequest(tenant_id=tid), None)  # type: ignore[arg-type]
        return web.json_response(config_response(resp, self.defaults))

    async def _tenant_exists(self, tid: str) -> bool:
        infos = await self.hk.ListTenants(housekeeping_pb2.ListTenantsRequest(), None)  # type: ignore[arg-type]
        return any(t.tenant_id == tid for t in infos.tenants)

    async def _attach(self, tid: str) -> None:
        if await self._tenant_exists(tid):
            return  # attached here already: idempotent
        await self._drain(self.hk.AttachTenant(
            housekeeping_pb2.AttachTenantRequest(tenant_id=tid), None))  # type: ignore[arg-type]

    async def _detach(self, tid: str, force: bool) -> None:
        if not await self._tenant_exists(tid):
            return  # not here: detached already
        await self._drain(self.hk.DetachTenant(
            housekeeping_pb2.DetachTenantRequest(tenant_id=tid, force=force), None))  # type: ignore[arg-type]

    async def location_config(self, request: web.Request) -> web.Response:
        """Neon's attach/detach: mode AttachedSingle attaches the tenant from remote
        storage (if it is not here), Detached uploads and detaches it (if it is here);
        both idempotent.  ``tenant_conf`` replaces the tenant's overrides."""
        tid = tenant_arg(request)
        body = await json_body(request, {"mode", "generation", "secondary_conf", "tenant_conf",
                                         "shard_number", "shard_count", "shard_stripe_size"})
        mode = body.get("mode")
        if mode not in ("AttachedSingle", "AttachedMulti", "AttachedStale", "Secondary",
                        "Detached"):
            raise BadRequest(f"mode: expected AttachedSingle or Detached, got {mode!r}")
        if mode in ("AttachedMulti", "AttachedStale", "Secondary"):
            raise BadRequest(f"mode {mode} is not supported: pagestore attaches a tenant to "
                             "one node at a time (AttachedSingle) or detaches it")
        if body.get("shard_count") not in (None, 0, 1) or body.get("shard_number") not in (None, 0):
            raise BadRequest("pagestore does not shard tenants: shard_count must be 0 or 1")
        conf = body.get("tenant_conf")
        if conf is not None and not isinstance(conf, dict):
            raise BadRequest("tenant_conf: expected an object")
        known = {f.name for f in dataclasses.fields(TenantConfig)}
        changes = {k: v for k, v in (conf or {}).items() if v is not None}
        unknown = sorted(set(conf or {}) - known)
        if unknown:
            raise BadRequest(f"tenant_conf: unknown field(s) {', '.join(unknown)}")
        self._validate(changes)  # before anything is attached
        if mode == "Detached":
            await self._detach(tid, force=False)
        else:
            generation = body.get("generation")
            if not isinstance(generation, int) or isinstance(generation, bool):
                raise BadRequest("generation: required for an attached mode (an integer)")
            await self._attach(tid)
            if conf is not None:  # the tenant's settings become exactly these
                await self._set_config(tid, changes, sorted(known - set(changes)))
        return web.json_response({"shards": [{"shard_id": tid, "node_id": self.node_id}],
                                  "stripe_size": None})

    async def attach_tenant(self, request: web.Request) -> web.Response:
        """Neon's older POST /v1/tenant/:id/attach (202): attach from remote storage."""
        tid = tenant_arg(request)
        await json_body(request, {"config", "generation"}, required=False)
        await self._attach(tid)
        return web.json_response(None, status=202)

    async def detach_tenant(self, request: web.Request) -> web.Response:
        """Neon's older POST /v1/tenant/:id/detach: upload what is not, then detach;
        ``?force=true`` detaches even if that fails (what was not uploaded is lost)."""
        tid = tenant_arg(request)
        await self._detach(tid, force=parse_bool(request, "force"))
        return web.json_response(None)

    # ------------------------------------------------------------------ timelines
    async def list_timelines(self, request: web.Request) -> web.Response:
        tid = tenant_arg(request)
        resp = await self.hk.ListTimelines(
            housekeeping_pb2.ListTimelinesRequest(tenant_id=tid), None)  # type: ignore[arg-type]
        return web.json_response([timeline_json(t) for t in resp.timelines])

    async def create_timeline(self, request: web.Request) -> web.Response:
        """TimelineCreateRequest: a branch ({new_timeline_id, ancestor_timeline_id,
        ancestor_start_lsn?}), or a new timeline ({new_timeline_id, pg_version?,
        wal_source?}: with wal_source, pagestore attaches that primary).  201 with the
        TimelineInfo; repeating a create with the same parameters answers 201 again, with
        others 409."""
        tid = tenant_arg(request)
        body = await json_body(request, {"new_timeline_id", "ancestor_timeline_id",
                                         "ancestor_start_lsn", "pg_version", "read_only",
                                         "wal_source", "existing_initdb_timeline_id"})
        if body.get("new_timeline_id") is None:
            raise BadRequest("new_timeline_id: required")
        new_id = parse_id(TimelineId, body["new_timeline_id"], "new_timeline_id")
        ancestor = body.get("ancestor_timeline_id")
        if ancestor is not None:
            ancestor = parse_id(TimelineId, ancestor, "ancestor_timeline_id")
        start = body.get("ancestor_start_lsn")
        start_lsn = parse_lsn(start, "ancestor_start_lsn") if start is not None else Lsn(0)
        pg_version = body.get("pg_version")
        if pg_version is not None and (not isinstance(pg_version, int)
                                       or isinstance(pg_version, bool)):
            raise BadRequest(f"pg_version: expected an integer, got {pg_version!r}")
        if pg_version is not None and not 0 <= pg_version <= 0xFFFF_FFFF:
            raise BadRequest(f"pg_version {pg_version} is not supported (supported: 15)")
        wal_source = optional_str(body, "wal_source") or ""
        if body.get("existing_initdb_timeline_id") is not None:
            raise BadRequest("existing_initdb_timeline_id is not supported: pagestore "
                             "imports timelines from a running primary (wal_source)")
        if body.get("read_only"):
            raise BadRequest("read_only timelines are not supported")
        if start is not None and not ancestor:
            raise BadRequest("ancestor_start_lsn needs ancestor_timeline_id")
        if ancestor and pg_version is not None and pg_version != 15:
            raise BadRequest(f"pg_version {pg_version}: a branch has its ancestor's version")
        existing = await self._existing_timeline(tid, new_id)
        if existing is not None:
            same = (existing.ancestor_timeline_id == (ancestor or "")
                    and (not start_lsn or existing.ancestor_lsn == (int(start_lsn) + 7) & ~7)
                    and (not wal_source or existing.wal_source != ""))
            if not same:
                raise AlreadyExists(f"timeline {new_id} exists with other parameters")
            return web.json_response(timeline_json(existing), status=201)
        try:
            info = await self.hk.CreateTimeline(housekeeping_pb2.CreateTimelineRequest(
                tenant_id=tid, timeline_id=new_id, pg_version=pg_version or 0,
                wal_source=wal_source, ancestor_timeline_id=ancestor or "",
                ancestor_lsn=int(start_lsn)), None)  # type: ignore[arg-type]
        except LsnOutOfRange as e:  # Neon: 406 for an ancestor LSN it will not branch at
            return web.json_response({"msg": e.message}, status=406)
        return web.json_response(timeline_json(info), status=201)

    async def _existing_timeline(self, tenant: str, timeline: str
                                 ) -> housekeeping_pb2.TimelineInfo | None:
        resp = await self.hk.ListTimelines(
            housekeeping_pb2.ListTimelinesRequest(tenant_id=tenant), None)  # type: ignore[arg-type]
        found = [t for t in resp.timelines if t.timeline_id == timeline]
        return found[0] if found else None

    async def get_timeline(self, request: web.Request) -> web.Response:
        rec = await self._record(tenant_arg(request), timeline_arg(request))
        info = await self.hk.status(rec, logical_size=True)
        return web.json_response(timeline_json(info))

    async def delete_timeline(self, request: web.Request) -> web.Response:
        """Done when it answers (ingest stopped, slot dropped, files removed), so a GET
        after it is 404 at once; 202 with ``null`` as Neon answers.  412 when it has
        branches or its WAL source's slot cannot be dropped (``?force=true`` drops the
        timeline anyway and says which slot is left)."""
        resp = await self.hk.DeleteTimeline(housekeeping_pb2.DeleteTimelineRequest(
            tenant_id=tenant_arg(request), timeline_id=timeline_arg(request),
            force=parse_bool(request, "force")), None)  # type: ignore[arg-type]
        log.info("timeline deleted over HTTP: %s", resp.slot_note)
        return web.json_response(None, status=202)

    async def checkpoint(self, request: web.Request) -> web.Response:
        """Freeze and flush the timeline's in-memory WAL into a layer file, then compact
        unless ``compact=false``."""
        tid, tlid = tenant_arg(request), timeline_arg(request)
        compact = parse_bool(request, "compact", default=True)
        force_l0 = parse_bool(request, "force_l0_compaction")
        force_images = parse_bool(request, "force_image_layer_creation")
        rec = await self._record(tid, tlid)
        if rec.wal_source and rec.state == "active":
            try:
                await self.hk.ingest().CheckpointTimeline(
                    common_pb2.TimelineRef(tenant_id=tid, timeline_id=tlid), timeout=120)
            except grpc.aio.AioRpcError as e:
                raise from_rpc_error(e) from None
        if compact:
            await self.hk.CompactTimeline(housekeeping_pb2.CompactTimelineRequest(
                tenant_id=tid, timeline_id=tlid, force_l0_compaction=force_l0,
                force_image_layer_creation=force_images), None)  # type: ignore[arg-type]
        return web.json_response(None)

    async def compact(self, request: web.Request) -> web.Response:
        tid, tlid = tenant_arg(request), timeline_arg(request)
        options = await json_body(request, {"scheduled", "sub_compaction", "compact_key_range",
                                            "compact_lsn_range",
                                            "sub_compaction_max_job_size_mb"}, required=False)
        given = sorted(k for k, v in options.items() if v not in (None, False))
        if given:
            raise BadRequest(f"{', '.join(given)}: not supported (pagestore compacts the whole "
                             "key and LSN range of the timeline)")
        await self.hk.CompactTimeline(housekeeping_pb2.CompactTimelineRequest(
            tenant_id=tid, timeline_id=tlid,
            force_l0_compaction=parse_bool(request, "force_l0_compaction"),
            force_image_layer_creation=parse_bool(request, "force_image_layer_creation")),
            None)  # type: ignore[arg-type]
        return web.json_response(None)

    async def do_gc(self, request: web.Request) -> web.Response:
        tid, tlid = tenant_arg(request), timeline_arg(request)
        body = await json_body(request, {"gc_horizon"}, required=False)
        if body.get("gc_horizon") is not None:
            raise BadRequest("gc_horizon in the request is not supported: set the tenant's "
                             "gc_horizon (PATCH /v1/tenant/config)")
        r = await self.hk.GcTimeline(common_pb2.TimelineRef(tenant_id=tid, timeline_id=tlid),
                                     None)  # type: ignore[arg-type]
        return web.json_response({
            "layers_total": r.layers_total, "layers_needed_by_cutoff": r.layers_needed_by_cutoff,
            "layers_needed_by_pitr": 0, "layers_needed_by_branches": r.layers_needed_by_branches,
            "layers_needed_by_leases": r.layers_needed_by_leases, "layers_not_updated": 0,
            "layers_removed": r.layers_removed, "elapsed": round(r.elapsed_seconds * 1000),
            "gc_cutoff_lsn": str(Lsn(r.gc_cutoff_lsn)),
            "pitr_cutoff_lsn": str(Lsn(r.pitr_cutoff_lsn)), "bytes_removed": r.bytes_removed})

    # ------------------------------------------------------------------ time and leases
    async def _extras(self, name: str, request: Any, tenant: str, timeline: str) -> Any:
        method = getattr(self.hk.pageread(), name)
        try:
            return await method(request, timeout=60, metadata=timeline_metadata(tenant, timeline))
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    async def get_lsn_by_timestamp(self, request: web.Request) -> web.Response:
        tid, tlid = tenant_arg(request), timeline_arg(request)
        text = request.query.get("timestamp")
        if not text:
            raise BadRequest("query parameter timestamp: required (RFC 3339)")
        when = parse_time(text, "timestamp")
        with_lease = parse_bool(request, "with_lease")
        await self._record(tid, tlid)  # 404 before asking pageread
        ts = Timestamp()
        ts.FromDatetime(when.astimezone(datetime.UTC).replace(tzinfo=None))
        resp = await self._extras("GetLsnByTimestamp",
                                  pageread_pb2.GetLsnByTimestampRequest(timestamp=ts), tid, tlid)
        out: dict[str, Any] = {"lsn": str(Lsn(resp.lsn)), "kind": resp.kind}
        if with_lease and resp.lsn:
            out["valid_until"] = await self._lease(tid, tlid, Lsn(resp.lsn))
        return web.json_response(out)

    async def get_timestamp_of_lsn(self, request: web.Request) -> web.Response:
        tid, tlid = tenant_arg(request), timeline_arg(request)
        text = request.query.get("lsn")
        if not text:
            raise BadRequest("query parameter lsn: required (X/X)")
        lsn = parse_lsn(text, "lsn")
        await self._record(tid, tlid)
        resp = await self._extras("GetTimestampOfLsn",
                                  pageread_pb2.GetTimestampOfLsnRequest(lsn=int(lsn)), tid, tlid)
        return web.json_response(rfc3339(resp.timestamp.ToDatetime(tzinfo=datetime.UTC)))

    async def _lease(self, tenant: str, timeline: str, lsn: Lsn) -> str:
        try:
            resp = await self.pages().LeaseLsn(page_service_pb2.LeaseLsnRequest(lsn=int(lsn)),
                                               timeout=30,
                                               metadata=timeline_metadata(tenant, timeline))
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        return rfc3339(resp.expires.ToDatetime(tzinfo=datetime.UTC))

    async def lsn_lease(self, request: web.Request) -> web.Response:
        tid, tlid = tenant_arg(request), timeline_arg(request)
        body = await json_body(request, {"lsn"})
        lsn = parse_lsn(body.get("lsn"), "lsn")
        if not lsn:
            raise BadRequest("lsn: 0/0 is not an LSN that can be leased")
        await self._record(tid, tlid)
        return web.json_response({"valid_until": await self._lease(tid, tlid, lsn)})
