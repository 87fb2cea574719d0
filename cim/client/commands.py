"""Parsing of the interactive console's input lines into commands (no I/O)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_DELAY_SECONDS = 86400.0

_PRIVATE = re.compile(r"(\d+);;(.*)", re.DOTALL)


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

    message: GroupMessage | PrivateMessage
    seconds: float


@dataclass(frozen=True)
class ShowHistory:
    """Page back through the private conversation with a user: the newest
    page, or the one before a position."""

    peer_id: int
    before: int = 0


@dataclass(frozen=True)
class Quit:
    """Leave the console (``:q!``)."""


Command = (
    GroupMessage
    | PrivateMessage
    | ShowHelp
    | ListOnline
    | ShowInfo
    | SearchLog
    | ShowEmoji
    | DelayedMessage
    | ShowHistory
    | Quit
)

COMMANDS: tuple[tuple[str, str], ...] = (
    ("text", "send text to everyone online"),
    ("userId;;text", "send text privately to the user with that id"),
    (":all", "list all commands (also :help)"),
    (":olu", "list online users"),
    (":pu <name prefix>", "list online users whose name starts with the prefix"),
    (":info", "show your user id, name and server"),
    (":q <keyword>", "search your local chat log"),
    (":emoji [page]", "show a page of emoji aliases; write :alias: in a message"),
    (":delay <text> <seconds>", "send text (or userId;;text) after a delay"),
    (":his <userId> [before]", "page back through your conversation with a user"),
    (":q!", "quit"),
)


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
    raise CommandError(f"unknown command {head!r}; type :all for the list of commands")


def _parse_message(text: str) -> GroupMessage | PrivateMessage:
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
    usage = "usage: :his <userId> [before position]"
    parts = rest.split()
    if not 1 <= len(parts) <= 2 or not all(part.isascii() and part.isdigit() for part in parts):
        raise CommandError(f"{usage} (whole numbers)")
    peer_id = int(parts[0])
    before = int(parts[1]) if len(parts) == 2 else 0
    if peer_id <= 0 or (len(parts) == 2 and before <= 0):
        raise CommandError(f"{usage} (the user id and position are positive)")
    if peer_id >= 2**63 or before >= 2**64:
        raise CommandError(f"{usage} (a number is too large)")
    return ShowHistory(peer_id, before)
