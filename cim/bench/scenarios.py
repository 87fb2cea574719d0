"""The cim scenarios: each runs load processes (``cim.bench.load``) against a
running :class:`~cim.bench.cluster.BenchCluster` and records, per phase, the CPU
time and peak memory of every process (route, chat servers, load, Redis,
ZooKeeper) next to the load's own figures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cim.bench import procstats
from cim.bench.child import Child, Event
from cim.bench.cluster import BenchCluster, Deployment
from cim.bench.records import (
    ConnectionsPart,
    ConnectionsResult,
    ConvListResult,
    GroupResult,
    GroupsResult,
    HistoryResult,
    LoadRun,
    LoginResult,
    PrivateResult,
    ProcessUse,
    Usage,
    decode,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# The parameters of a load process (JSON on its command line: see cim.bench.load).
Params = dict[str, Any]
R = TypeVar(
    "R", PrivateResult, GroupResult, LoginResult, ConvListResult, GroupsResult, HistoryResult
)

# Connections one load process holds at most (each is a socket of its own).
CONNECTIONS_PER_LOAD = 2500
# Users of the private and group scenarios share TCP connections as the relay
# ceiling's do (cim.bench.ceiling.RELAY_STREAMS_PER_CHANNEL), so the ratio
# compares like with like; each still has its own Chat stream.
STREAMS_PER_CHANNEL = 50


class ScenarioError(RuntimeError):
    """A load process failed or gave no result."""


@dataclass
class Context:
    cluster: BenchCluster
    deployment: Deployment
    workdir: Path
    use_uvloop: bool
    progress: Progress

    def base_params(self) -> Params:
        return {
            "route": self.deployment.route_address,
            "redis_url": self.cluster.redis_url,
            "redis_prefix": self.deployment.redis_prefix,
            "uvloop": self.use_uvloop,
            "interactive": True,
        }

    def pids(self) -> dict[str, int]:
        return self.cluster.pids()


# --- CPU and memory of the processes ----------------------------------------------------
def _machine_busy_seconds() -> float:
    """CPU time (all cores, everything but idle and iowait) since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(value) for value in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class StatsWatch:
    """CPU seconds, peak and current RSS of a set of processes over one phase.

    ``other_cpu_s`` is CPU time the machine spent outside these processes: when
    it is high, something else competed with the benchmark."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, procstats.ProcStats] = {}
        self._started = 0.0
        self._busy = 0.0

    def start(self) -> StatsWatch:
        for name, pid in self.pids.items():
            procstats.reset_peak(pid)
            with contextlib.suppress(OSError):
                self._before[name] = procstats.read(pid)
        self._started = time.perf_counter()
        self._busy = _machine_busy_seconds()
        return self

    def stop(self, phases: dict[str, Usage] | None = None) -> Usage:
        """The figures since ``start``. A peak is reset when a phase starts, so
        the peaks of ``phases`` within this span (if given) count too."""
        wall = time.perf_counter() - self._started
        processes: dict[str, ProcessUse] = {}
        for name, pid in self.pids.items():
            before = self._before.get(name)
            try:
                after = procstats.read(pid)
            except OSError:
                continue
            if before is None:
                continue
            cpu = after.cpu_seconds - before.cpu_seconds
            peaks = [after.peak_rss_kb] + [
                phase.processes[name].peak_rss_kb or 0
                for phase in (phases or {}).values()
                if name in phase.processes
            ]
            processes[name] = ProcessUse(
                cpu_s=round(cpu, 3),
                cpu_percent=round(100 * cpu / wall, 1) if wall > 0 else 0.0,
                peak_rss_kb=max(peaks),
                rss_kb_before=before.rss_kb,
                rss_kb_after=after.rss_kb,
            )
        busy = _machine_busy_seconds() - self._busy
        ours = sum(p.cpu_s or 0.0 for p in processes.values())
        return Usage(
            wall_s=round(wall, 3),
            processes=processes,
            machine_cpu_s=round(busy, 2),
            other_cpu_s=round(max(0.0, busy - ours), 2),
        )


# --- one load process -------------------------------------------------------------------
def start_load(ctx: Context, scenario: str, params: Params, name: str = "load") -> Child:
    """``python -m cim.bench.load`` (its events: see that module)."""
    log_path = ctx.workdir / f"{name}-{scenario}.log"
    return Child.python(
        name, "cim.bench.load", [scenario, "--params", json.dumps(params)], log_path
    )


def run_load(ctx: Context, scenario: str, params: Params, timeout: float, record: type[R]) -> R:
    """Runs one load process to its end; each of its phases gets the CPU and
    memory figures of every process (``phases``)."""
    deadline = time.monotonic() + timeout
    whole = StatsWatch(ctx.pids()).start()
    load = start_load(ctx, scenario, params)
    phases: dict[str, Usage] = {}
    watch: StatsWatch | None = None
    try:
        while True:
            event = load.next_event(deadline)
            kind = event["event"]
            if kind == "result":
                result = decode(record, event["result"])
                result.phases = phases
                result.processes = _with_load(whole.stop(phases), {"load": result})
                return result
            if kind == "phase" and event["state"] == "start":
                ctx.progress(f"{scenario}: {event['name']}")
                watch = StatsWatch({**ctx.pids(), "load": load.pid}).start()
            elif kind == "phase" and watch is not None:
                phases[event["name"]] = watch.stop()
                watch = None
            load.go()
    finally:
        load.stop(5.0)


# --- the scenarios ------------------------------------------------------------------------
def private(
    ctx: Context, users: int, duration: float, rate: float, payload_bytes: int = 64
) -> PrivateResult:
    """N users, each sending to random others with one message in flight; then a
    fixed total rate; over the Chat stream and over Route.SendPrivate."""
    params = {
        **ctx.base_params(),
        "users": users,
        "duration": duration,
        "rate": rate,
        "payload_bytes": payload_bytes,
        "streams_per_channel": STREAMS_PER_CHANNEL,
    }
    setup = 30.0 + users / 50
    timeout = setup + 4 * (duration + 1) + 60
    return run_load(ctx, "private", params, timeout, PrivateResult)


def group(ctx: Context, users: int, repeats: int = 5) -> GroupResult:
    """M users online over the chat servers; one sends a group message R times."""
    params = {
        **ctx.base_params(),
        "users": users,
        "repeats": repeats,
        "streams_per_channel": STREAMS_PER_CHANNEL,
    }
    return run_load(ctx, "group", params, 60.0 + users / 20 + 30 * repeats, GroupResult)


def login(ctx: Context, logins: int, concurrency: int = 64) -> LoginResult:
    """L logins from C concurrent callers: accounts with cim's scrypt parameters,
    then (for comparison) accounts hashed with the test suites' cheap ones."""
    params = {**ctx.base_params(), "logins": logins, "concurrency": concurrency}
    # Each default login costs one scrypt n=2^14 (~0.1 s of one core).
    return run_load(ctx, "login", params, 60.0 + logins * 0.2, LoginResult)


