"""gRPC plumbing shared by every service: the aio server with health checks, the error
and context interceptor, graceful shutdown, and client channels.

Rules:
- Servers are grpc.aio; handlers never block the loop (blocking work goes to threads).
- A handler raises PagestoreError subclasses; ``ErrorInterceptor`` is the one place that
  turns them into a gRPC status (the class's ``grpc_code``, its message, and the class
  name in trailing metadata so ``errors.from_rpc_error`` can rebuild it on the client).
  Anything else is a bug: logged once with its traceback and returned as INTERNAL.
- The standard grpc.health.v1 service reports SERVING once the server is up and
  NOT_SERVING while it shuts down; `pagestore start` and `status` read it.
- Auth (docs/security.md): with ``grpc_auth_type = NeonJWT`` every RPC but the health
  checks needs ``authorization: Bearer <JWT>``; page_api and PageReadExtras accept a
  tenant token for the tenant in their metadata, every other service only
  ``pageserverapi`` (the services' own token).  Refusals go through the same error path
  (UNAUTHENTICATED / PERMISSION_DENIED) before the handler runs.
- Clients (``channel``, ``sync_channel``) send the process's token and trust its CA,
  both set once at start by ``configure_clients``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pagestore import failpoints, metrics
from pagestore.errors import ERROR_CLASS_METADATA_KEY, PagestoreError
from pagestore.logs import request_var, tenant_var, timeline_var
from pagestore.proto import admin_pb2, admin_pb2_grpc, common_pb2

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from pagestore.auth import JwtVerifier
    from pagestore.supervise import SupervisedLoop

log = logging.getLogger(__name__)

TENANT_METADATA_KEY = "neon-tenant-id"
TIMELINE_METADATA_KEY = "neon-timeline-id"
SHARD_METADATA_KEY = "neon-shard-id"
REQUEST_METADATA_KEY = "pagestore-request-id"
#: GetPages metadata: "any" lets pageread answer a stream's requests as they finish
#: instead of in request order (the gateway, whose one stream per timeline carries many
#: connections' requests, matches answers by request id).  Absent: in order, as Neon's
#: clients expect.
ANSWER_ORDER_METADATA_KEY = "pagestore-answer-order"

AUTHORIZATION_METADATA_KEY = "authorization"


def timeline_metadata(tenant: object, timeline: object, shard: str = "0000"
                      ) -> tuple[tuple[str, str], ...]:
    """The request metadata naming a timeline (page_api, PageReadExtras)."""
    return ((TENANT_METADATA_KEY, str(tenant)), (TIMELINE_METADATA_KEY, str(timeline)),
            (SHARD_METADATA_KEY, shard))


#: Methods anyone may call (container and stack health checks).
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
#: Methods a tenant-scoped token may call, for the tenant in TENANT_METADATA_KEY.
TENANT_METHOD_PREFIXES = ("/page_api.PageService/", "/pagestore.pageread.v1.PageReadExtras/")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], err: PagestoreError) -> None:
    context.set_trailing_metadata(((ERROR_CLASS_METADATA_KEY, type(err).__name__),))
    await context.abort(err.grpc_code, err.message)


def _set_context(metadata: Any) -> None:
    for key, value in metadata or ():
        if key == TENANT_METADATA_KEY:
            tenant_var.set(value)
        elif key == TIMELINE_METADATA_KEY:
            timeline_var.set(value)
        elif key == REQUEST_METADATA_KEY:
            request_var.set(value)


Check: TypeAlias = "Callable[[Iterable[tuple[str, Any]]], None] | None"


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], service: str, check: Check = None
                ) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _set_context(context.invocation_metadata())
        try:
            if check is not None:
                check(context.invocation_metadata() or ())
            return await behavior(request, context)
        except PagestoreError as err:
            log.info("rpc failed: %s: %s", type(err).__name__, err.message)
            metrics.ERRORS.labels(service, type(err).__name__).inc()
            await abort_with(context, err)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("rpc failed with an unexpected error")
            metrics.ERRORS.labels(service, "internal").inc()
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the service log)")
        return None

    return wrapper


def _wrap_stream(behavior: Callable[..., Any], service: str,
                 check: Check = None) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _set_context(context.invocation_metadata())
        try:
            if check is not None:
                check(context.invocation_metadata() or ())
            async for item in behavior(request, context):
                yield item
        except PagestoreError as err:
            log.info("rpc failed: %s: %s", type(err).__name__, err.message)
            metrics.ERRORS.labels(service, type(err).__name__).inc()
            await abort_with(context, err)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("rpc failed with an unexpected error")
            metrics.ERRORS.labels(service, "internal").inc()
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the service log)")

    return wrapper


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps PagestoreError to gRPC statuses (counting them in pagestore_errors) and sets
    the per-request log context."""

    def __init__(self, service: str = "", verifier: JwtVerifier | None = None) -> None:
        self.service = service
        self.verifier = verifier

    def _check(self, method: str) -> Check:
        """The auth check of ``method`` (None: open)."""
        verifier = self.verifier
        if verifier is None or method.startswith(OPEN_METHOD_PREFIXES):
            return None
        tenant_scoped = method.startswith(TENANT_METHOD_PREFIXES)

        def check(metadata: Iterable[tuple[str, Any]]) -> None:
            from pagestore.auth import bearer

            md = {k: v for k, v in metadata}
            claims = verifier.verify(bearer(md.get(AUTHORIZATION_METADATA_KEY)))
            if tenant_scoped:
                claims.check_tenant(md.get(TENANT_METADATA_KEY, ""))
            else:
                claims.check_server()
        return check

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kwargs = dict(request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)
        svc = self.service
        check = self._check(handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, svc, check), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, svc, check), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, svc, check), **kwargs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, svc, check), **kwargs)
        return handler


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """``pagestore.admin.v1.Admin``: failpoints of this process (pagestore.failpoints)."""

    @staticmethod
    def _all() -> admin_pb2.FailpointsResponse:
        armed = failpoints.active()
        return admin_pb2.FailpointsResponse(failpoints=[
            admin_pb2.Failpoint(name=name, action=armed.get(name, "off"),
                                hits=failpoints.hits(name))
            for name in sorted(failpoints.FAILPOINTS)])

    async def ConfigureFailpoints(self, request: admin_pb2.ConfigureFailpointsRequest,
                                  context: grpc.aio.ServicerContext[Any, Any],
                                  ) -> admin_pb2.FailpointsResponse:
        for fp in request.failpoints:
            failpoints.configure(fp.name, fp.action)
        return self._all()

    async def ListFailpoints(self, request: admin_pb2.ListFailpointsRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> admin_pb2.FailpointsResponse:
        return self._all()


class GrpcService:
    """One service process: a grpc.aio server plus health, run until SIGTERM/SIGINT."""

    def __init__(self, name: str, listen_addr: str, *, verifier: JwtVerifier | None = None,
                 tls: tuple[bytes, bytes] | None = None) -> None:
        self.name = name
        self.listen_addr = listen_addr
        self.tls = tls  # (certificate chain, private key), PEM
        # No SO_REUSEPORT: a port another server holds is an error at start, never two
        # servers answering on one port.
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor(name, verifier)],
                                      options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(), self.server)
        self.port = 0
        self._stop = asyncio.Event()
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    def bind(self) -> int:
        try:
            if self.tls is not None:
                cert, key = self.tls
                self.port = self.server.add_secure_port(
                    self.listen_addr, grpc.ssl_server_credentials([(key, cert)]))
            else:
                self.port = self.server.add_insecure_port(self.listen_addr)
        except RuntimeError:  # grpc: "Failed to bind", without the reason
            self.port = 0
        if self.port == 0:
            # A bind of our own says why (in use, not an address of this machine).
            host, _, port = self.listen_addr.rpartition(":")
            try:
                with socket.create_server((host.strip("[]"), int(port))):
                    reason = "grpc refused the address"
            except (OSError, ValueError) as e:
                reason = str(e)
            raise OSError(f"{self.name}: cannot listen on {self.listen_addr}: {reason}")
        return self.port

    async def start(self) -> None:
        if not self.port:
            self.bind()
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(self.name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving grpc on %s%s", self.name, self.listen_addr,
                 " (TLS)" if self.tls is not None else "")

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self, grace: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()
        log.info("%s shutting down", self.name)
        await self.health.enter_graceful_shutdown()
        failpoints.release_paused()
        await self.run_shutdown_hooks()
        await self.server.stop(grace)
        log.info("%s stopped", self.name)

    async def run_shutdown_hooks(self) -> None:
        """Stop what setup started (also when the service fails to start after setup:
        worker processes and loops must not keep the process alive)."""
        hooks, self.on_shutdown = self.on_shutdown, []
        for hook in hooks:
            try:
                await hook()
            except Exception:
                log.exception("%s: a shutdown step failed", self.name)


