"""Which conversation a console line being typed goes to (for typing notes)."""

from __future__ import annotations

import pytest

from cim.client.commands import typing_target


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("2;;h", 2),
        ("  42;;hello there", 42),
        ("g:5;;x", "g:5"),
        ("g:5;; on it", "g:5"),
        # Nothing yet after the ;; : not typing a message yet.
        ("2;;", None),
        ("2;;   ", None),
        ("g:5;;", None),
        # Not a conversation: text for everyone online, commands, bad ids.
        ("hello", None),
        ("", None),
        ("2", None),
        (":his 2", None),
        (":delay 2;;text 5", None),
        ("0;;hi", None),
        ("99999999999999999999;;hi", None),
        ("g:0;;hi", None),
        ("g:05;;hi", None),
        ("g:x;;hi", None),
    ],
)
def test_the_target_of_a_line_being_typed(text: str, target: int | str | None) -> None:
    assert typing_target(text) == target
