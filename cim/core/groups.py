"""Groups with membership (pure): who may change what, and the change itself.

A group's record (members with their role and join position, the positions
at which others left, name, owner, version) is read from the store; each
operation here checks the caller's right against it and returns a
:class:`Change`, which the store applies only if the group is still at the
version it was planned from (a compare-and-set: two concurrent changes never
both apply to the same state). The rules live here once, for every store.
See docs/design/conversations.md, section Membership.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from cim.core import conversations
from cim.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted

OWNER = "owner"
ADMIN = "admin"
MEMBER = "member"
ROLES = (OWNER, ADMIN, MEMBER)

MAX_NAME_CHARS = 64
MAX_NAME_BYTES = 256
# The ceiling of model (c): 191 ms of Redis CPU a message at 10,000 members.
MEMBERS_CEILING = 10_000


class Action(enum.IntEnum):
    """What a membership event says happened (MembershipAction in common.proto)."""

    CREATED = 1
    ADDED = 2
    REMOVED = 3
    LEFT = 4
    ADMIN_APPOINTED = 5
    ADMIN_DEMOTED = 6
    OWNER_CHANGED = 7
    RENAMED = 8
    DELETED = 9


@dataclass(frozen=True)
class Limits:
    max_members: int = 1_000
    max_groups_per_user: int = 500
    creations_per_minute: int = 5

    def __post_init__(self) -> None:
        if not 2 <= self.max_members <= MEMBERS_CEILING:
            raise ValueError(f"members per group must be between 2 and {MEMBERS_CEILING:,}")
        if self.max_groups_per_user < 1 or self.creations_per_minute < 1:
            raise ValueError("groups per user and creations per minute must be at least 1")


@dataclass(frozen=True)
class Member:
    user_id: int
    role: str
    # The group's position when they joined (their first event).
    joined: int


@dataclass(frozen=True)
class Group:
    """A group's record as the store holds it."""

    group_id: str
    name: str
    owner_id: int
    created_ms: int
    # Raised by every change: the compare-and-set of the next one.
    version: int
    deleted: bool
    members: Mapping[int, Member]
    # user id -> the position of their removal or leave (history bound).
    left: Mapping[int, int] = field(default_factory=dict)

    def role_of(self, user_id: int) -> str | None:
        member = self.members.get(user_id)
        return None if member is None else member.role


@dataclass(frozen=True)
class Change:
    """One change of a group's record, with its event, applied atomically
    when the group is still at ``version`` (0: it must not exist yet)."""

    group_id: str
    version: int
    action: Action
    actor_id: int
    # Whom the event is about (in the order given).
    user_ids: tuple[int, ...]
    # user id -> role to set; a new member joins at the event's position.
    set_roles: Mapping[int, str] = field(default_factory=dict)
    # Members who leave (their `left` becomes the event's position).
    drop: tuple[int, ...] = ()
    # Meta fields to set: name, owner, created, deleted.
    meta: Mapping[str, str] = field(default_factory=dict)
    # Who gets the event: the members after the change and whoever it removed.
    recipients: tuple[int, ...] = ()
    # The group's name after the change (for the event).
    name: str = ""


def group_id(number: int) -> str:
    return f"{conversations.GROUP_PREFIX}{number}"


def parse_group_id(text: str) -> str:
    """A group id as a client sends it to the group RPCs: ``g:<n>``. An empty
    id and ``all`` (CIM's broadcast) are refused, so a forgotten id never
    reaches everyone."""
    if not text:
        raise InvalidArgument("group id is required (g:<number>)")
    if text == "all":
        raise InvalidArgument("group 'all' is CIM's broadcast, not a group with members")
    parsed = conversations.parse(text)
    if parsed.group is None:
        raise InvalidArgument(f"{text!r} is not a group id (g:<number>)")
    return parsed.cid


def check_name(name: str) -> str:
    """1-64 characters, at most 256 bytes of UTF-8, no control characters,
    not blank."""
    if not name.strip():
        raise InvalidArgument("group name is required")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(
            f"group name is {len(name)} characters; the limit is {MAX_NAME_CHARS}"
        )
    size = len(name.encode())
    # 64 characters are at most 256 bytes today; the proto's limit is in bytes.
    if size > MAX_NAME_BYTES:  # pragma: no cover
        raise InvalidArgument(f"group name is {size} bytes; the limit is {MAX_NAME_BYTES}")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise InvalidArgument(f"group name contains a control character (U+{ord(char):04X})")
    return name


