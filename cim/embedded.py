"""Embedded mode: a route and chat servers in one process, with the in-memory
store and the in-process registry (``cim dev`` and ``cim.testing``)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import replace

from cim.config import RouteConfig, ServerConfig, random_secret
from cim.core.members import MemberKind
from cim.metrics.http import MemberRegistries, MetricsEndpoint
from cim.registry.base import Registry
from cim.registry.inprocess import InProcessRegistry
from cim.route.app import RouteApp
from cim.server.app import ChatServerApp
from cim.store.base import Store
from cim.store.memory import MemoryStore


class EmbeddedCluster:
    """Start with ``await start()``, stop with ``await stop()``. The secrets are
    random per process: nothing outside it needs them. ``store`` and
    ``registry`` default to the in-memory ones; tests pass Redis and ZooKeeper
    ones to run the same behaviour against the distributed backends (the
    caller then owns and closes them)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        route_port: int = 0,
        server_ports: Sequence[int] = (0, 0),
        route_config: RouteConfig | None = None,
        server_config: ServerConfig | None = None,
        store: Store | None = None,
        registry: Registry | None = None,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
    ) -> None:
        """``metrics_port``: serve every member's metrics there (on
        ``metrics_host``, default ``host``), each sample labelled with its
        member (0: any free port)."""
        secret = random_secret()
        self.registry: Registry = registry or InProcessRegistry()
        self.store: Store = store or MemoryStore()
        base_route = route_config or RouteConfig(
            cluster_secrets=(secret,),
            token_keys={"dev": secrets.token_bytes(32)},
            token_key_id="dev",
        )
        self.route = RouteApp(
            replace(base_route, cluster_secrets=(secret,), host=host, port=route_port),
            self.store,
            self.registry,
        )
        base_server = server_config or ServerConfig(cluster_secrets=(secret,))
        self.servers = [
            ChatServerApp(
                replace(
                    base_server,
                    cluster_secrets=(secret,),
                    server_id=f"server-{index + 1}",
                    host=host,
                    port=port,
                ),
                self.registry,
            )
            for index, port in enumerate(server_ports)
        ]
        self.metrics: MetricsEndpoint | None = None
        if metrics_port is not None:
            registries = {self.route.config.route_id: self.route.metrics.registry}
            registries.update((s.server_id, s.metrics.registry) for s in self.servers)
            self.metrics = MetricsEndpoint(
                metrics_host or host, metrics_port, MemberRegistries(registries)
            )

    @property
    def route_address(self) -> str:
        return self.route.address

    async def start(self, ready_timeout: float = 10.0) -> None:
        """Starts everything; returns once the route sees every chat server
        (registries notify asynchronously, ZooKeeper through watches)."""
        await self.route.start()
        for server in self.servers:
            await server.start()
        if self.metrics is not None:
            self.metrics.start()
        changed = asyncio.Event()
        unsubscribe = [
            self.registry.subscribe(kind, lambda _view: changed.set()) for kind in MemberKind
        ]
        try:
            async with asyncio.timeout(ready_timeout):
                while True:
                    changed.clear()  # before looking, so no change slips between
                    if self._ready():
                        return
                    await changed.wait()
        finally:
            for stop_listening in unsubscribe:
                stop_listening()

    def _ready(self) -> bool:
        servers = {m.member_id for m in self.route.servers.servers()}
        routes = {m.member_id for m in self.registry.members(MemberKind.ROUTE)}
        return {s.server_id for s in self.servers} <= servers and (
            self.route.config.route_id in routes
        )

    async def wait(self) -> None:
        """Until the route has stopped."""
        await self.route.wait()

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop(0.5) for server in self.servers))
        await self.route.stop(0.5)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
