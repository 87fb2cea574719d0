"""Routing of messages: private and group sends into each receiver's inbox,
live pushes, and the inbox reads and acks behind replay.

Every message is first appended to its receiver's inbox, where it gets the
next seq of that receiver's sequence, then pushed to the receiver's stream if
they have one. A push that does not arrive costs nothing: the client sees
the gap in its seqs (or reconnects) and the chat server replays from the
inbox. Acks trim the inbox. Both send paths end here: the unary Route RPCs
and the batches chat servers submit for messages sent on Chat streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

from cim.config import RouteConfig
from cim.core import validation
from cim.core.ids import MessageIdGenerator, message_time_ms, new_trace_id
from cim.errors import CimError, InvalidArgument, NotFound
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.proto.v1 import common_pb2
from cim.route.servers import ServerDirectory
from cim.store.base import Appended, InboxItem, InboxPage, Store

log = logging.getLogger(__name__)

# Accounts are never deleted: a set of known ids this big is cheap and sound.
KNOWN_USERS_LIMIT = 1_000_000
# Send results wait this long to be remembered together (a retry that comes
# sooner finds the claim: same message id, same seq, no second message).
REMEMBER_DELAY = 0.05
# Group appends go to the store in slices of this many receivers.
GROUP_APPEND_SLICE = 500
MAX_PAGE = 1000
DELIVERED = common_pb2.DELIVERY_STATUS_DELIVERED
STORED = common_pb2.DELIVERY_STATUS_STORED
# For each send: the message id to use (a first attempt's, when this is a
# retry of an unfinished one), or what a retry of a finished one gets.
Claim = str | common_pb2.SendResponse | CimError


class MessageRouter:
    def __init__(self, config: RouteConfig, store: Store, servers: ServerDirectory) -> None:
        self._config = config
        self._store = store
        self._servers = servers
        self._retention = config.retention
        self._ids = MessageIdGenerator()
        self._known_users: set[int] = set()
        # Results to remember for retries: collected for REMEMBER_DELAY and
        # written in one pipeline, off the sender's critical path.
        self._unremembered: list[tuple[int, int, str, bytes]] = []
        self._remembering: asyncio.Task[None] | None = None

    def _new_message(
        self, sender_id: int, sender_name: str, text: str, client_msg_id: str, message_id: str
    ) -> common_pb2.ChatMessage:
        validation.check_text(text, self._config.max_text_bytes)
        return common_pb2.ChatMessage(
            message_id=message_id,
            sender_id=sender_id,
            sender_name=sender_name,
            text=text,
            # From the id, so every attempt of a retried send carries the same time.
            server_time_ms=message_time_ms(message_id),
            trace_id=new_trace_id(),
            client_msg_id=client_msg_id,
        )

    # --- private ----------------------------------------------------------
    async def send_private(
        self, sender_id: int, sender_name: str, request: common_pb2.SendPrivateRequest
    ) -> common_pb2.SendResponse:
        (outcome,) = await self._route_privates([(sender_id, sender_name, request)])
        if isinstance(outcome, CimError):
            raise outcome
        return outcome

    async def _route_privates(
        self, batch: Sequence[tuple[int, str, common_pb2.SendPrivateRequest]]
    ) -> list[common_pb2.SendResponse | CimError]:
        """Routes private messages together: one store round trip claims their
        sends, appends them (in order, so each sender's order holds) and
        finds their receivers' streams; then one push per chat server."""
        outcomes: list[common_pb2.SendResponse | CimError] = []
        messages: list[common_pb2.ChatMessage | None] = []
        for sender_id, sender_name, request in batch:
            try:
                validation.check_user_id(request.receiver_id, "receiver id")
                if request.client_msg_id:
                    validation.check_client_msg_id(request.client_msg_id)
                message = self._new_message(
                    sender_id, sender_name, request.text, request.client_msg_id, self._ids.next()
                )
            except CimError as exc:
                outcomes.append(exc)
                messages.append(None)
                continue
            message.kind = common_pb2.MESSAGE_KIND_PRIVATE
            message.receiver_id = request.receiver_id
            outcomes.append(common_pb2.SendResponse())
            messages.append(message)
        first_attempts = await self._route_messages(messages, outcomes)
        self._remember_later(
            [
                (message.receiver_id, message.sender_id, message.client_msg_id, outcomes[index])
                for index, message in first_attempts
            ]
        )
        return outcomes

    async def _route_messages(
        self,
        messages: list[common_pb2.ChatMessage | None],
        outcomes: list[common_pb2.SendResponse | CimError],
    ) -> list[tuple[int, common_pb2.ChatMessage]]:
        """Claims, appends and pushes; returns the sends with a client_msg_id
        that this attempt made (their results are to be remembered)."""
        receivers = [m.receiver_id for m in messages if m is not None]
        if not receivers:
            return []
        try:
            missing = await self._unknown_users(receivers)
        except CimError as exc:
            _fail_all(messages, outcomes, exc)
            return []
        for index, queued in enumerate(messages):
            if queued is not None and queued.receiver_id in missing:
                outcomes[index] = NotFound(f"no user with id {queued.receiver_id}")
                messages[index] = None
        routed = [(index, m) for index, m in enumerate(messages) if m is not None]
        try:
            first = await self._store.append_inbox(
                [_inbox_item(m, claim=True) for _, m in routed], self._retention
            )
            appended = await self._retries(routed, first, outcomes)
        except CimError as exc:
            _fail_all(messages, outcomes, exc)
            return []
        pending: list[tuple[int, str, list[chat_internal_pb2.Delivery]]] = []
        for (index, message), stored in zip(routed, appended, strict=True):
            if stored is None:
                continue  # a retry of a finished send: its result is the outcome
            message.seq = stored.seq
            if stored.session is not None and stored.session.connected:
                parcel = [
                    chat_internal_pb2.Delivery(receiver_id=message.receiver_id, message=message)
                ]
                pending.append((index, stored.session.server_id, parcel))
        flags = await self._servers.deliver_many([(server, p) for _, server, p in pending])
        delivered = {index for (index, _, _), ok in zip(pending, flags, strict=True) if ok[0]}
        first_attempts = []
        for (index, message), stored in zip(routed, appended, strict=True):
            if stored is None:
                continue
            reached = index in delivered
            outcomes[index] = common_pb2.SendResponse(
                message_id=message.message_id,
                status=DELIVERED if reached else STORED,
                recipients=1 if reached else 0,
                server_time_ms=message.server_time_ms,
            )
            if message.client_msg_id:
                first_attempts.append((index, message))
        return first_attempts

    async def _retries(
        self,
        routed: list[tuple[int, common_pb2.ChatMessage]],
        appended: list[Appended],
        outcomes: list[common_pb2.SendResponse | CimError],
    ) -> list[Appended | None]:
        """Settles the sends an earlier attempt had claimed: a finished one
        answers with its result (None: nothing to push); an unfinished one
        (its route may have crashed) is appended under its message id, which
        gets the same seq if it was appended then: never a second message."""
        settled: list[Appended | None] = list(appended)
        again = []
        for position, ((index, message), stored) in enumerate(zip(routed, appended, strict=True)):
            if stored.earlier is None:
                continue
            if stored.earlier.result is not None:
                outcomes[index] = common_pb2.SendResponse.FromString(stored.earlier.result)
                settled[position] = None
                continue
            message.message_id = stored.earlier.message_id
            message.server_time_ms = message_time_ms(message.message_id)
            again.append(position)
        if again:
            redone = await self._store.append_inbox(
                [_inbox_item(routed[p][1], claim=False) for p in again], self._retention
            )
            for position, stored in zip(again, redone, strict=True):
                settled[position] = stored
        return settled

    async def _append(
        self, receivers: Sequence[int], message: common_pb2.ChatMessage
    ) -> list[Appended]:
        """Appends one message (serialised once) to many receivers' inboxes."""
        payload = message.SerializeToString()
        return await self._store.append_inbox(
            [InboxItem(receiver, message.message_id, payload) for receiver in receivers],
            self._retention,
        )

    # --- idempotent sends ---------------------------------------------------
    # A private send is claimed by its inbox append (under the receiver's
    # keys, one atomic step); a group send, which has many receivers, by a
    # claim under the sender's keys first.
    async def _group_claim(self, sender_id: int, client_msg_id: str) -> Claim:
        """The message id to send a group message under: a new one, or an
        earlier unfinished attempt's (the appends are idempotent by message
        id, so a retry after a crash reaches nobody twice); or, for a retry
        of a finished send, its result."""
        message_id = self._ids.next()
        if not client_msg_id:
            return message_id
        validation.check_client_msg_id(client_msg_id)
        (earlier,) = await self._store.claim_sends(
            [(sender_id, sender_id, client_msg_id, message_id)], self._config.send_dedup_window
        )
        if earlier is None:
            return message_id
        if earlier.result is not None:
            return common_pb2.SendResponse.FromString(earlier.result)
        return earlier.message_id

    def _remember_later(
        self, sends: Sequence[tuple[int, int, str, common_pb2.SendResponse | CimError]]
    ) -> None:
        """Remembers the results of (owner, sender, client_msg_id, outcome)
        without making the sender wait: a retry that comes first finds the
        claim and sends again under the same message id, which the inboxes
        already hold (no second message)."""
        results = [
            (owner, sender, client_msg_id, outcome.SerializeToString())
            for owner, sender, client_msg_id, outcome in sends
            if isinstance(outcome, common_pb2.SendResponse) and outcome.message_id
        ]
        if not results:
            return
        self._unremembered.extend(results)
        if self._remembering is None:
            self._remembering = asyncio.create_task(self._remember_soon())

    async def aclose(self) -> None:
        """Writes the results still waiting to be remembered."""
        if self._remembering is not None:
            await self._remembering

    async def _remember_soon(self) -> None:
        await asyncio.sleep(REMEMBER_DELAY)
        results, self._unremembered = self._unremembered, []
        self._remembering = None
        try:
            await self._store.finish_sends(results, self._config.send_dedup_window)
        except CimError as exc:
            # The claims stay: a retry then sends again under the same
            # message id, which its receivers' inboxes already hold.
            log.warning("could not remember %d sends' results: %s", len(results), exc.message)

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
        claim = await self._group_claim(sender_id, request.client_msg_id)
        if not isinstance(claim, str):
            if isinstance(claim, CimError):
                raise claim
            return claim
        outcome = await self._send_group(sender_id, sender_name, request, claim)
        if request.client_msg_id:
            self._remember_later([(sender_id, sender_id, request.client_msg_id, outcome)])
        return outcome

    async def _send_group(
        self,
        sender_id: int,
        sender_name: str,
        request: common_pb2.SendGroupRequest,
        message_id: str,
    ) -> common_pb2.SendResponse:
        message = self._new_message(
            sender_id, sender_name, request.text, request.client_msg_id, message_id
        )
        message.kind = common_pb2.MESSAGE_KIND_GROUP
        message.group_id = validation.check_group(request.group_id)
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
            appended = await self._append(some, message)
            by_server: dict[str, list[chat_internal_pb2.Delivery]] = defaultdict(list)
            for receiver, stored in zip(some, appended, strict=True):
                if stored.session is None or not stored.session.connected:
                    continue  # gone since the walk: the inbox keeps it for them
                copy = common_pb2.ChatMessage()
                copy.CopyFrom(message)
                copy.seq = stored.seq
                by_server[stored.session.server_id].append(
                    chat_internal_pb2.Delivery(receiver_id=receiver, message=copy)
                )
            pushes.append(
                asyncio.ensure_future(self._servers.deliver_many(list(by_server.items())))
            )
        await asyncio.gather(*pushes)
        return common_pb2.SendResponse(
            message_id=message.message_id,
            status=DELIVERED,
            recipients=len(receivers),
            server_time_ms=message.server_time_ms,
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
        messages = []
        for entry in page.entries:
            message = common_pb2.ChatMessage.FromString(entry.payload)
            message.seq = entry.seq
            message.stored = True
            messages.append(message)
        return messages, page

    async def ack(self, acks: Sequence[tuple[int, int]]) -> None:
        """Trims each (user id, seq): the user holds everything up to seq."""
        acks = [(user_id, seq) for user_id, seq in acks if seq > 0]
        if acks:
            await self._store.ack_inbox(acks)

    # --- batches from chat servers ----------------------------------------
    async def submit_batch(
        self, items: Sequence[route_internal_pb2.SubmittedMessage]
    ) -> list[route_internal_pb2.SubmitResult]:
        """Routes a batch in order: runs of private messages together, group
        messages one by one between them (so every sender's order holds)."""
        results: list[route_internal_pb2.SubmitResult] = []
        run: list[tuple[int, str, common_pb2.SendPrivateRequest]] = []

        async def flush() -> None:
            if run:
                results.extend(_result(o) for o in await self._route_privates(run))
                run.clear()

        for item in items:
            target = item.WhichOneof("target")
            if target == "private":
                run.append((item.sender_id, item.sender_name, item.private))
                continue
            await flush()
            try:
                if target != "group":
                    raise InvalidArgument("message has neither a private nor a group target")
                outcome: common_pb2.SendResponse | CimError = await self.send_group(
                    item.sender_id, item.sender_name, item.group
                )
            except CimError as exc:
                outcome = exc
            results.append(_result(outcome))
        await flush()
        return results


def _fail_all(
    messages: list[common_pb2.ChatMessage | None],
    outcomes: list[common_pb2.SendResponse | CimError],
    exc: CimError,
) -> None:
    for index, message in enumerate(messages):
        if message is not None:
            outcomes[index] = exc
            messages[index] = None


def _result(outcome: common_pb2.SendResponse | CimError) -> route_internal_pb2.SubmitResult:
    if isinstance(outcome, CimError):
        return route_internal_pb2.SubmitResult(
            error=common_pb2.ItemError(code=outcome.code.value[0], message=outcome.message)
        )
    return route_internal_pb2.SubmitResult(ok=outcome)


def _inbox_item(message: common_pb2.ChatMessage, *, claim: bool) -> InboxItem:
    """A private message for its receiver's inbox; with ``claim``, the append
    also claims its send (when it has a client_msg_id)."""
    send = (message.sender_id, message.client_msg_id) if claim and message.client_msg_id else None
    return InboxItem(message.receiver_id, message.message_id, message.SerializeToString(), send)
