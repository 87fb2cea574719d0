"""Route.History of groups, on each backend: members page back through
messages and membership events; a removed or departed member reads up to
their removal and no further, however they page; a rejoined member reads
everything; non-members and unknown groups are refused alike; the limits; the
console's :his g:N. Private conversations: test_history.py."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cim.client import commands
from cim.client.chatlog import ChatLog
from cim.client.client import CimClient
from cim.client.console import Console
from cim.errors import InvalidArgument, PermissionDenied
from cim.proto.v1 import common_pb2, route_pb2

MEMBERSHIP = common_pb2.MESSAGE_KIND_MEMBERSHIP
GROUP = common_pb2.MESSAGE_KIND_GROUP
UINT64_MAX = 2**64 - 1


def _seen(page: route_pb2.HistoryResponse) -> list[tuple[int, str]]:
    return [(m.position, m.text) for m in page.messages]


async def _group(rr, owner: CimClient, *members: CimClient, name: str = "team") -> str:
    made = await owner.create_group(name, [m.user_id for m in members])
    return made.group.group_id


async def test_members_page_back_through_messages_and_membership_events(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    cat = await rr.client("cat")
    gid = await _group(rr, ann, bob)
    await ann.send_group("hello team", group_id=gid)
    await bob.send_group("hi ann", group_id=gid)
    await ann.change_group("AddMembers", group_id=gid, user_ids=[cat.user_id])
    await cat.send_group("thanks for adding me", group_id=gid)

    # Cat joined at position 4 and reads what came before too.
    expected = [
        (5, "thanks for adding me"),
        (4, "ann added cat"),
        (3, "hi ann"),
        (2, "hello team"),
        (1, "ann created group 'team' with bob"),
    ]
    for reader in (ann, bob, cat):
        page = await reader.history(gid)
        assert _seen(page) == expected
        assert (page.more, page.head_position, page.dropped_through_position) == (False, 5, 0)
    page = await cat.history(gid)
    assert [m.kind for m in page.messages] == [GROUP, MEMBERSHIP, GROUP, GROUP, MEMBERSHIP]
    assert all(m.conversation_id == gid == m.group_id and m.seq == 0 for m in page.messages)
    added = page.messages[1]
    assert added.membership.action == common_pb2.MEMBERSHIP_ACTION_ADDED
    assert list(added.membership.user_ids) == [cat.user_id]
    assert added.sender_id == ann.user_id

    # Paging back, two at a time, from the newest to the creation.
    first = await bob.history(gid, limit=2)
    assert [m.position for m in first.messages] == [5, 4] and first.more
    second = await bob.history(gid, before_position=4, limit=2)
    assert [m.position for m in second.messages] == [3, 2] and second.more
    last = await bob.history(gid, before_position=2, limit=2)
    assert [m.position for m in last.messages] == [1] and not last.more


async def test_a_removed_member_reads_up_to_their_removal_however_they_page(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    gid = await _group(rr, ann, bob)
    await ann.send_group("before", group_id=gid)  # 2
    removed = await ann.change_group("RemoveMembers", group_id=gid, user_ids=[bob.user_id])
    assert removed.event.position == 3
    await ann.send_group("after bob", group_id=gid)  # 4
    await ann.send_group("still after", group_id=gid)  # 5

    mine = [(3, "ann removed bob"), (2, "before"), (1, "ann created group 'team' with bob")]
    for before in (0, 4, 5, 6, 1_000_000, UINT64_MAX):
        page = await bob.history(gid, before_position=before)
        assert _seen(page) == mine, before
        # Nothing says how far the group went on without them.
        assert (page.head_position, page.more) == (3, False), before
    last = (await bob.history(gid, limit=1)).messages[0]
    assert last.membership.action == common_pb2.MEMBERSHIP_ACTION_REMOVED
    assert list(last.membership.user_ids) == [bob.user_id]
    page = await bob.history(gid, before_position=3, limit=1)
    assert _seen(page) == [(2, "before")] and page.more
    # The members read on.
    assert (await ann.history(gid)).head_position == 5


async def test_a_member_who_left_reads_up_to_their_leave(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    gid = await _group(rr, ann, bob)
    await bob.change_group("LeaveGroup", group_id=gid)  # 2
    await ann.send_group("after bob left", group_id=gid)
    page = await bob.history(gid, before_position=UINT64_MAX)
    assert _seen(page) == [(2, "bob left"), (1, "ann created group 'team' with bob")]
    assert page.head_position == 2


async def test_a_rejoined_member_reads_everything(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    gid = await _group(rr, ann, bob)
    await ann.change_group("RemoveMembers", group_id=gid, user_ids=[bob.user_id])  # 2
    await ann.send_group("while bob was out", group_id=gid)  # 3
    await ann.change_group("AddMembers", group_id=gid, user_ids=[bob.user_id])  # 4
    await ann.send_group("welcome back", group_id=gid)  # 5
    page = await bob.history(gid)
    assert [m.position for m in page.messages] == [5, 4, 3, 2, 1]
    assert page.messages[2].text == "while bob was out" and page.head_position == 5


async def test_a_deleted_groups_members_still_read_it(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    dan = await rr.client("dan")
    gid = await _group(rr, ann, bob)
    await bob.send_group("last words", group_id=gid)
    await ann.change_group("DeleteGroup", group_id=gid)
    for reader in (ann, bob):
        page = await reader.history(gid)
        assert [m.text for m in page.messages[:2]] == ["ann deleted the group", "last words"]
    with pytest.raises(PermissionDenied, match=f"you are not a member of group {gid}$"):
        await dan.history(gid)


async def test_non_members_and_unknown_groups_are_refused_alike(rr, raw, fails):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    dan = await rr.client("dan")
    gid = await _group(rr, ann, bob)
    await ann.send_group("members only", group_id=gid)
    # The same code and words whether the group exists or not: a stranger
    # learns nothing about which numbers are taken.
    for reader, group_id in ((dan, gid), (ann, "g:424242"), (dan, "g:424242")):
        err = await fails(
            raw.route(rr).History(
                route_pb2.HistoryRequest(conversation_id=group_id),
                metadata=raw.auth(reader.route.token),
            )
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.details() == f"you are not a member of group {group_id}"
    for forged, why in (
        ("g:007", "without leading zeros"),
        ("g:0", "without leading zeros"),
        ("g:", "the group number must be a decimal number"),
        ("g:1:2", "the group number must be a decimal number"),
        ("g:99999999999999999999", "the group number is out of range"),
        ("G:1", "must start with 'p:'"),
    ):
        with pytest.raises(InvalidArgument, match=why):
            await ann.history(forged)


async def test_page_limits(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    gid = await _group(rr, ann, bob)
    for start in range(0, 104, 26):  # positions 2-105
        await asyncio.gather(
            *(ann.send_group(f"#{n}", group_id=gid) for n in range(start, start + 26))
        )
    page = await bob.history(gid)
    assert len(page.messages) == 50 and page.more and page.head_position == 105
    assert page.messages[0].position == 105 and page.messages[-1].position == 56
    page = await bob.history(gid, limit=100)
    assert len(page.messages) == 100 and page.more and page.messages[-1].position == 6
    page = await bob.history(gid, before_position=6, limit=100)
    assert [m.position for m in page.messages] == [5, 4, 3, 2, 1] and not page.more
    for limit in (101, -1):
        with pytest.raises(InvalidArgument, match=rf"between 1 and 100 \(0: 50\); got {limit}$"):
            await bob.history(gid, limit=limit)


async def test_history_of_a_group_needs_a_session_token(rr, raw, fails):
    ann = await rr.client("ann")
    gid = await _group(rr, ann)
    request = route_pb2.HistoryRequest(conversation_id=gid)
    for metadata in ((), (("authorization", "Bearer not-a-token"),)):
        err = await fails(raw.route(rr).History(request, metadata=metadata))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    token = ann.route.token
    await ann.route.logout()
    err = await fails(raw.route(rr).History(request, metadata=raw.auth(token)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_console_pages_back_through_a_group(rr, tmp_path, capsys):
    # Ann has no stream (nothing pushed to her prints amid the pages).
    ann = await rr.client("ann", connect=False)
    await ann.login()
    bob = await rr.client("bob")
    dan = await rr.client("dan")
    gid = await _group(rr, ann, bob)
    for n in range(1, 25):
        await bob.send_group(f"#{n}", group_id=gid)  # positions 2-25
    console = Console(ann, ChatLog(tmp_path, "ann"), interactive=False)
    capsys.readouterr()
    await console.execute(commands.parse(f":his {gid}"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"* group {gid}, messages 6-25 of 25:"
    assert lines[1].endswith("bob: #5") and lines[20].endswith("bob: #24")
    assert lines[-1] == f"* older: :his {gid} 6"
    await console.execute(commands.parse(f":his {gid} 6"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("* ann created group 'team' with bob")
    assert [line.rsplit(" ", 1)[1] for line in lines[2:-1]] == [f"#{n}" for n in range(1, 5)]
    assert lines[-1] == "* that is the beginning of the conversation"
    # A stranger's console says what the route said.
    console = Console(dan, ChatLog(tmp_path, "dan"), interactive=False)
    with pytest.raises(PermissionDenied, match=f"you are not a member of group {gid}"):
        await console.execute(commands.parse(f":his {gid}"))
