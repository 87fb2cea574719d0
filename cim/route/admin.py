"""The route's administration (``cim.admin.v1.Admin``): who may call it, and
what each call does. The servicer (``cim.route.service.AdminService``) only
translates; the work is here, on top of ``sessions`` and ``messages``.

Authorization: named admin keys (``RouteConfig.admin_keys``, ``--admin-keys
id:secret,...``), apart from session tokens and the cluster secret, several
at once so they rotate. A caller sends ``cim-admin-key: <id>:<secret>``.
Every action is logged at INFO, one line, with the id of the key that did it
(never its secret).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import grpc

from cim.core import validation
from cim.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from cim.grpcutil import AUTHORIZATION, CLUSTER_SECRET, metadata_value
from cim.proto.v1 import common_pb2
from cim.route.messages import MessageRouter
from cim.route.servers import ServerDirectory
from cim.route.sessions import SessionManager
from cim.store.base import Account, SessionRecord, Store

log = logging.getLogger(__name__)

ADMIN_KEY = "cim-admin-key"
ADMIN_OFF = (
    "the admin API is off on this route: start it with --admin-keys id:secret "
    "(or CIM_ADMIN_KEYS) and call with 'cim-admin-key: <id>:<secret>'"
)
# One answer for an unknown id and a wrong secret: a caller cannot probe for ids.
BAD_ADMIN_KEY = "unknown admin key id or wrong secret"
NO_ADMIN_KEY = "missing admin key: send 'cim-admin-key: <id>:<secret>'"
NOT_AN_ADMIN_KEY = "admin calls need an admin key ('cim-admin-key: <id>:<secret>'), not {what}"
KICKED_BY_ADMIN = "kicked by an administrator"
DISABLED_BY_ADMIN = "account disabled by an administrator"
# Compared against when the id is unknown, so both failures take as long.
_DUMMY_SECRET = b"\0" * 32


class AdminKeys:
    """The route's admin keys: :meth:`require` answers which key a call
    carries, or refuses it with the status the admin API documents."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = {key_id: secret.encode() for key_id, secret in keys.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def require(self, context: grpc.aio.ServicerContext) -> str:
        """The id of the admin key the call carries. PermissionDenied when
        the admin API is off, or the caller sent a session token or the
        cluster secret instead; Unauthenticated without a key, or with an
        unknown id or a wrong secret."""
        if not self._keys:
            raise PermissionDenied(ADMIN_OFF)
        given = metadata_value(context, ADMIN_KEY)
        if not given:
            if metadata_value(context, AUTHORIZATION) is not None:
                raise PermissionDenied(NOT_AN_ADMIN_KEY.format(what="a user's session token"))
            if metadata_value(context, CLUSTER_SECRET) is not None:
                raise PermissionDenied(NOT_AN_ADMIN_KEY.format(what="the cluster secret"))
            raise Unauthenticated(NO_ADMIN_KEY)
        key_id, _, secret = given.strip().partition(":")
        expected = self._keys.get(key_id)
        matches = hmac.compare_digest(secret.encode(), expected or _DUMMY_SECRET)
        if expected is None or not matches:
            raise Unauthenticated(BAD_ADMIN_KEY)
        return key_id


@dataclass(frozen=True)
class UserRef:
    """How a request names a user: by id (> 0) or by exact name."""

    user_id: int = 0
    user_name: str = ""

    def __str__(self) -> str:
        return f"#{self.user_id}" if self.user_id else repr(self.user_name)


class UserChoice(Protocol):
    """A request with the ``user`` oneof (user_id or user_name)."""

    user_id: int
    user_name: str

    def WhichOneof(self, name: Literal["user"]) -> str | None: ...


def user_ref(request: UserChoice) -> UserRef:
    """The user a request names; InvalidArgument if it names none, or a
    non-positive id."""
    which = request.WhichOneof("user")
    if which == "user_id":
        return UserRef(user_id=validation.check_user_id(request.user_id))
    if which == "user_name" and request.user_name:
        return UserRef(user_name=request.user_name)
    raise InvalidArgument("name the user: user_id or user_name")


@dataclass(frozen=True)
class SessionView:
    record: SessionRecord
    # Where its chat server is, if the registry knows it.
    server_address: str


