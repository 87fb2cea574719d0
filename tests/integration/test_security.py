"""Authentication of clients (session tokens) and of cluster members (the shared secret)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from cim.client.client import CimClient, EventKind
from cim.config import ClientConfig, ServerConfig
from cim.core import conversations
from cim.core.liveness import Backoff
from cim.core.tokens import TokenSigner
from cim.errors import Unauthenticated
from cim.grpcutil import AUTHORIZATION, CLUSTER_SECRET, secret_metadata
from cim.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2, route_internal_pb2_grpc
from cim.proto.v1 import (
    chat_pb2,
    common_pb2,
    groups_pb2,
    groups_pb2_grpc,
    route_pb2,
    route_pb2_grpc,
)
from cim.registry.inprocess import InProcessRegistry
from cim.route.admin import ADMIN_KEY
from cim.route.app import RouteApp
from cim.server.app import ChatServerApp
from cim.store.memory import MemoryStore
from cim.testing import TestCluster, cluster
from cim.testing import fast_route_config as route_config

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]

# Every Route RPC that needs a session token, with a request that would be
# valid for the caller (ids["alice"]).
AUTHENTICATED_RPCS = {
    "Logout": lambda ids: route_pb2.LogoutRequest(),
    "ListOnlineUsers": lambda ids: route_pb2.ListOnlineUsersRequest(),
    "SendPrivate": lambda ids: common_pb2.SendPrivateRequest(receiver_id=ids["bob"], text="hi"),
    "SendGroup": lambda ids: common_pb2.SendGroupRequest(text="hi"),
    "FetchOffline": lambda ids: route_pb2.FetchOfflineRequest(),
    "AckMessages": lambda ids: route_pb2.AckMessagesRequest(seq=1),
    # The caller's conversation with bob: members may read it.
    "History": lambda ids: route_pb2.HistoryRequest(
        conversation_id=conversations.private_id(ids["alice"], ids["bob"])
    ),
    "ListConversations": lambda ids: route_pb2.ListConversationsRequest(),
    "MarkRead": lambda ids: route_pb2.MarkReadRequest(
        conversation_id=conversations.private_id(ids["alice"], ids["bob"]), position=1
    ),
    "GetReadReceipts": lambda ids: route_pb2.GetReadReceiptsRequest(
        conversation_id=conversations.private_id(ids["alice"], ids["bob"])
    ),
}


def test_every_route_rpc_but_register_and_login_needs_a_token() -> None:
    methods = {m.name for m in route_pb2.DESCRIPTOR.services_by_name["Route"].methods}
    assert methods - {"Register", "Login"} == set(AUTHENTICATED_RPCS)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signer(c, **kwargs) -> TokenSigner:
    config = c.embedded.route.config
    kwargs.setdefault("ttl_seconds", 60.0)
    return TokenSigner(config.token_keys, config.token_key_id, **kwargs)


def _bad_credentials(kind: str, c, login: route_pb2.LoginResponse) -> tuple[tuple[str, str], ...]:
    """Authorization metadata of the given kind of bad credentials."""
    token = login.session_token
    key_id, body, signature = token.split(".")
    if kind == "missing":
        return ()
    if kind == "garbage":
        token = "not-a-token"
    elif kind == "tampered-signature":
        token = f"{key_id}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    elif kind == "tampered-claims":
        claims = json.loads(_unb64(body))
        claims["uid"] = claims["uid"] + 1
        forged_body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        token = f"{key_id}.{forged_body}.{signature}"
    elif kind == "other-key":
        other = TokenSigner({key_id: b"some-other-key-0123456789"}, key_id, 60.0)
        token = other.issue(login.user_id, login.user_name, login.session_id)
    elif kind == "unknown-key-id":
        token = f"nokey.{body}.{signature}"
    elif kind == "expired":
        token = _signer(c, clock=lambda: time.time() - 3600).issue(
            login.user_id, login.user_name, login.session_id
        )
    elif kind == "not-bearer":
        return ((AUTHORIZATION, f"Basic {token}"),)
    elif kind == "empty-bearer":
        return ((AUTHORIZATION, "Bearer "),)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return ((AUTHORIZATION, f"Bearer {token}"),)


BAD_CREDENTIALS = [
    "missing",
    "garbage",
    "tampered-signature",
    "tampered-claims",
    "other-key",
    "unknown-key-id",
    "expired",
    "not-bearer",
    "empty-bearer",
]


# --- Route: session tokens -----------------------------------------------------------------------


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize("rpc", AUTHENTICATED_RPCS)
async def test_route_rpc_with_bad_credentials_is_unauthenticated(rr, raw, fails, rpc, credentials):
    login = await raw.login(rr, "alice")
    ids = {"alice": login.user_id, "bob": await raw.register(rr, "bob")}
    metadata = _bad_credentials(credentials, rr, login)

    err = await fails(getattr(raw.route(rr), rpc)(AUTHENTICATED_RPCS[rpc](ids), metadata=metadata))

    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert err.details()


@pytest.mark.parametrize("rpc", AUTHENTICATED_RPCS)
async def test_route_rpc_with_valid_token_is_accepted(rr, raw, rpc):
    login = await raw.login(rr, "alice")
    ids = {"alice": login.user_id, "bob": await raw.register(rr, "bob")}
    await getattr(raw.route(rr), rpc)(
        AUTHENTICATED_RPCS[rpc](ids), metadata=raw.auth(login.session_token)
    )


async def test_token_signed_with_the_route_key_but_a_past_clock_is_expired(rr, raw, fails):
    login = await raw.login(rr, "alice")
    expired = _signer(rr, clock=lambda: time.time() - 120).issue(
        login.user_id, "alice", login.session_id
    )
    fresh = _signer(rr).issue(login.user_id, "alice", login.session_id)
    stub = raw.route(rr)

    err = await fails(
        stub.ListOnlineUsers(route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(expired))
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in err.details()
    # The same signer with the current clock makes an accepted token: only the expiry differs.
    await stub.ListOnlineUsers(route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(fresh))


async def test_tokens_expire_after_the_configured_ttl(raw, fails):
    async with cluster(servers=1, route_config=route_config(token_ttl=0.5)) as c:
        login = await raw.login(c, "alice")
        stub = raw.route(c)
        await stub.ListOnlineUsers(
            route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(login.session_token)
        )
        assert login.token_expires_ms <= time.time() * 1000 + 600

        await asyncio.sleep(0.6)

        err = await fails(
            stub.FetchOffline(
                route_pb2.FetchOfflineRequest(), metadata=raw.auth(login.session_token)
            )
        )
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # A chat server refuses the expired token too.
        stream = raw.open_stream(login.server.address)
        await stream.login(login.user_id, login.session_token)
        frames = await stream.read_until_end()
        assert [f.notice.code for f in frames] == [UNAUTHENTICATED]


async def test_client_library_raises_unauthenticated_for_a_bad_token(rr):
    alice = await rr.client("alice", connect=False)
    await alice.login()
    alice.route.token = "garbage"
    with pytest.raises(Unauthenticated):
        await alice.list_online()


async def test_identity_comes_from_the_token_only(rr, raw):
    """A valid token of alice sends as alice, whatever else the request says."""
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob)
    await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="from alice"),
        metadata=raw.auth(alice.session_token),
    )
    frame = await stream.read()
    assert (frame.message.sender_id, frame.message.sender_name) == (alice.user_id, "alice")


# --- Route.History of a group: members only, a removed member up to the removal -------------------


async def _team(rr, raw, owner: route_pb2.LoginResponse, *member_ids: int) -> str:
    reply = await groups_pb2_grpc.GroupsStub(raw.channel(rr.route_address)).CreateGroup(
        groups_pb2.CreateGroupRequest(name="team", member_ids=list(member_ids)),
        metadata=raw.auth(owner.session_token),
    )
    return str(reply.group.group_id)


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
async def test_a_groups_history_needs_a_valid_token_of_a_member(rr, raw, fails, credentials):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")  # the next id: alice's tampered claims name bob
    gid = await _team(rr, raw, bob)
    request = route_pb2.HistoryRequest(conversation_id=gid)
    await raw.route(rr).History(request, metadata=raw.auth(bob.session_token))  # bob reads

    err = await fails(
        raw.route(rr).History(request, metadata=_bad_credentials(credentials, rr, alice))
    )

    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()


async def test_a_groups_history_tells_outsiders_nothing(rr, raw, fails):
    ann = await raw.login(rr, "ann")
    bob = await raw.login(rr, "bob")
    eve = await raw.login(rr, "eve")
    gid = await _team(rr, raw, ann, bob.user_id)
    stub = groups_pb2_grpc.GroupsStub(raw.channel(rr.route_address))
    removed = await stub.RemoveMembers(
        groups_pb2.RemoveMembersRequest(group_id=gid, user_ids=[bob.user_id]),
        metadata=raw.auth(ann.session_token),
    )
    secret = await raw.route(rr).SendGroup(
        common_pb2.SendGroupRequest(group_id=gid, text="after bob"),
        metadata=raw.auth(ann.session_token),
    )
    unknown = f"g:{int(gid[2:]) + 1000}"

    async def history(login, cid: str, before: int = 0) -> Any:
        return await raw.route(rr).History(
            route_pb2.HistoryRequest(conversation_id=cid, before_position=before),
            metadata=raw.auth(login.session_token),
        )

    # A stranger: the same answer for a group that exists and one that does not.
    for caller, cid in ((eve, gid), (eve, unknown), (ann, unknown)):
        err = await fails(history(caller, cid))
        assert (err.code(), err.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            f"you are not a member of group {cid}",
        )
    # The removed member: up to their removal, however far they ask.
    for before in (0, removed.event.position + 1, 2**64 - 1):
        page = await history(bob, gid, before)
        assert page.messages[0].message_id == removed.event.message_id
        assert secret.message_id not in {m.message_id for m in page.messages}
        assert page.head_position == removed.event.position
    # Malformed and oversized ids are refused before any store read.
    for cid, words in (
        ("", "conversation id is required"),
        ("all", "must start with 'p:'"),
        ("g:01", "without leading zeros"),
        ("g:" + "9" * 70, "HistoryRequest.conversation_id is 72 bytes; the limit is 64"),
    ):
        err = await fails(history(ann, cid))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in err.details()


# --- Chat.Connect: the login frame ---------------------------------------------------------------


async def _refused(stream) -> chat_pb2.Notice:
    """The stream sends exactly one error notice and ends."""
    frames = await stream.read_until_end()
    assert len(frames) == 1, frames
    assert frames[0].WhichOneof("frame") == "notice"
    notice = frames[0].notice
    assert notice.kind == chat_pb2.Notice.KIND_ERROR
    return notice


async def test_connect_with_another_users_token_is_refused(rr, raw):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream = raw.open_stream(alice.server.address)

    await stream.login(bob.user_id, alice.session_token)

    notice = await _refused(stream)
    assert notice.code == UNAUTHENTICATED
    assert notice.text
    # Neither user became online by it.
    reply = await raw.route(rr).ListOnlineUsers(
        route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(alice.session_token)
    )
    assert list(reply.users) == []
    # Alice's token still works for alice.
    _, ok = await raw.connect(alice)
    assert ok.user_id == alice.user_id


@pytest.mark.parametrize("token", ["garbage", ""], ids=["garbage", "empty"])
async def test_connect_with_a_bad_token_is_refused(rr, raw, token):
    alice = await raw.login(rr, "alice")
    stream = raw.open_stream(alice.server.address)
    await stream.login(alice.user_id, token)
    assert (await _refused(stream)).code == UNAUTHENTICATED


async def test_connect_with_a_forged_token_is_refused(rr, raw):
    alice = await raw.login(rr, "alice")
    key_id, body, signature = alice.session_token.split(".")
    stream = raw.open_stream(alice.server.address)
    await stream.login(alice.user_id, f"{key_id}.{body}.{signature[::-1]}")
    assert (await _refused(stream)).code == UNAUTHENTICATED


async def test_connect_without_a_login_frame_first_is_refused(rr, raw):
    alice = await raw.login(rr, "alice")
    stream = raw.open_stream(alice.server.address)
    await stream.ping(1)
    assert (await _refused(stream)).code == UNAUTHENTICATED


async def test_connect_with_user_id_zero_is_refused(rr, raw):
    alice = await raw.login(rr, "alice")
    stream = raw.open_stream(alice.server.address)
    await stream.login(0, alice.session_token)
    assert (await _refused(stream)).code == UNAUTHENTICATED


# --- cluster secret ------------------------------------------------------------------------------

WRONG_SECRETS = {
    "missing": (),
    "wrong": ((CLUSTER_SECRET, "not-the-secret"),),
    "empty": ((CLUSTER_SECRET, ""),),
}

INTERNAL_RPCS = {
    "SubmitStream": route_internal_pb2.SubmitBatchRequest(server_id="server-1"),
    "SessionConnected": route_internal_pb2.SessionConnectedRequest(server_id="server-1", user_id=1),
    "SessionDisconnected": route_internal_pb2.SessionDisconnectedRequest(
        server_id="server-1", user_id=1
    ),
    "RefreshSessions": route_internal_pb2.RefreshSessionsRequest(server_id="server-1"),
    "Replay": route_internal_pb2.ReplayRequest(server_id="server-1", user_id=1),
    "Ack": route_internal_pb2.AckRequest(server_id="server-1"),
    "Typing": route_internal_pb2.TypingRequest(server_id="server-1"),
    "MarkRead": route_internal_pb2.MarkReadBatchRequest(server_id="server-1"),
}


def test_every_route_internal_rpc_is_covered() -> None:
    service = route_internal_pb2.DESCRIPTOR.services_by_name["RouteInternal"]
    assert {m.name for m in service.methods} == set(INTERNAL_RPCS)


CHAT_INTERNAL_RPCS = {
    "DeliverStream": chat_internal_pb2.DeliverRequest(),
    "Presence": chat_internal_pb2.PresenceRequest(),
}


@pytest.mark.parametrize("secret", WRONG_SECRETS.values(), ids=WRONG_SECRETS.keys())
@pytest.mark.parametrize("rpc", INTERNAL_RPCS)
async def test_route_internal_without_the_secret_is_permission_denied(rr, raw, fails, rpc, secret):
    err = await fails(_route_internal_call(raw, rr, rpc, secret))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def _route_internal_call(raw, rr, rpc, metadata):
    if rpc == "SubmitStream":
        return raw.submit(rr, INTERNAL_RPCS[rpc], metadata)
    return getattr(raw.route_internal(rr), rpc)(INTERNAL_RPCS[rpc], metadata=metadata)


def _chat_internal_call(raw, address, rpc, metadata):
    if rpc == "DeliverStream":
        return raw.deliver(address, CHAT_INTERNAL_RPCS[rpc], metadata)
    return getattr(raw.chat_internal(address), rpc)(CHAT_INTERNAL_RPCS[rpc], metadata=metadata)


@pytest.mark.parametrize("rpc", INTERNAL_RPCS)
async def test_route_internal_does_not_accept_a_session_token(rr, raw, fails, rpc):
    login = await raw.login(rr, "alice")
    err = await fails(_route_internal_call(raw, rr, rpc, raw.auth(login.session_token)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("secret", WRONG_SECRETS.values(), ids=WRONG_SECRETS.keys())
@pytest.mark.parametrize("rpc", CHAT_INTERNAL_RPCS)
@pytest.mark.parametrize("server", [0, 1])
async def test_chat_internal_without_the_secret_is_permission_denied(
    rr, raw, fails, rpc, secret, server
):
    address = rr.embedded.servers[server].address
    err = await fails(_chat_internal_call(raw, address, rpc, secret))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_deliver_without_the_secret_pushes_nothing(rr, raw, fails):
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob)
    fake = chat_internal_pb2.DeliverRequest(
        deliveries=[
            chat_internal_pb2.Delivery(
                receiver_id=bob.user_id,
                message=common_pb2.ChatMessage(sender_name="mallory", text="fake"),
            )
        ],
        kicks=[chat_internal_pb2.Kick(user_id=bob.user_id, session_id=bob.session_id)],
    )
    await fails(raw.deliver(bob.server.address, fake, WRONG_SECRETS["wrong"]))
    await stream.ping(7)
    frame = await stream.read()
    assert frame.WhichOneof("frame") == "pong"  # no fake message, no kick


async def test_route_internal_with_the_secret_works(rr, raw):
    stub, secret = raw.route_internal(rr), raw.secret(rr)
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    bob_stream, _ = await raw.connect(bob)

    refreshed = await stub.RefreshSessions(
        route_internal_pb2.RefreshSessionsRequest(
            server_id=bob.server.server_id,
            sessions=[
                common_pb2.SessionRef(user_id=bob.user_id, session_id=bob.session_id),
                common_pb2.SessionRef(user_id=bob.user_id, session_id="not-a-session"),
            ],
        ),
        metadata=secret,
    )
    assert [(r.user_id, r.session_id) for r in refreshed.invalid] == [
        (bob.user_id, "not-a-session")
    ]

    submitted = await raw.submit(
        rr,
        route_internal_pb2.SubmitBatchRequest(
            server_id=alice.server.server_id,
            messages=[
                route_internal_pb2.SubmittedMessage(
                    sender_id=alice.user_id,
                    session_id=alice.session_id,
                    sender_name="alice",
                    private=common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text="batch"),
                ),
                route_internal_pb2.SubmittedMessage(
                    sender_id=alice.user_id,
                    sender_name="alice",
                    private=common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text=""),
                ),
            ],
        ),
        metadata=secret,
    )
    assert [r.WhichOneof("outcome") for r in submitted.results] == ["ok", "error"]
    assert submitted.results[0].ok.status == common_pb2.DELIVERY_STATUS_DELIVERED
    assert submitted.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    frame = await bob_stream.read()
    assert (frame.message.text, frame.message.sender_id) == ("batch", alice.user_id)

    disconnected = await stub.SessionDisconnected(
        route_internal_pb2.SessionDisconnectedRequest(
            server_id=bob.server.server_id, user_id=bob.user_id, session_id="not-a-session"
        ),
        metadata=secret,
    )
    assert disconnected.cleared is False

    connected = await stub.SessionConnected(
        route_internal_pb2.SessionConnectedRequest(
            server_id=alice.server.server_id,
            user_id=alice.user_id,
            session_token=alice.session_token,
        ),
        metadata=secret,
    )
    assert (connected.user_id, connected.user_name, connected.session_id) == (
        alice.user_id,
        "alice",
        alice.session_id,
    )


async def test_route_internal_typing_checks_membership_itself(rr, raw):
    """The route does not rely on the chat server's checks: a note for a
    conversation its sender is not in is refused and reaches nobody."""
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    carol = await raw.login(rr, "carol")
    bob_stream, _ = await raw.connect(bob)
    group = await rr.embedded.route.groups.create(bob.user_id, "bob", "team", [])
    low, high = sorted((bob.user_id, carol.user_id))
    notes = [
        # Alice "types" into bob and carol's conversation, and into bob's group.
        route_internal_pb2.SubmittedTyping(
            user_id=alice.user_id, user_name="alice", conversation_id=f"p:{low}:{high}"
        ),
        route_internal_pb2.SubmittedTyping(
            user_id=alice.user_id, user_name="alice", conversation_id=group.group.group_id
        ),
        route_internal_pb2.SubmittedTyping(user_id=0, conversation_id=f"p:{low}:{high}"),
    ]
    reply = await raw.route_internal(rr).Typing(
        route_internal_pb2.TypingRequest(server_id=alice.server.server_id, notes=notes),
        metadata=raw.secret(rr),
    )
    assert [r.refused.code for r in reply.results] == [
        grpc.StatusCode.PERMISSION_DENIED.value[0],
        grpc.StatusCode.PERMISSION_DENIED.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    ]
    await bob_stream.ping(7)
    kinds = []
    while (frame := await bob_stream.read()).WhichOneof("frame") != "pong":
        kinds.append(frame.WhichOneof("frame"))
    assert "typing" not in kinds  # (the group's "created" event is a message)


async def test_session_connected_with_the_secret_still_checks_the_token(rr, raw, fails):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    err = await fails(
        raw.route_internal(rr).SessionConnected(
            route_internal_pb2.SessionConnectedRequest(
                server_id=alice.server.server_id,
                user_id=bob.user_id,
                session_token=alice.session_token,
            ),
            metadata=raw.secret(rr),
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_chat_internal_with_the_secret_works(rr, raw):
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob)
    chat, secret = raw.chat_internal(bob.server.address), raw.secret(rr)

    presence = await chat.Presence(
        chat_internal_pb2.PresenceRequest(
            sessions=[
                common_pb2.SessionRef(user_id=bob.user_id, session_id=bob.session_id),
                common_pb2.SessionRef(user_id=bob.user_id, session_id="other"),
                common_pb2.SessionRef(user_id=bob.user_id + 100, session_id=bob.session_id),
            ]
        ),
        metadata=secret,
    )
    assert list(presence.live) == [True, False, False]

    delivered = await raw.deliver(
        bob.server.address,
        chat_internal_pb2.DeliverRequest(
            deliveries=[
                chat_internal_pb2.Delivery(
                    receiver_id=bob.user_id,
                    message=common_pb2.ChatMessage(message_id="m-1", text="pushed"),
                )
            ]
        ),
        metadata=secret,
    )
    assert list(delivered.delivered) == [True]
    frame = await stream.read()
    assert frame.message.text == "pushed"

    # The other server does not hold bob.
    other = next(s for s in rr.embedded.servers if s.server_id != bob.server.server_id)
    elsewhere = await raw.chat_internal(other.address).Presence(
        chat_internal_pb2.PresenceRequest(
            sessions=[common_pb2.SessionRef(user_id=bob.user_id, session_id=bob.session_id)]
        ),
        metadata=secret,
    )
    assert list(elsewhere.live) == [False]


async def test_deliver_kick_with_the_secret_ends_only_that_session(rr, raw):
    alice = await raw.login(rr, "alice")
    stream, _ = await raw.connect(alice)
    address, secret = alice.server.address, raw.secret(rr)

    # A kick naming another session of the user is ignored ...
    await raw.deliver(
        address,
        chat_internal_pb2.DeliverRequest(
            kicks=[chat_internal_pb2.Kick(user_id=alice.user_id, session_id="other", reason="no")]
        ),
        metadata=secret,
    )
    await stream.ping(1)
    assert (await stream.read()).WhichOneof("frame") == "pong"

    # ... the one naming this session ends the stream with a KICKED notice.
    await raw.deliver(
        address,
        chat_internal_pb2.DeliverRequest(
            kicks=[
                chat_internal_pb2.Kick(
                    user_id=alice.user_id, session_id=alice.session_id, reason="bye"
                )
            ]
        ),
        metadata=secret,
    )
    frames = await stream.read_until_end()
    assert [(f.notice.kind, f.notice.text) for f in frames] == [
        (chat_pb2.Notice.KIND_KICKED, "bye")
    ]


async def _stream_status(call: Any, request: Any) -> grpc.StatusCode:
    """The final status of a stream the server ends (the write may race the end)."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.write(request)
    code: grpc.StatusCode = await call.code()
    return code


