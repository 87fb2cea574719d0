"""OpenTelemetry tracing of the message path (``cim.tracing``), with the SDK's
in-memory exporter: a route and a chat server in-process, each with a
TracerProvider of its own; a message's spans (accept, store, push on the
route; deliver on the chat server) form one trace whose id is the message's
trace_id. Off (the default), no span, no provider, no OpenTelemetry import."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cim.config import ServerConfig, TracingConfig, random_secret
from cim.proto.internal.v1 import route_internal_pb2
from cim.proto.v1 import common_pb2
from cim.testing import TestCluster, cluster
from cim.testing import fast_route_config as route_config

PASSWORD = "tracing-secret-pw"
TEXT = "the text is never an attribute"


def traced_cluster(exporter: InMemorySpanExporter) -> AbstractAsyncContextManager[TestCluster]:
    tracing = TracingConfig(span_exporter=exporter)
    return cluster(
        servers=1,
        route_config=route_config(tracing=tracing),
        server_config=ServerConfig(cluster_secrets=(random_secret(),), tracing=tracing),
    )


async def trace_of(
    exporter: InMemorySpanExporter, trace_id: str, names: set[str]
) -> list[ReadableSpan]:
    """The finished spans of the trace, once those named are all there."""
    async with asyncio.timeout(5.0):
        while True:
            spans = [
                span
                for span in exporter.get_finished_spans()
                if span.context is not None
                and trace.format_trace_id(span.context.trace_id) == trace_id
            ]
            if names <= {span.name for span in spans}:
                return spans
            await asyncio.sleep(0.02)


def one(spans: Iterable[ReadableSpan], name: str) -> ReadableSpan:
    (found,) = [span for span in spans if span.name == name]
    return found


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def check_message_trace(spans: list[ReadableSpan], kind: str, server_id: str) -> None:
    """accept (route, root) > store, push (route) > deliver (chat server)."""
    accept = one(spans, "cim.accept")
    assert accept.parent is None
    assert accept.kind is trace.SpanKind.SERVER
    assert accept.attributes is not None
    assert accept.attributes["cim.message.kind"] == kind
    assert accept.attributes["cim.batch.size"] == 1
    assert accept.resource.attributes["service.name"] == "cim-route"
    assert accept.resource.attributes["service.instance.id"] == "route-1"

    stores = [span for span in spans if span.name == "cim.store"]
    assert stores
    assert {parent_id(span) for span in stores} == {span_id(accept)}
    assert all(span.resource.attributes["service.name"] == "cim-route" for span in stores)

    push = one(spans, "cim.push")
    assert push.kind is trace.SpanKind.CLIENT
    assert parent_id(push) == span_id(accept)
    assert push.attributes is not None
    assert push.attributes["cim.server.id"] == server_id
    assert push.attributes["cim.delivered"] == 1

    deliver = one(spans, "cim.deliver")
    assert deliver.kind is trace.SpanKind.SERVER
    assert deliver.parent is not None and deliver.parent.is_remote
    assert parent_id(deliver) == span_id(push)
    assert deliver.resource.attributes["service.name"] == "cim-server"
    assert deliver.resource.attributes["service.instance.id"] == server_id
    assert deliver.attributes is not None
    assert deliver.attributes["cim.delivered"] == 1


def assert_no_secret(spans: Iterable[ReadableSpan], secrets: Iterable[str]) -> None:
    for span in spans:
        shown = repr(dict(span.attributes or {})) + repr([e.attributes for e in span.events])
        for secret in secrets:
            assert secret not in shown, (span.name, shown)


async def test_a_private_and_a_group_message_are_each_one_trace_across_route_and_server() -> None:
    exporter = InMemorySpanExporter()
    async with traced_cluster(exporter) as c:
        alice = await c.client("alice", PASSWORD)
        bob = await c.client("bob", PASSWORD + "-bob")
        server_id = c.embedded.servers[0].server_id

        await alice.send_private(bob.user_id, TEXT)
        private = await c.next_message(bob)
        assert len(private.trace_id) == 32  # the accept span's trace id
        spans = await trace_of(exporter, private.trace_id, {"cim.accept", "cim.deliver"})
        check_message_trace(spans, "private", server_id)
        ops = [span.attributes["cim.store.op"] for span in spans if span.name == "cim.store"]
        # Its conversation's log (claiming the send) and bob's sequence, in one step.
        assert ops == ["append_pointed"], ops

        await alice.send_group(TEXT + " to all")
        group = await c.next_message(bob)
        assert group.kind == common_pb2.MESSAGE_KIND_GROUP
        assert group.trace_id != private.trace_id
        spans = await trace_of(exporter, group.trace_id, {"cim.accept", "cim.deliver"})
        check_message_trace(spans, "group", server_id)
        ops = [span.attributes["cim.store.op"] for span in spans if span.name == "cim.store"]
        # The client's send has a client_msg_id: claimed first, then appended.
        assert ops == ["claim_sends", "append_inbox"], ops

        tokens = [alice.route.token, bob.route.token]
        assert_no_secret(exporter.get_finished_spans(), [TEXT, PASSWORD, *tokens])
        # Per-app providers: the global one is never set.
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def test_a_batch_is_accepted_in_one_span_its_messages_sharing_the_trace(raw: Any) -> None:
    exporter = InMemorySpanExporter()
    async with traced_cluster(exporter) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        batch = route_internal_pb2.SubmitBatchRequest(
            messages=[
                route_internal_pb2.SubmittedMessage(
                    sender_id=alice.user_id,
                    sender_name="alice",
                    private=common_pb2.SendPrivateRequest(receiver_id=bob.user_id, text=text),
                )
                for text in ("one", "two")
            ]
        )
        reply = await raw.submit(c, batch, raw.secret(c))
        assert all(result.WhichOneof("outcome") == "ok" for result in reply.results), reply
        first, second = await c.next_message(bob), await c.next_message(bob)
        assert first.trace_id == second.trace_id
        spans = await trace_of(exporter, first.trace_id, {"cim.accept", "cim.deliver"})
        accept = one(spans, "cim.accept")
        assert accept.attributes is not None and accept.attributes["cim.batch.size"] == 2
        push, deliver = one(spans, "cim.push"), one(spans, "cim.deliver")
        assert push.attributes is not None and push.attributes["cim.batch.size"] == 2
        assert deliver.attributes is not None and deliver.attributes["cim.delivered"] == 2
        assert parent_id(deliver) == span_id(push)


async def test_tracing_off_makes_no_tracer() -> None:
    async with cluster(servers=1) as c:
        alice = await c.client("alice")
        bob = await c.client("bob")
        await alice.send_private(bob.user_id, "hi")
        message = await c.next_message(bob)
        assert len(message.trace_id) == 16  # a trace id of its own, as before
        route = c.embedded.route
        assert route.tracer is None
        assert all(server.tracer is None for server in c.embedded.servers)
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_tracing_off_never_imports_opentelemetry() -> None:
    """A whole exchange in a fresh interpreter: no OpenTelemetry module loads."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from cim.testing import cluster

        async def main():
            async with cluster(servers=1) as c:
                alice = await c.client("alice")
                bob = await c.client("bob")
                await alice.send_private(bob.user_id, "hi")
                await alice.send_group("hi all")
                assert (await c.next_message(bob)).text == "hi"

        asyncio.run(main())
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []", done.stdout
