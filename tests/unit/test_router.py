"""The message router's pieces without a network: the record each private
send is carried in, the settling of claims and the group parcels (pure), and
the router itself on an in-memory store with a fake chat-server directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from cim.core.ids import message_time_ms
from cim.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import common_pb2
from cim.route.messages import (
    DELIVERED,
    STORED,
    MessageRouter,
    PrivateSend,
    group_parcels,
    send_digest,
    settle_claims,
    settle_pointed,
)
from cim.route.servers import Parcel
from cim.route.service import submit_result
from cim.store.base import (
    Appended,
    ConversationAppended,
    ConversationItem,
    InboxItem,
    OwnSend,
    PointedAppended,
    PointerItem,
    Retention,
    SendClaim,
    SendKey,
    SessionRecord,
)
from cim.store.memory import MemoryStore
from cim.testing import fast_route_config

MESSAGE_ID = "01J0000000AAAAAAAAAAAAA"
EARLIER_ID = "01J0000001BBBBBBBBBBBBB"


def _send(receiver_id: int = 2, client_msg_id: str = "c-1") -> PrivateSend:
    request = common_pb2.SendPrivateRequest(
        receiver_id=receiver_id, text="hi", client_msg_id=client_msg_id
    )
    send = PrivateSend(1, "alice", request)
    send.message.CopyFrom(
        common_pb2.ChatMessage(
            message_id=MESSAGE_ID,
            sender_id=1,
            sender_name="alice",
            receiver_id=receiver_id,
            kind=common_pb2.MESSAGE_KIND_PRIVATE,
            text="hi",
            server_time_ms=message_time_ms(MESSAGE_ID),
            client_msg_id=client_msg_id,
            conversation_id=f"p:1:{receiver_id}",
        )
    )
    return send


def _online(user_id: int, server_id: str = "server-a") -> SessionRecord:
    return SessionRecord(user_id, f"s{user_id}", server_id, connected=True)


# --- the record ----------------------------------------------------------------


def test_a_send_is_in_flight_until_it_has_an_outcome() -> None:
    send = _send()
    assert send.in_flight
    with pytest.raises(RuntimeError, match="unsettled"):
        _ = send.result
    error = NotFound("no user with id 2")
    send.fail(error)
    assert not send.in_flight
    assert send.result is error
    assert send.to_remember is None


def test_an_appended_send_takes_its_seq_and_session_and_is_pushed_to_that_server() -> None:
    send = _send()
    send.appended(Appended(seq=7, session=_online(2, "server-b")))
    assert send.message.seq == 7
    server_id, parcel = send.parcel() or ("", [])
    assert server_id == "server-b"
    assert [(d.receiver_id, d.message.seq, d.message.text) for d in parcel] == [(2, 7, "hi")]


@pytest.mark.parametrize(
    "session", [None, SessionRecord(2, "s2", "server-a", connected=False)], ids=["none", "login"]
)
def test_a_send_to_a_receiver_without_a_stream_has_no_push(session: SessionRecord | None) -> None:
    send = _send()
    send.appended(Appended(seq=1, session=session))
    assert send.parcel() is None


@pytest.mark.parametrize(
    ("delivered", "status", "recipients"), [(True, DELIVERED, 1), (False, STORED, 0)]
)
def test_the_answer_says_whether_the_push_reached_the_stream(
    delivered: bool, status: int, recipients: int
) -> None:
    send = _send()
    send.answer(delivered=delivered)
    assert send.result == common_pb2.SendResponse(
        message_id=MESSAGE_ID,
        status=status,
        recipients=recipients,
        server_time_ms=message_time_ms(MESSAGE_ID),
    )
    assert send.to_remember == send.result


def test_only_sends_with_a_client_msg_id_are_remembered() -> None:
    send = _send(client_msg_id="")
    send.answer(delivered=True)
    assert send.to_remember is None


def test_a_retry_of_a_finished_send_answers_the_earlier_result_and_is_not_remembered() -> None:
    earlier = common_pb2.SendResponse(message_id=EARLIER_ID, status=STORED)
    send = _send()
    send.answer_as_before(earlier.SerializeToString())
    assert send.result == earlier
    assert send.to_remember is None


def test_a_retry_of_an_unfinished_send_reuses_the_earlier_id_and_its_time() -> None:
    send = _send()
    send.reuse(EARLIER_ID)
    assert send.message.message_id == EARLIER_ID
    assert send.message.server_time_ms == message_time_ms(EARLIER_ID)
    assert send.inbox_item(claim=False).message_id == EARLIER_ID


def test_the_pointed_item_claims_the_send_only_when_asked_and_only_with_an_id() -> None:
    send = _send()
    item = send.pointed_item(claim=True)
    claiming = item.conversation
    assert item.receiver_id == 2
    assert (claiming.conversation_id, claiming.message_id) == ("p:1:2", MESSAGE_ID)
    assert claiming.send == SendKey(2, 1, "c-1", send.digest, conversation="p:1:2")
    assert common_pb2.ChatMessage.FromString(claiming.payload) == send.message
    assert send.pointed_item(claim=False).conversation.send is None
    assert _send(client_msg_id="").pointed_item(claim=True).conversation.send is None
    # Where the code before conversations claimed it: the receiver's keys.
    assert send.legacy_key == SendKey(2, 1, "c-1", send.digest)


def test_a_pointed_send_takes_its_position_seq_and_session() -> None:
    send = _send()
    session = SessionRecord(2, "s2", "server-a", connected=True)
    send.pointed(PointedAppended(ConversationAppended(5), Appended(seq=9, session=session)))
    assert (send.message.position, send.message.seq, send.session) == (5, 9, session)
    with pytest.raises(RuntimeError):
        _send().pointed(PointedAppended(ConversationAppended(0), None))


def test_settle_pointed_sorts_first_attempts_and_retries() -> None:
    first, reused, unfinished = _send(), _send(), _send()
    again = settle_pointed(
        [first, reused, unfinished],
        [
            PointedAppended(ConversationAppended(4), Appended(seq=7, session=None)),
            PointedAppended(
                ConversationAppended(0, SendClaim(EARLIER_ID, None, b"another digest")), None
            ),
            PointedAppended(ConversationAppended(0, SendClaim(EARLIER_ID, None)), None),
        ],
    )
    assert again == [unfinished]
    assert first.in_flight and (first.message.position, first.message.seq) == (4, 7)
    assert isinstance(reused.result, FailedPrecondition)
    assert unfinished.message.message_id == EARLIER_ID


def test_settle_claims_sorts_first_attempts_finished_and_unfinished_retries() -> None:
    first, finished, unfinished = _send(), _send(), _send()
    remembered = common_pb2.SendResponse(message_id=EARLIER_ID, status=DELIVERED, recipients=1)
    again = settle_claims(
        [first, finished, unfinished],
        [
            Appended(seq=3, session=None),
            Appended(0, None, SendClaim(EARLIER_ID, remembered.SerializeToString())),
            Appended(0, None, SendClaim(EARLIER_ID, None)),
        ],
    )
    assert again == [unfinished]
    assert first.in_flight and first.message.seq == 3
    assert finished.result == remembered
    assert unfinished.in_flight and unfinished.message.message_id == EARLIER_ID


def test_group_parcels_go_one_per_server_with_each_receivers_seq() -> None:
    message = common_pb2.ChatMessage(message_id=MESSAGE_ID, text="all")
    parcels = group_parcels(
        message,
        [2, 3, 4, 5],
        [
            Appended(10, _online(2, "a")),
            Appended(20, _online(3, "b")),
            Appended(30, None),
            Appended(40, _online(5, "a")),
        ],
    )
    assert [(server, [(d.receiver_id, d.message.seq) for d in p]) for server, p in parcels] == [
        ("a", [(2, 10), (5, 40)]),
        ("b", [(3, 20)]),
    ]
    assert message.seq == 0  # each receiver got a copy


def test_the_edge_turns_outcomes_into_submit_results() -> None:
    ok = common_pb2.SendResponse(message_id=MESSAGE_ID, status=STORED)
    assert submit_result(ok) == route_internal_pb2.SubmitResult(ok=ok)
    refused = submit_result(NotFound("no user with id 9"))
    assert refused.WhichOneof("outcome") == "error"
    assert (refused.error.code, refused.error.message) == (5, "no user with id 9")


# --- the router on a memory store ----------------------------------------------


class FakeServers:
    """The chat servers: records each push and reaches the streams of ``live``."""

    def __init__(self) -> None:
        self.pushes: list[list[tuple[str, Parcel]]] = []
        self.live: set[int] = set()

    async def deliver_many(self, requests: Sequence[tuple[str, Parcel]]) -> list[list[bool]]:
        self.pushes.append(list(requests))
        return [[d.receiver_id in self.live for d in parcel] for _, parcel in requests]


class CountingStore(MemoryStore):
    """Counts the send path's store calls (each one round trip on Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[list[InboxItem]] = []
        self.conversation_appends: list[list[ConversationItem]] = []
        self.pointer_appends: list[list[PointerItem]] = []
        self.sends_read: list[list[SendKey]] = []
        self.fail_appends = False

    def _maybe_fail(self) -> None:
        if self.fail_appends:
            raise Unavailable("store unavailable: test")

    async def append_inbox(
        self, items: Sequence[InboxItem], retention: Retention
    ) -> list[Appended]:
        self.appends.append(list(items))
        self._maybe_fail()
        return await super().append_inbox(items, retention)

    async def append_conversations(
        self, items: Sequence[ConversationItem], retention: Retention
    ) -> list[ConversationAppended]:
        self.conversation_appends.append(list(items))
        self._maybe_fail()
        return await super().append_conversations(items, retention)

    async def append_pointers(
        self, items: Sequence[PointerItem], retention: Retention, senders: Sequence[OwnSend] = ()
    ) -> list[Appended]:
        self.pointer_appends.append(list(items))
        self._maybe_fail()
        return await super().append_pointers(items, retention, senders)

    async def read_sends(self, sends: Sequence[SendKey]) -> list[SendClaim | None]:
        self.sends_read.append(list(sends))
        return await super().read_sends(sends)


