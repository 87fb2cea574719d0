"""Routing of messages: private sends into their conversations and each
receiver's sequence, broadcasts into each online receiver's inbox, live
pushes, and the inbox reads and acks behind replay.

A private message is a conversation message (docs/design/conversations.md):
its body is appended once to the conversation's log, where it gets its
position, then a pointer to it to the receiver's sequence, where it gets the
receiver's next seq; then it is pushed to the receiver's stream if they have
one. A broadcast (group "all") and a system notice are appended as full
copies to each receiver's inbox, as before conversations. A push that does
not arrive costs nothing: the client sees the gap in its seqs (or
reconnects) and the chat server replays from the inbox. Acks move the
user's sync cursor. Both send paths end here: the unary Route RPCs and the
batches chat servers submit for messages sent on Chat streams.

A batch of private sends moves as one :class:`PrivateSend` record per send
through the steps (build, check receivers, append to the conversations and
claim, settle retries, pointers, push, answer), each step acting on the
records still in flight, so the batch costs two store round trips and one
push per chat server. Sends come to an :data:`Outcome`: their
``SendResponse`` or the ``CimError`` that refused them; the servicers turn
those into protobuf results.

A send with a client_msg_id is idempotent within ``send_dedup_window``: its
claim (a :class:`~cim.store.base.SendKey`) keeps the digest of its target and
text (:func:`send_digest`), so a retry gets the first attempt's result while
the same client_msg_id with another message is refused (FAILED_PRECONDITION).
A request is always checked before any claim is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from cim import logcontext
from cim.config import RouteConfig
from cim.core import conversations, groups, validation
from cim.core.ids import MessageIdGenerator, message_time_ms, new_trace_id
from cim.errors import (
    CimError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from cim.metrics.route import GROUP, PRIVATE, RouteMetrics
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.proto.v1 import common_pb2
from cim.route.member_cache import GroupMemberCache
from cim.route.servers import Parcel, ServerDirectory
from cim.store.base import (
    GROUP_DELETED,
    Appended,
    ConversationAppended,
    ConversationItem,
    HistoryPage,
    InboxItem,
    InboxPage,
    OwnSend,
    PointedAppended,
    PointedItem,
    PointerItem,
    Retention,
    SendClaim,
    SendKey,
    SessionRecord,
    Store,
)

if TYPE_CHECKING:
    from cim.tracing import MessageTracer

log = logging.getLogger(__name__)

# Accounts are never deleted: a set of known ids this big is cheap and sound.
KNOWN_USERS_LIMIT = 1_000_000
# Send results wait this long to be remembered together (a retry that comes
# sooner finds the claim: same message id, same seq, no second message).
REMEMBER_DELAY = 0.05
# Group appends go to the store in slices of this many receivers.
GROUP_APPEND_SLICE = 500
MAX_PAGE = 1000
# History pages: this many messages unless asked for fewer, never more than HISTORY_MAX_PAGE.
HISTORY_PAGE = 50
HISTORY_MAX_PAGE = 100
DELIVERED = common_pb2.DELIVERY_STATUS_DELIVERED
STORED = common_pb2.DELIVERY_STATUS_STORED
NO_RECIPIENTS = common_pb2.DELIVERY_STATUS_NO_RECIPIENTS
# The sender of an administrator's notice (no account has id 0).
SYSTEM_SENDER_ID = 0
# Bytes of blake2b kept in a send's claim: 2**-64 odds that two different
# messages under one client_msg_id pass for a retry.
SEND_DIGEST_SIZE = 8
REUSED_CLIENT_MSG_ID = "client_msg_id reused with a different message"
BROADCAST_OFF = (
    "sending to group 'all' (everyone online) is off on this cluster (the route's "
    "--broadcast off): send to a group (g:<number>) or a user"
)
# What a send comes to: its response, or the error that refused it.
Outcome = common_pb2.SendResponse | CimError


def send_digest(target: str, text: str) -> bytes:
    """What a send carries besides its client_msg_id, in a few bytes: a
    blake2b digest of its target (``private:<receiver id>`` or
    ``group:<group id>``) and text. A retry has the same digest."""
    digest = hashlib.blake2b(digest_size=SEND_DIGEST_SIZE, person=b"cim-send")
    digest.update(target.encode())
    digest.update(b"\0")
    digest.update(text.encode())
    return digest.digest()


@dataclass(eq=False)
class PrivateSend:
    """One private send on its way through the router. It is in flight until
    ``outcome`` is set: by a refusal, by an earlier attempt's remembered
    result, or by :meth:`answer` once this attempt appended and pushed it."""

    sender_id: int
    sender_name: str
    request: common_pb2.SendPrivateRequest
    # Built from the request; gets its seq from the append, and an earlier
    # attempt's id when this is a retry of an unfinished send.
    message: common_pb2.ChatMessage = field(default_factory=common_pb2.ChatMessage)
    # The receiver's session as the append read it (None: not logged in).
    session: SessionRecord | None = None
    outcome: Outcome | None = None
    # The outcome is an earlier attempt's: nothing to push, nothing to remember.
    answered_before: bool = False
    # The send_digest of the checked request (set with the message).
    digest: bytes = b""
    # MESSAGE_KIND_SYSTEM for an administrator's notice (sender id 0): stored
    # and pushed exactly as a private message, shown as a notice.
    kind: common_pb2.MessageKind.ValueType = common_pb2.MESSAGE_KIND_PRIVATE
    # Its fan-out was done in the append's own atomic step: nothing to confirm.
    settled: bool = False
    # Its message id is this attempt's own, not an earlier attempt's (reuse).
    fresh: bool = True

    @property
    def in_flight(self) -> bool:
        return self.outcome is None

    def fail(self, exc: CimError) -> None:
        self.outcome = exc

    def answer_as_before(self, result: bytes) -> None:
        """Settles a retry of a finished send with that send's result."""
        self.outcome = common_pb2.SendResponse.FromString(result)
        self.answered_before = True

    def reuse(self, message_id: str) -> None:
        """Takes an unfinished earlier attempt's message id (and so its time):
        appended again, it gets that attempt's seq, never a second message."""
        self.message.message_id = message_id
        self.message.server_time_ms = message_time_ms(message_id)
        self.fresh = False

    def appended(self, stored: Appended) -> None:
        self.message.seq = stored.seq
        self.session = stored.session

    @property
    def in_conversation(self) -> bool:
        """A private message (not a system notice): its body goes to the
        conversation's log, a pointer to the receiver's sequence."""
        return self.kind == common_pb2.MESSAGE_KIND_PRIVATE

    @property
    def key(self) -> SendKey | None:
        """Its claim, if it has a client_msg_id: under the conversation for a
        private message, under the receiver for a system notice."""
        message = self.message
        if not message.client_msg_id:
            return None
        return SendKey(
            message.receiver_id,
            message.sender_id,
            message.client_msg_id,
            self.digest,
            conversation=message.conversation_id,
        )

    @property
    def legacy_key(self) -> SendKey | None:
        """Where the code before conversations claimed this private send: the receiver's keys."""
        message = self.message
        if not message.client_msg_id:
            return None
        return SendKey(message.receiver_id, message.sender_id, message.client_msg_id, self.digest)

    def pointed_item(self, *, claim: bool) -> PointedItem:
        """The message for its conversation's log and its receiver's
        sequence; with ``claim``, the append also claims the send (when it
        has a client_msg_id)."""
        message = self.message
        send = self.key if claim else None
        item = ConversationItem(
            message.conversation_id, message.message_id, message.SerializeToString(), send
        )
        return PointedItem(item, message.receiver_id, message.sender_id, fresh=self.fresh)

    def pointed(self, stored: PointedAppended) -> None:
        if stored.pointer is None:
            raise RuntimeError("an append without a claim came back without a pointer")
        self.message.position = stored.conversation.position
        self.appended(stored.pointer)
        self.settled = stored.settled

    def inbox_item(self, *, claim: bool) -> InboxItem:
        """The message for its receiver's inbox; with ``claim``, the append
        also claims the send (when it has a client_msg_id)."""
        message = self.message
        send = self.key if claim else None
        return InboxItem(message.receiver_id, message.message_id, message.SerializeToString(), send)

    def parcel(self) -> tuple[str, Parcel] | None:
        """The push to the receiver's chat server, if they have a stream."""
        if self.session is None or not self.session.connected:
            return None
        delivery = chat_internal_pb2.Delivery(
            receiver_id=self.message.receiver_id, message=self.message
        )
        return self.session.server_id, [delivery]

    def answer(self, delivered: bool) -> None:
        """Settles a send this attempt appended (and pushed, if ``delivered``)."""
        self.outcome = common_pb2.SendResponse(
            message_id=self.message.message_id,
            status=DELIVERED if delivered else STORED,
            recipients=1 if delivered else 0,
            server_time_ms=self.message.server_time_ms,
            position=self.message.position,
        )

    @property
    def result(self) -> Outcome:
        if self.outcome is None:
            raise RuntimeError("a private send left the router unsettled")
        return self.outcome

    @property
    def to_remember(self) -> common_pb2.SendResponse | None:
        """The result to remember for retries: this attempt's response to a
        send with a client_msg_id."""
        outcome = self.outcome
        if (
            isinstance(outcome, common_pb2.SendResponse)
            and not self.answered_before
            and self.message.client_msg_id
        ):
            return outcome
        return None


