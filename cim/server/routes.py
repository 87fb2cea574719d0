"""The chat server's way to the routes: found in the registry, one channel each,
tried in turn when one is unreachable."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from cim.batchcall import BatchStream
from cim.core.coalesce import Coalescer
from cim.core.members import Member, MemberKind
from cim.errors import CimError, Unavailable, from_rpc_error
from cim.grpcutil import secret_metadata
from cim.proto.internal.v1 import route_internal_pb2, route_internal_pb2_grpc
from cim.registry.base import Registry
from cim.tls import Tls, open_channel

log = logging.getLogger(__name__)

T = TypeVar("T")
Call = Callable[[route_internal_pb2_grpc.RouteInternalStub], Awaitable[T]]

SubmitStream = BatchStream[
    route_internal_pb2.SubmitBatchRequest, route_internal_pb2.SubmitBatchResponse
]

# Codes after which another route may well succeed.
_FAILOVER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class RouteLinks:
    def __init__(
        self,
        registry: Registry,
        server_id: str,
        secret: str,
        timeout: float,
        tls: Tls | None = None,
    ) -> None:
        self._registry = registry
        self._tls = tls
        self._server_id = server_id
        self.metadata = secret_metadata(secret)
        self.timeout = timeout
        self._channels: dict[
            str, tuple[grpc.aio.Channel, route_internal_pb2_grpc.RouteInternalStub]
        ] = {}
        self._streams: dict[str, SubmitStream] = {}
        self._turn = itertools.count()
        self.submissions: Coalescer[
            route_internal_pb2.SubmittedMessage, route_internal_pb2.SubmitResult
        ] = Coalescer(self._submit_batch)

    def _stub(self, member: Member) -> route_internal_pb2_grpc.RouteInternalStub:
        entry = self._channels.get(member.address)
        if entry is None:
            channel = open_channel(member.address, self._tls)
            entry = (channel, route_internal_pb2_grpc.RouteInternalStub(channel))
            self._channels[member.address] = entry
        return entry[1]

    async def call(self, what: str, call: Call[T]) -> T:
        """Runs ``call`` against a route, trying the next one when a route is unreachable."""
        return await self._failover(what, lambda member: call(self._stub(member)))

    async def _submit_batch(
        self, items: list[route_internal_pb2.SubmittedMessage]
    ) -> list[route_internal_pb2.SubmitResult]:
        """One batch over a route's submit stream (the next route's when one is unreachable)."""
        request = route_internal_pb2.SubmitBatchRequest(server_id=self._server_id, messages=items)
        reply = await self._failover(
            "SubmitBatch", lambda member: self._submit_stream(member).call(request)
        )
        return list(reply.results)

    async def _failover(self, what: str, attempt: Callable[[Member], Awaitable[T]]) -> T:
        routes = sorted(self._registry.members(MemberKind.ROUTE), key=lambda m: m.member_id)
        if not routes:
            raise Unavailable(f"{what}: no route is registered")
        start = next(self._turn)
        last: CimError | None = None
        for offset in range(len(routes)):
            member = routes[(start + offset) % len(routes)]
            try:
                return await attempt(member)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _FAILOVER:
                    raise from_rpc_error(exc) from exc
                last = from_rpc_error(exc)
            except Unavailable as exc:  # a batch stream that broke or answered late
                last = exc
            log.warning("%s at route %s failed: %s", what, member.member_id, last.message)
        raise Unavailable(f"{what}: no route answered ({last.message if last else 'unknown'})")

    def _submit_stream(self, member: Member) -> SubmitStream:
        stream = self._streams.get(member.address)
        if stream is None:
            stub = self._stub(member)
            stream = BatchStream(
                lambda: stub.SubmitStream(metadata=self.metadata),
                self.timeout,
                f"SubmitBatch to {member.member_id}",
            )
            self._streams[member.address] = stream
        return stream

    async def aclose(self) -> None:
        await self.submissions.aclose()
        for stream in self._streams.values():
            await stream.aclose()
        self._streams.clear()
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
