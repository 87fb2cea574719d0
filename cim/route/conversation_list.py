"""A user's view of their conversations on the route: the list (most recent
first, with unread counts and how far the other side has read), read
cursors, and read receipts.

The list itself is kept current by the send path at no extra round trip
(``Store.append_pointed``, ``append_pointers``: each member's pointer moves
the conversation up, the sender's side raises their read cursor to what they
sent); this module reads it. A mark raises the reader's cursor (per user:
all devices share it) and their receipt in the conversation; the other user
of a private conversation is pushed a ``ReadReceipt`` on their stream (never
stored); in a group nobody is pushed anything, members ask
(:meth:`ConversationList.receipts`). See docs/design/conversations.md,
"Issue 13".
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cim.core import conversations
from cim.errors import CimError, InvalidArgument, PermissionDenied
from cim.metrics.route import RouteMetrics
from cim.proto.internal.v1 import chat_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2
from cim.route.servers import ServerDirectory
from cim.store.base import ConversationLine, ReadMark, ReadMarked, Store

log = logging.getLogger(__name__)

LIST_PAGE = 20
LIST_MAX_PAGE = 100
RECEIPTS_PAGE = 100
RECEIPTS_MAX_PAGE = 1_000
# A list line's preview of the last message, in characters.
PREVIEW_CHARS = 100
# User names a route keeps (accounts are never renamed): then it starts over.
NAMES_CACHED = 100_000


@dataclass(frozen=True)
class Mark:
    """A user's read mark, checked: where the store writes it."""

    user_id: int
    conversation: conversations.ConversationId
    position: int

    def store_mark(self) -> ReadMark:
        cid = self.conversation
        if cid.private:
            peer = conversations.peer(cid, self.user_id)
            # A self-conversation has nobody else to tell.
            notify = peer if peer != self.user_id else 0
            return ReadMark(self.user_id, cid.cid, self.position, notify_id=notify)
        return ReadMark(self.user_id, cid.cid, self.position, group=True)


def check_mark(user_id: int, conversation_id: str, position: int) -> Mark:
    """A mark as a client sends it: a valid id, a position of at least 1, and
    for a private conversation one of its two users (a group's membership is
    the store's check). INVALID_ARGUMENT or PERMISSION_DENIED saying why."""
    conversation = conversations.parse(conversation_id)
    if position <= 0:
        raise InvalidArgument(f"position must be at least 1 (got {position})")
    if conversation.private:
        conversations.peer(conversation, user_id)  # members only
    return Mark(user_id, conversation, position)


def _not_a_member(conversation_id: str) -> PermissionDenied:
    return PermissionDenied(f"you are not a member of conversation {conversation_id}")


def preview(text: str) -> str:
    """The start of a message's text for a list line."""
    if len(text) <= PREVIEW_CHARS:
        return text
    return text[: PREVIEW_CHARS - 1] + "\u2026"


def unread(head: int, read: int, joined: int) -> int:
    """Messages after the read cursor; in a group, from the user's joining on
    (its event, at ``joined``, counts: it is news to them)."""
    return max(0, head - max(read, joined - 1 if joined else 0))


def summary(
    user_id: int, line: ConversationLine, names: Mapping[int, str]
) -> route_pb2.ConversationSummary:
    """One line of ListConversations (``names``: user id -> name, for the
    title of a private conversation)."""
    out = route_pb2.ConversationSummary(
        conversation_id=line.conversation_id,
        head_position=line.head,
        read_position=line.read,
        unread=unread(line.head, line.read, line.joined),
        last_activity_ms=line.activity_ms,
    )
    if line.conversation_id.startswith(conversations.PRIVATE_PREFIX):
        out.peer_id = conversations.peer(conversations.parse(line.conversation_id), user_id)
        out.title = names.get(out.peer_id, "")
        out.peer_read_position = line.peer_read
    else:
        out.title = line.group_name
    if line.last is not None:
        message = common_pb2.ChatMessage.FromString(line.last)
        out.last_message.CopyFrom(
            route_pb2.LastMessage(
                message_id=message.message_id,
                sender_id=message.sender_id,
                sender_name=message.sender_name,
                server_time_ms=message.server_time_ms,
                kind=message.kind,
                preview=preview(message.text),
                position=line.head,
            )
        )
    return out


def _page_size(limit: int, default: int, ceiling: int) -> int:
    if limit < 0 or limit > ceiling:
        raise InvalidArgument(f"limit must be between 1 and {ceiling} (0: {default}); got {limit}")
    return limit or default


