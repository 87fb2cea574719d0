"""The client library raises cim errors only: the grpc seam, the stream's lost
calls, and sends retried across them. Fake calls and stubs where the seam is
pure; a bare grpc.aio server on loopback where grpc's own behaviour is the point."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from cim.client import client as client_module
from cim.client.client import CimClient, EventKind, _Connection
from cim.client.route import RouteClient, build_request, map_grpc_errors
from cim.config import ClientConfig
from cim.core.liveness import HeartbeatPolicy
from cim.errors import (
    CimError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from cim.proto.v1 import chat_pb2, common_pb2, route_pb2

NOWHERE = "127.0.0.1:1"


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def until(condition: Callable[[], object], turns: int = 100) -> None:
    """Lets other tasks run until ``condition`` holds (no I/O involved: a few turns)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


# --- the seam -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (rpc_error(grpc.StatusCode.NOT_FOUND, "no user"), NotFound),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), Unavailable),
        (asyncio.InvalidStateError("RPC already finished."), Unavailable),
        (grpc.aio.UsageError("Channel is closed."), FailedPrecondition),
        (grpc.aio.InternalError("start batch failed"), Unavailable),
        # grpc raises this from a call another task cancelled; this task was not.
        (asyncio.CancelledError(), Unavailable),
    ],
)
async def test_the_seam_maps_grpc_exceptions_to_cim_errors(
    raised: BaseException, expected: type[CimError]
) -> None:
    with pytest.raises(expected) as info, map_grpc_errors():
        raise raised
    assert info.value.__cause__ is raised


async def test_the_seam_leaves_cim_errors_and_programming_errors_alone() -> None:
    error = PermissionDenied("bad credentials")
    with pytest.raises(PermissionDenied) as info, map_grpc_errors():
        raise error
    assert info.value is error
    with pytest.raises(TypeError), map_grpc_errors():
        raise TypeError("a bug")


async def test_the_seam_lets_a_cancellation_of_the_task_itself_through() -> None:
    inside = asyncio.Event()

    async def call() -> None:
        with map_grpc_errors():
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


def test_input_protobuf_refuses_is_invalid_argument_and_a_wrong_type_a_bug() -> None:
    with pytest.raises(InvalidArgument, match="invalid message"):
        build_request(common_pb2.SendPrivateRequest, "message", receiver_id=1, text="a\ud800")
    with pytest.raises(InvalidArgument):
        build_request(common_pb2.SendPrivateRequest, "message", receiver_id=2**63, text="hi")
    with pytest.raises(TypeError):
        build_request(common_pb2.SendPrivateRequest, "message", receiver_id="7", text="hi")


# --- the stream -----------------------------------------------------------------------------


class FakeCall:
    """A Chat.Connect call: records what is written; ``fail`` makes every
    write raise it, ``answer`` sees each written frame before the write returns."""

    def __init__(
        self,
        *,
        fail: Callable[[], BaseException] | None = None,
        answer: Callable[[chat_pb2.ClientFrame], None] | None = None,
        reads: list[Any] | None = None,
    ) -> None:
        self.written: list[chat_pb2.ClientFrame] = []
        self.fail = fail
        self.answer = answer
        self.reads = reads or []
        self.cancelled = False

    async def write(self, frame: chat_pb2.ClientFrame) -> None:
        self.written.append(frame)
        if self.fail is not None:
            raise self.fail()
        if self.answer is not None:
            self.answer(frame)

    async def read(self) -> Any:
        item = self.reads.pop(0) if self.reads else grpc.aio.EOF
        if isinstance(item, BaseException):
            raise item
        return item

    async def done_writing(self) -> None:
        if self.fail is not None:
            raise self.fail()

    def cancel(self) -> None:
        self.cancelled = True


class FakeChannel:
    async def close(self) -> None:
        pass


def fake_connection(call: FakeCall, address: str = "fake:1") -> _Connection:
    return _Connection(address, FakeChannel(), call)  # type: ignore[arg-type]


ENDED_CALLS = {
    "write on a finished call": lambda: asyncio.InvalidStateError("RPC already finished."),
    "call cancelled under the write": asyncio.CancelledError,
    "status": lambda: rpc_error(grpc.StatusCode.UNAUTHENTICATED, "token expired"),
}


