from __future__ import annotations

import re

import pytest

from cim.client.commands import CommandError
from cim.client.emoji import EMOJI, PAGE_SIZE, emojize, page, page_count


def test_table_is_large_with_well_formed_aliases() -> None:
    assert len(EMOJI) >= 80
    assert all(re.fullmatch(r"[a-z0-9_+\-]+", alias) for alias in EMOJI)
    assert all(EMOJI.values())


@pytest.mark.parametrize(
    ("alias", "emoji"),
    [("smile", "😄"), ("thumbsup", "👍"), ("heart", "❤️"), ("fire", "🔥"), ("tada", "🎉")],
)
def test_common_aliases(alias: str, emoji: str) -> None:
    assert EMOJI[alias] == emoji


def test_pages_cover_table_in_order() -> None:
    rows = [row for n in range(1, page_count() + 1) for row in page(n)]
    assert rows == list(EMOJI.items())


def test_page_sizes() -> None:
    assert page_count() == -(-len(EMOJI) // PAGE_SIZE)
    assert len(page(1)) == PAGE_SIZE
    assert 1 <= len(page(page_count())) <= PAGE_SIZE


@pytest.mark.parametrize("number", [0, -1, 10_000])
def test_page_out_of_range_names_range(number: int) -> None:
    with pytest.raises(CommandError) as info:
        page(number)
    assert f"1 to {page_count()}" in str(info.value)


def test_emojize_known_aliases() -> None:
    assert emojize("hi :wave: :+1::fire:!") == "hi 👋 👍🔥!"


def test_emojize_leaves_unknown_and_plain_text() -> None:
    assert emojize(":nope: at 12:30:45, a:b") == ":nope: at 12:30:45, a:b"


def test_emojize_unknown_alias_does_not_swallow_next() -> None:
    assert emojize(":foo:smile:") == ":foo😄"


def test_emojize_is_case_sensitive() -> None:
    assert emojize(":SMILE:") == ":SMILE:"


def test_emojize_empty() -> None:
    assert emojize("") == ""
