"""Session lifetimes and the Chat stream protocol: refreshes, grace periods, frames."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from cim.config import ServerConfig
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2
from cim.testing import cluster
from cim.testing import fast_route_config as route_config


async def _online(raw, c, token: str) -> list[str]:
    reply = await raw.route(c).ListOnlineUsers(
        route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(token)
    )
    return [user.user_name for user in reply.users]


# --- lifetimes -----------------------------------------------------------------------------------


async def test_live_streams_keep_their_login_state_beyond_the_session_ttl(raw):
    async with cluster(
        servers=1,
        route_config=route_config(session_ttl=0.4),
        server_config=ServerConfig(cluster_secrets=("x",), refresh_interval=0.1),
    ) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")

        await asyncio.sleep(1.0)

        assert [u.user_name for u in await bob.list_online()] == ["alice", "bob"]
        result = await bob.send_private(alice.user_id, "still refreshed")
        assert result.status == common_pb2.DELIVERY_STATUS_DELIVERED
        assert (await c.next_message(alice)).text == "still refreshed"
        login = raw.route(c).Login(route_pb2.LoginRequest(user_name="alice", password="secret-pw"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await login
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_login_that_never_connects_is_forgotten_after_the_grace(raw):
    async with cluster(servers=1, route_config=route_config(connect_grace=0.3)) as c:
        login = await raw.login(c, "alice")

        await asyncio.sleep(0.5)

        stream = raw.open_stream(login.server.address)
        await stream.login(login.user_id, login.session_token)
        frames = await stream.read_until_end()
        assert [(f.notice.kind, f.notice.code) for f in frames] == [
            (chat_pb2.Notice.KIND_ERROR, grpc.StatusCode.UNAUTHENTICATED.value[0])
        ]


async def test_logout_of_a_session_that_never_connected_allows_a_new_login(rr, raw):
    first = await raw.login(rr, "alice")
    await raw.route(rr).Logout(route_pb2.LogoutRequest(), metadata=raw.auth(first.session_token))
    second = await raw.route(rr).Login(
        route_pb2.LoginRequest(user_name="alice", password="secret-pw")
    )
    _, ok = await raw.connect(second)
    assert ok.user_id == first.user_id


async def test_logged_out_token_cannot_open_a_stream(rr, raw):
    login = await raw.login(rr, "alice")
    await raw.route(rr).Logout(route_pb2.LogoutRequest(), metadata=raw.auth(login.session_token))
    stream = raw.open_stream(login.server.address)
    await stream.login(login.user_id, login.session_token)
    frames = await stream.read_until_end()
    assert [f.notice.code for f in frames] == [grpc.StatusCode.UNAUTHENTICATED.value[0]]


async def test_client_that_closes_its_stream_goes_offline(rr, raw, eventually):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(alice)
    assert await _online(raw, rr, bob.session_token) == ["alice"]

    await stream.call.done_writing()
    assert await stream.read_until_end() == []

    async def alice_offline() -> bool:
        return await _online(raw, rr, bob.session_token) == []

    await eventually(alice_offline)
    again = await raw.route(rr).Login(
        route_pb2.LoginRequest(user_name="alice", password="secret-pw")
    )
    assert again.session_id != alice.session_id


async def test_cancelled_stream_goes_offline(rr, raw, eventually):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(alice)
    stream.cancel()

    async def alice_offline() -> bool:
        return await _online(raw, rr, bob.session_token) == []

    await eventually(alice_offline)
    result = await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=alice.user_id, text="gone?"),
        metadata=raw.auth(bob.session_token),
    )
    assert result.status == common_pb2.DELIVERY_STATUS_STORED


# --- frames -----------------------------------------------------------------------------------


async def test_send_result_echoes_the_correlation_id(rr, raw):
    alice = await raw.login(rr, "alice")
    bob_id = await raw.register(rr, "bob")
    stream, _ = await raw.connect(alice)
    await stream.write(
        chat_pb2.ClientFrame(
            send=chat_pb2.SendFrame(
                correlation_id=4242,
                private=common_pb2.SendPrivateRequest(receiver_id=bob_id, text="hi"),
            )
        )
    )
    frame = await stream.read()
    assert frame.WhichOneof("frame") == "send_result"
    assert frame.send_result.correlation_id == 4242
    assert frame.send_result.ok.status == common_pb2.DELIVERY_STATUS_STORED
    assert frame.send_result.ok.message_id


async def test_send_frame_without_a_target_is_invalid_argument(rr, raw):
    alice = await raw.login(rr, "alice")
    stream, _ = await raw.connect(alice)
    await stream.write(chat_pb2.ClientFrame(send=chat_pb2.SendFrame(correlation_id=7)))
    frame = await stream.read()
    assert frame.send_result.correlation_id == 7
    assert frame.send_result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # The stream carries on.
    await stream.ping(1)
    assert (await stream.read()).WhichOneof("frame") == "pong"


async def test_errors_of_a_send_come_back_with_their_correlation_id(rr, raw):
    alice = await raw.login(rr, "alice")
    stream, _ = await raw.connect(alice)
    await stream.write(
        chat_pb2.ClientFrame(
            send=chat_pb2.SendFrame(
                correlation_id=99,
                private=common_pb2.SendPrivateRequest(receiver_id=987654, text="hi"),
            )
        )
    )
    frame = await stream.read()
    assert frame.send_result.correlation_id == 99
    assert frame.send_result.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert frame.send_result.error.message


async def test_ack_frames_are_accepted(rr, raw):
    alice = await raw.login(rr, "alice")
    stream, _ = await raw.connect(alice)
    await stream.write(chat_pb2.ClientFrame(ack=chat_pb2.AckFrame(seq=1)))
    await stream.ping(5)
    frame = await stream.read()
    assert (frame.WhichOneof("frame"), frame.pong.client_time_ms) == ("pong", 5)


async def test_empty_frame_ends_the_stream_with_an_error(rr, raw, eventually):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(alice)
    await stream.write(chat_pb2.ClientFrame())
    frames = await stream.read_until_end()
    assert [(f.notice.kind, f.notice.code) for f in frames] == [
        (chat_pb2.Notice.KIND_ERROR, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    ]

    async def alice_offline() -> bool:
        return await _online(raw, rr, bob.session_token) == []

    await eventually(alice_offline)


async def test_a_second_login_frame_is_a_protocol_error(rr, raw):
    alice = await raw.login(rr, "alice")
    stream, _ = await raw.connect(alice)
    await stream.login(alice.user_id, alice.session_token)
    frames = await stream.read_until_end()
    assert len(frames) == 1
    assert frames[0].notice.kind == chat_pb2.Notice.KIND_ERROR
    assert frames[0].notice.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_reconnecting_with_the_same_token_replaces_the_old_stream(rr, raw):
    alice = await raw.login(rr, "alice")
    old, _ = await raw.connect(alice)
    new, ok = await raw.connect(alice)
    assert ok.user_id == alice.user_id

    frames = await old.read_until_end()
    assert [f.notice.kind for f in frames] == [chat_pb2.Notice.KIND_KICKED]
    bob = await raw.login(rr, "bob")
    await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=alice.user_id, text="to the new stream"),
        metadata=raw.auth(bob.session_token),
    )
    assert (await new.read()).message.text == "to the new stream"
    assert await _online(raw, rr, bob.session_token) == ["alice"]


async def test_refresh_closes_streams_whose_session_ended_elsewhere(raw):
    async with cluster(
        servers=1,
        route_config=route_config(),
        server_config=ServerConfig(cluster_secrets=("x",), refresh_interval=0.1),
    ) as c:
        alice = await raw.login(c, "alice")
        stream, _ = await raw.connect(alice)
        # The route forgets the session without telling the server (as after an expiry).
        cleared = await raw.route_internal(c).SessionDisconnected(
            route_internal_pb2.SessionDisconnectedRequest(
                server_id=alice.server.server_id,
                user_id=alice.user_id,
                session_id=alice.session_id,
            ),
            metadata=raw.secret(c),
        )
        assert cleared.cleared is True

        frames = await stream.read_until_end(timeout=2.0)
        assert [f.notice.kind for f in frames] == [chat_pb2.Notice.KIND_KICKED]


async def test_a_stale_stream_of_a_moved_session_does_not_take_the_user_offline(rr, raw):
    """The session token of alice's login is presented on server A, then on server B.

    If B accepts it, the route moves the session to B (SessionConnected marks it
    connected there). When the now stale stream on A ends, A reports
    SessionDisconnected for the same session id: the route must not clear the
    session that lives on B, or alice is shown offline and her messages are
    stored instead of reaching her live stream.
    """
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    first, _ = await raw.connect(alice)
    other = next(s for s in rr.embedded.servers if s.server_id != alice.server.server_id)
    second = raw.open_stream(other.address)
    await second.login(alice.user_id, alice.session_token)
    reply = await second.read()
    if reply.WhichOneof("frame") == "login_ok":
        await second.expect_replay_done()
        live, stale = second, first
    else:  # the route may refuse a session on a server it did not pick: also fine
        assert reply.notice.kind == chat_pb2.Notice.KIND_ERROR
        live, stale = first, second
    assert await _online(raw, rr, bob.session_token) == ["alice"]

    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await stale.call.done_writing()
    await stale.read_until_end()
    await asyncio.sleep(0.2)  # let the stale stream's server report its end

    assert await _online(raw, rr, bob.session_token) == ["alice"]
    result = await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=alice.user_id, text="to the live stream"),
        metadata=raw.auth(bob.session_token),
    )
    assert result.status == common_pb2.DELIVERY_STATUS_DELIVERED
    assert (await live.read()).message.text == "to the live stream"
