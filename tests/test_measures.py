"""Every measure against an independent scipy/numpy computation on the same bins."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from sidecar import measures
from sidecar.measures import (
    GTest,
    chi2_sf,
    g_test,
    js_distance,
    ks_estimate,
    linf,
    psi,
    psi_null_expectation,
    wasserstein_estimate,
)

FloatArray = npt.NDArray[np.float64]
Measure = Callable[[Any, Any], float]

PAIRS = [
    ([10, 20, 30, 40], [10, 20, 30, 40]),
    ([10, 20, 30, 40], [40, 30, 20, 10]),
    ([0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]),
    ([5, 0, 5, 90], [1, 1, 1, 97]),  # empty reference bin
    ([5, 3, 2, 90], [0, 0, 50, 50]),  # empty current bins
    ([0, 7, 0, 3], [4, 0, 6, 0]),  # disjoint supports
    ([1, 99_999, 0], [2, 99_998, 0]),  # smallest fraction below 1e-4, a bin empty in both
    ([1e6, 1e6 + 1, 1e6 - 1], [1e6 + 1, 1e6, 1e6 - 1]),  # nearly identical
    ([3], [7]),
]


def evidently_psi(reference: list[float], current: list[float]) -> float:
    """evidently's psi stat test after binning (get_binned_data + sub_psi)."""
    r = np.array(reference, dtype=float) / np.sum(reference)
    c = np.array(current, dtype=float) / np.sum(current)
    for p in (r, c):
        smallest = min(p[p != 0])
        np.place(p, p == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001)
    return float(np.sum((r - c) * np.log(r / c)))


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_psi_matches_the_evidently_formula(reference: list[float], current: list[float]) -> None:
    assert psi(reference, current) == pytest.approx(evidently_psi(reference, current), abs=1e-9)


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_js_distance_matches_scipy(reference: list[float], current: list[float]) -> None:
    expected = jensenshannon(reference, current, base=2)
    assert js_distance(reference, current) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("reference", "current"), PAIRS)
def test_linf_matches_numpy(reference: list[float], current: list[float]) -> None:
    r = np.divide(reference, np.sum(reference))
    c = np.divide(current, np.sum(current))
    assert linf(reference, current) == pytest.approx(np.abs(r - c).max(), abs=1e-12)


@pytest.mark.parametrize("measure", [psi, js_distance, linf])
def test_identical_distributions_score_zero_whatever_the_totals(measure: Measure) -> None:
    counts = np.array([120, 0, 30, 850])
    assert measure(counts, counts * 7) == pytest.approx(0.0, abs=1e-12)
    assert measure(counts, counts / counts.sum()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("measure", "floor"), [(psi, 0.25), (js_distance, 0.3), (linf, 0.15)])
def test_a_shifted_distribution_scores_high(measure: Measure, floor: float) -> None:
    reference = [10, 20, 40, 20, 10]
    shifted = [0, 10, 20, 40, 30]
    assert measure(reference, shifted) > floor


def test_psi_stays_finite_with_bins_empty_on_either_side() -> None:
    value = psi([0, 0, 50, 50], [50, 50, 0, 0])
    assert np.isfinite(value)
    assert value > 10


def test_js_distance_of_disjoint_distributions_is_one() -> None:
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0, abs=1e-12)


BAD_PAIRS = [
    ([1, 2, 3], [1, 2], "length mismatch"),
    ([1, -2, 3], [1, 2, 3], "reference contains negative values"),
    ([1, 2, 3], [1, 2, -3], "current contains negative values"),
    ([], [], "reference is empty"),
    ([0, 0, 0], [1, 2, 3], "reference sums to zero"),
    ([1, 2, 3], [0, 0, 0], "current sums to zero"),
    ([1, float("nan"), 3], [1, 2, 3], "nan or infinite"),
    ([[1, 2], [3, 4]], [[1, 2], [3, 4]], "1-D vector"),
]


@pytest.mark.parametrize("measure", [psi, js_distance, linf])
@pytest.mark.parametrize(("reference", "current", "problem"), BAD_PAIRS)
def test_bad_counts_raise_value_error_naming_the_problem(
    measure: Measure, reference: Any, current: Any, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        measure(reference, current)


@pytest.mark.parametrize(
    ("x", "df"),
    [
        (1e-8, 1),
        (0.5, 1),
        (3.841458820694124, 1),
        (50.0, 1),
        (700.0, 1),  # ~1e-154
        (1400.0, 1),  # ~1e-306, near the underflow
        (5.991464547107979, 2),
        (1.0, 30),
        (30.0, 30),
        (200.0, 30),
        (1e-3, 99),
        (98.0, 99),
        (100.0, 99),
        (130.0, 99),
        (1000.0, 10),
        (450.0, 499),
        (520.0, 499),
        (800.0, 1000),
        (999.0, 1000),
        (1000.0, 1000),
        (1001.0, 1000),
        (1200.0, 1000),
        (3000.0, 1000),  # ~1e-200
        (1e5, 1000),  # underflows to 0 in both
    ],
)
def test_chi2_sf_matches_scipy(x: float, df: int) -> None:
    assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-10, abs=1e-300)


