"""One percentile definition for the whole harness (nearest rank), checked
against hand-computed values and against the definition itself."""

from __future__ import annotations

import math
import random
import statistics
from fractions import Fraction

import pytest

from cim.bench.records import Latency
from cim.bench.stats import nearest_rank, percentiles_ms


def by_definition(samples: list[float], percent: int) -> float:
    """The smallest sample that at least ``percent`` % of the samples do not exceed."""
    n, share = len(samples), Fraction(percent, 100)
    return min(x for x in samples if Fraction(sum(1 for y in samples if y <= x), n) >= share)


def test_one_to_a_hundred_milliseconds() -> None:
    samples = [i / 1000 for i in range(100, 0, -1)]  # 1..100 ms, unordered
    assert percentiles_ms(samples) == Latency(50.0, 90.0, 99.0, 100.0)
    # Nanosecond samples give the same figures.
    ns = [i * 1_000_000 for i in range(1, 101)]
    assert percentiles_ms(ns, unit=1e-9) == percentiles_ms(samples)


def test_ten_samples_by_hand() -> None:
    samples = [float(i) for i in range(1, 11)]  # seconds
    # ranks ceil(0.5*10)=5, ceil(0.9*10)=9, ceil(0.99*10)=10
    assert percentiles_ms(samples) == Latency(5000.0, 9000.0, 10000.0, 10000.0)
    assert percentiles_ms([0.0042]) == Latency(4.2, 4.2, 4.2, 4.2)


def test_no_samples_give_zeros() -> None:
    assert percentiles_ms([]) == Latency(0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        nearest_rank([], 50)
    with pytest.raises(ValueError):
        nearest_rank([1.0], 0)


def test_rounded_to_the_microsecond() -> None:
    assert percentiles_ms([1_234_567], unit=1e-9).p50 == 1.235


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_the_definition(seed: int) -> None:
    rnd = random.Random(seed)
    n = rnd.randint(1, 400)
    # Duplicates included: latencies on a coarse clock repeat.
    samples = [float(rnd.randint(0, 50)) for _ in range(n)]
    ordered = sorted(samples)
    for percent in (1, 50, 90, 99, 100):
        assert nearest_rank(ordered, percent) == by_definition(samples, percent), (n, percent)


def test_an_observed_value_close_to_the_interpolated_one() -> None:
    """statistics' inclusive quantile interpolates between the neighbours; the
    nearest rank is one of the two samples around it."""
    rnd = random.Random(3)
    samples = sorted(rnd.expovariate(500) for _ in range(1000))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    for percent in (50, 90, 99):
        value = nearest_rank(samples, percent)
        assert value in samples
        index = samples.index(value)
        assert samples[index - 1] <= cuts[percent - 1] <= samples[index + 1]
        assert math.isclose(value, cuts[percent - 1], rel_tol=0.05)
