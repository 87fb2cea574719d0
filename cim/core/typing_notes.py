"""Typing notes (pure): which ones a chat server forwards, and how a client
shows the ones it gets. Time comes from injectable clocks.

Theory of operation
-------------------
A typing note ("user U is typing in conversation C", or "stopped") is
ephemeral: never stored, no seq, no ack. It is worth little, so it must cost
little, and a client that floods it must not cost the cluster anything.

* :class:`TypingThrottle` forwards at most one "typing" per key (a user and
  a conversation) per ``interval`` (3 s); a "stopped" only after a forwarded
  "typing" that no "stopped" has ended yet. Everything else is dropped
  quietly: a client that sends a note per keystroke loses nothing a receiver
  would see (receivers show a note for ``SHOW_FOR``, 6 s, so one every 3 s
  keeps it shown). The client library uses the same class so that it sends
  no more than the server forwards.
* :class:`TypingGate` is a chat server's: the throttle for every user and
  conversation held there, and a flood bucket per user (``rate`` 10 a second,
  ``burst`` 10). Past the bucket every note is refused (RESOURCE_EXHAUSTED),
  throttled or not; the session tells the client at most once a
  ``REFUSAL_INTERVAL`` (1 s) and the stream goes on. It counts what it
  forwards and drops (plain integers, read by the metrics).
* :class:`TypingBoard` is a receiving client's: who is typing where, each
  shown until its note is ``SHOW_FOR`` old, a stop comes, or a message of
  theirs in that conversation arrives. Notes and messages take different
  paths through the cluster, so a note sent just before a message can
  arrive just after it: a note within ``ANSWER_GRACE`` (1 s) of their
  message there is taken for that one and not shown.

Memory is bounded everywhere: keys idle past ``SHOW_FOR`` are forgotten (a
stop after that would end nothing a receiver still shows), and past
``max_keys`` the oldest go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cim.core.ratelimit import DEFAULT_MAX_KEYS, KeyedLimiter
from cim.errors import ResourceExhausted

__all__ = [
    "ANSWER_GRACE",
    "DROP_REASONS",
    "MAX_TYPING_PER_SEC",
    "REFUSAL_INTERVAL",
    "SHOW_FOR",
    "TYPING_BURST",
    "TYPING_INTERVAL",
    "TypingBoard",
    "TypingGate",
    "TypingThrottle",
    "Typist",
]

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)

# One "typing" per user and conversation is forwarded at most this often.
TYPING_INTERVAL = 3.0
# A receiver shows a note this long unless it is renewed, stopped or answered.
SHOW_FOR = 6.0
# Past this many notes a second (bursts of TYPING_BURST) a user's notes are refused.
MAX_TYPING_PER_SEC = 10.0
TYPING_BURST = 10
# A stream hears of its refused notes at most once per this many seconds.
REFUSAL_INTERVAL = 1.0
# A note this soon after the typist's message in the conversation is the
# one that preceded the message (it took a slower path): not shown.
ANSWER_GRACE = 1.0

# Why a chat server did not forward a note (metric labels: a fixed set).
FORWARDED = "forwarded"
THROTTLED = "throttled"
FLOOD = "flood"
INVALID = "invalid"
NOT_MEMBER = "not_member"
REFUSED = "refused_by_route"
FAILED = "route_failed"
DROP_REASONS = (THROTTLED, FLOOD, INVALID, NOT_MEMBER, REFUSED, FAILED)


class TypingThrottle(Generic[K]):
    """At most one "typing" per key per ``interval``; a "stopped" only after a
    forwarded "typing" it ends. Keys idle for ``forget_after`` are dropped,
    and past ``max_keys`` the least recently forwarded one."""

    def __init__(
        self,
        interval: float = TYPING_INTERVAL,
        *,
        forget_after: float = SHOW_FOR,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Clock = time.monotonic,
    ) -> None:
        if interval < 0 or forget_after < interval:
            raise ValueError("the interval must be >= 0 and at most forget_after")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.interval = interval
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._clock = clock
        # key -> (when its last "typing" went out, whether no "stopped" ended it),
        # oldest "typing" first: the order eviction walks.
        self._keys: OrderedDict[K, tuple[float, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def allow(self, key: K, stopped: bool = False) -> bool:
        """Whether this note goes out (and records it if so)."""
        now = self._clock()
        self._forget(now)
        last = self._keys.get(key)
        if stopped:
            if last is None or not last[1]:
                return False  # nothing shown to end
            self._keys[key] = (last[0], False)
            return True
        if last is not None and now - last[0] < self.interval:
            return False
        self._keys[key] = (now, True)
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return True

    def reset(self, key: K) -> None:
        """A message ended the note (receivers stop showing it): the next
        "typing" goes out at once."""
        self._keys.pop(key, None)

    def _forget(self, now: float) -> None:
        keys = self._keys
        while keys:
            key, (sent, _) = next(iter(keys.items()))
            if now - sent < self.forget_after:
                return
            del keys[key]


class TypingGate:
    """A chat server's typing limits, shared by all its streams (a user's new
    stream does not start afresh): a flood bucket per user, and the throttle
    per user and conversation. ``counts`` says what happened to every note
    (``forwarded`` or a drop reason of ``DROP_REASONS``)."""

    def __init__(
        self,
        *,
        interval: float = TYPING_INTERVAL,
        rate: float = MAX_TYPING_PER_SEC,
        burst: float = TYPING_BURST,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Clock = time.monotonic,
    ) -> None:
        self.flood: KeyedLimiter[int] = KeyedLimiter(rate, burst, max_keys=max_keys, clock=clock)
        self.throttle: TypingThrottle[tuple[int, str]] = TypingThrottle(
            interval, max_keys=max_keys, clock=clock
        )
        self.counts: dict[str, int] = dict.fromkeys((FORWARDED, *DROP_REASONS), 0)

    def flood_refusal(self, user_id: int) -> ResourceExhausted | None:
        """Counts one note of the user against the flood bucket; over it, the
        refusal (and the note is counted as dropped)."""
        refusal = self.flood.refusal(user_id, "typing notes from this user")
        if refusal is not None:
            self.counts[FLOOD] += 1
        return refusal

    def allow(self, user_id: int, conversation_id: str, stopped: bool) -> bool:
        """Whether a note that passed the flood bucket goes to a route."""
        if self.throttle.allow((user_id, conversation_id), stopped):
            self.counts[FORWARDED] += 1
            return True
        self.counts[THROTTLED] += 1
        return False

    def message_sent(self, user_id: int, conversation_id: str) -> None:
        """The user sent a message to the conversation, which ends their note
        there: their next one is forwarded at once."""
        self.throttle.reset((user_id, conversation_id))

    def count(self, reason: str) -> None:
        """One more note dropped for ``reason`` (one of ``DROP_REASONS``)."""
        self.counts[reason] += 1


@dataclass(frozen=True)
class Typist:
    """Someone shown as typing in a conversation."""

    conversation_id: str
    user_id: int
    user_name: str
    # When the note that shows them expires (the board's clock).
    until: float


class TypingBoard:
    """Who is typing where, as a receiving client shows it."""

    def __init__(
        self,
        show_for: float = SHOW_FOR,
        *,
        answer_grace: float = ANSWER_GRACE,
        clock: Clock = time.monotonic,
    ) -> None:
        self.show_for = show_for
        self.answer_grace = answer_grace
        self.clock = clock
        self._typists: dict[tuple[str, int], Typist] = {}
        # (conversation, user) -> when their last message there was shown.
        self._answered: dict[tuple[str, int], float] = {}

    def note(self, conversation_id: str, user_id: int, user_name: str, stopped: bool) -> bool:
        """Records a note; True when it starts showing someone who was not
        shown (a renewal or a stop is not a start)."""
        key = (conversation_id, user_id)
        self._expire()
        if stopped or key in self._answered:
            self._typists.pop(key, None)
            return False
        new = key not in self._typists
        until = self.clock() + self.show_for
        self._typists[key] = Typist(conversation_id, user_id, user_name, until)
        return new

    def clear(self, conversation_id: str, user_id: int) -> bool:
        """Their message arrived: they are no longer shown typing there (nor
        for a note that comes within ``answer_grace``). True when they were
        shown."""
        key = (conversation_id, user_id)
        self._expire()
        self._answered[key] = self.clock()
        return self._typists.pop(key, None) is not None

    def typing(self) -> list[Typist]:
        """Everyone shown now, the longest-shown first."""
        self._expire()
        return sorted(self._typists.values(), key=lambda typist: typist.until)

    def next_change(self) -> float | None:
        """When the next one stops being shown (None: nobody is shown)."""
        self._expire()
        return min((typist.until for typist in self._typists.values()), default=None)

    def _expire(self) -> None:
        now = self.clock()
        for key in [key for key, typist in self._typists.items() if typist.until <= now]:
            del self._typists[key]
        grace = self.answer_grace
        for key in [key for key, at in self._answered.items() if now - at >= grace]:
            del self._answered[key]
