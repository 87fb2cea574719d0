"""The benchmark report: figures, ratios and targets from a fixed result, the
table and the JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cim.bench import report
from cim.bench.report import Figure, Target


def _latency(p50: float, p99: float) -> dict[str, float]:
    return {"p50": p50, "p90": (p50 + p99) / 2, "p99": p99, "max": p99 * 2}


RESULTS: dict[str, Any] = {
    "machine": {
        "cores": 2,
        "cpu": "Test CPU",
        "ram_mb": 4096,
        "python": "CPython 3.11.7",
        "grpcio": "1.85.0",
        "uvloop": "0.23.0",
        "date": "2026-11-28T08:00:00+00:00",
        "load_average": [0.5, 0.4, 0.3],
    },
    "options": {"rate": 500.0},
    "scrypt": {"n": 16384, "r": 8, "p": 1, "ms_per_hash": 50.0, "logins_per_s_bound": 40.0},
    "ceilings": {
        "unary": {"calls_per_s": 4000.0, "latency_ms": _latency(10.0, 30.0)},
        "streaming": {"msgs_per_s": 20000.0},
        "relay": {"msgs_per_s": 10000.0, "latency_ms": _latency(20.0, 50.0)},
        "relay_fixed": {"msgs_per_s": 500.0, "latency_ms": _latency(0.5, 1.5)},
        "stream_memory": {"rss_per_connection_kb": 40.0, "connect_per_s": 1000.0},
    },
    "scenarios": {
        "private": {
            "stream": {
                "max": {"msgs_per_s": 7000.0, "latency_ms": _latency(25.0, 80.0), "errors": 0},
                "fixed": {
                    "msgs_per_s": 500.0,
                    "latency_ms": _latency(2.0, 4.5),
                    "errors": 1,
                    "rate": 500.0,
                },
            },
            "unary": {
                "max": {"msgs_per_s": 1600.0, "latency_ms": _latency(60.0, 200.0), "errors": 0},
                "fixed": {"msgs_per_s": 500.0, "latency_ms": _latency(3.0, 9.0), "errors": 0},
            },
            "phases": {
                "stream-max": {
                    "wall_s": 8.0,
                    "other_cpu_s": 0.8,
                    "processes": {
                        "route": {"cpu_percent": 40.0, "peak_rss_kb": 51200},
                        "load": {"cpu_percent": 70.0, "peak_rss_kb": 61440},
                    },
                }
            },
        },
        "group": {
            "receivers": 999,
            "rounds": [{}, {}, {}, {}, {}],
            "best": {"seconds": 0.08, "deliveries_per_s": 12487.5},
            "median": {"seconds": 0.1, "deliveries_per_s": 9990.0},
            "errors": 0,
        },
        "connections": {
            "connections": 2000,
            "connected": 2000,
            "alive_at_measurement": 2000,
            "rss_per_connection_kb": 70.0,
            "connect_per_s": 300.0,
            "errors": 0,
        },
        "login": {
            "hash_params": {"default": {"n": 16384}, "cheap": {"n": 256}},
            "default": {"logins_per_s": 40.0, "latency_ms": _latency(1500.0, 1800.0), "errors": 0},
            "cheap": {"logins_per_s": 1400.0, "latency_ms": _latency(40.0, 90.0), "errors": 2},
        },
    },
    "errors": [],
    "elapsed_s": 123.4,
}


def _row(rows: list[Figure], scenario: str, starts: str) -> Figure:
    matches = [r for r in rows if r.scenario == scenario and r.figure.startswith(starts)]
    assert len(matches) == 1, [r.figure for r in rows if r.scenario == scenario]
    return matches[0]


@pytest.fixture
def rows() -> list[Figure]:
    return report.figures(RESULTS)


def test_each_cim_figure_is_divided_by_its_ceiling(rows: list[Figure]) -> None:
    stream = _row(rows, "private", "stream path msgs/s")
    assert stream.ceiling == 10000.0 and stream.ceiling_name == "relay"
    assert stream.ratio == pytest.approx(0.7)
    unary = _row(rows, "private", "unary path msgs/s")
    assert unary.ceiling == 4000.0 and unary.ratio == pytest.approx(0.4)
    fanout = _row(rows, "group", "fan-out deliveries/s (best")
    assert fanout.ceiling == 20000.0 and fanout.ratio == pytest.approx(12487.5 / 20000)
    memory = _row(rows, "connections", "server RSS per connection")
    assert memory.ceiling == 40.0 and memory.ratio == pytest.approx(1.75)
    logins = _row(rows, "login", "logins/s (scrypt n=2^14)")
    assert logins.ceiling == 4000.0 and logins.ratio == pytest.approx(0.01)


def test_targets_decide_pass_and_fail(rows: list[Figure]) -> None:
    verdicts = {
        ("private", "stream path msgs/s"): True,  # 0.7 >= 0.6
        ("private", "stream path p99 at 500/s"): True,  # 4.5 < 5 ms
        ("private", "unary path msgs/s"): False,  # 0.4 < 0.5
        ("private", "unary path p99 at 500/s"): False,  # 9 ms
        ("private", "errors"): False,  # one error
        ("group", "fan-out deliveries/s (best"): True,  # 0.62 >= 0.6
        ("group", "errors"): True,
        ("connections", "clients connected"): True,
        ("connections", "server RSS per connection"): False,  # 1.75 > 1.5
        ("login", "logins/s (scrypt"): False,  # 0.01 < 0.3
        ("login", "logins/s (accounts hashed n=2^8)"): True,  # 0.35 >= 0.3
        ("login", "errors"): False,  # two errors
    }
    for (scenario, starts), expected in verdicts.items():
        assert _row(rows, scenario, starts).passed is expected, (scenario, starts)
    informational = _row(rows, "group", "fan-out deliveries/s (median)")
    assert informational.passed is None and informational.target == ""
    assert _row(rows, "private", "stream path p99 at").target == "< 5 ms"
    assert _row(rows, "private", "stream path msgs/s").target == ">= 0.6x"
    assert _row(rows, "connections", "server RSS").target == "<= 1.5x"


def test_units_and_derived_values(rows: list[Figure]) -> None:
    best = _row(rows, "group", "time to last of 999 (best)")
    assert best.value == pytest.approx(80.0) and best.unit == "ms"
    bound = _row(rows, "login", "logins/s vs the scrypt bound")
    assert bound.ratio == pytest.approx(1.0) and bound.passed is None
    assert _row(rows, "login", "scrypt time per login").value == 50.0
    assert _row(rows, "private", "errors").value == 1.0


def test_target_logic() -> None:
    at_least = Target(">=", 0.6, on_ratio=True)
    assert at_least.check(100.0, 0.6) is True
    assert at_least.check(100.0, 0.59) is False
    assert at_least.check(100.0, None) is None  # no ceiling: undecided
    below = Target("<", 5.0)
    assert below.check(4.99, None) is True
    assert below.check(5.0, 0.1) is False
    assert below.check(None, None) is None
    assert Target("==", 0).check(0.0, None) is True
    assert Target("<=", 1.5, on_ratio=True).describe() == "<= 1.5x"
    assert Target("<", 5.0).describe("ms") == "< 5 ms"


def test_figure_without_ceiling_has_no_ratio() -> None:
    assert report.figure("s", "f", 10.0, ceiling=None).ratio is None
    assert report.figure("s", "f", 10.0, ceiling=0.0).ratio is None
    assert report.figure("s", "f", None, ceiling=5.0).ratio is None
    assert report.figure("s", "f", "oops").value is None
    assert report.figure("s", "f", float("nan")).value is None


def test_missing_ceilings_leave_ratio_targets_undecided() -> None:
    results = copy.deepcopy(RESULTS)
    results["ceilings"] = {}
    rows = report.figures(results)
    assert not [r for r in rows if r.scenario == "ceiling"]
    stream = _row(rows, "private", "stream path msgs/s")
    assert stream.ratio is None and stream.passed is None
    # Absolute targets are still decided.
    assert _row(rows, "private", "unary path p99 at").passed is False


def test_a_failed_scenario_is_one_failed_row() -> None:
    results = copy.deepcopy(RESULTS)
    results["scenarios"]["group"] = {"error": "load ended without a result", "phases": {}}
    results["errors"] = ["group: load ended without a result"]
    rows = report.figures(results)
    group = [r for r in rows if r.scenario == "group"]
    assert [(r.figure, r.passed) for r in group] == [("FAILED (see errors)", False)]
    table = report.render_table(results, rows)
    assert "FAILED (see errors)" in table
    assert "group: load ended without a result" in table


def test_only_the_scenarios_run_are_reported() -> None:
    results = copy.deepcopy(RESULTS)
    results["scenarios"] = {"login": results["scenarios"]["login"]}
    assert {r.scenario for r in report.figures(results)} == {"ceiling", "login"}


def test_table(rows: list[Figure]) -> None:
    table = report.render_table(RESULTS, rows)
    lines = table.splitlines()
    assert lines[0].startswith("machine: 2 cores (Test CPU), 4096 MB, CPython 3.11.7")
    header = lines[1].split()
    assert header == ["scenario", "figure", "value", "ceiling", "ratio", "target", "pass"]
    assert set(lines[2]) == {"-", " "}
    stream = next(line for line in lines if "stream path msgs/s (max)" in line)
    assert stream.split()[-6:] == ["10,000/s", "(relay)", "0.70", ">=", "0.6x", "yes"]
    memory = next(line for line in lines if "server RSS per connection" in line)
    assert "70.0 KB" in memory and "40.0 KB (bare stream)" in memory and memory.endswith("NO")
    checked = [r for r in rows if r.passed is not None]
    passed = sum(1 for r in checked if r.passed)
    assert f"targets met: {passed} of {len(checked)}" in table
    assert "private/stream-max: load 70%/60, route 40%/50, (other processes 10%)" in table
    assert table.rstrip().endswith("run time: 123 s")
    # Columns line up: every value cell ends at the same column.
    value_end = lines[1].index("value") + len("value")
    for line in lines[3 : 3 + len(rows)]:
        assert line[value_end - 1] != " ", line


def test_format_value() -> None:
    assert report.format_value(None) == "-"
    assert report.format_value(3545.4, "/s") == "3,545/s"
    assert report.format_value(44.04, "/s") == "44.0/s"
    assert report.format_value(2000.0) == "2,000"
    assert report.format_value(1.4234, "ms") == "1.42 ms"
    assert report.format_value(1411.2, "ms") == "1411 ms"
    assert report.format_value(45.23, "KB") == "45.2 KB"


def test_json(rows: list[Figure], tmp_path: Path) -> None:
    path = report.write_json(RESULTS, tmp_path / "out" / "bench-results.json", rows)
    document = json.loads(path.read_text())
    assert document["scenarios"] == RESULTS["scenarios"]
    assert document["ceilings"] == RESULTS["ceilings"]
    assert document["machine"]["cores"] == 2
    assert document["figures"] == [row.as_dict() for row in rows]
    first = document["figures"][0]
    assert set(first) == {
        "scenario",
        "figure",
        "value",
        "unit",
        "ceiling",
        "ceiling_name",
        "ratio",
        "target",
        "passed",
    }
    assert json.loads(report.to_json(RESULTS)) == document
