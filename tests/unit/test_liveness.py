import random

import pytest

from cim.core.liveness import (
    MAX_SWEEP_INTERVAL,
    SWEEP_SLACK,
    Backoff,
    HeartbeatPolicy,
    next_sweep_at,
)


def test_client_pings_only_after_the_interval_of_silence() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    assert not policy.ping_due(last_sent=100.0, now=109.9)
    assert policy.ping_due(last_sent=100.0, now=110.0)
    assert policy.next_ping_at(100.0) == 110.0


def test_server_evicts_only_streams_silent_past_the_timeout() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    assert not policy.is_idle(last_heard=0.0, now=30.0)
    assert policy.is_idle(last_heard=0.0, now=30.1)
    assert policy.idle_deadline(last_heard=5.0) == 35.0


def test_the_sweep_wakes_just_after_the_earliest_deadline() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    wake = next_sweep_at([130.0, 100.4, 129.0], now=100.0, policy=policy)
    assert wake == 100.4 + SWEEP_SLACK
    assert policy.is_idle(last_heard=100.4 - 30, now=wake)


def test_the_sweep_looks_again_within_a_second_without_a_nearer_deadline() -> None:
    # Streams that appear while it sleeps have deadlines it does not know yet.
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    assert next_sweep_at([], now=100.0, policy=policy) == 100.0 + MAX_SWEEP_INTERVAL
    assert next_sweep_at([500.0], now=100.0, policy=policy) == 100.0 + MAX_SWEEP_INTERVAL
    short = HeartbeatPolicy(ping_interval=0.2, idle_timeout=0.6)
    assert next_sweep_at([], now=100.0, policy=short) == 100.0 + 0.2


def test_the_sweep_never_spins_on_a_deadline_already_past() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    assert next_sweep_at([90.0], now=100.0, policy=policy) == 100.0 + SWEEP_SLACK


def test_a_silent_stream_is_evicted_within_a_second_of_its_deadline() -> None:
    """A simulated sweep loop: streams fall silent at arbitrary moments (some
    while the sweep sleeps); each is evicted at most a moment after its deadline."""
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    silent_from = {1: 0.0, 2: 0.37, 3: 12.9, 4: 29.99, 5: 41.5}
    evicted: dict[int, float] = {}
    now = 0.0
    while len(evicted) < len(silent_from) and now < 200:
        for key, heard in silent_from.items():
            if key not in evicted and heard <= now and policy.is_idle(heard, now):
                evicted[key] = now
        known = [
            policy.idle_deadline(heard)
            for key, heard in silent_from.items()
            if key not in evicted and heard <= now
        ]
        now = next_sweep_at(known, now, policy)
    for key, heard in silent_from.items():
        assert 0 < evicted[key] - policy.idle_deadline(heard) <= 1.0, (key, evicted[key])


def test_a_client_pinging_on_time_is_never_idle() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    last_heard = 0.0
    for now in range(0, 1000):
        if policy.ping_due(last_heard, float(now)):
            last_heard = float(now)
        assert not policy.is_idle(last_heard, float(now))


@pytest.mark.parametrize(("interval", "timeout"), [(0, 30), (10, 0), (10, 10), (30, 10)])
def test_inconsistent_policies_are_rejected(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError):
        HeartbeatPolicy(ping_interval=interval, idle_timeout=timeout)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    backoff = Backoff(base=1.0, cap=9.0, retries=6)
    delays = list(backoff.delays(random.Random(7)))
    assert len(delays) == 6
    ceilings = [1, 2, 4, 8, 9, 9]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_spreads_clients_apart() -> None:
    backoff = Backoff(base=3.0, cap=9.0, retries=1)
    firsts = {round(next(backoff.delays(random.Random(seed))), 3) for seed in range(50)}
    assert len(firsts) > 40


def test_backoff_with_no_retries_yields_nothing() -> None:
    assert list(Backoff(retries=0).delays()) == []
