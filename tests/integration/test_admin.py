"""The Admin API over real gRPC: look-ups, kicks, disabling, notices (runs on
the in-memory backends and on Redis and ZooKeeper)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from cim.client.client import CimClient, EventKind
from cim.errors import PermissionDenied, Unauthenticated
from cim.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from cim.proto.v1 import chat_pb2, common_pb2, options_pb2, route_pb2
from cim.route.admin import ADMIN_KEY
from cim.store.memory import MemoryStore
from cim.testing import TestCluster, cluster
from cim.testing import fast_route_config as route_config

OPS_SECRET = "ops-secret-0123456789"
KEYS = {"ops": OPS_SECRET, "ci": "ci-secret-abcdefghijk"}
OPS = ((ADMIN_KEY, f"ops:{OPS_SECRET}"),)
SYSTEM = common_pb2.MESSAGE_KIND_SYSTEM


@pytest.fixture
async def c() -> AsyncIterator[TestCluster]:
    async with cluster(
        servers=2, route_config=route_config(admin_keys=KEYS, routing="round-robin")
    ) as test_cluster:
        yield test_cluster


@pytest.fixture
def admin(c, raw) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(raw.channel(c.route_address))


def kicked(client: CimClient) -> asyncio.Event:
    """Set when the client is told it was kicked (it does not reconnect then)."""
    event = asyncio.Event()

    def on_event(e):  # type: ignore[no-untyped-def]
        if e.kind is EventKind.KICKED:
            event.set()

    client.on_event = on_event
    return event


async def test_a_user_is_looked_up_by_id_and_by_name_with_their_session(c, raw, admin):
    bob = await raw.register(c, "bob")
    by_name = await admin.GetUser(admin_pb2.GetUserRequest(user_name="bob"), metadata=OPS)
    assert by_name.account == admin_pb2.Account(user_id=bob, user_name="bob")
    assert list(by_name.sessions) == []

    login = await raw.login(c, "bob", register=False)
    pending = await admin.GetUser(admin_pb2.GetUserRequest(user_id=bob), metadata=OPS)
    (session,) = pending.sessions
    assert session.session_id == login.session_id
    assert session.state == admin_pb2.SESSION_STATE_PENDING
    assert session.server_id == login.server.server_id
    assert session.server_address == login.server.address

    await raw.connect(login)
    connected = await admin.GetUser(admin_pb2.GetUserRequest(user_name="bob"), metadata=OPS)
    assert connected.sessions[0].state == admin_pb2.SESSION_STATE_CONNECTED
    assert connected.sessions[0].session_id == login.session_id


@pytest.mark.parametrize(
    ("request_", "code", "text"),
    [
        (admin_pb2.GetUserRequest(), grpc.StatusCode.INVALID_ARGUMENT, "user_id or user_name"),
        (admin_pb2.GetUserRequest(user_name=""), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (admin_pb2.GetUserRequest(user_id=0), grpc.StatusCode.INVALID_ARGUMENT, "positive"),
        (admin_pb2.GetUserRequest(user_id=-5), grpc.StatusCode.INVALID_ARGUMENT, "positive"),
        (admin_pb2.GetUserRequest(user_id=999), grpc.StatusCode.NOT_FOUND, "no user #999"),
        (admin_pb2.GetUserRequest(user_name="zed"), grpc.StatusCode.NOT_FOUND, "no user 'zed'"),
    ],
)
async def test_a_user_that_is_not_named_or_not_there_is_refused(
    c, admin, fails, request_, code, text
):
    err = await fails(admin.GetUser(request_, metadata=OPS))
    assert err.code() == code
    assert text in err.details()


async def test_a_kicked_user_is_disconnected_and_may_log_in_again(c, admin):
    bob = await c.client("bob")
    gone = kicked(bob)
    token = bob.route.token

    reply = await admin.KickUser(
        admin_pb2.KickUserRequest(user_name="bob", reason="cool down"), metadata=OPS
    )

    assert reply.sessions_ended == 1
    await asyncio.wait_for(gone.wait(), 5)
    assert not bob.connected
    with pytest.raises(Unauthenticated):  # the old token is over
        await bob.route.list_online()
    assert bob.route.token == token
    again = await c.client("bob")
    assert again.connected
    listed = await admin.GetUser(admin_pb2.GetUserRequest(user_name="bob"), metadata=OPS)
    assert listed.sessions[0].state == admin_pb2.SESSION_STATE_CONNECTED


async def test_the_kick_notice_carries_the_reason(c, raw, admin):
    login = await raw.login(c, "bob")
    stream, _ = await raw.connect(login)
    await admin.KickUser(
        admin_pb2.KickUserRequest(user_id=login.user_id, reason="bye"), metadata=OPS
    )
    frames = await stream.read_until_end()
    notices = [f.notice for f in frames if f.WhichOneof("frame") == "notice"]
    assert [(n.kind, n.text) for n in notices] == [(1, "bye")]  # KIND_KICKED


async def test_a_kick_of_another_device_or_of_nobody_online_ends_nothing(c, raw, admin):
    login = await raw.login(c, "bob")
    stream, _ = await raw.connect(login)
    other = await admin.KickUser(
        admin_pb2.KickUserRequest(user_name="bob", device_id="tablet"), metadata=OPS
    )
    assert other.sessions_ended == 0
    # Still served: the stream answers a ping.
    await stream.ping(7)
    assert (await stream.read()).pong.client_time_ms == 7
    same = await admin.KickUser(
        admin_pb2.KickUserRequest(user_name="bob", device_id=""), metadata=OPS
    )
    assert same.sessions_ended == 1
    nobody = await admin.KickUser(admin_pb2.KickUserRequest(user_name="bob"), metadata=OPS)
    assert nobody.sessions_ended == 0


async def test_a_unary_only_session_is_ended_by_a_kick(c, raw, admin, fails):
    login = await raw.login(c, "bob")
    # Its login state expires after the connect grace; the token lives on.
    reply = await admin.KickUser(admin_pb2.KickUserRequest(user_name="bob"), metadata=OPS)
    assert reply.sessions_ended == 1
    err = await fails(
        raw.route(c).ListOnlineUsers(
            route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(login.session_token)
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_disabled_user_is_disconnected_refused_and_let_back_by_enable(c, raw, admin, fails):
    bob = await c.client("bob")
    gone = kicked(bob)
    token = bob.route.token

    reply = await admin.DisableUser(
        admin_pb2.DisableUserRequest(user_name="bob", reason="spam"), metadata=OPS
    )

    assert reply.changed and reply.sessions_ended == 1
    assert reply.account.disabled and reply.account.disabled_reason == "spam"
    await asyncio.wait_for(gone.wait(), 5)
    assert not bob.connected
    with pytest.raises(Unauthenticated):
        await bob.route.list_online()
    assert bob.route.token == token
    # A new login: refused once the password checks out, and only then.
    err = await fails(
        raw.route(c).Login(route_pb2.LoginRequest(user_name="bob", password="secret-pw"))
    )
    assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED, "account disabled")
    wrong = await fails(
        raw.route(c).Login(route_pb2.LoginRequest(user_name="bob", password="nope"))
    )
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "disabled" not in wrong.details()
    looked_up = await admin.GetUser(admin_pb2.GetUserRequest(user_name="bob"), metadata=OPS)
    assert looked_up.account.disabled and list(looked_up.sessions) == []
    again = await admin.DisableUser(admin_pb2.DisableUserRequest(user_name="bob"), metadata=OPS)
    assert not again.changed and again.sessions_ended == 0

    enabled = await admin.EnableUser(admin_pb2.EnableUserRequest(user_name="bob"), metadata=OPS)

    assert enabled.changed and not enabled.account.disabled
    assert enabled.account.disabled_reason == ""
    back = await c.client("bob")
    assert back.connected
    twice = await admin.EnableUser(admin_pb2.EnableUserRequest(user_name="bob"), metadata=OPS)
    assert not twice.changed


async def test_a_disabled_user_gets_permission_denied_from_the_client_library(c, admin):
    bob = await c.client("bob", connect=False)
    await admin.DisableUser(admin_pb2.DisableUserRequest(user_id=bob.user_id), metadata=OPS)
    with pytest.raises(PermissionDenied, match="account disabled"):
        await bob.login()


async def test_a_stream_login_of_a_disabled_account_is_refused(c, raw):
    # The flag set straight in the store, sessions left alone: the login
    # raced the disable, and only the chat server's check stands in the way.
    login = await raw.login(c, "bob")
    await c.embedded.store.set_account_disabled(login.user_id, True, "raced")
    stream = raw.open_stream(login.server.address)
    await stream.login(login.user_id, login.session_token)
    frames = await stream.read_until_end()
    assert await stream.call.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await stream.call.details() == "account disabled"
    assert [f.notice.text for f in frames] == ["account disabled"]
    assert await c.embedded.store.get_session(login.user_id) is None


async def test_a_notice_to_an_online_user_is_pushed_at_once(c, admin):
    bob = await c.client("bob")
    reply = await admin.SendNotice(
        admin_pb2.SendNoticeRequest(user_name="bob", text="your quota is low"), metadata=OPS
    )
    assert reply.status == common_pb2.DELIVERY_STATUS_DELIVERED
    assert reply.user_id == bob.user_id
    message = await c.next_message(bob)
    assert (message.kind, message.sender_id, message.text) == (SYSTEM, 0, "your quota is low")
    assert message.receiver_id == bob.user_id and message.seq == 1 and not message.stored
    assert message.message_id == reply.message_id


async def test_a_notice_to_an_offline_user_arrives_at_their_next_login(c, admin):
    bob = await c.client("bob", connect=False)
    reply = await admin.SendNotice(
        admin_pb2.SendNoticeRequest(user_id=bob.user_id, text="welcome back"), metadata=OPS
    )
    assert reply.status == common_pb2.DELIVERY_STATUS_STORED
    await bob.login()
    await bob.connect()
    message = await c.next_message(bob)
    assert (message.kind, message.sender_id, message.text) == (SYSTEM, 0, "welcome back")
    assert message.stored and message.seq == 1


async def test_a_notice_retried_with_its_client_msg_id_is_stored_once(c, admin, fails):
    bob = await c.client("bob", connect=False)
    request = admin_pb2.SendNoticeRequest(user_id=bob.user_id, text="once", client_msg_id="n-1")
    first = await admin.SendNotice(request, metadata=OPS)
    again = await admin.SendNotice(request, metadata=OPS)
    assert again.message_id == first.message_id
    request.text = "another"
    err = await fails(admin.SendNotice(request, metadata=OPS))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await bob.login()
    page = await bob.fetch_offline()
    assert [m.text for m in page.messages] == ["once"]


@pytest.mark.parametrize(
    ("text", "detail"), [("", "message text is empty"), (" \n", "message text is empty")]
)
async def test_a_notice_without_text_is_invalid(c, raw, admin, fails, text, detail):
    await raw.register(c, "bob")
    for call in (
        admin.SendNotice(admin_pb2.SendNoticeRequest(user_name="bob", text=text), metadata=OPS),
        admin.BroadcastNotice(admin_pb2.BroadcastNoticeRequest(text=text), metadata=OPS),
    ):
        err = await fails(call)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, detail)


async def test_a_notice_to_everyone_online_reaches_each_once_and_is_not_replayed(c, admin):
    alice, bob = await c.client("alice"), await c.client("bob")
    carol = await c.client("carol", connect=False)
    assert alice.server.server_id != bob.server.server_id  # type: ignore[union-attr]

    reply = await admin.BroadcastNotice(
        admin_pb2.BroadcastNoticeRequest(text="restart at noon"), metadata=OPS
    )

    assert reply.recipients == 2
    for client in (alice, bob):
        message = await c.next_message(client)
        assert (message.kind, message.sender_id, message.seq) == (SYSTEM, 0, 0)
        assert message.text == "restart at noon" and message.message_id == reply.message_id
        assert not message.stored
        assert client.sequence.through == 0  # outside the sequence: nothing to ack
    # Not stored: a user who logs in later, or back in, never gets it.
    await carol.login()
    await carol.connect()
    await carol.wait_live(5)
    assert (await carol.fetch_offline()).messages == []
    await bob.close()
    bob_again = await c.client("bob")
    assert (await bob_again.fetch_offline()).messages == []
    await alice.send_private(bob_again.user_id, "after")
    assert (await c.next_message(bob_again)).text == "after"  # nothing came before it


async def test_every_admin_action_is_logged_with_the_key_id_never_the_secret(c, raw, admin, caplog):
    await raw.register(c, "bob")
    ci = ((ADMIN_KEY, f"ci:{KEYS['ci']}"),)
    with caplog.at_level(logging.INFO, logger="cim.route.admin"):
        await admin.GetUser(admin_pb2.GetUserRequest(user_name="bob"), metadata=OPS)
        await admin.KickUser(admin_pb2.KickUserRequest(user_name="bob", reason="r1"), metadata=ci)
        await admin.DisableUser(
            admin_pb2.DisableUserRequest(user_name="bob", reason="r2"), metadata=OPS
        )
        await admin.EnableUser(admin_pb2.EnableUserRequest(user_name="bob"), metadata=ci)
        await admin.SendNotice(admin_pb2.SendNoticeRequest(user_name="bob", text="t"), metadata=OPS)
        await admin.BroadcastNotice(admin_pb2.BroadcastNoticeRequest(text="t"), metadata=ci)
    lines = [r.getMessage() for r in caplog.records if r.name == "cim.route.admin"]
    assert [line.split(":")[0] for line in lines] == [
        "admin ops",
        "admin ci",
        "admin ops",
        "admin ci",
        "admin ops",
        "admin ci",
    ]
    assert "looked up user" in lines[0] and "kicked user" in lines[1] and "r1" in lines[1]
    assert "disabled user" in lines[2] and "r2" in lines[2] and "enabled user" in lines[3]
    assert "sent notice" in lines[4] and "broadcast notice" in lines[5]
    assert all("\n" not in line for line in lines)
    text = caplog.text
    assert OPS_SECRET not in text and KEYS["ci"] not in text


async def test_a_login_that_races_a_disable_does_not_keep_its_session():
    """The account is disabled between the login's read of it and its
    writing of its session: the login reads the flag again afterwards."""

    class RacingStore(MemoryStore):
        async def set_token_session(self, user_id: int, session_id: str, ttl: float) -> bool:
            await self.set_account_disabled(user_id, True, "raced")
            return await super().set_token_session(user_id, session_id, ttl)

    store = RacingStore()
    async with cluster(servers=1, store=store, registry=None) as racing:
        bob = await racing.client("bob", connect=False)
        with pytest.raises(PermissionDenied, match="account disabled"):
            await bob.login()
        assert await store.get_session(bob.user_id) is None
        assert await store.get_token_session(bob.user_id) is None


def _protos_before_system_notices() -> tuple[type, object]:
    """ServerFrame as a client built before MESSAGE_KIND_SYSTEM decodes it
    (the same protos less that enum value), and its MessageKind."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.DESCRIPTOR.serialized_pb)
    for module in (options_pb2, common_pb2, chat_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for enum in proto.enum_type:
            kept = [value for value in enum.value if value.name != "MESSAGE_KIND_SYSTEM"]
            del enum.value[:]
            enum.value.extend(kept)
        pool.Add(proto)
    frame = message_factory.GetMessageClass(pool.FindMessageTypeByName("cim.v1.ServerFrame"))
    return frame, pool.FindEnumTypeByName("cim.v1.MessageKind")


async def test_an_older_client_reads_both_kinds_of_notice_as_ordinary_messages(c, raw, admin):
    old_frame, old_kinds = _protos_before_system_notices()
    assert "MESSAGE_KIND_SYSTEM" not in old_kinds.values_by_name  # type: ignore[attr-defined]
    login = await raw.login(c, "bob")
    connect = raw.channel(login.server.address).stream_stream(
        "/cim.v1.Chat/Connect",
        request_serializer=chat_pb2.ClientFrame.SerializeToString,
        response_deserializer=None,  # the bytes, decoded below as an old client would
    )
    call = connect()
    await call.write(
        chat_pb2.ClientFrame(
            login=chat_pb2.LoginFrame(user_id=login.user_id, session_token=login.session_token)
        )
    )
    frames = [old_frame.FromString(await call.read()) for _ in range(2)]
    assert [f.WhichOneof("frame") for f in frames] == ["login_ok", "replay_done"]
    await admin.BroadcastNotice(admin_pb2.BroadcastNoticeRequest(text="to all"), metadata=OPS)
    await admin.SendNotice(
        admin_pb2.SendNoticeRequest(user_id=login.user_id, text="to you"), metadata=OPS
    )
    received = [old_frame.FromString(await asyncio.wait_for(call.read(), 5)) for _ in range(2)]
    call.cancel()
    by_text = {frame.message.text: frame.message for frame in received}
    # The kind's number survives (proto3 enums are open); the rest is an
    # ordinary message: one outside the sequence (seq 0, which clients
    # before it already showed as it came, unacked), one in it.
    everyone, one = by_text["to all"], by_text["to you"]
    assert (everyone.kind, everyone.seq, everyone.sender_id, everyone.stored) == (3, 0, 0, False)
    assert (one.kind, one.seq, one.sender_id, one.receiver_id) == (3, 1, 0, login.user_id)
