"""Fuzzing of every RPC surface: thousands of random and malformed requests.

Hypothesis draws batches of hostile but well-typed requests (empty, huge,
control characters, odd Unicode planes, extreme int64 ids, forged, truncated
and tampered tokens, missing oneofs) and throws each batch concurrently at a
real cluster. After every batch:

* no call returned INTERNAL, UNKNOWN or any code outside the expected set,
  and every error carries a message (so do per-item errors and notices);
  nothing was logged as an error (a crash no caller saw);
* inbox pages (FetchOffline, Replay, the replay after a stream login) hold
  stored messages after the asked seq, in seq order, none past the head;
  history pages (History) hold the asked conversation's messages below the
  asked position, newest first, within the limit; a group's history answers
  each pool user as the group's record says (a member all of it, a removed
  member up to the removal, anyone else PERMISSION_DENIED);
* the route and the chat server still answer health checks with SERVING,
  a normal private message still reaches a live stream, and one pool user
  the fuzz has been logging in, acking and replaying as can still connect,
  get its replay and then a message another pool user sends it, live;
* the store is consistent: accounts read the same by name and by id, inboxes
  are in seq order, and every user ListOnlineUsers shows holds a live stream
  (chat server Presence).

pytest-asyncio runs each Hypothesis example of an async ``@given`` test in the
test's event loop; the cluster (a fixture) lives across the examples.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cim.core import limits
from cim.errors import InvalidArgument
from cim.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from cim.proto.internal.v1 import (
    chat_internal_pb2,
    chat_internal_pb2_grpc,
    route_internal_pb2,
    route_internal_pb2_grpc,
)
from cim.proto.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    common_pb2,
    groups_pb2,
    groups_pb2_grpc,
    route_pb2,
    route_pb2_grpc,
)
from cim.route.admin import ADMIN_KEY
from cim.route.app import SERVICES as ROUTE_SERVICES
from cim.server.app import SERVICES as SERVER_SERVICES
from cim.testing import TestCluster, cluster
from cim.testing import fast_route_config as route_config

EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
EXPECTED_NUMBERS = {code.value[0] for code in EXPECTED}
CALL_TIMEOUT = 10.0
PASSWORD = "secret-pw"
POOL = ("alice", "bob", "dave")  # users whose credentials and tokens the fuzz may use
# The one user admin calls may kick and disable: the others keep the checks going.
VICTIM = "frank"
ADMIN_KEYS = {"fuzz": "fuzz-admin-secret-0123456789"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BEHIND = chat_pb2.Notice.KIND_BEHIND
REFUSED = chat_pb2.Notice.KIND_REFUSED

pytestmark = [
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
    # The ZooKeeper client's own threads use `random` (retry jitter) while
    # Hypothesis generates; that is not a strategy using it.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

# Requests generated per surface (printed at the end of each test; run with -s).
COUNTS: collections.Counter[str] = collections.Counter()


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # Shrinking against a live cluster is slow and its state makes it
        # unreliable; the assertion messages name the failing request instead.
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- hostile values -----------------------------------------------------------

_odd_planes = st.characters(
    min_codepoint=0x10000, max_codepoint=0x10FFFF, exclude_categories=("Cs",)
)
_controls = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
    ["\x7f", "\x85", "\u2028", "\u2029", "\u200b", "\u202e", "\ufeff", "\ufffd"]
)
_huge = st.builds(
    lambda n, ch: ch * n,
    st.integers(100_000, 2_000_000),
    st.sampled_from(["x", " ", "\x00", "é", "😀", "all"]),
)
_small = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "\t\n ",
            "\x00",
            "all",
            "ALL",
            "a" * 32,
            "a" * 33,
            "alice",
            "bob",
            "dave",
            "nobody",
            PASSWORD,
            "../../etc/passwd",
            "' OR 1=1 --",
            "%s%n%x",
            "{}",
            "null",
            "名字",
            "\uff21\uff4c\uff49\uff43\uff45"  # fullwidth "Alice",
            "a.b-c_d",
        ]
    ),
    st.text(max_size=40),
    st.text(alphabet=_controls, max_size=20),
    st.text(alphabet=_odd_planes, max_size=20),
    st.from_regex(r"[\w.\-]{1,32}", fullmatch=True),
)
# About one string in twelve is huge (100 KB - 2 MB, up to 8 MB as UTF-8).
hostile_text = st.one_of(*([_small] * 11), _huge)
int64 = st.one_of(
    st.sampled_from([0, 1, -1, 2, INT64_MAX, INT64_MIN, 2**31, -(2**31), 2**32]),
    st.integers(0, 30),  # ids real accounts hold
    st.integers(INT64_MIN, INT64_MAX),
)
uint64 = st.one_of(st.sampled_from([0, 1, 2**64 - 1, 2**63]), st.integers(0, 2**64 - 1))
# Seqs: the whole uint64 range, or small ones that real inboxes hold.
seq_value = st.one_of(uint64, st.integers(0, 60))
int32 = st.one_of(
    st.sampled_from([0, 1, -1, 1000, 1001, 2**31 - 1, -(2**31)]),
    st.integers(-(2**31), 2**31 - 1),
)
client_msg_id = st.one_of(st.just(""), hostile_text)
ascii_garbage = st.text(alphabet=string.ascii_letters + string.digits + "-._~+/=", max_size=300)

# How a call authenticates; resolved against the live tokens at run time.
AUTH_MODES = (
    "none",
    "valid",
    "valid",
    "garbage",
    "tampered",
    "truncated",
    "no-scheme",
    "basic",
    "empty-bearer",
    "other-key",
    "logged-out",
)
auth = st.tuples(st.sampled_from(AUTH_MODES), st.sampled_from(POOL), ascii_garbage)


def pool_name() -> Any:
    return st.one_of(st.sampled_from(POOL), hostile_text)


# --- the cluster and its bystanders -------------------------------------------


class ErrorLog(logging.Handler):
    """Collects what is logged as an error (cim's own reports, asyncio's for
    tasks that died, gRPC's for servicers that raised): a fuzz that finds a
    crash fails even when no caller saw it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("ExecuteBatchError raised in core by servicer method"):
            # gRPC could not write a response because the peer had already
            # ended the call (the client-side race of grpc/grpc#36066, a
            # caller's deadline): what the caller got is checked on its side.
            COUNTS["responses the peer was gone for (gRPC core)"] += 1
            return
        self.records.append(self.format(record))


@dataclass
class Fuzz:
    c: TestCluster
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    dead_token: str = ""
    carol_token: str = ""
    erin_id: int = 0
    erin_call: Any = None
    erin_inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    registered: dict[str, int] = field(default_factory=dict)  # by the fuzz, this example
    seq: itertools.count[int] = field(default_factory=itertools.count)
    reader: asyncio.Task[None] | None = None
    # The seq each pool user holds (from the pool checks): presented at login.
    held: dict[str, int] = field(default_factory=dict)
    seeded: bool = False
    errors: ErrorLog = field(default_factory=lambda: ErrorLog())

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        self.channels.append(channel)
        return channel

    @property
    def server_address(self) -> str:
        return self.c.embedded.servers[0].address

    @property
    def secret(self) -> tuple[tuple[str, str], ...]:
        return (("x-cim-cluster-secret", self.c.embedded.route.config.cluster_secret),)

    def route(self) -> route_pb2_grpc.RouteStub:
        return route_pb2_grpc.RouteStub(self._route_channel)

    def groups(self) -> groups_pb2_grpc.GroupsStub:
        return groups_pb2_grpc.GroupsStub(self.channel(self.c.route_address))

    def internal(self) -> route_internal_pb2_grpc.RouteInternalStub:
        return route_internal_pb2_grpc.RouteInternalStub(self._route_channel)

    def chat(self) -> chat_pb2_grpc.ChatStub:
        return chat_pb2_grpc.ChatStub(self._chat_channel)

    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self._route_channel)

    def chat_internal(self) -> chat_internal_pb2_grpc.ChatInternalStub:
        return chat_internal_pb2_grpc.ChatInternalStub(self._chat_channel)

    async def start(self) -> None:
        self._route_channel = self.channel(self.c.route_address)
        self._chat_channel = self.channel(self.server_address)
        route = self.route()
        for name in (*POOL, "carol", "erin", "ghost", VICTIM):
            reply = await route.Register(
                route_pb2.RegisterRequest(user_name=name, password=PASSWORD), timeout=5
            )
            self.ids[name] = reply.user_id
        for name in POOL:
            self.tokens[name] = await self.login(name)
        self.carol_token = await self.login("carol")
        self.dead_token = await self.login("ghost")
        await route.Logout(route_pb2.LogoutRequest(), metadata=bearer(self.dead_token), timeout=5)
        erin_token = await self.login("erin")
        self.erin_id = self.ids["erin"]
        self.erin_call = self.chat().Connect()
        await self.erin_call.write(
            chat_pb2.ClientFrame(
                login=chat_pb2.LoginFrame(user_id=self.erin_id, session_token=erin_token)
            )
        )
        first = await asyncio.wait_for(self.erin_call.read(), 5)
        assert first.WhichOneof("frame") == "login_ok", first
        self.reader = asyncio.create_task(self._drain_erin())

    async def seed_groups(self) -> None:
        """Once per cluster: g:1 and g:2 of alice with bob and dave, so the
        group ops meet real groups with members (not only refusals)."""
        if self.seeded:
            return
        self.seeded = True
        for name in ("fuzz one", "fuzz two"):
            await self.groups().CreateGroup(
                groups_pb2.CreateGroupRequest(
                    name=name, member_ids=[self.ids["bob"], self.ids["dave"]]
                ),
                metadata=bearer(self.tokens["alice"]),
                timeout=5,
            )

    async def login(self, name: str) -> str:
        reply = await self.route().Login(
            route_pb2.LoginRequest(user_name=name, password=PASSWORD), timeout=5
        )
        if name in POOL:
            self.tokens[name] = reply.session_token
        return str(reply.session_token)

    async def _drain_erin(self) -> None:
        while (frame := await self.erin_call.read()) is not grpc.aio.EOF:
            await self.erin_inbox.put(frame)
        await self.erin_inbox.put(None)

    def metadata(self, mode: tuple[str, str, str]) -> tuple[tuple[str, str], ...] | None:
        kind, user, garbage = mode
        token = self.tokens[user]
        if kind == "none":
            return None
        if kind == "valid":
            return bearer(token)
        if kind == "garbage":
            return bearer(garbage) if garbage.strip() else bearer("x")
        if kind == "tampered":
            index = len(garbage) % len(token)
            flipped = "A" if token[index] != "A" else "B"
            return bearer(token[:index] + flipped + token[index + 1 :])
        if kind == "truncated":
            return bearer(token[: max(1, len(garbage) % len(token))])
        if kind == "no-scheme":
            return (("authorization", token),)
        if kind == "basic":
            return (("authorization", f"Basic {token}"),)
        if kind == "empty-bearer":
            return (("authorization", "Bearer    "),)
        if kind == "other-key":
            _, _, rest = token.partition(".")
            return bearer(f"other.{rest}")
        if kind == "logged-out":
            return bearer(self.dead_token)
        raise AssertionError(kind)

    # --- after every batch: health, a normal message, consistency ---------------
    async def assert_healthy(self) -> None:
        for address in (self.c.route_address, self.server_address):
            health = health_pb2_grpc.HealthStub(self.channel(address))
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, address
        await self.erin_call.write(chat_pb2.ClientFrame(ping=chat_pb2.Ping(client_time_ms=1)))
        text = f"health check {next(self.seq)} {time.monotonic()}"
        reply = await self.route().SendPrivate(
            common_pb2.SendPrivateRequest(receiver_id=self.erin_id, text=text),
            metadata=bearer(self.carol_token),
            timeout=5,
        )
        assert reply.status == common_pb2.DELIVERY_STATUS_DELIVERED, reply
        async with asyncio.timeout(5):
            while True:
                frame = await self.erin_inbox.get()
                assert frame is not None, "erin's stream ended during the fuzz"
                if frame.WhichOneof("frame") == "notice":
                    assert frame.notice.kind != chat_pb2.Notice.KIND_KICKED, frame
                if frame.WhichOneof("frame") == "message" and frame.message.text == text:
                    break
        await self.assert_pool_delivers()
        await self.assert_consistent()
        assert not self.errors.records, f"errors logged during the fuzz: {self.errors.records}"

    async def assert_pool_delivers(self) -> None:
        """The pool users the fuzz logged in, out, acked and replayed as
        still work: one connects (presenting the seq it holds), gets its
        replay, and a message another sends it arrives live after the replay."""
        turn = next(self.seq)
        sender, receiver = POOL[turn % len(POOL)], POOL[(turn + 1) % len(POOL)]
        token = await self.usable_token(receiver)
        call = self.chat().Connect(timeout=CALL_TIMEOUT)
        try:
            await call.write(
                chat_pb2.ClientFrame(
                    login=chat_pb2.LoginFrame(
                        user_id=self.ids[receiver],
                        session_token=token,
                        last_seq=self.held.get(receiver, 0),
                    )
                )
            )
            frames: list[chat_pb2.ServerFrame] = []
            async with asyncio.timeout(10):
                while True:
                    frame = await call.read()
                    assert frame is not grpc.aio.EOF, (f"{receiver}'s stream ended", frames)
                    if frame.WhichOneof("frame") == "replay_done":
                        break
                    assert frame.WhichOneof("frame") != "notice", (receiver, frame)
                    frames.append(frame)
            assert frames and frames[0].WhichOneof("frame") == "login_ok", (receiver, frames[:1])
            check_login_replay([*frames[1:], frame], self.held.get(receiver, 0), receiver)
            text = f"pool check {turn} {time.monotonic()}"
            reply = await self.route().SendPrivate(
                common_pb2.SendPrivateRequest(receiver_id=self.ids[receiver], text=text),
                metadata=bearer(await self.usable_token(sender)),
                timeout=5,
            )
            assert reply.status == common_pb2.DELIVERY_STATUS_DELIVERED, (sender, receiver, reply)
            async with asyncio.timeout(5):
                while True:
                    message = await call.read()
                    assert message is not grpc.aio.EOF, f"{receiver}'s stream ended"
                    assert message.WhichOneof("frame") != "notice", (receiver, message)
                    if message.WhichOneof("frame") == "message" and message.message.text == text:
                        break
            assert not message.message.stored, message
            assert message.message.sender_id == self.ids[sender], message
            assert message.message.seq > frame.replay_done.through_seq, (message, frame)
            await call.write(chat_pb2.ClientFrame(ack=chat_pb2.AckFrame(seq=message.message.seq)))
            self.held[receiver] = message.message.seq
            COUNTS["pool checks"] += 1
            await call.done_writing()
        finally:
            call.cancel()

    async def usable_token(self, name: str) -> str:
        """A token of the user's current session: a new login, or (while a
        session the fuzz left still holds the user) a resume of the last
        token a fuzz login got."""
        deadline = time.monotonic() + 15  # past the route's connect grace
        while True:
            try:
                return await self.login(name)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.ALREADY_EXISTS or time.monotonic() > deadline:
                    raise
            try:
                reply = await self.route().Login(
                    route_pb2.LoginRequest(user_name=name, resume_token=self.tokens[name]),
                    timeout=5,
                )
            except grpc.aio.AioRpcError as err:
                # The last token the fuzz got is over (logged out, replaced).
                check_error(err, f"Route.Login({name}, resume)")
            else:
                self.tokens[name] = reply.session_token
                COUNTS["pool checks: resumed a session the fuzz left"] += 1
                return str(reply.session_token)
            COUNTS["pool checks: waits for a login"] += 1
            await asyncio.sleep(0.1)

    async def assert_consistent(self) -> None:
        store = self.c.embedded.store
        for name, user_id in self.registered.items():
            by_name = await store.get_account_by_name(name)
            by_id = await store.get_account(user_id)
            assert by_name is not None and by_name.user_id == user_id, (name, by_name)
            assert by_id is not None and by_id.user_name == name, (user_id, by_id)
        self.registered.clear()
        retention = self.c.embedded.route.config.retention
        for name in (*POOL, "erin"):  # inboxes: in seq order, nothing past the head
            page = await store.read_inbox(self.ids[name], 0, 1000, retention)
            seqs = [entry.seq for entry in page.entries]
            assert seqs == sorted(set(seqs)), (name, seqs)
            assert all(0 < seq <= page.head_seq for seq in seqs), (name, seqs, page.head_seq)
            assert page.dropped_through <= page.head_seq, (name, page)
        deadline = time.monotonic() + 5
        while True:  # a stream's end reaches the route a moment after the stream
            problems = await self._online_without_stream()
            if not problems or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert not problems, f"listed online without a live stream: {problems}"

    async def _online_without_stream(self) -> list[Any]:
        online = await self.route().ListOnlineUsers(
            route_pb2.ListOnlineUsersRequest(), metadata=bearer(self.carol_token), timeout=5
        )
        listed = {user.user_id for user in online.users}
        assert self.erin_id in listed, "erin has a live stream but is not listed"
        problems = []
        store = self.c.embedded.store
        secret = self.secret
        for user in online.users:
            account = await store.get_account(user.user_id)
            if account is None or account.user_name != user.user_name:
                problems.append(("account", user, account))
                continue
            session = await store.get_session(user.user_id)
            if session is None or not session.connected:
                problems.append(("session", user, session))
                continue
            presence = await self.chat_internal().Presence(
                chat_internal_pb2.PresenceRequest(
                    sessions=[
                        common_pb2.SessionRef(user_id=user.user_id, session_id=session.session_id)
                    ]
                ),
                metadata=secret,
                timeout=5,
            )
            if not presence.live[0]:
                problems.append(("no stream", user, session))
        return problems

    async def aclose(self) -> None:
        if self.erin_call is not None:
            self.erin_call.cancel()
        if self.reader is not None:
            self.reader.cancel()
        for channel in self.channels:
            await channel.close()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def fuzz() -> AsyncIterator[Fuzz]:
    async with cluster(servers=1, route_config=route_config(admin_keys=ADMIN_KEYS)) as c:
        state = Fuzz(c)
        root = logging.getLogger()
        root.addHandler(state.errors)
        try:
            await state.start()
            yield state
        finally:
            root.removeHandler(state.errors)
            await state.aclose()