def _users(user_ids: Collection[int], what: str) -> tuple[int, ...]:
    if not user_ids:
        raise InvalidArgument(f"{what}: at least one user id is required")
    seen: dict[int, None] = {}
    for user_id in user_ids:
        if user_id <= 0:
            raise InvalidArgument(f"{what}: user ids must be positive (got {user_id})")
        seen[user_id] = None
    return tuple(seen)


def _live(group: Group | None, actor_id: int) -> Group:
    """The group, for one of its members; PERMISSION_DENIED for anyone else
    (a missing group looks the same: its existence is no one else's business)."""
    if group is None or actor_id not in group.members:
        gid = group.group_id if group is not None else "this group"
        raise PermissionDenied(f"you are not a member of group {gid}")
    if group.deleted:
        raise FailedPrecondition(f"group {group.group_id} was deleted")
    return group


def _require(group: Group, actor_id: int, roles: Collection[str], what: str) -> None:
    if group.role_of(actor_id) not in roles:
        who = "the owner" if roles == (OWNER,) else "the owner and admins"
        raise PermissionDenied(f"only {who} of group {group.group_id} may {what}")


def members_limit(count: int, limits: Limits) -> None:
    if count > limits.max_members:
        raise ResourceExhausted(
            f"group would have {count:,} members: the limit is {limits.max_members:,}"
        )


def create(
    number: int, actor_id: int, name: str, initial: Collection[int], now_ms: int, limits: Limits
) -> Change:
    """A new group: the creator is its owner, the others members."""
    check_name(name)
    others = tuple(uid for uid in dict.fromkeys(initial) if uid != actor_id)
    for user_id in others:
        if user_id <= 0:
            raise InvalidArgument(f"members: user ids must be positive (got {user_id})")
    members_limit(1 + len(others), limits)
    roles = {actor_id: OWNER, **{uid: MEMBER for uid in others}}
    gid = group_id(number)
    return Change(
        gid,
        0,
        Action.CREATED,
        actor_id,
        others,
        set_roles=roles,
        meta={"name": name, "owner": str(actor_id), "created": str(now_ms)},
        recipients=(actor_id, *others),
        name=name,
    )


def add(group: Group | None, actor_id: int, user_ids: Collection[int], limits: Limits) -> Change:
    """Owner and admins add members; those already in are refused."""
    g = _live(group, actor_id)
    _require(g, actor_id, (OWNER, ADMIN), "add members")
    users = _users(user_ids, "add")
    present = [uid for uid in users if uid in g.members]
    if present:
        raise FailedPrecondition(
            f"already members of group {g.group_id}: {', '.join(map(str, present))}"
        )
    members_limit(len(g.members) + len(users), limits)
    return Change(
        g.group_id,
        g.version,
        Action.ADDED,
        actor_id,
        users,
        set_roles={uid: MEMBER for uid in users},
        recipients=(*g.members, *users),
        name=g.name,
    )


def remove(group: Group | None, actor_id: int, user_ids: Collection[int]) -> Change:
    """Owner and admins remove members; an admin only plain members; nobody
    the owner (who hands over first) or themselves (that is a leave)."""
    g = _live(group, actor_id)
    _require(g, actor_id, (OWNER, ADMIN), "remove members")
    users = _users(user_ids, "remove")
    missing = [uid for uid in users if uid not in g.members]
    if missing:
        raise FailedPrecondition(
            f"not members of group {g.group_id}: {', '.join(map(str, missing))}"
        )
    if actor_id in users:
        raise FailedPrecondition("you cannot remove yourself: leave the group instead")
    if g.owner_id in users:
        raise PermissionDenied(f"the owner of group {g.group_id} cannot be removed")
    if g.role_of(actor_id) == ADMIN:
        admins = [uid for uid in users if g.role_of(uid) == ADMIN]
        if admins:
            raise PermissionDenied(
                f"only the owner of group {g.group_id} may remove admins "
                f"({', '.join(map(str, admins))})"
            )
    return Change(
        g.group_id,
        g.version,
        Action.REMOVED,
        actor_id,
        users,
        drop=users,
        recipients=tuple(g.members),
        name=g.name,
    )


def leave(group: Group | None, actor_id: int) -> Change:
    """Anyone leaves, except the owner, who hands over (or deletes) first."""
    g = _live(group, actor_id)
    if g.owner_id == actor_id:
        raise FailedPrecondition(
            f"you own group {g.group_id}: hand it over to another member or delete it first"
        )
    return Change(
        g.group_id,
        g.version,
        Action.LEFT,
        actor_id,
        (actor_id,),
        drop=(actor_id,),
        recipients=tuple(g.members),
        name=g.name,
    )


