"""The Route, RouteInternal and Admin gRPC servicers: authorization and
translation only; the work is in ``sessions``, ``messages`` and ``admin``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from cim import logcontext
from cim.config import RouteConfig
from cim.core import validation
from cim.core.ratelimit import Clock, KeyedLimiter, peer_host
from cim.core.tokens import TokenClaims
from cim.errors import CimError, to_item
from cim.grpcutil import SecretCheck, bearer_token, refuse_stream, unary_edge
from cim.metrics.route import RouteMetrics, result_label
from cim.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from cim.proto.internal.v1 import route_internal_pb2, route_internal_pb2_grpc
from cim.proto.v1 import common_pb2, route_pb2, route_pb2_grpc
from cim.route.admin import Administration, AdminKeys, UserView, user_ref
from cim.route.conversation_list import ConversationList
from cim.route.messages import MessageRouter, Outcome
from cim.route.sessions import SessionManager
from cim.route.typing_notes import TypingRouter
from cim.store.base import Account

Context: TypeAlias = grpc.aio.ServicerContext


class RouteLimits:
    """The rate limits of one route's client RPCs. Each route counts only what
    passes through it: a user whose calls spread over N routes may send up to
    N times the rate; clients behind one load balancer or NAT share an address."""

    def __init__(self, config: RouteConfig | None = None, clock: Clock = time.monotonic) -> None:
        msgs, msg_burst = (config.max_msgs_per_sec, config.msg_burst) if config else (0.0, 0)
        logins, login_burst = (
            (config.max_logins_per_sec, config.login_burst) if config else (0.0, 0)
        )
        self.messages: KeyedLimiter[int] = KeyedLimiter(msgs, msg_burst, clock=clock)
        self.logins: KeyedLimiter[str] = KeyedLimiter(logins, login_burst, clock=clock)

    def refusals(self) -> dict[str, int]:
        """Calls refused so far, by limit (what metrics report)."""
        return {"messages": self.messages.refused, "logins": self.logins.refused}

    def message(self, user_id: int) -> None:
        """Counts a send of the user; ResourceExhausted over the limit."""
        refusal = self.messages.refusal(user_id, "messages from this user")
        if refusal is not None:
            raise refusal

    def login(self, context: Context) -> None:
        """Counts a registration or login from the caller's address."""
        if not self.logins.enabled:
            return
        address = peer_host(context.peer() or "")
        refusal = self.logins.refusal(address, f"registrations and logins from {address}")
        if refusal is not None:
            raise refusal


