"""Compare two baselines: how the training data moved between two model versions.

The old baseline is the reference, exactly as training is for serving skew: the new
data's mass is counted in the old baseline's fixed bins (read from the new
baseline's exact value counts, its KLL sketch, or, for baselines imported without a
sketch, its quantile grid) and the same measures and the same verdict rule apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import measures
from .baseline import Baseline, Feature
from .categorical import CategoricalStats
from .numeric import NumericStats
from .report import DriftRule
from .sequences import ListStats
from .timestamps import TimestampStats

__all__ = ["BaselineDiff", "FeatureDiff", "diff_baselines"]

FloatArray = npt.NDArray[np.float64]
# Reasons a feature counts as changed; the first four change the schema.
REASONS = ("added", "removed", "kind", "role", "distribution", "missing_rate", "mismatch_rate")
SCHEMA_REASONS = REASONS[:4]


@dataclass(frozen=True)
class FeatureDiff:
    """One feature in both baselines; measures are None where they do not apply."""

    name: str
    old_kind: str | None
    new_kind: str | None
    old_count: int = 0
    new_count: int = 0
    old_missing_rate: float | None = None
    new_missing_rate: float | None = None
    old_mismatch_rate: float | None = None
    new_mismatch_rate: float | None = None
    psi: float | None = None
    js_distance: float | None = None
    linf: float | None = None
    ks: float | None = None
    mean_shift: float | None = None
    scale_ratio: float | None = None
    p_value: float | None = None
    # Share of the new values in categories the old vocabulary never had.
    new_categories: float | None = None
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.reasons)

    def severity(self) -> tuple[int, int, float, float]:
        """Changed first, schema changes before shifts, then by PSI and missing-rate change."""
        schema = any(r in SCHEMA_REASONS for r in self.reasons)
        return (int(self.changed), int(schema), self.psi or 0.0, abs(_delta(self) or 0.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "old_kind": self.old_kind,
            "new_kind": self.new_kind,
            "old_count": self.old_count,
            "new_count": self.new_count,
            "old_missing_rate": self.old_missing_rate,
            "new_missing_rate": self.new_missing_rate,
            "old_mismatch_rate": self.old_mismatch_rate,
            "new_mismatch_rate": self.new_mismatch_rate,
            "psi": self.psi,
            "js_distance": self.js_distance,
            "linf": self.linf,
            "ks": self.ks,
            "mean_shift": self.mean_shift,
            "scale_ratio": self.scale_ratio,
            "p_value": self.p_value,
            "new_categories": self.new_categories,
            "changed": self.changed,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class BaselineDiff:
    old_hash: str
    new_hash: str
    old_rows: int
    new_rows: int
    features: dict[str, FeatureDiff] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(d.changed for d in self.features.values())

    def by_severity(self) -> list[FeatureDiff]:
        return sorted(self.features.values(), key=lambda d: d.severity(), reverse=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "old": {"baseline_hash": self.old_hash, "rows": self.old_rows},
            "new": {"baseline_hash": self.new_hash, "rows": self.new_rows},
            "changed": self.changed,
            "features": {d.name: d.to_json() for d in self.by_severity()},
        }


def diff_baselines(
    old: Baseline, new: Baseline, rule: DriftRule | None = None, *, rate_change: float = 0.05
) -> BaselineDiff:
    """Per-feature change from `old` to `new`.

    A feature's distribution has changed when the G-test on its bin counts rejects
    "same distribution" at `rule.alpha` and its PSI reaches `rule.psi_floor`, as for
    serving windows; its missing (or type-mismatch) rate has changed when the rate
    moved by at least `rate_change` and a G-test on the 2 x 2 table rejects at
    `rule.alpha`. Features added, removed, or of another kind or role count as changed.
    Features with fewer than `rule.min_rows` values on either side get no verdict.
    """
    rule = rule or DriftRule()
    if not 0 <= rate_change <= 1:
        raise ValueError(f"rate_change must be between 0 and 1, got {rate_change!r}")
    names = [*old.features, *(n for n in new.features if n not in old.features)]
    features = {
        name: _feature_diff(
            name, old.features.get(name), new.features.get(name), old, new, rule, rate_change
        )
        for name in names
    }
    return BaselineDiff(old.baseline_hash, new.baseline_hash, old.rows, new.rows, features)


def _feature_diff(
    name: str,
    old: Feature | None,
    new: Feature | None,
    old_baseline: Baseline,
    new_baseline: Baseline,
    rule: DriftRule,
    rate_change: float,
) -> FeatureDiff:
    if new is None and old is not None:
        return FeatureDiff(
            name,
            _kind_label(old),
            None,
            old_count=old.count,
            old_missing_rate=_rate(old.stats.missing, old_baseline.rows),
            old_mismatch_rate=_rate(old.stats.type_mismatch, old_baseline.rows),
            reasons=("removed",),
        )
    if old is None and new is not None:
        return FeatureDiff(
            name,
            None,
            _kind_label(new),
            new_count=new.count,
            new_missing_rate=_rate(new.stats.missing, new_baseline.rows),
            new_mismatch_rate=_rate(new.stats.type_mismatch, new_baseline.rows),
            reasons=("added",),
        )
    if old is None or new is None:
        raise ValueError(f"feature {name!r} is in neither baseline")
    reasons: list[str] = []
    notes: list[str] = []
    fields: dict[str, Any] = {}
    if _kind_label(old) != _kind_label(new):
        reasons.append("kind")
    if old.role != new.role:
        reasons.append("role")
    if old.kind == new.kind:
        fields = _measures(old, new, notes)
        if _distribution_changed(old, new, fields, rule):
            reasons.append("distribution")
    for reason, attr in (("missing_rate", "missing"), ("mismatch_rate", "type_mismatch")):
        a, b = getattr(old.stats, attr), getattr(new.stats, attr)
        if _rate_changed(a, old_baseline.rows, b, new_baseline.rows, rule, rate_change):
            reasons.append(reason)
    return FeatureDiff(
        name,
        _kind_label(old),
        _kind_label(new),
        old_count=old.count,
        new_count=new.count,
        old_missing_rate=_rate(old.stats.missing, old_baseline.rows),
        new_missing_rate=_rate(new.stats.missing, new_baseline.rows),
        old_mismatch_rate=_rate(old.stats.type_mismatch, old_baseline.rows),
        new_mismatch_rate=_rate(new.stats.type_mismatch, new_baseline.rows),
        reasons=tuple(reasons),
        notes=tuple(notes),
        **fields,
    )


def _kind_label(feat: Feature) -> str:
    """The kind, with what a serving value must be: categorical(string) vs categorical(number)."""
    stats = feat.stats
    if isinstance(stats, CategoricalStats):
        return f"categorical({stats.value_type})"
    if isinstance(stats, TimestampStats):
        return f"timestamp({stats.encoding})"
    if isinstance(stats, ListStats):
        return f"list({stats.element_type})"
    return feat.kind


def _rate(n: int, rows: int) -> float | None:
    return n / rows if rows else None


def _delta(d: FeatureDiff) -> float | None:
    if d.old_missing_rate is None or d.new_missing_rate is None:
        return None
    return d.new_missing_rate - d.old_missing_rate


def _rate_changed(
    a: int, rows_a: int, b: int, rows_b: int, rule: DriftRule, rate_change: float
) -> bool:
    if min(rows_a, rows_b) < rule.min_rows:
        return False
    if abs(b / rows_b - a / rows_a) < rate_change:
        return False
    test = measures.g_test([a, rows_a - a], [b, rows_b - b])
    return test.p_value < rule.alpha


def _distribution_changed(
    old: Feature, new: Feature, fields: dict[str, Any], rule: DriftRule
) -> bool:
    psi = fields.get("psi")
    p_value = fields.get("p_value")
    if psi is None or p_value is None or min(old.count, new.count) < rule.min_rows:
        return False
    return bool(p_value < rule.alpha and psi >= rule.psi_floor)


# -- measures ----------------------------------------------------------------------------------


def _measures(old: Feature, new: Feature, notes: list[str]) -> dict[str, Any]:
    a, b = old.stats, new.stats
    if isinstance(a, NumericStats) and isinstance(b, NumericStats):
        return _numeric_measures(a, b, notes)
    if isinstance(a, ListStats) and isinstance(b, ListStats):
        return _numeric_measures(a.lengths, b.lengths, notes)
    if isinstance(a, CategoricalStats) and isinstance(b, CategoricalStats):
        return _categorical_measures(a, b, notes)
    if isinstance(a, TimestampStats) and isinstance(b, TimestampStats):
        if not a.count or not b.count:
            return {}
        reference = np.array(a.hour_counts, dtype=np.float64)
        current = np.array(b.hour_counts, dtype=np.float64)
        return {**_bin_measures(reference, current), "linf": measures.linf(reference, current)}
    return {}


def _bin_measures(reference: FloatArray, current: FloatArray) -> dict[str, Any]:
    """PSI, JS and the G-test p-value of old bin counts against new counts in the same bins."""
    if reference.sum() <= 0 or current.sum() <= 0:
        return {}
    return {
        "psi": measures.psi(reference, current),
        "js_distance": measures.js_distance(reference, current),
        "p_value": measures.g_test(reference, current).p_value,
    }


def _numeric_measures(a: NumericStats, b: NumericStats, notes: list[str]) -> dict[str, Any]:
    if a.bins is None or not a.count or not b.count:
        return {}
    new_cdf = Cdf(b)
    if a.bins.values is not None and new_cdf.approximate:
        notes.append("no value counts in the new baseline: per-value bins not compared")
        return {}
    if new_cdf.approximate:
        notes.append("new baseline has no sketch: its mass in the old bins is interpolated")
    fractions = np.array(a.bins.fractions)
    if a.bins.values is not None:
        at = new_cdf.mass_at(np.array(a.bins.values))
        current = np.append(at, max(0.0, 1.0 - float(at.sum())))
    else:
        below = new_cdf(np.array(a.bins.edges or [], dtype=np.float64))
        current = np.diff(np.concatenate([[0.0], below, [1.0]]))
    current = np.clip(current, 0.0, None)
    out = _bin_measures(fractions * a.count, current / current.sum() * b.count)
    out["linf"] = measures.linf(fractions, current)
    points = np.union1d(a.grid, b.grid)
    out["ks"] = float(np.max(np.abs(Cdf(a)(points) - new_cdf(points))))
    if a.std > 0:
        out["mean_shift"] = (b.mean - a.mean) / a.std
        out["scale_ratio"] = b.std / a.std
    return out


def _categorical_measures(
    a: CategoricalStats, b: CategoricalStats, notes: list[str]
) -> dict[str, Any]:
    if not a.count or not b.count:
        return {}
    top = np.array([b.vocabulary.get(key, 0) for key in a.top], dtype=np.float64)
    current = np.append(top, max(0.0, b.count - float(top.sum())))
    out = _bin_measures(np.array(a.fractions) * a.count, current)
    # L-inf over every category either side kept; pruned mass shares one slot.
    keys = list(dict.fromkeys([*a.vocabulary, *b.vocabulary]))
    old_full = [*(a.vocabulary.get(k, 0) for k in keys), a.other_count]
    new_full = [*(b.vocabulary.get(k, 0) for k in keys), b.other_count]
    out["linf"] = measures.linf(old_full, new_full)
    if a.vocabulary_complete and b.vocabulary_complete:
        unseen = sum(n for k, n in b.vocabulary.items() if k not in a.vocabulary)
        out["new_categories"] = unseen / b.count
    else:
        side = "old" if not a.vocabulary_complete else "new"
        notes.append(f"{side} vocabulary incomplete: new categories not counted")
    return out


class Cdf:
    """The share of a numeric feature's values <= each point, from the best source kept.

    Exact value counts when the feature has few values; else the KLL sketch; else
    (baselines imported without one) the quantile grid, linear between grid points.
    """

    def __init__(self, stats: NumericStats) -> None:
        self.approximate = False
        self._sketch: Any = None
        if stats.value_counts is not None:
            self._points = np.array(sorted(stats.value_counts), dtype=np.float64)
            counts = [stats.value_counts[v] for v in self._points.tolist()]
            self._cdf = np.cumsum(counts, dtype=np.float64) / sum(counts)
        elif stats.sketched:
            self._sketch = stats.sketch()
        else:
            self._points, self._cdf = np.array(stats.grid), np.array(stats.grid_cdf)
            self.approximate = True

    def __call__(self, points: npt.ArrayLike, inclusive: bool = True) -> FloatArray:
        x = np.asarray(points, dtype=np.float64)
        if self._sketch is not None:
            if not len(x):
                return np.zeros(0)
            split = np.unique(x)
            at = np.array(self._sketch.get_cdf(split.tolist(), inclusive=inclusive)[:-1])
            return np.asarray(at[np.searchsorted(split, x)], dtype=np.float64)
        if self.approximate:
            return np.interp(x, self._points, self._cdf, left=0.0, right=1.0)
        index = np.searchsorted(self._points, x, side="right" if inclusive else "left")
        return np.concatenate([[0.0], self._cdf])[index]

    def mass_at(self, points: npt.ArrayLike) -> FloatArray:
        """The share of values equal to each point (none, when interpolated)."""
        return np.clip(self(points) - self(points, inclusive=False), 0.0, 1.0)
