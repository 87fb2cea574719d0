"""The client library against a real cluster raises cim errors only: a send
caught by its server's death while it waited for the stream's write lock is
retried like any lost-stream send, and input or calls out of order get the
matching cim error."""

from __future__ import annotations

import asyncio

import pytest

from cim.client.client import CimClient, EventKind, _Connection
from cim.errors import FailedPrecondition, InvalidArgument, Unavailable
from cim.testing import cluster


async def _nothing_more(c, client, wait: float = 0.3) -> bool:
    try:
        await c.next_message(client, timeout=wait)
    except TimeoutError:
        return True
    return False


async def _queued(client: CimClient) -> None:
    """Until the client's one send has its correlation id and waits for the
    write lock (a few turns of the loop, no I/O)."""
    for _ in range(100):
        if client._pending:
            return
        await asyncio.sleep(0)
    raise AssertionError("the send did not reach the write lock")


def _server_of(c, client: CimClient):
    return next(s for s in c.embedded.servers if s.server_id == client.server.server_id)


def _disconnected(client: CimClient) -> asyncio.Event:
    event = asyncio.Event()

    def seen(e) -> None:
        if e.kind == EventKind.DISCONNECTED:
            event.set()

    client.on_event = seen
    return event


def _spy_on_sends(monkeypatch) -> list[tuple[_Connection, str]]:
    """Every send attempt on a stream: its connection and client_msg_id."""
    attempts: list[tuple[_Connection, str]] = []
    write = _Connection.write

    async def spying(self: _Connection, frame) -> None:
        if frame.WhichOneof("frame") == "send":
            attempts.append((self, frame.send.private.client_msg_id))
        await write(self, frame)

    monkeypatch.setattr(_Connection, "write", spying)
    return attempts


def _raised_by_grpc(conn: _Connection) -> list[type[BaseException]]:
    """What grpc's own write on this stream raises, from now on."""
    raised: list[type[BaseException]] = []
    write = conn.call.write

    async def spying(frame) -> None:
        try:
            await write(frame)
        except BaseException as exc:
            raised.append(type(exc))
            raise

    conn.call.write = spying
    return raised


async def test_a_send_waiting_for_the_write_lock_when_its_server_dies_is_retried_once(
    rr, monkeypatch
):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    assert alice.server.server_id != bob.server.server_id
    attempts = _spy_on_sends(monkeypatch)
    old = alice._conn
    raised = _raised_by_grpc(old)
    lost = _disconnected(alice)

    await old.write_lock.acquire()  # a ping or an ack is being written
    send = asyncio.create_task(alice.send_private(bob.user_id, "through the crash"))
    await _queued(alice)
    await _server_of(rr, alice).stop(0)
    await lost.wait()  # the reader gave the stream up: the call has ended
    assert old.call.done()
    old.write_lock.release()

    result = await send
    assert raised == [asyncio.InvalidStateError]  # what used to escape send_private
    (first, old_id), (retry, retry_id) = attempts
    assert first is old and retry is alice._conn and retry is not old
    assert retry_id == old_id != ""
    message = await rr.next_message(bob)
    assert (message.text, message.client_msg_id) == ("through the crash", old_id)
    assert message.message_id == result.message_id
    assert await _nothing_more(rr, bob)


async def test_a_send_caught_by_the_death_of_the_only_server_fails_with_unavailable():
    async with cluster(servers=1) as c:
        config = c.client_config(rpc_timeout=1.0)
        alice = await c.client("alice", config=config)
        old = alice._conn
        lost = _disconnected(alice)
        await old.write_lock.acquire()
        send = asyncio.create_task(alice.send_private(alice.user_id, "nowhere to go"))
        await _queued(alice)
        await c.embedded.servers[0].stop(0)
        await lost.wait()
        old.write_lock.release()
        with pytest.raises(Unavailable):
            await send


async def test_input_protobuf_cannot_carry_is_invalid_argument(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    with pytest.raises(InvalidArgument):
        await alice.send_private(bob.user_id, "half a surrogate \ud800")
    with pytest.raises(InvalidArgument):
        await alice.send_group("\udcff")
    with pytest.raises(InvalidArgument):  # the console passes ids as typed
        await alice.send_private(99999999999999999999999, "hi")
    with pytest.raises(InvalidArgument):  # said by the server
        await alice.send_private(bob.user_id, "")
    with pytest.raises(InvalidArgument):
        await alice.list_online("\ud800")
    with pytest.raises(InvalidArgument):
        await rr.client("carol\ud800", connect=False)
    with pytest.raises(TypeError):  # a bug in the caller stays one
        await alice.send_private(str(bob.user_id), "hi")
    # The stream is unharmed.
    await alice.send_private(bob.user_id, "still here")
    assert (await rr.next_message(bob)).text == "still here"


async def test_calls_on_a_closed_client_are_failed_precondition(rr):
    alice = await rr.client("alice")
    await alice.close()
    for call in (
        alice.register,
        alice.login,
        alice.list_online,
        alice.fetch_offline,
        lambda: alice.send_private(alice.user_id, "hi"),
        lambda: alice.send_group("hi"),
    ):
        with pytest.raises(FailedPrecondition):
            await call()
    await alice.close()  # again: nothing happens
