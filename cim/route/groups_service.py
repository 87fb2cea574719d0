"""The Groups gRPC servicer (cim.v1.Groups): authorization and translation
only; the work is in ``cim.route.groups``."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from cim import logcontext
from cim.core import groups
from cim.core.groups import Group, Member
from cim.core.tokens import TokenClaims
from cim.errors import InvalidArgument
from cim.grpcutil import bearer_token, unary_edge
from cim.proto.v1 import groups_pb2, groups_pb2_grpc
from cim.route.groups import Changed, GroupManager
from cim.route.sessions import SessionManager

Context: TypeAlias = grpc.aio.ServicerContext

ROLES = {
    groups.OWNER: groups_pb2.GROUP_ROLE_OWNER,
    groups.ADMIN: groups_pb2.GROUP_ROLE_ADMIN,
    groups.MEMBER: groups_pb2.GROUP_ROLE_MEMBER,
}


def group_info(group: Group, user_id: int) -> groups_pb2.GroupInfo:
    member = group.members.get(user_id)
    return groups_pb2.GroupInfo(
        group_id=group.group_id,
        name=group.name,
        owner_id=group.owner_id,
        created_ms=group.created_ms,
        version=group.version,
        deleted=group.deleted,
        member_count=len(group.members),
        my_role=ROLES[member.role] if member else groups_pb2.GROUP_ROLE_UNSPECIFIED,
    )


def group_member(member: Member) -> groups_pb2.GroupMember:
    return groups_pb2.GroupMember(
        user_id=member.user_id, role=ROLES[member.role], joined_position=member.joined
    )


def _changed(changed: Changed, user_id: int) -> groups_pb2.GroupChangeResponse:
    return groups_pb2.GroupChangeResponse(
        group=group_info(changed.group, user_id), event=changed.event
    )


def _id(value: int, what: str = "user id") -> int:
    if value <= 0:
        raise InvalidArgument(f"{what} must be a positive number (got {value})")
    return value


class GroupsService(groups_pb2_grpc.GroupsServicer):
    def __init__(self, sessions: SessionManager, manager: GroupManager) -> None:
        self._sessions = sessions
        self._groups = manager

    async def _caller(self, context: Context) -> TokenClaims:
        claims = await self._sessions.authenticate(bearer_token(context))
        logcontext.user_id_var.set(claims.user_id)
        return claims

    @unary_edge
    async def CreateGroup(
        self, request: groups_pb2.CreateGroupRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.create(
            me.user_id, me.user_name, request.name, list(request.member_ids)
        )
        return _changed(changed, me.user_id)

    @unary_edge
    async def AddMembers(
        self, request: groups_pb2.AddMembersRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.add(
            me.user_id, me.user_name, request.group_id, list(request.user_ids)
        )
        return _changed(changed, me.user_id)

    @unary_edge
    async def RemoveMembers(
        self, request: groups_pb2.RemoveMembersRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.remove(
            me.user_id, me.user_name, request.group_id, list(request.user_ids)
        )
        return _changed(changed, me.user_id)

    @unary_edge
    async def LeaveGroup(
        self, request: groups_pb2.LeaveGroupRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.leave(me.user_id, me.user_name, request.group_id)
        return _changed(changed, me.user_id)

    @unary_edge
    async def SetAdmin(
        self, request: groups_pb2.SetAdminRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.set_admin(
            me.user_id, me.user_name, request.group_id, _id(request.user_id), request.admin
        )
        return _changed(changed, me.user_id)

    @unary_edge
    async def TransferOwnership(
        self, request: groups_pb2.TransferOwnershipRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.transfer(
            me.user_id, me.user_name, request.group_id, _id(request.user_id)
        )
        return _changed(changed, me.user_id)

    @unary_edge
    async def RenameGroup(
        self, request: groups_pb2.RenameGroupRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.rename(
            me.user_id, me.user_name, request.group_id, request.name
        )
        return _changed(changed, me.user_id)

    @unary_edge
    async def DeleteGroup(
        self, request: groups_pb2.DeleteGroupRequest, context: Context
    ) -> groups_pb2.GroupChangeResponse:
        me = await self._caller(context)
        changed = await self._groups.delete(me.user_id, me.user_name, request.group_id)
        return _changed(changed, me.user_id)

    @unary_edge
    async def ListMembers(
        self, request: groups_pb2.ListMembersRequest, context: Context
    ) -> groups_pb2.ListMembersResponse:
        me = await self._caller(context)
        if request.after_user_id < 0:
            raise InvalidArgument("after_user_id must not be negative")
        group, members, more = await self._groups.members(
            me.user_id, request.group_id, request.after_user_id, request.limit
        )
        return groups_pb2.ListMembersResponse(
            group=group_info(group, me.user_id),
            members=[group_member(m) for m in members],
            more=more,
        )

    @unary_edge
    async def ListMyGroups(
        self, request: groups_pb2.ListMyGroupsRequest, context: Context
    ) -> groups_pb2.ListMyGroupsResponse:
        me = await self._caller(context)
        if request.after_number < 0:
            raise InvalidArgument("after_number must not be negative")
        found, more = await self._groups.my_groups(me.user_id, request.after_number, request.limit)
        return groups_pb2.ListMyGroupsResponse(
            groups=[group_info(g, me.user_id) for g in found], more=more
        )
