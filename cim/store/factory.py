"""Opens the store a URL names: in memory, Redis, or a Redis Cluster."""

from __future__ import annotations

from urllib.parse import urlsplit

from cim.store.base import Store
from cim.store.keys import DEFAULT_PREFIX
from cim.store.memory import MemoryStore

REDIS_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def open_store(url: str | None, prefix: str = DEFAULT_PREFIX) -> Store:
    """The store for ``url``: None, "" or ``memory://`` for process memory;
    ``redis://``, ``rediss://`` or ``unix://`` for Redis; ``redis+cluster://``
    (``rediss+cluster://``) for a Redis Cluster. ``prefix`` starts every Redis key.

    Raises ValueError for any other URL. Nothing is connected yet: the first
    call does that (and raises ``cim.errors.Unavailable`` if Redis is down).
    """
    if not url or url == "memory://":
        return MemoryStore()
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES or scheme in CLUSTER_SCHEMES:
        # Imported here so the in-memory store never needs redis-py.
        from cim.store.redis import RedisStore

        return RedisStore.from_url(url, prefix, cluster=scheme in CLUSTER_SCHEMES)
    known = ", ".join(f"{s}://" for s in ("memory", *REDIS_SCHEMES, *CLUSTER_SCHEMES))
    raise ValueError(f"unsupported store URL {url!r}: the scheme must be one of {known}")
