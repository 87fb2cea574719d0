"""Chaos under load: the delivery guarantees as a user sees them.

Nine users on three `cim server` processes, two `cim route` processes, real
Redis and ZooKeeper. Every user keeps sending private messages to random
others while, one after the other, a chat server is killed with SIGKILL, a
route is killed and started again, and a client "crashes" and restarts from
its cursor file. Afterwards every message a sender was told was accepted
has been shown exactly once to its receiver, in the order each sender sent.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cim.client.client import CimClient, ClientEvent, EventKind
from cim.client.cursor import FileCursor
from cim.config import ClientConfig
from cim.core.liveness import Backoff
from cim.errors import CimError
from cim.proto.v1 import common_pb2
from cim.testing import crash

from .test_distributed import Cluster, _respawn, _running_cluster, _wait_for_members

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USERS = 9
SEND_PAUSE = 0.05  # per sender: about 180 messages/s in all
KILL_SERVER_AT = 1.5
RESTART_ROUTE_AT = 4.0
RESTART_CLIENT_AT = 6.5
LOAD_FOR = 9.0


@dataclass
class Ledger:
    """What was sent and what each receiver's application was handed."""

    confirmed: dict[tuple[int, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    shown: dict[tuple[int, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    send_errors: int = 0
    reconnects: list[float] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def record_shown(self, receiver_id: int, message: common_pb2.ChatMessage) -> None:
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
        self.lost_at: float | None = None

    def _new_client(self) -> CimClient:
        return CimClient(
            self.name,
            "pw",
            _config(self.cluster),
            on_message=lambda m: self.ledger.record_shown(self.client.user_id, m),
            on_event=self._on_event,
            cursor=FileCursor(self.cursor),
        )

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


async def _send_forever(
    user: User, others: list[int], ledger: Ledger, stop: asyncio.Event, rng: random.Random
) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        receiver = rng.choice(others)
        client_msg_id = f"{user.name}-{number}"
        while True:  # the same id until accepted: a retry is never a second message
            try:
                await user.client.send_private(receiver, str(number), client_msg_id)
                break
            except CimError:
                ledger.send_errors += 1
                await asyncio.sleep(0.2)
        ledger.confirmed[(user.client.user_id, receiver)].append(number)
        await asyncio.sleep(SEND_PAUSE)


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
        by_server = defaultdict(list)
        for user in users:
            by_server[user.client.server.server_id].append(user)  # type: ignore[union-attr]
        assert len(by_server) >= 2, "users should be spread over several servers"
        ids = [user.client.user_id for user in users]
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(
                _send_forever(user, [i for i in ids if i != user.client.user_id], ledger, stop, rng)
            )
            for user in users
        ]
        started = time.monotonic()

        await asyncio.sleep(KILL_SERVER_AT)
        victim_id, _ = max(by_server.items(), key=lambda item: len(item[1]))
        victim = c.server(victim_id)
        victim.proc.kill()
        await victim.proc.wait()

        await asyncio.sleep(RESTART_ROUTE_AT - KILL_SERVER_AT)
        route = c.routes[0]
        route.proc.kill()
        await route.proc.wait()
        await _respawn(route)

        await asyncio.sleep(RESTART_CLIENT_AT - RESTART_ROUTE_AT)
        restarted = next(u for u in users if u.client.server.server_id != victim_id)  # type: ignore[union-attr]
        client_restart = await restarted.crash_and_restart()

        await asyncio.sleep(max(0.0, LOAD_FOR - (time.monotonic() - started)))
        stop.set()
        _, stuck = await asyncio.wait(senders, timeout=60)
        (tmp_path / "events.json").write_text(json.dumps(ledger.events))
        assert not stuck, ledger.events
        load_seconds = time.monotonic() - started
        await _wait_for_members(zookeeper.hosts, zk_root, servers=2, routes=2)

        # Everything accepted arrives, however late (replays, syncs).
        deadline = time.monotonic() + 30
        while ledger.missing() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        sent = sum(len(v) for v in ledger.confirmed.values())
        shown = sum(len(v) for v in ledger.shown.values())
        report = {
            "users": USERS,
            "seconds": round(load_seconds, 1),
            "sent": sent,
            "shown": shown,
            "lost": ledger.missing(),
            "duplicates": ledger.duplicates(),
            "out_of_order": ledger.out_of_order(),
            "send_retries": ledger.send_errors,
            "server_victims": len(by_server[victim_id]),
            "reconnect_s": sorted(round(r, 2) for r in ledger.reconnects),
            "client_restart_s": round(client_restart, 2),
        }
        print("chaos:", json.dumps(report))
        (tmp_path / "chaos.json").write_text(json.dumps(report))
        for user in users:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(user.client.close(), 10)

    assert report["lost"] == 0, report
    assert report["duplicates"] == 0, report
    assert report["out_of_order"] == 0, report
    assert sent > 200, report
    assert len(ledger.reconnects) >= len(by_server[victim_id]), report
