"""One benchmark run (``cim bench``): the bare-gRPC ceilings, then cim's
scenarios on a real cluster, collected in one result dict (see
:mod:`cim.bench.report` for the figures, ratios and targets).

Order: ceilings first (nothing else running); then a cluster with one route and
two chat servers (round-robin routing) for the private, group and login
scenarios; then a fresh deployment with one chat server for the connections
scenario. Everything is stopped when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import inspect
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from cim.bench import scenarios
from cim.bench.cluster import BenchCluster
from cim.bench.procstats import raise_open_file_limit

log = logging.getLogger(__name__)

ALL_SCENARIOS = ("ceiling", "private", "group", "connections", "login")
Progress = Callable[[str], None]
Result = dict[str, Any]


REDIS_FSYNC = ("off", "everysec", "always")


@dataclass(frozen=True)
class BenchOptions:
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    users: int = 200
    rate: float = 500.0
    duration: float = 8.0
    fanout_users: int = 1000
    fanout_repeats: int = 5
    connections: int = 2000
    logins: int = 1000
    login_concurrency: int = 64
    payload_bytes: int = 64
    use_uvloop: bool = True
    # Seconds each ceiling runs (default: min(duration, 5)).
    ceiling_duration: float | None = None
    # Logs and data of the run's processes (default: a temporary directory, removed after).
    workdir: Path | None = None
    cim_log_level: str = "info"
    # Redis persistence: "off", or an AOF with appendfsync "everysec" / "always".
    redis_fsync: str = "off"

    def __post_init__(self) -> None:
        if self.redis_fsync not in REDIS_FSYNC:
            raise ValueError(f"redis fsync must be one of {', '.join(REDIS_FSYNC)}")
        unknown = set(self.scenarios) - set(ALL_SCENARIOS)
        if unknown:
            raise ValueError(
                f"unknown scenario(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(ALL_SCENARIOS)}"
            )


# --- the machine --------------------------------------------------------------------
def machine() -> Result:
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
    return {
        "cores": os.cpu_count() or 0,
        "cpu": model,
        "ram_mb": ram_kb // 1024,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "protobuf": version("protobuf"),
        "uvloop": version("uvloop"),
        "redis_py": version("redis"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def scrypt_cost(rounds: int = 5) -> Result:
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
    return {
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "ms_per_hash": ms,
        "ms_per_hash_median": statistics.median(times) * 1000,
        # No route can log in more users a second than its cores can hash.
        "logins_per_s_bound": cores * 1000 / ms if ms else 0.0,
    }


# --- the ceilings ---------------------------------------------------------------------
def run_ceilings(options: BenchOptions, progress: Progress) -> Result:
    """Bare grpc.aio figures on this machine (``cim.bench.ceiling``)."""
    try:
        from cim.bench import ceiling
    except ImportError as exc:
        return {"error": f"cim.bench.ceiling is not available: {exc}"}
    duration = options.ceiling_duration or min(options.duration, 5.0)
    base = ceiling.CeilingOptions(
        payload_bytes=options.payload_bytes,
        duration=duration,
        unary_concurrency=64,
        relay_users=options.users,
        relay_rate=0.0,
        use_uvloop=options.use_uvloop,
    )
    jobs: list[tuple[str, str, Callable[[], Any]]] = [
        ("unary", "unary calls", lambda: ceiling.unary_ceiling(base)),
        ("streaming", "server-streaming push", lambda: ceiling.streaming_ceiling(base)),
        ("relay", "stream-to-stream relay", lambda: ceiling.relay_ceiling(base)),
        (
            "relay_fixed",
            f"relay at {options.rate:g}/s",
            lambda: ceiling.relay_ceiling(dataclasses.replace(base, relay_rate=options.rate)),
        ),
    ]
    if "connections" in options.scenarios:
        jobs.append(
            (
                "stream_memory",
                f"memory of {options.connections} idle streams",
                lambda: ceiling.stream_memory_ceiling(options.connections, base),
            )
        )
    results: Result = {"duration": duration}
    for key, what, job in jobs:
        progress(f"ceiling: {what}")
        started = time.perf_counter()
        try:
            value = job()
            if inspect.isawaitable(value):
                value = _run_async(value)
        except Exception as exc:
            log.exception("ceiling %s failed", key)
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        results[key] = dict(value)
        results[key]["wall_s"] = round(time.perf_counter() - started, 2)
    return results


def _run_async(awaitable: Any) -> Any:
    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


# --- a whole run ------------------------------------------------------------------------
def run(options: BenchOptions, progress: Progress | None = None) -> Result:
    """Runs the selected scenarios; returns every measurement (no figures yet:
    :func:`cim.bench.report.figures` derives them)."""
    say = progress or (lambda text: None)
    started = time.perf_counter()
    raise_open_file_limit()
    results: Result = {
        "machine": machine(),
        "options": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in dataclasses.asdict(options).items()
        },
        "scrypt": scrypt_cost(),
        "ceilings": {},
        "scenarios": {},
        "errors": [],
    }
    wanted = options.scenarios

    def elapsed() -> str:
        return f"[{time.perf_counter() - started:5.0f} s]"

    def step(text: str) -> None:
        say(f"{elapsed()} {text}")

    if "ceiling" in wanted:
        results["ceilings"] = run_ceilings(options, step)
        for key, value in results["ceilings"].items():
            if isinstance(value, dict) and "error" in value:
                results["errors"].append(f"ceiling {key}: {value['error']}")
        if "error" in results["ceilings"]:
            results["errors"].append(results["ceilings"]["error"])

    cluster_scenarios = [s for s in ("private", "group", "login") if s in wanted]
    with contextlib.ExitStack() as stack:
        if options.workdir is not None:
            workdir = options.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cim-bench-")))
        if cluster_scenarios or "connections" in wanted:
            cluster = stack.enter_context(
                BenchCluster(
                    workdir, log_level=options.cim_log_level, redis_fsync=options.redis_fsync
                )
            )
            step("starting ZooKeeper and Redis")
            cluster.start_backends()
            if cluster_scenarios:
                step("starting a route and 2 chat servers")
                deployment = cluster.start_cim(servers=2, routing="round-robin")
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
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    step("done")
    return results


def _run_one(ctx: scenarios.Context, name: str, options: BenchOptions) -> Result:
    if name == "private":
        return scenarios.private(
            ctx, options.users, options.duration, options.rate, options.payload_bytes
        )
    if name == "group":
        return scenarios.group(ctx, options.fanout_users, options.fanout_repeats)
    if name == "login":
        return scenarios.login(ctx, options.logins, options.login_concurrency)
    raise ValueError(f"unknown scenario {name}")


def _scenario(results: Result, name: str, work: Callable[[], Result]) -> None:
    """Runs one scenario; a failure is recorded and the run goes on."""
    started = time.perf_counter()
    try:
        outcome = work()
    except (scenarios.ScenarioError, OSError, RuntimeError) as exc:
        log.error("scenario %s failed: %s", name, exc)
        results["errors"].append(f"{name}: {exc}")
        outcome = {"error": str(exc)}
    outcome["scenario_wall_s"] = round(time.perf_counter() - started, 2)
    results["scenarios"][name] = outcome
