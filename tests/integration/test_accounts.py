"""Register: creating accounts, idempotent re-registration, name conflicts, validation."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cim.errors import AlreadyExists, InvalidArgument
from cim.proto.v1 import route_pb2


async def test_register_creates_an_account(rr, raw):
    reply = await raw.route(rr).Register(
        route_pb2.RegisterRequest(user_name="alice", password="pw-1"), timeout=5
    )
    assert reply.created is True
    assert reply.user_id > 0
    assert reply.user_name == "alice"


async def test_register_gives_each_user_its_own_id(rr):
    alice = await rr.client("alice", connect=False)
    bob = await rr.client("bob", connect=False)
    assert alice.user_id > 0
    assert bob.user_id > 0
    assert alice.user_id != bob.user_id


async def test_register_again_with_same_password_returns_same_account(rr, raw):
    stub = raw.route(rr)
    first = await stub.Register(route_pb2.RegisterRequest(user_name="alice", password="pw-1"))
    again = await stub.Register(route_pb2.RegisterRequest(user_name="alice", password="pw-1"))
    assert first.created is True
    assert again.created is False
    assert again.user_id == first.user_id
    assert again.user_name == "alice"


async def test_register_again_through_client_library_reports_not_created(rr):
    alice = await rr.client("alice", connect=False)
    assert await alice.register() is False


async def test_register_taken_name_with_other_password_is_already_exists(rr, raw, fails):
    stub = raw.route(rr)
    await stub.Register(route_pb2.RegisterRequest(user_name="alice", password="pw-1"))
    err = await fails(stub.Register(route_pb2.RegisterRequest(user_name="alice", password="pw-2")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "alice" in err.details()


async def test_register_taken_name_raises_already_exists_in_client_library(rr):
    await rr.client("alice", "pw-1", connect=False)
    with pytest.raises(AlreadyExists):
        await rr.client("alice", "pw-2", connect=False)


@pytest.mark.parametrize(
    "name",
    ["", "has space", "bad/slash", "semi;colon", "x" * 33, "emoji-\U0001f600"],
    ids=["empty", "space", "slash", "semicolon", "too-long", "emoji"],
)
async def test_register_invalid_user_name_is_invalid_argument(rr, raw, fails, name):
    err = await fails(
        raw.route(rr).Register(route_pb2.RegisterRequest(user_name=name, password="pw"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user name" in err.details()


async def test_register_accepts_longest_allowed_name(rr, raw):
    reply = await raw.route(rr).Register(
        route_pb2.RegisterRequest(user_name="a" * 32, password="pw")
    )
    assert reply.created is True


@pytest.mark.parametrize("password", ["", "p" * 1025], ids=["empty", "too-long"])
async def test_register_bad_password_is_invalid_argument(rr, raw, fails, password):
    err = await fails(
        raw.route(rr).Register(route_pb2.RegisterRequest(user_name="alice", password=password))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password" in err.details()


async def test_register_invalid_input_raises_invalid_argument_in_client_library(rr):
    with pytest.raises(InvalidArgument):
        await rr.client("no spaces allowed", connect=False)
    with pytest.raises(InvalidArgument):
        await rr.client("alice", "", connect=False)


async def test_failed_register_creates_nothing(rr, raw):
    stub = raw.route(rr)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Register(route_pb2.RegisterRequest(user_name="alice", password=""))
    reply = await stub.Register(route_pb2.RegisterRequest(user_name="alice", password="pw"))
    assert reply.created is True


async def test_concurrent_registers_of_one_name_create_one_account(rr, raw):
    stub = raw.route(rr)
    request = route_pb2.RegisterRequest(user_name="alice", password="pw")
    replies = await asyncio.gather(*(stub.Register(request) for _ in range(5)))
    assert sum(reply.created for reply in replies) == 1
    assert len({reply.user_id for reply in replies}) == 1


async def test_concurrent_registers_with_different_passwords_let_one_win(rr, raw):
    stub = raw.route(rr)
    replies = await asyncio.gather(
        *(
            stub.Register(route_pb2.RegisterRequest(user_name="alice", password=f"pw-{i}"))
            for i in range(5)
        ),
        return_exceptions=True,
    )
    created = [r for r in replies if isinstance(r, route_pb2.RegisterResponse)]
    refused = [r for r in replies if not isinstance(r, route_pb2.RegisterResponse)]
    assert len(created) == 1
    assert created[0].created is True
    assert all(err.code() == grpc.StatusCode.ALREADY_EXISTS for err in refused)


# --- look-alike names ---------------------------------------------------------------------------

# Case, a Cyrillic small ie for the e, full width: each is "secA" to a reader.
LOOK_ALIKES = ["SECA", "s\u0435cA", "\uff33\uff25\uff23\uff21", "seca"]


@pytest.mark.parametrize("alike", LOOK_ALIKES, ids=["case", "cyrillic", "full-width", "lower"])
async def test_a_name_too_much_like_an_existing_one_is_already_exists(rr, raw, fails, alike):
    stub = raw.route(rr)
    first = await stub.Register(route_pb2.RegisterRequest(user_name="secA", password="pw-1"))
    # Whatever the password, even the first account's own: it is another name.
    for password in ("pw-2", "pw-1"):
        err = await fails(
            stub.Register(route_pb2.RegisterRequest(user_name=alike, password=password))
        )
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert err.details() == f"user name {alike!r} is too much like an existing user's name"
    # The exact name keeps today's behaviour.
    again = await stub.Register(route_pb2.RegisterRequest(user_name="secA", password="pw-1"))
    assert (again.user_id, again.created) == (first.user_id, False)
    err = await fails(stub.Register(route_pb2.RegisterRequest(user_name="secA", password="pw-2")))
    assert err.details() == "user name 'secA' is taken"
    # A name that only looks a bit alike is a name of its own.
    other = await stub.Register(route_pb2.RegisterRequest(user_name="secB", password="pw-1"))
    assert other.created


async def test_a_look_alike_name_raises_already_exists_in_client_library(rr):
    await rr.client("paypal", connect=False)
    with pytest.raises(AlreadyExists, match="too much like"):
        await rr.client("p\u0430yp\u0430l", connect=False)  # Cyrillic a


async def test_a_name_the_precis_profile_refuses_is_invalid_argument(rr, raw, fails):
    err = await fails(
        raw.route(rr).Register(route_pb2.RegisterRequest(user_name="x\u00b2", password="pw"))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "user name 'x²' is not allowed: has compat at character 2"


async def test_concurrent_registers_of_look_alike_names_let_exactly_one_win(rr, raw):
    stub = raw.route(rr)
    names = ["secA", *LOOK_ALIKES] * 2
    replies = await asyncio.gather(
        *(
            stub.Register(route_pb2.RegisterRequest(user_name=name, password="pw"))
            for name in names
        ),
        return_exceptions=True,
    )
    created = [r for r in replies if isinstance(r, route_pb2.RegisterResponse) and r.created]
    assert len(created) == 1, replies
    winner = created[0]
    for name, reply in zip(names, replies, strict=True):
        if isinstance(reply, route_pb2.RegisterResponse):  # the winner's name, again
            assert (reply.user_id, reply.user_name) == (winner.user_id, name)
        else:
            assert reply.code() == grpc.StatusCode.ALREADY_EXISTS
            assert name != winner.user_name and "too much like" in reply.details()
    login = await stub.Login(route_pb2.LoginRequest(user_name=winner.user_name, password="pw"))
    assert login.user_id == winner.user_id
