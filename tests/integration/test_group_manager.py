"""Groups with membership on the route (cim.route.groups), on the in-memory
store and on a real Redis: every change is an event in the group's history,
in each recipient's sequence, pushed to those online; the limits refuse
precisely."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from cim.core.groups import ADMIN, MEMBER, OWNER
from cim.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from cim.proto.v1 import common_pb2
from cim.route.groups import GroupManager
from cim.route.messages import MessageRouter, send_digest
from cim.route.servers import Parcel
from cim.store import MemoryStore, SessionRecord, Store
from cim.store.base import ConversationItem, Retention, SendKey
from cim.store.redis import RedisStore
from cim.testing import fast_route_config as route_config


class FakeServers:
    """The chat servers: records each push and reaches every stream."""

    def __init__(self) -> None:
        self.pushed: list[tuple[int, common_pb2.ChatMessage]] = []

    async def deliver_many(self, requests: Sequence[tuple[str, Parcel]]) -> list[list[bool]]:
        for _, parcel in requests:
            self.pushed.extend((d.receiver_id, d.message) for d in parcel)
        return [[True] * len(parcel) for _, parcel in requests]


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Store]:
    implementation: Store
    if request.param == "memory":
        implementation = MemoryStore()
    else:
        implementation = RedisStore.from_url(
            request.getfixturevalue("redis_server").url, key_prefix
        )
    for name in ("ann", "bob", "cat", "dan", "eve"):
        await implementation.create_account(name, "h")  # ids 1-5
    yield implementation
    await implementation.aclose()


def manager(store: Store, servers: FakeServers | None = None, **limits: int) -> GroupManager:
    return GroupManager(route_config(**limits), store, servers or FakeServers())  # type: ignore[arg-type]


async def sequence(store: Store, user_id: int) -> list[common_pb2.ChatMessage]:
    page = await store.read_inbox(user_id, 0, 100, Retention())
    out = []
    for entry in page.entries:
        message = common_pb2.ChatMessage.FromString(entry.payload)
        message.position = entry.position
        out.append(message)
    return out


async def test_creation_is_an_event_every_member_gets(store: Store) -> None:
    servers = FakeServers()
    made = await manager(store, servers).create(1, "ann", "team", [2, 3])
    group = made.group
    assert group.group_id == "g:1" and group.name == "team" and group.owner_id == 1
    assert {uid: m.role for uid, m in group.members.items()} == {1: OWNER, 2: MEMBER, 3: MEMBER}
    event = made.event
    assert event.kind == common_pb2.MESSAGE_KIND_MEMBERSHIP
    assert event.conversation_id == event.group_id == "g:1" and event.position == 1
    assert event.membership.action == common_pb2.MEMBERSHIP_ACTION_CREATED
    assert list(event.membership.user_ids) == [2, 3] and event.membership.actor_id == 1
    assert event.text == "ann created group 'team' with bob, cat"
    for uid in (1, 2, 3):
        (stored,) = await sequence(store, uid)
        assert stored.message_id == event.message_id and stored.position == 1
    assert await sequence(store, 4) == []
    # Pushed only to members with a connected session.
    assert servers.pushed == []
    await store.claim_session(SessionRecord(2, "s", "server-1", connected=True), 30)
    await manager(store, servers).rename(1, "ann", "g:1", "crew")
    assert [(uid, m.membership.action) for uid, m in servers.pushed] == [
        (2, common_pb2.MEMBERSHIP_ACTION_RENAMED)
    ]


async def test_a_removed_member_gets_their_removal_and_nothing_after(store: Store) -> None:
    groups = manager(store)
    await groups.create(1, "ann", "team", [2, 3])
    await groups.set_admin(1, "ann", "g:1", 2, True)
    removed = await groups.remove(2, "bob", "g:1", [3])
    assert removed.event.text == "bob removed cat"
    assert removed.group.left == {3: 3}
    await groups.rename(1, "ann", "g:1", "crew")
    assert [m.membership.action for m in await sequence(store, 3)] == [
        common_pb2.MEMBERSHIP_ACTION_CREATED,
        common_pb2.MEMBERSHIP_ACTION_ADMIN_APPOINTED,
        common_pb2.MEMBERSHIP_ACTION_REMOVED,
    ]
    assert [m.position for m in await sequence(store, 1)] == [1, 2, 3, 4]
    with pytest.raises(PermissionDenied, match="you are not a member of group g:1"):
        await groups.members(3, "g:1")
    with pytest.raises(PermissionDenied, match="you are not a member of group g:1"):
        await groups.leave(3, "cat", "g:1")


async def test_leaving_handing_over_and_deleting(store: Store) -> None:
    groups = manager(store)
    await groups.create(1, "ann", "team", [2, 3])
    with pytest.raises(FailedPrecondition, match="you own group g:1: hand it over"):
        await groups.leave(1, "ann", "g:1")
    handed = await groups.transfer(1, "ann", "g:1", 2)
    assert handed.group.owner_id == 2 and handed.group.members[1].role == ADMIN
    left = await groups.leave(1, "ann", "g:1")
    assert 1 not in left.group.members and left.event.text == "ann left"
    deleted = await groups.delete(2, "bob", "g:1")
    assert deleted.group.deleted
    with pytest.raises(FailedPrecondition, match="group g:1 was deleted"):
        await groups.add(2, "bob", "g:1", [4])
    assert [m.membership.action for m in await sequence(store, 3)][-1] == (
        common_pb2.MEMBERSHIP_ACTION_DELETED
    )


async def test_members_and_my_groups_are_paged(store: Store) -> None:
    groups = manager(store)
    await groups.create(1, "ann", "one", [2, 3, 4, 5])
    await groups.create(2, "bob", "two", [1])
    await groups.create(3, "cat", "three", [4])
    group, page, more = await groups.members(2, "g:1", limit=2)
    assert group.name == "one" and [m.user_id for m in page] == [1, 2] and more
    _, page, more = await groups.members(2, "g:1", after_user_id=2, limit=2)
    assert [m.user_id for m in page] == [3, 4] and more
    _, page, more = await groups.members(2, "g:1", after_user_id=4, limit=2)
    assert [m.user_id for m in page] == [5] and not more
    mine, more = await groups.my_groups(1)
    assert [g.group_id for g in mine] == ["g:1", "g:2"] and not more
    mine, more = await groups.my_groups(1, limit=1)
    assert [g.group_id for g in mine] == ["g:1"] and more
    await groups.leave(1, "ann", "g:2")
    assert [g.group_id for g in (await groups.my_groups(1))[0]] == ["g:1"]
    with pytest.raises(InvalidArgument, match="limit must be between 1 and 1000"):
        await groups.members(1, "g:1", limit=1001)


async def test_forged_empty_and_broadcast_ids_are_refused(store: Store) -> None:
    groups = manager(store)
    await groups.create(1, "ann", "team", [2])
    with pytest.raises(PermissionDenied, match="you are not a member of group g:999"):
        await groups.add(1, "ann", "g:999", [3])
    with pytest.raises(PermissionDenied, match="you are not a member of group g:999"):
        await groups.members(1, "g:999")
    with pytest.raises(PermissionDenied, match="you are not a member of group g:1"):
        await groups.add(4, "dan", "g:1", [4])
    with pytest.raises(InvalidArgument, match="group id is required"):
        await groups.add(1, "ann", "", [3])
    with pytest.raises(InvalidArgument, match="CIM's broadcast"):
        await groups.members(1, "all")
    with pytest.raises(InvalidArgument, match="is not a group id"):
        await groups.members(1, "p:1:2")


async def test_unknown_users_are_not_added(store: Store) -> None:
    groups = manager(store)
    with pytest.raises(NotFound, match="no such users: 77"):
        await groups.create(1, "ann", "team", [2, 77])
    made = await groups.create(1, "ann", "team", [2])
    with pytest.raises(NotFound, match="no such users: 88"):
        await groups.add(1, "ann", made.group.group_id, [88])


async def test_every_limit_refuses_precisely(store: Store) -> None:
    groups = manager(
        store, group_max_members=3, max_groups_per_user=2, group_creations_per_minute=2
    )
    with pytest.raises(ResourceExhausted, match="group would have 4 members: the limit is 3"):
        await groups.create(1, "ann", "big", [2, 3, 4])
    await groups.create(1, "ann", "a", [2])
    await groups.create(1, "ann", "b", [2])
    with pytest.raises(
        ResourceExhausted, match="2 groups created in the last minute: the limit is 2"
    ):
        await groups.create(1, "ann", "c", [3])
    with pytest.raises(ResourceExhausted, match="user 2 is in 2 groups: the limit is 2"):
        await groups.create(3, "cat", "c", [2])
    with pytest.raises(ResourceExhausted, match="you are in 2 groups: the limit is 2"):
        await groups.create(2, "bob", "mine", [])
    await groups.add(1, "ann", "g:1", [3])
    with pytest.raises(ResourceExhausted, match="group would have 4 members: the limit is 3"):
        await groups.add(1, "ann", "g:1", [4])
    with pytest.raises(InvalidArgument, match="group name is 65 characters; the limit is 64"):
        await groups.create(4, "dan", "x" * 65, [])
    with pytest.raises(InvalidArgument, match="control character"):
        await groups.rename(1, "ann", "g:1", "a\tb")


# --- group messages (the conversation path) -------------------------------------


class CountingStore:
    """Counts the store calls of the send path (each one round trip on Redis)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        target = getattr(self._store, name)
        if not name.startswith("append"):
            return target

        async def counted(*args: object) -> object:
            self.calls.append(name)
            return await target(*args)

        return counted


