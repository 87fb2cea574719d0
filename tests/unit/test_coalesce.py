import asyncio

import pytest

from cim.core.coalesce import Coalescer


class Recorder:
    """A batch send that records each batch and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [item * 10 for item in items]


async def test_an_idle_coalescer_sends_at_once_in_a_batch_of_one() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send)
    assert await coalescer.submit(1) == 10
    assert recorder.batches == [[1]]


async def test_items_queued_during_a_call_leave_together_in_order() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.send)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(coalescer.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    assert recorder.batches == [[1]]  # one call in flight at a time
    recorder.gate.set()
    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_batches_are_capped() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer = Coalescer(recorder.send, max_batch=2)
    futures = [coalescer.enqueue(n) for n in range(5)]
    recorder.gate.set()
    assert [await f for f in futures] == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_batch_fails_its_callers_only() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("down")
        return items

    coalescer = Coalescer(flaky)
    with pytest.raises(ConnectionError):
        await coalescer.submit(1)
    assert await coalescer.submit(2) == 2


async def test_a_send_returning_the_wrong_count_is_an_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return []

    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        await Coalescer(short).submit(1)


async def test_closed_coalescer_refuses_items_after_flushing() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder.send)
    pending = coalescer.enqueue(5)
    await coalescer.aclose()
    assert pending.result() == 50
    with pytest.raises(RuntimeError, match="closed"):
        coalescer.enqueue(6)
