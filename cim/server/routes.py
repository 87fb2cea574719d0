"""The chat server's way to the routes: found in the registry, one channel each,
tried in turn when one is unreachable."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from cim.batchcall import BatchStream
from cim.core.coalesce import Coalescer
from cim.core.members import Member, MemberKind
from cim.errors import CimError, Unavailable, from_rpc_error
from cim.grpcutil import secret_metadata
from cim.proto.internal.v1 import route_internal_pb2, route_internal_pb2_grpc
from cim.proto.v1 import common_pb2
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
    """Typed calls to the routes (RouteInternal), each tried at the next route
    when one is unreachable; sends are coalesced into batches over one
    submit stream per route."""

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
        self._metadata = secret_metadata(secret)
        self._timeout = timeout
        self._channels: dict[
            str, tuple[grpc.aio.Channel, route_internal_pb2_grpc.RouteInternalStub]
        ] = {}
        self._streams: dict[str, SubmitStream] = {}
        self._turn = itertools.count()
        self._submissions: Coalescer[
            route_internal_pb2.SubmittedMessage, route_internal_pb2.SubmitResult
        ] = Coalescer(self._submit_batch)
        # Typing notes: batched the same way (one call while another is in flight).
        self._typings: Coalescer[
            route_internal_pb2.SubmittedTyping, route_internal_pb2.TypingResult
        ] = Coalescer(self._typing_batch)
        # How long routes keep login state without a refresh, as they said last
        # (seconds; None until one said): refreshes must come well within it.
        self.session_ttl: float | None = None

    def _stub(self, member: Member) -> route_internal_pb2_grpc.RouteInternalStub:
        entry = self._channels.get(member.address)
        if entry is None:
            channel = open_channel(member.address, self._tls)
            entry = (channel, route_internal_pb2_grpc.RouteInternalStub(channel))
            self._channels[member.address] = entry
        return entry[1]

    def _learn_session_ttl(self, session_ttl_ms: int) -> None:
        if session_ttl_ms > 0:
            self.session_ttl = session_ttl_ms / 1000

    # --- the calls ---------------------------------------------------------------
    async def session_connected(
        self, user_id: int, session_token: str, device_id: str, last_seq: int
    ) -> route_internal_pb2.SessionConnectedResponse:
        """Presents a stream's session token: the session, or the route's refusal."""
        request = route_internal_pb2.SessionConnectedRequest(
            server_id=self._server_id,
            user_id=user_id,
            session_token=session_token,
            device_id=device_id,
            last_seq=last_seq,
        )
        reply: route_internal_pb2.SessionConnectedResponse = await self._call(
            "SessionConnected",
            lambda stub: stub.SessionConnected(
                request, metadata=self._metadata, timeout=self._timeout
            ),
        )
        self._learn_session_ttl(reply.session_ttl_ms)
        return reply

    async def replay_page(
        self, user_id: int, session_id: str, after_seq: int, limit: int
    ) -> route_internal_pb2.ReplayResponse:
        """A page of the user's inbox after ``after_seq``."""
        request = route_internal_pb2.ReplayRequest(
            server_id=self._server_id,
            user_id=user_id,
            session_id=session_id,
            after_seq=after_seq,
            limit=limit,
        )
        return await self._call(
            "Replay",
            lambda stub: stub.Replay(request, metadata=self._metadata, timeout=self._timeout),
        )

    async def ack(self, acks: Sequence[route_internal_pb2.SessionAck]) -> None:
        """Acks of many sessions in one call."""
        request = route_internal_pb2.AckRequest(server_id=self._server_id, acks=acks)
        await self._call(
            "Ack", lambda stub: stub.Ack(request, metadata=self._metadata, timeout=self._timeout)
        )

    async def mark_read(self, reads: Sequence[route_internal_pb2.SessionRead]) -> None:
        """Read marks of many sessions in one call."""
        request = route_internal_pb2.MarkReadBatchRequest(server_id=self._server_id, reads=reads)
        await self._call(
            "MarkRead",
            lambda stub: stub.MarkRead(request, metadata=self._metadata, timeout=self._timeout),
        )

    async def refresh(
        self, sessions: Sequence[common_pb2.SessionRef]
    ) -> route_internal_pb2.RefreshSessionsResponse:
        """Keeps the sessions' login state fresh; the answer names those no longer valid."""
        request = route_internal_pb2.RefreshSessionsRequest(
            server_id=self._server_id, sessions=sessions, connections=len(sessions)
        )
        reply: route_internal_pb2.RefreshSessionsResponse = await self._call(
            "RefreshSessions",
            lambda stub: stub.RefreshSessions(
                request, metadata=self._metadata, timeout=self._timeout
            ),
        )
        self._learn_session_ttl(reply.session_ttl_ms)
        return reply

    async def disconnected(self, user_id: int, session_id: str, reason: str) -> bool:
        """Reports a stream's end; False when the route had no such session."""
        request = route_internal_pb2.SessionDisconnectedRequest(
            server_id=self._server_id, user_id=user_id, session_id=session_id, reason=reason
        )
        reply = await self._call(
            "SessionDisconnected",
            lambda stub: stub.SessionDisconnected(
                request, metadata=self._metadata, timeout=self._timeout
            ),
        )
        return bool(reply.cleared)

    def submit(
        self, message: route_internal_pb2.SubmittedMessage
    ) -> asyncio.Future[route_internal_pb2.SubmitResult]:
        """Queues a message a client sent (batched with others); the future of its result."""
        return self._submissions.enqueue(message)

    def typing(
        self, note: route_internal_pb2.SubmittedTyping
    ) -> asyncio.Future[route_internal_pb2.TypingResult]:
        """Queues a typing note (batched with others); the future of the
        route's answer: a refusal, or nothing (forwarded or dropped)."""
        return self._typings.enqueue(note)

    async def _typing_batch(
        self, notes: list[route_internal_pb2.SubmittedTyping]
    ) -> list[route_internal_pb2.TypingResult]:
        request = route_internal_pb2.TypingRequest(server_id=self._server_id, notes=notes)
        reply: route_internal_pb2.TypingResponse = await self._call(
            "Typing",
            lambda stub: stub.Typing(request, metadata=self._metadata, timeout=self._timeout),
        )
        return list(reply.results)

    async def _call(self, what: str, call: Call[T]) -> T:
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
                lambda: stub.SubmitStream(metadata=self._metadata),
                self._timeout,
                f"SubmitBatch to {member.member_id}",
            )
            self._streams[member.address] = stream
        return stream

    async def aclose(self) -> None:
        await self._submissions.aclose()
        await self._typings.aclose()
        for stream in self._streams.values():
            await stream.aclose()
        self._streams.clear()
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
