"""``cim status`` against a real cluster: ZooKeeper, Redis, a route and two
chat servers as processes. Healthy, it lists them all and exits 0; a chat
server killed (its ZooKeeper node not yet expired) or Redis stopped makes it
say why and exit 1."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cim
from cim.client.client import CimClient
from cim.config import ClientConfig
from cim.metrics.scrape import scrape
from cim.processes import free_ports
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.zookeeper_server import ZooKeeperServer

from .helpers import CIM, Proc, Procs, cim_env, launch_client

pytestmark = pytest.mark.e2e

SECRETS = {"CIM_CLUSTER_SECRET": "e2e-status-secret", "CIM_TOKEN_KEYS": "k1:0123456789abcdef0123"}
# Long enough that a killed chat server is still registered when status runs.
ZK_SESSION_TIMEOUT = "20"


class Cluster:
    """A route and two chat servers registered under their own ZooKeeper root."""

    def __init__(
        self,
        procs: Procs,
        zk: str,
        zk_root: str,
        redis_url: str,
        prefix: str,
        metrics: bool = False,
    ) -> None:
        self.backends = {
            "CIM_ZK": zk,
            "CIM_ZK_ROOT": zk_root,
            "CIM_REDIS": redis_url,
            "CIM_REDIS_PREFIX": prefix,
        }
        # Metrics, when on, each on a port of its own (picked together: distinct).
        ports = free_ports(6 if metrics else 3)
        self.route_port, *self.server_ports = ports[:3]
        self.metrics_ports = ports[3:]
        flags = [["--metrics-port", str(port)] for port in self.metrics_ports] or [[]] * 3
        env = cim_env(**SECRETS, **self.backends, CIM_ZK_SESSION_TIMEOUT=ZK_SESSION_TIMEOUT)
        # A short session TTL: chat servers refresh (and report their streams) every second.
        self.route = procs.piped(
            ["route", "--port", str(self.route_port), "--session-ttl", "3", *flags[0]],
            "cim route",
            env,
        )
        self.servers = [
            procs.piped(["server", "--port", str(port), *more], f"cim server {port}", env)
            for port, more in zip(self.server_ports, flags[1:], strict=True)
        ]
        self.route.expect(r"cim route \S+ on ")
        for server in self.servers:
            server.expect(r"cim server \S+ on ")

    @property
    def route_address(self) -> str:
        return f"127.0.0.1:{self.route_port}"

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CIM, "status", "--timeout", "2", *args],
            env=cim_env(**self.backends),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def status_json(self) -> tuple[int, dict[str, Any]]:
        done = self.status("--json")
        return done.returncode, json.loads(done.stdout)


@pytest.fixture
def cluster(
    procs: Procs,
    zookeeper: ZooKeeperServer,
    zk_root: str,
    redis_server: RedisServer,
    key_prefix: str,
) -> Iterator[Cluster]:
    yield Cluster(procs, zookeeper.hosts, zk_root, redis_server.url, key_prefix)


@pytest.fixture
def measured_cluster(
    procs: Procs,
    zookeeper: ZooKeeperServer,
    zk_root: str,
    redis_server: RedisServer,
    key_prefix: str,
) -> Iterator[Cluster]:
    """The same cluster, each process serving Prometheus metrics."""
    yield Cluster(procs, zookeeper.hosts, zk_root, redis_server.url, key_prefix, metrics=True)


def wait_until(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return result


def test_a_healthy_cluster_is_listed_and_exits_0(
    cluster: Cluster, procs: Procs, tmp_path: Path
) -> None:
    launch_client(
        procs, "alice", cluster.route_address, tmp_path / "alice", password="pw-1", tty=False
    )

    def one_stream() -> dict[str, Any] | None:
        code, report = cluster.status_json()
        streams = sum(server["connections"] or 0 for server in report["servers"])
        return report if code == 0 and streams == 1 else None

    report = wait_until(one_stream)
    assert report["healthy"] is True and report["problems"] == []
    assert [route["address"] for route in report["routes"]] == [cluster.route_address]
    assert sorted(server["address"] for server in report["servers"]) == sorted(
        f"127.0.0.1:{port}" for port in cluster.server_ports
    )
    for member in report["routes"] + report["servers"]:
        assert member["health"] == "serving"
        assert member["version"] == cim.__version__
        assert 0 <= member["uptime_seconds"] < 120
    assert report["store"]["ok"] is True
    assert report["online_users"] == 1
    assert report["rates"] == "metrics not enabled"

    done = cluster.status()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "healthy"
    assert "routes (1)" in lines and "chat servers (2)" in lines
    assert any(cluster.route_address in line and "serving" in line for line in lines)
    assert "users online: 1" in done.stdout


def test_a_killed_chat_server_is_reported_and_exits_1(cluster: Cluster) -> None:
    killed: Proc = cluster.servers[0]
    killed.signal(signal.SIGKILL)  # no drain: its node stays until its session expires
    killed.wait_exit()
    address = f"127.0.0.1:{cluster.server_ports[0]}"

    done = cluster.status()
    assert done.returncode == 1, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith(address))
    assert "unreachable" in row
    assert done.stdout.splitlines()[-1].startswith(f"UNHEALTHY: chat server {address} at {address}")

    code, report = cluster.status_json()
    assert code == 1 and report["healthy"] is False
    down = [server for server in report["servers"] if server["address"] == address]
    assert down and down[0]["ok"] is False
    assert [p for p in report["problems"] if "unreachable" in p]


def test_the_store_down_exits_1_with_one_line_reason(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    redis_server.stop(save=False)
    try:
        done = cluster.status()
    finally:
        redis_server.start()
    assert done.returncode == 1, done.stdout + done.stderr
    verdict = done.stdout.splitlines()[-1]
    assert verdict.startswith(f"UNHEALTHY: store {redis_server.url}: down (")
    assert "Traceback" not in done.stdout + done.stderr
    assert "store: DOWN" in done.stdout


def test_a_route_given_by_address_without_zookeeper(cluster: Cluster) -> None:
    servers = ",".join(f"127.0.0.1:{port}" for port in cluster.server_ports)
    done = subprocess.run(
        [CIM, "status", "--route", cluster.route_address, "--server", servers, "--json"],
        env=cim_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["registry"] == "addresses"
    assert len(report["servers"]) == 2
    assert report["store"]["ok"] is None  # none given: not checked, not unhealthy


def _traffic(route: str, count: int, interval: float) -> None:
    """alice sends bob ``count`` messages, one every ``interval`` seconds
    (a client of the library, as an application would be)."""

    async def run() -> None:
        config = ClientConfig(routes=(route,))
        alice = CimClient("alice", "pw-alice", config)
        bob = CimClient("bob", "pw-bob", config)
        try:
            for client in (alice, bob):
                await client.start()
                await client.wait_live(10)
            received = bob.messages().__aiter__()
            for index in range(count):
                await alice.send_private(bob.user_id, f"message {index}")
                await asyncio.sleep(interval)
            for _ in range(count):
                async with asyncio.timeout(10):
                    await anext(received)
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(run())


def test_metrics_of_real_processes_follow_traffic_and_give_status_its_rates(
    measured_cluster: Cluster,
) -> None:
    cluster = measured_cluster
    route_metrics, *server_metrics = (f"127.0.0.1:{p}" for p in cluster.metrics_ports)
    assert scrape(route_metrics).get("cim_messages_accepted_total") == 0
    count = 60
    sender = threading.Thread(target=_traffic, args=(cluster.route_address, count, 0.05))
    sender.start()
    try:
        # While messages flow, status reads each member's rate from its metrics.
        def flowing() -> dict[str, Any] | None:
            _, report = cluster.status_json()
            rates = report["rates"]
            return report if isinstance(rates, dict) and len(rates) == 2 else None

        report = wait_until(flowing)
    finally:
        sender.join(timeout=60)
    assert report["rates"]["accepted_per_second"] > 0
    assert report["rates"]["delivered_per_second"] > 0
    assert [route["metrics"] for route in report["routes"]] == [route_metrics]
    assert sorted(server["metrics"] for server in report["servers"]) == sorted(server_metrics)

    route = scrape(route_metrics)
    assert route.get("cim_messages_accepted_total", kind="private") == count
    assert route.get("cim_messages_pushed_total", kind="private") == count
    assert route.get("cim_registrations_total", result="created") == 2
    assert route.get("grpc_server_handled_total", grpc_method="Login", grpc_code="OK") == 2
    # A private send: its conversation's log and the receiver's sequence, in one step.
    assert route.get("cim_store_operation_seconds_count", operation="append_pointed") >= 1
    delivered = sum(scrape(a).get("cim_messages_delivered_total") for a in server_metrics)
    assert delivered == count
    latencies = sum(scrape(a).get("cim_delivery_latency_seconds_count") for a in server_metrics)
    assert latencies == count

    done = cluster.status("--rate-window", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ACCEPTED/S" in done.stdout and "DELIVERED/S" in done.stdout
