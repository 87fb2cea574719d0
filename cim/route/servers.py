"""The route's view of the chat servers: who is alive, who is suspect, and one
reused channel per server through which deliveries are coalesced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from cim.batchcall import BatchStream
from cim.core.coalesce import Coalescer
from cim.core.members import Member, MemberKind
from cim.errors import Unavailable
from cim.grpcutil import secret_metadata
from cim.metrics.route import RouteMetrics
from cim.proto.internal.v1 import chat_internal_pb2, chat_internal_pb2_grpc
from cim.proto.v1 import common_pb2
from cim.registry.base import Registry
from cim.tls import Tls, open_channel

if TYPE_CHECKING:
    from cim.tracing import MessageTracer

log = logging.getLogger(__name__)

Parcel = list[chat_internal_pb2.Delivery]


@dataclass(frozen=True)
class NoteParcel:
    """Expendable notes for one chat server, typing notes and read
    receipts: they ride in the same DeliverStream batches as the pushes
    and get no result (nothing is retried: a lost one is only advice)."""

    typings: Sequence[chat_internal_pb2.TypingNote] = ()
    reads: Sequence[chat_internal_pb2.ReadNote] = ()


# What one item of a server's delivery batches carries.
Shipment = Parcel | NoteParcel


class ServerLink:
    """One chat server: its channel, and a coalescer that merges concurrent
    deliveries (and notes) into one Deliver call while another is in flight."""

    def __init__(
        self,
        member: Member,
        secret: str,
        timeout: float,
        tls: Tls | None = None,
        metrics: RouteMetrics | None = None,
    ) -> None:
        self.member = member
        self._batch_sizes = (metrics or RouteMetrics()).push_batch
        self._metadata = secret_metadata(secret)
        self._timeout = timeout
        self._channel = open_channel(member.address, tls)
        self.stub = chat_internal_pb2_grpc.ChatInternalStub(self._channel)
        self._stream: BatchStream[
            chat_internal_pb2.DeliverRequest, chat_internal_pb2.DeliverResponse
        ] = BatchStream(
            lambda: self.stub.DeliverStream(metadata=self._metadata),
            timeout,
            f"Deliver to {member.member_id}",
        )
        self._deliveries: Coalescer[Shipment, list[bool]] = Coalescer(self._send_parcels)

    def enqueue(self, parcel: Shipment) -> asyncio.Future[list[bool]]:
        """Queues a parcel of pushes (its future: a flag per push) or of
        notes (its future: no flags)."""
        return self._deliveries.enqueue(parcel)

    async def _send_parcels(self, parcels: list[Shipment]) -> list[list[bool]]:
        request = chat_internal_pb2.DeliverRequest()
        for parcel in parcels:
            if isinstance(parcel, NoteParcel):
                request.typings.extend(parcel.typings)
                request.reads.extend(parcel.reads)
            else:
                request.deliveries.extend(parcel)
        if request.deliveries or not (request.typings or request.reads):
            self._batch_sizes.observe(len(request.deliveries))
        reply = await self._stream.call(request)
        flags = list(reply.delivered)
        if len(flags) != len(request.deliveries):
            raise Unavailable(f"chat server {self.member.member_id} answered a malformed batch")
        results: list[list[bool]] = []
        start = 0
        for parcel in parcels:
            if isinstance(parcel, NoteParcel):
                results.append([])
                continue
            results.append(flags[start : start + len(parcel)])
            start += len(parcel)
        return results

    async def kick(self, kicks: Sequence[chat_internal_pb2.Kick]) -> None:
        # Over the push stream: a kick never overtakes a push sent before it.
        await self._stream.call(chat_internal_pb2.DeliverRequest(kicks=kicks))

    async def presence(self, refs: Sequence[common_pb2.SessionRef], deadline: float) -> list[bool]:
        reply = await self.stub.Presence(
            chat_internal_pb2.PresenceRequest(sessions=refs),
            metadata=self._metadata,
            timeout=deadline,
        )
        return list(reply.live)

    async def aclose(self) -> None:
        await self._deliveries.aclose()
        await self._stream.aclose()
        await self._channel.close()


class ServerDirectory:
    """Chat servers as the registry sees them, minus those that just failed."""

    def __init__(
        self,
        registry: Registry,
        secret: str,
        timeout: float,
        probe_timeout: float,
        tls: Tls | None = None,
        metrics: RouteMetrics | None = None,
        tracer: MessageTracer | None = None,
    ):
        self._registry = registry
        self._metrics = metrics or RouteMetrics()
        self._tracer = tracer
        self._secret = secret
        self._tls = tls
        self._timeout = timeout
        self._probe_timeout = probe_timeout
        self._links: dict[str, ServerLink] = {}
        self._suspect: set[str] = set()
        self._unsubscribe = registry.subscribe(MemberKind.SERVER, self._on_servers)
        self._closing: set[asyncio.Task[None]] = set()

    def _on_servers(self, members: list[Member]) -> None:
        alive = {member.member_id: member for member in members}
        for server_id in list(self._links):
            link = self._links[server_id]
            if server_id not in alive or alive[server_id].address != link.member.address:
                self._drop(server_id)
        self._suspect &= set(alive)

    def _drop(self, server_id: str) -> None:
        link = self._links.pop(server_id, None)
        if link is not None:
            task = asyncio.get_running_loop().create_task(link.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def servers(self) -> list[Member]:
        return self._registry.members(MemberKind.SERVER)

    def candidates(self) -> list[Member]:
        """Servers a login may be sent to: registered and not suspect."""
        return [member for member in self.servers() if member.member_id not in self._suspect]

    def find(self, server_id: str) -> Member | None:
        for member in self.servers():
            if member.member_id == server_id:
                return member
        return None

    def mark_suspect(self, server_id: str, why: str) -> None:
        if server_id not in self._suspect:
            log.warning("chat server %s is suspect: %s", server_id, why)
            self._suspect.add(server_id)

    def link(self, server_id: str) -> ServerLink | None:
        """The link to a registered server; None if it is not registered."""
        link = self._links.get(server_id)
        if link is not None:
            return link
        member = self.find(server_id)
        if member is None:
            return None
        link = ServerLink(member, self._secret, self._timeout, self._tls, self._metrics)
        self._links[server_id] = link
        return link

    async def deliver_many(self, requests: Sequence[tuple[str, Parcel]]) -> list[list[bool]]:
        """Pushes each (server id, parcel); each flag says whether its delivery
        reached a live stream. All are queued at once, in order (one Deliver
        per server carries them), then awaited together. A server that cannot
        be reached is marked suspect and its parcels get all False."""
        if self._tracer is not None:
            return await self._tracer.push(requests, self._deliver_many)
        return await self._deliver_many(requests)

    async def _deliver_many(self, requests: Sequence[tuple[str, Parcel]]) -> list[list[bool]]:
        queued: list[tuple[str, asyncio.Future[list[bool]] | None, int]] = []
        for server_id, parcel in requests:
            link = self.link(server_id)
            queued.append((server_id, link.enqueue(parcel) if link else None, len(parcel)))
        results: list[list[bool]] = []
        for server_id, future, size in queued:
            if future is None:
                results.append([False] * size)
                continue
            try:
                results.append(await future)
            except (grpc.aio.AioRpcError, Unavailable) as exc:
                self._metrics.push_failures.inc()
                self.mark_suspect(server_id, f"Deliver failed: {_describe(exc)}")
                results.append([False] * size)
            else:
                self._suspect.discard(server_id)
        return results

    async def push_typing(
        self, requests: Sequence[tuple[str, list[chat_internal_pb2.TypingNote]]]
    ) -> int:
        """Sends each (server id, typing notes) in that server's next delivery
        batch; how many receivers' notes the servers took."""
        return await self._push_notes(
            [
                (server_id, NoteParcel(typings=notes), sum(len(n.receiver_ids) for n in notes))
                for server_id, notes in requests
            ],
            "typing notes",
        )

    async def push_reads(
        self, requests: Sequence[tuple[str, list[chat_internal_pb2.ReadNote]]]
    ) -> None:
        """Pushes read receipts, (server id, notes) each, in each server's
        next delivery batch. Receipts are advice (the conversation list has
        the positions)."""
        await self._push_notes(
            [(server_id, NoteParcel(reads=notes), len(notes)) for server_id, notes in requests],
            "read receipts",
        )

    async def _push_notes(self, requests: Sequence[tuple[str, NoteParcel, int]], what: str) -> int:
        """Queues each (server id, notes, receivers) at once; how many
        receivers the reached servers took. A server that cannot be reached
        is marked suspect, as for pushes; nothing is retried."""
        queued = []
        for server_id, parcel, receivers in requests:
            link = self.link(server_id)
            if link is not None:
                queued.append((server_id, link.enqueue(parcel), receivers))
        reached = 0
        for server_id, future, receivers in queued:
            try:
                await future
            except (grpc.aio.AioRpcError, Unavailable) as exc:
                self._metrics.push_failures.inc()
                self.mark_suspect(server_id, f"Deliver ({what}) failed: {_describe(exc)}")
            else:
                self._suspect.discard(server_id)
                reached += receivers
        return reached

    async def kick(self, server_id: str, user_id: int, session_id: str, reason: str) -> None:
        link = self.link(server_id)
        if link is None:
            return
        try:
            await link.kick(
                [chat_internal_pb2.Kick(user_id=user_id, session_id=session_id, reason=reason)]
            )
        except (grpc.aio.AioRpcError, Unavailable) as exc:
            log.warning("kick of user %s on %s failed: %s", user_id, server_id, _describe(exc))

    async def is_live(self, server_id: str, user_id: int, session_id: str) -> bool:
        """Whether the server holds a live stream for that session. A server
        that does not answer in time counts as not holding it (and is suspect)."""
        link = self.link(server_id)
        if link is None:
            return False
        try:
            flags = await link.presence(
                [common_pb2.SessionRef(user_id=user_id, session_id=session_id)],
                self._probe_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            self.mark_suspect(server_id, f"Presence failed: {_describe(exc)}")
            return False
        self._suspect.discard(server_id)
        return bool(flags and flags[0])

    async def probe_suspects(self) -> None:
        """Asks each suspect server whether it answers again."""
        for server_id in list(self._suspect):
            link = self.link(server_id)
            if link is None:
                self._suspect.discard(server_id)
                continue
            try:
                await link.presence([], self._probe_timeout)
            except grpc.aio.AioRpcError:
                continue
            log.info("chat server %s answers again", server_id)
            self._suspect.discard(server_id)

    async def aclose(self) -> None:
        self._unsubscribe()
        for server_id in list(self._links):
            self._drop(server_id)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
