"""Name the bug, not just the drift: fingerprints of common serving bugs in window counts.

`diagnose(window, feature)` compares one feature's window statistics with its
baseline and returns the bugs whose fingerprint fits, most confident first. Each
test is a small model of one bug (values times a unit factor, plus an offset, one
value mixed in, ...) checked against the window's moments and bucket counts, with
tolerances wide enough for sampling noise in a few hundred rows and narrow enough
that clean windows almost never match (see bench/diagnosis_accuracy.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .baseline import Feature
from .categorical import CategoricalStats
from .engine import MISMATCH_TYPES, FeatureWindow
from .numeric import NumericStats
from .sequences import ListStats
from .timestamps import TimestampStats

__all__ = ["KINDS", "Diagnosis", "diagnose"]

KINDS = (
    "unnormalized",
    "unit_change",
    "offset_shift",
    "timezone_shift",
    "vocabulary_mismatch",
    "type_change",
    "shape_mismatch",
    "missing_feature",
    "default_value_flood",
    "distribution_shift",
)
# Fewer values than this in a window: no fingerprint is trusted.
MIN_VALUES = 30
# Factor -> what usually causes it.
UNIT_FACTORS = {
    10.0: "a factor of ten",
    60.0: "minutes vs seconds or hours vs minutes?",
    100.0: "cents vs dollars or percent vs fraction?",
    1000.0: "milliseconds vs seconds or grams vs kilograms?",
    3600.0: "seconds vs hours?",
    1e4: "a factor of 10^4",
    1e5: "a factor of 10^5",
    1e6: "microseconds vs seconds or units vs millions?",
    1e9: "nanoseconds vs seconds?",
}
_TYPE_LABELS = {
    "number_string": "numbers as strings",
    "string": "strings",
    "int": "integers",
    "float": "floats",
    "bool": "booleans",
    "list": "lists",
    "dict": "objects",
    "other": "other types",
}
_DEFAULT_NUMBERS = (0.0, -1.0, -999.0, 999.0, -9999.0, 9999.0, 99999.0, -99.0, 99.0, 1.0)
_DEFAULT_STRINGS = frozenset({"", "unknown", "none", "null", "n/a", "na", "0", "-1", "other"})

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Diagnosis:
    """A named bug: one of KINDS, a confidence in [0, 1] and a line with the numbers."""

    kind: str
    confidence: float
    explanation: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "confidence": round(self.confidence, 3),
            "explanation": self.explanation,
        }


def diagnose(
    window: FeatureWindow, feature: Feature, *, drifted: bool | None = None
) -> list[Diagnosis]:
    """The bugs whose fingerprint fits this feature's window, most confident first.

    `drifted` is the report's verdict: when it is True and no fingerprint fits, the
    result is a plain `distribution_shift`.
    """
    stats = feature.stats
    found = [*_missing(window, stats), *_type_change(window, stats)]
    if isinstance(stats, NumericStats):
        found += _numeric(window, feature.name, stats)
    elif isinstance(stats, CategoricalStats):
        found += _categorical(window, stats)
    elif isinstance(stats, ListStats):
        found += _lists(window, stats)
    else:
        found += _timestamps(window, stats)
    explains_values = any(d.kind not in ("missing_feature", "type_change") for d in found)
    if drifted and not explains_values:
        found.append(_distribution_shift(window, stats))
    return sorted(found, key=lambda d: -d.confidence)


# -- every kind ------------------------------------------------------------------


def _seen(w: FeatureWindow) -> int:
    return w.values + w.missing + w.type_mismatch


def _excess(k: int, n: int, rate: float, train_rate: float) -> bool:
    """k of n is far above the training rate: a floor, a ratio and ~5 sigma."""
    sigma = math.sqrt(n * max(train_rate, 1e-3) * (1 - train_rate))
    return rate >= 0.05 and rate >= 2 * train_rate + 0.03 and k - n * train_rate > 5 * sigma + 2


def _raised_rate(
    w: FeatureWindow, k: int, stats: Any, trained_k: int
) -> tuple[float, float] | None:
    """(serving rate, training rate) of k values in the window against trained_k in
    training, when the serving rate is far above training's; else None."""
    n = _seen(w)
    trained = stats.count + stats.missing + stats.type_mismatch
    if n < MIN_VALUES or not trained:
        return None
    rate, train_rate = k / n, trained_k / trained
    return (rate, train_rate) if _excess(k, n, rate, train_rate) else None


