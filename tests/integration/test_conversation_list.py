"""Issue 13: the conversation list (most recent first, unread counts, the
other side's read position), read cursors on the stream and by RPC, read
receipts pushed live in private conversations and asked for in groups."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from cim.client.client import CimClient
from cim.core import conversations
from cim.errors import InvalidArgument, PermissionDenied
from cim.proto.v1 import chat_pb2, route_pb2
from cim.testing import TestCluster

Wait = Callable[..., Awaitable[None]]


async def lines(client: CimClient) -> list[tuple[str, str, int, int]]:
    """(conversation id, title, unread, head) of the client's list, in order."""
    page = await client.list_conversations()
    return [(c.conversation_id, c.title, c.unread, c.head_position) for c in page.conversations]


async def test_the_list_follows_sends_most_recent_first(rr: TestCluster) -> None:
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    cat = await rr.client("cat", connect=False)
    ab = conversations.private_id(alice.user_id, bob.user_id)
    ac = conversations.private_id(alice.user_id, cat.user_id)
    sent = await alice.send_private(bob.user_id, "hello bob")
    assert sent.position == 1
    await asyncio.sleep(0.005)
    await alice.send_private(cat.user_id, "hello cat")
    await asyncio.sleep(0.005)
    reply = await bob.send_private(alice.user_id, "hi alice " + "x" * 200)
    assert reply.position == 2
    # Alice's own messages are never unread; bob's reply is.
    assert await lines(alice) == [(ab, "bob", 1, 2), (ac, "cat", 0, 1)]
    assert await lines(bob) == [(ab, "alice", 0, 2)]
    await cat.login()  # no stream: the list is a unary call
    assert await lines(cat) == [(ac, "alice", 1, 1)]
    (line, _) = (await alice.list_conversations()).conversations
    assert line.peer_id == bob.user_id and line.read_position == 1
    last = line.last_message
    assert (last.sender_id, last.sender_name, last.position) == (bob.user_id, "bob", 2)
    assert last.preview.startswith("hi alice xxx") and len(last.preview) == 100
    assert last.preview.endswith("\u2026") and last.server_time_ms > 0
    assert line.last_activity_ms >= last.server_time_ms - 1000


async def test_a_list_pages_back(rr: TestCluster) -> None:
    alice = await rr.client("alice")
    others = [await rr.client(f"u{n}", connect=False) for n in range(5)]
    for other in others:
        await alice.send_private(other.user_id, "hi")
        await asyncio.sleep(0.003)
    first = await alice.list_conversations(limit=2)
    assert first.more and [c.title for c in first.conversations] == ["u4", "u3"]
    last = first.conversations[-1]
    second = await alice.list_conversations(last.last_activity_ms, last.conversation_id, 10)
    assert not second.more and [c.title for c in second.conversations] == ["u2", "u1", "u0"]
    with pytest.raises(InvalidArgument, match=r"limit must be between 1 and 100"):
        await alice.list_conversations(limit=101)
    with pytest.raises(InvalidArgument, match="must start with 'p:'"):
        await alice.list_conversations(5, "nope")


async def test_unread_falls_when_the_stream_marks_read_and_the_peer_sees_it(
    rr: TestCluster, eventually: Wait
) -> None:
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    receipts: list[chat_pb2.ReadReceipt] = []
    alice.on_receipt = receipts.append
    cid = conversations.private_id(alice.user_id, bob.user_id)
    for n in range(3):
        await alice.send_private(bob.user_id, f"#{n}")
    assert await lines(bob) == [(cid, "alice", 3, 3)]
    seen = [await rr.next_message(bob) for _ in range(3)]
    bob.mark_read(cid, seen[1].position)  # on the stream, batched with acks
    await eventually(lambda: _holds(len(receipts) == 1), timeout=5.0)
    assert [(r.conversation_id, r.user_id, r.position) for r in receipts] == [(cid, bob.user_id, 2)]
    assert await lines(bob) == [(cid, "alice", 1, 3)]
    (line,) = (await alice.list_conversations()).conversations
    assert line.peer_read_position == 2
    # Marking less than before lowers nothing and tells nobody.
    bob.mark_read(cid, 1)
    reply = await bob.mark_read_now(cid, 3)
    assert (reply.read_position, reply.head_position, reply.unread) == (3, 3, 0)
    await eventually(lambda: _holds(len(receipts) == 2), timeout=5.0)
    assert receipts[-1].position == 3
    await asyncio.sleep(1.5)  # the stream's mark of 1 went by meanwhile
    assert len(receipts) == 2 and await lines(bob) == [(cid, "alice", 0, 3)]


