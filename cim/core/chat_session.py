"""The client stream's protocol (``cim.v1.Chat.Connect``) as a state machine
without I/O, in the manner of h11.

Theory of operation
-------------------
One :class:`ChatSession` per client stream. Its *driver* (a transport
adapter: the gRPC servicer in ``cim.server.service`` with the outbound queue of
``cim.server.streams``; a WebSocket transport can drive the same class) feeds
it events with :meth:`ChatSession.handle` and carries out the actions it
returns, in order. Nothing here waits, reads a socket or calls a route: frames,
timer ticks and the results of route calls go in; what to do comes out. Time
comes from injectable clocks.

States::

    AWAITING_LOGIN --login frame--> CHECKING_LOGIN --accepted--> REPLAYING <--> LIVE
          any state --error, kick, drain, stop, end--> CLOSED

Events in (frozen dataclasses, below): ``FrameReceived``, ``ClientClosed``,
``ReadFailed``, ``LoginTimedOut``, ``LoginAccepted``, ``LoginRefused``,
``ReplayPageReceived``, ``ReplayPageQueued``, ``ReplayFailed``,
``SendSettled``, ``Deliver``, ``TypingReceived``, ``TypingRefused``,
``ReceiptArrived``, ``OutboundOverflow``, ``Tick``, ``Kick``, ``Replaced``,
``SessionInvalid``, ``Drain``, ``Stop``, ``Ended``.

Actions out: ``Push`` (a frame for the client; ``paced`` ones wait for room in
the outbound queue, ``expendable`` ones are dropped when it is half full),
``CheckLogin`` (ask a route whether the token stands), ``FetchReplayPage``,
``Submit`` (hand a send to a route), ``ForwardAck``, ``ForwardRead``, ``ForwardTyping``,
``Close`` (end the stream after what is queued, with an optional final frame
past the queue's bound and an optional error for the call's status), and
``ReportDisconnected``.

Rules:

* Login. The first frame must be a login naming a user id and a session
  token, within ``login_timeout`` (the driver times it and says
  ``LoginTimedOut``). Its answer is ``CheckLogin``; the driver reads no more
  frames until it feeds ``LoginAccepted`` or ``LoginRefused`` (a frame
  meanwhile is a driver bug: RuntimeError). A server draining before the
  login (``Drain`` while awaiting it) refuses the stream at its first frame.
* Replay. An accepted login pushes ``LoginOk`` and replays the inbox after the
  login's ``last_seq``, a page (``replay_page`` entries) at a time. The
  driver queues a page's frames at the client's pace (``paced`` pushes) and
  then says ``ReplayPageQueued``; only then comes the next page, or the end:
  a ``KIND_BEHIND`` notice if retention dropped messages the client never
  had, ``ReplayDone``, and the live state. A ``sync`` frame starts a replay
  from its seq; one that comes during a replay is ignored.
* Live pushes (``Deliver``) are held back from the login on, while a replay
  runs, and released after its ``ReplayDone`` minus the seqs the replay
  covered. More than ``max_held`` held messages are dropped and the replay
  reads the inbox once more (they are all stored there). A seq among the
  last ``RECENT_SEQS`` pushed live, or one a replay covered, is a duplicate
  (a retried send is pushed again) and is dropped.
* Every frame's fields are checked against their declared limits
  (``cim.core.limits``): a send over one fails alone (INVALID_ARGUMENT),
  any other frame over one ends the stream with INVALID_ARGUMENT.
* Sends are checked in this order: a target, the text's size
  (``max_text_bytes``, INVALID_ARGUMENT), fewer than ``max_outstanding_sends``
  awaiting their result, the per-user rate limit (both RESOURCE_EXHAUSTED). A
  refused send gets an error result and the stream goes on; an accepted one
  becomes ``Submit`` and its ``SendSettled`` becomes its result frame.
* Acks are forwarded for the session's own user, never one a frame names.
  So are read marks (``ForwardRead``), once checked: a well-formed
  conversation id, a position of at least 1, and for a private conversation
  one the user is in (else the stream ends: INVALID_ARGUMENT,
  PERMISSION_DENIED); a group's membership is the route's check.
* Read receipts from a route (``ReceiptArrived``) are pushed as they come
  once the login is accepted: they carry no seq, are never held back by a
  replay, and are dropped when the session is closed.
* Typing notes (``cim.core.typing_notes``) never end the stream. Each counts
  against the user's flood bucket (the server's ``TypingGate``); over it, or
  with a malformed conversation id, or a private one that is not the user's,
  the note is refused: a ``KIND_REFUSED`` notice with the error's code, at
  most one per ``REFUSAL_INTERVAL`` (the others are silent). A note past the
  throttle becomes ``ForwardTyping`` for the session's user (a group's
  membership is the route's to check: its refusal comes back as
  ``TypingRefused`` and is told the same way). A note from a route
  (``TypingReceived``) is an expendable push, in the replay or live.
* Heartbeat. Every frame counts as traffic; a ``Tick`` (the driver's idle
  sweep) closes a session silent for longer than the heartbeat policy's
  idle timeout. Pings get a pong.
* The driver's outbound queue is bounded: a push it cannot queue is reported
  with ``OutboundOverflow`` and the session closes "too slow" (the client
  catches up by replay at its next login).
* Once closed, frames are ignored except acks (still forwarded: what the
  client acked is not replayed to its next login): a send is not submitted,
  and nothing more is pushed.
  ``Ended`` says the call is over; a session whose login was accepted answers
  it with ``ReportDisconnected`` (the driver reports it only if the stream is
  still the user's current one).

How a stream ends: every end caused by an error carries the error twice,
as a ``KIND_ERROR`` notice (with its code) for clients that read frames, and
as ``Close.error``, which the driver makes the call's status (code and
message) for generic clients (grpcurl):

    no login frame, another frame first, no user id or token   UNAUTHENTICATED
    login refused by the route (bad or ended token, a lost race)  the route's code
    login on a draining server                                 UNAVAILABLE
    unexpected or empty frame, a second login                  INVALID_ARGUMENT
    a read mark with a bad id or position                      INVALID_ARGUMENT
    a read mark of someone else's private conversation         PERMISSION_DENIED
    a frame that does not decode (ReadFailed)                  its error's code
    silent past the idle timeout                               DEADLINE_EXCEEDED
    outbound queue full ("too slow")                           RESOURCE_EXHAUSTED
    the replay's route call failed                             UNAVAILABLE

Normal ends keep status OK, as before: the protocol worked, and an error
status would read as a failure to generic clients. Kicked, replaced by a newer
login, or the session ended elsewhere: a ``KIND_KICKED`` notice (the client
does not reconnect). Drain: a ``KIND_DRAINING`` notice (the client reconnects
through a route). The client half-closing, or the server stopping: no notice.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cim.core import conversations, limits, typing_notes
from cim.core.liveness import HeartbeatPolicy
from cim.core.ratelimit import KeyedLimiter
from cim.core.typing_notes import REFUSAL_INTERVAL, TypingGate
from cim.errors import (
    CimError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    to_item,
)
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2

__all__ = [
    "LOGIN_TIMEOUT",
    "MAX_OUTSTANDING_SENDS",
    "RECENT_SEQS",
    "REPLAY_PAGE",
    "Action",
    "ChatSession",
    "CheckLogin",
    "ClientClosed",
    "Close",
    "Deliver",
    "Drain",
    "Ended",
    "Event",
    "FetchReplayPage",
    "ForwardAck",
    "ForwardRead",
    "ForwardTyping",
    "FrameReceived",
    "Kick",
    "LiveGate",
    "LoginAccepted",
    "LoginRefused",
    "LoginTimedOut",
    "OutboundOverflow",
    "Push",
    "ReadFailed",
    "ReceiptArrived",
    "Replaced",
    "ReplayFailed",
    "ReplayPageQueued",
    "ReplayPageReceived",
    "ReportDisconnected",
    "SendSettled",
    "SessionInvalid",
    "SessionSettings",
    "State",
    "Stop",
    "Submit",
    "Tick",
    "TypingReceived",
    "TypingRefused",
    "error_notice",
    "notice",
]

LOGIN_TIMEOUT = 10.0
MAX_OUTSTANDING_SENDS = 256
# Inbox entries one replay page reads.
REPLAY_PAGE = 200
# How many recently pushed seqs a session remembers to drop repeated pushes.
RECENT_SEQS = 256
# Conversations a session remembers having typed in (until a message there).
MAX_TYPING_IN = 64

KICKED = chat_pb2.Notice.KIND_KICKED
DRAINING = chat_pb2.Notice.KIND_DRAINING
ERROR = chat_pb2.Notice.KIND_ERROR
BEHIND = chat_pb2.Notice.KIND_BEHIND
REFUSED = chat_pb2.Notice.KIND_REFUSED

Clock = Callable[[], float]


class State(enum.Enum):
    AWAITING_LOGIN = "awaiting login"
    CHECKING_LOGIN = "checking login"
    REPLAYING = "replaying"
    LIVE = "live"
    CLOSED = "closed"


@dataclass(frozen=True)
class SessionSettings:
    """What a chat server tells each of its sessions."""

    server_id: str
    heartbeat: HeartbeatPolicy = field(default_factory=HeartbeatPolicy)
    max_text_bytes: int = 4096
    # Live messages held back during a replay (the outbound queue's bound).
    max_held: int = 1024
    max_outstanding_sends: int = MAX_OUTSTANDING_SENDS
    replay_page: int = REPLAY_PAGE
    login_timeout: float = LOGIN_TIMEOUT


# --- events: what the driver feeds in --------------------------------------------


@dataclass(frozen=True)
class FrameReceived:
    frame: chat_pb2.ClientFrame


@dataclass(frozen=True)
class ClientClosed:
    """The client ended its side of the stream."""


@dataclass(frozen=True)
class ReadFailed:
    """A frame could not be read (it does not decode): a protocol error."""

    error: CimError


@dataclass(frozen=True)
class LoginTimedOut:
    """No first frame within ``SessionSettings.login_timeout``."""


@dataclass(frozen=True)
class LoginAccepted:
    session_id: str
    user_name: str


@dataclass(frozen=True)
class LoginRefused:
    error: CimError


@dataclass(frozen=True)
class ReplayPageReceived:
    reply: route_internal_pb2.ReplayResponse


@dataclass(frozen=True)
class ReplayPageQueued:
    """Every frame of the last page is queued for the client."""


@dataclass(frozen=True)
class ReplayFailed:
    error: CimError


@dataclass(frozen=True)
class SendSettled:
    """A submitted send's outcome; None when it was abandoned (shutdown)."""

    correlation_id: int
    outcome: route_internal_pb2.SubmitResult | CimError | None = None


