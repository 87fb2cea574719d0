"""A running chat server: gRPC server, registry membership, heartbeat sweeps,
session refreshes, and a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from cim.config import ServerConfig
from cim.core.liveness import idle_streams
from cim.core.members import Member, MemberKind
from cim.errors import CimError
from cim.grpcutil import (
    SecretCheck,
    add_service,
    add_standard_services,
    bind,
    new_server,
    set_serving,
)
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2
from cim.registry.base import Registry
from cim.server.routes import RouteLinks
from cim.server.service import ChatInternalService, ChatService
from cim.server.streams import StreamTable, notice
from cim.tls import describe as describe_tls
from cim.tls import load as load_tls
from cim.tls import warn_if_exposed

log = logging.getLogger(__name__)

CHAT = chat_pb2.DESCRIPTOR.services_by_name["Chat"]
CHAT_INTERNAL = chat_internal_pb2.DESCRIPTOR.services_by_name["ChatInternal"]
PUBLIC_SERVICES = (CHAT.full_name,)
INTERNAL_SERVICES = (CHAT_INTERNAL.full_name,)
SERVICE_NAMES = PUBLIC_SERVICES + INTERNAL_SERVICES


class ChatServerApp:
    """Start with ``await start()``; ``await drain()`` or ``await stop()`` to end."""

    def __init__(self, config: ServerConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.port = config.port
        self.streams = StreamTable()
        self.tls = load_tls(config.tls)
        self.routes = RouteLinks(
            registry, config.server_id, config.cluster_secret, config.route_timeout, self.tls
        )
        self.service = ChatService(config, self.streams, self.routes)
        self.internal = ChatInternalService(self.streams, SecretCheck(config.cluster_secrets))
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._member: Member | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def server_id(self) -> str:
        return self.config.server_id

    @property
    def address(self) -> str:
        return f"{self.config.advertise_host or self.config.host}:{self.port}"

    async def start(self) -> None:
        server = new_server()
        add_service(server, self.service, CHAT)
        add_service(server, self.internal, CHAT_INTERNAL)
        self._health = add_standard_services(server, PUBLIC_SERVICES)
        warn_if_exposed(f"chat server {self.server_id}", self.config.host, self.tls)
        self.port = bind(
            server,
            self.config.host,
            self.config.port,
            self.tls.server_credentials() if self.tls else None,
        )
        await server.start()
        self._server = server
        await set_serving(self._health, SERVICE_NAMES, True)
        self._member = Member(MemberKind.SERVER, self.server_id, self.address)
        await self.registry.register(self._member)
        self._tasks = [
            asyncio.create_task(
                self._every(lambda: self.config.heartbeat.sweep_interval, self.sweep)
            ),
            asyncio.create_task(self._every(lambda: self.service.refresh_interval, self.refresh)),
            asyncio.create_task(
                self._every(lambda: self.config.ack_interval, self.service.acks.flush)
            ),
        ]
        log.info(
            "chat server %s listening on %s (%s)",
            self.server_id,
            self.address,
            describe_tls(self.tls),
        )

    async def _every(
        self, interval: Callable[[], float], work: Callable[[], Awaitable[None]]
    ) -> None:
        # Short naps, so a shorter interval learned meanwhile applies at once.
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(interval(), 0.5))
            if time.monotonic() - last < interval():
                continue
            last = time.monotonic()
            try:
                await work()
            except Exception:
                log.exception("periodic %s failed", getattr(work, "__name__", "work"))

    async def sweep(self) -> None:
        """Ends streams silent for longer than the idle timeout."""
        streams = {id(stream): stream for stream in self.streams.streams()}
        last_heard = {key: stream.last_heard for key, stream in streams.items()}
        for key in idle_streams(last_heard, time.monotonic(), self.config.heartbeat):
            stream = streams[key]
            log.info(
                "evicting user %s: silent for over %.0f s",
                stream.user_id,
                self.config.heartbeat.idle_timeout,
            )
            stream.close(
                notice(chat_pb2.Notice.KIND_ERROR, "no heartbeat: connection timed out", 4),
                "idle timeout",
            )

    async def refresh(self) -> None:
        """Keeps live sessions' login state fresh at a route (one call for all of
        them) and closes streams whose session has ended elsewhere."""
        live = [stream for stream in self.streams.streams() if not stream.closed]
        if self._member is not None:
            self._member = Member(MemberKind.SERVER, self.server_id, self.address, len(live))
            await self.registry.update(self._member)
        if not live:
            return
        request = route_internal_pb2.RefreshSessionsRequest(
            server_id=self.server_id,
            sessions=[
                common_pb2.SessionRef(user_id=s.user_id, session_id=s.session_id) for s in live
            ],
            connections=len(live),
        )
        try:
            reply = await self.routes.call(
                "RefreshSessions",
                lambda stub: stub.RefreshSessions(
                    request, metadata=self.routes.metadata, timeout=self.routes.timeout
                ),
            )
        except CimError as exc:
            log.warning("session refresh failed: %s", exc.message)
            return
        self.service.learn_session_ttl(reply.session_ttl_ms)
        for ref in reply.invalid:
            stream = self.streams.get(ref.user_id)
            if stream is not None and stream.session_id == ref.session_id:
                stream.close(
                    notice(chat_pb2.Notice.KIND_KICKED, "session ended: log in again"),
                    "session invalid",
                )

    async def drain(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, leave the registry, tell every client
        to reconnect elsewhere, then stop."""
        self.service.accepting = False
        if self._health is not None:
            await set_serving(self._health, SERVICE_NAMES, False)
        if self._member is not None:
            await self.registry.deregister(self._member)
            self._member = None
        for stream in self.streams.streams():
            stream.close(
                notice(
                    chat_pb2.Notice.KIND_DRAINING, "server shutting down: reconnecting elsewhere"
                ),
                "server draining",
            )
        await self.stop(self.config.drain_grace if grace is None else grace)

    async def stop(self, grace: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._member is not None:
            await self.registry.deregister(self._member)
            self._member = None
        if self._server is not None:
            for stream in self.streams.streams():
                stream.close(None, "server stopped")
            await self._server.stop(grace)
        await self.service.wait_background()
        await self.service.acks.flush()  # what clients acked last still trims their inbox
        await self.routes.aclose()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
