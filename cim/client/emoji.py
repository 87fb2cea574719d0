"""Emoji aliases: the ``:alias:`` table, its pages, and replacing aliases in text."""

from __future__ import annotations

import importlib.resources
import json
import re

from cim.client.commands import CommandError

PAGE_SIZE = 10

# The alias table is data (``cim/client/data/emoji.json``), so that another
# client (a web page) reads the same one; its order is the pages' order.
EMOJI: dict[str, str] = json.loads(
    importlib.resources.files("cim.client").joinpath("data/emoji.json").read_text(encoding="utf-8")
)

_ALIAS = re.compile(r":([a-z0-9_+\-]+):")


def page_count() -> int:
    """How many pages of PAGE_SIZE aliases the table has."""
    return -(-len(EMOJI) // PAGE_SIZE)


def page(number: int) -> list[tuple[str, str]]:
    """The (alias, emoji) rows of 1-based page ``number``."""
    count = page_count()
    if not 1 <= number <= count:
        raise CommandError(f"no emoji page {number}; pages are 1 to {count}")
    start = (number - 1) * PAGE_SIZE
    return list(EMOJI.items())[start : start + PAGE_SIZE]


def emojize(text: str) -> str:
    """``text`` with every known ``:alias:`` replaced by its emoji."""
    out: list[str] = []
    position = 0
    while (match := _ALIAS.search(text, position)) is not None:
        emoji = EMOJI.get(match.group(1))
        if emoji is None:
            # Resume at the closing colon: in ":foo:smile:" it opens ":smile:".
            out.append(text[position : match.end() - 1])
            position = match.end() - 1
        else:
            out.append(text[position : match.start()])
            out.append(emoji)
            position = match.end()
    out.append(text[position:])
    return "".join(out)
