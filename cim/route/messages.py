"""Routing of messages: private and group sends, offline storage and its push.

Both send paths end here: the unary Route RPCs and the batches chat servers
submit for messages sent on Chat streams.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from cim.config import RouteConfig
from cim.core import validation
from cim.core.ids import MessageIdGenerator, new_trace_id
from cim.errors import CimError, InvalidArgument, NotFound, Unavailable
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2
from cim.route.servers import ServerDirectory
from cim.route.sessions import SessionManager
from cim.store.base import OfflineEntry, Store

log = logging.getLogger(__name__)

# Accounts are never deleted: a set of known ids this big is cheap and sound.
KNOWN_USERS_LIMIT = 1_000_000
DELIVERED = common_pb2.DELIVERY_STATUS_DELIVERED
# What a retried send gets instead of being routed again (None: route it).
Replay = route_pb2.SendResponse | CimError | None
STORED = common_pb2.DELIVERY_STATUS_STORED


class MessageRouter:
    def __init__(
        self,
        config: RouteConfig,
        store: Store,
        servers: ServerDirectory,
        sessions: SessionManager,
    ) -> None:
        self._config = config
        self._store = store
        self._servers = servers
        self._sessions = sessions
        self._ids = MessageIdGenerator()
        # One offline push per user at a time, so a quick reconnect cannot push
        # twice; a push asked for meanwhile reruns on the newest server.
        self._pushing: set[int] = set()
        self._push_again: dict[int, str] = {}
        self._background: set[asyncio.Task[int]] = set()
        self._known_users: set[int] = set()

    def _new_message(
        self, sender_id: int, sender_name: str, text: str, client_msg_id: str
    ) -> common_pb2.ChatMessage:
        validation.check_text(text, self._config.max_text_bytes)
        validation.check_client_msg_id(client_msg_id)
        return common_pb2.ChatMessage(
            message_id=self._ids.next(),
            sender_id=sender_id,
            sender_name=sender_name,
            text=text,
            server_time_ms=time.time_ns() // 1_000_000,
            trace_id=new_trace_id(),
            client_msg_id=client_msg_id,
        )

    # --- private ----------------------------------------------------------
    async def send_private(
        self, sender_id: int, sender_name: str, request: route_pb2.SendPrivateRequest
    ) -> route_pb2.SendResponse:
        (outcome,) = await self._route_privates([(sender_id, sender_name, request)])
        if isinstance(outcome, CimError):
            raise outcome
        return outcome

    async def _route_privates(
        self, batch: Sequence[tuple[int, str, route_pb2.SendPrivateRequest]]
    ) -> list[route_pb2.SendResponse | CimError]:
        """Routes private messages together: one store round trip for all their
        receivers' routes, deliveries queued in order (so each sender's order
        holds), then offline storage for whatever did not reach a stream."""
        outcomes: list[route_pb2.SendResponse | CimError] = []
        messages: list[common_pb2.ChatMessage | None] = []
        replays = await self._replays(
            [(sender_id, request.client_msg_id) for sender_id, _, request in batch]
        )
        for (sender_id, sender_name, request), replay in zip(batch, replays, strict=True):
            if replay is not None:  # a retry of a send already made (or being made)
                outcomes.append(replay)
                messages.append(None)
                continue
            try:
                validation.check_user_id(request.receiver_id, "receiver id")
                message = self._new_message(
                    sender_id, sender_name, request.text, request.client_msg_id
                )
            except CimError as exc:
                outcomes.append(exc)
                messages.append(None)
                continue
            message.kind = common_pb2.MESSAGE_KIND_PRIVATE
            message.receiver_id = request.receiver_id
            outcomes.append(route_pb2.SendResponse())
            messages.append(message)
        try:
            await self._route_messages(messages, outcomes)
        finally:
            await self._remember(batch, replays, outcomes)
        return outcomes

    async def _route_messages(
        self,
        messages: list[common_pb2.ChatMessage | None],
        outcomes: list[route_pb2.SendResponse | CimError],
    ) -> None:
        receivers = [m.receiver_id for m in messages if m is not None]
        if not receivers:
            return
        missing, sessions = await asyncio.gather(
            self._unknown_users(receivers), self._store.get_sessions(receivers)
        )
        pending: list[tuple[int, str, list[chat_pb2.Delivery]]] = []
        for index, queued in enumerate(messages):
            if queued is None:
                continue
            if queued.receiver_id in missing:
                outcomes[index] = NotFound(f"no user with id {queued.receiver_id}")
                messages[index] = None
                continue
            session = sessions.get(queued.receiver_id)
            if session is not None and session.connected:
                parcel = [chat_pb2.Delivery(receiver_id=queued.receiver_id, message=queued)]
                pending.append((index, session.server_id, parcel))
        flags = await self._servers.deliver_many([(server, p) for _, server, p in pending])
        delivered = {index for (index, _, _), ok in zip(pending, flags, strict=True) if ok[0]}
        for index, routed in enumerate(messages):
            if routed is None:
                continue
            reached = index in delivered
            if not reached:
                try:
                    await self._store_offline(routed.receiver_id, routed)
                except CimError as exc:
                    outcomes[index] = exc
                    continue
            outcomes[index] = route_pb2.SendResponse(
                message_id=routed.message_id,
                status=DELIVERED if reached else STORED,
                recipients=1 if reached else 0,
                server_time_ms=routed.server_time_ms,
            )

    # --- idempotent sends ---------------------------------------------------
    async def _replays(self, sends: Sequence[tuple[int, str]]) -> list[Replay]:
        """For each (sender, client_msg_id): None if it may go ahead (claimed
        now, or no id given), else what a retry of it gets."""
        window = self._config.send_dedup_window

        async def check(
            sender_id: int, client_msg_id: str
        ) -> route_pb2.SendResponse | CimError | None:
            if not client_msg_id:
                return None
            try:
                validation.check_client_msg_id(client_msg_id)
                found = await self._store.claim_send(sender_id, client_msg_id, window)
            except CimError as exc:
                return exc
            if found is None:
                return None
            if not found:
                return Unavailable("a send with this client_msg_id is still in progress: retry")
            return route_pb2.SendResponse.FromString(found)

        return list(await asyncio.gather(*(check(s, c) for s, c in sends)))

    async def _remember(
        self,
        batch: Sequence[tuple[int, str, Any]],
        replays: Sequence[Replay],
        outcomes: Sequence[route_pb2.SendResponse | CimError],
    ) -> None:
        """Stores the result of each first attempt that had an id (or frees the
        id when the attempt failed, so that a retry can go ahead)."""
        window = self._config.send_dedup_window
        work = []
        for (sender_id, _, request), replay, outcome in zip(batch, replays, outcomes, strict=True):
            client_msg_id = request.client_msg_id
            if not client_msg_id or replay is not None:
                continue
            if isinstance(outcome, route_pb2.SendResponse) and outcome.message_id:
                work.append(
                    self._store.finish_send(
                        sender_id, client_msg_id, outcome.SerializeToString(), window
                    )
                )
            else:
                work.append(self._store.forget_send(sender_id, client_msg_id))
        if work:
            results = await asyncio.gather(*work, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("could not remember a send's result: %s", result)

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
        self, sender_id: int, sender_name: str, request: route_pb2.SendGroupRequest
    ) -> route_pb2.SendResponse:
        batch = [(sender_id, sender_name, request)]
        (replay,) = await self._replays([(sender_id, request.client_msg_id)])
        if isinstance(replay, CimError):
            raise replay
        if replay is not None:
            return replay
        outcome: route_pb2.SendResponse | CimError = route_pb2.SendResponse()
        try:
            outcome = await self._send_group(sender_id, sender_name, request)
            return outcome
        except CimError as exc:
            outcome = exc
            raise
        finally:
            await self._remember(batch, [None], [outcome])

    async def _send_group(
        self, sender_id: int, sender_name: str, request: route_pb2.SendGroupRequest
    ) -> route_pb2.SendResponse:
        message = self._new_message(sender_id, sender_name, request.text, request.client_msg_id)
        message.kind = common_pb2.MESSAGE_KIND_GROUP
        message.group_id = validation.check_group(request.group_id)
        by_server: dict[str, list[int]] = defaultdict(list)
        async for session in self._store.online_sessions():
            if session.user_id != sender_id:
                by_server[session.server_id].append(session.user_id)
        # One Deliver per chat server, all servers at once.
        outcomes = await asyncio.gather(
            *(
                self._servers.deliver(
                    server_id,
                    [chat_pb2.Delivery(receiver_id=uid, message=message) for uid in user_ids],
                )
                for server_id, user_ids in by_server.items()
            )
        )
        reached = 0
        for user_ids, flags in zip(by_server.values(), outcomes, strict=True):
            for user_id, delivered in zip(user_ids, flags, strict=True):
                if delivered:
                    reached += 1
                else:  # went offline while we sent: keep it for them
                    await self._store_offline(user_id, message)
        return route_pb2.SendResponse(
            message_id=message.message_id,
            status=DELIVERED,
            recipients=reached,
            server_time_ms=message.server_time_ms,
        )

    # --- offline ----------------------------------------------------------
    async def _store_offline(self, user_id: int, message: common_pb2.ChatMessage) -> None:
        stored = common_pb2.ChatMessage()
        stored.CopyFrom(message)
        stored.stored = True
        stored.receiver_id = message.receiver_id
        await self._store.store_offline(
            user_id, OfflineEntry(message.message_id, stored.SerializeToString())
        )
        # The receiver may have connected between our look-up and the store:
        # then nobody would push this until their next login.
        session = await self._store.get_session(user_id)
        if session is not None and session.connected:
            self.schedule_offline_push(user_id, session.server_id)

    def schedule_offline_push(self, user_id: int, server_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.push_offline(user_id, server_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def push_offline(self, user_id: int, server_id: str) -> int:
        """Pushes the user's stored messages to their stream, oldest first, in
        batches; each is removed only once the server says it reached the stream."""
        if user_id in self._pushing:
            self._push_again[user_id] = server_id
            return 0
        self._pushing.add(user_id)
        pushed = 0
        try:
            while True:
                pushed += await self._push_pass(user_id, server_id)
                if user_id not in self._push_again:
                    break
                server_id = self._push_again.pop(user_id)
        except CimError as exc:
            log.warning("offline push to user %s failed: %s", user_id, exc.message)
        finally:
            self._pushing.discard(user_id)
            self._push_again.pop(user_id, None)
        if pushed:
            log.info("pushed %d stored messages to user %s", pushed, user_id)
        return pushed

    async def _push_pass(self, user_id: int, server_id: str) -> int:
        pushed = 0
        while True:
            entries = await self._store.peek_offline(user_id, self._config.offline_batch)
            if not entries:
                return pushed
            parcel = [
                chat_pb2.Delivery(
                    receiver_id=user_id,
                    message=common_pb2.ChatMessage.FromString(entry.payload),
                )
                for entry in entries
            ]
            flags = await self._servers.deliver(server_id, parcel)
            done = [entry.entry_id for entry, ok in zip(entries, flags, strict=True) if ok]
            if done:
                await self._store.remove_offline(user_id, done)
                pushed += len(done)
            if len(done) < len(entries):
                return pushed  # the stream went away; the rest waits for the next login

    async def fetch_offline(
        self, user_id: int, limit: int
    ) -> tuple[list[common_pb2.ChatMessage], bool]:
        limit = limit or self._config.offline_batch
        if limit < 0 or limit > 1000:
            raise InvalidArgument("limit must be between 1 and 1000 (0: default)")
        entries = await self._store.peek_offline(user_id, limit + 1)
        taken = entries[:limit]
        if taken:
            await self._store.remove_offline(user_id, [entry.entry_id for entry in taken])
        messages = [common_pb2.ChatMessage.FromString(entry.payload) for entry in taken]
        return messages, len(entries) > limit

    # --- batches from chat servers ----------------------------------------
    async def submit_batch(
        self, items: Sequence[route_pb2.SubmittedMessage]
    ) -> list[route_pb2.SubmitResult]:
        """Routes a batch in order: runs of private messages together, group
        messages one by one between them (so every sender's order holds)."""
        results: list[route_pb2.SubmitResult] = []
        run: list[tuple[int, str, route_pb2.SendPrivateRequest]] = []

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
                outcome: route_pb2.SendResponse | CimError = await self.send_group(
                    item.sender_id, item.sender_name, item.group
                )
            except CimError as exc:
                outcome = exc
            results.append(_result(outcome))
        await flush()
        return results

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _result(outcome: route_pb2.SendResponse | CimError) -> route_pb2.SubmitResult:
    if isinstance(outcome, CimError):
        return route_pb2.SubmitResult(
            error=route_pb2.ItemError(code=outcome.code.value[0], message=outcome.message)
        )
    return route_pb2.SubmitResult(ok=outcome)
