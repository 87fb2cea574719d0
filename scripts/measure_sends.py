"""Measures what a private send costs Redis, through cim's own store
(``cim.store.redis.RedisStore``), as the route calls it: batches of sends
with a ``client_msg_id`` between 100 senders and 100 receivers.

Starts its own ``redis-server`` (no persistence) in a temporary directory,
warms up, resets Redis's statistics, sends, and prints Redis's own CPU time
per send (``INFO cpu``: user + system, its syscalls included), the commands
it ran per send (``INFO commandstats``: those inside scripts included) and
the client's wall time per send (Python included). This machine's CPU speed
drifts between runs: compare trees by interleaving several runs.

    .venv/bin/python scripts/measure_sends.py [--sends N] [--batch B] [--json FILE]

On the code before conversations (the per-user inbox: ``append_inbox``),
check the parent commit out in a worktree, generate its protos, and run
this script with ``PYTHONPATH`` pointing at it (see measure_lists.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from cim.proto.v1 import common_pb2
from cim.store import base, keys
from cim.store.redis import RedisStore

SENDERS = 100
WARM_UP_BATCHES = 50


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _cpu_usec(client: Redis) -> float:
    cpu = await client.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6


class Sends:
    """Numbered private sends, built as the route builds them."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.number = 0
        # The code before conversations has no PointedItem: inbox appends.
        self.conversations = hasattr(base, "PointedItem")

    def next_batch(self) -> list[Any]:
        out: list[Any] = []
        for _ in range(self.batch):
            self.number += 1
            n = self.number
            sender, receiver = 1 + n % SENDERS, 1 + SENDERS + (n * 7) % SENDERS
            low, high = sorted((sender, receiver))
            cid = f"p:{low}:{high}"
            mid = f"01K{n:018d}"
            body = common_pb2.ChatMessage(
                message_id=mid,
                sender_id=sender,
                sender_name=f"user{sender}",
                receiver_id=receiver,
                kind=common_pb2.MESSAGE_KIND_PRIVATE,
                text="x" * 64,
                server_time_ms=time.time_ns() // 1_000_000,
                client_msg_id=f"c{n}",
            ).SerializeToString()
            if self.conversations:
                key = base.SendKey(receiver, sender, f"c{n}", b"d" * 16, conversation=cid)
                item = base.ConversationItem(cid, mid, body, send=key)
                fresh = {"fresh": True} if "fresh" in base.PointedItem.__dataclass_fields__ else {}
                out.append(base.PointedItem(item, receiver, sender, **fresh))
            else:
                key = base.SendKey(receiver, sender, f"c{n}", b"d" * 16)
                out.append(base.InboxItem(receiver, mid, body, send=key))
        return out


async def _send(store: RedisStore, sends: Sends) -> None:
    batch = sends.next_batch()
    if sends.conversations:
        await store.append_pointed(batch, base.Retention())
    else:
        await store.append_inbox(batch, base.Retention())


async def measure(
    url: str, total: int, batch: int, prefix: str = keys.DEFAULT_PREFIX
) -> dict[str, Any]:
    """Sends ``total`` private sends (whole batches) through a store on
    ``url`` and reads what Redis did for them (its statistics are reset)."""
    client = Redis.from_url(url)
    store = RedisStore(client, prefix)
    sends = Sends(batch)
    try:
        for _ in range(WARM_UP_BATCHES):
            await _send(store, sends)
        await client.config_resetstat()
        before = await _cpu_usec(client)
        started = time.perf_counter()
        batches = max(1, total // batch)
        for _ in range(batches):
            await _send(store, sends)
        wall = time.perf_counter() - started
        usec = await _cpu_usec(client) - before
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    n = batches * batch
    commands = {
        key.removeprefix("cmdstat_"): round(int(value["calls"]) / n, 2)
        for key, value in stats.items()
        if key not in ("cmdstat_info", "cmdstat_config|resetstat")
    }
    return {
        "sends": n,
        "batch": batch,
        "redis_cpu_us_per_send": round(usec / n, 1),
        "commands_per_send": round(sum(commands.values()), 2),
        "client_wall_us_per_send": round(wall / n * 1e6),
        "commands": dict(sorted(commands.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=20, help="sends per store call")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="cim-measure-")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}"
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout:
                break
            time.sleep(0.1)
        result = asyncio.run(measure(url, args.sends, args.batch))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{result['sends']} sends in batches of {result['batch']}: "
        f"Redis CPU {result['redis_cpu_us_per_send']} µs/send, "
        f"{result['commands_per_send']} commands/send, "
        f"client {result['client_wall_us_per_send']} µs/send"
    )
    for name, per in result["commands"].items():
        print(f"  {name:16} {per:6.2f}/send")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