def groups(
    ctx: Context,
    sizes: tuple[int, ...],
    sends: int = 30,
    stored: int = 100,
    replays: int = 3,
    sustain_s: float = 3.0,
    senders: int = 4,
    window: int = 1,
) -> GroupsResult:
    """Per size M, a group of M members (half online) created through the
    Groups service: sends timed one at a time, the replay of offline members
    at login, deliveries/s sustained (:mod:`cim.bench.conversations`)."""
    params = {
        **ctx.base_params(),
        "sizes": list(sizes),
        "sends": sends,
        "stored": stored,
        "replays": replays,
        "sustain_s": sustain_s,
        "senders": senders,
        "window": window,
        "streams_per_channel": STREAMS_PER_CHANNEL,
    }
    # Per size: joins, the series (a send may wait 5 s), the fill and the
    # sustained phase with their drains, the replays.
    per_size = 30.0 + 6 * sends + 2 * stored / 10 + sustain_s + 20 + 40 * replays
    timeout = 60.0 + sum(sizes) / 20 + len(sizes) * per_size
    return run_load(ctx, "groups", params, timeout, GroupsResult)


def history(
    ctx: Context,
    messages: int,
    reads: int = 200,
    kinds: tuple[str, ...] = ("private",),
    load_s: float = 2.0,
    limit: int = 50,
    concurrency: int = 64,
) -> HistoryResult:
    """Two users fill a conversation of each kind with M messages; one of
    them reads pages of its history, one at a time, then many in flight."""
    params = {
        **ctx.base_params(),
        "messages": messages,
        "reads": reads,
        "kinds": list(kinds),
        "load_s": load_s,
        "limit": limit,
        "concurrency": concurrency,
    }
    # The fill is paced under the per-user rate limit (two senders).
    fill = messages / 150
    timeout = 60.0 + len(kinds) * (fill + reads * 0.1 + load_s + 30)
    return run_load(ctx, "history", params, timeout, HistoryResult)


