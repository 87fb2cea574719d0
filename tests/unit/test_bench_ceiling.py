"""The bare-gRPC ceilings run end to end at tiny sizes (real processes, real sockets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cim.bench.ceiling import (
    CeilingOptions,
    all_ceilings,
    relay_ceiling,
    stream_memory_ceiling,
    streaming_ceiling,
    unary_ceiling,
)
from cim.bench.records import CeilingRun, Latency

TINY = CeilingOptions(duration=0.5, unary_concurrency=8, relay_users=10)


def _children_left() -> list[str]:
    """Processes started by this one that run cim.bench.ceiling."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and "cim.bench.ceiling" in cmdline:
            left.append(f"{entry.name}: {cmdline}")
    return left


def _check_processes(result: CeilingRun, names: tuple[str, ...]) -> None:
    for name in names:
        stats = result.processes[name]
        assert stats.rss_kb > 0
        assert stats.cpu_seconds >= 0
    assert _children_left() == []


def _check_latency(latency: Latency) -> None:
    assert 0 < latency.p50 <= latency.p90 <= latency.p99 <= latency.max


def test_unary_ceiling() -> None:
    result = unary_ceiling(TINY)
    assert result.calls_per_s > 0
    _check_latency(result.latency_ms)
    _check_processes(result, ("server", "load"))


def test_streaming_ceiling() -> None:
    result = streaming_ceiling(TINY)
    assert result.msgs_per_s > 0
    _check_processes(result, ("server", "load"))


@pytest.mark.parametrize("rate", [0.0, 200.0])
def test_relay_ceiling(rate: float) -> None:
    o = CeilingOptions(duration=0.5, relay_users=10, relay_rate=rate)
    result = relay_ceiling(o)
    assert result.msgs_per_s > 0
    _check_latency(result.latency_ms)
    assert result.channels == 1
    if rate:  # open loop: about the rate asked for, nothing lost
        assert 0.5 * rate < result.msgs_per_s < 1.5 * rate
        assert result.received_in_window >= result.sent_in_window - 5
    _check_processes(result, ("server", "load"))


def test_stream_memory_ceiling() -> None:
    result = stream_memory_ceiling(50, CeilingOptions(), batch=20, load_processes=2)
    assert result.connections == 50
    assert result.server_rss_kb_after > result.server_rss_kb_before > 0
    assert result.rss_per_connection_kb > 0
    assert result.connect_per_s > 0
    assert result.server_open_fds_added >= 50  # one TCP connection per stream
    assert result.load_processes == 2
    _check_processes(result, ("server",))


def test_a_failing_ceiling_is_recorded_and_the_others_run() -> None:
    one_user = CeilingOptions(duration=0.3, unary_concurrency=4, relay_users=1)
    ceilings = all_ceilings(one_user, relay_rate=100.0, connections=None)
    assert ceilings.unary is not None and ceilings.unary.calls_per_s > 0
    assert ceilings.unary.wall_s > 0
    assert ceilings.streaming is not None and ceilings.stream_memory is None
    assert ceilings.relay is None and ceilings.relay_fixed is None
    assert set(ceilings.failed) == {"relay", "relay_fixed"}
    assert "relay_users must be between 2" in ceilings.failed["relay"]
    assert _children_left() == []


def test_relay_needs_two_users() -> None:
    with pytest.raises(ValueError):
        relay_ceiling(CeilingOptions(relay_users=1))
