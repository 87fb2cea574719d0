"""Groups with membership on the route: each change read, planned by
``cim.core.groups``, applied by the store with its event in one atomic step
(a compare-and-set on the group's version), then fanned out like a message:
a pointer in each recipient's sequence, a push to those online.

See docs/design/conversations.md, sections Membership and Limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cim.config import RouteConfig
from cim.core import groups
from cim.core.groups import Change, Group, Member
from cim.core.ids import MessageIdGenerator, message_time_ms, new_trace_id
from cim.errors import (
    CimError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from cim.proto.internal.v1 import chat_internal_pb2
from cim.proto.v1 import common_pb2
from cim.route.servers import Parcel, ServerDirectory
from cim.store.base import Appended, OwnSend, PointerItem, Store

log = logging.getLogger(__name__)

# A change planned from a record another change moved on is planned again
# from a fresh read; this many times at most (then UNAVAILABLE: try again).
APPLY_ATTEMPTS = 5
MAX_MEMBERS_PAGE = 1_000
DEFAULT_MEMBERS_PAGE = 100
MAX_GROUPS_PAGE = 100
DEFAULT_GROUPS_PAGE = 50


@dataclass(frozen=True)
class Changed:
    """An applied change: the group after it and its event."""

    group: Group
    event: common_pb2.ChatMessage


def _page(limit: int, default: int, ceiling: int) -> int:
    if limit < 0 or limit > ceiling:
        raise InvalidArgument(f"limit must be between 1 and {ceiling} (0: default)")
    return limit or default


def event_parcels(
    event: common_pb2.ChatMessage, recipients: Sequence[int], appended: Sequence[Appended]
) -> list[tuple[str, Parcel]]:
    """One parcel per chat server with a copy per connected recipient, under
    their own seq."""
    by_server: dict[str, Parcel] = defaultdict(list)
    for receiver, stored in zip(recipients, appended, strict=True):
        if stored.session is None or not stored.session.connected:
            continue  # their replay has it
        copy = common_pb2.ChatMessage()
        copy.CopyFrom(event)
        copy.seq = stored.seq
        by_server[stored.session.server_id].append(
            chat_internal_pb2.Delivery(receiver_id=receiver, message=copy)
        )
    return list(by_server.items())


class GroupManager:
    def __init__(
        self,
        config: RouteConfig,
        store: Store,
        servers: ServerDirectory,
        ids: MessageIdGenerator | None = None,
    ) -> None:
        self._config = config
        self._limits = config.group_limits
        self._retention = config.retention
        self._store = store
        self._servers = servers
        self._ids = ids or MessageIdGenerator()

    # --- changes ------------------------------------------------------------
    async def create(
        self, actor_id: int, actor_name: str, name: str, member_ids: Sequence[int]
    ) -> Changed:
        """A new group ``g:<n>`` owned by ``actor_id`` with ``member_ids``."""
        limits = self._limits
        # Refused before it counts against the creation rate or takes a number.
        groups.create(0, actor_id, name, member_ids, 0, limits)
        made = await self._store.count_group_creation(actor_id)
        if made > limits.creations_per_minute:
            raise ResourceExhausted(
                f"{made - 1} groups created in the last minute: "
                f"the limit is {limits.creations_per_minute}"
            )
        number = await self._store.new_group_number()
        now_ms = int(time.time() * 1000)
        return await self._apply(
            actor_id,
            actor_name,
            groups.group_id(number),
            lambda _: groups.create(number, actor_id, name, member_ids, now_ms, limits),
            creating=True,
        )

    async def add(
        self, actor_id: int, actor_name: str, group_id: str, user_ids: Sequence[int]
    ) -> Changed:
        return await self._apply(
            actor_id,
            actor_name,
            group_id,
            lambda g: groups.add(g, actor_id, user_ids, self._limits),
        )

    async def remove(
        self, actor_id: int, actor_name: str, group_id: str, user_ids: Sequence[int]
    ) -> Changed:
        return await self._apply(
            actor_id, actor_name, group_id, lambda g: groups.remove(g, actor_id, user_ids)
        )

    async def leave(self, actor_id: int, actor_name: str, group_id: str) -> Changed:
        return await self._apply(
            actor_id, actor_name, group_id, lambda g: groups.leave(g, actor_id)
        )

    async def set_admin(
        self, actor_id: int, actor_name: str, group_id: str, user_id: int, admin: bool
    ) -> Changed:
        return await self._apply(
            actor_id, actor_name, group_id, lambda g: groups.set_admin(g, actor_id, user_id, admin)
        )

    async def transfer(
        self, actor_id: int, actor_name: str, group_id: str, user_id: int
    ) -> Changed:
        return await self._apply(
            actor_id, actor_name, group_id, lambda g: groups.transfer(g, actor_id, user_id)
        )

    async def rename(self, actor_id: int, actor_name: str, group_id: str, name: str) -> Changed:
        return await self._apply(
            actor_id, actor_name, group_id, lambda g: groups.rename(g, actor_id, name)
        )

    async def delete(self, actor_id: int, actor_name: str, group_id: str) -> Changed:
        return await self._apply(
            actor_id, actor_name, group_id, lambda g: groups.delete(g, actor_id)
        )

    # --- reads ----------------------------------------------------------------
    async def members(
        self, user_id: int, group_id: str, after_user_id: int = 0, limit: int = 0
    ) -> tuple[Group, list[Member], bool]:
        """A page of the group's members by user id (above ``after_user_id``),
        for its members only; whether more follow."""
        limit = _page(limit, DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE)
        gid = groups.parse_group_id(group_id)
        found = await self._store.read_group(gid)
        if found is None:
            raise PermissionDenied(f"you are not a member of group {gid}")
        group = groups.readable(found, user_id)
        later = sorted(uid for uid in group.members if uid > after_user_id)
        return group, [group.members[uid] for uid in later[:limit]], len(later) > limit

    async def my_groups(
        self, user_id: int, after: int = 0, limit: int = 0
    ) -> tuple[list[Group], bool]:
        """A page of the user's groups by number (above ``after``); whether
        more follow. Each is checked against its record (the truth): an index
        entry it contradicts is dropped."""
        limit = _page(limit, DEFAULT_GROUPS_PAGE, MAX_GROUPS_PAGE)
        found = await self._store.list_groups(user_id, after, limit + 1)
        more = len(found) > limit
        records = await asyncio.gather(*(self._store.read_group(gid) for gid in found[:limit]))
        read = list(zip(found, records, strict=False))  # found has one more
        mine = [g for _, g in read if g is not None and user_id in g.members]
        stale = [gid for gid, g in read if g is None or user_id not in g.members]
        if stale:
            await self._store.index_groups([(user_id, gid, False) for gid in stale])
        return mine, more

    # --- the one path of every change -----------------------------------------
    async def _apply(
        self,
        actor_id: int,
        actor_name: str,
        group_id: str,
        plan: Callable[[Group | None], Change],
        *,
        creating: bool = False,
    ) -> Changed:
        gid = groups.parse_group_id(group_id)
        for _ in range(APPLY_ATTEMPTS):
            before = await self._store.read_group(gid)
            if before is None and not creating:
                # A forged or unknown id reads like someone else's group.
                raise PermissionDenied(f"you are not a member of group {gid}")
            change = plan(before)
            known = before.members if before is not None else {}
            newcomers = [uid for uid in change.set_roles if uid not in known]
            names = await self._names(actor_id, change.user_ids)
            await self._check_newcomers(actor_id, newcomers)
            event = self._event(actor_id, actor_name, change, names)
            position = await self._store.apply_group(
                change, event.message_id, event.SerializeToString(), self._retention
            )
            if position is not None:
                break
        else:
            raise Unavailable(f"group {gid} is changing too often right now: try again")
        event.position = position
        await self._store.index_groups(
            [(uid, gid, True) for uid in newcomers] + [(uid, gid, False) for uid in change.drop]
        )
        await self._fan_out(event, change.recipients)
        after = await self._store.read_group(gid)
        if after is None:  # only a store that lost the group in between
            raise Unavailable(f"group {gid} could not be read back")
        log.info("group %s: %s by user %s", gid, change.action.name.lower(), actor_id)
        return Changed(after, event)

    async def _names(self, actor_id: int, user_ids: Sequence[int]) -> dict[int, str]:
        """Their user names (for the event's text); NOT_FOUND for an unknown id."""
        wanted = [uid for uid in user_ids if uid != actor_id]
        if not wanted:
            return {}
        accounts = await self._store.get_accounts(wanted)
        unknown = [uid for uid in wanted if uid not in accounts]
        if unknown:
            raise NotFound(f"no such users: {', '.join(map(str, unknown))}")
        return {uid: account.user_name for uid, account in accounts.items()}

    async def _check_newcomers(self, actor_id: int, newcomers: Sequence[int]) -> None:
        """Groups per user, for everyone the change makes a member. Counted
        from the users' indexes before the change: concurrent joins of one
        user may pass it by a few, never by a group each."""
        if not newcomers:
            return
        ceiling = self._limits.max_groups_per_user
        counts = await self._store.count_groups(newcomers)
        full = [uid for uid, n in zip(newcomers, counts, strict=True) if n >= ceiling]
        if not full:
            return
        if full == [actor_id]:
            raise ResourceExhausted(f"you are in {ceiling:,} groups: the limit is {ceiling:,}")
        ids = ", ".join(map(str, full))
        who = f"users {ids} are" if len(full) > 1 else f"user {ids} is"
        raise ResourceExhausted(f"{who} in {ceiling:,} groups: the limit is {ceiling:,}")

    def _event(
        self, actor_id: int, actor_name: str, change: Change, names: dict[int, str]
    ) -> common_pb2.ChatMessage:
        message_id = self._ids.next()
        whom = [names.get(uid, actor_name) for uid in change.user_ids]
        return common_pb2.ChatMessage(
            message_id=message_id,
            sender_id=actor_id,
            sender_name=actor_name,
            group_id=change.group_id,
            conversation_id=change.group_id,
            kind=common_pb2.MESSAGE_KIND_MEMBERSHIP,
            text=groups.describe(change.action, actor_name, whom, change.name),
            server_time_ms=message_time_ms(message_id),
            trace_id=new_trace_id(),
            membership=common_pb2.MembershipEvent(
                action=int(change.action),  # type: ignore[arg-type]
                actor_id=actor_id,
                user_ids=change.user_ids,
                group_name=change.name,
            ),
        )

    async def _fan_out(self, event: common_pb2.ChatMessage, recipients: Sequence[int]) -> None:
        """A pointer in each recipient's sequence (one round trip), then a
        push to those online; a failed push is no loss (replay has it). Then
        the fan-out is confirmed: until then the event is pending, and a
        message sent to the group more than ``fanout_repair_after`` later
        does the fan-out again (the route may have crashed). Membership
        changes are rare: confirmed at once, not deferred like a send's."""
        appended = await self._store.append_pointers(
            [
                PointerItem(uid, event.conversation_id, event.position, event.message_id)
                for uid in recipients
            ],
            self._retention,
            # The actor's own event is not unread for them.
            [OwnSend(event.sender_id, event.conversation_id, event.position)],
        )
        try:
            await self._store.finish_sends(
                [], self._config.send_dedup_window, [(event.conversation_id, event.message_id)]
            )
        except CimError as exc:
            # It stays pending: the next message to the group does it again, idempotently.
            log.warning("could not confirm the fan-out of %s: %s", event.message_id, exc.message)
        parcels = event_parcels(event, recipients, appended)
        if parcels:
            await self._servers.deliver_many(parcels)
