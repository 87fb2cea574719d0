"""How the console shows what is pushed: users' messages and administrators'
notices apart (without a terminal, as plain lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cim.client.chatlog import ChatLog
from cim.client.client import CimClient
from cim.client.console import Console
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2


@pytest.fixture
async def console(tmp_path: Path):  # type: ignore[no-untyped-def]
    client = CimClient("ann", "pw")
    yield Console(client, ChatLog(tmp_path, "ann"), interactive=False)
    await client.close()


def shown(capsys: pytest.CaptureFixture[str], console: Console) -> tuple[str, str]:
    """The line printed, and the line the chat log got (without its time)."""
    printed = capsys.readouterr().out.strip()
    (day,) = console.chatlog.user_dir.iterdir()
    logged = day.read_text().splitlines()[-1].split(" ", 1)[1]
    return printed, logged


async def test_a_notice_to_one_user_is_shown_as_a_notice(console, capsys):
    console.show_message(
        common_pb2.ChatMessage(
            kind=common_pb2.MESSAGE_KIND_SYSTEM, text="quota low", seq=4, stored=True
        )
    )
    printed, logged = shown(capsys, console)
    assert printed.endswith("*** NOTICE from the administrators (to you, stored): quota low")
    assert logged == "*** NOTICE from the administrators (to you, stored): quota low"
    assert "#0" not in printed  # never as a message of a user 0


async def test_a_notice_to_everyone_online_says_so(console, capsys):
    console.show_message(
        common_pb2.ChatMessage(kind=common_pb2.MESSAGE_KIND_SYSTEM, text="restart", seq=0)
    )
    printed, _ = shown(capsys, console)
    assert printed.endswith("*** NOTICE from the administrators (to everyone online): restart")


async def test_a_users_message_is_shown_as_before(console, capsys):
    console.show_message(
        common_pb2.ChatMessage(
            kind=common_pb2.MESSAGE_KIND_PRIVATE, sender_id=2, sender_name="bob", text="hi", seq=1
        )
    )
    printed, logged = shown(capsys, console)
    assert printed.endswith("bob#2 (private): hi")
    assert logged == "bob#2 (private): hi"


async def test_a_membership_event_is_shown_as_one_for_its_group(console, capsys):
    console.show_message(
        common_pb2.ChatMessage(
            kind=common_pb2.MESSAGE_KIND_MEMBERSHIP,
            sender_id=1,
            sender_name="ann",
            group_id="g:5",
            text="ann added bob",
            seq=3,
        )
    )
    printed, logged = shown(capsys, console)
    assert printed.endswith("* [g:5] ann added bob")
    assert logged == "* [g:5] ann added bob"


async def test_a_group_message_names_its_group(console, capsys):
    console.show_message(
        common_pb2.ChatMessage(
            kind=common_pb2.MESSAGE_KIND_GROUP,
            sender_id=2,
            sender_name="bob",
            group_id="g:5",
            text="hi",
            seq=4,
            stored=True,
        )
    )
    printed, logged = shown(capsys, console)
    assert printed.endswith("bob#2 [g:5] (stored): hi")
    assert logged == "bob#2 [g:5] (stored): hi"


async def test_a_shown_message_is_marked_read_on_the_stream(console):
    console.client.user_id = 1
    console.show_message(
        common_pb2.ChatMessage(
            kind=common_pb2.MESSAGE_KIND_PRIVATE,
            sender_id=2,
            sender_name="bob",
            text="hi",
            seq=1,
            conversation_id="p:1:2",
            position=4,
        )
    )
    assert console.client._unsent_reads == {"p:1:2": 4}  # goes with the next ack


async def test_a_receipt_marks_my_messages_read_once(console, capsys):
    console.client.user_id = 1
    console._names[2] = "bob"
    for position, text in ((1, "first"), (2, "second"), (3, "third")):
        console._sent("p:1:2", position, text)
    console.show_receipt(chat_pb2.ReadReceipt(conversation_id="p:1:2", user_id=2, position=2))
    printed = capsys.readouterr().out.strip()
    assert printed.endswith("\u2713 read by bob#2: second (and 1 before it)")
    console.show_receipt(chat_pb2.ReadReceipt(conversation_id="p:1:2", user_id=2, position=2))
    assert capsys.readouterr().out == ""  # nothing new was read
    console.show_receipt(chat_pb2.ReadReceipt(conversation_id="p:1:2", user_id=2, position=9))
    assert capsys.readouterr().out.strip().endswith("\u2713 read by bob#2: third")


async def test_the_conversation_list_shows_unread_counts_and_receipts(console, capsys):
    console.client.user_id = 1
    page = route_pb2.ListConversationsResponse(
        conversations=[
            route_pb2.ConversationSummary(
                conversation_id="p:1:2",
                title="bob",
                peer_id=2,
                unread=2,
                head_position=5,
                peer_read_position=3,
                last_message=route_pb2.LastMessage(sender_id=2, sender_name="bob", preview="yo"),
                last_activity_ms=2,
            ),
            route_pb2.ConversationSummary(
                conversation_id="g:4", title="team", head_position=1, last_activity_ms=1
            ),
        ],
        more=True,
    )
    asked: list[tuple[int, str, int]] = []

    async def listing(before_ms: int = 0, before_id: str = "", limit: int = 0):  # type: ignore[no-untyped-def]
        asked.append((before_ms, before_id, limit))
        return page

    console.client.list_conversations = listing  # type: ignore[method-assign]
    await console.list_conversations(more=False)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "* 2 conversation(s), latest first:"
    assert out[1].startswith("  bob#2 (p:1:2)  2 unread  [")
    assert out[1].endswith("bob: yo  (read by them up to #3)")
    assert out[2] == "  team (g:4)  read"
    assert out[3] == "* older: :convs more"
    await console.list_conversations(more=True)
    assert asked[-1] == (1, "g:4", 20)
    await console.show_unread()
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "* 2 unread message(s) in 1 conversation(s):",
        "  2 unread in bob#2 (p:1:2)",
    ]


async def test_who_read_a_group_scans_the_receipt_pages(console, capsys):
    console.client.user_id = 1
    console._names.update({2: "bob", 3: "cat"})
    pages = {
        0: route_pb2.GetReadReceiptsResponse(
            readers=[route_pb2.ReadPosition(user_id=3, position=7)],
            next_cursor=5,
            head_position=7,
        ),
        5: route_pb2.GetReadReceiptsResponse(
            readers=[
                route_pb2.ReadPosition(user_id=2, position=7),
                route_pb2.ReadPosition(user_id=1, position=7),  # me: not listed
                route_pb2.ReadPosition(user_id=4, position=6),  # not up to the newest
            ],
            head_position=7,
        ),
    }

    async def receipts(cid: str, cursor: int = 0, min_position: int = 0, limit: int = 0):  # type: ignore[no-untyped-def]
        assert (cid, min_position) == ("g:9", 1)
        return pages[cursor]

    console.client.read_receipts = receipts  # type: ignore[method-assign]
    await console.show_readers("g:9", 0)
    assert capsys.readouterr().out.strip() == "* g:9: 2 read up to #7: bob#2, cat#3"