def settle_earlier(send: PrivateSend, earlier: SendClaim) -> bool:
    """Settles a send an earlier attempt claimed: another message under the
    same client_msg_id is refused; a retry of a finished one answers with
    its result; of an unfinished one (its route may have crashed), takes its
    message id and returns True, to be appended again under it. A claim
    written before claims kept a digest counts as a retry."""
    if earlier.digest is not None and earlier.digest != send.digest:
        send.fail(FailedPrecondition(REUSED_CLIENT_MSG_ID))
    elif earlier.result is not None:
        send.answer_as_before(earlier.result)
    else:
        send.reuse(earlier.message_id)
        return True
    return False


def settle_claims(sends: Sequence[PrivateSend], appended: Sequence[Appended]) -> list[PrivateSend]:
    """Takes each send's claiming inbox append (a system notice); returns
    the retries of unfinished sends (see :func:`settle_earlier`), to be
    appended again without a claim."""
    again = []
    for send, stored in zip(sends, appended, strict=True):
        if stored.earlier is None:
            send.appended(stored)
        elif settle_earlier(send, stored.earlier):
            again.append(send)
    return again


def settle_pointed(
    sends: Sequence[PrivateSend], stored: Sequence[PointedAppended]
) -> list[PrivateSend]:
    """As :func:`settle_claims`, for the sends' conversation appends and pointers."""
    again = []
    for send, done in zip(sends, stored, strict=True):
        if done.conversation.earlier is None:
            send.pointed(done)
        elif settle_earlier(send, done.conversation.earlier):
            again.append(send)
    return again


def log_private(send: PrivateSend) -> None:
    """A debug line about a settled private send, for its sender and trace:
    a batch carries many senders, so the line names them, not the context."""
    message, outcome = send.message, send.result
    about = {"user_id": send.sender_id, "trace_id": message.trace_id or None}
    if isinstance(outcome, CimError):
        log.debug(
            "send of user %s to user %s refused: %s",
            send.sender_id,
            send.request.receiver_id,
            outcome.message,
            extra=about,
        )
    else:
        log.debug(
            "message %s from user %s to user %s: %s",
            outcome.message_id,
            send.sender_id,
            message.receiver_id,
            common_pb2.DeliveryStatus.Name(outcome.status),
            extra=about,
        )


