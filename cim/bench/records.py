"""The results of a benchmark run, as typed records.

Each child process reports one record as JSON (:mod:`cim.bench.child`), read
back with :func:`decode`; the runner puts them together in a
:class:`BenchResults`, which :mod:`cim.bench.report` turns into figures and
``bench-results.json`` (``dataclasses.asdict`` of it, plus the figures).

    BenchResults
    ├── machine: Machine            cores, versions, load average
    ├── options: BenchOptions       what was asked for
    ├── scrypt: ScryptCost          what one password hash costs here
    ├── ceilings: Ceilings          bare gRPC: unary, streaming, relay, relay_fixed, stream_memory
    ├── scenarios: Scenarios        cim: private, group, connections, login, convlist,
    │                               groups, history
    └── errors                      what failed (that part is None, named in *.failed)

Every scenario record carries the CPU and memory of every process of the
cluster per phase (``phases``) and over the whole scenario (``processes``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cim.bench.procstats import ProcStats

T = TypeVar("T")

ALL_SCENARIOS = (
    "ceiling",
    "private",
    "group",
    "connections",
    "login",
    "convlist",
    "groups",
    "history",
)
REDIS_FSYNC = ("off", "everysec", "always")
# Smallest group of the groups scenario: a sender and a receiver online, two
# members offline; the largest a route allows (--group-max-members).
GROUP_SIZE_MIN = 4
GROUP_SIZE_MAX = 10_000
# Conversations the history scenario can read: "group" once Route.History
# serves groups (it answers NOT_FOUND for them until then).
HISTORY_KINDS = ("private", "group")


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"100,1000"`` -> ``(100, 1000)``: group sizes, each between
    GROUP_SIZE_MIN and GROUP_SIZE_MAX, in the order given, no repeats."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("no group size given")
    sizes: list[int] = []
    for part in parts:
        try:
            size = int(part)
        except ValueError:
            raise ValueError(f"group size {part!r} is not a whole number") from None
        _check_size(size)
        if size in sizes:
            raise ValueError(f"group size {size} is given twice")
        sizes.append(size)
    return tuple(sizes)


def _check_size(size: int) -> None:
    if not GROUP_SIZE_MIN <= size <= GROUP_SIZE_MAX:
        raise ValueError(f"group size {size} is out of range {GROUP_SIZE_MIN}-{GROUP_SIZE_MAX:,}")


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
    # Conversations of the user whose list the convlist scenario reads.
    list_conversations: int = 200
    payload_bytes: int = 64
    use_uvloop: bool = True
    # Seconds each ceiling runs (default: min(duration, 5)).
    ceiling_duration: float | None = None
    # Logs and data of the run's processes (default: a temporary directory, removed after).
    workdir: Path | None = None
    cim_log_level: str = "info"
    # Redis persistence: "off", or an AOF with appendfsync "everysec" / "always".
    redis_fsync: str = "off"
    # Every cim process serves Prometheus metrics, scraped once a second.
    metrics: bool = False
    # Groups with members, half of each online (see cim.bench.conversations).
    group_sizes: tuple[int, ...] = (100, 1000)
    # Sends timed one at a time, per size.
    group_sends: int = 30
    # Group messages an offline member has when it logs in (the timed sends count).
    group_stored: int = 100
    # Offline members whose login and replay are timed, one after another.
    group_replays: int = 3
    # The sustained group phase: seconds (default: min(duration, 3)), online
    # members sending, and the sends each has awaiting their results.
    group_sustain_s: float | None = None
    group_senders: int = 4
    group_window: int = 1
    # Messages in each conversation whose history is read, and the reads timed.
    history_messages: int = 2000
    history_reads: int = 200
    history_kinds: tuple[str, ...] = ("private", "group")

    def __post_init__(self) -> None:
        if self.redis_fsync not in REDIS_FSYNC:
            raise ValueError(f"redis fsync must be one of {', '.join(REDIS_FSYNC)}")
        for size in self.group_sizes:
            _check_size(size)
        counts = (self.group_sends, self.group_replays, self.group_senders, self.group_window)
        if min(counts) < 1 or self.history_reads < 1:
            raise ValueError(
                "group sends, replays, senders and window, and history reads must be at least 1"
            )
        if self.history_messages < 2:
            raise ValueError("a conversation whose history is read needs 2 messages at least")
        unknown_kinds = set(self.history_kinds) - set(HISTORY_KINDS)
        if unknown_kinds or not self.history_kinds:
            raise ValueError(f"history kinds must be among {', '.join(HISTORY_KINDS)}")
        unknown = set(self.scenarios) - set(ALL_SCENARIOS)
        if unknown:
            raise ValueError(
                f"unknown scenario(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(ALL_SCENARIOS)}"
            )


# --- shared parts -----------------------------------------------------------------------
@dataclass(frozen=True)
class Latency:
    """Milliseconds, nearest rank (:mod:`cim.bench.stats`)."""

    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True)
class ProcessUse:
    """CPU and memory of one process over a phase or a whole scenario. A load
    process's whole life has only ``cpu_s`` and ``peak_rss_kb`` (and a note)."""

    cpu_s: float | None
    peak_rss_kb: float | None
    cpu_percent: float | None = None
    rss_kb_before: float | None = None
    rss_kb_after: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Usage:
    """Every process over one span; ``other_cpu_s``: CPU the machine spent
    outside them (high: something else competed with the benchmark)."""

    wall_s: float
    processes: dict[str, ProcessUse]
    machine_cpu_s: float
    other_cpu_s: float