class Setup:
    def __init__(self) -> None:
        self.store = CountingStore()
        self.servers = FakeServers()
        self.router = MessageRouter(fast_route_config(), self.store, self.servers)

    async def user(self, name: str, *, online: bool = False) -> int:
        account, _ = await self.store.create_account(name, "hash")
        if online:
            record = SessionRecord(account.user_id, f"s-{name}", "server-a")
            await self.store.claim_session(record, ttl=30)
            await self.store.mark_connected(account.user_id, record.session_id, "server-a", 30)
            self.servers.live.add(account.user_id)
        return account.user_id

    async def inbox(self, user_id: int) -> list[common_pb2.ChatMessage]:
        messages, _ = await self.router.read_inbox(user_id, 0, 100)
        return messages


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    made = Setup()
    yield made
    await made.router.aclose()


def _batch(*requests: common_pb2.SendPrivateRequest) -> list[route_internal_pb2.SubmittedMessage]:
    return [
        route_internal_pb2.SubmittedMessage(sender_id=1, sender_name="alice", private=request)
        for request in requests
    ]


def _to(
    receiver_id: int, text: str = "hi", client_msg_id: str = ""
) -> common_pb2.SendPrivateRequest:
    return common_pb2.SendPrivateRequest(
        receiver_id=receiver_id, text=text, client_msg_id=client_msg_id
    )


