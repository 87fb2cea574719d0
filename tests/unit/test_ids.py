"""Unit tests for cim.core.ids: message, session and trace identifiers."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cim.core.ids import MessageIdGenerator, message_time_ms, new_session_id, new_trace_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MESSAGE_ID = re.compile(f"[{CROCKFORD}]{{21}}")
NOW_MS = 1_700_000_000_000


def constant(ms: int) -> Callable[[], int]:
    return lambda: ms


def sequence(values: list[int]) -> Callable[[], int]:
    it: Iterator[int] = iter(values)
    return lambda: next(it)


def timestamp_of(message_id: str) -> int:
    value = 0
    for char in message_id[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def assert_strictly_increasing(ids: list[str]) -> None:
    assert all(a < b for a, b in itertools.pairwise(ids)), "ids not strictly increasing"


# --- message ids -----------------------------------------------------------------------------


def test_many_ids_in_the_same_millisecond_are_unique_and_sorted() -> None:
    # More than the 4096-per-millisecond counter, to cross its exhaustion.
    generator = MessageIdGenerator(clock_ms=constant(NOW_MS))
    ids = [generator.next() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert_strictly_increasing(ids)


def test_ids_have_fixed_length_and_crockford_alphabet() -> None:
    generator = MessageIdGenerator(clock_ms=constant(NOW_MS))
    for message_id in (generator.next() for _ in range(5000)):
        assert len(message_id) == 21
        assert MESSAGE_ID.fullmatch(message_id), message_id


def test_ids_have_fixed_length_for_small_and_large_timestamps() -> None:
    for ms in (1, 1000, NOW_MS, 2**48 - 1):
        assert len(MessageIdGenerator(clock_ms=constant(ms)).next()) == 21


def test_id_encodes_the_clock_timestamp() -> None:
    assert timestamp_of(MessageIdGenerator(clock_ms=constant(NOW_MS)).next()) == NOW_MS


def test_ids_increase_with_the_clock() -> None:
    generator = MessageIdGenerator(clock_ms=sequence([NOW_MS, NOW_MS + 1, NOW_MS + 1000]))
    ids = [generator.next() for _ in range(3)]
    assert_strictly_increasing(ids)
    assert [timestamp_of(i) for i in ids] == [NOW_MS, NOW_MS + 1, NOW_MS + 1000]


def test_ids_still_increase_when_the_clock_steps_backwards() -> None:
    clock = [NOW_MS, NOW_MS + 5, NOW_MS - 1000, NOW_MS - 2000, NOW_MS + 5, NOW_MS + 3, NOW_MS + 6]
    generator = MessageIdGenerator(clock_ms=sequence(clock))
    ids = [generator.next() for _ in clock]
    assert len(set(ids)) == len(ids)
    assert_strictly_increasing(ids)
    # The timestamp never goes backwards either.
    stamps = [timestamp_of(i) for i in ids]
    assert stamps == sorted(stamps)
    assert stamps[-1] == NOW_MS + 6


def test_ids_increase_across_a_backwards_step_after_counter_exhaustion() -> None:
    values = [NOW_MS] * 5000 + [NOW_MS - 10] * 100 + [NOW_MS + 1] * 10
    generator = MessageIdGenerator(clock_ms=sequence(values))
    ids = [generator.next() for _ in values]
    assert len(set(ids)) == len(ids)
    assert_strictly_increasing(ids)


def test_two_generators_give_distinct_ids_in_the_same_millisecond() -> None:
    first = MessageIdGenerator(clock_ms=constant(NOW_MS))
    second = MessageIdGenerator(clock_ms=constant(NOW_MS))
    a = [first.next() for _ in range(100)]
    b = [second.next() for _ in range(100)]
    assert not set(a) & set(b)
    assert len(set(a) | set(b)) == 200


def test_ids_of_different_generators_sort_by_time() -> None:
    # Routes don't coordinate; an earlier millisecond still sorts first.
    early = MessageIdGenerator(clock_ms=constant(NOW_MS))
    late = MessageIdGenerator(clock_ms=constant(NOW_MS + 1))
    early_ids = [early.next() for _ in range(50)]
    late_id = late.next()
    assert all(message_id < late_id for message_id in early_ids)


def test_default_clock_uses_wall_time() -> None:
    before = time.time_ns() // 1_000_000
    message_id = MessageIdGenerator().next()
    after = time.time_ns() // 1_000_000
    assert before <= timestamp_of(message_id) <= after


def test_default_clock_ids_are_unique_and_sorted() -> None:
    generator = MessageIdGenerator()
    ids = [generator.next() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert_strictly_increasing(ids)


def test_concurrent_threads_get_unique_ids() -> None:
    generator = MessageIdGenerator(clock_ms=constant(NOW_MS))
    results: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(generator.next() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [message_id for out in results for message_id in out]
    assert len(set(everything)) == 8000
    for out in results:
        assert_strictly_increasing(out)


# --- session and trace ids -------------------------------------------------------------------


def test_session_ids_are_unique() -> None:
    ids = {new_session_id() for _ in range(5000)}
    assert len(ids) == 5000


def test_session_ids_are_url_safe_and_long_enough() -> None:
    for _ in range(500):
        session_id = new_session_id()
        assert re.fullmatch(r"[A-Za-z0-9_-]+", session_id), session_id
        assert len(session_id) >= 16


def test_trace_ids_are_unique_short_hex() -> None:
    ids = [new_trace_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", trace_id) for trace_id in ids)


def test_a_message_id_carries_its_creation_time() -> None:
    ids = MessageIdGenerator(clock_ms=lambda: 1_700_000_000_123)
    assert message_time_ms(ids.next()) == 1_700_000_000_123


@pytest.mark.parametrize("foreign", ["", "short", "not-ours-at-all-!!!!!!"])
def test_a_foreign_message_id_has_no_time(foreign: str) -> None:
    assert message_time_ms(foreign) == 0
