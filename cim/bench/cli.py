"""``cim bench``: the click command over :func:`cim.bench.runner.run`."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click


def _sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    from cim.bench.records import parse_sizes

    try:
        return parse_sizes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option(
    "--scenarios",
    envvar="CIM_BENCH_SCENARIOS",
    default="ceiling,private,group,connections,login,convlist,groups,history",
    help="Comma list from ceiling, private, group, connections, login, convlist, groups, history.",
)
@click.option(
    "--users",
    envvar="CIM_BENCH_USERS",
    default=200,
    type=click.IntRange(min=2),
    help="Users exchanging private messages.",
)
@click.option(
    "--rate",
    envvar="CIM_BENCH_RATE",
    default=500.0,
    type=click.FloatRange(min=1.0),
    help="Fixed total rate of private messages (per second).",
)
@click.option(
    "--duration",
    envvar="CIM_BENCH_DURATION",
    default=8.0,
    type=click.FloatRange(min=0.1),
    help=(
        "Seconds of each private-message phase (at most: ceilings 5, sustained group sends 3,"
        " concurrent history reads 2)."
    ),
)
@click.option(
    "--fanout-users",
    envvar="CIM_BENCH_FANOUT_USERS",
    default=1000,
    type=click.IntRange(min=2),
    help="Users online for the group fan-out.",
)
@click.option(
    "--connections",
    envvar="CIM_BENCH_CONNECTIONS",
    default=2000,
    type=click.IntRange(min=1, max=10_000),
    help="Clients connected to one chat server.",
)
@click.option(
    "--logins",
    envvar="CIM_BENCH_LOGINS",
    default=1000,
    type=click.IntRange(min=1),
    help="Logins of the login storm.",
)
@click.option(
    "--group-sizes",
    envvar="CIM_BENCH_GROUP_SIZES",
    default="100,1000",
    callback=_sizes,
    help="Comma list of group sizes (members, half of them online) for the groups scenario.",
)
@click.option(
    "--history-messages",
    envvar="CIM_BENCH_HISTORY_MESSAGES",
    default=2000,
    type=click.IntRange(min=2),
    help="Messages in the conversation whose history pages are read.",
)
@click.option(
    "--list-conversations",
    envvar="CIM_BENCH_LIST_CONVERSATIONS",
    default=200,
    type=click.IntRange(min=1),
    help="Conversations of the user whose list the convlist scenario reads.",
)
@click.option(
    "--output",
    envvar="CIM_BENCH_OUTPUT",
    default="bench-results.json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the JSON results go.",
)
@click.option("--no-uvloop", is_flag=True, help="The load and ceilings on asyncio's own loop.")
@click.option(
    "--redis-fsync",
    envvar="CIM_BENCH_REDIS_FSYNC",
    default="off",
    type=click.Choice(("off", "everysec", "always")),
    help="Redis persistence during the run: none, or an AOF fsynced every second or every write.",
)
@click.option(
    "--metrics",
    is_flag=True,
    help="Every cim process serves Prometheus metrics, scraped once a second (their cost).",
)
def bench(
    scenarios: str,
    users: int,
    rate: float,
    duration: float,
    fanout_users: int,
    connections: int,
    logins: int,
    group_sizes: tuple[int, ...],
    history_messages: int,
    list_conversations: int,
    output: Path,
    no_uvloop: bool,
    redis_fsync: str,
    metrics: bool,
) -> None:
    """Benchmark cim on a real local cluster (ZooKeeper, Redis, a route, chat
    servers) against bare gRPC ceilings; prints a table, writes JSON."""
    # The run forks many children from a process that serves gRPC; without
    # this, gRPC restarts its poller in each child, which may die before its
    # exec (grpc/grpc#43055). Set before gRPC is first initialised.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from cim.bench import report, runner
    from cim.bench.procstats import raise_open_file_limit
    from cim.cli.runtime import setup_logging  # not at the top: cim.cli imports this module

    setup_logging("warning")
    chosen = tuple(name.strip() for name in scenarios.split(",") if name.strip())
    try:
        options = runner.BenchOptions(
            scenarios=chosen,
            users=users,
            rate=rate,
            duration=duration,
            fanout_users=fanout_users,
            connections=connections,
            logins=logins,
            group_sizes=group_sizes,
            history_messages=history_messages,
            list_conversations=list_conversations,
            use_uvloop=not no_uvloop,
            redis_fsync=redis_fsync,
            metrics=metrics,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenarios") from None
    raise_open_file_limit()

    tty = sys.stderr.isatty()

    def progress(text: str) -> None:
        if tty:
            sys.stderr.write(f"\r\x1b[K{text}")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # stops every process of the run on the way out

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        results = runner.run(options, progress)
    except KeyboardInterrupt:
        if tty:
            sys.stderr.write("\n")
        raise click.ClickException("interrupted; every benchmark process was stopped") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if tty:
        sys.stderr.write("\n")
    rows = report.figures(results)
    report.write_json(results, output, rows)
    click.echo(report.render_table(results, rows))
    click.echo(f"results: {output}")
    if results.errors:
        raise click.ClickException(f"{len(results.errors)} part(s) of the run failed")
