"""Messages to groups with members, end to end over gRPC on each backend:
every member gets them, online (pushed) or not (replayed at login, gap-free,
in the sender's order); non-members and removed members are refused and get
nothing more."""

from __future__ import annotations

import grpc
import pytest

from cim.proto.v1 import common_pb2


async def _send(raw, rr, client, group_id: str, text: str, client_msg_id: str = ""):
    return await raw.route(rr).SendGroup(
        common_pb2.SendGroupRequest(group_id=group_id, text=text, client_msg_id=client_msg_id),
        metadata=raw.auth(client.route.token),
        timeout=5,
    )


async def test_members_online_and_offline_get_every_message_in_order(rr, raw):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    cat = await rr.client("cat", connect=False)
    made = await rr.embedded.route.groups.create(
        ann.user_id, "ann", "team", [bob.user_id, cat.user_id]
    )
    gid = made.group.group_id
    created = await rr.next_message(bob)
    assert created.kind == common_pb2.MESSAGE_KIND_MEMBERSHIP and created.conversation_id == gid
    for i in range(5):
        sent = await _send(raw, rr, ann, gid, f"m{i}", client_msg_id=f"c{i}")
        assert sent.status == common_pb2.DELIVERY_STATUS_DELIVERED and sent.recipients == 2
    pushed = [await rr.next_message(bob) for _ in range(5)]
    assert [(m.text, m.position, m.seq) for m in pushed] == [
        (f"m{i}", i + 2, i + 2) for i in range(5)
    ]
    assert all(m.group_id == gid == m.conversation_id for m in pushed)
    # A retry is answered as before and reaches nobody twice.
    again = await _send(raw, rr, ann, gid, "m4", client_msg_id="c4")
    assert again.message_id == pushed[-1].message_id
    # Cat was offline: the replay at login has all of it, gap-free.
    await cat.start()
    await cat.wait_live(5)
    replayed = [await rr.next_message(cat) for _ in range(6)]
    assert [m.seq for m in replayed] == [1, 2, 3, 4, 5, 6]
    assert [m.text for m in replayed[1:]] == [f"m{i}" for i in range(5)]
    assert all(m.stored for m in replayed)
    with pytest.raises(TimeoutError):
        await rr.next_message(bob, timeout=0.3)


async def test_non_members_forged_ids_and_removed_members_are_refused(rr, raw):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    dan = await rr.client("dan")
    groups = rr.embedded.route.groups
    made = await groups.create(ann.user_id, "ann", "team", [bob.user_id])
    gid = made.group.group_id
    await rr.next_message(bob)  # the creation
    for sender, group_id in ((dan, gid), (ann, "g:9999")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _send(raw, rr, sender, group_id, "hi")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details() == f"you are not a member of group {group_id}"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _send(raw, rr, ann, "g:007", "hi")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await groups.remove(ann.user_id, "ann", gid, [bob.user_id])
    removal = await rr.next_message(bob)
    assert removal.membership.action == common_pb2.MEMBERSHIP_ACTION_REMOVED
    assert list(removal.membership.user_ids) == [bob.user_id]
    await _send(raw, rr, ann, gid, "after")
    with pytest.raises(TimeoutError):
        await rr.next_message(bob, timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as removed:
        await _send(raw, rr, bob, gid, "me too")
    assert removed.value.code() == grpc.StatusCode.PERMISSION_DENIED
