"""The behaviour every Store must have. Runs against each implementation:
in memory, on a standalone Redis and on a Redis Cluster (real servers, see
``tests/fixtures/redis_server.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import replace

import pytest

from cim.core import groups
from cim.core.groups import Change, Group, Member
from cim.core.names import existing_name_keys, name_keys
from cim.store import MemoryStore, SessionRecord, Store
from cim.store.base import (
    NOT_A_MEMBER,
    ConversationAppended,
    ConversationItem,
    ConversationPage,
    HistoryPage,
    InboxItem,
    PointedItem,
    PointerItem,
    Retention,
    SendClaim,
    SendKey,
)
from cim.store.redis import RedisStore


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Store]:
    implementation: Store
    if request.param == "memory":
        implementation = MemoryStore()
    else:
        # Only the Redis variants start (or reuse) a server.
        server = request.getfixturevalue(
            "redis_server" if request.param == "redis" else "redis_cluster"
        )
        implementation = RedisStore.from_url(server.url, key_prefix)
    yield implementation
    await implementation.aclose()


async def in_batches(calls: Iterable[Awaitable[object]], size: int = 50) -> None:
    """Awaits many calls, ``size`` at a time (bounded connections to Redis)."""
    pending = list(calls)
    for start in range(0, len(pending), size):
        await asyncio.gather(*pending[start : start + size])


async def online(store: Store) -> list[SessionRecord]:
    return [record async for record in store.online_sessions()]


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
    assert [u for u in (1, 2, 3) if await store.get_session(u) is not None] == [1, 2]


async def test_sessions_expire_unless_refreshed(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=0.3)
    await store.claim_session(SessionRecord(2, "s2", "a"), ttl=0.3)
    await asyncio.sleep(0.15)
    # A refresh far longer than the wait below: a loaded machine's late
    # wake-up must not expire the refreshed session (it was 50 ms of slack).
    assert await store.refresh_sessions([(1, "s1"), (2, "nope")], ttl=2.0) == [True, False]
    await asyncio.sleep(0.25)
    assert await store.get_session(1) is not None
    assert await store.get_session(2) is None
    # an expired session no longer blocks a new login
    assert await store.claim_session(SessionRecord(2, "s3", "b"), ttl=5) is None


async def test_release_can_require_the_recorded_server(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.mark_connected(1, "s1", "b", ttl=10)
    assert not await store.release_session(1, "s1", server_id="a")  # a stale server's report
    assert await store.get_session(1) is not None
    assert await store.release_session(1, "s1", server_id="b")


# --- added with the Redis store -----------------------------------------------


async def test_concurrent_claims_of_one_user_let_exactly_one_win(store: Store) -> None:
    records = [SessionRecord(5, f"s{n}", f"server-{n}") for n in range(20)]
    results = await asyncio.gather(*(store.claim_session(r, ttl=10) for r in records))
    winners = [record for record, result in zip(records, results, strict=True) if result is None]
    assert len(winners) == 1
    assert await store.get_session(5) == winners[0]
    # every loser was shown the winner
    assert all(result in (None, winners[0]) for result in results)


async def test_concurrent_takeovers_of_one_session_let_exactly_one_win(store: Store) -> None:
    await store.claim_session(SessionRecord(5, "old", "a"), ttl=10)
    records = [SessionRecord(5, f"new{n}", "b") for n in range(10)]
    results = await asyncio.gather(
        *(store.claim_session(r, ttl=10, replace_session_id="old") for r in records)
    )
    assert sum(result is None for result in results) == 1


async def test_claim_keeps_every_field_and_may_store_a_connected_record(store: Store) -> None:
    record = SessionRecord(3, "s1", "server-a", device_id="phone-1", connected=True)
    assert await store.claim_session(record, ttl=10) is None
    assert await store.get_session(3) == record
    assert await online(store) == [record]
    marked = await store.mark_connected(3, "s1", "server-b", ttl=10)
    assert marked == SessionRecord(3, "s1", "server-b", "phone-1", True)
    assert await store.get_session(3) == marked


async def test_mark_connected_fails_for_missing_and_released_sessions(store: Store) -> None:
    assert await store.mark_connected(4, "s1", "a", ttl=10) is None
    await store.claim_session(SessionRecord(4, "s1", "a"), ttl=10)
    assert await store.release_session(4, "s1")
    assert await store.mark_connected(4, "s1", "a", ttl=10) is None
    assert await store.get_session(4) is None
    assert await online(store) == []


async def test_release_takes_a_user_offline_and_a_new_login_brings_them_back(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.mark_connected(1, "s1", "a", ttl=10)
    assert [s.user_id for s in await online(store)] == [1]
    assert await store.release_session(1, "s1", server_id="a")
    assert await online(store) == []
    assert not await store.release_session(1, "s1")  # already gone
    await store.claim_session(SessionRecord(1, "s2", "b"), ttl=10)
    await store.mark_connected(1, "s2", "b", ttl=10)
    assert [(s.session_id, s.server_id) for s in await online(store)] == [("s2", "b")]


async def test_a_stale_release_leaves_the_new_session_online(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.mark_connected(1, "s1", "a", ttl=10)
    await store.claim_session(SessionRecord(1, "s2", "b"), ttl=10, replace_session_id="s1")
    await store.mark_connected(1, "s2", "b", ttl=10)
    assert not await store.release_session(1, "s1", server_id="a")
    assert [s.session_id for s in await online(store)] == ["s2"]


async def test_replacing_a_connected_session_hides_it_until_the_new_one_connects(
    store: Store,
) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.mark_connected(1, "s1", "a", ttl=10)
    await store.claim_session(SessionRecord(1, "s2", "b"), ttl=10, replace_session_id="s1")
    assert await online(store) == []  # logged in again, not yet connected
    assert await store.refresh_sessions([(1, "s1")], ttl=10) == [False]
    assert await online(store) == []


async def test_online_sessions_walks_many_users_each_exactly_once(store: Store) -> None:
    users = range(1, 2501)  # more than one chunk of every implementation
    await in_batches(store.claim_session(SessionRecord(u, f"s{u}", "a"), ttl=30) for u in users)
    connected = [u for u in users if u % 5 != 0]  # every fifth only logged in
    await in_batches(store.mark_connected(u, f"s{u}", f"srv{u % 3}", ttl=30) for u in connected)
    released = connected[::7]
    await in_batches(store.release_session(u, f"s{u}") for u in released)
    records = await online(store)
    user_ids = [record.user_id for record in records]
    assert len(user_ids) == len(set(user_ids))
    assert set(user_ids) == set(connected) - set(released)
    assert all(r.server_id == f"srv{r.user_id % 3}" and r.connected for r in records)


async def test_expired_sessions_drop_out_of_online_sessions(store: Store) -> None:
    for user_id in (1, 2, 3):
        await store.claim_session(SessionRecord(user_id, f"s{user_id}", "a"), ttl=10)
        await store.mark_connected(user_id, f"s{user_id}", "a", ttl=0.3)
    await store.refresh_sessions([(2, "s2")], ttl=10)
    await asyncio.sleep(0.45)
    assert [s.user_id for s in await online(store)] == [2]
    assert [await store.get_session(u) for u in (1, 2, 3)] == [
        None,
        SessionRecord(2, "s2", "a", "", True),
        None,
    ]
    # a second walk after the lazy clean-up sees the same
    assert [s.user_id for s in await online(store)] == [2]


async def test_refresh_keeps_a_user_online_past_the_first_ttl(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.mark_connected(1, "s1", "a", ttl=0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await store.refresh_sessions([(1, "s1")], ttl=0.3) == [True]
    assert [s.user_id for s in await online(store)] == [1]


async def test_refresh_of_many_sessions_answers_in_order(store: Store) -> None:
    for user_id in range(1, 11):
        await store.claim_session(SessionRecord(user_id, f"s{user_id}", "a"), ttl=10)
    asked = [(u, f"s{u}" if u % 2 else "stale") for u in range(1, 13)]
    assert await store.refresh_sessions(asked, ttl=10) == [
        u % 2 == 1 and u <= 10 for u in range(1, 13)
    ]
    assert await store.refresh_sessions([], ttl=10) == []


async def test_reads_of_many_accounts(store: Store) -> None:
    accounts = [(await store.create_account(f"user{n}", f"hash{n}"))[0] for n in range(30)]
    ids = [account.user_id for account in accounts]
    assert await store.get_accounts([*ids, 10_000, ids[0]]) == {a.user_id: a for a in accounts}
    assert await store.get_accounts([]) == {}


async def test_names_and_hashes_are_kept_exactly(store: Store) -> None:
    name = "Zoë 李 :{x}*?"
    account, created = await store.create_account(name, "$scrypt$n=16384$abc")
    assert created
    assert await store.get_account_by_name(name) == account
    assert await store.get_account_by_name(name.lower()) is None
    assert await store.get_account(account.user_id) == account


async def test_an_account_is_disabled_with_a_reason_and_enabled_again(store: Store) -> None:
    alice, _ = await store.create_account("alice", "h1")
    bob, _ = await store.create_account("bob", "h2")
    assert not alice.disabled and alice.disabled_reason == ""

    assert await store.set_account_disabled(alice.user_id, True, "spam") is False
    disabled = await store.get_account(alice.user_id)
    assert disabled is not None and disabled.disabled and disabled.disabled_reason == "spam"
    assert await store.get_account_by_name("alice") == disabled
    assert await store.get_accounts([alice.user_id, bob.user_id]) == {
        alice.user_id: disabled,
        bob.user_id: bob,
    }
    # Disabling again reports it was disabled, and keeps the newer reason.
    assert await store.set_account_disabled(alice.user_id, True, "still spam") is True
    assert (await store.get_account(alice.user_id)).disabled_reason == "still spam"  # type: ignore[union-attr]

    assert await store.set_account_disabled(alice.user_id, False) is True
    assert await store.get_account(alice.user_id) == alice  # as before: no flag, no reason
    assert await store.set_account_disabled(alice.user_id, False) is False


async def test_disabling_an_account_that_does_not_exist_writes_nothing(store: Store) -> None:
    assert await store.set_account_disabled(404, True, "x") is None
    assert await store.get_account(404) is None
    account, created = await store.create_account("late", "h")
    assert created and not account.disabled


async def test_a_retried_claim_of_the_same_session_succeeds(store: Store) -> None:
    record = SessionRecord(3, "s1", "a")
    assert await store.claim_session(record, ttl=10) is None
    # The store applied the claim but its reply was lost; the client retries.
    assert await store.claim_session(record, ttl=10) is None
    assert await store.claim_session(SessionRecord(3, "s2", "a"), ttl=10) == record


async def test_a_send_is_claimed_once_and_its_result_remembered(store: Store) -> None:
    send, digest = SendKey(1, 1, "c1", b"d1"), b"d1"
    first = await store.claim_sends([(send, "m1"), (SendKey(2, 2, "c1", b"d2"), "m3")], ttl=10)
    assert first == [None, None]  # first attempts go ahead; ids are per sender
    # A retry while the first is unfinished (or after it crashed) reuses its message id.
    assert await store.claim_sends([(send, "m2")], ttl=10) == [SendClaim("m1", None, digest)]
    another_owner = SendKey(5, 1, "c1", b"d1")
    assert await store.claim_sends([(another_owner, "m9")], ttl=10) == [None]
    await store.finish_sends([(send, b"result")], ttl=10)
    assert await store.claim_sends([(send, "m4")], ttl=10) == [SendClaim("", b"result", digest)]
    assert await store.claim_sends([], ttl=10) == []
    await store.finish_sends([], ttl=10)


async def test_a_claim_keeps_the_digest_of_the_first_attempt(store: Store) -> None:
    first, other = SendKey(1, 2, "c3", b"\x00" * 8), SendKey(1, 2, "c3", b"\xff" * 8)
    assert await store.claim_sends([(first, "m1")], ttl=10) == [None]
    # Another message under the same id finds the first one's digest, to refuse itself.
    assert await store.claim_sends([(other, "m2")], ttl=10) == [SendClaim("m1", None, first.digest)]
    await store.finish_sends([(first, b"ok")], ttl=10)
    assert await store.claim_sends([(other, "m3")], ttl=10) == [SendClaim("", b"ok", first.digest)]


async def test_remembered_sends_expire(store: Store) -> None:
    send = SendKey(1, 1, "c2", b"d")
    assert await store.claim_sends([(send, "m1")], ttl=0.2) == [None]
    await store.finish_sends([(send, b"r")], ttl=0.2)
    await asyncio.sleep(0.3)
    assert await store.claim_sends([(send, "m2")], ttl=10) == [None]


# --- inboxes ---------------------------------------------------------------------------------
KEEP_ALL = Retention()


def items(user_id: int, *message_ids: str) -> list[InboxItem]:
    return [InboxItem(user_id, mid, f"body-{mid}".encode()) for mid in message_ids]


async def test_inbox_appends_get_consecutive_seqs_per_user(store: Store) -> None:
    appended = await store.append_inbox(
        items(7, "a", "b") + items(8, "c") + items(7, "d"), KEEP_ALL
    )
    assert [a.seq for a in appended] == [1, 2, 1, 3]
    page = await store.read_inbox(7, 0, 10, KEEP_ALL)
    assert [(e.seq, e.payload) for e in page.entries] == [
        (1, b"body-a"),
        (2, b"body-b"),
        (3, b"body-d"),
    ]
    assert (page.head_seq, page.dropped_through, page.more) == (3, 0, False)
    empty = await store.read_inbox(9, 0, 10, KEEP_ALL)
    assert (empty.entries, empty.head_seq, empty.more) == ([], 0, False)


async def test_inbox_append_returns_the_receivers_session(store: Store) -> None:
    await store.claim_session(SessionRecord(7, "s1", "a"), ttl=10)
    await store.mark_connected(7, "s1", "b", ttl=10)
    to_online, to_offline = await store.append_inbox(items(7, "m1") + items(8, "m2"), KEEP_ALL)
    assert to_online.session == SessionRecord(7, "s1", "b", connected=True)
    assert to_offline.session is None


async def test_inbox_reads_page_after_a_seq_and_acks_trim(store: Store) -> None:
    await store.append_inbox(items(7, *(f"m{n}" for n in range(1, 8))), KEEP_ALL)
    page = await store.read_inbox(7, 2, 3, KEEP_ALL)
    assert [e.seq for e in page.entries] == [3, 4, 5] and page.more
    await store.ack_inbox([(7, 4), (8, 100)])
    rest = await store.read_inbox(7, 0, 10, KEEP_ALL)
    assert [e.seq for e in rest.entries] == [5, 6, 7] and not rest.more
    assert rest.dropped_through == 0  # acked, not dropped
    await store.ack_inbox([(7, 2)])  # an older ack changes nothing
    assert len((await store.read_inbox(7, 0, 10, KEEP_ALL)).entries) == 3
    (next_one,) = await store.append_inbox(items(7, "m8"), KEEP_ALL)
    assert next_one.seq == 8  # seqs never restart, whatever was trimmed


async def test_a_retried_append_keeps_its_first_seq_even_after_an_ack(store: Store) -> None:
    (first,) = await store.append_inbox(items(7, "m1"), KEEP_ALL)
    await store.append_inbox(items(7, "m2"), KEEP_ALL)
    await store.ack_inbox([(7, 2)])
    (again,) = await store.append_inbox(items(7, "m1"), KEEP_ALL)
    assert again.seq == first.seq == 1
    page = await store.read_inbox(7, 0, 10, KEEP_ALL)
    assert page.entries == [] and page.head_seq == 2


async def test_inbox_keeps_the_newest_by_count_and_reports_the_drop(store: Store) -> None:
    small = Retention(max_messages=3)
    await store.append_inbox(items(7, *(f"m{n}" for n in range(1, 6))), small)
    page = await store.read_inbox(7, 0, 10, small)
    assert [e.seq for e in page.entries] == [3, 4, 5]
    assert page.dropped_through == 2


async def test_inbox_drops_what_is_older_than_the_age_bound(store: Store) -> None:
    short = Retention(max_age=0.3)
    await store.append_inbox(items(7, "old"), short)
    await asyncio.sleep(0.5)
    await store.append_inbox(items(7, "new"), short)
    page = await store.read_inbox(7, 0, 10, short)
    assert [e.payload for e in page.entries] == [b"body-new"]
    assert page.dropped_through == 1


async def test_inbox_payloads_are_binary_safe(store: Store) -> None:
    payload = bytes(range(256)) * 4
    await store.append_inbox([InboxItem(7, "m1", payload), InboxItem(7, "m2", b"")], KEEP_ALL)
    page = await store.read_inbox(7, 0, 10, KEEP_ALL)
    assert [e.payload for e in page.entries] == [payload, b""]


async def test_concurrent_appends_to_one_inbox_never_share_a_seq(store: Store) -> None:
    results = await asyncio.gather(
        *(store.append_inbox(items(7, f"m{n}"), KEEP_ALL) for n in range(50))
    )
    assert sorted(a.seq for (a,) in results) == list(range(1, 51))


async def test_an_ack_past_the_head_trims_nothing(store: Store) -> None:
    await store.append_inbox(items(7, "m1", "m2"), KEEP_ALL)
    await store.ack_inbox([(7, 5)])  # a client from before a store reset
    assert [e.seq for e in (await store.read_inbox(7, 0, 10, KEEP_ALL)).entries] == [1, 2]


# --- conversations: one log per conversation, pointers per member -----------------------------


def conv(cid: str, *message_ids: str, sender: int = 0) -> list[ConversationItem]:
    return [
        ConversationItem(
            cid,
            mid,
            f"body-{mid}".encode(),
            SendKey(0, sender, f"c-{mid}", b"d", conversation=cid) if sender else None,
        )
        for mid in message_ids
    ]


async def test_conversation_appends_get_positions_per_conversation(store: Store) -> None:
    appended = await store.append_conversations(
        conv("p:1:2", "a", "b") + conv("p:1:3", "c") + conv("p:1:2", "d"), KEEP_ALL
    )
    assert [a.position for a in appended] == [1, 2, 1, 3]
    (again,) = await store.append_conversations(conv("p:1:2", "b"), KEEP_ALL)
    assert again.position == 2  # idempotent by message id
    page = await store.read_history("p:1:2", 0, 10, KEEP_ALL)
    assert [(e.position, e.payload) for e in page.entries] == [
        (3, b"body-d"),
        (2, b"body-b"),
        (1, b"body-a"),
    ]
    assert (page.head, page.dropped_through, page.more) == (3, 0, False)
    empty = await store.read_history("p:8:9", 0, 10, KEEP_ALL)
    assert (empty.entries, empty.head, empty.more) == ([], 0, False)


async def test_history_pages_back_before_a_position(store: Store) -> None:
    await store.append_conversations(conv("p:1:2", *(f"m{n}" for n in range(1, 8))), KEEP_ALL)
    page = await store.read_history("p:1:2", 0, 3, KEEP_ALL)
    assert [e.position for e in page.entries] == [7, 6, 5] and page.more
    page = await store.read_history("p:1:2", 5, 3, KEEP_ALL)
    assert [e.position for e in page.entries] == [4, 3, 2] and page.more
    page = await store.read_history("p:1:2", 2, 3, KEEP_ALL)
    assert [e.position for e in page.entries] == [1] and not page.more


async def test_a_conversation_append_claims_its_send(store: Store) -> None:
    (first,) = await store.append_conversations(conv("p:1:2", "m1", sender=1), KEEP_ALL)
    assert first.position == 1 and first.earlier is None
    # A retry (another message id, same client_msg_id) finds the claim: nothing appended.
    retry = ConversationItem("p:1:2", "m9", b"x", SendKey(0, 1, "c-m1", b"d", conversation="p:1:2"))
    (again,) = await store.append_conversations([retry], KEEP_ALL)
    assert again.position == 0 and again.earlier == SendClaim("m1", None, b"d")
    # The claim is the conversation's: the same client_msg_id elsewhere is another send.
    (other,) = await store.append_conversations(conv("p:1:3", "m1", sender=1), KEEP_ALL)
    assert other.position == 1 and other.earlier is None
    key = SendKey(0, 1, "c-m1", b"d", conversation="p:1:2")
    assert await store.read_sends([key]) == [SendClaim("m1", None, b"d")]
    await store.finish_sends([(key, b"result")], ttl=10)
    assert await store.read_sends([key]) == [SendClaim("", b"result", b"d")]
    assert (await store.read_history("p:1:2", 0, 10, KEEP_ALL)).head == 1


async def test_a_pointed_append_is_the_conversation_append_then_the_pointer(store: Store) -> None:
    """append_pointed (one round trip on a standalone Redis) answers as its
    two steps do: position, the receiver's seq and session; the send's claim
    first, idempotent by message id."""
    await store.claim_session(SessionRecord(2, "s2", "server-a", connected=True), ttl=10)
    await store.append_pointers([PointerItem(2, "p:2:5", 1, "older")], KEEP_ALL)  # seq 1
    items = [PointedItem(item, 2) for item in conv("p:1:2", "m1", "m2", sender=1)]
    items.append(PointedItem(conv("p:2:3", "m3")[0], 3))
    first = await store.append_pointed(items, KEEP_ALL)
    assert [a.conversation.position for a in first] == [1, 2, 1]
    assert [a.pointer.seq if a.pointer else None for a in first] == [2, 3, 1]
    session = first[0].pointer.session if first[0].pointer else None
    assert session is not None and session.session_id == "s2" and session.connected
    assert first[2].pointer is not None and first[2].pointer.session is None  # user 3: offline
    # A retry under another message id finds the claim: nothing appended, no pointer.
    retry = conv("p:1:2", "m9", sender=1)[0]
    retry = ConversationItem(retry.conversation_id, "m9", b"x", items[0].conversation.send)
    (again,) = await store.append_pointed([PointedItem(retry, 2)], KEEP_ALL)
    assert again.pointer is None and again.conversation.earlier == SendClaim("m1", None, b"d")
    # The earlier attempt's id again, without a claim: same position, same seq.
    unclaimed = ConversationItem("p:1:2", "m1", b"body-m1")
    (redone,) = await store.append_pointed([PointedItem(unclaimed, 2)], KEEP_ALL)
    assert redone.conversation.position == 1 and redone.pointer is not None
    assert redone.pointer.seq == 2
    page = await store.read_inbox(2, 1, 10, KEEP_ALL)
    assert [(e.seq, e.conversation_id, e.position, e.payload) for e in page.entries] == [
        (2, "p:1:2", 1, b"body-m1"),
        (3, "p:1:2", 2, b"body-m2"),
    ]
    history = await store.read_history("p:1:2", 0, 10, KEEP_ALL)
    assert [e.position for e in history.entries] == [2, 1]
    assert await store.append_pointed([], KEEP_ALL) == []


async def test_a_fresh_pointed_append_answers_as_a_looked_up_one(store: Store) -> None:
    """``fresh`` (the id was made for this attempt) only spares the store a
    look-up: positions, seqs, the sender's side and the claim are the same."""
    await store.append_pointers([PointerItem(2, "p:2:5", 1, "older")], KEEP_ALL)  # seq 1
    fresh = [PointedItem(i, 2, 1, fresh=True) for i in conv("p:1:2", "m1", "m2", sender=1)]
    done = await store.append_pointed(fresh, KEEP_ALL)
    assert [(d.conversation.position, d.pointer.seq if d.pointer else 0) for d in done] == [
        (1, 2),
        (2, 3),
    ]
    # The claim still holds: another attempt of m1's send appends nothing.
    retry = ConversationItem("p:1:2", "m9", b"x", fresh[0].conversation.send)
    (again,) = await store.append_pointed([PointedItem(retry, 2, 1, fresh=True)], KEEP_ALL)
    assert again.pointer is None and again.conversation.earlier == SendClaim("m1", None, b"d")
    (line,) = (await store.list_conversations(1, 0, "", 10)).lines
    assert (line.conversation_id, line.read, line.head) == ("p:1:2", 2, 2)  # the sender's side
    page = await store.read_inbox(2, 0, 10, KEEP_ALL)  # (seq 1's body was never stored)
    assert [(e.seq, e.conversation_id, e.position) for e in page.entries] == [
        (2, "p:1:2", 1),
        (3, "p:1:2", 2),
    ]