def _missing(w: FeatureWindow, stats: Any) -> list[Diagnosis]:
    rates = _raised_rate(w, w.missing, stats, stats.missing)
    if rates is None:
        return []
    rate, train_rate = rates
    before = "always present in training" if not stats.missing else f"training {train_rate:.1%}"
    nulls = w.missing - w.absent
    return [
        Diagnosis(
            "missing_feature",
            min(1.0, 0.6 + rate - train_rate),
            f"missing in {rate:.0%} of rows ({w.absent} absent, {nulls} null); {before}",
        )
    ]


def _expected_type(stats: Any) -> str:
    if isinstance(stats, NumericStats):
        return "numbers"
    if isinstance(stats, CategoricalStats):
        return {"bool": "booleans", "number": "numbers"}.get(stats.value_type, "strings")
    if isinstance(stats, ListStats):
        return "lists"
    return "ISO strings" if stats.encoding == "iso" else f"{stats.encoding} numbers"


def _type_change(w: FeatureWindow, stats: Any) -> list[Diagnosis]:
    rates = _raised_rate(w, w.type_mismatch, stats, stats.type_mismatch)
    if rates is None:
        return []
    rate, train_rate = rates
    types = w.mismatch_types
    top = int(np.argmax(types)) if types.sum() else len(MISMATCH_TYPES) - 1
    share = types[top] / types.sum() if types.sum() else 1.0
    label = _TYPE_LABELS[MISMATCH_TYPES[top]]
    return [
        Diagnosis(
            "type_change",
            min(1.0, 0.6 + rate),
            f"{rate:.0%} of values arrive as {label} ({share:.0%} of the mismatches); "
            f"training had {_expected_type(stats)}",
        )
    ]


def _distribution_shift(w: FeatureWindow, stats: Any) -> Diagnosis:
    detail = "bins moved beyond sampling noise"
    numeric = stats.lengths if isinstance(stats, ListStats) else stats
    moments_of = w.lengths if isinstance(stats, ListStats) else w
    if isinstance(numeric, NumericStats) and moments_of is not None:
        m = _moments(moments_of, numeric)
        if m is not None:
            what = "length " if isinstance(stats, ListStats) else ""
            detail = (
                f"{what}mean {m.mean:.4g} vs {numeric.mean:.4g} in training, "
                f"std {m.ratio:.2f}x training"
            )
    elif isinstance(stats, CategoricalStats) and w.values and stats.count:
        counts = w.vocabulary_counts[:-1] / w.values
        train = np.array(list(stats.vocabulary.values()), dtype=np.float64) / stats.count
        k = int(np.argmax(np.abs(counts - train))) if len(train) else 0
        if len(train):
            detail = (
                f"{list(stats.vocabulary)[k]!r} {counts[k]:.0%} of values vs {train[k]:.0%} "
                f"in training; unseen {w.unseen / w.values:.0%}"
            )
    elif isinstance(stats, TimestampStats) and w.values and stats.count:
        served = w.bin_counts / w.values
        train = np.array(stats.hour_counts, dtype=np.float64) / stats.count
        h = int(np.argmax(np.abs(served - train)))
        detail = f"hour {h:02d} holds {served[h]:.0%} of values vs {train[h]:.0%} in training"
    return Diagnosis(
        "distribution_shift", 0.5, f"distribution changed, no known bug fits: {detail}"
    )


# -- numeric ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Moments:
    n: int
    mean: float
    std: float
    ratio: float  # serving std / training std


