"""Unit tests for cim.core.sequence: each seq released once, in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cim.core.sequence import SequenceTracker


def test_in_order_seqs_are_released_at_once() -> None:
    tracker: SequenceTracker[str] = SequenceTracker()
    assert tracker.offer(1, "a") == ["a"]
    assert tracker.offer(2, "b") == ["b"]
    assert tracker.through == 2 and not tracker.has_gap


def test_a_seq_past_a_gap_waits_for_the_gap() -> None:
    tracker: SequenceTracker[str] = SequenceTracker()
    assert tracker.offer(2, "b") == []
    assert tracker.offer(3, "c") == []
    assert tracker.has_gap and tracker.through == 0
    assert tracker.offer(1, "a") == ["a", "b", "c"]
    assert tracker.through == 3 and not tracker.has_gap


def test_duplicates_are_dropped_and_counted() -> None:
    tracker: SequenceTracker[str] = SequenceTracker(through=5)
    assert tracker.offer(5, "old") == []
    assert tracker.offer(7, "g") == []
    assert tracker.offer(7, "g again") == []
    assert tracker.duplicates == 2
    assert tracker.offer(6, "f") == ["f", "g"]


def test_skip_through_releases_what_is_held_and_jumps_the_gone() -> None:
    tracker: SequenceTracker[str] = SequenceTracker(through=1)
    tracker.offer(4, "d")
    tracker.offer(7, "g")
    # The replay is done through 5: 2, 3 and 5 are gone (acked elsewhere, dropped).
    assert tracker.skip_through(5) == ["d"]
    assert tracker.through == 5
    assert tracker.offer(6, "f") == ["f", "g"]


def test_skip_through_never_moves_back() -> None:
    tracker: SequenceTracker[str] = SequenceTracker(through=9)
    assert tracker.skip_through(3) == []
    assert tracker.through == 9


def test_reset_follows_a_restarted_sequence() -> None:
    tracker: SequenceTracker[str] = SequenceTracker(through=9)
    tracker.offer(11, "k")
    tracker.reset(2)
    assert tracker.offer(3, "new") == ["new"]
    assert tracker.through == 3


def test_an_overlong_gap_releases_what_is_held() -> None:
    tracker: SequenceTracker[int] = SequenceTracker(max_held=3)
    for seq in (2, 3, 4):
        tracker.offer(seq, seq)
    assert tracker.offer(6, 6) == [2, 3, 4]
    assert tracker.offer(5, 5) == [5, 6]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=200))
def test_any_arrival_order_releases_each_seq_once_in_order(arrivals: list[int]) -> None:
    tracker: SequenceTracker[int] = SequenceTracker()
    released: list[int] = []
    for seq in arrivals:
        released.extend(tracker.offer(seq, seq))
    released.extend(tracker.skip_through(40))
    assert released == sorted(set(arrivals))
