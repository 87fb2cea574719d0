"""Parsing of the interactive console's input lines into commands (no I/O)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_DELAY_SECONDS = 86400.0

_PRIVATE = re.compile(r"(\d+);;(.*)", re.DOTALL)
_TO_GROUP = re.compile(r"(g:\d+);;(.*)", re.DOTALL)
_GROUP_ID = re.compile(r"g:[1-9]\d{0,18}")


class CommandError(ValueError):
    """Input that is not a valid command; str(err) is shown to the user."""


@dataclass(frozen=True)
class GroupMessage:
    """Text for everyone online."""

    text: str


@dataclass(frozen=True)
class PrivateMessage:
    """Text for one user."""

    receiver_id: int
    text: str


@dataclass(frozen=True)
class MemberGroupMessage:
    """Text for the members of a group (``g:5;;text``)."""

    group_id: str
    text: str


@dataclass(frozen=True)
class CreateGroup:
    """A new group owned by this user, with these members."""

    name: str
    member_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChangeGroup:
    """A membership change: the Groups RPC's name and its fields."""

    method: str
    group_id: str
    user_ids: tuple[int, ...] = ()
    name: str = ""
    # SetAdmin: appoint (True) or step down (False).
    admin: bool | None = None


@dataclass(frozen=True)
class ListMembers:
    group_id: str
    after_user_id: int = 0


@dataclass(frozen=True)
class ListGroups:
    """List this user's groups."""


@dataclass(frozen=True)
class ShowHelp:
    """List the commands (``:all`` or ``:help``)."""


@dataclass(frozen=True)
class ListOnline:
    """List online users whose name starts with ``prefix`` (all when empty)."""

    prefix: str = ""


@dataclass(frozen=True)
class ShowInfo:
    """Show this client's session details."""


@dataclass(frozen=True)
class SearchLog:
    """Search the local chat log."""

    keyword: str


@dataclass(frozen=True)
class ShowEmoji:
    """Show one page of the emoji table."""

    page: int


@dataclass(frozen=True)
class DelayedMessage:
    """Send ``message`` after ``seconds``."""

    message: GroupMessage | PrivateMessage | MemberGroupMessage
    seconds: float


@dataclass(frozen=True)
class ShowHistory:
    """Page back through the private conversation with a user (``peer_id``)
    or a group's (``group_id``, ``peer_id`` 0): the newest page, or the one
    before a position."""

    peer_id: int
    before: int = 0
    group_id: str = ""


@dataclass(frozen=True)
class ListConversations:
    """This user's conversations, most recent first, with unread counts:
    the first page, or (``more``) the page after the last one shown."""

    more: bool = False


@dataclass(frozen=True)
class ShowReaders:
    """Who has read a conversation (a group ``g:N``, or the one with a user)
    up to a position (0: its newest message)."""

    conversation: str
    position: int = 0


@dataclass(frozen=True)
class Quit:
    """Leave the console (``:q!``)."""


Command = (
    GroupMessage
    | PrivateMessage
    | MemberGroupMessage
    | CreateGroup
    | ChangeGroup
    | ListMembers
    | ListGroups
    | ShowHelp
    | ListOnline
    | ShowInfo
    | SearchLog
    | ShowEmoji
    | DelayedMessage
    | ShowHistory
    | ListConversations
    | ShowReaders
    | Quit
)

COMMANDS: tuple[tuple[str, str], ...] = (
    ("text", "send text to everyone online"),
    ("userId;;text", "send text privately to the user with that id"),
    ("g:N;;text", "send text to the members of group g:N"),
    (":gcreate <name>[;;userId ...]", "create a group you own, with these members"),
    (":gadd g:N <userId> ...", "add users to a group (owner and admins)"),
    (":gremove g:N <userId> ...", "remove members from a group (owner and admins)"),
    (":gleave g:N", "leave a group (an owner hands it over first)"),
    (":grename g:N <name>", "rename a group (owner)"),
    (":gdelete g:N", "delete a group (owner)"),
    (":gadmin g:N <userId> [off]", "make a member an admin, or no longer (owner)"),
    (":gowner g:N <userId>", "hand the group over to a member (owner)"),
    (":gmembers g:N [after userId]", "list a group's members"),
    (":groups", "list your groups"),
    (":all", "list all commands (also :help)"),
    (":olu", "list online users"),
    (":pu <name prefix>", "list online users whose name starts with the prefix"),
    (":info", "show your user id, name and server"),
    (":q <keyword>", "search your local chat log"),
    (":emoji [page]", "show a page of emoji aliases; write :alias: in a message"),
    (":delay <text> <seconds>", "send text (or userId;;text) after a delay"),
    (":his <userId|g:N> [before]", "page back through a conversation with a user or a group"),
    (":convs [more]", "your conversations, latest first, with unread counts"),
    (":reads <g:N|userId> [position]", "who has read a conversation up to its newest message"),
    (":q!", "quit"),
)