@pytest.mark.parametrize("secret", list(WRONG_SECRETS), ids=list(WRONG_SECRETS))
async def test_internal_streams_without_the_secret_are_permission_denied(rr, raw, secret):
    chat = raw.chat_internal(rr.embedded.servers[0].address)
    code = await _stream_status(
        chat.DeliverStream(metadata=WRONG_SECRETS[secret]), chat_internal_pb2.DeliverRequest()
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    internal = raw.route_internal(rr)
    code = await _stream_status(
        internal.SubmitStream(metadata=WRONG_SECRETS[secret]),
        route_internal_pb2.SubmitBatchRequest(),
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_internal_streams_with_the_secret_answer_each_batch_in_order(rr, raw):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob)
    submit = raw.route_internal(rr).SubmitStream(metadata=raw.secret(rr))
    for text in ("one", "two"):
        await submit.write(
            route_internal_pb2.SubmitBatchRequest(
                messages=[
                    route_internal_pb2.SubmittedMessage(
                        sender_id=alice.user_id,
                        sender_name="alice",
                        private=common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text=text),
                    )
                ]
            )
        )
    replies = [await submit.read(), await submit.read()]
    assert [r.results[0].ok.status for r in replies] == [common_pb2.DELIVERY_STATUS_DELIVERED] * 2
    assert [(await stream.read()).message.text for _ in range(2)] == ["one", "two"]
    submit.cancel()