class RouteService(route_pb2_grpc.RouteServicer):
    def __init__(
        self,
        sessions: SessionManager,
        router: MessageRouter,
        limits: RouteLimits | None = None,
        metrics: RouteMetrics | None = None,
        *,
        conversations: ConversationList,
    ) -> None:
        self._sessions = sessions
        self._router = router
        self._limits = limits or RouteLimits()
        metrics = metrics or RouteMetrics()
        self._registrations = metrics.registrations
        self._logins = metrics.logins
        self._conversations = conversations

    async def _caller(self, context: Context) -> TokenClaims:
        """Who calls: a valid token whose session still stands (not logged
        out, not replaced by a newer login); Unauthenticated otherwise. The
        rest of the call logs for that user (each call runs in a task of its
        own, so the binding ends with the call)."""
        claims = await self._sessions.authenticate(bearer_token(context))
        logcontext.user_id_var.set(claims.user_id)
        return claims

    @unary_edge
    async def Register(
        self, request: route_pb2.RegisterRequest, context: Context
    ) -> route_pb2.RegisterResponse:
        try:
            self._limits.login(context)
            account, created = await self._sessions.register(request.user_name, request.password)
        except CimError as exc:
            self._registrations.labels(result=result_label(exc)).inc()
            raise
        self._registrations.labels(result="created" if created else "existing").inc()
        return route_pb2.RegisterResponse(
            user_id=account.user_id, user_name=account.user_name, created=created
        )

    @unary_edge
    async def Login(
        self, request: route_pb2.LoginRequest, context: Context
    ) -> route_pb2.LoginResponse:
        try:
            self._limits.login(context)
            result = await self._sessions.login(
                request.user_name,
                request.password,
                request.user_id,
                request.device_id,
                request.resume_token,
            )
        except CimError as exc:
            self._logins.labels(result=result_label(exc)).inc()
            raise
        self._logins.labels(result="ok").inc()
        return route_pb2.LoginResponse(
            user_id=result.account.user_id,
            user_name=result.account.user_name,
            server=route_pb2.ServerAddress(
                server_id=result.server.member_id, address=result.server.address
            ),
            session_token=result.token,
            token_expires_ms=result.expires_ms,
            session_id=result.session_id,
        )

    @unary_edge
    async def Logout(
        self, request: route_pb2.LogoutRequest, context: Context
    ) -> route_pb2.LogoutResponse:
        # Signature and expiry only: logging out an ended session again is a
        # no-op, so a retried logout (its reply lost) succeeds.
        claims = self._sessions.verify(bearer_token(context))
        logcontext.user_id_var.set(claims.user_id)
        await self._sessions.logout(claims)
        return route_pb2.LogoutResponse()

    @unary_edge
    async def ListOnlineUsers(
        self, request: route_pb2.ListOnlineUsersRequest, context: Context
    ) -> route_pb2.ListOnlineUsersResponse:
        await self._caller(context)
        accounts, truncated = await self._sessions.online_users(request.name_prefix)
        return route_pb2.ListOnlineUsersResponse(
            users=[common_pb2.UserInfo(user_id=a.user_id, user_name=a.user_name) for a in accounts],
            truncated=truncated,
        )

    @unary_edge
    async def SendPrivate(
        self, request: common_pb2.SendPrivateRequest, context: Context
    ) -> common_pb2.SendResponse:
        caller = await self._caller(context)
        self._limits.message(caller.user_id)
        return await self._router.send_private(caller.user_id, caller.user_name, request)

    @unary_edge
    async def SendGroup(
        self, request: common_pb2.SendGroupRequest, context: Context
    ) -> common_pb2.SendResponse:
        caller = await self._caller(context)
        self._limits.message(caller.user_id)
        return await self._router.send_group(caller.user_id, caller.user_name, request)

    @unary_edge
    async def FetchOffline(
        self, request: route_pb2.FetchOfflineRequest, context: Context
    ) -> route_pb2.FetchOfflineResponse:
        caller = await self._caller(context)
        messages, page = await self._router.read_inbox(
            caller.user_id, request.after_seq, request.limit
        )
        return route_pb2.FetchOfflineResponse(
            messages=messages,
            more=page.more,
            dropped_through_seq=page.dropped_through,
            head_seq=page.head_seq,
        )

    @unary_edge
    async def History(
        self, request: route_pb2.HistoryRequest, context: Context
    ) -> route_pb2.HistoryResponse:
        caller = await self._caller(context)
        messages, page = await self._router.history(
            caller.user_id, request.conversation_id, request.before_position, request.limit
        )
        return route_pb2.HistoryResponse(
            messages=messages,
            more=page.more,
            head_position=page.head,
            dropped_through_position=page.dropped_through,
        )

    @unary_edge
    async def AckMessages(
        self, request: route_pb2.AckMessagesRequest, context: Context
    ) -> route_pb2.AckMessagesResponse:
        caller = await self._caller(context)
        await self._router.ack([(caller.user_id, request.seq)])
        return route_pb2.AckMessagesResponse()

    @unary_edge
    async def ListConversations(
        self, request: route_pb2.ListConversationsRequest, context: Context
    ) -> route_pb2.ListConversationsResponse:
        caller = await self._caller(context)
        return await self._conversations.page(
            caller.user_id,
            request.before_activity_ms,
            request.before_conversation_id,
            request.limit,
        )

    @unary_edge
    async def MarkRead(
        self, request: route_pb2.MarkReadRequest, context: Context
    ) -> route_pb2.MarkReadResponse:
        caller = await self._caller(context)
        return await self._conversations.mark(
            caller.user_id, request.conversation_id, request.position
        )

    @unary_edge
    async def GetReadReceipts(
        self, request: route_pb2.GetReadReceiptsRequest, context: Context
    ) -> route_pb2.GetReadReceiptsResponse:
        caller = await self._caller(context)
        return await self._conversations.receipts(
            caller.user_id,
            request.conversation_id,
            request.cursor,
            request.min_position,
            request.limit,
        )


