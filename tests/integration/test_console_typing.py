"""The console's typing notes over a real cluster, on each backend: what is
typed into one console's input line reaches the other console, which says
so once, and erasing the line stops it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cim.client.chatlog import ChatLog
from cim.client.console import Console
from cim.core.typing_notes import ANSWER_GRACE


async def printed(capsys: pytest.CaptureFixture[str], text: str, timeout: float = 5.0) -> str:
    """Waits until a printed line contains ``text``; all lines printed so far."""
    seen = ""
    async with asyncio.timeout(timeout):
        while text not in seen:
            await asyncio.sleep(0.02)
            seen += capsys.readouterr().out
    return seen


async def test_typing_in_one_console_shows_in_the_other(
    rr, tmp_path: Path, capsys, eventually
) -> None:
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    anns = Console(ann, ChatLog(tmp_path, "ann"), interactive=False)
    bobs = Console(bob, ChatLog(tmp_path, "bob"), interactive=False)
    capsys.readouterr()
    for text in ("2", f"{bob.user_id};", f"{bob.user_id};;", f"{bob.user_id};;h"):
        anns.typing.input_changed(text)
    seen = await printed(capsys, f"* ann#{ann.user_id} is typing to you")
    assert seen.count("is typing") == 1
    assert [t.user_name for t in bobs.typing.board.typing()] == ["ann"]
    # Sent: the message ends the note on bob's side.
    anns.typing.input_changed(f"{bob.user_id};;hi bob")
    anns.typing.line_submitted()
    await ann.send_private(bob.user_id, "hi bob")
    await printed(capsys, f"ann#{ann.user_id} (private): hi bob")
    assert bobs.typing.board.typing() == []
    # A note that took longer than the message is not taken for a new one.
    await asyncio.sleep(ANSWER_GRACE)
    assert bobs.typing.board.typing() == []
    # The next line shows at once (the message ended the 3 s interval)...
    anns.typing.input_changed(f"{bob.user_id};;and")
    await printed(capsys, f"* ann#{ann.user_id} is typing to you")
    # ... and erasing it stops it: bob's console shows nobody typing.
    anns.typing.input_changed("")

    async def nobody_typing() -> bool:
        return not bobs.typing.board.typing()

    await eventually(nobody_typing)
