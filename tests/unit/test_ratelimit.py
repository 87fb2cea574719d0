"""Token buckets and the keyed limiter, on a fake clock."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import pytest

from cim.config import RouteConfig, ServerConfig
from cim.core.ratelimit import KeyedLimiter, TokenBucket, describe_limit, peer_host
from cim.errors import ResourceExhausted
from cim.route.service import RouteLimits
from cim.testing import fast_route_config as route_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(0.1)
    assert not bucket.try_take(0.05)
    assert bucket.try_take(0.1)
    assert not bucket.try_take(0.1)


def test_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    assert bucket.try_take(0.0) and bucket.try_take(0.0)
    # An hour idle refills to 2, not 36,000.
    assert [bucket.try_take(3600.0) for _ in range(3)] == [True, True, False]
    assert bucket.full_at() == pytest.approx(3600.2)


def test_bucket_ignores_a_clock_going_back() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)
    assert bucket.try_take(11.0)


def test_limiter_keeps_one_bucket_per_key() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=1, burst=2, clock=clock)
    assert [limiter.allow(1) for _ in range(3)] == [True, True, False]
    assert limiter.allow(2) and limiter.allow(2)  # other users are unaffected
    assert limiter.retry_after(1) == pytest.approx(1.0)
    assert limiter.retry_after(3) == 0.0  # unknown key: a full bucket
    clock.advance(1.0)
    assert limiter.allow(1)
    assert not limiter.allow(1)


def test_rate_zero_turns_the_limiter_off_and_stores_nothing() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=0, burst=0, clock=FakeClock())
    assert not limiter.enabled
    assert all(limiter.allow("a") for _ in range(10_000))
    assert len(limiter) == 0
    assert limiter.retry_after("a") == 0.0


def test_idle_keys_are_dropped_once_their_bucket_would_be_full() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=10, burst=5, clock=clock)
    for key in range(100):
        limiter.allow(key)
    assert len(limiter) == 100
    clock.advance(0.05)  # 0.5 token back: not full yet, nothing is forgotten
    limiter.allow(1000)
    assert len(limiter) == 101
    clock.advance(0.1)  # full again after 0.1 s: all idle keys go
    limiter.allow(1000)
    assert len(limiter) == 1


def test_dropping_an_idle_key_changes_nothing_for_it() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=2, burst=2, clock=clock)
    assert limiter.allow(7) and limiter.allow(7) and not limiter.allow(7)
    clock.advance(1.0)
    limiter.allow(8)  # 7's bucket is full again: dropped
    assert len(limiter) == 1
    assert [limiter.allow(7) for _ in range(3)] == [True, True, False]


def test_the_number_of_keys_is_capped_least_recently_used_first() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=1, burst=1, max_keys=3, clock=clock)
    for key in (1, 2, 3):
        assert limiter.allow(key)
    assert not limiter.allow(1)  # 1 is now the most recently used
    assert limiter.allow(4)  # over the cap: 2 (least recently used) goes
    assert len(limiter) == 3
    assert not limiter.allow(1) and not limiter.allow(3) and not limiter.allow(4)
    assert limiter.allow(2)  # forgotten: a fresh bucket


def test_memory_stays_bounded_under_a_flood_of_keys() -> None:
    clock = FakeClock()
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=0.001, burst=1, max_keys=50, clock=clock)
    for key in range(10_000):
        limiter.allow(key)
        clock.advance(0.001)
    assert len(limiter) == 50


@pytest.mark.parametrize(
    ("rate", "burst"), [(1, 0), (1, 0.5), (float("nan"), 1), (float("inf"), 1)]
)
def test_bad_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        KeyedLimiter(rate=rate, burst=burst)


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError):
        KeyedLimiter(rate=1, burst=1, max_keys=0)


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:54321", "127.0.0.1"),
        ("ipv4:10.1.2.3:80", "10.1.2.3"),
        ("ipv6:[::1]:54321", "::1"),
        ("ipv6:%5B::1%5D:54321", "::1"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("unix:/tmp/cim.sock", "unix:/tmp/cim.sock"),
        ("", ""),
    ],
)
def test_peer_host_strips_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_the_message_names_the_limit_and_the_wait() -> None:
    text = describe_limit("messages", 100, 200, 0.25)
    assert "100 a second" in text and "200" in text and "0.25 s" in text


# --- the route's limits ---------------------------------------------------------
def test_login_limits_count_each_address_apart() -> None:
    now = [0.0]
    config = route_config(max_logins_per_sec=1.0, login_burst=2)
    limits = RouteLimits(config, clock=lambda: now[0])

    def peer(address: str) -> Any:
        return SimpleNamespace(peer=lambda: address)

    one, other = peer("ipv4:10.0.0.1:5000"), peer("ipv4:10.0.0.1:6000")
    limits.login(one)
    limits.login(other)  # the same host from another port: the same budget
    with pytest.raises(ResourceExhausted):
        limits.login(one)
    limits.login(peer("ipv6:[2001:db8::1]:5000"))  # another address: its own budget
    limits.login(peer("ipv4:10.0.0.2:5000"))
    now[0] += 1.0
    limits.login(one)


def test_zero_turns_the_limits_off() -> None:
    limits = RouteLimits(route_config(max_msgs_per_sec=0, max_logins_per_sec=0))
    context: Any = SimpleNamespace(peer=lambda: "ipv4:10.0.0.1:5000")
    for _ in range(10_000):
        limits.message(1)
        limits.login(context)


def test_default_limits_are_on_and_generous() -> None:
    route = {f.name: f.default for f in fields(RouteConfig)}
    server = {f.name: f.default for f in fields(ServerConfig)}
    assert route["max_msgs_per_sec"] >= 50 and route["msg_burst"] >= 100
    assert route["max_logins_per_sec"] >= 10 and route["login_burst"] >= 20
    for name in ("max_msgs_per_sec", "msg_burst"):
        assert server[name] == route[name]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_msgs_per_sec": -1},
        {"max_msgs_per_sec": 5, "msg_burst": 0},
        {"max_logins_per_sec": 5, "login_burst": 0},
        {"max_logins_per_sec": float("nan")},
    ],
)
def test_bad_limit_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        route_config(**bad)


def test_refusal_names_the_limit_and_when_to_retry() -> None:
    now = [0.0]
    limiter: KeyedLimiter[int] = KeyedLimiter(2.0, 2, clock=lambda: now[0])
    assert limiter.refusal(7, "messages from this user") is None
    assert limiter.refusal(7, "messages from this user") is None
    refused = limiter.refusal(7, "messages from this user")
    assert isinstance(refused, ResourceExhausted)
    assert refused.message == (
        "too many messages from this user: the limit is 2 a second (bursts of 2); retry in 0.5 s"
    )
    now[0] = 0.5
    assert limiter.refusal(7, "messages from this user") is None
