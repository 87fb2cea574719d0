"""Measures what issue 13 (conversation lists, read cursors, receipts) costs
on a real Redis, through cim's own store (``cim.store.redis.RedisStore``).

Starts its own ``redis-server`` (no persistence) in a temporary directory and
runs each operation many times, reading around each series what Redis says
it did (``INFO stats``: bytes in and out; ``INFO cpu``: its CPU time, the
syscalls of an unbatched client included) and counting round trips and
commands on the client (every write of a command or a pipeline to a
connection is one round trip). Wall times (p50, p99) are the client's,
Python included.

    .venv/bin/python scripts/measure_lists.py [--quick] [--json FILE]

The send rows also run on the code before issue 13, for the difference the
list upkeep makes: check the parent commit out in a worktree, generate its
protos, and run this script with ``PYTHONPATH`` pointing at it (the rows
that need issue 13's store methods are skipped there):

    git worktree add /tmp/parent <commit> && (cd /tmp/parent && \\
        PYTHON=$PWD/../h5/.venv/bin/python ./scripts/gen_protos.sh)
    PYTHONPATH=/tmp/parent .venv/bin/python scripts/measure_lists.py --sends-only
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio.connection import Connection as RedisConnection

from cim.proto.v1 import common_pb2
from cim.store import base
from cim.store.base import ConversationItem, PointedItem, PointerItem, Retention
from cim.store.redis import RedisStore

TEXT_BYTES = 100
KEEP = Retention()


# --- counting -------------------------------------------------------------------------
class Writes:
    """Round trips (each packed write to a connection is one) and the
    commands they carried (each packed command, in a pipeline or alone)."""

    count = 0
    commands = 0


_send_packed = RedisConnection.send_packed_command
_pack_command = RedisConnection.pack_command


async def _counted_send(self: RedisConnection, command: Any, check_health: bool = True) -> None:
    Writes.count += 1
    await _send_packed(self, command, check_health)


def _counted_pack(self: RedisConnection, *args: Any) -> list[bytes]:
    Writes.commands += 1
    return _pack_command(self, *args)


RedisConnection.send_packed_command = _counted_send  # type: ignore[method-assign]
RedisConnection.pack_command = _counted_pack  # type: ignore[method-assign]


def _info(port: int, section: str) -> dict[str, str]:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", section], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def _snapshot(port: int) -> dict[str, float]:
    stats = _info(port, "stats")
    cpu = _info(port, "cpu")
    return {
        "in": float(stats["total_net_input_bytes"]),
        "out": float(stats["total_net_output_bytes"]),
        "commands": float(Writes.commands),
        # Redis's own CPU (user + system: its syscalls included), in µs.
        "usec": (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6,
        "writes": float(Writes.count),
    }


@dataclasses.dataclass
class Row:
    operation: str
    size: str
    round_trips: float
    commands: float
    bytes_sent: float
    bytes_received: float
    redis_usec: float
    p50_ms: float
    p99_ms: float


async def measure(
    port: int, operation: str, size: str, runs: int, call: Callable[[int], Awaitable[object]]
) -> Row:
    # The INFO calls themselves are one command and a few hundred bytes each:
    # taken out below by measuring an empty series the same way. A first
    # call (not counted) loads the scripts.
    await call(runs)
    before = _snapshot(port)
    times = []
    for n in range(runs):
        started = time.perf_counter()
        await call(n)
        times.append(time.perf_counter() - started)
    after = _snapshot(port)
    empty_a = _snapshot(port)
    empty_b = _snapshot(port)
    delta = {key: after[key] - before[key] - (empty_b[key] - empty_a[key]) for key in after}
    times.sort()
    return Row(
        operation,
        size,
        round(delta["writes"] / runs, 2),
        round(delta["commands"] / runs, 2),
        round(delta["in"] / runs),
        round(delta["out"] / runs),
        round(delta["usec"] / runs, 1),
        round(statistics.median(times) * 1000, 3),
        round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 3),
    )


# --- the data -----------------------------------------------------------------------------
_ids = iter(range(1, 10**12))


def message(sender: int, receiver: int, cid: str) -> tuple[str, bytes]:
    mid = f"01K{next(_ids):018d}"
    body = common_pb2.ChatMessage(
        message_id=mid,
        sender_id=sender,
        sender_name=f"user{sender}",
        receiver_id=receiver,
        kind=common_pb2.MESSAGE_KIND_PRIVATE if receiver else common_pb2.MESSAGE_KIND_GROUP,
        text="x" * TEXT_BYTES,
        server_time_ms=time.time_ns() // 1_000_000,
        trace_id="0123456789abcdef0123456789abcdef",
        client_msg_id=f"c-{mid}",
        conversation_id=cid,
    )
    return mid, body.SerializeToString()


def private_id(a: int, b: int) -> str:
    low, high = sorted((a, b))
    return f"p:{low}:{high}"


def has(name: str) -> bool:
    return hasattr(base, name)


def pointed(item: ConversationItem, receiver: int, sender: int) -> PointedItem:
    if "sender_id" in {f.name for f in dataclasses.fields(PointedItem)}:
        return PointedItem(item, receiver, sender)  # type: ignore[call-arg]
    return PointedItem(item, receiver)


async def sends(store: RedisStore, port: int, runs: int) -> list[Row]:
    rows = []

    async def private(n: int) -> None:
        sender, receiver = 1 + n % 100, 101 + n % 100
        cid = private_id(sender, receiver)
        mid, body = message(sender, receiver, cid)
        item = pointed(ConversationItem(cid, mid, body), receiver, sender)
        await store.append_pointed([item], KEEP)

    rows.append(await measure(port, "private send (batch of 1)", "", runs, private))

    members = list(range(1000, 1100))

    async def group(n: int) -> None:
        mid, body = message(members[0], 0, "g:1")
        (done,) = await store.append_conversations([ConversationItem("g:1", mid, body)], KEEP)
        items = [PointerItem(uid, "g:1", done.position, mid) for uid in members[1:]]
        if has("OwnSend"):
            own = base.OwnSend(members[0], "g:1", done.position)  # type: ignore[attr-defined]
            await store.append_pointers(items, KEEP, [own])  # type: ignore[call-arg]
        else:
            await store.append_pointers(items, KEEP)

    rows.append(await measure(port, "group send (M = 100)", "100", max(10, runs // 20), group))
    return rows


async def lists(store: RedisStore, port: int, runs: int, sizes: list[int]) -> list[Row]:
    rows = []
    for size in sizes:
        user = 50_000 + size
        for start in range(0, size, 500):
            items = []
            for k in range(start, min(size, start + 500)):
                peer = 100_000 + k
                cid = private_id(user, peer)
                mid, body = message(peer, user, cid)
                items.append(pointed(ConversationItem(cid, mid, body), user, peer))
            await store.append_pointed(items, KEEP)

        async def page(n: int, user: int = user) -> None:
            await store.list_conversations(user, 0, "", 20)  # type: ignore[attr-defined]

        rows.append(await measure(port, "list page (20 lines)", f"K = {size:,}", runs, page))
        names = [store.keys.conversation_list(user), store.keys.read_cursors(user)]  # type: ignore[attr-defined]
        memory = 0
        for name in names:
            memory += int(await store.client.memory_usage(name, samples=0) or 0)
        print(f"list and read cursors of a user with {size:,} conversations: {memory:,} bytes")
    return rows


async def marks(store: RedisStore, port: int, runs: int) -> list[Row]:
    rows = []
    mark = base.ReadMark  # type: ignore[attr-defined]
    # The conversations of the list rows (K = 200: user 50,200 and its peers).
    user = 50_200

    async def one(n: int) -> None:
        peer = 100_000 + n % 200
        await store.mark_read([mark(user, private_id(user, peer), 1, notify_id=peer)])  # type: ignore[attr-defined]

    rows.append(await measure(port, "mark read (batch of 1)", "", runs, one))

    async def hundred(n: int) -> None:
        await store.mark_read(  # type: ignore[attr-defined]
            [
                mark(user, private_id(user, 100_000 + k), 1, notify_id=100_000 + k)
                for k in range(100)
            ]
        )

    rows.append(await measure(port, "mark read (batch of 100)", "", max(10, runs // 20), hundred))

    async def receipts(n: int) -> None:
        await store.read_receipts(private_id(user, 100_000), user, False, 0, 0, 100)  # type: ignore[attr-defined]

    rows.append(await measure(port, "read receipts page", "private", runs, receipts))
    return rows


# --- a Redis of its own ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure_all(port: int, runs: int, sends_only: bool, quick: bool) -> list[Row]:
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", "m:")
    try:
        rows = await sends(store, port, runs)
        if not sends_only and has("ReadMark"):
            rows += await lists(store, port, runs // 4, [200] if quick else [200, 10_000])
            rows += await marks(store, port, runs // 4)
    finally:
        await store.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs (a smoke run)")
    parser.add_argument("--sends-only", action="store_true", help="only the send rows")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    runs = 50 if args.quick else 2000
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server is not installed")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="cim-measure-lists-")
    redis = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).stdout:
                break
            time.sleep(0.05)
        version = _info(port, "server")["redis_version"]
        rows = asyncio.run(measure_all(port, runs, args.sends_only, args.quick))
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    import cim.store.redis as code

    print(f"redis {version}; {runs} runs a send row; the store of {code.__file__}")
    header = (
        "| operation | size | round trips | commands | bytes sent | bytes received "
        "| Redis µs | p50 ms | p99 ms |"
    )
    print(header)
    print("|" + "---|" * 9)
    for row in rows:
        values = dataclasses.astuple(row)
        print("| " + " | ".join(str(v) for v in values) + " |")
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))


if __name__ == "__main__":
    main()
