"""The ``Store`` protocol: the only persistent state of cim, used by routes only.

Every method is atomic on its own. Sessions are compare-and-set by session
id, so one login never clears or refreshes another's state, and they expire
unless refreshed (a crashed chat server cannot lock its users out).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from cim.core.groups import Change, Group


@dataclass(frozen=True)
class Account:
    user_id: int
    user_name: str
    password_hash: str
    # Set by an administrator: logins are refused (an account written before
    # the flag existed reads as enabled).
    disabled: bool = False
    # What the administrator gave as the reason ("" when enabled).
    disabled_reason: str = ""


@dataclass(frozen=True)
class SessionRecord:
    """A user's login state and route: which chat server holds (or will hold) them."""

    user_id: int
    session_id: str
    server_id: str
    device_id: str = ""
    # False between login and the stream's arrival at the chat server.
    connected: bool = False

    def connected_to(self, server_id: str) -> SessionRecord:
        return replace(self, server_id=server_id, connected=True)


@dataclass(frozen=True)
class Retention:
    """How much of a user's inbox is kept when they do not ack: the newest
    ``max_messages``, none older than ``max_age`` seconds."""

    max_messages: int = 10_000
    max_age: float = 7 * 24 * 3600.0
    # How long a message id is remembered after its append, so a retried
    # append (a send retried after a route crash) gets the first seq back.
    # Acked pointers stay in the user's sequence this long for the same reason.
    id_window: float = 600.0
    # How much of each conversation's history is kept: the newest
    # ``history_max_messages``, none older than ``history_max_age`` seconds.
    history_max_messages: int = 10_000
    history_max_age: float = 30 * 24 * 3600.0
    # A conversation append whose fan-out (the pointers) was not confirmed
    # this many seconds later is handed to the next append to that
    # conversation, to be fanned out again (its route may have crashed).
    repair_after: float = 5.0


@dataclass(frozen=True)
class SendKey:
    """One idempotent send: where its claim lives and what it carried."""

    # The user whose keys hold the claim: the receiver of a private send
    # written before conversations and of a system notice (so its inbox
    # append claims it), the sender of a broadcast. Ignored when
    # ``conversation`` is set.
    owner_id: int
    sender_id: int
    client_msg_id: str
    # A digest of the send's target and text (cim.route.messages.send_digest),
    # kept in the claim: the same client_msg_id with another digest is
    # another message, not a retry.
    digest: bytes = b""
    # A conversation's send: its claim lives under the conversation's keys,
    # so the conversation append claims it in the same atomic step.
    conversation: str = ""


@dataclass(frozen=True)
class InboxItem:
    """A message to append to one receiver's inbox."""

    user_id: int
    message_id: str
    payload: bytes
    # The idempotent send this append carries (its owner is ``user_id``): the
    # append first claims it (see claim_sends) in the same atomic step.
    send: SendKey | None = None


@dataclass(frozen=True)
class Appended:
    seq: int
    # The receiver's session, read after the append in the same atomic step:
    # a stream that connects later finds the message in its replay.
    session: SessionRecord | None
    # When the item's send was claimed before: what that attempt left, and
    # nothing was appended (seq 0).
    earlier: SendClaim | None = None


@dataclass(frozen=True)
class ConversationItem:
    """A message to append to a conversation's log (round trip 1 of a send)."""

    conversation_id: str
    message_id: str
    # The ChatMessage bytes, stored once (its position comes from the log).
    payload: bytes
    # The idempotent send this append carries (``send.conversation`` is this
    # conversation): claimed first, in the same atomic step.
    send: SendKey | None = None
    # A group's message: appended only if ``sender_id`` is a member of the
    # group (and it is not deleted), checked in the same atomic step, which
    # also reads the members to fan out to (see ConversationAppended).
    group_sender: int = 0
    # The membership version whose members the caller holds (-1: none):
    # the members come back only when the group's version differs.
    known_version: int = -1


# Why a group append was refused (nothing written).
NOT_A_MEMBER = "not_member"
GROUP_DELETED = "deleted"


@dataclass(frozen=True)
class Unfinished:
    """An earlier message of the conversation whose fan-out was never
    confirmed (see ``Retention.repair_after``)."""

    message_id: str
    position: int
    payload: bytes


