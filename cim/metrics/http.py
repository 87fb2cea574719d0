"""Serving metrics over HTTP for Prometheus to scrape (``/metrics``).

One process serves its app's registry. ``cim dev`` runs a route and chat
servers in one process behind one port: :class:`MemberRegistries` merges
their registries, each sample labelled with its ``member`` (the route or
server id), since one scrape target then holds several members.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

__all__ = ["MemberRegistries", "MetricsEndpoint"]


class MemberRegistries(Collector):
    """Several apps' registries as one, each sample labelled ``member``."""

    def __init__(self, registries: Mapping[str, CollectorRegistry]) -> None:
        self._registries = dict(registries)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for member, registry in self._registries.items():
            for family in registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                into.samples.extend(
                    sample._replace(labels={**sample.labels, "member": member})
                    for sample in family.samples
                )
        return merged.values()


class MetricsEndpoint:
    """An HTTP server (a thread) answering ``GET /metrics`` from a registry."""

    def __init__(self, host: str, port: int, registry: Collector) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Binds (port 0 picks a free one) and serves; ValueError when the
        port cannot be bound."""
        try:
            self._server, self._thread = start_http_server(
                self.port, self.host, registry=self._registry
            )
        except OSError as exc:
            raise ValueError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._server.server_port
        log.info("metrics on http://%s/metrics", self.address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