def _moments(w: FeatureWindow, s: NumericStats) -> _Moments | None:
    n = w.finite
    if n < MIN_VALUES or s.count < 2 or not s.std > 0:
        return None
    dev = w.sum_dev / n
    std = math.sqrt(max(0.0, w.sumsq_dev / n - dev * dev))
    if not math.isfinite(std):
        return None
    return _Moments(n, s.mean + dev, std, std / s.std)


def _numeric(w: FeatureWindow, name: str, s: NumericStats) -> list[Diagnosis]:
    m = _moments(w, s)
    if m is None:
        return []
    flood = _numeric_flood(w, s, m)
    if flood is not None or not m.ratio > 0:
        return [] if flood is None else [flood]
    for test in (_unnormalized_reverse, _unit_change, _unnormalized):
        found = test(w, s, m)
        if found is not None:
            return [found]
    hourly = _hour_like(name, s)
    found = _hour_rotation(w, s) if hourly else None
    if found is None:
        found = _offset_shift(w, s, m, hourly)
    return [] if found is None else [found]


def _bucket_fractions(s: NumericStats) -> FloatArray:
    """Training mass of each grid bucket (bucket i: grid[i-1] < x <= grid[i])."""
    cdf = np.array(s.grid_cdf, dtype=np.float64)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _numeric_flood(w: FeatureWindow, s: NumericStats, m: _Moments) -> Diagnosis | None:
    """One value mixed into a fraction f of the rows, the rest as in training.

    The mixture predicts the serving mean and std from f and the value; a unit
    change or offset also piles values into one (out-of-range) bucket, but its
    spread does not fit a point mass.
    """
    counts = w.grid_counts.astype(np.float64)
    n = counts.sum()
    if n < MIN_VALUES or not len(counts):
        return None
    p = _bucket_fractions(s)
    frac = counts / n
    k = int(np.argmax(frac - p))
    f = (frac[k] - p[k]) / (1 - p[k]) if p[k] < 1 else 0.0
    if frac[k] < 0.2 or f < 0.15 or frac[k] < 3 * p[k]:
        return None
    grid = s.grid
    if k == 0 and w.low:  # below the training range: the mean of those values
        value = s.min - w.below_sum / w.low
    elif k == len(grid) and w.high:
        value = s.max + w.above_sum / w.high
    else:
        estimate = (m.mean - (1 - f) * s.mean) / f
        lo = grid[k - 1] if k > 0 else -math.inf
        hi = grid[k] if k < len(grid) else math.inf
        value = next((v for v in _DEFAULT_NUMBERS if lo < v <= hi), min(max(estimate, lo), hi))
    mean = (1 - f) * s.mean + f * value
    std = math.sqrt((1 - f) * s.std**2 + f * (1 - f) * (value - s.mean) ** 2)
    if abs(m.mean - mean) > 4 * max(std, 1e-12) / math.sqrt(n) + 0.1 * s.std:
        return None
    # The window's std comes from sums of squares: rounding leaves about sqrt(eps) of
    # the deviation even when every value is the same (f = 1, predicted std 0).
    rounding = 1e-6 * (s.std + abs(value - s.mean))
    if abs(m.std - std) > 0.3 * std + 0.1 * s.std * (1 - f) + rounding:
        return None
    before = p[k] if k not in (0, len(grid)) or s.discrete else 0.0
    return Diagnosis(
        "default_value_flood",
        min(1.0, 0.6 + f / 2),
        f"{frac[k]:.0%} of values are {value:.6g} (training: {before:.1%} near it); "
        "a default or placeholder value filling in?",
    )


def _unit_change(w: FeatureWindow, s: NumericStats, m: _Moments) -> Diagnosis | None:
    best: tuple[float, float] | None = None
    for factor in UNIT_FACTORS:
        for g in (factor, 1 / factor):
            miss = abs(math.log(m.ratio / g))
            if miss > math.log(1.25):
                continue
            if abs(m.mean - g * s.mean) > 0.25 * g * s.std + 4 * m.std / math.sqrt(m.n):
                continue
            if best is None or miss < best[1]:
                best = (g, miss)
    if best is None:
        return None
    g, miss = best
    factor = g if g > 1 else 1 / g
    direction = f"{_num(factor)}x" if g > 1 else f"1/{_num(factor)} of"
    return Diagnosis(
        "unit_change",
        max(0.5, 0.95 - miss),
        f"serving values are {direction} training (mean {m.mean:.4g} vs {s.mean:.4g}, "
        f"std {m.std:.4g} vs {s.std:.4g}): {UNIT_FACTORS[factor]}",
    )


