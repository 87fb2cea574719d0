"""The ``Registry`` protocol.

A member registers itself (ephemeral: it vanishes when the process does) and
updates its entry (connection count). Readers keep an in-memory view, updated
by notifications, never by asking per request: ``members`` is a cheap read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cim.core.members import Member, MemberKind

Listener = Callable[[list[Member]], None]


class Registry(Protocol):
    # Failed operations and lost connections so far (what metrics report).
    errors: int

    async def start(self) -> None: ...

    async def register(self, member: Member) -> None: ...

    async def update(self, member: Member) -> None: ...

    async def deregister(self, member: Member) -> None: ...

    def members(self, kind: MemberKind) -> list[Member]:
        """The current view of one kind of member."""

    def subscribe(self, kind: MemberKind, listener: Listener) -> Callable[[], None]:
        """Calls ``listener`` (on the event loop) with the new view after every
        change; returns a function that unsubscribes."""

    async def aclose(self) -> None: ...
