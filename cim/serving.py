"""What a route and a chat server share as processes: one gRPC server with
its services, health and reflection, a bound port, and a membership in the
registry, started and stopped in the order that loses no caller.

Start: services, bind, serve, SERVING, then register (others find it only
once it answers). Leave: NOT_SERVING, then deregister (new callers go
elsewhere while current ones finish). Stop: leave, then end the gRPC server
after a grace. The apps (``cim.route.app``, ``cim.server.app``) add only
what is theirs: their services and their background work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from cim.core.members import Member, MemberKind
from cim.grpcutil import add_service, add_standard_services, bind, new_server, set_serving
from cim.metrics.common import AppMetrics
from cim.metrics.http import MetricsEndpoint
from cim.metrics.rpc import RpcMetricsInterceptor
from cim.registry.base import Registry
from cim.tls import Tls, warn_if_exposed
from cim.tls import describe as describe_tls

log = logging.getLogger(__name__)


class Listener:
    """One process's gRPC server and registry membership."""

    def __init__(
        self,
        kind: MemberKind,
        member_id: str,
        host: str,
        port: int,
        advertise_host: str | None,
        tls: Tls | None,
        registry: Registry,
        what: str,
        metrics: AppMetrics,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
    ) -> None:
        """``what`` names the process in logs and warnings ("route route-1").
        Every RPC is counted in ``metrics``, served over HTTP when
        ``metrics_port`` is given (0: any free port)."""
        self.what = what
        self.kind = kind
        self.member_id = member_id
        self.host = host
        self.port = port
        self._advertise_host = advertise_host
        self.tls = tls
        self._registry = registry
        self._server = new_server([RpcMetricsInterceptor(metrics)])
        self.metrics: MetricsEndpoint | None = None
        if metrics_port is not None:
            self.metrics = MetricsEndpoint(metrics_host or host, metrics_port, metrics.registry)
        self._public: list[str] = []
        self._names: list[str] = []
        self._health: Any = None
        self._member: Member | None = None
        self._started = False

    @property
    def address(self) -> str:
        """What others dial: the advertised host (or the listening one) and the bound port."""
        return f"{self._advertise_host or self.host}:{self.port}"

    def add(
        self,
        servicer: Any,
        service: ServiceDescriptor,
        *,
        public: bool,
        checks_its_own_limits: Collection[str] = (),
    ) -> None:
        """Serves ``servicer`` as ``service``; reflection lists it if ``public``."""
        add_service(self._server, servicer, service, checks_its_own_limits)
        self._names.append(service.full_name)
        if public:
            self._public.append(service.full_name)

    async def start(self) -> None:
        """Binds, serves, says SERVING and registers."""
        self._health = add_standard_services(self._server, self._public)
        warn_if_exposed(self.what, self.host, self.tls)
        self.port = bind(
            self._server, self.host, self.port, self.tls.server_credentials() if self.tls else None
        )
        await self._server.start()
        self._started = True
        if self.metrics is not None:
            self.metrics.start()
        await set_serving(self._health, self._names, True)
        self._member = self._as_member(0)
        await self._registry.register(self._member)
        log.info("%s listening on %s (%s)", self.what, self.address, describe_tls(self.tls))

    async def report_load(self, connections: int) -> None:
        """Updates the connection count others see in the registry."""
        if self._member is not None:
            self._member = self._as_member(connections)
            await self._registry.update(self._member)

    def _as_member(self, connections: int) -> Member:
        metrics = ""
        if self.metrics is not None:
            metrics = f"{self._advertise_host or self.metrics.host}:{self.metrics.port}"
        return Member(self.kind, self.member_id, self.address, connections, metrics=metrics)

    async def leave(self) -> None:
        """NOT_SERVING and out of the registry; current calls go on."""
        if self._health is not None:
            await set_serving(self._health, self._names, False)
        if self._member is not None:
            await self._registry.deregister(self._member)
            self._member = None

    async def stop(self, grace: float) -> None:
        """Leaves, then ends the gRPC server, letting calls finish for ``grace`` s."""
        await self.leave()
        if self._started:
            await self._server.stop(grace)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)

    async def wait(self) -> None:
        if self._started:
            await self._server.wait_for_termination()
