"""Unit tests for cim.core.placement: how a route picks a chat server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

import pytest

from cim.core.members import Member, MemberKind
from cim.core.placement import (
    ALGORITHMS,
    ConsistentHash,
    LeastConnected,
    Random,
    RoundRobin,
    make_chooser,
)
from cim.errors import Unavailable

USERS = range(1, 10_001)


def server(member_id: str, connections: int = 0) -> Member:
    return Member(MemberKind.SERVER, member_id, f"{member_id}.local:7000", connections)


def servers(count: int, prefix: str = "server") -> list[Member]:
    return [server(f"{prefix}-{i}") for i in range(count)]


def assignment(chooser: ConsistentHash, candidates: Sequence[Member]) -> dict[int, str]:
    return {user: chooser.choose(user, candidates).member_id for user in USERS}


# --- consistent hash -------------------------------------------------------------------------


def test_consistent_hash_is_deterministic_for_the_same_chooser() -> None:
    chooser = ConsistentHash()
    candidates = servers(4)
    first = assignment(chooser, candidates)
    assert assignment(chooser, candidates) == first


def test_consistent_hash_agrees_across_independent_choosers() -> None:
    candidates = servers(4)
    assert assignment(ConsistentHash(), candidates) == assignment(ConsistentHash(), candidates)


def test_consistent_hash_agrees_across_processes_with_different_hash_seeds() -> None:
    # Several routes run as separate processes: they must send a user to the same server,
    # so the ring must not depend on Python's per-process str hashing.
    script = (
        "from cim.core.members import Member, MemberKind\n"
        "from cim.core.placement import ConsistentHash\n"
        "c = ConsistentHash()\n"
        "s = [Member(MemberKind.SERVER, f'server-{i}', 'x:1') for i in range(4)]\n"
        "print(','.join(c.choose(u, s).member_id for u in range(200)))\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    candidates = servers(4)
    chooser = ConsistentHash()
    in_process = ",".join(chooser.choose(u, candidates).member_id for u in range(200))
    assert outputs == {in_process + "\n"}


@pytest.mark.parametrize("count", [3, 4, 5])
def test_consistent_hash_spreads_users_evenly(count: int) -> None:
    candidates = servers(count)
    per_server = Counter(assignment(ConsistentHash(), candidates).values())
    assert set(per_server) == {s.member_id for s in candidates}
    mean = len(USERS) / count
    for member_id, load in per_server.items():
        assert abs(load - mean) <= 0.35 * mean, (member_id, load, mean)


def test_consistent_hash_ignores_candidate_order() -> None:
    candidates = servers(5)
    shuffled = list(candidates)
    random.Random(7).shuffle(shuffled)
    reversed_ = list(reversed(candidates))
    chooser = ConsistentHash()
    expected = assignment(ConsistentHash(), candidates)
    assert assignment(chooser, shuffled) == expected
    assert assignment(chooser, reversed_) == expected


@pytest.mark.parametrize("count", [3, 4, 5])
def test_consistent_hash_join_moves_about_one_share_and_only_to_the_new_server(
    count: int,
) -> None:
    before_servers = servers(count)
    newcomer = server("server-new")
    chooser = ConsistentHash()
    before = assignment(chooser, before_servers)
    after = assignment(chooser, [*before_servers, newcomer])

    moved = [user for user in USERS if before[user] != after[user]]
    assert all(after[user] == newcomer.member_id for user in moved)
    assert {user for user in USERS if after[user] == newcomer.member_id} == set(moved)
    expected_share = 1 / (count + 1)
    assert 0.5 * expected_share <= len(moved) / len(USERS) <= 1.5 * expected_share


@pytest.mark.parametrize("count", [3, 4, 5])
def test_consistent_hash_leave_moves_only_the_leaving_servers_users(count: int) -> None:
    candidates = servers(count)
    chooser = ConsistentHash()
    before = assignment(chooser, candidates)
    leaving = candidates[1]
    after = assignment(chooser, [s for s in candidates if s is not leaving])

    moved = {user for user in USERS if before[user] != after[user]}
    assert moved == {user for user in USERS if before[user] == leaving.member_id}
    assert leaving.member_id not in after.values()
    # The orphans are spread over the survivors, not dumped on a single one.
    assert len({after[user] for user in moved}) > 1


def test_consistent_hash_returns_to_previous_assignment_when_server_comes_back() -> None:
    candidates = servers(4)
    chooser = ConsistentHash()
    before = assignment(chooser, candidates)
    assignment(chooser, candidates[:3])
    assert assignment(chooser, candidates) == before


def test_consistent_hash_returns_the_candidate_object_passed_in() -> None:
    chooser = ConsistentHash()
    old = [server("a", 1), server("b", 1)]
    chosen_id = chooser.choose(42, old).member_id
    fresh = [server("a", 9), server("b", 9)]
    chosen = chooser.choose(42, fresh)
    assert chosen.member_id == chosen_id
    assert any(chosen is candidate for candidate in fresh)
    assert chosen.connections == 9


def test_consistent_hash_single_server_gets_everyone() -> None:
    only = server("solo")
    chooser = ConsistentHash()
    assert {chooser.choose(user, [only]).member_id for user in range(500)} == {"solo"}


# --- round robin -----------------------------------------------------------------------------


def test_round_robin_cycles_over_all_servers_in_id_order() -> None:
    candidates = [server("c"), server("a"), server("b")]
    chooser = RoundRobin()
    picks = [chooser.choose(user, candidates).member_id for user in range(9)]
    assert picks == ["a", "b", "c"] * 3


def test_round_robin_order_does_not_depend_on_candidate_order() -> None:
    candidates = servers(4)
    one, other = RoundRobin(), RoundRobin()
    shuffled = list(candidates)
    random.Random(3).shuffle(shuffled)
    for user in range(12):
        assert one.choose(user, candidates).member_id == other.choose(user, shuffled).member_id


def test_round_robin_ignores_user_id() -> None:
    candidates = servers(3)
    chooser = RoundRobin()
    picks = [chooser.choose(7, candidates).member_id for _ in range(3)]
    assert sorted(picks) == sorted(s.member_id for s in candidates)


# --- random ----------------------------------------------------------------------------------


def test_random_only_returns_candidates_and_reaches_each() -> None:
    candidates = servers(4)
    chooser = Random(random.Random(1234))
    picks = [chooser.choose(user, candidates) for user in range(400)]
    assert all(any(pick is c for c in candidates) for pick in picks)
    assert {pick.member_id for pick in picks} == {c.member_id for c in candidates}


def test_random_is_reproducible_with_a_seeded_rng() -> None:
    candidates = servers(5)
    one, other = Random(random.Random(99)), Random(random.Random(99))
    first = [one.choose(u, candidates).member_id for u in range(50)]
    second = [other.choose(u, candidates).member_id for u in range(50)]
    assert first == second


def test_random_without_rng_still_returns_a_candidate() -> None:
    candidates = servers(3)
    chooser = Random()
    ids = {c.member_id for c in candidates}
    assert all(chooser.choose(u, candidates).member_id in ids for u in range(50))


# --- least connected -------------------------------------------------------------------------


def test_least_connected_picks_fewest_connections() -> None:
    candidates = [server("a", 10), server("b", 3), server("c", 7)]
    assert LeastConnected().choose(1, candidates).member_id == "b"


@pytest.mark.parametrize(
    "order", [("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a")], ids=["abc", "cba", "bca"]
)
def test_least_connected_breaks_ties_by_id(order: tuple[str, ...]) -> None:
    load = {"a": 5, "b": 2, "c": 2}
    candidates = [server(member_id, load[member_id]) for member_id in order]
    assert LeastConnected().choose(1, candidates).member_id == "b"


def test_least_connected_follows_updated_counts() -> None:
    chooser = LeastConnected()
    assert chooser.choose(1, [server("a", 0), server("b", 1)]).member_id == "a"
    assert chooser.choose(1, [server("a", 2), server("b", 1)]).member_id == "b"


# --- shared behaviour, factory ---------------------------------------------------------------


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("empty", [[], ()], ids=["list", "tuple"])
def test_every_algorithm_rejects_empty_candidates(name: str, empty: Sequence[Member]) -> None:
    with pytest.raises(Unavailable, match="no chat server"):
        make_chooser(name).choose(1, empty)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_returns_one_of_the_candidates(name: str) -> None:
    chooser = make_chooser(name)
    candidates = servers(3)
    for user in range(20):
        chosen = chooser.choose(user, candidates)
        assert any(chosen is c for c in candidates)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("consistent-hash", ConsistentHash),
        ("round-robin", RoundRobin),
        ("random", Random),
        ("least-connected", LeastConnected),
    ],
)
def test_make_chooser_maps_names(name: str, expected: type) -> None:
    assert isinstance(make_chooser(name), expected)


def test_make_chooser_covers_every_advertised_algorithm() -> None:
    assert set(ALGORITHMS) == {"consistent-hash", "round-robin", "random", "least-connected"}


def test_make_chooser_returns_independent_instances() -> None:
    candidates = servers(3)
    first, second = make_chooser("round-robin"), make_chooser("round-robin")
    first.choose(1, candidates)
    assert second.choose(1, candidates).member_id == "server-0"


@pytest.mark.parametrize("name", ["", "roundrobin", "Round-Robin", "hash", "consistent_hash"])
def test_make_chooser_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown routing algorithm") as info:
        make_chooser(name)
    message = str(info.value)
    assert repr(name) in message
    assert all(algorithm in message for algorithm in ALGORITHMS)
