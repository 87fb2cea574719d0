"""Private and group messages across chat servers, over both send paths."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import pytest
from google.protobuf import json_format

from cim.errors import FailedPrecondition, PermissionDenied
from cim.proto.v1 import common_pb2
from cim.route.servers import ServerLink
from cim.testing import cluster
from cim.testing import fast_route_config as route_config

DELIVERED = common_pb2.DELIVERY_STATUS_DELIVERED
PRIVATE = common_pb2.MESSAGE_KIND_PRIVATE
GROUP = common_pb2.MESSAGE_KIND_GROUP


async def _pair(c):
    alice = await c.client("alice")
    bob = await c.client("bob")
    assert alice.server.server_id != bob.server.server_id, "test needs two chat servers"
    return alice, bob


async def _nothing_arrives(c, client, wait: float = 0.3) -> bool:
    try:
        await c.next_message(client, timeout=wait)
    except TimeoutError:
        return True
    return False


# --- private -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["stream", "unary"])
async def test_private_message_across_servers(rr, path):
    alice, bob = await _pair(rr)
    before_ms = time.time() * 1000 - 1000
    send = alice.send_private if path == "stream" else alice.route.send_private

    result = await send(bob.user_id, f"hello over {path}")
    message = await rr.next_message(bob)

    assert result.status == DELIVERED
    assert result.recipients == 1
    assert result.message_id
    assert result.server_time_ms > before_ms
    assert message.text == f"hello over {path}"
    assert message.sender_id == alice.user_id
    assert message.sender_name == "alice"
    assert message.receiver_id == bob.user_id
    assert message.kind == PRIVATE
    assert message.group_id == ""
    assert message.message_id == result.message_id
    assert message.trace_id
    assert message.server_time_ms > 0
    assert message.server_time_ms == result.server_time_ms
    assert message.stored is False


async def test_private_messages_arrive_in_send_order(rr):
    alice, bob = await _pair(rr)
    texts = [f"message {i}" for i in range(20)]
    results = await asyncio.gather(*(alice.send_private(bob.user_id, t) for t in texts[:10]))
    for text in texts[10:]:
        results.append(await alice.route.send_private(bob.user_id, text))

    received = [(await rr.next_message(bob)).text for _ in texts]
    assert received == texts
    assert all(r.status == DELIVERED for r in results)
    ids = [r.message_id for r in results]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # message ids sort by creation


async def test_private_reply_goes_back_to_sender(rr):
    alice, bob = await _pair(rr)
    await alice.send_private(bob.user_id, "ping?")
    question = await rr.next_message(bob)
    await bob.send_private(question.sender_id, "pong!")
    answer = await rr.next_message(alice)
    assert (answer.sender_name, answer.text) == ("bob", "pong!")


async def test_private_message_to_self(rr):
    alice = await rr.client("alice")
    result = await alice.send_private(alice.user_id, "note to self")
    message = await rr.next_message(alice)
    assert result.status == DELIVERED
    assert (message.sender_id, message.receiver_id, message.text) == (
        alice.user_id,
        alice.user_id,
        "note to self",
    )


async def test_client_msg_id_is_echoed(rr):
    alice, bob = await _pair(rr)
    await alice.send_private(bob.user_id, "with key", client_msg_id="k-123")
    message = await rr.next_message(bob)
    assert message.client_msg_id == "k-123"


async def test_unicode_text_survives_the_trip(rr):
    alice, bob = await _pair(rr)
    text = "grüße, 你好, \U0001f44b"
    await alice.route.send_private(bob.user_id, text)
    assert (await rr.next_message(bob)).text == text


async def test_on_message_callback_sees_pushed_messages(rr):
    alice, bob = await _pair(rr)
    seen: list[str] = []
    bob.on_message = lambda message: seen.append(message.text)
    await alice.send_private(bob.user_id, "callback")
    await rr.next_message(bob)
    assert seen == ["callback"]


# --- group -------------------------------------------------------------------------------------


async def _trio(c):
    alice = await c.client("alice")
    bob = await c.client("bob")
    carol = await c.client("carol")
    assert len({alice.server.server_id, bob.server.server_id, carol.server.server_id}) == 2
    return alice, bob, carol


@pytest.mark.parametrize("path", ["stream", "unary"])
async def test_group_message_reaches_every_other_online_user(rr, path):
    alice, bob, carol = await _trio(rr)
    dave = await rr.client("dave", connect=False)  # registered but offline: not a recipient
    send = alice.send_group if path == "stream" else alice.route.send_group

    result = await send(f"hi all via {path}")

    assert result.status == DELIVERED
    assert result.recipients == 2
    assert result.message_id
    for receiver in (bob, carol):
        message = await rr.next_message(receiver)
        assert message.text == f"hi all via {path}"
        assert message.kind == GROUP
        assert message.group_id == "all"
        assert message.sender_id == alice.user_id
        assert message.sender_name == "alice"
        assert message.receiver_id == 0
        assert message.message_id == result.message_id
        assert message.trace_id
        assert message.server_time_ms > 0
    assert await _nothing_arrives(rr, alice)
    # Group messages go to who is online at send time; nothing waits for offline users.
    assert (await dave.route.login("dave", "secret-pw")).user_id == dave.user_id
    assert list((await dave.fetch_offline()).messages) == []


async def test_group_message_with_no_one_else_online_reaches_nobody(rr, raw):
    alice = await rr.client("alice")
    result = await alice.send_group("anyone?")
    assert result.status == common_pb2.DELIVERY_STATUS_NO_RECIPIENTS
    assert result.recipients == 0
    assert await _nothing_arrives(rr, alice)
    # Said plainly in proto3 JSON too (what grpcurl prints), which omits a 0.
    shown = json_format.MessageToDict(result)
    assert shown["status"] == "DELIVERY_STATUS_NO_RECIPIENTS"
    assert "recipients" not in shown
    # Someone else online: delivered, to that many.
    await raw.connect(await raw.login(rr, "bob"))
    reached = await alice.send_group("and now?")
    assert (reached.status, reached.recipients) == (DELIVERED, 1)


async def test_group_message_to_unknown_group_is_invalid_argument(rr, raw, fails):
    login = await raw.login(rr, "alice")
    err = await fails(
        raw.route(rr).SendGroup(
            common_pb2.SendGroupRequest(text="hi", group_id="friends"),
            metadata=raw.auth(login.session_token),
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "friends" in err.details()


async def test_group_id_all_is_the_everyone_group(rr, raw):
    alice, bob = await _pair(rr)
    # The client library has no group_id parameter: send it raw with alice's token.
    result = await raw.route(rr).SendGroup(
        common_pb2.SendGroupRequest(text="explicit all", group_id="all"),
        metadata=raw.auth(alice.route.token),
    )
    assert result.recipients == 1
    message = await rr.next_message(bob)
    assert (message.text, message.group_id) == ("explicit all", "all")


@pytest.mark.parametrize("path", ["stream", "unary"])
async def test_broadcast_off_refuses_group_all_and_private_messages_go_on(path):
    async with cluster(route_config=route_config(routing="round-robin", broadcast="off")) as c:
        alice, bob = await _pair(c)
        send = alice.send_group if path == "stream" else alice.route.send_group
        with pytest.raises(PermissionDenied) as refused:
            await send("hi all", client_msg_id="b-1")
        assert "--broadcast off" in refused.value.message
        assert await _nothing_arrives(c, bob)
        # Refused before any claim: the same key may carry a private message later.
        await alice.send_private(bob.user_id, "just you", client_msg_id="b-1")
        assert (await c.next_message(bob)).text == "just you"


def test_broadcast_policy_must_be_known():
    with pytest.raises(ValueError, match="broadcast policy"):
        route_config(broadcast="friends")


@pytest.mark.parametrize("path", ["stream", "unary"])
async def test_group_message_makes_one_deliver_call_per_chat_server(rr, monkeypatch, path):
    calls: Counter[str] = Counter()
    deliveries: Counter[str] = Counter()
    original = ServerLink._send_parcels

    async def counting(self, parcels):
        calls[self.member.member_id] += 1
        deliveries[self.member.member_id] += sum(len(parcel) for parcel in parcels)
        return await original(self, parcels)

    monkeypatch.setattr(ServerLink, "_send_parcels", counting)
    # 5 users over 2 servers: server-1 holds 3 of them, server-2 holds 2.
    users = [await rr.client(name) for name in ("u1", "u2", "u3", "u4", "u5")]
    by_server = Counter(user.server.server_id for user in users)
    assert by_server == {"server-1": 3, "server-2": 2}
    assert calls == {}  # nothing delivered yet

    sender = users[0]
    send = sender.send_group if path == "stream" else sender.route.send_group
    result = await send("one call per server")

    assert result.recipients == 4
    for user in users[1:]:
        assert (await rr.next_message(user)).text == "one call per server"
    assert calls == {"server-1": 1, "server-2": 1}
    assert deliveries == {"server-1": 2, "server-2": 2}  # the sender is left out


async def test_closed_client_refuses_to_send(rr):
    alice, bob = await _pair(rr)
    await alice.close()
    with pytest.raises(FailedPrecondition):
        await alice.send_private(bob.user_id, "too late")


async def test_wait_live_returns_once_stored_messages_are_replayed(rr):
    """A client's start() returns at LoginOk; wait_live() once the replay of
    what was stored is done, so later messages come live, not stored."""
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    for n in range(3):
        await alice.route.send_private(bob.user_id, f"while away {n}")
    await bob.start()
    await bob.wait_live(5)
    replayed = [await rr.next_message(bob) for _ in range(3)]
    assert [(m.text, m.stored) for m in replayed] == [(f"while away {n}", True) for n in range(3)]
    await alice.route.send_private(bob.user_id, "now live")
    live = await rr.next_message(bob)
    assert (live.text, live.stored) == ("now live", False)
