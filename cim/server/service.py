"""The chat server's servicers: the client stream (``cim.v1.Chat.Connect``)
and the route-facing pushes (``cim.internal.v1.ChatInternal``).

Both are thin: the protocol is ``cim.core.chat_session``. Connect reads
frames into a stream's session, writes what the session pushes, and carries
out the route calls it asks for; ChatInternal feeds deliveries and kicks to
the sessions held here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from cim import logcontext
from cim.config import ServerConfig
from cim.core.chat_session import (
    Action,
    ChatSession,
    CheckLogin,
    ClientClosed,
    Drain,
    Ended,
    FetchReplayPage,
    ForwardAck,
    ForwardRead,
    ForwardTyping,
    FrameReceived,
    Kick,
    LoginAccepted,
    LoginRefused,
    LoginTimedOut,
    Push,
    ReadFailed,
    ReceiptArrived,
    Replaced,
    ReplayFailed,
    ReplayPageQueued,
    ReplayPageReceived,
    ReportDisconnected,
    SendSettled,
    SessionSettings,
    Submit,
    TypingRefused,
)
from cim.core.ratelimit import KeyedLimiter
from cim.core.typing_notes import FAILED, TypingGate
from cim.errors import CimError, Internal, from_item
from cim.grpcutil import SecretCheck, refuse_stream, unary_edge
from cim.metrics.server import ServerMetrics
from cim.proto.internal.v1 import chat_internal_pb2, chat_internal_pb2_grpc, route_internal_pb2
from cim.proto.v1 import chat_pb2, chat_pb2_grpc
from cim.server.acks import AckForwarder
from cim.server.reads import ReadForwarder
from cim.server.routes import RouteLinks
from cim.server.streams import ClientStream, StreamTable

if TYPE_CHECKING:
    from cim.tracing import MessageTracer

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext
# How long a delivery waits for a login of its receiver that is being checked.
CHECK_WAIT = 5.0


def session_settings(config: ServerConfig) -> SessionSettings:
    return SessionSettings(
        server_id=config.server_id,
        heartbeat=config.heartbeat,
        max_text_bytes=config.max_text_bytes,
        max_held=config.outbound_queue,
    )


class ChatService(chat_pb2_grpc.ChatServicer):
    """The client stream: a gRPC driver of :class:`ChatSession`."""

    def __init__(
        self,
        config: ServerConfig,
        streams: StreamTable,
        routes: RouteLinks,
        acks: AckForwarder,
        metrics: ServerMetrics | None = None,
        *,
        reads: ReadForwarder | None = None,
    ) -> None:
        self._metrics = metrics or ServerMetrics()
        self._config = config
        self._settings = session_settings(config)
        self._streams = streams
        self._routes = routes
        self._acks = acks
        self._reads = reads or ReadForwarder(routes)
        self._background: set[asyncio.Task[None]] = set()
        self.accepting = True
        # This server holds the user's one stream, so it sees all its stream sends.
        self.send_limits: KeyedLimiter[int] = KeyedLimiter(
            config.max_msgs_per_sec, config.msg_burst
        )
        # Typing notes per user and conversation, and per user (floods).
        self.typing_gate = TypingGate()

    async def Connect(
        self, request_iterator: AsyncIterator[chat_pb2.ClientFrame], context: Context
    ) -> AsyncIterator[chat_pb2.ServerFrame]:
        stream = ClientStream(
            ChatSession(self._settings, self.send_limits, typing=self.typing_gate),
            self._config.outbound_queue,
        )
        if not self.accepting:
            stream.handle(Drain())
        reader: asyncio.Task[None] | None = None
        self._metrics.streams.inc()
        try:
            # The login is handled here, the reader starts after it: LoginOk is
            # being written before the next frame is read (one gRPC refuses,
            # too big, would end the call before the client heard anything).
            if await self._login(stream, request_iterator):
                reader = asyncio.create_task(self._read(stream, request_iterator))
            while (frame := await stream.next_frame()) is not None:
                yield frame
            error = stream.close_error
            if error is not None:
                # The notice said it to clients that read frames; the status
                # says it to every client.
                context.set_code(error.code)
                context.set_details(error.message)
        finally:
            self._metrics.streams.dec()
            if reader is not None:
                reader.cancel()
            if stream.replay_task is not None:
                stream.replay_task.cancel()
            report = stream.handle(Ended())
            if self._streams.remove(stream):
                for action in report:
                    if isinstance(action, ReportDisconnected):
                        self._spawn(self._disconnected(action))
            self._metrics.closed(stream.close_reason)
            if stream.session_id:
                log.info("user %s left (%s)", stream.user_id, stream.close_reason)

    async def _login(
        self, stream: ClientStream, request_iterator: AsyncIterator[chat_pb2.ClientFrame]
    ) -> bool:
        """Reads the first frame and has the login checked; True when the
        stream goes on."""
        try:
            first = await asyncio.wait_for(anext(request_iterator), self._settings.login_timeout)
        except TimeoutError:
            stream.handle(LoginTimedOut())
        except StopAsyncIteration:
            stream.handle(ClientClosed())
        except Exception as exc:
            self._read_failed(stream, exc)
        else:
            for action in stream.handle(FrameReceived(first)):
                if isinstance(action, CheckLogin):
                    await self._check_login(stream, action)
        return not stream.closed

    async def _read(
        self, stream: ClientStream, request_iterator: AsyncIterator[chat_pb2.ClientFrame]
    ) -> None:
        """Feeds the frames after the login to the session until it ends."""
        try:
            async for frame in request_iterator:
                self._carry_out(stream, stream.handle(FrameReceived(frame)))
        except Exception as exc:
            self._read_failed(stream, exc)
        else:
            stream.handle(ClientClosed())

    @staticmethod
    def _read_failed(stream: ClientStream, exc: Exception) -> None:
        if isinstance(exc, CimError):  # a frame that does not decode: a protocol error
            stream.handle(ReadFailed(exc))
        elif isinstance(exc, grpc.aio.AioRpcError):
            stream.handle(ClientClosed())
        else:
            log.error("reading the stream of user %s failed", stream.user_id, exc_info=exc)
            stream.handle(ReadFailed(Internal("internal error; see the chat server log")))

    async def _check_login(self, stream: ClientStream, check: CheckLogin) -> None:
        waiting = self._streams.begin_check(check.user_id)
        replaced = None
        try:
            try:
                reply = await self._routes.session_connected(
                    check.user_id, check.session_token, check.device_id, check.last_seq
                )
            except CimError as exc:
                self._metrics.login(exc)
                stream.handle(LoginRefused(exc))
                return
            self._metrics.login(None)
            self._carry_out(stream, stream.handle(LoginAccepted(reply.session_id, reply.user_name)))
            replaced = self._streams.add(stream)
        finally:
            self._streams.end_check(check.user_id, waiting)
        if replaced is not None:
            replaced.handle(Replaced())
        # This stream's task (and those it starts) logs for this user from now on.
        logcontext.user_id_var.set(stream.user_id)
        log.info("user %s (%s) connected", stream.user_id, stream.user_name)

    def _carry_out(self, stream: ClientStream, actions: list[Action]) -> None:
        """The route calls a session asked for (its pushes are queued already)."""
        for action in actions:
            if isinstance(action, Submit):
                future = self._routes.submit(action.message)
                future.add_done_callback(functools.partial(_settle, stream, action.correlation_id))
            elif isinstance(action, ForwardAck):
                self._acks.note(action.user_id, action.session_id, action.seq)
            elif isinstance(action, ForwardTyping):
                answer = self._routes.typing(action.note)
                answer.add_done_callback(functools.partial(self._typing_settled, stream))
            elif isinstance(action, ForwardRead):
                self._reads.note(
                    action.user_id, action.session_id, action.conversation_id, action.position
                )
            elif isinstance(action, FetchReplayPage):
                stream.replay_task = asyncio.create_task(self._replay(stream, action))
            else:
                raise AssertionError(f"unexpected action {action!r}")

    def _typing_settled(
        self, stream: ClientStream, done: asyncio.Future[route_internal_pb2.TypingResult]
    ) -> None:
        """A forwarded typing note's answer: a refusal goes back to its
        session; a failure costs the note alone (it is worth nothing later)."""
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            self.typing_gate.count(FAILED)
            log.debug("a typing note of user %s was lost: %s", stream.user_id, exc)
            return
        result = done.result()
        if result.HasField("refused"):
            stream.handle(TypingRefused(from_item(result.refused)))

    async def _replay(self, stream: ClientStream, fetch: FetchReplayPage | None) -> None:
        """Reads the inbox pages the session asks for and queues them at the
        client's pace."""
        while fetch is not None:
            try:
                reply = await self._routes.replay_page(
                    fetch.user_id, fetch.session_id, fetch.after_seq, fetch.limit
                )
            except CimError as exc:
                stream.handle(ReplayFailed(exc))
                return
            self._metrics.replay_pages.inc()
            self._metrics.replayed.inc(len(reply.messages))
            for action in stream.handle(ReplayPageReceived(reply)):
                if isinstance(action, Push) and not await stream.push_paced(action.frame):
                    return
            fetch = None
            for action in stream.handle(ReplayPageQueued()):
                if isinstance(action, FetchReplayPage):
                    fetch = action

    async def _disconnected(self, report: ReportDisconnected) -> None:
        # Its last acks first: a login that follows the end of this session
        # then replays nothing the client already had.
        await self._acks.flush()
        await self._reads.flush()
        try:
            await self._routes.disconnected(report.user_id, report.session_id, report.reason)
        except CimError as exc:
            # The login state then expires by itself (no refresh keeps it).
            log.warning("could not report user %s leaving: %s", report.user_id, exc.message)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_background(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _settle(
    stream: ClientStream,
    correlation_id: int,
    done: asyncio.Future[route_internal_pb2.SubmitResult],
) -> None:
    """A submitted send's outcome, back to its session."""
    if done.cancelled():
        stream.handle(SendSettled(correlation_id))
        return
    exc = done.exception()
    outcome: route_internal_pb2.SubmitResult | CimError
    if exc is None:
        outcome = done.result()
    elif isinstance(exc, CimError):
        outcome = exc
    else:
        log.error("submitting a message failed", exc_info=exc)
        outcome = Internal("internal error while sending; see the chat server log")
    stream.handle(SendSettled(correlation_id, outcome))


class ChatInternalService(chat_internal_pb2_grpc.ChatInternalServicer):
    """What routes call: pushes, kicks and presence for the streams held here."""

    def __init__(
        self,
        streams: StreamTable,
        secret: SecretCheck,
        metrics: ServerMetrics | None = None,
        tracer: MessageTracer | None = None,
    ) -> None:
        self._streams = streams
        self._secret = secret
        self._metrics = metrics or ServerMetrics()
        self._tracer = tracer

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
            if stream is not None:
                stream.handle(Kick(kick.session_id, kick.reason))
        if request.typings:
            # Before the messages: a message of the typist then ends the note it follows.
            self._hand_over_typings(request.typings)
        for note in request.reads:
            # Advice, never stored: a receiver not connected here misses it.
            stream = self._streams.get(note.receiver_id)
            if stream is not None:
                stream.handle(ReceiptArrived(note.receipt))
        if self._tracer is None:
            delivered = await self._hand_over(request.deliveries)
        else:
            delivered = await self._tracer.deliver(request.deliveries, self._hand_over)
        return chat_internal_pb2.DeliverResponse(delivered=delivered)

    async def _hand_over(self, deliveries: Sequence[chat_internal_pb2.Delivery]) -> list[bool]:
        """Gives each message to its receiver's stream (its outbox, for the
        stream's one writer); True where a live stream took it."""
        delivered = []
        metrics = self._metrics
        metrics.deliver_batch.observe(len(deliveries))
        observe_latency = metrics.delivery_seconds.observe
        for delivery in deliveries:
            stream = self._streams.get(delivery.receiver_id)
            if stream is None:
                stream = await self._streams.find(delivery.receiver_id, CHECK_WAIT)
            message = delivery.message
            if stream is not None and stream.deliver(message):
                delivered.append(True)
                metrics.delivered_kind(message.kind).inc()
                observe_latency(max(0.0, time.time() - message.server_time_ms / 1000))
            else:
                delivered.append(False)
        return delivered

    def _hand_over_typings(self, notes: Sequence[chat_internal_pb2.TypingNote]) -> None:
        """Queues each typing note for its receivers' streams; a receiver not
        (or no longer) here, not logged in, or behind gets none."""
        pushed = dropped = 0
        for note in notes:
            for receiver_id in note.receiver_ids:
                stream = self._streams.get(receiver_id)
                if stream is not None and stream.typing(note.typing):
                    pushed += 1
                else:
                    dropped += 1
        self._metrics.typing_pushed.inc(pushed)
        self._metrics.typing_dropped.inc(dropped)

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
