"""Latency percentiles, computed one way for cim's figures and the ceilings'.

Definition: **nearest rank**. The p-th percentile of n samples is the sample
of rank ``ceil(p / 100 * n)`` (1-based) in ascending order: the smallest
observed value that at least p % of the samples do not exceed. It never
interpolates, so a p99 is a latency that really happened, and it is what the
usual latency tools report (HdrHistogram's ``getValueAtPercentile``, wrk).
``statistics.quantiles(method="inclusive")`` interpolates between the two
neighbouring samples instead; with thousands of samples the two differ by less
than one rank, but the harness needs one definition, applied alike to cim and
to the bare-gRPC ceilings it is divided by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from cim.bench.records import Latency

# Reported percentiles (and "max", the 100th).
PERCENTILES = (50, 90, 99)


def nearest_rank(ordered: Sequence[float], percent: float) -> float:
    """The ``percent``-th percentile (0 < percent <= 100) of ascending ``ordered``."""
    if not ordered:
        raise ValueError("no samples")
    if not 0 < percent <= 100:
        raise ValueError("percent must be in (0, 100]")
    # Exact decimal arithmetic: 0.99 * 300 is 296.99999999999994 in floats.
    rank = math.ceil(Fraction(str(percent)) / 100 * len(ordered))
    return ordered[max(1, rank) - 1]


def percentiles_ms(samples: Sequence[float], unit: float = 1.0) -> Latency:
    """p50/p90/p99/max in milliseconds, rounded to the microsecond, of
    latencies in ``unit`` seconds (1e-9 for ``perf_counter_ns`` samples);
    zeros without samples."""
    if not samples:
        return Latency(0.0, 0.0, 0.0, 0.0)
    ordered = sorted(samples)
    to_ms = unit * 1000

    def ms(value: float) -> float:
        return round(value * to_ms, 3)

    p50, p90, p99 = (ms(nearest_rank(ordered, p)) for p in PERCENTILES)
    return Latency(p50, p90, p99, ms(ordered[-1]))