@pytest.mark.parametrize(
    ("ended", "expected"),
    list(zip(ENDED_CALLS.values(), [Unavailable, Unavailable, Unauthenticated], strict=True)),
    ids=ENDED_CALLS.keys(),
)
async def test_whatever_ends_the_stream_is_a_cim_error_on_it(ended, expected) -> None:
    conn = fake_connection(FakeCall(fail=ended, reads=[ended()]))
    frame = chat_pb2.ClientFrame(ping=chat_pb2.Ping())
    with pytest.raises(expected):
        await conn.write(frame)
    with pytest.raises(expected):
        await conn.read()
    with pytest.raises(expected):
        await conn.done_writing()


async def test_the_stream_reads_frames_its_end_and_garbage_apart() -> None:
    frame = chat_pb2.ServerFrame(pong=chat_pb2.Pong())
    # None is what grpc hands over (after logging the DecodeError) for bytes that do not decode.
    conn = fake_connection(FakeCall(reads=[frame, None, grpc.aio.EOF]))
    assert await conn.read() == frame
    with pytest.raises(Internal, match="does not decode"):
        await conn.read()
    assert await conn.read() is None


@pytest.fixture
async def client() -> AsyncIterator[CimClient]:
    client = CimClient("alice", "secret-pw", ClientConfig(routes=(NOWHERE,), rpc_timeout=2.0))
    try:
        yield client
    finally:
        await client.close()


def connect_to(client: CimClient, conn: _Connection) -> None:
    """What a successful connect leaves behind (without its background tasks)."""
    client._conn = conn
    client._connected.set()


def lose(client: CimClient, why: str) -> None:
    """What the reader does when the stream breaks (without reconnecting)."""
    client._conn = None
    client._connected.clear()
    client._fail_pending(Unavailable(f"connection lost ({why})"))


def answer_sends(client: CimClient, message_id: str) -> Callable[[chat_pb2.ClientFrame], None]:
    def answer(frame: chat_pb2.ClientFrame) -> None:
        if frame.WhichOneof("frame") == "send":
            client._on_result(
                chat_pb2.SendResultFrame(
                    correlation_id=frame.send.correlation_id,
                    ok=common_pb2.SendResponse(message_id=message_id),
                )
            )

    return answer


@pytest.mark.parametrize("ended", ENDED_CALLS.values(), ids=ENDED_CALLS.keys())
async def test_a_send_queued_behind_the_write_lock_of_a_stream_that_ends_is_retried(
    client: CimClient, ended
) -> None:
    """The race of the outside report: the send waits for the write lock (a
    ping holds it), the server dies, the call ends, the lock is released and
    the send's write hits the ended call. It is retried on the next stream
    with the same client_msg_id, and sent there once."""
    old = fake_connection(FakeCall(fail=ended), "old:1")
    new = fake_connection(FakeCall(answer=answer_sends(client, "m-1")), "new:1")
    connect_to(client, old)
    await old.write_lock.acquire()  # a ping is being written
    send = asyncio.create_task(client.send_private(7, "hi"))
    await until(lambda: client._pending)  # the send waits for the lock
    lose(client, "server died")
    old.write_lock.release()
    await until(lambda: old.call.written)  # written on the ended call, and failed
    assert not send.done()
    connect_to(client, new)  # the reconnect

    result = await send
    assert result.message_id == "m-1"
    (attempt,) = old.call.written
    (retry,) = new.call.written
    assert retry.send.private.client_msg_id == attempt.send.private.client_msg_id
    assert retry.send.private.client_msg_id  # generated once, by the library
    assert retry.send.correlation_id != attempt.send.correlation_id


async def test_a_send_on_a_stream_that_stays_ended_gives_up_with_unavailable() -> None:
    client = CimClient("alice", "secret-pw", ClientConfig(routes=(NOWHERE,), rpc_timeout=0.5))
    try:
        conn = fake_connection(
            FakeCall(fail=lambda: asyncio.InvalidStateError("RPC already finished."))
        )
        connect_to(client, conn)
        with pytest.raises(Unavailable, match="connection lost while sending"):
            await client.send_private(7, "hi", client_msg_id="c-1")
        assert len(conn.call.written) > 1  # retried until the deadline, with one id
        assert {f.send.private.client_msg_id for f in conn.call.written} == {"c-1"}
    finally:
        await client.close()


