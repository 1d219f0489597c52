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
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pagestore import failpoints, metrics
from pagestore.errors import ERROR_CLASS_METADATA_KEY, PagestoreError
from pagestore.logs import request_var, tenant_var, timeline_var
from pagestore.proto import admin_pb2, admin_pb2_grpc, common_pb2

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

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


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], service: str
                ) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _set_context(context.invocation_metadata())
        try:
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


def _wrap_stream(behavior: Callable[..., Any], service: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _set_context(context.invocation_metadata())
        try:
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

    def __init__(self, service: str = "") -> None:
        self.service = service

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
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, svc), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, svc), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, svc), **kwargs)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, svc), **kwargs)
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

    def __init__(self, name: str, listen_addr: str) -> None:
        self.name = name
        self.listen_addr = listen_addr
        # No SO_REUSEPORT: a port another server holds is an error at start, never two
        # servers answering on one port.
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor(name)],
                                      options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(), self.server)
        self.port = 0
        self._stop = asyncio.Event()
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []

    def bind(self) -> int:
        self.port = self.server.add_insecure_port(self.listen_addr)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot listen on {self.listen_addr}")
        return self.port

    async def start(self) -> None:
        if not self.port:
            self.bind()
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(self.name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving grpc on %s", self.name, self.listen_addr)

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


def channel(addr: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(addr, options=CLIENT_OPTIONS)


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
        with grpc.insecure_channel(addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError:
        return "DOWN"
    return "SERVING" if resp.status == health_pb2.HealthCheckResponse.SERVING else "NOT_SERVING"
