"""A client of the route's Admin API (``cim.admin.v1.Admin``): what ``cim
admin`` and operators' scripts use.

Every call carries the admin key as ``cim-admin-key: <id>:<secret>``. Errors
are ``cim.errors`` classes (grpc's are mapped at ``map_grpc_errors``):
Unauthenticated (no key, a wrong one), PermissionDenied (the admin API is off
on that route), NotFound (no such user), InvalidArgument, Unavailable (the
route cannot be reached), DeadlineExceeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from cim.client.route import map_grpc_errors
from cim.config import TlsConfig
from cim.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from cim.tls import load as load_tls
from cim.tls import open_channel

ADMIN_KEY = "cim-admin-key"  # the metadata key (cim.route.admin.ADMIN_KEY)


@dataclass(frozen=True)
class UserName:
    """A user named by their exact name."""

    name: str


@dataclass(frozen=True)
class UserId:
    """A user named by id."""

    id: int


User = UserName | UserId


def parse_user(text: str) -> User:
    """``"42"`` -> ``UserId(42)``; ``"bob"`` -> ``UserName("bob")``."""
    return UserId(int(text)) if text.isascii() and text.isdigit() else UserName(text)


_Named = (
    admin_pb2.GetUserRequest
    | admin_pb2.KickUserRequest
    | admin_pb2.DisableUserRequest
    | admin_pb2.EnableUserRequest
    | admin_pb2.SendNoticeRequest
)


def _fill(request: _Named, user: User) -> None:
    """Sets the request's ``user`` oneof."""
    if isinstance(user, UserId):
        request.user_id = user.id
    else:
        request.user_name = user.name


class AdminClient:
    """One route's Admin service; ``async with`` closes the channel."""

    def __init__(
        self, route: str, admin_key: str, tls: TlsConfig | None = None, timeout: float = 10.0
    ) -> None:
        self.route = route
        self._metadata = ((ADMIN_KEY, admin_key),)
        self._timeout = timeout
        self._channel = open_channel(route, load_tls(tls))
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def get_user(self, user: User) -> admin_pb2.GetUserResponse:
        request = admin_pb2.GetUserRequest()
        _fill(request, user)
        with map_grpc_errors():
            reply: admin_pb2.GetUserResponse = await self._stub.GetUser(
                request, metadata=self._metadata, timeout=self._timeout
            )
        return reply

    async def kick(self, user: User, device_id: str = "", reason: str = "") -> int:
        """How many sessions were ended."""
        request = admin_pb2.KickUserRequest(device_id=device_id, reason=reason)
        _fill(request, user)
        with map_grpc_errors():
            reply = await self._stub.KickUser(
                request, metadata=self._metadata, timeout=self._timeout
            )
        return int(reply.sessions_ended)

    async def disable(self, user: User, reason: str = "") -> admin_pb2.DisableUserResponse:
        request = admin_pb2.DisableUserRequest(reason=reason)
        _fill(request, user)
        with map_grpc_errors():
            reply: admin_pb2.DisableUserResponse = await self._stub.DisableUser(
                request, metadata=self._metadata, timeout=self._timeout
            )
        return reply

    async def enable(self, user: User) -> admin_pb2.EnableUserResponse:
        request = admin_pb2.EnableUserRequest()
        _fill(request, user)
        with map_grpc_errors():
            reply: admin_pb2.EnableUserResponse = await self._stub.EnableUser(
                request, metadata=self._metadata, timeout=self._timeout
            )
        return reply

    async def notice(
        self, user: User, text: str, client_msg_id: str = ""
    ) -> admin_pb2.SendNoticeResponse:
        request = admin_pb2.SendNoticeRequest(text=text, client_msg_id=client_msg_id)
        _fill(request, user)
        with map_grpc_errors():
            reply: admin_pb2.SendNoticeResponse = await self._stub.SendNotice(
                request, metadata=self._metadata, timeout=self._timeout
            )
        return reply

    async def broadcast(self, text: str) -> admin_pb2.BroadcastNoticeResponse:
        with map_grpc_errors():
            reply: admin_pb2.BroadcastNoticeResponse = await self._stub.BroadcastNotice(
                admin_pb2.BroadcastNoticeRequest(text=text),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        return reply
