"""bench/serving_load.py's interval for a median of per-round ratios."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from scipy import stats

from tests.bench_modules import bench_modules


@pytest.fixture(scope="module")
def serving_load() -> Iterator[Any]:
    with bench_modules("serving_load") as modules:
        yield modules["serving_load"]


@pytest.mark.parametrize("n", [6, 7, 10, 20, 31, 60])
def test_the_median_interval_is_the_widest_binomial_interval_reaching_95_percent(serving_load, n):
    values = list(np.arange(1.0, n + 1))
    low, high = serving_load.median_interval(values)
    k = int(low)
    assert high == n + 1 - k
    coverage = stats.binom.cdf(n - k, n, 0.5) - stats.binom.cdf(k - 1, n, 0.5)
    narrower = stats.binom.cdf(n - k - 1, n, 0.5) - stats.binom.cdf(k, n, 0.5)
    assert coverage >= 0.95 > narrower


def test_the_median_interval_covers_the_true_median_95_times_in_100(serving_load):
    rng = np.random.default_rng(7)
    trials = 4000
    hits = 0
    for _ in range(trials):
        low, high = serving_load.median_interval(list(rng.lognormal(0.0, 0.5, size=12)))
        hits += low <= 1.0 <= high  # the lognormal's median is exp(0) = 1
    assert 0.95 <= hits / trials <= 0.99  # n = 12: the exact coverage is 96.1 %


def test_too_few_rounds_give_no_interval_and_say_so(serving_load):
    assert all(math.isnan(x) for x in serving_load.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]))
    line = serving_load.goal("x", [0.98] * 5, 0.99, True)
    assert "MISSED (too few rounds" in line


def test_a_goal_is_undecided_when_its_interval_holds_the_target(serving_load):
    met = serving_load.goal("x", [0.991, 0.992, 0.995, 0.996, 0.997, 0.999], 0.99, True)
    straddling = serving_load.goal("x", [0.97, 0.985, 0.987, 0.989, 0.995, 1.01], 0.99, True)
    missed = serving_load.goal("p99", [1.2, 1.3, 1.3, 1.4, 1.5, 1.6], 1.10, False)
    assert met.endswith("met (95 % interval 0.991–0.999)")
    assert "MISSED (undecided: 95 % interval 0.970–1.010 holds 0.99)" in straddling
    assert missed.endswith("MISSED (95 % interval 1.200–1.600)")