@dataclass(frozen=True)
class Deliver:
    """A live message for this session's user, from a route."""

    message: common_pb2.ChatMessage


@dataclass(frozen=True)
class TypingReceived:
    """Another participant's typing note for this session's user, from a route."""

    typing: chat_pb2.Typing


@dataclass(frozen=True)
class TypingRefused:
    """The route refused a typing note this session forwarded (not a member
    of the group, a deleted group)."""

    error: CimError


@dataclass(frozen=True)
class ReceiptArrived:
    """A read receipt for this session's user, from a route."""

    receipt: chat_pb2.ReadReceipt


@dataclass(frozen=True)
class OutboundOverflow:
    """A push did not fit in the driver's bounded outbound queue."""


@dataclass(frozen=True)
class Tick:
    """Time passed: the idle deadline is checked."""


@dataclass(frozen=True)
class Kick:
    """A route ends the session ``session_id`` (other sessions ignore it)."""

    session_id: str
    reason: str = ""


@dataclass(frozen=True)
class Replaced:
    """A newer login of the user took over on this server."""


@dataclass(frozen=True)
class SessionInvalid:
    """A refresh found the session ``session_id`` ended elsewhere."""

    session_id: str


@dataclass(frozen=True)
class Drain:
    """The server is shutting down gracefully."""


