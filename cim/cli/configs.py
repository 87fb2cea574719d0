"""The settings of each process, built from its command's option groups
(``ValueError``, or ``TlsError`` for a TLS file, when they do not fit; the
commands turn it into one line)."""

from __future__ import annotations

import secrets
from dataclasses import replace

from cim import tls
from cim.cli.options import (
    ClientTlsFlags,
    HeartbeatFlags,
    Listen,
    ListenerTlsFlags,
    LoginLimits,
    MessageLimits,
    MetricsFlags,
    RetentionFlags,
    RoutingFlags,
    TracingFlags,
)
from cim.config import (
    ClientConfig,
    RouteConfig,
    ServerConfig,
    TlsConfig,
    TracingConfig,
    parse_admin_keys,
    parse_cluster_secrets,
    parse_token_keys,
    random_admin_key,
    random_secret,
)
from cim.core.liveness import HeartbeatPolicy


def listener_tls(host: str, flags: ListenerTlsFlags) -> TlsConfig | None:
    """See :func:`cim.tls.listener_tls`: TLS, or plaintext only on loopback."""
    return tls.listener_tls(
        flags.tls_cert,
        flags.tls_key,
        flags.tls_ca,
        flags.tls_client_auth,
        host,
        flags.insecure_plaintext,
    )


def tracing_config(flags: TracingFlags) -> TracingConfig:
    """ValueError for an OTLP endpoint without --tracing otlp."""
    return TracingConfig(exporter=flags.tracing.lower(), otlp_endpoint=flags.otlp_endpoint or None)


def route_config(
    *,
    listen: Listen,
    route_id: str | None,
    cluster_secret: str,
    token_keys: str,
    routing: RoutingFlags,
    max_text_bytes: int,
    message_limits: MessageLimits,
    login_limits: LoginLimits,
    retention: RetentionFlags,
    tls_flags: ListenerTlsFlags,
    metrics: MetricsFlags,
    tracing: TracingFlags,
    admin_keys: str | None = None,
) -> RouteConfig:
    """``cim route``: its id defaults to its advertised address; without
    admin keys the Admin API is off."""
    keys, current = parse_token_keys(token_keys)
    identity = RouteConfig(
        cluster_secrets=parse_cluster_secrets(cluster_secret),
        token_keys=keys,
        token_key_id=current,
        host=listen.host,
        port=listen.port,
        advertise_host=listen.advertise_host,
        route_id=route_id or listen.advertised,
        metrics_port=metrics.metrics_port,
        metrics_host=metrics.metrics_host,
        tracing=tracing_config(tracing),
        admin_keys=parse_admin_keys(admin_keys or ""),
    )
    return _route_behaviour(
        identity,
        routing,
        max_text_bytes,
        message_limits,
        login_limits,
        retention,
        listener_tls(listen.host, tls_flags),
    )


def server_config(
    *,
    listen: Listen,
    server_id: str | None,
    cluster_secret: str,
    heartbeat: HeartbeatFlags,
    drain_grace: float,
    message_limits: MessageLimits,
    tls_flags: ListenerTlsFlags,
    metrics: MetricsFlags,
    tracing: TracingFlags,
) -> ServerConfig:
    """``cim server``: its id defaults to its advertised address."""
    return ServerConfig(
        cluster_secrets=parse_cluster_secrets(cluster_secret),
        server_id=server_id or listen.advertised,
        host=listen.host,
        port=listen.port,
        advertise_host=listen.advertise_host,
        heartbeat=HeartbeatPolicy(heartbeat.heartbeat_interval, heartbeat.idle_timeout),
        drain_grace=drain_grace,
        max_msgs_per_sec=message_limits.max_msgs_per_sec,
        msg_burst=message_limits.msg_burst,
        tls=listener_tls(listen.host, tls_flags),
        metrics_port=metrics.metrics_port,
        metrics_host=metrics.metrics_host,
        tracing=tracing_config(tracing),
    )


def dev_configs(
    *,
    host: str,
    advertise_host: str | None,
    routing: RoutingFlags,
    max_text_bytes: int,
    message_limits: MessageLimits,
    login_limits: LoginLimits,
    retention: RetentionFlags,
    heartbeat: HeartbeatFlags,
    tls_flags: ListenerTlsFlags,
    tracing: TracingFlags,
    admin_keys: str | None = None,
) -> tuple[RouteConfig, ServerConfig]:
    """``cim dev``'s route and chat servers, with the route's and the chat
    servers' settings that mean something in one process (the embedded
    cluster gives them their ports, ids and a cluster secret of its own).
    Without admin keys, the route gets a random one (``dev_admin_key``)."""
    tls_config = listener_tls(host, tls_flags)
    tracing_settings = tracing_config(tracing)
    identity = RouteConfig(
        cluster_secrets=(random_secret(),),
        token_keys={"dev": secrets.token_bytes(32)},
        token_key_id="dev",
        host=host,
        advertise_host=advertise_host,
        tracing=tracing_settings,
        admin_keys=parse_admin_keys(admin_keys or random_admin_key()),
    )
    route = _route_behaviour(
        identity, routing, max_text_bytes, message_limits, login_limits, retention, tls_config
    )
    server = ServerConfig(
        cluster_secrets=route.cluster_secrets,
        host=host,
        advertise_host=advertise_host,
        heartbeat=HeartbeatPolicy(heartbeat.heartbeat_interval, heartbeat.idle_timeout),
        max_text_bytes=max_text_bytes,
        max_msgs_per_sec=message_limits.max_msgs_per_sec,
        msg_burst=message_limits.msg_burst,
        tls=tls_config,
        tracing=tracing_settings,
    )
    return route, server


def _route_behaviour(
    identity: RouteConfig,
    routing: RoutingFlags,
    max_text_bytes: int,
    message_limits: MessageLimits,
    login_limits: LoginLimits,
    retention: RetentionFlags,
    tls_config: TlsConfig | None,
) -> RouteConfig:
    """A route's identity with what ``cim route`` and ``cim dev`` both set."""
    return replace(
        identity,
        routing=routing.routing,
        duplicate_login=routing.duplicate_login,
        broadcast=routing.broadcast,
        group_max_members=routing.group_max_members,
        typing_max_members=routing.typing_max_members,
        max_text_bytes=max_text_bytes,
        session_ttl=retention.session_ttl,
        inbox_max_messages=retention.inbox_max_messages,
        inbox_max_age=retention.inbox_max_age,
        history_max_messages=retention.history_max_messages,
        history_max_age=retention.history_max_age,
        max_msgs_per_sec=message_limits.max_msgs_per_sec,
        msg_burst=message_limits.msg_burst,
        max_logins_per_sec=login_limits.max_logins_per_sec,
        login_burst=login_limits.login_burst,
        tls=tls_config,
    )


def client_tls(flags: ClientTlsFlags) -> TlsConfig | None:
    """See :func:`cim.tls.client_tls`: plaintext unless a TLS flag is given."""
    return tls.client_tls(
        flags.use_tls, flags.tls_ca, flags.tls_cert, flags.tls_key, flags.tls_server_name
    )


def client_config(
    routes: tuple[str, ...], heartbeat_interval: float, tls_config: TlsConfig | None
) -> ClientConfig:
    if not routes:
        raise ValueError("give a route with --route HOST:PORT")
    return ClientConfig(routes=routes, ping_interval=heartbeat_interval, tls=tls_config)
