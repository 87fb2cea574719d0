"""What a route counts."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Histogram

from cim.errors import CimError
from cim.metrics.common import BATCH_BUCKETS, LATENCY_BUCKETS, AppMetrics

# Label values of a message's kind.
PRIVATE = "private"
GROUP = "group"


def result_label(error: CimError | None) -> str:
    """``ok``, or the status a refusal answers with (``permission_denied``...):
    a bounded set, one per gRPC status code."""
    return "ok" if error is None else error.code.name.lower()


class RouteMetrics(AppMetrics):
    def __init__(self) -> None:
        super().__init__("route")
        registry = self.registry
        self.registrations = Counter(
            "cim_registrations_total",
            "Register calls, by result: created, existing (same name and password), "
            "or the status of a refusal.",
            ["result"],
            registry=registry,
        )
        self.logins = Counter(
            "cim_logins_total",
            "Login calls, by result: ok or the status of a refusal "
            "(permission_denied: bad credentials).",
            ["result"],
            registry=registry,
        )
        accepted = Counter(
            "cim_messages_accepted_total",
            "Messages the route accepted (stored where they are stored, answered accepted).",
            ["kind"],
            registry=registry,
        )
        refused = Counter(
            "cim_messages_refused_total",
            "Sends the route refused, by kind and status.",
            ["kind", "result"],
            registry=registry,
        )
        pushed = Counter(
            "cim_messages_pushed_total",
            "Message copies a chat server took for a receiver's live stream.",
            ["kind"],
            registry=registry,
        )
        stored_offline = Counter(
            "cim_messages_stored_offline_total",
            "Message copies stored for a receiver who was not reached live "
            "(offline, or the push failed): replayed at the next login.",
            ["kind"],
            registry=registry,
        )
        self.accepted_private = accepted.labels(kind=PRIVATE)
        self.accepted_group = accepted.labels(kind=GROUP)
        self._refused = refused
        self.pushed_private = pushed.labels(kind=PRIVATE)
        self.pushed_group = pushed.labels(kind=GROUP)
        self.offline_private = stored_offline.labels(kind=PRIVATE)
        self.offline_group = stored_offline.labels(kind=GROUP)
        self.submit_batch = Histogram(
            "cim_submit_batch_messages",
            "Messages per batch on the chat servers' submit streams.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.push_batch = Histogram(
            "cim_push_batch_messages",
            "Message copies per push on a deliver stream to one chat server.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.push_failures = Counter(
            "cim_push_failures_total",
            "Pushes to a chat server that failed (it then counts as suspect).",
            registry=registry,
        )
        self._read_marks = Counter(
            "cim_read_marks_total",
            "Read marks (Route.MarkRead and clients' read frames), by result: ok, or "
            "why one was refused (permission_denied: not a member).",
            ["result"],
            registry=registry,
        )
        self.replay_pages = Counter(
            "cim_replay_pages_total",
            "Inbox pages read for replays (chat servers) and FetchOffline.",
            registry=registry,
        )
        self.store_seconds = Histogram(
            "cim_store_operation_seconds",
            "Latency of store operations (one call, often one pipelined round trip).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "cim_store_errors_total",
            "Store operations that failed (store unreachable or answering errors).",
            ["operation"],
            registry=registry,
        )
        self._typing_notes = Counter(
            "cim_typing_notes_total",
            "Typing notes from chat servers, by outcome: forwarded (to at least one "
            "participant online), nobody_online, too_many_members (a group over "
            "--typing-max-members), or refused: invalid, not_member, deleted_group.",
            ["outcome"],
            registry=registry,
        )
        self._typing_outcomes: dict[str, Counter] = {}
        self.typing_receivers = Counter(
            "cim_typing_receivers_total",
            "Typing notes handed to chat servers for a receiver online there.",
            registry=registry,
        )

    def typing_note(self, outcome: str) -> None:
        """One typing note more with this outcome (a fixed set: cim.route.typing_notes)."""
        counter = self._typing_outcomes.get(outcome)
        if counter is None:
            counter = self._typing_outcomes[outcome] = self._typing_notes.labels(outcome=outcome)
        counter.inc()

    def refused(self, kind: str, error: CimError) -> None:
        self._refused.labels(kind=kind, result=result_label(error)).inc()

    def read_marks(self, error: CimError | None) -> None:
        self._read_marks.labels(result=result_label(error)).inc()

    def count_rate_limits(self, read: Callable[[], dict[str, int]]) -> None:
        """``read``: refusals so far by limit (``{"messages": 3, "logins": 0}``)."""
        self.counts.add(
            "cim_rate_limit_refusals",
            "Calls refused by a rate limit, by limit.",
            "limit",
            read,
        )
