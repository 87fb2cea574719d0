"""The behaviour every Store must have. Runs against each implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cim.store import MemoryStore, SessionRecord, Store
from cim.store.base import OfflineEntry


@pytest.fixture(params=["memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    implementation: Store = MemoryStore()
    yield implementation
    await implementation.aclose()


async def test_accounts_get_unique_ids_and_names(store: Store) -> None:
    alice, created = await store.create_account("alice", "h1")
    bob, _ = await store.create_account("bob", "h2")
    assert created and alice.user_id != bob.user_id
    again, created_again = await store.create_account("alice", "other")
    assert again == alice and not created_again
    assert await store.get_account(alice.user_id) == alice
    assert await store.get_account_by_name("bob") == bob
    assert await store.get_account_by_name("carol") is None
    assert await store.get_accounts([alice.user_id, 999]) == {alice.user_id: alice}


async def test_concurrent_registrations_of_one_name_create_one_account(store: Store) -> None:
    results = await asyncio.gather(*(store.create_account("dup", f"h{i}") for i in range(20)))
    assert sum(created for _, created in results) == 1
    assert len({account.user_id for account, _ in results}) == 1


async def test_one_session_per_user_and_compare_and_set(store: Store) -> None:
    first = SessionRecord(1, "s1", "server-a")
    second = SessionRecord(1, "s2", "server-b")
    assert await store.claim_session(first, ttl=10) is None
    assert await store.claim_session(second, ttl=10) == first  # in the way
    assert await store.claim_session(second, ttl=10, replace_session_id="wrong") == first
    assert await store.claim_session(second, ttl=10, replace_session_id="s1") is None
    assert await store.get_session(1) == second
    assert not await store.release_session(1, "s1")  # stale session cannot clear the new one
    assert await store.get_session(1) == second
    assert await store.release_session(1, "s2")
    assert await store.get_session(1) is None


async def test_connected_sessions_are_listed_online(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.claim_session(SessionRecord(2, "s2", "b"), ttl=10)
    assert [s async for s in store.online_sessions()] == []  # logged in, not yet connected
    marked = await store.mark_connected(1, "s1", "a2", ttl=10)
    assert marked is not None and marked.connected and marked.server_id == "a2"
    assert await store.mark_connected(2, "wrong", "b", ttl=10) is None
    online = [s async for s in store.online_sessions()]
    assert [(s.user_id, s.server_id) for s in online] == [(1, "a2")]
    assert (await store.get_sessions([1, 2, 3])).keys() == {1, 2}


async def test_sessions_expire_unless_refreshed(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=0.3)
    await store.claim_session(SessionRecord(2, "s2", "a"), ttl=0.3)
    await asyncio.sleep(0.15)
    assert await store.refresh_sessions([(1, "s1"), (2, "nope")], ttl=0.3) == [True, False]
    await asyncio.sleep(0.25)
    assert await store.get_session(1) is not None
    assert await store.get_session(2) is None
    # an expired session no longer blocks a new login
    assert await store.claim_session(SessionRecord(2, "s3", "b"), ttl=5) is None


async def test_offline_messages_are_kept_in_order_until_removed(store: Store) -> None:
    for n in range(5):
        await store.store_offline(7, OfflineEntry(f"m{n}", f"payload{n}".encode()))
    assert await store.count_offline(7) == 5
    first = await store.peek_offline(7, 3)
    assert [e.entry_id for e in first] == ["m0", "m1", "m2"]
    assert await store.count_offline(7) == 5  # peek leaves them
    await store.remove_offline(7, ["m0", "m1"])
    rest = await store.peek_offline(7, 10)
    assert [(e.entry_id, e.payload) for e in rest] == [
        ("m2", b"payload2"),
        ("m3", b"payload3"),
        ("m4", b"payload4"),
    ]
    await store.remove_offline(7, ["m2", "m3", "m4", "unknown"])
    assert await store.peek_offline(7, 10) == []
    assert await store.count_offline(8) == 0


async def test_release_can_require_the_recorded_server(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.mark_connected(1, "s1", "b", ttl=10)
    assert not await store.release_session(1, "s1", server_id="a")  # a stale server's report
    assert await store.get_session(1) is not None
    assert await store.release_session(1, "s1", server_id="b")
