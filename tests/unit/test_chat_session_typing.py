"""Typing notes in the Chat.Connect protocol, without sockets: what a
session forwards, refuses (and how often it says so), and pushes."""

from __future__ import annotations

from cim.core.chat_session import (
    Action,
    ChatSession,
    Close,
    Ended,
    ForwardTyping,
    FrameReceived,
    LoginAccepted,
    Push,
    ReplayPageQueued,
    ReplayPageReceived,
    SessionSettings,
    State,
    Submit,
    TypingReceived,
    TypingRefused,
)
from cim.core.typing_notes import TypingGate
from cim.errors import FailedPrecondition, InvalidArgument, PermissionDenied, ResourceExhausted
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2

USER = 7
PEER = 9
SESSION = "s-1"
CID = "p:7:9"
REFUSED = chat_pb2.Notice.KIND_REFUSED


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def session_with(clock: Clock, gate: TypingGate | None = None) -> ChatSession:
    return ChatSession(
        SessionSettings(server_id="server-1"),
        typing=gate if gate is not None else TypingGate(clock=clock),
        clock=clock,
    )


def logged_in(session: ChatSession, *, live: bool = True) -> ChatSession:
    session.handle(
        FrameReceived(
            chat_pb2.ClientFrame(login=chat_pb2.LoginFrame(user_id=USER, session_token="t"))
        )
    )
    session.handle(LoginAccepted(SESSION, "alice"))
    if live:
        session.handle(ReplayPageReceived(route_internal_pb2.ReplayResponse()))
        session.handle(ReplayPageQueued())
        assert session.state is State.LIVE
    return session


def typing(cid: str = CID, stopped: bool = False) -> FrameReceived:
    return FrameReceived(
        chat_pb2.ClientFrame(typing=chat_pb2.TypingFrame(conversation_id=cid, stopped=stopped))
    )


def refusals(actions: list[Action]) -> list[chat_pb2.Notice]:
    notices = [a.frame.notice for a in actions if isinstance(a, Push)]
    assert all(n.kind == REFUSED for n in notices), notices
    return notices


def test_a_note_is_forwarded_for_the_sessions_user_with_its_name() -> None:
    session = logged_in(session_with(Clock()))
    (action,) = session.handle(typing())
    assert action == ForwardTyping(
        route_internal_pb2.SubmittedTyping(
            user_id=USER, session_id=SESSION, user_name="alice", conversation_id=CID
        )
    )
    assert session.state is State.LIVE


def test_notes_within_3_s_are_dropped_quietly_and_a_stop_ends_a_forwarded_one() -> None:
    clock = Clock()
    gate = TypingGate(clock=clock)
    session = logged_in(session_with(clock, gate))
    assert session.handle(typing(stopped=True)) == []  # nothing shown to stop
    assert len(session.handle(typing())) == 1
    clock.now += 2.9
    assert session.handle(typing()) == []
    (stop,) = session.handle(typing(stopped=True))
    assert isinstance(stop, ForwardTyping) and stop.note.stopped
    assert session.handle(typing(stopped=True)) == []  # once
    clock.now += 0.1
    assert len(session.handle(typing())) == 1
    assert gate.counts["forwarded"] == 3 and gate.counts["throttled"] == 3


def test_each_conversation_has_its_own_interval() -> None:
    session = logged_in(session_with(Clock()))
    assert len(session.handle(typing(CID))) == 1
    assert len(session.handle(typing("g:5"))) == 1
    assert session.handle(typing("g:5")) == []


def test_a_message_to_the_conversation_lets_the_next_note_out_at_once() -> None:
    session = logged_in(session_with(Clock()))
    assert len(session.handle(typing())) == 1
    send = chat_pb2.SendFrame(
        correlation_id=1, private=common_pb2.SendPrivateRequest(receiver_id=PEER, text="hi")
    )
    (submit,) = session.handle(FrameReceived(chat_pb2.ClientFrame(send=send)))
    assert isinstance(submit, Submit)
    assert len(session.handle(typing())) == 1
    # A message elsewhere does not.
    group = chat_pb2.SendFrame(
        correlation_id=2, group=common_pb2.SendGroupRequest(group_id="g:5", text="hi")
    )
    session.handle(FrameReceived(chat_pb2.ClientFrame(send=group)))
    assert session.handle(typing()) == []


