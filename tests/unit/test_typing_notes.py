"""The typing notes' pure parts: the throttle a chat server and a client
share, the server's gate, and the board a receiving client shows."""

from __future__ import annotations

import pytest

from cim.core.typing_notes import SHOW_FOR, TypingBoard, TypingGate, TypingThrottle


class Clock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_one_typing_per_interval_and_a_stop_only_after_a_forwarded_one() -> None:
    clock = Clock()
    throttle: TypingThrottle[str] = TypingThrottle(3.0, clock=clock)
    assert not throttle.allow("c", stopped=True)
    assert throttle.allow("c")
    clock.now += 2.99
    assert not throttle.allow("c")
    assert throttle.allow("c", stopped=True)
    assert not throttle.allow("c", stopped=True)
    # Stopped, then typing again within the interval: still one per interval.
    assert not throttle.allow("c")
    clock.now += 0.01
    assert throttle.allow("c")


def test_a_reset_lets_the_next_note_out_at_once() -> None:
    clock = Clock()
    throttle: TypingThrottle[str] = TypingThrottle(3.0, clock=clock)
    assert throttle.allow("c")
    throttle.reset("c")
    throttle.reset("never-seen")
    assert throttle.allow("c")
    assert not throttle.allow("c", stopped=False)


def test_keys_are_forgotten_once_nothing_they_showed_can_still_be_shown() -> None:
    clock = Clock()
    throttle: TypingThrottle[str] = TypingThrottle(3.0, forget_after=SHOW_FOR, clock=clock)
    for key in "abc":
        assert throttle.allow(key)
        clock.now += 1
    assert len(throttle) == 3
    clock.now += SHOW_FOR - 3  # "a" is SHOW_FOR old
    assert throttle.allow("d")
    assert len(throttle) == 3
    # A stop for a forgotten note ends nothing a receiver still shows.
    assert not throttle.allow("a", stopped=True)


def test_past_max_keys_the_least_recently_forwarded_goes() -> None:
    throttle: TypingThrottle[int] = TypingThrottle(3.0, max_keys=2, clock=Clock())
    assert throttle.allow(1) and throttle.allow(2) and throttle.allow(3)
    assert len(throttle) == 2
    assert throttle.allow(1)  # forgotten: goes out again
    assert not throttle.allow(3)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        TypingThrottle(-1.0)
    with pytest.raises(ValueError):
        TypingThrottle(7.0, forget_after=6.0)
    with pytest.raises(ValueError):
        TypingThrottle(max_keys=0)


def test_the_gate_counts_every_note_it_sees() -> None:
    clock = Clock()
    gate = TypingGate(rate=2.0, burst=2, clock=clock)
    assert gate.flood_refusal(1) is None and gate.allow(1, "g:1", False)
    assert gate.flood_refusal(1) is None and not gate.allow(1, "g:1", False)
    refusal = gate.flood_refusal(1)
    assert refusal is not None
    assert refusal.message.startswith(
        "too many typing notes from this user: the limit is 2 a second (bursts of 2)"
    )
    assert gate.flood_refusal(2) is None  # another user's bucket
    gate.message_sent(1, "g:1")
    clock.now += 0.5
    assert gate.flood_refusal(1) is None and gate.allow(1, "g:1", False)
    gate.count("route_failed")
    assert gate.counts == {
        "forwarded": 2,
        "throttled": 1,
        "flood": 1,
        "invalid": 0,
        "not_member": 0,
        "refused_by_route": 0,
        "route_failed": 1,
    }


def test_the_board_shows_a_typist_until_the_note_expires_stops_or_is_answered() -> None:
    clock = Clock()
    board = TypingBoard(6.0, clock=clock)
    assert board.next_change() is None
    assert board.note("p:1:2", 2, "bob", stopped=False)
    clock.now += 1
    assert board.note("g:5", 3, "cat", stopped=False)
    clock.now += 1
    assert not board.note("p:1:2", 2, "bob", stopped=False)  # a renewal, not a start
    assert [(t.conversation_id, t.user_name) for t in board.typing()] == [
        ("g:5", "cat"),
        ("p:1:2", "bob"),
    ]
    assert board.next_change() == clock.now + 5
    assert board.clear("p:1:2", 2) and not board.clear("p:1:2", 2)
    assert not board.note("g:5", 3, "cat", stopped=True)
    assert board.typing() == []
    board.note("g:5", 3, "cat", stopped=False)
    clock.now += 6
    assert board.typing() == [] and board.next_change() is None


def test_a_note_just_after_the_typists_message_is_taken_for_the_one_before_it() -> None:
    clock = Clock()
    board = TypingBoard(6.0, answer_grace=1.0, clock=clock)
    board.note("p:1:2", 2, "bob", stopped=False)
    assert board.clear("p:1:2", 2)
    clock.now += 0.5
    assert not board.note("p:1:2", 2, "bob", stopped=False)  # it overtook its note
    assert board.note("g:5", 2, "bob", stopped=False)  # elsewhere: shown
    clock.now += 0.5
    assert board.note("p:1:2", 2, "bob", stopped=False)  # a new note
