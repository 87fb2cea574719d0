import random

import pytest

from cim.core.liveness import Backoff, HeartbeatPolicy, idle_streams


def test_client_pings_only_after_the_interval_of_silence() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    assert not policy.ping_due(last_sent=100.0, now=109.9)
    assert policy.ping_due(last_sent=100.0, now=110.0)
    assert policy.next_ping_at(100.0) == 110.0


def test_server_evicts_only_streams_silent_past_the_timeout() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    assert not policy.is_idle(last_heard=0.0, now=30.0)
    assert policy.is_idle(last_heard=0.0, now=30.1)
    heard = {1: 0.0, 2: 25.0, 3: 69.0}
    assert idle_streams(heard, now=70.0, policy=policy) == [1, 2]


def test_sweeps_are_frequent_enough_to_bound_eviction_delay() -> None:
    policy = HeartbeatPolicy(ping_interval=10, idle_timeout=30)
    # worst case: silent for the timeout, then up to one sweep interval more
    assert policy.idle_timeout + policy.sweep_interval <= 1.34 * policy.idle_timeout


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