async def test_a_large_batch_of_pointed_appends_keeps_each_conversations_order(
    store: Store,
) -> None:
    """More sends than one script call takes (a standalone Redis splits the
    batch): each still gets the next position and the next seq, in order."""
    batch = []
    for n in range(150):
        receiver = 2 + n % 3
        cid = f"p:1:{receiver}"
        (item,) = conv(cid, f"m{n}", sender=1)
        batch.append(PointedItem(item, receiver, 1, fresh=n % 2 == 0))
    done = await store.append_pointed(batch, KEEP_ALL)
    for receiver in (2, 3, 4):
        mine = [d for d, i in zip(done, batch, strict=True) if i.receiver_id == receiver]
        assert [d.conversation.position for d in mine] == list(range(1, 51))
        assert [d.pointer.seq if d.pointer else 0 for d in mine] == list(range(1, 51))
        page = await store.read_inbox(receiver, 0, 100, KEEP_ALL)
        assert [e.payload for e in page.entries] == [
            i.conversation.payload for i in batch if i.receiver_id == receiver
        ]


async def test_read_sends_reads_without_claiming(store: Store) -> None:
    key = SendKey(7, 1, "c1", b"d")
    assert await store.read_sends([key]) == [None]
    assert await store.claim_sends([(key, "m1")], ttl=10) == [None]  # still free
    assert await store.read_sends([key]) == [SendClaim("m1", None, b"d")]


