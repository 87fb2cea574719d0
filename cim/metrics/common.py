"""What every app's metrics share: the registry, RPC and registry counters,
and the helpers that read counts kept by code that knows nothing of metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cim import __version__

# A counter's creation time is one more series per counter, of no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Batch sizes: 1 to 1,024 in powers of two (a batch holds at most ~1,000).
BATCH_BUCKETS = tuple(float(2**n) for n in range(11))
# Latencies from 250 µs to 10 s. Few buckets: a scrape's cost (text written
# per bucket, in Python, holding the GIL) grows with them.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0)


def reason_label(reason: str) -> str:
    """A fixed reason text ("slow consumer") as a label value ("slow_consumer")."""
    return reason.strip().lower().replace(" ", "_").replace("-", "_") or "unknown"


class CountsCollector(Collector):
    """Counters read at scrape time from counts that other code keeps as plain
    integers (``cim.core`` stays free of metrics): ``name -> (help, read)``,
    where ``read`` returns ``{label value: count}`` for the one label ``label``
    (or ``{"": count}`` for a counter without labels)."""

    def __init__(self) -> None:
        self._families: list[tuple[str, str, str, Callable[[], dict[str, int]]]] = []

    def add(
        self, name: str, documentation: str, label: str, read: Callable[[], dict[str, int]]
    ) -> None:
        self._families.append((name, documentation, label, read))

    def collect(self) -> Iterable[Metric]:
        for name, documentation, label, read in self._families:
            family = CounterMetricFamily(name, documentation, labels=[label] if label else [])
            for value, count in read().items():
                family.add_metric([value] if label else [], count)
            yield family


class AppMetrics:
    """The registry of one app and the metrics both kinds of app have."""

    def __init__(self, kind: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        Gauge(
            "cim_build_info",
            "Constant 1, labelled with the cim version and the kind of process.",
            ["version", "kind"],
            registry=self.registry,
        ).labels(version=__version__, kind=kind).set(1)
        self.rpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on this process's gRPC server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=self.registry,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on this process's gRPC server, by status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.counts = CountsCollector()
        self.registry.register(self.counts)

    def count_registry_errors(self, read: Callable[[], int]) -> None:
        """``read``: the registry's count of failed operations (``Registry.errors``)."""
        self.counts.add(
            "cim_registry_errors",
            "Failed operations on the member registry (ZooKeeper): lost connections, "
            "registrations, updates, watches.",
            "",
            lambda: {"": read()},
        )
