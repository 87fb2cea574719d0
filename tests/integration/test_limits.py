"""Rate limits and the outbound queue bound, with their precise statuses.

Tiny rates (2 a second, bursts of 3) keep the waits for a refill short.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from cim.config import ServerConfig
from cim.errors import ResourceExhausted
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2
from cim.testing import cluster
from cim.testing import fast_route_config as route_config

RATE, BURST = 2.0, 3
REFILL = 0.6  # one token at RATE, with a margin
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _private(receiver_id: int, text: str) -> common_pb2.SendPrivateRequest:
    return common_pb2.SendPrivateRequest(receiver_id=receiver_id, text=text)


async def _send_frames(stream: Any, receiver_id: int, texts: list[str]) -> dict[int, Any]:
    """Writes one send frame per text (correlation ids 1..n) without waiting,
    then collects every send result by correlation id."""
    for n, text in enumerate(texts, start=1):
        await stream.write(
            chat_pb2.ClientFrame(
                send=chat_pb2.SendFrame(correlation_id=n, private=_private(receiver_id, text))
            )
        )
    results: dict[int, Any] = {}
    while len(results) < len(texts):
        frame = await stream.read()
        assert frame is not grpc.aio.EOF, "the stream ended"
        if frame.WhichOneof("frame") == "send_result":
            results[frame.send_result.correlation_id] = frame.send_result
    return results


# --- messages per user: the route's unary sends ---------------------------------
@pytest.fixture
async def unary_limited():
    async with cluster(
        servers=1, route_config=route_config(max_msgs_per_sec=RATE, msg_burst=BURST)
    ) as c:
        yield c


async def test_unary_sends_over_the_rate_are_resource_exhausted(unary_limited, raw, fails):
    c = unary_limited
    alice = await raw.login(c, "alice")
    carol = await raw.login(c, "carol")
    bob_id = await raw.register(c, "bob")
    stub = raw.route(c)
    as_alice, as_carol = raw.auth(alice.session_token), raw.auth(carol.session_token)

    for n in range(BURST):
        await stub.SendPrivate(_private(bob_id, f"m{n}"), metadata=as_alice, timeout=5)
    err = await fails(stub.SendPrivate(_private(bob_id, "one too many"), metadata=as_alice))
    assert err.code() == EXHAUSTED
    assert "too many messages" in err.details() and "retry in" in err.details(), err.details()
    # Group sends share the user's budget.
    group = await fails(
        stub.SendGroup(common_pb2.SendGroupRequest(text="all"), metadata=as_alice, timeout=5)
    )
    assert group.code() == EXHAUSTED

    # Other users are unaffected.
    for n in range(BURST):
        await stub.SendPrivate(_private(bob_id, f"c{n}"), metadata=as_carol, timeout=5)

    await asyncio.sleep(REFILL)
    reply = await stub.SendPrivate(_private(bob_id, "later"), metadata=as_alice, timeout=5)
    assert reply.status in (common_pb2.DELIVERY_STATUS_DELIVERED, common_pb2.DELIVERY_STATUS_STORED)


async def test_the_client_library_raises_resource_exhausted(unary_limited):
    alice = await unary_limited.client("alice")
    bob = await unary_limited.client("bob")
    for n in range(BURST):
        await alice.route.send_private(bob.user_id, f"m{n}")
    with pytest.raises(ResourceExhausted):
        await alice.route.send_private(bob.user_id, "one too many")


# --- messages per user: sends on the chat stream ----------------------------------
@pytest.fixture
async def stream_limited():
    async with cluster(
        servers=1,
        server_config=ServerConfig(cluster_secrets=("x",), max_msgs_per_sec=RATE, msg_burst=BURST),
    ) as c:
        yield c


async def test_stream_sends_over_the_rate_get_an_error_result_and_the_stream_stays(
    stream_limited, raw
):
    c = stream_limited
    alice_stream, _ = await raw.connect(await raw.login(c, "alice"))
    bob_login = await raw.login(c, "bob")
    bob_stream, _ = await raw.connect(bob_login)
    carol_stream, _ = await raw.connect(await raw.login(c, "carol"))
    bob_id = bob_login.user_id

    results = await _send_frames(alice_stream, bob_id, [f"a{n}" for n in range(BURST + 2)])
    for n in range(1, BURST + 1):
        assert results[n].WhichOneof("outcome") == "ok", results[n]
    for n in (BURST + 1, BURST + 2):
        error = results[n].error
        assert error.code == EXHAUSTED.value[0], results[n]
        assert "too many messages" in error.message, error.message

    # Another user on the same server is unaffected.
    carol_results = await _send_frames(carol_stream, bob_id, [f"c{n}" for n in range(BURST)])
    assert all(r.WhichOneof("outcome") == "ok" for r in carol_results.values())

    # The stream is still open: it answers a ping, and sends again once refilled.
    await alice_stream.ping(client_time_ms=42)
    frame = await alice_stream.read()
    assert frame.WhichOneof("frame") == "pong", frame
    await asyncio.sleep(REFILL)
    again = await _send_frames(alice_stream, bob_id, ["after the wait"])
    assert again[1].WhichOneof("outcome") == "ok", again[1]

    texts = []
    while len(texts) < 2 * BURST + 1:
        frame = await bob_stream.read()
        if frame.WhichOneof("frame") == "message":
            texts.append(frame.message.text)
    assert sorted(texts) == sorted(
        [f"a{n}" for n in range(BURST)] + [f"c{n}" for n in range(BURST)] + ["after the wait"]
    )


async def test_the_client_library_gets_resource_exhausted_on_the_stream(stream_limited):
    alice = await stream_limited.client("alice")
    bob = await stream_limited.client("bob")
    for n in range(BURST):
        await alice.send_private(bob.user_id, f"m{n}")
    with pytest.raises(ResourceExhausted):
        await alice.send_private(bob.user_id, "one too many")
    assert alice.connected


# --- registrations and logins per address ------------------------------------------
async def test_registrations_and_logins_over_the_rate_are_resource_exhausted(raw, fails):
    config = route_config(max_logins_per_sec=RATE, login_burst=BURST)
    async with cluster(servers=1, route_config=config) as c:
        stub = raw.route(c)
        replies = await asyncio.gather(
            *(
                stub.Register(route_pb2.RegisterRequest(user_name=f"u{n}", password="pw"))
                for n in range(BURST + 2)
            ),
            return_exceptions=True,
        )
        created = [r for r in replies if isinstance(r, route_pb2.RegisterResponse)]
        refused = [r for r in replies if isinstance(r, grpc.aio.AioRpcError)]
        assert len(created) == BURST and len(refused) == 2, replies
        for err in refused:
            assert err.code() == EXHAUSTED
            assert "registrations and logins from 127.0.0.1" in err.details(), err.details()

        # Logins draw on the same budget, whatever the credentials.
        name = created[0].user_name
        login = route_pb2.LoginRequest(user_name=name, password="pw")
        assert (await fails(stub.Login(login))).code() == EXHAUSTED

        await asyncio.sleep(REFILL)
        reply = await stub.Login(login, timeout=5)
        assert reply.user_name == name


# --- the outbound queue: a slow consumer is disconnected ----------------------------
async def test_a_client_that_stops_reading_is_disconnected(raw, eventually):
    big = 60_000
    async with cluster(
        servers=1,
        route_config=route_config(max_msgs_per_sec=0, max_text_bytes=big),
        server_config=ServerConfig(
            cluster_secrets=("x",), outbound_queue=4, max_msgs_per_sec=0, max_text_bytes=big
        ),
    ) as c:
        alice = await raw.login(c, "alice")
        bob_login = await raw.login(c, "bob")
        bob_stream, _ = await raw.connect(bob_login)  # and then bob reads nothing
        streams = c.embedded.servers[0].streams
        stub, auth = raw.route(c), raw.auth(alice.session_token)
        text = "z" * (big - 100)

        async def bob_gone() -> bool:
            stream = streams.get(bob_login.user_id)
            return stream is None or stream.closed

        sent = 0
        while not await bob_gone():
            assert sent < 2000, "bob's stream was never closed"
            await asyncio.gather(
                *(
                    stub.SendPrivate(_private(bob_login.user_id, text), metadata=auth, timeout=10)
                    for _ in range(10)
                )
            )
            sent += 10

        # What was queued comes out, then the notice, then the end.
        frames = await bob_stream.read_until_end(timeout=10)
        assert frames, "nothing came"
        last = frames[-1]
        assert last.WhichOneof("frame") == "notice", last
        assert last.notice.kind == chat_pb2.Notice.KIND_ERROR
        assert last.notice.code == EXHAUSTED.value[0]
        assert "too slow" in last.notice.text
        delivered = [f for f in frames if f.WhichOneof("frame") == "message"]
        assert 0 < len(delivered) < sent

        # Alice is unaffected, and what bob missed waits for him (stored, not lost).
        reply = await stub.SendPrivate(_private(bob_login.user_id, "later"), metadata=auth)
        assert reply.status == common_pb2.DELIVERY_STATUS_STORED
        await eventually(bob_gone)

        # He catches up by replay: everything after the last seq he got, in order.
        again = await raw.login(c, "bob", register=False)
        stream = raw.open_stream(again.server.address)
        await stream.write(
            chat_pb2.ClientFrame(
                login=chat_pb2.LoginFrame(
                    user_id=again.user_id,
                    session_token=again.session_token,
                    last_seq=delivered[-1].message.seq,
                )
            )
        )
        await stream.expect_login_ok()
        await stream.expect_replay_done()
        seqs = [f.message.seq for f in stream.replayed if f.WhichOneof("frame") == "message"]
        assert seqs == list(range(delivered[-1].message.seq + 1, sent + 2))
        assert stream.replayed[-1].message.text == "later"
