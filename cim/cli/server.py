"""``cim server``: one chat server process."""

from __future__ import annotations

import click

from cim.cli import configs, runtime
from cim.cli.options import (
    HeartbeatFlags,
    Listen,
    ListenerTlsFlags,
    MessageLimits,
    MetricsFlags,
    TracingFlags,
    ZooKeeperFlags,
    cluster_secret_option,
    heartbeat_options,
    listen_options,
    log_format_option,
    log_level_option,
    message_limit_options,
    metrics_options,
    tls_listener_options,
    tracing_options,
    zookeeper_options,
)
from cim.config import DEFAULT_ROUTE_ADDRESS, DEFAULT_SERVER_PORTS, ServerConfig
from cim.core.members import MemberKind


@click.command()
@listen_options(
    "CIM_SERVER_PORT",
    DEFAULT_SERVER_PORTS[0],
    "Host clients use to reach this server (default: --host).",
)
@click.option(
    "--server-id",
    envvar="CIM_SERVER_ID",
    default=None,
    help="Unique name of this server (default: its advertised address).",
)
@cluster_secret_option
@click.option(
    "--route",
    "routes",
    envvar="CIM_ROUTES",
    multiple=True,
    help="Route address HOST:PORT (repeat, or comma-separate); without --zk.",
)
@zookeeper_options
@heartbeat_options
@click.option("--drain-grace", envvar="CIM_DRAIN_GRACE", default=5.0, type=float)
@message_limit_options
@tls_listener_options
@metrics_options
@tracing_options
@log_level_option()
@log_format_option
def server(
    listen: Listen,
    server_id: str | None,
    cluster_secret: str,
    routes: tuple[str, ...],
    zookeeper: ZooKeeperFlags,
    heartbeat: HeartbeatFlags,
    drain_grace: float,
    message_limits: MessageLimits,
    tls: ListenerTlsFlags,
    metrics: MetricsFlags,
    tracing: TracingFlags,
    log_level: str,
    log_format: str,
) -> None:
    """Run a chat server; it finds routes in ZooKeeper (--zk) or at --route.
    Drains on SIGTERM: clients are told to reconnect elsewhere."""
    runtime.setup_logging(log_level, log_format)
    addresses = runtime.split_addresses(routes) or [DEFAULT_ROUTE_ADDRESS]
    with runtime.user_errors():
        config = configs.server_config(
            listen=listen,
            server_id=server_id,
            cluster_secret=cluster_secret,
            heartbeat=heartbeat,
            drain_grace=drain_grace,
            message_limits=message_limits,
            tls_flags=tls,
            metrics=metrics,
            tracing=tracing,
        )
    runtime.run(
        serve(config, zookeeper, addresses, runtime.where_members(zookeeper, "routes", addresses))
    )


async def serve(
    config: ServerConfig, zookeeper: ZooKeeperFlags, routes: list[str], where: str
) -> None:
    """Runs the chat server until SIGINT/SIGTERM, then drains it."""
    from cim.server.app import ChatServerApp

    registry = await runtime.open_registry(zookeeper, MemberKind.ROUTE, routes)
    app = ChatServerApp(config, registry)
    await runtime.serve(
        app,
        stop=app.drain,
        release=registry.aclose,
        started=lambda: f"cim server {config.server_id} on {app.address}; {where}",
    )
