"""A Redis store written by the previous cim, opened by this one.

``tests/fixtures/parent_store.json`` holds the keys the commit before
look-alike names and send digests wrote (made by running that commit's code:
``tests/fixtures/make_parent_store.py``): four accounts whose names now count
as one name, and send claims without digests. ``parent_inbox.json`` holds the
keys the commit before conversations wrote (``make_parent_inbox.py``): private
messages as full copies in the receiver's inbox, one of them acked, and their
claims under the receiver's keys. Loaded into standalone Redis and a Redis
Cluster, they keep working under the current route.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis, RedisCluster

from cim.core.names import existing_name_keys
from cim.proto.v1 import common_pb2, route_pb2
from cim.registry import InProcessRegistry
from cim.store.redis import RedisStore
from cim.testing import cluster

FIXTURE = Path(__file__).parent.parent / "fixtures" / "parent_store.json"
INBOX_FIXTURE = Path(__file__).parent.parent / "fixtures" / "parent_inbox.json"


def _bytes(value: dict[str, str]) -> bytes:
    return value["utf8"].encode() if "utf8" in value else base64.b64decode(value["base64"])


@dataclass
class Parent:
    store: RedisStore
    document: dict[str, Any]

    def password(self, name: str) -> str:
        return str(self.document["accounts"][name]["password"])

    def user_id(self, name: str) -> int:
        return int(self.document["accounts"][name]["user_id"])

    def result(self, which: str) -> common_pb2.SendResponse:
        return common_pb2.SendResponse.FromString(base64.b64decode(self.document["claims"][which]))


async def _load(
    request: pytest.FixtureRequest, key_prefix: str, document: dict[str, Any]
) -> Parent:
    """A fixture's keys under this test's prefix, and a store on them. The
    append times in inbox entries and remembered ids become now: the store as
    its code left it just before the upgrade (retention would otherwise drop
    the entries once the fixture is older than the inbox's age bound)."""
    raw: Redis | RedisCluster
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        raw = Redis.from_url(url)
    else:
        url = request.getfixturevalue("redis_cluster").url
        raw = RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    now = time.time_ns() // 1_000_000
    stamp = b"%013d" % now
    for entry in document["keys"]:
        key = key_prefix + entry["key"].removeprefix(document["prefix"])
        if entry["type"] == "string":
            await raw.set(key, _bytes(entry["value"]))
        elif entry["type"] == "zset":
            fresh = key.endswith(":inbox:ids")
            await raw.zadd(key, {_bytes(m): now if fresh else score for m, score in entry["value"]})
        else:
            mapping = {f: _bytes(v) for f, v in entry["value"].items()}
            if key.endswith(":inbox:bodies"):
                mapping = {f: stamp + v[13:] for f, v in mapping.items()}
            await raw.hset(key, mapping=mapping)
        if entry["pttl"] > 0:
            await raw.pexpire(key, entry["pttl"])
    await raw.aclose()
    return Parent(RedisStore.from_url(url, key_prefix), document)


@pytest.fixture(params=["redis", "redis-cluster"])
async def parent(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Parent]:
    """The keys of the commit before look-alike names and send digests."""
    loaded = await _load(request, key_prefix, json.loads(FIXTURE.read_text()))
    yield loaded
    await loaded.store.aclose()


@pytest.fixture(params=["redis", "redis-cluster"])
async def parent_inbox(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Parent]:
    """The keys of the commit before conversations: full copies in bob's inbox."""
    loaded = await _load(request, key_prefix, json.loads(INBOX_FIXTURE.read_text()))
    yield loaded
    await loaded.store.aclose()


def _login(name: str, password: str) -> route_pb2.LoginRequest:
    return route_pb2.LoginRequest(user_name=name, password=password)


async def test_older_accounts_read_as_enabled(parent):
    # Written before the disabled flag: no such field, so enabled.
    for name in parent.document["accounts"]:
        account = await parent.store.get_account(parent.user_id(name))
        assert account is not None and account.user_name == name
        assert not account.disabled and account.disabled_reason == ""
        assert await parent.store.get_account_by_name(name) == account


async def test_older_accounts_keep_their_names_and_block_new_look_alikes(parent, raw, fails):
    async with cluster(store=parent.store, registry=InProcessRegistry()) as c:
        # The route's start-up backfill: one name key for four older accounts.
        assert await c.embedded.route.names_indexed() == 1
        stub = raw.route(c)
        for name in parent.document["accounts"]:
            login = await stub.Login(_login(name, parent.password(name)))
            assert (login.user_id, login.user_name) == (parent.user_id(name), name)
            again = await stub.Register(
                route_pb2.RegisterRequest(user_name=name, password=parent.password(name))
            )
            assert (again.user_id, again.created) == (parent.user_id(name), False)
            taken = await fails(
                stub.Register(route_pb2.RegisterRequest(user_name=name, password="other"))
            )
            assert taken.details() == f"user name {name!r} is taken"
        err = await fails(stub.Register(route_pb2.RegisterRequest(user_name="Seca", password="pw")))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert err.details() == "user name 'Seca' is too much like an existing user's name"
        created = await stub.Register(route_pb2.RegisterRequest(user_name="secB", password="pw"))
        assert created.created
    # Another route starting later finds nothing left to index.
    assert await parent.store.index_names(existing_name_keys) == 0


async def test_send_claims_without_a_digest_are_taken_for_exact_retries(parent, raw):
    async with cluster(store=parent.store, registry=InProcessRegistry()) as c:
        stub = raw.route(c)
        sender = await stub.Login(_login("secA", parent.password("secA")))
        receiver_id = parent.user_id("SECA")
        auth = raw.auth(sender.session_token)

        def private(text: str, client_msg_id: str) -> common_pb2.SendPrivateRequest:
            return common_pb2.SendPrivateRequest(
                receiver_id=receiver_id, text=text, client_msg_id=client_msg_id
            )

        # Finished sends: their remembered results, whatever the retry's text
        # (the older claims cannot tell).
        assert await stub.SendPrivate(private("any", "legacy-done"), metadata=auth) == (
            parent.result("done")
        )
        group = common_pb2.SendGroupRequest(text="any", client_msg_id="legacy-group")
        assert await stub.SendGroup(group, metadata=auth) == parent.result("group")
        # An unfinished send (its route crashed): the retry takes over its message id.
        unfinished = await stub.SendPrivate(private("hello", "legacy-unfinished"), metadata=auth)
        assert unfinished.message_id == parent.document["claims"]["unfinished_id"]
        receiver = await stub.Login(_login("SECA", parent.password("SECA")))
        inbox = await stub.FetchOffline(
            route_pb2.FetchOfflineRequest(), metadata=raw.auth(receiver.session_token)
        )
        assert [(m.message_id, m.text, m.seq) for m in inbox.messages] == [
            (unfinished.message_id, "hello", 1)
        ]


async def test_an_inbox_written_before_conversations_replays_without_loss(parent_inbox, raw, fails):
    """Every old entry once, in seq order, with its conversation and no
    position; new messages continue the same seqs as pointers beside them;
    retries of the older sends get their remembered results."""
    document = parent_inbox.document
    alice_id, bob_id = (document["accounts"][n]["user_id"] for n in ("alice", "bob"))
    cid = f"p:{min(alice_id, bob_id)}:{max(alice_id, bob_id)}"
    async with cluster(store=parent_inbox.store, registry=InProcessRegistry()) as c:
        stub = raw.route(c)
        alice = await stub.Login(_login("alice", parent_inbox.password("alice")))
        bob = await stub.Login(_login("bob", parent_inbox.password("bob")))
        as_alice, as_bob = raw.auth(alice.session_token), raw.auth(bob.session_token)

        async def inbox(after: int) -> route_pb2.FetchOfflineResponse:
            request = route_pb2.FetchOfflineRequest(after_seq=after)
            return await stub.FetchOffline(request, metadata=as_bob)

        old = await inbox(0)
        assert [(m.seq, m.text, m.conversation_id, m.position) for m in old.messages] == [
            (2, "old two", cid, 0),
            (3, "old three", cid, 0),
            (4, "old four", cid, 0),
        ]
        assert old.head_seq == 4 and not old.more

        new = await stub.SendPrivate(
            common_pb2.SendPrivateRequest(receiver_id=bob_id, text="new one"), metadata=as_alice
        )
        (message,) = (await inbox(4)).messages
        assert (message.message_id, message.seq, message.conversation_id, message.position) == (
            new.message_id,
            5,
            cid,
            1,
        )

        # The older code's claims, under bob's keys, still answer retries.
        for text, client_msg_id, result in document["sends"]:
            if not client_msg_id:
                continue
            retry = common_pb2.SendPrivateRequest(
                receiver_id=bob_id, text=text, client_msg_id=client_msg_id
            )
            remembered = common_pb2.SendResponse.FromString(base64.b64decode(result))
            assert await stub.SendPrivate(retry, metadata=as_alice) == remembered
        reused = common_pb2.SendPrivateRequest(
            receiver_id=bob_id, text="another text", client_msg_id="old-2"
        )
        err = await fails(stub.SendPrivate(reused, metadata=as_alice))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await inbox(0)).head_seq == 5  # no second delivery

        # Acks trim old and new entries alike.
        await stub.AckMessages(route_pb2.AckMessagesRequest(seq=5), metadata=as_bob)
        assert list((await inbox(0)).messages) == []
