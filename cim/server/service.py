"""The chat server's servicers: the client stream (``cim.v1.Chat.Connect``)
and the route-facing pushes (``cim.internal.v1.ChatInternal``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeAlias

import grpc

from cim.config import ServerConfig
from cim.core.ratelimit import KeyedLimiter, describe_limit
from cim.errors import (
    CimError,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from cim.grpcutil import SecretCheck, refuse_stream, unary_edge
from cim.proto.internal.v1 import chat_internal_pb2, chat_internal_pb2_grpc, route_internal_pb2
from cim.proto.v1 import chat_pb2, chat_pb2_grpc, common_pb2
from cim.server.acks import AckForwarder
from cim.server.routes import RouteLinks
from cim.server.streams import ClientStream, StreamTable, notice

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext
LOGIN_TIMEOUT = 10.0
# How long a delivery waits for a login of its receiver that is being checked.
CHECK_WAIT = 5.0
MAX_OUTSTANDING_SENDS = 256
KICKED = chat_pb2.Notice.KIND_KICKED
ERROR = chat_pb2.Notice.KIND_ERROR
BEHIND = chat_pb2.Notice.KIND_BEHIND
# Inbox entries one Replay call reads.
REPLAY_PAGE = 200


def _error_notice(exc: CimError) -> chat_pb2.ServerFrame:
    return notice(ERROR, exc.message, exc.code.value[0])


class ChatService(chat_pb2_grpc.ChatServicer):
    """The client stream: login, heartbeat, sends, acks, replay and pushes."""

    def __init__(self, config: ServerConfig, streams: StreamTable, routes: RouteLinks) -> None:
        self._config = config
        self._streams = streams
        self._routes = routes
        self._background: set[asyncio.Task[None]] = set()
        self.acks = AckForwarder(routes, config.server_id)
        # Refreshes must come well within the routes' session TTL, which
        # routes tell us; our own interval is only an upper bound.
        self.refresh_interval = config.refresh_interval
        self.accepting = True
        # This server holds the user's one stream, so it sees all its stream sends.
        self.send_limits: KeyedLimiter[int] = KeyedLimiter(
            config.max_msgs_per_sec, config.msg_burst
        )

    # --- the client stream -------------------------------------------------
    async def Connect(
        self, request_iterator: AsyncIterator[chat_pb2.ClientFrame], context: Context
    ) -> AsyncIterator[chat_pb2.ServerFrame]:
        try:
            stream = await self._login(request_iterator)
        except CimError as exc:
            yield _error_notice(exc)
            return
        reader = asyncio.create_task(self._read(stream, request_iterator))
        stream.replay_task = asyncio.create_task(self._replay(stream, stream.login_seq))
        try:
            while (frame := await stream.next_frame()) is not None:
                yield frame
        finally:
            reader.cancel()
            stream.replay_task.cancel()
            stream.close(None, stream.close_reason or "disconnected")
            if self._streams.remove(stream):
                self._spawn(self._disconnected(stream))
            log.info("user %s left (%s)", stream.user_id, stream.close_reason)

    async def _login(self, request_iterator: AsyncIterator[chat_pb2.ClientFrame]) -> ClientStream:
        if not self.accepting:
            raise Unavailable("this chat server is shutting down: log in again through a route")
        try:
            first = await asyncio.wait_for(anext(request_iterator), LOGIN_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            raise Unauthenticated("no login frame: the first frame must be a login") from None
        if first.WhichOneof("frame") != "login":
            raise Unauthenticated("the first frame must be a login")
        login = first.login
        if login.user_id <= 0 or not login.session_token:
            raise Unauthenticated("login needs a user id and a session token")
        stream = ClientStream(login.user_id, login.device_id, self._config.outbound_queue)
        stream.login_seq = login.last_seq
        # Held back from here on: live messages wait for the replay (Connect starts it).
        stream.begin_replay()
        check = self._streams.begin_check(login.user_id)
        try:
            request = route_internal_pb2.SessionConnectedRequest(
                server_id=self._config.server_id,
                user_id=login.user_id,
                session_token=login.session_token,
                device_id=login.device_id,
                last_seq=login.last_seq,
            )
            reply = await self._routes.call(
                "SessionConnected",
                lambda stub: stub.SessionConnected(
                    request, metadata=self._routes.metadata, timeout=self._routes.timeout
                ),
            )
            stream.session_id = reply.session_id
            stream.user_name = reply.user_name
            self.learn_session_ttl(reply.session_ttl_ms)
            replaced = self._streams.add(stream)
        finally:
            self._streams.end_check(login.user_id, check)
        if replaced is not None:
            replaced.close(notice(KICKED, "logged in from another client"), "replaced")
        stream.push(
            chat_pb2.ServerFrame(
                login_ok=chat_pb2.LoginOk(
                    user_id=stream.user_id,
                    user_name=stream.user_name,
                    server_id=self._config.server_id,
                    heartbeat_interval_ms=int(self._config.heartbeat.ping_interval * 1000),
                    idle_timeout_ms=int(self._config.heartbeat.idle_timeout * 1000),
                )
            )
        )
        log.info("user %s (%s) connected", stream.user_id, stream.user_name)
        return stream

    async def _read(
        self, stream: ClientStream, request_iterator: AsyncIterator[chat_pb2.ClientFrame]
    ) -> None:
        try:
            async for frame in request_iterator:
                stream.heard()
                kind = frame.WhichOneof("frame")
                if kind == "ping":
                    stream.push(
                        chat_pb2.ServerFrame(
                            pong=chat_pb2.Pong(
                                client_time_ms=frame.ping.client_time_ms,
                                server_time_ms=_now_ms(),
                            )
                        )
                    )
                elif kind == "send":
                    self._send(stream, frame.send)
                elif kind == "ack":
                    # The user is the stream's, never one named in the frame.
                    self.acks.note(stream.user_id, stream.session_id, frame.ack.seq)
                elif kind == "sync":
                    if not stream.replaying:
                        stream.begin_replay()
                        stream.replay_task = asyncio.create_task(
                            self._replay(stream, frame.sync.after_seq)
                        )
                else:
                    stream.close(
                        _error_notice(InvalidArgument(f"unexpected {kind or 'empty'} frame")),
                        "protocol error",
                    )
                    return
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        stream.close(None, stream.close_reason or "client closed the stream")

    def _send(self, stream: ClientStream, send: chat_pb2.SendFrame) -> None:
        correlation_id = send.correlation_id
        target = send.WhichOneof("target")
        item = route_internal_pb2.SubmittedMessage(
            sender_id=stream.user_id, session_id=stream.session_id, sender_name=stream.user_name
        )
        try:
            if target == "private":
                item.private.CopyFrom(send.private)
                text = send.private.text
            elif target == "group":
                item.group.CopyFrom(send.group)
                text = send.group.text
            else:
                raise InvalidArgument("send frame has neither a private nor a group target")
            if len(text.encode()) > self._config.max_text_bytes:
                raise InvalidArgument(
                    f"message text is over the limit of {self._config.max_text_bytes} bytes"
                )
            if stream.outstanding_sends >= MAX_OUTSTANDING_SENDS:
                raise ResourceExhausted(
                    f"more than {MAX_OUTSTANDING_SENDS} sends await their result: slow down"
                )
            if not self.send_limits.allow(stream.user_id):
                raise ResourceExhausted(
                    describe_limit(
                        "messages from this user",
                        self.send_limits.rate,
                        self.send_limits.burst,
                        self.send_limits.retry_after(stream.user_id),
                    )
                )
        except CimError as exc:
            stream.push(_send_error(correlation_id, exc))
            return
        stream.outstanding_sends += 1
        future = self._routes.submissions.enqueue(item)

        def answer(done: asyncio.Future[route_internal_pb2.SubmitResult]) -> None:
            stream.outstanding_sends -= 1
            if done.cancelled():
                return
            exc = done.exception()
            if isinstance(exc, CimError):
                stream.push(_send_error(correlation_id, exc))
                return
            if exc is not None:
                log.error("submitting a message failed", exc_info=exc)
                stream.push(
                    _send_error(
                        correlation_id,
                        Internal("internal error while sending; see the chat server log"),
                    )
                )
                return
            result = done.result()
            frame = chat_pb2.SendResultFrame(correlation_id=correlation_id)
            if result.WhichOneof("outcome") == "ok":
                frame.ok.CopyFrom(result.ok)
            else:
                frame.error.CopyFrom(result.error)
            stream.push(chat_pb2.ServerFrame(send_result=frame))

        future.add_done_callback(answer)

    def learn_session_ttl(self, session_ttl_ms: int) -> None:
        if session_ttl_ms > 0:
            self.refresh_interval = min(self._config.refresh_interval, session_ttl_ms / 3000)

    async def _replay(self, stream: ClientStream, after_seq: int) -> None:
        """Sends the stream's inbox after ``after_seq`` in order, at the
        client's pace, then goes live with what was held back meanwhile."""
        cursor = after_seq
        dropped = 0
        try:
            while True:
                reply = await self._replay_page(stream, cursor)
                for message in reply.messages:
                    if not await stream.push_paced(chat_pb2.ServerFrame(message=message)):
                        return
                    cursor = message.seq
                dropped = max(dropped, reply.dropped_through_seq)
                if reply.more:
                    continue
                # Every seq up to the head was in a page or is gone (acked, dropped).
                if stream.finish_replay(
                    reply.head_seq, _replay_done(after_seq, reply.head_seq, dropped)
                ):
                    return
        except CimError as exc:
            stream.close(
                _error_notice(Unavailable(f"could not replay stored messages: {exc.message}")),
                "replay failed",
            )

    async def _replay_page(
        self, stream: ClientStream, after_seq: int
    ) -> route_internal_pb2.ReplayResponse:
        request = route_internal_pb2.ReplayRequest(
            server_id=self._config.server_id,
            user_id=stream.user_id,
            session_id=stream.session_id,
            after_seq=after_seq,
            limit=REPLAY_PAGE,
        )
        return await self._routes.call(
            "Replay",
            lambda stub: stub.Replay(
                request, metadata=self._routes.metadata, timeout=self._routes.timeout
            ),
        )

    async def _disconnected(self, stream: ClientStream) -> None:
        # Its last acks first: a login that follows the end of this session
        # then replays nothing the client already had.
        await self.acks.flush()
        request = route_internal_pb2.SessionDisconnectedRequest(
            server_id=self._config.server_id,
            user_id=stream.user_id,
            session_id=stream.session_id,
            reason=stream.close_reason,
        )
        try:
            await self._routes.call(
                "SessionDisconnected",
                lambda stub: stub.SessionDisconnected(
                    request, metadata=self._routes.metadata, timeout=self._routes.timeout
                ),
            )
        except CimError as exc:
            # The login state then expires by itself (no refresh keeps it).
            log.warning("could not report user %s leaving: %s", stream.user_id, exc.message)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_background(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


class ChatInternalService(chat_internal_pb2_grpc.ChatInternalServicer):
    """What routes call: pushes, kicks and presence for the streams held here."""

    def __init__(self, streams: StreamTable, secret: SecretCheck) -> None:
        self._streams = streams
        self._secret = secret

    async def DeliverStream(
        self, request_iterator: AsyncIterator[chat_internal_pb2.DeliverRequest], context: Context
    ) -> AsyncIterator[chat_internal_pb2.DeliverResponse]:
        try:
            self._secret.require(context)
        except CimError as exc:
            await refuse_stream(context, request_iterator, exc)
            return
        async for request in request_iterator:  # in order: pushes keep their order
            yield await self._deliver(request)

    async def _deliver(
        self, request: chat_internal_pb2.DeliverRequest
    ) -> chat_internal_pb2.DeliverResponse:
        for kick in request.kicks:
            stream = self._streams.get(kick.user_id)
            if stream is not None and stream.session_id == kick.session_id:
                stream.close(notice(KICKED, kick.reason or "session ended"), "kicked")
        delivered = []
        for delivery in request.deliveries:
            stream = self._streams.get(delivery.receiver_id)
            if stream is None:
                stream = await self._streams.find(delivery.receiver_id, CHECK_WAIT)
            delivered.append(
                stream is not None
                and stream.push_message(chat_pb2.ServerFrame(message=delivery.message))
            )
        return chat_internal_pb2.DeliverResponse(delivered=delivered)

    @unary_edge
    async def Presence(
        self, request: chat_internal_pb2.PresenceRequest, context: Context
    ) -> chat_internal_pb2.PresenceResponse:
        self._secret.require(context)
        live = []
        for ref in request.sessions:
            stream = self._streams.get(ref.user_id)
            live.append(
                stream is not None and not stream.closed and stream.session_id == ref.session_id
            )
        return chat_internal_pb2.PresenceResponse(live=live)


def _replay_done(after_seq: int, head_seq: int, dropped: int) -> list[chat_pb2.ServerFrame]:
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


def _send_error(correlation_id: int, exc: CimError) -> chat_pb2.ServerFrame:
    return chat_pb2.ServerFrame(
        send_result=chat_pb2.SendResultFrame(
            correlation_id=correlation_id,
            error=common_pb2.ItemError(code=exc.code.value[0], message=exc.message),
        )
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
