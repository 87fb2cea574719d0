"""Reading a metrics endpoint: what ``cim status`` and the tests do."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    """One scrape: every sample's value by name and labels."""

    values: Mapping[tuple[str, frozenset[tuple[str, str]]], float]

    def get(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``
        (0 when there is none): ``get("cim_logins_total", result="ok")``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.values.items()
            if sample == name and wanted <= sample_labels
        )


def parse(text: str) -> Samples:
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Samples(values)


def scrape(address: str, timeout: float = 3.0) -> Samples:
    """GET http://address/metrics (blocking: call it in a thread from a loop).
    OSError when nothing answers there."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        return parse(response.read().decode())