def group_parcels(
    message: common_pb2.ChatMessage, receivers: Sequence[int], appended: Sequence[Appended]
) -> list[tuple[str, Parcel]]:
    """The pushes of one message to many receivers (a group's, or a repaired
    fan-out's), to those with a stream: one parcel per chat server, each copy
    under its receiver's seq."""
    by_server: dict[str, Parcel] = defaultdict(list)
    for receiver, stored in zip(receivers, appended, strict=True):
        if stored.session is None or not stored.session.connected:
            continue  # gone since the walk: the inbox keeps it for them
        copy = common_pb2.ChatMessage()
        copy.CopyFrom(message)
        copy.seq = stored.seq
        by_server[stored.session.server_id].append(
            chat_internal_pb2.Delivery(receiver_id=receiver, message=copy)
        )
    return list(by_server.items())


@dataclass(frozen=True)
class Repair:
    """A fan-out a crashed route left undone (its message was appended to
    its conversation and is pending since), done again: a pointer to the
    message (with its position) in each receiver's sequence, then a push."""

    message: common_pb2.ChatMessage
    receivers: tuple[int, ...]

    def pointers(self) -> list[PointerItem]:
        message = self.message
        return [
            PointerItem(uid, message.conversation_id, message.position, message.message_id)
            for uid in self.receivers
        ]


def repair_parcels(
    repairs: Sequence[Repair], appended: Sequence[Appended]
) -> list[tuple[str, Parcel]]:
    """The pushes of the repaired fan-outs, whose pointers lead ``appended``
    (in the repairs' order): per repair, one parcel per chat server."""
    parcels = []
    start = 0
    for repair in repairs:
        end = start + len(repair.receivers)
        parcels += group_parcels(repair.message, repair.receivers, appended[start:end])
        start = end
    return parcels


