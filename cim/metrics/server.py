"""What a chat server counts."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from cim.errors import CimError
from cim.metrics.common import BATCH_BUCKETS, LATENCY_BUCKETS, AppMetrics, reason_label
from cim.metrics.route import result_label

__all__ = ["ServerMetrics"]


class ServerMetrics(AppMetrics):
    def __init__(self) -> None:
        super().__init__("server")
        registry = self.registry
        self.streams = Gauge(
            "cim_streams_open",
            "Chat.Connect streams open on this server, logged in or not yet.",
            registry=registry,
        )
        self._users = Gauge(
            "cim_users_connected",
            "Users whose login on this server is confirmed (one stream each).",
            registry=registry,
        )
        self.stream_logins = Counter(
            "cim_stream_logins_total",
            "Logins on Chat.Connect streams, by result: ok or the status of a refusal.",
            ["result"],
            registry=registry,
        )
        self._closes = Counter(
            "cim_stream_closes_total",
            "Streams ended, by reason (slow_consumer: the client read too slowly; "
            "idle_timeout; kicked; replaced; disconnected...).",
            ["reason"],
            registry=registry,
        )
        delivered = Counter(
            "cim_messages_delivered_total",
            "Live messages queued on a client's stream, by kind.",
            ["kind"],
            registry=registry,
        )
        self.delivered = {
            kind: delivered.labels(kind=name)
            for kind, name in ((0, "unspecified"), (1, "private"), (2, "group"), (3, "system"))
        }
        self._delivered = delivered
        self.delivery_seconds = Histogram(
            "cim_delivery_latency_seconds",
            "From the route's acceptance of a message to its push on the receiver's "
            "stream (clocks of route and chat server hosts must agree).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.deliver_batch = Histogram(
            "cim_deliver_batch_messages",
            "Message copies per push received from a route.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.replay_pages = Counter(
            "cim_replay_pages_total",
            "Inbox pages replayed to logging-in clients.",
            registry=registry,
        )
        self.replayed = Counter(
            "cim_messages_replayed_total",
            "Stored messages replayed to logging-in clients.",
            registry=registry,
        )
        typing_pushes = Counter(
            "cim_typing_pushes_total",
            "Typing notes from routes for users connected here, by result: pushed to "
            "their stream, or dropped (gone, not logged in yet, or behind on its frames).",
            ["result"],
            registry=registry,
        )
        self.typing_pushed = typing_pushes.labels(result="pushed")
        self.typing_dropped = typing_pushes.labels(result="dropped")

    def count_users(self, read: Callable[[], int]) -> None:
        self._users.set_function(read)

    def closed(self, reason: str) -> None:
        self._closes.labels(reason=reason_label(reason)).inc()

    def delivered_kind(self, kind: int) -> Counter:
        counter = self.delivered.get(kind)
        if counter is None:
            counter = self.delivered[kind] = self._delivered.labels(kind="other")
        return counter

    def login(self, error: CimError | None) -> None:
        self.stream_logins.labels(result=result_label(error)).inc()

    def count_typing(self, read: Callable[[], dict[str, int]]) -> None:
        """``read``: the typing gate's counts (``TypingGate.counts``)."""
        self.counts.add(
            "cim_typing_notes",
            "Typing notes clients sent on their streams here, by outcome: forwarded to a "
            "route, or why dropped (throttled: within 3 s of the last one; flood: over 10 "
            "a second; invalid; not_member; refused_by_route; route_failed).",
            "outcome",
            read,
        )

    def count_rate_limits(self, read: Callable[[], dict[str, int]]) -> None:
        self.counts.add(
            "cim_rate_limit_refusals",
            "Sends refused by a rate limit, by limit.",
            "limit",
            read,
        )
