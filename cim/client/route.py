"""Unary calls to the routes, with failover between the addresses given."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from cim.errors import CimError, Unavailable, from_rpc_error
from cim.grpcutil import token_metadata
from cim.proto.v1 import common_pb2, route_pb2, route_pb2_grpc
from cim.tls import Tls, open_channel

log = logging.getLogger(__name__)

T = TypeVar("T")
_FAILOVER = {grpc.StatusCode.UNAVAILABLE}


class RouteClient:
    """Talks to whichever of the given routes answers; routes are interchangeable."""

    def __init__(
        self, addresses: Sequence[str], timeout: float = 10.0, tls: Tls | None = None
    ) -> None:
        if not addresses:
            raise ValueError("at least one route address is needed")
        self.addresses = list(addresses)
        self._timeout = timeout
        self._channels = [open_channel(address, tls) for address in self.addresses]
        self._stubs = [route_pb2_grpc.RouteStub(channel) for channel in self._channels]
        self._turn = itertools.count()
        self._preferred = 0
        self.token = ""

    async def _call(self, what: str, call: Callable[[route_pb2_grpc.RouteStub], Awaitable[T]]) -> T:
        last: CimError | None = None
        last_address = ""
        for offset in range(len(self._stubs)):
            index = (self._preferred + offset) % len(self._stubs)
            try:
                result = await call(self._stubs[index])
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                if exc.code() not in _FAILOVER:
                    raise error from exc
                log.debug("%s: route %s unavailable: %s", what, self.addresses[index], exc)
                last, last_address = error, self.addresses[index]
                continue
            self._preferred = index  # stick to a route that answers
            return result
        # UNAVAILABLE is both "route unreachable" and "route up, no chat server":
        # the route's own words say which.
        detail = last.message if last else "no answer"
        raise Unavailable(f"route {last_address}: {detail}")

    def _auth(self) -> tuple[tuple[str, str], ...]:
        return token_metadata(self.token) if self.token else ()

    async def register(self, user_name: str, password: str) -> route_pb2.RegisterResponse:
        request = route_pb2.RegisterRequest(user_name=user_name, password=password)
        return await self._call(
            "register", lambda stub: stub.Register(request, timeout=self._timeout)
        )

    async def login(
        self,
        user_name: str,
        password: str,
        user_id: int = 0,
        device_id: str = "",
        resume_token: str = "",
    ) -> route_pb2.LoginResponse:
        """Logs in with the password, or with ``resume_token`` (the session
        token of the user's current session) instead of it."""
        request = route_pb2.LoginRequest(
            user_name=user_name,
            password=password,
            user_id=user_id,
            device_id=device_id,
            resume_token=resume_token,
        )
        reply: route_pb2.LoginResponse = await self._call(
            "login", lambda stub: stub.Login(request, timeout=self._timeout)
        )
        self.token = reply.session_token
        return reply

    async def logout(self) -> None:
        request = route_pb2.LogoutRequest()
        await self._call(
            "logout",
            lambda stub: stub.Logout(request, metadata=self._auth(), timeout=self._timeout),
        )
        self.token = ""

    async def list_online(self, name_prefix: str = "") -> list[common_pb2.UserInfo]:
        request = route_pb2.ListOnlineUsersRequest(name_prefix=name_prefix)
        reply = await self._call(
            "list online users",
            lambda stub: stub.ListOnlineUsers(
                request, metadata=self._auth(), timeout=self._timeout
            ),
        )
        return list(reply.users)

    async def send_private(
        self, receiver_id: int, text: str, client_msg_id: str = ""
    ) -> common_pb2.SendResponse:
        request = common_pb2.SendPrivateRequest(
            receiver_id=receiver_id, text=text, client_msg_id=client_msg_id
        )
        return await self._call(
            "send",
            lambda stub: stub.SendPrivate(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def send_group(self, text: str, client_msg_id: str = "") -> common_pb2.SendResponse:
        request = common_pb2.SendGroupRequest(text=text, client_msg_id=client_msg_id)
        return await self._call(
            "send",
            lambda stub: stub.SendGroup(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def fetch_offline(
        self, limit: int = 0, after_seq: int = 0
    ) -> route_pb2.FetchOfflineResponse:
        request = route_pb2.FetchOfflineRequest(limit=limit, after_seq=after_seq)
        return await self._call(
            "fetch offline messages",
            lambda stub: stub.FetchOffline(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def ack(self, seq: int) -> None:
        """Trims the caller's inbox up to ``seq`` (for clients without a stream)."""
        request = route_pb2.AckMessagesRequest(seq=seq)
        await self._call(
            "ack messages",
            lambda stub: stub.AckMessages(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def aclose(self) -> None:
        for channel in self._channels:
            await channel.close()
