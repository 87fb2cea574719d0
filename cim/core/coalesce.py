"""Coalescing of concurrent requests into batches, one batch in flight at a time.

Theory of operation: callers ``submit`` items and await their own result. If
no batch is in flight, the item leaves at once in a batch of one (no added
latency when idle). While a batch is in flight, new items queue; when it
returns, everything queued leaves together (up to ``max_batch``). The send
function gets a list of items and returns one result per item, in order; if it
raises, every caller of that batch gets the exception. No I/O here: the send
function is injected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        max_batch: int = 512,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def submit(self, item: Item) -> Result:
        return await self.enqueue(item)

    def enqueue(self, item: Item) -> asyncio.Future[Result]:
        """Queues the item at once (so items keep their order) and returns the
        future of its result."""
        if self._closed:
            raise RuntimeError("coalescer is closed")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await self._send([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"batch send returned {len(results)} results for {len(batch)} items"
                    )
            except BaseException as exc:  # every waiter of the batch learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    self._fail_pending(exc)
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(exc)

    async def aclose(self) -> None:
        """Stops accepting items; waits for the batch in flight and what is queued."""
        self._closed = True
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
