"""Turn an accumulated window into per-feature skew measures and a drift verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import measures
from .baseline import Baseline, Feature, Stats
from .categorical import OTHER, CategoricalStats
from .diagnosis import Diagnosis, diagnose
from .engine import FeatureWindow, Window
from .numeric import NumericStats
from .sequences import ListStats
from .timestamps import TimestampStats

__all__ = ["DriftRule", "FeatureReport", "WindowReport", "build_report"]


@dataclass(frozen=True)
class DriftRule:
    """When a feature counts as drifted.

    Both conditions must hold: the two-sample G-test on the bin counts rejects
    "same distribution" at `alpha` (this accounts for both sample sizes, so a
    small baseline or a small window does not page anyone on sampling noise),
    and the PSI reaches `psi_floor` (an effect-size floor, so a huge window
    does not page anyone on a statistically real but negligible shift).
    Windows (and features) with fewer than `min_rows` values get no verdict.
    """

    min_rows: int = 100
    alpha: float = 1e-3
    psi_floor: float = 0.1

    def __post_init__(self) -> None:
        if type(self.min_rows) is not int or self.min_rows < 1:
            raise ValueError(f"min_rows must be a positive integer, got {self.min_rows!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha!r}")
        if not self.psi_floor >= 0:
            raise ValueError(f"psi_floor must be >= 0, got {self.psi_floor!r}")


@dataclass(frozen=True)
class FeatureReport:
    name: str
    kind: str
    role: str
    values: int
    missing: int
    nonfinite: int
    out_of_range_low: int
    out_of_range_high: int
    type_mismatch: int
    unseen_category: int | None
    shape_mismatch: int
    psi: float | None = None
    js_distance: float | None = None
    linf: float | None = None
    wasserstein: float | None = None
    ks: float | None = None
    mean_shift: float | None = None
    scale_ratio: float | None = None
    drifted: bool | None = None
    p_value: float | None = None
    bin_labels: tuple[str, ...] = ()
    bin_counts: tuple[int, ...] = ()
    baseline_fractions: tuple[float, ...] = ()
    diagnosis: tuple[Diagnosis, ...] = ()
    # Checks the baseline cannot support, and why ("vocabulary incomplete: ...").
    notes: tuple[str, ...] = ()

    JSON_FIELDS = (
        "values",
        "missing",
        "nonfinite",
        "out_of_range_low",
        "out_of_range_high",
        "type_mismatch",
        "unseen_category",
        "shape_mismatch",
        "psi",
        "js_distance",
        "linf",
        "wasserstein",
        "ks",
        "mean_shift",
        "scale_ratio",
        "drifted",
        "p_value",
    )

    @property
    def violations(self) -> int:
        return (
            self.nonfinite
            + self.out_of_range_low
            + self.out_of_range_high
            + self.type_mismatch
            + (self.unseen_category or 0)
            + self.shape_mismatch
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "role": self.role}
        for key in self.JSON_FIELDS:
            data[key] = getattr(self, key)
        data["diagnosis"] = [d.to_json() for d in self.diagnosis]
        data["notes"] = list(self.notes)
        return data

    def severity(self) -> tuple[int, float, float]:
        """Drifted first, then by the share of problem values, then by PSI."""
        seen = self.values + self.missing + self.type_mismatch
        problems = (self.violations + self.missing) / seen if seen else 0.0
        return (1 if self.drifted else 0, round(problems, 3), self.psi or 0.0)


@dataclass(frozen=True)
class WindowReport:
    rows: int
    rejected_rows: int
    unknown_features: int
    baseline_hash: str
    min_rows: int
    features: dict[str, FeatureReport] = field(default_factory=dict)

    @property
    def sufficient(self) -> bool:
        return self.rows >= self.min_rows

    def by_severity(self) -> list[FeatureReport]:
        return sorted(self.features.values(), key=lambda r: r.severity(), reverse=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rejected_rows": self.rejected_rows,
            "unknown_features": self.unknown_features,
            "baseline_hash": self.baseline_hash,
            "features": {r.name: r.to_json() for r in self.by_severity()},
        }


def build_report(
    window: Window,
    baseline: Baseline,
    rule: DriftRule | None = None,
    *,
    baseline_hash: str | None = None,
    measures: bool = True,
) -> WindowReport:
    """Per-feature counts, bins and (unless measures=False) measures and verdicts.

    Pass `baseline_hash` when it is known: hashing a baseline serialises all of it.
    """
    rule = rule or DriftRule()
    features = {
        name: _feature_report(feature, window.features[name], window.rows, rule, measures)
        for name, feature in baseline.features.items()
        if name in window.features
    }
    return WindowReport(
        rows=window.rows,
        rejected_rows=window.rejected_rows,
        unknown_features=window.unknown_features,
        baseline_hash=baseline_hash or baseline.baseline_hash,
        min_rows=rule.min_rows,
        features=features,
    )


def _feature_report(
    feature: Feature, w: FeatureWindow, rows: int, rule: DriftRule, measures: bool = True
) -> FeatureReport:
    stats = feature.stats
    unseen = None
    notes: tuple[str, ...] = ()
    if isinstance(stats, CategoricalStats):
        if stats.vocabulary_complete:
            unseen = w.unseen
        else:
            notes = (vocabulary_note(stats),)
    bins = _bins(stats, w)
    fields: dict[str, Any] = {}
    if bins is not None:
        fields = {
            "bin_labels": tuple(bins.labels),
            "bin_counts": tuple(int(c) for c in bins.current),
            "baseline_fractions": tuple(float(f) for f in bins.reference / bins.reference.sum()),
        }
        if measures:  # running totals for counters need counts and bins only
            fields.update(_measures(stats, w, bins))
            fields.update(_verdict(bins, fields.get("psi"), rows, rule))
    if measures:
        fields["diagnosis"] = tuple(diagnose(w, feature, drifted=fields.get("drifted")))
    return FeatureReport(
        name=feature.name,
        kind=feature.kind,
        role=feature.role,
        values=w.values,
        missing=w.missing,
        nonfinite=w.nonfinite,
        out_of_range_low=w.low,
        out_of_range_high=w.high,
        type_mismatch=w.type_mismatch,
        unseen_category=unseen,
        shape_mismatch=w.shape_mismatch,
        notes=notes,
        **fields,
    )


def vocabulary_note(stats: CategoricalStats) -> str:
    share = stats.other_count / stats.count if stats.count else 0.0
    return (
        f"vocabulary incomplete: the baseline keeps {len(stats.vocabulary)} training values "
        f"and not the other {share:.1%} of training values, so unseen categories are not counted"
    )


@dataclass(frozen=True)
class _Bins:
    """A feature's fixed bins: labels, serving counts, training counts."""

    labels: list[str]
    current: npt.NDArray[np.int64]
    reference: npt.NDArray[np.float64]


