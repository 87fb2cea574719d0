"""The ZooKeeper registry against real ZooKeeper servers.

Every registry here stands for one process; two registries on one server are
two processes seeing each other. ZooKeeper's own state is inspected with a
plain kazoo client.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from kazoo.client import KazooClient

from cim.core.members import Member, MemberKind
from cim.errors import AlreadyExists, InvalidArgument, Unavailable
from cim.processes import free_ports
from cim.registry.base import Registry
from cim.registry.paths import RegistryPaths
from cim.registry.zookeeper import ZooKeeperRegistry
from tests.fixtures.zookeeper_server import ZooKeeperEnsemble, ZooKeeperServer

SERVER = Member(MemberKind.SERVER, "127.0.0.1:7201", "127.0.0.1:7201")
ROUTE = Member(MemberKind.ROUTE, "route-1", "127.0.0.1:7100")

MakeRegistry = Callable[..., Awaitable[ZooKeeperRegistry]]


@pytest.fixture
async def registries() -> AsyncIterator[MakeRegistry]:
    """``await registries(hosts, root, **options)``: a started registry, closed
    at the end of the test."""
    made: list[ZooKeeperRegistry] = []

    async def make(hosts: str, root: str, **options: Any) -> ZooKeeperRegistry:
        registry = ZooKeeperRegistry(hosts, root, **options)
        made.append(registry)
        await registry.start()
        return registry

    try:
        yield make
    finally:
        for registry in made:
            await registry.aclose()


@pytest.fixture
def zk(zookeeper: ZooKeeperServer) -> Iterator[KazooClient]:
    """A plain kazoo client on the standalone server, to look at its nodes."""
    client = KazooClient(zookeeper.hosts)
    client.start(10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


class Recorder:
    """A listener remembering each view it got and the thread it ran on."""

    def __init__(self) -> None:
        self.views: list[list[Member]] = []
        self.threads: set[int] = set()

    def __call__(self, view: list[Member]) -> None:
        self.threads.add(threading.get_ident())
        self.views.append(view)


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.02)


async def test_register_creates_an_ephemeral_node_with_the_member_json(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry, zk: KazooClient
) -> None:
    registry = await registries(zookeeper.hosts, zk_root)
    await registry.register(SERVER)

    path = f"{zk_root}/servers/127.0.0.1%3A7201"
    assert RegistryPaths(zk_root).member(MemberKind.SERVER, SERVER.member_id) == path
    data, stat = await asyncio.to_thread(zk.get, path)
    assert Member.from_json(data) == SERVER
    assert stat.ephemeralOwner != 0
    assert await asyncio.to_thread(zk.get_children, f"{zk_root}/routes") == []
    await until(lambda: registry.members(MemberKind.SERVER) == [SERVER], "own view has itself")


async def test_another_process_follows_register_update_deregister(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry
) -> None:
    loop_thread = threading.get_ident()
    a = await registries(zookeeper.hosts, zk_root)
    b = await registries(zookeeper.hosts, zk_root)
    servers, routes = Recorder(), Recorder()
    b.subscribe(MemberKind.SERVER, servers)
    b.subscribe(MemberKind.ROUTE, routes)

    await a.register(SERVER)
    await a.register(ROUTE)
    await until(lambda: b.members(MemberKind.SERVER) == [SERVER], "b sees the server")
    await until(lambda: b.members(MemberKind.ROUTE) == [ROUTE], "b sees the route")
    await until(lambda: servers.views[-1:] == [[SERVER]], "listener told of the server")
    await until(lambda: routes.views[-1:] == [[ROUTE]], "listener told of the route")

    busy = replace(SERVER, connections=42)
    await a.update(busy)
    await until(lambda: b.members(MemberKind.SERVER) == [busy], "b sees the new count")
    await until(lambda: servers.views[-1:] == [[busy]], "listener told of the new count")

    await a.deregister(SERVER)
    await until(lambda: b.members(MemberKind.SERVER) == [], "b sees the server leave")
    await until(lambda: servers.views[-1:] == [[]], "listener told of the removal")
    assert b.members(MemberKind.ROUTE) == [ROUTE]
    assert servers.threads == routes.threads == {loop_thread}


async def test_a_registry_started_later_knows_the_members_at_once(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry
) -> None:
    a = await registries(zookeeper.hosts, zk_root)
    await a.register(SERVER)
    await a.register(ROUTE)
    b = await registries(zookeeper.hosts, zk_root)
    assert b.members(MemberKind.SERVER) == [SERVER]
    assert b.members(MemberKind.ROUTE) == [ROUTE]


async def test_unsubscribed_listener_is_not_called(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry
) -> None:
    a = await registries(zookeeper.hosts, zk_root)
    b = await registries(zookeeper.hosts, zk_root)
    gone, kept = Recorder(), Recorder()
    unsubscribe = b.subscribe(MemberKind.SERVER, gone)
    b.subscribe(MemberKind.SERVER, kept)
    unsubscribe()
    await a.register(SERVER)
    await until(lambda: kept.views[-1:] == [[SERVER]], "kept listener called")
    assert gone.views == []


async def test_update_recreates_a_missing_node(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry, zk: KazooClient
) -> None:
    a = await registries(zookeeper.hosts, zk_root)
    await a.register(SERVER)
    path = RegistryPaths(zk_root).member(MemberKind.SERVER, SERVER.member_id)
    await asyncio.to_thread(zk.delete, path)
    busy = replace(SERVER, connections=3)
    await a.update(busy)
    data, stat = await asyncio.to_thread(zk.get, path)
    assert Member.from_json(data) == busy
    assert stat.ephemeralOwner != 0


async def test_closing_a_registry_removes_its_members_for_others(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry
) -> None:
    a = await registries(zookeeper.hosts, zk_root)
    b = await registries(zookeeper.hosts, zk_root)
    await a.register(SERVER)
    await until(lambda: b.members(MemberKind.SERVER) == [SERVER], "b sees the server")
    await a.aclose()
    await until(lambda: b.members(MemberKind.SERVER) == [], "b sees the server leave")


async def test_a_closed_session_takes_its_nodes_along(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry
) -> None:
    """A process whose session ends without deregistering (its client stopped
    under it) vanishes for the others all the same."""
    a = await registries(zookeeper.hosts, zk_root)
    b = await registries(zookeeper.hosts, zk_root)
    await a.register(SERVER)
    await a.register(ROUTE)
    await until(lambda: len(b.members(MemberKind.ROUTE)) == 1, "b sees a's route")
    await asyncio.to_thread(a._zk.stop)
    await until(lambda: b.members(MemberKind.SERVER) == [], "b sees the server vanish")
    await until(lambda: b.members(MemberKind.ROUTE) == [], "b sees the route vanish")


async def test_an_outage_keeps_the_view_and_recovers(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry
) -> None:
    """While ZooKeeper is down, members() serves the last view and updates are
    kept; once it is back, they are written. (ZooKeeper does not count its
    own downtime against sessions: they survive a restart of the server.)"""
    a = await registries(zookeeper.hosts, zk_root, session_timeout=2.0)
    b = await registries(zookeeper.hosts, zk_root, session_timeout=2.0)
    await a.register(SERVER)
    await b.register(ROUTE)
    await until(lambda: b.members(MemberKind.SERVER) == [SERVER], "b sees the server")
    await until(lambda: a.members(MemberKind.ROUTE) == [ROUTE], "a sees the route")
    seen = Recorder()
    b.subscribe(MemberKind.SERVER, seen)

    busy = replace(SERVER, connections=3)
    try:
        await asyncio.to_thread(zookeeper.stop)
        await asyncio.sleep(3.0)  # longer than the session timeout
        assert a.members(MemberKind.SERVER) == [SERVER]
        assert a.members(MemberKind.ROUTE) == [ROUTE]
        assert b.members(MemberKind.SERVER) == [SERVER]
        started = time.monotonic()
        await a.update(busy)
        assert time.monotonic() - started < 0.5, "update must not wait for ZooKeeper"
    finally:
        await asyncio.to_thread(zookeeper.start)

    await until(lambda: b.members(MemberKind.SERVER) == [busy], "b sees the kept update")
    assert [] not in seen.views
    await a.register(replace(SERVER, member_id="server-2"))
    await until(lambda: len(b.members(MemberKind.SERVER)) == 2, "b sees a new server")


class TcpProxy:
    """A TCP relay that can cut its connections: a network partition between
    one client and ZooKeeper, while ZooKeeper itself keeps running (and so
    expires that client's session)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._cut = False
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self._cut = True
        for client, upstream in self._links:
            client.transport.abort()
            upstream.transport.abort()

    def heal(self) -> None:
        self._cut = False

    async def aclose(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self._cut:
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError:
                writer.transport.abort()
                return
            link = (writer, up_writer)
            self._links.add(link)
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                self._links.discard(link)
        finally:
            self._handlers.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


@pytest.fixture
async def proxy(zookeeper: ZooKeeperServer) -> AsyncIterator[TcpProxy]:
    relay = TcpProxy(zookeeper.port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.aclose()


async def test_after_session_expiry_a_registry_registers_again_by_itself(
    zookeeper: ZooKeeperServer,
    zk_root: str,
    proxy: TcpProxy,
    registries: MakeRegistry,
    zk: KazooClient,
) -> None:
    loop_thread = threading.get_ident()
    a = await registries(proxy.hosts, zk_root, session_timeout=2.0)
    b = await registries(zookeeper.hosts, zk_root)
    await a.register(SERVER)
    await b.register(ROUTE)
    await until(lambda: b.members(MemberKind.SERVER) == [SERVER], "b sees the server")
    await until(lambda: a.members(MemberKind.ROUTE) == [ROUTE], "a sees the route")
    path = RegistryPaths(zk_root).member(MemberKind.SERVER, SERVER.member_id)
    _, before = await asyncio.to_thread(zk.get, path)
    seen_by_a, seen_by_b = Recorder(), Recorder()
    a.subscribe(MemberKind.SERVER, seen_by_a)
    b.subscribe(MemberKind.SERVER, seen_by_b)

    proxy.cut()
    # ZooKeeper expires a's session and its node with it.
    await until(lambda: b.members(MemberKind.SERVER) == [], "b sees a's server expire")
    assert a.members(MemberKind.SERVER) == [SERVER], "a keeps its last view meanwhile"
    assert a.members(MemberKind.ROUTE) == [ROUTE]
    busy = replace(SERVER, connections=7)
    await a.update(busy)

    proxy.heal()
    await until(lambda: b.members(MemberKind.SERVER) == [busy], "b sees a's server again")
    await until(lambda: a.members(MemberKind.SERVER) == [busy], "a's view is read again")
    _, after = await asyncio.to_thread(zk.get, path)
    assert after.ephemeralOwner not in (0, before.ephemeralOwner), "held by a's new session"
    assert seen_by_b.views[0] == [] and seen_by_b.views[-1] == [busy]
    assert seen_by_a.threads == seen_by_b.threads == {loop_thread}


_PREVIOUS_RUN = """
import sys, time
from kazoo.client import KazooClient
client = KazooClient(sys.argv[1], timeout=float(sys.argv[3]))
client.start(10)
client.create(sys.argv[2], sys.argv[4].encode(), ephemeral=True, makepath=True)
print("registered", flush=True)
time.sleep(60)
"""


async def test_register_waits_for_the_session_of_a_crashed_previous_run(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry, zk: KazooClient
) -> None:
    """A process restarted at once finds its node still held by its previous
    run's session; it registers as soon as that session expires."""
    path = RegistryPaths(zk_root).member(MemberKind.SERVER, SERVER.member_id)
    previous = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PREVIOUS_RUN,
        zookeeper.hosts,
        path,
        "2.0",
        SERVER.to_json().decode(),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert previous.stdout is not None
        async with asyncio.timeout(15):
            assert await previous.stdout.readline() == b"registered\n"
    finally:
        previous.kill()
        await previous.wait()

    registry = await registries(zookeeper.hosts, zk_root, session_timeout=2.0)
    started = time.monotonic()
    await registry.register(SERVER)
    waited = time.monotonic() - started
    assert 0.3 < waited < 4.0
    _, stat = await asyncio.to_thread(zk.get, path)
    assert stat.ephemeralOwner == registry._zk.client_id[0]


async def test_register_rejects_an_id_held_by_another_live_process(
    zookeeper: ZooKeeperServer, zk_root: str, registries: MakeRegistry
) -> None:
    a = await registries(zookeeper.hosts, zk_root)
    b = await registries(zookeeper.hosts, zk_root, session_timeout=1.0)
    await a.register(SERVER)
    with pytest.raises(AlreadyExists) as info:
        await b.register(SERVER)
    assert SERVER.member_id in info.value.message
    assert "another running process" in info.value.message
    assert b.members(MemberKind.SERVER) == [SERVER]
    await b.aclose()
    assert a.members(MemberKind.SERVER) == [SERVER], "b's close left a's node alone"


async def test_start_without_zookeeper_is_unavailable_within_the_timeout() -> None:
    (port,) = free_ports(1)
    hosts = f"127.0.0.1:{port}"
    registry: Registry = ZooKeeperRegistry(hosts, connect_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await registry.start()
    assert time.monotonic() - started < 3.0
    assert hosts in info.value.message
    assert "1.5 s" in info.value.message
    await registry.aclose()


async def test_a_bad_connect_string_is_reported_at_start() -> None:
    registry = ZooKeeperRegistry("127.0.0.1:not-a-port")
    with pytest.raises(InvalidArgument) as info:
        await registry.start()
    assert "127.0.0.1:not-a-port" in info.value.message
    await registry.aclose()


async def test_an_ensemble_keeps_working_with_one_node_down(
    zookeeper_ensemble: ZooKeeperEnsemble, registries: MakeRegistry
) -> None:
    root = f"/t-{uuid.uuid4().hex[:8]}"
    hosts = zookeeper_ensemble.hosts
    a = await registries(hosts, root, session_timeout=6.0)
    b = await registries(hosts, root, session_timeout=6.0)
    await a.register(SERVER)
    await until(lambda: b.members(MemberKind.SERVER) == [SERVER], "b sees the server")

    # The leader: the node whose loss matters most (the others elect anew).
    down = zookeeper_ensemble.leader()
    assert down is not None
    zookeeper_ensemble.stop_node(down)
    try:
        busy = replace(SERVER, connections=5)
        await a.update(busy)
        await until(lambda: b.members(MemberKind.SERVER) == [busy], "b sees the update")
        second = replace(SERVER, member_id="server-2")
        await a.register(second)
        await b.register(ROUTE)
        await until(lambda: len(b.members(MemberKind.SERVER)) == 2, "b sees the new server")
        await until(lambda: a.members(MemberKind.ROUTE) == [ROUTE], "a sees b's route")
    finally:
        await asyncio.to_thread(zookeeper_ensemble.start_node, down)


async def test_close_does_not_hang_when_zookeeper_is_unreachable(
    zookeeper: ZooKeeperServer, zk_root: str, proxy: TcpProxy, registries: MakeRegistry
) -> None:
    """Closing right as the connection dies (before the registry has heard of
    it) gives up on deleting its nodes after a bounded wait."""
    a = await registries(proxy.hosts, zk_root, session_timeout=2.0)
    await a.register(SERVER)
    proxy.cut()
    started = time.monotonic()
    await a.aclose()
    assert time.monotonic() - started < 5.0