# --- the ceilings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowUse:
    """CPU and memory of a ceiling's server or load over its measurement window."""

    cpu_seconds: float
    rss_kb: float
    peak_rss_kb: float
    cpu_percent: float | None = None


@dataclass(kw_only=True)
class CeilingRun:
    processes: dict[str, WindowUse]
    load_average_1m_at_start: float = 0.0
    wall_s: float = 0.0


@dataclass(kw_only=True)
class UnaryCeiling(CeilingRun):
    calls_per_s: float
    latency_ms: Latency
    concurrency: int
    payload_bytes: int
    seconds: float


@dataclass(kw_only=True)
class StreamingCeiling(CeilingRun):
    msgs_per_s: float
    payload_bytes: int
    seconds: float


@dataclass(kw_only=True)
class RelayCeiling(CeilingRun):
    msgs_per_s: float
    latency_ms: Latency
    mode: str
    rate: float
    latency_from: str
    sent_in_window: int
    received_in_window: int
    users: int
    channels: int
    streams_per_channel: int
    tcp_connections: int
    payload_bytes: int
    seconds: float


@dataclass(kw_only=True)
class StreamMemoryCeiling(CeilingRun):
    connections: int
    server_rss_kb_before: int
    server_rss_kb_after: int
    rss_per_connection_kb: float
    connect_per_s: float
    open_seconds: float
    server_open_fds_added: int
    load_processes: int
    batch: int


@dataclass
class Ceilings:
    """What was measured; a ceiling not run or failed is None (``failed``: why)."""

    duration: float = 0.0
    unary: UnaryCeiling | None = None
    streaming: StreamingCeiling | None = None
    relay: RelayCeiling | None = None
    relay_fixed: RelayCeiling | None = None
    stream_memory: StreamMemoryCeiling | None = None
    failed: dict[str, str] = field(default_factory=dict)


# --- cim's scenarios ------------------------------------------------------------------------
@dataclass(kw_only=True)
class LoadRun:
    """What a load process adds about itself."""

    wall_s: float = 0.0
    load_process: ProcStats | None = None


@dataclass(kw_only=True)
class Measured:
    """What the runner adds: every process's CPU and memory per phase and in all."""

    phases: dict[str, Usage] = field(default_factory=dict)
    processes: Usage | None = None
    scenario_wall_s: float = 0.0


@dataclass(kw_only=True)
class Joined:
    """Who took part: users logged in and connected, per chat server."""

    users: int
    join_errors: dict[str, int]
    servers: dict[str, int]
    streams_per_channel: int
    tcp_connections: int


@dataclass(kw_only=True)
class MessagePhase:
    msgs_per_s: float
    sent: int
    received: int
    elapsed_s: float
    latency_ms: Latency
    errors: int
    error_kinds: dict[str, int]
    load_cpu_s: float
    pacer_late_ms: float
    rate: float | None = None  # the fixed-rate phase's


@dataclass(frozen=True)
class MessagePath:
    """As fast as one message in flight per user allows, then at a fixed rate."""

    max: MessagePhase
    fixed: MessagePhase