def short(message: Any) -> str:
    """A request named for an assertion message: its type and size. On a
    failure Hypothesis prints the whole falsifying example; a full repr of
    every hostile request (built before knowing whether it fails) cost the
    fuzz a fifth of its time."""
    if isinstance(message, Message):
        return f"{type(message).__name__}<{message.ByteSize()} bytes>"
    if isinstance(message, list | tuple):
        return f"[{', '.join(short(item) for item in message[:3])}{', ...' * (len(message) > 3)}]"
    text = repr(message)
    return text if len(text) < 200 else text[:150] + f"...<{len(text)} chars>"


def client_write_race(err: grpc.aio.AioRpcError) -> bool:
    """grpc.aio's own INTERNAL for a message the client was still writing when
    the server had already ended the call (grpc/grpc#36066): the client loses
    the server's status. Made on the client, so not a status cim sent."""
    return (
        err.code() == grpc.StatusCode.INTERNAL
        and "execute_batch" in (err.debug_error_string() or "")
        and "SendMessageOperation" in (err.debug_error_string() or "")
    )


def check_error(err: grpc.aio.AioRpcError, what: str, *, streaming: bool = False) -> None:
    if streaming and client_write_race(err):
        COUNTS["client-side write races (grpc/grpc#36066)"] += 1
        return
    assert err.code() in EXPECTED, f"{what} -> {err.code().name}: {err.details()!r}"
    assert err.details(), f"{what} -> {err.code().name} without a message"


