"""Heartbeats: silent streams are evicted (and their login cleared), pinging ones live."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import pytest

from cim.client.client import ClientEvent
from cim.config import ServerConfig
from cim.core.liveness import HeartbeatPolicy
from cim.proto.internal.v1 import chat_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2
from cim.testing import cluster
from cim.testing import fast_route_config as route_config

PING_INTERVAL = 0.2
IDLE_TIMEOUT = 0.6


@pytest.fixture
async def fast():
    """One chat server that expects a ping every 0.2 s and evicts after 0.6 s of silence."""
    async with cluster(
        servers=1,
        route_config=route_config(),
        server_config=ServerConfig(
            cluster_secrets=("x",),
            heartbeat=HeartbeatPolicy(ping_interval=PING_INTERVAL, idle_timeout=IDLE_TIMEOUT),
        ),
    ) as c:
        yield c


async def _online(raw, c, token: str) -> list[str]:
    reply = await raw.route(c).ListOnlineUsers(
        route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(token)
    )
    return [user.user_name for user in reply.users]


async def test_login_ok_announces_the_heartbeat_policy(fast, raw):
    login = await raw.login(fast, "alice")
    _, ok = await raw.connect(login)
    assert ok.heartbeat_interval_ms == int(PING_INTERVAL * 1000)
    assert ok.idle_timeout_ms == int(IDLE_TIMEOUT * 1000)


async def _end_of(stream: Any, timeout: float) -> tuple[list[chat_pb2.ServerFrame], Any]:
    """The frames up to the end of the stream, and the status it ended with."""
    frames = []
    async with asyncio.timeout(timeout):
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (frame := await stream.call.read()) is not grpc.aio.EOF:
                frames.append(frame)
        return frames, await stream.call.code()


async def test_silent_stream_is_evicted_and_login_state_cleared(fast, raw, eventually):
    login = await raw.login(fast, "alice")
    started = time.monotonic()  # the server hears the login frame after this
    stream, _ = await raw.connect(login)
    assert await _online(raw, fast, login.session_token) == ["alice"]

    frames, code = await _end_of(stream, timeout=3.0)

    elapsed = time.monotonic() - started
    assert len(frames) == 1, frames
    notice = frames[0].notice
    assert notice.kind == chat_pb2.Notice.KIND_ERROR
    assert notice.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert notice.text
    # The status says it too, for clients that do not read notices.
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await stream.call.details() == notice.text
    assert IDLE_TIMEOUT <= elapsed < IDLE_TIMEOUT + 1.0  # the deadline holds within a second

    async def offline() -> bool:
        return "alice" not in await _online(raw, fast, login.session_token)

    await eventually(offline, timeout=2.0)
    # The login state is gone: a new login is not a duplicate.
    again = await raw.route(fast).Login(
        route_pb2.LoginRequest(user_name="alice", password="secret-pw")
    )
    assert again.session_id != login.session_id


async def test_silent_streams_end_within_a_moment_of_their_deadline(raw):
    """Streams that fall silent at different moments each end right after
    their own deadline, not at the next of a few periodic sweeps (with a
    sweep every idle_timeout/3 = 1 s, one of four streams started 1/4 s
    apart would be at least 0.75 s late; the bound leaves a loaded machine
    half a second)."""
    idle = 3.0
    async with cluster(
        servers=1,
        route_config=route_config(),
        server_config=ServerConfig(
            cluster_secrets=("x",),
            heartbeat=HeartbeatPolicy(ping_interval=1.0, idle_timeout=idle),
        ),
    ) as c:

        async def silent_user(name: str, delay: float) -> float:
            login = await raw.login(c, name)
            await asyncio.sleep(delay)
            started = time.monotonic()
            stream, _ = await raw.connect(login)
            frames, code = await _end_of(stream, timeout=idle + 2)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (frames, code)
            return time.monotonic() - started - idle

        late = await asyncio.gather(*(silent_user(f"u{i}", i / 4) for i in range(4)))

    assert all(0 <= lateness < 0.5 for lateness in late), late


async def test_evicted_users_messages_are_stored(fast, raw, eventually):
    alice = await raw.login(fast, "alice")
    bob = await raw.login(fast, "bob")
    stream, _ = await raw.connect(bob)
    await _end_of(stream, timeout=3.0)

    async def bob_offline() -> bool:
        return "bob" not in await _online(raw, fast, alice.session_token)

    await eventually(bob_offline, timeout=2.0)
    result = await raw.route(fast).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="are you there?"),
        metadata=raw.auth(alice.session_token),
    )
    assert result.status == common_pb2.DELIVERY_STATUS_STORED


async def test_pinging_stream_outlives_the_idle_timeout(fast, raw):
    login = await raw.login(fast, "alice")
    stream, _ = await raw.connect(login)
    pongs = 0
    deadline = time.monotonic() + IDLE_TIMEOUT * 2
    while time.monotonic() < deadline:
        await stream.ping(pongs)
        frame = await stream.read(timeout=1.0)
        assert frame is not grpc.aio.EOF
        assert frame.WhichOneof("frame") == "pong", frame
        pongs += 1
        await asyncio.sleep(PING_INTERVAL * 0.75)

    assert pongs >= 5
    assert await _online(raw, fast, login.session_token) == ["alice"]
    presence = await raw.chat_internal(login.server.address).Presence(
        chat_internal_pb2.PresenceRequest(
            sessions=[common_pb2.SessionRef(user_id=login.user_id, session_id=login.session_id)]
        ),
        metadata=raw.secret(fast),
    )
    assert list(presence.live) == [True]


async def test_sending_messages_also_counts_as_traffic(fast, raw):
    login = await raw.login(fast, "alice")
    stream, _ = await raw.connect(login)
    deadline = time.monotonic() + IDLE_TIMEOUT * 2
    correlation = 0
    while time.monotonic() < deadline:
        correlation += 1
        await stream.write(
            chat_pb2.ClientFrame(
                send=chat_pb2.SendFrame(
                    correlation_id=correlation,
                    private=common_pb2.SendPrivateRequest(receiver_id=login.user_id, text="me"),
                )
            )
        )
        kinds = {(await stream.read(timeout=1.0)).WhichOneof("frame") for _ in range(2)}
        assert kinds == {"send_result", "message"}
        await asyncio.sleep(PING_INTERVAL * 0.75)
    assert await _online(raw, fast, login.session_token) == ["alice"]


async def test_ping_gets_a_pong(fast, raw):
    login = await raw.login(fast, "alice")
    stream, _ = await raw.connect(login)
    before_ms = time.time() * 1000

    await stream.ping(123456789)
    frame = await stream.read()

    assert frame.WhichOneof("frame") == "pong"
    assert frame.pong.client_time_ms == 123456789
    assert before_ms - 1000 <= frame.pong.server_time_ms <= time.time() * 1000 + 1000


async def test_library_client_keeps_its_stream_alive(fast):
    alice = await fast.client("alice")
    bob = await fast.client("bob")
    events: list[ClientEvent] = []
    alice.on_event = events.append

    await asyncio.sleep(IDLE_TIMEOUT * 2)

    assert alice.connected
    assert [e.kind for e in events] == []  # no disconnect, no reconnect
    await bob.send_private(alice.user_id, "still here")
    assert (await fast.next_message(alice)).text == "still here"


async def test_client_gives_up_a_stream_whose_server_went_silent_and_reconnects(fast, monkeypatch):
    from cim.client.client import EventKind
    from cim.server.streams import Outbox

    client = await fast.client("alice", config=fast.client_config(ping_interval=PING_INTERVAL))
    events: list[ClientEvent] = []
    reconnected = asyncio.Event()

    def on_event(event: ClientEvent) -> None:
        events.append(event)
        if event.kind == EventKind.CONNECTED:
            reconnected.set()

    client.on_event = on_event
    # The server keeps hearing the client but answers nothing on this stream,
    # as when the path back is broken while TCP looks fine.
    outbox = fast.embedded.servers[0].streams.get(client.user_id).outbox
    original_push = Outbox.push
    monkeypatch.setattr(
        Outbox,
        "push",
        lambda self, frame: True if self is outbox else original_push(self, frame),
    )
    started = time.monotonic()
    async with asyncio.timeout(5):
        await reconnected.wait()
    assert time.monotonic() - started >= IDLE_TIMEOUT * 0.9
    lost = [e for e in events if e.kind == EventKind.DISCONNECTED]
    assert lost and "no answer" in lost[0].text
    assert client.connected
