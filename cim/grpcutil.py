"""The gRPC edge shared by every cim process: options, service registration
(with a guard for requests that do not decode), auth metadata, errors, health
and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cim.core import limits
from cim.errors import CimError, InvalidArgument, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
# A refused stream reads at most this much of what its peer sent (see refuse_stream).
REFUSE_DRAIN_SECONDS = 1.0
REFUSE_DRAIN_MESSAGES = 100
CLUSTER_SECRET = "x-cim-cluster-secret"

# Keepalive for chat: dead peers are noticed in under a minute, and the
# server tolerates client pings as often as the client's keepalive sends them.
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, int]] = [
    *KEEPALIVE_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
    # A second process must never bind the same port silently.
    ("grpc.so_reuseport", 0),
    # Bursts of new streams beyond the default 1,000 pending calls fail opaquely.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 30_000),
]
CHANNEL_OPTIONS: list[tuple[str, int]] = [*KEEPALIVE_OPTIONS]


def new_server(interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    return grpc.aio.server(interceptors=interceptors or None, options=SERVER_OPTIONS)


def bind(
    server: grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Binds host:port (port 0 picks a free one), with TLS when ``credentials``
    are given (``cim.tls``), and returns the port bound."""
    address = f"{host}:{port}"
    try:
        bound: int = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError:  # grpcio >= 1.6x raises where older ones returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: address in use or not available")
    return bound


