"""The figures of a benchmark run: each cim figure next to its bare-gRPC ceiling,
the ratio and the target, as a plain-text table and as JSON.

:func:`figures` is pure: it reads a :class:`~cim.bench.records.BenchResults`
and derives every row from the tables below (one per scenario); a missing part
(a scenario not run, a ceiling that failed) leaves the row's value or ratio
empty and its verdict undecided instead of failing.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cim.bench.records import (
    BenchResults,
    ConnectionsResult,
    ConvListResult,
    GroupResult,
    GroupSize,
    HistoryConversation,
    Latency,
    LoginResult,
    LoginStorm,
    Machine,
    Measured,
    PrivateResult,
)

R = TypeVar("R")
T = TypeVar("T")

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


# --- what cim's figures are divided by ----------------------------------------------------
def _of(record: T | None, get: Callable[[T], float]) -> float | None:
    return get(record) if record is not None else None


@dataclass(frozen=True)
class Bounds:
    """The ceilings of one run (None: not measured), and the scrypt bound."""

    unary_calls: float | None = None
    unary_p99: float | None = None
    streaming_msgs: float | None = None
    relay_msgs: float | None = None
    relay_p99: float | None = None
    relay_fixed_p50: float | None = None
    relay_fixed_p99: float | None = None
    stream_rss: float | None = None
    stream_connect: float | None = None
    scrypt_bound: float | None = None
    scrypt_ms: float | None = None

    @classmethod
    def of(cls, results: BenchResults) -> Bounds:
        c = results.ceilings
        if c is None:
            return cls(
                scrypt_bound=results.scrypt.logins_per_s_bound,
                scrypt_ms=results.scrypt.ms_per_hash,
            )
        return cls(
            unary_calls=_of(c.unary, lambda r: r.calls_per_s),
            unary_p99=_of(c.unary, lambda r: r.latency_ms.p99),
            streaming_msgs=_of(c.streaming, lambda r: r.msgs_per_s),
            relay_msgs=_of(c.relay, lambda r: r.msgs_per_s),
            relay_p99=_of(c.relay, lambda r: r.latency_ms.p99),
            relay_fixed_p50=_of(c.relay_fixed, lambda r: r.latency_ms.p50),
            relay_fixed_p99=_of(c.relay_fixed, lambda r: r.latency_ms.p99),
            stream_rss=_of(c.stream_memory, lambda r: r.rss_per_connection_kb),
            stream_connect=_of(c.stream_memory, lambda r: r.connect_per_s),
            scrypt_bound=results.scrypt.logins_per_s_bound,
            scrypt_ms=results.scrypt.ms_per_hash,
        )


def cim_cpu_per_message(private: PrivateResult, path: str) -> float | None:
    """Microseconds of CPU the cim processes (routes and chat servers, not
    Redis, ZooKeeper or the load) spent per message in the fixed-rate phase
    of ``path``: what features such as metrics add to each message."""
    usage = private.phases.get(f"{path}-fixed")
    phase = private.stream.fixed if path == "stream" else private.unary.fixed
    if usage is None or not phase.sent:
        return None
    cpu = sum(
        use.cpu_s or 0.0
        for name, use in usage.processes.items()
        if name.startswith(("route", "server-"))
    )
    return cpu / phase.sent * 1e6


# --- the rows, as data ---------------------------------------------------------------------
Getter = Callable[[R, Bounds], float | int | None]


def _nothing(record: Any, bounds: Bounds) -> None:
    return None


@dataclass(frozen=True)
class Row(Generic[R]):
    """One figure of a scenario: its name (``{label}`` fields filled from the
    scenario's labels), unit, value and ceiling, and its target."""

    figure: str
    unit: str
    value: Getter[R]
    ceiling: Getter[R] = _nothing
    ceiling_name: str = ""
    target: Target | None = None
    shown: Callable[[R], bool] = lambda record: True


def _at_least(ratio: float) -> Target:
    return Target(">=", ratio, on_ratio=True)


NO_ERRORS = Target("==", 0)
P99_AT_RATE = Target("<", P99_AT_RATE_MAX_MS)

CEILING_ROWS: tuple[Row[Bounds], ...] = (
    Row("unary calls/s (64 in flight)", "/s", lambda b, _: b.unary_calls),
    Row("streaming push msgs/s", "/s", lambda b, _: b.streaming_msgs),
    Row("relay msgs/s (1 in flight/user)", "/s", lambda b, _: b.relay_msgs),
    Row("relay p99 at fixed rate", "ms", lambda b, _: b.relay_fixed_p99),
    Row("RSS per idle stream", "KB", lambda b, _: b.stream_rss),
)

PRIVATE_ROWS: tuple[Row[PrivateResult], ...] = (
    Row("stream path msgs/s (max)", "/s", lambda p, _: p.stream.max.msgs_per_s,
        lambda p, b: b.relay_msgs, "relay", _at_least(STREAM_RATIO_MIN)),
    Row("stream path p99 (max rate)", "ms", lambda p, _: p.stream.max.latency_ms.p99,
        lambda p, b: b.relay_p99, "relay p99"),
    Row("stream path p50 at {at}", "ms", lambda p, _: p.stream.fixed.latency_ms.p50,
        lambda p, b: b.relay_fixed_p50, "relay p50"),
    Row("stream path p99 at {at}", "ms", lambda p, _: p.stream.fixed.latency_ms.p99,
        lambda p, b: b.relay_fixed_p99, "relay p99", P99_AT_RATE),
    Row("unary path msgs/s (max)", "/s", lambda p, _: p.unary.max.msgs_per_s,
        lambda p, b: b.unary_calls, "unary", _at_least(UNARY_RATIO_MIN)),
    Row("unary path p99 (max rate)", "ms", lambda p, _: p.unary.max.latency_ms.p99,
        lambda p, b: b.unary_p99, "unary p99"),
    Row("unary path p50 at {at}", "ms", lambda p, _: p.unary.fixed.latency_ms.p50),
    Row("unary path p99 at {at}", "ms", lambda p, _: p.unary.fixed.latency_ms.p99,
        target=P99_AT_RATE),
    Row("cim CPU per msg at {at} (stream)", "µs", lambda p, _: cim_cpu_per_message(p, "stream")),
    Row("cim CPU per msg at {at} (unary)", "µs", lambda p, _: cim_cpu_per_message(p, "unary")),
    Row("errors", "", lambda p, _: p.errors(), target=NO_ERRORS),
)  # fmt: skip

GROUP_ROWS: tuple[Row[GroupResult], ...] = (
    Row("fan-out deliveries/s (best of {rounds})", "/s", lambda g, _: g.best.deliveries_per_s,
        lambda g, b: b.streaming_msgs, "streaming", _at_least(FANOUT_RATIO_MIN)),
    Row("fan-out deliveries/s (median)", "/s", lambda g, _: g.median.deliveries_per_s,
        lambda g, b: b.streaming_msgs, "streaming"),
    Row("time to last of {receivers} (best)", "ms", lambda g, _: g.best.seconds * 1000),
    Row("time to last (median)", "ms", lambda g, _: g.median.seconds * 1000),
    Row("errors", "", lambda g, _: g.errors, target=NO_ERRORS),
)  # fmt: skip

CONNECTIONS_ROWS: tuple[Row[ConnectionsResult], ...] = (
    Row("clients connected to 1 server (of {asked})", "", lambda c, _: c.alive_at_measurement,
        lambda c, _: c.connections, "asked", Target("==", 1.0, on_ratio=True)),
    Row("server RSS per connection", "KB", lambda c, _: c.rss_per_connection_kb,
        lambda c, b: b.stream_rss, "bare stream", Target("<=", MEMORY_RATIO_MAX, on_ratio=True)),
    Row("connect+login rate", "/s", lambda c, _: c.connect_per_s,
        lambda c, b: b.stream_connect, "bare connect"),
    Row("errors", "", lambda c, _: c.errors, target=NO_ERRORS),
)  # fmt: skip


# Groups with members, one set of rows per size (issue 12 sets no target but
# no errors; deliveries/s is put next to the streaming ceiling as the
# broadcast fan-out's is).
GROUPS_ROWS: tuple[Row[GroupSize], ...] = (
    Row("{size}: to last of {receivers} online, p50", "ms", lambda g, _: g.series.to_last_ms.p50),
    Row("{size}: to last of {receivers} online, p99", "ms", lambda g, _: g.series.to_last_ms.p99),
    Row("{size}: first to last online, p50", "ms", lambda g, _: g.series.spread_ms.p50),
    Row("{size}: deliveries/s sustained", "/s", lambda g, _: g.sustained.deliveries_per_s,
        lambda g, b: b.streaming_msgs, "streaming"),
    Row("{size}: offline login to replay of {stored}, p50", "ms",
        lambda g, _: g.replay.to_replay_done_ms.p50),
    Row("{size}: offline login to replay of {stored}, max", "ms",
        lambda g, _: g.replay.to_replay_done_ms.max),
    Row("{size}: errors", "", lambda g, _: g.errors, target=NO_ERRORS),
)  # fmt: skip

HISTORY_ROWS: tuple[Row[HistoryConversation], ...] = (
    Row("{kind}, {head} msgs: page of {limit} p50", "ms", lambda h, _: h.page_ms.p50),
    Row("{kind}, {head} msgs: page of {limit} p99", "ms", lambda h, _: h.page_ms.p99),
    Row("{kind}: pages/s ({concurrency} in flight)", "/s", lambda h, _: h.load_reads_per_s,
        lambda h, b: b.unary_calls, "unary"),
    Row("{kind}: p99 with {concurrency} in flight", "ms", lambda h, _: h.load_ms.p99),
    Row("{kind}: errors", "", lambda h, _: h.errors, target=NO_ERRORS),
)  # fmt: skip


def _logins(storm: LoginStorm | None) -> float | None:
    return _of(storm, lambda s: s.logins_per_s)


def _login_ms(storm: LoginStorm | None, get: Callable[[Latency], float]) -> float | None:
    return _of(storm, lambda s: get(s.latency_ms))


LOGIN_ROWS: tuple[Row[LoginResult], ...] = (
    Row("logins/s (scrypt n=2^{n})", "/s", lambda r, _: _logins(r.default),
        lambda r, b: b.unary_calls, "unary", _at_least(LOGIN_RATIO_MIN)),
    Row("logins/s vs the scrypt bound (cores/hash time)", "/s", lambda r, _: _logins(r.default),
        lambda r, b: b.scrypt_bound, "scrypt bound"),
    Row("scrypt time per login", "ms", lambda r, b: b.scrypt_ms),
    Row("login p50 (scrypt n=2^{n})", "ms", lambda r, _: _login_ms(r.default, lambda t: t.p50)),
    Row("login p99 (scrypt n=2^{n})", "ms", lambda r, _: _login_ms(r.default, lambda t: t.p99)),
    Row("logins/s (accounts hashed n=2^{n_cheap})", "/s", lambda r, _: _logins(r.cheap),
        lambda r, b: b.unary_calls, "unary", _at_least(LOGIN_RATIO_MIN),
        shown=lambda r: r.cheap is not None),
    Row("login p99 (n=2^{n_cheap})", "ms", lambda r, _: _login_ms(r.cheap, lambda t: t.p99),
        shown=lambda r: r.cheap is not None),
    Row("errors", "", lambda r, _: r.errors(), target=NO_ERRORS),
)  # fmt: skip


CONVLIST_ROWS: tuple[Row[ConvListResult], ...] = (
    Row("conversation list p50 ({conversations} conversations, page of {page})", "ms",
        lambda r, _: r.latency_ms.p50),
    Row("conversation list p99 ({conversations} conversations, page of {page})", "ms",
        lambda r, _: r.latency_ms.p99),
    Row("conversation list, every page once: p99 of {pages}", "ms",
        lambda r, _: r.walk_page_latency_ms.p99),
    Row("errors", "", lambda r, _: r.errors, target=NO_ERRORS),
)  # fmt: skip


def _log2(n: int | None) -> str:
    return f"{math.log2(n):g}" if n else "?"


def _private_labels(p: PrivateResult, results: BenchResults) -> dict[str, object]:
    rate = p.stream.fixed.rate or results.options.rate
    return {"at": f"{rate:g}/s"}


def _login_labels(r: LoginResult, results: BenchResults) -> dict[str, object]:
    default, cheap = r.hash_params.get("default"), r.hash_params.get("cheap")
    return {
        "n": _log2(default.n if default else results.scrypt.n),
        "n_cheap": _log2(cheap.n if cheap else None),
    }


def _rows(
    scenario: str,
    record: R,
    rows: Sequence[Row[R]],
    bounds: Bounds,
    labels: dict[str, object],
) -> list[Figure]:
    return [
        figure(
            scenario,
            row.figure.format(**labels),
            row.value(record, bounds),
            row.unit,
            ceiling=row.ceiling(record, bounds),
            ceiling_name=row.ceiling_name,
            target=row.target,
        )
        for row in rows
        if row.shown(record)
    ]


def figures(results: BenchResults) -> list[Figure]:
    """Every row of the report, in table order."""
    bounds = Bounds.of(results)
    runs = results.scenarios
    rows: list[Figure] = []
    if results.ceilings is not None:
        rows += _rows("ceiling", bounds, CEILING_ROWS, bounds, {})
    if runs.private is not None:
        labels = _private_labels(runs.private, results)
        rows += _rows("private", runs.private, PRIVATE_ROWS, bounds, labels)
    if runs.group is not None:
        labels = {"rounds": len(runs.group.rounds) or "?", "receivers": runs.group.receivers}
        rows += _rows("group", runs.group, GROUP_ROWS, bounds, labels)
    if runs.connections is not None:
        labels = {"asked": runs.connections.connections}
        rows += _rows("connections", runs.connections, CONNECTIONS_ROWS, bounds, labels)
    if runs.login is not None:
        labels = _login_labels(runs.login, results)
        rows += _rows("login", runs.login, LOGIN_ROWS, bounds, labels)
    if runs.groups is not None:
        for size in runs.groups.sizes:
            labels = {
                "size": f"{size.members:,} members",
                "receivers": size.receivers,
                "stored": size.replay.stored,
            }
            rows += _rows("groups", size, GROUPS_ROWS, bounds, labels)
    if runs.history is not None:
        for conversation in runs.history.conversations:
            labels = {
                "kind": conversation.kind,
                "head": f"{conversation.head_position:,}",
                "limit": conversation.page_limit,
                "concurrency": conversation.concurrency,
            }
            rows += _rows("history", conversation, HISTORY_ROWS, bounds, labels)
    if runs.convlist is not None:
        labels = {
            "conversations": runs.convlist.conversations,
            "page": runs.convlist.page,
            "pages": runs.convlist.walk_pages,
        }
        rows += _rows("convlist", runs.convlist, CONVLIST_ROWS, bounds, labels)
    rows += [Figure(name, "FAILED (see errors)", None, passed=False) for name in runs.failed]
    return rows


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


def render_table(results: BenchResults, rows: list[Figure] | None = None) -> str:
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
    lines = [_machine_line(results.machine)]
    lines += _table(header, cells, right=(2, 3, 4))
    checked = [row for row in rows if row.passed is not None]
    passed = sum(1 for row in checked if row.passed)
    lines.append(f"targets met: {passed} of {len(checked)}")
    cpu = _cpu_lines(results)
    if cpu:
        lines += ["", "CPU (% of one core) and peak RSS (MB) per phase:", *cpu]
    if results.errors:
        lines += ["", "errors:", *(f"  {error}" for error in results.errors)]
    if results.elapsed_s:
        lines.append(f"run time: {results.elapsed_s:.0f} s")
    return "\n".join(lines)


def _machine_line(m: Machine) -> str:
    load = m.load_average
    return (
        f"machine: {m.cores} cores ({m.cpu}), {m.ram_mb} MB, {m.python}, grpcio {m.grpcio},"
        f" uvloop {m.uvloop}, {m.date}" + (f", load average at start {load[0]:.2f}" if load else "")
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


def _cpu_lines(results: BenchResults) -> list[str]:
    """One line per phase: each process's CPU% and peak RSS, busiest first."""
    runs = results.scenarios
    measured: dict[str, Measured | None] = {
        "private": runs.private,
        "group": runs.group,
        "login": runs.login,
        "connections": runs.connections,
        "groups": runs.groups,
        "history": runs.history,
        "convlist": runs.convlist,
    }
    lines = []
    for scenario, outcome in measured.items():
        for phase, usage in (outcome.phases if outcome else {}).items():
            ranked = sorted(usage.processes.items(), key=lambda item: -(item[1].cpu_percent or 0))
            parts = [
                f"{name} {p.cpu_percent or 0:.0f}%/{(p.peak_rss_kb or 0) / 1024:.0f}"
                for name, p in ranked
            ]
            if usage.wall_s > 0:
                parts.append(f"(other processes {100 * usage.other_cpu_s / usage.wall_s:.0f}%)")
            lines.append(f"  {scenario}/{phase}: " + ", ".join(parts))
    return lines


def to_json(results: BenchResults, rows: list[Figure] | None = None) -> str:
    """The whole result, with the figures, as indented JSON."""
    rows = figures(results) if rows is None else rows
    document = {**asdict(results), "figures": [row.as_dict() for row in rows]}
    return json.dumps(document, indent=2, sort_keys=False, default=str) + "\n"


def write_json(results: BenchResults, path: Path, rows: list[Figure] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(results, rows))
    return path
