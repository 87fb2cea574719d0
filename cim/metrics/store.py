"""Store operation latencies and errors, measured by wrapping a store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from prometheus_client import Counter, Histogram

from cim.errors import CimError
from cim.store.base import Store

# The Store protocol's coroutine methods, measured one label each.
_MEASURED = {
    name
    for name, value in vars(Store).items()
    if not name.startswith("_") and callable(value) and name not in ("online_sessions", "aclose")
}


class MeasuredStore:
    """A store whose every operation observes its latency (and counts its
    failures) under the operation's name. Anything else passes through."""

    def __init__(self, store: Store, seconds: Histogram, errors: Counter) -> None:
        self._store = store
        self._seconds = seconds
        self._errors = errors

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if name in _MEASURED:
            target = _timed(target, self._seconds.labels(name), self._errors.labels(name))
        elif name == "online_sessions":
            target = _counted_generator(target, self._errors.labels(name))
        setattr(self, name, target)  # found directly from now on
        return target


def measured(store: Store, seconds: Histogram, errors: Counter) -> Store:
    return cast(Store, MeasuredStore(store, seconds, errors))


def _timed(method: Callable[..., Any], seconds: Histogram, errors: Counter) -> Callable[..., Any]:
    observe = seconds.observe
    fail = errors.inc
    clock = time.perf_counter

    async def call(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return await method(*args, **kwargs)
        except CimError:
            fail()
            raise
        finally:
            observe(clock() - start)

    return call


def _counted_generator(
    method: Callable[..., AsyncIterator[Any]], errors: Counter
) -> Callable[..., AsyncIterator[Any]]:
    async def generate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for item in method(*args, **kwargs):
                yield item
        except CimError:
            errors.inc()
            raise

    return generate
