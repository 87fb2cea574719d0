"""A Redis store written by the previous cim, opened by this one.

``tests/fixtures/parent_store.json`` holds the keys the commit before
look-alike names and send digests wrote (made by running that commit's code:
``tests/fixtures/make_parent_store.py``): four accounts whose names now count
as one name, and send claims without digests. Loaded into standalone Redis
and a Redis Cluster, they keep working under the current route.
"""

from __future__ import annotations

import base64
import json
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


@pytest.fixture(params=["redis", "redis-cluster"])
async def parent(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Parent]:
    """The fixture's keys under this test's prefix, and a store on them."""
    document = json.loads(FIXTURE.read_text())
    raw: Redis | RedisCluster
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        raw = Redis.from_url(url)
    else:
        url = request.getfixturevalue("redis_cluster").url
        raw = RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    for entry in document["keys"]:
        key = key_prefix + entry["key"].removeprefix(document["prefix"])
        if entry["type"] == "string":
            await raw.set(key, _bytes(entry["value"]))
        else:
            await raw.hset(key, mapping={f: _bytes(v) for f, v in entry["value"].items()})
        if entry["pttl"] > 0:
            await raw.pexpire(key, entry["pttl"])
    await raw.aclose()
    store = RedisStore.from_url(url, key_prefix)
    yield Parent(store, document)
    await store.aclose()


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
