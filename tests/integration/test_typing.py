"""Typing notes end to end over gRPC, on each backend: they reach the
conversation's participants who are online (not the sender, not anyone
offline, never later by replay), group members only, and a flood or a
note from outside the conversation is refused while the stream goes on."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cim.client.client import CimClient, ClientEvent, EventKind
from cim.core.conversations import private_id
from cim.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cim.proto.v1 import chat_pb2, common_pb2
from cim.route.typing_notes import OUTCOMES
from cim.testing import cluster
from cim.testing import fast_route_config as route_config

REFUSED = chat_pb2.Notice.KIND_REFUSED
QUIET = 0.4  # how long "nothing comes" is waited for


class Watch:
    """What one client hears: others' typing notes and its REFUSED events."""

    def __init__(self, client: CimClient) -> None:
        self.notes: asyncio.Queue[chat_pb2.Typing] = asyncio.Queue()
        self.refusals: asyncio.Queue[str] = asyncio.Queue()
        client.on_typing = self.notes.put_nowait
        client.on_event = self._event

    def _event(self, event: ClientEvent) -> None:
        if event.kind is EventKind.REFUSED:
            self.refusals.put_nowait(event.text)

    async def note(self, timeout: float = 5.0) -> chat_pb2.Typing:
        async with asyncio.timeout(timeout):
            return await self.notes.get()

    async def refusal(self, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            return await self.refusals.get()

    async def nothing(self) -> None:
        await asyncio.sleep(QUIET)
        assert self.notes.empty(), self.notes.get_nowait()
        assert self.refusals.empty(), self.refusals.get_nowait()


def typing_frame(conversation_id: str, stopped: bool = False) -> chat_pb2.ClientFrame:
    return chat_pb2.ClientFrame(
        typing=chat_pb2.TypingFrame(conversation_id=conversation_id, stopped=stopped)
    )


async def frames_until_pong(stream, timeout: float = 5.0) -> list[chat_pb2.ServerFrame]:
    """Pings, and reads every frame up to the pong: what the stream got before it."""
    await stream.ping(4242)
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await stream.read()
            assert frame is not grpc.aio.EOF, f"the stream ended after {frames}"
            if frame.WhichOneof("frame") == "pong" and frame.pong.client_time_ms == 4242:
                return frames
            frames.append(frame)


async def next_notice(stream, timeout: float = 5.0) -> chat_pb2.Notice:
    """The next frame, which must be a notice (a route's refusal comes after
    the chat server has answered frames sent later)."""
    frame = await stream.read(timeout)
    assert frame is not grpc.aio.EOF and frame.WhichOneof("frame") == "notice", frame
    return frame.notice


def metric(registry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_note_reaches_the_online_peer_and_not_the_sender(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    heard_by_ann, heard_by_bob = Watch(ann), Watch(bob)
    cid = private_id(ann.user_id, bob.user_id)
    assert await ann.typing(cid)
    note = await heard_by_bob.note()
    assert (note.conversation_id, note.user_id, note.user_name, note.stopped) == (
        cid,
        ann.user_id,
        "ann",
        False,
    )
    # A stop after a forwarded note goes out, and the peer hears it too.
    assert await ann.typing(cid, stopped=True)
    assert (await heard_by_bob.note()).stopped
    await heard_by_ann.nothing()
    routes = rr.embedded.route.metrics.registry
    assert metric(routes, "cim_typing_notes_total", outcome="forwarded") == 2
    assert metric(routes, "cim_typing_receivers_total") == 2


async def test_an_offline_peer_gets_nothing_now_or_by_replay(rr, raw, eventually):
    ann = await rr.client("ann")
    bob_login = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob_login)
    stream.cancel()  # bob goes offline
    cid = private_id(ann.user_id, bob_login.user_id)
    await asyncio.sleep(0.2)
    assert await ann.typing(cid)
    routes = rr.embedded.route.metrics.registry

    async def counted() -> bool:
        return metric(routes, "cim_typing_notes_total", outcome="nobody_online") == 1

    await eventually(counted)
    # Never stored: bob's next login replays nothing, and nothing follows.
    again = await raw.login(rr, "bob", register=False)
    stream, _ = await raw.connect(again)
    assert stream.replayed == [] and stream.replay_done.head_seq == 0
    assert await frames_until_pong(stream) == []


async def test_notes_are_never_stored_nor_replayed_to_a_peer_who_had_them(rr, raw):
    ann = await rr.client("ann")
    bob_login = await raw.login(rr, "bob")
    stream, _ = await raw.connect(bob_login)
    cid = private_id(ann.user_id, bob_login.user_id)
    assert await ann.typing(cid)
    live = await stream.read()
    assert live.WhichOneof("frame") == "typing" and live.typing.user_id == ann.user_id
    assert live.typing.conversation_id == cid
    stream.cancel()
    await asyncio.sleep(0.2)
    again = await raw.login(rr, "bob", register=False)
    stream, _ = await raw.connect(again)
    assert stream.replayed == [] and stream.replay_done.head_seq == 0


async def test_group_members_online_hear_a_member_and_a_non_member_is_refused(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    cat = await rr.client("cat")
    dan = await rr.client("dan")
    made = await rr.embedded.route.groups.create(
        ann.user_id, "ann", "team", [bob.user_id, cat.user_id]
    )
    gid = made.group.group_id
    watches = {name: Watch(c) for name, c in (("ann", ann), ("bob", bob), ("cat", cat))}
    heard_by_dan = Watch(dan)
    assert await ann.typing(gid)
    for name in ("bob", "cat"):  # on both chat servers (round-robin logins)
        note = await watches[name].note()
        assert (note.conversation_id, note.user_id, note.user_name) == (gid, ann.user_id, "ann")
    await watches["ann"].nothing()
    # Dan is not a member: refused, and nobody hears of it.
    assert await dan.typing(gid)
    assert f"you are not a member of group {gid}" in await heard_by_dan.refusal()
    for watch in watches.values():
        await watch.nothing()
    routes = rr.embedded.route.metrics.registry
    assert metric(routes, "cim_typing_notes_total", outcome="not_member") == 1
    refused_at = [
        metric(s.metrics.registry, "cim_typing_notes_total", outcome="refused_by_route")
        for s in rr.embedded.servers
    ]
    assert sum(refused_at) == 1


async def test_the_route_refusal_carries_permission_denied_on_the_stream(rr, raw):
    ann = await rr.client("ann")
    made = await rr.embedded.route.groups.create(ann.user_id, "ann", "team", [])
    stranger = await raw.login(rr, "stranger")
    stream, _ = await raw.connect(stranger)
    await stream.write(typing_frame(made.group.group_id))
    notice = await next_notice(stream)
    assert notice.kind == REFUSED
    assert notice.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert notice.text == (
        f"typing note refused: you are not a member of group {made.group.group_id}"
    )
    assert await frames_until_pong(stream) == []  # the stream goes on


async def test_a_removed_member_is_refused_once_the_membership_moved(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    groups = rr.embedded.route.groups
    gid = (await groups.create(ann.user_id, "ann", "team", [bob.user_id])).group.group_id
    heard_by_ann, heard_by_bob = Watch(ann), Watch(bob)
    assert await bob.typing(gid)  # the route now holds the members at this version
    assert (await heard_by_ann.note()).user_id == bob.user_id
    await groups.remove(ann.user_id, "ann", gid, [bob.user_id])
    # A stop passes the chat server's throttle (it ends a forwarded note);
    # the route reads the new members and refuses it.
    assert await bob.typing(gid, stopped=True)
    assert "not a member" in await heard_by_bob.refusal()
    await asyncio.sleep(QUIET)
    assert all(not note.stopped for note in _drain(heard_by_ann.notes))


async def test_a_deleted_group_refuses_notes_with_failed_precondition(rr, raw):
    ann_login = await raw.login(rr, "ann")
    groups = rr.embedded.route.groups
    gid = (await groups.create(ann_login.user_id, "ann", "team", [])).group.group_id
    await groups.delete(ann_login.user_id, "ann", gid)
    stream, _ = await raw.connect(ann_login)
    await stream.write(typing_frame(gid))
    notice = await next_notice(stream)
    assert notice.kind == REFUSED
    assert notice.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert f"group {gid} was deleted" in notice.text


async def test_a_group_over_the_typing_limit_gets_no_notes():
    async with cluster(servers=1, route_config=route_config(typing_max_members=2)) as c:
        ann = await c.client("ann")
        bob = await c.client("bob")
        cat = await c.client("cat")
        gid = (
            await c.embedded.route.groups.create(
                ann.user_id, "ann", "team", [bob.user_id, cat.user_id]
            )
        ).group.group_id
        pair = (
            await c.embedded.route.groups.create(ann.user_id, "ann", "pair", [bob.user_id])
        ).group
        heard_by_bob, heard_by_cat = Watch(bob), Watch(cat)
        assert await ann.typing(gid)
        await heard_by_bob.nothing()
        await heard_by_cat.nothing()
        routes = c.embedded.route.metrics.registry
        assert metric(routes, "cim_typing_notes_total", outcome="too_many_members") == 1
        # A group within the limit still gets them.
        assert await ann.typing(pair.group_id)
        assert (await heard_by_bob.note()).conversation_id == pair.group_id


async def test_a_second_note_within_3_s_is_dropped_but_one_after_a_message_goes_out(rr, raw):
    bob = await rr.client("bob")
    heard_by_bob = Watch(bob)
    ann_login = await raw.login(rr, "ann")
    stream, _ = await raw.connect(ann_login)
    cid = private_id(ann_login.user_id, bob.user_id)
    for _ in range(5):  # a note per keystroke, straight on the stream
        await stream.write(typing_frame(cid))
    assert await frames_until_pong(stream) == []  # dropped quietly
    assert (await heard_by_bob.note()).user_id == ann_login.user_id
    await heard_by_bob.nothing()
    # A message ends the note: the next one goes out at once.
    sent = await ann_message(stream, bob.user_id, "hi")
    assert sent.WhichOneof("outcome") == "ok"
    await stream.write(typing_frame(cid))
    assert (await heard_by_bob.note()).conversation_id == cid
    servers = [s.metrics.registry for s in rr.embedded.servers]
    assert sum(metric(r, "cim_typing_notes_total", outcome="throttled") for r in servers) == 4


async def ann_message(stream, receiver_id: int, text: str) -> chat_pb2.SendResultFrame:
    """Sends on a raw stream; its result (frames before it are skipped)."""
    await stream.write(
        chat_pb2.ClientFrame(
            send=chat_pb2.SendFrame(
                correlation_id=1,
                private=common_pb2.SendPrivateRequest(receiver_id=receiver_id, text=text),
            )
        )
    )
    while True:
        frame = await stream.read()
        if frame.WhichOneof("frame") == "send_result":
            return frame.send_result


async def test_a_flood_gets_one_resource_exhausted_notice_a_second_and_the_stream_goes_on(rr, raw):
    bob = await rr.client("bob")
    heard_by_bob = Watch(bob)
    ann_login = await raw.login(rr, "ann")
    stream, _ = await raw.connect(ann_login)
    cid = private_id(ann_login.user_id, bob.user_id)
    for _ in range(40):
        await stream.write(typing_frame(cid))
    frames = await frames_until_pong(stream)
    assert len(frames) == 1, frames  # one notice for the whole flood
    notice = frames[0].notice
    assert notice.kind == REFUSED
    assert notice.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert notice.text.startswith("typing note refused: too many typing notes from this user")
    assert (await heard_by_bob.note()).user_id == ann_login.user_id
    await heard_by_bob.nothing()
    # The stream goes on: a message still gets through.
    assert (await ann_message(stream, bob.user_id, "still here")).WhichOneof("outcome") == "ok"
    assert (await rr.next_message(bob)).text == "still here"
    # A second later the flood is told once more.
    await asyncio.sleep(1.05)
    for _ in range(15):
        await stream.write(typing_frame(cid))
    notices = [f for f in await frames_until_pong(stream) if f.WhichOneof("frame") == "notice"]
    assert [n.notice.code for n in notices] == [grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]


@pytest.mark.parametrize(
    ("conversation_id", "code", "text"),
    [
        ("p:1:x", grpc.StatusCode.INVALID_ARGUMENT, "must be a decimal number"),
        ("all", grpc.StatusCode.INVALID_ARGUMENT, "must start with 'p:'"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "conversation id is required"),
        ("p:999998:999999", grpc.StatusCode.PERMISSION_DENIED, "not a member of conversation"),
    ],
)
async def test_a_note_for_no_conversation_of_the_user_is_refused_by_the_chat_server(
    rr, raw, conversation_id, code, text
):
    login = await raw.login(rr, "ann")
    stream, _ = await raw.connect(login)
    await stream.write(typing_frame(conversation_id))
    (frame,) = await frames_until_pong(stream)
    assert frame.notice.kind == REFUSED and frame.notice.code == code.value[0]
    assert text in frame.notice.text
    # Refused without asking a route.
    routes = rr.embedded.route.metrics.registry
    assert sum(metric(routes, "cim_typing_notes_total", outcome=o) for o in OUTCOMES) == 0


async def test_a_conversation_id_over_its_limit_ends_the_stream_as_any_frame_over_one(rr, raw):
    login = await raw.login(rr, "ann")
    stream, _ = await raw.connect(login)
    await stream.write(typing_frame("g:" + "1" * 80))
    frames = await stream.read_until_end()
    assert frames[-1].notice.kind == chat_pb2.Notice.KIND_ERROR
    assert await stream.call.code() == grpc.StatusCode.INVALID_ARGUMENT


def _drain(queue: asyncio.Queue[chat_pb2.Typing]) -> list[chat_pb2.Typing]:
    found = []
    while not queue.empty():
        found.append(queue.get_nowait())
    return found


# --- the client library -------------------------------------------------------------


async def test_the_client_sends_no_more_than_the_server_forwards(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    heard_by_bob = Watch(bob)
    cid = private_id(ann.user_id, bob.user_id)
    assert not await ann.typing(cid, stopped=True)  # nothing to stop
    assert await ann.typing(cid)
    assert not await ann.typing(cid)  # within 3 s: not written at all
    assert await ann.typing(cid, stopped=True)
    assert [(await heard_by_bob.note()).stopped for _ in range(2)] == [False, True]
    # A message ends the note: typing the next one is told at once.
    await ann.send_private(bob.user_id, "hi")
    assert await ann.typing(cid)
    assert not (await heard_by_bob.note()).stopped
    servers = [s.metrics.registry for s in rr.embedded.servers]
    assert sum(metric(r, "cim_typing_notes_total", outcome="throttled") for r in servers) == 0


async def test_the_client_refuses_what_is_not_a_conversation_of_its_user(rr):
    ann = await rr.client("ann")
    with pytest.raises(InvalidArgument, match="must start with 'p:'"):
        await ann.typing("bob")
    with pytest.raises(PermissionDenied, match="not a member of conversation p:1000:1001"):
        await ann.typing("p:1000:1001")
    offline = await rr.client("cat", connect=False)
    await offline.login()
    assert not await offline.typing("g:1")  # no stream: nothing written, nothing raised
    await ann.close()
    with pytest.raises(FailedPrecondition):
        await ann.typing(private_id(ann.user_id, offline.user_id))