async def test_a_receipt_past_the_head_stops_at_it(rr: TestCluster) -> None:
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    cid = conversations.private_id(alice.user_id, bob.user_id)
    await alice.send_private(bob.user_id, "one")
    reply = await bob.mark_read_now(cid, 10**9)
    assert (reply.read_position, reply.unread) == (1, 0)
    (line,) = (await alice.list_conversations()).conversations
    assert line.peer_read_position == 1


async def test_an_offline_peer_finds_the_read_position_in_the_list(rr: TestCluster) -> None:
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    cid = conversations.private_id(alice.user_id, bob.user_id)
    await alice.send_private(bob.user_id, "while you were out")
    await alice.close()
    await bob.mark_read_now(cid, 1)
    again = await rr.client("alice")
    (line,) = (await again.list_conversations()).conversations
    assert (line.peer_read_position, line.unread) == (1, 0)


async def test_group_readers_are_asked_for_never_pushed(rr: TestCluster) -> None:
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    cat = await rr.client("cat")
    pushed: list[chat_pb2.ReadReceipt] = []
    ann.on_receipt = pushed.append
    made = await ann.create_group("team", [bob.user_id, cat.user_id])
    gid = made.group.group_id
    sent = await ann.send_group("hello team", group_id=gid)
    assert sent.position == 2
    # Bob and cat: the creation event and the message are news; ann's are hers.
    assert await lines(bob) == [(gid, "team", 2, 2)]
    assert await lines(ann) == [(gid, "team", 0, 2)]
    await bob.mark_read_now(gid, 2)
    await cat.mark_read_now(gid, 1)
    page = await ann.read_receipts(gid)
    assert page.head_position == 2 and page.next_cursor == 0
    assert sorted((r.user_id, r.position) for r in page.readers) == [
        (bob.user_id, 2),
        (cat.user_id, 1),
    ]
    readers = await ann.read_receipts(gid, min_position=2)
    assert [(r.user_id, r.position) for r in readers.readers] == [(bob.user_id, 2)]
    assert await lines(bob) == [(gid, "team", 0, 2)]
    assert await lines(cat) == [(gid, "team", 1, 2)]
    await asyncio.sleep(1.5)
    assert pushed == []  # nobody is pushed anything per group read


async def test_a_member_added_later_counts_unread_from_joining(rr: TestCluster) -> None:
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    gid = (await ann.create_group("team", [bob.user_id])).group.group_id
    for n in range(3):
        await ann.send_group(f"#{n}", group_id=gid)
    dan = await rr.client("dan")
    await ann.change_group("AddMembers", group_id=gid, user_ids=[dan.user_id])
    # The five before are history to dan; his own "added" event is news.
    assert await lines(dan) == [(gid, "team", 1, 5)]


async def test_non_members_mark_nothing_and_read_no_receipts(rr: TestCluster) -> None:
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    eve = await rr.client("eve")
    cid = conversations.private_id(ann.user_id, bob.user_id)
    await ann.send_private(bob.user_id, "private")
    gid = (await ann.create_group("team", [bob.user_id])).group.group_id
    for target in (cid, gid, "g:999"):
        with pytest.raises(PermissionDenied, match=f"not a member of conversation {target}"):
            await eve.mark_read_now(target, 1)
        with pytest.raises(PermissionDenied, match=f"not a member of conversation {target}"):
            await eve.read_receipts(target)
    with pytest.raises(PermissionDenied):
        eve.mark_read(cid, 1)  # refused before it could end eve's stream
    # A removed member is refused like anyone else, and drops off the list.
    await ann.change_group("RemoveMembers", group_id=gid, user_ids=[bob.user_id])
    with pytest.raises(PermissionDenied):
        await bob.mark_read_now(gid, 1)
    with pytest.raises(PermissionDenied):
        await bob.read_receipts(gid)
    assert [line[0] for line in await lines(bob)] == [cid]
    assert (await ann.read_receipts(cid)).readers == []  # nobody marked anything
    assert await lines(eve) == []


