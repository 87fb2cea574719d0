"""Unary calls to the routes, with failover between the addresses given.

This module is also the client library's one seam between grpc's exceptions
and cim's (:func:`map_grpc_errors`, :func:`build_request`): every public
method of the library raises :class:`cim.errors.CimError` subclasses only,
besides ``TypeError`` and the like for arguments of the wrong type (a bug in
the caller) and ``asyncio.CancelledError`` when the caller's task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from cim.errors import (
    CimError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Unavailable,
    from_rpc_error,
)
from cim.grpcutil import token_metadata
from cim.proto.v1 import common_pb2, groups_pb2_grpc, route_pb2, route_pb2_grpc
from cim.tls import Tls, open_channel

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M")
S = TypeVar("S")
_FAILOVER = {grpc.StatusCode.UNAVAILABLE}


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


@contextlib.contextmanager
def map_grpc_errors() -> Iterator[None]:
    """Turns what grpc.aio raises into cim errors (``raise ... from exc``):

    * ``AioRpcError``: the class of its status code (:func:`from_rpc_error`);
    * ``asyncio.InvalidStateError`` (a write on a call that has already ended,
      e.g. its server died while the write waited its turn): ``Unavailable``;
    * ``grpc.aio.UsageError`` (a call on a closed channel): ``FailedPrecondition``;
    * ``grpc.aio.InternalError`` (grpc's core failed the call's operations):
      ``Unavailable``, as a call that broke;
    * ``asyncio.CancelledError`` while the current task is not being cancelled:
      grpc raises it from a call that another task cancelled (a stream given
      up, a channel closed by ``close()``), so it is ``Unavailable`` here. A
      cancellation of the task itself propagates untouched.
    """
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc
    except asyncio.InvalidStateError as exc:
        raise Unavailable(f"the call has already ended ({exc})") from exc
    except grpc.aio.UsageError as exc:
        raise FailedPrecondition(f"the client is closed ({exc})") from exc
    except grpc.aio.InternalError as exc:
        raise Unavailable(f"grpc failed the call ({exc})") from exc
    except asyncio.CancelledError as exc:
        if _being_cancelled():
            raise
        raise Unavailable("the call was cancelled: its connection was closed") from exc


def build_request(message_type: Callable[..., M], what: str, **fields: object) -> M:
    """A request carrying what a user typed. Protobuf refuses text that is not
    valid Unicode (a lone surrogate from a badly decoded terminal) and numbers
    outside the field's range with ``ValueError``: bad input, so InvalidArgument.
    Values of the wrong type stay a ``TypeError`` (a bug, not input)."""
    try:
        return message_type(**fields)
    except ValueError as exc:
        raise InvalidArgument(f"invalid {what}: {exc}") from exc


class RouteClient:
    """Talks to whichever of the given routes answers; routes are interchangeable.

    Every call raises ``Unavailable`` when no route answers (or a route has no
    chat server for a login), ``DeadlineExceeded`` when the answer takes longer
    than ``timeout``, ``FailedPrecondition`` after :meth:`aclose`, and
    ``Internal`` for a reply that does not decode; the other errors of each
    method are in its docstring.
    """

    def __init__(
        self, addresses: Sequence[str], timeout: float = 10.0, tls: Tls | None = None
    ) -> None:
        if not addresses:
            raise ValueError("at least one route address is needed")
        self.addresses = list(addresses)
        self._timeout = timeout
        self._channels = [open_channel(address, tls) for address in self.addresses]
        self._stubs = [route_pb2_grpc.RouteStub(channel) for channel in self._channels]
        self._group_stubs = [groups_pb2_grpc.GroupsStub(channel) for channel in self._channels]
        self._turn = itertools.count()
        self._preferred = 0
        self.token = ""

    async def _call(
        self, what: str, call: Callable[[route_pb2_grpc.RouteStub], Awaitable[T | None]]
    ) -> T:
        return await self._call_on(self._stubs, what, call)

    async def _call_on(
        self, stubs: Sequence[S], what: str, call: Callable[[S], Awaitable[T | None]]
    ) -> T:
        last: CimError | None = None
        last_address = ""
        with map_grpc_errors():
            for offset in range(len(stubs)):
                index = (self._preferred + offset) % len(stubs)
                try:
                    result = await call(stubs[index])
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in _FAILOVER:
                        raise
                    log.debug("%s: route %s unavailable: %s", what, self.addresses[index], exc)
                    last, last_address = from_rpc_error(exc), self.addresses[index]
                    continue
                if result is None:
                    # grpc logs the DecodeError and hands over None.
                    raise Internal(
                        f"{what}: route {self.addresses[index]} sent a reply that does not decode"
                    )
                self._preferred = index  # stick to a route that answers
                return result
        # UNAVAILABLE is both "route unreachable" and "route up, no chat server":
        # the route's own words say which.
        detail = last.message if last else "no answer"
        raise Unavailable(f"route {last_address}: {detail}")

    def _auth(self) -> tuple[tuple[str, str], ...]:
        return token_metadata(self.token) if self.token else ()

    async def register(self, user_name: str, password: str) -> route_pb2.RegisterResponse:
        """Creates the account, or confirms it exists with this password.

        Raises InvalidArgument (a name or password the rules refuse),
        AlreadyExists (the name is taken, with another password),
        ResourceExhausted (too many registrations from this address).
        """
        request = build_request(
            route_pb2.RegisterRequest,
            "user name or password",
            user_name=user_name,
            password=password,
        )
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
        token of the user's current session) instead of it.

        Raises NotFound (no such user), PermissionDenied (bad credentials),
        Unauthenticated (a resume token whose session is over), AlreadyExists
        (logged in elsewhere, or another login in progress), ResourceExhausted
        (too many logins from this address), InvalidArgument (bad input).
        """
        request = build_request(
            route_pb2.LoginRequest,
            "login",
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
        """Ends the session (again: a no-op). Raises Unauthenticated for a bad token."""
        request = route_pb2.LogoutRequest()
        await self._call(
            "logout",
            lambda stub: stub.Logout(request, metadata=self._auth(), timeout=self._timeout),
        )
        self.token = ""

    async def list_online(self, name_prefix: str = "") -> list[common_pb2.UserInfo]:
        """Users online whose name starts with ``name_prefix``.

        Raises Unauthenticated (not logged in, or the session is over),
        InvalidArgument (a prefix that is not valid text).
        """
        request = build_request(
            route_pb2.ListOnlineUsersRequest, "name prefix", name_prefix=name_prefix
        )
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
        """Sends without a stream. Raises InvalidArgument (empty or oversized
        text, bad receiver id), NotFound (no such receiver), Unauthenticated,
        ResourceExhausted (over the sender's message rate)."""
        request = build_request(
            common_pb2.SendPrivateRequest,
            "message",
            receiver_id=receiver_id,
            text=text,
            client_msg_id=client_msg_id,
        )
        return await self._call(
            "send",
            lambda stub: stub.SendPrivate(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def send_group(self, text: str, client_msg_id: str = "") -> common_pb2.SendResponse:
        """Sends to the group without a stream. Raises InvalidArgument (empty or
        oversized text), Unauthenticated, ResourceExhausted."""
        request = build_request(
            common_pb2.SendGroupRequest, "message", text=text, client_msg_id=client_msg_id
        )
        return await self._call(
            "send",
            lambda stub: stub.SendGroup(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def fetch_offline(
        self, limit: int = 0, after_seq: int = 0
    ) -> route_pb2.FetchOfflineResponse:
        """Reads the inbox after ``after_seq``. Raises Unauthenticated,
        InvalidArgument (a limit out of range)."""
        request = route_pb2.FetchOfflineRequest(limit=limit, after_seq=after_seq)
        return await self._call(
            "fetch offline messages",
            lambda stub: stub.FetchOffline(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def history(
        self, conversation_id: str, before_position: int = 0, limit: int = 0
    ) -> route_pb2.HistoryResponse:
        """A page of a conversation's history, newest first. Raises
        Unauthenticated, InvalidArgument (a malformed id, a limit out of
        range), PermissionDenied (not a member, or no such group)."""
        request = route_pb2.HistoryRequest(
            conversation_id=conversation_id, before_position=before_position, limit=limit
        )
        return await self._call(
            "read history",
            lambda stub: stub.History(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def list_conversations(
        self, before_activity_ms: int = 0, before_conversation_id: str = "", limit: int = 0
    ) -> route_pb2.ListConversationsResponse:
        """A page of the caller's conversations, most recent first. Raises
        Unauthenticated, InvalidArgument (a limit out of range, a malformed
        cursor id)."""
        request = build_request(
            route_pb2.ListConversationsRequest,
            "conversation list page",
            before_activity_ms=before_activity_ms,
            before_conversation_id=before_conversation_id,
            limit=limit,
        )
        return await self._call(
            "list conversations",
            lambda stub: stub.ListConversations(
                request, metadata=self._auth(), timeout=self._timeout
            ),
        )

    async def mark_read(self, conversation_id: str, position: int) -> route_pb2.MarkReadResponse:
        """Marks a conversation read up to ``position``. Raises
        Unauthenticated, InvalidArgument (a malformed id, position 0),
        PermissionDenied (not a member)."""
        request = build_request(
            route_pb2.MarkReadRequest,
            "read mark",
            conversation_id=conversation_id,
            position=position,
        )
        return await self._call(
            "mark read",
            lambda stub: stub.MarkRead(request, metadata=self._auth(), timeout=self._timeout),
        )

    async def read_receipts(
        self, conversation_id: str, cursor: int = 0, min_position: int = 0, limit: int = 0
    ) -> route_pb2.GetReadReceiptsResponse:
        """A page of who has read the conversation up to where. Raises
        Unauthenticated, InvalidArgument, PermissionDenied (not a member)."""
        request = build_request(
            route_pb2.GetReadReceiptsRequest,
            "read receipts request",
            conversation_id=conversation_id,
            cursor=cursor,
            min_position=min_position,
            limit=limit,
        )
        return await self._call(
            "read receipts",
            lambda stub: stub.GetReadReceipts(
                request, metadata=self._auth(), timeout=self._timeout
            ),
        )

    async def ack(self, seq: int) -> None:
        """Trims the caller's inbox up to ``seq`` (for clients without a stream).
        Raises Unauthenticated."""
        request = route_pb2.AckMessagesRequest(seq=seq)
        await self._call(
            "ack messages",
            lambda stub: stub.AckMessages(request, metadata=self._auth(), timeout=self._timeout),
        )

    # --- groups (cim.v1.Groups) ------------------------------------------------
    async def group_call(
        self,
        what: str,
        method: str,
        request: Message,
    ) -> Any:
        """One Groups RPC by name (``CreateGroup``...) with the caller's
        token. Raises Unauthenticated, InvalidArgument, PermissionDenied,
        NotFound, FailedPrecondition, ResourceExhausted as the RPC's comment
        in groups.proto says."""
        return await self._call_on(
            self._group_stubs,
            what,
            lambda stub: getattr(stub, method)(
                request, metadata=self._auth(), timeout=self._timeout
            ),
        )

    async def aclose(self) -> None:
        """Closes the channels: calls in flight raise Unavailable, later ones
        FailedPrecondition."""
        for channel in self._channels:
            await channel.close()
