"""Options shared by several ``cim`` commands, each group once.

A group adds its options to a command and hands them to the command's
function as one frozen dataclass (``listen: Listen``, ``tls: ListenerTlsFlags``,
...), so that a command takes a handful of parameters and the functions that
build configs (:mod:`cim.cli.configs`) take the groups they need.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from cim.config import (
    BROADCAST_POLICIES,
    DEFAULT_LOGIN_BURST,
    DEFAULT_MAX_LOGINS_PER_SEC,
    DEFAULT_MAX_MSGS_PER_SEC,
    DEFAULT_MSG_BURST,
    DEFAULT_TYPING_MAX_MEMBERS,
    DUPLICATE_LOGIN_POLICIES,
    TRACING_EXPORTERS,
)
from cim.core.groups import MEMBERS_CEILING
from cim.core.placement import ALGORITHMS

Command = Callable[..., Any]
Decorator = Callable[[Command], Command]

PEM_FILE = click.Path(exists=True, dir_okay=False, readable=True)
CLUSTER_SECRET_HELP = (
    "Shared secret of the cluster's internal RPCs; 'new,old' during a rotation: "
    "the first is sent, all are accepted."
)


def option_group(name: str, flags: type[Any], *options: Decorator) -> Decorator:
    """Adds ``options`` (in this order) to a command; its function gets their
    values as one ``flags`` dataclass, whose fields are the options' names, in
    its parameter ``name``."""
    names = [field.name for field in dataclasses.fields(flags)]

    def decorate(command: Command) -> Command:
        @functools.wraps(command)
        def with_group(**kwargs: Any) -> Any:
            kwargs[name] = flags(**{key: kwargs.pop(key) for key in names})
            return command(**kwargs)

        decorated: Command = with_group
        for option in reversed(options):
            decorated = option(decorated)
        return decorated

    return decorate


# --- where a process listens ----------------------------------------------------
def host_option(text: str | None = None) -> Decorator:
    return click.option("--host", envvar="CIM_HOST", default="127.0.0.1", help=text)


def advertise_host_option(text: str) -> Decorator:
    return click.option("--advertise-host", envvar="CIM_ADVERTISE_HOST", default=None, help=text)


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    advertise_host: str | None

    @property
    def advertised(self) -> str:
        """The address others reach this process at."""
        return f"{self.advertise_host or self.host}:{self.port}"


def listen_options(port_envvar: str, port_default: int, advertise_help: str) -> Decorator:
    """--host, --port and --advertise-host (route, server) as ``listen: Listen``."""
    return option_group(
        "listen",
        Listen,
        host_option(),
        click.option("--port", envvar=port_envvar, default=port_default, type=int),
        advertise_host_option(advertise_help),
    )


@dataclass(frozen=True)
class MetricsFlags:
    metrics_port: int | None
    metrics_host: str | None


metrics_options = option_group(
    "metrics",
    MetricsFlags,
    click.option(
        "--metrics-port",
        envvar="CIM_METRICS_PORT",
        default=None,
        type=click.IntRange(0, 65535),
        help="Serve Prometheus metrics over HTTP on this port, at /metrics "
        "(0: any free port; default: not served).",
    ),
    click.option(
        "--metrics-host",
        envvar="CIM_METRICS_HOST",
        default=None,
        help="Address the metrics port listens on (default: --host).",
    ),
)


# --- the cluster ------------------------------------------------------------------
cluster_secret_option = click.option(
    "--cluster-secret", envvar="CIM_CLUSTER_SECRET", required=True, help=CLUSTER_SECRET_HELP
)


@dataclass(frozen=True)
class ZooKeeperFlags:
    zk: str | None
    zk_root: str
    zk_session_timeout: float
    zk_connect_timeout: float


zookeeper_options = option_group(
    "zookeeper",
    ZooKeeperFlags,
    click.option(
        "--zk",
        envvar="CIM_ZK",
        default=None,
        help="ZooKeeper connect string HOST:PORT[,HOST:PORT...].",
    ),
    click.option(
        "--zk-root",
        envvar="CIM_ZK_ROOT",
        default="/cim",
        help="ZooKeeper path under which cim registers.",
    ),
    click.option(
        "--zk-session-timeout",
        envvar="CIM_ZK_SESSION_TIMEOUT",
        default=10.0,
        type=float,
        help="Seconds before a silent member is dropped.",
    ),
    click.option(
        "--zk-connect-timeout",
        envvar="CIM_ZK_CONNECT_TIMEOUT",
        default=15.0,
        type=float,
        help="Seconds to wait for ZooKeeper at start-up.",
    ),
)


# --- what a route does ----------------------------------------------------------------
@dataclass(frozen=True)
class RoutingFlags:
    routing: str
    duplicate_login: str
    broadcast: str
    group_max_members: int = 1_000
    typing_max_members: int = DEFAULT_TYPING_MAX_MEMBERS


routing_options = option_group(
    "routing",
    RoutingFlags,
    click.option(
        "--routing", envvar="CIM_ROUTING", default="consistent-hash", type=click.Choice(ALGORITHMS)
    ),
    click.option(
        "--duplicate-login",
        envvar="CIM_DUPLICATE_LOGIN",
        default="reject",
        type=click.Choice(DUPLICATE_LOGIN_POLICIES),
    ),
    click.option(
        "--broadcast",
        envvar="CIM_BROADCAST",
        default="everyone",
        type=click.Choice(BROADCAST_POLICIES),
        help="Who may send to group 'all' (everyone online, CIM's group chat): "
        "everyone, or nobody (off; administrators' notices still reach everyone; "
        "groups with members are not affected).",
    ),
    click.option(
        "--group-max-members",
        envvar="CIM_GROUP_MAX_MEMBERS",
        default=1_000,
        type=click.IntRange(min=2, max=MEMBERS_CEILING),
        help="Members per group at most; over it an add gets RESOURCE_EXHAUSTED.",
    ),
    click.option(
        "--typing-max-members",
        envvar="CIM_TYPING_MAX_MEMBERS",
        default=DEFAULT_TYPING_MAX_MEMBERS,
        type=click.IntRange(min=0, max=MEMBERS_CEILING),
        help="Groups with more members get no typing notes (each note costs a session "
        "read per member); 0: none do.",
    ),
)

ADMIN_KEYS_HELP = (
    "Admin keys 'id:secret[,id:secret]' of the Admin API (cim admin; secrets of "
    "16+ characters, every one accepted, so they rotate); none: the API is off."
)


def admin_keys_option(text: str = ADMIN_KEYS_HELP) -> Decorator:
    return click.option("--admin-keys", envvar="CIM_ADMIN_KEYS", default=None, help=text)


max_text_bytes_option = click.option(
    "--max-text-bytes", envvar="CIM_MAX_TEXT_BYTES", default=4096, type=int
)


@dataclass(frozen=True)
class RetentionFlags:
    session_ttl: float
    inbox_max_messages: int
    inbox_max_age: float
    history_max_messages: int
    history_max_age: float


retention_options = option_group(
    "retention",
    RetentionFlags,
    click.option(
        "--session-ttl",
        envvar="CIM_SESSION_TTL",
        default=30.0,
        type=float,
        help="Seconds login state lives without a refresh from a live stream.",
    ),
    click.option(
        "--inbox-max-messages",
        envvar="CIM_INBOX_MAX_MESSAGES",
        default=10_000,
        type=click.IntRange(min=1),
        help="Unacked messages kept per user (the newest ones).",
    ),
    click.option(
        "--inbox-max-age",
        envvar="CIM_INBOX_MAX_AGE",
        default=7 * 24 * 3600.0,
        type=click.FloatRange(min=1.0),
        help="Seconds an unacked message is kept.",
    ),
    click.option(
        "--history-max-messages",
        envvar="CIM_HISTORY_MAX_MESSAGES",
        default=10_000,
        type=click.IntRange(min=1),
        help="Messages kept per conversation's history (the newest ones); acks delete none.",
    ),
    click.option(
        "--history-max-age",
        envvar="CIM_HISTORY_MAX_AGE",
        default=30 * 24 * 3600.0,
        type=click.FloatRange(min=1.0),
        help="Seconds a message is kept in its conversation's history.",
    ),
)


# --- limits ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageLimits:
    max_msgs_per_sec: float
    msg_burst: int


message_limit_options = option_group(
    "message_limits",
    MessageLimits,
    click.option(
        "--max-msgs-per-sec",
        envvar="CIM_MAX_MSGS_PER_SEC",
        default=DEFAULT_MAX_MSGS_PER_SEC,
        type=click.FloatRange(min=0.0),
        help="Messages per second one user may send through this process "
        "(0: no limit); over it a send gets RESOURCE_EXHAUSTED.",
    ),
    click.option(
        "--msg-burst",
        envvar="CIM_MSG_BURST",
        default=DEFAULT_MSG_BURST,
        type=click.IntRange(min=1),
        help="Messages one user may send at once before --max-msgs-per-sec applies.",
    ),
)


@dataclass(frozen=True)
class LoginLimits:
    max_logins_per_sec: float
    login_burst: int


login_limit_options = option_group(
    "login_limits",
    LoginLimits,
    click.option(
        "--max-logins-per-sec",
        envvar="CIM_MAX_LOGINS_PER_SEC",
        default=DEFAULT_MAX_LOGINS_PER_SEC,
        type=click.FloatRange(min=0.0),
        help="Registrations plus logins per second from one client address "
        "(0: no limit). Behind a load balancer or NAT every client shares "
        "its address: raise it or turn it off.",
    ),
    click.option(
        "--login-burst",
        envvar="CIM_LOGIN_BURST",
        default=DEFAULT_LOGIN_BURST,
        type=click.IntRange(min=1),
        help="Registrations plus logins from one address at once.",
    ),
)


# --- chat server streams --------------------------------------------------------------
@dataclass(frozen=True)
class HeartbeatFlags:
    heartbeat_interval: float
    idle_timeout: float


heartbeat_options = option_group(
    "heartbeat",
    HeartbeatFlags,
    click.option(
        "--heartbeat-interval",
        envvar="CIM_HEARTBEAT_INTERVAL",
        default=10.0,
        type=float,
        help="Seconds of client silence after which it should ping.",
    ),
    click.option(
        "--idle-timeout",
        envvar="CIM_IDLE_TIMEOUT",
        default=30.0,
        type=float,
        help="Seconds of silence after which a stream is evicted.",
    ),
)


# --- TLS of a listener ----------------------------------------------------------------
@dataclass(frozen=True)
class ListenerTlsFlags:
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    tls_client_auth: bool
    insecure_plaintext: bool


tls_listener_options = option_group(
    "tls",
    ListenerTlsFlags,
    click.option(
        "--tls-cert",
        envvar="CIM_TLS_CERT",
        default=None,
        type=PEM_FILE,
        help="PEM certificate (chain) to serve TLS with; also presented as client "
        "certificate to other cluster members. Without it: plaintext.",
    ),
    click.option(
        "--tls-key",
        envvar="CIM_TLS_KEY",
        default=None,
        type=PEM_FILE,
        help="PEM private key of --tls-cert (unencrypted).",
    ),
    click.option(
        "--tls-ca",
        envvar="CIM_TLS_CA",
        default=None,
        type=PEM_FILE,
        help="PEM CA certificate(s) that verify other cluster members (and clients, "
        "with --tls-client-auth); default: the system's CAs.",
    ),
    click.option(
        "--tls-client-auth",
        envvar="CIM_TLS_CLIENT_AUTH",
        is_flag=True,
        default=False,
        help="Mutual TLS: refuse every caller (cluster members and users alike) "
        "without a client certificate signed by --tls-ca.",
    ),
    click.option(
        "--insecure-plaintext",
        envvar="CIM_INSECURE_PLAINTEXT",
        is_flag=True,
        default=False,
        help="Listen without TLS on an address other than loopback (passwords, "
        "tokens and messages then cross the network in clear).",
    ),
)


def log_level_option(default: str = "info") -> Decorator:
    return click.option(
        "--log-level",
        envvar="CIM_LOG_LEVEL",
        default=default,
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    )


log_format_option = click.option(
    "--log-format",
    envvar="CIM_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="Log lines on stderr: readable text, or one JSON object per line "
    "(time, level, logger, message, user_id, trace_id). Tokens and passwords are redacted.",
)


@dataclass(frozen=True)
class TracingFlags:
    tracing: str
    otlp_endpoint: str | None


tracing_options = option_group(
    "tracing",
    TracingFlags,
    click.option(
        "--tracing",
        envvar="CIM_TRACING",
        default="off",
        show_default=True,
        type=click.Choice(TRACING_EXPORTERS, case_sensitive=False),
        help="OpenTelemetry spans of the message path (accept, store, push): to "
        "stdout (console) or an OTLP collector over gRPC (otlp). OTEL_* variables "
        "apply (OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_*, OTEL_BSP_*).",
    ),
    click.option(
        "--otlp-endpoint",
        envvar="CIM_OTLP_ENDPOINT",
        default=None,
        help="OTLP gRPC collector for --tracing otlp, e.g. http://collector:4317 "
        "(default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, "
        "else localhost:4317).",
    ),
)


# --- TLS of a client ------------------------------------------------------------------
@dataclass(frozen=True)
class ClientTlsFlags:
    use_tls: bool
    tls_ca: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_server_name: str | None


client_tls_options = option_group(
    "tls",
    ClientTlsFlags,
    click.option(
        "--tls",
        "use_tls",
        envvar="CIM_TLS",
        is_flag=True,
        default=False,
        help="Reach routes and chat servers over TLS (implied by any --tls-* option).",
    ),
    click.option(
        "--tls-ca",
        envvar="CIM_TLS_CA",
        default=None,
        type=PEM_FILE,
        help="PEM CA certificate(s) that verify the route and chat servers; "
        "default: the system's CAs.",
    ),
    click.option(
        "--tls-cert",
        envvar="CIM_TLS_CERT",
        default=None,
        type=PEM_FILE,
        help="PEM client certificate, for a cluster that requires one (--tls-client-auth).",
    ),
    click.option(
        "--tls-key", envvar="CIM_TLS_KEY", default=None, type=PEM_FILE, help="Its private key."
    ),
    click.option(
        "--tls-server-name",
        envvar="CIM_TLS_SERVER_NAME",
        default=None,
        help="Name the servers' certificates must carry (default: the host of each address).",
    ),
)