def over_a_limit(request: Any) -> bool:
    requests = request if isinstance(request, list) else [request]
    try:
        for one in requests:
            limits.check(one)
    except InvalidArgument:
        return True
    return False


def refusals_without_the_secret(request: Any, streaming: bool) -> set[grpc.StatusCode]:
    """What a call without the cluster secret may get: PERMISSION_DENIED, or
    gRPC's own RESOURCE_EXHAUSTED for a message over 4 MB; a unary request
    over a field's limit is refused as it is decoded, before the secret is
    looked at (a stream checks the secret before it reads anything)."""
    codes = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    if not streaming and over_a_limit(request):
        codes.add(grpc.StatusCode.INVALID_ARGUMENT)
    return codes


def check_item_error(error: common_pb2.ItemError, what: str) -> None:
    assert error.code in EXPECTED_NUMBERS, f"{what} -> item error {error.code}: {error.message!r}"
    assert error.message, f"{what} -> item error {error.code} without a message"


def check_page(
    after_seq: int,
    limit: int,
    reply: route_pb2.FetchOfflineResponse | route_internal_pb2.ReplayResponse,
    what: str,
) -> None:
    """A page of an inbox: at most ``limit`` stored messages after ``after_seq``,
    oldest first, none past the head."""
    seqs = [message.seq for message in reply.messages]
    assert len(seqs) <= (limit or 1000), f"{what} -> {len(seqs)} messages"
    assert seqs == sorted(set(seqs)), f"{what} -> seqs out of order: {seqs}"
    assert all(after_seq < seq <= reply.head_seq for seq in seqs), (what, seqs, reply.head_seq)
    assert all(message.stored for message in reply.messages), what
    assert reply.dropped_through_seq <= reply.head_seq, (what, reply.dropped_through_seq)


# --- Route ----------------------------------------------------------------------

