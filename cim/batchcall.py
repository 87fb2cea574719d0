"""Request/response batches over one long-lived bidi gRPC stream.

Theory of operation: the peer answers every request with exactly one response,
in order, so answers are matched to requests first-in first-out. One request
is written at a time. When the stream breaks or an answer is late, every
waiting caller fails with Unavailable and the next call opens a new stream:
callers never hang on a dead peer, and a restarted peer is used again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import grpc

from cim.errors import Unavailable

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class BatchStream(Generic[Req, Resp]):
    def __init__(self, open_call: Callable[[], Any], timeout: float, what: str) -> None:
        self._open_call = open_call
        self._timeout = timeout
        self._what = what
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: collections.deque[asyncio.Future[Resp]] = collections.deque()
        self._write_lock = asyncio.Lock()

    async def call(self, request: Req) -> Resp:
        future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        async with self._write_lock:
            call = self._ensure_open()
            self._pending.append(future)
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                self._break(call, f"write failed: {exc}")
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            self._break(call, f"no answer within {self._timeout:g} s")
            raise Unavailable(f"{self._what}: no answer within {self._timeout:g} s") from None

    def _ensure_open(self) -> Any:
        if self._call is None:
            self._call = self._open_call()
            self._reader = asyncio.create_task(self._read(self._call))
        return self._call

    async def _read(self, call: Any) -> None:
        why = "stream ended"
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if self._pending:
                    future = self._pending.popleft()
                    if not future.done():
                        future.set_result(response)
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            why = "closed"
        self._break(call, why)

    def _break(self, call: Any, why: str) -> None:
        """Fails everything waiting on ``call`` and forgets it (once)."""
        if call is not self._call:
            return
        self._call = None
        call.cancel()
        pending, self._pending = self._pending, collections.deque()
        if pending:
            log.warning("%s stream broke (%s): %d batch(es) failed", self._what, why, len(pending))
        for future in pending:
            if not future.done():
                future.set_exception(Unavailable(f"{self._what}: {why}"))

    async def aclose(self) -> None:
        call, reader = self._call, self._reader
        if call is not None:
            self._break(call, "closed")
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
