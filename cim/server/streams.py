"""Client streams held by a chat server, and the table that finds them by user.

A stream is a protocol session (``cim.core.chat_session.ChatSession``, no
I/O) plus its outbound queue. The queue is bounded and has a single writer
(the Connect handler); every other task only appends. A client that stops
reading fills it and is disconnected "too slow" (it catches up by replay when
it comes back) instead of growing memory without limit.

:class:`ClientStream` carries out the actions that stay on the stream (pushes,
the close) and hands back the rest (route calls, paced pushes) to its driver.
"""

from __future__ import annotations

import asyncio
from collections import deque

from cim.core.chat_session import (
    Action,
    ChatSession,
    Close,
    Deliver,
    Event,
    OutboundOverflow,
    Push,
    State,
    TypingReceived,
)
from cim.errors import CimError
from cim.proto.v1 import chat_pb2, common_pb2


class Outbox:
    """Frames waiting for the stream's one writer, at most ``max_buffered``
    (plus a final frame at the close)."""

    def __init__(self, max_buffered: int) -> None:
        self._max_buffered = max_buffered
        self._frames: deque[chat_pb2.ServerFrame] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, frame: chat_pb2.ServerFrame) -> bool:
        """Queues a frame; False (queueing nothing) if closed or full."""
        if self._closed or len(self._frames) >= self._max_buffered:
            return False
        self._frames.append(frame)
        self._ready.set()
        return True

    def push_expendable(self, frame: chat_pb2.ServerFrame) -> bool:
        """Queues a frame worth little (a typing note) only while the queue is
        less than half full: a client that is behind gets none, and never
        fills the queue with them."""
        if len(self._frames) >= self._max_buffered // 2:
            return False
        return self.push(frame)

    async def push_paced(self, frame: chat_pb2.ServerFrame) -> bool:
        """Queues a frame once the queue is at most half full: a long replay
        goes at the client's pace instead of filling the queue."""
        while len(self._frames) > self._max_buffered // 2 and not self._closed:
            self._room.clear()
            await self._room.wait()
        return self.push(frame)

    def close(self, final: chat_pb2.ServerFrame | None = None) -> None:
        """Ends the queue after what it holds (and ``final``, past the bound)."""
        if self._closed:
            return
        if final is not None:
            self._frames.append(final)
        self._closed = True
        self._ready.set()
        self._room.set()

    async def next_frame(self) -> chat_pb2.ServerFrame | None:
        """The next frame to write; None once closed and drained."""
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        if len(self._frames) <= self._max_buffered // 2:
            self._room.set()
        return frame


class ClientStream:
    """One client's stream on this server: its session and its outbox."""

    def __init__(self, session: ChatSession, max_buffered: int) -> None:
        self.session = session
        self.outbox = Outbox(max_buffered)
        # The driver's replay, if one runs (it cancels it at the end).
        self.replay_task: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> int:
        return self.session.user_id

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def user_name(self) -> str:
        return self.session.user_name

    @property
    def closed(self) -> bool:
        return self.session.closed

    @property
    def close_reason(self) -> str:
        return self.session.close_reason

    @property
    def close_error(self) -> CimError | None:
        """Why the stream ended, if an error ended it: the call's status."""
        return self.session.close_error

    def handle(self, event: Event) -> list[Action]:
        """Feeds the session; queues its pushes and carries out its close.
        Returns what is left for the driver: route calls and paced pushes."""
        return self._carry_out(self.session.handle(event))

    def deliver(self, message: common_pb2.ChatMessage) -> bool:
        """A live message from a route; True when the stream took it (queued,
        held for after a replay, or dropped as one it already has)."""
        if self.session.closed or self.session.state is State.AWAITING_LOGIN:
            return False
        self.handle(Deliver(message))
        return not self.session.closed

    def typing(self, note: chat_pb2.Typing) -> bool:
        """Another participant's typing note from a route; True when it was
        queued for the client (not logged in yet, closed, or behind: dropped)."""
        queued = False
        for action in self.session.handle(TypingReceived(note)):
            if isinstance(action, Push) and action.expendable:
                queued = self.outbox.push_expendable(action.frame)
        return queued

    async def push_paced(self, frame: chat_pb2.ServerFrame) -> bool:
        """Queues a replayed frame at the client's pace; False once closed."""
        return await self.outbox.push_paced(frame)

    async def next_frame(self) -> chat_pb2.ServerFrame | None:
        return await self.outbox.next_frame()

    def _carry_out(self, actions: list[Action]) -> list[Action]:
        rest: list[Action] = []
        for action in actions:
            if isinstance(action, Push) and action.expendable:
                self.outbox.push_expendable(action.frame)
            elif isinstance(action, Push) and not action.paced:
                if not self.outbox.push(action.frame) and not self.outbox.closed:
                    self._carry_out(self.session.handle(OutboundOverflow()))
            elif isinstance(action, Close):
                self.outbox.close(action.final)
            else:
                rest.append(action)
        return rest


class StreamTable:
    """Confirmed streams by user id, plus logins still being checked.

    One stream per user: a newer confirmed session replaces an older one
    (the route already decided it may). Deliveries for a user whose login is
    still being checked wait for that check, so stored messages pushed right
    after the route accepts the login are not lost in between.
    """

    def __init__(self) -> None:
        self._streams: dict[int, ClientStream] = {}
        self._checking: dict[int, set[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def streams(self) -> list[ClientStream]:
        return list(self._streams.values())

    def get(self, user_id: int) -> ClientStream | None:
        return self._streams.get(user_id)

    def begin_check(self, user_id: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._checking.setdefault(user_id, set()).add(future)
        return future

    def end_check(self, user_id: int, future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)
        waiting = self._checking.get(user_id)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._checking[user_id]

    async def find(self, user_id: int, wait: float) -> ClientStream | None:
        """The user's stream, waiting up to ``wait`` seconds for logins being checked."""
        stream = self._streams.get(user_id)
        if stream is None and user_id in self._checking:
            await asyncio.wait(self._checking[user_id], timeout=wait)
            stream = self._streams.get(user_id)
        return stream

    def add(self, stream: ClientStream) -> ClientStream | None:
        """Adds a confirmed stream; returns the stream it replaced, if any."""
        old = self._streams.get(stream.user_id)
        self._streams[stream.user_id] = stream
        return old if old is not stream else None

    def remove(self, stream: ClientStream) -> bool:
        """Removes the stream if it is still the user's current one."""
        if self._streams.get(stream.user_id) is stream:
            del self._streams[stream.user_id]
            return True
        return False