@dataclass(frozen=True)
class ConversationAppended:
    # The message's position in the conversation (1, 2, 3...); 0 when
    # ``earlier`` is set (nothing appended).
    position: int
    # When the item's send was claimed before: what that attempt left.
    earlier: SendClaim | None = None
    # A group's message: its membership version at the append, the members
    # then (None when ``known_version`` was that version), and why it was
    # refused ("": it was not; else NOT_A_MEMBER or GROUP_DELETED).
    version: int = 0
    members: tuple[int, ...] | None = None
    refused: str = ""
    # Earlier messages of the conversation to fan out again first (at most 10).
    unfinished: tuple[Unfinished, ...] = ()


@dataclass(frozen=True)
class PointerItem:
    """A pointer to a conversation message for one member's sequence (round
    trip 2 of a send): the member's next seq, the body stays in the log."""

    user_id: int
    conversation_id: str
    position: int
    message_id: str


@dataclass(frozen=True)
class OwnSend:
    """The sender's side of a send (in round trip 2, beside the pointers):
    the conversation to the top of the sender's list, and their read cursor
    raised to the message's position (never lowered): their own messages
    are never unread."""

    user_id: int
    conversation_id: str
    position: int


@dataclass(frozen=True)
class PointedItem:
    """A private message: into its conversation's log, then, under the
    position it gets there, a pointer into its receiver's sequence (and,
    with ``sender_id``, the sender's side: see OwnSend)."""

    conversation: ConversationItem
    receiver_id: int
    sender_id: int = 0
    # Its message id was made for this attempt (not an earlier attempt's):
    # no log or sequence can hold it yet, so a store may skip looking.
    fresh: bool = False


@dataclass(frozen=True)
class PointedAppended:
    conversation: ConversationAppended
    # The receiver's pointer; None when nothing was appended (the send was
    # claimed before: ``conversation.earlier`` says by what).
    pointer: Appended | None
    # True when the fan-out was done in the append's own atomic step (one
    # script on a standalone Redis): never marked pending, nothing to confirm.
    settled: bool = False


async def append_then_point(
    store: Store, items: Sequence[PointedItem], retention: Retention
) -> list[PointedAppended]:
    """``Store.append_pointed`` as its two steps: the conversations' round
    trip, then the pointers' (for the items that got a position)."""
    stored = await store.append_conversations([item.conversation for item in items], retention)
    placed = [
        (
            i,
            PointerItem(
                item.receiver_id,
                item.conversation.conversation_id,
                done.position,
                item.conversation.message_id,
            ),
        )
        for i, (item, done) in enumerate(zip(items, stored, strict=True))
        if done.position > 0
    ]
    senders = [
        OwnSend(items[i].sender_id, pointer.conversation_id, pointer.position)
        for i, pointer in placed
        if items[i].sender_id > 0
    ]
    pointers = await store.append_pointers([pointer for _, pointer in placed], retention, senders)
    found: list[Appended | None] = [None] * len(items)
    for (i, _), appended in zip(placed, pointers, strict=True):
        found[i] = appended
    return [PointedAppended(done, pointer) for done, pointer in zip(stored, found, strict=True)]


@dataclass(frozen=True)
class InboxEntry:
    seq: int
    # The ChatMessage bytes: the entry's own (a full copy: broadcast, system
    # notices, and everything written before conversations) or, for a
    # pointer, the body from the conversation's log.
    payload: bytes
    # For a pointer: where the body is.
    conversation_id: str = ""
    position: int = 0


@dataclass(frozen=True)
class HistoryEntry:
    position: int
    payload: bytes


@dataclass(frozen=True)
class HistoryPage:
    # Newest first.
    entries: list[HistoryEntry]
    # The conversation's last position (0: no message yet).
    head: int
    # The highest position retention removed (0: none): history before it is gone.
    dropped_through: int
    # Older entries follow the page.
    more: bool


@dataclass(frozen=True)
class InboxPage:
    entries: list[InboxEntry]
    # The last seq handed out for this user (0: none yet).
    head_seq: int
    # The highest seq that retention removed before it was acked (0: none).
    dropped_through: int
    # More entries follow the page.
    more: bool


@dataclass(frozen=True)
class ReadMark:
    """A user has read a conversation up to ``position``."""

    user_id: int
    conversation_id: str
    position: int
    # A group's: refused unless ``user_id`` is a member, checked in the same
    # atomic step (a private conversation's members are its id: the caller's check).
    group: bool = False
    # A user whose session to read back (the other user of a private
    # conversation, to push them a receipt); 0: nobody.
    notify_id: int = 0


@dataclass(frozen=True)
class ReadMarked:
    # The user's read cursor after the mark (an earlier, higher one stays).
    position: int = 0
    # The conversation's last position.
    head: int = 0
    # The receipt's new position (the mark, capped at the head) when it
    # moved the user's receipt in the conversation; 0 when it did not.
    receipt: int = 0
    # A group's member: the position they joined at.
    joined: int = 0
    # Not a member of the group: nothing was written.
    refused: bool = False
    # ``notify_id``'s session, read in the same round trip.
    session: SessionRecord | None = None