@dataclass(kw_only=True)
class PrivateResult(Joined, LoadRun, Measured):
    payload_bytes: int
    stream: MessagePath
    unary: MessagePath

    def errors(self) -> int:
        phases = (self.stream.max, self.stream.fixed, self.unary.max, self.unary.fixed)
        return sum(phase.errors for phase in phases)


@dataclass(frozen=True)
class FanOut:
    seconds: float
    deliveries_per_s: float


@dataclass(frozen=True)
class GroupRound:
    seconds: float
    received: int
    deliveries_per_s: float


@dataclass(kw_only=True)
class GroupResult(Joined, LoadRun, Measured):
    receivers: int
    recipients_reported: int
    rounds: list[GroupRound]
    best: FanOut
    median: FanOut
    errors: int
    error_kinds: dict[str, int]
    load_cpu_s: float


@dataclass(kw_only=True)
class ConnectionsPart(LoadRun):
    """One load process's share of the connections scenario."""

    users: int
    alive_after_hold: int
    errors: int
    error_kinds: dict[str, int]
    servers: dict[str, int]
    tcp_connections: int
    start: float
    end: float
    elapsed_s: float
    connect_per_s: float
    connect_latency_ms: Latency
    pings: int
    pongs: int
    notices: dict[str, int]
    load_cpu_s: float


@dataclass(kw_only=True)
class ConnectionsResult(Measured):
    connections: int
    connected: int
    # Streams open when the server's memory was read (a stream evicted
    # meanwhile, e.g. for a missed heartbeat, does not count).
    alive_at_measurement: int
    alive_after_hold: int
    in_flight: int
    load_processes: int
    errors: int
    error_kinds: dict[str, int]
    connect_per_s: float
    connect_seconds: float
    connect_latency_ms_worst_process: Latency
    server_rss_kb_before: int
    server_rss_kb_after: int
    server_peak_rss_kb: int
    rss_per_connection_kb: float
    pings: int
    pongs: int
    notices: dict[str, int]
    parts: list[ConnectionsPart]


@dataclass(frozen=True)
class HashParams:
    n: int
    r: int
    p: int


@dataclass(kw_only=True)
class LoginStorm:
    logins: int
    elapsed_s: float
    logins_per_s: float
    latency_ms: Latency
    errors: int
    error_kinds: dict[str, int]
    concurrency: int
    load_cpu_s: float


@dataclass(kw_only=True)
class LoginResult(LoadRun, Measured):
    """Accounts hashed with cim's scrypt cost (``default``), and with the
    test suites' cheap one for comparison (``cheap``)."""

    hash_params: dict[str, HashParams]
    default: LoginStorm | None = None
    cheap: LoginStorm | None = None

    def errors(self) -> int:
        return sum(storm.errors for storm in (self.default, self.cheap) if storm is not None)


@dataclass(kw_only=True)
class GroupSeries:
    """Sends one at a time, each from its send until the last online member
    has it (``to_last_ms``); ``spread_ms``: from the first online member's
    copy to the last one's."""

    sends: int
    # Sends every online member received (within MESSAGE_TIMEOUT).
    complete: int
    to_first_ms: Latency
    to_last_ms: Latency
    spread_ms: Latency
    fastest_ms: float
    # From the send to its result on the sender's stream (stored and pushed).
    accept_ms: Latency


@dataclass(kw_only=True)
class GroupSustained:
    """Several online members send to the group as fast as it accepts them
    (a window of sends awaiting their results each, under the per-user rate
    limit); deliveries = messages x online members but their sender."""

    senders: int
    in_flight_per_sender: int
    rate_cap_per_sender: float
    sending_s: float
    accepted: int
    deliveries: int
    expected_deliveries: int
    # From the first send to the last delivery.
    elapsed_s: float
    deliveries_per_s: float
    msgs_per_s: float
    # From a send to each online member's copy.
    delivery_ms: Latency
    accept_ms: Latency


@dataclass(kw_only=True)
class GroupReplay:
    """Offline members log in one after another, each after ``stored`` group
    messages were sent while it was away: from its Login call to ReplayDone
    on its new stream (every stored message comes before it)."""

    stored: int
    logins: int
    # Group messages each login replayed (the fewest of them).
    replayed: int
    to_replay_done_ms: Latency
    # The Login call alone (its password check included).
    login_ms: Latency


