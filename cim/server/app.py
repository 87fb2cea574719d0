"""A running chat server: gRPC server, registry membership, its upkeep
(``cim.server.upkeep``: idle sweeps, session refreshes), and a graceful drain."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cim.config import ServerConfig
from cim.core.chat_session import Drain, Stop
from cim.core.members import MemberKind
from cim.grpcutil import SecretCheck
from cim.metrics.server import ServerMetrics
from cim.proto.internal.v1 import chat_internal_pb2
from cim.proto.v1 import chat_pb2
from cim.registry.base import Registry
from cim.server.acks import AckForwarder
from cim.server.reads import ReadForwarder
from cim.server.routes import RouteLinks
from cim.server.service import ChatInternalService, ChatService
from cim.server.streams import StreamTable
from cim.server.upkeep import Upkeep
from cim.serving import Listener
from cim.tls import load as load_tls

if TYPE_CHECKING:
    from cim.tracing import MessageTracer

log = logging.getLogger(__name__)

CHAT = chat_pb2.DESCRIPTOR.services_by_name["Chat"]
CHAT_INTERNAL = chat_internal_pb2.DESCRIPTOR.services_by_name["ChatInternal"]
# Every service a chat server serves (tests enumerate them).
SERVICES = (CHAT, CHAT_INTERNAL)


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
        self.reads = ReadForwarder(self.routes)
        self.metrics = metrics = ServerMetrics()
        self.service = ChatService(
            config, self.streams, self.routes, self.acks, metrics, reads=self.reads
        )
        self.tracer: MessageTracer | None = None
        if config.tracing.enabled:  # else OpenTelemetry is never imported
            from cim.tracing import SERVER_SERVICE, MessageTracer

            self.tracer = MessageTracer(config.tracing, SERVER_SERVICE, config.server_id)
        self.internal = ChatInternalService(
            self.streams, SecretCheck(config.cluster_secrets), metrics, self.tracer
        )
        metrics.count_users(lambda: len(self.streams))
        metrics.count_rate_limits(lambda: {"stream_messages": self.service.send_limits.refused})
        metrics.count_typing(lambda: dict(self.service.typing_gate.counts))
        metrics.count_registry_errors(lambda: registry.errors)
        self.listener = Listener(
            MemberKind.SERVER,
            config.server_id,
            config.host,
            config.port,
            config.advertise_host,
            self.tls,
            registry,
            what=f"chat server {config.server_id}",
            metrics=metrics,
            metrics_port=config.metrics_port,
            metrics_host=config.metrics_host,
        )
        self.upkeep = Upkeep(
            config,
            self.streams,
            self.routes,
            self.acks,
            self.listener.report_load,
            reads=self.reads,
        )

    @property
    def server_id(self) -> str:
        return self.config.server_id

    @property
    def address(self) -> str:
        return self.listener.address

    async def start(self) -> None:
        listener = self.listener
        # The chat session checks each frame's limits: a send fails alone.
        listener.add(self.service, CHAT, public=True, checks_its_own_limits={"Connect"})
        listener.add(self.internal, CHAT_INTERNAL, public=False)
        await listener.start()
        self.port = listener.port
        self.upkeep.start()

    async def drain(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, leave the registry, tell every client
        to reconnect elsewhere, then stop."""
        self.service.accepting = False
        await self.listener.leave()
        for stream in self.streams.streams():
            stream.handle(Drain())
        await self.stop(self.config.drain_grace if grace is None else grace)

    async def stop(self, grace: float = 1.0) -> None:
        await self.upkeep.stop()
        await self.listener.leave()
        for stream in self.streams.streams():
            stream.handle(Stop())
        await self.listener.stop(grace)
        await self.service.wait_background()
        await self.acks.flush()  # what clients acked last still trims their inbox
        await self.reads.flush()
        await self.routes.aclose()
        if self.tracer is not None:
            await self.tracer.shutdown()

    async def wait(self) -> None:
        await self.listener.wait()