def typing_target(text: str) -> int | str | None:
    """Where a line being typed would go if sent now, for typing notes: the
    receiver's id (``userId;;text``) or the group's (``g:N;;text``), once
    some text follows the ``;;``; None for anything else (a command, text
    for everyone online, a bad id)."""
    stripped = text.lstrip()
    to_group = _TO_GROUP.fullmatch(stripped)
    if to_group is not None:
        body, group_id = to_group.group(2), to_group.group(1)
        return group_id if body.strip() and _GROUP_ID.fullmatch(group_id) else None
    private = _PRIVATE.fullmatch(stripped)
    if private is None or not private.group(2).strip():
        return None
    receiver_id = int(private.group(1))
    return receiver_id if 0 < receiver_id < 2**63 else None


def parse(line: str) -> Command | None:
    """The command a console line stands for; None for a blank line.

    Raises CommandError for input that is not a valid command.
    """
    stripped = line.strip()
    if not stripped:
        return None
    if not stripped.startswith(":"):
        return _parse_message(stripped)
    head, *tail = stripped.split(maxsplit=1)
    rest = tail[0] if tail else ""
    name = head.lower()
    if name in (":all", ":help"):
        _no_arguments(head, rest)
        return ShowHelp()
    if name == ":olu":
        if rest:
            raise CommandError("usage: :olu (use :pu <name prefix> to filter by name)")
        return ListOnline()
    if name == ":pu":
        if not rest:
            raise CommandError("usage: :pu <name prefix>")
        return ListOnline(prefix=rest)
    if name == ":info":
        _no_arguments(head, rest)
        return ShowInfo()
    if name == ":q":
        if not rest:
            raise CommandError("usage: :q <keyword> to search the chat log (type :q! to quit)")
        return SearchLog(keyword=rest)
    if name == ":q!":
        _no_arguments(head, rest)
        return Quit()
    if name == ":emoji":
        return ShowEmoji(page=_parse_page(rest))
    if name == ":delay":
        return _parse_delay(rest)
    if name == ":his":
        return _parse_history(rest)
    if name == ":convs":
        if rest not in ("", "more"):
            raise CommandError("usage: :convs [more]")
        return ListConversations(more=rest == "more")
    if name == ":reads":
        return _parse_readers(rest)
    if name in _GROUP_COMMANDS:
        return _parse_group_command(name, rest)
    raise CommandError(f"unknown command {head!r}; type :all for the list of commands")


def _parse_message(text: str) -> GroupMessage | PrivateMessage | MemberGroupMessage:
    to_group = _TO_GROUP.fullmatch(text)
    if to_group is not None:
        body = to_group.group(2).strip()
        if not body:
            raise CommandError("usage: g:N;;text (the text must not be empty)")
        return MemberGroupMessage(group_id=_group_id(to_group.group(1)), text=body)
    match = _PRIVATE.fullmatch(text)
    if match is None:
        return GroupMessage(text=text)
    receiver_id = int(match.group(1))
    if receiver_id <= 0:
        raise CommandError("the user id before ;; must be a positive number")
    body = match.group(2).strip()
    if not body:
        raise CommandError("usage: userId;;text (the text must not be empty)")
    return PrivateMessage(receiver_id=receiver_id, text=body)


def _no_arguments(head: str, rest: str) -> None:
    if rest:
        raise CommandError(f"{head} takes no arguments")


def _parse_page(rest: str) -> int:
    if not rest:
        return 1
    try:
        number = int(rest)
    except ValueError:
        raise CommandError("usage: :emoji [page] (page is a number from 1)") from None
    if number < 1:
        raise CommandError("usage: :emoji [page] (page is a number from 1)")
    return number


def _parse_delay(rest: str) -> DelayedMessage:
    usage = "usage: :delay <text> <seconds>"
    parts = rest.rsplit(maxsplit=1)
    if len(parts) != 2:
        raise CommandError(usage)
    text, raw_seconds = parts
    try:
        seconds = float(raw_seconds)
    except ValueError:
        raise CommandError(f"{usage} (seconds must be a number, got {raw_seconds!r})") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_DELAY_SECONDS:
        raise CommandError(
            f"{usage} (seconds must be more than 0 and at most {MAX_DELAY_SECONDS:g})"
        )
    return DelayedMessage(message=_parse_message(text.strip()), seconds=seconds)