@dataclass(kw_only=True)
class GroupSize:
    """One group of ``members``: half of them (``online``, the sender among
    them) connected on chat streams, the rest offline."""

    members: int
    online: int
    receivers: int  # online members but the sender
    group_id: str
    joined: Joined
    create_ms: float
    series: GroupSeries
    replay: GroupReplay
    sustained: GroupSustained
    errors: int
    error_kinds: dict[str, int]
    load_cpu_s: float


@dataclass(kw_only=True)
class ConvListResult(LoadRun, Measured):
    """One user's conversation list (cim.bench.convlist): the first page read
    ``calls`` times, one in flight, then every page once."""

    conversations: int
    listed: int
    page: int
    calls: int
    latency_ms: Latency
    walk_pages: int
    walk_page_latency_ms: Latency
    errors: int
    error_kinds: dict[str, int]
    load_cpu_s: float


@dataclass(kw_only=True)
class GroupsResult(LoadRun, Measured):
    sizes: list[GroupSize]

    def errors(self) -> int:
        return sum(size.errors for size in self.sizes)


@dataclass(kw_only=True)
class HistoryConversation:
    """Pages of one conversation's history (Route.History) read by a member:
    one at a time, then ``concurrency`` in flight for ``load_s``."""

    kind: str  # "private" or "group"
    conversation_id: str
    # Its last position when read (every message, membership events included).
    head_position: int
    fill_s: float
    page_limit: int
    reads: int
    # One read at a time, half from the newest, half from a random position.
    page_ms: Latency
    newest_page_ms: Latency
    older_page_ms: Latency
    concurrency: int
    load_s: float
    load_reads: int
    load_reads_per_s: float
    load_ms: Latency
    errors: int
    error_kinds: dict[str, int]


@dataclass(kw_only=True)
class HistoryResult(LoadRun, Measured):
    conversations: list[HistoryConversation]

    def errors(self) -> int:
        return sum(conversation.errors for conversation in self.conversations)


@dataclass
class Scenarios:
    """What was run; a scenario not run or failed is None (``failed``: why)."""

    private: PrivateResult | None = None
    group: GroupResult | None = None
    connections: ConnectionsResult | None = None
    login: LoginResult | None = None
    groups: GroupsResult | None = None
    history: HistoryResult | None = None
    convlist: ConvListResult | None = None
    failed: dict[str, str] = field(default_factory=dict)


# --- a whole run --------------------------------------------------------------------------------
@dataclass
class Machine:
    cores: int
    cpu: str
    ram_mb: int
    os: str
    python: str
    grpcio: str
    protobuf: str
    uvloop: str
    redis_py: str
    date: str
    load_average: list[float]
    load_average_after: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ScryptCost:
    """Milliseconds one scrypt with cim's parameters takes here: what every
    Login costs the route, and so how many logins a second its cores allow."""

    n: int
    r: int
    p: int
    ms_per_hash: float
    ms_per_hash_median: float
    logins_per_s_bound: float


@dataclass
class BenchResults:
    machine: Machine
    options: BenchOptions
    scrypt: ScryptCost
    ceilings: Ceilings | None = None
    scenarios: Scenarios = field(default_factory=Scenarios)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


# --- JSON back into records -----------------------------------------------------------------
def decode(cls: type[T], data: Any) -> T:
    """The record ``cls`` from what ``dataclasses.asdict`` made of one (read
    back from JSON): nested records, lists, tuples, dicts, optionals and paths
    by their annotations. Keys ``cls`` does not know are ignored; a missing
    one takes its default (a TypeError without one)."""
    value: T = _decode(cls, data)
    return value


def _decode(tp: Any, data: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, dict):
            raise TypeError(f"{tp.__name__}: expected an object, got {data!r}")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp) if f.init}
        return tp(
            **{key: _decode(hints[key], value) for key, value in data.items() if key in known}
        )
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _decode(inner, data)
    if origin is list:
        return [_decode(args[0], item) for item in data]
    if origin is tuple:
        return tuple(_decode(args[0], item) for item in data)
    if origin is dict:
        return {key: _decode(args[1], value) for key, value in data.items()}
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if tp is Path:
        return Path(data)
    return data
