"""Test helpers for programs built on cim (bots, UIs) and for cim's own tests.

    async with cim.testing.cluster() as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        await alice.send_private(bob.user_id, "hi")
        message = await c.next_message(bob)

The cluster runs inside the test's own event loop on loopback port 0: a real
route and real chat servers over real gRPC, with in-memory backends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

from cim.client.client import CimClient
from cim.config import ClientConfig, RouteConfig, ServerConfig, random_secret
from cim.core.liveness import Backoff
from cim.core.passwords import ScryptParams
from cim.embedded import EmbeddedCluster
from cim.proto.v1 import common_pb2
from cim.registry.base import Registry
from cim.registry.inprocess import InProcessRegistry
from cim.store.base import Store
from cim.store.memory import MemoryStore

# How long a test client may take to replay what is stored for it at connect.
LIVE_TIMEOUT = 10.0

__all__ = [
    "BackendFactory",
    "TestCluster",
    "backends",
    "cluster",
    "fast_route_config",
    "use_backends",
]

BackendFactory = Callable[[], Awaitable[tuple[Store, Registry]]]
_backend_factory: BackendFactory | None = None


@contextlib.contextmanager
def use_backends(factory: BackendFactory) -> Iterator[None]:
    """Makes every ``cluster()`` in the block run on the store and registry the
    factory makes (and closes them after): the same tests then run against
    Redis and ZooKeeper instead of the in-memory backends."""
    global _backend_factory
    previous, _backend_factory = _backend_factory, factory
    try:
        yield
    finally:
        _backend_factory = previous


async def backends() -> tuple[Store, Registry]:
    """The store and registry a ``cluster()`` here would make (those of
    ``use_backends``, else in memory), for a test that writes to the store
    before a route starts on it. The caller closes them."""
    if _backend_factory is not None:
        return await _backend_factory()
    return MemoryStore(), InProcessRegistry()


def fast_route_config(**overrides: object) -> RouteConfig:
    """A route config with cheap password hashing, for fast test suites, and
    no limit on registrations and logins per address (every test client logs
    in from 127.0.0.1). Messages keep the default per-user limit."""
    config = RouteConfig(
        cluster_secrets=(random_secret(),),
        token_keys={"test": b"test-key-0123456789abcdef"},
        token_key_id="test",
        scrypt=ScryptParams.for_tests(),
        max_logins_per_sec=0.0,
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


class TestCluster:
    __test__ = False  # not a pytest test class

    def __init__(self, embedded: EmbeddedCluster) -> None:
        self.embedded = embedded
        self._clients: list[CimClient] = []

    @property
    def route_address(self) -> str:
        return self.embedded.route_address

    def client_config(self, **overrides: object) -> ClientConfig:
        config = ClientConfig(
            routes=(self.route_address,),
            backoff=Backoff(base=0.05, cap=0.2, retries=20),
            rpc_timeout=5.0,
        )
        return replace(config, **overrides)  # type: ignore[arg-type]

    async def client(
        self,
        name: str,
        password: str = "secret-pw",
        *,
        connect: bool = True,
        config: ClientConfig | None = None,
    ) -> CimClient:
        """A registered client; logged in, connected and live (its replay of
        stored messages done) unless ``connect=False``."""
        client = CimClient(name, password, config or self.client_config())
        self._clients.append(client)
        if connect:
            await client.start()
            await client.wait_live(LIVE_TIMEOUT)
        else:
            await client.register()
        return client

    @staticmethod
    async def next_message(client: CimClient, timeout: float = 5.0) -> common_pb2.ChatMessage:
        """The next message pushed to the client (TimeoutError if none comes)."""
        iterator = client.messages().__aiter__()
        async with asyncio.timeout(timeout):
            return await anext(iterator)

    async def aclose(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        await self.embedded.stop()


@contextlib.asynccontextmanager
async def cluster(
    servers: int = 2,
    route_config: RouteConfig | None = None,
    server_config: ServerConfig | None = None,
    store: Store | None = None,
    registry: Registry | None = None,
) -> AsyncIterator[TestCluster]:
    """A route and ``servers`` chat servers on loopback, for the duration of the
    block; in-memory store and registry unless others are given (and closed by
    the caller) or ``use_backends`` is in force."""
    owned: tuple[Store, Registry] | None = None
    if store is None and registry is None and _backend_factory is not None:
        owned = store, registry = await _backend_factory()
    embedded = EmbeddedCluster(
        server_ports=[0] * servers,
        route_config=route_config or fast_route_config(),
        server_config=server_config,
        store=store,
        registry=registry,
    )
    test_cluster = TestCluster(embedded)
    try:
        await embedded.start()
        yield test_cluster
    finally:
        await test_cluster.aclose()
        if owned is not None:
            await owned[1].aclose()
            await owned[0].aclose()


async def crash(client: CimClient) -> None:
    """Drops a client as a killed process would: no final ack, no logout, the
    stream cut. Only what it already saved (its cursor) survives."""
    for task in list(client._tasks):
        task.cancel()
    if client._reconnector is not None:
        client._reconnector.cancel()
    conn, client._conn = client._conn, None
    if conn is not None:
        await conn.aclose()
    await client.route.aclose()