def router(store: Store, servers: FakeServers | None = None) -> MessageRouter:
    return MessageRouter(route_config(), store, servers or FakeServers())  # type: ignore[arg-type]


def to_group(group_id: str, text: str, client_msg_id: str = "") -> common_pb2.SendGroupRequest:
    return common_pb2.SendGroupRequest(group_id=group_id, text=text, client_msg_id=client_msg_id)


async def texts(store: Store, user_id: int) -> list[tuple[int, int, str]]:
    """(seq, position, text) of the user's group messages."""
    page = await store.read_inbox(user_id, 0, 100, Retention())
    out = []
    for entry in page.entries:
        message = common_pb2.ChatMessage.FromString(entry.payload)
        if message.kind == common_pb2.MESSAGE_KIND_GROUP:
            out.append((entry.seq, entry.position, message.text))
    return out


async def test_a_group_message_reaches_every_other_member_in_two_round_trips(store: Store) -> None:
    servers = FakeServers()
    await manager(store).create(1, "ann", "team", [2, 3])
    await store.claim_session(SessionRecord(2, "s", "server-1", connected=True), 30)
    counting = CountingStore(store)
    sent = await router(counting, servers).send_group(1, "ann", to_group("g:1", "hello"))  # type: ignore[arg-type]
    assert counting.calls == ["append_conversations", "append_pointers"]
    assert sent.status == common_pb2.DELIVERY_STATUS_DELIVERED and sent.recipients == 2
    assert await texts(store, 2) == [(2, 2, "hello")]  # after the creation event
    assert await texts(store, 3) == [(2, 2, "hello")]
    assert await texts(store, 1) == []  # the sender gets no copy
    ((receiver, pushed),) = servers.pushed
    assert receiver == 2 and pushed.conversation_id == pushed.group_id == "g:1"
    assert (pushed.seq, pushed.position, pushed.message_id) == (2, 2, sent.message_id)
    history = await store.read_history("g:1", 0, 10, Retention())
    assert [e.position for e in history.entries] == [2, 1]