def test_chi2_sf_matches_scipy_across_a_grid_of_df_and_x() -> None:
    for df in [*range(1, 41), 64, 128, 255, 256, 511, 1000]:
        for x in [*np.geomspace(1e-6, 1e5, 60), *(df + np.linspace(-4, 12, 40) * np.sqrt(2 * df))]:
            if x > 0:
                expected = stats.chi2.sf(x, df)
                assert chi2_sf(float(x), df) == pytest.approx(expected, rel=1e-10, abs=1e-300)


@pytest.mark.parametrize(("x", "expected"), [(0.0, 1.0), (-3.0, 1.0), (float("inf"), 0.0)])
def test_chi2_sf_at_the_ends_of_its_range(x: float, expected: float) -> None:
    assert chi2_sf(x, 3) == expected


@pytest.mark.parametrize("df", [0, -1, 2.5, True])
def test_chi2_sf_rejects_degrees_of_freedom_that_are_not_positive_integers(df: Any) -> None:
    with pytest.raises(ValueError, match="df must be a positive integer"):
        chi2_sf(1.0, df)


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        ([100, 200, 300], [10, 20, 30]),
        ([100, 200, 300], [30, 20, 10]),
        ([1234.5, 678.25, 90.125, 0.5], [12, 7, 1, 0]),  # expected counts, not integers
        ([5000, 3000, 2000], [0, 40, 60]),
        ([50, 0, 50, 30], [10, 10, 0, 5]),
        (np.arange(1, 51) * 100.0, np.arange(50, 0, -1)),  # 50 bins, strong drift
        ([1e6, 1e6 + 3, 1e6 - 3], [1e6 - 3, 1e6 + 3, 1e6]),
    ],
)
def test_g_test_matches_scipy_chi2_contingency(reference: Any, current: Any) -> None:
    table = np.array([reference, current], dtype=float)
    expected = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")
    result = g_test(reference, current)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-9, abs=1e-9)
    assert result.dof == expected.dof
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12)


def test_g_test_drops_bins_empty_in_both_rows() -> None:
    with_empty = g_test([100, 0, 200, 0, 300], [10, 0, 30, 0, 20])
    without = stats.chi2_contingency(
        [[100, 200, 300], [10, 30, 20]], correction=False, lambda_="log-likelihood"
    )
    assert with_empty.dof == 2
    assert with_empty.statistic == pytest.approx(without.statistic, rel=1e-12)
    assert with_empty.p_value == pytest.approx(without.pvalue, rel=1e-9)


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        ([0, 100, 0], [0, 7, 0]),  # one bin left
        ([10, 20, 30], [0, 0, 0]),  # empty window
        ([0, 0, 0], [10, 20, 30]),  # empty reference
    ],
)
def test_g_test_has_nothing_to_test_without_two_bins_and_two_rows(
    reference: list[float], current: list[float]
) -> None:
    assert g_test(reference, current) == GTest(statistic=0.0, dof=0, p_value=1.0)


def test_g_test_separates_same_distribution_from_a_shift() -> None:
    reference = np.array([0.1, 0.2, 0.4, 0.2, 0.1]) * 100_000
    assert g_test(reference, [100, 200, 400, 200, 100]).p_value == pytest.approx(1.0)
    assert g_test(reference, [0, 100, 200, 400, 300]).p_value < 1e-50


@pytest.mark.parametrize(
    ("reference", "current", "problem"),
    [
        ([1, 2], [1, 2, 3], "length mismatch"),
        ([1, -2], [1, 2], "reference_counts contains negative values"),
        ([1, 2], [float("inf"), 2], "current_counts contains nan or infinite"),
    ],
)
def test_g_test_rejects_bad_counts(reference: Any, current: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        g_test(reference, current)


def test_psi_null_expectation_is_the_chi2_mean_over_the_effective_size() -> None:
    assert psi_null_expectation(1000, 250, 11) == pytest.approx(10 * (1 / 1000 + 1 / 250))


def test_psi_null_expectation_predicts_the_mean_psi_of_undrifted_samples() -> None:
    rng = np.random.default_rng(0)
    p = np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.15, 0.1, 0.05])
    values = [psi(rng.multinomial(20_000, p), rng.multinomial(5_000, p)) for _ in range(400)]
    # Monte Carlo standard error of the mean is ~3.5% here.
    assert np.mean(values) == pytest.approx(psi_null_expectation(20_000, 5_000, len(p)), rel=0.12)


