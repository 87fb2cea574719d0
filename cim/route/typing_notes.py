"""Typing notes on the route: who may type where, and who hears of it.

A batch of notes from a chat server (``RouteInternal.Typing``, past the
chat server's rate limits) is checked and fanned out together, and nothing
is written:

1. Each note's conversation. A private one names its two users: the sender
   must be one of them, and the other hears it (no store read). A group's
   members come from the route's member cache (:class:`GroupMemberCache`,
   which the message path fills too) at the group's current version: one
   pipelined read of the versions of the batch's groups, plus a read of the
   record of each group whose members are not held at that version. A
   sender who is not a member is refused; a group with more members than
   ``typing_max_members`` gets no notes (the session reads would cost more
   than a note is worth).
2. The receivers, every participant but the sender: their sessions in one
   pipelined read; those with a live stream get the note.
3. One ``TypingNote`` per note and chat server, listing its receivers there,
   in the next ``DeliverStream`` batch to that server
   (:meth:`ServerDirectory.push_typing`).

So a batch costs one store round trip with private notes only, two with
groups (three when a group's membership moved since the route last saw it),
whatever its size.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from cim.config import RouteConfig
from cim.core import conversations, validation
from cim.errors import CimError, FailedPrecondition, PermissionDenied
from cim.metrics.route import RouteMetrics
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.proto.v1 import chat_pb2
from cim.route.member_cache import GroupMemberCache, Members
from cim.route.servers import ServerDirectory
from cim.store.base import Store

log = logging.getLogger(__name__)

# What became of a note (metric labels: a fixed set).
FORWARDED = "forwarded"
NOBODY_ONLINE = "nobody_online"
TOO_MANY_MEMBERS = "too_many_members"
INVALID = "invalid"
NOT_MEMBER = "not_member"
DELETED_GROUP = "deleted_group"
OUTCOMES = (FORWARDED, NOBODY_ONLINE, TOO_MANY_MEMBERS, INVALID, NOT_MEMBER, DELETED_GROUP)


@dataclass
class _Note:
    """One note on its way through a batch: pending until ``outcome`` is set."""

    note: route_internal_pb2.SubmittedTyping
    group: str = ""
    receivers: Members = ()
    refusal: CimError | None = None
    outcome: str = ""
    # Chat server id -> the receivers with a stream there.
    servers: dict[str, list[int]] = field(default_factory=dict)

    def refuse(self, outcome: str, error: CimError) -> None:
        self.outcome, self.refusal = outcome, error


@dataclass(frozen=True)
class _GroupView:
    members: Members | None  # None: no such group
    deleted: bool = False


class TypingRouter:
    def __init__(
        self,
        config: RouteConfig,
        store: Store,
        servers: ServerDirectory,
        members: GroupMemberCache,
        metrics: RouteMetrics | None = None,
    ) -> None:
        self._max_members = config.typing_max_members
        self._store = store
        self._servers = servers
        self._members = members
        self._metrics = metrics or RouteMetrics()

    async def forward(
        self, notes: Sequence[route_internal_pb2.SubmittedTyping]
    ) -> list[CimError | None]:
        """Checks and forwards a batch of notes; per note, in order, the error
        that refused it or None (forwarded, or dropped quietly). Raises
        Unavailable when the store does not answer."""
        batch = [self._check(note) for note in notes]
        groups = sorted({entry.group for entry in batch if entry.group and not entry.outcome})
        if groups:
            views = await self._groups(groups)
            for entry in batch:
                if entry.group and not entry.outcome:
                    self._in_group(entry, views[entry.group])
        await self._find_streams([entry for entry in batch if not entry.outcome])
        by_server: dict[str, list[chat_internal_pb2.TypingNote]] = defaultdict(list)
        for entry in batch:
            if entry.outcome:
                continue
            if not entry.servers:
                entry.outcome = NOBODY_ONLINE
                continue
            entry.outcome = FORWARDED
            note = entry.note
            typing = chat_pb2.Typing(
                conversation_id=note.conversation_id,
                user_id=note.user_id,
                user_name=note.user_name,
                stopped=note.stopped,
            )
            for server_id, receivers in entry.servers.items():
                by_server[server_id].append(
                    chat_internal_pb2.TypingNote(receiver_ids=receivers, typing=typing)
                )
        reached = await self._servers.push_typing(list(by_server.items())) if by_server else 0
        self._metrics.typing_receivers.inc(reached)
        for entry in batch:
            self._metrics.typing_note(entry.outcome)
        return [entry.refusal for entry in batch]

    def _check(self, note: route_internal_pb2.SubmittedTyping) -> _Note:
        """What the note alone says: a valid sender and conversation, and for
        a private one, its receiver."""
        entry = _Note(note)
        try:
            sender = validation.check_user_id(note.user_id, "user id")
            conversation = conversations.parse(note.conversation_id)
        except CimError as exc:
            entry.refuse(INVALID, exc)
            return entry
        if conversation.users is None:
            entry.group = conversation.cid
            return entry
        try:
            peer = conversations.peer(conversation, sender)
        except CimError as exc:
            entry.refuse(NOT_MEMBER, exc)
            return entry
        entry.receivers = (peer,) if peer != sender else ()
        return entry

    async def _groups(self, group_ids: Sequence[str]) -> dict[str, _GroupView]:
        """The members of each group at its current version: from the cache,
        else from its record (then cached)."""
        versions = await self._store.group_versions(group_ids)
        views: dict[str, _GroupView] = {}
        stale = []
        for group_id, version in zip(group_ids, versions, strict=True):
            held = self._members.at(group_id, version) if version else None
            if not version:
                views[group_id] = _GroupView(None)
            elif held is not None:
                views[group_id] = _GroupView(held)
            else:
                stale.append(group_id)
        records = await asyncio.gather(*(self._store.read_group(gid) for gid in stale))
        for group_id, record in zip(stale, records, strict=True):
            if record is None:
                views[group_id] = _GroupView(None)
            elif record.deleted:
                views[group_id] = _GroupView((), deleted=True)
            else:
                members = tuple(record.members)
                self._members.put(group_id, record.version, members)
                views[group_id] = _GroupView(members)
        return views

    def _in_group(self, entry: _Note, view: _GroupView) -> None:
        sender, group_id = entry.note.user_id, entry.group
        if view.deleted:
            entry.refuse(DELETED_GROUP, FailedPrecondition(f"group {group_id} was deleted"))
        elif view.members is None or sender not in view.members:
            entry.refuse(NOT_MEMBER, PermissionDenied(f"you are not a member of group {group_id}"))
        elif len(view.members) > self._max_members:
            entry.outcome = TOO_MANY_MEMBERS
        else:
            entry.receivers = tuple(uid for uid in view.members if uid != sender)

    async def _find_streams(self, batch: Sequence[_Note]) -> None:
        """Reads the receivers' sessions (one pipeline) and keeps, per note,
        those with a live stream, by chat server."""
        receivers = sorted({uid for entry in batch for uid in entry.receivers})
        if not receivers:
            return
        sessions = dict(zip(receivers, await self._store.get_sessions(receivers), strict=True))
        for entry in batch:
            for uid in entry.receivers:
                session = sessions[uid]
                if session is not None and session.connected:
                    entry.servers.setdefault(session.server_id, []).append(uid)