async def test_non_members_and_removed_members_are_refused_and_get_nothing(store: Store) -> None:
    groups = manager(store)
    await groups.create(1, "ann", "team", [2, 3])
    routes = router(store)
    with pytest.raises(PermissionDenied, match="you are not a member of group g:1"):
        await routes.send_group(4, "dan", to_group("g:1", "let me in"))
    with pytest.raises(PermissionDenied, match="you are not a member of group g:9"):
        await routes.send_group(1, "ann", to_group("g:9", "forged"))
    await routes.send_group(1, "ann", to_group("g:1", "one"))  # caches the members
    await groups.remove(1, "ann", "g:1", [3])
    await routes.send_group(1, "ann", to_group("g:1", "two"))
    assert [t for _, _, t in await texts(store, 3)] == ["one"]
    assert [t for _, _, t in await texts(store, 2)] == ["one", "two"]
    with pytest.raises(PermissionDenied, match="you are not a member of group g:1"):
        await routes.send_group(3, "cat", to_group("g:1", "still here?"))
    # A refused send writes nothing: the history is the events and the two.
    history = await store.read_history("g:1", 0, 10, Retention())
    assert len(history.entries) == 4
    await groups.add(1, "ann", "g:1", [4])
    await routes.send_group(2, "bob", to_group("g:1", "welcome"))
    assert [t for _, _, t in await texts(store, 4)] == ["welcome"]
    await groups.delete(1, "ann", "g:1")
    with pytest.raises(FailedPrecondition, match="group g:1 was deleted"):
        await routes.send_group(2, "bob", to_group("g:1", "anyone?"))


