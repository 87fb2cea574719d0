"""The Redis key layout of the store, in one place.

Every key starts with a configurable prefix, so several clusters can share one
Redis. Per-user keys carry a hash tag on the user id (``cim:{u:42}:session``):
all of one user's keys live in one slot of a Redis Cluster, so a Lua script
can change them together. The name keys (look-alike names, see
``cim.core.names``) share the tag ``{names}``: one script claims all the keys
of a new name at once. Other global keys (id counter, name index, online
index) each live in their own slot and are never touched by the same script
as a per-user key.

    {prefix}user_ids                  string  last user id handed out (INCR)
    {prefix}name:<user name>          string  user id owning the exact name
    {prefix}{names}:key:<name key>    string  user id owning the name key
    {prefix}{names}:indexed_through   string  the accounts up to this user id have
                                              their name keys (the backfill's mark)
    {prefix}online                    zset    user id -> session expiry (ms), a hint
    {prefix}{u:<id>}:account          hash    name, password_hash; disabled ("1") and
                                              disabled_reason while an admin has
                                              disabled it (absent: enabled)
    {prefix}{u:<id>}:session          hash    sid, server, device, connected, exp (PEXPIRE)
    {prefix}{u:<id>}:token_session    string  session id whose tokens are good (PEXPIRE)
    {prefix}{u:<id>}:inbox:meta       hash    head (last seq handed out), dropped
                                              (highest seq retention removed unacked),
                                              acked (the sync cursor: the last ack)
    {prefix}{u:<id>}:inbox            zset    message id, score seq: the unacked entries,
                                              and acked pointers for the id window
    {prefix}{u:<id>}:inbox:bodies     hash    message id -> 13-digit append time (ms)
                                              + a full ChatMessage (first byte 0x0A:
                                              broadcast, notices, and every entry written
                                              before conversations) or a pointer
                                              "P<conversation id>|<position>|<message id>"
    {prefix}{u:<id>}:inbox:ids        zset    message id, score append time (ms): the
                                              ids remembered for retried full-copy appends
    {prefix}{u:<id>}:inbox:idseq      hash    message id -> seq, for the same ids
    {prefix}{u:<id>}:send:<sender id>:<client id>
                                      string  "M" + digest + message id while a send
                                              runs, "R" + digest + result after
                                              (PEXPIRE); the digest is one length
                                              byte, then that many bytes. Written
                                              before digests: "m" + message id, "r"
                                              + result (read as exact retries).
                                              Private sends claimed here before
                                              conversations; now notices only.
    {prefix}{u:<id>}:groups           zset    group id -> group number: the user's groups
                                              (an index; the group's members are the truth)
    {prefix}{u:<id>}:groups_made      string  group creations in the current minute
                                              (INCR, PEXPIRE 60 s from the first)
    {prefix}{u:<id>}:convs            zset    conversation id -> last activity (ms): the
                                              conversation list, most recent first; raised
                                              by every pointer to the user and every send
                                              of theirs
    {prefix}{u:<id>}:read             hash    conversation id -> read position: the user's
                                              read cursors (all devices share them), never
                                              lowered, capped at the head; a send raises
                                              its sender's to the message
    {prefix}group_ids                 string  last group number handed out (INCR)
    {prefix}conversations_since       string  ms since the epoch the store was first
                                              served with conversations (SET NX); 0
                                              if it had no account then

Per-conversation keys carry the hash tag ``{c:<conversation id>}``
(docs/design/conversations.md):

    {prefix}{c:<cid>}:meta            hash    head (last position), dropped (highest
                                              position retention removed), last (id of
                                              the newest message); a group's also ver
                                              (membership version), name, owner,
                                              created (ms), deleted ("1" once deleted)
    {prefix}{c:<cid>}:members         hash    user id -> "role|joined position" (groups)
    {prefix}{c:<cid>}:left            hash    user id -> position of their removal or leave
    {prefix}{c:<cid>}:log             zset    message id, score position
    {prefix}{c:<cid>}:bodies          hash    message id -> 13-digit append time (ms)
                                              + ChatMessage bytes
    {prefix}{c:<cid>}:pending         zset    message id, score append time (ms): fan-outs
                                              not confirmed yet (repaired after 5 s)


    {prefix}{c:<cid>}:reads           hash    user id -> read position, as marked (read
                                              receipts: who has read up to where)
    {prefix}{c:<cid>}:send:<sender id>:<client id>
                                      string  a send's claim, then result, as above
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "cim:"

# Account hash fields.
ACCOUNT_NAME = "name"
ACCOUNT_PASSWORD_HASH = "password_hash"
ACCOUNT_DISABLED = "disabled"  # "1" while disabled; absent otherwise
ACCOUNT_DISABLED_REASON = "disabled_reason"
ACCOUNT_FIELDS = (
    ACCOUNT_NAME,
    ACCOUNT_PASSWORD_HASH,
    ACCOUNT_DISABLED,
    ACCOUNT_DISABLED_REASON,
)

# Session hash fields.
SESSION_ID = "sid"
SESSION_SERVER = "server"
SESSION_DEVICE = "device"
SESSION_CONNECTED = "connected"  # "1" or "0"
# The expiry (ms since the epoch) last written to the online index for this
# session; a release removes the index entry only while it still holds this value.
SESSION_INDEXED_EXPIRY = "exp"
SESSION_FIELDS = (
    SESSION_ID,
    SESSION_SERVER,
    SESSION_DEVICE,
    SESSION_CONNECTED,
    SESSION_INDEXED_EXPIRY,
)

# Inbox meta hash fields.
INBOX_HEAD = "head"
INBOX_DROPPED = "dropped"
INBOX_ACKED = "acked"
# Conversation meta hash fields (head and dropped as in an inbox).
CONVERSATION_LAST = "last"
# Group meta fields (in the conversation's meta hash).
GROUP_VERSION = "ver"
GROUP_NAME = "name"
GROUP_OWNER = "owner"
GROUP_CREATED = "created"
GROUP_DELETED = "deleted"
# The first byte of a pointer in a user's sequence; a full ChatMessage starts
# with 0x0A (message_id, field 1, always set and serialized first).
POINTER_TAG = b"P"
# The hash tag of every name key: one slot, so a script claims a name's keys together.
NAMES_TAG = "{names}"

# The tag bytes of a send's claim (see the table above).
SEND_RUNNING = b"M"
SEND_FINISHED = b"R"
SEND_RUNNING_UNHASHED = b"m"
SEND_FINISHED_UNHASHED = b"r"

# An inbox body starts with its append time, ms since the epoch, in this many
# zero-padded digits (Lua reads it with string.sub), then the payload bytes.
INBOX_TIME_DIGITS = 13


def pointer(conversation_id: str, position: int, message_id: str) -> bytes:
    """A pointer entry of a user's sequence: where the message's body is."""
    return b"%s%s|%d|%s" % (POINTER_TAG, conversation_id.encode(), position, message_id.encode())


def parse_pointer(entry: bytes) -> tuple[str, int, str] | None:
    """(conversation id, position, message id) of a pointer; None for a full
    ChatMessage (an entry written before conversations, a broadcast, a notice)."""
    if not entry.startswith(POINTER_TAG):
        return None
    conversation_id, position, message_id = entry[1:].decode().rsplit("|", 2)
    return conversation_id, int(position), message_id


@dataclass(frozen=True)
class KeyLayout:
    """Builds every key of the store under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        # A brace in the prefix would become the hash tag of every key and put
        # the whole store in one cluster slot (or split a user's keys apart).
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"key prefix {self.prefix!r} must not contain '{{' or '}}'")

    # --- global keys ------------------------------------------------------
    @property
    def user_id_counter(self) -> str:
        return f"{self.prefix}user_ids"

    def name(self, user_name: str) -> str:
        return f"{self.prefix}name:{user_name}"

    # --- name keys (one hash tag, one slot) ------------------------------
    def name_key(self, key: str) -> str:
        """Who holds a name key (a look-alike class of names)."""
        return f"{self.prefix}{NAMES_TAG}:key:{key}"

    @property
    def names_indexed_through(self) -> str:
        return f"{self.prefix}{NAMES_TAG}:indexed_through"

    @property
    def online(self) -> str:
        return f"{self.prefix}online"

    # --- per-user keys (one hash tag, one slot) ---------------------------
    @staticmethod
    def user_tag(user_id: int) -> str:
        return f"{{u:{user_id}}}"

    def account(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:account"

    def session(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:session"

    def inbox_meta(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:inbox:meta"

    def inbox(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:inbox"

    def inbox_bodies(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:inbox:bodies"

    def inbox_ids(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:inbox:ids"

    def inbox_id_seqs(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:inbox:idseq"

    def token_session(self, user_id: int) -> str:
        """The session whose tokens are good (revocation; see Store.set_token_session)."""
        return f"{self.prefix}{self.user_tag(user_id)}:token_session"

    @property
    def conversations_since(self) -> str:
        return f"{self.prefix}conversations_since"

    # --- per-conversation keys (one hash tag, one slot) -------------------
    @staticmethod
    def conversation_tag(conversation_id: str) -> str:
        return f"{{c:{conversation_id}}}"

    def conversation_meta(self, conversation_id: str) -> str:
        return f"{self.prefix}{self.conversation_tag(conversation_id)}:meta"

    def conversation_log(self, conversation_id: str) -> str:
        return f"{self.prefix}{self.conversation_tag(conversation_id)}:log"

    def conversation_bodies(self, conversation_id: str) -> str:
        return f"{self.prefix}{self.conversation_tag(conversation_id)}:bodies"

    def conversation_members(self, conversation_id: str) -> str:
        return f"{self.prefix}{self.conversation_tag(conversation_id)}:members"

    def conversation_left(self, conversation_id: str) -> str:
        return f"{self.prefix}{self.conversation_tag(conversation_id)}:left"

    def conversation_pending(self, conversation_id: str) -> str:
        return f"{self.prefix}{self.conversation_tag(conversation_id)}:pending"

    @property
    def group_ids(self) -> str:
        return f"{self.prefix}group_ids"

    def user_groups(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:groups"

    def groups_made(self, user_id: int) -> str:
        return f"{self.prefix}{self.user_tag(user_id)}:groups_made"

    def conversation_list(self, user_id: int) -> str:
        """The user's conversations by last activity."""
        return f"{self.prefix}{self.user_tag(user_id)}:convs"

    def read_cursors(self, user_id: int) -> str:
        """The user's read position in each conversation."""
        return f"{self.prefix}{self.user_tag(user_id)}:read"

    def conversation_reads(self, conversation_id: str) -> str:
        """Each member's read position (receipts)."""
        return f"{self.prefix}{self.conversation_tag(conversation_id)}:reads"

    def conversation_sent(self, conversation_id: str, sender_id: int, client_msg_id: str) -> str:
        """The claim, then the result, of one send to a conversation."""
        return (
            f"{self.prefix}{self.conversation_tag(conversation_id)}"
            f":send:{sender_id}:{client_msg_id}"
        )

    def sent(self, owner_id: int, sender_id: int, client_msg_id: str) -> str:
        """The claim, then the result, of one send (idempotency window), under
        the tag of ``owner_id``: the receiver of a private message (so the
        inbox append claims it in the same script), the sender of a group
        message. Named ``send:`` since its value carries a tag byte."""
        return f"{self.prefix}{self.user_tag(owner_id)}:send:{sender_id}:{client_msg_id}"
