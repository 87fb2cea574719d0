"""How the console shows others' typing notes without touching the line being
typed: in a full terminal's bottom toolbar (gone when nobody types, expiring
on time), else as one line when someone starts; and which conversation the
input line is typed to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from cim.client.client import CimClient
from cim.client.typing_display import Fragments, TypingDisplay
from cim.proto.v1 import chat_pb2, common_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prompt() -> Iterator[PromptSession[str]]:
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        yield PromptSession()


def note(cid: str, user_id: int, name: str, stopped: bool = False) -> chat_pb2.Typing:
    return chat_pb2.Typing(conversation_id=cid, user_id=user_id, user_name=name, stopped=stopped)


async def test_the_toolbar_shows_who_types_where_and_goes_when_they_stop(prompt) -> None:
    client = CimClient("ann", "pw")
    clock = Clock()
    display = TypingDisplay(client, lambda _: None, toolbar=True, clock=clock)
    display.attach(prompt)
    assert prompt.bottom_toolbar is None
    display.note(note("p:1:2", 2, "bob"))
    assert prompt.bottom_toolbar == [("class:typing", "bob is typing to you")]
    clock.now += 1
    display.note(note("g:5", 3, "cat"))
    assert prompt.bottom_toolbar == [
        ("class:typing", "bob is typing to you · cat is typing in g:5")
    ]
    display.message(common_pb2.ChatMessage(conversation_id="p:1:2", sender_id=2, text="hi"))
    assert prompt.bottom_toolbar == [("class:typing", "cat is typing in g:5")]
    clock.now += 6  # cat's note expires: the timer's refresh finds nobody
    display.refresh()
    assert prompt.bottom_toolbar is None
    await display.aclose()
    await client.close()


async def test_without_a_toolbar_a_start_is_one_line_and_renewals_are_silent() -> None:
    client = CimClient("ann", "pw")
    said: list[Fragments] = []
    display = TypingDisplay(client, said.append, toolbar=False, clock=Clock())
    display.note(note("p:1:2", 2, "bob"))
    display.note(note("p:1:2", 2, "bob"))
    display.note(note("p:1:2", 2, "bob", stopped=True))
    display.note(note("g:5", 3, "cat"))
    assert said == [
        [("class:typing", "* bob#2 is typing to you")],
        [("class:typing", "* cat#3 is typing in g:5")],
    ]
    await client.close()


async def test_the_input_line_decides_which_conversation_is_typed_to(prompt) -> None:
    client = CimClient("ann", "pw")
    client.user_id = 4  # as a login sets it
    display = TypingDisplay(client, lambda _: None, toolbar=True)
    display.attach(prompt)
    buffer = prompt.default_buffer
    buffer.insert_text("9;;")
    assert display.typing_to == ""
    buffer.insert_text("h")
    assert display.typing_to == "p:4:9"
    buffer.text = "g:7;;ok"
    assert display.typing_to == "g:7"
    buffer.text = "hello all"
    assert display.typing_to == ""
    buffer.text = "2;;x"
    display.line_submitted()
    assert display.typing_to == ""
    await display.aclose()
    await client.close()
