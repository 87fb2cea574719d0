"""The benchmark report: figures, ratios and targets from a fixed result, the
table and the JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cim.bench import report
from cim.bench.records import (
    BenchOptions,
    BenchResults,
    Ceilings,
    ConnectionsResult,
    FanOut,
    GroupReplay,
    GroupResult,
    GroupRound,
    GroupSeries,
    GroupSize,
    GroupsResult,
    GroupSustained,
    HashParams,
    HistoryConversation,
    HistoryResult,
    Joined,
    Latency,
    LoginResult,
    LoginStorm,
    Machine,
    MessagePath,
    MessagePhase,
    PrivateResult,
    ProcessUse,
    RelayCeiling,
    Scenarios,
    ScryptCost,
    StreamingCeiling,
    StreamMemoryCeiling,
    UnaryCeiling,
    Usage,
    decode,
)
from cim.bench.report import Figure, Target


def _latency(p50: float, p99: float) -> Latency:
    return Latency(p50, (p50 + p99) / 2, p99, p99 * 2)


def _relay(msgs: float, latency: Latency, rate: float = 0.0) -> RelayCeiling:
    return RelayCeiling(
        msgs_per_s=msgs, latency_ms=latency, mode="", rate=rate, latency_from="",
        sent_in_window=0, received_in_window=0, users=200, channels=4,
        streams_per_channel=50, tcp_connections=4, payload_bytes=64, seconds=5.0, processes={},
    )  # fmt: skip


def _phase(
    msgs: float, latency: Latency, errors: int = 0, rate: float | None = None
) -> MessagePhase:
    return MessagePhase(
        msgs_per_s=msgs, sent=0, received=0, elapsed_s=8.0, latency_ms=latency, errors=errors,
        error_kinds={}, load_cpu_s=0.0, pacer_late_ms=0.0, rate=rate,
    )  # fmt: skip


def _storm(logins_per_s: float, latency: Latency, errors: int) -> LoginStorm:
    return LoginStorm(
        logins=1000, elapsed_s=1.0, logins_per_s=logins_per_s, latency_ms=latency, errors=errors,
        error_kinds={}, concurrency=64, load_cpu_s=0.0,
    )  # fmt: skip


JOINED: dict[str, Any] = {
    "users": 1000, "join_errors": {}, "servers": {}, "streams_per_channel": 50,
    "tcp_connections": 20,
}  # fmt: skip
STREAM_MAX = Usage(
    wall_s=8.0,
    processes={
        "route": ProcessUse(cpu_s=3.2, cpu_percent=40.0, peak_rss_kb=51200),
        "load": ProcessUse(cpu_s=5.6, cpu_percent=70.0, peak_rss_kb=61440),
    },
    machine_cpu_s=9.6,
    other_cpu_s=0.8,
)


def _group_size(members: int, to_last: Latency, deliveries_per_s: float, errors: int) -> GroupSize:
    online = members // 2
    return GroupSize(
        members=members, online=online, receivers=online - 1, group_id="g:1",
        joined=Joined(**{**JOINED, "users": online}), create_ms=5.0,
        series=GroupSeries(
            sends=30, complete=30, to_first_ms=_latency(1.0, 2.0), to_last_ms=to_last,
            spread_ms=_latency(3.0, 6.0), fastest_ms=1.5, accept_ms=_latency(4.0, 8.0),
        ),
        replay=GroupReplay(
            stored=100, logins=3, replayed=100, to_replay_done_ms=_latency(40.0, 60.0),
            login_ms=_latency(5.0, 7.0),
        ),
        sustained=GroupSustained(
            senders=4, in_flight_per_sender=1, rate_cap_per_sender=90.0, sending_s=3.0,
            accepted=100, deliveries=100 * (online - 1), expected_deliveries=100 * (online - 1),
            elapsed_s=3.1, deliveries_per_s=deliveries_per_s, msgs_per_s=32.0,
            delivery_ms=_latency(50.0, 90.0), accept_ms=_latency(60.0, 100.0),
        ),
        errors=errors, error_kinds={"missing": errors} if errors else {}, load_cpu_s=1.0,
    )  # fmt: skip


HISTORY = HistoryConversation(
    kind="private", conversation_id="p:1:2", head_position=2000, fill_s=11.0, page_limit=50,
    reads=200, page_ms=_latency(1.5, 4.0), newest_page_ms=_latency(1.4, 3.0),
    older_page_ms=_latency(1.6, 4.0), concurrency=64, load_s=2.0, load_reads=2000,
    load_reads_per_s=1000.0, load_ms=_latency(60.0, 120.0), errors=0, error_kinds={},
)  # fmt: skip


RESULTS = BenchResults(
    machine=Machine(
        cores=2, cpu="Test CPU", ram_mb=4096, os="Linux", python="CPython 3.11.7",
        grpcio="1.85.0", protobuf="6.31", uvloop="0.23.0", redis_py="8.2",
        date="2026-11-28T08:00:00+00:00", load_average=[0.5, 0.4, 0.3],
    ),
    options=BenchOptions(rate=500.0),
    scrypt=ScryptCost(
        n=16384, r=8, p=1, ms_per_hash=50.0, ms_per_hash_median=55.0, logins_per_s_bound=40.0
    ),
    ceilings=Ceilings(
        duration=5.0,
        unary=UnaryCeiling(
            calls_per_s=4000.0, latency_ms=_latency(10.0, 30.0), concurrency=64,
            payload_bytes=64, seconds=5.0, processes={},
        ),
        streaming=StreamingCeiling(msgs_per_s=20000.0, payload_bytes=64, seconds=5.0, processes={}),
        relay=_relay(10000.0, _latency(20.0, 50.0)),
        relay_fixed=_relay(500.0, _latency(0.5, 1.5), rate=500.0),
        stream_memory=StreamMemoryCeiling(
            connections=2000, server_rss_kb_before=40000, server_rss_kb_after=120000,
            rss_per_connection_kb=40.0, connect_per_s=1000.0, open_seconds=2.0,
            server_open_fds_added=2000, load_processes=1, batch=500, processes={},
        ),
    ),
    scenarios=Scenarios(
        private=PrivateResult(
            **JOINED,
            payload_bytes=64,
            stream=MessagePath(
                max=_phase(7000.0, _latency(25.0, 80.0)),
                fixed=_phase(500.0, _latency(2.0, 4.5), errors=1, rate=500.0),
            ),
            unary=MessagePath(
                max=_phase(1600.0, _latency(60.0, 200.0)),
                fixed=_phase(500.0, _latency(3.0, 9.0), rate=500.0),
            ),
            phases={"stream-max": STREAM_MAX},
        ),
        group=GroupResult(
            **JOINED,
            receivers=999,
            recipients_reported=999,
            rounds=[GroupRound(0.1, 999, 9990.0)] * 5,
            best=FanOut(0.08, 12487.5),
            median=FanOut(0.1, 9990.0),
            errors=0,
            error_kinds={},
            load_cpu_s=0.1,
        ),
        connections=ConnectionsResult(
            connections=2000, connected=2000, alive_at_measurement=2000, alive_after_hold=2000,
            in_flight=200, load_processes=1, errors=0, error_kinds={}, connect_per_s=300.0,
            connect_seconds=6.7, connect_latency_ms_worst_process=_latency(100.0, 300.0),
            server_rss_kb_before=40000, server_rss_kb_after=180000, server_peak_rss_kb=180000,
            rss_per_connection_kb=70.0, pings=0, pongs=0, notices={}, parts=[],
        ),
        login=LoginResult(
            hash_params={"default": HashParams(16384, 8, 1), "cheap": HashParams(256, 8, 1)},
            default=_storm(40.0, _latency(1500.0, 1800.0), errors=0),
            cheap=_storm(1400.0, _latency(40.0, 90.0), errors=2),
        ),
        groups=GroupsResult(
            sizes=[
                _group_size(100, _latency(20.0, 80.0), 3000.0, errors=0),
                _group_size(1000, _latency(180.0, 380.0), 5000.0, errors=2),
            ],
        ),
        history=HistoryResult(conversations=[HISTORY]),
    ),
    errors=[],
    elapsed_s=123.4,
)  # fmt: skip


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
    results.ceilings = None
    rows = report.figures(results)
    assert not [r for r in rows if r.scenario == "ceiling"]
    stream = _row(rows, "private", "stream path msgs/s")
    assert stream.ratio is None and stream.passed is None
    # Absolute targets are still decided.
    assert _row(rows, "private", "unary path p99 at").passed is False


def test_a_failed_scenario_is_one_failed_row() -> None:
    results = copy.deepcopy(RESULTS)
    results.scenarios.group = None
    results.scenarios.failed["group"] = "load ended without a result"
    results.errors = ["group: load ended without a result"]
    rows = report.figures(results)
    group = [r for r in rows if r.scenario == "group"]
    assert [(r.figure, r.passed) for r in group] == [("FAILED (see errors)", False)]
    table = report.render_table(results, rows)
    assert "FAILED (see errors)" in table
    assert "group: load ended without a result" in table


def test_only_the_scenarios_run_are_reported() -> None:
    results = copy.deepcopy(RESULTS)
    results.scenarios = Scenarios(login=results.scenarios.login)
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
    assert document["scenarios"]["private"]["stream"]["max"]["msgs_per_s"] == 7000.0
    assert document["ceilings"]["relay"]["latency_ms"] == {
        "p50": 20.0,
        "p90": 35.0,
        "p99": 50.0,
        "max": 100.0,
    }
    assert document["machine"]["cores"] == 2
    # Read back, it is the same run.
    assert decode(BenchResults, document) == RESULTS
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


def test_groups_rows_per_size(rows: list[Figure]) -> None:
    groups = [r for r in rows if r.scenario == "groups"]
    assert [r.figure for r in groups[:7]] == [
        "100 members: to last of 49 online, p50",
        "100 members: to last of 49 online, p99",
        "100 members: first to last online, p50",
        "100 members: deliveries/s sustained",
        "100 members: offline login to replay of 100, p50",
        "100 members: offline login to replay of 100, max",
        "100 members: errors",
    ]
    assert _row(rows, "groups", "1,000 members: to last of 499 online, p99").value == 380.0
    sustained = _row(rows, "groups", "1,000 members: deliveries/s")
    assert sustained.ceiling_name == "streaming" and sustained.ratio == pytest.approx(0.25)
    assert sustained.passed is None  # no target but errors
    assert _row(rows, "groups", "100 members: offline login to replay of 100, max").value == 120.0
    assert _row(rows, "groups", "100 members: errors").passed is True
    assert _row(rows, "groups", "1,000 members: errors").passed is False


def test_history_rows(rows: list[Figure]) -> None:
    assert _row(rows, "history", "private, 2,000 msgs: page of 50 p50").value == 1.5
    assert _row(rows, "history", "private, 2,000 msgs: page of 50 p99").value == 4.0
    pages = _row(rows, "history", "private: pages/s (64 in flight)")
    assert pages.ceiling_name == "unary" and pages.ratio == pytest.approx(0.25)
    assert _row(rows, "history", "private: p99 with 64 in flight").value == 120.0
    assert _row(rows, "history", "private: errors").passed is True


def test_groups_and_history_phases_are_in_the_cpu_lines() -> None:
    results = copy.deepcopy(RESULTS)
    assert results.scenarios.groups is not None and results.scenarios.history is not None
    results.scenarios.groups.phases = {"groups-100-sustained": STREAM_MAX}
    results.scenarios.history.phases = {"history-private": STREAM_MAX}
    table = report.render_table(results)
    assert "groups/groups-100-sustained: load 70%/60, route 40%/50" in table
    assert "history/history-private: load 70%/60" in table