async def test_a_read_on_a_call_cancelled_under_it_is_a_lost_stream(client: CimClient) -> None:
    """grpc raises CancelledError from a read on a call another task cancelled
    (a send's write timed out, say): the reader reconnects instead of dying."""
    events = []
    client.on_event = events.append
    conn = fake_connection(FakeCall(reads=[asyncio.CancelledError()]))
    connect_to(client, conn)

    await client._read(conn)
    await until(lambda: len(events) == 2)

    assert [e.kind for e in events] == [EventKind.DISCONNECTED, EventKind.RECONNECTING]
    assert "cancelled" in events[0].text
    assert not client.connected
    assert conn.call.cancelled


async def test_a_frame_that_does_not_decode_is_a_lost_stream(client: CimClient) -> None:
    events = []
    client.on_event = events.append
    conn = fake_connection(FakeCall(reads=[None]))
    connect_to(client, conn)

    await client._read(conn)

    assert events[0].kind == EventKind.DISCONNECTED
    assert "does not decode" in events[0].text


async def test_pings_and_acks_on_an_ended_call_end_quietly(client: CimClient, monkeypatch) -> None:
    """Background writers leave a broken stream to the reader, whatever grpc raised."""
    monkeypatch.setattr(client_module, "ACK_INTERVAL", 0.0)
    conn = fake_connection(
        FakeCall(fail=lambda: asyncio.InvalidStateError("RPC already finished."))
    )
    connect_to(client, conn)
    client._heartbeat = HeartbeatPolicy(ping_interval=0.01, idle_timeout=60.0)
    conn.last_sent = 0.0  # a ping is due
    await asyncio.wait_for(client._keep_alive(conn), 1.0)

    client.sequence.offer(1, common_pb2.ChatMessage(seq=1))  # an ack is due
    await asyncio.wait_for(client._ack_and_sync(conn), 1.0)
    kinds = [frame.WhichOneof("frame") for frame in conn.call.written]
    assert kinds == ["ping", "ack"]


async def test_a_cursor_that_cannot_be_saved_is_logged_not_raised(
    client: CimClient, caplog
) -> None:
    class BrokenCursor:
        def load(self) -> int:
            return 0

        def save(self, seq: int) -> None:
            raise OSError(28, "No space left on device")

    client._cursor = BrokenCursor()
    client._hand_over([common_pb2.ChatMessage(seq=1)])  # the reader goes on
    await client.close()  # and close() does not fail
    assert "cannot save the last seq" in caplog.text


# --- the route client -----------------------------------------------------------------------


class FakeStub:
    """A RouteStub whose ListOnlineUsers raises or returns what it is given."""

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome
        self.calls = 0

    async def ListOnlineUsers(self, request: object, **kwargs: object) -> object:
        self.calls += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.fixture
async def route() -> AsyncIterator[RouteClient]:
    route = RouteClient([NOWHERE, "127.0.0.1:2"], timeout=1.0)
    try:
        yield route
    finally:
        await route.aclose()


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (rpc_error(grpc.StatusCode.UNAUTHENTICATED, "log in again"), "Unauthenticated"),
        (grpc.aio.UsageError("Channel is closed."), "FailedPrecondition"),
        (asyncio.CancelledError(), "Unavailable"),
        (None, "Internal"),  # a reply that does not decode
    ],
)
async def test_route_calls_raise_cim_errors_without_failing_over(
    route: RouteClient, outcome: object, expected: str
) -> None:
    first, second = FakeStub(outcome), FakeStub(route_pb2.ListOnlineUsersResponse())
    route._stubs = [first, second]  # type: ignore[list-item]
    with pytest.raises(CimError) as info:
        await route.list_online()
    assert type(info.value).__name__ == expected
    assert (first.calls, second.calls) == (1, 0)


