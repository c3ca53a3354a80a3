"""Skew measures on fixed bins: PSI, JS, L-inf, quantile-grid KS/W1, and the G-test verdict.

Pure functions on numpy counts. Every count vector is normalised to fractions
first, so counts and fractions are interchangeable inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
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

FloatArray = npt.NDArray[np.float64]

# chi2_sf: relative precision to stop at, and the floor that keeps Lentz's
# denominators away from zero (Numerical Recipes, gammcf).
_EPS = 1e-15
_TINY = 1e-300


@dataclass(frozen=True)
class GTest:
    """Likelihood-ratio test of "reference and current share one distribution"."""

    statistic: float
    dof: int
    p_value: float


def psi(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Population Stability Index, sum of (r - c) * ln(r / c) over fractions.

    Empty bins are floored exactly as evidently's `psi` stat test does, each
    vector on its own, so values can be compared with evidently reports.
    """
    r, c = _pair(reference, current)
    r, c = _floor_zeros(r), _floor_zeros(c)
    return float(np.sum((r - c) * np.log(r / c)))


def js_distance(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Jensen-Shannon distance in base 2 (the square root of the divergence), in [0, 1].

    Same arithmetic as `scipy.spatial.distance.jensenshannon(r, c, base=2)`.
    """
    r, c = _pair(reference, current)
    m = (r + c) / 2.0
    divergence = (_rel_entr(r, m).sum() + _rel_entr(c, m).sum()) / math.log(2.0)
    # Rounding can leave -1e-17 for identical inputs; sqrt of that is nan.
    return math.sqrt(max(0.0, float(divergence) / 2.0))


def linf(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Largest absolute difference of bin fractions (TFDV's L-infinity distance)."""
    r, c = _pair(reference, current)
    return float(np.max(np.abs(r - c)))


def ks_estimate(
    grid: npt.ArrayLike,
    grid_cdf: npt.ArrayLike,
    grid_counts: npt.ArrayLike,
    *,
    below_count: float = 0,
) -> float:
    """Kolmogorov-Smirnov statistic between serving and training, read on the training grid.

    `grid` holds G increasing training quantiles (min first, max last) and
    `grid_cdf[i]` the training fraction <= grid[i]; `grid_counts` holds G + 1
    serving counts from `np.searchsorted(grid, x)`.

    The CDFs are compared only at grid points, so this is a lower bound of the
    sample KS statistic that misses at most the largest training mass in one
    interval (grid[i-1], grid[i]]: ~1/(G - 1), 0.01 for a 101-point percentile
    grid. Above grid[-1] nothing is missed. Below grid[0] the serving values
    share bucket 0 with those equal to grid[0], so the mass at grid[0] can be
    missed too (large for a discrete feature: a -1 sentinel under a 90%-zeros
    training feature reads 0.1, not 1.0) unless `below_count`, the number of
    serving values < grid[0], is given.
    """
    _, cdf, serving_cdf, n = _grid(grid, grid_cdf, grid_counts)
    if not (math.isfinite(below_count) and 0 <= below_count <= n):
        raise ValueError(
            f"below_count must be between 0 and the serving count {n:g}, got {below_count!r}"
        )
    # Just below grid[0] the training CDF is 0.
    return max(below_count / n, float(np.max(np.abs(serving_cdf - cdf))))


def wasserstein_estimate(
    grid: npt.ArrayLike,
    grid_cdf: npt.ArrayLike,
    grid_counts: npt.ArrayLike,
    below_sum: float,
    above_sum: float,
    *,
    discrete: bool,
) -> float:
    """Wasserstein-1 distance, the integral of |F_serving - F_training|, in raw units.

    Arguments as for `ks_estimate`, plus the serving sums of (grid[0] - x) over
    x below the grid and of (x - grid[-1]) over x above it. Divide by the
    training std for a scale-free value.

    Outside the grid the integral is exact. Inside, `discrete=True` means the
    training values are the grid points, so both CDFs are steps and the result
    is exact when serving values are grid points too. Otherwise both CDFs are
    taken as linear between adjacent grid points, and the error is that of
    this within-bin linearity. It is at most sum(width_i * (training mass +
    serving mass in bin i)), and is concentrated in the wide outermost bins
    of a long-tailed feature. Measured against the exact sample W1 on a
    101-point percentile grid (in training stds): < 0.001 for uniform data;
    for normal data ~0.005 with no drift, ~0.03 for a 0.5 std shift, up to
    ~0.25 for a 2 std shift; for lognormal data up to ~0.1 with no drift and
    ~1 under a 2x scale change. Four more grid points in the tails (0.01%,
    0.1%, 99.9%, 99.99%) cut the normal and lognormal errors ~8x.
    """
    g, cdf, serving_cdf, n = _grid(grid, grid_cdf, grid_counts)
    for name, value in (("below_sum", below_sum), ("above_sum", above_sum)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    tails = (below_sum + above_sum) / n
    if len(g) == 1:
        return tails
    width = np.diff(g)
    d = serving_cdf - cdf
    left, right = np.abs(d[:-1]), np.abs(d[1:])
    if discrete:
        inside = width * left
    else:
        total = left + right
        crossing = d[:-1] * d[1:] < 0
        # Where d changes sign it is two triangles: w * (a^2 + b^2) / (2 * (|a| + |b|)).
        safe = np.where(crossing, total, 1.0)
        inside = np.where(crossing, width * (left**2 + right**2) / (2 * safe), width * total / 2)
    return tails + float(np.sum(inside))


def chi2_sf(x: float, df: int) -> float:
    """Chi-square survival function P(X > x) for `df` degrees of freedom.

    Computed as the regularized upper incomplete gamma Q(df/2, x/2); agrees
    with `scipy.stats.chi2.sf` to ~1e-12 relative for df up to 1000 (the
    exp(-x) x^a / Gamma(a) prefactor loses digits slowly beyond: ~1e-9 at 1e6).
    """
    if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if math.isnan(x):
        raise ValueError("x must be a number, got nan")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    return _gamma_q(df / 2.0, x / 2.0)


def g_test(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike) -> GTest:
    """Two-sample G-test of homogeneity on the 2 x K table of bin counts.

    `reference_counts` may be expected counts (n_train * fraction), not
    integers. Bins empty in both rows are dropped; with fewer than two bins
    left, or an empty row, there is nothing to test and p_value is 1.
    Matches `scipy.stats.chi2_contingency(..., correction=False,
    lambda_="log-likelihood")`.
    """
    r = _counts(reference_counts, "reference_counts")
    c = _counts(current_counts, "current_counts")
    _same_length(r, c, "reference_counts", "current_counts")
    table = np.vstack([r, c])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or not (rows > 0).all():
        return GTest(statistic=0.0, dof=0, p_value=1.0)
    expected = np.outer(rows, table.sum(axis=0)) / table.sum()
    observed = table > 0
    o = table[observed]
    statistic = float(2.0 * np.sum(o * np.log(o / expected[observed])))
    # Rounding can push a perfect fit a hair below zero.
    statistic = max(0.0, statistic)
    dof = table.shape[1] - 1
    return GTest(statistic=statistic, dof=dof, p_value=chi2_sf(statistic, dof))


def psi_null_expectation(n_reference: float, n_current: float, bins: int) -> float:
    """Approximate PSI expected from sampling noise alone, with no drift.

    PSI is the Jeffreys divergence, and n_eff * PSI tends to chi2(bins - 1)
    with 1 / n_eff = 1 / n_reference + 1 / n_current: so a PSI near this
    value says nothing, however the usual 0.1 / 0.25 thresholds read it.
    """
    for name, n in (("n_reference", n_reference), ("n_current", n_current)):
        if not (math.isfinite(n) and n > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {n!r}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}")
    return (bins - 1) * (1.0 / n_reference + 1.0 / n_current)


def _counts(values: npt.ArrayLike, name: str) -> FloatArray:
    """A 1-D float copy of non-negative finite counts; the sum may be zero."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of counts, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: expected at least one bin count")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains nan or infinite values: counts must be finite")
    if (a < 0).any():
        raise ValueError(f"{name} contains negative values: counts must be >= 0")
    return a


def _fractions(a: FloatArray, name: str) -> FloatArray:
    total = float(a.sum())
    if total <= 0:
        raise ValueError(f"{name} sums to zero: need at least one non-zero count")
    return a / total


def _same_length(a: FloatArray, b: FloatArray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {name_a} has {len(a)} bins but {name_b} has {len(b)}")


def _pair(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    r = _counts(reference, "reference")
    c = _counts(current, "current")
    _same_length(r, c, "reference", "current")
    return _fractions(r, "reference"), _fractions(c, "current")


def _floor_zeros(p: FloatArray) -> FloatArray:
    """Evidently's floor for empty bins, from the vector's smallest non-zero fraction."""
    zero = p == 0
    if not zero.any():
        return p
    smallest = float(p[~zero].min())
    floor = smallest * 1e-6 if smallest <= 1e-4 else 1e-4
    return np.where(zero, floor, p)


def _rel_entr(p: FloatArray, m: FloatArray) -> FloatArray:
    """p * ln(p / m) with 0 * ln(0) = 0 (m > 0 wherever p > 0)."""
    out = np.zeros_like(p)
    nonzero = p > 0
    out[nonzero] = p[nonzero] * np.log(p[nonzero] / m[nonzero])
    return out


def _grid(
    grid: npt.ArrayLike, grid_cdf: npt.ArrayLike, grid_counts: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """Validated grid and training CDF, the serving CDF at the grid points, serving count."""
    g = np.asarray(grid, dtype=np.float64)
    cdf = np.asarray(grid_cdf, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grid must be a non-empty 1-D vector, got shape {g.shape}")
    if not np.isfinite(g).all() or (np.diff(g) <= 0).any():
        raise ValueError("grid must be finite and strictly increasing")
    if cdf.shape != g.shape:
        raise ValueError(
            f"length mismatch: grid has {g.size} points but grid_cdf has {cdf.size} values"
        )
    if not ((cdf >= 0) & (cdf <= 1)).all():
        raise ValueError("grid_cdf values must lie in [0, 1]")
    counts = _counts(grid_counts, "grid_counts")
    if counts.size != g.size + 1:
        raise ValueError(
            f"length mismatch: grid_counts needs {g.size + 1} buckets "
            f"(one more than the grid), got {counts.size}"
        )
    n = float(counts.sum())
    if n <= 0:
        raise ValueError("grid_counts sums to zero: need at least one serving value")
    return g, cdf, np.cumsum(counts)[:-1] / n, n


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) for a > 0, x > 0."""
    # exp(-x) x^a / Gamma(a), in logs so large x and a do not overflow.
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    # Both expansions need ~sqrt(a) terms near x == a; beyond that they converge fast.
    max_terms = 1000 + int(50 * math.sqrt(a))
    if x < a + 1:
        # Series for the lower P(a, x); here Q >= ~0.08, so 1 - P loses little.
        term = total = 1.0 / a
        ap = a
        for _ in range(max_terms):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                return max(0.0, 1.0 - total * math.exp(log_prefactor))
    else:
        # Continued fraction for Q itself (modified Lentz): accurate far into the tail.
        b = x + 1.0 - a
        c = 1.0 / _TINY
        d = 1.0 / b
        h = d
        for i in range(1, max_terms):
            an = -i * (i - a)
            b += 2.0
            d = an * d + b
            d = _TINY if abs(d) < _TINY else d
            c = b + an / c
            c = _TINY if abs(c) < _TINY else c
            d = 1.0 / d
            delta = d * c
            h *= delta
            if abs(delta - 1.0) < _EPS:
                return math.exp(log_prefactor) * h
    raise ArithmeticError(f"chi2_sf did not converge for a={a!r}, x={x!r}")