def _normalised(mean: float, std: float, lo: float, hi: float) -> str | None:
    if abs(mean) < 0.1 and 0.9 < std < 1.1:
        return "standardised"
    if -0.01 <= lo and hi <= 1.01 and lo < 0.05 and hi > 0.95:
        return "min-max scaled"
    return None


def _unnormalized(w: FeatureWindow, s: NumericStats, m: _Moments) -> Diagnosis | None:
    """Trained on scaled values, served raw ones."""
    how = _normalised(s.mean, s.std, s.min, s.max)
    outside = (w.low + w.high) / m.n
    far = m.ratio > 3 or m.ratio < 1 / 3 or abs(m.mean - s.mean) > 3 * s.std
    if how is None or not far or outside < 0.3:
        return None
    return Diagnosis(
        "unnormalized",
        min(0.95, 0.6 + outside / 3),
        f"serving std is {_num(m.ratio)}x training and mean {m.mean:.4g} "
        f"(training {how}: mean {s.mean:.3g}, std {s.std:.3g}); {outside:.0%} outside the "
        "training range: values look like raw units, normalisation missing at inference?",
    )


def _unnormalized_reverse(w: FeatureWindow, s: NumericStats, m: _Moments) -> Diagnosis | None:
    """Trained on raw values, served scaled ones (standardised or min-max)."""
    if _normalised(s.mean, s.std, s.min, s.max) is not None:
        return None
    if abs(m.mean - s.mean) < s.std and abs(math.log(m.ratio)) < math.log(2):
        return None
    span = s.max - s.min
    how = None
    if abs(m.mean) < 0.25 and abs(m.std - 1) < 0.2:
        how = "standardised"
    elif span > 0:
        scaled_mean, scaled_std = (s.mean - s.min) / span, s.std / span
        if abs(m.mean - scaled_mean) < 0.1 and abs(m.std / scaled_std - 1) < 0.2:
            how = "min-max scaled"
    if how is None:
        return None
    return Diagnosis(
        "unnormalized",
        0.85,
        f"serving values look {how} (mean {m.mean:.3g}, std {m.std:.3g}) but training "
        f"was raw (mean {s.mean:.4g}, std {s.std:.4g}): normalised twice, or a scaler "
        "applied at inference only?",
    )


def _training_cdf(s: NumericStats, x: FloatArray) -> FloatArray:
    grid = np.array(s.grid, dtype=np.float64)
    cdf = np.array(s.grid_cdf, dtype=np.float64)
    if s.integer:  # a step function: the mass sits on the values
        idx = np.searchsorted(grid, x, side="right") - 1
        return np.where(idx >= 0, cdf[np.clip(idx, 0, None)], 0.0)
    return np.interp(x, grid, cdf, left=0.0, right=1.0)


