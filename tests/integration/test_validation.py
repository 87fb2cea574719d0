"""Send validation: text rules and receivers, identical on the stream and unary paths."""

from __future__ import annotations

import grpc
import pytest

from cim.config import ServerConfig
from cim.errors import InvalidArgument, NotFound
from cim.proto.v1 import common_pb2
from cim.testing import cluster
from cim.testing import fast_route_config as route_config

LIMIT = 64
PATHS = ["stream", "unary"]


@pytest.fixture
async def small():
    """Route and chat servers both limit texts to 64 bytes; round-robin routing."""
    async with cluster(
        servers=2,
        route_config=route_config(max_text_bytes=LIMIT, routing="round-robin"),
        server_config=ServerConfig(cluster_secrets=("x",), max_text_bytes=LIMIT),
    ) as c:
        yield c


@pytest.fixture
async def pair(small):
    alice = await small.client("alice")
    bob = await small.client("bob")
    assert alice.server.server_id != bob.server.server_id
    return alice, bob


def _private(client, path):
    return client.send_private if path == "stream" else client.route.send_private


def _group(client, path):
    return client.send_group if path == "stream" else client.route.send_group


async def _nothing_arrives(c, client, wait: float = 0.3) -> bool:
    try:
        await c.next_message(client, timeout=wait)
    except TimeoutError:
        return True
    return False


BAD_TEXTS = {
    "empty": "",
    "blank": "  \t\n ",
    "over-limit": "x" * (LIMIT + 1),
    "over-limit-in-bytes": "\u20ac" * 22,  # 22 characters, 66 bytes of UTF-8
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("text", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
async def test_bad_private_text_is_invalid_argument(small, pair, path, text):
    alice, bob = pair
    with pytest.raises(InvalidArgument):
        await _private(alice, path)(bob.user_id, text)
    assert await _nothing_arrives(small, bob, wait=0.1)
    assert list((await bob.fetch_offline()).messages) == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("text", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
async def test_bad_group_text_is_invalid_argument(small, pair, path, text):
    alice, bob = pair
    with pytest.raises(InvalidArgument):
        await _group(alice, path)(text)
    assert await _nothing_arrives(small, bob, wait=0.1)


@pytest.mark.parametrize("path", PATHS)
async def test_text_of_exactly_the_limit_is_accepted(small, pair, path):
    alice, bob = pair
    text = "\u20ac" * 21 + "x"  # 64 bytes
    assert len(text.encode()) == LIMIT
    result = await _private(alice, path)(bob.user_id, text)
    assert result.status == common_pb2.DELIVERY_STATUS_DELIVERED
    assert (await small.next_message(bob)).text == text


@pytest.mark.parametrize("text", ["", "x" * (LIMIT + 1)], ids=["empty", "over-limit"])
async def test_bad_text_status_on_the_unary_path(small, raw, fails, text):
    alice = await raw.login(small, "alice")
    bob_id = await raw.register(small, "bob")
    err = await fails(
        raw.route(small).SendPrivate(
            common_pb2.SendPrivateRequest(receiver_id=bob_id, text=text),
            metadata=raw.auth(alice.session_token),
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text" in err.details()


async def test_route_enforces_its_limit_behind_a_more_lenient_chat_server():
    # Chat servers with the default (4096 byte) limit: the route still refuses.
    async with cluster(servers=1, route_config=route_config(max_text_bytes=LIMIT)) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        with pytest.raises(InvalidArgument):
            await alice.send_private(bob.user_id, "y" * (LIMIT + 1))
        with pytest.raises(InvalidArgument):
            await alice.send_group("y" * (LIMIT + 1))


@pytest.mark.parametrize("path", PATHS)
async def test_unknown_receiver_is_not_found(small, pair, path):
    alice, _ = pair
    with pytest.raises(NotFound):
        await _private(alice, path)(999_999, "anyone there?")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("receiver_id", [0, -5])
async def test_non_positive_receiver_id_is_invalid_argument(small, pair, path, receiver_id):
    alice, _ = pair
    with pytest.raises(InvalidArgument):
        await _private(alice, path)(receiver_id, "to nobody")


async def test_receiver_status_codes_on_the_unary_path(small, raw, fails):
    alice = await raw.login(small, "alice")
    stub, auth = raw.route(small), raw.auth(alice.session_token)
    unknown = await fails(
        stub.SendPrivate(
            common_pb2.SendPrivateRequest(receiver_id=424242, text="hi"), metadata=auth
        )
    )
    zero = await fails(
        stub.SendPrivate(common_pb2.SendPrivateRequest(receiver_id=0, text="hi"), metadata=auth)
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert zero.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("path", PATHS)
async def test_oversized_client_msg_id_is_invalid_argument(small, pair, path):
    alice, bob = pair
    with pytest.raises(InvalidArgument):
        await _private(alice, path)(bob.user_id, "hi", client_msg_id="k" * 129)


async def test_stream_keeps_working_after_rejected_sends(small, pair):
    alice, bob = pair
    for bad in BAD_TEXTS.values():
        with pytest.raises(InvalidArgument):
            await alice.send_private(bob.user_id, bad)
    with pytest.raises(NotFound):
        await alice.send_private(999_999, "x")

    result = await alice.send_private(bob.user_id, "still fine")
    assert result.status == common_pb2.DELIVERY_STATUS_DELIVERED
    assert (await small.next_message(bob)).text == "still fine"
    assert alice.connected