class ConversationList:
    def __init__(
        self, store: Store, servers: ServerDirectory, metrics: RouteMetrics | None = None
    ) -> None:
        self._store = store
        self._servers = servers
        self._metrics = metrics or RouteMetrics()
        # user id -> name: names never change, so a page reads only the new ones.
        self._names: dict[int, str] = {}

    async def page(
        self, user_id: int, before_ms: int, before_id: str, limit: int
    ) -> route_pb2.ListConversationsResponse:
        """A page of the user's conversations, most recent first."""
        limit = _page_size(limit, LIST_PAGE, LIST_MAX_PAGE)
        if before_id:
            conversations.parse(before_id)  # a cursor is a line's id: refused precisely
        found = await self._store.list_conversations(user_id, before_ms, before_id, limit)
        peers = [
            conversations.peer(conversations.parse(line.conversation_id), user_id)
            for line in found.lines
            if line.conversation_id.startswith(conversations.PRIVATE_PREFIX)
        ]
        names = await self._names_of(peers)
        return route_pb2.ListConversationsResponse(
            conversations=[summary(user_id, line, names) for line in found.lines],
            more=found.more,
        )

    async def _names_of(self, user_ids: Sequence[int]) -> Mapping[int, str]:
        """Their names, from the cache or (those it lacks) one store read."""
        missing = [uid for uid in dict.fromkeys(user_ids) if uid not in self._names]
        if missing:
            accounts = await self._store.get_accounts(missing)
            if len(self._names) + len(accounts) > NAMES_CACHED:
                self._names.clear()
            self._names.update({uid: account.user_name for uid, account in accounts.items()})
        return self._names

    async def mark(
        self, user_id: int, conversation_id: str, position: int
    ) -> route_pb2.MarkReadResponse:
        """One mark (Route.MarkRead): refused with the precise error."""
        mark = check_mark(user_id, conversation_id, position)
        (done,) = await self._store.mark_read([mark.store_mark()])
        if done.refused:
            self._metrics.read_marks(PermissionDenied(""))
            raise _not_a_member(mark.conversation.cid)
        self._metrics.read_marks(None)
        await self._tell([(mark, done)])
        return route_pb2.MarkReadResponse(
            read_position=done.position,
            head_position=done.head,
            unread=unread(done.head, done.position, done.joined),
        )

    async def mark_batch(self, reads: Sequence[tuple[int, str, int]]) -> None:
        """Marks clients sent on their streams, (user id, conversation id,
        position) each: one store call for the batch; a mark the user may not
        make is dropped alone (and counted)."""
        marks: list[Mark] = []
        for user_id, conversation_id, position in reads:
            try:
                marks.append(check_mark(user_id, conversation_id, position))
            except CimError as exc:
                self._metrics.read_marks(exc)
                log.debug("read mark of user %s dropped: %s", user_id, exc.message)
        if not marks:
            return
        stored = await self._store.mark_read([mark.store_mark() for mark in marks])
        told = []
        for mark, done in zip(marks, stored, strict=True):
            if done.refused:
                self._metrics.read_marks(PermissionDenied(""))
                log.debug(
                    "read mark of user %s dropped: not in %s", mark.user_id, mark.conversation.cid
                )
                continue
            self._metrics.read_marks(None)
            told.append((mark, done))
        await self._tell(told)

    async def _tell(self, marked: Sequence[tuple[Mark, ReadMarked]]) -> None:
        """Pushes a receipt to the other user of each private conversation
        whose receipt moved, if they have a stream (one parcel per chat server)."""
        by_server: dict[str, list[chat_internal_pb2.ReadNote]] = defaultdict(list)
        for mark, done in marked:
            session = done.session
            if done.receipt and session is not None and session.connected:
                receipt = chat_pb2.ReadReceipt(
                    conversation_id=mark.conversation.cid,
                    user_id=mark.user_id,
                    position=done.receipt,
                )
                by_server[session.server_id].append(
                    chat_internal_pb2.ReadNote(receiver_id=session.user_id, receipt=receipt)
                )
        if by_server:
            await self._servers.push_reads(list(by_server.items()))

    async def receipts(
        self, user_id: int, conversation_id: str, cursor: int, min_position: int, limit: int
    ) -> route_pb2.GetReadReceiptsResponse:
        """A page of who has read the conversation up to where (members only)."""
        count = _page_size(limit, RECEIPTS_PAGE, RECEIPTS_MAX_PAGE)
        conversation = conversations.parse(conversation_id)
        if conversation.private:
            conversations.peer(conversation, user_id)  # members only
        page = await self._store.read_receipts(
            conversation.cid, user_id, not conversation.private, cursor, min_position, count
        )
        if page.refused:
            raise _not_a_member(conversation.cid)
        return route_pb2.GetReadReceiptsResponse(
            readers=[
                route_pb2.ReadPosition(user_id=uid, position=position)
                for uid, position in page.readers
            ],
            next_cursor=page.next_cursor,
            head_position=page.head,
        )