@pytest.mark.parametrize(
    ("n_reference", "n_current", "bins", "problem"),
    [(0, 10, 3, "n_reference"), (10, -1, 3, "n_current"), (10, 10, 0, "bins")],
)
def test_psi_null_expectation_rejects_bad_sizes(
    n_reference: float, n_current: float, bins: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        psi_null_expectation(n_reference, n_current, bins)


# Quantile-grid estimators of KS and W1.

DRAWS: dict[str, Callable[[np.random.Generator, int], FloatArray]] = {
    "normal": lambda rng, n: rng.normal(0.0, 1.0, n),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.0, n),
    "uniform": lambda rng, n: rng.uniform(0.0, 1.0, n),
}


@functools.cache
def training(name: str) -> tuple[FloatArray, FloatArray, FloatArray]:
    """200k training values, their 101-point percentile grid and the CDF on it."""
    values = DRAWS[name](np.random.default_rng(1), 200_000)
    grid = np.unique(np.quantile(values, np.linspace(0, 1, 101)))
    cdf = np.searchsorted(np.sort(values), grid, side="right") / len(values)
    return values, grid, cdf


def serving(name: str, change: str, seed: int) -> FloatArray:
    train = training(name)[0]
    mean, std = float(train.mean()), float(train.std())
    x = DRAWS[name](np.random.default_rng(seed), 5_000)
    if change == "shift":
        return x + 0.5 * std
    if change == "scale":
        return (x - mean) * 2.0 + mean
    if change == "narrow":
        return (x - mean) * 0.5 + mean
    if change == "outside":  # a good part beyond the training max
        return x + 2.0 * std
    return x


def window(grid: FloatArray, x: FloatArray) -> tuple[FloatArray, float, float]:
    """What the engine accumulates for a numeric feature: bucket counts and tail sums."""
    counts = np.bincount(np.searchsorted(grid, x, side="left"), minlength=len(grid) + 1)
    below = float((grid[0] - x[x < grid[0]]).sum())
    above = float((x[x > grid[-1]] - grid[-1]).sum())
    return counts.astype(np.float64), below, above


# W1 tolerance in training stds: ~1.5x the worst error over 20 seeds of 5,000
# serving values. The error lives in the wide outermost bins, so long tails
# (lognormal) and serving mass moving into them cost the most.
ESTIMATOR_CASES = [
    ("normal", "same", 0.01),
    ("normal", "shift", 0.04),
    ("normal", "narrow", 0.03),
    ("normal", "scale", 0.15),
    ("normal", "outside", 0.35),
    ("lognormal", "same", 0.15),
    ("lognormal", "shift", 0.25),
    ("lognormal", "narrow", 0.5),
    ("lognormal", "scale", 1.5),
    ("lognormal", "outside", 2.0),
    ("uniform", "same", 0.001),
    ("uniform", "shift", 0.001),
    ("uniform", "narrow", 0.001),
    ("uniform", "scale", 0.001),
    ("uniform", "outside", 0.001),
]


@pytest.mark.parametrize(("name", "change", "w1_tolerance"), ESTIMATOR_CASES)
def test_wasserstein_estimate_is_close_to_scipy_on_samples(
    name: str, change: str, w1_tolerance: float
) -> None:
    train, grid, cdf = training(name)
    x = serving(name, change, seed=2)
    counts, below, above = window(grid, x)
    estimate = wasserstein_estimate(grid, cdf, counts, below, above, discrete=False)
    exact = stats.wasserstein_distance(train, x)
    assert abs(estimate - exact) / train.std() < w1_tolerance
    # And never outside the bound the monotone CDFs allow in each bin.
    serving_mass = counts[1:-1] / counts.sum()
    bound = float(np.sum(np.diff(grid) * (np.diff(cdf) + serving_mass)))
    assert abs(estimate - exact) <= bound + 1e-9


@pytest.mark.parametrize(("name", "change"), [case[:2] for case in ESTIMATOR_CASES])
def test_ks_estimate_is_a_lower_bound_within_one_grid_step_of_scipy(name: str, change: str) -> None:
    train, grid, cdf = training(name)
    x = serving(name, change, seed=3)
    counts, _, _ = window(grid, x)
    estimate = ks_estimate(grid, cdf, counts)
    exact = stats.ks_2samp(train, x).statistic
    largest_step = np.diff(cdf, prepend=0.0).max()
    assert largest_step == pytest.approx(0.01, abs=1e-4)
    assert exact - 1e-12 <= estimate + largest_step
    assert estimate <= exact + 1e-12