@dataclass(frozen=True)
class ConversationLine:
    """One line of a user's conversation list, as the store holds it."""

    conversation_id: str
    # When the conversation last moved for the user (ms since the epoch).
    activity_ms: int
    # The user's read cursor.
    read: int
    # The conversation's last position (its newest message's).
    head: int
    # The newest message (ChatMessage bytes); None when there is none or
    # retention dropped it.
    last: bytes | None = None
    # A private conversation: how far the other user has read (their name
    # is the caller's to find: names never change, a route caches them).
    peer_read: int = 0
    # A group: its name, and the position the user joined at.
    group_name: str = ""
    joined: int = 0


@dataclass(frozen=True)
class ConversationPage:
    # Most recent first.
    lines: list[ConversationLine]
    # Older conversations follow.
    more: bool


@dataclass(frozen=True)
class ReceiptPage:
    # (user id, read position), in no particular order.
    readers: list[tuple[int, int]]
    # 0: the scan is complete.
    next_cursor: int
    head: int
    # The caller is not a member of the group: nothing was read.
    refused: bool = False


@dataclass(frozen=True)
class SendClaim:
    """What an earlier attempt of the same send left behind."""

    # The message id the earlier attempt chose (a retry reuses it), or "".
    message_id: str
    # Its remembered result, or None while it is unfinished (or crashed).
    result: bytes | None
    # The digest of what it sent (SendKey.digest); None for a claim written
    # before claims kept one, which is taken for an exact retry.
    digest: bytes | None = None


