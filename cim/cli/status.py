"""``cim status``: is the cluster healthy, and what runs where."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from cim.cli import configs, runtime
from cim.cli.options import (
    ClientTlsFlags,
    ZooKeeperFlags,
    client_tls_options,
    log_format_option,
    log_level_option,
    zookeeper_options,
)
from cim.cluster_status import (
    DEFAULT_RATE_WINDOW,
    RATES,
    ClusterStatus,
    MemberStatus,
    ZooKeeperSource,
    check,
)


@click.command()
@zookeeper_options
@click.option(
    "--redis",
    "redis_url",
    envvar="CIM_REDIS",
    default=None,
    help="Store URL (as for cim route): checked with PING; its online index "
    "gives the users online.",
)
@click.option(
    "--redis-prefix",
    envvar="CIM_REDIS_PREFIX",
    default="cim:",
    help="Prefix of every key, so several clusters can share a Redis.",
)
@click.option(
    "--route",
    "routes",
    envvar="CIM_ROUTES",
    multiple=True,
    help="Route address HOST:PORT (repeat, or comma-separate); without --zk.",
)
@click.option(
    "--server",
    "servers",
    envvar="CIM_SERVERS",
    multiple=True,
    help="Chat server address HOST:PORT (repeat, or comma-separate); without --zk.",
)
@click.option(
    "--timeout",
    envvar="CIM_STATUS_TIMEOUT",
    default=3.0,
    type=click.FloatRange(min=0.1),
    help="Seconds each health check and the store may take.",
)
@click.option(
    "--rate-window",
    envvar="CIM_STATUS_RATE_WINDOW",
    default=DEFAULT_RATE_WINDOW,
    type=click.FloatRange(min=0),
    help="Seconds over which message rates are counted, from members that "
    "serve metrics (0: no rates).",
)
@click.option("--json", "as_json", is_flag=True, default=False, help="One JSON object on stdout.")
@client_tls_options
@log_level_option("warning")
@log_format_option
def status(
    zookeeper: ZooKeeperFlags,
    redis_url: str | None,
    redis_prefix: str,
    routes: tuple[str, ...],
    servers: tuple[str, ...],
    timeout: float,
    rate_window: float,
    as_json: bool,
    tls: ClientTlsFlags,
    log_level: str,
    log_format: str,
) -> None:
    """Report a cluster: routes and chat servers (address, version, uptime,
    streams, health), the store and the users online. Exits 1 when the cluster
    is unhealthy (no route, no chat server, the store or ZooKeeper down, a
    member unreachable), so scripts and probes can use it."""
    from cim import tls as tls_module

    runtime.setup_logging(log_level, log_format)  # on stderr: stdout is the report
    route_addresses = runtime.split_addresses(routes)
    server_addresses = runtime.split_addresses(servers)
    if not zookeeper.zk and not route_addresses:
        # Exit status 2, apart from 1 (unhealthy).
        raise click.UsageError(
            "give ZooKeeper with --zk HOST:PORT, or a route with --route HOST:PORT"
        )
    with runtime.user_errors():
        channel_tls = tls_module.load(configs.client_tls(tls))
    source = (
        ZooKeeperSource(
            zookeeper.zk,
            zookeeper.zk_root,
            zookeeper.zk_session_timeout,
            min(timeout * 2, zookeeper.zk_connect_timeout),
        )
        if zookeeper.zk
        else None
    )
    with runtime.user_errors():
        result = asyncio.run(
            check(
                zookeeper=source,
                routes=route_addresses,
                servers=server_addresses,
                redis_url=redis_url,
                redis_prefix=redis_prefix,
                tls=channel_tls,
                timeout=timeout,
                rate_window=rate_window,
            )
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(render(result))
    sys.stdout.flush()
    if not result.healthy:
        sys.exit(1)


def render(status: ClusterStatus) -> str:
    """The human-readable report: two tables, the store, then one verdict line."""
    lines = [f"members: {status.registry}"]
    headers = ["ID", "ADDRESS", "VERSION", "UPTIME", "HEALTH"]
    lines += ["", f"routes ({len(status.routes)})"]
    rows = [[*_row(status, m)[:4], _rate(m), m.health] for m in status.routes]
    lines += _table([*headers[:4], "ACCEPTED/S", "HEALTH"], rows)
    if status.servers_listed:
        lines += ["", f"chat servers ({len(status.servers)})"]
        rows = [
            [*_row(status, m)[:4], _or_dash(m.connections), _rate(m), m.health]
            for m in status.servers
        ]
        lines += _table([*headers[:4], "STREAMS", "DELIVERED/S", "HEALTH"], rows)
    else:
        lines += ["", "chat servers: not listed (give --server HOST:PORT, or --zk)"]
    store = status.store
    lines.append("")
    if store.ok is None:
        lines.append(
            "store: not checked (give --redis)" + (f": {store.error}" if store.error else "")
        )
    elif store.ok:
        lines.append(f"store: ok ({store.url}); users online: {store.online_users}")
    else:
        lines.append(f"store: DOWN ({store.url}): {store.error}")
    rates = status.rates()
    if rates:
        lines.append(
            "rates: "
            + ", ".join(f"{value:g} msgs/s {key.split('_')[0]}" for key, value in rates.items())
        )
    else:
        lines.append(f"rates: {RATES}")
    problems = status.problems()
    lines.append("")
    lines.append("healthy" if not problems else "UNHEALTHY: " + "; ".join(problems))
    return "\n".join(lines)


def _row(status: ClusterStatus, member: MemberStatus) -> list[str]:
    uptime = member.uptime(status.checked_at)
    return [
        member.member_id,
        member.address,
        member.version or "-",
        "-" if uptime is None else format_duration(uptime),
        member.health,
    ]


def _rate(member: MemberStatus) -> str:
    """Messages per second, or why there is none."""
    if member.rate is not None:
        return f"{member.rate:.1f}"
    return "no metrics" if not member.metrics else "-"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``90061`` -> ``1d1h01m``."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