async def test_history_keeps_the_newest_by_count_and_age(store: Store) -> None:
    small = Retention(history_max_messages=3)
    await store.append_conversations(conv("p:1:2", *(f"m{n}" for n in range(1, 6))), small)
    page = await store.read_history("p:1:2", 0, 10, small)
    assert [e.position for e in page.entries] == [5, 4, 3]
    assert (page.head, page.dropped_through) == (5, 2)
    short = Retention(history_max_age=0.3)
    await store.append_conversations(conv("p:1:3", "old"), short)
    await asyncio.sleep(0.5)
    # Trimmed by the read too: a quiet conversation does not keep old history.
    page = await store.read_history("p:1:3", 0, 10, short)
    assert (page.entries, page.dropped_through) == ([], 1)


async def test_pointers_replay_as_their_bodies_beside_full_copies(store: Store) -> None:
    await store.claim_session(SessionRecord(2, "s1", "a"), ttl=10)
    await store.append_inbox(items(2, "old"), KEEP_ALL)  # a full copy (before conversations)
    (a, b) = await store.append_conversations(conv("p:1:2", "m1", "m2"), KEEP_ALL)
    pointed = await store.append_pointers(
        [PointerItem(2, "p:1:2", a.position, "m1"), PointerItem(2, "p:1:2", b.position, "m2")],
        KEEP_ALL,
    )
    assert [p.seq for p in pointed] == [2, 3]
    assert pointed[0].session == SessionRecord(2, "s1", "a")
    (again,) = await store.append_pointers([PointerItem(2, "p:1:2", 1, "m1")], KEEP_ALL)
    assert again.seq == 2  # idempotent by message id
    page = await store.read_inbox(2, 0, 10, KEEP_ALL)
    assert [(e.seq, e.payload, e.conversation_id, e.position) for e in page.entries] == [
        (1, b"body-old", "", 0),
        (2, b"body-m1", "p:1:2", 1),
        (3, b"body-m2", "p:1:2", 2),
    ]
    assert (page.head_seq, page.more) == (3, False)