class MessageRouter:
    def __init__(
        self,
        config: RouteConfig,
        store: Store,
        servers: ServerDirectory,
        metrics: RouteMetrics | None = None,
        tracer: MessageTracer | None = None,
        members: GroupMemberCache | None = None,
    ) -> None:
        self._metrics = metrics or RouteMetrics()
        self._config = config
        self._store = store
        self._servers = servers
        self._tracer = tracer
        # The store calls of the message path, each in a span when tracing
        # (chosen once here: nothing to check per call).
        self._append_inbox: Callable[
            [Sequence[InboxItem], Retention], Awaitable[list[Appended]]
        ] = store.append_inbox
        self._claim_sends: Callable[
            [Sequence[tuple[SendKey, str]], float], Awaitable[list[SendClaim | None]]
        ] = store.claim_sends
        self._append_conversations: Callable[
            [Sequence[ConversationItem], Retention], Awaitable[list[ConversationAppended]]
        ] = store.append_conversations
        self._append_pointers: Callable[
            [Sequence[PointerItem], Retention, Sequence[OwnSend]], Awaitable[list[Appended]]
        ] = store.append_pointers
        self._append_pointed: Callable[
            [Sequence[PointedItem], Retention], Awaitable[list[PointedAppended]]
        ] = store.append_pointed
        if tracer is not None:
            self._append_inbox = tracer.store_call("append_inbox", store.append_inbox)
            self._claim_sends = tracer.store_call("claim_sends", store.claim_sends)
            self._append_conversations = tracer.store_call(
                "append_conversations", store.append_conversations
            )
            self._append_pointers = tracer.store_call("append_pointers", store.append_pointers)
            self._append_pointed = tracer.store_call("append_pointed", store.append_pointed)
        # Until one dedup window after the store was first served with
        # conversations, private sends also look for claims the code before
        # them left under the receiver's keys (see _legacy_claims).
        self._legacy_until: float | None = None
        self._retention = config.retention
        self._ids = MessageIdGenerator()
        self._known_users: set[int] = set()
        # group id -> (membership version, members): sent back by an append
        # only when the version moved, so most sends carry no member list.
        self._group_cache = members if members is not None else GroupMemberCache()
        # Results to remember for retries: collected for REMEMBER_DELAY and
        # written in one pipeline, off the sender's critical path.
        self._unremembered: list[tuple[SendKey, bytes]] = []
        # Fan-outs done, (conversation id, message id), confirmed with them.
        self._fanned_out: list[tuple[str, str]] = []
        self._remembering: asyncio.Task[None] | None = None

    @staticmethod
    def _compose(
        message: common_pb2.ChatMessage,
        sender_id: int,
        sender_name: str,
        text: str,
        client_msg_id: str,
        message_id: str,
        trace_id: str | None,
    ) -> common_pb2.ChatMessage:
        """Fills in what every message carries (its text checked before); a
        trace id of its own unless its batch is traced (then the trace's)."""
        message.message_id = message_id
        message.sender_id = sender_id
        message.sender_name = sender_name
        message.text = text
        # From the id, so every attempt of a retried send carries the same time.
        message.server_time_ms = message_time_ms(message_id)
        message.trace_id = trace_id or new_trace_id()
        message.client_msg_id = client_msg_id
        return message

    # --- private ----------------------------------------------------------
    async def send_private(
        self, sender_id: int, sender_name: str, request: common_pb2.SendPrivateRequest
    ) -> common_pb2.SendResponse:
        (outcome,) = await self._route_privates([PrivateSend(sender_id, sender_name, request)])
        if isinstance(outcome, CimError):
            raise outcome
        return outcome

    async def send_system(
        self, receiver_id: int, text: str, client_msg_id: str = ""
    ) -> common_pb2.SendResponse:
        """An administrator's notice to one user: a MESSAGE_KIND_SYSTEM message
        from sender id 0, stored in their inbox and pushed as a private
        message is (the same checks, retries and guarantees)."""
        request = common_pb2.SendPrivateRequest(
            receiver_id=receiver_id, text=text, client_msg_id=client_msg_id
        )
        send = PrivateSend(SYSTEM_SENDER_ID, "", request, kind=common_pb2.MESSAGE_KIND_SYSTEM)
        (outcome,) = await self._route_privates([send])
        if isinstance(outcome, CimError):
            raise outcome
        return outcome

    async def broadcast(self, text: str) -> tuple[common_pb2.ChatMessage, int]:
        """An administrator's notice to every user online now: pushed, never
        stored, so it carries seq 0 (outside every user's sequence: clients
        show it as it comes and never ack it). The message, and how many live
        streams took it."""
        validation.check_text(text, self._config.max_text_bytes)
        message = self._compose(
            common_pb2.ChatMessage(), SYSTEM_SENDER_ID, "", text, "", self._ids.next(), None
        )
        message.kind = common_pb2.MESSAGE_KIND_SYSTEM
        by_server: dict[str, Parcel] = defaultdict(list)
        async for session in self._store.online_sessions():
            by_server[session.server_id].append(
                chat_internal_pb2.Delivery(receiver_id=session.user_id, message=message)
            )
        parcels = [
            (server_id, deliveries[start : start + GROUP_APPEND_SLICE])
            for server_id, deliveries in by_server.items()
            for start in range(0, len(deliveries), GROUP_APPEND_SLICE)
        ]
        flags = await self._servers.deliver_many(parcels)
        return message, sum(flag for parcel in flags for flag in parcel)

    async def _route_privates(self, sends: Sequence[PrivateSend]) -> list[Outcome]:
        if self._tracer is None:
            return await self._route_private_batch(sends, None)
        with self._tracer.accept("private", len(sends)) as span:
            return await self._route_private_batch(sends, self._tracer.trace_id(span))

    async def _route_private_batch(
        self, sends: Sequence[PrivateSend], trace_id: str | None
    ) -> list[Outcome]:
        """Routes private messages together: one store round trip claims their
        sends, appends them (in order, so each sender's order holds) and
        finds their receivers' streams; then one push per chat server."""
        for send in sends:
            self._build(send, trace_id)
        await self._route(sends)
        remember = []
        outcomes = []
        for send in sends:
            response, key = send.to_remember, send.key
            if response is not None and key is not None:
                remember.append((key, response))
            outcome = send.result
            if isinstance(outcome, CimError):
                self._metrics.refused(PRIVATE, outcome)
            outcomes.append(outcome)
        self._remember_later(remember)
        if log.isEnabledFor(logging.DEBUG):  # one check a batch when nothing logs
            for send in sends:
                log_private(send)
        return outcomes

    def _build(self, send: PrivateSend, trace_id: str | None) -> None:
        """Checks the request and builds its message; a refusal settles the send."""
        request = send.request
        try:
            validation.check_user_id(request.receiver_id, "receiver id")
            validation.check_text(request.text, self._config.max_text_bytes)
            if request.client_msg_id:
                validation.check_client_msg_id(request.client_msg_id)
            self._compose(
                send.message,
                send.sender_id,
                send.sender_name,
                request.text,
                request.client_msg_id,
                self._ids.next(),
                trace_id,
            )
        except CimError as exc:
            send.fail(exc)
            return
        send.message.kind = send.kind
        send.message.receiver_id = request.receiver_id
        if send.in_conversation:
            send.message.conversation_id = conversations.private_id(
                send.sender_id, request.receiver_id
            )
        target = "system" if send.kind == common_pb2.MESSAGE_KIND_SYSTEM else "private"
        send.digest = send_digest(f"{target}:{request.receiver_id}", request.text)

    async def _route(self, sends: Sequence[PrivateSend]) -> None:
        """Checks the receivers, appends (claiming the sends), settles the
        retries, pushes and answers: every send leaves settled."""
        routed = [send for send in sends if send.in_flight]
        if not routed:
            return
        try:
            missing = await self._unknown_users([send.message.receiver_id for send in routed])
        except CimError as exc:
            for send in routed:
                send.fail(exc)
            return
        for send in routed:
            if send.message.receiver_id in missing:
                send.fail(NotFound(f"no user with id {send.message.receiver_id}"))
        routed = [send for send in routed if send.in_flight]
        try:
            repaired = await self._append(routed)
        except CimError as exc:
            for send in routed:  # every send the batch took to the store, answered retries too
                send.fail(exc)
            return
        await self._push([send for send in routed if send.in_flight], repaired)

    async def _append(self, sends: Sequence[PrivateSend]) -> list[tuple[str, Parcel]]:
        """Stores the sends: private messages in their conversations, system
        notices in their receivers' inboxes. Returns the pushes of the
        fan-outs it repaired on the way (see _append_private)."""
        private = [send for send in sends if send.in_conversation]
        notices = [send for send in sends if not send.in_conversation]
        repaired: list[tuple[str, Parcel]] = []
        if private:
            repaired = await self._append_private(private)
        if notices:
            await self._append_notices(notices)
        return repaired

    async def _append_private(self, sends: Sequence[PrivateSend]) -> list[tuple[str, Parcel]]:
        """Each message into its conversation's log, claiming its send, and a
        pointer into its receiver's sequence, reading their session: one
        round trip on a standalone Redis, two on a cluster (see
        ``Store.append_pointed``). The retries of unfinished sends go again,
        under their earlier message ids, without a claim. The sender's own
        side (their conversation list, their read cursor raised to the
        message) comes in the same round trip. The fan-outs a crashed route
        left undone that the appends found are done next (one more round
        trip, only then): in their receivers' sequences after this batch's
        messages. Returns the repairs' pushes."""
        await self._legacy_claims(sends)
        sends = [send for send in sends if send.in_flight]
        if not sends:
            return []
        stored = await self._append_pointed(
            [send.pointed_item(claim=True) for send in sends], self._retention
        )
        again = settle_pointed(sends, stored)
        if again:
            redone = await self._append_pointed(
                [send.pointed_item(claim=False) for send in again], self._retention
            )
            for send, done in zip(again, redone, strict=True):
                send.pointed(done)
            stored += redone
        sends = [send for send in sends if send.in_flight]
        repairs = await self._repairs(
            [done.conversation for done in stored], {send.message.message_id for send in sends}
        )
        parcels: list[tuple[str, Parcel]] = []
        if repairs:
            repaired = [pointer for repair in repairs for pointer in repair.pointers()]
            parcels = repair_parcels(
                repairs, await self._append_pointers(repaired, self._retention, ())
            )
        self._finish_later(
            [(repair.message.conversation_id, repair.message.message_id) for repair in repairs]
            + [
                (send.message.conversation_id, send.message.message_id)
                for send in sends
                if not send.settled
            ]
        )
        return parcels

    async def _repairs(
        self, appended: Sequence[ConversationAppended], own: Collection[str]
    ) -> list[Repair]:
        """The fan-outs a crashed route left undone that the appends found,
        each once, none of ``own`` (this batch's message ids): a private
        message to its receiver; a group's message or membership event to
        the members the group's record gives it now (groups.fan_out_again;
        one read per group, only when there is a repair)."""
        found: dict[str, common_pb2.ChatMessage] = {}
        for stored in appended:
            for old in stored.unfinished:
                if old.message_id not in own and old.message_id not in found:
                    message = common_pb2.ChatMessage.FromString(old.payload)
                    message.position = old.position
                    found[old.message_id] = message
        if not found:
            return []
        records: dict[str, groups.Group | None] = {}
        repairs = []
        for message in found.values():
            cid = message.conversation_id
            if not cid.startswith(conversations.GROUP_PREFIX):
                repairs.append(Repair(message, (message.receiver_id,)))
                continue
            if cid not in records:
                records[cid] = await self._store.read_group(cid)
            group = records[cid]
            event = message.kind == common_pb2.MESSAGE_KIND_MEMBERSHIP
            receivers = (
                ()
                if group is None
                else groups.fan_out_again(group, message.position, message.sender_id, event=event)
            )
            repairs.append(Repair(message, receivers))
        log.info(
            "doing again %d fan-outs a crashed route left undone (%d pointers)",
            len(repairs),
            sum(len(repair.receivers) for repair in repairs),
        )
        return repairs

    async def _legacy_claims(self, sends: Sequence[PrivateSend]) -> None:
        """For one dedup window after the upgrade to conversations: a retry of
        a send the older code claimed (under the receiver's keys) gets that
        attempt's result or message id, never a second delivery. One more
        round trip, only then and only for sends with a client_msg_id."""
        keyed = [send for send in sends if send.in_flight and send.legacy_key is not None]
        if not keyed:
            return
        if time.time() >= await self._legacy_window():
            return
        found = await self._store.read_sends([send.legacy_key for send in keyed if send.legacy_key])
        for send, earlier in zip(keyed, found, strict=True):
            if earlier is not None:
                # An unfinished one is appended under its message id: its
                # receiver's sequence may hold it already (same seq, no copy).
                settle_earlier(send, earlier)

    async def _append_notices(self, sends: Sequence[PrivateSend]) -> None:
        """Appends the notices, each claiming itself; appends again, under their
        earlier message ids, the retries of unfinished sends (see
        :func:`settle_claims`)."""
        appended = await self._append_inbox(
            [send.inbox_item(claim=True) for send in sends], self._retention
        )
        again = settle_claims(sends, appended)
        if again:
            redone = await self._append_inbox(
                [send.inbox_item(claim=False) for send in again], self._retention
            )
            for send, stored in zip(again, redone, strict=True):
                send.appended(stored)

    async def _push(
        self, sends: Sequence[PrivateSend], first: Sequence[tuple[str, Parcel]] = ()
    ) -> None:
        """Pushes the appended sends to their receivers' streams, one parcel
        per chat server (in the sends' order), after the parcels ``first``
        (repaired fan-outs: earlier in their receivers' sequences), and
        answers each."""
        by_server: dict[str, tuple[list[PrivateSend], Parcel]] = {}
        for send in sends:
            parcel = send.parcel()
            if parcel is not None:
                server_id, deliveries = parcel
                pushed, merged = by_server.setdefault(server_id, ([], []))
                pushed.append(send)
                merged.extend(deliveries)
        flags = await self._servers.deliver_many(
            [*first, *((server_id, merged) for server_id, (_, merged) in by_server.items())]
        )
        flags = flags[len(first) :]
        reached = 0
        for (pushed, _), oks in zip(by_server.values(), flags, strict=True):
            for send, ok in zip(pushed, oks, strict=True):
                send.answer(delivered=ok)
                reached += ok
        for send in sends:
            if send.in_flight:  # offline, or no stream
                send.answer(delivered=False)
        metrics = self._metrics
        metrics.accepted_private.inc(len(sends))
        metrics.pushed_private.inc(reached)
        metrics.offline_private.inc(len(sends) - reached)

    # --- idempotent sends ---------------------------------------------------
    # A private send is claimed by its inbox append (under the receiver's
    # keys, one atomic step); a group send, which has many receivers, by a
    # claim under the sender's keys first.
    async def _group_claim(self, key: SendKey | None) -> str | common_pb2.SendResponse:
        """The message id to send a group message under: a new one, or an
        earlier unfinished attempt's (the appends are idempotent by message
        id, so a retry after a crash reaches nobody twice); or, for a retry
        of a finished send, its result. FailedPrecondition for another
        message under the same client_msg_id."""
        message_id = self._ids.next()
        if key is None:
            return message_id
        (earlier,) = await self._claim_sends([(key, message_id)], self._config.send_dedup_window)
        if earlier is None:
            return message_id
        if earlier.digest is not None and earlier.digest != key.digest:
            raise FailedPrecondition(REUSED_CLIENT_MSG_ID)
        if earlier.result is not None:
            return common_pb2.SendResponse.FromString(earlier.result)
        return earlier.message_id

    def _remember_later(self, sends: Sequence[tuple[SendKey, common_pb2.SendResponse]]) -> None:
        """Remembers the results of (send, response) without making the
        sender wait: a retry that comes first finds the claim and sends again
        under the same message id, which the inboxes already hold (no second
        message)."""
        if not sends:
            return
        self._unremembered.extend((key, response.SerializeToString()) for key, response in sends)
        if self._remembering is None:
            self._remembering = asyncio.create_task(self._remember_soon())

    def _finish_later(self, done: Sequence[tuple[str, str]]) -> None:
        """Confirms the fan-outs of (conversation id, message id) with the
        results remembered next, in the same pipeline (off the critical
        path): until then each is pending, and an append to its conversation
        more than ``repair_after`` later does it again, idempotently."""
        if not done:
            return
        self._fanned_out.extend(done)
        if self._remembering is None:
            self._remembering = asyncio.create_task(self._remember_soon())

    async def start(self) -> None:
        """Reads (or sets) the store's conversations mark before serving: a
        store that has no account yet is marked as having no older claims,
        which spares every send of the next dedup window a round trip (see
        _legacy_claims). Without the store now, the first send reads it."""
        try:
            await self._legacy_window()
        except CimError as exc:
            log.warning("reading the conversations mark failed (%s)", exc.message)

    async def _legacy_window(self) -> float:
        if self._legacy_until is None:
            since = await self._store.conversations_since()
            self._legacy_until = since + self._config.send_dedup_window
        return self._legacy_until

    async def aclose(self) -> None:
        """Writes the results still waiting to be remembered."""
        if self._remembering is not None:
            await self._remembering

    async def _remember_soon(self) -> None:
        await asyncio.sleep(REMEMBER_DELAY)
        results, self._unremembered = self._unremembered, []
        fanned_out, self._fanned_out = self._fanned_out, []
        self._remembering = None
        try:
            await self._store.finish_sends(results, self._config.send_dedup_window, fanned_out)
        except CimError as exc:
            # The claims stay: a retry then sends again under the same
            # message id, which its receivers' inboxes already hold; the
            # fan-outs stay pending: a later append does them again (idempotent).
            log.warning(
                "could not remember %d sends' results and %d fan-outs: %s",
                len(results),
                len(fanned_out),
                exc.message,
            )

    async def _unknown_users(self, user_ids: Sequence[int]) -> set[int]:
        """The ids with no account. Accounts are never deleted, so known ids are
        remembered and most messages need no account read at all."""
        unknown = {uid for uid in user_ids if uid not in self._known_users}
        if not unknown:
            return set()
        found = await self._store.get_accounts(list(unknown))
        if len(self._known_users) > KNOWN_USERS_LIMIT:
            self._known_users.clear()
        self._known_users.update(found)
        return unknown - found.keys()

    # --- group ------------------------------------------------------------
    async def send_group(
        self, sender_id: int, sender_name: str, request: common_pb2.SendGroupRequest
    ) -> common_pb2.SendResponse:
        try:
            if self._tracer is None:
                return await self._accept_group(sender_id, sender_name, request, None)
            with self._tracer.accept("group", 1) as span:
                return await self._accept_group(
                    sender_id, sender_name, request, self._tracer.trace_id(span)
                )
        except CimError as exc:
            self._metrics.refused(GROUP, exc)
            raise

    async def _accept_group(
        self,
        sender_id: int,
        sender_name: str,
        request: common_pb2.SendGroupRequest,
        trace_id: str | None,
    ) -> common_pb2.SendResponse:
        # Checked first: a refused request never reads (or answers from) a claim.
        validation.check_text(request.text, self._config.max_text_bytes)
        if request.group_id.startswith(conversations.GROUP_PREFIX):
            return await self._accept_member_group(sender_id, sender_name, request, trace_id)
        group_id = validation.check_group(request.group_id)
        if self._config.broadcast == "off":
            raise PermissionDenied(BROADCAST_OFF)
        key = None
        if request.client_msg_id:
            validation.check_client_msg_id(request.client_msg_id)
            digest = send_digest(f"group:{group_id}", request.text)
            key = SendKey(sender_id, sender_id, request.client_msg_id, digest)
        message_id = await self._group_claim(key)
        if not isinstance(message_id, str):
            return message_id  # a retry of a finished send: its result
        message = self._compose(
            common_pb2.ChatMessage(),
            sender_id,
            sender_name,
            request.text,
            request.client_msg_id,
            message_id,
            trace_id,
        )
        message.kind = common_pb2.MESSAGE_KIND_GROUP
        message.group_id = group_id
        with logcontext.bound(user_id=sender_id, trace_id=message.trace_id):
            outcome = await self._send_group(message)
            log.debug(
                "message %s from user %s to group %s: %d recipients",
                message.message_id,
                sender_id,
                group_id,
                outcome.recipients,
            )
        if key is not None:
            self._remember_later([(key, outcome)])
        return outcome

    async def _accept_member_group(
        self,
        sender_id: int,
        sender_name: str,
        request: common_pb2.SendGroupRequest,
        trace_id: str | None,
    ) -> common_pb2.SendResponse:
        """A message to a group with members: round trip 1 appends it to the
        group's log, refusing a non-member and reading the members in the
        same atomic step (a member removed before it gets nothing); round
        trip 2 a pointer per member; then the pushes. Idempotent by
        client_msg_id (claimed under the group's tag, like a private send)."""
        group_id = groups.parse_group_id(request.group_id)
        key = None
        if request.client_msg_id:
            validation.check_client_msg_id(request.client_msg_id)
            digest = send_digest(f"group:{group_id}", request.text)
            key = SendKey(sender_id, sender_id, request.client_msg_id, digest, group_id)
        message = self._compose(
            common_pb2.ChatMessage(),
            sender_id,
            sender_name,
            request.text,
            request.client_msg_id,
            self._ids.next(),
            trace_id,
        )
        message.kind = common_pb2.MESSAGE_KIND_GROUP
        message.group_id = message.conversation_id = group_id
        stored = await self._append_group(message, key)
        if isinstance(stored, common_pb2.SendResponse):
            return stored  # a retry of a finished send: its result
        message.position = stored.position
        repairs = await self._repairs([stored], {message.message_id})
        with logcontext.bound(user_id=sender_id, trace_id=message.trace_id):
            members = self._group_members(group_id, stored)
            outcome = await self._fan_out_group(message, members, repairs)
            log.debug(
                "message %s from user %s to group %s at %d: %d members",
                message.message_id,
                sender_id,
                group_id,
                message.position,
                outcome.recipients,
            )
        if key is not None:
            self._remember_later([(key, outcome)])
        return outcome

    async def _append_group(
        self, message: common_pb2.ChatMessage, key: SendKey | None
    ) -> ConversationAppended | common_pb2.SendResponse:
        """Round trip 1 (twice for the retry of an unfinished send, under its
        earlier message id, then without a claim)."""
        group_id = message.conversation_id
        cached = self._group_cache.get(group_id)
        item = ConversationItem(
            group_id,
            message.message_id,
            message.SerializeToString(),
            key,
            group_sender=message.sender_id,
            known_version=cached[0] if cached else -1,
        )
        (stored,) = await self._append_conversations([item], self._retention)
        if stored.earlier is not None:
            earlier = stored.earlier
            if earlier.digest is not None and key is not None and earlier.digest != key.digest:
                raise FailedPrecondition(REUSED_CLIENT_MSG_ID)
            if earlier.result is not None:
                return common_pb2.SendResponse.FromString(earlier.result)
            # An unfinished attempt (its route may have crashed): the same
            # message id again, which the log and the sequences know.
            message.message_id = earlier.message_id
            message.server_time_ms = message_time_ms(earlier.message_id)
            item = replace(
                item, message_id=earlier.message_id, payload=message.SerializeToString(), send=None
            )
            (stored,) = await self._append_conversations([item], self._retention)
        if not stored.refused and stored.members is None:
            cached = self._group_cache.get(group_id)
            if cached is None or cached[0] != stored.version:
                # The cache moved on meanwhile: the same append again (same
                # position, by message id, in the same atomic read of the
                # members), asking for them.
                item = replace(item, send=None, known_version=-1)
                (stored,) = await self._append_conversations([item], self._retention)
        if stored.refused == GROUP_DELETED:
            raise FailedPrecondition(f"group {group_id} was deleted")
        if stored.refused:
            raise PermissionDenied(f"you are not a member of group {group_id}")
        return stored

    def _group_members(self, group_id: str, stored: ConversationAppended) -> tuple[int, ...]:
        """The members the append read (or, at the version the route holds,
        the ones it cached: checked by _append_group)."""
        if stored.members is None:
            cached = self._group_cache.get(group_id)
            if cached is None:
                raise RuntimeError(f"group {group_id}'s members are neither cached nor read")
            return cached[1]
        self._group_cache.put(group_id, stored.version, stored.members)
        return stored.members

    async def _fan_out_group(
        self, message: common_pb2.ChatMessage, members: Sequence[int], repairs: Sequence[Repair]
    ) -> common_pb2.SendResponse:
        """Round trip 2: a pointer in each other member's sequence, after
        those of the group's fan-outs a crashed route left undone (found by
        the append); then the pushes, one per chat server (the repairs'
        first). The fan-outs are confirmed later, off the critical path."""
        receivers = [uid for uid in members if uid != message.sender_id]
        repaired = [pointer for repair in repairs for pointer in repair.pointers()]
        pointed = await self._append_pointers(
            [
                *repaired,
                *(
                    PointerItem(uid, message.conversation_id, message.position, message.message_id)
                    for uid in receivers
                ),
            ],
            self._retention,
            [OwnSend(message.sender_id, message.conversation_id, message.position)],
        )
        self._finish_later(
            [(repair.message.conversation_id, repair.message.message_id) for repair in repairs]
            + [(message.conversation_id, message.message_id)]
        )
        first = repair_parcels(repairs, pointed)
        appended = pointed[len(repaired) :]
        flags = await self._servers.deliver_many(
            [*first, *group_parcels(message, receivers, appended)]
        )
        reached = sum(sum(oks) for oks in flags[len(first) :])
        metrics = self._metrics
        metrics.accepted_group.inc()
        metrics.pushed_group.inc(reached)
        metrics.offline_group.inc(len(receivers) - reached)
        status = (DELIVERED if reached else STORED) if receivers else NO_RECIPIENTS
        return common_pb2.SendResponse(
            message_id=message.message_id,
            status=status,
            recipients=len(receivers),
            server_time_ms=message.server_time_ms,
            position=message.position,
        )

    async def _send_group(self, message: common_pb2.ChatMessage) -> common_pb2.SendResponse:
        sender_id = message.sender_id
        receivers = [
            session.user_id
            async for session in self._store.online_sessions()
            if session.user_id != sender_id
        ]
        # Each slice is pushed (one push per chat server) as soon as it is
        # stored, while the next slice is being stored.
        pushes = []
        for start in range(0, len(receivers), GROUP_APPEND_SLICE):
            some = receivers[start : start + GROUP_APPEND_SLICE]
            appended = await self._append_to_all(some, message)
            pushes.append(
                asyncio.ensure_future(
                    self._servers.deliver_many(group_parcels(message, some, appended))
                )
            )
        reached = sum(sum(flags) for push in await asyncio.gather(*pushes) for flags in push)
        metrics = self._metrics
        metrics.accepted_group.inc()
        metrics.pushed_group.inc(reached)
        metrics.offline_group.inc(len(receivers) - reached)
        return common_pb2.SendResponse(
            message_id=message.message_id,
            status=DELIVERED if receivers else NO_RECIPIENTS,
            recipients=len(receivers),
            server_time_ms=message.server_time_ms,
        )

    async def _append_to_all(
        self, receivers: Sequence[int], message: common_pb2.ChatMessage
    ) -> list[Appended]:
        """Appends one message (serialised once) to many receivers' inboxes."""
        payload = message.SerializeToString()
        return await self._append_inbox(
            [InboxItem(receiver, message.message_id, payload) for receiver in receivers],
            self._retention,
        )

    # --- inbox reads and acks ------------------------------------------------
    async def read_inbox(
        self, user_id: int, after_seq: int, limit: int
    ) -> tuple[list[common_pb2.ChatMessage], InboxPage]:
        """A page of the user's inbox after ``after_seq``, as messages with
        their seq, marked as coming from storage."""
        limit = limit or self._config.offline_batch
        if limit < 0 or limit > MAX_PAGE:
            raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE} (0: default)")
        page = await self._store.read_inbox(user_id, after_seq, limit, self._retention)
        self._metrics.replay_pages.inc()
        messages = []
        for entry in page.entries:
            message = common_pb2.ChatMessage.FromString(entry.payload)
            message.seq = entry.seq
            message.stored = True
            if entry.conversation_id:
                message.position = entry.position
            elif (
                message.kind == common_pb2.MESSAGE_KIND_PRIVATE
                and not message.conversation_id
                and message.sender_id > 0
                and message.receiver_id > 0
            ):
                # Stored before conversations: its conversation, no position.
                message.conversation_id = conversations.private_id(
                    message.sender_id, message.receiver_id
                )
            messages.append(message)
        return messages, page

    async def history(
        self, user_id: int, conversation_id: str, before: int, limit: int
    ) -> tuple[list[common_pb2.ChatMessage], HistoryPage]:
        """A page of a conversation's history for one of its members, newest
        first, each message with its position (and seq 0: outside the
        reader's sequence). A group's removed or departed member reads up to
        their removal; anyone else, and a group that does not exist, get
        PERMISSION_DENIED alike (as from the Groups service)."""
        conversation = conversations.parse(conversation_id)
        if conversation.private:
            conversations.peer(conversation, user_id)  # members only
        limit = limit or HISTORY_PAGE
        if limit < 0 or limit > HISTORY_MAX_PAGE:
            raise InvalidArgument(
                f"limit must be between 1 and {HISTORY_MAX_PAGE} (0: {HISTORY_PAGE}); got {limit}"
            )
        cid = conversation.cid
        if conversation.private:
            page = await self._store.read_history(cid, before, limit, self._retention)
        else:
            found = await self._store.read_group_history(
                cid, user_id, before, limit, self._retention
            )
            if found is None:
                raise PermissionDenied(f"you are not a member of group {cid}")
            page = found
        messages = []
        for entry in page.entries:
            message = common_pb2.ChatMessage.FromString(entry.payload)
            message.position = entry.position
            messages.append(message)
        return messages, page

    async def ack(self, acks: Sequence[tuple[int, int]]) -> None:
        """Moves each user's sync cursor to seq: the user holds everything up
        to it. Conversations keep their history."""
        acks = [(user_id, seq) for user_id, seq in acks if seq > 0]
        if acks:
            await self._store.ack_inbox(acks, self._retention)

    # --- batches from chat servers ----------------------------------------
    async def submit_batch(
        self, items: Sequence[route_internal_pb2.SubmittedMessage]
    ) -> list[Outcome]:
        """Routes a batch in order: runs of private messages together, group
        messages one by one between them (so every sender's order holds)."""
        self._metrics.submit_batch.observe(len(items))
        outcomes: list[Outcome] = []
        run: list[PrivateSend] = []

        async def flush() -> None:
            if run:
                outcomes.extend(await self._route_privates(run))
                run.clear()

        for item in items:
            target = item.WhichOneof("target")
            if target == "private":
                run.append(PrivateSend(item.sender_id, item.sender_name, item.private))
                continue
            await flush()
            try:
                if target != "group":
                    raise InvalidArgument("message has neither a private nor a group target")
                outcome: Outcome = await self.send_group(
                    item.sender_id, item.sender_name, item.group
                )
            except CimError as exc:
                outcome = exc
            outcomes.append(outcome)
        await flush()
        return outcomes
