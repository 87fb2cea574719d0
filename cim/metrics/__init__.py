"""Prometheus metrics of cim's processes.

Each app (a route, a chat server) owns one :class:`prometheus_client.CollectorRegistry`
(``cim dev`` and the tests run several apps in one process), counts into it
whether or not anyone scrapes, and serves it over HTTP only when asked
(``--metrics-port``): :mod:`cim.metrics.http`. Names follow Prometheus
conventions (``_total`` counters, units in names, base units); labels take a
bounded set of values, never a user id.

- :mod:`cim.metrics.route`: what a route counts (logins, sends, store, pushes).
- :mod:`cim.metrics.server`: what a chat server counts (streams, deliveries,
  replays, closes).
- :mod:`cim.metrics.rpc`: one gRPC server interceptor counting every RPC by
  method and status, for both.
- :mod:`cim.metrics.store`: store operation latencies and errors, by wrapping
  the store.
"""

from cim.metrics.route import RouteMetrics
from cim.metrics.server import ServerMetrics

__all__ = ["RouteMetrics", "ServerMetrics"]
