"""How the console shows what is pushed: users' messages and administrators'
notices apart (without a terminal, as plain lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cim.client.chatlog import ChatLog
from cim.client.client import CimClient
from cim.client.console import Console
from cim.proto.v1 import common_pb2


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