async def test_a_retried_group_send_is_delivered_once(store: Store) -> None:
    await manager(store).create(1, "ann", "team", [2])
    routes = router(store)
    first = await routes.send_group(1, "ann", to_group("g:1", "once", "c-1"))
    await routes.aclose()  # the result is remembered
    again = await routes.send_group(1, "ann", to_group("g:1", "once", "c-1"))
    assert again == first
    assert [t for _, _, t in await texts(store, 2)] == ["once"]
    with pytest.raises(FailedPrecondition):
        await routes.send_group(1, "ann", to_group("g:1", "another", "c-1"))


async def test_a_retry_of_an_unfinished_group_send_reuses_its_message_id(store: Store) -> None:
    await manager(store).create(1, "ann", "team", [2])
    routes = router(store)
    # A first attempt that claimed and appended, then its route died.
    payload = common_pb2.ChatMessage(
        message_id="01EARLIER", kind=common_pb2.MESSAGE_KIND_GROUP, text="x", group_id="g:1"
    ).SerializeToString()
    digest = send_digest("group:g:1", "x")
    key = SendKey(1, 1, "c-2", digest, "g:1")
    item = ConversationItem("g:1", "01EARLIER", payload, key, group_sender=1)
    (stored,) = await store.append_conversations([item], Retention())
    sent = await routes.send_group(1, "ann", to_group("g:1", "x", "c-2"))
    assert sent.message_id == "01EARLIER"
    assert [(p, t) for _, p, t in await texts(store, 2)] == [(stored.position, "x")]
    history = await store.read_history("g:1", 0, 10, Retention())
    assert len(history.entries) == 2  # the event and the one message


async def test_empty_and_all_keep_the_broadcast_and_bad_ids_are_refused(store: Store) -> None:
    routes = router(store)
    await store.claim_session(SessionRecord(2, "s", "server-1", connected=True), 30)
    for group_id in ("", "all"):
        sent = await routes.send_group(1, "ann", to_group(group_id, "hi all"))
        assert sent.recipients == 1
    with pytest.raises(InvalidArgument, match="positive number"):
        await routes.send_group(1, "ann", to_group("g:0", "x"))
    with pytest.raises(InvalidArgument, match="unknown group 'team'"):
        await routes.send_group(1, "ann", to_group("team", "x"))


async def test_broadcast_off_refuses_all_but_not_groups(store: Store) -> None:
    await manager(store).create(1, "ann", "team", [2])
    routes = MessageRouter(route_config(broadcast="off"), store, FakeServers())  # type: ignore[arg-type]
    for group_id in ("", "all"):
        with pytest.raises(PermissionDenied, match="is off on this cluster"):
            await routes.send_group(1, "ann", to_group(group_id, "hi all"))
    sent = await routes.send_group(1, "ann", to_group("g:1", "hi team"))
    assert sent.recipients == 1
