"""Every ``cim`` command through click's ``CliRunner``: its user errors end in
one ``Error:`` line with exit status 2 (usage) or 1 (everything else), never a
traceback; its success path starts for real (long-running commands on free
ports, stopped once they serve)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cim.cli import configs
from cim.cli.options import (
    HeartbeatFlags,
    ListenerTlsFlags,
    LoginLimits,
    MessageLimits,
    RetentionFlags,
    RoutingFlags,
    TracingFlags,
)
from cim.client.client import CimClient
from cim.config import ClientConfig, TlsConfig
from cim.errors import ResourceExhausted
from cim.processes import free_ports
from tests.fixtures.pki import make_ca

from .conftest import DevProcess, StartAndStop, assert_fails, invoke

SECRET = ["--cluster-secret", "s3cret"]
TOKEN_KEYS = ["--token-keys", "k1:0123456789abcdef"]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def not_pem(tmp_path: Path) -> str:
    path = tmp_path / "not.pem"
    path.write_text("hello\n")
    return str(path)


# --- every command ----------------------------------------------------------------
def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("dev", "route", "server", "client", "bench"):
        assert f"\n  {command} " in result.output


@pytest.mark.parametrize("command", ["", "dev", "route", "server", "client", "bench"])
def test_an_unknown_flag_is_a_usage_error(command: str) -> None:
    assert_fails(invoke(*[c for c in (command,) if c], "--no-such-flag"), 2, "--no-such-flag")


def test_an_unknown_command_is_a_usage_error() -> None:
    assert_fails(invoke("serve"), 2, "No such command 'serve'")


# --- cim route --------------------------------------------------------------------
def test_route_needs_its_secrets() -> None:
    assert_fails(invoke("route", *TOKEN_KEYS, "--server", "127.0.0.1:1"), 2, "--cluster-secret")
    assert_fails(invoke("route", *SECRET, "--server", "127.0.0.1:1"), 2, "--token-keys")
    assert_fails(
        invoke("route", *SECRET, "--token-keys", "k1:short", "--server", "127.0.0.1:1"),
        1,
        "shorter than 16 characters",
    )
    assert_fails(
        invoke("route", "--cluster-secret", " , ", *TOKEN_KEYS, "--server", "127.0.0.1:1"),
        1,
        "a cluster secret is required",
    )


def test_route_needs_zookeeper_or_chat_servers() -> None:
    assert_fails(invoke("route", *SECRET, *TOKEN_KEYS), 1, "--zk HOST:PORT", "--server")


def test_route_refuses_a_store_url_it_does_not_know() -> None:
    result = invoke("route", *SECRET, *TOKEN_KEYS, "--server", "127.0.0.1:1", "--redis", "http://x")
    assert_fails(result, 1)


def test_route_reports_an_unreachable_zookeeper() -> None:
    (port,) = free_ports(1)
    result = invoke(
        "route", *SECRET, *TOKEN_KEYS, "--zk", f"127.0.0.1:{port}", "--zk-connect-timeout", "0.5"
    )
    assert_fails(result, 1, "ZooKeeper")


def test_route_reports_a_port_in_use(busy_port: int) -> None:
    result = invoke(
        "route", *SECRET, *TOKEN_KEYS, "--server", "127.0.0.1:1", "--port", str(busy_port)
    )
    assert_fails(result, 1, f"cannot listen on 127.0.0.1:{busy_port}")


def test_route_serves_until_stopped(start_and_stop: StartAndStop) -> None:
    (port,) = free_ports(1)
    result = start_and_stop(
        "route", *SECRET, *TOKEN_KEYS, "--server", "127.0.0.1:1", "--port", str(port), ports=[port]
    )
    address = f"127.0.0.1:{port}"
    started = f"cim route {address} on {address}; chat servers 127.0.0.1:1; store in memory"
    assert started in result.output


# --- cim server -------------------------------------------------------------------
def test_server_needs_the_cluster_secret() -> None:
    assert_fails(invoke("server", "--route", "127.0.0.1:1"), 2, "--cluster-secret")
    env = {"CIM_CLUSTER_SECRET": ","}
    assert_fails(invoke("server", "--route", "127.0.0.1:1", env=env), 1, "cluster secret")


def test_server_reports_a_port_in_use(busy_port: int) -> None:
    result = invoke("server", *SECRET, "--route", "127.0.0.1:1", "--port", str(busy_port))
    assert_fails(result, 1, f"cannot listen on 127.0.0.1:{busy_port}")


def test_server_serves_until_stopped(start_and_stop: StartAndStop) -> None:
    (port,) = free_ports(1)
    args = ["server", *SECRET, "--route", "127.0.0.1:1", "--port", str(port), "--drain-grace", "0"]
    result = start_and_stop(*args, ports=[port])
    address = f"127.0.0.1:{port}"
    assert f"cim server {address} on {address}; routes 127.0.0.1:1" in result.output


# --- TLS of dev, route and server ---------------------------------------------------------
LISTENERS = {
    "dev": ["dev"],
    "route": ["route", *SECRET, *TOKEN_KEYS, "--server", "127.0.0.1:1"],
    "server": ["server", *SECRET, "--route", "127.0.0.1:1"],
}


@pytest.mark.parametrize("command", sorted(LISTENERS))
def test_plaintext_beyond_loopback_is_refused(command: str) -> None:
    result = invoke(*LISTENERS[command], "--host", "0.0.0.0")
    assert_fails(result, 1, "without TLS", "--insecure-plaintext")


@pytest.mark.parametrize("command", sorted(LISTENERS))
def test_an_otlp_endpoint_without_otlp_tracing_is_refused(command: str) -> None:
    result = invoke(*LISTENERS[command], "--otlp-endpoint", "http://127.0.0.1:4317")
    assert_fails(result, 1, "needs --tracing otlp")


def test_tracing_flags_reach_the_route_and_the_chat_servers() -> None:
    tracing = TracingFlags("OTLP", "http://collector:4317")
    assert configs.tracing_config(tracing).exporter == "otlp"
    route, server = configs.dev_configs(
        host="127.0.0.1",
        advertise_host=None,
        routing=RoutingFlags("round-robin", "reject", "everyone"),
        max_text_bytes=100,
        message_limits=MessageLimits(0.0, 1),
        login_limits=LoginLimits(0.0, 1),
        retention=RetentionFlags(5.0, 10, 60.0, 20, 120.0),
        heartbeat=HeartbeatFlags(2.0, 6.0),
        tls_flags=ListenerTlsFlags(None, None, None, False, False),
        tracing=tracing,
    )
    assert route.tracing == server.tracing
    assert (route.tracing.exporter, route.tracing.otlp_endpoint) == (
        "otlp",
        "http://collector:4317",
    )
    assert route.tracing.enabled


@pytest.mark.parametrize("command", sorted(LISTENERS))
def test_bad_tls_files_are_named(command: str, not_pem: str, tmp_path: Path) -> None:
    args = LISTENERS[command]
    missing = str(tmp_path / "missing.pem")
    assert_fails(invoke(*args, "--tls-cert", missing, "--tls-key", not_pem), 2, "does not exist")
    assert_fails(invoke(*args, "--tls-cert", not_pem), 1, "both --tls-cert and --tls-key")
    assert_fails(invoke(*args, "--tls-cert", not_pem, "--tls-key", not_pem), 1, "is not a PEM file")
    assert_fails(invoke(*args, "--tls-ca", not_pem), 1, "need --tls-cert and --tls-key")


# --- cim dev ----------------------------------------------------------------------
def test_dev_checks_its_ports(busy_port: int) -> None:
    assert_fails(invoke("dev", "--server-ports", "a,b"), 2, "ports must be numbers")
    assert_fails(invoke("dev", "--server-ports", ","), 2, "at least one chat server port")
    route_port, server_port = free_ports(2)
    result = invoke(
        "dev", "--route-port", str(route_port), "--server-ports", f"{server_port},{busy_port}"
    )
    assert_fails(result, 1, f"cannot listen on 127.0.0.1:{busy_port}")


def test_dev_serves_until_stopped(start_and_stop: StartAndStop) -> None:
    ports = free_ports(3)
    result = start_and_stop(
        "dev",
        "--route-port",
        str(ports[0]),
        "--server-ports",
        f"{ports[1]},{ports[2]}",
        ports=ports,
    )
    assert f"cim dev: route on 127.0.0.1:{ports[0]}; chat servers on " in result.output


def test_dev_applies_the_limits_it_is_given(start_and_stop: StartAndStop) -> None:
    """One registration or login a second, one at once: the second is refused."""
    ports = free_ports(2)
    route = f"127.0.0.1:{ports[0]}"

    async def register_then_login() -> None:
        user = CimClient("lim", "pw", ClientConfig(routes=(route,)))
        try:
            assert await user.register()
            with pytest.raises(ResourceExhausted):
                await user.login()
        finally:
            await user.close()

    start_and_stop(
        "dev", "--route-port", str(ports[0]), "--server-ports", str(ports[1]),
        "--max-logins-per-sec", "1", "--login-burst", "1",
        ports=ports, then=register_then_login,
    )  # fmt: skip


def test_dev_limits_can_be_lifted() -> None:
    flags = {
        "host": "127.0.0.1",
        "advertise_host": None,
        "routing": RoutingFlags("round-robin", "kick-old", "off", 50, 7),
        "max_text_bytes": 100,
        "message_limits": MessageLimits(0.0, 1),
        "login_limits": LoginLimits(0.0, 1),
        "retention": RetentionFlags(5.0, 10, 60.0, 20, 120.0),
        "heartbeat": HeartbeatFlags(2.0, 6.0),
        "tls_flags": ListenerTlsFlags(None, None, None, False, False),
        "tracing": TracingFlags("off", None),
    }
    route, server = configs.dev_configs(**flags)  # type: ignore[arg-type]
    assert (route.max_msgs_per_sec, route.max_logins_per_sec, server.max_msgs_per_sec) == (0, 0, 0)
    assert (route.routing, route.duplicate_login, route.broadcast, route.max_text_bytes) == (
        "round-robin",
        "kick-old",
        "off",
        100,
    )
    assert (route.session_ttl, route.inbox_max_messages, route.inbox_max_age) == (5, 10, 60)
    assert (route.history_max_messages, route.history_max_age) == (20, 120)
    assert route.retention.history_max_messages == 20
    assert (route.broadcast, route.group_limits.max_members) == ("off", 50)
    assert route.typing_max_members == 7
    assert (server.heartbeat.ping_interval, server.heartbeat.idle_timeout) == (2, 6)
    assert server.max_text_bytes == 100 and route.tls is None and server.tls is None


def test_dev_over_tls(start_and_stop: StartAndStop, tmp_path: Path) -> None:
    pki = make_ca(tmp_path)
    node = pki.node()
    ports = free_ports(2)
    route = f"127.0.0.1:{ports[0]}"

    async def chat_over_tls() -> None:
        tls = TlsConfig(ca_file=pki.ca)
        user = CimClient("tee", "pw", ClientConfig(routes=(route,), tls=tls))
        try:
            await user.register()
            await user.login()
            await user.connect()
        finally:
            await user.close()

    result = start_and_stop(
        "dev", "--route-port", str(ports[0]), "--server-ports", str(ports[1]),
        "--tls-cert", node.cert, "--tls-key", node.key, "--tls-ca", pki.ca,
        ports=ports, ca=pki.ca, then=chat_over_tls,
    )  # fmt: skip
    assert f"cim dev: route on {route}" in result.output


# --- cim client -------------------------------------------------------------------
def client(route: str, user: str, password: str, *extra: str, tmp_path: Path) -> list[str]:
    return ["client", "--user", user, "--password", password, "--route", route,
            "--log-dir", str(tmp_path / "chatlog"), *extra]  # fmt: skip


def test_client_needs_a_route(tmp_path: Path) -> None:
    assert_fails(invoke(*client(",", "ann", "pw", tmp_path=tmp_path)), 1, "give a route")


def test_client_reports_an_unreachable_route(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    result = invoke(*client(f"127.0.0.1:{port}", "ann", "pw", tmp_path=tmp_path))
    assert_fails(result, 1, f"route 127.0.0.1:{port}", "Connection refused")


def test_client_checks_its_tls_files(tmp_path: Path, not_pem: str) -> None:
    args = client("127.0.0.1:1", "ann", "pw", tmp_path=tmp_path)
    assert_fails(invoke(*args, "--tls-cert", not_pem), 1, "both --tls-cert and --tls-key")
    assert_fails(invoke(*args, "--tls-ca", not_pem), 1, "is not a PEM file")
    missing = str(tmp_path / "missing.pem")
    assert_fails(invoke(*args, "--tls-ca", missing), 2, "does not exist")


def test_client_chats_then_a_wrong_password_is_one_line(
    dev_process: DevProcess, tmp_path: Path
) -> None:
    route = dev_process.route_address
    # Not a terminal: the console reads commands from stdin, and ends at its end.
    result = invoke(*client(route, "ann", "right-pw", tmp_path=tmp_path), stdin="")
    assert result.exit_code == 0, result.output
    assert "* registered ann as user" in result.output
    assert "* logged in as ann" in result.output
    again = invoke(*client(route, "ann", "wrong-pw", tmp_path=tmp_path))
    assert_fails(again, 1, "(wrong password?)")


def test_client_speaking_tls_to_a_plaintext_route_gets_a_hint(
    dev_process: DevProcess, tmp_path: Path
) -> None:
    result = invoke(*client(dev_process.route_address, "bo", "pw", "--tls", tmp_path=tmp_path))
    assert_fails(result, 1, f"route {dev_process.route_address}", "(TLS: is --tls-ca the CA")


def test_client_password_is_prompted_when_not_given(
    dev_process: DevProcess, tmp_path: Path
) -> None:
    args = ["client", "--user", "cy", "--route", dev_process.route_address,
            "--log-dir", str(tmp_path / "chatlog")]  # fmt: skip
    result = invoke(*args, stdin="cy-pw\n")
    assert result.exit_code == 0, result.output
    assert "password for cy" in result.output

    async def login() -> None:
        user = CimClient("cy", "cy-pw", ClientConfig(routes=(dev_process.route_address,)))
        try:
            await user.login()
        finally:
            await user.close()

    asyncio.run(login())  # the password given at the prompt is the account's


# --- cim bench --------------------------------------------------------------------
def test_bench_checks_its_options(tmp_path: Path) -> None:
    assert_fails(invoke("bench", "--scenarios", "private,nope"), 2, "unknown scenario(s) nope")
    assert_fails(invoke("bench", "--users", "1"), 2, "--users")
    assert_fails(invoke("bench", "--redis-fsync", "sometimes"), 2, "--redis-fsync")
    assert_fails(
        invoke("bench", "--group-sizes", "100,3"),
        2,
        "--group-sizes",
        "group size 3 is out of range 4-10,000",
    )
    assert_fails(invoke("bench", "--group-sizes", "100,100"), 2, "group size 100 is given twice")
    assert_fails(invoke("bench", "--history-messages", "1"), 2, "--history-messages")


@pytest.mark.parametrize("value", ["-1", "10001", "many"])
def test_typing_max_members_out_of_range_is_refused(value: str) -> None:
    assert_fails(invoke("route", "--typing-max-members", value), 2, "--typing-max-members")
