"""The figures of a benchmark run: each cim figure next to its bare-gRPC ceiling,
the ratio and the target, as a plain-text table and as JSON.

:func:`figures` is pure: it reads the result dict of :func:`cim.bench.runner.run`
(``ceilings`` and ``scenarios``) and derives every row; a missing part (a
scenario not run, a ceiling that failed) leaves the row's value or ratio empty
and its verdict undecided instead of failing.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Result = Mapping[str, Any]

# Targets: cim's figure divided by the ceiling's, or an absolute bound.
STREAM_RATIO_MIN = 0.6  # private, stream path msgs/s / relay msgs/s
P99_AT_RATE_MAX_MS = 5.0  # private, p99 latency at the fixed rate
UNARY_RATIO_MIN = 0.5  # private, unary path msgs/s / unary calls/s
FANOUT_RATIO_MIN = 0.6  # group deliveries/s / streaming msgs/s
MEMORY_RATIO_MAX = 1.5  # RSS per connection / bare RSS per connection
LOGIN_RATIO_MIN = 0.3  # logins/s / unary calls/s


@dataclass(frozen=True)
class Target:
    """``value op threshold``; on the ratio when ``on_ratio``."""

    op: str  # ">=", "<=", "<", "=="
    threshold: float
    on_ratio: bool = False

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        subject = ratio if self.on_ratio else value
        if subject is None:
            return None
        return bool(_OPS[self.op](subject, self.threshold))

    def describe(self, unit: str = "") -> str:
        op = "=" if self.op == "==" else self.op
        if self.on_ratio:
            return f"{op} {self.threshold:g}x"
        return f"{op} {self.threshold:g}{' ' + unit if unit else ''}"


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Figure:
    scenario: str
    figure: str
    value: float | None
    unit: str = ""
    ceiling: float | None = None
    ceiling_name: str = ""
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(data: Any, *path: str) -> Any:
    """``data[p0][p1]...``, or None where anything is missing or an error."""
    for key in path:
        if not isinstance(data, Mapping) or key not in data:
            return None
        data = data[key]
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    return float(value)


def figure(
    scenario: str,
    name: str,
    value: Any,
    unit: str = "",
    *,
    ceiling: Any = None,
    ceiling_name: str = "",
    target: Target | None = None,
) -> Figure:
    """One row: the ratio is value / ceiling when both are known and the ceiling
    is positive; the verdict applies the target to the value or the ratio."""
    number, bound = _number(value), _number(ceiling)
    ratio = number / bound if number is not None and bound else None
    return Figure(
        scenario=scenario,
        figure=name,
        value=number,
        unit=unit,
        ceiling=bound,
        ceiling_name=ceiling_name if bound is not None else "",
        ratio=ratio,
        target=target.describe(unit) if target else "",
        passed=target.check(number, ratio) if target else None,
    )


def figures(results: Result) -> list[Figure]:
    """Every row of the report, in table order."""
    ceilings = results.get("ceilings") or {}
    runs = results.get("scenarios") or {}
    rows: list[Figure] = []
    unary_calls = _get(ceilings, "unary", "calls_per_s")
    streaming = _get(ceilings, "streaming", "msgs_per_s")
    relay = _get(ceilings, "relay", "msgs_per_s")

    if ceilings:
        for name, path, unit in (
            ("unary calls/s (64 in flight)", ("unary", "calls_per_s"), "/s"),
            ("streaming push msgs/s", ("streaming", "msgs_per_s"), "/s"),
            ("relay msgs/s (1 in flight/user)", ("relay", "msgs_per_s"), "/s"),
            ("relay p99 at fixed rate", ("relay_fixed", "latency_ms", "p99"), "ms"),
            ("RSS per idle stream", ("stream_memory", "rss_per_connection_kb"), "KB"),
        ):
            rows.append(figure("ceiling", name, _get(ceilings, *path), unit))

    private = runs.get("private")
    if private is not None:
        rate = _get(private, "stream", "fixed", "rate") or _get(results, "options", "rate")
        at = f"{rate:g}/s" if isinstance(rate, int | float) else "fixed rate"
        p99_target = Target("<", P99_AT_RATE_MAX_MS)
        rows += [
            figure(
                "private",
                "stream path msgs/s (max)",
                _get(private, "stream", "max", "msgs_per_s"),
                "/s",
                ceiling=relay,
                ceiling_name="relay",
                target=Target(">=", STREAM_RATIO_MIN, on_ratio=True),
            ),
            figure(
                "private",
                "stream path p99 (max rate)",
                _get(private, "stream", "max", "latency_ms", "p99"),
                "ms",
                ceiling=_get(ceilings, "relay", "latency_ms", "p99"),
                ceiling_name="relay p99",
            ),
            figure(
                "private",
                f"stream path p50 at {at}",
                _get(private, "stream", "fixed", "latency_ms", "p50"),
                "ms",
                ceiling=_get(ceilings, "relay_fixed", "latency_ms", "p50"),
                ceiling_name="relay p50",
            ),
            figure(
                "private",
                f"stream path p99 at {at}",
                _get(private, "stream", "fixed", "latency_ms", "p99"),
                "ms",
                ceiling=_get(ceilings, "relay_fixed", "latency_ms", "p99"),
                ceiling_name="relay p99",
                target=p99_target,
            ),
            figure(
                "private",
                "unary path msgs/s (max)",
                _get(private, "unary", "max", "msgs_per_s"),
                "/s",
                ceiling=unary_calls,
                ceiling_name="unary",
                target=Target(">=", UNARY_RATIO_MIN, on_ratio=True),
            ),
            figure(
                "private",
                "unary path p99 (max rate)",
                _get(private, "unary", "max", "latency_ms", "p99"),
                "ms",
                ceiling=_get(ceilings, "unary", "latency_ms", "p99"),
                ceiling_name="unary p99",
            ),
            figure(
                "private",
                f"unary path p50 at {at}",
                _get(private, "unary", "fixed", "latency_ms", "p50"),
                "ms",
            ),
            figure(
                "private",
                f"unary path p99 at {at}",
                _get(private, "unary", "fixed", "latency_ms", "p99"),
                "ms",
                target=p99_target,
            ),
            _errors("private", _sum_errors(private, ("stream", "unary"), ("max", "fixed"))),
        ]

    group = runs.get("group")
    if group is not None:
        rows += [
            figure(
                "group",
                f"fan-out deliveries/s (best of {len(_get(group, 'rounds') or []) or '?'})",
                _get(group, "best", "deliveries_per_s"),
                "/s",
                ceiling=streaming,
                ceiling_name="streaming",
                target=Target(">=", FANOUT_RATIO_MIN, on_ratio=True),
            ),
            figure(
                "group",
                "fan-out deliveries/s (median)",
                _get(group, "median", "deliveries_per_s"),
                "/s",
                ceiling=streaming,
                ceiling_name="streaming",
            ),
            figure(
                "group",
                f"time to last of {_get(group, 'receivers') or '?'} (best)",
                _ms(_get(group, "best", "seconds")),
                "ms",
            ),
            figure(
                "group",
                "time to last (median)",
                _ms(_get(group, "median", "seconds")),
                "ms",
            ),
            _errors("group", _get(group, "errors")),
        ]

    connections = runs.get("connections")
    if connections is not None:
        rows += [
            figure(
                "connections",
                f"clients connected to 1 server (of {_get(connections, 'connections')})",
                _get(connections, "alive_at_measurement"),
                ceiling=_get(connections, "connections"),
                ceiling_name="asked",
                target=Target("==", 1.0, on_ratio=True),
            ),
            figure(
                "connections",
                "server RSS per connection",
                _get(connections, "rss_per_connection_kb"),
                "KB",
                ceiling=_get(ceilings, "stream_memory", "rss_per_connection_kb"),
                ceiling_name="bare stream",
                target=Target("<=", MEMORY_RATIO_MAX, on_ratio=True),
            ),
            figure(
                "connections",
                "connect+login rate",
                _get(connections, "connect_per_s"),
                "/s",
                ceiling=_get(ceilings, "stream_memory", "connect_per_s"),
                ceiling_name="bare connect",
            ),
            _errors("connections", _get(connections, "errors")),
        ]

    login = runs.get("login")
    if login is not None:
        scrypt = results.get("scrypt") or {}
        n_default = _get(login, "hash_params", "default", "n") or scrypt.get("n")
        n_cheap = _get(login, "hash_params", "cheap", "n")
        rows += [
            figure(
                "login",
                f"logins/s (scrypt n=2^{_log2(n_default)})",
                _get(login, "default", "logins_per_s"),
                "/s",
                ceiling=unary_calls,
                ceiling_name="unary",
                target=Target(">=", LOGIN_RATIO_MIN, on_ratio=True),
            ),
            figure(
                "login",
                "logins/s vs the scrypt bound (cores/hash time)",
                _get(login, "default", "logins_per_s"),
                "/s",
                ceiling=scrypt.get("logins_per_s_bound"),
                ceiling_name="scrypt bound",
            ),
            figure("login", "scrypt time per login", scrypt.get("ms_per_hash"), "ms"),
            figure(
                "login",
                f"login p50 (scrypt n=2^{_log2(n_default)})",
                _get(login, "default", "latency_ms", "p50"),
                "ms",
            ),
            figure(
                "login",
                f"login p99 (scrypt n=2^{_log2(n_default)})",
                _get(login, "default", "latency_ms", "p99"),
                "ms",
            ),
        ]
        if _get(login, "cheap") is not None:
            rows += [
                figure(
                    "login",
                    f"logins/s (accounts hashed n=2^{_log2(n_cheap)})",
                    _get(login, "cheap", "logins_per_s"),
                    "/s",
                    ceiling=unary_calls,
                    ceiling_name="unary",
                    target=Target(">=", LOGIN_RATIO_MIN, on_ratio=True),
                ),
                figure(
                    "login",
                    f"login p99 (n=2^{_log2(n_cheap)})",
                    _get(login, "cheap", "latency_ms", "p99"),
                    "ms",
                ),
            ]
        rows.append(_errors("login", _sum_errors(login, ("default", "cheap"), ())))

    failed = {
        name
        for name, outcome in runs.items()
        if isinstance(outcome, Mapping) and "error" in outcome
    }
    rows = [row for row in rows if row.scenario not in failed]
    rows += [Figure(name, "FAILED (see errors)", None, passed=False) for name in failed]
    return rows


def _errors(scenario: str, count: Any) -> Figure:
    return figure(scenario, "errors", count, target=Target("==", 0))


def _sum_errors(data: Any, outer: Iterable[str], inner: Iterable[str]) -> int | None:
    inner = tuple(inner)
    total, found = 0, False
    for first in outer:
        paths: list[tuple[str, ...]] = [(first, second) for second in inner] or [(first,)]
        for path in paths:
            count = _get(data, *path, "errors")
            if isinstance(count, int):
                total += count
                found = True
    return total if found else None


def _ms(seconds: Any) -> float | None:
    number = _number(seconds)
    return number * 1000 if number is not None else None


def _log2(n: Any) -> str:
    number = _number(n)
    if number is None or number <= 0:
        return "?"
    return f"{math.log2(number):g}"


# --- rendering ------------------------------------------------------------------------
def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "ms":
        text = f"{value:.2f}" if value < 100 else f"{value:.0f}"
    elif unit == "KB":
        text = f"{value:.1f}"
    elif value == int(value) or abs(value) >= 100:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.1f}"
    return f"{text} {unit}".rstrip() if unit and unit != "/s" else text + (unit or "")


def _verdict(passed: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[passed]


def render_table(results: Result, rows: list[Figure] | None = None) -> str:
    """The plain-text report: machine, the figures table, CPU per phase, errors."""
    rows = figures(results) if rows is None else rows
    header = ("scenario", "figure", "value", "ceiling", "ratio", "target", "pass")
    cells = [
        (
            row.scenario,
            row.figure,
            format_value(row.value, row.unit),
            (f"{format_value(row.ceiling, row.unit)} ({row.ceiling_name})".strip())
            if row.ceiling is not None
            else "",
            f"{row.ratio:.2f}" if row.ratio is not None else "",
            row.target,
            _verdict(row.passed),
        )
        for row in rows
    ]
    lines = [_machine_line(results)]
    lines += _table(header, cells, right=(2, 3, 4))
    checked = [row for row in rows if row.passed is not None]
    passed = sum(1 for row in checked if row.passed)
    lines.append(f"targets met: {passed} of {len(checked)}")
    cpu = _cpu_lines(results)
    if cpu:
        lines += ["", "CPU (% of one core) and peak RSS (MB) per phase:", *cpu]
    errors = results.get("errors") or []
    if errors:
        lines += ["", "errors:", *(f"  {error}" for error in errors)]
    if "elapsed_s" in results:
        lines.append(f"run time: {results['elapsed_s']:.0f} s")
    return "\n".join(lines)


def _machine_line(results: Result) -> str:
    m = results.get("machine") or {}
    if not m:
        return "machine: unknown"
    load = m.get("load_average")
    return (
        f"machine: {m.get('cores', '?')} cores ({m.get('cpu', '?')}), {m.get('ram_mb', '?')} MB,"
        f" {m.get('python', '?')}, grpcio {m.get('grpcio', '?')}, uvloop {m.get('uvloop', '?')},"
        f" {m.get('date', '?')}"
        + (f", load average at start {load[0]:.2f}" if isinstance(load, list) and load else "")
    )


def _table(
    header: tuple[str, ...], cells: Sequence[tuple[str, ...]], right: tuple[int, ...] = ()
) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return [line(header), rule, *(line(row) for row in cells)]


def _cpu_lines(results: Result) -> list[str]:
    """One line per phase: each process's CPU% and peak RSS, busiest first."""
    lines = []
    for scenario, outcome in (results.get("scenarios") or {}).items():
        phases = _get(outcome, "phases") or {}
        for phase, stats in phases.items():
            processes = _get(stats, "processes") or {}
            ranked = sorted(
                processes.items(), key=lambda item: -float(item[1].get("cpu_percent", 0))
            )
            parts = [
                f"{name} {p.get('cpu_percent', 0):.0f}%/{p.get('peak_rss_kb', 0) / 1024:.0f}"
                for name, p in ranked
            ]
            other = _get(stats, "other_cpu_s")
            wall = _get(stats, "wall_s")
            if isinstance(other, int | float) and isinstance(wall, int | float) and wall > 0:
                parts.append(f"(other processes {100 * other / wall:.0f}%)")
            lines.append(f"  {scenario}/{phase}: " + ", ".join(parts))
    return lines


def to_json(results: Result, rows: list[Figure] | None = None) -> str:
    """The whole result, with the figures, as indented JSON."""
    rows = figures(results) if rows is None else rows
    document = {**results, "figures": [row.as_dict() for row in rows]}
    return json.dumps(document, indent=2, sort_keys=False, default=str) + "\n"


def write_json(results: Result, path: Path, rows: list[Figure] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(results, rows))
    return path