register_op = st.tuples(
    st.just("Register"),
    st.builds(route_pb2.RegisterRequest, user_name=hostile_text, password=hostile_text),
    auth,
)
login_op = st.tuples(
    st.just("Login"),
    st.builds(
        route_pb2.LoginRequest,
        user_name=pool_name(),
        password=st.one_of(st.just(PASSWORD), hostile_text),
        user_id=int64,
        device_id=st.one_of(st.just(""), hostile_text),
    ),
    auth,
    # Resume with: nothing, garbage, or one of the pool's tokens (maybe tampered).
    st.sampled_from(["", "garbage", "valid", "tampered", "logged-out"]),
)
logout_op = st.tuples(st.just("Logout"), st.builds(route_pb2.LogoutRequest), auth)
online_op = st.tuples(
    st.just("ListOnlineUsers"),
    st.builds(route_pb2.ListOnlineUsersRequest, name_prefix=hostile_text),
    auth,
)
private_request = st.builds(
    common_pb2.SendPrivateRequest, receiver_id=int64, text=hostile_text, client_msg_id=client_msg_id
)
group_request = st.builds(
    common_pb2.SendGroupRequest,
    text=hostile_text,
    group_id=st.one_of(st.sampled_from(["", "all", "ALL", "all "]), hostile_text),
    client_msg_id=client_msg_id,
)
private_op = st.tuples(st.just("SendPrivate"), private_request, auth)
group_op = st.tuples(st.just("SendGroup"), group_request, auth)
fetch_op = st.tuples(
    st.just("FetchOffline"),
    st.builds(route_pb2.FetchOfflineRequest, limit=int32, after_seq=seq_value),
    auth,
)
ack_op = st.tuples(
    st.just("AckMessages"), st.builds(route_pb2.AckMessagesRequest, seq=seq_value), auth
)
# Conversation ids: the pool's own (some of them the caller's), near misses, garbage.
conversation_id = st.one_of(
    st.builds(lambda a, b: f"p:{min(a, b)}:{max(a, b)}", st.integers(1, 8), st.integers(1, 8)),
    st.builds(lambda a, b: f"p:{a}:{b}", int64, int64),
    st.sampled_from(["", "p:", "p:1", "p:2:1", "p:01:2", "g:1", "g:", "all", "p:1:2:3"]),
    hostile_text,
)
history_op = st.tuples(
    st.just("History"),
    st.builds(
        route_pb2.HistoryRequest,
        conversation_id=conversation_id,
        before_position=uint64,
        limit=int32,
    ),
    auth,
)
list_op = st.tuples(
    st.just("ListConversations"),
    st.builds(
        route_pb2.ListConversationsRequest,
        before_activity_ms=int64,
        before_conversation_id=st.one_of(st.just(""), conversation_id),
        limit=st.one_of(st.sampled_from([0, 1, 100, 101]), st.integers(0, 2**32 - 1)),
    ),
    auth,
)
mark_read_op = st.tuples(
    st.just("MarkRead"),
    st.builds(route_pb2.MarkReadRequest, conversation_id=conversation_id, position=uint64),
    auth,
)
receipts_op = st.tuples(
    st.just("GetReadReceipts"),
    st.builds(
        route_pb2.GetReadReceiptsRequest,
        conversation_id=conversation_id,
        cursor=uint64,
        min_position=uint64,
        limit=st.one_of(st.sampled_from([0, 1, 1000, 1001]), st.integers(0, 2**32 - 1)),
    ),
    auth,
)
route_op = st.one_of(
    register_op,
    login_op,
    logout_op,
    online_op,
    private_op,
    group_op,
    fetch_op,
    ack_op,
    history_op,
    list_op,
    mark_read_op,
    receipts_op,
)


def check_history(request: route_pb2.HistoryRequest, reply: route_pb2.HistoryResponse) -> None:
    """A page a member read: newest first, below before_position, within the limit."""
    what = f"Route.History({short(request)})"
    positions = [m.position for m in reply.messages]
    assert len(positions) <= (request.limit or 50), what
    assert positions == sorted(positions, reverse=True), what
    assert all(0 < p <= reply.head_position for p in positions), what
    if request.before_position:
        assert all(p < request.before_position for p in positions), what
    assert all(m.conversation_id == request.conversation_id for m in reply.messages), what


def check_list(
    request: route_pb2.ListConversationsRequest, reply: route_pb2.ListConversationsResponse
) -> None:
    """A list page: within the limit, most recent first (ties: higher id
    first), after the asked line, every count within its conversation's head."""
    what = f"Route.ListConversations({short(request)})"
    lines = list(reply.conversations)
    assert len(lines) <= (request.limit or 20), what
    order = [(c.last_activity_ms, c.conversation_id.encode()) for c in lines]
    assert order == sorted(order, reverse=True), what
    if request.before_activity_ms > 0:
        bound = (request.before_activity_ms, request.before_conversation_id.encode())
        assert all(key < bound for key in order), what
    for line in lines:
        assert line.read_position <= line.head_position, what
        assert line.unread <= line.head_position, what
        assert line.peer_read_position <= line.head_position, what


def check_receipts(
    request: route_pb2.GetReadReceiptsRequest, reply: route_pb2.GetReadReceiptsResponse
) -> None:
    what = f"Route.GetReadReceipts({short(request)})"
    for reader in reply.readers:
        assert request.min_position <= reader.position <= reply.head_position, what
        assert reader.user_id > 0, what


async def run_route_op(f: Fuzz, op: tuple[Any, ...]) -> None:
    name, request, mode = op[0], op[1], op[2]
    if name == "Login" and op[3]:
        resume_mode = op[3]
        user = mode[1]
        if resume_mode == "garbage":
            request.resume_token = mode[2]
        elif resume_mode == "logged-out":
            request.resume_token = f.dead_token
        else:
            metadata = f.metadata((resume_mode, user, mode[2]))
            assert metadata is not None
            request.resume_token = metadata[0][1].removeprefix("Bearer ")
            # Resuming as the token's own user replaces its session: keep the
            # new token, so later calls can still use a current one.
            request.user_name = user if resume_mode == "valid" else request.user_name
    COUNTS[f"Route.{name}"] += 1
    try:
        reply = await getattr(f.route(), name)(
            request, metadata=f.metadata(mode), timeout=CALL_TIMEOUT
        )
    except grpc.aio.AioRpcError as err:
        check_error(err, f"Route.{name}({short(request)}) auth={mode[0]}")
        return
    if name == "FetchOffline":
        check_page(request.after_seq, request.limit, reply, f"Route.FetchOffline({request})")
    if name == "History":
        check_history(request, reply)
    if name == "ListConversations":
        check_list(request, reply)
    if name == "MarkRead":
        what = f"Route.MarkRead({short(request)})"
        assert reply.read_position <= reply.head_position, what
        assert reply.unread <= reply.head_position, what
    if name == "GetReadReceipts":
        check_receipts(request, reply)
    if name == "Register":
        f.registered[request.user_name] = reply.user_id
    if name == "Login" and reply.user_name in POOL:
        f.tokens[reply.user_name] = reply.session_token


@given(ops=st.lists(route_op, min_size=10, max_size=25))
@fuzz_settings(examples=60)
async def test_route_rpcs_survive_hostile_requests(fuzz: Fuzz, ops: list[Any]) -> None:
    await asyncio.gather(*(run_route_op(fuzz, op) for op in ops))
    await fuzz.assert_healthy()


# --- Groups -------------------------------------------------------------------------

# Real ids (the fuzz's first groups), forged ones, "all", empty and garbage.
group_id = st.one_of(
    st.sampled_from(["g:1", "g:2", "g:3", "g:999999", "all", "", "g:0", "g:01", "p:1:2"]),
    hostile_text,
)
user_ids = st.lists(int64, max_size=5)
# What typing notes name: real-looking conversations (of the pool's small ids,
# forged, malformed) or anything at all.
conversation_id = st.one_of(
    group_id,
    st.builds(lambda a, b: f"p:{a}:{b}", st.integers(0, 12), st.integers(0, 12)),
    st.sampled_from(["p:1:1", "p:0:1", "p:01:2", "p:1:2:3", "p:", "g:", "p:1:x"]),
)
uint32 = st.one_of(
    st.sampled_from([0, 1, 50, 51, 100, 101, 1000, 1001, 2**32 - 1]), st.integers(0, 2**32 - 1)
)
groups_op = st.one_of(
    st.tuples(
        st.just("CreateGroup"),
        st.builds(groups_pb2.CreateGroupRequest, name=hostile_text, member_ids=user_ids),
        auth,
    ),
    st.tuples(
        st.just("AddMembers"),
        st.builds(groups_pb2.AddMembersRequest, group_id=group_id, user_ids=user_ids),
        auth,
    ),
    st.tuples(
        st.just("RemoveMembers"),
        st.builds(groups_pb2.RemoveMembersRequest, group_id=group_id, user_ids=user_ids),
        auth,
    ),
    st.tuples(
        st.just("LeaveGroup"), st.builds(groups_pb2.LeaveGroupRequest, group_id=group_id), auth
    ),
    st.tuples(
        st.just("SetAdmin"),
        st.builds(
            groups_pb2.SetAdminRequest, group_id=group_id, user_id=int64, admin=st.booleans()
        ),
        auth,
    ),
    st.tuples(
        st.just("TransferOwnership"),
        st.builds(groups_pb2.TransferOwnershipRequest, group_id=group_id, user_id=int64),
        auth,
    ),
    st.tuples(
        st.just("RenameGroup"),
        st.builds(groups_pb2.RenameGroupRequest, group_id=group_id, name=hostile_text),
        auth,
    ),
    st.tuples(
        st.just("DeleteGroup"), st.builds(groups_pb2.DeleteGroupRequest, group_id=group_id), auth
    ),
    st.tuples(
        st.just("ListMembers"),
        st.builds(
            groups_pb2.ListMembersRequest, group_id=group_id, after_user_id=int64, limit=uint32
        ),
        auth,
    ),
    st.tuples(
        st.just("ListMyGroups"),
        st.builds(groups_pb2.ListMyGroupsRequest, after_number=int64, limit=uint32),
        auth,
    ),
    st.tuples(
        st.just("SendGroup"),
        st.builds(
            common_pb2.SendGroupRequest,
            text=hostile_text,
            group_id=group_id,
            client_msg_id=client_msg_id,
        ),
        auth,
    ),
    st.tuples(
        st.just("History"),
        st.builds(
            route_pb2.HistoryRequest,
            # The seeded groups often, so that pages are read too (by members,
            # removed members and strangers), not only refused.
            conversation_id=st.one_of(st.sampled_from(["g:1", "g:2"]), group_id),
            before_position=st.one_of(st.integers(0, 20), uint64),
            limit=st.one_of(st.integers(0, 100), int32),
        ),
        auth,
    ),
)


