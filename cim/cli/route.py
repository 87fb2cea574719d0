"""``cim route``: one route process."""

from __future__ import annotations

import logging

import click

from cim.cli import configs, logs, runtime
from cim.cli.options import (
    Listen,
    ListenerTlsFlags,
    LoginLimits,
    MessageLimits,
    MetricsFlags,
    RetentionFlags,
    RoutingFlags,
    TracingFlags,
    ZooKeeperFlags,
    admin_keys_option,
    cluster_secret_option,
    listen_options,
    log_format_option,
    log_level_option,
    login_limit_options,
    max_text_bytes_option,
    message_limit_options,
    metrics_options,
    retention_options,
    routing_options,
    tls_listener_options,
    tracing_options,
    zookeeper_options,
)
from cim.config import DEFAULT_ROUTE_PORT, RouteConfig
from cim.core.members import MemberKind
from cim.store.base import Store

log = logging.getLogger("cim")


@click.command()
@listen_options(
    "CIM_ROUTE_PORT", DEFAULT_ROUTE_PORT, "Host others use to reach this route (default: --host)."
)
@click.option(
    "--route-id",
    envvar="CIM_ROUTE_ID",
    default=None,
    help="Unique name of this route (default: its address).",
)
@cluster_secret_option
@click.option(
    "--token-keys",
    envvar="CIM_TOKEN_KEYS",
    required=True,
    help="Session token keys 'kid:secret[,kid:secret]'; the first signs.",
)
@click.option(
    "--server",
    "servers",
    envvar="CIM_SERVERS",
    multiple=True,
    help="Chat server address HOST:PORT (repeat, or comma-separate); without --zk.",
)
@zookeeper_options
@click.option(
    "--redis",
    "redis_url",
    envvar="CIM_REDIS",
    default=None,
    help="Store URL: redis://HOST:PORT/DB, redis+cluster://HOST:PORT "
    "(default: in memory, for a single route).",
)
@click.option(
    "--redis-prefix",
    envvar="CIM_REDIS_PREFIX",
    default="cim:",
    help="Prefix of every key, so several clusters can share a Redis.",
)
@routing_options
@max_text_bytes_option
@message_limit_options
@login_limit_options
@retention_options
@tls_listener_options
@metrics_options
@tracing_options
@log_level_option()
@log_format_option
@admin_keys_option()
def route(
    listen: Listen,
    route_id: str | None,
    cluster_secret: str,
    token_keys: str,
    servers: tuple[str, ...],
    zookeeper: ZooKeeperFlags,
    redis_url: str | None,
    redis_prefix: str,
    routing: RoutingFlags,
    max_text_bytes: int,
    message_limits: MessageLimits,
    login_limits: LoginLimits,
    retention: RetentionFlags,
    tls: ListenerTlsFlags,
    metrics: MetricsFlags,
    tracing: TracingFlags,
    log_level: str,
    log_format: str,
    admin_keys: str | None,
) -> None:
    """Run a route: Redis store (--redis) and ZooKeeper (--zk) for a cluster;
    in-memory store and --server addresses for a single route."""
    from cim.store.factory import open_store

    runtime.setup_logging(log_level, log_format)
    with runtime.user_errors():
        config = configs.route_config(
            listen=listen,
            route_id=route_id,
            cluster_secret=cluster_secret,
            token_keys=token_keys,
            routing=routing,
            max_text_bytes=max_text_bytes,
            message_limits=message_limits,
            login_limits=login_limits,
            retention=retention,
            tls_flags=tls,
            metrics=metrics,
            tracing=tracing,
            admin_keys=admin_keys,
        )
    addresses = runtime.split_addresses(servers)
    if not addresses and not zookeeper.zk:
        runtime.fail(
            "give ZooKeeper with --zk HOST:PORT, or the chat servers with --server HOST:PORT"
        )
    with runtime.user_errors():
        store = open_store(redis_url, redis_prefix)
    if zookeeper.zk and not redis_url:
        log.warning(
            "no --redis: this route keeps its state in memory, so it must be the only route"
        )
    where = runtime.where_members(zookeeper, "chat servers", addresses)
    runtime.run(
        serve(
            config,
            store,
            zookeeper,
            addresses,
            # Printed: a password in the store URL is not.
            logs.redact(f"{where}; store {redis_url or 'in memory'}"),
        )
    )


async def serve(
    config: RouteConfig, store: Store, zookeeper: ZooKeeperFlags, servers: list[str], where: str
) -> None:
    """Runs the route until SIGINT/SIGTERM; the store is closed in every case."""
    from cim.route.app import RouteApp

    try:
        registry = await runtime.open_registry(zookeeper, MemberKind.SERVER, servers)
    except BaseException:
        await store.aclose()
        raise
    app = RouteApp(config, store, registry)

    async def release() -> None:
        await registry.aclose()
        await store.aclose()

    await runtime.serve(
        app,
        stop=app.stop,
        release=release,
        started=lambda: f"cim route {config.route_id} on {app.address}; {where}",
    )