@pytest.mark.parametrize(
    "serving_weights",
    [
        [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # same support
        [0, 0, 5, 1, 1, 1, 1, 1, 3, 2, 1],  # values above the training max
        [4, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # values below the training min
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # a -2 sentinel everywhere
    ],
)
def test_estimators_are_exact_for_a_discrete_feature(serving_weights: list[int]) -> None:
    rng = np.random.default_rng(4)
    train = rng.choice(6, size=20_000, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05]).astype(float)
    x = rng.choice(np.arange(-2, 9), size=3_000, p=np.divide(serving_weights, sum(serving_weights)))
    x = x.astype(float)
    grid = np.unique(train)
    cdf = np.searchsorted(np.sort(train), grid, side="right") / len(train)
    counts, below, above = window(grid, x)

    w1 = wasserstein_estimate(grid, cdf, counts, below, above, discrete=True)
    assert w1 == pytest.approx(stats.wasserstein_distance(train, x), abs=1e-9)
    ks = ks_estimate(grid, cdf, counts, below_count=int((x < grid[0]).sum()))
    assert ks == pytest.approx(stats.ks_2samp(train, x, method="asymp").statistic, abs=1e-9)


def test_ks_estimate_misses_the_mass_at_the_minimum_without_below_count() -> None:
    # Training: 90% zeros. Serving: every value a -1 sentinel, all in bucket 0.
    grid, cdf, counts = np.array([0.0, 1.0]), np.array([0.9, 1.0]), np.array([50.0, 0.0, 0.0])
    assert ks_estimate(grid, cdf, counts) == pytest.approx(0.1)
    assert ks_estimate(grid, cdf, counts, below_count=50) == 1.0


def test_estimators_of_a_constant_training_feature_use_only_the_tails() -> None:
    grid, cdf = np.array([3.0]), np.array([1.0])
    x = np.array([1.0, 3.0, 3.0, 6.0])
    counts, below, above = window(grid, x)
    assert wasserstein_estimate(grid, cdf, counts, below, above, discrete=False) == pytest.approx(
        stats.wasserstein_distance([3.0], x)
    )
    assert ks_estimate(grid, cdf, counts, below_count=1) == pytest.approx(
        stats.ks_2samp([3.0] * 10, x, method="asymp").statistic
    )


def test_wasserstein_estimate_integrates_a_sign_change_as_two_triangles() -> None:
    # F_serving is 0.5 at 0 and 0.8 at 1, so d runs from +0.2 to -0.2: two
    # triangles of base 0.5 and height 0.2.
    grid, cdf = np.array([0.0, 1.0]), np.array([0.3, 1.0])
    counts = np.array([5.0, 3.0, 2.0])
    estimate = wasserstein_estimate(grid, cdf, counts, 0.0, 0.0, discrete=False)
    assert estimate == pytest.approx(2 * 0.5 * 0.5 * 0.2, abs=1e-12)
    # Read as steps, d stays at +0.2 across the whole interval.
    assert wasserstein_estimate(grid, cdf, counts, 0.0, 0.0, discrete=True) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("grid", "cdf", "counts", "problem"),
    [
        ([0.0, 1.0], [0.5, 1.0], [1, 2], "grid_counts needs 3 buckets"),
        ([0.0, 1.0], [0.5], [1, 2, 3], "grid has 2 points but grid_cdf has 1"),
        ([1.0, 0.0], [0.5, 1.0], [1, 2, 3], "strictly increasing"),
        ([], [], [0], "non-empty"),
        ([0.0, 1.0], [0.5, 1.5], [1, 2, 3], r"grid_cdf values must lie in \[0, 1\]"),
        ([0.0, 1.0], [0.5, 1.0], [0, 0, 0], "grid_counts sums to zero"),
        ([0.0, 1.0], [0.5, 1.0], [1, -2, 3], "grid_counts contains negative values"),
    ],
)
def test_estimators_reject_inconsistent_grids(
    grid: list[float], cdf: list[float], counts: list[float], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        ks_estimate(grid, cdf, counts)
    with pytest.raises(ValueError, match=problem):
        wasserstein_estimate(grid, cdf, counts, 0.0, 0.0, discrete=False)


@pytest.mark.parametrize(("below_sum", "above_sum"), [(-1.0, 0.0), (0.0, float("nan"))])
def test_wasserstein_estimate_rejects_bad_tail_sums(below_sum: float, above_sum: float) -> None:
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        wasserstein_estimate([0.0, 1.0], [0.5, 1.0], [1, 2, 3], below_sum, above_sum, discrete=True)


def test_ks_estimate_rejects_a_below_count_larger_than_the_window() -> None:
    with pytest.raises(ValueError, match="below_count must be between 0 and the serving count"):
        ks_estimate([0.0, 1.0], [0.5, 1.0], [1, 2, 3], below_count=7)


def test_public_names_are_the_documented_ones() -> None:
    assert sorted(measures.__all__) == [
        "GTest",
        "chi2_sf",
        "g_test",
        "js_distance",
        "ks_estimate",
        "linf",
        "psi",
        "psi_null_expectation",
        "wasserstein_estimate",
    ]