async def test_bad_ids_and_positions_are_refused_precisely(rr: TestCluster) -> None:
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    cid = conversations.private_id(alice.user_id, bob.user_id)
    with pytest.raises(InvalidArgument, match="position must be at least 1"):
        await alice.mark_read_now(cid, 0)
    with pytest.raises(InvalidArgument, match="the lower user id comes first"):
        await alice.mark_read_now(f"p:{bob.user_id}:{alice.user_id}", 1)
    with pytest.raises(InvalidArgument, match="conversation id is required"):
        await alice.read_receipts("")
    with pytest.raises(InvalidArgument, match="must start with 'p:'"):
        await alice.mark_read_now("all", 1)
    with pytest.raises(InvalidArgument, match=r"limit must be between 1 and 1000"):
        await alice.read_receipts(cid, limit=1001)
    with pytest.raises(InvalidArgument, match="position must be at least 1"):
        alice.mark_read(cid, 0)


async def test_a_bad_read_frame_ends_the_stream_precisely(rr: TestCluster, raw) -> None:
    ann = await raw.login(rr, "ann")
    bob = await raw.login(rr, "bob")
    eve = await raw.login(rr, "eve")
    cid = conversations.private_id(ann.user_id, bob.user_id)
    cases = [
        (eve, chat_pb2.ReadFrame(conversation_id=cid, position=1), "PERMISSION_DENIED"),
        (ann, chat_pb2.ReadFrame(conversation_id=cid, position=0), "INVALID_ARGUMENT"),
        (bob, chat_pb2.ReadFrame(conversation_id="p:x", position=1), "INVALID_ARGUMENT"),
    ]
    for login, frame, code in cases:
        stream, _ = await raw.connect(login)
        await stream.write(chat_pb2.ClientFrame(read=frame))
        frames = await stream.read_until_end()
        assert frames[-1].notice.kind == chat_pb2.Notice.KIND_ERROR
        assert (await stream.call.code()).name == code


async def test_a_non_members_group_read_frame_changes_nothing(rr: TestCluster, raw) -> None:
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    gid = (await ann.create_group("team", [bob.user_id])).group.group_id
    eve = await raw.login(rr, "eve")
    stream, _ = await raw.connect(eve)
    await stream.write(
        chat_pb2.ClientFrame(read=chat_pb2.ReadFrame(conversation_id=gid, position=1))
    )
    await stream.ping(7)
    pong = await stream.read()
    assert pong.WhichOneof("frame") == "pong"  # the stream goes on
    await asyncio.sleep(1.0)  # past the chat server's flush
    assert (await ann.read_receipts(gid)).readers == []
    reply = await raw.route(rr).ListConversations(
        route_pb2.ListConversationsRequest(), metadata=raw.auth(eve.session_token)
    )
    assert list(reply.conversations) == []


async def test_the_new_rpcs_need_a_session_token(rr: TestCluster, raw, fails) -> None:
    route = raw.route(rr)
    for call in (
        route.ListConversations(route_pb2.ListConversationsRequest()),
        route.MarkRead(route_pb2.MarkReadRequest(conversation_id="p:1:2", position=1)),
        route.GetReadReceipts(route_pb2.GetReadReceiptsRequest(conversation_id="p:1:2")),
    ):
        err = await fails(call)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_one_users_read_cursor_is_shared_by_every_client(
    rr: TestCluster, eventually: Wait
) -> None:
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    cid = conversations.private_id(alice.user_id, bob.user_id)
    await alice.send_private(bob.user_id, "one")
    await alice.send_private(bob.user_id, "two")
    # Another client of bob's (a unary one, no stream) sees his stream's mark.
    other = CimClient("bob", "secret-pw", rr.client_config())
    other.route.token = bob.route.token
    bob.mark_read(cid, 2)
    await eventually(lambda: _unread_is(other, 0), timeout=5.0)
    await other.route.aclose()


async def _unread_is(client: CimClient, expected: int) -> bool:
    (line,) = (await client.list_conversations()).conversations
    return line.unread == expected


async def _holds(condition: bool) -> bool:
    return condition
