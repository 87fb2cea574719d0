"""Settings of each process, as frozen dataclasses (the CLI fills them from
flags and ``CIM_*`` environment variables; tests build them directly)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cim.core.groups import MEMBERS_CEILING
from cim.core.groups import Limits as GroupLimits
from cim.core.liveness import Backoff, HeartbeatPolicy
from cim.core.passwords import ScryptParams
from cim.store.base import Retention

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

DEFAULT_ROUTE_PORT = 7100
DEFAULT_SERVER_PORTS = (7201, 7202)
DEFAULT_ROUTE_ADDRESS = f"127.0.0.1:{DEFAULT_ROUTE_PORT}"
DEFAULT_MAX_TEXT_BYTES = 4096
# Rate limits (0 turns one off): messages per user, and registrations plus
# logins per client address. Generous: a person types far slower, and the
# benchmarks' senders (one message in flight each) stay well under them.
DEFAULT_MAX_MSGS_PER_SEC = 100.0
DEFAULT_MSG_BURST = 200
DEFAULT_MAX_LOGINS_PER_SEC = 20.0
DEFAULT_LOGIN_BURST = 50
# Typing notes reach groups of at most this many members: each costs a
# session read per member.
DEFAULT_TYPING_MAX_MEMBERS = 100

DUPLICATE_LOGIN_POLICIES = ("reject", "kick-old")
# Who may send CIM's broadcast (group "all": everyone online): anyone, or nobody.
BROADCAST_POLICIES = ("everyone", "off")
TRACING_EXPORTERS = ("off", "console", "otlp")


def random_secret() -> str:
    """A fresh secret for embedded mode, where every part lives in one process."""
    return secrets.token_urlsafe(32)


def parse_token_keys(spec: str) -> tuple[dict[str, bytes], str]:
    """``"kid1:secret1,kid2:secret2"`` -> keys and the current (first) key id.

    A bare secret without ``kid:`` gets the id ``k1``.
    """
    keys: dict[str, bytes] = {}
    current = ""
    for index, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        key_id, sep, secret = part.partition(":")
        if not sep:
            key_id, secret = f"k{index + 1}", part
        if len(secret) < 16:
            raise ValueError(f"token key {key_id!r} is shorter than 16 characters")
        keys[key_id] = secret.encode()
        current = current or key_id
    if not keys:
        raise ValueError("no token key given")
    return keys, current


# Admin keys: "id:secret" pairs; the id names the key in the route's log.
ADMIN_KEY_MIN_SECRET = 16
ADMIN_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def parse_admin_keys(spec: str) -> dict[str, str]:
    """``"ops:secret1,ci:secret2"`` -> ``{"ops": "secret1", "ci": "secret2"}``:
    every key is accepted, so one rotates by adding the new one, moving the
    callers to it, then dropping the old one. "" -> no keys (the admin API is
    off). ValueError for a key without an id, a bad or repeated id, or a
    secret shorter than 16 characters."""
    keys: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key_id, sep, secret = part.partition(":")
        if not sep:
            raise ValueError("an admin key is 'id:secret' (the id names it in the log)")
        if key_id in keys:
            raise ValueError(f"admin key id {key_id!r} is given twice")
        keys[key_id] = secret
    check_admin_keys(keys)
    return keys


def check_admin_keys(keys: dict[str, str]) -> None:
    for key_id, secret in keys.items():
        if not ADMIN_KEY_ID.fullmatch(key_id):
            raise ValueError(f"admin key id {key_id!r}: 1 to 64 letters, digits, '.', '_' or '-'")
        if len(secret) < ADMIN_KEY_MIN_SECRET:
            raise ValueError(
                f"admin key {key_id!r} is shorter than {ADMIN_KEY_MIN_SECRET} characters"
            )


def random_admin_key(key_id: str = "dev") -> str:
    """A fresh ``id:secret`` admin key (``cim dev`` makes one when given none)."""
    return f"{key_id}:{secrets.token_urlsafe(24)}"


def check_rate_limit(what: str, rate: float, burst: int) -> None:
    """A rate limit's settings: a rate of 0 is off, else the burst is at least 1."""
    if not rate >= 0 or rate == float("inf"):
        raise ValueError(f"{what} per second must be 0 (off) or a positive number")
    if rate > 0 and burst < 1:
        raise ValueError(f"the burst of {what} must be at least 1")