#: Clients reconnect soon after a service comes back (gRPC's default backoff grows to 2 min).
CLIENT_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(slots=True)
class ClientSecurity:
    """How this process's gRPC clients reach pagestore's ports: the token they send and,
    with TLS, the certificates they trust (PEM)."""

    token: str = ""
    root_certificates: bytes | None = None


_CLIENT = ClientSecurity()


def configure_clients(*, token: str = "", root_certificates: bytes | None = None) -> None:
    """Set once at start (a service, the CLI): every channel made after sends ``token``
    as ``authorization: Bearer`` and, with ``root_certificates``, speaks TLS."""
    _CLIENT.token = token
    _CLIENT.root_certificates = root_certificates


class _AioToken:
    """Adds ``authorization: Bearer <token>`` to a call of an aio channel.  grpc.aio files
    an interceptor under the first call kind it implements only, so ``aio_token``
    makes one subclass instance per kind."""

    def __init__(self, token: str) -> None:
        self._pair = (AUTHORIZATION_METADATA_KEY, f"Bearer {token}")

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        pairs = list(d.metadata or ())
        if any(k == AUTHORIZATION_METADATA_KEY for k, _ in pairs):
            return d  # the caller sent a token itself (auth_metadata)
        md = grpc.aio.Metadata(*pairs, self._pair)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials,
                                          d.wait_for_ready)