def set_admin(group: Group | None, actor_id: int, user_id: int, admin: bool) -> Change:
    """The owner appoints (or demotes) admins among the members."""
    g = _live(group, actor_id)
    _require(g, actor_id, (OWNER,), "appoint or demote admins")
    role = g.role_of(user_id)
    if role is None:
        raise FailedPrecondition(f"user {user_id} is not a member of group {g.group_id}")
    if role == OWNER:
        raise FailedPrecondition("the owner's role changes only by handing over ownership")
    wanted = ADMIN if admin else MEMBER
    if role == wanted:
        raise FailedPrecondition(f"user {user_id} is already {'an admin' if admin else 'a member'}")
    return Change(
        g.group_id,
        g.version,
        Action.ADMIN_APPOINTED if admin else Action.ADMIN_DEMOTED,
        actor_id,
        (user_id,),
        set_roles={user_id: wanted},
        recipients=tuple(g.members),
        name=g.name,
    )


def transfer(group: Group | None, actor_id: int, user_id: int) -> Change:
    """The owner hands the group over to a member and stays on as an admin."""
    g = _live(group, actor_id)
    _require(g, actor_id, (OWNER,), "hand over ownership")
    if user_id == actor_id:
        raise FailedPrecondition(f"you already own group {g.group_id}")
    if user_id not in g.members:
        raise FailedPrecondition(f"user {user_id} is not a member of group {g.group_id}")
    return Change(
        g.group_id,
        g.version,
        Action.OWNER_CHANGED,
        actor_id,
        (user_id,),
        set_roles={user_id: OWNER, actor_id: ADMIN},
        meta={"owner": str(user_id)},
        recipients=tuple(g.members),
        name=g.name,
    )


def rename(group: Group | None, actor_id: int, name: str) -> Change:
    g = _live(group, actor_id)
    _require(g, actor_id, (OWNER,), "rename it")
    check_name(name)
    return Change(
        g.group_id,
        g.version,
        Action.RENAMED,
        actor_id,
        (),
        meta={"name": name},
        recipients=tuple(g.members),
        name=name,
    )


def delete(group: Group | None, actor_id: int) -> Change:
    """The owner deletes the group: a last event, then no sends or changes."""
    g = _live(group, actor_id)
    _require(g, actor_id, (OWNER,), "delete it")
    return Change(
        g.group_id,
        g.version,
        Action.DELETED,
        actor_id,
        (),
        meta={"deleted": "1"},
        recipients=tuple(g.members),
        name=g.name,
    )


def readable(group: Group | None, user_id: int) -> Group:
    """The group for one of its members (a deleted one too: its members may
    still list it); PERMISSION_DENIED for anyone else."""
    if group is None or user_id not in group.members:
        gid = group.group_id if group is not None else "this group"
        raise PermissionDenied(f"you are not a member of group {gid}")
    return group


def fan_out_again(group: Group, position: int, sender_id: int, *, event: bool) -> tuple[int, ...]:
    """Whom the group's message at ``position`` goes to when its fan-out,
    left undone by a crashed route, is done again from the record as it is
    now: the members who joined at or before it (its sender aside, unless it
    is a membership event, which its actor gets too) and, for an event, those
    it removed (their ``left`` is its position). Who joined later was not a
    member then. Who was a member then but was removed before the repair
    gets nothing: nobody gets a pointer after their own removal (the message
    stays before their ``left`` in the group's history)."""
    members = [
        uid
        for uid, member in group.members.items()
        if member.joined <= position and (event or uid != sender_id)
    ]
    if event:
        members += [uid for uid, at in group.left.items() if at == position]
    return tuple(sorted(members))


def describe(action: Action, actor: str, users: Collection[str], name: str) -> str:
    """The event's text, for clients that show only text."""
    whom = ", ".join(users)
    return {
        Action.CREATED: f"{actor} created group {name!r}" + (f" with {whom}" if whom else ""),
        Action.ADDED: f"{actor} added {whom}",
        Action.REMOVED: f"{actor} removed {whom}",
        Action.LEFT: f"{actor} left",
        Action.ADMIN_APPOINTED: f"{actor} made {whom} an admin",
        Action.ADMIN_DEMOTED: f"{actor} made {whom} a member again",
        Action.OWNER_CHANGED: f"{actor} handed the group over to {whom}",
        Action.RENAMED: f"{actor} renamed the group to {name!r}",
        Action.DELETED: f"{actor} deleted the group",
    }[action]
