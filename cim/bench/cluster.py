"""A real distributed cluster for the benchmarks: ZooKeeper, Redis, ``cim route``
and ``cim server``, each its own process, on free loopback ports.

    with BenchCluster(workdir) as cluster:
        cluster.start_backends()
        deployment = cluster.start_cim(servers=2)
        ...                                 # deployment.route_address, cluster.pids()
        cluster.stop_cim()                  # servers (they drain), then routes
        cluster.start_cim(servers=1)        # a fresh deployment: new ZooKeeper root, key prefix
    # leaving the block stops everything in reverse order, whatever happened

Every child runs in its own session (a Ctrl-C at the terminal reaches only the
bench, which then stops the children in order) and is killed by the kernel if
the bench itself dies without cleaning up (:mod:`cim.processes`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType

from cim.bench.child import Child, ChildError
from cim.processes import free_ports

log = logging.getLogger(__name__)

JAVA_DIR = Path("/usr/share/java")
ZK_CLASSPATH = (JAVA_DIR / "zookeeper.jar", JAVA_DIR / "slf4j-nop.jar")
ZK_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# A draining chat server waits up to its drain grace (5 s) for its streams.
SERVER_STOP_TIMEOUT = 15.0


class ClusterError(ChildError):
    """A process of the cluster did not start or is not healthy."""


@dataclass
class Member:
    """A process of the cluster: what it is and where it serves."""

    role: str  # "zookeeper", "redis", "route" or "server"
    address: str  # host:port it serves
    process: Child  # named "zookeeper", "redis", "route", "server-1", ...
    member_id: str = ""  # its id in ZooKeeper (cim processes)

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


@dataclass
class Deployment:
    """One set of cim processes on the shared ZooKeeper and Redis."""

    zk_root: str
    redis_prefix: str
    routing: str
    routes: list[Member] = field(default_factory=list)
    servers: list[Member] = field(default_factory=list)

    @property
    def route_address(self) -> str:
        return self.routes[0].address

    @property
    def route_addresses(self) -> list[str]:
        return [route.address for route in self.routes]

    def server_names(self) -> dict[str, str]:
        """Chat server address -> process name."""
        return {server.address: server.name for server in self.servers}


class BenchCluster:
    """ZooKeeper, Redis and cim processes for one benchmark run (see the module doc)."""

    def __init__(
        self,
        workdir: Path,
        *,
        log_level: str = "info",
        redis_fsync: str = "off",
        metrics: bool = False,
    ) -> None:
        """``metrics``: each cim process serves Prometheus metrics, and a
        thread scrapes them all once a second, as a (busy) Prometheus would."""
        self.workdir = workdir
        self.metrics = metrics
        self._scraper: Scraper | None = None
        self.redis_fsync = redis_fsync
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.cluster_secret = secrets.token_hex(32)
        self.token_keys = f"bench:{secrets.token_hex(32)}"
        self.zookeeper: Member | None = None
        self.redis: Member | None = None
        self.deployment: Deployment | None = None
        self._deployments = 0

    # --- addresses ------------------------------------------------------------
    @property
    def zk_hosts(self) -> str:
        if self.zookeeper is None:
            raise ClusterError("ZooKeeper is not running")
        return self.zookeeper.address

    @property
    def redis_url(self) -> str:
        if self.redis is None:
            raise ClusterError("Redis is not running")
        return f"redis://{self.redis.address}/0"

    def processes(self) -> list[Member]:
        """Every running process of the cluster, backends first."""
        found = [p for p in (self.zookeeper, self.redis) if p is not None]
        if self.deployment is not None:
            found += self.deployment.routes + self.deployment.servers
        return found

    def pids(self) -> dict[str, int]:
        return {m.name: m.pid for m in self.processes() if m.process.alive()}

    # --- ZooKeeper and Redis ---------------------------------------------------
    def start_backends(self) -> None:
        """Starts ZooKeeper and Redis (if not running) and waits until both answer."""
        if self.zookeeper is None:
            self.zookeeper = self._start_zookeeper()
        if self.redis is None:
            self.redis = self._start_redis()
        redis, zookeeper = self.redis, self.zookeeper
        _wait_until(lambda: _redis_ping(redis.port), redis, START_TIMEOUT, "answer PING")
        _wait_until(lambda: _zk_serving(zookeeper.port), zookeeper, START_TIMEOUT, "serve")
        log.info("backends up: ZooKeeper %s, Redis %s", self.zk_hosts, self.redis_url)

    def _start_zookeeper(self) -> Member:
        java = shutil.which("java")
        missing = [str(jar) for jar in ZK_CLASSPATH if not jar.exists()]
        if java is None or missing:
            raise ClusterError(
                "the benchmark needs Java and Debian's zookeeper package "
                f"(apt-get install zookeeper default-jre-headless); missing: "
                f"{'java' if java is None else ', '.join(missing)}"
            )
        (port,) = free_ports(1)
        data = self.workdir / "zookeeper"
        data.mkdir(exist_ok=True)
        args = [
            java,
            "-cp",
            ":".join(str(jar) for jar in ZK_CLASSPATH),
            "-Xms32m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-Dzookeeper.admin.enableServer=false",
            ZK_MAIN,
            str(port),
            str(data),
        ]
        process = Child("zookeeper", args, self.workdir / "zookeeper.log")
        return Member("zookeeper", f"127.0.0.1:{port}", process)

    def _start_redis(self) -> Member:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise ClusterError("the benchmark needs redis-server (apt-get install redis-server)")
        (port,) = free_ports(1)
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        args = [
            redis_server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *(
                ("--appendonly", "no")
                if self.redis_fsync == "off"
                else ("--appendonly", "yes", "--appendfsync", self.redis_fsync)
            ),
            "--dir",
            str(data),
            "--daemonize",
            "no",
        ]
        process = Child("redis", args, self.workdir / "redis.log")
        return Member("redis", f"127.0.0.1:{port}", process)

    # --- cim ------------------------------------------------------------------
    def child_env(self) -> dict[str, str]:
        """The environment of a cim child: no inherited CIM_* settings, the secrets."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("CIM_")}
        env.update(CIM_CLUSTER_SECRET=self.cluster_secret, CIM_TOKEN_KEYS=self.token_keys)
        return env

    def start_cim(
        self,
        servers: int = 2,
        routes: int = 1,
        routing: str = "round-robin",
        group_max_members: int | None = None,
    ) -> Deployment:
        """Starts routes and chat servers under a fresh ZooKeeper root and Redis
        key prefix; returns once each is SERVING and registered in ZooKeeper.
        ``group_max_members``: the routes' --group-max-members (default: theirs)."""
        if self.deployment is not None:
            raise ClusterError("stop the running cim processes first (stop_cim)")
        self.start_backends()
        self._deployments += 1
        n = self._deployments
        deployment = Deployment(f"/bench{n}", f"bench{n}:", routing)
        self.deployment = deployment
        count = routes + servers
        # Metrics ports, if any, picked with the others: all distinct.
        ports = free_ports(2 * count if self.metrics else count)
        ports, metrics_ports = ports[:count], ports[count:]
        common = [
            "--zk",
            self.zk_hosts,
            "--zk-root",
            deployment.zk_root,
            "--log-level",
            self.log_level,
        ]
        for i, port in enumerate(ports[:routes], start=1):
            name = f"route-{i}" if routes > 1 else "route"
            args = [
                "route",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--route-id",
                f"bench-{name}",
                "--redis",
                self.redis_url,
                "--redis-prefix",
                deployment.redis_prefix,
                "--routing",
                routing,
                # The login storm and the connections scenario log thousands of
                # users in from this one address; messages keep the default limit.
                "--max-logins-per-sec",
                "0",
                *(
                    ("--group-max-members", str(group_max_members))
                    if group_max_members is not None
                    else ()
                ),
                *common,
                *self._metrics_flag(metrics_ports, i - 1),
            ]
            deployment.routes.append(self._start_cim_process(name, "route", port, args, n))
        for i, port in enumerate(ports[routes:], start=1):
            name = f"server-{i}"
            args = [
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--server-id",
                f"bench-{name}",
                *common,
                *self._metrics_flag(metrics_ports, routes + i - 1),
            ]
            deployment.servers.append(self._start_cim_process(name, "server", port, args, n))
        members = deployment.routes + deployment.servers
        for process in members:
            _wait_until(partial(_grpc_serving, process.address), process, START_TIMEOUT, "serve")
        self._wait_registered(deployment)
        if metrics_ports:
            self._scraper = Scraper([f"127.0.0.1:{port}" for port in metrics_ports])
            self._scraper.start()
        log.info(
            "cim up: routes %s, chat servers %s",
            ", ".join(deployment.route_addresses),
            ", ".join(s.address for s in deployment.servers),
        )
        return deployment

    @staticmethod
    def _metrics_flag(ports: list[int], index: int) -> list[str]:
        return ["--metrics-port", str(ports[index])] if ports else []

    def _start_cim_process(
        self, name: str, role: str, port: int, args: list[str], n: int
    ) -> Member:
        log_path = self.workdir / f"{name}.{n}.log"
        process = Child.python(name, "cim.cli", args, log_path, env=self.child_env(), talk=False)
        return Member(role, f"127.0.0.1:{port}", process, f"bench-{name}")

    def _wait_registered(self, deployment: Deployment) -> None:
        """Until every route and chat server has its node in ZooKeeper."""
        from kazoo.client import KazooClient

        from cim.registry.paths import RegistryPaths, node_name

        paths = RegistryPaths(deployment.zk_root)
        wanted = {
            paths.routes: {node_name(p.member_id) for p in deployment.routes},
            paths.servers: {node_name(p.member_id) for p in deployment.servers},
        }
        zk = KazooClient(hosts=self.zk_hosts, timeout=5.0)
        zk.start(timeout=10.0)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                missing = []
                for path, names in wanted.items():
                    present = set(zk.get_children(path)) if zk.exists(path) else set()
                    missing += sorted(names - present)
                if not missing:
                    return
                for member in deployment.routes + deployment.servers:
                    member.process.check_alive()
                if time.monotonic() > deadline:
                    raise ClusterError(f"not registered in ZooKeeper: {', '.join(missing)}")
                time.sleep(0.05)
        finally:
            zk.stop()
            zk.close()

    def stop_cim(self) -> None:
        """Stops the chat servers (SIGTERM: they drain), then the routes."""
        deployment, self.deployment = self.deployment, None
        if deployment is None:
            return
        if self._scraper is not None:
            self._scraper.stop()
            self._scraper = None
        _stop_all(deployment.servers, SERVER_STOP_TIMEOUT)
        _stop_all(deployment.routes, STOP_TIMEOUT)

    # --- the whole cluster -----------------------------------------------------
    def close(self) -> None:
        """Stops everything in reverse order: chat servers, routes, Redis, ZooKeeper."""
        try:
            self.stop_cim()
        finally:
            redis, self.redis = self.redis, None
            zookeeper, self.zookeeper = self.zookeeper, None
            _stop_all([p for p in (redis,) if p is not None], STOP_TIMEOUT)
            _stop_all([p for p in (zookeeper,) if p is not None], STOP_TIMEOUT)

    def __enter__(self) -> BenchCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Scraper:
    """Scrapes metrics endpoints every ``interval`` seconds in a thread."""

    def __init__(self, addresses: list[str], interval: float = 1.0) -> None:
        self.addresses = addresses
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        log.info("metrics: %d scrapes, %d failed", self.scrapes, self.failures)

    def _run(self) -> None:
        from cim.metrics.scrape import scrape

        while not self._stop.wait(self.interval):
            for address in self.addresses:
                try:
                    scrape(address)
                    self.scrapes += 1
                except (OSError, ValueError):
                    self.failures += 1


def _stop_all(members: list[Member], timeout: float) -> None:
    """SIGTERM to all of them at once, then wait (SIGKILL after ``timeout``).
    Survives a second Ctrl-C: every process is ended before it returns."""
    for member in members:
        member.process.signal_stop()
    for member in members:
        member.process.stop(timeout)


def _wait_until(ready: Callable[[], bool], member: Member, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        member.process.check_alive()
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{member.name} did not {what} within {timeout:.0f} s{member.process.log_excerpt()}"
            )
        time.sleep(0.05)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _zk_serving(port: int) -> bool:
    """ZooKeeper answers the ``srvr`` four-letter word (allowed by default)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"srvr")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return False
    return b"Mode:" in reply


def _grpc_serving(address: str) -> bool:
    """The standard health service says SERVING (overall)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
