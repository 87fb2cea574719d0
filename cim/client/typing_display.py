"""The console's typing notes: telling a conversation that its line is being
typed, and showing who else is typing without disturbing that line.

Out: every change of the input line (prompt_toolkit's buffer) is parsed for
the conversation it would go to (``userId;;...`` or ``g:N;;...`` with some
text: ``commands.typing_target``); ``CimClient.typing`` sends a note at most
every 3 s per conversation. Turning the line to another target, or erasing
it, stops the note; sending it needs no stop (the message ends it).

In: notes go to a :class:`~cim.core.typing_notes.TypingBoard`. A full
terminal shows the board in prompt_toolkit's bottom toolbar (redrawn when it
changes and when a note expires; absent while nobody types); a dumb terminal
or a pipe, which cannot redraw, gets a line when someone starts typing,
printed above the input like a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from prompt_toolkit import PromptSession

from cim.client import commands
from cim.client.client import CimClient
from cim.core import conversations
from cim.core.typing_notes import TypingBoard, Typist
from cim.errors import CimError
from cim.proto.v1 import chat_pb2, common_pb2

log = logging.getLogger(__name__)

Fragments = list[tuple[str, str]]


class TypingDisplay:
    """``say`` prints a line above the input (line mode); ``toolbar`` says
    whether a full terminal's bottom toolbar shows the typists instead."""

    def __init__(
        self,
        client: CimClient,
        say: Callable[[Fragments], None],
        *,
        toolbar: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.board = TypingBoard(clock=clock)
        self._say = say
        self._toolbar = toolbar
        self._prompt: PromptSession[Any] | None = None
        # The conversation the line being typed goes to ("": none).
        self.typing_to = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, prompt: PromptSession[Any]) -> None:
        """Follows the prompt's input line; shows typists in its toolbar."""
        self._prompt = prompt
        prompt.default_buffer.on_text_changed += lambda buffer: self.input_changed(buffer.text)

    # --- out: our own notes ------------------------------------------------------
    def input_changed(self, text: str) -> None:
        cid = self._conversation(commands.typing_target(text))
        if self.typing_to and cid != self.typing_to:
            self._tell(self.typing_to, stopped=True)
        self.typing_to = cid
        if cid:
            self._tell(cid, stopped=False)

    def line_submitted(self) -> None:
        """The line was entered: a message ends its note by itself (and a
        line that is not one already stopped it as it changed)."""
        self.typing_to = ""

    def _conversation(self, target: int | str | None) -> str:
        me = self.client.user_id
        if isinstance(target, int):
            return conversations.private_id(me, target) if me > 0 else ""
        return target or ""

    def _tell(self, cid: str, *, stopped: bool) -> None:
        task = asyncio.ensure_future(self._send(cid, stopped))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, cid: str, stopped: bool) -> None:
        if not stopped and cid != self.typing_to:
            return  # the line was sent (or changed) meanwhile: the note is stale
        try:
            await self.client.typing(cid, stopped=stopped)
        except CimError as exc:  # a note is worth no error line
            log.debug("typing note for %s not sent: %s", cid, exc.message)

    # --- in: others' notes -----------------------------------------------------------
    def note(self, typing: chat_pb2.Typing) -> None:
        """A note pushed to us (``CimClient.on_typing``)."""
        started = self.board.note(
            typing.conversation_id, typing.user_id, typing.user_name, typing.stopped
        )
        if self._toolbar:
            self.refresh()
        elif started:
            line = f"* {typing.user_name}#{typing.user_id} is typing{self._where(typing)}"
            self._say([("class:typing", line)])

    def message(self, message: common_pb2.ChatMessage) -> None:
        """A message shown: its sender is no longer typing there."""
        if self.board.clear(message.conversation_id, message.sender_id) and self._toolbar:
            self.refresh()

    def status(self) -> str:
        """Who is typing where, in one line ("" when nobody is)."""
        return " · ".join(
            f"{typist.user_name} is typing{self._where(typist)}" for typist in self.board.typing()
        )

    def refresh(self) -> None:
        """Puts the board in the toolbar (none while nobody types), and
        comes back when the next note expires."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        prompt = self._prompt
        if prompt is None:
            return
        status = self.status()
        prompt.bottom_toolbar = [("class:typing", status)] if status else None
        prompt.app.invalidate()
        expires = self.board.next_change()
        if expires is not None:
            delay = max(0.0, expires - self.board.clock()) + 0.05
            self._timer = asyncio.get_running_loop().call_later(delay, self.refresh)

    @staticmethod
    def _where(typist: chat_pb2.Typing | Typist) -> str:
        cid = typist.conversation_id
        return " to you" if cid.startswith(conversations.PRIVATE_PREFIX) else f" in {cid}"

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
