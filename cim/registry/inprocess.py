"""The in-process registry of embedded mode: every member lives in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cim.core.members import Member, MemberKind
from cim.registry.base import Listener


class InProcessRegistry:
    """Shared by the route and chat servers of one process (``cim dev``, tests).

    Listeners are called soon after a change, on the running loop, like the
    ZooKeeper registry's watches: never inside the caller's own stack.
    """

    errors = 0  # nothing here fails

    def __init__(self) -> None:
        self._members: dict[MemberKind, dict[str, Member]] = {kind: {} for kind in MemberKind}
        self._listeners: dict[MemberKind, list[Listener]] = {kind: [] for kind in MemberKind}

    async def start(self) -> None:
        return None

    async def register(self, member: Member) -> None:
        self._members[member.kind][member.member_id] = member
        self._notify(member.kind)

    async def update(self, member: Member) -> None:
        await self.register(member)

    async def deregister(self, member: Member) -> None:
        if self._members[member.kind].pop(member.member_id, None) is not None:
            self._notify(member.kind)

    def members(self, kind: MemberKind) -> list[Member]:
        return list(self._members[kind].values())

    def subscribe(self, kind: MemberKind, listener: Listener) -> Callable[[], None]:
        self._listeners[kind].append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners[kind]:
                self._listeners[kind].remove(listener)

        return unsubscribe

    def _notify(self, kind: MemberKind) -> None:
        view = self.members(kind)
        loop = asyncio.get_running_loop()
        for listener in list(self._listeners[kind]):
            loop.call_soon(listener, view)

    async def aclose(self) -> None:
        for listeners in self._listeners.values():
            listeners.clear()