@dataclass(frozen=True)
class UserView:
    account: Account
    sessions: list[SessionView]


class Administration:
    """What admin calls do. ``key_id`` is the admin key's id, for the log."""

    def __init__(
        self,
        store: Store,
        sessions: SessionManager,
        router: MessageRouter,
        servers: ServerDirectory,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._router = router
        self._servers = servers

    async def account(self, ref: UserRef) -> Account:
        """The account ``ref`` names; NotFound if there is no such user."""
        if ref.user_id:
            account = await self._store.get_account(ref.user_id)
        else:
            account = await self._store.get_account_by_name(ref.user_name)
        if account is None:
            raise NotFound(f"no user {ref}")
        return account

    async def user(self, key_id: str, ref: UserRef) -> UserView:
        account = await self.account(ref)
        record = await self._store.get_session(account.user_id)
        views = []
        if record is not None:
            member = self._servers.find(record.server_id)
            views.append(SessionView(record, member.address if member else ""))
        log.info("admin %s: looked up user %s (%s)", key_id, account.user_id, account.user_name)
        return UserView(account, views)

    async def kick(self, key_id: str, ref: UserRef, device_id: str, reason: str) -> int:
        """Ends the user's session (of ``device_id`` only, if given); how many ended."""
        account = await self.account(ref)
        ended = await self._sessions.end_sessions(
            account.user_id, reason or KICKED_BY_ADMIN, device_id or None
        )
        log.info(
            "admin %s: kicked user %s (%s)%s, %d session(s) ended; reason: %s",
            key_id,
            account.user_id,
            account.user_name,
            f" device {device_id!r}" if device_id else "",
            ended,
            reason or "-",
        )
        return ended

    async def disable(self, key_id: str, ref: UserRef, reason: str) -> tuple[Account, bool, int]:
        """Disables the account and ends its sessions: the account, whether
        it was enabled before, and how many sessions ended."""
        account = await self.account(ref)
        # The flag first: a login racing this reads it after writing its
        # session (SessionManager.login, .connected), so none survives.
        was = await self._store.set_account_disabled(account.user_id, True, reason)
        if was is None:
            raise NotFound(f"no user {ref}")
        notice = f"{DISABLED_BY_ADMIN}: {reason}" if reason else DISABLED_BY_ADMIN
        ended = await self._sessions.end_sessions(account.user_id, notice)
        log.info(
            "admin %s: disabled user %s (%s)%s, %d session(s) ended; reason: %s",
            key_id,
            account.user_id,
            account.user_name,
            "" if not was else " (was disabled already)",
            ended,
            reason or "-",
        )
        return await self.account(UserRef(account.user_id)), not was, ended

    async def enable(self, key_id: str, ref: UserRef) -> tuple[Account, bool]:
        """Lets the account log in again: the account, and whether it was disabled."""
        account = await self.account(ref)
        was = await self._store.set_account_disabled(account.user_id, False)
        if was is None:
            raise NotFound(f"no user {ref}")
        log.info(
            "admin %s: enabled user %s (%s)%s",
            key_id,
            account.user_id,
            account.user_name,
            "" if was else " (was not disabled)",
        )
        return await self.account(UserRef(account.user_id)), bool(was)

    async def notice(
        self, key_id: str, ref: UserRef, text: str, client_msg_id: str
    ) -> tuple[Account, common_pb2.SendResponse]:
        """A system notice into the user's inbox, pushed if they are online."""
        account = await self.account(ref)
        result = await self._router.send_system(account.user_id, text, client_msg_id)
        log.info(
            "admin %s: sent notice %s to user %s (%s): %s, %d bytes",
            key_id,
            result.message_id,
            account.user_id,
            account.user_name,
            common_pb2.DeliveryStatus.Name(result.status),
            len(text.encode()),
        )
        return account, result

    async def broadcast(self, key_id: str, text: str) -> tuple[common_pb2.ChatMessage, int]:
        """A system notice pushed to every user online, not stored."""
        message, recipients = await self._router.broadcast(text)
        log.info(
            "admin %s: broadcast notice %s to %d online user(s), %d bytes",
            key_id,
            message.message_id,
            recipients,
            len(text.encode()),
        )
        return message, recipients
