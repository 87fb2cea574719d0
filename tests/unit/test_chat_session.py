"""The Chat.Connect protocol frame by frame, without sockets (cim.core.chat_session)."""

from __future__ import annotations

import pytest

from cim.core.chat_session import (
    RECENT_SEQS,
    Action,
    ChatSession,
    CheckLogin,
    ClientClosed,
    Close,
    Deliver,
    Drain,
    Ended,
    FetchReplayPage,
    ForwardAck,
    ForwardRead,
    FrameReceived,
    Kick,
    LiveGate,
    LoginAccepted,
    LoginRefused,
    LoginTimedOut,
    OutboundOverflow,
    Push,
    ReadFailed,
    ReceiptArrived,
    Replaced,
    ReplayFailed,
    ReplayPageQueued,
    ReplayPageReceived,
    ReportDisconnected,
    SendSettled,
    SessionInvalid,
    SessionSettings,
    State,
    Stop,
    Submit,
    Tick,
)
from cim.core.liveness import HeartbeatPolicy
from cim.core.ratelimit import KeyedLimiter
from cim.errors import (
    AlreadyExists,
    CimError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2

USER = 7
TOKEN = "token-of-alice"
SESSION = "s-1"
NAME = "alice"
KIND_ERROR = chat_pb2.Notice.KIND_ERROR
KIND_KICKED = chat_pb2.Notice.KIND_KICKED
KIND_DRAINING = chat_pb2.Notice.KIND_DRAINING
KIND_BEHIND = chat_pb2.Notice.KIND_BEHIND


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(**overrides: object) -> SessionSettings:
    values: dict[str, object] = {
        "server_id": "server-1",
        "heartbeat": HeartbeatPolicy(ping_interval=10, idle_timeout=30),
        "max_text_bytes": 16,
        "max_held": 4,
    }
    values.update(overrides)
    return SessionSettings(**values)  # type: ignore[arg-type]


def new_session(
    limiter: KeyedLimiter[int] | None = None, clock: Clock | None = None, **overrides: object
) -> ChatSession:
    return ChatSession(
        settings(**overrides), limiter, clock=clock or Clock(), wall_clock=lambda: 1_700_000_000.5
    )


def login_frame(user_id: int = USER, token: str = TOKEN, last_seq: int = 0) -> FrameReceived:
    return FrameReceived(
        chat_pb2.ClientFrame(
            login=chat_pb2.LoginFrame(
                user_id=user_id, session_token=token, device_id="phone", last_seq=last_seq
            )
        )
    )


def replying(session: ChatSession, last_seq: int = 0) -> ChatSession:
    """Logged in and accepted: the replay from ``last_seq`` is running."""
    session.handle(login_frame(last_seq=last_seq))
    session.handle(LoginAccepted(SESSION, NAME))
    return session


def page(*seqs: int, more: bool = False, head: int = 0, dropped: int = 0) -> ReplayPageReceived:
    return ReplayPageReceived(
        route_internal_pb2.ReplayResponse(
            messages=[message(seq, stored=True) for seq in seqs],
            more=more,
            head_seq=head or (seqs[-1] if seqs else 0),
            dropped_through_seq=dropped,
        )
    )


def live(session: ChatSession | None = None, head: int = 0) -> ChatSession:
    """Logged in, with a replay that found nothing after ``head``."""
    session = replying(session or new_session(), last_seq=head)
    session.handle(page(head=head))
    session.handle(ReplayPageQueued())
    assert session.state is State.LIVE
    return session


def message(seq: int, text: str = "hi", stored: bool = False) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(seq=seq, text=text, sender_id=9, stored=stored)


def frame(**kwargs: object) -> FrameReceived:
    return FrameReceived(chat_pb2.ClientFrame(**kwargs))  # type: ignore[arg-type]


def send(correlation_id: int = 1, text: str = "hello", group: bool = False) -> FrameReceived:
    if group:
        target: dict[str, object] = {"group": common_pb2.SendGroupRequest(text=text)}
    else:
        target = {"private": common_pb2.SendPrivateRequest(receiver_id=8, text=text)}
    return frame(send=chat_pb2.SendFrame(correlation_id=correlation_id, **target))  # type: ignore[arg-type]


def pushed(actions: list[Action]) -> list[chat_pb2.ServerFrame]:
    return [action.frame for action in actions if isinstance(action, Push)]


def seqs(actions: list[Action]) -> list[int]:
    return [f.message.seq for f in pushed(actions) if f.WhichOneof("frame") == "message"]


def only_close(actions: list[Action]) -> Close:
    assert len(actions) == 1 and isinstance(actions[0], Close), actions
    return actions[0]


def assert_error_close(actions: list[Action], error: type[CimError], text: str) -> Close:
    """One Close whose notice (KIND_ERROR, code) and status both carry the error."""
    close = only_close(actions)
    assert isinstance(close.error, error), close
    assert close.error.message == text
    assert close.final is not None
    assert (close.final.notice.kind, close.final.notice.code, close.final.notice.text) == (
        KIND_ERROR,
        error.code.value[0],
        text,
    )
    return close


def assert_normal_close(actions: list[Action], kind: int, text: str) -> Close:
    close = only_close(actions)
    assert close.error is None
    assert close.final is not None
    assert (close.final.notice.kind, close.final.notice.text) == (kind, text)
    return close


def send_result(actions: list[Action]) -> chat_pb2.SendResultFrame:
    (result,) = pushed(actions)
    assert result.WhichOneof("frame") == "send_result", result
    return result.send_result


# --- login ------------------------------------------------------------------------


def test_a_login_frame_asks_for_a_check_and_holds_nothing_else() -> None:
    session = new_session()
    assert session.state is State.AWAITING_LOGIN
    actions = session.handle(login_frame(last_seq=41))
    assert actions == [CheckLogin(USER, TOKEN, "phone", 41)]
    assert session.state is State.CHECKING_LOGIN
    assert session.idle_deadline is None


def test_an_accepted_login_says_login_ok_then_replays_from_the_login_seq() -> None:
    session = new_session()
    session.handle(login_frame(last_seq=41))
    actions = session.handle(LoginAccepted(SESSION, NAME))
    (ok,) = pushed(actions)
    assert ok.login_ok == chat_pb2.LoginOk(
        user_id=USER,
        user_name=NAME,
        server_id="server-1",
        heartbeat_interval_ms=10_000,
        idle_timeout_ms=30_000,
    )
    assert actions[1:] == [FetchReplayPage(USER, SESSION, 41, 200)]
    assert session.state is State.REPLAYING
    assert (session.session_id, session.user_name) == (SESSION, NAME)


@pytest.mark.parametrize("event", [ClientClosed(), LoginTimedOut()])
def test_no_login_frame_is_refused(event: ClientClosed | LoginTimedOut) -> None:
    session = new_session()
    assert_error_close(
        session.handle(event),
        Unauthenticated,
        "no login frame: the first frame must be a login",
    )
    assert session.closed


def test_a_login_timer_after_the_login_changes_nothing() -> None:
    session = replying(new_session())
    assert session.handle(LoginTimedOut()) == []
    assert session.state is State.REPLAYING


@pytest.mark.parametrize(
    "first",
    [
        frame(ping=chat_pb2.Ping(client_time_ms=1)),
        send(),
        frame(ack=chat_pb2.AckFrame(seq=3)),
        frame(sync=chat_pb2.SyncFrame(after_seq=3)),
        frame(),
    ],
)
def test_the_first_frame_must_be_a_login(first: FrameReceived) -> None:
    session = new_session()
    close = assert_error_close(
        session.handle(first), Unauthenticated, "the first frame must be a login"
    )
    assert close.reason == "login refused"


@pytest.mark.parametrize(("user_id", "token"), [(0, TOKEN), (-3, TOKEN), (USER, "")])
def test_a_login_needs_a_user_id_and_a_token(user_id: int, token: str) -> None:
    session = new_session()
    assert_error_close(
        session.handle(login_frame(user_id, token)),
        Unauthenticated,
        "login needs a user id and a session token",
    )


@pytest.mark.parametrize(
    "error",
    [Unauthenticated("session is over: log in again"), AlreadyExists("already logged in")],
)
def test_a_login_the_route_refuses_ends_with_the_routes_error(error: CimError) -> None:
    session = new_session()
    session.handle(login_frame())
    close = assert_error_close(session.handle(LoginRefused(error)), type(error), error.message)
    assert close.error is error
    # Never logged in: nothing to report at the end.
    assert session.handle(Ended()) == []


@pytest.mark.parametrize("first", [login_frame(), frame(ping=chat_pb2.Ping()), ClientClosed()])
def test_a_draining_server_refuses_a_new_stream_at_its_first_frame(
    first: FrameReceived | ClientClosed,
) -> None:
    session = new_session()
    assert session.handle(Drain()) == []
    assert_error_close(
        session.handle(first),
        Unavailable,
        "this chat server is shutting down: log in again through a route",
    )


def test_a_frame_while_the_login_is_checked_is_a_driver_bug() -> None:
    session = new_session()
    session.handle(login_frame())
    with pytest.raises(RuntimeError):
        session.handle(frame(ping=chat_pb2.Ping()))


# --- frames after the login -------------------------------------------------------


def test_a_ping_gets_a_pong_with_both_clocks() -> None:
    session = live()
    (pong,) = pushed(session.handle(frame(ping=chat_pb2.Ping(client_time_ms=123))))
    assert pong.pong == chat_pb2.Pong(client_time_ms=123, server_time_ms=1_700_000_000_500)


def test_pings_are_answered_during_a_replay_too() -> None:
    session = replying(new_session())
    assert (
        pushed(session.handle(frame(ping=chat_pb2.Ping(client_time_ms=5))))[0].pong.client_time_ms
        == 5
    )


def test_a_private_send_is_submitted_as_the_sessions_user_and_answered() -> None:
    session = live()
    actions = session.handle(send(correlation_id=11, text="hello"))
    assert actions == [
        Submit(
            11,
            route_internal_pb2.SubmittedMessage(
                sender_id=USER,
                session_id=SESSION,
                sender_name=NAME,
                private=common_pb2.SendPrivateRequest(receiver_id=8, text="hello"),
            ),
        )
    ]
    assert session.outstanding_sends == 1
    ok = common_pb2.SendResponse(message_id="m1")
    result = send_result(session.handle(SendSettled(11, route_internal_pb2.SubmitResult(ok=ok))))
    assert result == chat_pb2.SendResultFrame(correlation_id=11, ok=ok)
    assert session.outstanding_sends == 0


def test_a_group_send_is_submitted_with_its_group_target() -> None:
    session = live()
    (submit,) = session.handle(send(correlation_id=2, text="all of you", group=True))
    assert isinstance(submit, Submit)
    assert submit.message.WhichOneof("target") == "group"
    assert submit.message.group.text == "all of you"
    assert submit.message.sender_id == USER


def test_send_outcomes_the_route_refused_or_that_failed_become_error_results() -> None:
    session = live()
    for correlation_id in (1, 2, 3):
        session.handle(send(correlation_id))
    refused = route_internal_pb2.SubmitResult(
        error=common_pb2.ItemError(code=5, message="no such user")
    )
    assert send_result(session.handle(SendSettled(1, refused))) == chat_pb2.SendResultFrame(
        correlation_id=1, error=common_pb2.ItemError(code=5, message="no such user")
    )
    failed = send_result(session.handle(SendSettled(2, Unavailable("no route answered"))))
    assert (failed.correlation_id, failed.error.code, failed.error.message) == (
        2,
        Unavailable.code.value[0],
        "no route answered",
    )
    # Abandoned (the server is stopping): no answer, but it no longer counts.
    assert session.handle(SendSettled(3)) == []
    assert session.outstanding_sends == 0


def test_a_send_without_a_target_gets_an_error_and_the_stream_goes_on() -> None:
    session = live()
    result = send_result(session.handle(frame(send=chat_pb2.SendFrame(correlation_id=4))))
    assert (result.correlation_id, result.error.code, result.error.message) == (
        4,
        InvalidArgument.code.value[0],
        "send frame has neither a private nor a group target",
    )
    assert session.state is State.LIVE and session.outstanding_sends == 0


def test_an_oversized_text_is_refused_counting_bytes_not_characters() -> None:
    session = live()  # max_text_bytes=16
    assert isinstance(session.handle(send(1, "x" * 16))[0], Submit)
    result = send_result(session.handle(send(2, "é" * 9)))  # 18 bytes
    assert (result.error.code, result.error.message) == (
        InvalidArgument.code.value[0],
        "message text is over the limit of 16 bytes",
    )
    assert session.state is State.LIVE


def test_too_many_sends_awaiting_their_result_are_refused() -> None:
    session = live(new_session(max_outstanding_sends=2))
    assert all(isinstance(session.handle(send(i))[0], Submit) for i in (1, 2))
    result = send_result(session.handle(send(3)))
    assert (result.correlation_id, result.error.code, result.error.message) == (
        3,
        ResourceExhausted.code.value[0],
        "more than 2 sends await their result: slow down",
    )
    session.handle(SendSettled(1, Unavailable("x")))
    assert isinstance(session.handle(send(4))[0], Submit)


def test_sends_over_the_users_rate_are_refused_with_when_to_retry() -> None:
    clock = Clock()
    limiter: KeyedLimiter[int] = KeyedLimiter(1.0, 2, clock=clock)
    session = live(new_session(limiter))
    assert isinstance(session.handle(send(1))[0], Submit)
    assert isinstance(session.handle(send(2))[0], Submit)
    result = send_result(session.handle(send(3)))
    assert result.error.code == ResourceExhausted.code.value[0]
    assert result.error.message == (
        "too many messages from this user: the limit is 1 a second (bursts of 2); retry in 1 s"
    )
    # The limit is the user's, not the stream's: a new stream does not reset it.
    again = live(new_session(limiter))
    assert send_result(again.handle(send(4))).error.code == ResourceExhausted.code.value[0]
    clock.now += 1.0
    assert isinstance(again.handle(send(5))[0], Submit)


def test_an_ack_is_forwarded_for_the_sessions_own_user() -> None:
    session = live()
    assert session.handle(frame(ack=chat_pb2.AckFrame(seq=12, device_id="x"))) == [
        ForwardAck(USER, SESSION, 12)
    ]


# --- read marks and receipts -----------------------------------------------------


def read(conversation_id: str, position: int) -> FrameReceived:
    return frame(read=chat_pb2.ReadFrame(conversation_id=conversation_id, position=position))


@pytest.mark.parametrize(
    "conversation_id", [f"p:{USER}:9", f"p:3:{USER}", f"p:{USER}:{USER}", "g:4"]
)
def test_a_read_mark_is_forwarded_for_the_sessions_own_user(conversation_id: str) -> None:
    session = live()
    assert session.handle(read(conversation_id, 5)) == [
        ForwardRead(USER, SESSION, conversation_id, 5)
    ]


def test_a_read_mark_is_forwarded_during_a_replay_too() -> None:
    session = replying(new_session())
    assert session.handle(read("g:1", 2)) == [ForwardRead(USER, SESSION, "g:1", 2)]


@pytest.mark.parametrize(
    ("conversation_id", "position", "error", "text"),
    [
        ("p:1:2", 3, PermissionDenied, "you are not a member of conversation p:1:2"),
        (f"p:{USER}:9", 0, InvalidArgument, "a read frame's position must be at least 1"),
        ("", 1, InvalidArgument, "conversation id is required"),
        (
            f"p:9:{USER}",
            1,
            InvalidArgument,
            f"conversation id 'p:9:{USER}': the lower user id comes first (p:{USER}:9)",
        ),
        (
            "all",
            1,
            InvalidArgument,
            "conversation id 'all': must start with 'p:' (private) or 'g:' (group)",
        ),
    ],
)
def test_a_read_mark_the_user_may_not_make_ends_the_stream(
    conversation_id: str, position: int, error: type[CimError], text: str
) -> None:
    session = live()
    close = assert_error_close(session.handle(read(conversation_id, position)), error, text)
    assert close.reason == "protocol error"


def test_a_closed_session_still_forwards_good_read_marks_only() -> None:
    session = live()
    session.handle(Drain())
    assert session.handle(read("g:2", 4)) == [ForwardRead(USER, SESSION, "g:2", 4)]
    assert session.handle(read("p:1:2", 4)) == []


def test_a_read_mark_before_the_login_is_refused_as_any_first_frame() -> None:
    session = new_session()
    assert_error_close(
        session.handle(read("g:1", 1)), Unauthenticated, "the first frame must be a login"
    )


def test_receipts_are_pushed_once_logged_in_never_held_by_a_replay() -> None:
    receipt = chat_pb2.ReadReceipt(conversation_id="p:7:9", user_id=9, position=3)
    assert new_session().handle(ReceiptArrived(receipt)) == []
    replaying = replying(new_session())
    (out,) = pushed(replaying.handle(ReceiptArrived(receipt)))
    assert out.read == receipt
    session = live()
    (out,) = pushed(session.handle(ReceiptArrived(receipt)))
    assert out.read == receipt
    session.handle(Drain())
    assert session.handle(ReceiptArrived(receipt)) == []


@pytest.mark.parametrize(
    ("second", "kind"),
    [(login_frame(), "login"), (frame(), "empty")],
)
def test_an_unexpected_frame_ends_the_stream_as_a_protocol_error(
    second: FrameReceived, kind: str
) -> None:
    session = live()
    close = assert_error_close(session.handle(second), InvalidArgument, f"unexpected {kind} frame")
    assert close.reason == "protocol error"


def test_a_frame_that_does_not_decode_ends_the_stream_with_its_error() -> None:
    session = live()
    error = InvalidArgument("malformed request to /cim.v1.Chat/Connect: bad UTF-8")
    close = assert_error_close(session.handle(ReadFailed(error)), InvalidArgument, error.message)
    assert close.error is error and close.reason == "protocol error"
    assert session.handle(Ended()) == [ReportDisconnected(USER, SESSION, "protocol error")]


def test_the_client_closing_its_side_ends_the_stream_quietly() -> None:
    session = live()
    close = only_close(session.handle(ClientClosed()))
    assert (close.final, close.error, close.reason) == (None, None, "client closed the stream")


# --- replay and live pushes -------------------------------------------------------


def test_a_replay_pages_through_the_inbox_at_the_clients_pace_then_goes_live() -> None:
    session = replying(new_session(), last_seq=3)
    first = session.handle(page(4, 5, more=True, head=9))
    assert all(isinstance(a, Push) and a.paced for a in first)
    assert seqs(first) == [4, 5]
    # The next page only once the driver queued this one.
    assert session.handle(ReplayPageQueued()) == [FetchReplayPage(USER, SESSION, 5, 200)]
    last = session.handle(page(6, 9, head=9))
    assert seqs(last) == [6, 9]
    end = session.handle(ReplayPageQueued())
    assert all(isinstance(a, Push) and not a.paced for a in end)
    assert [f.replay_done for f in pushed(end)] == [
        chat_pb2.ReplayDone(through_seq=9, dropped_through_seq=0, head_seq=9)
    ]
    assert session.state is State.LIVE


def test_a_replay_behind_retention_says_so_before_replay_done() -> None:
    session = replying(new_session(), last_seq=2)
    session.handle(page(8, head=8, dropped=7))
    notice, done = pushed(session.handle(ReplayPageQueued()))
    assert notice.notice.kind == KIND_BEHIND
    assert notice.notice.text == (
        "messages up to #7 were dropped before you fetched them "
        "(older or more than the route keeps)"
    )
    assert done.replay_done == chat_pb2.ReplayDone(through_seq=8, dropped_through_seq=7, head_seq=8)


def test_drops_the_client_already_had_are_not_news() -> None:
    session = replying(new_session(), last_seq=7)
    session.handle(page(head=9, dropped=5))
    (done,) = pushed(session.handle(ReplayPageQueued()))
    assert done.replay_done.dropped_through_seq == 0


def test_live_pushes_wait_for_the_replay_and_skip_what_it_carried() -> None:
    session = new_session()
    session.handle(login_frame(last_seq=0))
    # Held from the login on: during the check, then during the replay.
    assert session.handle(Deliver(message(2))) == []
    session.handle(LoginAccepted(SESSION, NAME))
    assert session.handle(Deliver(message(3))) == []
    assert seqs(session.handle(page(1, 2, 3, head=3))) == [1, 2, 3]
    assert session.handle(Deliver(message(4))) == []
    end = session.handle(ReplayPageQueued())
    kinds = [f.WhichOneof("frame") for f in pushed(end)]
    assert kinds == ["replay_done", "message"]
    assert seqs(end) == [4]
    assert seqs(session.handle(Deliver(message(5)))) == [5]


def test_a_sync_replays_after_its_seq_and_holds_live_pushes_meanwhile() -> None:
    session = live(head=10)
    assert session.handle(frame(sync=chat_pb2.SyncFrame(after_seq=6))) == [
        FetchReplayPage(USER, SESSION, 6, 200)
    ]
    assert session.state is State.REPLAYING
    # One sync at a time: another during the replay is ignored.
    assert session.handle(frame(sync=chat_pb2.SyncFrame(after_seq=2))) == []
    assert session.handle(Deliver(message(12))) == []
    session.handle(page(7, 8, 9, 10, 11, head=11))
    end = session.handle(ReplayPageQueued())
    assert pushed(end)[0].replay_done.through_seq == 11
    assert seqs(end) == [12]


def test_a_repeated_live_push_is_dropped() -> None:
    session = live()
    assert seqs(session.handle(Deliver(message(1)))) == [1]
    assert session.handle(Deliver(message(1))) == []
    assert seqs(session.handle(Deliver(message(2)))) == [2]


def test_pushes_the_last_replay_covered_are_dropped() -> None:
    session = live(head=20)
    assert session.handle(Deliver(message(19))) == []
    assert session.handle(Deliver(message(20))) == []
    assert seqs(session.handle(Deliver(message(21)))) == [21]


def test_messages_without_a_seq_are_never_taken_for_repeats() -> None:
    session = live()
    assert len(session.handle(Deliver(message(0)))) == 1
    assert len(session.handle(Deliver(message(0)))) == 1


def test_too_many_held_pushes_make_the_replay_read_the_inbox_again() -> None:
    session = replying(new_session(max_held=2))
    for seq in (3, 4, 5):
        session.handle(Deliver(message(seq)))
    session.handle(page(1, 2, head=2))
    # Held messages were dropped: they are in the inbox; read on after the last seq sent.
    assert session.handle(ReplayPageQueued()) == [FetchReplayPage(USER, SESSION, 2, 200)]
    assert session.state is State.REPLAYING
    assert seqs(session.handle(page(3, 4, 5, head=5))) == [3, 4, 5]
    end = session.handle(ReplayPageQueued())
    assert pushed(end)[0].replay_done.through_seq == 5
    assert seqs(end) == []  # the one still held (5) came by replay
    assert session.state is State.LIVE


def test_a_failed_replay_ends_the_stream() -> None:
    session = replying(new_session())
    close = assert_error_close(
        session.handle(ReplayFailed(Unavailable("no route answered"))),
        Unavailable,
        "could not replay stored messages: no route answered",
    )
    assert close.reason == "replay failed"


def test_the_live_gate_remembers_only_the_last_seqs() -> None:
    gate = LiveGate(max_held=10)
    assert all(gate.offer(message(seq)) for seq in range(1, RECENT_SEQS + 2))
    assert not gate.offer(message(RECENT_SEQS + 1))
    assert gate.offer(message(1))  # forgotten: RECENT_SEQS newer ones came after it


def notice_to_all(text: str) -> common_pb2.ChatMessage:
    """A system notice to everyone online: seq 0, never stored."""
    return common_pb2.ChatMessage(seq=0, text=text, kind=common_pb2.MESSAGE_KIND_SYSTEM)


def test_a_notice_without_a_seq_waits_for_the_replay_then_goes_out() -> None:
    session = replying(new_session())
    assert session.handle(Deliver(notice_to_all("maintenance at 22:00"))) == []
    session.handle(Deliver(message(3)))
    session.handle(page(1, 2, head=2))
    end = session.handle(ReplayPageQueued())
    frames = pushed(end)
    assert frames[0].WhichOneof("frame") == "replay_done"
    # Held in arrival order, and never counted as covered by the replay.
    assert [(f.message.seq, f.message.text) for f in frames[1:]] == [
        (0, "maintenance at 22:00"),
        (3, "hi"),
    ]


def test_notices_without_a_seq_are_never_taken_for_duplicates() -> None:
    session = live(head=5)
    first = session.handle(Deliver(notice_to_all("one")))
    second = session.handle(Deliver(notice_to_all("two")))
    assert [f.message.text for f in pushed(first + second)] == ["one", "two"]
    gate = LiveGate(max_held=10)
    assert gate.offer(notice_to_all("a")) and gate.offer(notice_to_all("a"))


# --- how a stream ends ------------------------------------------------------------


def test_a_full_outbound_queue_closes_the_stream_too_slow() -> None:
    session = live()
    close = assert_error_close(
        session.handle(OutboundOverflow()),
        ResourceExhausted,
        "too slow: messages are waiting unread",
    )
    assert close.reason == "slow consumer"


def test_silence_past_the_idle_timeout_ends_the_stream() -> None:
    clock = Clock(1000.0)
    session = live(new_session(clock=clock))
    assert session.idle_deadline == 1030.0
    clock.now = 1020.0
    session.handle(frame(ping=chat_pb2.Ping()))  # any frame is traffic
    assert session.idle_deadline == 1050.0
    clock.now = 1050.0
    assert session.handle(Tick()) == []
    clock.now = 1050.01
    close = assert_error_close(
        session.handle(Tick()), DeadlineExceeded, "no heartbeat: connection timed out"
    )
    assert close.reason == "idle timeout"
    assert session.idle_deadline is None


def test_a_replaying_stream_has_an_idle_deadline_too() -> None:
    clock = Clock(50.0)
    session = replying(new_session(clock=clock))
    clock.now = 81.0
    assert only_close(session.handle(Tick())).reason == "idle timeout"


def test_a_kick_ends_only_its_own_session() -> None:
    session = live()
    assert session.handle(Kick("another-session", "bye")) == []
    close = assert_normal_close(session.handle(Kick(SESSION, "bye")), KIND_KICKED, "bye")
    assert close.reason == "kicked"
    assert live().handle(Kick(SESSION))[0] == Close(
        "kicked",
        chat_pb2.ServerFrame(notice=chat_pb2.Notice(kind=KIND_KICKED, text="session ended")),
    )


def test_a_newer_login_replaces_the_stream() -> None:
    close = assert_normal_close(
        live().handle(Replaced()), KIND_KICKED, "logged in from another client"
    )
    assert close.reason == "replaced"


def test_a_session_ended_elsewhere_closes_its_stream_only() -> None:
    session = live()
    assert session.handle(SessionInvalid("older-session")) == []
    assert_normal_close(
        session.handle(SessionInvalid(SESSION)), KIND_KICKED, "session ended: log in again"
    )


def test_a_drain_tells_the_client_to_reconnect_elsewhere() -> None:
    assert_normal_close(
        live().handle(Drain()), KIND_DRAINING, "server shutting down: reconnecting elsewhere"
    )


def test_a_stopping_server_ends_the_stream_without_a_notice() -> None:
    assert live().handle(Stop()) == [Close("server stopped")]


def test_the_end_of_the_call_is_reported_with_why_the_stream_closed() -> None:
    session = live()
    session.handle(Kick(SESSION, "bye"))
    assert session.handle(Ended()) == [ReportDisconnected(USER, SESSION, "kicked")]
    # A call that ends on its own (the client went away) closes the session too.
    other = live()
    assert other.handle(Ended()) == [
        Close("disconnected"),
        ReportDisconnected(USER, SESSION, "disconnected"),
    ]


def test_a_closed_session_only_forwards_acks() -> None:
    session = live()
    session.handle(
        frame(
            send=chat_pb2.SendFrame(
                correlation_id=1, private=common_pb2.SendPrivateRequest(receiver_id=8, text="a")
            )
        )
    )
    session.handle(Drain())
    assert session.handle(frame(ping=chat_pb2.Ping())) == []
    assert session.handle(send(2)) == []
    assert session.handle(Deliver(message(3))) == []
    assert session.handle(SendSettled(1, Unavailable("late"))) == []
    assert session.handle(frame(sync=chat_pb2.SyncFrame(after_seq=1))) == []
    assert session.handle(Tick()) == []
    assert session.handle(Kick(SESSION)) == []
    assert session.handle(frame(ack=chat_pb2.AckFrame(seq=3))) == [ForwardAck(USER, SESSION, 3)]
    assert session.close_reason == "server draining"


def test_only_the_first_close_counts() -> None:
    session = live()
    session.handle(OutboundOverflow())
    assert session.handle(ReadFailed(InvalidArgument("x"))) == []
    assert session.handle(ClientClosed()) == []
    assert session.handle(LoginRefused(NotFound("x"))) == []
    assert session.close_reason == "slow consumer"
    assert isinstance(session.close_error, ResourceExhausted)