async def test_route_calls_fail_over_on_unavailable_only(route: RouteClient) -> None:
    down = FakeStub(rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    up = FakeStub(
        route_pb2.ListOnlineUsersResponse(users=[common_pb2.UserInfo(user_id=1, user_name="a")])
    )
    route._stubs = [down, up]  # type: ignore[list-item]
    assert [u.user_name for u in await route.list_online()] == ["a"]
    assert route._preferred == 1
    route._stubs = [down, down]  # type: ignore[list-item]
    with pytest.raises(Unavailable, match="connection refused"):
        await route.list_online()


async def test_route_requests_refuse_text_that_is_not_unicode(route: RouteClient) -> None:
    stub = FakeStub(route_pb2.ListOnlineUsersResponse())
    route._stubs = [stub]  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        await route.list_online("a\udc80")
    with pytest.raises(InvalidArgument):
        await route.register("bob\ud800", "secret-pw")
    with pytest.raises(InvalidArgument):
        await route.login("bob", "pw\ud800")
    assert stub.calls == 0


# --- against grpc itself --------------------------------------------------------------------


class Handlers(grpc.GenericRpcHandler):
    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = handlers

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(details.method)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def bare_server(handlers: dict[str, grpc.RpcMethodHandler]) -> AsyncIterator[str]:
    """A grpc.aio server whose methods take and return raw bytes."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([Handlers(handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


LIST_ONLINE = "/cim.v1.Route/ListOnlineUsers"
CONNECT = "/cim.v1.Chat/Connect"
GARBAGE = b"\xff\xff\xff"


async def test_a_route_call_in_flight_when_the_client_closes_is_unavailable() -> None:
    """grpc raises CancelledError in the caller's task when close() closes the
    channel under a call; later calls meet a closed channel (UsageError)."""
    entered = asyncio.Event()

    async def hang(request: bytes, context: object) -> bytes:
        entered.set()
        await asyncio.Event().wait()
        return b""

    async with bare_server({LIST_ONLINE: grpc.unary_unary_rpc_method_handler(hang)}) as address:
        route = RouteClient([address], timeout=5.0)
        call = asyncio.create_task(route.list_online())
        await entered.wait()
        await route.aclose()
        with pytest.raises(Unavailable, match="cancelled"):
            await call
        with pytest.raises(FailedPrecondition, match="closed"):
            await route.list_online()


async def test_a_route_reply_that_does_not_decode_is_internal() -> None:
    async def garbage(request: bytes, context: object) -> bytes:
        return GARBAGE

    async with bare_server({LIST_ONLINE: grpc.unary_unary_rpc_method_handler(garbage)}) as address:
        route = RouteClient([address], timeout=5.0)
        try:
            with pytest.raises(Internal, match="does not decode"):
                await route.list_online()
        finally:
            await route.aclose()


async def _connect_to_bare_chat_server(
    behaviour: Callable[[AsyncIterator[bytes], Any], AsyncIterator[bytes]],
) -> None:
    """``connect()`` to a chat server that answers the login with ``behaviour``."""
    handler = grpc.stream_stream_rpc_method_handler(behaviour)
    async with bare_server({CONNECT: handler}) as address:
        client = CimClient("alice", "secret-pw", ClientConfig(routes=(NOWHERE,), rpc_timeout=5))
        try:
            client.server = route_pb2.ServerAddress(server_id="fake", address=address)
            client.route.token = "token"
            try:
                await client.connect()
            finally:
                assert not client.connected
        finally:
            client.route.token = ""  # nothing to log out of
            await client.close()


async def test_a_chat_server_answering_garbage_to_the_login_is_internal() -> None:
    async def garbage(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        await anext(aiter(requests))
        yield GARBAGE

    with pytest.raises(Internal, match="does not decode"):
        await _connect_to_bare_chat_server(garbage)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.CANCELLED, Unavailable),  # no verdict: the stream broke
    ],
)
async def test_a_login_refused_with_a_status_raises_its_class(code, expected) -> None:
    async def refuse(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        await anext(aiter(requests))
        await context.abort(code, "refused")
        yield b""  # never: abort raises

    with pytest.raises(expected) as info:
        await _connect_to_bare_chat_server(refuse)
    assert type(info.value) is expected
