"""The in-memory store: complete (expiry included), for embedded mode and tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from itertools import count

from cim.core.groups import Change, Group, Member
from cim.store.base import (
    GROUP_DELETED,
    NOT_A_MEMBER,
    Account,
    Appended,
    ConversationAppended,
    ConversationItem,
    ConversationLine,
    ConversationPage,
    HistoryEntry,
    HistoryPage,
    InboxEntry,
    InboxItem,
    InboxPage,
    OwnSend,
    PointedAppended,
    PointedItem,
    PointerItem,
    ReadMark,
    ReadMarked,
    ReceiptPage,
    Retention,
    SendClaim,
    SendKey,
    SessionRecord,
    Unfinished,
    append_then_point,
)

# An entry of a user's sequence: (message id, payload, appended at, pointer).
# A pointer entry ((conversation id, position)) has an empty payload: its body
# is in the conversation's log.
_Entry = tuple[str, bytes, float, tuple[str, int] | None]


@dataclass
class _Inbox:
    head_seq: int = 0
    dropped_through: int = 0
    # The sync cursor: the highest seq acked.
    acked: int = 0
    # seq -> entry, oldest first.
    entries: dict[int, _Entry] = field(default_factory=dict)
    # message id -> (seq, appended at): recent full-copy appends, for idempotent retries.
    recent_ids: dict[str, tuple[int, float]] = field(default_factory=dict)
    # message id -> seq of the pointers kept (idempotent while kept).
    pointer_ids: dict[str, int] = field(default_factory=dict)

    def _drop(self, seq: int) -> None:
        message_id, _, _, pointer = self.entries.pop(seq)
        if pointer is not None:
            self.pointer_ids.pop(message_id, None)

    def trim(self, retention: Retention, now: float) -> None:
        oldest_kept = now - retention.max_age
        while self.entries:
            seq, (_, _, appended_at, _) = next(iter(self.entries.items()))
            if len(self.entries) <= retention.max_messages and appended_at >= oldest_kept:
                break
            self._drop(seq)
            self.dropped_through = seq
        self.trim_acked(retention.id_window, now)
        forget_before = now - retention.id_window
        while self.recent_ids:
            message_id, (_, appended_at) = next(iter(self.recent_ids.items()))
            if appended_at >= forget_before:
                break
            del self.recent_ids[message_id]

    def trim_acked(self, id_window: float, now: float) -> None:
        """Drops the acked entries: full copies at once, pointers once older
        than the id window (a retried send finds its pointer until then)."""
        while self.entries:
            seq, (_, _, appended_at, pointer) = next(iter(self.entries.items()))
            if seq > self.acked or (pointer is not None and appended_at >= now - id_window):
                break
            self._drop(seq)


@dataclass
class _Conversation:
    head: int = 0
    dropped_through: int = 0
    # position -> (message id, payload, appended at), oldest first.
    log: dict[int, tuple[str, bytes, float]] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    # message id -> appended at: fan-outs not confirmed yet.
    pending: dict[str, float] = field(default_factory=dict)

    def unfinished(self, retention: Retention, now: float, but: str) -> tuple[Unfinished, ...]:
        """The fan-outs to do again (see Store.append_conversations)."""
        self.pending = {
            mid: at for mid, at in self.pending.items() if at >= now - retention.id_window
        }
        found = []
        for message_id, at in list(self.pending.items()):
            if at > now - retention.repair_after or message_id == but:
                continue
            position = self.positions.get(message_id)
            if position is None:  # retention dropped it
                del self.pending[message_id]
                continue
            found.append(Unfinished(message_id, position, self.log[position][1]))
            if len(found) == 10:
                break
        return tuple(found)

    def trim(self, retention: Retention, now: float) -> None:
        oldest_kept = now - retention.history_max_age
        while self.log:
            position, (message_id, _, appended_at) = next(iter(self.log.items()))
            if len(self.log) <= retention.history_max_messages and appended_at >= oldest_kept:
                break
            del self.log[position]
            del self.positions[message_id]
            self.dropped_through = position


class MemoryStore:
    """A ``Store`` in process memory. Expired sessions vanish lazily on read
    and in a sweep every time the session table is walked."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ids = count(1)
        self._accounts: dict[int, Account] = {}
        self._by_name: dict[str, int] = {}
        # name key (cim.core.names) -> the user id holding it
        self._by_name_key: dict[str, int] = {}
        self._sessions: dict[int, tuple[SessionRecord, float]] = {}
        # user id -> (session whose tokens are good, expires at): see set_token_session.
        self._token_sessions: dict[int, tuple[str, float]] = {}
        self._inboxes: dict[int, _Inbox] = {}
        self._conversations: dict[str, _Conversation] = {}
        # (owner user or conversation, sender, client_msg_id) -> (claim or result, expires at)
        self._sent: dict[tuple[int | str, int, str], tuple[SendClaim, float]] = {}
        self._conversations_since: float | None = None
        self._group_numbers = count(1)
        # group id -> its record (the conversation holds its log).
        self._groups: dict[str, Group] = {}
        # Deleted groups: when they are gone.
        self._group_expires: dict[str, float] = {}
        # user id -> (creations in the window, window ends at)
        self._creations: dict[int, tuple[int, float]] = {}
        # user id -> {group number: group id}
        self._user_groups: dict[int, dict[int, str]] = {}
        # user id -> {conversation id: last activity (ms)}: the conversation lists.
        self._lists: dict[int, dict[str, int]] = {}
        # user id -> {conversation id: read position}
        self._read: dict[int, dict[str, int]] = {}
        # conversation id -> {user id: read position} (receipts)
        self._receipts: dict[str, dict[int, int]] = {}

    async def create_account(
        self, user_name: str, password_hash: str, name_keys: Collection[str] = ()
    ) -> tuple[Account, bool]:
        existing = self._by_name.get(user_name)
        if existing is not None:
            return self._accounts[existing], False
        for key in sorted(name_keys):
            holder = self._by_name_key.get(key)
            if holder is not None:
                return self._accounts[holder], False
        account = Account(next(self._ids), user_name, password_hash)
        self._accounts[account.user_id] = account
        self._by_name[user_name] = account.user_id
        for key in name_keys:
            self._by_name_key[key] = account.user_id
        return account, True

    async def index_names(self, keys_of: Callable[[str], Collection[str]]) -> int:
        added = 0
        for user_id in sorted(self._accounts):
            for key in keys_of(self._accounts[user_id].user_name):
                if key not in self._by_name_key:
                    self._by_name_key[key] = user_id
                    added += 1
            if user_id % 1000 == 0:
                await asyncio.sleep(0)
        return added

    async def get_account(self, user_id: int) -> Account | None:
        return self._accounts.get(user_id)

    async def get_account_by_name(self, user_name: str) -> Account | None:
        user_id = self._by_name.get(user_name)
        return None if user_id is None else self._accounts[user_id]

    async def get_accounts(self, user_ids: Sequence[int]) -> dict[int, Account]:
        return {uid: self._accounts[uid] for uid in user_ids if uid in self._accounts}

    async def set_account_disabled(
        self, user_id: int, disabled: bool, reason: str = ""
    ) -> bool | None:
        account = self._accounts.get(user_id)
        if account is None:
            return None
        self._accounts[user_id] = replace(
            account, disabled=disabled, disabled_reason=reason if disabled else ""
        )
        return account.disabled

    def _live_session(self, user_id: int) -> SessionRecord | None:
        entry = self._sessions.get(user_id)
        if entry is None:
            return None
        record, expires_at = entry
        if expires_at <= self._clock():
            del self._sessions[user_id]
            return None
        return record

    async def claim_session(
        self,
        record: SessionRecord,
        ttl: float,
        replace_session_id: str | None = None,
        *,
        pending_only: bool = False,
    ) -> SessionRecord | None:
        current = self._live_session(record.user_id)
        if (
            current is not None
            and current.session_id != record.session_id  # else a retried claim: it succeeds
            and (current.session_id != replace_session_id or (pending_only and current.connected))
        ):
            return current
        self._sessions[record.user_id] = (record, self._clock() + ttl)
        return None

    async def get_session(self, user_id: int) -> SessionRecord | None:
        return self._live_session(user_id)

    async def get_sessions(self, user_ids: Sequence[int]) -> list[SessionRecord | None]:
        return [self._live_session(user_id) for user_id in user_ids]

    async def mark_connected(
        self, user_id: int, session_id: str, server_id: str, ttl: float
    ) -> SessionRecord | None:
        current = self._live_session(user_id)
        if current is None or current.session_id != session_id:
            return None
        record = current.connected_to(server_id)
        self._sessions[user_id] = (record, self._clock() + ttl)
        return record

    async def refresh_sessions(self, sessions: Sequence[tuple[int, str]], ttl: float) -> list[bool]:
        expires_at = self._clock() + ttl
        results = []
        for user_id, session_id in sessions:
            current = self._live_session(user_id)
            ok = current is not None and current.session_id == session_id
            if current is not None and ok:
                self._sessions[user_id] = (current, expires_at)
            results.append(ok)
        return results

    async def release_session(
        self, user_id: int, session_id: str, server_id: str | None = None
    ) -> bool:
        current = self._live_session(user_id)
        if current is None or current.session_id != session_id:
            return False
        if server_id is not None and current.server_id != server_id:
            return False
        del self._sessions[user_id]
        return True

    async def online_sessions(self) -> AsyncGenerator[SessionRecord, None]:
        # Walk a snapshot in slices, yielding to the loop between them, as a
        # SCAN would: a huge table never stalls other requests.
        user_ids = list(self._sessions)
        for start in range(0, len(user_ids), 1000):
            for user_id in user_ids[start : start + 1000]:
                record = self._live_session(user_id)
                if record is not None and record.connected:
                    yield record
            await asyncio.sleep(0)

    async def append_inbox(
        self, items: Sequence[InboxItem], retention: Retention
    ) -> list[Appended]:
        now = self._clock()
        appended = []
        for item in items:
            if item.send is not None:
                if item.send.owner_id != item.user_id:
                    raise ValueError("an append claims only sends its receiver owns")
                (earlier,) = await self.claim_sends(
                    [(item.send, item.message_id)], retention.id_window
                )
                if earlier is not None:
                    appended.append(Appended(0, None, earlier))
                    continue
            inbox = self._inboxes.setdefault(item.user_id, _Inbox())
            known = inbox.recent_ids.get(item.message_id)
            if known is not None:
                seq = known[0]
            else:
                inbox.head_seq += 1
                seq = inbox.head_seq
                inbox.entries[seq] = (item.message_id, item.payload, now, None)
                inbox.recent_ids[item.message_id] = (seq, now)
            inbox.trim(retention, now)
            appended.append(Appended(seq, self._live_session(item.user_id)))
        return appended

    async def read_inbox(
        self, user_id: int, after_seq: int, limit: int, retention: Retention
    ) -> InboxPage:
        inbox = self._inboxes.get(user_id)
        if inbox is None:
            return InboxPage([], 0, 0, more=False)
        inbox.trim(retention, self._clock())
        after = max(after_seq, inbox.acked)
        newer = [seq for seq in inbox.entries if seq > after]
        taken = newer[: max(limit, 0)]
        page: list[InboxEntry] = []
        while True:
            page = self._resolved(inbox, taken)
            # A page whose every pointer lost its body would leave a replay's
            # cursor where it was: read on past it instead (as Redis does).
            if page or len(newer) <= len(taken) or not taken:
                break
            newer = newer[len(taken) :]
            taken = newer[: max(limit, 0)]
        return InboxPage(page, inbox.head_seq, inbox.dropped_through, more=len(newer) > len(taken))

    def _resolved(self, inbox: _Inbox, seqs: Sequence[int]) -> list[InboxEntry]:
        """The entries at ``seqs``, pointers resolved; a pointer whose body the
        conversation's retention dropped is left out."""
        page = []
        for seq in seqs:
            message_id, payload, _, pointer = inbox.entries[seq]
            if pointer is None:
                page.append(InboxEntry(seq, payload))
                continue
            conversation = self._conversations.get(pointer[0])
            position = conversation.positions.get(message_id) if conversation else None
            if conversation is not None and position is not None:
                body = conversation.log[position][1]
                page.append(InboxEntry(seq, body, pointer[0], pointer[1]))
        return page

    async def ack_inbox(
        self, acks: Sequence[tuple[int, int]], retention: Retention | None = None
    ) -> None:
        now = self._clock()
        id_window = (retention or Retention()).id_window
        for user_id, seq in acks:
            inbox = self._inboxes.get(user_id)
            if inbox is None or seq > inbox.head_seq:
                continue
            inbox.acked = max(inbox.acked, seq)
            inbox.trim_acked(id_window, now)

    # --- conversations ----------------------------------------------------
    async def append_conversations(
        self, items: Sequence[ConversationItem], retention: Retention
    ) -> list[ConversationAppended]:
        now = self._clock()
        appended = []
        for item in items:
            group = self._group(item.conversation_id) if item.group_sender else None
            if item.group_sender:
                if group is None or item.group_sender not in group.members:
                    appended.append(ConversationAppended(0, refused=NOT_A_MEMBER))
                    continue
                if group.deleted:
                    appended.append(ConversationAppended(0, refused=GROUP_DELETED))
                    continue
            if item.send is not None:
                if item.send.conversation != item.conversation_id:
                    raise ValueError("an append claims only its own conversation's sends")
                (earlier,) = await self.claim_sends(
                    [(item.send, item.message_id)], retention.id_window
                )
                if earlier is not None:
                    appended.append(ConversationAppended(0, earlier))
                    continue
            conversation = self._conversations.setdefault(item.conversation_id, _Conversation())
            position = conversation.positions.get(item.message_id)
            if position is None:
                conversation.head += 1
                position = conversation.head
                conversation.log[position] = (item.message_id, item.payload, now)
                conversation.positions[item.message_id] = position
                conversation.pending[item.message_id] = now
            conversation.trim(retention, now)
            unfinished = conversation.unfinished(retention, now, item.message_id)
            if group is None:
                appended.append(ConversationAppended(position, unfinished=unfinished))
            else:
                members = (
                    None if group.version == item.known_version else tuple(sorted(group.members))
                )
                appended.append(
                    ConversationAppended(position, None, group.version, members, "", unfinished)
                )
        return appended

    def _touch(self, user_id: int, conversation_id: str) -> None:
        """The conversation to the top of the user's list."""
        self._lists.setdefault(user_id, {})[conversation_id] = time.time_ns() // 1_000_000

    def _raise_read(self, user_id: int, conversation_id: str, position: int) -> int:
        cursors = self._read.setdefault(user_id, {})
        cursors[conversation_id] = max(cursors.get(conversation_id, 0), position)
        return cursors[conversation_id]

    async def append_pointers(
        self,
        items: Sequence[PointerItem],
        retention: Retention,
        senders: Sequence[OwnSend] = (),
    ) -> list[Appended]:
        now = self._clock()
        appended = []
        for own in senders:
            self._touch(own.user_id, own.conversation_id)
            self._raise_read(own.user_id, own.conversation_id, own.position)
        for item in items:
            inbox = self._inboxes.setdefault(item.user_id, _Inbox())
            seq = inbox.pointer_ids.get(item.message_id)
            if seq is None and item.message_id in inbox.recent_ids:
                # A full copy of it (a retry that crossed the upgrade), as Redis finds it.
                recent_seq, at = inbox.recent_ids[item.message_id]
                seq = recent_seq if at >= now - retention.id_window else None
            if seq is None:
                inbox.head_seq += 1
                seq = inbox.head_seq
                where = (item.conversation_id, item.position)
                inbox.entries[seq] = (item.message_id, b"", now, where)
                inbox.pointer_ids[item.message_id] = seq
            inbox.trim(retention, now)
            self._touch(item.user_id, item.conversation_id)
            appended.append(Appended(seq, self._live_session(item.user_id)))
        return appended

    async def append_pointed(
        self, items: Sequence[PointedItem], retention: Retention
    ) -> list[PointedAppended]:
        return await append_then_point(self, items, retention)

    # --- conversation lists, read cursors, receipts ---------------------------
    async def list_conversations(
        self, user_id: int, before_ms: int, before_id: str, limit: int
    ) -> ConversationPage:
        mine = self._lists.get(user_id, {})
        # As a Redis zset read backwards: by activity, ties by id (bytes), both descending.
        order = sorted(mine.items(), key=lambda e: (e[1], e[0].encode()), reverse=True)
        if before_ms > 0:
            bound = (before_ms, before_id.encode())
            order = [e for e in order if (e[1], e[0].encode()) < bound]
        taken = order[: max(limit, 0)]
        lines = []
        for cid, activity in taken:
            line = self._line(user_id, cid, activity)
            if line is None:
                del mine[cid]  # a group they left or were removed from
                continue
            lines.append(line)
        return ConversationPage(lines, more=len(order) > len(taken))

    def _line(self, user_id: int, cid: str, activity: int) -> ConversationLine | None:
        conversation = self._conversations.get(cid, _Conversation())
        last = conversation.log.get(conversation.head)
        line = ConversationLine(
            cid,
            activity,
            self._read.get(user_id, {}).get(cid, 0),
            conversation.head,
            last[1] if last is not None else None,
        )
        if cid.startswith("g:"):
            group = self._groups.get(cid)
            member = group.members.get(user_id) if group is not None else None
            if group is None or member is None:
                return None
            return replace(line, group_name=group.name, joined=member.joined)
        low, high = (int(part) for part in cid[2:].split(":"))
        peer = high if user_id == low else low
        return replace(line, peer_read=self._receipts.get(cid, {}).get(peer, 0))

    async def mark_read(self, marks: Sequence[ReadMark]) -> list[ReadMarked]:
        done = []
        for mark in marks:
            joined = 0
            if mark.group:
                group = self._groups.get(mark.conversation_id)
                member = group.members.get(mark.user_id) if group is not None else None
                if member is None:
                    done.append(ReadMarked(refused=True))
                    continue
                joined = member.joined
            conversation = self._conversations.get(mark.conversation_id)
            head = conversation.head if conversation is not None else 0
            position = min(mark.position, head)
            receipts = self._receipts.setdefault(mark.conversation_id, {})
            receipt = 0
            if position > receipts.get(mark.user_id, 0):
                receipts[mark.user_id] = receipt = position
            cursor = self._raise_read(mark.user_id, mark.conversation_id, position)
            session = self._live_session(mark.notify_id) if mark.notify_id else None
            done.append(ReadMarked(cursor, head, receipt, joined, session=session))
        return done

    async def read_receipts(
        self,
        conversation_id: str,
        user_id: int,
        group: bool,
        cursor: int,
        min_position: int,
        count: int,
    ) -> ReceiptPage:
        conversation = self._conversations.get(conversation_id)
        head = conversation.head if conversation is not None else 0
        members: Collection[int] | None = None
        if group:
            record = self._groups.get(conversation_id)
            if record is None or user_id not in record.members:
                return ReceiptPage([], 0, head, refused=True)
            members = record.members
        # The cursor is an index into the readers by user id.
        readers = sorted(self._receipts.get(conversation_id, {}).items())
        page = readers[cursor : cursor + max(count, 1)]
        end = cursor + len(page)
        found = [
            (uid, position)
            for uid, position in page
            if position >= min_position and (members is None or uid in members)
        ]
        return ReceiptPage(found, end if end < len(readers) else 0, head)

    async def read_history(
        self, conversation_id: str, before: int, limit: int, retention: Retention
    ) -> HistoryPage:
        return self._history(conversation_id, before, limit, retention)

    async def read_group_history(
        self, group_id: str, reader_id: int, before: int, limit: int, retention: Retention
    ) -> HistoryPage | None:
        group = self._group(group_id)  # a deleted group goes after its age
        if group is None:
            return None
        if reader_id in group.members:
            return self._history(group_id, before, limit, retention)
        if reader_id not in group.left:
            return None
        return self._history(group_id, before, limit, retention, through=group.left[reader_id])

    def _history(
        self,
        conversation_id: str,
        before: int,
        limit: int,
        retention: Retention,
        through: int | None = None,
    ) -> HistoryPage:
        """A page below ``before`` (0: the newest); with ``through``, nothing
        after that position is read or reported."""
        self._group(conversation_id)  # a deleted group's history goes with it
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            return HistoryPage([], 0, 0, more=False)
        conversation.trim(retention, self._clock())
        if through is not None and (before <= 0 or before > through):
            before = through + 1
        older = [p for p in reversed(conversation.log) if before <= 0 or p < before]
        taken = older[: max(limit, 0)]
        entries = [HistoryEntry(p, conversation.log[p][1]) for p in taken]
        head, dropped = conversation.head, conversation.dropped_through
        if through is not None:
            head, dropped = min(head, through), min(dropped, through)
        return HistoryPage(entries, head, dropped, more=len(older) > len(taken))

    async def conversations_since(self) -> float:
        if self._conversations_since is None:
            self._conversations_since = time.time() if self._accounts else 0.0
        return self._conversations_since

    async def read_sends(self, sends: Sequence[SendKey]) -> list[SendClaim | None]:
        now = self._clock()
        found: list[SendClaim | None] = []
        for send in sends:
            entry = self._sent.get(self._sent_key(send))
            found.append(entry[0] if entry is not None and entry[1] > now else None)
        return found

    @staticmethod
    def _sent_key(send: SendKey) -> tuple[int | str, int, str]:
        owner: int | str = send.conversation or send.owner_id
        return (owner, send.sender_id, send.client_msg_id)

    async def claim_sends(
        self, claims: Sequence[tuple[SendKey, str]], ttl: float
    ) -> list[SendClaim | None]:
        now = self._clock()
        if len(self._sent) > 100_000:  # keep the window bounded: drop what expired
            self._sent = {k: v for k, v in self._sent.items() if v[1] > now}
        found: list[SendClaim | None] = []
        for send, message_id in claims:
            key = self._sent_key(send)
            entry = self._sent.get(key)
            if entry is not None and entry[1] > now:
                found.append(entry[0])
                continue
            self._sent[key] = (SendClaim(message_id, None, send.digest), now + ttl)
            found.append(None)
        return found

    async def finish_sends(
        self,
        results: Sequence[tuple[SendKey, bytes]],
        ttl: float,
        fanned_out: Sequence[tuple[str, str]] = (),
    ) -> None:
        expires_at = self._clock() + ttl
        for send, result in results:
            key = self._sent_key(send)
            self._sent[key] = (SendClaim("", result, send.digest), expires_at)
        for conversation_id, message_id in fanned_out:
            conversation = self._conversations.get(conversation_id)
            if conversation is not None:
                conversation.pending.pop(message_id, None)

    # --- groups -------------------------------------------------------------
    async def new_group_number(self) -> int:
        return next(self._group_numbers)

    async def count_group_creation(self, user_id: int) -> int:
        now = self._clock()
        made, until = self._creations.get(user_id, (0, 0.0))
        if until <= now:
            made, until = 0, now + 60.0
        self._creations[user_id] = (made + 1, until)
        return made + 1

    async def read_group(self, group_id: str) -> Group | None:
        return self._group(group_id)

    def _group(self, group_id: str) -> Group | None:
        """The group, unless it was deleted longer ago than the history's
        max age: then it is gone, history and all (Redis expires its keys)."""
        expires = self._group_expires.get(group_id)
        if expires is not None and expires <= self._clock():
            del self._group_expires[group_id]
            self._groups.pop(group_id, None)
            self._conversations.pop(group_id, None)
        return self._groups.get(group_id)

    async def group_versions(self, group_ids: Sequence[str]) -> list[int]:
        groups = [self._groups.get(group_id) for group_id in group_ids]
        return [group.version if group is not None else 0 for group in groups]

    async def apply_group(
        self, change: Change, event_id: str, event: bytes, retention: Retention
    ) -> int | None:
        current = self._group(change.group_id)
        if (current.version if current is not None else 0) != change.version:
            return None
        (appended,) = await self.append_conversations(
            [ConversationItem(change.group_id, event_id, event)], retention
        )
        position = appended.position
        members = dict(current.members) if current is not None else {}
        left = dict(current.left) if current is not None else {}
        for user_id, role in change.set_roles.items():
            known = members.get(user_id)
            members[user_id] = Member(user_id, role, known.joined if known else position)
            left.pop(user_id, None)
        for user_id in change.drop:
            members.pop(user_id, None)
            left[user_id] = position
        meta = dict(change.meta)
        self._groups[change.group_id] = Group(
            change.group_id,
            meta.get("name", current.name if current else ""),
            int(meta.get("owner", current.owner_id if current else 0)),
            int(meta.get("created", current.created_ms if current else 0)),
            change.version + 1,
            meta.get("deleted") == "1" or (current is not None and current.deleted),
            members,
            left,
        )
        if self._groups[change.group_id].deleted:
            self._group_expires[change.group_id] = self._clock() + retention.history_max_age
        return position

    async def count_groups(self, user_ids: Sequence[int]) -> list[int]:
        return [len(self._user_groups.get(user_id, {})) for user_id in user_ids]

    async def index_groups(self, entries: Sequence[tuple[int, str, bool]]) -> None:
        for user_id, group_id, member in entries:
            number = int(group_id.split(":", 1)[1])
            mine = self._user_groups.setdefault(user_id, {})
            if member:
                mine[number] = group_id
            else:
                mine.pop(number, None)

    async def list_groups(self, user_id: int, after: int, limit: int) -> list[str]:
        mine = self._user_groups.get(user_id, {})
        return [mine[n] for n in sorted(mine) if n > after][: max(limit, 0)]

    # --- token sessions (revocation) -----------------------------------------
    async def set_token_session(self, user_id: int, session_id: str, ttl: float) -> bool:
        current = self._live_session(user_id)
        if current is None or current.session_id != session_id:
            return False
        self._token_sessions[user_id] = (session_id, self._clock() + ttl)
        return True

    async def get_token_session(self, user_id: int) -> str | None:
        entry = self._token_sessions.get(user_id)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._token_sessions[user_id]
            return None
        return entry[0]

    async def revoke_token_session(self, user_id: int, session_id: str) -> bool:
        if await self.get_token_session(user_id) != session_id:
            return False
        del self._token_sessions[user_id]
        return True

    async def aclose(self) -> None:
        return None
