"""The public Groups API (cim.v1.Groups) on each backend: the client
library's methods end to end, reflection, and the security of every RPC (no
token, a non-member, a removed member, forged and empty ids, oversized names,
every limit)."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cim.client import commands
from cim.client.chatlog import ChatLog
from cim.client.console import Console
from cim.errors import FailedPrecondition, PermissionDenied
from cim.proto.v1 import common_pb2, groups_pb2, groups_pb2_grpc
from cim.testing import cluster
from cim.testing import fast_route_config as route_config


def _stub(raw, rr) -> groups_pb2_grpc.GroupsStub:
    return groups_pb2_grpc.GroupsStub(raw.channel(rr.route_address))


# One request per RPC, aimed at group `gid` and user `uid`.
def _requests(gid: str, uid: int) -> dict[str, object]:
    return {
        "AddMembers": groups_pb2.AddMembersRequest(group_id=gid, user_ids=[uid]),
        "RemoveMembers": groups_pb2.RemoveMembersRequest(group_id=gid, user_ids=[uid]),
        "LeaveGroup": groups_pb2.LeaveGroupRequest(group_id=gid),
        "SetAdmin": groups_pb2.SetAdminRequest(group_id=gid, user_id=uid, admin=True),
        "TransferOwnership": groups_pb2.TransferOwnershipRequest(group_id=gid, user_id=uid),
        "RenameGroup": groups_pb2.RenameGroupRequest(group_id=gid, name="mine now"),
        "DeleteGroup": groups_pb2.DeleteGroupRequest(group_id=gid),
        "ListMembers": groups_pb2.ListMembersRequest(group_id=gid),
    }


async def test_the_client_library_runs_a_group(rr):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    cat = await rr.client("cat")
    made = await ann.create_group("team", [bob.user_id])
    gid = made.group.group_id
    assert made.group.my_role == groups_pb2.GROUP_ROLE_OWNER and made.group.member_count == 2
    assert made.event.membership.action == common_pb2.MEMBERSHIP_ACTION_CREATED
    await rr.next_message(bob)
    added = await ann.change_group("AddMembers", group_id=gid, user_ids=[cat.user_id])
    assert added.event.text == "ann added cat" and added.group.member_count == 3
    await rr.next_message(cat)
    sent = await bob.send_group("hello team", group_id=gid)  # over the stream
    assert sent.recipients == 2
    got = await rr.next_message(cat)
    assert (got.text, got.group_id, got.sender_id) == ("hello team", gid, bob.user_id)
    page = await cat.group_members(gid)
    assert [(m.user_id, m.role) for m in page.members] == [
        (ann.user_id, groups_pb2.GROUP_ROLE_OWNER),
        (bob.user_id, groups_pb2.GROUP_ROLE_MEMBER),
        (cat.user_id, groups_pb2.GROUP_ROLE_MEMBER),
    ]
    mine = await cat.my_groups()
    assert [(g.group_id, g.name) for g in mine.groups] == [(gid, "team")]
    await cat.change_group("LeaveGroup", group_id=gid)
    assert (await cat.my_groups()).groups == []
    with pytest.raises(PermissionDenied, match=f"you are not a member of group {gid}"):
        await cat.group_members(gid)
    with pytest.raises(FailedPrecondition, match="hand it over"):
        await ann.change_group("LeaveGroup", group_id=gid)
    with pytest.raises(ValueError, match="not a group change"):
        await ann.change_group("CreateGroup", name="x")


async def test_only_the_owner_and_admins_add(rr, raw, fails):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    cat = await rr.client("cat")
    made = await ann.create_group("team", [bob.user_id])
    err = await fails(
        _stub(raw, rr).AddMembers(
            groups_pb2.AddMembersRequest(group_id=made.group.group_id, user_ids=[cat.user_id]),
            metadata=raw.auth(bob.route.token),
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    gid = made.group.group_id
    assert err.details() == f"only the owner and admins of group {gid} may add members"


async def test_reflection_lists_the_groups_service(rr, raw):
    stub = reflection_pb2_grpc.ServerReflectionStub(raw.channel(rr.route_address))
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.done_writing()
    reply = await call.read()
    listed = {service.name for service in reply.list_services_response.service}
    assert "cim.v1.Groups" in listed


@pytest.mark.parametrize("rpc", [*_requests("g:1", 1), "CreateGroup", "ListMyGroups"])
async def test_every_rpc_needs_a_session_token(rr, raw, fails, rpc):
    requests = {
        **_requests("g:1", 1),
        "CreateGroup": groups_pb2.CreateGroupRequest(name="x"),
        "ListMyGroups": groups_pb2.ListMyGroupsRequest(),
    }
    for metadata in ((), (("authorization", "Bearer not-a-token"),)):
        err = await fails(getattr(_stub(raw, rr), rpc)(requests[rpc], metadata=metadata))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()


@pytest.mark.parametrize("rpc", list(_requests("g:1", 1)))
async def test_non_members_removed_members_and_forged_ids_are_denied(rr, raw, fails, rpc):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    dan = await rr.client("dan")
    made = await ann.create_group("team", [bob.user_id])
    gid = made.group.group_id
    await ann.change_group("RemoveMembers", group_id=gid, user_ids=[bob.user_id])
    for caller, group_id in ((dan, gid), (bob, gid), (ann, "g:424242")):
        request = _requests(group_id, dan.user_id)[rpc]
        err = await fails(
            getattr(_stub(raw, rr), rpc)(request, metadata=raw.auth(caller.route.token))
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (caller.user_name, err.details())
        assert err.details() == f"you are not a member of group {group_id}"
    for group_id, message in (("", "group id is required"), ("all", "CIM's broadcast")):
        request = _requests(group_id, dan.user_id)[rpc]
        err = await fails(getattr(_stub(raw, rr), rpc)(request, metadata=raw.auth(ann.route.token)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.details()


async def test_names_are_checked(rr, raw, fails):
    ann = await rr.client("ann")
    stub, auth = _stub(raw, rr), raw.auth(ann.route.token)
    for name, message in (
        ("x" * 257, "CreateGroupRequest.name is 257 bytes; the limit is 256"),
        ("x" * 65, "group name is 65 characters; the limit is 64"),
        ("a\x00b", "group name contains a control character (U+0000)"),
        ("  ", "group name is required"),
    ):
        err = await fails(stub.CreateGroup(groups_pb2.CreateGroupRequest(name=name), metadata=auth))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.details()


async def test_every_limit_is_refused_with_resource_exhausted(raw, fails):
    config = route_config(group_max_members=3, max_groups_per_user=2, group_creations_per_minute=3)
    async with cluster(servers=1, route_config=config) as c:
        ann = await c.client("ann")
        bob = await c.client("bob")
        cat = await c.client("cat")
        dan = await c.client("dan")
        stub = groups_pb2_grpc.GroupsStub(raw.channel(c.route_address))

        async def create(who, *members):
            return await stub.CreateGroup(
                groups_pb2.CreateGroupRequest(name="g", member_ids=[m.user_id for m in members]),
                metadata=raw.auth(who.route.token),
            )

        err = await fails(create(ann, bob, cat, dan))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == "group would have 4 members: the limit is 3"
        await create(ann, bob)
        await create(ann, bob)
        err = await fails(create(cat, bob))
        assert err.details() == f"user {bob.user_id} is in 2 groups: the limit is 2"
        err = await fails(create(ann))
        assert err.details() == "you are in 2 groups: the limit is 2"
        await create(cat)
        await create(cat)
        await create(dan)
        err = await fails(create(cat))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == "3 groups created in the last minute: the limit is 3"


async def test_the_console_appoints_admins_and_hands_a_group_over(rr, tmp_path, capsys):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    console = Console(ann, ChatLog(tmp_path, "ann"), interactive=False)
    for line in (
        f":gcreate crew;;{bob.user_id}",
        f":gadmin g:1 {bob.user_id}",
        f":gadmin g:1 {bob.user_id} off",
        f":gowner g:1 {bob.user_id}",
        ":gmembers g:1",
    ):
        command = commands.parse(line)
        assert command is not None
        await console.execute(command)
    with pytest.raises(PermissionDenied, match="only the owner of group g:1 may"):
        await console.execute(commands.parse(":gdelete g:1"))  # no longer the owner
    out = capsys.readouterr().out
    assert "* g:1: ann made bob an admin" in out
    assert "* g:1: ann made bob a member again" in out
    assert "* g:1: ann handed the group over to bob" in out
    assert f"  {bob.user_id}  owner" in out and f"  {ann.user_id}  admin" in out


async def test_the_console_runs_group_commands(rr, tmp_path, capsys):
    ann = await rr.client("ann")
    bob = await rr.client("bob")
    console = Console(ann, ChatLog(tmp_path, "ann"), interactive=False)
    capsys.readouterr()
    for line in (
        f":gcreate the team;;{bob.user_id}",
        "g:1;;hello :smile:",
        ":gmembers g:1",
        ":groups",
        ":grename g:1 crew",
        f":gremove g:1 {bob.user_id}",
        ":gdelete g:1",
    ):
        command = commands.parse(line)
        assert command is not None
        await console.execute(command)
    out = capsys.readouterr().out
    assert "* created group g:1 'the team' with 2 member(s)" in out
    assert "* to g:1: stored for 1 member(s)" in out
    assert "* group g:1 'the team': 2 member(s)" in out
    assert f"  {bob.user_id}  member" in out
    assert "  g:1  the team  2" in out
    assert "* g:1: ann renamed the group to 'crew'" in out
    assert "* g:1: ann removed bob" in out
    assert "* g:1: ann deleted the group" in out
    got = await rr.next_message(bob)  # the creation, then the message
    got = await rr.next_message(bob)
    assert got.text == "hello 😄" and got.group_id == "g:1"
