"""Shared fixtures of the integration suite: an in-process cluster and raw gRPC access.

Every test here runs a real route and real chat servers over loopback gRPC
(``cim.testing.cluster``). Raw stubs are used where the exact status code,
status message or frame sequence is what the test checks.

Note: ``cim.testing.fast_route_config`` is imported under another name in the
test modules; under its own name pytest would collect it as a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from cim.grpcutil import secret_metadata, token_metadata
from cim.proto.internal.v1 import (
    chat_internal_pb2,
    chat_internal_pb2_grpc,
    route_internal_pb2,
    route_internal_pb2_grpc,
)
from cim.proto.v1 import chat_pb2, chat_pb2_grpc, route_pb2, route_pb2_grpc
from cim.testing import TestCluster, cluster, use_backends
from cim.testing import fast_route_config as route_config

READ_TIMEOUT = 5.0

# Modules that test one backend directly; every other module is a behaviour
# suite and runs once per backend.
SINGLE_BACKEND_MODULES = {
    "test_store_contract",
    "test_group_manager",  # the route's group logic on each store directly
    "test_redis_store",
    "test_zookeeper_registry",
    "test_tls",  # transport only: the backends change nothing
    "test_upgrade",  # loads an older cim's keys into Redis itself
    "test_tracing",  # spans of the route's and server's own code: the backends change nothing
    "test_measure_conversations",  # the design's measurements on Redis itself
    "test_measure_typing",  # the typing path's measurements on Redis itself
    "test_measure_sends",  # a private send's Redis calls on Redis itself
}
BACKENDS = ["memory", "redis-zk"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if "backend" in metafunc.fixturenames and module not in SINGLE_BACKEND_MODULES:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture(autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """In-memory store and registry, or real Redis and ZooKeeper (shared
    session-wide servers; a key prefix and a ZooKeeper root of its own per
    test): every ``cluster()`` of the test uses them."""
    name = getattr(request, "param", "memory")
    if name == "memory":
        yield name
        return
    from cim.registry.zookeeper import ZooKeeperRegistry
    from cim.store.redis import RedisStore

    redis_server = request.getfixturevalue("redis_server")
    zookeeper = request.getfixturevalue("zookeeper")
    prefix = request.getfixturevalue("key_prefix")
    root = request.getfixturevalue("zk_root")

    async def make() -> tuple[RedisStore, ZooKeeperRegistry]:
        registry = ZooKeeperRegistry(zookeeper.hosts, root, session_timeout=4.0)
        await registry.start()
        return RedisStore.from_url(redis_server.url, prefix), registry

    with use_backends(make):
        yield name


@pytest.fixture
async def rr() -> AsyncIterator[TestCluster]:
    """Two chat servers with round-robin routing: consecutive logins alternate
    between server-1 and server-2."""
    async with cluster(servers=2, route_config=route_config(routing="round-robin")) as c:
        yield c


class ChatStream:
    """One raw Chat.Connect call, driven frame by frame."""

    def __init__(self, call: Any) -> None:
        self.call = call
        # What the replay after login carried, and how it ended.
        self.replayed: list[chat_pb2.ServerFrame] = []
        self.replay_done: chat_pb2.ReplayDone | None = None

    async def write(self, frame: chat_pb2.ClientFrame) -> None:
        await self.call.write(frame)

    async def login(self, user_id: int, token: str, device_id: str = "") -> None:
        await self.write(
            chat_pb2.ClientFrame(
                login=chat_pb2.LoginFrame(user_id=user_id, session_token=token, device_id=device_id)
            )
        )

    async def ping(self, client_time_ms: int = 0) -> None:
        await self.write(chat_pb2.ClientFrame(ping=chat_pb2.Ping(client_time_ms=client_time_ms)))

    async def read(self, timeout: float = READ_TIMEOUT) -> Any:
        """The next ServerFrame, or grpc.aio.EOF when the server ended the stream."""
        async with asyncio.timeout(timeout):
            return await self.call.read()

    async def read_until_end(self, timeout: float = READ_TIMEOUT) -> list[chat_pb2.ServerFrame]:
        """Every frame up to the end of the stream (which must come within
        ``timeout``), whatever its status: a stream ended by an error carries
        it as its status too (``await stream.call.code()``)."""
        frames = []
        async with asyncio.timeout(timeout):
            with contextlib.suppress(grpc.aio.AioRpcError):
                while (frame := await self.call.read()) is not grpc.aio.EOF:
                    frames.append(frame)
        return frames

    async def expect_login_ok(self) -> chat_pb2.LoginOk:
        frame = await self.read()
        assert frame is not grpc.aio.EOF, "stream ended instead of LoginOk"
        assert frame.WhichOneof("frame") == "login_ok", frame
        return frame.login_ok

    async def expect_replay_done(self) -> chat_pb2.ReplayDone:
        """Reads the replay (kept in ``replayed``) up to its ReplayDone."""
        while True:
            frame = await self.read()
            assert frame is not grpc.aio.EOF, "stream ended before the replay was done"
            if frame.WhichOneof("frame") == "replay_done":
                self.replay_done = frame.replay_done
                return frame.replay_done
            self.replayed.append(frame)

    def cancel(self) -> None:
        self.call.cancel()


class Raw:
    """Raw grpc.aio channels and stubs; everything is closed at the end of the test."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: list[ChatStream] = []

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address)
        return self._channels[address]

    def route(self, c: TestCluster) -> route_pb2_grpc.RouteStub:
        return route_pb2_grpc.RouteStub(self.channel(c.route_address))

    def route_internal(self, c: TestCluster) -> route_internal_pb2_grpc.RouteInternalStub:
        return route_internal_pb2_grpc.RouteInternalStub(self.channel(c.route_address))

    def chat(self, address: str) -> chat_pb2_grpc.ChatStub:
        return chat_pb2_grpc.ChatStub(self.channel(address))

    def chat_internal(self, address: str) -> chat_internal_pb2_grpc.ChatInternalStub:
        return chat_internal_pb2_grpc.ChatInternalStub(self.channel(address))

    async def deliver(
        self,
        address: str,
        request: chat_internal_pb2.DeliverRequest,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> chat_internal_pb2.DeliverResponse:
        """One request over a fresh DeliverStream, as a route sends it; its answer."""
        call = self.chat_internal(address).DeliverStream(
            iter([request]), metadata=metadata, timeout=5
        )
        return await anext(aiter(call))

    async def submit(
        self,
        c: TestCluster,
        request: route_internal_pb2.SubmitBatchRequest,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> route_internal_pb2.SubmitBatchResponse:
        """One batch over a fresh SubmitStream, as a chat server sends it; its answer."""
        call = self.route_internal(c).SubmitStream(iter([request]), metadata=metadata, timeout=5)
        return await anext(aiter(call))

    @staticmethod
    def secret(c: TestCluster) -> tuple[tuple[str, str], ...]:
        """Metadata carrying the cluster's real secret."""
        return secret_metadata(c.embedded.route.config.cluster_secret)

    @staticmethod
    def auth(token: str) -> tuple[tuple[str, str], ...]:
        return token_metadata(token)

    async def register(self, c: TestCluster, name: str, password: str = "secret-pw") -> int:
        reply = await self.route(c).Register(
            route_pb2.RegisterRequest(user_name=name, password=password), timeout=5
        )
        return int(reply.user_id)

    async def login(
        self, c: TestCluster, name: str, password: str = "secret-pw", *, register: bool = True
    ) -> route_pb2.LoginResponse:
        if register:
            await self.register(c, name, password)
        return await self.route(c).Login(
            route_pb2.LoginRequest(user_name=name, password=password), timeout=5
        )

    def open_stream(self, address: str) -> ChatStream:
        stream = ChatStream(self.chat(address).Connect())
        self._streams.append(stream)
        return stream

    async def connect(self, login: route_pb2.LoginResponse) -> tuple[ChatStream, chat_pb2.LoginOk]:
        """A stream to the server the login picked, past its LoginOk and the
        replay of the inbox (kept in ``stream.replayed``)."""
        stream = self.open_stream(login.server.address)
        await stream.login(login.user_id, login.session_token)
        ok = await stream.expect_login_ok()
        await stream.expect_replay_done()
        return stream, ok

    async def aclose(self) -> None:
        for stream in self._streams:
            stream.cancel()
        for channel in self._channels.values():
            await channel.close()


@pytest.fixture
async def raw() -> AsyncIterator[Raw]:
    helper = Raw()
    try:
        yield helper
    finally:
        await helper.aclose()


async def _eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 3.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    """``await eventually(async_predicate, timeout=3.0)``: polls until it holds."""
    return _eventually


async def rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Awaits a raw call that must fail; returns its error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


@pytest.fixture
def fails() -> Callable[[Awaitable[Any]], Awaitable[grpc.aio.AioRpcError]]:
    """``err = await fails(stub.Method(request))``: the call's AioRpcError."""
    return rpc_error