@dataclass(frozen=True)
class TlsConfig:
    """TLS of one process (paths to PEM files; ``cim.tls`` reads them).

    A listener (route, chat server) needs ``cert_file`` and ``key_file``; the
    same certificate is presented as client certificate on its calls to other
    cluster members. ``ca_file`` verifies peers (the system's CAs without it);
    ``require_client_cert`` makes a listener refuse callers without a
    certificate from that CA (mutual TLS). ``server_name`` replaces the host of
    the address as the name a peer's certificate must carry.
    """

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS needs both a certificate and its private key, or neither")
        if self.require_client_cert and not self.ca_file:
            raise ValueError("requiring client certificates needs the CA that signs them")

    def require_listener(self) -> None:
        if not self.cert_file:
            raise ValueError("a TLS listener needs a certificate and its private key")


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry tracing of one app's message path (``cim.tracing``).

    ``exporter``: "off" (the default: nothing is imported or set up),
    "console" (spans as JSON on stdout) or "otlp" (OTLP over gRPC to
    ``otlp_endpoint``, or where the ``OTEL_EXPORTER_OTLP_*`` variables say,
    else localhost:4317). ``span_exporter``, when given, takes the spans
    instead (tests: the SDK's ``InMemorySpanExporter``). The SDK's own
    variables apply too (``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``,
    ``OTEL_RESOURCE_ATTRIBUTES``).
    """

    exporter: str = "off"
    otlp_endpoint: str | None = None
    span_exporter: SpanExporter | None = None

    def __post_init__(self) -> None:
        if self.exporter not in TRACING_EXPORTERS:
            raise ValueError(f"tracing must be one of {', '.join(TRACING_EXPORTERS)}")
        if self.otlp_endpoint and self.exporter != "otlp":
            raise ValueError("an OTLP endpoint needs --tracing otlp")

    @property
    def enabled(self) -> bool:
        return self.exporter != "off" or self.span_exporter is not None


def parse_cluster_secrets(spec: str) -> tuple[str, ...]:
    """``"new,old"`` -> ``("new", "old")``: the first is sent on internal calls,
    every one is accepted on them, so the secret rotates without downtime."""
    found = tuple(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    if not found:
        raise ValueError("a cluster secret is required")
    return found


def _check_cluster_secrets(secrets_: tuple[str, ...]) -> None:
    if isinstance(secrets_, str):  # a bare string would accept each of its characters
        raise TypeError("cluster_secrets is a tuple of secrets, not a string")
    if not secrets_ or not all(secrets_):
        raise ValueError("a cluster secret is required")


@dataclass(frozen=True)
class RouteConfig:
    # Sent on internal calls: the first; accepted on them: every one (rotation).
    cluster_secrets: tuple[str, ...]
    token_keys: dict[str, bytes]
    token_key_id: str
    route_id: str = "route-1"
    host: str = "127.0.0.1"
    port: int = DEFAULT_ROUTE_PORT
    advertise_host: str | None = None
    # Prometheus metrics over HTTP on this port (0: any free port); None: not
    # served (still counted). ``metrics_host`` defaults to ``host``.
    metrics_port: int | None = None
    metrics_host: str | None = None
    token_ttl: float = 24 * 3600.0
    # A route asks the store whether a token's session still stands at most
    # once per this many seconds per session: a logout or a newer login ends
    # the old tokens at once on the route that handled it, and at every other
    # route within this bound. 0: ask on every call.
    token_check_cache: float = 1.0
    routing: str = "consistent-hash"
    duplicate_login: str = "reject"
    # Whether users may send to group "all" (CIM's broadcast): "everyone" or "off".
    broadcast: str = "everyone"
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    # Login state of a live stream expires this long after its last refresh.
    session_ttl: float = 30.0
    # A login whose client never opens its stream blocks other logins of the
    # user for at most this long, then is forgotten.
    connect_grace: float = 10.0
    deliver_timeout: float = 5.0
    probe_timeout: float = 1.0
    # Inbox page size: replay and FetchOffline read this many at a time.
    offline_batch: int = 100
    # Unacked messages kept per user: the newest this many, none older than this.
    inbox_max_messages: int = 10_000
    inbox_max_age: float = 7 * 24 * 3600.0
    # History kept per conversation (acks no longer delete it): the newest
    # this many messages, none older than this.
    history_max_messages: int = 10_000
    history_max_age: float = 30 * 24 * 3600.0
    # A message or membership event whose fan-out (its pointers) a crashed
    # route left undone is fanned out by the next message to its
    # conversation this long after (docs/design/conversations.md).
    fanout_repair_after: float = 5.0
    # A send retried with the same client_msg_id within this window gets the
    # first attempt's result and is not delivered again.
    send_dedup_window: float = 600.0
    # Groups with membership (docs/design/conversations.md, Limits).
    group_max_members: int = 1_000
    max_groups_per_user: int = 500
    group_creations_per_minute: int = 5
    # Groups with more members than this get no typing notes (0: no group does).
    typing_max_members: int = DEFAULT_TYPING_MAX_MEMBERS
    scrypt: ScryptParams = field(default_factory=ScryptParams)
    # Unary sends per user through this route (a user spread over N routes
    # gets up to N times this), and registrations plus logins per client
    # address (behind a load balancer or NAT, everyone shares one). 0: off.
    max_msgs_per_sec: float = DEFAULT_MAX_MSGS_PER_SEC
    msg_burst: int = DEFAULT_MSG_BURST
    max_logins_per_sec: float = DEFAULT_MAX_LOGINS_PER_SEC
    login_burst: int = DEFAULT_LOGIN_BURST
    # None: plaintext (fine on loopback; a warning elsewhere).
    tls: TlsConfig | None = None
    tracing: TracingConfig = field(default_factory=TracingConfig)
    # Admin key id -> secret (cim.admin.v1.Admin); none: the admin API is off.
    admin_keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_cluster_secrets(self.cluster_secrets)
        check_admin_keys(self.admin_keys)
        if self.duplicate_login not in DUPLICATE_LOGIN_POLICIES:
            raise ValueError(
                f"duplicate-login policy must be one of {', '.join(DUPLICATE_LOGIN_POLICIES)}"
            )
        if self.broadcast not in BROADCAST_POLICIES:
            raise ValueError(f"broadcast policy must be one of {', '.join(BROADCAST_POLICIES)}")
        if self.max_text_bytes <= 0:
            raise ValueError("max text size must be positive")
        if self.inbox_max_messages <= 0 or self.inbox_max_age <= 0:
            raise ValueError("inbox retention (messages and age) must be positive")
        if self.history_max_messages <= 0 or self.history_max_age <= 0:
            raise ValueError("history retention (messages and age) must be positive")
        if not 0 < self.fanout_repair_after < self.send_dedup_window:
            # A fan-out pending past the dedup window is dropped, not repaired.
            raise ValueError("the fan-out repair delay must be positive and below the dedup window")
        self.group_limits  # noqa: B018 - checks the group limits
        if not 0 <= self.typing_max_members <= MEMBERS_CEILING:
            raise ValueError(f"typing max members must be between 0 and {MEMBERS_CEILING:,}")
        check_rate_limit("messages", self.max_msgs_per_sec, self.msg_burst)
        check_rate_limit("logins", self.max_logins_per_sec, self.login_burst)
        if self.tls is not None:
            self.tls.require_listener()

    @property
    def cluster_secret(self) -> str:
        """The secret this process sends on its internal calls."""
        return self.cluster_secrets[0]

    @property
    def group_limits(self) -> GroupLimits:
        return GroupLimits(
            self.group_max_members, self.max_groups_per_user, self.group_creations_per_minute
        )

    @property
    def retention(self) -> Retention:
        return Retention(
            self.inbox_max_messages,
            self.inbox_max_age,
            self.send_dedup_window,
            self.history_max_messages,
            self.history_max_age,
            self.fanout_repair_after,
        )


@dataclass(frozen=True)
class ServerConfig:
    # Sent on internal calls: the first; accepted on them: every one (rotation).
    cluster_secrets: tuple[str, ...]
    server_id: str = "server-1"
    host: str = "127.0.0.1"
    port: int = DEFAULT_SERVER_PORTS[0]
    advertise_host: str | None = None
    # Prometheus metrics over HTTP on this port (0: any free port); None: not
    # served (still counted). ``metrics_host`` defaults to ``host``.
    metrics_port: int | None = None
    metrics_host: str | None = None
    heartbeat: HeartbeatPolicy = field(default_factory=HeartbeatPolicy)
    # How often live sessions are refreshed at a route (well under its session_ttl).
    refresh_interval: float = 10.0
    # Acks from clients go to a route at most this often (one call for all).
    ack_interval: float = 0.2
    # Frames waiting for a client that reads slowly; past this it is disconnected.
    outbound_queue: int = 1024
    route_timeout: float = 5.0
    drain_grace: float = 5.0
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    # None: plaintext (fine on loopback; a warning elsewhere).
    tls: TlsConfig | None = None
    # Sends per user on the streams of this server (it holds the user's one
    # stream, so it sees all of them). 0: off.
    max_msgs_per_sec: float = DEFAULT_MAX_MSGS_PER_SEC
    msg_burst: int = DEFAULT_MSG_BURST
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def __post_init__(self) -> None:
        _check_cluster_secrets(self.cluster_secrets)
        check_rate_limit("messages", self.max_msgs_per_sec, self.msg_burst)
        if self.tls is not None:
            self.tls.require_listener()

    @property
    def cluster_secret(self) -> str:
        """The secret this process sends on its internal calls."""
        return self.cluster_secrets[0]


@dataclass(frozen=True)
class ClientConfig:
    routes: tuple[str, ...] = (DEFAULT_ROUTE_ADDRESS,)
    ping_interval: float = 10.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=3.0, cap=9.0, retries=10))
    rpc_timeout: float = 10.0
    device_id: str = ""
    # None: plaintext; else routes and chat servers are verified with tls.ca_file.
    tls: TlsConfig | None = None
