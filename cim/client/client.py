"""The async client library: what the console, bots and UIs use.

Theory of operation: ``start()`` registers (if needed), logs in at a route and
opens one Chat stream to the chat server the route picked. Sends go over that
stream; each gets its result back on it, matched by a correlation id. Pushed
messages go to ``messages()`` and to the ``on_message`` callback. If the stream
breaks (server gone, network, idle eviction, drain), the client logs in again
through a route after a jittered back-off, up to a retry limit, and carries
on; a stream taken over by another login is not reconnected.

Delivery: every pushed message carries its seq in the user's own sequence
(but a system notice to everyone online: seq 0, shown as it comes).
The client releases each seq once and in order (a duplicate from a replay or
a retried send is dropped; a seq past a gap waits for the gap, and a gap
that lasts asks the server for a replay), acks what it has released, and
presents the last one at each login, so the server replays exactly what
it missed. With a file cursor that survives restarts too.

Sending: sends to one conversation (a receiver, a group) go one at a time,
each retried with the same client_msg_id until it has a result, so a
sender's messages reach each receiver once and in the order they were sent.

Typing notes (``typing()``) are ephemeral: written once if the stream is up,
never retried, at most one per conversation per 3 s; those of others go to
the ``on_typing`` callback, and a note the server refused comes back as a
REFUSED event (the stream goes on).

Errors: public methods raise ``cim.errors`` classes only (each docstring says
which); grpc's exceptions are mapped at one seam (``cim.client.route``), so
``_Connection`` raises CimError for whatever breaks the stream (the class of
its status; Unavailable for a write on a call that has ended or a call
cancelled under it). Past the login, any of it is one thing, a lost stream:
the client reconnects and a send retries with the same client_msg_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import grpc
from google.protobuf.message import Message

from cim.client.cursor import MemoryCursor, SeqCursor
from cim.client.route import RouteClient, build_request, map_grpc_errors
from cim.config import ClientConfig
from cim.core import conversations
from cim.core.liveness import HeartbeatPolicy
from cim.core.sequence import SequenceTracker
from cim.core.typing_notes import TypingThrottle
from cim.errors import (
    CimError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    error_for_number,
    from_item,
)
from cim.proto.v1 import chat_pb2, chat_pb2_grpc, common_pb2, groups_pb2, route_pb2
from cim.tls import Tls, open_channel
from cim.tls import load as load_tls

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    KICKED = "kicked"
    GAVE_UP = "gave_up"
    # Messages were dropped by the server's retention before we fetched them.
    BEHIND = "behind"
    # The server refused a frame that has no reply of its own (a typing note).
    REFUSED = "refused"


@dataclass(frozen=True)
class ClientEvent:
    kind: EventKind
    text: str


# Pause before a send is retried (same client_msg_id) after a lost stream.
SEND_RETRY_PAUSE = 0.1
# How often acks go out (one cumulative ack for everything released since).
ACK_INTERVAL = 1.0
# A gap in the seqs that lasts this long asks the server for a replay.
GAP_WAIT = 1.0
# The membership changes of CimClient.change_group: RPC name -> request type.
GROUP_CHANGES: dict[str, type[Message]] = {
    "AddMembers": groups_pb2.AddMembersRequest,
    "RemoveMembers": groups_pb2.RemoveMembersRequest,
    "LeaveGroup": groups_pb2.LeaveGroupRequest,
    "SetAdmin": groups_pb2.SetAdminRequest,
    "TransferOwnership": groups_pb2.TransferOwnershipRequest,
    "RenameGroup": groups_pb2.RenameGroupRequest,
    "DeleteGroup": groups_pb2.DeleteGroupRequest,
}

MessageCallback = Callable[[common_pb2.ChatMessage], None]
EventCallback = Callable[[ClientEvent], None]
TypingCallback = Callable[[chat_pb2.Typing], None]
ReceiptCallback = Callable[[chat_pb2.ReadReceipt], None]


class _Connection:
    """One Chat stream and its channel. Reads and writes raise CimError (its
    message says why) for anything that breaks the stream."""

    def __init__(
        self,
        address: str,
        channel: grpc.aio.Channel,
        call: grpc.aio.StreamStreamCall[chat_pb2.ClientFrame, chat_pb2.ServerFrame],
    ) -> None:
        self.address = address
        self.channel = channel
        self.call = call
        self.write_lock = asyncio.Lock()
        self.last_sent = self.last_heard = time.monotonic()

    @classmethod
    def open(cls, address: str, tls: Tls | None = None) -> _Connection:
        channel = open_channel(address, tls)
        return cls(address, channel, chat_pb2_grpc.ChatStub(channel).Connect())

    async def write(self, frame: chat_pb2.ClientFrame) -> None:
        async with self.write_lock:
            # The stream may have ended while this write waited for the lock:
            # grpc then raises InvalidStateError, mapped like any lost stream.
            with map_grpc_errors():
                await self.call.write(frame)
            self.last_sent = time.monotonic()

    async def read(self) -> chat_pb2.ServerFrame | None:
        """The next frame; None when the server ended the stream."""
        with map_grpc_errors():
            frame = await self.call.read()
        if frame is grpc.aio.EOF:
            return None
        if not isinstance(frame, chat_pb2.ServerFrame):  # None: grpc logged a DecodeError
            raise Internal("the chat server sent a frame that does not decode")
        return frame

    async def done_writing(self) -> None:
        with map_grpc_errors():
            await self.call.done_writing()

    async def aclose(self) -> None:
        self.call.cancel()
        await self.channel.close()


class CimClient:
    def __init__(
        self,
        user_name: str,
        password: str,
        config: ClientConfig | None = None,
        *,
        on_message: MessageCallback | None = None,
        on_event: EventCallback | None = None,
        on_typing: TypingCallback | None = None,
        rng: random.Random | None = None,
        cursor: SeqCursor | None = None,
        on_receipt: ReceiptCallback | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        self.user_name = user_name
        self._password = password
        self._tls = load_tls(self.config.tls)
        self.route = RouteClient(self.config.routes, self.config.rpc_timeout, self._tls)
        self.on_message = on_message
        self.on_event = on_event
        # Others' typing notes, as they come (none are stored: only while connected).
        self.on_typing = on_typing
        # Our own notes: no more than the chat server forwards.
        self._typing_sent: TypingThrottle[str] = TypingThrottle()
        # Read receipts pushed by the other user of a private conversation.
        self.on_receipt = on_receipt
        self._rng = rng or random.Random()
        self.user_id = 0
        self.server: route_pb2.ServerAddress | None = None
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        # Set once the stream's replay of stored messages is done: what
        # follows is live (cleared at every new stream).
        self._live = asyncio.Event()
        self._closing = False
        self._gave_up = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnector: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[common_pb2.SendResponse]] = {}
        self._correlation = itertools.count(1)
        self._inbox: asyncio.Queue[common_pb2.ChatMessage | None] = asyncio.Queue()
        self._cursor = cursor or MemoryCursor()
        self._cursor_failing = False
        self.sequence: SequenceTracker[common_pb2.ChatMessage] = SequenceTracker(
            self._cursor.load()
        )
        self._acked = self.sequence.through
        # Read marks not yet sent: conversation id -> the highest position.
        self._unsent_reads: dict[str, int] = {}
        self._gap_since: float | None = None
        self._synced_at = 0.0
        # One send at a time per conversation keeps each sender's order.
        self._conversations: dict[tuple[str, object], asyncio.Lock] = {}
        self._heartbeat = HeartbeatPolicy(
            ping_interval=self.config.ping_interval, idle_timeout=self.config.ping_interval * 3
        )

    # --- lifecycle ----------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_live(self, timeout: float | None = None) -> None:
        """Waits until the stream has replayed every stored message (they are
        in ``messages()`` by then) and what follows is pushed live. Raises
        DeadlineExceeded after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._live.wait()
        except TimeoutError:
            raise DeadlineExceeded(f"the stream did not go live within {timeout} s") from None

    async def register(self) -> bool:
        """Creates the account (or confirms it exists with this password);
        True if it was created.

        Raises InvalidArgument (a name or password the rules refuse),
        AlreadyExists (the name is taken, with another password),
        ResourceExhausted (too many registrations from this address),
        Unavailable (no route answers), DeadlineExceeded (no answer in time),
        FailedPrecondition (the client is closed).
        """
        reply = await self.route.register(self.user_name, self._password)
        self.user_id = reply.user_id
        return reply.created

    async def login(self, *, resume: bool = False) -> route_pb2.LoginResponse:
        """Logs in with the password; with ``resume``, first with the token of
        the session being replaced (no password hashing at the route), falling
        back to the password when that session is over.

        Raises NotFound (no such user), PermissionDenied (bad credentials),
        AlreadyExists (logged in from another client, or another login in
        progress), ResourceExhausted (too many logins from this address),
        InvalidArgument, Unavailable (no route answers, or no chat server is
        up), DeadlineExceeded, FailedPrecondition (the client is closed).
        """
        reply: route_pb2.LoginResponse | None = None
        if resume and self.route.token:
            try:
                reply = await self.route.login(
                    self.user_name, "", self.user_id, self.config.device_id, self.route.token
                )
            except (Unauthenticated, PermissionDenied):
                reply = None
        if reply is None:
            reply = await self.route.login(
                self.user_name, self._password, self.user_id, self.config.device_id
            )
        self.user_id = reply.user_id
        self.server = reply.server
        return reply

    async def start(self, *, register: bool = True) -> None:
        """Register (optional), log in and connect: ready to chat when it returns.

        Raises what :meth:`register`, :meth:`login` and :meth:`connect` raise.
        """
        if register:
            await self.register()
        await self.login()
        await self.connect()

    async def connect(self) -> None:
        """Opens the Chat stream to the server of the last login.

        Raises FailedPrecondition (not logged in), Unavailable (the chat
        server cannot be reached, does not answer within ``rpc_timeout``, or
        ends the stream), Internal (it answers with something that does not
        decode), or the error its refusal names (in a notice or as the
        stream's status): Unauthenticated (the session is over), AlreadyExists
        (another stream holds the session), Unavailable (the server is draining).
        """
        if self.server is None or not self.route.token:
            raise FailedPrecondition("log in before connecting")
        conn = _Connection.open(self.server.address, self._tls)
        try:
            ok = await self._log_in_on(conn)
        except BaseException:
            await conn.aclose()
            raise
        if ok.heartbeat_interval_ms > 0:
            interval = min(self.config.ping_interval, ok.heartbeat_interval_ms / 1000)
            self._heartbeat = HeartbeatPolicy(
                interval, max(ok.idle_timeout_ms / 1000, interval * 2)
            )
        self._conn = conn
        self._live.clear()
        self._connected.set()
        self._spawn(self._read(conn))
        self._spawn(self._keep_alive(conn))
        self._spawn(self._ack_and_sync(conn))
        self._event(EventKind.CONNECTED, f"connected to {ok.server_id} ({conn.address})")

    async def _log_in_on(self, conn: _Connection) -> chat_pb2.LoginOk:
        login = chat_pb2.LoginFrame(
            user_id=self.user_id,
            session_token=self.route.token,
            device_id=self.config.device_id,
            last_seq=self.sequence.through,
        )
        try:
            # The login write too: a fresh call's first write waits for the
            # connection, and grpc may never wake a write whose call is cancelled.
            async with asyncio.timeout(self.config.rpc_timeout):
                await conn.write(chat_pb2.ClientFrame(login=login))
                first = await conn.read()
        except TimeoutError:
            raise Unavailable(
                f"chat server {conn.address} unreachable: "
                f"no answer within {self.config.rpc_timeout:g} s"
            ) from None
        except CimError as exc:
            if type(exc) in (CimError, Unavailable):  # broken (CANCELLED, UNKNOWN, ...) or down
                raise Unavailable(f"chat server {conn.address} unreachable: {exc.message}") from exc
            raise  # the server's verdict on the login, said as a status
        if first is None:
            raise Unavailable("chat server closed the stream during login")
        if first.WhichOneof("frame") == "notice":
            raise error_for_number(first.notice.code, first.notice.text)
        if first.WhichOneof("frame") != "login_ok":
            raise Unavailable("chat server closed the stream during login")
        return first.login_ok

    async def close(self) -> None:
        """Logs out at the route and closes the stream. Raises nothing: a
        route that cannot be reached for the logout is skipped, and sends
        still waiting fail with Unavailable."""
        if self._closing:
            return
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
        if self.route.token:
            with contextlib.suppress(CimError):
                if self.sequence.through > self._acked:
                    # Directly, not on the stream: the inbox is trimmed before
                    # the session ends, so the next login replays none of it.
                    await self.route.ack(self.sequence.through)
                    self._acked = self.sequence.through
                await self._send_reads_directly()
                await self.route.logout()
        conn, self._conn = self._conn, None
        self._connected.clear()
        self._live.clear()
        if conn is not None:
            with contextlib.suppress(CimError):
                await conn.done_writing()
            await conn.aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_pending(Unavailable("client closed"))
        self._inbox.put_nowait(None)
        self._save_cursor()
        await self.route.aclose()

    async def __aenter__(self) -> CimClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- chatting -----------------------------------------------------------
    async def send_private(
        self, receiver_id: int, text: str, client_msg_id: str = ""
    ) -> common_pb2.SendResponse:
        """Sends over the stream; returns the message id and whether it was
        delivered or stored for an offline receiver. A lost stream is retried
        (same client_msg_id, so at most one delivery) until ``rpc_timeout``.

        Raises InvalidArgument (empty or oversized text, a receiver id out of
        range), NotFound (no such receiver), ResourceExhausted (over the
        sender's message rate), Unavailable (no stream, or no result, within
        ``rpc_timeout``: the message may or may not be sent; the client closed
        meanwhile), FailedPrecondition (the client is closed or gave up).
        """
        request = build_request(
            common_pb2.SendPrivateRequest,
            "message",
            receiver_id=receiver_id,
            text=text,
            client_msg_id=client_msg_id,
        )
        return await self._send(chat_pb2.SendFrame(private=request))

    async def send_group(
        self, text: str, client_msg_id: str = "", group_id: str = ""
    ) -> common_pb2.SendResponse:
        """Sends to a group with members (``group_id`` "g:<n>") or, without
        one, to every user online (CIM's broadcast), as :meth:`send_private`
        does (same errors, but for NotFound; PermissionDenied when the caller
        is not a member of the group, FailedPrecondition when it was deleted)."""
        request = build_request(
            common_pb2.SendGroupRequest,
            "message",
            text=text,
            client_msg_id=client_msg_id,
            group_id=group_id,
        )
        return await self._send(chat_pb2.SendFrame(group=request))

    # --- groups with members (cim.v1.Groups) --------------------------------
    # Each raises what its RPC's comment in groups.proto says, and what every
    # route call raises (Unauthenticated, Unavailable, DeadlineExceeded).
    async def create_group(
        self, name: str, member_ids: Sequence[int] = ()
    ) -> groups_pb2.GroupChangeResponse:
        """A new group owned by this user, with ``member_ids``."""
        request = build_request(
            groups_pb2.CreateGroupRequest, "group", name=name, member_ids=list(member_ids)
        )
        reply: groups_pb2.GroupChangeResponse = await self.route.group_call(
            "create group", "CreateGroup", request
        )
        return reply

    async def change_group(self, method: str, **fields: object) -> groups_pb2.GroupChangeResponse:
        """One membership change by its RPC's name: ``AddMembers`` (group_id,
        user_ids), ``RemoveMembers`` (group_id, user_ids), ``LeaveGroup``,
        ``SetAdmin`` (group_id, user_id, admin), ``TransferOwnership``
        (group_id, user_id), ``RenameGroup`` (group_id, name), ``DeleteGroup``."""
        if method not in GROUP_CHANGES:
            raise ValueError(f"not a group change: {method!r}")
        request = build_request(GROUP_CHANGES[method], "group change", **fields)
        reply: groups_pb2.GroupChangeResponse = await self.route.group_call(
            "change group", method, request
        )
        return reply

    async def group_members(
        self, group_id: str, after_user_id: int = 0, limit: int = 0
    ) -> groups_pb2.ListMembersResponse:
        """A page of the group's members (members only)."""
        request = build_request(
            groups_pb2.ListMembersRequest,
            "group",
            group_id=group_id,
            after_user_id=after_user_id,
            limit=limit,
        )
        reply: groups_pb2.ListMembersResponse = await self.route.group_call(
            "list members", "ListMembers", request
        )
        return reply

    async def my_groups(
        self, after_number: int = 0, limit: int = 0
    ) -> groups_pb2.ListMyGroupsResponse:
        """A page of this user's groups."""
        request = groups_pb2.ListMyGroupsRequest(after_number=after_number, limit=limit)
        reply: groups_pb2.ListMyGroupsResponse = await self.route.group_call(
            "list groups", "ListMyGroups", request
        )
        return reply

    async def list_online(self, name_prefix: str = "") -> list[common_pb2.UserInfo]:
        """Users online whose name starts with ``name_prefix``.

        Raises Unauthenticated (not logged in, or the session is over),
        InvalidArgument, Unavailable (no route answers, or the client closed
        during the call), DeadlineExceeded, FailedPrecondition (the client is
        closed).
        """
        return await self.route.list_online(name_prefix)

    async def fetch_offline(
        self, limit: int = 0, after_seq: int = 0
    ) -> route_pb2.FetchOfflineResponse:
        """Reads the inbox without a stream (a connected client gets it replayed).

        Raises Unauthenticated, InvalidArgument (``limit`` past the page
        size), Unavailable, DeadlineExceeded, FailedPrecondition (the client
        is closed).
        """
        return await self.route.fetch_offline(limit, after_seq)

    async def history(
        self, conversation_id: str, before_position: int = 0, limit: int = 0
    ) -> route_pb2.HistoryResponse:
        """A page of a conversation's history, newest first, each message with
        its position: those before ``before_position`` (0: from the newest),
        at most ``limit`` (0: 50; at most 100). Page back by passing the last
        message's position; ``more`` says whether older ones are left. The id
        of the private conversation with a user is
        ``cim.core.conversations.private_id(me, them)``, a group's is its id
        ``g:<n>`` (every message carries its ``conversation_id``). A group's
        history holds its membership events too; a member it removed (or who
        left) reads up to their removal.

        Raises Unauthenticated, InvalidArgument (a malformed id, a limit out
        of range), PermissionDenied (not one of its members, or a group that
        does not exist), Unavailable, DeadlineExceeded, FailedPrecondition
        (the client is closed).
        """
        return await self.route.history(conversation_id, before_position, limit)

    async def typing(self, conversation_id: str, *, stopped: bool = False) -> bool:
        """Tells the other participants of a conversation who are online that
        this user is typing there (``stopped``: stopped without sending).
        Call it as often as the user types: one note per conversation per
        3 s goes out (what the chat server forwards), a stop only after a
        note; a message sent there ends the note by itself. The id of the
        private conversation with a user is
        ``cim.core.conversations.private_id(me, them)``.

        True when a note was written; False when none was due, or the stream
        is down (a note is not worth a retry). Raises InvalidArgument (a
        malformed id), PermissionDenied (a private conversation that is not
        this user's), FailedPrecondition (the client is closed). What the
        server refuses later (too many notes, a group one is not a member
        of) comes as a REFUSED event.
        """
        if self._closing or self._gave_up:
            raise FailedPrecondition("client is closed")
        conversation = conversations.parse(conversation_id)
        if conversation.private:
            conversations.peer(conversation, self.user_id)
        conn = self._conn
        if conn is None or not self._connected.is_set():
            return False
        if not self._typing_sent.allow(conversation_id, stopped):
            return False
        frame = chat_pb2.TypingFrame(conversation_id=conversation_id, stopped=stopped)
        try:
            await conn.write(chat_pb2.ClientFrame(typing=frame))
        except CimError:
            return False  # the reader notices the broken stream
        return True

    # --- conversation list, read cursors, receipts ----------------------------
    async def list_conversations(
        self, before_activity_ms: int = 0, before_conversation_id: str = "", limit: int = 0
    ) -> route_pb2.ListConversationsResponse:
        """A page of this user's conversations, most recent activity first
        (0: 20 lines; at most 100), each with its title, last message, unread
        count and (private) how far the other user has read. Page on with
        the last line's ``last_activity_ms`` and ``conversation_id``.

        Raises Unauthenticated, InvalidArgument (a limit out of range),
        Unavailable, DeadlineExceeded, FailedPrecondition (the client is
        closed).
        """
        return await self.route.list_conversations(
            before_activity_ms, before_conversation_id, limit
        )

    def mark_read(self, conversation_id: str, position: int) -> None:
        """Marks a conversation read up to ``position`` (a message's
        ``position``), on the stream: marks are gathered and sent with the
        next ack (at most a second later; the highest per conversation
        counts), across reconnects. The other user of a private conversation
        sees a read receipt.

        Raises InvalidArgument (a malformed conversation id, position 0) and
        PermissionDenied (a private conversation this user is not in) at
        once: such a frame would end the stream. A group this user is not a
        member of is ignored by the route (use :meth:`mark_read_now` to be told).
        """
        conversation = conversations.parse(conversation_id)
        if position <= 0:
            raise InvalidArgument(f"position must be at least 1 (got {position})")
        if conversation.private and self.user_id:
            conversations.peer(conversation, self.user_id)
        if position > self._unsent_reads.get(conversation.cid, 0):
            self._unsent_reads[conversation.cid] = position

    async def _send_reads_directly(self) -> None:
        """At close: the marks the stream did not carry yet, as unary calls
        (one a conversation; a refused one is dropped)."""
        reads, self._unsent_reads = self._unsent_reads, {}
        for cid, position in reads.items():
            with contextlib.suppress(InvalidArgument, PermissionDenied):
                await self.route.mark_read(cid, position)

    async def mark_read_now(
        self, conversation_id: str, position: int
    ) -> route_pb2.MarkReadResponse:
        """Marks a conversation read up to ``position`` with a unary call
        (no stream needed); the reply has the read cursor after it and the
        unread count.

        Raises Unauthenticated, InvalidArgument (a malformed id, position 0),
        PermissionDenied (not a member), Unavailable, DeadlineExceeded,
        FailedPrecondition (the client is closed).
        """
        return await self.route.mark_read(conversation_id, position)

    async def read_receipts(
        self, conversation_id: str, cursor: int = 0, min_position: int = 0, limit: int = 0
    ) -> route_pb2.GetReadReceiptsResponse:
        """A page of who has read the conversation up to where (members
        only): readers at or past ``min_position``; pass ``next_cursor``
        back for the next page (0: done).

        Raises Unauthenticated, InvalidArgument, PermissionDenied (not a
        member), Unavailable, DeadlineExceeded, FailedPrecondition.
        """
        return await self.route.read_receipts(conversation_id, cursor, min_position, limit)

    async def messages(self) -> AsyncIterator[common_pb2.ChatMessage]:
        """Pushed messages in arrival order; ends when the client closes or
        gives up. Raises nothing."""
        while (message := await self._inbox.get()) is not None:
            yield message

    async def _send(self, frame: chat_pb2.SendFrame) -> common_pb2.SendResponse:
        """Sends, retrying with the same client_msg_id while the stream is
        down or the result is lost: the route answers a retry with the first
        attempt's result, so a message is never delivered twice."""
        if self._closing or self._gave_up:
            raise FailedPrecondition("client is closed")
        conversation: tuple[str, object]
        if frame.WhichOneof("target") == "private":
            request: common_pb2.SendPrivateRequest | common_pb2.SendGroupRequest = frame.private
            conversation = ("private", frame.private.receiver_id)
            # The message ends a typing note there: the next one goes out at once.
            if len(self._typing_sent) and self.user_id > 0 and frame.private.receiver_id > 0:
                self._typing_sent.reset(
                    conversations.private_id(self.user_id, frame.private.receiver_id)
                )
        else:
            request = frame.group
            conversation = ("group", frame.group.group_id)
            if len(self._typing_sent):
                self._typing_sent.reset(frame.group.group_id)
        if not request.client_msg_id:
            request.client_msg_id = uuid.uuid4().hex
        lock = self._conversations.setdefault(conversation, asyncio.Lock())
        try:
            async with lock:
                return await self._send_retrying(frame)
        finally:
            if not lock.locked():
                self._conversations.pop(conversation, None)

    async def _send_retrying(self, frame: chat_pb2.SendFrame) -> common_pb2.SendResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.rpc_timeout
        while True:
            try:
                return await self._send_once(frame, deadline - loop.time())
            except Unavailable:
                if self._closing or self._gave_up or deadline - loop.time() < SEND_RETRY_PAUSE:
                    raise
            await asyncio.sleep(SEND_RETRY_PAUSE)

    async def _send_once(
        self, frame: chat_pb2.SendFrame, timeout: float
    ) -> common_pb2.SendResponse:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise Unavailable("not connected to a chat server") from None
        conn = self._conn
        if conn is None:
            raise Unavailable("not connected to a chat server")
        frame.correlation_id = next(self._correlation)
        future: asyncio.Future[common_pb2.SendResponse] = asyncio.get_running_loop().create_future()
        # Registered before the write: the result can be read before the write returns.
        self._pending[frame.correlation_id] = future
        try:
            try:
                await conn.write(chat_pb2.ClientFrame(send=frame))
            except CimError as exc:  # whatever its status said, the stream is lost: retry
                raise Unavailable(f"connection lost while sending: {exc.message}") from exc
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise Unavailable("no result for the message in time; it may not be sent") from None
        finally:
            self._pending.pop(frame.correlation_id, None)
            if future.done() and not future.cancelled():
                # A lost stream may have failed it too; this attempt's own error stands.
                future.exception()

    # --- the stream ---------------------------------------------------------
    async def _read(self, conn: _Connection) -> None:
        reconnect, why = True, "connection lost"
        while True:
            try:
                frame = await conn.read()
            except CimError as exc:  # the stream broke, or sent a frame that does not decode
                why = exc.message
                break
            if frame is None:
                break
            conn.last_heard = time.monotonic()
            kind = frame.WhichOneof("frame")
            if kind == "message":
                self._accept(frame.message)
            elif kind == "send_result":
                self._on_result(frame.send_result)
            elif kind == "replay_done":
                self._replayed(frame.replay_done)
            elif kind == "typing":
                if self.on_typing is not None:
                    self.on_typing(frame.typing)
            elif kind == "read":
                if self.on_receipt is not None:
                    self.on_receipt(frame.read)
            elif kind == "notice":
                if frame.notice.kind == chat_pb2.Notice.KIND_BEHIND:
                    self._event(EventKind.BEHIND, frame.notice.text)
                    continue
                if frame.notice.kind == chat_pb2.Notice.KIND_REFUSED:
                    self._event(EventKind.REFUSED, frame.notice.text)
                    continue
                why = frame.notice.text
                if frame.notice.kind == chat_pb2.Notice.KIND_KICKED:
                    reconnect = False
        if conn is self._conn and not self._closing:
            await self._lost(conn, why, reconnect)

    def _accept(self, message: common_pb2.ChatMessage) -> None:
        # Outside the sequence (a system notice to everyone online, or any
        # message from an older server): as it comes, never acked.
        if not message.seq:
            self._hand_over([message])
            return
        self._hand_over(self.sequence.offer(message.seq, message))

    def _replayed(self, done: chat_pb2.ReplayDone) -> None:
        if done.head_seq < self.sequence.through:
            log.warning(
                "the server's sequence restarted at %d (we hold %d): following it",
                done.head_seq,
                self.sequence.through,
            )
            self.sequence.reset(done.head_seq)
            self._acked = done.head_seq
        self._hand_over(self.sequence.skip_through(done.through_seq))
        self._live.set()

    def _hand_over(self, messages: list[common_pb2.ChatMessage]) -> None:
        """Gives released messages to the application, then records that they
        are handled (what the cursor holds is what the next login presents)."""
        if not messages:
            return
        for message in messages:
            self._inbox.put_nowait(message)
            if self.on_message is not None:
                self.on_message(message)
        self._save_cursor()

    def _save_cursor(self) -> None:
        # A cursor file that cannot be written costs at most a replay of what
        # was shown (the server's acks still trim the inbox): no reason to
        # stop reading the stream, or to fail close().
        try:
            self._cursor.save(self.sequence.through)
        except OSError as exc:
            if not self._cursor_failing:  # once per streak, not once per message
                log.warning("cannot save the last seq %d: %s", self.sequence.through, exc)
            self._cursor_failing = True
        else:
            self._cursor_failing = False

    async def _ack_and_sync(self, conn: _Connection) -> None:
        """Acks what was released, and asks for a replay when a gap lasts."""
        while conn is self._conn:
            await asyncio.sleep(ACK_INTERVAL)
            now = time.monotonic()
            frames = []
            through = self.sequence.through
            if through > self._acked:
                frames.append(chat_pb2.ClientFrame(ack=chat_pb2.AckFrame(seq=through)))
            if not self.sequence.has_gap:
                self._gap_since = None
            elif self._gap_since is None:
                self._gap_since = now
            elif now - self._gap_since >= GAP_WAIT and now - self._synced_at >= GAP_WAIT:
                log.info("seqs after %d are missing: asking for a replay", through)
                frames.append(chat_pb2.ClientFrame(sync=chat_pb2.SyncFrame(after_seq=through)))
                self._synced_at = now
            acked = bool(frames) and frames[0].WhichOneof("frame") == "ack"
            reads, self._unsent_reads = self._unsent_reads, {}
            frames.extend(
                chat_pb2.ClientFrame(read=chat_pb2.ReadFrame(conversation_id=cid, position=at))
                for cid, at in reads.items()
            )
            try:
                for frame in frames:
                    await conn.write(frame)
            except CimError:
                for cid, at in reads.items():  # sent again on the next stream
                    self._unsent_reads[cid] = max(at, self._unsent_reads.get(cid, 0))
                return  # the reader notices the broken stream
            if acked:
                self._acked = through

    def _on_result(self, result: chat_pb2.SendResultFrame) -> None:
        future = self._pending.get(result.correlation_id)
        if future is None or future.done():
            return
        if result.WhichOneof("outcome") == "ok":
            future.set_result(result.ok)
        else:
            future.set_exception(from_item(result.error))

    async def _keep_alive(self, conn: _Connection) -> None:
        """Pings after ``ping_interval`` of silence, and gives the stream up when
        the server has said nothing (not even a pong) for the idle timeout: a
        silently dropped network is noticed without waiting for TCP."""
        while conn is self._conn:
            now = time.monotonic()
            if self._heartbeat.is_idle(conn.last_heard, now):
                await self._lost(
                    conn, "no answer from the chat server: connection timed out", reconnect=True
                )
                return
            if self._heartbeat.ping_due(conn.last_sent, now):
                now_ms = time.time_ns() // 1_000_000
                ping = chat_pb2.ClientFrame(ping=chat_pb2.Ping(client_time_ms=now_ms))
                try:
                    await conn.write(ping)
                except CimError:
                    return  # the reader notices the broken stream
                now = time.monotonic()
            wake = min(
                self._heartbeat.next_ping_at(conn.last_sent),
                conn.last_heard + self._heartbeat.idle_timeout + 0.01,
            )
            await asyncio.sleep(max(0.05, wake - now))

    async def _lost(self, conn: _Connection, why: str, reconnect: bool) -> None:
        self._conn = None
        self._connected.clear()
        self._live.clear()
        await conn.aclose()
        self._fail_pending(Unavailable(f"connection lost ({why}); the message may not be sent"))
        if not reconnect:
            self._event(EventKind.KICKED, why)
            self._give_up()
            return
        self._event(EventKind.DISCONNECTED, why)
        self._reconnector = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        # As CIM: back off, log in again (perhaps to another server), reconnect;
        # give up after the limit.
        for attempt, delay in enumerate(self.config.backoff.delays(self._rng), start=1):
            self._event(EventKind.RECONNECTING, f"reconnecting in {delay:.1f} s (try {attempt})")
            await asyncio.sleep(delay)
            try:
                # Resuming replaces our own session (even one whose stream
                # still looks alive somewhere), without a password hash.
                await self.login(resume=True)
                await self.connect()
                return
            except (NotFound, PermissionDenied) as exc:
                self._event(EventKind.GAVE_UP, f"cannot log in again: {exc.message}")
                self._give_up()
                return
            except CimError as exc:
                log.info("reconnect attempt %d failed: %s", attempt, exc.message)
        self._event(EventKind.GAVE_UP, "gave up reconnecting")
        self._give_up()

    def _give_up(self) -> None:
        self._gave_up = True
        self._inbox.put_nowait(None)

    def _fail_pending(self, error: CimError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _event(self, kind: EventKind, text: str) -> None:
        log.info("%s: %s", kind.value, text)
        if self.on_event is not None:
            self.on_event(ClientEvent(kind, text))

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
