"""Delivery guarantees: per-user seqs, acks, gap-free replay, retention, and
exactly-once in order at the client library."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cim.client.client import CimClient, EventKind
from cim.client.cursor import FileCursor
from cim.core import conversations
from cim.core.passwords import hash_password
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2
from cim.route.messages import send_digest
from cim.store.base import ConversationItem, InboxItem, PointerItem, Retention, SendKey
from cim.testing import backends, cluster, crash
from cim.testing import fast_route_config as route_config

STORED = common_pb2.DELIVERY_STATUS_STORED


async def _received(c, client, count: int, timeout: float = 5.0) -> list[common_pb2.ChatMessage]:
    return [await c.next_message(client, timeout) for _ in range(count)]


async def _nothing_more(c, client, wait: float = 0.3) -> bool:
    try:
        await c.next_message(client, timeout=wait)
    except TimeoutError:
        return True
    return False


def _store(c):
    return c.embedded.route.store


async def test_each_receiver_has_its_own_gapless_sequence(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    carol = await rr.client("carol")
    await alice.send_private(bob.user_id, "p1")
    await alice.send_group("g1")
    await carol.send_private(bob.user_id, "p2")

    to_bob = await _received(rr, bob, 3)
    assert [(m.text, m.seq) for m in to_bob] == [("p1", 1), ("g1", 2), ("p2", 3)]
    (to_carol,) = await _received(rr, carol, 1)
    assert (to_carol.text, to_carol.seq) == ("g1", 1)


async def test_replay_then_live_has_no_gap_while_messages_keep_coming(rr, raw):
    """Bob connects presenting seq 10 while alice sends 60 messages: the
    stream carries 11..60 exactly once each, in order, replay then live."""
    sender = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")

    async def send(i: int) -> None:
        await raw.route(rr).SendPrivate(
            common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text=f"m{i}"),
            metadata=raw.auth(sender.session_token),
        )

    for i in range(1, 31):
        await send(i)
    stream = raw.open_stream(bob.server.address)
    burst = asyncio.create_task(_send_all(send, range(31, 61)))
    await stream.write(
        chat_pb2.ClientFrame(
            login=chat_pb2.LoginFrame(
                user_id=bob.user_id, session_token=bob.session_token, last_seq=10
            )
        )
    )
    await stream.expect_login_ok()
    await burst
    seqs: list[int] = []
    while len(seqs) < 50:
        frame = await stream.read()
        if frame.WhichOneof("frame") == "message":
            seqs.append(frame.message.seq)
    assert seqs == list(range(11, 61))


async def _send_all(send, numbers) -> None:
    for i in numbers:
        await send(i)


async def test_acks_on_the_stream_trim_the_inbox(rr, raw, eventually):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob)
    for text in ("a", "b", "c"):
        await raw.route(rr).SendPrivate(
            common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text=text),
            metadata=raw.auth(alice.session_token),
        )
    await stream.write(chat_pb2.ClientFrame(ack=chat_pb2.AckFrame(seq=2)))

    async def trimmed() -> bool:
        page = await _store(rr).read_inbox(bob.user_id, 0, 10, rr.embedded.route.config.retention)
        return [e.seq for e in page.entries] == [3]

    await eventually(trimmed)


async def test_an_ack_trims_only_the_acking_users_inbox(rr, raw, eventually):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="for bob"),
        metadata=raw.auth(alice.session_token),
    )
    # Alice acks far ahead, on her stream and through the route: her own
    # inbox only; there is no way to name another user's.
    stream, _ = await raw.connect(alice)
    await stream.write(chat_pb2.ClientFrame(ack=chat_pb2.AckFrame(seq=1)))
    await raw.route(rr).AckMessages(
        route_pb2.AckMessagesRequest(seq=1), metadata=raw.auth(alice.session_token)
    )
    await asyncio.sleep(0.5)  # past the chat server's ack flush
    reply = await raw.route(rr).FetchOffline(
        route_pb2.FetchOfflineRequest(), metadata=raw.auth(bob.session_token)
    )
    assert [m.text for m in reply.messages] == ["for bob"]


async def test_unacked_messages_survive_a_server_crash(rr, raw):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob)
    await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="pushed, never acked"),
        metadata=raw.auth(alice.session_token),
    )
    assert (await stream.read()).message.text == "pushed, never acked"
    server = next(s for s in rr.embedded.servers if s.server_id == bob.server.server_id)
    await server.stop(0)

    again = await raw.login(rr, "bob", register=False)
    second, _ = await raw.connect(again)
    assert [f.message.text for f in second.replayed] == ["pushed, never acked"]
    assert second.replayed[0].message.stored


async def test_a_client_too_far_behind_is_told_what_was_dropped():
    async with cluster(servers=1, route_config=route_config(inbox_max_messages=3)) as c:
        alice = await c.client("alice")
        bob = await c.client("bob", connect=False)
        for i in range(1, 6):
            assert (await alice.send_private(bob.user_id, f"n{i}")).status == STORED
        events: list[str] = []
        bob.on_event = lambda event: events.append(event.kind)
        await bob.start(register=False)
        received = await _received(c, bob, 3)
        assert [(m.text, m.seq) for m in received] == [("n3", 3), ("n4", 4), ("n5", 5)]
        assert EventKind.BEHIND in events
        assert bob.sequence.through == 5


async def test_the_client_drops_duplicates_and_restores_order(rr, raw):
    """Pushes that come twice or out of order (a retried send, two routes
    racing) reach the application once, in order: the chat server drops the
    repeats it sees, the client library holds a seq past a gap."""
    bob = await rr.client("bob")
    server = next(s for s in rr.embedded.servers if s.server_id == bob.server.server_id)

    def message(seq: int) -> chat_internal_pb2.Delivery:
        return chat_internal_pb2.Delivery(
            receiver_id=bob.user_id,
            message=common_pb2.ChatMessage(message_id=f"m{seq}", text=f"t{seq}", seq=seq),
        )

    for seq in (2, 1, 2, 1, 3):
        await raw.deliver(
            server.address,
            chat_internal_pb2.DeliverRequest(deliveries=[message(seq)]),
            raw.secret(rr),
        )
    received = await _received(rr, bob, 3)
    assert [m.seq for m in received] == [1, 2, 3]
    assert await _nothing_more(rr, bob)


async def test_a_lasting_gap_is_filled_by_a_sync(rr):
    """A message stored but never pushed (its route died in between): the
    next message shows the gap, and the client asks for a replay."""
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    retention = rr.embedded.route.config.retention
    lost = common_pb2.ChatMessage(message_id="lost-1", text="stored, not pushed")
    await _store(rr).append_inbox(
        [InboxItem(bob.user_id, "lost-1", lost.SerializeToString())], retention
    )
    await alice.send_private(bob.user_id, "pushed")
    received = await _received(rr, bob, 2)
    assert [(m.text, m.seq) for m in received] == [("stored, not pushed", 1), ("pushed", 2)]


async def test_a_restarted_client_gets_only_what_it_missed(rr, tmp_path):
    cursor_path = tmp_path / "bob.seq"
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    first = CimClient("bob", "secret-pw", rr.client_config(), cursor=FileCursor(cursor_path))
    await first.start(register=False)
    await alice.send_private(bob.user_id, "before")
    assert (await rr.next_message(first)).text == "before"
    await crash(first)  # no ack reached the route: only the cursor file knows
    await alice.send_private(bob.user_id, "while away")

    second = CimClient("bob", "secret-pw", rr.client_config(), cursor=FileCursor(cursor_path))
    try:
        await second.start(register=False)
        assert (await rr.next_message(second)).text == "while away"
        assert await _nothing_more(rr, second)
    finally:
        await second.close()


async def test_concurrent_sends_to_one_receiver_arrive_in_call_order(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    texts = [f"#{i}" for i in range(40)]
    await asyncio.gather(*(alice.send_private(bob.user_id, text) for text in texts))
    received = await _received(rr, bob, len(texts))
    assert [m.text for m in received] == texts


@pytest.mark.parametrize("pointed", [False, True], ids=["log-only", "log-and-pointer"])
async def test_a_send_retried_after_a_route_crash_reaches_the_receiver_once(rr, raw, pointed):
    """The first attempt appended the message to the conversation (and maybe
    the pointer to bob's sequence) and died before answering: the retry takes
    over its message id, keeps its position and gives bob exactly one copy."""
    alice = await raw.login(rr, "alice")
    bob = await rr.client("bob")
    store = _store(rr)
    retention = rr.embedded.route.config.retention
    cid = conversations.private_id(alice.user_id, bob.user_id)
    digest = send_digest(f"private:{bob.user_id}", "once")
    sent = SendKey(bob.user_id, alice.user_id, "c-1", digest, conversation=cid)
    crashed = common_pb2.ChatMessage(
        message_id="01J0000000CRASHED0000",
        sender_id=alice.user_id,
        receiver_id=bob.user_id,
        text="once",
        conversation_id=cid,
    )
    (logged,) = await store.append_conversations(
        [ConversationItem(cid, crashed.message_id, crashed.SerializeToString(), sent)], retention
    )
    if pointed:
        await store.append_pointers(
            [PointerItem(bob.user_id, cid, logged.position, crashed.message_id)], retention
        )

    reply = await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="once", client_msg_id="c-1"),
        metadata=raw.auth(alice.session_token),
    )
    assert reply.message_id == crashed.message_id
    (message,) = await _received(rr, bob, 1)
    assert (message.text, message.seq, message.position) == ("once", 1, 1)
    assert await _nothing_more(rr, bob)


# --- fan-outs a crashed route left undone --------------------------------------
# A send without a client_msg_id whose route died after round trip 1 (the
# conversation append) and before round trip 2 (the pointers): nobody retries
# it, so the next send to that conversation, more than fanout_repair_after
# later, does its fan-out too (after its own). The crash is the append alone,
# in the store (on a standalone Redis the two steps of a private send are one
# script: only a group's fan-out or a cluster's second round trip can be cut).
REPAIR_AFTER = 0.2


def _crashed(sender, text: str, conversation_id: str, **fields) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(
        message_id="01J0000000CRASHED0000",
        sender_id=sender.user_id,
        sender_name=sender.user_name,
        text=text,
        conversation_id=conversation_id,
        **fields,
    )


@pytest.mark.parametrize("online", [True, False], ids=["pushed", "replayed"])
async def test_a_private_fan_out_a_crashed_route_left_undone_is_done_by_the_next_send(online):
    async with cluster(route_config=route_config(fanout_repair_after=REPAIR_AFTER)) as c:
        alice = await c.client("alice")
        bob = await c.client("bob", connect=online)
        cid = conversations.private_id(alice.user_id, bob.user_id)
        crashed = _crashed(alice, "lost in the crash", cid, receiver_id=bob.user_id)
        await _store(c).append_conversations(
            [ConversationItem(cid, crashed.message_id, crashed.SerializeToString())],
            c.embedded.route.config.retention,
        )
        await asyncio.sleep(REPAIR_AFTER + 0.1)
        await alice.send_private(bob.user_id, "next")
        if not online:
            await bob.start(register=False)
        received = await _received(c, bob, 2)
        # Repaired after the send that found it: next in bob's sequence,
        # before it in the history (its position).
        assert [(m.text, m.seq, m.position, m.stored) for m in received] == [
            ("next", 1, 2, not online),
            ("lost in the crash", 2, 1, not online),
        ]
        assert received[1].message_id == crashed.message_id
        # Confirmed: a later send does not fan it out again.
        await asyncio.sleep(REPAIR_AFTER + 0.1)
        await alice.send_private(bob.user_id, "last")
        (last,) = await _received(c, bob, 1)
        assert (last.text, last.seq) == ("last", 3)
        assert await _nothing_more(c, bob)


async def test_a_group_fan_out_a_crashed_route_left_undone_reaches_the_members_at_its_position():
    """Done from the group's record at the repair: who joined after the
    message does not get it, nor does a member removed before the repair
    (nobody gets a pointer after their own removal); everyone else once, in
    their own sequence's order (after what they got meanwhile)."""
    async with cluster(route_config=route_config(fanout_repair_after=REPAIR_AFTER)) as c:
        ann = await c.client("ann")
        bob = await c.client("bob")
        cat = await c.client("cat", connect=False)
        dan = await c.client("dan")
        eve = await c.client("eve")
        groups = c.embedded.route.groups
        others = [bob.user_id, cat.user_id, dan.user_id]
        made = await groups.create(ann.user_id, "ann", "team", others)
        gid = made.group.group_id
        crashed = _crashed(
            ann, "lost in the crash", gid, kind=common_pb2.MESSAGE_KIND_GROUP, group_id=gid
        )
        (appended,) = await _store(c).append_conversations(
            [
                ConversationItem(
                    gid, crashed.message_id, crashed.SerializeToString(), group_sender=ann.user_id
                )
            ],
            c.embedded.route.config.retention,
        )
        assert appended.position == 2
        await groups.remove(ann.user_id, "ann", gid, [dan.user_id])  # position 3
        await groups.add(ann.user_id, "ann", gid, [eve.user_id])  # position 4
        await asyncio.sleep(REPAIR_AFTER + 0.1)
        await bob.send_group("next", group_id=gid)  # position 5

        def seen(messages):
            return [(m.position, m.seq, m.text) for m in messages]

        created = "ann created group 'team' with bob, cat, dan"
        removed, added = "ann removed dan", "ann added eve"
        assert seen(await _received(c, bob, 4)) == [
            (1, 1, created),
            (3, 2, removed),
            (4, 3, added),
            (2, 4, "lost in the crash"),
        ]
        assert seen(await _received(c, ann, 4)) == [
            (1, 1, created),
            (3, 2, removed),
            (4, 3, added),
            (5, 4, "next"),
        ]
        assert seen(await _received(c, dan, 2)) == [(1, 1, created), (3, 2, removed)]
        assert seen(await _received(c, eve, 2)) == [(4, 1, added), (5, 2, "next")]
        await cat.start(register=False)
        assert seen(await _received(c, cat, 5)) == [
            (1, 1, created),
            (3, 2, removed),
            (4, 3, added),
            (2, 4, "lost in the crash"),
            (5, 5, "next"),
        ]
        # Confirmed: the next message is the only thing anyone gets.
        await asyncio.sleep(REPAIR_AFTER + 0.1)
        await ann.send_group("last", group_id=gid)
        for member in (bob, cat, eve):
            (last,) = await _received(c, member, 1)
            assert last.text == "last"
        for member in (ann, bob, cat, dan, eve):
            assert await _nothing_more(c, member, wait=0.1)


async def test_a_membership_event_a_crashed_route_left_undone_is_done_by_the_next_message(
    monkeypatch,
):
    """The route died after the change and its event were stored, before
    their fan-out: the next message to the group fans the event out first,
    to the members after the change (the one added too)."""
    async with cluster(route_config=route_config(fanout_repair_after=REPAIR_AFTER)) as c:
        ann = await c.client("ann")
        bob = await c.client("bob")
        cat = await c.client("cat", connect=False)
        groups = c.embedded.route.groups
        made = await groups.create(ann.user_id, "ann", "team", [bob.user_id])
        gid = made.group.group_id
        await _received(c, bob, 1)  # the creation
        await _received(c, ann, 1)

        async def crash(*_):
            raise RuntimeError("the route died")

        monkeypatch.setattr(groups, "_fan_out", crash)
        with pytest.raises(RuntimeError):
            await groups.add(ann.user_id, "ann", gid, [cat.user_id])
        monkeypatch.undo()
        await asyncio.sleep(REPAIR_AFTER + 0.1)
        await bob.send_group("next", group_id=gid)
        (added,) = await _received(c, bob, 1)
        assert (added.text, added.position, added.seq) == ("ann added cat", 2, 2)
        assert added.membership.user_ids == [cat.user_id]
        assert [(m.text, m.seq) for m in await _received(c, ann, 2)] == [
            ("ann added cat", 2),
            ("next", 3),
        ]
        await cat.start(register=False)
        assert [(m.text, m.position, m.seq) for m in await _received(c, cat, 2)] == [
            ("ann added cat", 2, 1),
            ("next", 3, 2),
        ]
        for member in (ann, bob, cat):
            assert await _nothing_more(c, member, wait=0.1)


async def test_sends_and_membership_changes_leave_nothing_pending_once_confirmed():
    """The deferred step confirms each fan-out (the route's own and the
    groups'): an append that would hand back any fan-out still pending
    (repair_after 0) finds none."""
    async with cluster(route_config=route_config(fanout_repair_after=REPAIR_AFTER)) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        made = await c.embedded.route.groups.create(alice.user_id, "alice", "team", [bob.user_id])
        gid = made.group.group_id
        await alice.send_private(bob.user_id, "private", client_msg_id="c-1")
        await alice.send_private(bob.user_id, "no client_msg_id")
        await alice.send_group("group", group_id=gid)
        await _received(c, bob, 4)
        await asyncio.sleep(0.2)  # the deferred step runs 50 ms after a send
        cid = conversations.private_id(alice.user_id, bob.user_id)
        probe = Retention(repair_after=0)
        for conversation_id in (cid, gid):
            (found,) = await _store(c).append_conversations(
                [ConversationItem(conversation_id, f"probe-{conversation_id}", b"")], probe
            )
            assert found.unfinished == ()


async def test_a_send_the_code_before_conversations_left_unfinished_is_appended_once(raw):
    """The first attempt (by the code before conversations, which served the
    store before this route started) appended a full copy and died before
    remembering its result: the retry takes over its message id and gets the
    same seq."""
    store, registry = await backends()
    try:
        alice_id = (await store.create_account("alice", hash_password("secret-pw")))[0].user_id
        bob_id = (await store.create_account("bob", hash_password("secret-pw")))[0].user_id
        # That code claimed a private send under its receiver's keys.
        sent = SendKey(bob_id, alice_id, "c-1", send_digest(f"private:{bob_id}", "once"))
        await store.claim_sends([(sent, "01J0000000CRASHED0000")], 600)
        crashed = common_pb2.ChatMessage(
            message_id="01J0000000CRASHED0000", sender_id=alice_id, text="once"
        )
        config = route_config(routing="round-robin")
        await store.append_inbox(
            [InboxItem(bob_id, crashed.message_id, crashed.SerializeToString())], config.retention
        )
        async with cluster(servers=2, route_config=config, store=store, registry=registry) as rr:
            alice = await raw.login(rr, "alice", register=False)
            bob = await rr.client("bob")
            reply = await raw.route(rr).SendPrivate(
                common_pb2.SendPrivateRequest(receiver_id=bob_id, text="once", client_msg_id="c-1"),
                metadata=raw.auth(alice.session_token),
            )
            assert reply.message_id == crashed.message_id
            (message,) = await _received(rr, bob, 1)
            assert (message.text, message.seq) == ("once", 1)
            assert await _nothing_more(rr, bob)
    finally:
        await registry.aclose()
        await store.aclose()


async def test_replay_and_ack_need_the_cluster_secret(rr, raw, fails):
    bob = await raw.login(rr, "bob")
    err = await fails(
        raw.route_internal(rr).Replay(
            route_internal_pb2.ReplayRequest(user_id=bob.user_id),
            metadata=raw.auth(bob.session_token),
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "call",
    [
        lambda stub, md: stub.Replay(route_internal_pb2.ReplayRequest(user_id=0), metadata=md),
        lambda stub, md: stub.Replay(
            route_internal_pb2.ReplayRequest(user_id=1, limit=5000), metadata=md
        ),
        lambda stub, md: stub.Ack(
            route_internal_pb2.AckRequest(acks=[route_internal_pb2.SessionAck(user_id=-3, seq=1)]),
            metadata=md,
        ),
    ],
    ids=["replay-no-user", "replay-huge-page", "ack-bad-user"],
)
async def test_bad_replay_and_ack_requests_are_invalid_arguments(rr, raw, fails, call):
    err = await fails(call(raw.route_internal(rr), raw.secret(rr)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_sync_replays_only_the_streams_own_inbox(rr, raw):
    """Nothing in a frame names a user: a sync (or a login's last_seq) replays
    the inbox of the stream's authenticated user, never another's."""
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="bob's secret"),
        metadata=raw.auth(alice.session_token),
    )
    stream, _ = await raw.connect(alice)
    assert stream.replayed == []
    await stream.write(chat_pb2.ClientFrame(sync=chat_pb2.SyncFrame(after_seq=0)))
    done = await stream.expect_replay_done()
    assert stream.replayed == [] and done.head_seq == 0