# --- revocation: a logout or a newer login ends a session's tokens -------------------------------

# Every token-authorized RPC but Logout, which accepts an ended session's token as a no-op
# (so a logout retried after a lost reply succeeds).
SESSION_RPCS = {name: make for name, make in AUTHENTICATED_RPCS.items() if name != "Logout"}
_route_ids = itertools.count(2)


async def _list_online(stub: route_pb2_grpc.RouteStub, token: str) -> Any:
    return await stub.ListOnlineUsers(
        route_pb2.ListOnlineUsersRequest(), metadata=(("authorization", f"Bearer {token}"),)
    )


async def _ended(fails, stub: route_pb2_grpc.RouteStub, token: str) -> None:
    """The token is refused because its session ended."""
    err = await fails(_list_online(stub, token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert "log in again" in err.details()


@contextlib.asynccontextmanager
async def _another_route(c: TestCluster, **overrides: Any) -> AsyncIterator[RouteApp]:
    """One more route of the cluster: the same store and registry, its own settings."""
    config = replace(
        c.embedded.route.config, route_id=f"route-{next(_route_ids)}", port=0, **overrides
    )
    route = RouteApp(config, c.embedded.store, c.embedded.registry)
    await route.start()
    try:
        yield route
    finally:
        await route.stop(0)


@pytest.mark.parametrize("rpc", SESSION_RPCS)
async def test_a_logged_out_token_is_refused_by_every_route_rpc(rr, raw, fails, rpc):
    login = await raw.login(rr, "alice")
    ids = {"alice": login.user_id, "bob": await raw.register(rr, "bob")}
    stub, auth = raw.route(rr), raw.auth(login.session_token)
    await getattr(stub, rpc)(SESSION_RPCS[rpc](ids), metadata=auth)  # accepted (and cached)

    await stub.Logout(route_pb2.LogoutRequest(), metadata=auth)

    err = await fails(getattr(stub, rpc)(SESSION_RPCS[rpc](ids), metadata=auth))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "session ended (logged out or replaced by a newer login): log in again"
    await stub.Logout(route_pb2.LogoutRequest(), metadata=auth)  # idempotent


async def test_a_logged_out_connected_client_can_neither_call_nor_reconnect(rr, raw, fails):
    login = await raw.login(rr, "alice")
    stream, _ = await raw.connect(login)
    await raw.route(rr).Logout(route_pb2.LogoutRequest(), metadata=raw.auth(login.session_token))
    frames = await stream.read_until_end()
    assert frames[-1].notice.kind == chat_pb2.Notice.KIND_KICKED

    await _ended(fails, raw.route(rr), login.session_token)
    again = raw.open_stream(login.server.address)
    await again.login(login.user_id, login.session_token)
    assert (await _refused(again)).code == UNAUTHENTICATED


async def test_a_resumed_session_ends_the_old_token(rr, raw, fails):
    first = await raw.login(rr, "alice")
    await raw.connect(first)
    stub = raw.route(rr)
    await _list_online(stub, first.session_token)
    resumed = await stub.Login(
        route_pb2.LoginRequest(user_name="alice", resume_token=first.session_token)
    )
    await _ended(fails, stub, first.session_token)
    await _list_online(stub, resumed.session_token)


async def test_a_login_that_kicks_the_old_session_ends_its_token(raw, fails):
    async with cluster(servers=1, route_config=route_config(duplicate_login="kick-old")) as c:
        first = await raw.login(c, "alice")
        await raw.connect(first)
        stub = raw.route(c)
        await _list_online(stub, first.session_token)

        second = await raw.login(c, "alice", register=False)

        await _ended(fails, stub, first.session_token)
        stream = raw.open_stream(first.server.address)
        await stream.login(first.user_id, first.session_token)
        assert (await _refused(stream)).code == UNAUTHENTICATED
        await _list_online(stub, second.session_token)


async def test_a_login_after_the_old_session_lapsed_ends_its_token(raw, fails):
    """A session whose stream never came lapses after connect_grace; its token
    still serves unary calls, until the user logs in again."""
    async with cluster(servers=1, route_config=route_config(connect_grace=0.2)) as c:
        first = await raw.login(c, "alice")
        stub = raw.route(c)
        await asyncio.sleep(0.4)
        await _list_online(stub, first.session_token)

        second = await raw.login(c, "alice", register=False)

        await _ended(fails, stub, first.session_token)
        await _list_online(stub, second.session_token)


@pytest.mark.parametrize("how", ["logout", "login-elsewhere"])
async def test_an_ended_session_is_refused_at_every_route_within_the_cache_bound(
    rr, raw, fails, how
):
    login = await raw.login(rr, "alice")
    await raw.connect(login)
    bound = rr.embedded.route.config.token_check_cache
    assert bound == 1.0  # the documented default
    async with _another_route(rr) as other:
        here, there = raw.route(rr), route_pb2_grpc.RouteStub(raw.channel(other.address))
        await _list_online(here, login.session_token)
        await _list_online(there, login.session_token)  # confirmed: cached at both routes

        started = time.monotonic()
        if how == "logout":
            await there.Logout(route_pb2.LogoutRequest(), metadata=raw.auth(login.session_token))
        else:
            await there.Login(
                route_pb2.LoginRequest(user_name="alice", resume_token=login.session_token)
            )

        await _ended(fails, there, login.session_token)  # where it happened: at once
        while True:  # elsewhere: within the bound
            try:
                await _list_online(here, login.session_token)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() - started < bound + 0.5
            await asyncio.sleep(0.05)


async def test_token_check_cache_zero_asks_the_store_on_every_call(raw, fails):
    async with cluster(servers=1, route_config=route_config(token_check_cache=0.0)) as c:
        login = await raw.login(c, "alice")
        async with _another_route(c) as other:
            here, there = raw.route(c), route_pb2_grpc.RouteStub(raw.channel(other.address))
            await _list_online(here, login.session_token)
            await there.Logout(route_pb2.LogoutRequest(), metadata=raw.auth(login.session_token))
            await _ended(fails, here, login.session_token)


# --- a reconnecting client gets a fresh token ----------------------------------------------------


async def test_a_reconnecting_client_gets_a_fresh_token_and_the_old_one_ends(rr, raw, fails):
    alice = await rr.client("alice")
    old_token = alice.route.token
    old = _signer(rr).verify(old_token)
    reconnected = asyncio.Event()
    alice.on_event = lambda e: reconnected.set() if e.kind == EventKind.CONNECTED else None
    server = next(s for s in rr.embedded.servers if s.server_id == alice.server.server_id)

    await server.drain(0.2)  # the client is told to reconnect elsewhere, and does
    async with asyncio.timeout(5):
        await reconnected.wait()

    new = _signer(rr).verify(alice.route.token)
    assert alice.route.token != old_token
    assert new.session_id != old.session_id
    assert new.user_id == old.user_id
    assert new.issued_at_ms > old.issued_at_ms
    assert new.expires_at_ms > old.expires_at_ms
    assert [u.user_name for u in await alice.list_online()] == ["alice"]
    await _ended(fails, raw.route(rr), old_token)


# --- rotation: token keys and cluster secrets ----------------------------------------------------

OLD_KEY = {"old": b"old-token-key-0123456789"}
NEW_KEY = {"new": b"new-token-key-0123456789"}


async def test_token_keys_rotate_without_downtime(raw, fails):
    """Routes signing with "old"; one that signs with "new" and still accepts
    "old"; one that dropped "old". Tokens go where their key still is."""
    config = route_config(token_keys=OLD_KEY, token_key_id="old")
    async with (
        cluster(servers=1, route_config=config) as c,
        _another_route(c, token_keys=NEW_KEY | OLD_KEY, token_key_id="new") as rotating,
        _another_route(c, token_keys=NEW_KEY, token_key_id="new") as rotated,
    ):
        stub = {
            "old": raw.route(c),
            "rotating": route_pb2_grpc.RouteStub(raw.channel(rotating.address)),
            "rotated": route_pb2_grpc.RouteStub(raw.channel(rotated.address)),
        }
        alice = await raw.login(c, "alice")
        assert alice.session_token.startswith("old.")
        await stub["rotating"].Register(route_pb2.RegisterRequest(user_name="bob", password="pw"))
        bob = await stub["rotating"].Login(route_pb2.LoginRequest(user_name="bob", password="pw"))
        assert bob.session_token.startswith("new.")

        await _list_online(stub["old"], alice.session_token)
        await _list_online(stub["rotating"], alice.session_token)  # listed second: accepted
        await _list_online(stub["rotating"], bob.session_token)
        await _list_online(stub["rotated"], bob.session_token)
        err = await fails(_list_online(stub["rotated"], alice.session_token))  # removed
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "unknown key" in err.details()


async def test_cluster_secrets_rotate_without_downtime(raw, fails, eventually):
    """A rolling rotation from "old" to "new": each process first accepts both
    ("old,new": sends old), then sends the new one ("new,old"), then drops the
    old ("new"). Mid-way, processes of both steps interoperate both ways; once
    dropped, the old secret is refused."""
    registry, store = InProcessRegistry(), MemoryStore()
    route = RouteApp(
        route_config(cluster_secrets=("new", "old"), routing="round-robin", port=0),
        store,
        registry,
    )
    servers = [
        ChatServerApp(ServerConfig(("old", "new"), server_id="server-1", port=0), registry),
        ChatServerApp(ServerConfig(("new", "old"), server_id="server-2", port=0), registry),
        ChatServerApp(ServerConfig(("new",), server_id="server-3", port=0), registry),
    ]
    client_config = ClientConfig(backoff=Backoff(base=0.05, cap=0.2, retries=20), rpc_timeout=5.0)
    clients: list[CimClient] = []
    await route.start()
    try:
        for server in servers[:2]:
            await server.start()

        async def route_sees_both() -> bool:
            return len(route.servers.servers()) == 2

        await eventually(route_sees_both)
        client_config = replace(client_config, routes=(route.address,))
        alice, bob = (CimClient(name, "pw", client_config) for name in ("alice", "bob"))
        clients += [alice, bob]
        await alice.start()
        await bob.start()
        assert (alice.server.server_id, bob.server.server_id) == ("server-1", "server-2")

        # server-1 sends "old" to the route, which sends "new" to both servers.
        await alice.send_private(bob.user_id, "to bob")
        assert (await TestCluster.next_message(bob)).text == "to bob"
        await bob.send_private(alice.user_id, "to alice")
        assert (await TestCluster.next_message(alice)).text == "to alice"

        refresh = route_internal_pb2.RefreshSessionsRequest(server_id="server-1")
        internal = route_internal_pb2_grpc.RouteInternalStub(raw.channel(route.address))
        for secret in ("new", "old"):
            await internal.RefreshSessions(refresh, metadata=secret_metadata(secret))
        err = await fails(internal.RefreshSessions(refresh, metadata=secret_metadata("other")))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

        await servers[2].start()  # rotated: "old" is refused
        chat = raw.chat_internal(servers[2].address)
        await chat.Presence(chat_internal_pb2.PresenceRequest(), metadata=secret_metadata("new"))
        err = await fails(
            chat.Presence(chat_internal_pb2.PresenceRequest(), metadata=secret_metadata("old"))
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        for server in servers:
            await server.stop(0.2)
        await route.stop(0.2)


# --- Admin: admin keys, apart from tokens and the cluster secret ------------------------------

ADMIN_KEYS = {"ops": "ops-secret-0123456789", "next": "next-secret-0123456789"}
# Every Admin RPC, with a request that would be valid (bob exists).
ADMIN_RPCS = {
    "GetUser": lambda: admin_pb2.GetUserRequest(user_name="bob"),
    "KickUser": lambda: admin_pb2.KickUserRequest(user_name="bob"),
    "DisableUser": lambda: admin_pb2.DisableUserRequest(user_name="bob"),
    "EnableUser": lambda: admin_pb2.EnableUserRequest(user_name="bob"),
    "SendNotice": lambda: admin_pb2.SendNoticeRequest(user_name="bob", text="hi"),
    "BroadcastNotice": lambda: admin_pb2.BroadcastNoticeRequest(text="hi"),
}


def test_every_admin_rpc_is_covered():
    service = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    assert set(ADMIN_RPCS) == {method.name for method in service.methods}


@pytest.fixture
async def admin_cluster() -> AsyncIterator[TestCluster]:
    async with cluster(servers=1, route_config=route_config(admin_keys=ADMIN_KEYS)) as c:
        yield c


def _admin_credentials(kind: str, c: TestCluster, token: str) -> tuple[tuple[str, str], ...]:
    if kind == "none":
        return ()
    if kind == "wrong-secret":
        return ((ADMIN_KEY, "ops:next-secret-0123456789"),)
    if kind == "unknown-id":
        return ((ADMIN_KEY, "nobody:ops-secret-0123456789"),)
    if kind == "no-id":
        return ((ADMIN_KEY, "ops-secret-0123456789"),)
    if kind == "empty":
        return ((ADMIN_KEY, ":"),)
    if kind == "user-token":
        return ((AUTHORIZATION, f"Bearer {token}"),)
    if kind == "cluster-secret":
        return secret_metadata(c.embedded.route.config.cluster_secret)
    raise AssertionError(kind)  # pragma: no cover


ADMIN_REFUSALS = {
    "none": (grpc.StatusCode.UNAUTHENTICATED, "missing admin key"),
    "wrong-secret": (grpc.StatusCode.UNAUTHENTICATED, "unknown admin key id or wrong secret"),
    "unknown-id": (grpc.StatusCode.UNAUTHENTICATED, "unknown admin key id or wrong secret"),
    "no-id": (grpc.StatusCode.UNAUTHENTICATED, "unknown admin key id or wrong secret"),
    "empty": (grpc.StatusCode.UNAUTHENTICATED, "unknown admin key id or wrong secret"),
    "user-token": (grpc.StatusCode.PERMISSION_DENIED, "not a user's session token"),
    "cluster-secret": (grpc.StatusCode.PERMISSION_DENIED, "not the cluster secret"),
}


@pytest.mark.parametrize("credentials", ADMIN_REFUSALS)
@pytest.mark.parametrize("rpc", ADMIN_RPCS)
async def test_admin_rpcs_refuse_anything_but_an_admin_key(
    admin_cluster, raw, fails, rpc, credentials
):
    login = await raw.login(admin_cluster, "bob")
    stub = admin_pb2_grpc.AdminStub(raw.channel(admin_cluster.route_address))
    metadata = _admin_credentials(credentials, admin_cluster, login.session_token)

    err = await fails(getattr(stub, rpc)(ADMIN_RPCS[rpc](), metadata=metadata))

    code, text = ADMIN_REFUSALS[credentials]
    assert err.code() == code
    assert text in err.details()
    # Nothing happened: bob is still logged in and enabled.
    account = await admin_cluster.embedded.store.get_account(login.user_id)
    assert account is not None and not account.disabled
    assert await admin_cluster.embedded.store.get_session(login.user_id) is not None


@pytest.mark.parametrize("key_id", ADMIN_KEYS)
async def test_every_configured_admin_key_is_accepted(admin_cluster, raw, key_id):
    """Several keys at once: a new one is added, callers move to it, the old one goes."""
    await raw.register(admin_cluster, "bob")
    stub = admin_pb2_grpc.AdminStub(raw.channel(admin_cluster.route_address))
    metadata = ((ADMIN_KEY, f"{key_id}:{ADMIN_KEYS[key_id]}"),)
    reply = await stub.GetUser(admin_pb2.GetUserRequest(user_name="bob"), metadata=metadata)
    assert reply.account.user_name == "bob"


@pytest.mark.parametrize("rpc", ADMIN_RPCS)
@pytest.mark.parametrize("with_key", [True, False])
async def test_admin_rpcs_are_off_on_a_route_without_admin_keys(rr, raw, fails, rpc, with_key):
    await raw.register(rr, "bob")
    stub = admin_pb2_grpc.AdminStub(raw.channel(rr.route_address))
    metadata = ((ADMIN_KEY, "ops:ops-secret-0123456789"),) if with_key else ()
    err = await fails(getattr(stub, rpc)(ADMIN_RPCS[rpc](), metadata=metadata))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin API is off" in err.details() and "--admin-keys" in err.details()


async def test_a_user_token_does_not_reach_admin_rpcs_even_beside_a_wrong_key(
    admin_cluster, raw, fails
):
    login = await raw.login(admin_cluster, "bob")
    stub = admin_pb2_grpc.AdminStub(raw.channel(admin_cluster.route_address))
    metadata = (
        (AUTHORIZATION, f"Bearer {login.session_token}"),
        (ADMIN_KEY, "ops:wrong-secret-0123456789"),
    )
    err = await fails(
        stub.DisableUser(admin_pb2.DisableUserRequest(user_name="bob"), metadata=metadata)
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
