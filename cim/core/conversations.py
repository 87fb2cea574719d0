"""Conversation ids (pure): what a message belongs to, and who its members are.

A private conversation's id is derived from its two users, lower id first:
``p:<low>:<high>`` (``p:3:17``), so both sides name it alike without a lookup
and its members are the id itself. A group's id is ``g:<n>``; its members
are in its record (``cim.core.groups``). CIM's broadcast, group ``all``, is
not a conversation. See docs/design/conversations.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from cim.errors import InvalidArgument, PermissionDenied

# The ChatMessage.conversation_id field's max_size.
MAX_CONVERSATION_ID = 64
PRIVATE_PREFIX = "p:"
GROUP_PREFIX = "g:"
# Ids are decimal without sign or leading zeros: one spelling per conversation
# (so "p:03:7" cannot pass for "p:3:7" in a key or a member check).
_MAX_ID_DIGITS = 19  # int64


@dataclass(frozen=True)
class ConversationId:
    """A parsed, valid conversation id."""

    cid: str
    # For a private conversation: its two users, low < high (self-sends: equal).
    users: tuple[int, int] | None = None
    # For a group: its number.
    group: int | None = None

    @property
    def private(self) -> bool:
        return self.users is not None

    def has_member(self, user_id: int) -> bool:
        """For a private conversation, whether ``user_id`` is one of its two users."""
        return self.users is not None and user_id in self.users


def private_id(user_a: int, user_b: int) -> str:
    """The id of the private conversation of two users (either order)."""
    if user_a <= 0 or user_b <= 0:
        raise InvalidArgument(
            f"a private conversation's users must be positive ids (got {user_a} and {user_b})"
        )
    low, high = sorted((user_a, user_b))
    return f"{PRIVATE_PREFIX}{low}:{high}"


def _number(text: str, what: str, cid: str) -> int:
    if not text or not text.isascii() or not text.isdigit():
        raise InvalidArgument(f"conversation id {cid!r}: {what} must be a decimal number")
    if text[0] == "0":
        raise InvalidArgument(
            f"conversation id {cid!r}: {what} must be a positive number without leading zeros"
        )
    if len(text) > _MAX_ID_DIGITS or int(text) >= 2**63:
        raise InvalidArgument(f"conversation id {cid!r}: {what} is out of range")
    return int(text)


def parse(cid: str) -> ConversationId:
    """Validates a conversation id as a client sends it: ``p:<low>:<high>``
    with low <= high, or ``g:<n>``. INVALID_ARGUMENT saying what is wrong."""
    if not cid:
        raise InvalidArgument("conversation id is required")
    if len(cid) > MAX_CONVERSATION_ID:
        raise InvalidArgument(
            f"conversation id is {len(cid)} characters; the limit is {MAX_CONVERSATION_ID}"
        )
    if cid.startswith(PRIVATE_PREFIX):
        parts = cid[len(PRIVATE_PREFIX) :].split(":")
        if len(parts) != 2:
            raise InvalidArgument(
                f"conversation id {cid!r}: a private one is p:<low user id>:<high user id>"
            )
        low = _number(parts[0], "the first user id", cid)
        high = _number(parts[1], "the second user id", cid)
        if low > high:
            raise InvalidArgument(
                f"conversation id {cid!r}: the lower user id comes first (p:{high}:{low})"
            )
        return ConversationId(cid, users=(low, high))
    if cid.startswith(GROUP_PREFIX):
        return ConversationId(cid, group=_number(cid[len(GROUP_PREFIX) :], "the group number", cid))
    raise InvalidArgument(
        f"conversation id {cid!r}: must start with {PRIVATE_PREFIX!r} (private) "
        f"or {GROUP_PREFIX!r} (group)"
    )


def peer(conversation: ConversationId, user_id: int) -> int:
    """The other user of a private conversation, for one of its members;
    PERMISSION_DENIED for anyone else (a forged or someone else's id)."""
    if conversation.users is None or user_id not in conversation.users:
        raise PermissionDenied(f"you are not a member of conversation {conversation.cid}")
    low, high = conversation.users
    return high if user_id == low else low
