"""``cim.tracing`` without sockets: how a DeliverRequest splits into parcels,
and what a chat server makes of the trace context a route sent."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cim.config import TracingConfig
from cim.proto.internal.v1 import chat_internal_pb2
from cim.tracing import MessageTracer, parcels

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def deliveries(*traceparents: str) -> list[chat_internal_pb2.Delivery]:
    return [
        chat_internal_pb2.Delivery(receiver_id=index + 1, traceparent=traceparent)
        for index, traceparent in enumerate(traceparents)
    ]


def test_a_parcel_starts_at_every_delivery_with_a_context() -> None:
    assert list(parcels(deliveries(PARENT, "", "", PARENT, ""))) == [(0, 3), (3, 5)]
    assert list(parcels(deliveries("", "", PARENT))) == [(0, 2), (2, 3)]
    assert list(parcels(deliveries("", ""))) == [(0, 2)]
    assert list(parcels([])) == []


@pytest.mark.parametrize(
    ("traceparent", "parented"),
    [(PARENT, True), ("", False), ("00-garbage", False), ("x" * 64, False)],
    ids=["valid", "none", "garbage", "long"],
)
async def test_the_deliver_span_is_a_child_of_a_valid_context_only(
    traceparent: str, parented: bool
) -> None:
    exporter = InMemorySpanExporter()
    tracer = MessageTracer(TracingConfig(span_exporter=exporter), "cim-server", "server-9")

    async def hand_over(batch: Sequence[chat_internal_pb2.Delivery]) -> list[bool]:
        return [True] * len(batch)

    flags = await tracer.deliver(deliveries(traceparent, ""), hand_over)
    assert flags == [True, True]
    (span,) = exporter.get_finished_spans()
    assert span.name == "cim.deliver" and span.attributes is not None
    assert (span.attributes["cim.batch.size"], span.attributes["cim.delivered"]) == (2, 2)
    assert span.resource.attributes["service.instance.id"] == "server-9"
    if parented:
        assert span.parent is not None and span.parent.is_remote
        assert span.context is not None
        assert trace.format_trace_id(span.context.trace_id) == PARENT.split("-")[1]
    else:
        assert span.parent is None
    await tracer.shutdown()


async def test_the_push_context_rides_on_the_first_delivery_of_each_parcel() -> None:
    exporter = InMemorySpanExporter()
    tracer = MessageTracer(TracingConfig(span_exporter=exporter), "cim-route", "route-9")
    first, second = deliveries("", ""), deliveries("")

    async def deliver(
        sent: Sequence[tuple[str, list[chat_internal_pb2.Delivery]]],
    ) -> list[list[bool]]:
        return [[True] * len(parcel) for _, parcel in sent]

    await tracer.push([("a", first), ("b", second)], deliver)
    assert first[0].traceparent and not first[1].traceparent and second[0].traceparent
    spans = exporter.get_finished_spans()
    assert [span.attributes["cim.server.id"] for span in spans if span.attributes] == ["a", "b"]
    span_ids = {trace.format_span_id(span.context.span_id) for span in spans if span.context}
    assert {first[0].traceparent.split("-")[2], second[0].traceparent.split("-")[2]} == span_ids
    await tracer.shutdown()


def test_tracing_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="one of off, console, otlp"):
        TracingConfig(exporter="jaeger")
    with pytest.raises(ValueError, match="needs --tracing otlp"):
        TracingConfig(otlp_endpoint="http://collector:4317")
    assert not TracingConfig().enabled
    assert TracingConfig(exporter="console").enabled
