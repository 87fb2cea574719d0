"""One benchmark run (``cim bench``): the bare-gRPC ceilings, then cim's
scenarios on a real cluster, collected in one :class:`BenchResults` (see
:mod:`cim.bench.report` for the figures, ratios and targets).

Order: ceilings first (nothing else running); then a cluster with one route and
two chat servers (round-robin routing) for the private, group, login, groups
and history scenarios (the last two after the others: they leave groups and
long conversations in the store); then a fresh deployment with one chat server for the connections
scenario. Everything is stopped when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path

from cim.bench import scenarios
from cim.bench.cluster import BenchCluster
from cim.bench.procstats import raise_open_file_limit
from cim.bench.records import (
    ALL_SCENARIOS,
    REDIS_FSYNC,
    BenchOptions,
    BenchResults,
    Ceilings,
    Machine,
    Measured,
    ScryptCost,
)

__all__ = ["ALL_SCENARIOS", "REDIS_FSYNC", "BenchOptions", "machine", "run", "scrypt_cost"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


# --- the machine --------------------------------------------------------------------
def machine() -> Machine:
    """Cores, memory, versions and date of this run."""
    import grpc

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    ram_kb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kb = int(line.split()[1])
    return Machine(
        cores=os.cpu_count() or 0,
        cpu=model,
        ram_mb=ram_kb // 1024,
        os=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {platform.python_version()}",
        grpcio=grpc.__version__,
        protobuf=version("protobuf"),
        uvloop=version("uvloop"),
        redis_py=version("redis"),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        load_average=[round(x, 2) for x in os.getloadavg()],
    )


def scrypt_cost(rounds: int = 5) -> ScryptCost:
    """Milliseconds one scrypt with cim's parameters takes here: what every
    Login costs the route (it verifies the password with it)."""
    from cim.core.passwords import ScryptParams

    params = ScryptParams()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        hashlib.scrypt(
            b"bench-password",
            salt=os.urandom(16),
            n=params.n,
            r=params.r,
            p=params.p,
            maxmem=128 * params.n * params.r * params.p * 2,
            dklen=32,
        )
        times.append(time.perf_counter() - started)
    # The fastest round: the others waited for a core (the machine may be busy).
    ms = min(times) * 1000
    cores = os.cpu_count() or 1
    return ScryptCost(
        n=params.n,
        r=params.r,
        p=params.p,
        ms_per_hash=ms,
        ms_per_hash_median=statistics.median(times) * 1000,
        # No route can log in more users a second than its cores can hash.
        logins_per_s_bound=cores * 1000 / ms if ms else 0.0,
    )


# --- the ceilings ---------------------------------------------------------------------
def run_ceilings(options: BenchOptions, progress: Progress) -> Ceilings:
    """Bare grpc.aio figures on this machine (``cim.bench.ceiling``), with the
    sizes of cim's scenarios."""
    from cim.bench import ceiling

    base = ceiling.CeilingOptions(
        payload_bytes=options.payload_bytes,
        duration=options.ceiling_duration or min(options.duration, 5.0),
        unary_concurrency=64,
        relay_users=options.users,
        relay_rate=0.0,
        use_uvloop=options.use_uvloop,
    )
    return ceiling.all_ceilings(
        base,
        relay_rate=options.rate,
        connections=options.connections if "connections" in options.scenarios else None,
        progress=progress,
    )