def _bins(stats: Stats, w: FeatureWindow) -> _Bins | None:
    if isinstance(stats, NumericStats):
        return _numeric_bins(stats, w)
    if isinstance(stats, ListStats):
        if w.lengths is None:
            return None
        bins = _numeric_bins(stats.lengths, w.lengths)
        if bins is None:
            return None
        return _Bins([f"len {label}" for label in bins.labels], bins.current, bins.reference)
    if not stats.count:
        return None
    if isinstance(stats, CategoricalStats):
        other = len(stats.top)
        current = np.bincount(
            stats.bin_of_vocabulary(), weights=w.vocabulary_counts, minlength=other + 1
        )
        reference = np.array(stats.fractions) * stats.count
        return _Bins([*stats.top, OTHER], current.astype(np.int64), reference)
    labels = [f"{h:02d}h" for h in range(24)]
    return _Bins(labels, w.bin_counts, np.array(stats.hour_counts, dtype=np.float64))


def _numeric_bins(stats: NumericStats, w: FeatureWindow) -> _Bins | None:
    if stats.bins is None:
        return None
    fractions = np.array(stats.bins.fractions)
    if stats.discrete:
        current = w.bin_counts
    else:
        current = np.bincount(stats.bucket_bins(), weights=w.grid_counts, minlength=len(fractions))
    return _Bins(_numeric_labels(stats), current.astype(np.int64), fractions * stats.count)


def _measures(stats: Stats, w: FeatureWindow, bins: _Bins) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if bins.current.sum() > 0 and bins.reference.sum() > 0:
        out["psi"] = measures.psi(bins.reference, bins.current)
        out["js_distance"] = measures.js_distance(bins.reference, bins.current)
    if isinstance(stats, NumericStats):
        out.update(_shape_measures(stats, w))
    elif isinstance(stats, ListStats) and w.lengths is not None:
        out.update(_shape_measures(stats.lengths, w.lengths))
    elif isinstance(stats, CategoricalStats) and w.values:
        # L-inf over the full vocabulary; pruned training mass faces unseen values.
        ref_full = np.array([*stats.vocabulary.values(), stats.other_count], dtype=np.float64)
        out["linf"] = measures.linf(ref_full, w.vocabulary_counts)
    elif isinstance(stats, TimestampStats) and w.values:
        out["linf"] = measures.linf(bins.reference, bins.current)
    return out


def _shape_measures(stats: NumericStats, w: FeatureWindow) -> dict[str, Any]:
    """KS and W1 from the quantile grid, mean shift and scale ratio in training stds."""
    n = w.finite
    if not n:
        return {}
    grid = np.array(stats.grid)
    cdf = np.array(stats.grid_cdf)
    out: dict[str, Any] = {"ks": measures.ks_estimate(grid, cdf, w.grid_counts, below_count=w.low)}
    std = stats.std
    if std > 0:
        w1 = measures.wasserstein_estimate(
            grid, cdf, w.grid_counts, w.below_sum, w.above_sum, discrete=stats.discrete
        )
        mean_dev = w.sum_dev / n
        variance = max(0.0, w.sumsq_dev / n - mean_dev * mean_dev)
        out["wasserstein"] = w1 / std
        out["mean_shift"] = mean_dev / std
        out["scale_ratio"] = math.sqrt(variance) / std
    return out


def _numeric_labels(stats: NumericStats) -> list[str]:
    bins = stats.bins
    if bins is None:
        return []
    if bins.values is not None:
        return [*_distinct(bins.values), "other"]
    bounds = ["-inf", *_distinct(bins.edges or []), "+inf"]
    return [
        f"({a}, {b}]" if b != "+inf" else f"({a}, {b})"
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


def _distinct(values: list[float]) -> list[str]:
    """Short labels for increasing values: 6 significant digits, more where neighbours
    would share a label (1000000.01 and 1000000.02), up to the exact value."""
    for digits in (6, 9, 12, 17):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return [repr(v) for v in values]


def _verdict(bins: _Bins, psi: float | None, rows: int, rule: DriftRule) -> dict[str, Any]:
    current = bins.current.astype(np.float64)
    if psi is None or rows < rule.min_rows or current.sum() < rule.min_rows:
        return {"drifted": None}
    test = measures.g_test(bins.reference, current)
    return {
        "drifted": bool(test.p_value < rule.alpha and psi >= rule.psi_floor),
        "p_value": test.p_value,
    }