def _offset_shift(w: FeatureWindow, s: NumericStats, m: _Moments, hourly: bool) -> Diagnosis | None:
    """Serving = training + d: same spread, the training CDF moved by d fits."""
    d = m.mean - s.mean
    if abs(math.log(m.ratio)) > math.log(1.2) or abs(d) < 0.3 * s.std:
        return None
    if abs(d) / (s.std / math.sqrt(m.n)) < 6:
        return None
    grid = np.array(s.grid, dtype=np.float64)
    served = np.cumsum(w.grid_counts)[:-1] / m.n
    ks_none = float(np.abs(served - _training_cdf(s, grid)).max())
    ks_shift = float(np.abs(served - _training_cdf(s, grid - d)).max())
    if ks_shift > 0.6 * ks_none or ks_shift > 0.08 + 1.6 / math.sqrt(m.n):
        return None
    hours = round(d)
    if hourly and abs(d - hours) < 0.25 and 1 <= abs(hours) <= 14:
        return Diagnosis(
            "timezone_shift",
            0.85,
            f"hour-of-day values are {hours:+d} h from training (mean {m.mean:.3g} vs "
            f"{s.mean:.3g}, {w.high + w.low} outside 0-23 range seen in training): "
            "another time zone?",
        )
    return Diagnosis(
        "offset_shift",
        min(0.9, 0.6 + (0.6 * ks_none - ks_shift)),
        f"serving values are training {d:+.4g} ({d / s.std:+.2f} std; std ratio "
        f"{m.ratio:.2f}); a constant offset fits (KS {ks_shift:.2f} vs {ks_none:.2f} unshifted)",
    )


def _hour_like(name: str, s: NumericStats) -> bool:
    if not s.integer or s.min < 0 or s.max > 23:
        return False
    return "hour" in name.lower() or s.max - s.min >= 12


def _hour_rotation(w: FeatureWindow, s: NumericStats) -> Diagnosis | None:
    """Hour-of-day values that wrap: compare 24-hour histograms under rotations."""
    if w.low or w.high > 0.02 * w.finite:
        return None
    grid = np.array(s.grid, dtype=np.float64)
    hours = np.arange(24, dtype=np.float64)
    bucket = np.searchsorted(grid, hours, side="left")
    # Training mass per hour: each bucket's mass spread over the hours it holds.
    mass = _bucket_fractions(s)
    in_range = (hours >= s.min) & (hours <= s.max)
    holders = np.bincount(bucket[in_range], minlength=len(mass)).astype(np.float64)
    train = np.where(in_range, mass[bucket] / np.maximum(holders[bucket], 1), 0.0)
    served = w.grid_counts.astype(np.float64)

    def spread(hourly: FloatArray) -> FloatArray:
        return np.bincount(bucket, weights=hourly, minlength=len(served)).astype(np.float64)

    found = _best_rotation(served, train, spread)
    if found is None:
        return None
    shift, g_best, g_none = found
    return Diagnosis(
        "timezone_shift",
        0.85,
        f"hour-of-day histogram matches training rotated by {shift:+d} h "
        f"(G {g_best:.0f} vs {g_none:.0f} unrotated): another time zone?",
    )


def _g(observed: FloatArray, expected: FloatArray) -> float:
    n = observed.sum()
    e = (expected + 1e-3) / (expected + 1e-3).sum() * n
    nz = observed > 0
    return float(2 * (observed[nz] * np.log(observed[nz] / e[nz])).sum())


def _best_rotation(
    served: FloatArray, train: FloatArray, spread: Any = None
) -> tuple[int, float, float] | None:
    """The rotation of the 24-hour training histogram that fits the serving counts
    best, when it fits far better than none and about as well as noise allows."""
    if served.sum() < MIN_VALUES or train.sum() <= 0:
        return None
    scores = []
    for shift in range(24):
        expected = np.roll(train, shift)
        scores.append(_g(served, spread(expected) if spread else expected))
    best = int(np.argmin(scores))
    dof = max(1, int((served > 0).sum()) - 1)
    if best == 0 or scores[0] - scores[best] < 40:
        return None
    if scores[best] > dof + 6 * math.sqrt(2 * dof) + 20:
        return None
    return (best if best <= 12 else best - 24), scores[best], scores[0]


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"


# -- categorical -----------------------------------------------------------------