@dataclass(frozen=True)
class Stop:
    """The server is stopping now."""


@dataclass(frozen=True)
class Ended:
    """The driver's call is over (for whatever reason)."""


Event = (
    FrameReceived
    | ClientClosed
    | ReadFailed
    | LoginTimedOut
    | LoginAccepted
    | LoginRefused
    | ReplayPageReceived
    | ReplayPageQueued
    | ReplayFailed
    | SendSettled
    | Deliver
    | TypingReceived
    | TypingRefused
    | ReceiptArrived
    | OutboundOverflow
    | Tick
    | Kick
    | Replaced
    | SessionInvalid
    | Drain
    | Stop
    | Ended
)


# --- actions: what the driver carries out ------------------------------------------


@dataclass(frozen=True)
class Push:
    """Queue ``frame`` for the client; a ``paced`` one waits until the queue is
    at most half full (a long replay goes at the client's pace); an
    ``expendable`` one (a typing note) is dropped unless the queue is less
    than half full, and never makes the session "too slow"."""

    frame: chat_pb2.ServerFrame
    paced: bool = False
    expendable: bool = False


@dataclass(frozen=True)
class CheckLogin:
    user_id: int
    session_token: str
    device_id: str
    last_seq: int


@dataclass(frozen=True)
class FetchReplayPage:
    user_id: int
    session_id: str
    after_seq: int
    limit: int