async def test_an_ack_moves_the_cursor_and_keeps_the_history(store: Store) -> None:
    await store.append_inbox(items(2, "old"), KEEP_ALL)
    appended = await store.append_conversations(conv("p:1:2", "m1", "m2", "m3"), KEEP_ALL)
    await store.append_pointers(
        [PointerItem(2, "p:1:2", a.position, f"m{n}") for n, a in enumerate(appended, 1)],
        KEEP_ALL,
    )
    await store.ack_inbox([(2, 3)], KEEP_ALL)
    page = await store.read_inbox(2, 0, 10, KEEP_ALL)
    assert [e.seq for e in page.entries] == [4]  # acked entries are not replayed
    await store.ack_inbox([(2, 2)], KEEP_ALL)  # never back
    assert [e.seq for e in (await store.read_inbox(2, 0, 10, KEEP_ALL)).entries] == [4]
    # Within the id window an acked pointer still answers a retried send.
    (again,) = await store.append_pointers([PointerItem(2, "p:1:2", 1, "m1")], KEEP_ALL)
    assert again.seq == 2
    history = await store.read_history("p:1:2", 0, 10, KEEP_ALL)
    assert [e.position for e in history.entries] == [3, 2, 1]  # the ack deleted nothing


async def test_acked_pointers_go_after_the_id_window(store: Store) -> None:
    brief = Retention(id_window=0.2)
    (a,) = await store.append_conversations(conv("p:1:2", "m1"), brief)
    await store.append_pointers([PointerItem(2, "p:1:2", a.position, "m1")], brief)
    await store.ack_inbox([(2, 1)], brief)
    await asyncio.sleep(0.4)
    await store.ack_inbox([(2, 1)], brief)  # trims the acked pointer, now old
    # Gone from the sequence: the same id now takes a new seq.
    (again,) = await store.append_pointers([PointerItem(2, "p:1:2", 1, "m1")], brief)
    assert again.seq == 2


async def test_a_pointer_whose_body_retention_dropped_is_left_out(store: Store) -> None:
    small = Retention(history_max_messages=1)
    appended = await store.append_conversations(conv("p:1:2", "m1", "m2"), small)
    await store.append_pointers(
        [PointerItem(2, "p:1:2", a.position, f"m{n}") for n, a in enumerate(appended, 1)], small
    )
    page = await store.read_inbox(2, 0, 10, small)
    assert [(e.seq, e.payload) for e in page.entries] == [(2, b"body-m2")]
    assert page.head_seq == 2


async def test_the_conversations_mark_is_set_once(store: Store) -> None:
    await store.create_account("alice", "hash")
    first = await store.conversations_since()
    assert abs(first - time.time()) < 5
    assert await store.conversations_since() == first


async def test_a_store_marked_before_any_account_has_no_older_claims(store: Store) -> None:
    assert await store.conversations_since() == 0.0
    await store.create_account("alice", "hash")
    assert await store.conversations_since() == 0.0


# --- token sessions (revocation) ---------------------------------------------------------------


async def test_a_token_session_is_set_only_for_the_current_session(store: Store) -> None:
    assert await store.get_token_session(1) is None
    assert not await store.set_token_session(1, "s1", ttl=10)  # no session at all
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    assert await store.set_token_session(1, "s1", ttl=10)
    assert await store.get_token_session(1) == "s1"
    assert await store.get_token_session(2) is None  # per user
    # A newer login replaces the session: only it can take the tokens over.
    await store.claim_session(SessionRecord(1, "s2", "a"), ttl=10, replace_session_id="s1")
    assert not await store.set_token_session(1, "s1", ttl=10)
    assert await store.get_token_session(1) == "s1"
    assert await store.set_token_session(1, "s2", ttl=10)
    assert await store.get_token_session(1) == "s2"


async def test_a_token_session_outlives_its_session_record(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=0.2)
    assert await store.set_token_session(1, "s1", ttl=10)
    await asyncio.sleep(0.3)
    assert await store.get_session(1) is None
    assert await store.get_token_session(1) == "s1"