def _parse_history(rest: str) -> ShowHistory:
    usage = "usage: :his <userId|g:N> [before position]"
    parts = rest.split()
    group_id = _group_id(parts[0]) if parts and parts[0].startswith("g:") else ""
    numbers = parts[1:] if group_id else parts
    if not 1 <= len(parts) <= 2 or not all(part.isascii() and part.isdigit() for part in numbers):
        raise CommandError(f"{usage} (whole numbers)")
    values = [int(part) for part in numbers]
    if any(value <= 0 for value in values):
        raise CommandError(f"{usage} (the user id and position are positive)")
    peer_id = 0 if group_id else values[0]
    before = values[-1] if len(parts) == 2 else 0
    if peer_id >= 2**63 or before >= 2**64:
        raise CommandError(f"{usage} (a number is too large)")
    return ShowHistory(peer_id, before, group_id)


def _parse_readers(rest: str) -> ShowReaders:
    usage = "usage: :reads <g:N|userId> [position]"
    parts = rest.split()
    if not 1 <= len(parts) <= 2:
        raise CommandError(usage)
    target = parts[0]
    if target.startswith("g:"):
        target = _group_id(target)
    elif not (target.isascii() and target.isdigit()) or not 0 < int(target) < 2**63:
        raise CommandError(f"{usage} (a group id g:N or a user id)")
    position = 0
    if len(parts) == 2:
        if not (parts[1].isascii() and parts[1].isdigit()) or not 0 < int(parts[1]) < 2**64:
            raise CommandError(f"{usage} (the position is a number from 1)")
        position = int(parts[1])
    return ShowReaders(target, position)


_GROUP_COMMANDS = {
    ":gcreate",
    ":gadd",
    ":gremove",
    ":gleave",
    ":grename",
    ":gdelete",
    ":gadmin",
    ":gowner",
    ":gmembers",
    ":groups",
}


def _group_id(text: str) -> str:
    if not _GROUP_ID.fullmatch(text):
        raise CommandError(f"{text!r} is not a group id (g:N, N a number from 1)")
    return text


def _user_ids(words: list[str], usage: str) -> tuple[int, ...]:
    ids = []
    for word in words:
        if not word.isdecimal() or int(word) <= 0:
            raise CommandError(f"{usage} (user ids are numbers from 1, got {word!r})")
        ids.append(int(word))
    return tuple(ids)


def _parse_group_command(name: str, rest: str) -> Command:
    syntax = next(text for text, _ in COMMANDS if text == name or text.startswith(name + " "))
    usage = f"usage: {syntax}"
    if name == ":groups":
        if rest:
            raise CommandError(f"{usage} (no arguments)")
        return ListGroups()
    if name == ":gcreate":
        title, _, members = rest.partition(";;")
        if not title.strip():
            raise CommandError(usage)
        return CreateGroup(title.strip(), _user_ids(members.split(), usage))
    words = rest.split(maxsplit=1 if name == ":grename" else -1)
    if not words:
        raise CommandError(usage)
    group_id = _group_id(words[0])
    others = words[1:]
    if name in (":gadd", ":gremove"):
        if not others:
            raise CommandError(usage)
        method = "AddMembers" if name == ":gadd" else "RemoveMembers"
        return ChangeGroup(method, group_id, _user_ids(others, usage))
    if name == ":grename":
        if not others or not others[0].strip():
            raise CommandError(usage)
        return ChangeGroup("RenameGroup", group_id, name=others[0].strip())
    if name in (":gadmin", ":gowner"):
        off = name == ":gadmin" and len(others) == 2 and others[1] == "off"
        if len(others) != 1 + off:
            raise CommandError(usage)
        (user_id,) = _user_ids(others[:1], usage)
        if name == ":gowner":
            return ChangeGroup("TransferOwnership", group_id, (user_id,))
        return ChangeGroup("SetAdmin", group_id, (user_id,), admin=not off)
    if name == ":gmembers":
        if len(others) > 1:
            raise CommandError(usage)
        after = _user_ids(others, usage)
        return ListMembers(group_id, after[0] if after else 0)
    if others:
        raise CommandError(f"{usage} (nothing after the group id)")
    return ChangeGroup("LeaveGroup" if name == ":gleave" else "DeleteGroup", group_id)