@dataclass(frozen=True)
class Submit:
    correlation_id: int
    message: route_internal_pb2.SubmittedMessage


@dataclass(frozen=True)
class ForwardAck:
    user_id: int
    session_id: str
    seq: int


@dataclass(frozen=True)
class ForwardTyping:
    """Hand a typing note to a route (it answers with a refusal or nothing)."""

    note: route_internal_pb2.SubmittedTyping


@dataclass(frozen=True)
class ForwardRead:
    """The user read a conversation up to ``position`` (checked)."""

    user_id: int
    session_id: str
    conversation_id: str
    position: int


@dataclass(frozen=True)
class Close:
    """End the stream after what is queued, then ``final`` (past the bound).
    ``error`` set: the call ends with its status; None: it ends normally."""

    reason: str
    final: chat_pb2.ServerFrame | None = None
    error: CimError | None = None


@dataclass(frozen=True)
class ReportDisconnected:
    user_id: int
    session_id: str
    reason: str


Action = (
    Push
    | CheckLogin
    | FetchReplayPage
    | Submit
    | ForwardAck
    | ForwardTyping
    | ForwardRead
    | Close
    | ReportDisconnected
)


def notice(kind: chat_pb2.Notice.Kind.ValueType, text: str, code: int = 0) -> chat_pb2.ServerFrame:
    return chat_pb2.ServerFrame(notice=chat_pb2.Notice(kind=kind, text=text, code=code))


def error_notice(error: CimError) -> chat_pb2.ServerFrame:
    item = to_item(error)
    return notice(ERROR, item.message, item.code)


class LiveGate:
    """Orders live pushes around replays, and drops repeated ones.

    While holding (a replay runs), offered messages wait; :meth:`release`
    lets them out after the replay, minus the seqs it covered. A seq among
    the last ``recent`` let out, or one a replay covered, is a duplicate.
    A message with seq 0 is outside the user's sequence (a system notice to
    everyone online, never stored): it waits for a replay like any live
    push, but is never a duplicate and never covered by one.
    """

    def __init__(self, max_held: int, recent: int = RECENT_SEQS) -> None:
        self._max_held = max_held
        self._max_recent = recent
        self.holding = False
        # Every seq up to here was sent by a replay (or is gone).
        self.replayed_through = 0
        self._held: list[common_pb2.ChatMessage] = []
        self._overflowed = False
        # The last seqs let out, oldest first (an ordered set).
        self._recent: dict[int, None] = {}

    def hold(self) -> None:
        self.holding = True

    def offer(self, message: common_pb2.ChatMessage) -> bool:
        """True when ``message`` goes out now; False when it is held or a duplicate."""
        seq = message.seq
        if seq and (seq <= self.replayed_through or seq in self._recent):
            return False
        if self.holding:
            if len(self._held) >= self._max_held:
                self._held.clear()
                self._overflowed = True
            self._held.append(message)
            return False
        if seq:
            self._recent[seq] = None
            if len(self._recent) > self._max_recent:
                del self._recent[next(iter(self._recent))]
        return True

    def release(self, through_seq: int) -> list[common_pb2.ChatMessage] | None:
        """Stops holding after a replay that covered every seq up to
        ``through_seq``; returns the held messages to send now, in order.
        None (still holding) if held messages were dropped: the inbox must
        be read once more first."""
        if self._overflowed:
            self._overflowed = False
            return None
        held, self._held = self._held, []
        self.holding = False
        self.replayed_through = max(self.replayed_through, through_seq)
        return [message for message in held if self.offer(message)]