class Store(Protocol):
    # --- accounts ---------------------------------------------------------
    async def create_account(
        self, user_name: str, password_hash: str, name_keys: Collection[str] = ()
    ) -> tuple[Account, bool]:
        """Creates the account, or returns the existing one with that name,
        or one whose name shares a key with ``name_keys`` (a look-alike:
        its ``user_name`` differs from ``user_name``).

        The boolean says whether it was created. Names are unique, and so are
        name keys: of two concurrent creations that share a key, one wins.
        """

    async def index_names(self, keys_of: Callable[[str], Collection[str]]) -> int:
        """Indexes the name keys (``keys_of(user_name)``) of the accounts
        created without them, before look-alike names were refused; returns
        how many keys it added. Idempotent, in bounded steps, and safe to run
        from several routes at once. Where two such accounts share a key, the
        key stays with whichever was indexed first: both keep working."""

    async def get_account(self, user_id: int) -> Account | None: ...

    async def get_account_by_name(self, user_name: str) -> Account | None: ...

    async def get_accounts(self, user_ids: Sequence[int]) -> dict[int, Account]: ...

    async def set_account_disabled(
        self, user_id: int, disabled: bool, reason: str = ""
    ) -> bool | None:
        """Sets (with ``reason``) or clears the account's disabled flag; returns
        whether it was set before, or None when there is no such account
        (nothing is written then)."""

    # --- sessions (login state + route) -----------------------------------
    async def claim_session(
        self,
        record: SessionRecord,
        ttl: float,
        replace_session_id: str | None = None,
        *,
        pending_only: bool = False,
    ) -> SessionRecord | None:
        """Stores ``record`` if the user has no session (or exactly the session
        ``replace_session_id``, or ``record``'s own: a retry is safe). With
        ``pending_only``, ``replace_session_id`` is replaced only while its
        stream has not connected. Returns None on success, else the session
        in the way."""

    async def get_session(self, user_id: int) -> SessionRecord | None: ...

    async def get_sessions(self, user_ids: Sequence[int]) -> list[SessionRecord | None]:
        """The sessions of many users in one round trip, in order (None: none)."""

    async def mark_connected(
        self, user_id: int, session_id: str, server_id: str, ttl: float
    ) -> SessionRecord | None:
        """Records that the session's stream is live on ``server_id``; None if
        the session is no longer the user's current one."""

    async def refresh_sessions(self, sessions: Sequence[tuple[int, str]], ttl: float) -> list[bool]:
        """Extends each (user id, session id) still current; False for the others."""

    async def release_session(
        self, user_id: int, session_id: str, server_id: str | None = None
    ) -> bool:
        """Deletes the session if it is still this one (and, when ``server_id``
        is given, still recorded on that server); True if it was deleted."""

    def online_sessions(self) -> AsyncGenerator[SessionRecord, None]:
        """Every connected session, walked without blocking the store."""

    # --- inboxes: every message a user receives, by per-user sequence -----
    async def append_inbox(
        self, items: Sequence[InboxItem], retention: Retention
    ) -> list[Appended]:
        """Appends each message to its receiver's inbox under the receiver's
        next seq (1, 2, 3... with no gaps) and returns it with the receiver's
        session read after the append. A message id appended within
        ``retention.id_window`` gets its first seq back and is not appended
        again. An item with ``send`` is appended only if it claims that send
        (for ``retention.id_window``); else ``earlier`` says what the earlier
        attempt left. Retention trims what is over the bounds."""

    async def read_inbox(
        self, user_id: int, after_seq: int, limit: int, retention: Retention
    ) -> InboxPage:
        """Up to ``limit`` entries with seq > ``after_seq`` and past the
        user's sync cursor (the last ack), oldest first, pointers resolved to
        their bodies (a pointer whose body the conversation's retention
        dropped is left out). Left in place: acks trim."""

    async def ack_inbox(
        self, acks: Sequence[tuple[int, int]], retention: Retention | None = None
    ) -> None:
        """For each (user id, seq): moves that user's sync cursor to seq
        (never back) and trims their entries up to it: full copies at once,
        pointers once older than ``retention.id_window`` (default
        ``Retention()``: a retried send finds its pointer by message id until
        then). Bodies in conversation logs stay.
        An ack past the user's head seq is ignored: it comes from a client that
        holds seqs the store no longer knows (data lost in a crash), and must
        not trim the new messages that reuse them."""

    # --- conversations: one log per conversation, pointers per member ------
    async def append_conversations(
        self, items: Sequence[ConversationItem], retention: Retention
    ) -> list[ConversationAppended]:
        """Appends each message to its conversation's log under the next
        position and stores its body once. A message id already in the log
        gets its position back. An item with ``send`` is appended only if it
        claims that send (for ``retention.id_window``); else ``earlier`` says
        what the earlier attempt left. Trims the log to the history bounds.
        One round trip for the batch; items of one conversation keep their order.
        A new message counts as unfinished until ``finish_sends`` confirms
        its fan-out: an append also returns the conversation's messages
        unfinished for over ``retention.repair_after`` (those older than the
        id window are forgotten instead: members may have trimmed their
        pointers)."""

    async def append_pointers(
        self,
        items: Sequence[PointerItem],
        retention: Retention,
        senders: Sequence[OwnSend] = (),
    ) -> list[Appended]:
        """Appends each pointer to its user's sequence under the user's next
        seq (a message id already there gets its seq back), moves the
        conversation to the top of the user's list, and returns the seq with
        the user's session read after the append, as ``append_inbox``. Each
        of ``senders`` gets its own side of a send (see OwnSend). One round
        trip for the batch, senders included."""

    async def append_pointed(
        self, items: Sequence[PointedItem], retention: Retention
    ) -> list[PointedAppended]:
        """``append_conversations`` and then, for each item that got a
        position, ``append_pointers`` to its receiver, with the same results
        and guarantees: one round trip for the batch where the store can
        (a standalone Redis), else two (see ``append_then_point``)."""

    async def list_conversations(
        self, user_id: int, before_ms: int, before_id: str, limit: int
    ) -> ConversationPage:
        """Up to ``limit`` lines of the user's conversation list, most recent
        activity first (ties: the higher id first), those after the line
        (``before_ms``, ``before_id``) (``before_ms`` <= 0: from the top).
        A group the user is not a member of (any more) is left out, and
        dropped from the list. Two round trips: the page with its read
        cursors, then each conversation's line (one script on its keys)."""

    async def mark_read(self, marks: Sequence[ReadMark]) -> list[ReadMarked]:
        """For each mark: caps the position at the conversation's head,
        raises the user's receipt in the conversation and then their read
        cursor to it (never lowers either), and reads ``notify_id``'s
        session. A group's mark by a non-member writes nothing (``refused``).
        One round trip for the batch where the store can (a standalone
        Redis), else two."""

    async def read_receipts(
        self,
        conversation_id: str,
        user_id: int,
        group: bool,
        cursor: int,
        min_position: int,
        count: int,
    ) -> ReceiptPage:
        """About ``count`` of the conversation's read positions of at least
        ``min_position`` from ``cursor`` on (a scan: pass the page's
        ``next_cursor`` for the next one). For a group, ``user_id`` must be
        a member (else ``refused``) and only members are listed."""

    async def read_history(
        self, conversation_id: str, before: int, limit: int, retention: Retention
    ) -> HistoryPage:
        """Up to ``limit`` messages of a conversation with a position below
        ``before`` (0: from the newest), newest first, after trimming the log
        to the history bounds. Who may read is the caller's check."""

    async def read_group_history(
        self, group_id: str, reader_id: int, before: int, limit: int, retention: Retention
    ) -> HistoryPage | None:
        """``read_history`` of a group for ``reader_id``, with the membership
        check in the same atomic step: a member reads everything kept (a
        deleted group's too); a removed or departed one only up to the
        position of their removal (``before`` clamped to it; ``head`` and
        ``dropped_through`` no higher); None for anyone else and for a group
        that does not exist (nothing is trimmed then)."""

    async def conversations_since(self) -> float:
        """When this store was first served with conversations (seconds since
        the epoch; marked by the first call): private send claims written
        before then live under the receiver's keys, so for one dedup window
        after it a send also looks there (see ``read_sends``). 0.0 when the
        first call found no account: no send can have been claimed before."""

    async def read_sends(self, sends: Sequence[SendKey]) -> list[SendClaim | None]:
        """What each send's claim holds, without claiming it."""

    # --- groups: records under the group's tag, an index per user ------------
    async def new_group_number(self) -> int:
        """The next group number (1, 2, 3...): the group is ``g:<n>``."""

    async def count_group_creation(self, user_id: int) -> int:
        """Counts one group creation by ``user_id`` and returns how many they
        made in the current minute, this one included (a window of 60 s from
        their first creation in it)."""

    async def read_group(self, group_id: str) -> Group | None:
        """The group's record (members, left, meta), or None if it never existed."""

    async def group_versions(self, group_ids: Sequence[str]) -> list[int]:
        """Each group's membership version in one round trip, in order (0: no
        such group): whether members cached at a version are still current."""

    async def apply_group(
        self, change: Change, event_id: str, event: bytes, retention: Retention
    ) -> int | None:
        """Applies the change if the group is still at ``change.version`` (0:
        it must not exist) and appends its event (``event`` is the ChatMessage
        bytes, under ``event_id``) at the group's next position, in one atomic
        step: new members join at that position, dropped ones get it as their
        ``left``, the version is raised. The event's fan-out is pending until
        ``finish_sends`` confirms it, as a message's (see
        ``append_conversations``). Returns the event's position, or None
        when the group moved on (plan again from a fresh read)."""

    async def count_groups(self, user_ids: Sequence[int]) -> list[int]:
        """How many groups each user is in (by their index)."""

    async def index_groups(self, entries: Sequence[tuple[int, str, bool]]) -> None:
        """For each (user id, group id, member): adds the group to the user's
        index of groups, or removes it. The group's record is the truth; the
        index lists and counts a user's groups."""

    async def list_groups(self, user_id: int, after: int, limit: int) -> list[str]:
        """Up to ``limit`` group ids of the user's index with a number above
        ``after``, lowest first."""

    # --- idempotent sends -------------------------------------------------
    async def claim_sends(
        self, claims: Sequence[tuple[SendKey, str]], ttl: float
    ) -> list[SendClaim | None]:
        """For each (send, message id): marks the send as started with that
        message id and its digest for ``ttl`` seconds. None: this is the
        first attempt; else what an earlier attempt left (its digest tells a
        retry from a reused client_msg_id)."""

    async def finish_sends(
        self,
        results: Sequence[tuple[SendKey, bytes]],
        ttl: float,
        fanned_out: Sequence[tuple[str, str]] = (),
    ) -> None:
        """For each (send, result): remembers the send's result, with its
        digest, for ``ttl`` seconds. For each (conversation id, message id)
        of ``fanned_out``: confirms that the message's fan-out is done, so no
        append hands it back as unfinished. One round trip."""

    # --- token sessions: which session's tokens authorize (revocation) ----
    # One entry per user, apart from the session record: that one expires
    # while no stream refreshes it, but a token stays good for unary calls
    # until its own expiry, unless its session logged out or was replaced.
    async def set_token_session(self, user_id: int, session_id: str, ttl: float) -> bool:
        """Makes ``session_id`` the user's one session whose tokens are good,
        for ``ttl`` seconds (the tokens' life), if it is still the user's
        current session (see ``claim_session``); False if it is not."""

    async def get_token_session(self, user_id: int) -> str | None:
        """The session whose tokens are good, or None (logged out, expired)."""

    async def revoke_token_session(self, user_id: int, session_id: str) -> bool:
        """Ends the tokens of ``session_id`` if it is still the one; True if it was."""

    async def aclose(self) -> None: ...
