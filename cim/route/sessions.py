"""Accounts and sessions: register, login (with server choice), logout, and the
session events chat servers report.

Revocation: a token is good while its session is the one the store names for
the user (``Store.set_token_session``), which a login sets and a logout (or
the next login, of any kind) ends. Each route remembers a confirmed session
for ``RouteConfig.token_check_cache`` seconds (1 s by default), so the hot
unary path asks the store at most once per second per user; a logout or newer
login is effective at once on the route that handled it and at every other
route within that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cim import logcontext
from cim.config import RouteConfig
from cim.core import names, validation
from cim.core.ids import new_session_id
from cim.core.limits import max_size
from cim.core.members import Member
from cim.core.passwords import hash_password, verify_password
from cim.core.placement import ServerChooser, make_chooser
from cim.core.tokens import TokenClaims, TokenSigner
from cim.errors import AlreadyExists, NotFound, PermissionDenied, Unauthenticated
from cim.proto.v1 import route_pb2
from cim.route.servers import ServerDirectory
from cim.store.base import Account, SessionRecord, Store

log = logging.getLogger(__name__)

# One message for every credential failure, so answers never tell which part was wrong.
BAD_CREDENTIALS = "user name, user id or password is wrong"
SESSION_ENDED = "session ended (logged out or replaced by a newer login): log in again"
# Said only to a caller who proved the account is theirs (password or token).
ACCOUNT_DISABLED = "account disabled"
# The store keeps a token session this much longer than the tokens live, so
# clock differences between routes never end a token early.
TOKEN_SESSION_MARGIN = 60.0
# The most users one ListOnlineUsers reply holds: what the proto declares.
ONLINE_LIST_LIMIT = max_size(route_pb2.ListOnlineUsersResponse.DESCRIPTOR.fields_by_name["users"])
# Online users are looked up (their accounts read) this many at a time.
ONLINE_LIST_CHUNK = 1000


@dataclass(frozen=True)
class LoginResult:
    account: Account
    server: Member
    session_id: str
    token: str
    expires_ms: int


class SessionManager:
    def __init__(
        self,
        config: RouteConfig,
        store: Store,
        servers: ServerDirectory,
        signer: TokenSigner,
        chooser: ServerChooser | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._store = store
        self._servers = servers
        self._signer = signer
        self._chooser = chooser or make_chooser(config.routing)
        self._clock = clock
        # user id -> (session the store confirmed, until when): the positive cache.
        self._confirmed: dict[int, tuple[str, float]] = {}
        # Bumped by every local revocation: a store answer read before one is not cached.
        self._revocations = 0
        self._next_sweep = 0.0
        # The most users online_users returns (tests lower it).
        self.online_list_limit = ONLINE_LIST_LIMIT

    # --- accounts ---------------------------------------------------------
    async def register(self, user_name: str, password: str) -> tuple[Account, bool]:
        """The new account, or the existing one of that exact name and password.
        AlreadyExists for the name with another password, and for a new name
        too much like an existing one (``cim.core.names``: case, width,
        confusable letters); existing accounts keep their names as they are."""
        validation.check_user_name(user_name)
        validation.check_password(password)
        existing = await self._store.get_account_by_name(user_name)
        if existing is not None:
            return await self._existing(existing, password), False
        name_keys = names.name_keys(user_name)  # InvalidArgument for a name PRECIS refuses
        password_hash = await asyncio.to_thread(hash_password, password, self._config.scrypt)
        account, created = await self._store.create_account(user_name, password_hash, name_keys)
        if not created:
            if account.user_name != user_name:
                raise AlreadyExists(
                    f"user name {user_name!r} is too much like an existing user's name"
                )
            # another register of the same name won the race
            return await self._existing(account, password), False
        logcontext.user_id_var.set(account.user_id)  # the Register call's task
        log.info("registered user %s (%s)", account.user_id, user_name)
        return account, True

    async def index_names(self) -> int:
        """Indexes the name keys of accounts registered before look-alike
        names were refused (see ``Store.index_names``); how many keys it added."""
        added = await self._store.index_names(names.existing_name_keys)
        if added:
            log.info("indexed %d name keys of accounts older than the look-alike rule", added)
        return added

    async def _existing(self, account: Account, password: str) -> Account:
        if not await asyncio.to_thread(verify_password, password, account.password_hash):
            raise AlreadyExists(f"user name {account.user_name!r} is taken")
        return account

    # --- login / logout ---------------------------------------------------
    async def login(
        self,
        user_name: str,
        password: str,
        user_id: int = 0,
        device_id: str = "",
        resume_token: str = "",
    ) -> LoginResult:
        validation.check_user_name(user_name)
        if user_id < 0:
            raise PermissionDenied(BAD_CREDENTIALS)
        if resume_token:
            account, replacing = await self._resumable(user_name, resume_token)
        else:
            account, replacing = await self._check_password(user_name, password), None
        if user_id and user_id != account.user_id:
            raise PermissionDenied(BAD_CREDENTIALS)
        if account.disabled:  # only now: a wrong password never learns the account exists
            raise PermissionDenied(ACCOUNT_DISABLED)
        # The Login call's task logs for this user from here on (kicks too).
        logcontext.user_id_var.set(account.user_id)

        # The server is chosen before any login state is written.
        server = self._chooser.choose(account.user_id, self._servers.candidates())
        record = SessionRecord(account.user_id, new_session_id(), server.member_id, device_id)
        if replacing is None:
            await self._claim(record)
        else:
            await self._replace(record, replacing)
        # From here on, tokens of any earlier session of the user are refused.
        self._forget_confirmed(account.user_id)
        if not await self._store.set_token_session(
            account.user_id, record.session_id, self._config.token_ttl + TOKEN_SESSION_MARGIN
        ):
            raise AlreadyExists("another login for this user replaced this one; try again")
        # A disable that came after the account was read above ended the
        # sessions it found, maybe before this one was written: read the flag
        # again, now that this session's tokens work.
        if await self._is_disabled(account.user_id):
            await self._end(record.user_id, record.session_id)
            raise PermissionDenied(ACCOUNT_DISABLED)
        token = self._signer.issue(account.user_id, account.user_name, record.session_id, device_id)
        claims = self._signer.verify(token)
        log.info(
            "user %s %s, session %s on %s",
            account.user_id,
            "resumed" if replacing else "logged in",
            record.session_id,
            server.member_id,
        )
        return LoginResult(account, server, record.session_id, token, claims.expires_at_ms)

    async def _check_password(self, user_name: str, password: str) -> Account:
        validation.check_password(password)
        account = await self._store.get_account_by_name(user_name)
        if account is None:
            raise NotFound(f"no user named {user_name!r}: register first")
        if not await asyncio.to_thread(verify_password, password, account.password_hash):
            raise PermissionDenied(BAD_CREDENTIALS)
        return account

    async def _resumable(self, user_name: str, token: str) -> tuple[Account, SessionRecord]:
        """The account and current session a resume token may replace."""
        claims = self._signer.verify(token)
        if claims.user_name != user_name:
            raise PermissionDenied(BAD_CREDENTIALS)
        current = await self._store.get_session(claims.user_id)
        account = await self._store.get_account(claims.user_id)
        if account is None or current is None or current.session_id != claims.session_id:
            raise Unauthenticated(
                "session is over (logged out or expired): log in with the password"
            )
        return account, current

    async def _replace(self, record: SessionRecord, old: SessionRecord) -> None:
        if await self._store.claim_session(record, self._config.connect_grace, old.session_id):
            raise AlreadyExists("another login for this user is in progress; try again")
        if old.connected:  # the stream the client lost may still look alive to its server
            await self._servers.kick(
                old.server_id, old.user_id, old.session_id, "resumed elsewhere"
            )

    async def _claim(self, record: SessionRecord) -> None:
        ttl = self._config.connect_grace
        current = await self._store.claim_session(record, ttl)
        if current is None:
            return
        if not current.connected:
            # A login whose stream has not arrived (and may never: a client
            # that crashed or gave up in between). These credentials replace
            # it, unless its stream connects first; its token stops working.
            current = await self._store.claim_session(
                record, ttl, current.session_id, pending_only=True
            )
            if current is None:
                log.info("user %s: replaced a login that had not connected", record.user_id)
                return
            if not current.connected:
                raise AlreadyExists("another login for this user is in progress; try again")
        if await self._holds_live_stream(current):
            if self._config.duplicate_login == "reject":
                raise AlreadyExists("already logged in from another client; log out there first")
            await self._servers.kick(
                current.server_id,
                current.user_id,
                current.session_id,
                "logged in from another client",
            )
        else:
            log.info("user %s: taking over dead session %s", record.user_id, current.session_id)
        if await self._store.claim_session(record, ttl, current.session_id) is not None:
            raise AlreadyExists("another login for this user is in progress; try again")

    async def _holds_live_stream(self, session: SessionRecord) -> bool:
        """Whether a connected session still counts: while a registered chat
        server confirms it holds the stream."""
        if self._servers.find(session.server_id) is None:
            return False
        return await self._servers.is_live(session.server_id, session.user_id, session.session_id)

    async def logout(self, claims: TokenClaims) -> None:
        # The tokens first: they are refused from now on, whatever follows.
        self._forget_confirmed(claims.user_id)
        await self._store.revoke_token_session(claims.user_id, claims.session_id)
        current = await self._store.get_session(claims.user_id)
        if current is None or current.session_id != claims.session_id:
            return  # already gone: logout is idempotent
        if await self._store.release_session(claims.user_id, claims.session_id):
            log.info("user %s logged out", claims.user_id)
            if current.connected:
                await self._servers.kick(
                    current.server_id, claims.user_id, claims.session_id, "logged out"
                )

    def verify(self, token: str) -> TokenClaims:
        """The token's claims if it is signed and unexpired (its session may be over)."""
        return self._signer.verify(token)

    async def authenticate(self, token: str) -> TokenClaims:
        """The claims of a signed, unexpired token whose session still stands:
        not logged out, not replaced by a newer login. Unauthenticated otherwise."""
        claims = self._signer.verify(token)
        now = self._clock()
        confirmed = self._confirmed.get(claims.user_id)
        if confirmed is not None and confirmed[0] == claims.session_id and confirmed[1] > now:
            return claims
        revocations = self._revocations
        if await self._store.get_token_session(claims.user_id) != claims.session_id:
            raise Unauthenticated(SESSION_ENDED)
        ttl = self._config.token_check_cache
        if ttl > 0 and revocations == self._revocations:
            self._remember_confirmed(claims.user_id, claims.session_id, now, ttl)
        return claims

    def _remember_confirmed(self, user_id: int, session_id: str, now: float, ttl: float) -> None:
        if now >= self._next_sweep:  # what expired goes, once per ttl: bounded by active users
            self._confirmed = {
                uid: entry for uid, entry in self._confirmed.items() if entry[1] > now
            }
            self._next_sweep = now + ttl
        self._confirmed[user_id] = (session_id, now + ttl)

    def _forget_confirmed(self, user_id: int) -> None:
        self._revocations += 1
        self._confirmed.pop(user_id, None)

    # --- events from chat servers ----------------------------------------
    async def connected(
        self, server_id: str, user_id: int, token: str
    ) -> tuple[TokenClaims, SessionRecord]:
        claims = self._signer.verify(token)
        if claims.user_id != user_id:
            raise Unauthenticated("session token belongs to another user")
        previous = await self._store.get_session(user_id)
        record = await self._store.mark_connected(
            user_id, claims.session_id, server_id, self._config.session_ttl
        )
        if record is None:
            raise Unauthenticated(
                "session is over (logged out, expired or replaced by a newer login): log in again"
            )
        # Read after the session is marked connected: a disable that came
        # first is seen here, one that comes later finds the session
        # connected and kicks its stream. Either way the stream does not last.
        if await self._is_disabled(user_id):
            await self._end(user_id, record.session_id)
            raise PermissionDenied(ACCOUNT_DISABLED)
        if (
            previous is not None
            and previous.session_id == record.session_id
            and previous.connected
            and previous.server_id != server_id
        ):  # the same session reconnected elsewhere: one session, one stream
            await self._servers.kick(
                previous.server_id, user_id, record.session_id, "session moved to another server"
            )
        return claims, record

    async def _is_disabled(self, user_id: int) -> bool:
        account = await self._store.get_account(user_id)
        return account is None or account.disabled

    async def _end(self, user_id: int, session_id: str) -> None:
        """Ends one session of a disabled account: its tokens, then its login
        state (no stream to kick: it is refused by whoever called this)."""
        self._forget_confirmed(user_id)
        await self._store.revoke_token_session(user_id, session_id)
        await self._store.release_session(user_id, session_id)

    async def end_sessions(self, user_id: int, reason: str, device_id: str | None = None) -> int:
        """Ends the user's session, as an administrator does: its tokens are
        refused from now on (here at once, at other routes within
        ``token_check_cache``), the store forgets it, and its stream is kicked
        with ``reason`` (the client does not reconnect). With ``device_id``,
        only a session the store records for that device. Returns how many
        sessions ended: the recorded one and, if another, the one whose
        tokens were good."""
        current = await self._store.get_session(user_id)
        if device_id is not None and (current is None or current.device_id != device_id):
            return 0
        ended: set[str] = set()
        self._forget_confirmed(user_id)
        token_session = await self._store.get_token_session(user_id)
        ours = token_session is not None and (
            device_id is None or (current is not None and token_session == current.session_id)
        )
        if (
            ours
            and token_session
            and await self._store.revoke_token_session(user_id, token_session)
        ):
            ended.add(token_session)
        if current is not None and await self._store.release_session(user_id, current.session_id):
            ended.add(current.session_id)
            if current.connected:
                await self._servers.kick(current.server_id, user_id, current.session_id, reason)
        return len(ended)

    async def disconnected(self, server_id: str, user_id: int, session_id: str) -> bool:
        """A server's stream ended: clears the session only if it still lives there."""
        return await self._store.release_session(user_id, session_id, server_id)

    @property
    def session_ttl_ms(self) -> int:
        return int(self._config.session_ttl * 1000)

    async def refresh(self, sessions: list[tuple[int, str]]) -> list[bool]:
        if not sessions:
            return []
        return await self._store.refresh_sessions(sessions, self._config.session_ttl)

    async def online_users(self, name_prefix: str = "") -> tuple[list[Account], bool]:
        """Users online whose name starts with ``name_prefix``, by user id, at
        most ``online_list_limit`` of them; and whether more matched (the walk
        stops there: the reply then holds some of the matching users)."""
        limit = self.online_list_limit
        found: list[Account] = []

        async def look_up(user_ids: list[int]) -> None:
            accounts = await self._store.get_accounts(user_ids)
            found.extend(
                account
                for account in accounts.values()
                if account.user_name.startswith(name_prefix)
            )

        pending: list[int] = []
        async with contextlib.aclosing(self._store.online_sessions()) as online:
            async for record in online:
                pending.append(record.user_id)
                if len(pending) >= ONLINE_LIST_CHUNK:
                    await look_up(pending)
                    pending = []
                    if len(found) > limit:
                        break
        if pending and len(found) <= limit:
            await look_up(pending)
        found.sort(key=_by_id)
        return found[:limit], len(found) > limit


def _by_id(account: Account) -> int:
    return account.user_id
