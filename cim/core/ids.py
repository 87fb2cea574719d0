"""Identifiers: message ids (unique, sortable by time), session and trace ids."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _base32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class MessageIdGenerator:
    """Message ids that sort by creation time across routes.

    Layout (Crockford base32, 21 characters): 48-bit millisecond timestamp,
    40 random bits fixed per generator (tells routes apart without coordination),
    a 12-bit counter within the millisecond. Monotonic within one generator even
    when the wall clock steps back.
    """

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._node = int.from_bytes(os.urandom(5), "big")
        self._last_ms = 0
        self._counter = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            now = self._clock_ms()
            if now <= self._last_ms:
                now = self._last_ms
                self._counter += 1
                if self._counter >= 4096:  # counter exhausted: borrow the next millisecond
                    now += 1
                    self._counter = 0
            else:
                self._counter = 0
            self._last_ms = now
            return _base32(now, 10) + _base32(self._node, 8) + _base32(self._counter, 3)


def message_time_ms(message_id: str) -> int:
    """The creation time (ms since the epoch) a message id carries; 0 if it is
    not one of ours. Retries of a send reuse the id, so they get its time too."""
    value = 0
    for char in message_id[:10]:
        digit = _CROCKFORD.find(char)
        if digit < 0:
            return 0
        value = value * 32 + digit
    return value if len(message_id) >= 10 else 0


def new_session_id() -> str:
    """An unguessable id for one login session."""
    return secrets.token_urlsafe(12)


def new_trace_id() -> str:
    """A short random id that follows one message through the logs."""
    return secrets.token_hex(8)
