"""Route.History: a conversation's history, paged back, for its members only;
kept after acks, bounded by the history retention."""

from __future__ import annotations

import grpc
import pytest

from cim.client import commands
from cim.client.chatlog import ChatLog
from cim.client.console import Console
from cim.core import conversations
from cim.errors import InvalidArgument, PermissionDenied
from cim.proto.v1 import common_pb2, route_pb2
from cim.testing import cluster
from cim.testing import fast_route_config as route_config


async def test_members_page_back_through_a_private_conversation(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    cid = conversations.private_id(alice.user_id, bob.user_id)
    sent = [await alice.send_private(bob.user_id, f"#{n}") for n in range(1, 8)]
    await bob.start(register=False)
    for _ in sent:
        message = await rr.next_message(bob)
        assert message.conversation_id == cid
    # Both members read the same history, newest first, with positions.
    for reader in (alice, bob):
        page = await reader.history(cid, limit=3)
        assert [(m.position, m.text) for m in page.messages] == [(7, "#7"), (6, "#6"), (5, "#5")]
        assert page.more and page.head_position == 7 and page.dropped_through_position == 0
        assert [m.message_id for m in page.messages] == [r.message_id for r in sent[:3:-1]]
        assert all(m.seq == 0 and m.conversation_id == cid for m in page.messages)
    page = await bob.history(cid, before_position=5, limit=3)
    assert [m.position for m in page.messages] == [4, 3, 2] and page.more
    page = await bob.history(cid, before_position=2)
    assert [m.text for m in page.messages] == ["#1"] and not page.more


async def test_live_and_replayed_messages_carry_their_conversation_and_position(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    cid = conversations.private_id(alice.user_id, bob.user_id)
    await alice.send_private(bob.user_id, "live")
    await bob.send_private(alice.user_id, "reply")
    live = await rr.next_message(bob)
    reply = await rr.next_message(alice)
    assert (live.conversation_id, live.position) == (cid, 1)
    assert (reply.conversation_id, reply.position) == (cid, 2)


async def test_an_ack_keeps_the_history(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    await bob.start(register=False)
    await alice.send_private(bob.user_id, "kept")
    message = await rr.next_message(bob)
    await bob.route.ack(message.seq)
    assert list((await bob.fetch_offline()).messages) == []  # acked: not fetched again
    page = await bob.history(message.conversation_id)
    assert [m.text for m in page.messages] == ["kept"]


async def test_others_and_malformed_ids_are_refused_precisely(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    eve = await rr.client("eve")
    cid = conversations.private_id(alice.user_id, bob.user_id)
    await alice.send_private(bob.user_id, "secret")
    with pytest.raises(PermissionDenied, match=f"you are not a member of conversation {cid}"):
        await eve.history(cid)
    swapped = f"p:{max(alice.user_id, bob.user_id)}:{min(alice.user_id, bob.user_id)}"
    with pytest.raises(InvalidArgument, match="the lower user id comes first"):
        await alice.history(swapped)
    with pytest.raises(InvalidArgument, match="conversation id is required"):
        await alice.history("")
    with pytest.raises(InvalidArgument, match="must start with 'p:'"):
        await alice.history("all")
    # A group that does not exist reads like someone else's (test_group_history.py).
    with pytest.raises(PermissionDenied, match="you are not a member of group g:1"):
        await alice.history("g:1")
    with pytest.raises(
        InvalidArgument, match=r"limit must be between 1 and 100 \(0: 50\); got 101"
    ):
        await alice.history(cid, limit=101)
    with pytest.raises(InvalidArgument, match="got -1"):
        await alice.history(cid, limit=-1)


async def test_history_needs_a_session_token(rr, raw, fails):
    err = await fails(raw.route(rr).History(route_pb2.HistoryRequest(conversation_id="p:1:2")))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_oversized_id_is_refused_before_the_route_reads_it(rr, raw, fails):
    bob = await raw.login(rr, "bob")
    err = await fails(
        raw.route(rr).History(
            route_pb2.HistoryRequest(conversation_id="p:" + "1" * 70),
            metadata=raw.auth(bob.session_token),
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "conversation_id" in err.details()


async def test_retention_bounds_the_history_and_says_where_it_cut():
    async with cluster(route_config=route_config(history_max_messages=3)) as c:
        alice = await c.client("alice")
        bob = await c.client("bob", connect=False)
        for n in range(1, 6):
            await alice.send_private(bob.user_id, f"#{n}")
        cid = conversations.private_id(alice.user_id, bob.user_id)
        page = await alice.history(cid)
        assert [m.text for m in page.messages] == ["#5", "#4", "#3"]
        assert (page.more, page.head_position, page.dropped_through_position) == (False, 5, 2)
        # bob's replay leaves out what the conversation no longer keeps.
        await bob.login()
        fetched = await bob.fetch_offline()
        assert [(m.seq, m.text) for m in fetched.messages] == [(3, "#3"), (4, "#4"), (5, "#5")]
        assert all(m.kind == common_pb2.MESSAGE_KIND_PRIVATE for m in fetched.messages)


async def test_the_console_pages_back_through_a_conversation(rr, tmp_path, capsys):
    alice = await rr.client("alice")
    bob = await rr.client("bob", connect=False)
    for n in range(1, 26):
        await alice.send_private(bob.user_id, f"#{n}")
    console = Console(alice, ChatLog(tmp_path, "alice"), interactive=False)
    capsys.readouterr()
    await console.execute(commands.parse(f":his {bob.user_id}"))
    lines = capsys.readouterr().out.splitlines()
    assert f"conversation with #{bob.user_id}, messages 6-25 of 25:" in lines[0]
    assert lines[1].endswith("me: #6") and lines[20].endswith("me: #25")
    assert lines[-1].endswith(f"older: :his {bob.user_id} 6")
    await console.execute(commands.parse(f":his {bob.user_id} 6"))
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines[1:-1]] == [f"#{n}" for n in range(1, 6)]
    assert lines[-1].endswith("that is the beginning of the conversation")
    await console.execute(commands.parse(f":his {bob.user_id + 1000}"))
    assert capsys.readouterr().out.strip().endswith(f"no messages with #{bob.user_id + 1000} yet")
