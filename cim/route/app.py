"""A running route: its gRPC server, registry membership and background work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from cim.config import RouteConfig
from cim.core.members import MemberKind
from cim.core.tokens import TokenSigner
from cim.errors import CimError
from cim.grpcutil import SecretCheck
from cim.metrics.route import RouteMetrics
from cim.metrics.store import measured
from cim.proto.admin.v1 import admin_pb2
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import groups_pb2, route_pb2
from cim.registry.base import Registry
from cim.route.admin import Administration, AdminKeys
from cim.route.conversation_list import ConversationList
from cim.route.groups import GroupManager
from cim.route.groups_service import GroupsService
from cim.route.member_cache import GroupMemberCache
from cim.route.messages import MessageRouter
from cim.route.servers import ServerDirectory
from cim.route.service import AdminService, RouteInternalService, RouteLimits, RouteService
from cim.route.sessions import SessionManager
from cim.route.typing_notes import TypingRouter
from cim.serving import Listener
from cim.store.base import Store
from cim.tls import load as load_tls

if TYPE_CHECKING:
    from cim.tracing import MessageTracer

log = logging.getLogger(__name__)

ROUTE = route_pb2.DESCRIPTOR.services_by_name["Route"]
ROUTE_INTERNAL = route_internal_pb2.DESCRIPTOR.services_by_name["RouteInternal"]
ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
GROUPS = groups_pb2.DESCRIPTOR.services_by_name["Groups"]
# Every service a route serves (tests enumerate them: fuzzing, malformed bytes).
SERVICES = (ROUTE, ROUTE_INTERNAL, ADMIN, GROUPS)
PROBE_INTERVAL = 2.0
# How long after a failed attempt (the store down) the name backfill tries again.
NAME_INDEX_RETRY = 5.0


class RouteApp:
    """Start with ``await start()``, stop with ``await stop()``; ``port`` is the bound port."""

    def __init__(self, config: RouteConfig, store: Store, registry: Registry) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.port = config.port
        self.tls = load_tls(config.tls)
        self.metrics = metrics = RouteMetrics()
        self.tracer: MessageTracer | None = None
        if config.tracing.enabled:  # else OpenTelemetry is never imported
            from cim.tracing import ROUTE_SERVICE, MessageTracer

            self.tracer = MessageTracer(config.tracing, ROUTE_SERVICE, config.route_id)
        self.servers = ServerDirectory(
            registry,
            config.cluster_secret,
            config.deliver_timeout,
            config.probe_timeout,
            tls=self.tls,
            metrics=metrics,
            tracer=self.tracer,
        )
        signer = TokenSigner(config.token_keys, config.token_key_id, config.token_ttl)
        # The store as the route's work sees it: every operation timed.
        measured_store = measured(store, metrics.store_seconds, metrics.store_errors)
        self.sessions = SessionManager(config, measured_store, self.servers, signer)
        # Group members by version, for the message and the typing paths alike.
        members = GroupMemberCache()
        self.router = MessageRouter(
            config, measured_store, self.servers, metrics, self.tracer, members
        )
        self.typing = TypingRouter(config, measured_store, self.servers, members, metrics)
        self.groups = GroupManager(config, measured_store, self.servers)
        self.conversations = ConversationList(measured_store, self.servers, metrics)
        self.limits = RouteLimits(config)
        metrics.count_rate_limits(self.limits.refusals)
        metrics.count_registry_errors(lambda: registry.errors)
        self.listener = Listener(
            MemberKind.ROUTE,
            config.route_id,
            config.host,
            config.port,
            config.advertise_host,
            self.tls,
            registry,
            what=f"route {config.route_id}",
            metrics=metrics,
            metrics_port=config.metrics_port,
            metrics_host=config.metrics_host,
        )
        self._prober: asyncio.Task[None] | None = None
        self._name_indexer: asyncio.Task[int] | None = None

    @property
    def address(self) -> str:
        return self.listener.address

    async def start(self) -> None:
        listener = self.listener
        listener.add(
            RouteService(
                self.sessions,
                self.router,
                self.limits,
                self.metrics,
                conversations=self.conversations,
            ),
            ROUTE,
            public=True,
        )
        internal = RouteInternalService(
            self.sessions,
            self.router,
            SecretCheck(self.config.cluster_secrets),
            self.typing,
            conversations=self.conversations,
        )
        listener.add(internal, ROUTE_INTERNAL, public=False)
        listener.add(GroupsService(self.sessions, self.groups), GROUPS, public=True)
        # Served (and listed by reflection) even without admin keys: a call
        # then says the admin API is off and how to turn it on.
        admin = Administration(self.store, self.sessions, self.router, self.servers)
        listener.add(AdminService(AdminKeys(self.config.admin_keys), admin), ADMIN, public=True)
        await self.router.start()
        await listener.start()
        self.port = listener.port
        self._prober = asyncio.create_task(self._probe_suspects())
        # Accounts registered before look-alike names were refused get their
        # name keys; in the background, so serving never waits for it.
        self._name_indexer = asyncio.create_task(self._index_names())

    async def _probe_suspects(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.servers.probe_suspects()
            except Exception:
                log.exception("probing suspect chat servers failed")

    async def _index_names(self) -> int:
        while True:
            try:
                return await self.sessions.index_names()
            except CimError as exc:
                log.warning(
                    "indexing the names of older accounts failed (%s); again in %g s",
                    exc.message,
                    NAME_INDEX_RETRY,
                )
            except Exception:
                log.exception("indexing the names of older accounts failed")
                return 0
            await asyncio.sleep(NAME_INDEX_RETRY)

    async def names_indexed(self) -> int:
        """Waits for the start-up backfill of older accounts' name keys (see
        ``Store.index_names``); how many keys it added."""
        if self._name_indexer is None:
            raise RuntimeError("the route has not started")
        return await asyncio.shield(self._name_indexer)

    async def stop(self, grace: float = 2.0) -> None:
        for task in (self._prober, self._name_indexer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.listener.stop(grace)
        await self.router.aclose()
        await self.servers.aclose()
        if self.tracer is not None:
            await self.tracer.shutdown()

    async def wait(self) -> None:
        await self.listener.wait()