async def test_a_token_session_is_revoked_only_by_its_own_id_and_expires(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await store.set_token_session(1, "s1", ttl=10)
    assert not await store.revoke_token_session(1, "s0")  # an older session's logout
    assert await store.get_token_session(1) == "s1"
    assert await store.revoke_token_session(1, "s1")
    assert await store.get_token_session(1) is None
    assert not await store.revoke_token_session(1, "s1")  # idempotent
    await store.set_token_session(1, "s1", ttl=0.2)
    await asyncio.sleep(0.3)
    assert await store.get_token_session(1) is None


async def test_an_append_with_a_send_claims_it_in_the_same_step(store: Store) -> None:
    send = SendKey(7, 3, "c1", b"digest-1")

    def sent(message_id: str, key: SendKey = send) -> InboxItem:
        return InboxItem(7, message_id, b"hi", send=key)

    (first,) = await store.append_inbox([sent("m1")], KEEP_ALL)
    assert (first.seq, first.earlier) == (1, None)
    # A retry under a new id: nothing appended, the first attempt's id comes back.
    (retry,) = await store.append_inbox([sent("m2")], KEEP_ALL)
    assert (retry.seq, retry.earlier) == (0, SendClaim("m1", None, b"digest-1"))
    # Another message under the same id learns the first one's digest, appending nothing.
    (reused,) = await store.append_inbox([sent("m5", SendKey(7, 3, "c1", b"digest-2"))], KEEP_ALL)
    assert (reused.seq, reused.earlier) == (0, SendClaim("m1", None, b"digest-1"))
    assert [e.seq for e in (await store.read_inbox(7, 0, 10, KEEP_ALL)).entries] == [1]
    # The claim is the receiver's: the same key a finish under that owner writes.
    await store.finish_sends([(send, b"done")], ttl=10)
    (finished,) = await store.append_inbox([sent("m3")], KEEP_ALL)
    assert finished.earlier == SendClaim("", b"done", b"digest-1")
    # Another sender's id of the same text is another send.
    (other,) = await store.append_inbox([sent("m4", SendKey(7, 4, "c1", b"digest-1"))], KEEP_ALL)
    assert (other.seq, other.earlier) == (2, None)


async def test_an_append_claims_only_a_send_its_receiver_owns(store: Store) -> None:
    with pytest.raises(ValueError, match="receiver owns"):
        await store.append_inbox([InboxItem(7, "m1", b"x", send=SendKey(8, 3, "c1"))], KEEP_ALL)
    assert (await store.read_inbox(7, 0, 10, KEEP_ALL)).entries == []


# --- name keys (look-alike names) --------------------------------------------------------------


async def test_a_name_sharing_a_key_with_an_account_gets_that_account(store: Store) -> None:
    sec_a, created = await store.create_account("secA", "h1", name_keys("secA"))
    assert created
    # Case, full width and a Cyrillic e: the same keys, so the existing account comes back.
    for alike in ("SECA", "\uff33\uff25\uff23\uff21", "s\u0435cA"):
        assert await store.create_account(alike, "h2", name_keys(alike)) == (sec_a, False)
        assert await store.get_account_by_name(alike) is None
    assert await store.create_account("secA", "h3", name_keys("secA")) == (sec_a, False)
    sec_b, created = await store.create_account("secB", "h4", name_keys("secB"))
    assert created and sec_b.user_id != sec_a.user_id
    assert await store.get_account_by_name("secA") == sec_a


async def test_concurrent_look_alike_registrations_let_exactly_one_win(store: Store) -> None:
    alikes = ["secA", "SECA", "seca", "s\u0435cA", "\uff53\uff45\uff43\uff41", "SecA"] * 3
    results = await asyncio.gather(
        *(store.create_account(name, f"h{n}", name_keys(name)) for n, name in enumerate(alikes))
    )
    winners = [account for account, created in results if created]
    assert len(winners) == 1
    assert {account for account, _ in results} == {winners[0]}
    assert await store.get_account_by_name(winners[0].user_name) == winners[0]
    assert [name for name in set(alikes) if await store.get_account_by_name(name)] == [
        winners[0].user_name
    ]


async def test_the_backfill_indexes_older_accounts_once(store: Store) -> None:
    # Accounts created before name keys; two of them now count as one name.
    sec_a, _ = await store.create_account("secA", "h1")
    sec_caps, _ = await store.create_account("SECA", "h2")
    bob, _ = await store.create_account("bob", "h3")
    # Several routes starting at once: each key is given once.
    runs = await asyncio.gather(*(store.index_names(existing_name_keys) for _ in range(3)))
    assert sum(runs) == 2  # "seca" (to whichever came first) and "bob"
    assert await store.index_names(existing_name_keys) == 0
    # Both older accounts keep their names; new look-alikes of any are refused.
    assert await store.get_account_by_name("secA") == sec_a
    assert await store.get_account_by_name("SECA") == sec_caps
    holder, created = await store.create_account("Seca", "h", name_keys("Seca"))
    assert not created and holder in (sec_a, sec_caps)
    assert await store.create_account("b0b", "h", name_keys("b0b")) == (bob, False)
    # Newer accounts get their keys as they are created: nothing left to index.
    carol, created = await store.create_account("carol", "h", name_keys("carol"))
    assert created
    assert await store.index_names(existing_name_keys) == 0
    assert await store.create_account("CAROL", "h", name_keys("CAROL")) == (carol, False)


async def test_a_claim_replaces_a_pending_session_only_until_it_connects(store: Store) -> None:
    await store.claim_session(SessionRecord(6, "s1", "a"), ttl=10)
    second = SessionRecord(6, "s2", "b")
    assert await store.claim_session(second, 10, replace_session_id="s1", pending_only=True) is None
    assert await store.get_session(6) == second
    connected = await store.mark_connected(6, "s2", "b", ttl=10)
    assert connected is not None
    third = SessionRecord(6, "s3", "c")
    in_the_way = await store.claim_session(third, 10, replace_session_id="s2", pending_only=True)
    assert in_the_way == connected
    assert await store.claim_session(third, 10, replace_session_id="s2") is None


async def test_a_page_of_pointers_that_all_lost_their_bodies_is_read_past(store: Store) -> None:
    small = Retention(history_max_messages=1)
    appended = await store.append_conversations(conv("p:1:2", "m1", "m2", "m3"), small)
    await store.append_pointers(
        [PointerItem(2, "p:1:2", a.position, f"m{n}") for n, a in enumerate(appended, 1)], small
    )
    # A replay's page of two finds nothing to show: the store reads on.
    page = await store.read_inbox(2, 0, 2, small)
    assert [(e.seq, e.payload) for e in page.entries] == [(3, b"body-m3")]
    assert not page.more
    empty = await store.read_inbox(2, 0, 0, small)
    assert empty.entries == [] and empty.more


async def test_a_read_after_a_huge_seq_finds_nothing_past_the_cursor(store: Store) -> None:
    await store.append_inbox(items(7, "m1", "m2", "m3"), KEEP_ALL)
    await store.ack_inbox([(7, 1)])
    for after in (2**64 - 1, 10**15 + 1, 2**53 + 1):
        page = await store.read_inbox(7, after, 10, KEEP_ALL)
        assert (page.entries, page.more, page.head_seq) == ([], False, 3)
    # Below the cursor, the cursor counts; above it, the asked seq.
    assert [e.seq for e in (await store.read_inbox(7, 0, 10, KEEP_ALL)).entries] == [2, 3]
    assert [e.seq for e in (await store.read_inbox(7, 2, 10, KEEP_ALL)).entries] == [3]


# --- fan-outs left undone: pending, confirmed, handed back, dropped ---------------
# Retention is per call: a patient one never hands back a pending fan-out, an
# impatient one (repair_after=0) hands back every one appended before.
PATIENT = Retention(repair_after=3600)
AT_ONCE = Retention(repair_after=0)


def _overdue(appended: ConversationAppended) -> list[tuple[str, int, bytes]]:
    return [(u.message_id, u.position, u.payload) for u in appended.unfinished]


async def test_a_new_message_is_pending_until_its_fan_out_is_confirmed(store: Store) -> None:
    (m1,) = await store.append_conversations(conv("p:1:2", "m1"), PATIENT)
    (m2,) = await store.append_conversations(conv("p:1:2", "m2"), PATIENT)
    assert m1.unfinished == m2.unfinished == ()  # too recent to be a crash
    (m3,) = await store.append_conversations(conv("p:1:2", "m3"), AT_ONCE)
    assert _overdue(m3) == [("m1", 1, b"body-m1"), ("m2", 2, b"body-m2")]
    # Confirmed in the same call that remembers a send's result.
    send = SendKey(0, 1, "c-9", b"d", conversation="p:1:2")
    await store.finish_sends([(send, b"done")], 10, [("p:1:2", "m1"), ("p:1:2", "m2")])
    assert await store.read_sends([send]) == [SendClaim("", b"done", b"d")]
    (m4,) = await store.append_conversations(conv("p:1:2", "m4"), AT_ONCE)
    assert _overdue(m4) == [("m3", 3, b"body-m3")]
    # Confirming what is not pending (or no conversation at all) is harmless.
    await store.finish_sends([], 10, [("p:1:2", "m3"), ("p:1:2", "m4"), ("p:8:9", "none")])
    (m5,) = await store.append_conversations(conv("p:1:2", "m5"), AT_ONCE)
    assert m5.unfinished == ()


async def test_a_pointed_append_is_pending_only_where_its_pointer_is_a_second_step(
    store: Store,
) -> None:
    """One script on a standalone Redis writes the pointer with the append:
    nothing is left to repair or confirm (``settled``). Where the pointer is a
    second step (memory, a cluster), the message is pending until confirmed."""
    (done,) = await store.append_pointed([PointedItem(conv("p:1:2", "m1")[0], 2)], PATIENT)
    one_step = isinstance(store, RedisStore) and not store.clustered
    assert done.settled == one_step and done.pointer is not None
    (later,) = await store.append_conversations(conv("p:1:2", "m2"), AT_ONCE)
    assert _overdue(later) == ([] if one_step else [("m1", 1, b"body-m1")])


async def test_an_append_does_not_hand_back_its_own_message_or_another_conversations(
    store: Store,
) -> None:
    await store.append_conversations(conv("p:1:2", "m1"), PATIENT)
    # The retry of m1 (same id, same position) is about to fan it out itself.
    (again,) = await store.append_conversations(conv("p:1:2", "m1"), AT_ONCE)
    assert (again.position, again.unfinished) == (1, ())
    (other,) = await store.append_conversations(conv("p:1:3", "x"), AT_ONCE)
    assert other.unfinished == ()
    # A retry appends nothing new: m1 was pending once, and is confirmed once.
    await store.finish_sends([], 10, [("p:1:2", "m1")])
    (m2,) = await store.append_conversations(conv("p:1:2", "m2"), AT_ONCE)
    assert m2.unfinished == ()


async def test_an_append_hands_back_ten_overdue_fan_outs_at_most_oldest_first(
    store: Store,
) -> None:
    ids = [f"m{n:02}" for n in range(1, 13)]
    for mid in ids:  # one append each: one append time each, oldest first
        await store.append_conversations(conv("p:1:2", mid), PATIENT)
    (m13,) = await store.append_conversations(conv("p:1:2", "m13"), AT_ONCE)
    assert [u.message_id for u in m13.unfinished] == ids[:10]
    await store.finish_sends([], 10, [("p:1:2", mid) for mid in ids[:10]])
    (m14,) = await store.append_conversations(conv("p:1:2", "m14"), AT_ONCE)
    assert [u.message_id for u in m14.unfinished] == [*ids[10:], "m13"]


async def test_fan_outs_pending_past_the_id_window_or_dropped_by_retention_are_dropped(
    store: Store,
) -> None:
    await store.append_conversations(conv("p:1:2", "m1"), PATIENT)
    await asyncio.sleep(0.05)
    brief = Retention(repair_after=0, id_window=0.01)
    (m2,) = await store.append_conversations(conv("p:1:2", "m2"), brief)
    assert m2.unfinished == ()  # too old: members may have trimmed their pointers
    # Dropped, not merely passed over: a longer window does not bring it back.
    (m3,) = await store.append_conversations(conv("p:1:2", "m3"), AT_ONCE)
    assert _overdue(m3) == [("m2", 2, b"body-m2")]
    # Retention that dropped a body drops its fan-out too.
    one = Retention(repair_after=0, history_max_messages=1)
    await store.append_conversations(conv("p:1:3", "a", "b"), PATIENT)
    (c,) = await store.append_conversations(conv("p:1:3", "c"), one)
    assert c.unfinished == ()
    (d,) = await store.append_conversations(conv("p:1:3", "d"), AT_ONCE)
    assert _overdue(d) == [("c", 3, b"body-c")]


async def test_a_group_message_and_a_membership_event_are_pending_too(store: Store) -> None:
    await store.apply_group(_created(1, 10, 11), "e1", b"created", PATIENT)
    item = ConversationItem("g:1", "m2", b"hello", group_sender=10)
    (m2,) = await store.append_conversations([item], PATIENT)
    assert (m2.position, m2.unfinished) == (2, ())
    later = ConversationItem("g:1", "m3", b"again", group_sender=11, known_version=1)
    (m3,) = await store.append_conversations([later], AT_ONCE)
    # The group's part of the answer is as without a repair.
    assert (m3.position, m3.version, m3.members) == (3, 1, None)
    assert _overdue(m3) == [("e1", 1, b"created"), ("m2", 2, b"hello")]
    await store.finish_sends([], 10, [("g:1", "e1"), ("g:1", "m2")])
    stranger = ConversationItem("g:1", "m4", b"no", group_sender=99)
    (refused,) = await store.append_conversations([stranger], AT_ONCE)
    assert (refused.refused, refused.unfinished) == (NOT_A_MEMBER, ())
    (m5,) = await store.append_conversations([replace(later, message_id="m5")], AT_ONCE)
    assert _overdue(m5) == [("m3", 3, b"again")]


# --- groups --------------------------------------------------------------------


def _created(number: int, owner: int, *members: int) -> Change:
    return groups.create(number, owner, f"group {number}", members, 1700, groups.Limits())


async def test_group_numbers_count_up(store: Store) -> None:
    first = await store.new_group_number()
    assert await store.new_group_number() == first + 1


async def test_a_group_change_applies_at_its_version_with_its_event(store: Store) -> None:
    retention = Retention()
    assert await store.read_group("g:1") is None
    position = await store.apply_group(_created(1, 10, 11, 12), "e1", b"created", retention)
    assert position == 1
    group = await store.read_group("g:1")
    assert group == Group(
        "g:1",
        "group 1",
        10,
        1700,
        1,
        False,
        {
            10: Member(10, groups.OWNER, 1),
            11: Member(11, groups.MEMBER, 1),
            12: Member(12, groups.MEMBER, 1),
        },
        {},
    )
    # Creating it again (version 0) is refused: it exists.
    assert await store.apply_group(_created(1, 13), "e0", b"again", retention) is None
    # The event is in the group's history at its position.
    history = await store.read_history("g:1", 0, 10, retention)
    assert [(e.position, e.payload) for e in history.entries] == [(1, b"created")]

    added = groups.add(group, 10, [13], groups.Limits())
    assert await store.apply_group(added, "e2", b"added", retention) == 2
    # A change planned from the old version is refused: the group moved on.
    stale = groups.remove(group, 10, [11])
    assert await store.apply_group(stale, "e3", b"stale", retention) is None
    group = await store.read_group("g:1")
    assert group is not None and group.version == 2
    assert group.members[13] == Member(13, groups.MEMBER, 2)

    removed = groups.remove(group, 10, [11])
    assert await store.apply_group(removed, "e3", b"removed", retention) == 3
    promoted = groups.transfer(await store.read_group("g:1"), 10, 12)
    assert await store.apply_group(promoted, "e4", b"handed over", retention) == 4
    group = await store.read_group("g:1")
    assert group is not None
    assert group.owner_id == 12 and group.version == 4
    # Roles change, join positions stay; the removed one's leave is recorded.
    assert group.members == {
        10: Member(10, groups.ADMIN, 1),
        12: Member(12, groups.OWNER, 1),
        13: Member(13, groups.MEMBER, 2),
    }
    assert group.left == {11: 3}
    history = await store.read_history("g:1", 0, 10, retention)
    assert [e.payload for e in history.entries] == [
        b"handed over",
        b"removed",
        b"added",
        b"created",
    ]


async def test_a_member_who_rejoins_joins_again_and_has_no_leave(store: Store) -> None:
    retention = Retention()
    await store.apply_group(_created(2, 1, 2), "e1", b"c", retention)
    group = await store.read_group("g:2")
    await store.apply_group(groups.remove(group, 1, [2]), "e2", b"r", retention)
    group = await store.read_group("g:2")
    assert group is not None and group.left == {2: 2} and 2 not in group.members
    await store.apply_group(groups.add(group, 1, [2], groups.Limits()), "e3", b"a", retention)
    group = await store.read_group("g:2")
    assert group is not None and group.left == {}
    assert group.members[2] == Member(2, groups.MEMBER, 3)


async def test_renames_and_deletes_change_the_meta(store: Store) -> None:
    retention = Retention()
    await store.apply_group(_created(3, 1, 2), "e1", b"c", retention)
    await store.apply_group(
        groups.rename(await store.read_group("g:3"), 1, "new"), "e2", b"n", retention
    )
    await store.apply_group(groups.delete(await store.read_group("g:3"), 1), "e3", b"d", retention)
    group = await store.read_group("g:3")
    assert group is not None
    assert (group.name, group.deleted, group.version) == ("new", True, 3)


async def test_a_deleted_group_is_gone_after_the_history_max_age(store: Store) -> None:
    short = Retention(history_max_age=0.4)
    await store.apply_group(_created(4, 1, 2), "e1", b"c", short)
    await store.apply_group(groups.delete(await store.read_group("g:4"), 1), "e2", b"d", short)
    # Its members may still read it for a while...
    assert (await store.read_history("g:4", 0, 10, Retention())).head == 2
    deleted = await store.read_group("g:4")
    assert deleted is not None and deleted.deleted
    await asyncio.sleep(0.6)
    # ...then it is gone, history and all; a group never deleted stays.
    assert await store.read_group("g:4") is None
    assert (await store.read_history("g:4", 0, 10, Retention())).head == 0
    await store.apply_group(_created(5, 1, 2), "e3", b"c", short)
    await asyncio.sleep(0.6)
    assert await store.read_group("g:5") is not None


async def test_group_creations_are_counted_per_user(store: Store) -> None:
    assert [await store.count_group_creation(5) for _ in range(3)] == [1, 2, 3]
    assert await store.count_group_creation(6) == 1


async def test_a_users_group_index_lists_counts_and_forgets(store: Store) -> None:
    await store.index_groups(
        [(1, "g:3", True), (1, "g:12", True), (1, "g:2", True), (2, "g:3", True)]
    )
    assert await store.count_groups([1, 2, 3]) == [3, 1, 0]
    assert await store.list_groups(1, 0, 10) == ["g:2", "g:3", "g:12"]
    assert await store.list_groups(1, 2, 1) == ["g:3"]
    assert await store.list_groups(1, 3, 10) == ["g:12"]
    await store.index_groups([(1, "g:3", False)])
    assert await store.list_groups(1, 0, 10) == ["g:2", "g:12"]
    assert await store.count_groups([1]) == [2]


async def _group_says(store: Store, group_id: str, sender: int, *texts: str) -> None:
    appended = await store.append_conversations(
        [
            ConversationItem(group_id, f"{group_id}-{t}", t.encode(), group_sender=sender)
            for t in texts
        ],
        KEEP_ALL,
    )
    assert all(a.position and not a.refused for a in appended)


def _positions(page: HistoryPage | None) -> list[int]:
    assert page is not None
    return [entry.position for entry in page.entries]


async def test_a_group_history_is_read_by_members_and_up_to_a_removal(store: Store) -> None:
    await store.apply_group(_created(4, 1, 2, 3), "e1", b"created", KEEP_ALL)
    await _group_says(store, "g:4", 1, "a", "b", "c")  # positions 2-4
    group = await store.read_group("g:4")
    assert await store.apply_group(groups.remove(group, 1, [2]), "e5", b"-2", KEEP_ALL) == 5
    await _group_says(store, "g:4", 3, "d", "e")  # 6-7: after 2's removal

    member = await store.read_group_history("g:4", 3, 0, 10, KEEP_ALL)
    assert member is not None and _positions(member) == [7, 6, 5, 4, 3, 2, 1]
    assert (member.head, member.dropped_through, member.more) == (7, 0, False)
    assert [e.payload for e in member.entries[:3]] == [b"e", b"d", b"-2"]

    # The removed member: their own removal is the last thing they see, from
    # the newest or from any position past it; head says no more than that.
    for before in (0, 6, 8, 10**6, 2**64 - 1):
        page = await store.read_group_history("g:4", 2, before, 10, KEEP_ALL)
        assert page is not None and _positions(page) == [5, 4, 3, 2, 1], before
        assert (page.head, page.more) == (5, False)
    page = await store.read_group_history("g:4", 2, 0, 2, KEEP_ALL)
    assert page is not None and _positions(page) == [5, 4] and page.more
    page = await store.read_group_history("g:4", 2, 4, 2, KEEP_ALL)
    assert page is not None and _positions(page) == [3, 2] and page.more
    assert _positions(await store.read_group_history("g:4", 2, 2, 10, KEEP_ALL)) == [1]

    # Never a member, or no such group: refused alike.
    assert await store.read_group_history("g:4", 9, 0, 10, KEEP_ALL) is None
    assert await store.read_group_history("g:404", 1, 0, 10, KEEP_ALL) is None

    # Back in: everything again, their earlier removal included.
    group = await store.read_group("g:4")
    await store.apply_group(groups.add(group, 1, [2], groups.Limits()), "e8", b"+2", KEEP_ALL)
    page = await store.read_group_history("g:4", 2, 0, 10, KEEP_ALL)
    assert page is not None and _positions(page) == [8, 7, 6, 5, 4, 3, 2, 1] and page.head == 8


async def test_a_left_member_sees_retention_only_up_to_their_leave(store: Store) -> None:
    await store.apply_group(_created(5, 1, 2), "e1", b"created", KEEP_ALL)
    group = await store.read_group("g:5")
    assert await store.apply_group(groups.leave(group, 2), "e2", b"left", KEEP_ALL) == 2
    await _group_says(store, "g:5", 1, *(f"m{n}" for n in range(3, 8)))  # 3-7
    small = Retention(history_max_messages=3)
    # A refused read trims nothing.
    assert await store.read_group_history("g:5", 9, 0, 10, small) is None
    page = await store.read_group_history("g:5", 1, 0, 10, KEEP_ALL)
    assert _positions(page) == [7, 6, 5, 4, 3, 2, 1]
    # Retention keeps 5-7: all that 2 could read is gone, and that is all it says.
    page = await store.read_group_history("g:5", 2, 0, 10, small)
    assert page is not None and (page.entries, page.head, page.dropped_through) == ([], 2, 2)
    page = await store.read_group_history("g:5", 1, 0, 10, small)
    assert page is not None and _positions(page) == [7, 6, 5] and page.dropped_through == 4


async def test_a_deleted_groups_members_still_read_its_history(store: Store) -> None:
    await store.apply_group(_created(6, 1, 2), "e1", b"created", KEEP_ALL)
    await _group_says(store, "g:6", 2, "hi")
    deleted = groups.delete(await store.read_group("g:6"), 1)
    await store.apply_group(deleted, "e3", b"gone", KEEP_ALL)
    for reader in (1, 2):
        page = await store.read_group_history("g:6", reader, 0, 10, KEEP_ALL)
        assert page is not None
        assert [e.payload for e in page.entries] == [b"gone", b"hi", b"created"]
    assert await store.read_group_history("g:6", 3, 0, 10, KEEP_ALL) is None


# --- typing notes: reads only -------------------------------------------------------


async def test_many_sessions_are_read_at_once_in_order(store: Store) -> None:
    await store.claim_session(SessionRecord(1, "s1", "server-a"), ttl=10)
    await store.claim_session(SessionRecord(3, "s3", "server-b"), ttl=10)
    await store.mark_connected(3, "s3", "server-b", ttl=10)
    found = await store.get_sessions([3, 2, 1, 3])
    assert found == [
        SessionRecord(3, "s3", "server-b", connected=True),
        None,
        SessionRecord(1, "s1", "server-a"),
        SessionRecord(3, "s3", "server-b", connected=True),
    ]
    assert await store.get_sessions([]) == []


async def test_group_versions_follow_every_change(store: Store) -> None:
    retention = Retention()
    assert await store.group_versions(["g:1", "g:2"]) == [0, 0]
    await store.apply_group(_created(1, 10, 11), "e1", b"created", retention)
    await store.apply_group(_created(2, 10), "e2", b"created", retention)
    group = await store.read_group("g:1")
    assert group is not None
    await store.apply_group(groups.remove(group, 10, [11]), "e3", b"removed", retention)
    assert await store.group_versions(["g:2", "g:1", "g:3"]) == [1, 2, 0]
    assert await store.group_versions([]) == []


# --- conversation lists, read cursors, receipts (issue 13) ---------------------------------


async def _send(store: Store, cid: str, mid: str, sender: int, receiver: int) -> int:
    """A private send as the route makes it: its position."""
    item = ConversationItem(cid, mid, f"body-{mid}".encode())
    (done,) = await store.append_pointed([PointedItem(item, receiver, sender)], KEEP_ALL)
    return done.conversation.position


async def test_sends_keep_both_sides_lists_in_order_with_unread_counts(store: Store) -> None:
    ann, _ = await store.create_account("ann", "h")
    bob, _ = await store.create_account("bob", "h")
    cat, _ = await store.create_account("cat", "h")
    a, b, c = ann.user_id, bob.user_id, cat.user_id
    ab, ac = f"p:{a}:{b}", f"p:{a}:{c}"
    await _send(store, ab, "m1", a, b)
    await asyncio.sleep(0.005)
    await _send(store, ac, "m2", a, c)
    await asyncio.sleep(0.005)
    await _send(store, ab, "m3", b, a)
    await _send(store, ab, "m4", b, a)

    page = await store.list_conversations(a, 0, "", 10)
    assert [line.conversation_id for line in page.lines] == [ab, ac] and not page.more
    first, second = page.lines
    # Ann sent m1 (her cursor rose to 1), then bob sent two: 2 unread.
    assert (first.head, first.read, first.last) == (3, 1, b"body-m4")
    assert (second.head, second.read, second.last) == (1, 1, b"body-m2")
    assert first.activity_ms >= second.activity_ms and first.activity_ms > 1.6e12
    # Bob's side: m3 and m4 are his own (read 3), m1 came to him.
    (bob_line,) = (await store.list_conversations(b, 0, "", 10)).lines
    assert (bob_line.conversation_id, bob_line.head, bob_line.read) == (ab, 3, 3)
    assert bob_line.peer_read == 0
    (cat_line,) = (await store.list_conversations(c, 0, "", 10)).lines
    assert (cat_line.read, cat_line.head) == (0, 1)
    assert (await store.list_conversations(999, 0, "", 10)) == ConversationPage([], more=False)


async def test_a_list_pages_back_through_every_conversation_once(store: Store) -> None:
    # One batch: on Redis every line gets the same activity (ties by id).
    await store.append_pointers(
        [PointerItem(1, f"p:1:{n}", 1, f"m{n}") for n in range(2, 27)], KEEP_ALL
    )
    await asyncio.sleep(0.005)
    await store.append_pointers([PointerItem(1, "p:1:40", 1, "late")], KEEP_ALL)
    seen: list[str] = []
    before_ms, before_id = 0, ""
    for _ in range(10):
        page = await store.list_conversations(1, before_ms, before_id, 10)
        seen += [line.conversation_id for line in page.lines]
        if not page.more:
            break
        before_ms, before_id = page.lines[-1].activity_ms, page.lines[-1].conversation_id
    assert len(seen) == 26 and set(seen) == {f"p:1:{n}" for n in (*range(2, 27), 40)}
    assert seen[0] == "p:1:40"  # the latest activity first


async def test_a_retried_send_never_lowers_the_senders_cursor(store: Store) -> None:
    await _send(store, "p:1:2", "m1", 1, 2)
    await _send(store, "p:1:2", "m2", 1, 2)
    assert await _send(store, "p:1:2", "m1", 1, 2) == 1  # the retry: its first position
    (line,) = (await store.list_conversations(1, 0, "", 10)).lines
    assert (line.read, line.head) == (2, 2)


async def test_the_two_step_path_keeps_the_senders_side_too(store: Store) -> None:
    from cim.store.base import append_then_point

    item = ConversationItem("p:1:2", "m1", b"body-m1")
    await append_then_point(store, [PointedItem(item, 2, 1)], KEEP_ALL)
    (line,) = (await store.list_conversations(1, 0, "", 10)).lines
    assert (line.conversation_id, line.read, line.head) == ("p:1:2", 1, 1)
    (line,) = (await store.list_conversations(2, 0, "", 10)).lines
    assert (line.read, line.head) == (0, 1)


async def test_read_cursors_rise_never_fall_and_stop_at_the_head(store: Store) -> None:
    from cim.store.base import ReadMark

    for n in range(1, 6):
        await _send(store, "p:1:2", f"m{n}", 1, 2)
    await store.claim_session(SessionRecord(1, "s1", "srv", connected=True), ttl=10)
    (marked,) = await store.mark_read([ReadMark(2, "p:1:2", 3, notify_id=1)])
    assert (marked.position, marked.head, marked.receipt, marked.refused) == (3, 5, 3, False)
    assert marked.session == SessionRecord(1, "s1", "srv", connected=True)
    (lower,) = await store.mark_read([ReadMark(2, "p:1:2", 2)])
    assert (lower.position, lower.receipt, lower.session) == (3, 0, None)  # not lowered
    (past,) = await store.mark_read([ReadMark(2, "p:1:2", 99)])
    assert (past.position, past.receipt) == (5, 5)  # capped at the head
    (again,) = await store.mark_read([ReadMark(2, "p:1:2", 5)])
    assert again.receipt == 0  # the receipt did not move: nobody to tell
    (line,) = (await store.list_conversations(2, 0, "", 10)).lines
    assert (line.read, line.head) == (5, 5)
    (ann_line,) = (await store.list_conversations(1, 0, "", 10)).lines
    assert ann_line.peer_read == 5  # the other side's read position
    # The sender's own cursor (raised by sends) does not count as a receipt.
    page = await store.read_receipts("p:1:2", 1, False, 0, 0, 100)
    assert (page.readers, page.head, page.refused) == ([(2, 5)], 5, False)
    # A mark in an empty conversation changes nothing.
    (empty,) = await store.mark_read([ReadMark(3, "p:3:4", 4)])
    assert (empty.position, empty.head, empty.receipt) == (0, 0, 0)


async def test_group_marks_and_receipts_are_for_members_only(store: Store) -> None:
    from cim.store.base import ReadMark

    retention = Retention()
    await store.apply_group(_created(7, 1, 2, 3), "e1", b"created", retention)
    group = await store.read_group("g:7")
    assert group is not None
    for n in range(2, 5):  # messages at 2, 3, 4
        await store.append_conversations([ConversationItem("g:7", f"m{n}", b"x")], retention)
    marks = await store.mark_read(
        [ReadMark(2, "g:7", 3, group=True), ReadMark(3, "g:7", 4, group=True)]
    )
    assert [(m.position, m.receipt, m.joined, m.refused) for m in marks] == [
        (3, 3, 1, False),
        (4, 4, 1, False),
    ]
    (outsider,) = await store.mark_read([ReadMark(9, "g:7", 4, group=True)])
    assert outsider.refused and outsider.position == 0
    (nothing,) = await store.mark_read([ReadMark(2, "g:404", 1, group=True)])
    assert nothing.refused
    page = await store.read_receipts("g:7", 1, True, 0, 0, 100)
    assert sorted(page.readers) == [(2, 3), (3, 4)] and page.head == 4
    assert (await store.read_receipts("g:7", 1, True, 0, 4, 100)).readers == [(3, 4)]
    assert (await store.read_receipts("g:7", 9, True, 0, 0, 100)).refused
    # Removed: refused, and no longer among the readers.
    await store.apply_group(groups.remove(group, 1, [3]), "e5", b"removed", retention)
    (removed,) = await store.mark_read([ReadMark(3, "g:7", 5, group=True)])
    assert removed.refused
    assert (await store.read_receipts("g:7", 3, True, 0, 0, 100)).refused
    assert (await store.read_receipts("g:7", 1, True, 0, 0, 100)).readers == [(2, 3)]


async def test_receipts_page_through_a_big_group(store: Store) -> None:
    from cim.store.base import ReadMark

    retention = Retention()
    members = list(range(2, 302))
    await store.apply_group(_created(8, 1, *members), "e1", b"created", retention)
    await store.mark_read([ReadMark(uid, "g:8", 1, group=True) for uid in members])
    seen: list[int] = []
    cursor = 0
    for _ in range(100):
        page = await store.read_receipts("g:8", 1, True, cursor, 0, 50)
        seen += [uid for uid, _ in page.readers]
        cursor = page.next_cursor
        if cursor == 0:
            break
    assert sorted(set(seen)) == members


async def test_a_list_shows_groups_while_a_member_and_forgets_them_after(store: Store) -> None:
    from cim.store.base import OwnSend, ReadMark

    retention = Retention()
    await store.apply_group(_created(9, 1, 2), "e1", b"created", retention)
    await store.append_pointers([PointerItem(2, "g:9", 1, "e1")], retention, [OwnSend(1, "g:9", 1)])
    (a,) = await store.append_conversations([ConversationItem("g:9", "m2", b"hi")], retention)
    await store.append_pointers(
        [PointerItem(2, "g:9", a.position, "m2")], retention, [OwnSend(1, "g:9", a.position)]
    )
    (line,) = (await store.list_conversations(2, 0, "", 10)).lines
    assert (line.conversation_id, line.group_name, line.joined) == ("g:9", "group 9", 1)
    assert (line.head, line.read, line.last, line.peer_read) == (2, 0, b"hi", 0)
    (owner_line,) = (await store.list_conversations(1, 0, "", 10)).lines
    assert (owner_line.read, owner_line.head) == (2, 2)
    await store.mark_read([ReadMark(2, "g:9", 2, group=True)])
    group = await store.read_group("g:9")
    assert group is not None
    position = await store.apply_group(groups.leave(group, 2), "e3", b"left", retention)
    assert position is not None
    await store.append_pointers([PointerItem(2, "g:9", position, "e3")], retention)
    assert (await store.list_conversations(2, 0, "", 10)).lines == []
    assert (await store.list_conversations(2, 0, "", 10)).lines == []  # and dropped