async def test_a_batch_costs_two_store_calls_and_one_push_and_answers_in_order(
    setup: Setup,
) -> None:
    await setup.user("alice")
    bob = await setup.user("bob", online=True)
    carol = await setup.user("carol")
    outcomes = await setup.router.submit_batch(
        _batch(_to(bob, "one"), _to(bob, " "), _to(999), _to(carol), _to(bob))
    )
    # The conversations, then the receivers' sequences: two round trips on Redis.
    (logged,) = setup.store.conversation_appends
    assert [item.conversation_id for item in logged] == ["p:1:2", "p:1:3", "p:1:2"]
    (pointed,) = setup.store.pointer_appends
    assert [(p.user_id, p.position) for p in pointed] == [(bob, 1), (carol, 1), (bob, 2)]
    assert setup.store.appends == []  # no full copies
    # One push, one parcel for bob's chat server with both of his messages.
    assert [[len(parcel) for _, parcel in push] for push in setup.servers.pushes] == [[2]]
    first, blank, unknown, offline, second = outcomes
    assert isinstance(first, common_pb2.SendResponse) and first.status == DELIVERED
    assert isinstance(blank, InvalidArgument)
    assert isinstance(unknown, NotFound)
    assert isinstance(offline, common_pb2.SendResponse) and offline.status == STORED
    assert isinstance(second, common_pb2.SendResponse) and second.status == DELIVERED
    assert [
        (m.text, m.seq, m.sender_id, m.conversation_id, m.position) for m in await setup.inbox(bob)
    ] == [("one", 1, 1, "p:1:2", 1), ("hi", 2, 1, "p:1:2", 2)]


