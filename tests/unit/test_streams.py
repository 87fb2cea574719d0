import asyncio

from cim.core.chat_session import (
    ChatSession,
    Drain,
    FrameReceived,
    LoginAccepted,
    ReplayPageQueued,
    ReplayPageReceived,
    SessionSettings,
    State,
    notice,
)
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import chat_pb2, common_pb2
from cim.server.streams import ClientStream, Outbox, StreamTable


def frame(text: str) -> chat_pb2.ServerFrame:
    return notice(chat_pb2.Notice.KIND_ERROR, text)


def live_stream(user_id: int = 1, max_buffered: int = 10) -> ClientStream:
    """A stream past its login and an empty replay, as Connect leaves it."""
    stream = ClientStream(ChatSession(SessionSettings(server_id="s")), max_buffered)
    login = chat_pb2.LoginFrame(user_id=user_id, session_token="t")
    stream.handle(FrameReceived(chat_pb2.ClientFrame(login=login)))
    stream.handle(LoginAccepted(f"session-{user_id}", "alice"))
    stream.handle(ReplayPageReceived(route_internal_pb2.ReplayResponse()))
    stream.handle(ReplayPageQueued())
    assert stream.session.state is State.LIVE
    return stream


async def drained(stream: ClientStream) -> list[chat_pb2.ServerFrame]:
    frames = []
    while (out := await stream.next_frame()) is not None:
        frames.append(out)
    return frames


async def test_frames_come_out_in_order_then_none_after_close() -> None:
    outbox = Outbox(max_buffered=10)
    assert outbox.push(frame("a")) and outbox.push(frame("b"))
    outbox.close(frame("bye"))
    texts = []
    while (out := await outbox.next_frame()) is not None:
        texts.append(out.notice.text)
    assert texts == ["a", "b", "bye"]
    assert not outbox.push(frame("late"))


async def test_a_full_outbox_takes_nothing_more() -> None:
    outbox = Outbox(max_buffered=2)
    assert outbox.push(frame("0")) and outbox.push(frame("1"))
    assert not outbox.push(frame("2"))
    assert len(outbox) == 2 and not outbox.closed


async def test_the_writer_waits_for_frames() -> None:
    outbox = Outbox(max_buffered=3)
    waiter = asyncio.ensure_future(outbox.next_frame())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    outbox.push(frame("x"))
    out = await asyncio.wait_for(waiter, 1)
    assert out is not None and out.notice.text == "x"


async def test_paced_pushes_wait_until_the_outbox_is_half_empty() -> None:
    outbox = Outbox(max_buffered=4)
    for text in "abc":
        assert await outbox.push_paced(frame(text))
    paced = asyncio.ensure_future(outbox.push_paced(frame("d")))
    await asyncio.sleep(0.01)
    assert not paced.done()  # 3 queued > 4 // 2
    await outbox.next_frame()
    assert await asyncio.wait_for(paced, 1)
    outbox.close()
    assert not await outbox.push_paced(frame("late"))


async def test_a_slow_consumer_is_closed_instead_of_buffering_without_bound() -> None:
    stream = live_stream(max_buffered=3)
    for _ in ("login_ok", "replay_done"):
        await stream.next_frame()
    for seq in range(1, 5):
        stream.deliver(common_pb2.ChatMessage(seq=seq))
    assert stream.closed and stream.close_reason == "slow consumer"
    frames = await drained(stream)
    assert [f.message.seq for f in frames[:3]] == [1, 2, 3]
    assert "too slow" in frames[-1].notice.text
    assert frames[-1].notice.code == 8
    assert stream.close_error is not None and stream.close_error.message == frames[-1].notice.text
    # It took the first three; the fourth found it full, the next one closed.
    assert not stream.deliver(common_pb2.ChatMessage(seq=5))


async def test_a_stream_queues_pushes_and_ends_after_its_closing_notice() -> None:
    stream = live_stream()
    assert stream.deliver(common_pb2.ChatMessage(seq=1, text="hi"))
    assert stream.deliver(common_pb2.ChatMessage(seq=1, text="hi"))  # a repeat: taken, dropped
    stream.handle(Drain())
    assert not stream.deliver(common_pb2.ChatMessage(seq=2))
    frames = await drained(stream)
    kinds = [f.WhichOneof("frame") for f in frames]
    assert kinds == ["login_ok", "replay_done", "message", "notice"]
    assert frames[-1].notice.kind == chat_pb2.Notice.KIND_DRAINING
    assert stream.close_error is None


async def test_table_keeps_one_stream_per_user_and_removes_only_its_own() -> None:
    table = StreamTable()
    old, new = live_stream(7), live_stream(7)
    assert table.add(old) is None
    assert table.add(new) is old
    assert not table.remove(old)  # a replaced stream cannot remove its successor
    assert table.get(7) is new
    assert table.remove(new) and table.get(7) is None


async def test_find_waits_for_a_login_being_checked() -> None:
    table = StreamTable()
    check = table.begin_check(9)
    stream = live_stream(9)

    async def confirm() -> None:
        await asyncio.sleep(0.02)
        table.add(stream)
        table.end_check(9, check)

    task = asyncio.ensure_future(confirm())
    assert await table.find(9, wait=1.0) is stream
    await task
    assert await table.find(10, wait=1.0) is None


async def test_a_typing_note_is_queued_only_while_the_outbox_is_under_half_full() -> None:
    stream = live_stream(max_buffered=8)  # LoginOk and ReplayDone are queued
    note = chat_pb2.Typing(conversation_id="p:1:2", user_id=2, user_name="bob")
    assert stream.typing(note)
    assert stream.outbox.push(frame("a"))
    assert not stream.typing(note)  # behind: dropped, and not "too slow"
    assert not stream.closed and len(stream.outbox) == 4
    stream.outbox.close()
    frames = await drained(stream)
    assert [f.WhichOneof("frame") for f in frames] == [
        "login_ok",
        "replay_done",
        "typing",
        "notice",
    ]
    assert frames[2].typing == note


async def test_a_typing_note_for_a_stream_not_logged_in_or_closed_is_dropped() -> None:
    note = chat_pb2.Typing(conversation_id="p:1:2", user_id=2)
    fresh = ClientStream(ChatSession(SessionSettings(server_id="s")), 10)
    assert not fresh.typing(note) and len(fresh.outbox) == 0
    stream = live_stream()
    stream.handle(Drain())
    assert not stream.typing(note)
