"""The distributed cluster as deployed: two `cim route` and three `cim server`
processes on real ZooKeeper and Redis, users driven by the client library.

Failures are real too: kill -9 of a chat server, SIGTERM drain, Redis stopped
and started again, two routes racing one user's login.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cim.client.client import CimClient, EventKind
from cim.config import ClientConfig
from cim.core.liveness import Backoff
from cim.errors import AlreadyExists, Unavailable
from cim.proto.v1 import chat_pb2, chat_pb2_grpc, common_pb2, route_pb2, route_pb2_grpc
from cim.store.factory import open_store

from .helpers import cim_env, free_ports
from .test_node_client import NodeClient

pytestmark = pytest.mark.e2e

CIM = str(Path(sys.executable).with_name("cim"))
ZK_SESSION_TIMEOUT = 4.0


@dataclass
class Process:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    routes: list[Process]
    servers: list[Process]
    redis_url: str
    prefix: str
    clients: list[CimClient] = field(default_factory=list)

    @property
    def route_addresses(self) -> tuple[str, ...]:
        return tuple(route.address for route in self.routes)

    def server(self, server_id: str) -> Process:
        return next(s for s in self.servers if s.address == server_id)

    async def client(self, name: str, *, start: bool = True) -> CimClient:
        config = ClientConfig(
            routes=self.route_addresses,
            backoff=Backoff(base=0.3, cap=1.0, retries=40),
            rpc_timeout=5.0,
            ping_interval=1.0,
        )
        client = CimClient(name, "pw", config)
        self.clients.append(client)
        if start:
            await client.start()
        return client


async def _healthy(address: str, deadline: float) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become healthy")
            await asyncio.sleep(0.1)


async def _spawn(
    name: str, args: list[str], port: int, log_dir: Path, env: dict[str, str]
) -> Process:
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        CIM, *args, stdin=asyncio.subprocess.DEVNULL, stdout=handle, stderr=handle, env=env
    )
    handle.close()
    return Process(name, port, proc, log, args, env)


async def _respawn(process: Process) -> Process:
    """Starts the same command again (same port), appending to its log."""
    handle = process.log.open("ab")
    proc = await asyncio.create_subprocess_exec(
        CIM,
        *process.args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=handle,
        stderr=handle,
        env=process.env,
    )
    handle.close()
    process.proc = proc
    return process


async def _stop(process: Process) -> None:
    if process.proc.returncode is None:
        process.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.proc.wait(), 15)
        except TimeoutError:
            process.proc.kill()
            await process.proc.wait()


@contextlib.asynccontextmanager
async def _running_cluster(
    redis_url: str, zk_hosts: str, zk_root: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    env = cim_env(
        CIM_CLUSTER_SECRET=secrets.token_hex(16),
        CIM_TOKEN_KEYS=f"k1:{secrets.token_hex(16)}",
        CIM_ZK=zk_hosts,
        CIM_ZK_ROOT=zk_root,
        CIM_ZK_SESSION_TIMEOUT=str(ZK_SESSION_TIMEOUT),
        CIM_LOG_LEVEL="info",
    )
    route_ports, server_ports = free_ports(2), free_ports(3)
    routes = [
        await _spawn(
            f"route-{port}",
            [
                "route",
                "--port",
                str(port),
                "--redis",
                redis_url,
                "--redis-prefix",
                key_prefix,
                "--session-ttl",
                "6",
            ],
            port,
            tmp_path,
            env,
        )
        for port in route_ports
    ]
    servers = [
        await _spawn(
            f"server-{port}",
            [
                "server",
                "--port",
                str(port),
                "--heartbeat-interval",
                "1",
                "--idle-timeout",
                "4",
                "--drain-grace",
                "2",
            ],
            port,
            tmp_path,
            env,
        )
        for port in server_ports
    ]
    c = Cluster(routes, servers, redis_url, key_prefix)
    try:
        deadline = time.monotonic() + 30
        await asyncio.gather(*(_healthy(p.address, deadline) for p in routes + servers))
        await _wait_for_members(zk_hosts, zk_root, servers=3, routes=2)
        yield c
    finally:
        for client in c.clients:  # some were on killed servers: best effort
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 10)
        await asyncio.gather(*(_stop(p) for p in servers))
        await asyncio.gather(*(_stop(p) for p in routes))
        for p in routes + servers:
            assert "Traceback" not in p.output(), f"{p.name}:\n{p.output()[-3000:]}"


@pytest.fixture
async def cluster(
    redis_server: Any, zookeeper: Any, zk_root: str, key_prefix: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    async with _running_cluster(
        redis_server.url, zookeeper.hosts, zk_root, key_prefix, tmp_path
    ) as c:
        yield c


async def _wait_for_members(zk_hosts: str, zk_root: str, servers: int, routes: int) -> None:
    """Waits until every process has its node in ZooKeeper (and watches fired)."""
    from kazoo.client import KazooClient

    def count() -> tuple[int, int]:
        client = KazooClient(hosts=zk_hosts)
        client.start(timeout=10)
        try:
            return tuple(  # type: ignore[return-value]
                len(
                    client.get_children(f"{zk_root}/{kind}")
                    if client.exists(f"{zk_root}/{kind}")
                    else []
                )
                for kind in ("servers", "routes")
            )
        finally:
            client.stop()
            client.close()

    deadline = time.monotonic() + 20
    while await asyncio.to_thread(count) != (servers, routes):
        if time.monotonic() > deadline:
            raise TimeoutError("cim processes did not all register in ZooKeeper")
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.3)


async def _spread(c: Cluster, count: int, min_servers: int) -> list[CimClient]:
    clients = [await c.client(f"u{i}{secrets.token_hex(2)}") for i in range(count)]
    servers = {client.server.server_id for client in clients if client.server}
    assert len(servers) >= min_servers, servers
    return clients


async def _next(client: CimClient, timeout: float = 10.0) -> common_pb2.ChatMessage:
    async with asyncio.timeout(timeout):
        return await anext(client.messages().__aiter__())


async def test_private_and_group_messages_cross_servers_and_routes(cluster: Cluster) -> None:
    clients = await _spread(cluster, 9, min_servers=2)
    a, b = next(
        (x, y)
        for x in clients
        for y in clients
        if x.server and y.server and x.server.server_id != y.server.server_id
    )
    await a.send_private(b.user_id, "over the stream")
    assert (await _next(b)).text == "over the stream"
    await b.route.send_private(a.user_id, "over a unary call")
    assert (await _next(a)).text == "over a unary call"

    result = await a.send_group("to everyone")
    assert result.recipients == len(clients) - 1
    for other in clients:
        if other is not a:
            message = await _next(other)
            assert (message.text, message.sender_id) == ("to everyone", a.user_id)


async def test_killed_chat_server_users_reconnect_and_lose_nothing(cluster: Cluster) -> None:
    clients = await _spread(cluster, 9, min_servers=2)
    victim_id = clients[0].server.server_id  # type: ignore[union-attr]
    victims = [c for c in clients if c.server and c.server.server_id == victim_id]
    sender = next(c for c in clients if c.server and c.server.server_id != victim_id)
    back = {c.user_id: asyncio.Event() for c in victims}
    for victim in victims:
        victim.on_event = lambda e, v=victim: (
            back[v.user_id].set() if e.kind == EventKind.CONNECTED else None
        )

    killed_at = time.monotonic()
    cluster.server(victim_id).proc.kill()  # kill -9: no drain, no deregistration
    await cluster.server(victim_id).proc.wait()

    # Messages sent while they are away are stored, never lost.
    sent = []
    for victim in victims:
        text = f"while down {victim.user_id}"
        await sender.route.send_private(victim.user_id, text)
        sent.append((victim, text))

    async with asyncio.timeout(ZK_SESSION_TIMEOUT + 20):
        await asyncio.gather(*(event.wait() for event in back.values()))
    reconnect_time = time.monotonic() - killed_at
    print(f"\nkill -9 -> all {len(victims)} users reconnected in {reconnect_time:.1f} s")
    for victim, text in sent:
        assert victim.server and victim.server.server_id != victim_id
        assert (await _next(victim)).text == text

    # The dead server's routes are gone from the store: every victim is now
    # recorded on a live server.
    store = open_store(cluster.redis_url, cluster.prefix)
    try:
        sessions = [await store.get_session(v.user_id) for v in victims]
        assert {s.server_id for s in sessions if s is not None}.isdisjoint({victim_id})
    finally:
        await store.aclose()


async def test_sigterm_drains_clients_to_other_servers_without_loss(cluster: Cluster) -> None:
    clients = await _spread(cluster, 6, min_servers=2)
    drained_id = clients[0].server.server_id  # type: ignore[union-attr]
    moving = [c for c in clients if c.server and c.server.server_id == drained_id]
    sender = next(c for c in clients if c.server and c.server.server_id != drained_id)
    notices: list[str] = []
    moved = {c.user_id: asyncio.Event() for c in moving}
    for client in moving:

        def on_event(event: Any, client: CimClient = client) -> None:
            notices.append(event.text)
            if event.kind == EventKind.CONNECTED:
                moved[client.user_id].set()

        client.on_event = on_event

    process = cluster.server(drained_id)
    process.proc.send_signal(signal.SIGTERM)
    for client in moving:  # sent during the move: delivered or stored, then pushed
        await sender.route.send_private(client.user_id, f"during drain {client.user_id}")
    assert await asyncio.wait_for(process.proc.wait(), 20) == 0
    async with asyncio.timeout(20):
        await asyncio.gather(*(e.wait() for e in moved.values()))
    assert any("shutting down" in text for text in notices), notices
    for client in moving:
        assert client.server and client.server.server_id != drained_id
        assert (await _next(client)).text == f"during drain {client.user_id}"


async def test_redis_outage_fails_cleanly_and_service_resumes(
    cluster: Cluster, redis_server: Any
) -> None:
    alice = await cluster.client("alice")
    bob = await cluster.client("bob")
    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="store unavailable"):
            await alice.route.send_private(bob.user_id, "lost?")
        assert time.monotonic() - started < 8
        assert all(p.proc.returncode is None for p in cluster.routes + cluster.servers)
    finally:
        redis_server.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            await alice.route.send_private(bob.user_id, "back")
            break
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
    assert (await _next(bob)).text == "back"


async def test_two_routes_racing_one_login_exactly_one_wins(cluster: Cluster) -> None:
    for round_number in range(5):
        name = f"racer{round_number}{secrets.token_hex(2)}"
        async with (
            grpc.aio.insecure_channel(cluster.routes[0].address) as first,
            grpc.aio.insecure_channel(cluster.routes[1].address) as second,
        ):
            stubs = [route_pb2_grpc.RouteStub(first), route_pb2_grpc.RouteStub(second)]
            await stubs[0].Register(route_pb2.RegisterRequest(user_name=name, password="pw"))
            request = route_pb2.LoginRequest(user_name=name, password="pw")
            replies = await asyncio.gather(
                *(stub.Login(request) for stub in stubs), return_exceptions=True
            )
        winners = [r for r in replies if isinstance(r, route_pb2.LoginResponse)]
        losers = [r for r in replies if isinstance(r, grpc.aio.AioRpcError)]
        assert winners, replies
        assert all(e.code() == grpc.StatusCode.ALREADY_EXISTS for e in losers), losers
        # Neither has connected, so a later login may replace the other:
        # both may answer, but exactly one session can open a stream.
        assert sum([await _can_connect(login) for login in winners]) == 1


async def _can_connect(login: route_pb2.LoginResponse) -> bool:
    async with grpc.aio.insecure_channel(login.server.address) as channel:
        call = chat_pb2_grpc.ChatStub(channel).Connect(timeout=10)
        login_frame = chat_pb2.LoginFrame(user_id=login.user_id, session_token=login.session_token)
        await call.write(chat_pb2.ClientFrame(login=login_frame))
        first = await call.read()
        call.cancel()
    return first is not grpc.aio.EOF and first.WhichOneof("frame") == "login_ok"


async def test_any_route_serves_any_user(cluster: Cluster) -> None:
    alice = await cluster.client("alice")
    with pytest.raises(AlreadyExists):  # login state is shared through Redis
        other = CimClient("alice", "pw", ClientConfig(routes=(cluster.routes[1].address,)))
        try:
            await other.login()
        finally:
            await other.close()
    bob = CimClient("bob", "pw", ClientConfig(routes=(cluster.routes[1].address,)))
    cluster.clients.append(bob)
    await bob.start()
    await bob.send_private(alice.user_id, "via the other route")
    assert (await _next(alice)).text == "via the other route"


async def test_losing_one_zookeeper_of_an_ensemble_changes_nothing_for_users(
    redis_server: Any, zookeeper_ensemble: Any, zk_root: str, key_prefix: str, tmp_path: Path
) -> None:
    async with _running_cluster(
        redis_server.url, zookeeper_ensemble.hosts, zk_root, key_prefix, tmp_path
    ) as c:
        alice = await c.client("alice")
        stopped = zookeeper_ensemble.leader()
        zookeeper_ensemble.stop_node(stopped)
        try:
            bob = await c.client("bob")  # logins still pick live servers
            await alice.send_private(bob.user_id, "still here")
            assert (await _next(bob)).text == "still here"
            await bob.send_group("and the group")
            assert (await _next(alice)).text == "and the group"
            # Membership changes still propagate: a drained server leaves the view.
            drained = c.server(alice.server.server_id)  # type: ignore[union-attr]
            moved = asyncio.Event()
            alice.on_event = lambda e: moved.set() if e.kind == EventKind.CONNECTED else None
            drained.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(drained.proc.wait(), 20) == 0
            # A route whose ZooKeeper connection was on the stopped node serves
            # from its last view until kazoo reconnects: moving may take seconds.
            await asyncio.wait_for(moved.wait(), 30)
            await alice.send_private(bob.user_id, "after the move")
            assert (await _next(bob)).text == "after the move"
            carol = await c.client("carol")
            assert carol.server and carol.server.server_id != drained.address
        finally:
            zookeeper_ensemble.start_node(stopped)


async def test_node_and_python_clients_exchange_messages_on_the_cluster(
    cluster: Cluster, node_client: Path
) -> None:
    python_user = await cluster.client("py")
    node = await NodeClient.start(
        node_client,
        cluster.routes[1].address,
        "--user",
        "nodeuser",
        "--password",
        "pw",
        "--send-to",
        str(python_user.user_id),
        "--text",
        "from node",
        "--wait-for",
        "1",
        "--timeout",
        "20",
    )
    try:
        logged_in = await node.wait_for("logged_in")
        sent = await node.wait_for("sent")
        assert sent["status"] == "delivered"
        message = await _next(python_user)
        assert (message.text, message.sender_name) == ("from node", "nodeuser")
        await python_user.send_private(int(logged_in["user_id"]), "from python")
        received = await node.wait_for("message")
        assert (received["text"], received["sender_id"]) == ("from python", python_user.user_id)
        status, stderr = await node.finish()
        assert status == 0, stderr
    finally:
        await node.aclose()