async def test_a_retry_after_the_result_is_remembered_gets_it_without_a_second_message(
    setup: Setup,
) -> None:
    await setup.user("alice")
    bob = await setup.user("bob", online=True)
    first = await setup.router.send_private(1, "alice", _to(bob, client_msg_id="r-1"))
    await setup.router.aclose()  # the result is remembered
    again = await setup.router.send_private(1, "alice", _to(bob, client_msg_id="r-1"))
    assert again == first
    assert len(setup.servers.pushes) == 2 and setup.servers.pushes[1] == []  # nothing pushed
    assert len(await setup.inbox(bob)) == 1


async def test_a_retry_of_an_unfinished_send_is_appended_again_under_its_first_id(
    setup: Setup,
) -> None:
    await setup.user("alice")
    bob = await setup.user("bob", online=True)
    # What a route that crashed mid-send left: the claim, the conversation
    # append and the pointer, no result.
    digest = send_digest(f"private:{bob}", "hi")
    key = SendKey(bob, 1, "u-1", digest, conversation="p:1:2")
    crashed = common_pb2.ChatMessage(
        message_id=EARLIER_ID, receiver_id=bob, text="hi", conversation_id="p:1:2"
    )
    await setup.store.append_conversations(
        [ConversationItem("p:1:2", EARLIER_ID, crashed.SerializeToString(), key)], Retention()
    )
    await setup.store.append_pointers([PointerItem(bob, "p:1:2", 1, EARLIER_ID)], Retention())
    reply = await setup.router.send_private(1, "alice", _to(bob, client_msg_id="u-1"))
    assert reply.message_id == EARLIER_ID
    assert reply.server_time_ms == message_time_ms(EARLIER_ID)
    claim, again = setup.store.conversation_appends[1:]
    assert claim[0].send == key and again[0].send is None
    assert again[0].message_id == EARLIER_ID
    assert [(m.message_id, m.seq, m.position) for m in await setup.inbox(bob)] == [
        (EARLIER_ID, 1, 1)
    ]
    ((_, parcel),) = setup.servers.pushes[0]
    assert parcel[0].message.seq == 1  # the same seq: the chat server drops it as a duplicate