def add_standard_services(server: grpc.aio.Server, public: Sequence[str]) -> Any:
    """Health (serving, per service and overall) and reflection; returns the
    health servicer so the caller can mark it NOT_SERVING when it drains.

    Reflection lists only the ``public`` services: the cluster-internal ones
    are served on the same port, behind the cluster secret, but are not part
    of the API a client discovers (health answers for them too, through
    ``set_serving``)."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *public,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
        pool=_PublicPool(descriptor_pool.Default()),
    )
    return health_servicer


# Reflection describes nothing of these: the cluster's own API is not public.
INTERNAL_PACKAGE = "cim.internal."
INTERNAL_FILES = "cim/proto/internal/"


class _PublicPool:
    """The default descriptor pool as reflection should see it: without the
    cluster-internal package, with the protos' comments, and with look-up of
    files by method name.

    Generated code carries no comments, so the public files come from the
    descriptor set ``scripts/gen_protos.sh`` writes with source info
    (``cim/proto/v1/described.binpb``): grpcurl describe then shows who may
    call what and how it fails. The upb protobuf runtime cannot find the
    file of a method symbol ("cim.v1.Route.Login"), so `grpcurl describe` of
    a method failed (grpc/grpc#34743); resolve it through the method's service.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._sources: dict[str, descriptor_pb2.FileDescriptorProto] | None = None

    def FindFileByName(self, name: str) -> Any:
        if name.startswith(INTERNAL_FILES):
            raise KeyError(name)
        return self._described(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        if symbol.startswith(INTERNAL_PACKAGE):
            raise KeyError(symbol)
        try:
            return self._described(self._pool.FindFileContainingSymbol(symbol))
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise KeyError(symbol) from None
            return self._described(service.file)

    def _described(self, file: Any) -> _DescribedFile:
        if self._sources is None:
            self._sources = _load_sources()
        return _DescribedFile(file, self._sources)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class _DescribedFile:
    """A file descriptor that copies itself with its comments, where the
    described set has them (reflection reads only these three members)."""

    def __init__(self, file: Any, sources: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._file = file
        self._sources = sources
        self.name: str = file.name

    @property
    def dependencies(self) -> list[_DescribedFile]:
        return [_DescribedFile(d, self._sources) for d in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        source = self._sources.get(self.name)
        if source is None:
            self._file.CopyToProto(proto)
        else:
            proto.CopyFrom(source)


def _load_sources() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    described = importlib.resources.files("cim.proto") / "v1" / "described.binpb"
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(described.read_bytes()).file
    except OSError:
        log.warning("no %s: reflection serves the protos without comments", described)
        return {}
    return {file.name: file for file in files}


async def set_serving(health_servicer: Any, service_names: Sequence[str], serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


def bearer_token(context: grpc.aio.ServicerContext) -> str:
    """The session token of the call; Unauthenticated if there is none."""
    header = metadata_value(context, AUTHORIZATION)
    if not header:
        raise Unauthenticated(
            "missing session token: log in and send 'authorization: Bearer <token>'"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed authorization header: expected 'Bearer <token>'")
    return token.strip()


class SecretCheck:
    """Internal RPCs are for cluster members: they present a shared secret."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = [s.encode() for s in secrets if s]
        if not self._secrets:
            raise ValueError("a cluster secret is required")

    def require(self, context: grpc.aio.ServicerContext) -> None:
        given = (metadata_value(context, CLUSTER_SECRET) or "").encode()
        if not any(hmac.compare_digest(given, secret) for secret in self._secrets):
            raise PermissionDenied("internal RPC: cluster members only")


def secret_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    return ((CLUSTER_SECRET, secret),)


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION, f"Bearer {token}"),)


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def unary_edge(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turns cim errors raised by a unary servicer method into their status;
    anything else is logged and becomes INTERNAL without leaking details."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except CimError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: abort raises")

    return wrapper


async def refuse_stream(
    context: grpc.aio.ServicerContext, requests: AsyncIterator[Any], error: CimError
) -> None:
    """Ends a streaming call with the error's status. What the peer already
    sent is read first (briefly, and boundedly): ending a stream while the
    peer's messages are still in flight can reach it as INTERNAL instead of
    the status (grpc/grpc#36066)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REFUSE_DRAIN_SECONDS):
            count = 0
            async for _ in requests:
                count += 1
                if count >= REFUSE_DRAIN_MESSAGES:
                    break
    context.set_code(error.code)
    context.set_details(error.message)


# --- services: registration with a decoding guard ---------------------------------


class Malformed:
    """What a request that does not decode, or holds a field over its limit
    (``cim.core.limits``), becomes: the handler's guard answers
    INVALID_ARGUMENT for it instead of gRPC's UNKNOWN and traceback."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


class Throttled:
    """One warning line per ``interval`` at most, counting what it held back:
    a peer sending garbage in a loop must not flood the log."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._held = 0

    def warning(self, message: str) -> None:
        now = self._clock()
        if now < self._next:
            self._held += 1
            return
        held, self._held = self._held, 0
        self._next = now + self._interval
        log.warning("%s%s", message, f" ({held} more since the last report)" if held else "")


_malformed_log = Throttled()


def _lenient(message_class: Any, method: str, *, check_limits: bool) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    limits.plan(message_class.DESCRIPTOR)  # built now, not on the first request

    def deserialize(data: bytes) -> Any:
        try:
            message = parse(data)
        except Exception as exc:  # DecodeError, or invalid UTF-8 in a string field
            reason = str(exc) or type(exc).__name__
            _malformed_log.warning(f"malformed request to {method}: {reason}")
            return Malformed(f"malformed request to {method}: {reason}")
        try:
            if check_limits:
                limits.check(message, len(data))
        except InvalidArgument as exc:
            _malformed_log.warning(f"oversized request to {method}: {exc.message}")
            return Malformed(f"request to {method} too large: {exc.message}")
        return message

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise InvalidArgument(request.what)
        yield request


def _guard_unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.what)
        return await behaviour(request, context)

    return guarded


def _guard_stream(
    behaviour: Callable[..., AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    async def guarded(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(_checked(requests), context):
                yield response
        except CimError as exc:  # a malformed request, or a handler's own refusal
            context.set_code(exc.code)
            context.set_details(exc.message)

    return guarded


def add_service(
    server: grpc.aio.Server,
    servicer: Any,
    service: ServiceDescriptor,
    checks_its_own_limits: Collection[str] = (),
) -> None:
    """Serves ``servicer`` as ``service`` (what the generated
    ``add_XServicer_to_server`` does), with a guard on every method: a request
    that does not decode, or holds a field over its declared limit, answers
    INVALID_ARGUMENT, with one throttled log line and no traceback, before any
    handler (or auth check) runs. Methods named in ``checks_its_own_limits``
    skip the limits (their handler answers them more finely: a send on the
    chat stream over a limit fails alone). Unary and bidi-streaming methods
    only (cim has no other kind)."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        deserialize = _lenient(
            request_class,
            f"/{service.full_name}/{method.name}",
            check_limits=method.name not in checks_its_own_limits,
        )
        serialize = response_class.SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _guard_stream(behaviour), deserialize, serialize
            )
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard_unary(behaviour), deserialize, serialize
            )
        else:
            raise ValueError(
                f"{method.full_name}: only unary and bidi-streaming methods are served"
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