def convlist(ctx: Context, conversations: int) -> ConvListResult:
    """One user with K conversations (made by K senders through the route)
    reads their conversation list (cim.bench.convlist)."""
    params = {**ctx.base_params(), "conversations": conversations}
    return run_load(ctx, "convlist", params, 60.0 + conversations * 0.1, ConvListResult)


def connections(ctx: Context, count: int, in_flight: int = 200) -> ConnectionsResult:
    """K clients connect and log in to the (single) chat server of the
    deployment, spread over load processes, ``in_flight`` joins at a time in
    all; they heartbeat while held. The server's RSS before and after, divided
    by the streams still open, gives its memory per connection."""
    if len(ctx.deployment.servers) != 1:
        raise ScenarioError("the connections scenario needs a deployment with one chat server")
    server = ctx.deployment.servers[0]
    processes = max(1, math.ceil(count / CONNECTIONS_PER_LOAD))
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    # Every join is a Login at the one route: more in flight only lengthens its queue.
    batch = max(1, math.ceil(in_flight / processes))
    deadline = time.monotonic() + 60.0 + count / 20
    time.sleep(0.5)  # let the fresh server settle before its baseline
    rss_before = procstats.read(server.pid).rss_kb
    whole = StatsWatch(ctx.pids()).start()
    loads = [
        start_load(
            ctx,
            "connections",
            {**ctx.base_params(), "users": share, "index": i, "batch": batch},
            name=f"load-{i + 1}",
        )
        for i, share in enumerate(shares)
    ]
    try:
        ctx.progress(f"connections: seeding {count} accounts")
        _expect_all(loads, "phase", deadline)  # each has seeded its accounts
        ctx.progress(f"connections: {count} clients connecting")
        watch = StatsWatch({**ctx.pids(), **{load.name: load.pid for load in loads}}).start()
        for load in loads:
            load.go()
        _expect_all(loads, "phase", deadline)  # each has connected its share
        connect_phase = watch.stop()
        for load in loads:
            load.go()
        ready = _expect_all(loads, "ready", deadline)
        time.sleep(1.0)  # the server finishes its bookkeeping (session refreshes, logs)
        held = procstats.read(server.pid)
        alive = sum(int(event["alive"]) for event in ready)
        ctx.progress("connections: closing")
        for load in loads:
            load.go()
        parts = [
            decode(ConnectionsPart, load.expect("result", deadline)["result"]) for load in loads
        ]
    finally:
        for load in loads:
            load.stop(5.0)
    phases = {"connect": connect_phase}
    totals = _with_load(whole.stop(phases), {f"load-{i + 1}": p for i, p in enumerate(parts)})
    connected = sum(part.users for part in parts)
    span = max(part.end for part in parts) - min(part.start for part in parts)
    return ConnectionsResult(
        connections=count,
        connected=connected,
        alive_at_measurement=alive,
        alive_after_hold=sum(part.alive_after_hold for part in parts),
        in_flight=batch * processes,
        load_processes=processes,
        errors=sum(part.errors for part in parts),
        error_kinds=_merge_counts(part.error_kinds for part in parts),
        connect_per_s=connected / span if span > 0 else 0.0,
        connect_seconds=span,
        connect_latency_ms_worst_process=max(
            (part.connect_latency_ms for part in parts), key=lambda latency: latency.p99
        ),
        server_rss_kb_before=rss_before,
        server_rss_kb_after=held.rss_kb,
        server_peak_rss_kb=held.peak_rss_kb,
        rss_per_connection_kb=(held.rss_kb - rss_before) / alive if alive else 0.0,
        pings=sum(part.pings for part in parts),
        pongs=sum(part.pongs for part in parts),
        notices=_merge_counts(part.notices for part in parts),
        parts=parts,
        phases=phases,
        processes=totals,
    )


def _with_load(totals: Usage, loads: dict[str, LoadRun]) -> Usage:
    """``totals`` with each load process's own figures for its whole life
    (it reports them last: start-up included)."""
    for name, run in loads.items():
        own = run.load_process
        totals.processes[name] = ProcessUse(
            cpu_s=own.cpu_seconds if own else None,
            peak_rss_kb=own.peak_rss_kb if own else None,
            note="whole process life, start-up included",
        )
    return totals


def _expect_all(loads: list[Child], kind: str, deadline: float) -> list[Event]:
    return [load.expect(kind, deadline) for load in loads]


def _merge_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in counts:
        for key, value in part.items():
            merged[key] = merged.get(key, 0) + int(value)
    return merged