class ChatSession:
    """One client stream's protocol state; see the module docstring.

    ``limiter`` is the server's per-user send limiter and ``typing`` its
    typing limits (both shared: a user's new stream does not start with a
    fresh bucket; without ``typing`` the session has limits of its own);
    ``clock`` is monotonic time for the heartbeat, ``wall_clock`` the time a
    pong reports.
    """

    def __init__(
        self,
        settings: SessionSettings,
        limiter: KeyedLimiter[int] | None = None,
        *,
        typing: TypingGate | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self._limiter = limiter
        self._typing = typing if typing is not None else TypingGate(clock=clock)
        # When the client was last told of a refused typing note (None: never).
        self._refused_at: float | None = None
        # Conversations this stream's notes went to since its last message
        # there: a send checks nothing more when it is empty.
        self._typing_in: set[str] = set()
        self._clock = clock
        self._wall_clock = wall_clock
        self.state = State.AWAITING_LOGIN
        self.user_id = 0
        self.device_id = ""
        self.session_id = ""
        self.user_name = ""
        self.last_heard = clock()
        self.outstanding_sends = 0
        self.close_reason = ""
        self.close_error: CimError | None = None
        self._accepted = False
        # Set when the server drains before the login: the answer to the first frame.
        self._refusal: CimError | None = None
        self._login_seq = 0
        self._gate = LiveGate(settings.max_held)
        # The replay running: where it started, where it is, what the last page said.
        self._replay_after = 0
        self._replay_cursor = 0
        self._replay_dropped = 0
        self._last_page: route_internal_pb2.ReplayResponse | None = None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def idle_deadline(self) -> float | None:
        """When a session that hears nothing more counts as idle (None: it cannot)."""
        if self.state in (State.REPLAYING, State.LIVE):
            return self.settings.heartbeat.idle_deadline(self.last_heard)
        return None

    def handle(self, event: Event) -> list[Action]:
        """Feeds one event; returns the actions to carry out, in order."""
        match event:
            case FrameReceived(frame):
                return self._frame(frame)
            case Deliver(message):
                return self._deliver(message)
            case ReceiptArrived(receipt):
                if self.state not in (State.REPLAYING, State.LIVE):
                    return []
                return [Push(chat_pb2.ServerFrame(read=receipt))]
            case SendSettled(correlation_id, outcome):
                return self._settled(correlation_id, outcome)
            case TypingReceived(typing):
                if self.state not in (State.REPLAYING, State.LIVE):
                    return []
                return [Push(chat_pb2.ServerFrame(typing=typing), expendable=True)]
            case TypingRefused(error):
                self._typing.count(typing_notes.REFUSED)
                if self.closed:
                    return []
                return self._refuse_note(error)
            case ClientClosed():
                if self.state is State.AWAITING_LOGIN:
                    return self._refuse(self._refusal or _no_login())
                return self._close("client closed the stream")
            case ReadFailed(error):
                return self._close("protocol error", error)
            case LoginTimedOut():
                if self.state is State.AWAITING_LOGIN:
                    return self._refuse(self._refusal or _no_login())
                return []
            case LoginAccepted(session_id, user_name):
                return self._accepted_login(session_id, user_name)
            case LoginRefused(error):
                return self._refuse(error)
            case ReplayPageReceived(reply):
                return self._replay_page(reply)
            case ReplayPageQueued():
                return self._replay_queued()
            case ReplayFailed(error):
                if self.closed:
                    return []
                return self._close(
                    "replay failed",
                    Unavailable(f"could not replay stored messages: {error.message}"),
                )
            case OutboundOverflow():
                return self._close(
                    "slow consumer", ResourceExhausted("too slow: messages are waiting unread")
                )
            case Tick():
                return self._tick()
            case Kick(session_id, reason):
                if not self._accepted or session_id != self.session_id:
                    return []
                return self._close("kicked", final=notice(KICKED, reason or "session ended"))
            case Replaced():
                return self._close(
                    "replaced", final=notice(KICKED, "logged in from another client")
                )
            case SessionInvalid(session_id):
                if not self._accepted or session_id != self.session_id:
                    return []
                return self._close(
                    "session invalid", final=notice(KICKED, "session ended: log in again")
                )
            case Drain():
                if self.state is State.AWAITING_LOGIN:
                    # Refused at its first frame: ending the call while the
                    # client's login is in flight could reach it as INTERNAL
                    # instead of this status (grpc/grpc#36066).
                    self._refusal = Unavailable(
                        "this chat server is shutting down: log in again through a route"
                    )
                    return []
                return self._close(
                    "server draining",
                    final=notice(DRAINING, "server shutting down: reconnecting elsewhere"),
                )
            case Stop():
                return self._close("server stopped")
            case Ended():
                actions = self._close("disconnected")
                if self._accepted:
                    actions.append(
                        ReportDisconnected(self.user_id, self.session_id, self.close_reason)
                    )
                return actions
        raise TypeError(f"not a session event: {event!r}")

    # --- frames ------------------------------------------------------------------
    def _frame(self, frame: chat_pb2.ClientFrame) -> list[Action]:
        self.last_heard = self._clock()
        kind = frame.WhichOneof("frame")
        if self.state is State.CLOSED:
            if kind == "ack" and self._accepted:
                return [ForwardAck(self.user_id, self.session_id, frame.ack.seq)]
            if (
                kind == "read"
                and self._accepted
                and _read_refusal(frame.read, self.user_id) is None
            ):
                return [self._forward_read(frame.read)]
            return []
        oversized = _over_a_limit(frame, kind)
        if oversized is not None:
            if kind == "send" and self.state in (State.REPLAYING, State.LIVE):
                return [_send_error(frame.send.correlation_id, oversized)]
            if self.state is State.AWAITING_LOGIN:
                return self._refuse(oversized)
            return self._close("protocol error", oversized)
        if self.state is State.AWAITING_LOGIN:
            if self._refusal is not None:
                return self._refuse(self._refusal)
            return self._login(frame)
        if self.state is State.CHECKING_LOGIN:
            raise RuntimeError("a driver reads no frame while the login is being checked")
        if kind == "ping":
            pong = chat_pb2.Pong(
                client_time_ms=frame.ping.client_time_ms,
                server_time_ms=int(self._wall_clock() * 1000),
            )
            return [Push(chat_pb2.ServerFrame(pong=pong))]
        if kind == "send":
            return self._send(frame.send)
        if kind == "ack":
            # The user is the session's, never one named in the frame.
            return [ForwardAck(self.user_id, self.session_id, frame.ack.seq)]
        if kind == "typing":
            return self._typing_note(frame.typing)
        if kind == "sync":
            if self.state is not State.LIVE:
                return []  # a replay is running (or the login is being checked)
            return self._begin_replay(frame.sync.after_seq)
        if kind == "read":
            refusal = _read_refusal(frame.read, self.user_id)
            if refusal is not None:
                return self._close("protocol error", refusal)
            return [self._forward_read(frame.read)]
        return self._close("protocol error", InvalidArgument(f"unexpected {kind or 'empty'} frame"))

    def _login(self, frame: chat_pb2.ClientFrame) -> list[Action]:
        if frame.WhichOneof("frame") != "login":
            return self._refuse(Unauthenticated("the first frame must be a login"))
        login = frame.login
        if login.user_id <= 0 or not login.session_token:
            return self._refuse(Unauthenticated("login needs a user id and a session token"))
        self.user_id = login.user_id
        self.device_id = login.device_id
        self._login_seq = login.last_seq
        self.state = State.CHECKING_LOGIN
        # Held back from here on: live messages wait for the replay.
        self._gate.hold()
        return [CheckLogin(login.user_id, login.session_token, login.device_id, login.last_seq)]

    def _accepted_login(self, session_id: str, user_name: str) -> list[Action]:
        if self.state is not State.CHECKING_LOGIN:
            return []
        self._accepted = True
        self.session_id = session_id
        self.user_name = user_name
        heartbeat = self.settings.heartbeat
        ok = chat_pb2.LoginOk(
            user_id=self.user_id,
            user_name=user_name,
            server_id=self.settings.server_id,
            heartbeat_interval_ms=int(heartbeat.ping_interval * 1000),
            idle_timeout_ms=int(heartbeat.idle_timeout * 1000),
        )
        return [Push(chat_pb2.ServerFrame(login_ok=ok)), *self._begin_replay(self._login_seq)]

    def _refuse(self, error: CimError) -> list[Action]:
        if self.state not in (State.AWAITING_LOGIN, State.CHECKING_LOGIN):
            return []
        return self._close("login refused", error)

    def _forward_read(self, read: chat_pb2.ReadFrame) -> ForwardRead:
        # The user is the session's, never one named in the frame.
        return ForwardRead(self.user_id, self.session_id, read.conversation_id, read.position)

    # --- sends -------------------------------------------------------------------
    def _send(self, send: chat_pb2.SendFrame) -> list[Action]:
        correlation_id = send.correlation_id
        item = route_internal_pb2.SubmittedMessage(
            sender_id=self.user_id, session_id=self.session_id, sender_name=self.user_name
        )
        target = send.WhichOneof("target")
        if target == "private":
            item.private.CopyFrom(send.private)
            text = send.private.text
        elif target == "group":
            item.group.CopyFrom(send.group)
            text = send.group.text
        else:
            return [_send_error(correlation_id, InvalidArgument(_NO_TARGET))]
        refusal = self._check_send(text)
        if refusal is not None:
            return [_send_error(correlation_id, refusal)]
        self.outstanding_sends += 1
        if self._typing_in:  # a message ends the note: the next one goes out at once
            cid = _conversation_of(self.user_id, item)
            if cid in self._typing_in:
                self._typing_in.discard(cid)
                self._typing.message_sent(self.user_id, cid)
        return [Submit(correlation_id, item)]

    def _check_send(self, text: str) -> CimError | None:
        limit = self.settings.max_text_bytes
        if len(text.encode()) > limit:
            return InvalidArgument(f"message text is over the limit of {limit} bytes")
        most = self.settings.max_outstanding_sends
        if self.outstanding_sends >= most:
            return ResourceExhausted(f"more than {most} sends await their result: slow down")
        if self._limiter is not None:
            return self._limiter.refusal(self.user_id, "messages from this user")
        return None

    def _settled(
        self, correlation_id: int, outcome: route_internal_pb2.SubmitResult | CimError | None
    ) -> list[Action]:
        self.outstanding_sends = max(0, self.outstanding_sends - 1)
        if outcome is None or self.closed:
            return []
        if isinstance(outcome, CimError):
            return [_send_error(correlation_id, outcome)]
        result = chat_pb2.SendResultFrame(correlation_id=correlation_id)
        if outcome.WhichOneof("outcome") == "ok":
            result.ok.CopyFrom(outcome.ok)
        else:
            result.error.CopyFrom(outcome.error)
        return [Push(chat_pb2.ServerFrame(send_result=result))]

    # --- typing notes ---------------------------------------------------------------
    def _typing_note(self, note: chat_pb2.TypingFrame) -> list[Action]:
        gate = self._typing
        refusal = gate.flood_refusal(self.user_id)
        if refusal is not None:
            return self._refuse_note(refusal)
        cid = note.conversation_id
        try:
            conversation = conversations.parse(cid)
            if conversation.private:
                conversations.peer(conversation, self.user_id)  # theirs only
        except CimError as exc:
            invalid = isinstance(exc, InvalidArgument)
            gate.count(typing_notes.INVALID if invalid else typing_notes.NOT_MEMBER)
            return self._refuse_note(exc)
        if not gate.allow(self.user_id, cid, note.stopped):
            return []
        if len(self._typing_in) >= MAX_TYPING_IN:  # bounded; a lost entry costs a 3 s wait
            self._typing_in.clear()
        self._typing_in.add(cid)
        forward = route_internal_pb2.SubmittedTyping(
            user_id=self.user_id,
            session_id=self.session_id,
            user_name=self.user_name,
            conversation_id=cid,
            stopped=note.stopped,
        )
        return [ForwardTyping(forward)]

    def _refuse_note(self, error: CimError) -> list[Action]:
        """Tells the client a typing note was refused, unless it was told
        less than REFUSAL_INTERVAL ago: a flood gets a notice a second."""
        now = self._clock()
        if self._refused_at is not None and now - self._refused_at < REFUSAL_INTERVAL:
            return []
        self._refused_at = now
        item = to_item(error)
        return [Push(notice(REFUSED, f"typing note refused: {item.message}", item.code))]

    # --- replay and live pushes ----------------------------------------------------
    def _begin_replay(self, after_seq: int) -> list[Action]:
        self.state = State.REPLAYING
        self._gate.hold()
        self._replay_after = self._replay_cursor = after_seq
        self._replay_dropped = 0
        self._last_page = None
        return [self._fetch(after_seq)]

    def _fetch(self, after_seq: int) -> FetchReplayPage:
        return FetchReplayPage(self.user_id, self.session_id, after_seq, self.settings.replay_page)

    def _replay_page(self, reply: route_internal_pb2.ReplayResponse) -> list[Action]:
        if self.state is not State.REPLAYING:
            return []
        self._last_page = reply
        actions: list[Action] = []
        for message in reply.messages:
            actions.append(Push(chat_pb2.ServerFrame(message=message), paced=True))
            self._replay_cursor = message.seq
        self._replay_dropped = max(self._replay_dropped, reply.dropped_through_seq)
        return actions

    def _replay_queued(self) -> list[Action]:
        page, self._last_page = self._last_page, None
        if self.state is not State.REPLAYING or page is None:
            return []
        if page.more:
            return [self._fetch(self._replay_cursor)]
        # Every seq up to the head was in a page or is gone (acked, dropped).
        held = self._gate.release(page.head_seq)
        if held is None:  # live messages were dropped meanwhile: read on
            return [self._fetch(self._replay_cursor)]
        self.state = State.LIVE
        actions: list[Action] = [
            Push(frame)
            for frame in _replay_done(self._replay_after, page.head_seq, self._replay_dropped)
        ]
        actions.extend(Push(chat_pb2.ServerFrame(message=message)) for message in held)
        return actions

    def _deliver(self, message: common_pb2.ChatMessage) -> list[Action]:
        if self.state in (State.AWAITING_LOGIN, State.CLOSED):
            return []
        if self._gate.offer(message):
            return [Push(chat_pb2.ServerFrame(message=message))]
        return []

    # --- ends --------------------------------------------------------------------
    def _tick(self) -> list[Action]:
        deadline = self.idle_deadline
        if deadline is None or not self.settings.heartbeat.is_idle(self.last_heard, self._clock()):
            return []
        return self._close("idle timeout", DeadlineExceeded("no heartbeat: connection timed out"))

    def _close(
        self,
        reason: str,
        error: CimError | None = None,
        *,
        final: chat_pb2.ServerFrame | None = None,
    ) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        self.close_reason = reason
        self.close_error = error
        if error is not None and final is None:
            final = error_notice(error)
        return [Close(reason, final, error)]


_NO_TARGET = "send frame has neither a private nor a group target"


def _conversation_of(sender_id: int, item: route_internal_pb2.SubmittedMessage) -> str:
    """The conversation a send goes to, as typing notes name it ("" when it
    is none: a bad receiver id)."""
    if item.WhichOneof("target") == "group":
        return item.group.group_id
    receiver_id = item.private.receiver_id
    return conversations.private_id(sender_id, receiver_id) if receiver_id > 0 else ""


def _no_login() -> CimError:
    return Unauthenticated("no login frame: the first frame must be a login")


def _over_a_limit(frame: chat_pb2.ClientFrame, kind: str | None) -> InvalidArgument | None:
    """A field of the frame over its declared limit (``cim.core.limits``): a
    send's fails alone, like any refused send; another frame's ends the stream."""
    try:
        limits.check(frame.send if kind == "send" else frame)
    except InvalidArgument as exc:
        return exc
    return None


def _read_refusal(read: chat_pb2.ReadFrame, user_id: int) -> CimError | None:
    """Why a read mark is refused here (None: forward it): a malformed id,
    position 0, or a private conversation the user is not in."""
    try:
        conversation = conversations.parse(read.conversation_id)
        if read.position <= 0:
            raise InvalidArgument("a read frame's position must be at least 1")
        if conversation.private:
            conversations.peer(conversation, user_id)
    except CimError as exc:
        return exc
    return None


def _send_error(correlation_id: int, error: CimError) -> Push:
    result = chat_pb2.SendResultFrame(correlation_id=correlation_id, error=to_item(error))
    return Push(chat_pb2.ServerFrame(send_result=result))


def _replay_done(after_seq: int, head_seq: int, dropped: int) -> Sequence[chat_pb2.ServerFrame]:
    """The frames that end a replay: a notice if retention dropped messages
    the client never had, then ReplayDone."""
    frames = []
    dropped = dropped if dropped > after_seq else 0
    if dropped:
        frames.append(
            notice(
                BEHIND,
                f"messages up to #{dropped} were dropped before you fetched them "
                "(older or more than the route keeps)",
            )
        )
    done = chat_pb2.ReplayDone(through_seq=head_seq, dropped_through_seq=dropped, head_seq=head_seq)
    frames.append(chat_pb2.ServerFrame(replay_done=done))
    return frames
