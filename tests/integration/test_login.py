"""Login and logout: credentials, server choice, duplicate logins, takeovers, online state."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from cim.client.client import ClientEvent, EventKind
from cim.errors import AlreadyExists, NotFound, PermissionDenied, Unauthenticated, Unavailable
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2
from cim.route import sessions as sessions_module
from cim.route.sessions import ONLINE_LIST_LIMIT
from cim.testing import cluster
from cim.testing import fast_route_config as route_config


def _login(name: str, password: str = "secret-pw", user_id: int = 0) -> route_pb2.LoginRequest:
    return route_pb2.LoginRequest(user_name=name, password=password, user_id=user_id)


async def _online_names(client) -> list[str]:
    return [user.user_name for user in await client.list_online()]


# --- credentials -----------------------------------------------------------------------------


async def test_login_unknown_user_is_not_found(rr, raw, fails):
    err = await fails(raw.route(rr).Login(_login("nobody")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "nobody" in err.details()


async def test_login_unknown_user_raises_not_found_in_client_library(rr):
    client = await rr.client("alice", connect=False)
    client.user_name = "nobody"
    client.user_id = 0
    with pytest.raises(NotFound):
        await client.login()


async def test_wrong_password_and_id_mismatch_are_denied_with_the_same_message(rr, raw, fails):
    stub = raw.route(rr)
    alice_id = await raw.register(rr, "alice")
    bob_id = await raw.register(rr, "bob")

    wrong_password = await fails(stub.Login(_login("alice", "not-her-password")))
    wrong_id = await fails(stub.Login(_login("alice", user_id=bob_id)))
    unknown_id = await fails(stub.Login(_login("alice", user_id=alice_id + 1000)))
    negative_id = await fails(stub.Login(_login("alice", user_id=-1)))

    for err in (wrong_password, wrong_id, unknown_id, negative_id):
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # One message for every credential failure: the answer never tells which part was wrong.
    assert len({e.details() for e in (wrong_password, wrong_id, unknown_id, negative_id)}) == 1
    assert wrong_password.details()


@pytest.mark.parametrize(
    ("name", "password"),
    [("", "pw"), ("bad name", "pw"), ("alice", "")],
    ids=["empty-name", "bad-name", "empty-password"],
)
async def test_login_with_invalid_input_is_invalid_argument(rr, raw, fails, name, password):
    await raw.register(rr, "alice")
    err = await fails(raw.route(rr).Login(_login(name, password)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_wrong_password_raises_permission_denied_in_client_library(rr):
    await rr.client("alice", "right-pw", connect=False)
    impostor = await rr.client("bob", connect=False)
    impostor.user_name, impostor._password, impostor.user_id = "alice", "wrong-pw", 0
    with pytest.raises(PermissionDenied):
        await impostor.login()


async def test_login_with_matching_user_id_succeeds(rr, raw):
    alice_id = await raw.register(rr, "alice")
    reply = await raw.route(rr).Login(_login("alice", user_id=alice_id))
    assert reply.user_id == alice_id


async def test_login_returns_a_cluster_server_and_a_token(rr, raw):
    alice_id = await raw.register(rr, "alice")
    before_ms = time.time() * 1000
    reply = await raw.route(rr).Login(_login("alice"))

    servers = {server.server_id: server.address for server in rr.embedded.servers}
    assert reply.server.server_id in servers
    assert reply.server.address == servers[reply.server.server_id]
    assert reply.user_id == alice_id
    assert reply.user_name == "alice"
    assert reply.session_token
    assert reply.session_id
    assert reply.token_expires_ms > before_ms


async def test_login_token_opens_a_stream_on_the_chosen_server(rr, raw):
    login = await raw.login(rr, "alice")
    _, ok = await raw.connect(login)
    assert ok.user_id == login.user_id
    assert ok.user_name == "alice"
    assert ok.server_id == login.server.server_id
    assert ok.heartbeat_interval_ms > 0
    assert ok.idle_timeout_ms > ok.heartbeat_interval_ms


async def test_round_robin_spreads_logins_over_both_servers(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    assert {alice.server.server_id, bob.server.server_id} == {"server-1", "server-2"}


async def test_login_without_chat_servers_is_unavailable(rr, raw, fails, eventually):
    await raw.register(rr, "alice")
    for server in rr.embedded.servers:
        await server.stop()

    # A registry watch (ZooKeeper) tells the route a moment later, not synchronously.
    async def route_sees_none() -> bool:
        return not rr.embedded.route.servers.servers()

    await eventually(route_sees_none)

    err = await fails(raw.route(rr).Login(_login("alice")))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "chat server" in err.details()

    client = await rr.client("bob", connect=False)
    with pytest.raises(Unavailable):
        await client.login()


# --- duplicate logins ------------------------------------------------------------------------


async def test_duplicate_login_while_connected_is_already_exists(rr, raw, fails):
    await rr.client("alice")
    err = await fails(raw.route(rr).Login(_login("alice")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS

    with pytest.raises(AlreadyExists):
        await rr.client("alice")


async def test_rejected_duplicate_login_leaves_first_client_working(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    with pytest.raises(AlreadyExists):
        await rr.client("alice")

    await bob.send_private(alice.user_id, "still there?")
    message = await rr.next_message(alice)
    assert message.text == "still there?"
    assert alice.connected


async def test_login_works_again_after_first_client_closes(rr):
    first = await rr.client("alice")
    await first.close()

    second = await rr.client("alice")
    assert second.connected
    assert second.user_id == first.user_id


async def test_login_takes_over_session_on_a_stopped_server(rr, raw):
    login = await raw.login(rr, "alice")
    await raw.connect(login)
    server = next(s for s in rr.embedded.servers if s.server_id == login.server.server_id)

    await server.stop(0)

    again = await raw.route(rr).Login(_login("alice"))
    assert again.session_id != login.session_id
    assert again.server.server_id != server.server_id
    _, ok = await raw.connect(again)
    assert ok.user_id == login.user_id


async def test_login_takes_over_session_of_a_server_that_died_without_reporting(
    rr, raw, monkeypatch
):
    """The chat server goes away without telling the route the stream ended (a
    crash): the route still holds alice's session as connected, on a server that
    is no longer registered. It is dead, so a new login takes it over."""
    login = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    await raw.connect(login)
    server = next(s for s in rr.embedded.servers if s.server_id == login.server.server_id)

    async def lost_report(stream) -> None:  # the crash loses the SessionDisconnected call
        return None

    monkeypatch.setattr(server.service, "_disconnected", lost_report)
    await server.stop(0)

    # Meanwhile a message for her cannot be delivered: it is kept.
    result = await raw.route(rr).SendPrivate(
        common_pb2.SendPrivateRequest(receiver_id=login.user_id, text="while you were gone"),
        metadata=raw.auth(bob.session_token),
    )
    assert result.status == common_pb2.DELIVERY_STATUS_STORED

    again = await raw.route(rr).Login(_login("alice"))
    assert again.session_id != login.session_id
    assert again.server.server_id != server.server_id
    stream, _ = await raw.connect(again)
    (replayed,) = stream.replayed
    assert (replayed.message.text, replayed.message.stored) == ("while you were gone", True)


async def test_login_takes_over_session_of_an_unreachable_registered_server(rr, raw, monkeypatch):
    """As above, but the dead server is still in the registry (its entry has not
    expired yet): the route probes it, finds it unreachable, and moves on."""
    login = await raw.login(rr, "alice")
    await raw.connect(login)
    server = next(s for s in rr.embedded.servers if s.server_id == login.server.server_id)

    async def nothing(*args: object) -> None:
        return None

    monkeypatch.setattr(server.service, "_disconnected", nothing)
    monkeypatch.setattr(rr.embedded.registry, "deregister", nothing)
    await server.stop(0)
    assert server.server_id in {m.member_id for m in rr.embedded.route.servers.servers()}

    again = await raw.route(rr).Login(_login("alice"))
    assert again.session_id != login.session_id
    assert again.server.server_id != server.server_id  # the unreachable server is avoided
    _, ok = await raw.connect(again)
    assert ok.user_id == login.user_id
    # Later logins avoid it too.
    for name in ("u1", "u2"):
        assert (await raw.login(rr, name)).server.server_id != server.server_id


async def test_a_second_login_replaces_a_login_whose_stream_never_came(rr, raw, fails):
    """A client logged in and never connected (it crashed, or gave up): the
    same credentials log in again at once instead of waiting out the grace."""
    first = await raw.login(rr, "alice")  # stream never opened
    err = await fails(raw.route(rr).Login(_login("alice", "wrong-pw")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # the password is checked first
    second = await raw.route(rr).Login(_login("alice"))
    assert second.session_id != first.session_id
    # The replaced login's token is over: its stream is refused, saying so.
    stale = raw.open_stream(first.server.address)
    await stale.login(first.user_id, first.session_token)
    (frame,) = await stale.read_until_end()
    assert frame.notice.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert "replaced by a newer login" in frame.notice.text
    _, ok = await raw.connect(second)
    assert ok.user_id == first.user_id
    # Once its stream is there, a login counts: a third is refused.
    err = await fails(raw.route(rr).Login(_login("alice")))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already logged in from another client" in err.details()


async def test_the_client_library_logs_in_again_over_its_own_unconnected_login(rr):
    crashed = await rr.client("alice", connect=False)
    await crashed.login()  # and never connects
    again = await rr.client("alice")
    assert again.connected and again.user_id == crashed.user_id


async def test_client_whose_login_was_taken_over_after_the_grace_cannot_connect():
    async with cluster(servers=2, route_config=route_config(connect_grace=0.3)) as c:
        first = await c.client("alice", connect=False)
        await first.login()
        await asyncio.sleep(0.5)  # first never connected within the grace
        second = await c.client("alice")
        assert second.connected
        with pytest.raises(Unauthenticated):
            await first.connect()
        assert not first.connected


async def test_login_takes_over_a_session_that_never_connected(raw):
    async with cluster(servers=2, route_config=route_config(connect_grace=0.3)) as c:
        first = await raw.login(c, "alice")
        await asyncio.sleep(0.5)
        second = await raw.route(c).Login(_login("alice"))
        assert second.session_id != first.session_id
        assert second.session_token != first.session_token

        # The newer login owns the session: its token connects ...
        _, ok = await raw.connect(second)
        assert ok.user_id == first.user_id
        # ... and the replaced one is refused.
        stale = raw.open_stream(first.server.address)
        await stale.login(first.user_id, first.session_token)
        frames = await stale.read_until_end()
        assert len(frames) == 1
        assert frames[0].notice.kind == chat_pb2.Notice.KIND_ERROR
        assert frames[0].notice.code == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_concurrent_logins_exactly_one_wins(rr, raw):
    """Logins that race, none connected yet: a later one may replace an
    earlier (see above), so several may answer; exactly one can connect."""
    await raw.register(rr, "alice")
    replies = await asyncio.gather(
        *(raw.route(rr).Login(_login("alice")) for _ in range(4)), return_exceptions=True
    )
    logins = [r for r in replies if isinstance(r, route_pb2.LoginResponse)]
    assert logins, replies
    for reply in replies:
        if not isinstance(reply, route_pb2.LoginResponse):
            assert reply.code() == grpc.StatusCode.ALREADY_EXISTS
    usable = []
    for login in logins:
        stream = raw.open_stream(login.server.address)
        await stream.login(login.user_id, login.session_token)
        first = await stream.read()
        if first.WhichOneof("frame") == "login_ok":
            usable.append(login.session_id)
        else:
            assert first.notice.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert len(usable) == 1


async def test_kick_old_policy_on_a_single_server():
    config = route_config(duplicate_login="kick-old")
    async with cluster(servers=1, route_config=config) as c:
        first = await c.client("alice")
        kicked = asyncio.Event()
        first.on_event = lambda event: kicked.set() if event.kind == EventKind.KICKED else None

        second = await c.client("alice")
        async with asyncio.timeout(5):
            await kicked.wait()
        assert not first.connected
        assert second.connected

        bob = await c.client("bob")
        await bob.send_private(second.user_id, "same server")
        assert (await c.next_message(second)).text == "same server"
        assert [u.user_name for u in await bob.list_online()] == ["alice", "bob"]


async def test_kick_old_policy_replaces_the_connected_client():
    config = route_config(duplicate_login="kick-old", routing="round-robin")
    async with cluster(servers=2, route_config=config) as c:
        first = await c.client("alice")
        events: list[ClientEvent] = []
        kicked = asyncio.Event()

        def on_event(event: ClientEvent) -> None:
            events.append(event)
            if event.kind == EventKind.KICKED:
                kicked.set()

        first.on_event = on_event

        second = await c.client("alice")
        assert second.connected
        assert second.user_id == first.user_id

        async with asyncio.timeout(5):
            await kicked.wait()
            # The kicked client's message iterator ends instead of waiting forever.
            leftovers = [message async for message in first.messages()]
        assert leftovers == []
        assert not first.connected
        assert [e.kind for e in events if e.kind == EventKind.KICKED] == [EventKind.KICKED]
        # A kicked client does not fight back by reconnecting.
        assert EventKind.RECONNECTING not in [e.kind for e in events]

        bob = await c.client("bob")
        result = await bob.send_private(second.user_id, "to the new client")
        assert result.status == common_pb2.DELIVERY_STATUS_DELIVERED
        message = await c.next_message(second)
        assert message.text == "to the new client"
        assert [u.user_name for u in await bob.list_online()].count("alice") == 1

        # Closing the kicked client (it logs out with its old token) leaves the new one be.
        await first.close()
        assert [u.user_name for u in await bob.list_online()] == ["alice", "bob"]
        await bob.send_private(second.user_id, "after the old one closed")
        assert (await c.next_message(second)).text == "after the old one closed"


# --- logout and online state -----------------------------------------------------------------


async def test_logout_clears_online_state(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    assert "alice" in await _online_names(bob)

    await alice.route.logout()

    assert "alice" not in await _online_names(bob)
    assert "bob" in await _online_names(bob)


async def test_logout_ends_the_clients_stream_with_a_kick(rr):
    alice = await rr.client("alice")
    kicked = asyncio.Event()
    alice.on_event = lambda event: kicked.set() if event.kind == EventKind.KICKED else None

    await alice.route.logout()

    async with asyncio.timeout(5):
        await kicked.wait()
    assert not alice.connected


async def test_logout_is_idempotent_and_the_user_leaves_the_online_list(rr, raw):
    login = await raw.login(rr, "alice")
    await raw.connect(login)
    bob = await raw.login(rr, "bob")
    stub = raw.route(rr)
    await stub.Logout(route_pb2.LogoutRequest(), metadata=raw.auth(login.session_token))
    # A retried logout (its reply lost) succeeds; the token is good for nothing else.
    await stub.Logout(route_pb2.LogoutRequest(), metadata=raw.auth(login.session_token))
    reply = await stub.ListOnlineUsers(
        route_pb2.ListOnlineUsersRequest(), metadata=raw.auth(bob.session_token)
    )
    assert [user.user_name for user in reply.users] == []


async def test_login_after_logout_succeeds(rr):
    alice = await rr.client("alice")
    await alice.route.logout()
    again = await rr.client("alice")
    assert again.connected


async def test_closing_the_client_takes_the_user_offline(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    await alice.close()
    assert await _online_names(bob) == ["bob"]


async def test_list_online_users_without_and_with_prefix(rr):
    alice = await rr.client("alice")
    await rr.client("bob")
    albert = await rr.client("albert")
    await rr.client("carol", connect=False)  # registered, never logged in
    dave = await rr.client("dave", connect=False)
    await dave.login()  # logged in, stream never opened

    everyone = await alice.list_online()
    assert [u.user_name for u in everyone] == ["alice", "bob", "albert"]  # by user id
    assert all(u.user_id > 0 for u in everyone)

    with_prefix = await alice.list_online("al")
    assert [(u.user_id, u.user_name) for u in with_prefix] == [
        (alice.user_id, "alice"),
        (albert.user_id, "albert"),
    ]
    assert await alice.list_online("bo") == [u for u in everyone if u.user_name == "bob"]
    assert await alice.list_online("zz") == []
    # Prefixes are case-sensitive, as names are.
    assert await alice.list_online("AL") == []


async def test_list_online_users_is_capped_and_says_when_it_was_cut(rr, raw, monkeypatch):
    # The cap is what the proto declares.
    assert rr.embedded.route.sessions.online_list_limit == ONLINE_LIST_LIMIT == 10_000
    logins = [await raw.login(rr, name) for name in ("al1", "al2", "al3", "bo1")]
    for login in logins:
        await raw.connect(login)
    monkeypatch.setattr(rr.embedded.route.sessions, "online_list_limit", 2)
    auth = raw.auth(logins[0].session_token)

    async def listed(prefix: str = "") -> tuple[list[str], bool]:
        reply = await raw.route(rr).ListOnlineUsers(
            route_pb2.ListOnlineUsersRequest(name_prefix=prefix), metadata=auth
        )
        return [user.user_name for user in reply.users], reply.truncated

    names, truncated = await listed()
    assert truncated and len(names) == 2 and set(names) < {"al1", "al2", "al3", "bo1"}
    names, truncated = await listed("al")
    assert truncated and len(names) == 2 and set(names) < {"al1", "al2", "al3"}
    assert await listed("bo") == (["bo1"], False)
    monkeypatch.setattr(rr.embedded.route.sessions, "online_list_limit", 4)
    assert await listed() == (["al1", "al2", "al3", "bo1"], False)
    # Accounts are read a chunk at a time, and the walk stops once the cap is passed.
    monkeypatch.setattr(sessions_module, "ONLINE_LIST_CHUNK", 1)
    assert await listed() == (["al1", "al2", "al3", "bo1"], False)
    monkeypatch.setattr(rr.embedded.route.sessions, "online_list_limit", 1)
    names, truncated = await listed("al")
    assert truncated and len(names) == 1 and names[0].startswith("al")


async def test_list_online_users_with_raw_stub(rr, raw):
    alice = await raw.login(rr, "alice")
    await raw.connect(alice)
    bob = await raw.login(rr, "bob")
    await raw.connect(bob)
    reply = await raw.route(rr).ListOnlineUsers(
        route_pb2.ListOnlineUsersRequest(name_prefix="b"), metadata=raw.auth(alice.session_token)
    )
    assert [(u.user_id, u.user_name) for u in reply.users] == [(bob.user_id, "bob")]


async def test_resume_token_logs_in_again_without_the_password(rr, raw):
    first = await raw.login(rr, "alice")
    await raw.connect(first)
    resumed = await raw.route(rr).Login(
        route_pb2.LoginRequest(user_name="alice", resume_token=first.session_token)
    )
    assert resumed.user_id == first.user_id
    assert resumed.session_id != first.session_id
    _, ok = await raw.connect(resumed)  # the replaced stream is kicked, the new one is in
    assert ok.user_id == first.user_id


async def test_resume_after_logout_or_with_a_foreign_token_is_refused(rr, raw, fails):
    alice = await raw.login(rr, "alice")
    bob = await raw.login(rr, "bob")
    err = await fails(
        raw.route(rr).Login(
            route_pb2.LoginRequest(user_name="alice", resume_token=bob.session_token)
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    await raw.route(rr).Logout(route_pb2.LogoutRequest(), metadata=raw.auth(alice.session_token))
    err = await fails(
        raw.route(rr).Login(
            route_pb2.LoginRequest(user_name="alice", resume_token=alice.session_token)
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "password" in err.details()
    err = await fails(
        raw.route(rr).Login(route_pb2.LoginRequest(user_name="alice", resume_token="forged.x.y"))
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
