"""The ``cim`` command: dev (embedded cluster), route, server, client.

A thin click layer: it reads flags and ``CIM_*`` variables, sets up logging,
and runs the library's apps. Errors are printed as one line, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from cim.config import (
    DEFAULT_LOGIN_BURST,
    DEFAULT_MAX_LOGINS_PER_SEC,
    DEFAULT_MAX_MSGS_PER_SEC,
    DEFAULT_MSG_BURST,
    DEFAULT_ROUTE_ADDRESS,
    DEFAULT_ROUTE_PORT,
    DEFAULT_SERVER_PORTS,
    DUPLICATE_LOGIN_POLICIES,
    ClientConfig,
    RouteConfig,
    ServerConfig,
    TlsConfig,
    parse_cluster_secrets,
    parse_token_keys,
)
from cim.core.liveness import HeartbeatPolicy
from cim.core.members import MemberKind
from cim.core.routing import ALGORITHMS
from cim.errors import CimError
from cim.registry.base import Registry
from cim.tls import is_loopback

log = logging.getLogger("cim")

CLUSTER_SECRET_HELP = (
    "Shared secret of the cluster's internal RPCs; 'new,old' during a rotation: "
    "the first is sent, all are accepted."
)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Runs on uvloop when installed (measurably faster for grpc.aio)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        runner.run(main)


async def _until_signalled(stop: Callable[[], Awaitable[None]], wait: Awaitable[None]) -> None:
    """Waits for SIGINT/SIGTERM (or ``wait`` ending), then runs ``stop``."""
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    waiter = asyncio.ensure_future(wait)
    signal_task = asyncio.ensure_future(signalled.wait())
    await asyncio.wait([waiter, signal_task], return_when=asyncio.FIRST_COMPLETED)
    signal_task.cancel()
    log.info("shutting down")
    await stop()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter


def _split_addresses(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def zookeeper_options(command: Callable[..., None]) -> Callable[..., None]:
    """--zk and friends, shared by route and server."""
    for option in reversed(
        [
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
        ]
    ):
        command = option(command)
    return command


_PEM_FILE = click.Path(exists=True, dir_okay=False, readable=True)


def tls_listener_options(command: Callable[..., None]) -> Callable[..., None]:
    """--tls-cert and friends, shared by route and server."""
    for option in reversed(
        [
            click.option(
                "--tls-cert",
                envvar="CIM_TLS_CERT",
                default=None,
                type=_PEM_FILE,
                help="PEM certificate (chain) to serve TLS with; also presented as client "
                "certificate to other cluster members. Without it: plaintext.",
            ),
            click.option(
                "--tls-key",
                envvar="CIM_TLS_KEY",
                default=None,
                type=_PEM_FILE,
                help="PEM private key of --tls-cert (unencrypted).",
            ),
            click.option(
                "--tls-ca",
                envvar="CIM_TLS_CA",
                default=None,
                type=_PEM_FILE,
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
        ]
    ):
        command = option(command)
    return command


def _listener_tls(
    cert: str | None,
    key: str | None,
    ca: str | None,
    client_auth: bool,
    host: str,
    insecure_plaintext: bool,
) -> TlsConfig | None:
    """The TLS of a route or chat server from its flags (None: plaintext, only
    on loopback unless asked for); ValueError with the flags to fix when they
    do not fit together."""
    if cert is None and key is None:
        if ca is not None or client_auth:
            raise ValueError("--tls-ca and --tls-client-auth need --tls-cert and --tls-key")
        if not is_loopback(host) and not insecure_plaintext:
            raise ValueError(
                f"listening on {host} without TLS would send passwords, tokens and messages "
                "in clear: give --tls-cert and --tls-key (or --insecure-plaintext)"
            )
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if client_auth and ca is None:
        raise ValueError("--tls-client-auth needs --tls-ca, the CA that signs client certificates")
    return _loaded(TlsConfig(cert, key, ca, client_auth))


def _loaded(config: TlsConfig) -> TlsConfig:
    """The config, once its files have been read and checked (TlsError otherwise)."""
    from cim.tls import load

    load(config)
    return config


async def _open_registry(
    zk: str | None,
    zk_root: str,
    session_timeout: float,
    connect_timeout: float,
    static_kind: MemberKind,
    static_addresses: list[str],
) -> Registry:
    """ZooKeeper when --zk is given, else the static addresses from flags."""
    registry: Registry
    if zk:
        from cim.registry.zookeeper import ZooKeeperRegistry

        registry = ZooKeeperRegistry(zk, zk_root, session_timeout, connect_timeout)
    else:
        from cim.registry.static import StaticRegistry

        registry = StaticRegistry.from_addresses(static_kind, static_addresses)
    try:
        await registry.start()
    except CimError as exc:
        raise click.ClickException(exc.message) from None
    return registry


log_level_option = click.option(
    "--log-level",
    envvar="CIM_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cim")
def main() -> None:
    """cim: a distributed instant-messaging system on gRPC."""


def message_limit_options(command: Callable[..., None]) -> Callable[..., None]:
    """--max-msgs-per-sec and --msg-burst, shared by route and server."""
    for option in reversed(
        [
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
        ]
    ):
        command = option(command)
    return command


def login_limit_options(command: Callable[..., None]) -> Callable[..., None]:
    """--max-logins-per-sec and --login-burst (route)."""
    for option in reversed(
        [
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
        ]
    ):
        command = option(command)
    return command


# --- cim dev -------------------------------------------------------------------
@main.command()
@click.option("--host", envvar="CIM_HOST", default="127.0.0.1", help="Address to listen on.")
@click.option("--route-port", envvar="CIM_ROUTE_PORT", default=DEFAULT_ROUTE_PORT, type=int)
@click.option(
    "--server-ports",
    envvar="CIM_SERVER_PORTS",
    default=",".join(map(str, DEFAULT_SERVER_PORTS)),
    help="Comma-separated chat server ports.",
)
@click.option(
    "--routing", envvar="CIM_ROUTING", default="consistent-hash", type=click.Choice(ALGORITHMS)
)
@click.option(
    "--duplicate-login",
    envvar="CIM_DUPLICATE_LOGIN",
    default="reject",
    type=click.Choice(DUPLICATE_LOGIN_POLICIES),
)
@log_level_option
def dev(
    host: str,
    route_port: int,
    server_ports: str,
    routing: str,
    duplicate_login: str,
    log_level: str,
) -> None:
    """Run a route and chat servers in one process (in-memory store, in-process registry)."""
    from cim.embedded import EmbeddedCluster

    _setup_logging(log_level)
    try:
        ports = [int(port) for port in server_ports.split(",") if port.strip()]
    except ValueError:
        raise click.BadParameter("ports must be numbers", param_hint="--server-ports") from None
    if not ports:
        raise click.BadParameter("at least one chat server port", param_hint="--server-ports")

    async def run() -> None:
        import secrets

        from cim.config import random_secret

        cluster = EmbeddedCluster(
            host=host,
            route_port=route_port,
            server_ports=ports,
            route_config=RouteConfig(
                cluster_secrets=(random_secret(),),
                token_keys={"dev": secrets.token_bytes(32)},
                token_key_id="dev",
                routing=routing,
                duplicate_login=duplicate_login,
            ),
        )
        try:
            await cluster.start()
        except OSError as exc:
            await cluster.stop()
            raise click.ClickException(str(exc)) from None
        click.echo(
            f"cim dev: route on {cluster.route_address}; chat servers on "
            + ", ".join(server.address for server in cluster.servers)
        )
        click.echo("Connect a client in another terminal:  make client NAME=alice")
        click.echo(f"  (or: cim client --user alice --route {cluster.route_address})")
        click.echo("Press Ctrl-C to stop.", nl=True)
        sys.stdout.flush()
        await _until_signalled(cluster.stop, cluster.route.wait())

    _run(run())


# --- cim route -----------------------------------------------------------------
@main.command()
@click.option("--host", envvar="CIM_HOST", default="127.0.0.1")
@click.option("--port", envvar="CIM_ROUTE_PORT", default=DEFAULT_ROUTE_PORT, type=int)
@click.option(
    "--advertise-host",
    envvar="CIM_ADVERTISE_HOST",
    default=None,
    help="Host others use to reach this route (default: --host).",
)
@click.option(
    "--route-id",
    envvar="CIM_ROUTE_ID",
    default=None,
    help="Unique name of this route (default: its address).",
)
@click.option(
    "--cluster-secret",
    envvar="CIM_CLUSTER_SECRET",
    required=True,
    help=CLUSTER_SECRET_HELP,
)
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
@click.option(
    "--routing", envvar="CIM_ROUTING", default="consistent-hash", type=click.Choice(ALGORITHMS)
)
@click.option(
    "--duplicate-login",
    envvar="CIM_DUPLICATE_LOGIN",
    default="reject",
    type=click.Choice(DUPLICATE_LOGIN_POLICIES),
)
@click.option("--max-text-bytes", envvar="CIM_MAX_TEXT_BYTES", default=4096, type=int)
@message_limit_options
@login_limit_options
@click.option(
    "--session-ttl",
    envvar="CIM_SESSION_TTL",
    default=30.0,
    type=float,
    help="Seconds login state lives without a refresh from a live stream.",
)
@click.option(
    "--inbox-max-messages",
    envvar="CIM_INBOX_MAX_MESSAGES",
    default=10_000,
    type=click.IntRange(min=1),
    help="Unacked messages kept per user (the newest ones).",
)
@click.option(
    "--inbox-max-age",
    envvar="CIM_INBOX_MAX_AGE",
    default=7 * 24 * 3600.0,
    type=click.FloatRange(min=1.0),
    help="Seconds an unacked message is kept.",
)
@tls_listener_options
@log_level_option
def route(
    host: str,
    port: int,
    advertise_host: str | None,
    route_id: str | None,
    cluster_secret: str,
    token_keys: str,
    servers: tuple[str, ...],
    routing: str,
    duplicate_login: str,
    max_text_bytes: int,
    session_ttl: float,
    inbox_max_messages: int,
    inbox_max_age: float,
    max_msgs_per_sec: float,
    msg_burst: int,
    max_logins_per_sec: float,
    login_burst: int,
    zk: str | None,
    zk_root: str,
    zk_session_timeout: float,
    zk_connect_timeout: float,
    redis_url: str | None,
    redis_prefix: str,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    tls_client_auth: bool,
    insecure_plaintext: bool,
    log_level: str,
) -> None:
    """Run a route: Redis store (--redis) and ZooKeeper (--zk) for a cluster;
    in-memory store and --server addresses for a single route."""
    from cim.route.app import RouteApp
    from cim.store.factory import open_store

    _setup_logging(log_level)
    try:
        keys, current = parse_token_keys(token_keys)
        config = RouteConfig(
            cluster_secrets=parse_cluster_secrets(cluster_secret),
            token_keys=keys,
            token_key_id=current,
            host=host,
            port=port,
            advertise_host=advertise_host,
            route_id=route_id or f"{advertise_host or host}:{port}",
            routing=routing,
            duplicate_login=duplicate_login,
            max_text_bytes=max_text_bytes,
            session_ttl=session_ttl,
            inbox_max_messages=inbox_max_messages,
            inbox_max_age=inbox_max_age,
            max_msgs_per_sec=max_msgs_per_sec,
            msg_burst=msg_burst,
            max_logins_per_sec=max_logins_per_sec,
            login_burst=login_burst,
            tls=_listener_tls(tls_cert, tls_key, tls_ca, tls_client_auth, host, insecure_plaintext),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    addresses = _split_addresses(servers)
    if not addresses and not zk:
        raise click.ClickException(
            "give ZooKeeper with --zk HOST:PORT, or the chat servers with --server HOST:PORT"
        )
    try:
        store = open_store(redis_url, redis_prefix)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if zk and not redis_url:
        log.warning(
            "no --redis: this route keeps its state in memory, so it must be the only route"
        )

    async def run() -> None:
        registry = await _open_registry(
            zk, zk_root, zk_session_timeout, zk_connect_timeout, MemberKind.SERVER, addresses
        )
        app = RouteApp(config, store, registry)

        async def stop() -> None:
            await app.stop()
            await registry.aclose()
            await store.aclose()

        try:
            await app.start()
        except (OSError, CimError) as exc:
            await registry.aclose()
            await store.aclose()
            raise click.ClickException(str(exc)) from None
        where = f"ZooKeeper {zk}{zk_root}" if zk else "chat servers " + ", ".join(addresses)
        click.echo(
            f"cim route {config.route_id} on {app.address}; {where}; "
            f"store {redis_url or 'in memory'}"
        )
        await _until_signalled(stop, app.wait())

    _run(run())


# --- cim server ----------------------------------------------------------------
@main.command()
@click.option("--host", envvar="CIM_HOST", default="127.0.0.1")
@click.option("--port", envvar="CIM_SERVER_PORT", default=DEFAULT_SERVER_PORTS[0], type=int)
@click.option(
    "--advertise-host",
    envvar="CIM_ADVERTISE_HOST",
    default=None,
    help="Host clients use to reach this server (default: --host).",
)
@click.option(
    "--server-id",
    envvar="CIM_SERVER_ID",
    default=None,
    help="Unique name of this server (default: its advertised address).",
)
@click.option(
    "--cluster-secret", envvar="CIM_CLUSTER_SECRET", required=True, help=CLUSTER_SECRET_HELP
)
@click.option(
    "--route",
    "routes",
    envvar="CIM_ROUTES",
    multiple=True,
    help="Route address HOST:PORT (repeat, or comma-separate); without --zk.",
)
@zookeeper_options
@click.option(
    "--heartbeat-interval",
    envvar="CIM_HEARTBEAT_INTERVAL",
    default=10.0,
    type=float,
    help="Seconds of client silence after which it should ping.",
)
@click.option(
    "--idle-timeout",
    envvar="CIM_IDLE_TIMEOUT",
    default=30.0,
    type=float,
    help="Seconds of silence after which a stream is evicted.",
)
@click.option("--drain-grace", envvar="CIM_DRAIN_GRACE", default=5.0, type=float)
@message_limit_options
@tls_listener_options
@log_level_option
def server(
    host: str,
    port: int,
    advertise_host: str | None,
    server_id: str | None,
    cluster_secret: str,
    routes: tuple[str, ...],
    heartbeat_interval: float,
    idle_timeout: float,
    drain_grace: float,
    max_msgs_per_sec: float,
    msg_burst: int,
    zk: str | None,
    zk_root: str,
    zk_session_timeout: float,
    zk_connect_timeout: float,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    tls_client_auth: bool,
    insecure_plaintext: bool,
    log_level: str,
) -> None:
    """Run a chat server; it finds routes in ZooKeeper (--zk) or at --route.
    Drains on SIGTERM: clients are told to reconnect elsewhere."""
    from cim.server.app import ChatServerApp

    _setup_logging(log_level)
    addresses = _split_addresses(routes) or [DEFAULT_ROUTE_ADDRESS]
    try:
        config = ServerConfig(
            cluster_secrets=parse_cluster_secrets(cluster_secret),
            server_id=server_id or f"{advertise_host or host}:{port}",
            host=host,
            port=port,
            advertise_host=advertise_host,
            heartbeat=HeartbeatPolicy(heartbeat_interval, idle_timeout),
            drain_grace=drain_grace,
            max_msgs_per_sec=max_msgs_per_sec,
            msg_burst=msg_burst,
            tls=_listener_tls(tls_cert, tls_key, tls_ca, tls_client_auth, host, insecure_plaintext),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> None:
        registry = await _open_registry(
            zk, zk_root, zk_session_timeout, zk_connect_timeout, MemberKind.ROUTE, addresses
        )
        app = ChatServerApp(config, registry)

        async def drain() -> None:
            await app.drain()
            await registry.aclose()

        try:
            await app.start()
        except (OSError, CimError) as exc:
            await registry.aclose()
            raise click.ClickException(str(exc)) from None
        where = f"ZooKeeper {zk}{zk_root}" if zk else "routes " + ", ".join(addresses)
        click.echo(f"cim server {config.server_id} on {app.address}; {where}")
        await _until_signalled(drain, app.wait())

    _run(run())


# --- cim client ----------------------------------------------------------------
@main.command()
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
@click.option(
    "--tls",
    "use_tls",
    envvar="CIM_TLS",
    is_flag=True,
    default=False,
    help="Reach routes and chat servers over TLS (implied by any --tls-* option).",
)
@click.option(
    "--tls-ca",
    envvar="CIM_TLS_CA",
    default=None,
    type=_PEM_FILE,
    help="PEM CA certificate(s) that verify the route and chat servers; default: the system's CAs.",
)
@click.option(
    "--tls-cert",
    envvar="CIM_TLS_CERT",
    default=None,
    type=_PEM_FILE,
    help="PEM client certificate, for a cluster that requires one (--tls-client-auth).",
)
@click.option(
    "--tls-key", envvar="CIM_TLS_KEY", default=None, type=_PEM_FILE, help="Its private key."
)
@click.option(
    "--tls-server-name",
    envvar="CIM_TLS_SERVER_NAME",
    default=None,
    help="Name the servers' certificates must carry (default: the host of each address).",
)
@click.option(
    "--log-level",
    envvar="CIM_LOG_LEVEL",
    default="warning",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def client(
    user_name: str,
    password: str | None,
    routes: str,
    log_dir: Path,
    heartbeat_interval: float,
    use_tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_server_name: str | None,
    log_level: str,
) -> None:
    """Chat in the console: register if needed, log in, connect."""
    from cim.client.chatlog import ChatLog
    from cim.client.client import CimClient
    from cim.client.console import Console
    from cim.client.cursor import FileCursor

    _setup_logging(log_level)
    addresses = tuple(_split_addresses((routes,)))
    if not addresses:
        raise click.ClickException("give a route with --route HOST:PORT")
    tls: TlsConfig | None = None
    if use_tls or any(value is not None for value in (tls_ca, tls_cert, tls_key, tls_server_name)):
        if (tls_cert is None) != (tls_key is None):
            raise click.ClickException("a client certificate needs both --tls-cert and --tls-key")
        try:
            tls = _loaded(TlsConfig(tls_cert, tls_key, tls_ca, server_name=tls_server_name))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    config = ClientConfig(routes=addresses, ping_interval=heartbeat_interval, tls=tls)
    if password is None:
        password = click.prompt(f"password for {user_name}", hide_input=True)

    async def run() -> None:
        chatlog = ChatLog(log_dir, user_name)
        # Beside the chat log: the last seq shown, so a restarted console
        # gets only what it missed.
        cursor = FileCursor(chatlog.user_dir / "last_seq")
        cim_client = CimClient(user_name, password or "", config, cursor=cursor)
        try:
            created = await cim_client.register()
            if created:
                click.echo(f"* registered {user_name} as user {cim_client.user_id}")
            await cim_client.login()
            await cim_client.connect()
        except CimError as exc:
            await cim_client.close()
            raise click.ClickException(_explain(exc) + _tls_hint(exc, tls)) from None
        console = Console(cim_client, chatlog, interactive=sys.stdin.isatty())
        await console.run()

    _run(run())


def _explain(exc: CimError) -> str:
    from cim.errors import AlreadyExists

    if isinstance(exc, AlreadyExists) and "taken" in exc.message:
        return f"{exc.message} (wrong password?)"
    return exc.message


def _tls_hint(exc: CimError, tls: TlsConfig | None) -> str:
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


# --- cim bench -----------------------------------------------------------------
@main.command()
@click.option(
    "--scenarios",
    envvar="CIM_BENCH_SCENARIOS",
    default="ceiling,private,group,connections,login",
    help="Comma list from ceiling, private, group, connections, login.",
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
    help="Seconds of each private-message phase (ceilings: at most 5).",
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
def bench(
    scenarios: str,
    users: int,
    rate: float,
    duration: float,
    fanout_users: int,
    connections: int,
    logins: int,
    output: Path,
    no_uvloop: bool,
    redis_fsync: str,
) -> None:
    """Benchmark cim on a real local cluster (ZooKeeper, Redis, a route, chat
    servers) against bare gRPC ceilings; prints a table, writes JSON."""
    from cim.bench import report, runner
    from cim.bench.procstats import raise_open_file_limit

    _setup_logging("warning")
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
            use_uvloop=not no_uvloop,
            redis_fsync=redis_fsync,
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
    if results["errors"]:
        raise click.ClickException(f"{len(results['errors'])} part(s) of the run failed")


if __name__ == "__main__":  # pragma: no cover
    main()
