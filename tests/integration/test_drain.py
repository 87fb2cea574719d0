"""Graceful drain of a chat server: clients are told, and move to another server by themselves."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cim.client.client import ClientEvent, EventKind
from cim.core.liveness import Backoff
from cim.errors import FailedPrecondition
from cim.proto.v1 import chat_pb2, common_pb2
from cim.testing import cluster


class Events:
    """Records a client's events; ``wait_for(kind)`` waits for the next one of a kind."""

    def __init__(self, client) -> None:
        self.seen: list[ClientEvent] = []
        self._changed = asyncio.Condition()
        client.on_event = self._on_event

    def _on_event(self, event: ClientEvent) -> None:
        self.seen.append(event)

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def kinds(self) -> list[EventKind]:
        return [event.kind for event in self.seen]

    async def wait_for(self, kind: EventKind, timeout: float = 5.0) -> ClientEvent:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: kind in self.kinds())
        return next(event for event in self.seen if event.kind == kind)


def _server(c, server_id: str):
    return next(server for server in c.embedded.servers if server.server_id == server_id)


async def test_drained_client_reconnects_elsewhere_and_keeps_receiving(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    assert alice.server.server_id != bob.server.server_id
    events = Events(alice)
    draining = _server(rr, alice.server.server_id)

    await draining.drain(0.5)
    await events.wait_for(EventKind.CONNECTED)

    disconnected = await events.wait_for(EventKind.DISCONNECTED)
    assert "shutting down" in disconnected.text  # the drain notice's text
    assert events.kinds()[0] == EventKind.DISCONNECTED
    assert EventKind.KICKED not in events.kinds()
    assert EventKind.GAVE_UP not in events.kinds()
    assert alice.connected
    assert alice.server.server_id == bob.server.server_id  # the only server left

    result = await bob.send_private(alice.user_id, "welcome back")
    assert result.status == common_pb2.DELIVERY_STATUS_DELIVERED
    message = await rr.next_message(alice)
    assert (message.text, message.sender_id) == ("welcome back", bob.user_id)

    await alice.send_private(bob.user_id, "thanks")
    assert (await rr.next_message(bob)).text == "thanks"
    assert [u.user_name for u in await bob.list_online()] == ["alice", "bob"]


async def test_drain_sends_a_draining_notice_and_ends_the_stream(rr, raw):
    login = await raw.login(rr, "carol")
    stream, _ = await raw.connect(login)
    draining = _server(rr, login.server.server_id)

    drain = asyncio.create_task(draining.drain(0.5))
    frames = await stream.read_until_end()
    await drain

    assert len(frames) == 1, frames
    assert frames[0].notice.kind == chat_pb2.Notice.KIND_DRAINING
    assert frames[0].notice.text


async def test_logins_after_a_drain_go_to_the_remaining_server(rr, raw):
    drained, remaining = rr.embedded.servers
    await drained.drain(0.2)
    for name in ("u1", "u2", "u3"):
        login = await raw.login(rr, name)
        assert login.server.server_id == remaining.server_id
        assert login.server.address == remaining.address


async def test_drained_server_takes_no_more_streams(rr, raw):
    login = await raw.login(rr, "alice")
    await _server(rr, login.server.server_id).drain(0.2)

    stream = raw.open_stream(login.server.address)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.login(login.user_id, login.session_token)
        await stream.read()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_message_sent_during_the_move_is_not_lost(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    events = Events(alice)
    drain = asyncio.create_task(_server(rr, alice.server.server_id).drain(0.5))
    await asyncio.sleep(0)  # the drain has closed alice's stream

    result = await bob.route.send_private(alice.user_id, "in flight")
    assert result.status in (
        common_pb2.DELIVERY_STATUS_DELIVERED,
        common_pb2.DELIVERY_STATUS_STORED,
    )
    message = await rr.next_message(alice)
    await drain
    await events.wait_for(EventKind.CONNECTED)

    assert message.text == "in flight"
    assert message.message_id == result.message_id
    try:
        extra = await rr.next_message(alice, timeout=0.3)
    except TimeoutError:
        extra = None
    assert extra is None, f"delivered twice: {extra}"
    assert alice.sequence.through == message.seq
    assert list((await alice.fetch_offline(after_seq=message.seq)).messages) == []


async def test_client_moves_to_another_server_when_its_server_stops_abruptly(rr):
    alice = await rr.client("alice")
    bob = await rr.client("bob")
    events = Events(alice)

    await _server(rr, alice.server.server_id).stop(0)
    await events.wait_for(EventKind.CONNECTED)

    assert events.kinds()[0] == EventKind.DISCONNECTED
    assert alice.server.server_id == bob.server.server_id
    await bob.send_private(alice.user_id, "you moved")
    assert (await rr.next_message(alice)).text == "you moved"
    assert [u.user_name for u in await bob.list_online()] == ["alice", "bob"]


async def test_client_gives_up_when_no_chat_server_is_left():
    async with cluster(servers=1) as c:
        config = c.client_config(backoff=Backoff(base=0.01, cap=0.02, retries=3))
        alice = await c.client("alice", config=config)
        events = Events(alice)

        await c.embedded.servers[0].stop(0)
        gave_up = await events.wait_for(EventKind.GAVE_UP)

        assert gave_up.text
        assert events.kinds().count(EventKind.RECONNECTING) == 3
        async with asyncio.timeout(2):
            assert [message async for message in alice.messages()] == []
        with pytest.raises(FailedPrecondition):
            await alice.send_private(alice.user_id, "anyone?")