class _AioTokenUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioTokenUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioTokenStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def aio_token(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that send ``token`` on unary-request calls of an aio channel.  Not
    on bidirectional streams: grpc.aio's intercepted stream-stream call leaves its
    request-reading task pending when the call is cancelled, so those calls (the
    gateway's GetPages) carry ``auth_metadata()`` themselves."""
    return [cls(token) for cls in (_AioTokenUnaryUnary, _AioTokenUnaryStream,
                                   _AioTokenStreamUnary)]


def auth_metadata() -> tuple[tuple[str, str], ...]:
    """This process's token as call metadata (empty without one)."""
    if not _CLIENT.token:
        return ()
    return ((AUTHORIZATION_METADATA_KEY, f"Bearer {_CLIENT.token}"),)


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    pass


class _SyncToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """The same for a blocking channel (the CLI, health checks, tests)."""

    def __init__(self, token: str) -> None:
        self._pair = (AUTHORIZATION_METADATA_KEY, f"Bearer {token}")

    def _details(self, d: Any) -> _CallDetails:
        return _CallDetails(d.method, d.timeout, [*(d.metadata or ()), self._pair],
                            d.credentials, getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any,
                               request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any,
                                request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


def channel(addr: str) -> grpc.aio.Channel:
    """An aio channel to a pagestore port, with this process's token and TLS trust."""
    interceptors = aio_token(_CLIENT.token) if _CLIENT.token else None
    if _CLIENT.root_certificates is not None:
        return grpc.aio.secure_channel(
            addr, grpc.ssl_channel_credentials(root_certificates=_CLIENT.root_certificates),
            options=CLIENT_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(addr, options=CLIENT_OPTIONS, interceptors=interceptors)


def sync_channel(addr: str, *, token: str | None = None) -> grpc.Channel:
    """A blocking channel, as ``channel`` (``token`` overrides the process's)."""
    if _CLIENT.root_certificates is not None:
        ch = grpc.secure_channel(
            addr, grpc.ssl_channel_credentials(root_certificates=_CLIENT.root_certificates),
            options=CHANNEL_OPTIONS)
    else:
        ch = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
    token = _CLIENT.token if token is None else token
    return grpc.intercept_channel(ch, _SyncToken(token)) if token else ch


def loop_status(loops: Iterable[SupervisedLoop]) -> list[common_pb2.LoopStatus]:
    """Supervised loops as the LoopStatus messages status RPCs return."""
    out = []
    for loop in loops:
        st = loop.status()
        out.append(common_pb2.LoopStatus(
            service=st.service, name=st.name, state=st.state, detail=st.detail,
            restarts=st.restarts, last_error=st.last_error, last_error_at=st.last_error_at))
    return out


def check_health(addr: str, timeout: float = 2.0, service: str = "") -> str:
    """SERVING / NOT_SERVING / DOWN for the gRPC server at ``addr`` (blocking client)."""
    try:
        with sync_channel(addr, token="") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError:
        return "DOWN"
    return "SERVING" if resp.status == health_pb2.HealthCheckResponse.SERVING else "NOT_SERVING"
