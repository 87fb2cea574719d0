"""Rate limits: token buckets, and a keyed limiter (per user, per address)
with bounded memory. Pure logic: time comes from an injectable clock.

A bucket holds up to ``burst`` tokens and gains ``rate`` a second; each
allowed event takes one. A rate of 0 (or less) turns a limiter off.

:class:`KeyedLimiter` keeps one bucket per key, least recently used first.
A bucket idle long enough to be full again (``burst / rate`` seconds) says
nothing a fresh bucket would not, so such buckets are dropped; past ``max_keys``
the least recently used one is dropped too (its key then starts again with a
full bucket: under a flood of distinct keys the limit errs on the lenient
side, never on the memory side).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar
from urllib.parse import unquote

from cim.errors import ResourceExhausted

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)

DEFAULT_MAX_KEYS = 100_000


def _check(rate: float, burst: float) -> None:
    if math.isnan(rate) or math.isinf(rate):
        raise ValueError("a rate must be a finite number")
    if rate > 0 and not burst >= 1:
        raise ValueError("a burst must be at least 1 when the rate is on")


class TokenBucket:
    """``rate`` events a second on average, up to ``burst`` at once."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        _check(rate, burst)
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def try_take(self, now: float, cost: float = 1.0) -> bool:
        """Takes ``cost`` tokens if there are that many; False (taking none) if not."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0 when they are now)."""
        self._refill(now)
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def full_at(self) -> float:
        """When the bucket will be full again if nothing is taken."""
        return self.updated + (self.burst - self.tokens) / self.rate


class KeyedLimiter(Generic[K]):
    """One :class:`TokenBucket` per key; ``rate <= 0`` allows everything."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Clock = time.monotonic,
    ) -> None:
        _check(rate, burst)
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()
        # How many takes were refused, ever (metrics read it).
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: K) -> bool:
        """Takes one token from the key's bucket; False if it is empty."""
        if not self.enabled:
            return True
        now = self._clock()
        self._evict_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.try_take(now):
            return True
        self.refused += 1
        return False

    def refusal(self, key: K, what: str) -> ResourceExhausted | None:
        """Takes one token for ``key``; over the limit, the error to answer
        with (naming ``what``, the limit and when to retry) instead."""
        if self.allow(key):
            return None
        return ResourceExhausted(describe_limit(what, self.rate, self.burst, self.retry_after(key)))

    def retry_after(self, key: K) -> float:
        """Seconds until the key has a token again (0 when it has one now)."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after(self._clock())

    def _evict_idle(self, now: float) -> None:
        # Least recently used first. A bucket is full at most burst/rate
        # seconds after its last use, so every key idle longer than that
        # reaches the front and goes; amortised O(1) a call.
        buckets = self._buckets
        while buckets:
            key, bucket = next(iter(buckets.items()))
            if bucket.full_at() > now:
                return
            del buckets[key]


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string, without the port:
    ``ipv4:10.0.0.1:5000`` -> ``10.0.0.1``, ``ipv6:[::1]:5000`` (or its
    %-encoded form) -> ``::1``; anything else (``unix:...``) as it is."""
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    rest = unquote(rest)
    if rest.startswith("["):
        host, bracket, _ = rest[1:].partition("]")
        return host if bracket else rest
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return rest


def describe_limit(what: str, rate: float, burst: float, retry_after: float) -> str:
    """The status message of a refused event: the limit and when to retry."""
    return (
        f"too many {what}: the limit is {rate:g} a second (bursts of {burst:g}); "
        f"retry in {max(retry_after, 0.001):.3g} s"
    )
