"""``cim route`` and ``cim server`` as separate processes, as in a deployment.

The clients here run on pipes: without a terminal the console reads lines
from stdin and prints plain text, which is how scripts drive it.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import CIM, Client, Proc, Procs, cim_env, free_ports, launch_client

pytestmark = pytest.mark.e2e

CLUSTER_SECRET = "e2e-cluster-secret"
# The deployment runs mid-way through a rolling rotation of the cluster secret:
# the route already sends the new one, the server still sends the old one, and
# each accepts both.
ROUTE_SECRETS = "e2e-new-secret,e2e-cluster-secret"
SERVER_SECRETS = "e2e-cluster-secret, e2e-new-secret"
TOKEN_KEYS = "k1:0123456789abcdef0123"


class Deployment:
    """One ``cim route`` and one ``cim server`` process that know each other."""

    def __init__(self, procs: Procs, log_root: Path) -> None:
        self.procs = procs
        self.log_root = log_root
        self.route_port, self.server_port = free_ports(2)
        self.route = procs.piped(
            [
                "route",
                "--server",
                self.server_address,
                "--cluster-secret",
                ROUTE_SECRETS,
                "--token-keys",
                TOKEN_KEYS,
                "--port",
                str(self.route_port),
            ],
            "cim route",
        )
        self.server = procs.piped(
            [
                "server",
                "--route",
                self.route_address,
                "--cluster-secret",
                SERVER_SECRETS,
                "--port",
                str(self.server_port),
            ],
            "cim server",
        )
        # "cim route ID on ADDRESS; ...": up once it names where it listens.
        self.route.expect(rf"^cim route \S+ on {self.route_address};.*{self.server_address}")
        self.server.expect(rf"^cim server \S+ on {self.server_address};.*{self.route_address}")

    @property
    def route_address(self) -> str:
        return f"127.0.0.1:{self.route_port}"

    @property
    def server_address(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    def client(self, name: str) -> Client:
        """A piped console (stdin is not a tty), logged in."""
        return launch_client(
            self.procs,
            name,
            self.route_address,
            self.log_root / f"chatlog-{name}",
            password=f"{name}-pw",
            tty=False,
        )


@pytest.fixture
def deployment(procs: Procs, tmp_path: Path) -> Iterator[Deployment]:
    deployed = Deployment(procs, tmp_path)
    yield deployed
    # Ctrl-C ends either process cleanly (the server first, as the route
    # outlives the servers it routes to).
    for proc in (deployed.server, deployed.route):
        status = proc.stop(timeout=10.0)
        assert status == 0, f"{proc.name} exited with {status}; output:\n{proc.output[-4000:]}"
        assert "Traceback" not in proc.output, proc.output[-4000:]


def quit_console(console: Proc) -> None:
    console.sendline(":q!")
    console.expect(r"^\* bye$")
    assert console.wait_exit() == 0
    assert "Traceback" not in console.output, console.output


def test_private_message_through_route_and_server_processes(deployment: Deployment) -> None:
    alice = deployment.client("alice")
    bob = deployment.client("bob")
    assert not alice.is_tty

    alice.sendline(f"{bob.user_id};;hello bob, from another process")
    alice.expect(rf"^\* to #{bob.user_id}: delivered$")
    bob.expect(
        rf"^\[\d{{2}}:\d{{2}}:\d{{2}}\] alice#{alice.user_id} \(private\): "
        r"hello bob, from another process$"
    )
    # Piped output is plain text: no escape sequences at all.
    assert "\x1b" not in bob.raw

    bob.sendline("thanks, all of you")
    bob.expect(r"^\* sent to 1 online user\(s\)$")
    alice.expect(rf"^\[[\d:]+\] bob#{bob.user_id}: thanks, all of you$")

    quit_console(alice)
    # End of input ends a piped console too.
    bob.child.sendeof()
    bob.expect(r"^\* bye$")
    assert bob.wait_exit() == 0


def test_route_without_cluster_secret_is_a_clear_error() -> None:
    (port,) = free_ports(1)
    result = subprocess.run(
        [CIM, "route", "--server", "127.0.0.1:1", "--token-keys", TOKEN_KEYS, "--port", str(port)],
        env=cim_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output  # click's usage error
    assert "Missing option '--cluster-secret'" in result.stderr, output
    assert "Traceback" not in output, output


def test_server_on_a_port_in_use_is_a_clear_error() -> None:
    route_port, busy_port = free_ports(2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", busy_port))
        holder.listen()
        result = subprocess.run(
            [
                CIM,
                "server",
                "--route",
                f"127.0.0.1:{route_port}",
                "--cluster-secret",
                CLUSTER_SECRET,
                "--port",
                str(busy_port),
            ],
            env=cim_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 1, output  # click.ClickException
    error = re.search(r"^Error: (.*)$", result.stderr, re.MULTILINE)
    assert error is not None, output
    assert f"127.0.0.1:{busy_port}" in error.group(1), output
    assert "in use" in error.group(1), output


def test_sigterm_drains_the_chat_server(deployment: Deployment) -> None:
    alice = deployment.client("alice")
    bob = deployment.client("bob")

    deployment.server.signal(signal.SIGTERM)  # as a service manager stops it
    for console in (alice, bob):
        console.expect(r"^\* .*shutting down.*$")
    assert deployment.server.wait_exit() == 0
    server_log = deployment.server.output
    assert "shutting down" in server_log
    assert "left (server draining)" in server_log
    assert "Traceback" not in server_log, server_log

    # The consoles outlive their server: they try to reconnect, and still quit cleanly.
    alice.expect(r"^\* reconnecting in [\d.]+ s \(try 1\)$")
    quit_console(alice)
    quit_console(bob)


def test_blank_cluster_secrets_are_a_clear_error() -> None:
    (port,) = free_ports(1)
    result = subprocess.run(
        [CIM, "server", "--route", "127.0.0.1:1", "--cluster-secret", " , ", "--port", str(port)],
        env=cim_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # click.ClickException
    assert "Error: a cluster secret is required" in result.stderr, output
    assert "Traceback" not in output, output
