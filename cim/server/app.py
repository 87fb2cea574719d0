"""A running chat server: gRPC server, registry membership, its upkeep
(``cim.server.upkeep``: idle sweeps, session refreshes), and a graceful drain."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from cim.config import ServerConfig
from cim.core.chat_session import Drain, Stop
from cim.core.members import Member, MemberKind
from cim.grpcutil import (
    SecretCheck,
    add_service,
    add_standard_services,
    bind,
    new_server,
    set_serving,
)
from cim.proto.internal.v1 import chat_internal_pb2
from cim.proto.v1 import chat_pb2
from cim.registry.base import Registry
from cim.server.acks import AckForwarder
from cim.server.routes import RouteLinks
from cim.server.service import ChatInternalService, ChatService
from cim.server.streams import StreamTable
from cim.server.upkeep import Upkeep
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
        self.acks = AckForwarder(self.routes)
        self.service = ChatService(config, self.streams, self.routes, self.acks)
        self.internal = ChatInternalService(self.streams, SecretCheck(config.cluster_secrets))
        self.upkeep = Upkeep(config, self.streams, self.routes, self.acks, self._report_load)
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._member: Member | None = None

    @property
    def server_id(self) -> str:
        return self.config.server_id

    @property
    def address(self) -> str:
        return f"{self.config.advertise_host or self.config.host}:{self.port}"

    async def start(self) -> None:
        server = new_server()
        # The chat session checks each frame's limits: a send fails alone.
        add_service(server, self.service, CHAT, checks_its_own_limits={"Connect"})
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
        self.upkeep.start()
        log.info(
            "chat server %s listening on %s (%s)",
            self.server_id,
            self.address,
            describe_tls(self.tls),
        )

    async def _report_load(self, connections: int) -> None:
        if self._member is not None:
            self._member = Member(MemberKind.SERVER, self.server_id, self.address, connections)
            await self.registry.update(self._member)

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
            stream.handle(Drain())
        await self.stop(self.config.drain_grace if grace is None else grace)

    async def stop(self, grace: float = 1.0) -> None:
        await self.upkeep.stop()
        if self._member is not None:
            await self.registry.deregister(self._member)
            self._member = None
        if self._server is not None:
            for stream in self.streams.streams():
                stream.handle(Stop())
            await self._server.stop(grace)
        await self.service.wait_background()
        await self.acks.flush()  # what clients acked last still trims their inbox
        await self.routes.aclose()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
