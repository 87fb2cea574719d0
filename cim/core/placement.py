"""How a route picks the chat server for a login.

Every algorithm is a pure function of (user id, candidate servers) plus, for
round robin and random, its own small state. Candidates are already filtered
(alive in the registry, not suspect); an empty list means no server at all.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Sequence
from typing import Protocol

from cim.core.members import Member
from cim.errors import Unavailable


class ServerChooser(Protocol):
    def choose(self, user_id: int, servers: Sequence[Member]) -> Member: ...


def _require(servers: Sequence[Member]) -> None:
    if not servers:
        raise Unavailable("no chat server available: none is registered and healthy")


def _md5_point(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode(), usedforsecurity=False).digest()[:8], "big")


class ConsistentHash:
    """MD5 ring with virtual nodes (CIM's default): a user keeps their server
    while it lives, and only the users of a leaving server move."""

    def __init__(self, virtual_nodes: int = 160) -> None:
        self._virtual_nodes = virtual_nodes
        self._ring_key: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []

    def _build(self, server_ids: tuple[str, ...]) -> None:
        ring = sorted(
            (_md5_point(f"{server_id}#{i}"), server_id)
            for server_id in server_ids
            for i in range(self._virtual_nodes)
        )
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        self._ring_key = server_ids

    def choose(self, user_id: int, servers: Sequence[Member]) -> Member:
        _require(servers)
        by_id = {server.member_id: server for server in servers}
        key = tuple(sorted(by_id))
        if key != self._ring_key:  # rebuilt only when membership changes
            self._build(key)
        index = bisect.bisect(self._points, _md5_point(str(user_id))) % len(self._points)
        return by_id[self._owners[index]]


class RoundRobin:
    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, user_id: int, servers: Sequence[Member]) -> Member:
        _require(servers)
        ordered = sorted(servers, key=lambda server: server.member_id)
        return ordered[next(self._counter) % len(ordered)]


class Random:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, user_id: int, servers: Sequence[Member]) -> Member:
        _require(servers)
        return self._rng.choice(list(servers))


class LeastConnected:
    """Fewest live connections as last reported; ties broken by id for stability."""

    def choose(self, user_id: int, servers: Sequence[Member]) -> Member:
        _require(servers)
        return min(servers, key=lambda server: (server.connections, server.member_id))


ALGORITHMS = ("consistent-hash", "round-robin", "random", "least-connected")


def make_chooser(name: str) -> ServerChooser:
    """The chooser for a configured algorithm name (see ``ALGORITHMS``)."""
    if name == "consistent-hash":
        return ConsistentHash()
    if name == "round-robin":
        return RoundRobin()
    if name == "random":
        return Random()
    if name == "least-connected":
        return LeastConnected()
    raise ValueError(f"unknown routing algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
