"""Prometheus metrics, scraped over HTTP from running apps as traffic flows.

Each app serves its own registry; the counts below are what one scenario
adds, read as differences between scrapes (nothing else runs in the cluster).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cim.config import ServerConfig
from cim.core.members import MemberKind
from cim.errors import ResourceExhausted
from cim.metrics.scrape import Samples, scrape
from cim.proto.v1 import common_pb2
from cim.testing import cluster, crash
from cim.testing import fast_route_config as route_config

METRICS_ON = ServerConfig(cluster_secrets=("x",), metrics_port=0)


async def _scrape(address: str) -> Samples:
    return await asyncio.to_thread(scrape, address)


def _route_metrics(c) -> str:
    endpoint = c.embedded.route.listener.metrics
    assert endpoint is not None
    return endpoint.address


def _server_metrics(c) -> list[str]:
    addresses = []
    for server in c.embedded.servers:
        assert server.listener.metrics is not None
        addresses.append(server.listener.metrics.address)
    return addresses


async def _servers_sum(c, name: str, **labels: str) -> float:
    total = 0.0
    for address in _server_metrics(c):
        total += (await _scrape(address)).get(name, **labels)
    return total


async def test_members_register_where_their_metrics_are():
    async with cluster(route_config=route_config(metrics_port=0), server_config=METRICS_ON) as c:
        registry = c.embedded.registry
        routes = registry.members(MemberKind.ROUTE)
        servers = registry.members(MemberKind.SERVER)
        assert [m.metrics for m in routes] == [_route_metrics(c)]
        assert sorted(m.metrics for m in servers) == sorted(_server_metrics(c))
        # Each endpoint answers with its own kind of process.
        assert (await _scrape(routes[0].metrics)).get("cim_build_info", kind="route") == 1
        for member in servers:
            assert (await _scrape(member.metrics)).get("cim_build_info", kind="server") == 1


async def test_no_metrics_port_means_nothing_served():
    async with cluster() as c:
        assert c.embedded.route.listener.metrics is None
        assert all(m.metrics == "" for m in c.embedded.registry.members(MemberKind.SERVER))


async def test_logins_and_registrations_by_result(raw):
    async with cluster(route_config=route_config(metrics_port=0), server_config=METRICS_ON) as c:
        alice = await c.client("alice")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw.login(c, "alice", "wrong-password", register=False)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        route = await _scrape(_route_metrics(c))
        assert route.get("cim_registrations_total", result="created") == 1
        assert route.get("cim_registrations_total", result="existing") == 0
        assert route.get("cim_logins_total", result="ok") == 1
        assert route.get("cim_logins_total", result="permission_denied") >= 1
        # The interceptor saw the same calls, by method and status.
        login_ok = route.get("grpc_server_handled_total", grpc_method="Login", grpc_code="OK")
        denied = route.get(
            "grpc_server_handled_total", grpc_method="Login", grpc_code="PermissionDenied"
        )
        assert (login_ok, denied) == (1, route.get("cim_logins_total", result="permission_denied"))
        assert route.get("grpc_server_started_total", grpc_method="Login") == login_ok + denied
        # The chat server confirmed one stream login, and holds one user.
        assert await _servers_sum(c, "cim_stream_logins_total", result="ok") == 1
        assert await _servers_sum(c, "cim_users_connected") == 1
        assert await _servers_sum(c, "cim_streams_open") == 1
        assert alice.user_id


@pytest.mark.parametrize("path", ["stream", "unary"])
async def test_messages_accepted_pushed_delivered_and_stored(path, eventually):
    async with cluster(route_config=route_config(metrics_port=0), server_config=METRICS_ON) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        carol = await c.client("carol", connect=False)  # registered, never connected
        before = await _scrape(_route_metrics(c))
        send = alice.send_private if path == "stream" else alice.route.send_private

        await send(bob.user_id, "live")
        await c.next_message(bob)
        await send(carol.user_id, "for later")
        await alice.send_group("to everyone online")
        await c.next_message(bob)

        route = await _scrape(_route_metrics(c))

        def added(name: str, **labels: str) -> float:
            return route.get(name, **labels) - before.get(name, **labels)

        assert added("cim_messages_accepted_total", kind="private") == 2
        assert added("cim_messages_pushed_total", kind="private") == 1
        assert added("cim_messages_stored_offline_total", kind="private") == 1
        assert added("cim_messages_accepted_total", kind="group") == 1
        assert added("cim_messages_pushed_total", kind="group") == 1  # bob, not alice
        # Private sends: conversation logs and pointers in one step; the group message: full copies.
        assert added("cim_store_operation_seconds_count", operation="append_pointed") >= 1
        assert added("cim_store_operation_seconds_count", operation="append_inbox") >= 1
        assert added("cim_push_batch_messages_count") >= 2
        if path == "stream":
            assert added("cim_submit_batch_messages_sum") == 3
        else:
            method = "SendPrivate"
            assert added("grpc_server_handled_total", grpc_method=method, grpc_code="OK") == 2

        async def delivered() -> bool:
            total = await _servers_sum(c, "cim_messages_delivered_total")
            return total == 2

        await eventually(delivered)
        assert await _servers_sum(c, "cim_messages_delivered_total", kind="private") == 1
        assert await _servers_sum(c, "cim_messages_delivered_total", kind="group") == 1
        assert await _servers_sum(c, "cim_delivery_latency_seconds_count") == 2
        # Well within the largest bucket on a local cluster.
        assert await _servers_sum(c, "cim_delivery_latency_seconds_bucket", le="10.0") == 2

        # carol's login replays what was stored for her: one page, one message.
        await carol.start()
        await carol.wait_live(5.0)
        assert await _servers_sum(c, "cim_replay_pages_total") >= 1
        assert await _servers_sum(c, "cim_messages_replayed_total") == 1


async def _close_reasons(c) -> dict[str, float]:
    reasons: dict[str, float] = {}
    for address in _server_metrics(c):
        for (name, labels), value in (await _scrape(address)).values.items():
            if name == "cim_stream_closes_total" and value:
                reason = dict(labels)["reason"]
                reasons[reason] = reasons.get(reason, 0) + value
    return reasons


async def test_stream_closes_by_reason(eventually):
    async with cluster(route_config=route_config(metrics_port=0), server_config=METRICS_ON) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        await alice.close()  # logs out: the route kicks the session's stream

        async def one_closed() -> bool:
            return await _close_reasons(c) == {"kicked": 1}

        await eventually(one_closed)
        await crash(bob)  # the stream cut, no logout

        async def both_closed() -> bool:
            return sum((await _close_reasons(c)).values()) == 2

        await eventually(both_closed)
        reasons = await _close_reasons(c)
        assert reasons.pop("kicked") == 1
        assert set(reasons) <= {"client_closed_the_stream", "disconnected"}
        assert await _servers_sum(c, "cim_streams_open") == 0
        assert await _servers_sum(c, "cim_users_connected") == 0


async def test_rate_limit_refusals_are_counted(raw):
    config = route_config(metrics_port=0, max_msgs_per_sec=1.0, msg_burst=1)
    async with cluster(route_config=config, server_config=METRICS_ON) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        await alice.route.send_private(bob.user_id, "one")
        with pytest.raises(ResourceExhausted):
            await alice.route.send_private(bob.user_id, "two")
        route = await _scrape(_route_metrics(c))
        assert route.get("cim_rate_limit_refusals_total", limit="messages") == 1
        assert (
            route.get(
                "grpc_server_handled_total",
                grpc_method="SendPrivate",
                grpc_code="ResourceExhausted",
            )
            == 1
        )


async def test_refused_sends_by_kind_and_status(raw):
    async with cluster(route_config=route_config(metrics_port=0), server_config=METRICS_ON) as c:
        login = await raw.login(c, "alice")
        stub = raw.route(c)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendPrivate(
                common_pb2.SendPrivateRequest(receiver_id=999_999, text="hi"),
                metadata=raw.auth(login.session_token),
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        route = await _scrape(_route_metrics(c))
        assert route.get("cim_messages_refused_total", kind="private", result="not_found") == 1
        assert route.get("cim_messages_accepted_total") == 0


async def test_cim_dev_serves_every_member_on_one_port_labelled_by_member():
    from cim.embedded import EmbeddedCluster

    embedded = EmbeddedCluster(route_config=route_config(), metrics_port=0)
    await embedded.start()
    try:
        assert embedded.metrics is not None
        samples = await _scrape(embedded.metrics.address)
        assert samples.get("cim_build_info", member="route-1", kind="route") == 1
        assert samples.get("cim_build_info", member="server-1", kind="server") == 1
        assert samples.get("cim_build_info", member="server-2", kind="server") == 1
    finally:
        await embedded.stop()
