"""gRPC bootstrap: a ``grpc.aio`` server with the standard health and reflection services and one
interceptor that counts and times calls and answers request bytes that do not decode with
INVALID_ARGUMENT (grpc would say UNKNOWN), plus the one way to turn bad request fields into
INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import BaseModel, ValidationError

from vpp_common import metrics

M = TypeVar("M", bound=BaseModel)

_SKIP_METRICS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Undecodable:
    """What the tolerant deserializer hands over for bytes that are not the method's request message."""

    def __init__(self, message: str, error: BaseException) -> None:
        self.message = message
        self.error = error

    def detail(self) -> str:
        return f"request: the bytes are not a valid {self.message} ({self.error}); send the serialized request message"


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request message")

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            return Undecodable(name, exc)

    return deserialize


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code and times it (health and reflection are left out),
    and answers undecodable request bytes of every unary method with INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        observed = not method.startswith(_SKIP_METRICS)
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    if isinstance(request, Undecodable):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.detail())
                    return await inner_uu(request, context)
                finally:
                    if observed:
                        _observe(method, context, started)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, _tolerant(handler.request_deserializer), handler.response_serializer
            )
        if not observed:
            return handler
        if handler.stream_stream and not inspect.isasyncgenfunction(handler.stream_stream):
            # A stream handler written with context.read/write: wrapped once per call, not per message.
            inner_co = handler.stream_stream

            async def stream_call(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
                started = time.perf_counter()
                try:
                    await inner_co(request_iterator, context)
                finally:
                    _observe(method, context, started)

            return grpc.stream_stream_rpc_method_handler(
                stream_call, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    async for item in inner_ss(request_iterator, context):
                        yield item
                finally:
                    _observe(method, context, started)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def _observe(method: str, context: grpc.aio.ServicerContext, started: float) -> None:
    code = context.code() if hasattr(context, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "OK"
    metrics.GRPC_REQUESTS.labels(method, name).inc()
    metrics.GRPC_LATENCY.labels(method).observe(time.perf_counter() - started)


class GrpcServer:
    """The server plus its health servicer, so the app can flip serving status on start and stop.

    The ``grpc.aio`` server binds to the running event loop, so it is built in ``start()``.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._requested_port = port
        self._registrations: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]] = []
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.port = 0

    @property
    def service_names(self) -> list[str]:
        return [name for _, _, name in self._registrations]

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        self._registrations.append((register, servicer, full_name))

    async def start(self) -> None:
        self.server = grpc.aio.server(
            interceptors=[MetricsInterceptor()],
            options=[("grpc.so_reuseport", 0), ("grpc.keepalive_permit_without_calls", 1)],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for register, servicer, _ in self._registrations:
            register(servicer, self.server)
        names = [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        try:
            self.port = self.server.add_insecure_port(f"{self._host}:{self._requested_port}")
        except RuntimeError as exc:
            raise RuntimeError(
                f"cannot bind gRPC to {self._host}:{self._requested_port} ({exc}): is the port in use? "
                "set VPP_GRPC_PORT"
            ) from exc
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        """Tell health checkers first, so balancers stop routing here before anything stops."""
        if self.health is not None:
            for name in ["", *self.service_names]:
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace_s: float) -> None:
        if self.server is None:
            return
        await self.not_serving()
        await self.server.stop(grace_s)


# protobuf's Timestamp range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z
TIMESTAMP_MIN_S = -62_135_596_800
TIMESTAMP_MAX_S = 253_402_300_799


def timestamp_ns(ts: Timestamp) -> int | None:
    """Nanoseconds since the epoch, or None if ``ts`` is outside protobuf's Timestamp range (a request
    field to refuse: converting it would raise deep in the handler and answer UNKNOWN)."""
    if not (TIMESTAMP_MIN_S <= ts.seconds <= TIMESTAMP_MAX_S) or not (0 <= ts.nanos < 1_000_000_000):
        return None
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


async def validated(model: type[M], data: dict[str, Any], context: grpc.aio.ServicerContext) -> M:
    """Validate request fields with pydantic; on failure abort with INVALID_ARGUMENT naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "request"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {err['msg']}")
        raise  # unreachable: abort raises
