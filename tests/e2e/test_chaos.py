"""Chaos under load: the delivery guarantees as a user sees them.

Nine users on three `cim server` processes, two `cim route` processes, real
Redis and ZooKeeper. Every user keeps sending private messages to random
others while, one after the other, a chat server is killed with SIGKILL, a
route is killed and started again, and a client "crashes" and restarts from
its cursor file. Four of them are also in a group with a fifth user who is
offline through all of it and logs in afterwards; the four keep sending to
the group too. Afterwards every message a sender was told was accepted has
been shown exactly once to its receiver, in the order each sender sent; every
group message to every other member, the late one by replay, and each
member's history of the group lists each of them once, by position. The
fan-outs the killed route left unconfirmed are repaired by one more message
to their conversations, and the store is left with none pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from cim.client.client import CimClient, ClientEvent, EventKind
from cim.client.cursor import FileCursor
from cim.config import ClientConfig
from cim.core.conversations import private_id
from cim.core.liveness import Backoff
from cim.errors import CimError
from cim.proto.v1 import common_pb2
from cim.store.keys import KeyLayout
from cim.testing import crash

from .test_distributed import Cluster, _respawn, _running_cluster, _wait_for_members

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USERS = 9
SEND_PAUSE = 0.05  # per sender: about 180 messages/s in all
KILL_SERVER_AT = 1.5
RESTART_ROUTE_AT = 4.0
RESTART_CLIENT_AT = 6.5
LOAD_FOR = 9.0
GROUP_SEND_PAUSE = 0.1  # per group sender: about 40 group messages/s in all
REPAIR_AFTER = 5.0  # the routes' fanout_repair_after (RouteConfig's default)


@dataclass
class Ledger:
    """What was sent and what each receiver's application was handed."""

    confirmed: dict[tuple[int, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    shown: dict[tuple[int, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    send_errors: int = 0
    reconnects: list[float] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    group: GroupLedger = field(default_factory=lambda: GroupLedger())

    def record_shown(self, receiver_id: int, message: common_pb2.ChatMessage) -> None:
        if message.conversation_id.startswith("g:"):
            self.group.record_shown(receiver_id, message)
        else:
            self.shown[(message.sender_id, receiver_id)].append(int(message.text))

    def missing(self) -> int:
        return sum(
            len(set(numbers) - set(self.shown.get(pair, [])))
            for pair, numbers in self.confirmed.items()
        )

    def duplicates(self) -> int:
        return sum(
            count - 1 for numbers in self.shown.values() for count in Counter(numbers).values()
        )

    def out_of_order(self) -> int:
        return sum(
            sum(1 for a, b in itertools.pairwise(numbers) if b <= a)
            for numbers in self.shown.values()
        )

    def differences(self) -> dict[str, list[int]]:
        """(sender, receiver) -> what is missing (-n) or was shown unasked (+n)."""
        found = {}
        for pair in set(self.confirmed) | set(self.shown):
            sent, shown = set(self.confirmed.get(pair, [])), set(self.shown.get(pair, []))
            if sent != shown:
                found[str(pair)] = sorted([-n for n in sent - shown] + list(shown - sent))
        return found


@dataclass
class GroupLedger:
    """The group's side: what each member sent to it (in send order) and what
    each member's application was handed, with the position it came at."""

    group_id: str = ""
    members: list[int] = field(default_factory=list)
    confirmed: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    # (sender, member) -> (number, position) in the order shown.
    shown: dict[tuple[int, int], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # member -> the membership events shown to them (texts).
    events: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    strays: list[str] = field(default_factory=list)
    conversations: set[str] = field(default_factory=set)

    def record_shown(self, receiver_id: int, message: common_pb2.ChatMessage) -> None:
        # The "created" event may come before create_group returns the id:
        # which group each came from is checked at the end.
        self.conversations.add(message.conversation_id)
        if receiver_id not in self.members:
            self.strays.append(f"{receiver_id}: {message}")
        elif message.kind == common_pb2.MESSAGE_KIND_MEMBERSHIP:
            self.events[receiver_id].append(message.text)
        else:
            pair = (message.sender_id, receiver_id)
            self.shown[pair].append((int(message.text), message.position))

    def pairs(self) -> list[tuple[int, int]]:
        """Every (sender, member) pair that should have messages."""
        return [(s, m) for s in self.confirmed for m in self.members if m != s]

    def numbers(self, pair: tuple[int, int]) -> list[int]:
        return [number for number, _ in self.shown.get(pair, [])]

    def missing(self) -> int:
        return sum(
            len(set(self.confirmed[sender]) - set(self.numbers((sender, member))))
            for sender, member in self.pairs()
        )

    def duplicates(self) -> int:
        return sum(
            count - 1 for pair in self.shown for count in Counter(self.numbers(pair)).values()
        )

    def out_of_order(self) -> int:
        return sum(
            sum(1 for a, b in itertools.pairwise(self.numbers(pair)) if b <= a)
            for pair in self.shown
        )

    def unexpected(self) -> int:
        """Shown but never accepted, or shown to its own sender."""
        return sum(
            len(set(self.numbers((sender, member))) - set(self.confirmed.get(sender, [])))
            + (len(self.shown[(sender, member)]) if sender == member else 0)
            for sender, member in self.shown
        )

    def positions(self) -> dict[tuple[int, int], set[int]]:
        """(sender, number) -> the positions members were shown it at."""
        found: dict[tuple[int, int], set[int]] = defaultdict(set)
        for (sender, _), shown in self.shown.items():
            for number, position in shown:
                found[(sender, number)].add(position)
        return found


def _config(c: Cluster) -> ClientConfig:
    return ClientConfig(
        routes=c.route_addresses,
        backoff=Backoff(base=0.2, cap=1.0, retries=60),
        rpc_timeout=3.0,
        ping_interval=1.0,
    )


class User:
    def __init__(self, c: Cluster, name: str, ledger: Ledger, cursor_dir: Path) -> None:
        self.cluster = c
        self.name = name
        self.ledger = ledger
        self.cursor = cursor_dir / f"{name}.seq"
        self.client = self._new_client()
        # Set once at the first login or registration and kept: a send may
        # finish on a crashed client after its successor, whose user_id is 0
        # until it has logged in, took its place.
        self.user_id = 0
        # What it numbered its messages up to (each counts from 1).
        self.private_sent = 0
        self.group_sent = 0
        self.lost_at: float | None = None

    def _new_client(self) -> CimClient:
        # Bound to this client, not to self.client: a crashed client may still
        # hand over a message after its successor (not logged in yet) took its place.
        client = CimClient(
            self.name,
            "pw",
            _config(self.cluster),
            on_message=lambda m: self.ledger.record_shown(client.user_id, m),
            on_event=self._on_event,
            cursor=FileCursor(self.cursor),
        )
        return client

    def _on_event(self, event: ClientEvent) -> None:
        self.ledger.events.append((self.name, event.kind.value, event.text))
        if event.kind == EventKind.DISCONNECTED and self.lost_at is None:
            self.lost_at = time.monotonic()
        elif event.kind == EventKind.CONNECTED and self.lost_at is not None:
            self.ledger.reconnects.append(time.monotonic() - self.lost_at)
            self.lost_at = None

    async def crash_and_restart(self) -> float:
        """Drops the client as a killed process would (no ack, no logout;
        only the cursor file survives), then starts a new one from that file."""
        started = time.monotonic()
        await crash(self.client)
        self.client = self._new_client()
        await self.client.start(register=False)
        return time.monotonic() - started


async def _until_accepted(
    user: User, ledger: Ledger, send: Callable[[], Awaitable[object]]
) -> None:
    """Sends until accepted, under the same client_msg_id: a retry is never
    a second message."""
    while True:
        try:
            await send()
            return
        except CimError as exc:
            ledger.send_errors += 1
            ledger.events.append((user.name, "send failed", exc.message))
            await asyncio.sleep(0.2)


async def _send_private(user: User, receiver: int, ledger: Ledger) -> None:
    user.private_sent += 1
    number = user.private_sent
    await _until_accepted(
        user,
        ledger,
        lambda: user.client.send_private(receiver, str(number), f"{user.name}-{number}"),
    )
    ledger.confirmed[(user.user_id, receiver)].append(number)


async def _send_to_group(user: User, ledger: Ledger) -> None:
    user.group_sent += 1
    number = user.group_sent
    group_id = ledger.group.group_id
    await _until_accepted(
        user,
        ledger,
        lambda: user.client.send_group(str(number), f"{user.name}-g{number}", group_id),
    )
    ledger.group.confirmed[user.user_id].append(number)


async def _send_forever(
    user: User, others: list[int], ledger: Ledger, stop: asyncio.Event, rng: random.Random
) -> None:
    while not stop.is_set():
        await _send_private(user, rng.choice(others), ledger)
        await asyncio.sleep(SEND_PAUSE)


async def _send_to_group_forever(user: User, ledger: Ledger, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await _send_to_group(user, ledger)
        await asyncio.sleep(GROUP_SEND_PAUSE)


async def _read_history(client: CimClient, group_id: str) -> list[common_pb2.ChatMessage]:
    """The group's whole history as ``client`` pages back through it, oldest first."""
    messages: list[common_pb2.ChatMessage] = []
    before = 0
    while True:
        page = await client.history(group_id, before, 100)
        messages += page.messages
        if not page.more or not page.messages:
            return messages[::-1]
        before = page.messages[-1].position


def _history_faults(group: GroupLedger, history: list[common_pb2.ChatMessage]) -> list[str]:
    """How one member's history differs from what was accepted: every
    accepted message once, in send order by position, at the position its
    pushes carried, after the "created" event at position 1."""
    faults = []
    positions = [m.position for m in history]
    if positions != sorted(set(positions)):
        faults.append(f"positions not increasing and unique: {positions}")
    events = [(m.position, m.text) for m in history if m.kind == common_pb2.MESSAGE_KIND_MEMBERSHIP]
    if len(events) != 1 or events[0][0] != 1 or "created group" not in events[0][1]:
        faults.append(f"membership events: {events}")
    by_sender: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for m in history:
        if m.kind == common_pb2.MESSAGE_KIND_GROUP:
            by_sender[m.sender_id].append((int(m.text), m.position))
    pushed = group.positions()
    for sender in set(by_sender) | set(group.confirmed):
        listed = by_sender.get(sender, [])
        if [number for number, _ in listed] != group.confirmed.get(sender, []):
            faults.append(f"sender {sender}: {len(listed)} listed, not the accepted ones in order")
        moved = [n for n, at in listed if pushed.get((sender, n), {at}) != {at}]
        if moved:
            faults.append(f"sender {sender}: pushed at other positions: {moved[:10]}")
    return faults


async def _pending_fan_outs(
    redis_url: str, prefix: str, conversation_ids: list[str]
) -> dict[str, list[tuple[str, float]]]:
    """The conversations' fan-outs still marked pending in the store: message
    id and age in seconds (see "Repairing a fan-out" in
    docs/design/conversations.md)."""
    keys = KeyLayout(prefix)
    now_ms = time.time() * 1000
    async with Redis.from_url(redis_url) as redis, redis.pipeline(transaction=False) as pipe:
        for cid in conversation_ids:
            pipe.zrange(keys.conversation_pending(cid), 0, -1, withscores=True)
        found = await pipe.execute()
    return {
        cid: [(mid.decode(), round((now_ms - score) / 1000, 1)) for mid, score in entries]
        for cid, entries in zip(conversation_ids, found, strict=True)
        if entries
    }


async def _send_once_more(
    pending: dict[str, list[tuple[str, float]]],
    by_id: dict[int, User],
    group_sender: User,
    ledger: Ledger,
) -> None:
    """One more message to each conversation with fan-outs pending, once the
    youngest of them is old enough to be repaired by it."""
    if not pending:
        return
    youngest = min(age for entries in pending.values() for _, age in entries)
    await asyncio.sleep(max(0.0, REPAIR_AFTER + 0.5 - youngest))
    sends = []
    for cid in pending:
        if cid == ledger.group.group_id:
            sends.append(_send_to_group(group_sender, ledger))
        else:
            sender, receiver = next(pair for pair in ledger.confirmed if private_id(*pair) == cid)
            sends.append(_send_private(by_id[sender], receiver, ledger))
    await asyncio.gather(*sends)


async def _create_group(owner: User, others: list[User], ledger: Ledger) -> None:
    ledger.group.members = [owner.user_id] + [u.user_id for u in others]
    made = await owner.client.create_group("chaos", [u.user_id for u in others])
    ledger.group.group_id = made.group.group_id


def _group_members(
    users: list[User], by_server: dict[str, list[User]], victim_id: str
) -> list[User]:
    """Four online members: the client that will crash and two users of the
    server that will be killed among them."""
    restarted = next(u for u in users if u not in by_server[victim_id])
    victims = by_server[victim_id][:2]
    rest = [u for u in users if u is not restarted and u not in victims]
    return [restarted, *victims, *rest[: 4 - 1 - len(victims)]]


async def test_kill_a_server_restart_a_route_and_a_client_under_load(
    redis_server: Any, zookeeper: Any, zk_root: str, key_prefix: str, tmp_path: Path
) -> None:
    ledger = Ledger()
    rng = random.Random(7)
    async with _running_cluster(
        redis_server.url, zookeeper.hosts, zk_root, key_prefix, tmp_path
    ) as c:
        users = [User(c, f"chaos{i}{secrets.token_hex(2)}", ledger, tmp_path) for i in range(USERS)]
        for user in users:
            await user.client.start()
            user.user_id = user.client.user_id
        by_server = defaultdict(list)
        for user in users:
            by_server[user.client.server.server_id].append(user)  # type: ignore[union-attr]
        assert len(by_server) >= 2, "users should be spread over several servers"
        victim_id, _ = max(by_server.items(), key=lambda item: len(item[1]))
        # The fifth member has an account but no session until the load is over.
        late = User(c, f"chaoslate{secrets.token_hex(2)}", ledger, tmp_path)
        await late.client.register()
        late.user_id = late.client.user_id
        in_group = _group_members(users, by_server, victim_id)
        await _create_group(in_group[0], [*in_group[1:], late], ledger)
        ids = [user.user_id for user in users]
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(
                _send_forever(user, [i for i in ids if i != user.user_id], ledger, stop, rng)
            )
            for user in users
        ] + [asyncio.create_task(_send_to_group_forever(user, ledger, stop)) for user in in_group]
        started = time.monotonic()

        await asyncio.sleep(KILL_SERVER_AT)
        victim = c.server(victim_id)
        victim.proc.kill()
        await victim.proc.wait()

        await asyncio.sleep(RESTART_ROUTE_AT - KILL_SERVER_AT)
        route = c.routes[0]
        route.proc.kill()
        await route.proc.wait()
        await _respawn(route)

        await asyncio.sleep(RESTART_CLIENT_AT - RESTART_ROUTE_AT)
        restarted = in_group[0]
        client_restart = await restarted.crash_and_restart()

        await asyncio.sleep(max(0.0, LOAD_FOR - (time.monotonic() - started)))
        stop.set()
        _, stuck = await asyncio.wait(senders, timeout=60)
        (tmp_path / "events.json").write_text(json.dumps(ledger.events))
        assert not stuck, ledger.events
        load_seconds = time.monotonic() - started
        await _wait_for_members(zookeeper.hosts, zk_root, servers=2, routes=2)
        members_wait = time.monotonic() - started - load_seconds
        # The late member logs in: its replay brings the whole group conversation.
        late_started = time.monotonic()
        await late.client.start(register=False)
        await late.client.wait_live(30)
        late_replay = time.monotonic() - late_started

        # A fan-out the killed route did but never confirmed stays pending
        # until the next message to its conversation, REPAIR_AFTER later or
        # more, does it again (idempotently: nobody may be shown it twice).
        # The live routes have confirmed theirs by now: one more message to
        # each conversation still pending.
        group = ledger.group
        privates = sorted({private_id(*pair) for pair in ledger.confirmed})
        conversation_ids = [group.group_id, *privates]
        left_pending = await _pending_fan_outs(redis_server.url, key_prefix, conversation_ids)
        by_id = {user.user_id: user for user in users}
        await _send_once_more(left_pending, by_id, in_group[1], ledger)

        # Everything accepted arrives, however late (replays, syncs).
        deadline = time.monotonic() + 30
        settle_started = time.monotonic()
        while (ledger.missing() or group.missing()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        settle = time.monotonic() - settle_started
        # Every fan-out finished or was repaired: nothing stays pending.
        deadline = time.monotonic() + 10
        while pending := await _pending_fan_outs(redis_server.url, key_prefix, conversation_ids):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        sent = sum(len(v) for v in ledger.confirmed.values())
        shown = sum(len(v) for v in ledger.shown.values())
        positions = group.positions()
        members = [*in_group, late]
        history_started = time.monotonic()
        histories = await asyncio.gather(
            *(_read_history(u.client, group.group_id) for u in members)
        )
        history_read = time.monotonic() - history_started
        history_faults = {
            u.name: faults
            for u, history in zip(members, histories, strict=True)
            if (faults := _history_faults(group, history))
        }
        report = {
            "users": USERS,
            "seconds": round(load_seconds, 1),
            "sent": sent,
            "shown": shown,
            "lost": ledger.missing(),
            "duplicates": ledger.duplicates(),
            "out_of_order": ledger.out_of_order(),
            "group_sent": sum(len(v) for v in group.confirmed.values()),
            "group_shown": sum(len(v) for v in group.shown.values()),
            "group_lost": group.missing(),
            "group_duplicates": group.duplicates(),
            "group_out_of_order": group.out_of_order(),
            "group_unexpected": group.unexpected(),
            "group_strays": len(group.strays),
            "group_positions_differ": sum(1 for p in positions.values() if len(p) != 1),
            "group_history_faults": len(history_faults),
            "pending_after_load": sum(len(v) for v in left_pending.values()),
            "pending_left": sum(len(v) for v in pending.values()),
            "late_member_replayed": sum(
                len(group.shown[(s, late.user_id)]) for s in group.confirmed
            ),
            "late_replay_s": round(late_replay, 2),
            "history_read_s": round(history_read, 2),
            "members_wait_s": round(members_wait, 2),
            "settle_s": round(settle, 2),
            "differences": ledger.differences(),
            "send_retries": ledger.send_errors,
            "server_victims": len(by_server[victim_id]),
            "reconnect_s": sorted(round(r, 2) for r in ledger.reconnects),
            "client_restart_s": round(client_restart, 2),
            "restarted": restarted.client.user_id,
        }
        print("chaos:", json.dumps(report))
        (tmp_path / "chaos.json").write_text(json.dumps(report))
        for user in [*users, late]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(user.client.close(), 10)

    assert report["lost"] == 0, report
    assert report["duplicates"] == 0, report
    assert report["out_of_order"] == 0, report
    assert sent > 200, report
    assert len(ledger.reconnects) >= len(by_server[victim_id]), report
    # The group: for every (sender, member) pair, exactly what the sender was
    # told was accepted, in send order; each message at one position, the
    # positions in send order too.
    assert group.strays == [], group.strays[:5]
    assert group.conversations == {group.group_id}, group.conversations
    for key in ("group_lost", "group_duplicates", "group_out_of_order", "group_unexpected"):
        assert report[key] == 0, report
    for sender, member in group.pairs():
        assert group.numbers((sender, member)) == group.confirmed[sender], (sender, member)
    assert report["group_positions_differ"] == 0, report
    for sender, numbers in group.confirmed.items():
        at = [min(positions[(sender, n)]) for n in numbers]
        assert at == sorted(set(at)), f"positions of {sender}'s messages: {at}"
    group_sent = sum(len(v) for v in group.confirmed.values())
    assert group_sent > 50, report
    late_id = late.user_id
    assert sum(len(group.shown[(s, late_id)]) for s in group.confirmed) == group_sent, report
    # Each member's history lists every accepted message once, by position.
    assert history_faults == {}, history_faults
    assert pending == {}, pending
    # Each member saw the group's creation once (the late one by replay).
    created = [group.events[m] for m in group.members]
    assert all(len(texts) == 1 and "created group 'chaos'" in texts[0] for texts in created), (
        created
    )