# --- a whole run ------------------------------------------------------------------------
def run(options: BenchOptions, progress: Progress | None = None) -> BenchResults:
    """Runs the selected scenarios; returns every measurement (no figures yet:
    :func:`cim.bench.report.figures` derives them)."""
    say = progress or (lambda text: None)
    started = time.perf_counter()
    raise_open_file_limit()
    results = BenchResults(machine=machine(), options=options, scrypt=scrypt_cost())
    wanted = options.scenarios

    def step(text: str) -> None:
        say(f"[{time.perf_counter() - started:5.0f} s] {text}")

    if "ceiling" in wanted:
        results.ceilings = run_ceilings(options, step)
        results.errors += [f"ceiling {key}: {why}" for key, why in results.ceilings.failed.items()]

    cluster_scenarios = [
        s for s in ("private", "group", "login", "convlist", "groups", "history") if s in wanted
    ]
    with contextlib.ExitStack() as stack:
        if options.workdir is not None:
            workdir = options.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cim-bench-")))
        if cluster_scenarios or "connections" in wanted:
            cluster = stack.enter_context(
                BenchCluster(
                    workdir,
                    log_level=options.cim_log_level,
                    redis_fsync=options.redis_fsync,
                    metrics=options.metrics,
                )
            )
            step("starting ZooKeeper and Redis")
            cluster.start_backends()
            if cluster_scenarios:
                step("starting a route and 2 chat servers")
                deployment = cluster.start_cim(
                    servers=2, routing="round-robin", group_max_members=_group_limit(options)
                )
                ctx = scenarios.Context(cluster, deployment, workdir, options.use_uvloop, step)
                for name in cluster_scenarios:
                    _scenario(results, name, partial(_run_one, ctx, name, options))
                step("stopping the chat servers and the route")
                cluster.stop_cim()
            if "connections" in wanted:
                step("starting a route and 1 chat server")
                deployment = cluster.start_cim(servers=1, routing="round-robin")
                ctx = scenarios.Context(cluster, deployment, workdir, options.use_uvloop, step)
                _scenario(
                    results, "connections", partial(scenarios.connections, ctx, options.connections)
                )
            step("stopping the cluster")
    results.machine.load_average_after = [round(x, 2) for x in os.getloadavg()]
    results.elapsed_s = round(time.perf_counter() - started, 1)
    step("done")
    return results


def _run_one(ctx: scenarios.Context, name: str, options: BenchOptions) -> Measured:
    if name == "private":
        return scenarios.private(
            ctx, options.users, options.duration, options.rate, options.payload_bytes
        )
    if name == "group":
        return scenarios.group(ctx, options.fanout_users, options.fanout_repeats)
    if name == "login":
        return scenarios.login(ctx, options.logins, options.login_concurrency)
    if name == "groups":
        return scenarios.groups(
            ctx,
            options.group_sizes,
            options.group_sends,
            options.group_stored,
            options.group_replays,
            _phase_seconds(options.group_sustain_s, options.duration, 3.0),
            options.group_senders,
            options.group_window,
        )
    if name == "history":
        return scenarios.history(
            ctx,
            options.history_messages,
            options.history_reads,
            options.history_kinds,
            _phase_seconds(None, options.duration, 2.0),
        )
    if name == "convlist":
        return scenarios.convlist(ctx, options.list_conversations)
    raise ValueError(f"unknown scenario {name}")


def _phase_seconds(asked: float | None, duration: float, most: float) -> float:
    """A phase's length: as asked, else the run's duration, at most ``most``."""
    return asked if asked is not None else min(duration, most)


def _group_limit(options: BenchOptions) -> int | None:
    """The route's --group-max-members when a group size is over its default."""
    from cim.core.groups import Limits

    largest = max(options.group_sizes) if "groups" in options.scenarios else 0
    return largest if largest > Limits().max_members else None


def _scenario(results: BenchResults, name: str, work: Callable[[], Measured]) -> None:
    """Runs one scenario; a failure is recorded and the run goes on."""
    started = time.perf_counter()
    try:
        outcome = work()
    except (scenarios.ScenarioError, OSError, RuntimeError) as exc:
        log.error("scenario %s failed: %s", name, exc)
        results.errors.append(f"{name}: {exc}")
        results.scenarios.failed[name] = str(exc)
        return
    outcome.scenario_wall_s = round(time.perf_counter() - started, 2)
    setattr(results.scenarios, name, outcome)
