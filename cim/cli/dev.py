"""``cim dev``: a route and chat servers in one process."""

from __future__ import annotations

import click

from cim.cli import configs, runtime
from cim.cli.options import (
    HeartbeatFlags,
    ListenerTlsFlags,
    LoginLimits,
    MessageLimits,
    MetricsFlags,
    RetentionFlags,
    RoutingFlags,
    TracingFlags,
    admin_keys_option,
    advertise_host_option,
    heartbeat_options,
    host_option,
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
)
from cim.config import DEFAULT_ROUTE_PORT, DEFAULT_SERVER_PORTS, RouteConfig, ServerConfig


def parse_ports(text: str) -> list[int]:
    """``"7201,7202"`` -> ``[7201, 7202]``; ``click.BadParameter`` otherwise."""
    try:
        ports = [int(port) for port in text.split(",") if port.strip()]
    except ValueError:
        raise click.BadParameter("ports must be numbers", param_hint="--server-ports") from None
    if not ports:
        raise click.BadParameter("at least one chat server port", param_hint="--server-ports")
    return ports


@click.command()
@host_option("Address to listen on.")
@advertise_host_option("Host clients use to reach the route and chat servers (default: --host).")
@click.option("--route-port", envvar="CIM_ROUTE_PORT", default=DEFAULT_ROUTE_PORT, type=int)
@click.option(
    "--server-ports",
    envvar="CIM_SERVER_PORTS",
    default=",".join(map(str, DEFAULT_SERVER_PORTS)),
    help="Comma-separated chat server ports.",
)
@routing_options
@max_text_bytes_option
@message_limit_options
@login_limit_options
@retention_options
@heartbeat_options
@tls_listener_options
@metrics_options
@tracing_options
@log_level_option()
@log_format_option
@admin_keys_option(
    "Admin keys 'id:secret[,id:secret]' of the Admin API (cim admin); "
    "default: a random one, printed at start."
)
def dev(
    host: str,
    advertise_host: str | None,
    route_port: int,
    server_ports: str,
    routing: RoutingFlags,
    max_text_bytes: int,
    message_limits: MessageLimits,
    login_limits: LoginLimits,
    retention: RetentionFlags,
    heartbeat: HeartbeatFlags,
    tls: ListenerTlsFlags,
    metrics: MetricsFlags,
    tracing: TracingFlags,
    log_level: str,
    log_format: str,
    admin_keys: str | None,
) -> None:
    """Run a route and chat servers in one process (in-memory store, in-process registry)."""
    runtime.setup_logging(log_level, log_format)
    ports = parse_ports(server_ports)
    with runtime.user_errors():
        route_config, server_config = configs.dev_configs(
            host=host,
            advertise_host=advertise_host,
            routing=routing,
            max_text_bytes=max_text_bytes,
            message_limits=message_limits,
            login_limits=login_limits,
            retention=retention,
            heartbeat=heartbeat,
            tls_flags=tls,
            tracing=tracing,
            admin_keys=admin_keys,
        )
    # A key made here is printed (it exists nowhere else); one given is not.
    made_key = None if admin_keys else next(iter(route_config.admin_keys.items()))
    runtime.run(serve(route_port, ports, route_config, server_config, made_key, metrics))


async def serve(
    route_port: int,
    server_ports: list[int],
    route_config: RouteConfig,
    server_config: ServerConfig,
    made_key: tuple[str, str] | None = None,
    metrics: MetricsFlags | None = None,
) -> None:
    """Runs the embedded cluster until SIGINT/SIGTERM."""
    from cim.embedded import EmbeddedCluster

    cluster = EmbeddedCluster(
        host=route_config.host,
        route_port=route_port,
        server_ports=server_ports,
        route_config=route_config,
        server_config=server_config,
        metrics_port=metrics.metrics_port if metrics else None,
        metrics_host=metrics.metrics_host if metrics else None,
    )

    def started() -> str:
        route = cluster.route_address
        if made_key is None:
            administer = "Administer users with your --admin-keys:  cim admin --help"
        else:
            key_id, secret = made_key
            administer = (
                "Administer users (a key made for this run):  "
                f"cim admin user alice --route {route} --admin-key {key_id}:{secret}"
            )
        return "\n".join(
            [
                f"cim dev: route on {route}; chat servers on "
                + ", ".join(server.address for server in cluster.servers),
                "Connect a client in another terminal:  make client NAME=alice",
                f"  (or: cim client --user alice --route {route})",
                administer,
                *(
                    [f"Prometheus metrics: http://{cluster.metrics.address}/metrics"]
                    if cluster.metrics is not None
                    else []
                ),
                "Press Ctrl-C to stop.",
            ]
        )

    await runtime.serve(cluster, stop=cluster.stop, release=_nothing, started=started)


async def _nothing() -> None:
    return None
