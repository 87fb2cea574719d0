"""A registry from configuration: fixed addresses, for running ``cim route`` and
``cim server`` as separate processes without ZooKeeper."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cim.core.members import Member, MemberKind
from cim.registry.base import Listener


class StaticRegistry:
    """Members are the configured ones; a process's own registration is kept
    so that its own view includes itself. Dead members are found by the
    route's failure tracking (suspect marking), since nothing here expires."""

    errors = 0  # nothing here fails

    def __init__(self, members: Iterable[Member]) -> None:
        self._members: dict[MemberKind, dict[str, Member]] = {kind: {} for kind in MemberKind}
        for member in members:
            self._members[member.kind][member.member_id] = member

    @classmethod
    def from_addresses(cls, kind: MemberKind, addresses: Iterable[str]) -> StaticRegistry:
        """Members named after their addresses (the id a ZooKeeper node would have)."""
        return cls(Member(kind, address, address) for address in addresses)

    async def start(self) -> None:
        return None

    async def register(self, member: Member) -> None:
        self._members[member.kind][member.member_id] = member

    async def update(self, member: Member) -> None:
        self._members[member.kind][member.member_id] = member

    async def deregister(self, member: Member) -> None:
        self._members[member.kind].pop(member.member_id, None)

    def members(self, kind: MemberKind) -> list[Member]:
        return list(self._members[kind].values())

    def subscribe(self, kind: MemberKind, listener: Listener) -> Callable[[], None]:
        return lambda: None

    async def aclose(self) -> None:
        return None
