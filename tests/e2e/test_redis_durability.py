"""Redis killed and restarted with its data, under load.

Redis runs with an append-only file and ``appendfsync always``: a write is
on disk before Redis answers it. So after a SIGKILL and a restart, every
message a sender was told was accepted is still there (or already shown),
and the cluster carries on by itself: no cim process is restarted.

With ``appendfsync everysec`` (Redis's default) the last second of writes
can be lost in a crash: messages accepted in that second, and the seq
counters behind them (see docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cim.client.client import CimClient
from cim.errors import CimError
from tests.fixtures.redis_server import RedisServer, free_port

from .test_distributed import Cluster, _running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis-aof"
    directory.mkdir()
    server = RedisServer(directory, free_port(), ("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    try:
        yield server
    finally:
        server.stop(save=False)


async def _send_until_accepted(client: CimClient, receiver: int, number: int) -> None:
    client_msg_id = f"{client.user_name}-{number}"
    while True:  # the same id until accepted: a retry never makes a second message
        try:
            await client.send_private(receiver, str(number), client_msg_id)
            return
        except CimError:
            await asyncio.sleep(0.2)


async def test_a_redis_crash_loses_nothing_accepted(
    durable_redis: RedisServer, zookeeper: Any, zk_root: str, key_prefix: str, tmp_path: Path
) -> None:
    shown: dict[str, list[int]] = defaultdict(list)
    async with _running_cluster(
        durable_redis.url, zookeeper.hosts, zk_root, key_prefix, tmp_path
    ) as c:
        alice = await c.client("alice")
        bob = await c.client("bob", start=False)
        bob.on_message = lambda m: m.text != "probe" and shown["bob"].append(int(m.text))
        await bob.start()
        carol = await c.client("carol", start=False)  # offline: everything waits for her
        await carol.register()
        accepted: dict[str, list[int]] = defaultdict(list)
        stop = asyncio.Event()

        async def load() -> None:
            number = 0
            while not stop.is_set():
                number += 1
                name, receiver = ("bob", bob) if number % 2 else ("carol", carol)
                await _send_until_accepted(alice, receiver.user_id, number)
                accepted[name].append(number)
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(load())
        await asyncio.sleep(1.0)
        durable_redis.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(1.0)
        durable_redis.start()  # same directory: it loads its AOF
        restarted_at = time.monotonic()
        await _recovered(c, alice, bob, deadline=restarted_at + 20)
        recovery = time.monotonic() - restarted_at
        await asyncio.sleep(1.0)
        stop.set()
        await sender

        carol.on_message = lambda m: shown["carol"].append(int(m.text))
        await carol.start(register=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
            set(accepted[name]) - set(shown[name]) for name in ("bob", "carol")
        ):
            await asyncio.sleep(0.2)

        assert all(p.proc.returncode is None for p in c.routes + c.servers)
        print(
            f"redis crash: accepted bob={len(accepted['bob'])} carol={len(accepted['carol'])}, "
            f"down {restarted_at - killed_at:.1f} s, sends flowing again {recovery:.1f} s "
            "after the restart"
        )
    for name in ("bob", "carol"):
        assert shown[name] == accepted[name], name  # all of them, once each, in order


async def _recovered(c: Cluster, alice: CimClient, bob: CimClient, deadline: float) -> None:
    """Waits until a unary send goes through again."""
    while True:
        try:
            await alice.route.send_private(bob.user_id, "probe")
            return
        except CimError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
