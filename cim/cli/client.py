"""``cim client``: the console."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cim import logcontext
from cim.cli import configs, runtime
from cim.cli.options import (
    ClientTlsFlags,
    client_tls_options,
    log_format_option,
    log_level_option,
)
from cim.config import DEFAULT_ROUTE_ADDRESS, ClientConfig, TlsConfig
from cim.errors import AlreadyExists, CimError


@click.command()
@click.option("--user", "user_name", envvar="CIM_USER", required=True, help="Your user name.")
@click.option(
    "--password", envvar="CIM_PASSWORD", default=None, help="Asked for (hidden) when not given."
)
@click.option(
    "--route",
    "routes",
    envvar="CIM_ROUTE",
    default=DEFAULT_ROUTE_ADDRESS,
    help="Route address(es) HOST:PORT[,HOST:PORT].",
)
@click.option(
    "--log-dir",
    envvar="CIM_CHAT_LOG_DIR",
    default=str(Path.home() / ".cim" / "chatlog"),
    type=click.Path(file_okay=False, path_type=Path),
    help="Local chat log folder.",
)
@click.option("--heartbeat-interval", envvar="CIM_HEARTBEAT_INTERVAL", default=10.0, type=float)
@client_tls_options
@log_level_option("warning")
@log_format_option
def client(
    user_name: str,
    password: str | None,
    routes: str,
    log_dir: Path,
    heartbeat_interval: float,
    tls: ClientTlsFlags,
    log_level: str,
    log_format: str,
) -> None:
    """Chat in the console: register if needed, log in, connect."""
    runtime.setup_logging(log_level, log_format)
    with runtime.user_errors():
        config = configs.client_config(
            tuple(runtime.split_addresses((routes,))), heartbeat_interval, configs.client_tls(tls)
        )
    if password is None:
        password = click.prompt(f"password for {user_name}", hide_input=True)
    runtime.run(chat(user_name, password or "", config, log_dir))


async def chat(user_name: str, password: str, config: ClientConfig, log_dir: Path) -> None:
    """Registers (if the name is free), logs in, connects, then runs the console."""
    from cim.client.chatlog import ChatLog
    from cim.client.client import CimClient
    from cim.client.console import Console
    from cim.client.cursor import FileCursor

    chatlog = ChatLog(log_dir, user_name)
    # Beside the chat log: the last seq shown, so a restarted console gets
    # only what it missed.
    cursor = FileCursor(chatlog.user_dir / "last_seq")
    cim_client = CimClient(user_name, password, config, cursor=cursor)
    console = Console(cim_client, chatlog, interactive=sys.stdin.isatty())
    try:
        created = await cim_client.register()
        if created:
            click.echo(f"* registered {user_name} as user {cim_client.user_id}")
        await cim_client.login()
        logcontext.user_id_var.set(cim_client.user_id)
        # Before the stream: its replay marks what it shows read.
        await console.show_unread()
        await cim_client.connect()
    except CimError as exc:
        await cim_client.close()
        runtime.fail(explain(exc) + tls_hint(exc, config.tls))
    await console.run()


def explain(exc: CimError) -> str:
    if isinstance(exc, AlreadyExists) and "taken" in exc.message:
        return f"{exc.message} (wrong password?)"
    return exc.message


def tls_hint(exc: CimError, tls: TlsConfig | None) -> str:
    """What to check when TLS set-ups disagree: gRPC says only how the
    connection ended."""
    text = exc.message
    if "handshake" in text.lower() or "Verification Check failed" in text:
        return (
            " (TLS: is --tls-ca the CA of the servers' certificates, and do they name "
            "the host dialled? see --tls-server-name)"
        )
    if "Socket closed" in text:  # hung up on during the handshake
        if tls is None:
            return " (does the cluster use TLS? then give --tls-ca)"
        if tls.cert_file is None:
            return " (does the cluster require client certificates? give --tls-cert and --tls-key)"
    return ""