def submit_result(outcome: Outcome) -> route_internal_pb2.SubmitResult:
    """One send's result in a SubmitBatchResponse: its response or its error."""
    if isinstance(outcome, CimError):
        return route_internal_pb2.SubmitResult(error=to_item(outcome))
    return route_internal_pb2.SubmitResult(ok=outcome)


class RouteInternalService(route_internal_pb2_grpc.RouteInternalServicer):
    def __init__(
        self,
        sessions: SessionManager,
        router: MessageRouter,
        secret: SecretCheck,
        typing: TypingRouter,
        *,
        conversations: ConversationList,
    ) -> None:
        self._sessions = sessions
        self._router = router
        self._secret = secret
        self._typing = typing
        self._conversations = conversations

    async def SubmitStream(
        self,
        request_iterator: AsyncIterator[route_internal_pb2.SubmitBatchRequest],
        context: Context,
    ) -> AsyncIterator[route_internal_pb2.SubmitBatchResponse]:
        try:
            self._secret.require(context)
        except CimError as exc:
            await refuse_stream(context, request_iterator, exc)
            return
        async for request in request_iterator:  # in order: each sender's order holds
            outcomes = await self._router.submit_batch(request.messages)
            yield route_internal_pb2.SubmitBatchResponse(
                results=[submit_result(outcome) for outcome in outcomes]
            )

    @unary_edge
    async def SessionConnected(
        self, request: route_internal_pb2.SessionConnectedRequest, context: Context
    ) -> route_internal_pb2.SessionConnectedResponse:
        self._secret.require(context)
        logcontext.user_id_var.set(request.user_id)
        claims, _ = await self._sessions.connected(
            request.server_id, request.user_id, request.session_token
        )
        # The client holds everything up to last_seq: that is an ack. The
        # server replays the rest (Replay) once this answer is back.
        await self._router.ack([(claims.user_id, request.last_seq)])
        return route_internal_pb2.SessionConnectedResponse(
            user_id=claims.user_id,
            user_name=claims.user_name,
            session_id=claims.session_id,
            session_ttl_ms=self._sessions.session_ttl_ms,
        )

    @unary_edge
    async def SessionDisconnected(
        self, request: route_internal_pb2.SessionDisconnectedRequest, context: Context
    ) -> route_internal_pb2.SessionDisconnectedResponse:
        self._secret.require(context)
        logcontext.user_id_var.set(request.user_id)
        cleared = await self._sessions.disconnected(
            request.server_id, request.user_id, request.session_id
        )
        return route_internal_pb2.SessionDisconnectedResponse(cleared=cleared)

    @unary_edge
    async def RefreshSessions(
        self, request: route_internal_pb2.RefreshSessionsRequest, context: Context
    ) -> route_internal_pb2.RefreshSessionsResponse:
        self._secret.require(context)
        refs = list(request.sessions)
        valid = await self._sessions.refresh([(ref.user_id, ref.session_id) for ref in refs])
        return route_internal_pb2.RefreshSessionsResponse(
            invalid=[ref for ref, ok in zip(refs, valid, strict=True) if not ok],
            session_ttl_ms=self._sessions.session_ttl_ms,
        )

    @unary_edge
    async def Replay(
        self, request: route_internal_pb2.ReplayRequest, context: Context
    ) -> route_internal_pb2.ReplayResponse:
        self._secret.require(context)
        user_id = validation.check_user_id(request.user_id)
        logcontext.user_id_var.set(user_id)
        messages, page = await self._router.read_inbox(user_id, request.after_seq, request.limit)
        return route_internal_pb2.ReplayResponse(
            messages=messages,
            more=page.more,
            head_seq=page.head_seq,
            dropped_through_seq=page.dropped_through,
        )

    @unary_edge
    async def Ack(
        self, request: route_internal_pb2.AckRequest, context: Context
    ) -> route_internal_pb2.AckResponse:
        self._secret.require(context)
        acks = [(validation.check_user_id(ack.user_id), ack.seq) for ack in request.acks]
        await self._router.ack(acks)
        return route_internal_pb2.AckResponse()

    @unary_edge
    async def Typing(
        self, request: route_internal_pb2.TypingRequest, context: Context
    ) -> route_internal_pb2.TypingResponse:
        self._secret.require(context)
        refusals = await self._typing.forward(request.notes)
        return route_internal_pb2.TypingResponse(
            results=[
                route_internal_pb2.TypingResult(refused=to_item(refusal))
                if refusal is not None
                else route_internal_pb2.TypingResult()
                for refusal in refusals
            ]
        )

    @unary_edge
    async def MarkRead(
        self, request: route_internal_pb2.MarkReadBatchRequest, context: Context
    ) -> route_internal_pb2.MarkReadBatchResponse:
        self._secret.require(context)
        reads = [
            (validation.check_user_id(read.user_id), read.conversation_id, read.position)
            for read in request.reads
        ]
        await self._conversations.mark_batch(reads)
        return route_internal_pb2.MarkReadBatchResponse()


