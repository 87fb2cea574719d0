"""The pure parts of the groups and history scenarios: group sizes, message
tags, send budgets, the series' figures and the check of a history page."""

from __future__ import annotations

import time

import pytest

from cim.bench.conversations import (
    PAYLOAD_BYTES,
    Budget,
    Round,
    check_page,
    page_size,
    per_second,
    read_tag,
    series_figures,
    tagged_text,
)
from cim.bench.records import BenchOptions, Latency, parse_sizes
from cim.proto.v1 import common_pb2

MS = 1_000_000  # ns


def test_group_sizes_parse_in_order() -> None:
    assert parse_sizes("100,1000") == (100, 1000)
    assert parse_sizes(" 1000 , 4,") == (1000, 4)
    assert parse_sizes("10000") == (10_000,)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no group size given"),
        (" , ", "no group size given"),
        ("100,many", "group size 'many' is not a whole number"),
        ("3", "group size 3 is out of range 4-10,000"),
        ("10001", "group size 10001 is out of range 4-10,000"),
        ("100,100", "group size 100 is given twice"),
    ],
)
def test_bad_group_sizes_are_refused_precisely(text: str, error: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_sizes(text)
    assert str(refused.value) == error


def test_options_refuse_what_the_scenarios_cannot_run() -> None:
    with pytest.raises(ValueError, match="group size 2 is out of range"):
        BenchOptions(group_sizes=(2,))
    with pytest.raises(ValueError, match="history kinds must be among private, group"):
        BenchOptions(history_kinds=("channel",))
    with pytest.raises(ValueError, match="history kinds"):
        BenchOptions(history_kinds=())
    with pytest.raises(ValueError, match="at least 1"):
        BenchOptions(group_window=0)
    with pytest.raises(ValueError, match="2 messages at least"):
        BenchOptions(history_messages=1)
    assert BenchOptions().group_sizes == (100, 1000)


def test_a_tag_reads_back_from_its_text() -> None:
    text = tagged_text("t", 17, 123456789)
    assert len(text.encode()) == PAYLOAD_BYTES
    assert read_tag(text) == ("t", 17, 123456789)
    # Long numbers still carry some padding.
    long = tagged_text("s", 10**9, 10**18)
    assert read_tag(long) == ("s", 10**9, 10**18) and long.endswith("x")


@pytest.mark.parametrize("text", ["hello there", "t 12 x", "t12", "tx 5 y", "", "t1 -5 x"])
def test_other_texts_have_no_tag(text: str) -> None:
    assert read_tag(text) is None


def test_a_budget_hands_out_numbers_up_to_its_count() -> None:
    budget = Budget(count=3)
    assert [budget.take() for _ in range(5)] == [1, 2, 3, None, None]
    assert budget.taken == 3


def test_a_budget_stops_at_its_deadline() -> None:
    assert Budget(deadline=time.perf_counter() - 1).take() is None
    open_ended = Budget(deadline=time.perf_counter() + 60)
    assert [open_ended.take() for _ in range(3)] == [1, 2, 3]


def test_a_round_keeps_its_first_and_last_copy() -> None:
    timed = Round(sent_ns=0)
    for now in (5 * MS, 3 * MS, 9 * MS):
        timed.receipt(now)
    assert (timed.first_ns, timed.last_ns, timed.received) == (5 * MS, 9 * MS, 3)


def test_series_figures_count_only_complete_sends_to_the_last_member() -> None:
    rounds = []
    # Three complete sends (2 receivers): to last 10, 20 and 30 ms, first copies after 2 ms.
    for start, last in ((0, 10), (100, 20), (200, 30)):
        timed = Round(sent_ns=start * MS)
        timed.receipt((start + 2) * MS)
        timed.receipt((start + last) * MS)
        rounds.append(timed)
    # One with a copy missing: its last copy (5 ms) is not the last member's.
    incomplete = Round(sent_ns=300 * MS)
    incomplete.receipt(305 * MS)
    rounds.append(incomplete)
    series = series_figures(rounds, receivers=2, accept_ns=[4 * MS, 6 * MS])
    assert (series.sends, series.complete) == (4, 3)
    assert series.to_last_ms == Latency(20.0, 30.0, 30.0, 30.0)
    assert series.fastest_ms == 10.0
    assert series.spread_ms == Latency(18.0, 28.0, 28.0, 28.0)
    # The first copy counts for every send that had one.
    assert series.to_first_ms == Latency(2.0, 5.0, 5.0, 5.0)
    assert series.accept_ms.p50 == 4.0


def test_series_figures_without_a_complete_send() -> None:
    series = series_figures([Round(sent_ns=0)], receivers=3, accept_ns=[])
    assert series.complete == 0 and series.fastest_ms == 0.0
    assert series.to_last_ms == Latency(0.0, 0.0, 0.0, 0.0)


def test_per_second() -> None:
    assert per_second(3000, 1_500 * MS) == pytest.approx(2000.0)
    assert per_second(10, 0) == 0.0


@pytest.mark.parametrize(
    ("before", "head", "expected"),
    [
        (0, 2000, 50),  # the newest page
        (1001, 2000, 50),
        (31, 2000, 30),  # near the first message
        (1, 2000, 0),
        (0, 20, 20),  # a conversation shorter than a page
        (5000, 2000, 50),  # past the head: the newest below it
    ],
)
def test_page_size(before: int, head: int, expected: int) -> None:
    assert page_size(before, head, 50) == expected


def _page(*positions: int) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(position=p) for p in positions]


def test_a_page_must_hold_the_positions_below_its_bound_newest_first() -> None:
    assert check_page(_page(10, 9, 8), before=0, head=10, limit=3) == ""
    assert check_page(_page(6, 5, 4), before=7, head=10, limit=3) == ""
    assert check_page(_page(2, 1), before=3, head=10, limit=3) == ""
    assert check_page(_page(6, 5), before=7, head=10, limit=3) == "page size"
    assert check_page(_page(4, 5, 6), before=7, head=10, limit=3) == "page positions"
    assert check_page(_page(6, 4, 3), before=7, head=10, limit=3) == "page positions"
