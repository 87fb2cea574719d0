"""`cim bench` end to end with tiny sizes: every scenario and ceiling runs on a
real cluster (ZooKeeper, Redis, route, chat servers), the JSON holds positive
figures for each, and no process of the run is left behind.

The run happens once per module (the suite's backend parametrization would
otherwise run it twice); every test reads its outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN_DIR = os.path.dirname(sys.executable)
CIM = shutil.which("cim", path=BIN_DIR) or shutil.which("cim") or "cim"
RUN_TIMEOUT = 90.0


@dataclass
class BenchRun:
    completed: subprocess.CompletedProcess[str]
    results: dict[str, Any]
    marker: str
    tmpdir: Path


def _processes_with(marker: str) -> list[str]:
    """Processes whose environment carries the marker (the run and its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            if marker.encode() not in environ:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    base = tmp_path_factory.mktemp("bench")
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    output = base / "results" / "bench-results.json"
    marker = uuid.uuid4().hex
    env = {key: value for key, value in os.environ.items() if not key.startswith("CIM_")}
    # The marker's variable name starts with "BENCH" so that the children,
    # which drop inherited CIM_* settings, keep it.
    env["BENCH_SMOKE_MARKER"] = marker
    env["TMPDIR"] = str(tmpdir)
    completed = subprocess.run(
        [
            CIM,
            "bench",
            "--duration",
            "0.5",
            "--users",
            "10",
            "--fanout-users",
            "20",
            "--connections",
            "50",
            "--logins",
            "20",
            "--group-sizes",
            "6,12",
            "--history-messages",
            "120",
            "--list-conversations",
            "30",
            "--output",
            str(output),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, (
        f"cim bench failed ({completed.returncode}):\n"
        f"{completed.stdout}\n{completed.stderr[-4000:]}"
    )
    return BenchRun(completed, json.loads(output.read_text()), marker, tmpdir)


def test_every_scenario_has_positive_figures(bench_run: BenchRun) -> None:
    results = bench_run.results
    assert results["errors"] == []
    ceilings = results["ceilings"]
    assert ceilings["unary"]["calls_per_s"] > 0
    assert ceilings["streaming"]["msgs_per_s"] > 0
    assert ceilings["relay"]["msgs_per_s"] > 0
    assert ceilings["relay_fixed"]["latency_ms"]["p99"] > 0
    assert ceilings["stream_memory"]["rss_per_connection_kb"] > 0

    scenarios = results["scenarios"]
    assert scenarios["failed"] == {} and results["ceilings"]["failed"] == {}
    assert set(scenarios) - {"failed"} == {
        "private",
        "group",
        "connections",
        "login",
        "convlist",
        "groups",
        "history",
    }
    private = scenarios["private"]
    assert private["users"] == 10
    for path in ("stream", "unary"):
        for phase in ("max", "fixed"):
            figures = private[path][phase]
            assert figures["msgs_per_s"] > 0, (path, phase)
            assert figures["received"] > 0, (path, phase)
            assert figures["latency_ms"]["p50"] > 0, (path, phase)
            assert figures["errors"] == 0, (path, phase, figures["error_kinds"])
    # Round-robin routing spread the users over both chat servers.
    assert sorted(private["servers"].values()) == [5, 5]

    group = scenarios["group"]
    assert group["receivers"] == 19 and group["errors"] == 0
    assert group["best"]["deliveries_per_s"] > 0
    assert group["median"]["seconds"] > 0

    connections = scenarios["connections"]
    assert connections["connected"] == 50 and connections["errors"] == 0
    assert connections["alive_at_measurement"] == 50
    assert connections["connect_per_s"] > 0
    assert connections["rss_per_connection_kb"] > 0
    # Each client had a TCP connection of its own, as the bare ceiling's streams do.
    assert sum(part["tcp_connections"] for part in connections["parts"]) == 50

    login = scenarios["login"]
    for variant in ("default", "cheap"):
        assert login[variant]["logins"] == 20 and login[variant]["errors"] == 0
        assert login[variant]["logins_per_s"] > 0
    assert results["scrypt"]["ms_per_hash"] > 0

    sizes = scenarios["groups"]["sizes"]
    assert [size["members"] for size in sizes] == [6, 12]
    for size in sizes:
        members = size["members"]
        assert size["errors"] == 0, size["error_kinds"]
        # Half of the members online, the sender among them; every send reached each of them.
        assert size["online"] == members // 2 and size["receivers"] == members // 2 - 1
        assert size["group_id"].startswith("g:")
        series = size["series"]
        assert series["sends"] == series["complete"] == 30
        assert 0 < series["to_first_ms"]["p50"] <= series["to_last_ms"]["p50"]
        sustained = size["sustained"]
        assert sustained["accepted"] > 0 and sustained["deliveries_per_s"] > 0
        assert sustained["deliveries"] == sustained["expected_deliveries"]
        assert sustained["expected_deliveries"] == sustained["accepted"] * size["receivers"]
        # Each returning member had every group message sent while it was away.
        replay = size["replay"]
        assert replay["logins"] == 3 and replay["replayed"] == replay["stored"] == 100
        assert replay["to_replay_done_ms"]["p50"] > replay["login_ms"]["p50"] > 0

    private_history, group_history = scenarios["history"]["conversations"]
    assert (private_history["kind"], group_history["kind"]) == ("private", "group")
    # The group's history starts with its creation event.
    for history, head in ((private_history, 120), (group_history, 121)):
        assert history["errors"] == 0, history["error_kinds"]
        assert history["head_position"] == head
        assert history["reads"] == 200 and history["page_ms"]["p50"] > 0
        assert history["load_reads_per_s"] > 0 and history["load_ms"]["p99"] > 0

    convlist = scenarios["convlist"]
    assert (convlist["conversations"], convlist["listed"], convlist["errors"]) == (30, 30, 0)
    assert convlist["calls"] == 500 and convlist["latency_ms"]["p50"] > 0
    assert convlist["walk_pages"] == 2 and convlist["walk_page_latency_ms"]["p99"] > 0

    # CPU and memory of every process, per phase and per scenario.
    everyone = {"route", "server-1", "server-2", "redis", "zookeeper", "load"}
    phase = private["phases"]["stream-max"]["processes"]
    assert everyone <= set(phase)
    assert phase["load"]["peak_rss_kb"] > 0
    for name in ("private", "group", "login", "convlist", "groups", "history"):
        totals = scenarios[name]["processes"]["processes"]
        assert everyone <= set(totals), name
        assert totals["route"]["cpu_s"] > 0 and totals["route"]["peak_rss_kb"] > 0, name
    assert {"route", "server-1", "load-1"} <= set(connections["processes"]["processes"])

    figures = results["figures"]
    assert {row["scenario"] for row in figures} == {
        "ceiling",
        "private",
        "group",
        "connections",
        "login",
        "convlist",
        "groups",
        "history",
    }
    ratios = [row for row in figures if row["ratio"] is not None]
    assert ratios and all(row["ratio"] > 0 for row in ratios)


def test_table_is_printed(bench_run: BenchRun) -> None:
    out = bench_run.completed.stdout
    assert "scenario" in out and "ceiling" in out and "targets met:" in out
    for scenario in ("private", "group", "connections", "login", "convlist", "groups", "history"):
        assert f"\n{scenario} " in out
    # Progress went to stderr, one line per step (stderr is not a terminal here).
    assert "private: stream-max" in bench_run.completed.stderr


def test_no_process_is_left_behind(bench_run: BenchRun) -> None:
    assert _processes_with(bench_run.marker) == []
    # Its temporary directory (ZooKeeper and Redis data, logs) is gone too.
    assert list(bench_run.tmpdir.iterdir()) == []