async def test_a_retry_of_a_send_the_code_before_conversations_left_is_not_delivered_twice(
    setup: Setup,
) -> None:
    await setup.user("alice")
    bob = await setup.user("bob")
    # The older code's crashed send: its claim under bob's keys, a full copy in his inbox.
    digest = send_digest(f"private:{bob}", "hi")
    legacy = SendKey(bob, 1, "old-1", digest)
    await setup.store.claim_sends([(legacy, EARLIER_ID)], 600)
    crashed = common_pb2.ChatMessage(
        message_id=EARLIER_ID, sender_id=1, receiver_id=bob, text="hi", kind=1
    )
    await setup.store.append_inbox(
        [InboxItem(bob, EARLIER_ID, crashed.SerializeToString(), legacy)], Retention()
    )
    reply = await setup.router.send_private(1, "alice", _to(bob, client_msg_id="old-1"))
    assert reply.message_id == EARLIER_ID
    # The pointer found the old copy by message id: one entry, its seq.
    assert [(m.message_id, m.seq, m.conversation_id) for m in await setup.inbox(bob)] == [
        (EARLIER_ID, 1, "p:1:2")
    ]
    # A finished older send answers with its result; another text is refused.
    done = common_pb2.SendResponse(message_id=EARLIER_ID, status=STORED)
    await setup.store.finish_sends([(legacy, done.SerializeToString())], 600)
    assert await setup.router.send_private(1, "alice", _to(bob, client_msg_id="old-1")) == done
    with pytest.raises(FailedPrecondition):
        await setup.router.send_private(1, "alice", _to(bob, "other", client_msg_id="old-1"))


async def test_sends_look_for_older_claims_only_on_a_store_served_before(setup: Setup) -> None:
    await setup.user("alice")
    bob = await setup.user("bob")
    await setup.router.send_private(1, "alice", _to(bob, client_msg_id="c-1"))
    assert len(setup.store.sends_read) == 1  # accounts before the mark: the window


async def test_a_router_started_on_a_store_without_accounts_never_looks_for_older_claims() -> None:
    made = Setup()
    await made.router.start()
    await made.user("alice")
    bob = await made.user("bob")
    await made.router.send_private(1, "alice", _to(bob, client_msg_id="c-1"))
    await made.router.submit_batch(_batch(_to(bob, client_msg_id="c-2")))
    await made.router.aclose()
    assert made.store.sends_read == []
    assert [m.client_msg_id for m in await made.inbox(bob)] == ["c-1", "c-2"]


async def test_a_store_failure_fails_every_send_that_reached_the_store(setup: Setup) -> None:
    await setup.user("alice")
    bob = await setup.user("bob")
    setup.store.fail_appends = True
    blank, sent, other = await setup.router.submit_batch(
        _batch(_to(bob, " "), _to(bob), _to(bob, "more"))
    )
    assert isinstance(blank, InvalidArgument)
    assert isinstance(sent, Unavailable) and other is sent
    assert setup.servers.pushes == []
    with pytest.raises(Unavailable):
        await setup.router.send_private(1, "alice", _to(bob))


async def test_submit_batch_keeps_the_order_of_privates_and_groups(setup: Setup) -> None:
    alice = await setup.user("alice")
    bob = await setup.user("bob", online=True)
    group = route_internal_pb2.SubmittedMessage(
        sender_id=alice, sender_name="alice", group=common_pb2.SendGroupRequest(text="g")
    )
    no_target = route_internal_pb2.SubmittedMessage(sender_id=alice, sender_name="alice")
    outcomes = await setup.router.submit_batch(
        [*_batch(_to(bob, "a"), _to(bob, "b")), group, no_target, *_batch(_to(bob, "c"))]
    )
    assert [type(o).__name__ for o in outcomes] == [
        "SendResponse",
        "SendResponse",
        "SendResponse",
        "InvalidArgument",
        "SendResponse",
    ]
    assert [m.text for m in await setup.inbox(bob)] == ["a", "b", "g", "c"]
