"""Where a client keeps the last seq it has handled, across restarts.

A client that restarts presents this seq at login and gets a replay of what
came after it, so nothing is lost while it was away and nothing it already
showed is shown again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class SeqCursor(Protocol):
    def load(self) -> int: ...

    def save(self, seq: int) -> None: ...


class MemoryCursor:
    """Lives as long as the process (the default: a new process replays
    whatever its user has not acked)."""

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq

    def load(self) -> int:
        return self.seq

    def save(self, seq: int) -> None:
        self.seq = seq


class FileCursor:
    """A small text file, replaced atomically on each save (a crash leaves
    the old or the new value, never a torn one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: int | None = None

    def load(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot read %s (%s): starting from the server's inbox", self.path, exc)
            return 0
        if not text.isdigit():
            log.warning("ignoring %s: %r is not a sequence number", self.path, text[:40])
            return 0
        self._saved = int(text)
        return self._saved

    def save(self, seq: int) -> None:
        if seq == self._saved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(f"{seq}\n", encoding="ascii")
        os.replace(temporary, self.path)
        self._saved = seq