# --- Admin --------------------------------------------------------------------------

SESSION_STATES = {
    False: admin_pb2.SESSION_STATE_PENDING,
    True: admin_pb2.SESSION_STATE_CONNECTED,
}


def admin_account(account: Account) -> admin_pb2.Account:
    return admin_pb2.Account(
        user_id=account.user_id,
        user_name=account.user_name,
        disabled=account.disabled,
        disabled_reason=account.disabled_reason,
    )


def user_reply(view: UserView) -> admin_pb2.GetUserResponse:
    return admin_pb2.GetUserResponse(
        account=admin_account(view.account),
        sessions=[
            admin_pb2.Session(
                session_id=session.record.session_id,
                device_id=session.record.device_id,
                server_id=session.record.server_id,
                server_address=session.server_address,
                state=SESSION_STATES[session.record.connected],
            )
            for session in view.sessions
        ],
    )


class AdminService(admin_pb2_grpc.AdminServicer):
    """Every call checks the admin key first (``AdminKeys.require``)."""

    def __init__(self, keys: AdminKeys, admin: Administration) -> None:
        self._keys = keys
        self._admin = admin

    @unary_edge
    async def GetUser(
        self, request: admin_pb2.GetUserRequest, context: Context
    ) -> admin_pb2.GetUserResponse:
        key_id = self._keys.require(context)
        return user_reply(await self._admin.user(key_id, user_ref(request)))

    @unary_edge
    async def KickUser(
        self, request: admin_pb2.KickUserRequest, context: Context
    ) -> admin_pb2.KickUserResponse:
        key_id = self._keys.require(context)
        ended = await self._admin.kick(key_id, user_ref(request), request.device_id, request.reason)
        return admin_pb2.KickUserResponse(sessions_ended=ended)

    @unary_edge
    async def DisableUser(
        self, request: admin_pb2.DisableUserRequest, context: Context
    ) -> admin_pb2.DisableUserResponse:
        key_id = self._keys.require(context)
        account, changed, ended = await self._admin.disable(
            key_id, user_ref(request), request.reason
        )
        return admin_pb2.DisableUserResponse(
            account=admin_account(account), changed=changed, sessions_ended=ended
        )

    @unary_edge
    async def EnableUser(
        self, request: admin_pb2.EnableUserRequest, context: Context
    ) -> admin_pb2.EnableUserResponse:
        key_id = self._keys.require(context)
        account, changed = await self._admin.enable(key_id, user_ref(request))
        return admin_pb2.EnableUserResponse(account=admin_account(account), changed=changed)

    @unary_edge
    async def SendNotice(
        self, request: admin_pb2.SendNoticeRequest, context: Context
    ) -> admin_pb2.SendNoticeResponse:
        key_id = self._keys.require(context)
        account, result = await self._admin.notice(
            key_id, user_ref(request), request.text, request.client_msg_id
        )
        return admin_pb2.SendNoticeResponse(
            user_id=account.user_id,
            message_id=result.message_id,
            status=result.status,
            server_time_ms=result.server_time_ms,
        )

    @unary_edge
    async def BroadcastNotice(
        self, request: admin_pb2.BroadcastNoticeRequest, context: Context
    ) -> admin_pb2.BroadcastNoticeResponse:
        key_id = self._keys.require(context)
        message, recipients = await self._admin.broadcast(key_id, request.text)
        return admin_pb2.BroadcastNoticeResponse(
            message_id=message.message_id,
            recipients=recipients,
            server_time_ms=message.server_time_ms,
        )
