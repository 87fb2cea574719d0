"""The ``Store`` protocol: the only persistent state of cim, used by routes only.

Every method is atomic on its own. Sessions are compare-and-set by session
id, so one login never clears or refreshes another's state, and they expire
unless refreshed (a crashed chat server cannot lock its users out).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Protocol


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
    id_window: float = 600.0


@dataclass(frozen=True)
class SendKey:
    """One idempotent send: where its claim lives and what it carried."""

    # The user whose keys hold the claim: the receiver of a private send
    # (so its inbox append claims it), the sender of a group send.
    owner_id: int
    sender_id: int
    client_msg_id: str
    # A digest of the send's target and text (cim.route.messages.send_digest),
    # kept in the claim: the same client_msg_id with another digest is
    # another message, not a retry.
    digest: bytes = b""


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
class InboxEntry:
    seq: int
    payload: bytes


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
        """Up to ``limit`` entries with seq > ``after_seq``, oldest first,
        left in place (acks remove them)."""

    async def ack_inbox(self, acks: Sequence[tuple[int, int]]) -> None:
        """For each (user id, seq): removes that user's entries up to seq. An
        ack past the user's head seq is ignored: it comes from a client that
        holds seqs the store no longer knows (data lost in a crash), and must
        not trim the new messages that reuse them."""

    # --- idempotent sends -------------------------------------------------
    async def claim_sends(
        self, claims: Sequence[tuple[SendKey, str]], ttl: float
    ) -> list[SendClaim | None]:
        """For each (send, message id): marks the send as started with that
        message id and its digest for ``ttl`` seconds. None: this is the
        first attempt; else what an earlier attempt left (its digest tells a
        retry from a reused client_msg_id)."""

    async def finish_sends(self, results: Sequence[tuple[SendKey, bytes]], ttl: float) -> None:
        """For each (send, result): remembers the send's result, with its
        digest, for ``ttl`` seconds."""

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
