"""The client's local chat log: one text file per user per day, and searching it."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

_DAY_FILE = re.compile(r"\d{4}-\d{2}-\d{2}\.log")
# Every line break str.splitlines() knows, so one append is always one log line.
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_MAX_NAME = 100


def _safe_name(user_name: str) -> str:
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in user_name)
    # A leading dot would hide the directory or, as "." or "..", escape it.
    if name.startswith("."):
        name = "_" + name[1:]
    return name[:_MAX_NAME] or "_"


class ChatLog:
    """Appends timestamped lines to ``<directory>/<user>/<YYYY-MM-DD>.log``."""

    def __init__(
        self,
        directory: Path,
        user_name: str,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self._user_dir = directory / _safe_name(user_name)
        self._clock = clock

    @property
    def user_dir(self) -> Path:
        """The directory holding this user's day files."""
        return self._user_dir

    def append(self, line: str) -> None:
        """Writes ``HH:MM:SS <line>`` to today's file."""
        now = self._clock()
        self._user_dir.mkdir(parents=True, exist_ok=True)
        path = self._user_dir / f"{now:%Y-%m-%d}.log"
        text = _LINE_BREAKS.sub(" ", line)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{now:%H:%M:%S} {text}\n")

    def search(self, keyword: str, limit: int = 200) -> list[tuple[str, str]]:
        """The most recent ``limit`` lines containing ``keyword`` (any case), oldest first.

        Each match is ``(day, line)`` with day as ``YYYY-MM-DD``.
        """
        if limit <= 0 or not self._user_dir.is_dir():
            return []
        pattern = re.compile(re.escape(keyword), re.IGNORECASE)
        matches: deque[tuple[str, str]] = deque(maxlen=limit)
        days = sorted(
            p for p in self._user_dir.iterdir() if _DAY_FILE.fullmatch(p.name) and p.is_file()
        )
        for path in days:
            day = path.stem
            with path.open(encoding="utf-8", errors="replace", newline="\n") as f:
                for raw in f:
                    line = raw.rstrip("\n")
                    if pattern.search(line):
                        matches.append((day, line))
        return list(matches)


def highlight(line: str, keyword: str) -> list[tuple[str, str]]:
    """prompt_toolkit fragments of ``line`` with each occurrence of ``keyword`` highlighted."""
    if not keyword:
        return [("", line)]
    fragments: list[tuple[str, str]] = []
    position = 0
    for match in re.finditer(re.escape(keyword), line, re.IGNORECASE):
        if match.start() > position:
            fragments.append(("", line[position : match.start()]))
        fragments.append(("class:highlight", match.group()))
        position = match.end()
    if position < len(line) or not fragments:
        fragments.append(("", line[position:]))
    return fragments