def test_a_flood_is_refused_with_one_notice_a_second_and_the_stream_goes_on() -> None:
    clock = Clock()
    gate = TypingGate(clock=clock)
    session = logged_in(session_with(clock, gate))
    forwarded = refused = 0
    notices: list[chat_pb2.Notice] = []
    for _ in range(30):  # 30 notes at one instant: the bucket holds 10
        actions = session.handle(typing())
        forwarded += sum(isinstance(a, ForwardTyping) for a in actions)
        notices += refusals(actions)
    refused = gate.counts["flood"]
    assert (forwarded, refused, gate.counts["throttled"]) == (1, 20, 9)
    (notice,) = notices
    assert notice.code == ResourceExhausted.code.value[0]
    assert notice.text.startswith("typing note refused: too many typing notes from this user")
    assert session.state is State.LIVE
    clock.now += 0.5  # 5 more tokens; refused past them, silently within the second
    silent = [n for _ in range(7) for n in refusals(session.handle(typing("g:1")))]
    assert silent == [] and gate.counts["flood"] == 22
    clock.now += 0.6  # about 6 more tokens, and a second after the notice
    assert refusals(session.handle(typing("g:2"))) == []
    for _ in range(3):
        session.handle(typing("g:3"))
    told = [n for _ in range(3) for n in refusals(session.handle(typing("g:4")))]
    assert len(told) == 1 and told[0].code == ResourceExhausted.code.value[0]


def test_the_flood_bucket_is_the_users_across_streams() -> None:
    clock = Clock()
    gate = TypingGate(clock=clock)
    first = logged_in(session_with(clock, gate))
    for i in range(10):
        first.handle(typing(f"g:{i + 1}"))
    first.handle(Ended())
    second = logged_in(session_with(clock, gate))
    assert len(refusals(second.handle(typing("g:99")))) == 1


def test_a_malformed_id_or_someone_elses_private_conversation_is_refused_here() -> None:
    clock = Clock()
    gate = TypingGate(clock=clock)
    session = logged_in(session_with(clock, gate))
    (bad,) = refusals(session.handle(typing("p:9:7")))
    assert bad.code == InvalidArgument.code.value[0]
    assert bad.text == (
        "typing note refused: conversation id 'p:9:7': the lower user id comes first (p:7:9)"
    )
    clock.now += 1
    (other,) = refusals(session.handle(typing("p:8:9")))
    assert other.code == PermissionDenied.code.value[0]
    assert other.text == "typing note refused: you are not a member of conversation p:8:9"
    assert session.handle(typing("")) == []  # refused again, within the second: silently
    assert (gate.counts["invalid"], gate.counts["not_member"], gate.counts["forwarded"]) == (
        2,
        1,
        0,
    )


def test_a_routes_refusal_is_told_like_the_others_and_counted() -> None:
    clock = Clock()
    gate = TypingGate(clock=clock)
    session = logged_in(session_with(clock, gate))
    (notice,) = refusals(session.handle(TypingRefused(PermissionDenied("not a member of g:3"))))
    assert notice.code == PermissionDenied.code.value[0]
    assert notice.text == "typing note refused: not a member of g:3"
    assert refusals(session.handle(TypingRefused(FailedPrecondition("deleted")))) == []
    assert gate.counts["refused_by_route"] == 2


def test_a_note_from_a_route_is_an_expendable_push_in_the_replay_and_live() -> None:
    note = chat_pb2.Typing(conversation_id=CID, user_id=PEER, user_name="bob")
    replaying = logged_in(session_with(Clock()), live=False)
    assert replaying.state is State.REPLAYING
    (push,) = replaying.handle(TypingReceived(note))
    assert isinstance(push, Push) and push.expendable and not push.paced
    assert push.frame == chat_pb2.ServerFrame(typing=note)
    live = logged_in(session_with(Clock()))
    assert live.handle(TypingReceived(note)) == [push]


def test_no_note_before_the_login_or_after_the_close() -> None:
    note = chat_pb2.Typing(conversation_id=CID, user_id=PEER)
    session = session_with(Clock())
    assert session.handle(TypingReceived(note)) == []
    logged_in(session)
    assert isinstance(session.handle(Ended())[0], Close)
    assert session.handle(TypingReceived(note)) == []
    assert session.handle(typing()) == []
    assert session.handle(TypingRefused(PermissionDenied("no"))) == []


def test_a_typing_frame_before_the_login_is_refused_like_any_other_frame() -> None:
    session = session_with(Clock())
    (close,) = session.handle(typing())
    assert isinstance(close, Close) and close.error is not None
    assert close.error.message == "the first frame must be a login"
