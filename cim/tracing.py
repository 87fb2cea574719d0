"""OpenTelemetry tracing of the message path: accept, store, push.

Off by default, and then this module is never imported: the apps hold
``None`` instead of a :class:`MessageTracer` (no SDK, no provider, no
interceptor), and the message path pays one ``is None`` check per batch.
Turned on per app (``RouteConfig.tracing``, ``ServerConfig.tracing``; the
``--tracing`` flag), each app gets a TracerProvider of its own, never the
global one (``cim dev`` and the tests run several apps in one process), with
the resource attributes ``service.name`` (``cim-route`` / ``cim-server``)
and ``service.instance.id`` (the route or chat server id).

The spans of one message (all in one trace across route and chat server):

* ``cim.accept`` (route, SERVER): the route accepting sends, the trace's
  root. One span per batch the route routes together (a unary send is a
  batch of one; a chat server's submitted batch is split into runs of
  private messages and single group messages): the batch's messages share
  it, and its trace id is their ``trace_id``, so log lines join the trace.
  Attributes ``cim.message.kind`` (private, group) and ``cim.batch.size``.
* ``cim.store`` (route, INTERNAL, child of accept): one store round trip on
  the path (``cim.store.op``: append_conversations and append_pointers for
  private sends, append_inbox, claim_sends; ``cim.batch.size``: items in it).
* ``cim.push`` (route, CLIENT, child of accept): one parcel (the batch's
  deliveries for one chat server) from being queued until that server
  answers; the route's link to a server merges parcels into one
  DeliverStream call, so the span includes waiting for a call in flight.
  Attributes ``cim.server.id``, ``cim.batch.size``, ``cim.delivered``.
* ``cim.deliver`` (chat server, SERVER, child of the push, whose context the
  parcel's first ``Delivery`` carries): the chat server handing that
  parcel's messages to their receivers' streams (``cim.batch.size``,
  ``cim.delivered``).

Spans per batch, not per message, keep tracing's cost bounded under load;
never the text, a password or a token as an attribute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Concatenate, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.semconv.attributes.service_attributes import SERVICE_NAME
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import cim
from cim.config import TracingConfig
from cim.proto.internal.v1 import chat_internal_pb2

__all__ = ["ROUTE_SERVICE", "SERVER_SERVICE", "MessageTracer", "parcels"]

ROUTE_SERVICE = "cim-route"
SERVER_SERVICE = "cim-server"
SERVICE_INSTANCE_ID = "service.instance.id"
KIND = "cim.message.kind"
BATCH_SIZE = "cim.batch.size"
DELIVERED = "cim.delivered"
STORE_OP = "cim.store.op"
SERVER_ID = "cim.server.id"

P = ParamSpec("P")
R = TypeVar("R")
Items = TypeVar("Items", bound=Sequence[Any])


def _processor(config: TracingConfig) -> SpanProcessor:
    if config.span_exporter is not None:
        # Given exporters are the tests' in-memory one: spans at once, in order.
        return SimpleSpanProcessor(config.span_exporter)
    if config.exporter == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    # Imported here: the gRPC exporter and its protos load only when used.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))


class MessageTracer:
    """The spans of the message path for one app (see the module docstring)."""

    def __init__(self, config: TracingConfig, service: str, instance_id: str) -> None:
        resource = Resource.create({SERVICE_NAME: service, SERVICE_INSTANCE_ID: instance_id})
        # The sampler comes from OTEL_TRACES_SAMPLER (default: every trace).
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(_processor(config))
        self._tracer = self.provider.get_tracer("cim", cim.__version__)
        self._propagator = TraceContextTextMapPropagator()

    # --- route ------------------------------------------------------------
    def accept(self, kind: str, size: int) -> AbstractContextManager[trace.Span]:
        """The span of a batch being accepted, current within the block."""
        return self._tracer.start_as_current_span(
            "cim.accept",
            kind=trace.SpanKind.SERVER,
            attributes={KIND: kind, BATCH_SIZE: size},
        )

    @staticmethod
    def trace_id(span: trace.Span) -> str:
        """The span's trace id as 32 hex digits: its messages' ``trace_id``."""
        return trace.format_trace_id(span.get_span_context().trace_id)

    def store_call(
        self, op: str, call: Callable[Concatenate[Items, P], Awaitable[R]]
    ) -> Callable[Concatenate[Items, P], Awaitable[R]]:
        """``call`` (a store method taking its items first) in a ``cim.store`` span."""
        tracer = self._tracer

        async def traced(items: Items, /, *args: P.args, **kwargs: P.kwargs) -> R:
            with tracer.start_as_current_span(
                "cim.store",
                kind=trace.SpanKind.INTERNAL,
                attributes={STORE_OP: op, BATCH_SIZE: len(items)},
            ):
                return await call(items, *args, **kwargs)

        return traced

    async def push(
        self,
        parcels: Sequence[tuple[str, list[chat_internal_pb2.Delivery]]],
        deliver: Callable[
            [Sequence[tuple[str, list[chat_internal_pb2.Delivery]]]], Awaitable[list[list[bool]]]
        ],
    ) -> list[list[bool]]:
        """``deliver(parcels)`` with a ``cim.push`` span per parcel, whose
        context goes with the parcel's first delivery to the chat server."""
        spans = []
        for server_id, parcel in parcels:
            span = self._tracer.start_span(
                "cim.push",
                kind=trace.SpanKind.CLIENT,
                attributes={SERVER_ID: server_id, BATCH_SIZE: len(parcel)},
            )
            if parcel:
                carrier: dict[str, str] = {}
                self._propagator.inject(carrier, trace.set_span_in_context(span))
                parcel[0].traceparent = carrier.get("traceparent", "")
                parcel[0].tracestate = carrier.get("tracestate", "")
            spans.append(span)
        try:
            results = await deliver(parcels)
        except BaseException:
            for span in spans:
                span.end()
            raise
        for span, flags in zip(spans, results, strict=True):
            span.set_attribute(DELIVERED, sum(flags))
            span.end()
        return results

    # --- chat server --------------------------------------------------------
    async def deliver(
        self,
        deliveries: Sequence[chat_internal_pb2.Delivery],
        hand_over: Callable[[Sequence[chat_internal_pb2.Delivery]], Awaitable[list[bool]]],
    ) -> list[bool]:
        """``hand_over`` of each parcel in a DeliverRequest (see :func:`parcels`)
        in a ``cim.deliver`` span, child of the push context the parcel carries."""
        delivered: list[bool] = []
        for start, end in parcels(deliveries):
            first = deliveries[start]
            context = None
            if first.traceparent:
                carrier = {"traceparent": first.traceparent}
                if first.tracestate:
                    carrier["tracestate"] = first.tracestate
                context = self._propagator.extract(carrier)
            with self._tracer.start_as_current_span(
                "cim.deliver",
                context=context,
                kind=trace.SpanKind.SERVER,
                attributes={BATCH_SIZE: end - start},
            ) as span:
                flags = await hand_over(deliveries[start:end])
                span.set_attribute(DELIVERED, sum(flags))
            delivered.extend(flags)
        return delivered

    async def shutdown(self) -> None:
        """Exports what is left and stops (in a thread: an exporter may block)."""
        await asyncio.to_thread(self.provider.shutdown)


def parcels(deliveries: Sequence[chat_internal_pb2.Delivery]) -> Iterator[tuple[int, int]]:
    """The (start, end) of each parcel in a DeliverRequest: a new one at
    every delivery that carries a trace context (and at the start)."""
    start = 0
    for index in range(1, len(deliveries)):
        if deliveries[index].traceparent:
            yield start, index
            start = index
    if deliveries:
        yield start, len(deliveries)
