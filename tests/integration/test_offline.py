"""Offline users: their messages wait in their inbox, then are replayed on
connect or fetched, in order, until acked."""

from __future__ import annotations

import grpc
import pytest

from cim.proto.v1 import common_pb2, route_pb2
from cim.testing import cluster
from cim.testing import fast_route_config as route_config

STORED = common_pb2.DELIVERY_STATUS_STORED
DELIVERED = common_pb2.DELIVERY_STATUS_DELIVERED


async def _drain(c, client, count: int) -> list[common_pb2.ChatMessage]:
    return [await c.next_message(client) for _ in range(count)]


async def _nothing_arrives(c, client, wait: float = 0.3) -> bool:
    try:
        await c.next_message(client, timeout=wait)
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("path", ["stream", "unary"])
async def test_message_to_never_connected_user_is_stored_then_pushed(rr, path):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    send = alice.send_private if path == "stream" else alice.route.send_private

    results = [await send(bob.user_id, f"while you were out {i}") for i in range(3)]
    assert [r.status for r in results] == [STORED] * 3
    assert all(r.recipients == 0 for r in results)
    assert all(r.message_id for r in results)

    await bob.start(register=False)
    messages = await _drain(rr, bob, 3)

    assert [m.text for m in messages] == [f"while you were out {i}" for i in range(3)]
    assert [m.message_id for m in messages] == [r.message_id for r in results]
    for message in messages:
        assert message.stored is True
        assert message.sender_id == alice.user_id
        assert message.sender_name == "alice"
        assert message.receiver_id == bob.user_id
        assert message.kind == common_pb2.MESSAGE_KIND_PRIVATE
        assert message.trace_id
        assert message.server_time_ms > 0
    assert await _nothing_arrives(rr, bob)


async def test_message_to_user_who_closed_is_stored_until_next_login(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    await bob.close()

    result = await alice.send_private(bob.user_id, "after you left")
    assert result.status == STORED

    bob_again = await rr.client("bob")
    message = await rr.next_message(bob_again)
    assert (message.text, message.stored) == ("after you left", True)


async def test_stored_messages_are_pushed_only_once(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    await alice.send_private(bob.user_id, "once")
    await bob.start(register=False)
    assert (await rr.next_message(bob)).text == "once"

    await bob.close()  # acks what it received
    assert list((await alice.route.fetch_offline()).messages) == []
    bob_again = await rr.client("bob")
    assert await _nothing_arrives(rr, bob_again)


async def test_live_messages_after_stored_ones_are_not_flagged(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    await alice.send_private(bob.user_id, "old")
    await bob.start(register=False)
    assert (await rr.next_message(bob)).stored is True

    result = await alice.send_private(bob.user_id, "new")
    assert result.status == DELIVERED
    message = await rr.next_message(bob)
    assert (message.text, message.stored) == ("new", False)


async def test_messages_from_several_senders_keep_their_order(rr):
    alice = await rr.client("alice")
    carol = await rr.client("carol")
    bob = await rr.client("bob", connect=False)

    sent = []
    for i in range(6):
        sender = alice if i % 2 == 0 else carol
        send = sender.send_private if i % 3 else sender.route.send_private
        text = f"{sender.user_name} #{i}"
        assert (await send(bob.user_id, text)).status == STORED
        sent.append((sender.user_name, text))

    await bob.start(register=False)
    received = await _drain(rr, bob, len(sent))
    assert [(m.sender_name, m.text) for m in received] == sent


async def test_fetch_offline_reads_the_inbox_and_acks_trim_it(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    await bob.login()  # logged in, never connected: still offline for delivery

    results = [await alice.send_private(bob.user_id, f"m{i}") for i in range(3)]
    assert [r.status for r in results] == [STORED] * 3

    reply = await bob.fetch_offline()
    assert [m.text for m in reply.messages] == ["m0", "m1", "m2"]
    assert [m.seq for m in reply.messages] == [1, 2, 3]
    assert [m.message_id for m in reply.messages] == [r.message_id for r in results]
    assert all(m.stored for m in reply.messages)
    assert all(m.sender_id == alice.user_id for m in reply.messages)
    assert (reply.more, reply.head_seq, reply.dropped_through_seq) == (False, 3, 0)

    assert [m.text for m in (await bob.fetch_offline()).messages] == ["m0", "m1", "m2"]
    assert list((await bob.fetch_offline(after_seq=3)).messages) == []
    await bob.route.ack(2)
    assert [m.text for m in (await bob.fetch_offline()).messages] == ["m2"]


async def test_acked_messages_are_not_replayed_on_connect(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    await bob.login()
    await alice.send_private(bob.user_id, "fetch me")
    (fetched,) = (await bob.fetch_offline()).messages
    assert fetched.text == "fetch me"
    await bob.route.ack(fetched.seq)

    await bob.connect()
    assert await _nothing_arrives(rr, bob)


async def test_fetch_offline_pages_with_limit_and_more(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    await bob.login()
    for i in range(5):
        await alice.route.send_private(bob.user_id, f"p{i}")

    first = await bob.fetch_offline(limit=2)
    second = await bob.fetch_offline(limit=2, after_seq=first.messages[-1].seq)
    third = await bob.fetch_offline(limit=2, after_seq=second.messages[-1].seq)

    assert ([m.text for m in first.messages], first.more) == (["p0", "p1"], True)
    assert ([m.text for m in second.messages], second.more) == (["p2", "p3"], True)
    assert ([m.text for m in third.messages], third.more) == (["p4"], False)


async def test_fetch_offline_only_returns_the_callers_messages(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    carol = await rr.client("carol", connect=False)
    await bob.login()
    await carol.login()
    await alice.send_private(bob.user_id, "for bob")
    await alice.send_private(carol.user_id, "for carol")

    assert [m.text for m in (await bob.fetch_offline()).messages] == ["for bob"]
    assert [m.text for m in (await carol.fetch_offline()).messages] == ["for carol"]


@pytest.mark.parametrize("limit", [-1, 1001])
async def test_fetch_offline_limit_out_of_range_is_invalid_argument(rr, raw, fails, limit):
    login = await raw.login(rr, "bob")
    err = await fails(
        raw.route(rr).FetchOffline(
            route_pb2.FetchOfflineRequest(limit=limit), metadata=raw.auth(login.session_token)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_many_stored_messages_are_pushed_in_batches_and_in_order():
    async with cluster(servers=2, route_config=route_config(offline_batch=3)) as c:
        alice = await c.client("alice")
        bob = await c.client("bob", connect=False)
        texts = [f"n{i}" for i in range(10)]
        for text in texts:
            assert (await alice.send_private(bob.user_id, text)).status == STORED

        await bob.start(register=False)
        received = await _drain(c, bob, len(texts))
        assert [m.text for m in received] == texts
        assert all(m.stored for m in received)
        assert await _nothing_arrives(c, bob)


async def test_fetch_offline_default_limit_is_the_route_batch():
    async with cluster(servers=1, route_config=route_config(offline_batch=3)) as c:
        alice = await c.client("alice")
        bob = await c.client("bob", connect=False)
        await bob.login()
        for i in range(4):
            await alice.route.send_private(bob.user_id, f"d{i}")
        first = await bob.fetch_offline()
        assert ([m.text for m in first.messages], first.more) == (["d0", "d1", "d2"], True)
        rest = await bob.fetch_offline(after_seq=first.messages[-1].seq)
        assert ([m.text for m in rest.messages], rest.more) == (["d3"], False)
