"""Behaviour only the Redis store has: key layout, no KEYS, outages, orphans, scripts.

The contract every store shares is in ``test_store_contract.py``; these tests
look at Redis itself through a raw client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from cim.errors import Unavailable
from cim.store.base import (
    ConversationItem,
    InboxItem,
    PointedItem,
    Retention,
    SendClaim,
    SendKey,
    SessionRecord,
)
from cim.store.factory import open_store
from cim.store.keys import KeyLayout
from cim.store.memory import MemoryStore
from cim.store.redis import AGE_EVERY, RedisStore
from tests.fixtures.redis_server import RedisClusterServers, RedisServer, free_port

# The standalone tests that list every key use a database nobody else uses.
PRIVATE_DB = 15


@dataclass
class Target:
    """A store and a raw client on the same Redis (standalone or cluster)."""

    store: RedisStore
    raw: Redis | RedisCluster
    prefix: str
    cluster: bool

    async def all_keys(self) -> set[str]:
        if self.cluster:  # shared: only this test's keys
            found = [key async for key in self.raw.scan_iter(match=f"{self.prefix}*")]
        else:  # a private, flushed database: every key there
            found = [key async for key in self.raw.scan_iter()]
        return {key.decode() for key in found}


@pytest.fixture(params=["redis", "redis-cluster"])
async def target(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Target]:
    raw: Redis | RedisCluster
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = f"{server.url}/{PRIVATE_DB}"
        raw = Redis.from_url(url)
        await raw.flushdb()
        store = RedisStore.from_url(url, key_prefix)
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        raw = RedisCluster.from_url(cluster.url.replace("redis+cluster://", "redis://"))
        await raw.initialize()
        store = RedisStore.from_url(cluster.url, key_prefix)
    yield Target(store, raw, key_prefix, request.param == "redis-cluster")
    await store.aclose()
    await raw.aclose()


async def raw_standalone(server: RedisServer) -> Redis:
    return Redis.from_url(server.url)


async def test_every_key_has_the_prefix_and_a_users_keys_share_one_slot(target: Target) -> None:
    store, layout = target.store, KeyLayout(target.prefix)
    alice, _ = await store.create_account("alice", "hash")
    uid = alice.user_id
    await store.claim_session(SessionRecord(uid, "s1", "server-a", "phone"), ttl=30)
    await store.mark_connected(uid, "s1", "server-a", ttl=30)
    await store.append_inbox([InboxItem(uid, "m1", b"payload")], Retention())
    assert [s.user_id async for s in store.online_sessions()] == [uid]

    expected = {
        f"{target.prefix}user_ids",
        f"{target.prefix}name:alice",
        f"{target.prefix}online",
        f"{target.prefix}{{u:{uid}}}:account",
        f"{target.prefix}{{u:{uid}}}:session",
        f"{target.prefix}{{u:{uid}}}:inbox:meta",
        f"{target.prefix}{{u:{uid}}}:inbox",
        f"{target.prefix}{{u:{uid}}}:inbox:bodies",
        f"{target.prefix}{{u:{uid}}}:inbox:ids",
        f"{target.prefix}{{u:{uid}}}:inbox:idseq",
    }
    user_keys = (
        layout.account(uid),
        layout.session(uid),
        layout.inbox_meta(uid),
        layout.inbox(uid),
        layout.inbox_bodies(uid),
        layout.inbox_ids(uid),
        layout.inbox_id_seqs(uid),
    )
    assert expected == {layout.user_id_counter, layout.name("alice"), layout.online, *user_keys}
    keys = await target.all_keys()
    assert keys == expected
    assert all(key.startswith(target.prefix) for key in keys)

    assert len({key_slot(key.encode()) for key in user_keys}) == 1
    if target.cluster:
        assert isinstance(target.raw, RedisCluster)
        slots = {await target.raw.cluster_keyslot(key) for key in user_keys}
        assert slots == {key_slot(user_keys[0].encode())}
    # different users (normally) land in different slots: the tag is the user id
    assert key_slot(layout.session(uid).encode()) != key_slot(layout.session(uid + 1).encode())


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        KeyLayout("cim{x}:")
    with pytest.raises(ValueError, match="must not contain"):
        open_store("redis://127.0.0.1:1", prefix="a{")


async def test_the_online_walk_uses_chunks_of_zscan_and_never_keys(
    redis_server: RedisServer, key_prefix: str
) -> None:
    store = RedisStore.from_url(redis_server.url, key_prefix)
    raw = await raw_standalone(redis_server)
    try:
        users = range(1, 2501)
        for start in range(0, len(users), 250):
            await asyncio.gather(
                *(
                    store.claim_session(SessionRecord(u, f"s{u}", "a", connected=True), ttl=30)
                    for u in users[start : start + 250]
                )
            )
        before: dict[str, Any] = await raw.info("commandstats")
        walked = [record.user_id async for record in store.online_sessions()]
        after: dict[str, Any] = await raw.info("commandstats")
    finally:
        await store.aclose()
        await raw.aclose()

    assert sorted(walked) == list(users)

    def calls(stats: dict[str, Any], command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    assert calls(after, "keys") == calls(before, "keys") == 0
    assert calls(after, "zscan") - calls(before, "zscan") >= 3  # 2,500 users, chunks of 1,000
    for whole_set in ("zrange", "zrangebyscore", "zrevrange", "smembers", "hgetall"):
        assert calls(after, whole_set) == calls(before, whole_set)


async def test_outage_raises_unavailable_quickly_and_the_store_recovers(
    redis_server: RedisServer, key_prefix: str
) -> None:
    store = RedisStore.from_url(redis_server.url, key_prefix)
    try:
        account, _ = await store.create_account("before", "hash")
        redis_server.stop()
        try:
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "get_account": lambda: store.get_account(account.user_id),
                "create_account": lambda: store.create_account("during", "hash"),
                "claim_session": lambda: store.claim_session(SessionRecord(1, "s", "a"), ttl=5),
                "refresh_sessions": lambda: store.refresh_sessions([(1, "s")], ttl=5),
                "release_session": lambda: store.release_session(1, "s"),
                "get_session": lambda: store.get_session(1),
                "append_inbox": lambda: store.append_inbox([InboxItem(1, "m", b"x")], Retention()),
                "read_inbox": lambda: store.read_inbox(1, 0, 10, Retention()),
                "ack_inbox": lambda: store.ack_inbox([(1, 1)]),
                "claim_sends": lambda: store.claim_sends([(SendKey(1, 1, "c"), "m")], ttl=5),
                "online_sessions": lambda: anext(aiter(store.online_sessions()), None),
            }
            for name, call in calls.items():
                started = time.monotonic()
                with pytest.raises(Unavailable) as info:
                    await call()
                elapsed = time.monotonic() - started
                assert elapsed < 3.0, f"{name} took {elapsed:.1f} s to fail"
                assert info.value.message.startswith("store unavailable: "), info.value.message
                assert "connect" in info.value.message.lower(), info.value.message
        finally:
            redis_server.start()

        # the same store object works again; Redis kept its data, lost its scripts
        assert await store.get_account(account.user_id) == account
        again, created = await store.create_account("after", "hash")
        assert created
        assert await store.claim_session(SessionRecord(again.user_id, "s1", "a"), ttl=5) is None
        assert await store.mark_connected(again.user_id, "s1", "a", ttl=5) is not None
        assert await store.refresh_sessions([(again.user_id, "s1")], ttl=5) == [True]
        assert [s.user_id async for s in store.online_sessions()] == [again.user_id]
        assert await store.release_session(again.user_id, "s1")
    finally:
        await store.aclose()


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_an_unreachable_redis_raises_unavailable(scheme: str) -> None:
    store = open_store(f"{scheme}://127.0.0.1:{free_port()}", "x:")
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"^store unavailable: "):
            await store.get_account(1)
        with pytest.raises(Unavailable):
            await store.refresh_sessions([(1, "s")], ttl=5)
        assert time.monotonic() - started < 3.0
    finally:
        await store.aclose()


async def test_an_orphan_account_does_not_break_registering_its_name(target: Target) -> None:
    layout = KeyLayout(target.prefix)
    # A register that crashed after writing the account, before claiming the name.
    orphan_id = int(await target.raw.incr(layout.user_id_counter))
    await target.raw.hset(
        layout.account(orphan_id), mapping={"name": "carol", "password_hash": "old"}
    )
    assert await target.store.get_account_by_name("carol") is None

    carol, created = await target.store.create_account("carol", "new")
    assert created and carol.user_id != orphan_id
    assert await target.store.get_account_by_name("carol") == carol
    again, created_again = await target.store.create_account("carol", "other")
    assert again == carol and not created_again


async def test_losing_registrations_leave_no_orphans(target: Target) -> None:
    results = await asyncio.gather(
        *(target.store.create_account("dup", f"h{n}") for n in range(20))
    )
    assert sum(created for _, created in results) == 1
    accounts = [key async for key in target.raw.scan_iter(match=f"{target.prefix}{{u:*}}:account")]
    assert len(accounts) == 1
    assert await target.raw.get(KeyLayout(target.prefix).user_id_counter) == b"20"


async def test_a_name_pointing_at_a_missing_account_is_freed(target: Target) -> None:
    await target.raw.set(KeyLayout(target.prefix).name("dave"), 999)
    assert await target.store.get_account_by_name("dave") is None
    dave, created = await target.store.create_account("dave", "hash")
    assert created and dave.user_id != 999
    assert await target.store.get_account_by_name("dave") == dave


async def test_scripts_are_reloaded_after_redis_forgets_them(target: Target) -> None:
    store = target.store
    await store.claim_session(SessionRecord(1, "s1", "a"), ttl=10)
    await target.raw.script_flush()
    assert await store.refresh_sessions([(1, "s1"), (2, "x")], ttl=10) == [True, False]
    await target.raw.script_flush()
    assert await store.mark_connected(1, "s1", "b", ttl=10) is not None
    await target.raw.script_flush()
    assert await store.claim_session(SessionRecord(1, "s2", "c"), ttl=10) is not None
    await target.raw.script_flush()
    (appended,) = await store.append_inbox([InboxItem(1, "m1", b"x")], Retention())
    assert appended.seq == 1 and appended.session is not None
    await target.raw.script_flush()
    # a batch that spans users (and cluster nodes) runs again after the reload
    batch = [InboxItem(user_id, "m2", b"y") for user_id in (1, 2, 3)]
    assert [a.seq for a in await store.append_inbox(batch, Retention())] == [2, 1, 1]
    await target.raw.script_flush()
    page = await store.read_inbox(1, 0, 5, Retention())
    assert [(e.seq, e.payload) for e in page.entries] == [(1, b"x"), (2, b"y")]
    await target.raw.script_flush()
    await store.ack_inbox([(1, 2), (2, 1)])
    assert (await store.read_inbox(1, 0, 5, Retention())).entries == []
    await target.raw.script_flush()
    assert await store.release_session(1, "s1", server_id="b")


async def test_an_append_checks_the_age_bound_every_few_entries_and_a_read_always(
    target: Target,
) -> None:
    """The age bound costs an append two more calls, so an append checks it
    on every AGE_EVERY-th position only (the count on every one); a read
    checks both, so nobody reads an entry past its bound."""
    store, log = target.store, KeyLayout(target.prefix).conversation_log("p:1:2")
    short = Retention(history_max_age=0.3)

    async def append(*ids: str) -> None:
        await store.append_conversations([ConversationItem("p:1:2", i, b"x") for i in ids], short)

    await append("old")
    await asyncio.sleep(0.5)
    await append("m2")  # position 2: the age is not checked
    assert await target.raw.zcard(log) == 2
    page = await store.read_history("p:1:2", 0, 10, short)
    assert ([e.position for e in page.entries], page.dropped_through) == ([2], 1)
    assert await target.raw.zcard(log) == 1
    await append(*(f"m{n}" for n in range(3, AGE_EVERY)))
    await asyncio.sleep(0.5)
    await append("last")  # position AGE_EVERY: everything older goes
    assert await target.raw.zcard(log) == 1
    count = Retention(history_max_messages=1)
    await store.append_conversations([ConversationItem("p:1:2", "c", b"x")], count)
    assert await target.raw.zcard(log) == 1  # the count is checked on every append


async def test_the_private_send_scripts_are_reloaded_too(target: Target) -> None:
    store = target.store
    await target.raw.script_flush()
    send = SendKey(2, 1, "c-1", b"d", conversation="p:1:2")
    item = PointedItem(ConversationItem("p:1:2", "m1", b"x", send), 2, 1, fresh=True)
    (done,) = await store.append_pointed([item], Retention())
    assert done.pointer is not None and done.pointer.seq == 1
    await target.raw.script_flush()
    await store.finish_sends([(send, b"result")], ttl=10)
    assert await store.read_sends([send]) == [SendClaim("", b"result", b"d")]


async def test_the_online_index_is_cleaned_up(target: Target) -> None:
    store, online = target.store, KeyLayout(target.prefix).online
    for user_id in (1, 2, 3):
        await store.claim_session(SessionRecord(user_id, f"s{user_id}", "a"), ttl=10)
        await store.mark_connected(user_id, f"s{user_id}", "a", ttl=10)
    assert await target.raw.zcard(online) == 3
    # released: gone from the index at once
    assert await store.release_session(1, "s1")
    assert await target.raw.zscore(online, "1") is None
    # a release racing a newer session of the same user leaves the newer entry
    await store.claim_session(SessionRecord(2, "s2b", "b"), ttl=10, replace_session_id="s2")
    await store.mark_connected(2, "s2b", "b", ttl=20)
    assert not await store.release_session(2, "s2")
    assert await target.raw.zscore(online, "2") is not None
    # expired: dropped by the next walk
    await store.mark_connected(3, "s3", "a", ttl=0.2)
    await asyncio.sleep(0.3)
    assert [s.user_id async for s in store.online_sessions()] == [2]
    assert await target.raw.zscore(online, "3") is None
    assert await target.raw.zcard(online) == 1


async def test_session_keys_expire_in_redis_itself(target: Target) -> None:
    await target.store.claim_session(SessionRecord(1, "s1", "a"), ttl=2.5)
    ttl_ms = await target.raw.pttl(KeyLayout(target.prefix).session(1))
    assert 2000 < ttl_ms <= 2500
    await target.store.refresh_sessions([(1, "s1")], ttl=30)
    assert await target.raw.pttl(KeyLayout(target.prefix).session(1)) > 25_000


async def test_open_store_picks_the_implementation_from_the_url(
    redis_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    for url in (None, "", "memory://"):
        assert isinstance(open_store(url), MemoryStore)
    stores = [
        open_store(redis_server.url),
        open_store(f"unix://{redis_server.directory}/absent.sock"),
        open_store(redis_cluster.url, "c:"),
    ]
    try:
        plain, unix, cluster = (s for s in stores if isinstance(s, RedisStore))
        assert isinstance(plain.client, Redis) and isinstance(unix.client, Redis)
        assert isinstance(cluster.client, RedisCluster)
        assert cluster.keys.prefix == "c:" and plain.keys.prefix == "cim:"
        assert await cluster.get_account(10**9) is None  # it reaches the cluster
    finally:
        for store in stores:
            await store.aclose()
    for bad in ("http://127.0.0.1:6379", "mysql://x", "127.0.0.1:6379"):
        with pytest.raises(ValueError, match="unsupported store URL"):
            open_store(bad)
    with pytest.raises(ValueError, match="cluster=False"):
        RedisStore.from_url(redis_cluster.url, cluster=False)


async def test_a_client_decoding_responses_is_refused(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisStore(client)
    finally:
        await client.aclose()


async def test_inbox_keys_hold_timed_bodies_and_forget_ids_after_the_window(
    target: Target,
) -> None:
    store, layout = target.store, KeyLayout(target.prefix)
    short_ids = Retention(id_window=1.0)
    before_ms = int(time.time() * 1000)
    await store.append_inbox([InboxItem(7, "m1", b"\x00payload\xff")], short_ids)
    body = await target.raw.hget(layout.inbox_bodies(7), "m1")
    assert body is not None and body[13:] == b"\x00payload\xff"
    assert before_ms <= int(body[:13]) <= int(time.time() * 1000)
    assert await target.raw.zscore(layout.inbox(7), "m1") == 1
    assert await target.raw.hget(layout.inbox_id_seqs(7), "m1") == b"1"
    assert 0 < await target.raw.pttl(layout.inbox_ids(7)) <= 1000
    assert 0 < await target.raw.pttl(layout.inbox_id_seqs(7)) <= 1000
    assert await target.raw.pttl(layout.inbox_meta(7)) == -1  # seqs never restart

    await asyncio.sleep(0.6)
    await store.append_inbox([InboxItem(7, "m2", b"x")], short_ids)
    await asyncio.sleep(0.6)  # m1 is past the window, m2 (0.4 s of slack) is not
    (retried,) = await store.append_inbox([InboxItem(7, "m2", b"x")], short_ids)
    assert retried.seq == 2
    assert await target.raw.zrange(layout.inbox_ids(7), 0, -1) == [b"m2"]
    assert await target.raw.hkeys(layout.inbox_id_seqs(7)) == [b"m2"]
    assert await target.raw.hmget(layout.inbox_meta(7), ["head", "dropped"]) == [b"2", None]


async def test_retention_trims_at_most_a_hundred_entries_per_call(target: Target) -> None:
    store, layout = target.store, KeyLayout(target.prefix)
    batch = [InboxItem(7, f"m{n}", b"x") for n in range(1, 251)]
    assert [a.seq for a in await store.append_inbox(batch, Retention())] == list(range(1, 251))
    small = Retention(max_messages=10)
    page = await store.read_inbox(7, 0, 5, small)
    assert [e.seq for e in page.entries] == [101, 102, 103, 104, 105] and page.more
    assert (page.head_seq, page.dropped_through) == (250, 100)
    assert await target.raw.zcard(layout.inbox(7)) == 150
    assert await target.raw.hlen(layout.inbox_bodies(7)) == 150
    await store.read_inbox(7, 0, 0, small)
    page = await store.read_inbox(7, 0, 100, small)
    assert [e.seq for e in page.entries] == list(range(241, 251)) and not page.more
    assert page.dropped_through == 240
    assert await target.raw.hlen(layout.inbox_bodies(7)) == 10
    # an ack removes bodies too, and is not a drop
    await store.ack_inbox([(7, 245)])
    assert await target.raw.hlen(layout.inbox_bodies(7)) == 5
    assert (await store.read_inbox(7, 0, 100, small)).dropped_through == 240


async def test_an_append_reads_the_session_as_get_session_does(target: Target) -> None:
    store = target.store
    record = SessionRecord(7, "s1", "a", device_id="phone")
    await store.claim_session(record, ttl=0.3)
    (appended,) = await store.append_inbox([InboxItem(7, "m1", b"x")], Retention())
    assert appended.session == record == await store.get_session(7)
    await asyncio.sleep(0.4)  # the session expired in Redis
    (later,) = await store.append_inbox([InboxItem(7, "m2", b"x")], Retention())
    assert later.session is None and later.seq == 2


async def test_a_send_claim_is_one_key_of_the_sender(target: Target) -> None:
    store, key = target.store, KeyLayout(target.prefix).sent(1, 1, "c1")
    send = SendKey(1, 1, "c1", b"\x01\x02")
    assert await store.claim_sends([(send, "msg-1")], ttl=0.5) == [None]
    assert await target.raw.get(key) == b"M\x02\x01\x02msg-1"
    assert 0 < await target.raw.pttl(key) <= 500
    await store.finish_sends([(send, b"rm\x00")], ttl=30)
    assert await target.raw.get(key) == b"R\x02\x01\x02rm\x00"
    assert await store.claim_sends([(send, "msg-2")], ttl=30) == [
        SendClaim("", b"rm\x00", b"\x01\x02")
    ]
