"""How Chat.Connect streams end: every end caused by an error carries a
KIND_ERROR notice (for clients that read frames) and the same error as the
call's status (for grpcurl and generic clients); normal ends stay OK."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import pytest

from cim.errors import Unauthenticated
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2

KIND_ERROR = chat_pb2.Notice.KIND_ERROR


async def _end_of(call: Any, timeout: float = 5.0) -> tuple[list[Any], grpc.StatusCode, str]:
    """The frames up to the end of a Connect call, its status code and details."""
    frames = []
    async with asyncio.timeout(timeout):
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (frame := await call.read()) is not grpc.aio.EOF:
                frames.append(frame)
        return frames, await call.code(), await call.details()


async def _refused(stream: Any, code: grpc.StatusCode) -> str:
    """The stream sent one error notice with ``code`` and ended with the same
    status and message; returns the message."""
    frames, status, details = await _end_of(stream.call)
    assert [(f.notice.kind, f.notice.code) for f in frames] == [(KIND_ERROR, code.value[0])]
    assert (status, details) == (code, frames[0].notice.text)
    assert details
    return str(details)


async def _online(raw: Any, c: Any, token: str) -> list[str]:
    reply = await raw.route(c).ListOnlineUsers(
        route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(token)
    )
    return [user.user_name for user in reply.users]


# --- refused at login: the status says why -----------------------------------------


async def test_a_bad_token_ends_the_stream_unauthenticated(rr, raw):
    alice = await raw.login(rr, "alice")
    stream = raw.open_stream(alice.server.address)
    await stream.login(alice.user_id, alice.session_token + "x")
    await _refused(stream, grpc.StatusCode.UNAUTHENTICATED)


async def test_a_stream_without_a_login_frame_ends_unauthenticated(rr, raw):
    alice = await raw.login(rr, "alice")
    stream = raw.open_stream(alice.server.address)
    await stream.call.done_writing()
    details = await _refused(stream, grpc.StatusCode.UNAUTHENTICATED)
    assert details == "no login frame: the first frame must be a login"


async def test_a_first_frame_other_than_a_login_ends_unauthenticated(rr, raw):
    alice = await raw.login(rr, "alice")
    stream = raw.open_stream(alice.server.address)
    await stream.ping(1)
    assert await _refused(stream, grpc.StatusCode.UNAUTHENTICATED) == (
        "the first frame must be a login"
    )


async def test_a_login_without_a_token_ends_unauthenticated(rr, raw):
    alice = await raw.login(rr, "alice")
    stream = raw.open_stream(alice.server.address)
    await stream.login(alice.user_id, "")
    await _refused(stream, grpc.StatusCode.UNAUTHENTICATED)


async def test_a_draining_server_refuses_a_stream_unavailable(rr, raw):
    alice = await raw.login(rr, "alice")
    server = next(s for s in rr.embedded.servers if s.server_id == alice.server.server_id)
    server.service.accepting = False  # what drain() sets first
    stream = raw.open_stream(alice.server.address)
    await stream.login(alice.user_id, alice.session_token)
    assert "shutting down" in await _refused(stream, grpc.StatusCode.UNAVAILABLE)


async def test_the_client_library_still_raises_the_refusal(rr):
    alice = await rr.client("alice", connect=False)
    await alice.login()
    alice.route.token = "garbage"
    with pytest.raises(Unauthenticated):
        await alice.connect()
    assert not alice.connected


# --- errors after the login --------------------------------------------------------


async def test_an_unexpected_frame_ends_the_stream_invalid_argument(rr, raw, eventually):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(alice)
    await stream.write(chat_pb2.ClientFrame())
    assert await _refused(stream, grpc.StatusCode.INVALID_ARGUMENT) == "unexpected empty frame"

    async def alice_offline() -> bool:
        return await _online(raw, rr, bob.session_token) == []

    await eventually(alice_offline)


async def test_an_undecodable_frame_ends_the_stream_at_once_with_invalid_argument(
    rr, raw, eventually
):
    """A send whose text is not UTF-8 does not decode (protobuf refuses it):
    the stream ends with INVALID_ARGUMENT instead of silently no longer being
    read, and the session is cleaned up."""
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    call = raw.channel(alice.server.address).stream_stream(
        "/cim.v1.Chat/Connect",
        request_serializer=lambda data: data,
        response_deserializer=chat_pb2.ServerFrame.FromString,
    )()
    try:
        login = chat_pb2.LoginFrame(user_id=alice.user_id, session_token=alice.session_token)
        await call.write(chat_pb2.ClientFrame(login=login).SerializeToString())
        assert (await call.read()).WhichOneof("frame") == "login_ok"
        assert (await call.read()).WhichOneof("frame") == "replay_done"
        await call.write(
            chat_pb2.ClientFrame(ping=chat_pb2.Ping(client_time_ms=77)).SerializeToString()
        )
        pong = await asyncio.wait_for(call.read(), 5)
        assert (pong.WhichOneof("frame"), pong.pong.client_time_ms) == ("pong", 77)
        good = chat_pb2.ClientFrame(
            send=chat_pb2.SendFrame(
                correlation_id=1,
                private=common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="TEXT"),
            )
        ).SerializeToString()
        bad = good.replace(b"TEXT", b"\xff\xfe\xc3\x28")  # same length: still well framed
        assert bad != good

        started = time.monotonic()
        await call.write(bad)
        frames, code, details = await _end_of(call, timeout=2.0)

        assert time.monotonic() - started < 2.0
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "malformed" in details
        assert [(f.notice.kind, f.notice.code) for f in frames] == [
            (KIND_ERROR, grpc.StatusCode.INVALID_ARGUMENT.value[0])
        ]
    finally:
        call.cancel()

    async def alice_offline() -> bool:
        return await _online(raw, rr, bob.session_token) == []

    await eventually(alice_offline)


# --- normal ends keep status OK ----------------------------------------------------


async def test_a_stream_the_client_half_closes_ends_ok(rr, raw):
    alice = await raw.login(rr, "alice")
    stream, _ = await raw.connect(alice)
    await stream.call.done_writing()
    assert await _end_of(stream.call) == ([], grpc.StatusCode.OK, "")


async def test_a_stream_replaced_by_a_newer_login_ends_ok_after_its_kicked_notice(rr, raw):
    alice = await raw.login(rr, "alice")
    old, _ = await raw.connect(alice)
    await raw.connect(alice)
    frames, code, _ = await _end_of(old.call)
    assert [f.notice.kind for f in frames] == [chat_pb2.Notice.KIND_KICKED]
    assert code == grpc.StatusCode.OK


async def test_a_drained_stream_ends_ok_after_its_draining_notice(rr, raw):
    alice = await raw.login(rr, "alice")
    stream, _ = await raw.connect(alice)
    server = next(s for s in rr.embedded.servers if s.server_id == alice.server.server_id)
    drain = asyncio.create_task(server.drain(0.5))
    frames, code, _ = await _end_of(stream.call)
    await drain
    assert [f.notice.kind for f in frames] == [chat_pb2.Notice.KIND_DRAINING]
    assert code == grpc.StatusCode.OK