async def run_groups_op(f: Fuzz, op: tuple[Any, ...]) -> None:
    name, request, mode = op
    COUNTS[f"Groups.{name}"] += 1
    stub = f.route() if name in ("SendGroup", "History") else f.groups()
    try:
        reply = await getattr(stub, name)(request, metadata=f.metadata(mode), timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        check_error(err, f"Groups.{name}({short(request)}) auth={mode[0]}")
        return
    if name == "ListMembers":
        assert len(reply.members) <= (request.limit or 100), short(request)
        ids = [m.user_id for m in reply.members]
        assert ids == sorted(ids) and all(i > request.after_user_id for i in ids)
    if name == "ListMyGroups":
        assert len(reply.groups) <= (request.limit or 50), short(request)
    if name == "History":
        check_history(request, reply)
        if not request.conversation_id.startswith("g:"):
            return  # "p:1:2" is among the ids: a private one, for its two users
        # A group's, answered only to a member, now or before (nobody leaves both lists).
        group = await f.c.embedded.store.read_group(request.conversation_id)
        reader = f.ids[mode[1]]
        assert group is not None and (reader in group.members or reader in group.left), (
            short(request),
            mode[1],
        )


@given(ops=st.lists(groups_op, min_size=10, max_size=25))
@fuzz_settings(examples=40)
async def test_groups_rpcs_survive_hostile_requests(fuzz: Fuzz, ops: list[Any]) -> None:
    await fuzz.seed_groups()
    await asyncio.gather(*(run_groups_op(fuzz, op) for op in ops))
    await check_group_histories(fuzz)
    await fuzz.assert_healthy()


async def check_group_histories(f: Fuzz) -> None:
    """After a batch, whatever it did to the seeded groups: each pool user
    reads each one's history as its record says: a member all of it, one it
    removed (or who left) up to their removal, anyone else nothing."""
    store = f.c.embedded.store
    for gid in ("g:1", "g:2"):
        group = await store.read_group(gid)
        assert group is not None, gid
        for name in POOL:
            reader = f.ids[name]
            request = route_pb2.HistoryRequest(conversation_id=gid, limit=100)
            what = f"Route.History({gid}) by {name}: {group}"
            try:
                reply = await f.route().History(
                    request, metadata=bearer(f.tokens[name]), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                assert reader not in group.members and reader not in group.left, what
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (what, err.details())
                COUNTS["pool checks: group history refused to a stranger"] += 1
                continue
            check_history(request, reply)
            if reader in group.members:
                COUNTS["pool checks: group history read by a member"] += 1
                continue
            assert reader in group.left, what
            removal = group.left[reader]
            assert reply.head_position == removal, what
            assert reply.messages and reply.messages[0].position == removal, what
            COUNTS["pool checks: group history read up to a removal"] += 1


# --- RouteInternal ----------------------------------------------------------------

secret_mode = st.sampled_from(["right", "right", "right", "right", "none", "wrong", "empty"])
server_id = st.one_of(st.just("server-1"), hostile_text)
submitted = st.builds(
    route_internal_pb2.SubmittedMessage,
    sender_id=int64,
    session_id=hostile_text,
    sender_name=hostile_text,
    private=st.one_of(st.none(), private_request),
)
submitted_group = st.builds(
    route_internal_pb2.SubmittedMessage,
    sender_id=int64,
    session_id=hostile_text,
    sender_name=hostile_text,
    group=group_request,
)
submitted_typing = st.builds(
    route_internal_pb2.SubmittedTyping,
    user_id=int64,
    session_id=hostile_text,
    user_name=hostile_text,
    conversation_id=conversation_id,
    stopped=st.booleans(),
)
batch_request = st.builds(
    route_internal_pb2.SubmitBatchRequest,
    server_id=server_id,
    messages=st.lists(st.one_of(submitted, submitted_group), max_size=8),
)
session_ref = st.builds(common_pb2.SessionRef, user_id=int64, session_id=hostile_text)
# A token for SessionConnected: garbage, or the pool's (possibly tampered).
token_choice = st.tuples(
    st.sampled_from(["garbage", "tampered", "truncated", "other-key"]),
    st.sampled_from(POOL),
    ascii_garbage,
)
internal_op = st.one_of(
    st.tuples(st.just("SubmitStream"), st.lists(batch_request, max_size=3), secret_mode),
    st.tuples(
        st.just("SessionConnected"),
        st.builds(
            route_internal_pb2.SessionConnectedRequest,
            server_id=server_id,
            user_id=int64,
            device_id=hostile_text,
            last_seq=uint64,
        ),
        secret_mode,
        token_choice,
    ),
    st.tuples(
        st.just("SessionDisconnected"),
        st.builds(
            route_internal_pb2.SessionDisconnectedRequest,
            server_id=server_id,
            user_id=int64,
            session_id=hostile_text,
            reason=hostile_text,
        ),
        secret_mode,
    ),
    st.tuples(
        st.just("RefreshSessions"),
        st.builds(
            route_internal_pb2.RefreshSessionsRequest,
            server_id=server_id,
            sessions=st.lists(session_ref, max_size=10),
            connections=int32,
        ),
        secret_mode,
    ),
    st.tuples(
        st.just("Replay"),
        st.builds(
            route_internal_pb2.ReplayRequest,
            server_id=server_id,
            user_id=int64,
            session_id=hostile_text,
            after_seq=seq_value,
            limit=int32,
        ),
        secret_mode,
    ),
    st.tuples(
        st.just("Typing"),
        st.builds(
            route_internal_pb2.TypingRequest,
            server_id=server_id,
            notes=st.lists(submitted_typing, max_size=10),
        ),
        secret_mode,
    ),
    st.tuples(
        st.just("MarkRead"),
        st.builds(
            route_internal_pb2.MarkReadBatchRequest,
            server_id=server_id,
            reads=st.lists(
                st.builds(
                    route_internal_pb2.SessionRead,
                    user_id=int64,
                    session_id=hostile_text,
                    conversation_id=conversation_id,
                    position=uint64,
                ),
                max_size=10,
            ),
        ),
        secret_mode,
    ),
    st.tuples(
        st.just("Ack"),
        st.builds(
            route_internal_pb2.AckRequest,
            server_id=server_id,
            acks=st.lists(
                st.builds(
                    route_internal_pb2.SessionAck,
                    user_id=int64,
                    session_id=hostile_text,
                    seq=seq_value,
                ),
                max_size=10,
            ),
        ),
        secret_mode,
    ),
)


def secret_metadata(f: Fuzz, mode: str) -> tuple[tuple[str, str], ...] | None:
    if mode == "right":
        return f.secret
    if mode == "wrong":
        return (("x-cim-cluster-secret", "not-the-secret"),)
    if mode == "empty":
        return (("x-cim-cluster-secret", ""),)
    return None


async def run_internal_op(f: Fuzz, op: tuple[Any, ...]) -> None:
    name, request, mode = op[0], op[1], op[2]
    metadata = secret_metadata(f, mode)
    stub = f.internal()
    COUNTS[f"RouteInternal.{name}"] += 1
    what = f"RouteInternal.{name}({short(request)}) secret={mode}"
    if name == "SessionConnected":
        token_mode = op[3]
        request.session_token = f.metadata(token_mode)[0][1].removeprefix("Bearer ")  # type: ignore[index]
    try:
        if name == "SubmitStream":
            call = stub.SubmitStream(iter(request), metadata=metadata, timeout=CALL_TIMEOUT)
            replies = [reply async for reply in call]
            assert mode == "right", f"{what}: accepted without the secret"
            assert len(replies) == len(request), what
            for batch, reply in zip(request, replies, strict=True):
                check_batch_reply(batch, reply, what)
            return
        reply = await getattr(stub, name)(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        streaming = name.endswith("Stream")
        check_error(err, what, streaming=streaming)
        if mode != "right" and not (streaming and client_write_race(err)):
            assert err.code() in refusals_without_the_secret(request, streaming), what
        return
    assert mode == "right", f"{what}: accepted without the secret"
    if name == "Replay":
        check_page(request.after_seq, request.limit, reply, what)
    if name == "Typing":
        assert len(reply.results) == len(request.notes), what
        for result in reply.results:
            if result.HasField("refused"):
                check_item_error(result.refused, what)


def check_batch_reply(
    request: route_internal_pb2.SubmitBatchRequest,
    reply: route_internal_pb2.SubmitBatchResponse,
    what: str,
) -> None:
    assert len(reply.results) == len(request.messages), what
    for result in reply.results:
        if result.WhichOneof("outcome") == "error":
            check_item_error(result.error, what)
        else:
            assert result.WhichOneof("outcome") == "ok", what


@given(ops=st.lists(internal_op, min_size=10, max_size=20))
@fuzz_settings(examples=20)
async def test_route_internal_survives_hostile_requests(fuzz: Fuzz, ops: list[Any]) -> None:
    await asyncio.gather(*(run_internal_op(fuzz, op) for op in ops))
    await fuzz.assert_healthy()


# --- Admin --------------------------------------------------------------------------

# How an admin call authenticates: mostly with the key, else as it must not.
ADMIN_AUTH_MODES = ("key", "key", "key", "none", "wrong", "unknown", "token", "secret", "garbage")
admin_auth = st.tuples(st.sampled_from(ADMIN_AUTH_MODES), ascii_garbage)
admin_name = st.one_of(st.sampled_from([*POOL, "carol", "erin", VICTIM, "nobody"]), hostile_text)


def naming_a_user(cls: Any, **fields: Any) -> Any:
    """Requests of ``cls`` naming a user by id, by name, or not at all."""
    return st.one_of(
        st.builds(cls, user_id=int64, **fields),
        st.builds(cls, user_name=admin_name, **fields),
        st.builds(cls, **fields),
    )


admin_op = st.tuples(
    st.one_of(
        st.tuples(st.just("GetUser"), naming_a_user(admin_pb2.GetUserRequest)),
        st.tuples(
            st.just("KickUser"),
            naming_a_user(
                admin_pb2.KickUserRequest,
                device_id=st.one_of(st.just(""), hostile_text),
                reason=hostile_text,
            ),
        ),
        st.tuples(
            st.just("DisableUser"),
            naming_a_user(admin_pb2.DisableUserRequest, reason=hostile_text),
        ),
        st.tuples(st.just("EnableUser"), naming_a_user(admin_pb2.EnableUserRequest)),
        st.tuples(
            st.just("SendNotice"),
            naming_a_user(
                admin_pb2.SendNoticeRequest, text=hostile_text, client_msg_id=client_msg_id
            ),
        ),
        st.tuples(
            st.just("BroadcastNotice"),
            st.builds(admin_pb2.BroadcastNoticeRequest, text=hostile_text),
        ),
    ),
    admin_auth,
)


def admin_metadata(f: Fuzz, mode: tuple[str, str]) -> tuple[tuple[str, str], ...] | None:
    kind, garbage = mode
    if kind == "key":
        return ((ADMIN_KEY, f"fuzz:{ADMIN_KEYS['fuzz']}"),)
    if kind == "wrong":
        return ((ADMIN_KEY, f"fuzz:{garbage}"),)
    if kind == "unknown":
        return ((ADMIN_KEY, f"{garbage}:{ADMIN_KEYS['fuzz']}"),)
    if kind == "token":
        return bearer(f.carol_token)
    if kind == "secret":
        return f.secret
    if kind == "garbage":
        return ((ADMIN_KEY, garbage),)
    return None


def spare_bystanders(f: Fuzz, name: str, request: Any) -> None:
    """Kicks and disables go to the victim only: the pool, carol and erin
    carry the checks after every batch."""
    if name not in ("KickUser", "DisableUser"):
        return
    kept = {f.ids[user] for user in (*POOL, "carol", "erin")}
    which = request.WhichOneof("user")
    if (which == "user_id" and request.user_id in kept) or (
        which == "user_name" and request.user_name in (*POOL, "carol", "erin")
    ):
        request.user_name = VICTIM


async def run_admin_op(f: Fuzz, op: tuple[Any, ...]) -> None:
    (name, request), mode = op
    spare_bystanders(f, name, request)
    COUNTS[f"Admin.{name}"] += 1
    what = f"Admin.{name}({short(request)}) auth={mode[0]}"
    metadata = admin_metadata(f, mode)
    # Garbage may spell the real key by chance.
    keyed = metadata == admin_metadata(f, ("key", ""))
    try:
        reply = await getattr(f.admin(), name)(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        check_error(err, what)
        if not keyed:
            refused = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
            if over_a_limit(request):
                refused |= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert err.code() in refused, what
        return
    assert keyed, f"{what}: accepted without the admin key"
    if name == "GetUser":
        assert reply.account.user_id > 0 and len(reply.sessions) <= 1, what
    COUNTS[f"Admin.{name} accepted"] += 1


@given(ops=st.lists(admin_op, min_size=10, max_size=25))
@fuzz_settings(examples=30)
async def test_admin_rpcs_survive_hostile_requests(fuzz: Fuzz, ops: list[Any]) -> None:
    await asyncio.gather(*(run_admin_op(fuzz, op) for op in ops))
    await fuzz.assert_healthy()


# --- ChatInternal.DeliverStream / Presence -----------------------------------------

# One huge field per message at most (several would only test gRPC's 4 MB limit).
chat_message = st.builds(
    common_pb2.ChatMessage,
    message_id=_small,
    sender_id=int64,
    sender_name=_small,
    receiver_id=int64,
    group_id=_small,
    kind=st.sampled_from([0, 1, 2, 3, -1, 2**31 - 1]),
    text=hostile_text,
    server_time_ms=int64,
    trace_id=_small,
    seq=uint64,
    client_msg_id=_small,
    stored=st.booleans(),
)
deliver_request = st.builds(
    chat_internal_pb2.DeliverRequest,
    deliveries=st.lists(
        st.builds(chat_internal_pb2.Delivery, receiver_id=int64, message=chat_message), max_size=6
    ),
    kicks=st.lists(
        st.builds(
            chat_internal_pb2.Kick,
            user_id=int64,
            session_id=hostile_text,
            reason=hostile_text,
        ),
        max_size=4,
    ),
    typings=st.lists(
        st.builds(
            chat_internal_pb2.TypingNote,
            receiver_ids=st.lists(int64, max_size=6),
            typing=st.builds(
                chat_pb2.Typing,
                conversation_id=conversation_id,
                user_id=int64,
                user_name=hostile_text,
                stopped=st.booleans(),
            ),
        ),
        max_size=4,
    ),
    reads=st.lists(
        st.builds(
            chat_internal_pb2.ReadNote,
            receiver_id=int64,
            receipt=st.builds(
                chat_pb2.ReadReceipt, conversation_id=_small, user_id=int64, position=uint64
            ),
        ),
        max_size=4,
    ),
)
chat_op = st.one_of(
    st.tuples(st.just("DeliverStream"), st.lists(deliver_request, max_size=3), secret_mode),
    st.tuples(
        st.just("Presence"),
        st.builds(chat_internal_pb2.PresenceRequest, sessions=st.lists(session_ref, max_size=10)),
        secret_mode,
    ),
)


def _spare(items: Any, aimed: Callable[[Any], bool]) -> None:
    kept = [item for item in items if not aimed(item)]
    del items[:]
    items.extend(kept)


async def run_chat_op(f: Fuzz, op: tuple[Any, ...]) -> None:
    name, request, mode = op
    metadata = secret_metadata(f, mode)
    stub = f.chat_internal()
    # Pushes and kicks never aim at erin, whose stream checks health: a forged
    # push with the seq of erin's next real message makes the chat server drop
    # the real one as a repeat (routes are trusted with seqs; the cluster
    # secret is what keeps everyone else out).
    for deliver in request if name == "DeliverStream" else ():
        _spare(deliver.deliveries, lambda d: d.receiver_id == f.erin_id)
        _spare(deliver.kicks, lambda k: k.user_id == f.erin_id)
        _spare(deliver.reads, lambda r: r.receiver_id == f.erin_id)
    COUNTS[f"ChatInternal.{name}"] += 1
    what = f"ChatInternal.{name}({short(request)}) secret={mode}"
    try:
        if name == "DeliverStream":
            call = stub.DeliverStream(iter(request), metadata=metadata, timeout=CALL_TIMEOUT)
            replies = [reply async for reply in call]
            assert mode == "right", f"{what}: accepted without the secret"
            assert [len(r.delivered) for r in replies] == [len(q.deliveries) for q in request], what
            return
        reply = await getattr(stub, name)(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        streaming = name.endswith("Stream")
        check_error(err, what, streaming=streaming)
        if mode != "right" and not (streaming and client_write_race(err)):
            assert err.code() in refusals_without_the_secret(request, streaming), what
        return
    assert mode == "right", f"{what}: accepted without the secret"
    if name == "Deliver":
        assert len(reply.delivered) == len(request.deliveries), what
    if name == "Presence":
        assert len(reply.live) == len(request.sessions), what


@given(ops=st.lists(chat_op, min_size=10, max_size=15))
@fuzz_settings(examples=25)
async def test_chat_internal_rpcs_survive_hostile_requests(fuzz: Fuzz, ops: list[Any]) -> None:
    await asyncio.gather(*(run_chat_op(fuzz, op) for op in ops))
    await fuzz.assert_healthy()


# --- Chat.Connect -----------------------------------------------------------------

send_frame = st.builds(
    chat_pb2.SendFrame,
    correlation_id=uint64,
    private=st.one_of(st.none(), private_request),
) | st.builds(chat_pb2.SendFrame, correlation_id=uint64, group=group_request)
typing_frame = st.builds(
    chat_pb2.ClientFrame,
    typing=st.builds(
        chat_pb2.TypingFrame,
        conversation_id=st.one_of(conversation_id, hostile_text),
        stopped=st.booleans(),
    ),
)
login_frame = st.builds(
    chat_pb2.LoginFrame,
    user_id=int64,
    session_token=st.one_of(st.just(""), ascii_garbage, hostile_text),
    device_id=hostile_text,
    last_seq=seq_value,
)
client_frame = st.one_of(
    st.builds(chat_pb2.ClientFrame, login=login_frame),
    st.builds(chat_pb2.ClientFrame, ping=st.builds(chat_pb2.Ping, client_time_ms=int64)),
    st.builds(chat_pb2.ClientFrame, send=send_frame),
    st.builds(chat_pb2.ClientFrame, send=send_frame),
    st.builds(
        chat_pb2.ClientFrame,
        ack=st.builds(chat_pb2.AckFrame, seq=seq_value, device_id=hostile_text),
    ),
    st.builds(chat_pb2.ClientFrame, sync=st.builds(chat_pb2.SyncFrame, after_seq=seq_value)),
    st.builds(
        chat_pb2.ClientFrame,
        read=st.builds(chat_pb2.ReadFrame, conversation_id=conversation_id, position=uint64),
    ),
    st.just(chat_pb2.ClientFrame()),
    typing_frame,
    typing_frame,
)
# First frame: a real login of a pool user (fresh from Route.Login), a login
# with a mismatched id or tampered token, or any frame at all.
opening = st.sampled_from(["real", "real", "real", "wrong-id", "tampered", "random", "none"])
stream_plan = st.tuples(
    opening,
    st.sampled_from(POOL),
    client_frame,
    st.lists(client_frame, max_size=12),
    seq_value,  # last_seq of a real login
)


async def run_stream(f: Fuzz, plan: tuple[Any, ...]) -> None:
    opening_kind, user, random_first, frames, last_seq = plan
    COUNTS["Chat.Connect"] += 1
    COUNTS["Chat.Connect frames"] += len(frames) + (opening_kind != "none")
    first: chat_pb2.ClientFrame | None = random_first
    if opening_kind in ("real", "wrong-id", "tampered"):
        try:
            token = await f.login(user)
        except grpc.aio.AioRpcError as err:  # the user's last stream is still being replaced
            check_error(err, f"Route.Login({user})")
            token = f.tokens[user]
        if opening_kind == "tampered":
            token = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        user_id = f.ids[user] + (1 if opening_kind == "wrong-id" else 0)
        first = chat_pb2.ClientFrame(
            login=chat_pb2.LoginFrame(user_id=user_id, session_token=token, last_seq=last_seq)
        )
    elif opening_kind == "none":
        first = None
    what = f"Chat.Connect(first={short(first)}, then={short(frames)})"
    call = f.chat().Connect(timeout=CALL_TIMEOUT)
    received: list[chat_pb2.ServerFrame] = []

    async def read_all() -> None:
        while (frame := await call.read()) is not grpc.aio.EOF:
            received.append(frame)

    reader = asyncio.create_task(read_all())
    try:
        for frame in [first, *frames]:
            if frame is None:
                continue
            if call.done():
                break
            try:
                await call.write(frame)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                break  # the server ended the stream (after a notice)
        if not call.done():
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.done_writing()
        try:
            await asyncio.wait_for(reader, CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            check_error(err, what, streaming=True)
    finally:
        reader.cancel()
        call.cancel()
    code = await call.code()
    if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) and (
        code != grpc.StatusCode.INTERNAL or "execute_batch" not in await call.debug_error_string()
    ):
        assert code in EXPECTED, f"{what} -> {code.name}: {await call.details()!r}"
    for frame in received:
        kind = frame.WhichOneof("frame")
        if kind == "notice":
            assert frame.notice.text, f"{what} -> notice without text"
        if kind == "notice" and frame.notice.kind in (chat_pb2.Notice.KIND_ERROR, REFUSED):
            assert frame.notice.code in EXPECTED_NUMBERS, f"{what} -> notice {frame.notice}"
        if kind == "typing":  # another pool user's note (this stream's own never comes back)
            assert frame.typing.user_id in f.ids.values(), f"{what} -> {frame.typing}"
        if kind == "send_result" and frame.send_result.WhichOneof("outcome") == "error":
            check_item_error(frame.send_result.error, what)
    if opening_kind == "real":
        assert received and received[0].WhichOneof("frame") in ("login_ok", "notice"), what
        if received[0].WhichOneof("frame") == "login_ok":
            check_login_replay(received[1:], last_seq, what)


def check_login_replay(frames: list[chat_pb2.ServerFrame], last_seq: int, what: str) -> None:
    """What follows login_ok up to the first ReplayDone: the stored messages
    after the client's last_seq, in order, then (if retention dropped some) a
    KIND_BEHIND notice. Live messages wait until after the ReplayDone."""
    seqs: list[int] = []
    for index, frame in enumerate(frames):
        kind = frame.WhichOneof("frame")
        if kind == "message":
            assert frame.message.stored, f"{what} -> a live message during the replay"
            seqs.append(frame.message.seq)
        elif kind == "replay_done":
            done = frame.replay_done
            assert seqs == sorted(set(seqs)), f"{what} -> replayed seqs out of order: {seqs}"
            assert all(last_seq < seq <= done.through_seq for seq in seqs), (what, seqs, done)
            assert done.through_seq == done.head_seq, (what, done)
            assert done.dropped_through_seq <= done.head_seq, (what, done)
            if done.dropped_through_seq:
                before = frames[index - 1] if index else None
                assert before is not None and before.notice.kind == BEHIND, (what, done)
            COUNTS["Chat.Connect replays checked"] += 1
            return


@given(plans=st.lists(stream_plan, min_size=4, max_size=10))
@fuzz_settings(examples=30)
async def test_chat_stream_survives_random_frames(fuzz: Fuzz, plans: list[Any]) -> None:
    # Streams of different users at once; one user's streams one after another
    # (a second login of a user with a live stream is refused by design).
    by_user: dict[str, list[Any]] = collections.defaultdict(list)
    for plan in plans:
        by_user[plan[1]].append(plan)

    async def one_user(user_plans: list[Any]) -> None:
        for plan in user_plans:
            await run_stream(fuzz, plan)

    await asyncio.gather(*(one_user(p) for p in by_user.values()))
    await fuzz.assert_healthy()


# --- beyond gRPC's 4 MB message limit -----------------------------------------------


async def test_oversize_messages_are_refused_by_grpc(fuzz: Fuzz) -> None:
    huge = "x" * (5 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fuzz.route().Register(
            route_pb2.RegisterRequest(user_name=huge, password="pw"), timeout=CALL_TIMEOUT
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fuzz.route().SendPrivate(
            common_pb2.SendPrivateRequest(receiver_id=fuzz.erin_id, text=huge),
            metadata=bearer(fuzz.carol_token),
            timeout=CALL_TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    call = fuzz.chat().Connect(timeout=CALL_TIMEOUT)
    token = await fuzz.login("ghost")
    await call.write(
        chat_pb2.ClientFrame(
            login=chat_pb2.LoginFrame(user_id=fuzz.ids["ghost"], session_token=token)
        )
    )
    first = await asyncio.wait_for(call.read(), 5)
    assert first.WhichOneof("frame") == "login_ok", first
    with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
        await call.write(
            chat_pb2.ClientFrame(
                send=chat_pb2.SendFrame(
                    private=common_pb2.SendPrivateRequest(receiver_id=1, text=huge)
                )
            )
        )
        async with asyncio.timeout(CALL_TIMEOUT):
            while await call.read() is not grpc.aio.EOF:
                pass
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, await call.details()
    await fuzz.assert_healthy()


@pytest.mark.parametrize("messages", [1, 3, 8])
async def test_refused_stream_reports_its_status(fuzz: Fuzz, messages: int) -> None:
    """A streaming RPC refused for a missing cluster secret must end with
    PERMISSION_DENIED however many requests the peer has in flight. cim's
    refuse_stream reads only the first request before ending the call, so a
    peer still writing gets INTERNAL (grpc.aio loses the status, #36066)."""
    codes = collections.Counter()
    for _ in range(10):
        for call in (
            fuzz.internal().SubmitStream(
                iter([route_internal_pb2.SubmitBatchRequest()] * messages), timeout=CALL_TIMEOUT
            ),
            fuzz.chat_internal().DeliverStream(
                iter([chat_internal_pb2.DeliverRequest()] * messages), timeout=CALL_TIMEOUT
            ),
        ):
            try:
                async for _reply in call:
                    pass
            except grpc.aio.AioRpcError as err:
                codes[err.code().name] += 1
            else:
                codes["OK"] += 1
    assert codes == {"PERMISSION_DENIED": 20}, codes


# --- raw bytes to every method of every service -------------------------------------

# Every service each process serves, as the apps list them: a new one is in.
RAW_SERVICES = [
    *(("route", service) for service in ROUTE_SERVICES),
    *(("server", service) for service in SERVER_SERVICES),
]
RAW_METHODS = [(where, method) for where, service in RAW_SERVICES for method in service.methods]


@st.composite
def mangled(draw: Any) -> bytes:
    """Random bytes, or a well-formed request's bytes with some bytes changed,
    cut short or garbage appended: what a buggy or hostile peer sends."""
    if draw(st.booleans()):
        return bytes(draw(st.binary(max_size=96)))
    base = common_pb2.SendPrivateRequest(
        receiver_id=draw(int64), text=draw(_small), client_msg_id=draw(_small)
    ).SerializeToString()
    data = bytearray(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if data:
            data[draw(st.integers(min_value=0, max_value=len(data) - 1))] = draw(
                st.integers(min_value=0, max_value=255)
            )
    if draw(st.booleans()):
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    return bytes(data) + bytes(draw(st.binary(max_size=8)))


raw_op = st.tuples(st.sampled_from(RAW_METHODS), mangled(), secret_mode)


async def run_raw_op(f: Fuzz, op: tuple[Any, ...]) -> None:
    (where, method), payload, mode = op
    path = f"/{method.containing_service.full_name}/{method.name}"
    address = f.c.route_address if where == "route" else f.server_address
    channel = f.channel(address)
    metadata = secret_metadata(f, mode)
    COUNTS[f"raw bytes to {method.containing_service.name}.{method.name}"] += 1
    what = f"{path}({payload!r}) secret={mode}"
    try:
        if method.client_streaming:
            call = channel.stream_stream(path)(
                iter([payload]), metadata=metadata, timeout=CALL_TIMEOUT
            )
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path)(payload, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        # Bytes that decode are an ordinary (hostile) request: any expected status.
        check_error(err, what, streaming=method.client_streaming)


@given(ops=st.lists(raw_op, min_size=10, max_size=25))
@fuzz_settings(examples=25)
async def test_every_method_survives_raw_bytes(fuzz: Fuzz, ops: list[Any]) -> None:
    """Not decodable: INVALID_ARGUMENT, never UNKNOWN or INTERNAL, and no
    traceback logged (the fixture fails the test on any error log)."""
    await asyncio.gather(*(run_raw_op(fuzz, op) for op in ops))
    await fuzz.assert_healthy()


def test_zz_report_counts() -> None:
    """Prints how many requests each surface got (run with -s to see it)."""
    print("\nfuzz requests per surface:", dict(sorted(COUNTS.items())))
