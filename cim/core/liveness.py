"""Heartbeat deadlines and reconnect back-off, as pure functions of time."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class HeartbeatPolicy:
    """The client pings after ``ping_interval`` without sending anything; the
    server ends a stream it has heard nothing from for ``idle_timeout``."""

    ping_interval: float = 10.0
    idle_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.ping_interval <= 0 or self.idle_timeout <= 0:
            raise ValueError("heartbeat interval and idle timeout must be positive")
        if self.idle_timeout <= self.ping_interval:
            raise ValueError("idle timeout must be longer than the ping interval")

    def ping_due(self, last_sent: float, now: float) -> bool:
        """Client side: whether to ping now, given when it last sent a frame."""
        return now - last_sent >= self.ping_interval

    def next_ping_at(self, last_sent: float) -> float:
        return last_sent + self.ping_interval

    def is_idle(self, last_heard: float, now: float) -> bool:
        """Server side: whether a stream last heard from at ``last_heard`` is dead."""
        return now - last_heard > self.idle_timeout

    def idle_deadline(self, last_heard: float) -> float:
        """Server side: when a stream last heard from at ``last_heard`` dies
        (it is idle from just after this instant on)."""
        return last_heard + self.idle_timeout

    @property
    def sweep_interval(self) -> float:
        """The longest the server's idle sweep sleeps: streams that appear
        meanwhile are looked at within this, so none outlives its deadline by
        more than about a second."""
        return min(self.idle_timeout / 3, MAX_SWEEP_INTERVAL)


# The idle sweep sleeps at most this long, and wakes this long after a deadline
# (idleness starts just after it; waking exactly on it would find nothing).
MAX_SWEEP_INTERVAL = 1.0
SWEEP_SLACK = 0.01


def next_sweep_at(deadlines: Iterable[float], now: float, policy: HeartbeatPolicy) -> float:
    """When the idle sweep should look next: just after the earliest of the
    streams' idle ``deadlines``, and no later than a sweep interval from
    ``now``; never sooner than a moment from now (no busy loop on a deadline
    that just passed)."""
    wake = now + policy.sweep_interval
    for deadline in deadlines:
        wake = min(wake, deadline + SWEEP_SLACK)
    return max(wake, now + SWEEP_SLACK)


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential back-off: attempt k waits a random time in
    [base * 2**k / 2, base * 2**k], capped at ``cap``; ``retries`` attempts in all."""

    base: float = 1.0
    cap: float = 9.0
    retries: int = 10

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or random.Random()
        for attempt in range(self.retries):
            ceiling = min(self.cap, self.base * (2**attempt))
            yield rng.uniform(ceiling / 2, ceiling)
