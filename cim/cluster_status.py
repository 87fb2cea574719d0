"""What an operator asks of a running cluster: who is registered, does each
member answer, does the store answer, how many users are online.

:func:`check` gathers a :class:`ClusterStatus` (members from ZooKeeper, or
from addresses for clusters wired by hand; each member's gRPC health check;
Redis ``PING`` and the online index). :meth:`ClusterStatus.problems` says why
the cluster is unhealthy, if it is: no route, no chat server, the registry or
the store down, a member unreachable or not serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cim.core.members import Member, MemberKind
from cim.errors import CimError
from cim.metrics.scrape import scrape
from cim.tls import Tls, open_channel

__all__ = ["ClusterStatus", "MemberStatus", "StoreStatus", "ZooKeeperSource", "check"]

DEFAULT_TIMEOUT = 3.0
# Message rates come from members' metrics (``--metrics-port``); without any:
RATES = "metrics not enabled"
# Rates are counted over this many seconds (two scrapes of each member).
DEFAULT_RATE_WINDOW = 1.0
# What a member's rate counts: messages a route accepted, copies a chat server pushed.
RATE_SERIES = {
    MemberKind.ROUTE: "cim_messages_accepted_total",
    MemberKind.SERVER: "cim_messages_delivered_total",
}


@dataclass(frozen=True)
class MemberStatus:
    """One route or chat server as registered, and how its health check answered.

    ``version``, ``started_at`` and ``connections`` are None where nobody
    says (a member given by address, or registered by an older cim)."""

    kind: str
    member_id: str
    address: str
    version: str | None
    started_at: float | None
    connections: int | None
    health: str  # "serving", "not serving", or "unreachable (why)"
    # Where it serves metrics ("" if it does not), and its messages per
    # second (RATE_SERIES) over the rate window; None when not measured.
    metrics: str = ""
    rate: float | None = None

    @property
    def ok(self) -> bool:
        return self.health == "serving"

    def uptime(self, now: float) -> float | None:
        return None if self.started_at is None else max(0.0, now - self.started_at)


@dataclass(frozen=True)
class StoreStatus:
    """The store: ``ok`` None when none was given to check."""

    url: str | None
    ok: bool | None
    online_users: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class ZooKeeperSource:
    hosts: str
    root: str = "/cim"
    session_timeout: float = 10.0
    connect_timeout: float = 5.0


@dataclass
class ClusterStatus:
    registry: str  # where the members were found
    routes: list[MemberStatus] = field(default_factory=list)
    servers: list[MemberStatus] = field(default_factory=list)
    store: StoreStatus = field(default_factory=lambda: StoreStatus(None, None))
    registry_error: str | None = None
    servers_listed: bool = True  # False: wired by address and no --server given
    checked_at: float = field(default_factory=time.time)

    def problems(self) -> list[str]:
        """Why the cluster is unhealthy, one short line each; empty when healthy."""
        found: list[str] = []
        if self.registry_error:
            found.append(f"registry: {self.registry_error}")
        if not self.routes and not self.registry_error:
            found.append("no route registered")
        if self.servers_listed and not self.servers and not self.registry_error:
            found.append("no chat server registered")
        for member in (*self.routes, *self.servers):
            if not member.ok:
                what = "route" if member.kind == MemberKind.ROUTE else "chat server"
                found.append(f"{what} {member.member_id} at {member.address}: {member.health}")
        if self.store.ok is False:
            found.append(f"store {self.store.url}: down ({self.store.error})")
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems()

    def to_dict(self) -> dict[str, Any]:
        """For ``--json``: plain data, uptimes in seconds."""

        def member(status: MemberStatus) -> dict[str, Any]:
            data = asdict(status)
            data["ok"] = status.ok
            data["uptime_seconds"] = status.uptime(self.checked_at)
            return data

        return {
            "healthy": self.healthy,
            "rates": self.rates() or RATES,
            "problems": self.problems(),
            "checked_at": self.checked_at,
            "registry": self.registry,
            "routes": [member(route) for route in self.routes],
            "servers": [member(server) for server in self.servers] if self.servers_listed else None,
            "store": asdict(self.store),
            "online_users": self.store.online_users,
        }

    def rates(self) -> dict[str, float]:
        """Messages per second the routes accepted and the chat servers
        delivered, summed over the members that serve metrics; empty when
        none does."""
        found: dict[str, float] = {}
        for key, members in (("accepted", self.routes), ("delivered", self.servers)):
            measured = [m.rate for m in members if m.rate is not None]
            if measured:
                found[f"{key}_per_second"] = round(sum(measured), 1)
        return found


async def check(
    *,
    zookeeper: ZooKeeperSource | None = None,
    routes: Sequence[str] = (),
    servers: Sequence[str] = (),
    redis_url: str | None = None,
    redis_prefix: str = "cim:",
    tls: Tls | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    rate_window: float = DEFAULT_RATE_WINDOW,
) -> ClusterStatus:
    """The cluster's status: members from ``zookeeper`` if given, else the
    ``routes`` and ``servers`` addresses; the store at ``redis_url`` if given;
    message rates of the members that registered a metrics address, counted
    over ``rate_window`` seconds (0: none)."""
    if zookeeper is not None:
        status = ClusterStatus(registry=f"ZooKeeper {zookeeper.hosts}{zookeeper.root}")
        try:
            members = await _registered(zookeeper)
        except CimError as exc:
            status.registry_error = exc.message
            members = []
    else:
        status = ClusterStatus(registry="addresses", servers_listed=bool(servers))
        members = [Member(MemberKind.ROUTE, a, a) for a in routes]
        members += [Member(MemberKind.SERVER, a, a) for a in servers]
    checked, store, rates = await asyncio.gather(
        asyncio.gather(
            *(_member_status(m, tls, timeout, known=zookeeper is not None) for m in members)
        ),
        _store_status(redis_url, redis_prefix, timeout),
        _rates(members, rate_window, timeout),
    )
    checked = [
        replace(status, metrics=member.metrics, rate=rates.get(member.member_id))
        for member, status in zip(members, checked, strict=True)
    ]
    status.routes = [m for m in checked if m.kind == MemberKind.ROUTE]
    status.servers = [m for m in checked if m.kind == MemberKind.SERVER]
    status.store = store
    status.checked_at = time.time()
    return status


async def _rates(members: Sequence[Member], window: float, timeout: float) -> dict[str, float]:
    """Messages per second of each member serving metrics, by member id:
    its RATE_SERIES counter scraped twice, ``window`` seconds apart."""
    counted = [m for m in members if m.metrics]
    if not counted or window <= 0:
        return {}

    async def count(member: Member) -> float | None:
        try:
            samples = await asyncio.to_thread(scrape, member.metrics, timeout)
        except (OSError, ValueError):  # gone, or not a metrics endpoint
            return None
        return samples.get(RATE_SERIES[member.kind])

    first = await asyncio.gather(*(count(m) for m in counted))
    start = time.monotonic()
    await asyncio.sleep(window)
    second = await asyncio.gather(*(count(m) for m in counted))
    elapsed = time.monotonic() - start
    return {
        member.member_id: max(0.0, after - before) / elapsed
        for member, before, after in zip(counted, first, second, strict=True)
        if before is not None and after is not None
    }


async def _registered(source: ZooKeeperSource) -> list[Member]:
    from cim.registry.zookeeper import ZooKeeperRegistry

    registry = ZooKeeperRegistry(
        source.hosts, source.root, source.session_timeout, source.connect_timeout
    )
    try:
        await registry.start()
        return [member for kind in MemberKind for member in registry.members(kind)]
    finally:
        await registry.aclose()


async def _member_status(
    member: Member, tls: Tls | None, timeout: float, known: bool
) -> MemberStatus:
    health = await health_check(member.address, tls, timeout)
    registered = known and member.started_at > 0
    return MemberStatus(
        kind=member.kind.value,
        member_id=member.member_id,
        address=member.address,
        version=(member.version or None) if known else None,
        started_at=member.started_at if registered else None,
        connections=member.connections if known and member.kind == MemberKind.SERVER else None,
        health=health,
    )


async def health_check(address: str, tls: Tls | None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """``"serving"``, ``"not serving"`` or ``"unreachable (why)"`` from the
    standard gRPC health service of the process at ``address``."""
    channel = open_channel(address, tls)
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
    except grpc.aio.AioRpcError as exc:
        details = " ".join((exc.details() or "").split(";")[0].split())[:80]
        return f"unreachable ({exc.code().name}: {details})" if details else "unreachable"
    finally:
        await channel.close()
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return "serving"
    return "not serving"


async def _store_status(url: str | None, prefix: str, timeout: float) -> StoreStatus:
    if not url:
        return StoreStatus(None, None)
    from cim.store.factory import open_store
    from cim.store.redis import RedisStore

    shown = without_credentials(url)
    store = open_store(url, prefix)
    if not isinstance(store, RedisStore):
        await store.aclose()
        return StoreStatus(shown, None, error="not a Redis URL: nothing to check")
    try:
        async with asyncio.timeout(timeout):
            await store.client.ping()
            online = await store.client.zcount(store.keys.online, int(time.time() * 1000), "+inf")
    except Exception as exc:  # refused, timed out, a Redis error: all mean down
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        return StoreStatus(shown, False, error=reason)
    finally:
        await store.aclose()
    return StoreStatus(shown, True, online_users=int(online))


def without_credentials(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://host:6379/0``: the status is
    printed and logged, the password is not."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
