"""One gRPC server interceptor that counts every RPC by method and status
(py-grpc-prometheus has no asyncio support). Metric names follow
go-grpc-prometheus, so its dashboards work: ``grpc_server_started_total`` and
``grpc_server_handled_total``. Like go-grpc-prometheus by default, no
handling-time histogram: its buckets per method would make every scrape
several times larger (the store's and the delivery's latencies are measured).

The wrapped handler of each method is built once and reused: per call the
interceptor costs a dict lookup and two counter increments. Streams are
wrapped once per stream, never per message.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cim.metrics.common import AppMetrics

_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no stubs
    def __init__(self, metrics: AppMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED itself
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            # Handlers are fixed per method (registered once), so one wrap each.
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        kind = _TYPES[(handler.request_streaming, handler.response_streaming)]
        labels = {"grpc_type": kind, "grpc_service": service, "grpc_method": name}
        started = self._metrics.rpc_started.labels(**labels).inc
        handled = self._metrics.rpc_handled
        by_code: dict[grpc.StatusCode, Callable[[], None]] = {}

        def done(context: grpc.aio.ServicerContext, ended: grpc.StatusCode) -> None:
            code = _code_of(context, ended)
            count = by_code.get(code)
            if count is None:
                count = by_code[code] = handled.labels(**labels, grpc_code=_code_name(code)).inc
            count()

        behavior: Any
        if handler.unary_unary is not None:
            behavior = _wrap_call(handler.unary_unary, started, done)
            return grpc.unary_unary_rpc_method_handler(
                behavior, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            behavior = _wrap_any(handler.unary_stream, started, done)
            return grpc.unary_stream_rpc_method_handler(
                behavior, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            behavior = _wrap_call(handler.stream_unary, started, done)
            return grpc.stream_unary_rpc_method_handler(
                behavior, handler.request_deserializer, handler.response_serializer
            )
        behavior = _wrap_any(handler.stream_stream, started, done)
        return grpc.stream_stream_rpc_method_handler(
            behavior, handler.request_deserializer, handler.response_serializer
        )


Done = Callable[[grpc.aio.ServicerContext, grpc.StatusCode], None]


def _wrap_call(behavior: Any, started: Callable[[], None], done: Done) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started()
        ended = grpc.StatusCode.UNKNOWN  # gRPC's answer to an exception
        try:
            response = await behavior(request, context)
            ended = grpc.StatusCode.OK
            return response
        except asyncio.CancelledError:
            ended = grpc.StatusCode.CANCELLED  # the client went away
            raise
        finally:
            done(context, ended)

    return call


def _wrap_any(behavior: Any, started: Callable[[], None], done: Done) -> Any:
    """A streaming behaviour: an async generator (yields responses) or a
    coroutine (writes them with ``context.write``)."""
    if not inspect.isasyncgenfunction(behavior):
        return _wrap_call(behavior, started, done)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started()
        ended = grpc.StatusCode.UNKNOWN
        try:
            async for response in behavior(request, context):
                yield response
            ended = grpc.StatusCode.OK
        except (asyncio.CancelledError, GeneratorExit):
            ended = grpc.StatusCode.CANCELLED
            raise
        finally:
            done(context, ended)

    return stream


def _code_of(context: grpc.aio.ServicerContext, ended: grpc.StatusCode) -> grpc.StatusCode:
    """The status the call ends with: what the servicer set (abort sets it
    too), else how the behaviour ended (OK, CANCELLED, or UNKNOWN for an
    exception gRPC turns into one)."""
    code = context.code()
    if code is None:
        return ended
    if isinstance(code, int):  # grpc.aio may keep the raw cygrpc value
        return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    return code


_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def _code_name(code: grpc.StatusCode) -> str:
    """``PermissionDenied``: go-grpc-prometheus's spelling of the code."""
    return "".join(part.capitalize() for part in code.name.split("_")).replace("Ok", "OK")
