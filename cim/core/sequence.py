"""A receiver's view of its own message sequence (pure logic, no I/O).

Messages for one user carry seqs 1, 2, 3... Pushes can arrive twice (a replay
overlapping a live push, a retried send) or out of order (two routes pushing
at once, a push lost and replayed later). The tracker releases each seq once,
in order: a seq past a gap is held until the gap fills, or until the server
says the missing ones are gone. ``through`` is what a client acks and
presents at its next login.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class SequenceTracker(Generic[T]):
    def __init__(self, through: int = 0, max_held: int = 100_000) -> None:
        # Every seq up to here has been released (or is known to be gone).
        self.through = through
        self._held: dict[int, T] = {}
        self._max_held = max_held
        # Duplicates dropped so far (for diagnostics and tests).
        self.duplicates = 0

    @property
    def has_gap(self) -> bool:
        """Seqs past a missing one are waiting."""
        return bool(self._held)

    def offer(self, seq: int, item: T) -> list[T]:
        """Takes one pushed item; returns what can now be released, in order."""
        if seq <= self.through or seq in self._held:
            self.duplicates += 1
            return []
        released = []
        if len(self._held) >= self._max_held:
            # A gap this long will not fill by waiting: release what is held
            # and give the missing seqs up.
            released = self.skip_through(max(self._held))
        self._held[seq] = item
        return released + self._release()

    def skip_through(self, seq: int) -> list[T]:
        """Everything up to ``seq`` has been sent or is gone: release what is
        held up to there and treat the rest of it as complete."""
        released = [self._held.pop(s) for s in sorted(s for s in self._held if s <= seq)]
        self.through = max(self.through, seq)
        return released + self._release()

    def reset(self, through: int) -> None:
        """The server's sequence restarted below ours (its store lost data):
        follow it, or every new message would look like a duplicate."""
        self.through = through
        self._held.clear()

    def _release(self) -> list[T]:
        released = []
        while (item := self._held.pop(self.through + 1, None)) is not None:
            self.through += 1
            released.append(item)
        return released
