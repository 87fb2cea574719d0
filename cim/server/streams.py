"""Client streams held by a chat server, and the table that finds them by user.

Each stream has one bounded outbound buffer and a single writer (the Connect
handler); every other task only appends. A client that stops reading fills
its buffer and is disconnected (it catches up by replay when it comes back)
instead of growing memory without limit.

While a stream replays its inbox, live messages for it are held back and
sent after the replay, minus those the replay already carried: the client
sees its sequence in order, with no gap between replay and live.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

from cim.proto.v1 import chat_pb2

# How many recently pushed seqs a stream remembers to drop repeated pushes.
RECENT_SEQS = 256


class ClientStream:
    def __init__(self, user_id: int, device_id: str, max_buffered: int) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.session_id = ""
        self.user_name = ""
        self.last_heard = time.monotonic()
        self.outstanding_sends = 0
        # The seq the client said it holds at login; the replay starts after it.
        self.login_seq = 0
        self.replay_task: asyncio.Task[None] | None = None
        self._max_buffered = max_buffered
        self._frames: deque[chat_pb2.ServerFrame] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False
        self.close_reason = ""
        # Live messages held back during a replay; overflowing means the
        # replay must read the inbox once more (they are all stored there).
        self.replaying = False
        # Every seq up to here was sent by a replay (or is gone).
        self.replayed_through = 0
        self._held: list[chat_pb2.ServerFrame] = []
        # The last seqs pushed live, oldest first (an ordered set).
        self._recent: dict[int, None] = {}
        self._held_overflow = False

    @property
    def closed(self) -> bool:
        return self._closed

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def push(self, frame: chat_pb2.ServerFrame) -> bool:
        """Queues a frame; False if the stream is closed or too far behind
        (then it is closed with an error notice)."""
        if self._closed:
            return False
        if len(self._frames) >= self._max_buffered:
            self.close(
                notice(chat_pb2.Notice.KIND_ERROR, "too slow: messages are waiting unread", 8),
                "slow consumer",
            )
            return False
        self._frames.append(frame)
        self._ready.set()
        return True

    def push_message(self, frame: chat_pb2.ServerFrame) -> bool:
        """Queues a live message, or holds it back while the stream replays.
        A seq the last replay covered, or one pushed lately, is a duplicate
        (a retried send pushes again): dropped."""
        seq = frame.message.seq
        if seq and (seq <= self.replayed_through or seq in self._recent):
            return not self._closed
        if not self.replaying:
            queued = self.push(frame)
            if queued and seq:
                self._recent[seq] = None
                if len(self._recent) > RECENT_SEQS:
                    del self._recent[next(iter(self._recent))]
            return queued
        if self._closed:
            return False
        if len(self._held) >= self._max_buffered:
            self._held.clear()
            self._held_overflow = True
        self._held.append(frame)
        return True

    def begin_replay(self) -> None:
        self.replaying = True

    def finish_replay(self, through_seq: int, closing: Sequence[chat_pb2.ServerFrame] = ()) -> bool:
        """Goes live after a replay that sent everything up to ``through_seq``:
        queues ``closing`` (what tells the client the replay is done), then
        the held messages after it. False (still replaying) if held messages
        were dropped: the caller reads the inbox again first."""
        if self._held_overflow:
            self._held_overflow = False
            return False
        for frame in closing:
            self.push(frame)
        held, self._held = self._held, []
        self.replaying = False
        self.replayed_through = max(self.replayed_through, through_seq)
        for frame in held:
            self.push_message(frame)
        return True

    async def push_paced(self, frame: chat_pb2.ServerFrame) -> bool:
        """Queues a frame once the buffer is at most half full: a long replay
        goes at the client's pace instead of overflowing the buffer."""
        while len(self._frames) > self._max_buffered // 2 and not self._closed:
            self._room.clear()
            await self._room.wait()
        return self.push(frame)

    def close(self, final: chat_pb2.ServerFrame | None, reason: str) -> None:
        """Ends the stream after what is queued (and ``final``, past the bound)."""
        if self._closed:
            return
        if final is not None:
            self._frames.append(final)
        self._closed = True
        self.close_reason = reason
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


def notice(kind: chat_pb2.Notice.Kind.ValueType, text: str, code: int = 0) -> chat_pb2.ServerFrame:
    return chat_pb2.ServerFrame(notice=chat_pb2.Notice(kind=kind, text=text, code=code))


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
