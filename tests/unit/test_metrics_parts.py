"""The pieces of cim.metrics that need no network: store timing, the merged
registries of ``cim dev``, the status code spelling, label values."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from cim.errors import Unavailable
from cim.metrics import RouteMetrics, ServerMetrics
from cim.metrics.common import reason_label
from cim.metrics.http import MemberRegistries
from cim.metrics.rpc import _code_name
from cim.metrics.scrape import parse
from cim.metrics.store import measured
from cim.store.memory import MemoryStore


def _samples(metrics) -> object:
    return parse(generate_latest(metrics.registry).decode())


async def test_store_operations_are_timed_by_name():
    metrics = RouteMetrics()
    store = measured(MemoryStore(), metrics.store_seconds, metrics.store_errors)
    account, created = await store.create_account("alice", "hash", ["alice"])
    assert created
    assert (await store.get_account(account.user_id)) == account
    await store.get_account(account.user_id)
    samples = _samples(metrics)
    assert samples.get("cim_store_operation_seconds_count", operation="get_account") == 2
    assert samples.get("cim_store_operation_seconds_count", operation="create_account") == 1
    assert samples.get("cim_store_errors_total") == 0


class _DownStore(MemoryStore):
    async def get_account(self, user_id: int):  # type: ignore[override]
        raise Unavailable("store down")

    async def online_sessions(self):  # type: ignore[override]
        raise Unavailable("store down")
        yield  # an async generator


async def test_store_failures_are_counted_and_still_raised():
    metrics = RouteMetrics()
    store = measured(_DownStore(), metrics.store_seconds, metrics.store_errors)
    with pytest.raises(Unavailable):
        await store.get_account(1)
    with pytest.raises(Unavailable):
        async for _ in store.online_sessions():
            pass
    samples = _samples(metrics)
    assert samples.get("cim_store_errors_total", operation="get_account") == 1
    assert samples.get("cim_store_errors_total", operation="online_sessions") == 1
    # The failed call's time is observed too.
    assert samples.get("cim_store_operation_seconds_count", operation="get_account") == 1


async def test_cancelled_store_calls_are_not_errors():
    metrics = RouteMetrics()

    class Slow(MemoryStore):
        async def get_account(self, user_id: int):  # type: ignore[override]
            await asyncio.sleep(10)

    store = measured(Slow(), metrics.store_seconds, metrics.store_errors)
    task = asyncio.ensure_future(store.get_account(1))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _samples(metrics).get("cim_store_errors_total") == 0


def test_member_registries_merge_families_and_label_each_member():
    first, second = CollectorRegistry(), CollectorRegistry()
    Counter("x_total", "x", ["kind"], registry=first).labels(kind="a").inc(2)
    Counter("x_total", "x", ["kind"], registry=second).labels(kind="a").inc(3)
    merged = CollectorRegistry()
    merged.register(MemberRegistries({"route-1": first, "server-1": second}))
    text = generate_latest(merged).decode()
    # One family block (one TYPE line), one sample per member.
    assert text.count("# TYPE x_total counter") == 1
    samples = parse(text)
    assert samples.get("x_total", member="route-1", kind="a") == 2
    assert samples.get("x_total", member="server-1", kind="a") == 3


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (grpc.StatusCode.OK, "OK"),
        (grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied"),
        (grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceExhausted"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DeadlineExceeded"),
    ],
)
def test_status_codes_are_spelled_as_go_grpc_prometheus_does(code, name):
    assert _code_name(code) == name


def test_close_reasons_become_label_values():
    assert reason_label("slow consumer") == "slow_consumer"
    assert reason_label("client closed the stream") == "client_closed_the_stream"
    assert reason_label("") == "unknown"


def test_two_apps_in_one_process_have_separate_registries():
    one, two = ServerMetrics(), ServerMetrics()
    one.closed("kicked")
    assert _samples(one).get("cim_stream_closes_total", reason="kicked") == 1
    assert _samples(two).get("cim_stream_closes_total", reason="kicked") == 0


def test_no_metric_is_labelled_by_user():
    """Bounded label sets: no label names a user, a session or a message."""
    seen = set()
    for metrics in (RouteMetrics(), ServerMetrics()):
        for collector in metrics.registry._collector_to_names:
            seen.update(getattr(collector, "_labelnames", ()))
    assert {"kind", "result", "operation", "reason", "grpc_method", "grpc_code"} <= seen
    assert not seen & {"user", "user_id", "user_name", "session", "session_id", "message_id"}
