import asyncio

from cim.proto.v1 import chat_pb2
from cim.server.streams import ClientStream, StreamTable, notice


def frame(text: str) -> chat_pb2.ServerFrame:
    return notice(chat_pb2.Notice.KIND_ERROR, text)


async def test_frames_come_out_in_order_then_none_after_close() -> None:
    stream = ClientStream(1, "", max_buffered=10)
    assert stream.push(frame("a")) and stream.push(frame("b"))
    stream.close(frame("bye"), "test")
    texts = []
    while (out := await stream.next_frame()) is not None:
        texts.append(out.notice.text)
    assert texts == ["a", "b", "bye"]
    assert not stream.push(frame("late"))


async def test_a_slow_consumer_is_closed_instead_of_buffering_without_bound() -> None:
    stream = ClientStream(1, "", max_buffered=3)
    assert all(stream.push(frame(str(i))) for i in range(3))
    assert not stream.push(frame("overflow"))
    assert stream.closed and stream.close_reason == "slow consumer"
    texts = []
    while (out := await stream.next_frame()) is not None:
        texts.append(out.notice.text)
    assert texts[:3] == ["0", "1", "2"]
    assert "too slow" in texts[-1]


async def test_the_writer_waits_for_frames() -> None:
    stream = ClientStream(1, "", max_buffered=3)
    waiter = asyncio.ensure_future(stream.next_frame())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    stream.push(frame("x"))
    out = await asyncio.wait_for(waiter, 1)
    assert out is not None and out.notice.text == "x"


async def test_table_keeps_one_stream_per_user_and_removes_only_its_own() -> None:
    table = StreamTable()
    old, new = ClientStream(7, "", 5), ClientStream(7, "", 5)
    assert table.add(old) is None
    assert table.add(new) is old
    assert not table.remove(old)  # a replaced stream cannot remove its successor
    assert table.get(7) is new
    assert table.remove(new) and table.get(7) is None


async def test_find_waits_for_a_login_being_checked() -> None:
    table = StreamTable()
    check = table.begin_check(9)
    stream = ClientStream(9, "", 5)

    async def confirm() -> None:
        await asyncio.sleep(0.02)
        table.add(stream)
        table.end_check(9, check)

    task = asyncio.ensure_future(confirm())
    assert await table.find(9, wait=1.0) is stream
    await task
    assert await table.find(10, wait=1.0) is None
