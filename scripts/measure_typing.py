"""Measures what a batch of typing notes costs the route and Redis
(docs/design/conversations.md, "Issue 13", Typing).

It runs the route's own code (``cim.route.typing_notes.TypingRouter``) on a
real ``RedisStore``; the chat servers are replaced by a recorder (what would
go out on their DeliverStreams is counted, not sent). Per scenario it
reports: store round trips (pipelines), Redis commands, bytes sent to and
received from Redis, the route's wall time per batch (p50/p99, Python
included), Redis CPU per batch (``INFO`` deltas), and the receivers the
notes went to.

Usage: .venv/bin/python scripts/measure_typing.py [--batches N] [--url redis://HOST:PORT]
Without --url it starts its own redis-server (no persistence) in a temporary
directory on a free port, and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cim import processes
from cim.config import RouteConfig
from cim.core import groups
from cim.proto.internal.v1 import chat_internal_pb2, route_internal_pb2
from cim.route.member_cache import GroupMemberCache
from cim.route.typing_notes import TypingRouter
from cim.store.base import Retention, SessionRecord
from cim.store.redis import RedisStore

SESSION_TTL = 3600.0


class Recorder:
    """Stands in for the route's ServerDirectory: counts what would be pushed."""

    def __init__(self) -> None:
        self.receivers = 0
        self.notes = 0

    async def push_typing(
        self, requests: Sequence[tuple[str, list[chat_internal_pb2.TypingNote]]]
    ) -> int:
        reached = sum(len(n.receiver_ids) for _, notes in requests for n in notes)
        self.receivers += reached
        self.notes += sum(len(notes) for _, notes in requests)
        return reached


@dataclass
class Row:
    scenario: str
    round_trips: float
    commands: float
    sent: float
    received: float
    p50_ms: float
    p99_ms: float
    redis_cpu_us: float
    receivers: float


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    (port,) = processes.free_ports(1)
    with tempfile.TemporaryDirectory() as folder:
        child = subprocess.Popen(
            [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"redis://127.0.0.1:{port}"
        finally:
            child.terminate()
            child.wait(10)


async def stats(admin: Redis) -> dict[str, float]:
    info = await admin.info("all")
    return {
        "commands": float(info["total_commands_processed"]),
        "in": float(info["total_net_input_bytes"]),
        "out": float(info["total_net_output_bytes"]),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
    }


async def measure(
    name: str,
    store: RedisStore,
    admin: Redis,
    batch: Callable[[], Awaitable[Recorder]],
    batches: int,
) -> Row:
    """Runs ``batch`` ``batches`` times; per batch averages and time percentiles."""
    pipelines = 0
    pipeline = store._pipeline

    async def counted(build: Any) -> list[Any]:
        nonlocal pipelines
        pipelines += 1
        return await pipeline(build)

    store._pipeline = counted  # type: ignore[method-assign]
    # What two INFO calls cost on their own, taken off every delta.
    empty_before, empty_after = await stats(admin), await stats(admin)
    info_cost = {key: empty_after[key] - empty_before[key] for key in ("commands", "in", "out")}
    await batch()  # warm: scripts, connections, the member cache
    pipelines = 0
    times = []
    receivers = 0
    before = await stats(admin)
    for _ in range(batches):
        start = time.perf_counter()
        recorder = await batch()
        times.append(time.perf_counter() - start)
        receivers += recorder.receivers
    after = await stats(admin)
    store._pipeline = pipeline  # type: ignore[method-assign]
    times.sort()
    per = float(batches)
    return Row(
        name,
        pipelines / per,
        (after["commands"] - before["commands"] - info_cost["commands"]) / per,
        (after["in"] - before["in"] - info_cost["in"]) / per,
        (after["out"] - before["out"] - info_cost["out"]) / per,
        statistics.median(times) * 1000,
        times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        (after["cpu"] - before["cpu"]) / per * 1e6,
        receivers / per,
    )


def note(user_id: int, conversation_id: str) -> route_internal_pb2.SubmittedTyping:
    return route_internal_pb2.SubmittedTyping(
        user_id=user_id, user_name=f"user{user_id}", conversation_id=conversation_id
    )


async def run(url: str, batches: int) -> list[Row]:
    store = RedisStore.from_url(url, f"typing-{time.time_ns()}:")
    admin = Redis.from_url(url)
    config = RouteConfig(
        cluster_secrets=("measure",), token_keys={"k": b"0123456789abcdef"}, token_key_id="k"
    )
    members = GroupMemberCache()
    rows = []
    try:
        # Users 1..1,000; the odd ones online (a connected session), the even ones not.
        for uid in range(1, 1001):
            await store.claim_session(SessionRecord(uid, f"s{uid}", "server-1"), SESSION_TTL)
            if uid % 2:
                await store.mark_connected(uid, f"s{uid}", "server-1", SESSION_TTL)
        for number, size in ((1, 10), (2, 100), (3, 1000)):
            change = groups.create(
                number, 1, f"g{size}", range(2, size + 1), 1700, groups.Limits(max_members=1000)
            )
            await store.apply_group(change, f"e{number}", b"created", Retention())

        def router() -> tuple[TypingRouter, Recorder]:
            recorder = Recorder()
            return TypingRouter(config, store, recorder, members), recorder  # type: ignore[arg-type]

        def batch_of(
            notes: list[route_internal_pb2.SubmittedTyping],
        ) -> Callable[[], Awaitable[Recorder]]:
            async def one() -> Recorder:
                typing, recorder = router()
                await typing.forward(notes)
                return recorder

            return one

        scenarios = [
            ("private, 1 note", [note(2, "p:1:2")]),
            ("private, 20 notes", [note(2 * i, f"p:{2 * i - 1}:{2 * i}") for i in range(1, 21)]),
            ("group of 10, 1 note", [note(1, "g:1")]),
            ("group of 100, 1 note", [note(1, "g:2")]),
            ("group of 1,000 (over the limit), 1 note", [note(1, "g:3")]),
        ]
        for name, notes in scenarios:
            rows.append(await measure(name, store, admin, batch_of(notes), batches))

        async def moved() -> Recorder:
            members.put("g:2", -1, ())  # as if the membership moved since the last note
            return await batch_of([note(1, "g:2")])()

        rows.append(await measure("group of 100, membership moved", store, admin, moved, batches))
    finally:
        await store.aclose()
        await admin.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    with redis_server(args.url) as url:
        time.sleep(0.3)
        rows = asyncio.run(run(url, args.batches))
    print(
        "| scenario | round trips | commands | bytes sent | bytes received "
        "| p50 / p99 ms | Redis CPU µs | receivers online |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.round_trips:g} | {r.commands:.0f} | {r.sent:,.0f} "
            f"| {r.received:,.0f} | {r.p50_ms:.2f} / {r.p99_ms:.2f} | {r.redis_cpu_us:.0f} "
            f"| {r.receivers:g} |"
        )


if __name__ == "__main__":
    main()
