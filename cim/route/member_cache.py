"""Group members a route holds, by membership version: shared by the message
path (an append hands the members back only when the version moved) and the
typing path (which reads the version alone). A version names one member set,
so an entry at the group's current version is current."""

from __future__ import annotations

# Groups whose members a route holds at once (then it starts over).
GROUP_CACHE_LIMIT = 10_000

Members = tuple[int, ...]


class GroupMemberCache:
    def __init__(self, limit: int = GROUP_CACHE_LIMIT) -> None:
        self._limit = limit
        self._groups: dict[str, tuple[int, Members]] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def get(self, group_id: str) -> tuple[int, Members] | None:
        """(version, members) as last seen, or None."""
        return self._groups.get(group_id)

    def at(self, group_id: str, version: int) -> Members | None:
        """The members if they are held at exactly ``version``."""
        entry = self._groups.get(group_id)
        return entry[1] if entry is not None and entry[0] == version else None

    def put(self, group_id: str, version: int, members: Members) -> None:
        if len(self._groups) >= self._limit and group_id not in self._groups:
            self._groups.clear()
        self._groups[group_id] = (version, members)