def _categorical(w: FeatureWindow, s: CategoricalStats) -> list[Diagnosis]:
    n = w.values
    if n < MIN_VALUES or not s.count:
        return []
    found = []
    if s.vocabulary_complete:
        singletons = sum(1 for c in s.vocabulary.values() if c == 1)
        novel = singletons / s.count  # Good-Turing: how often training met a new value
        rate = w.unseen / n
        if _excess(w.unseen, n, rate, novel):
            found.append(
                Diagnosis(
                    "vocabulary_mismatch",
                    min(1.0, 0.6 + rate),
                    f"{rate:.0%} of values were never seen in training ({len(s.vocabulary)} "
                    f"categories; expected about {novel:.1%} new): a renamed or new category?",
                )
            )
    counts = w.vocabulary_counts[:-1].astype(np.float64)
    if len(counts):
        train = np.array(list(s.vocabulary.values()), dtype=np.float64) / s.count
        frac = counts / n
        k = int(np.argmax(frac - train))
        key = list(s.vocabulary)[k]
        f = (frac[k] - train[k]) / (1 - train[k]) if train[k] < 1 else 0.0
        looks_default = key.strip().lower() in _DEFAULT_STRINGS
        grown = frac[k] >= 0.3 and f >= 0.25 and (frac[k] >= 3 * train[k] or looks_default)
        if grown and _rest_unchanged(np.delete(counts, k), np.delete(train, k)):
            found.append(
                Diagnosis(
                    "default_value_flood",
                    min(1.0, 0.6 + f / 2),
                    f"{frac[k]:.0%} of values are {key!r} (training {train[k]:.1%}): "
                    "a default or placeholder value filling in?",
                )
            )
    return found


def _rest_unchanged(counts: FloatArray, train: FloatArray) -> bool:
    """The other values keep their training proportions (a flood only dilutes them)."""
    keep = train > 0
    if counts.sum() < MIN_VALUES or keep.sum() < 2:
        return True
    dof = int(keep.sum()) - 1
    return _g(counts[keep], train[keep]) <= dof + 6 * math.sqrt(2 * dof) + 10


# -- lists -----------------------------------------------------------------------


def _lists(w: FeatureWindow, s: ListStats) -> list[Diagnosis]:
    n = w.values
    if n < MIN_VALUES or not s.count:
        return []
    found = []
    rate = w.shape_mismatch / n
    if rate >= 0.05 and w.shape_mismatch >= 5:
        shapes = ", ".join(list(s.shapes)[:3]) or "-"
        mean = ""
        if w.lengths is not None and w.lengths.finite:
            mean = f"mean length {s.lengths.mean + w.lengths.sum_dev / w.lengths.finite:.3g}"
            mean += f" vs {s.lengths.mean:.3g}; "
        found.append(
            Diagnosis(
                "shape_mismatch",
                min(1.0, 0.6 + rate),
                f"{rate:.0%} of lists have a shape never seen in training ({mean}"
                f"training shapes {shapes})",
            )
        )
    ids = s.element_type == "number" and s.element_integer and s.element_min >= 0
    high = w.high / n
    if ids and high >= 0.05 and w.high >= 5:
        found.append(
            Diagnosis(
                "vocabulary_mismatch",
                min(1.0, 0.6 + high),
                f"{high:.0%} of lists hold ids above the training maximum "
                f"{s.element_max:.0f}: a tokenizer with another vocabulary?",
            )
        )
    return found


# -- timestamps ------------------------------------------------------------------


def _timestamps(w: FeatureWindow, s: TimestampStats) -> list[Diagnosis]:
    if w.values < MIN_VALUES or not s.count:
        return []
    served = w.bin_counts.astype(np.float64)
    found = _best_rotation(served, np.array(s.hour_counts, dtype=np.float64))
    if found is None:
        return []
    shift, g_best, g_none = found
    offsets = ""
    if w.offsets:
        key, count = max(w.offsets.items(), key=lambda kv: kv[1])
        train_key = next(iter(s.offsets), "-")
        if key != train_key:
            offsets = f"; serving offsets {key} {count / w.values:.0%} (training {train_key})"
    return [
        Diagnosis(
            "timezone_shift",
            0.9,
            f"hour-of-day histogram matches training shifted by {shift:+d} h "
            f"(G {g_best:.0f} vs {g_none:.0f} unshifted){offsets}: local time sent as UTC, "
            "or another time zone?",
        )
    ]
