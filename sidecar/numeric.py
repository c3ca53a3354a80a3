"""Training statistics of a numeric feature: moments, exact or sketched quantile bins."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from datasketches import kll_doubles_sketch

from . import _fields as f
from ._fields import BaselineError

FloatArray = npt.NDArray[np.float64]

# Percentile grid for Wasserstein/KS estimates: 101 points -> KS resolution ~1%.
# Extra points in the tails: W1 treats CDFs as linear inside a bucket, which
# over-counts badly in the wide outermost percentiles of long-tailed features.
GRID_RANKS = sorted({*np.linspace(0, 1, 101).tolist(), 0.0001, 0.001, 0.005, 0.995, 0.999, 0.9999})
# Up to this many values per feature, bin edges are exact instead of sketched.
EXACT_MAX = 20_000


@dataclass
class NumericBins:
    """Fixed bins for PSI/JS.

    Quantile bins: x <= edges[0] -> bin 0, ..., x > edges[-1] -> last bin.
    Value bins (discrete features): one bin per training value plus a final
    bin for values never seen in training (training fraction 0).
    """

    fractions: list[float]
    edges: list[float] | None = None
    values: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.values is not None:
            return {"values": self.values, "fractions": self.fractions}
        return {"edges": self.edges, "fractions": self.fractions}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> NumericBins:
        fractions = f.fractions(f.numbers(data, "fractions", where), f"{where}.fractions")
        if "values" in data:
            values = f.increasing(f.numbers(data, "values", where), f"{where}.values")
            if len(fractions) != len(values) + 1:
                raise BaselineError(f"{where}: expected {len(values) + 1} fractions")
            return cls(fractions, values=values)
        edges = f.increasing(f.numbers(data, "edges", where), f"{where}.edges")
        if len(fractions) != len(edges) + 1:
            raise BaselineError(f"{where}: expected {len(edges) + 1} fractions")
        return cls(fractions, edges=edges)


@dataclass
class NumericStats:
    """Mergeable statistics of the finite values of one numeric feature."""

    sketch_k: int = 400
    count: int = 0
    missing: int = 0
    nan: int = 0
    inf: int = 0
    type_mismatch: int = 0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    integer: bool = True
    # Exact value counts while the feature has few distinct values; None after.
    value_counts: dict[float, int] | None = field(default_factory=dict)
    discrete_max: int = 20
    sketch_b64: str = ""
    bins: NumericBins | None = None
    grid: list[float] = field(default_factory=list)
    grid_cdf: list[float] = field(default_factory=list)
    _sketch: Any = field(default=None, repr=False, compare=False)
    # The values themselves while there are few: exact, reproducible edges for
    # small training sets (the KLL sketch compacts at random). Never saved.
    _exact: list[FloatArray] | None = field(default_factory=list, repr=False, compare=False)
    _bucket_bins: npt.NDArray[np.int64] | None = field(default=None, repr=False, compare=False)

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.m2 / self.count) if self.count else math.nan

    @property
    def sketched(self) -> bool:
        """Whether the KLL sketch is kept (baselines imported from summaries have none)."""
        return bool(self.sketch_b64) or self._sketch is not None

    @property
    def discrete(self) -> bool:
        return self.bins is not None and self.bins.values is not None

    def bucket_bins(self) -> npt.NDArray[np.int64]:
        """Bin of each grid bucket (bucket i holds grid[i-1] < x <= grid[i]).

        Exact because every edge is a grid point: no edge lies strictly inside a bucket.
        """
        if self._bucket_bins is None:
            edges = np.array(self.bins.edges if self.bins and self.bins.edges else [])
            grid = np.array(self.grid, dtype=np.float64)
            inner = np.searchsorted(edges, grid, side="left")
            self._bucket_bins = np.append(inner, len(edges)).astype(np.int64)
        return self._bucket_bins

    def sketch(self) -> Any:
        if self._sketch is None:
            if self.sketch_b64:
                try:
                    raw = base64.b64decode(self.sketch_b64, validate=True)
                    self._sketch = kll_doubles_sketch.deserialize(raw)
                except Exception as exc:  # binascii.Error, or whatever the C++ side raises
                    raise BaselineError(f"damaged KLL sketch ({exc}); re-profile") from None
            else:
                self._sketch = kll_doubles_sketch(self.sketch_k)
        return self._sketch

    def update(self, values: FloatArray) -> None:
        """Add a float64 array of present values (NaN and +-inf are counted apart)."""
        finite_mask = np.isfinite(values)
        finite = values if finite_mask.all() else values[finite_mask]
        if len(finite) != len(values):
            nan = int(np.isnan(values).sum())
            self.nan += nan
            self.inf += len(values) - len(finite) - nan
        if not len(finite):
            return
        n = len(finite)
        mean = float(finite.mean())
        m2 = float(((finite - mean) ** 2).sum())
        self._add_moments(n, mean, m2)
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        if self.integer and not bool((finite == np.floor(finite)).all()):
            self.integer = False
        if self.value_counts is not None:
            uniq, counts = np.unique(finite, return_counts=True)
            if len(uniq) > self.discrete_max:
                self.value_counts = None
            else:
                for v, c in zip(uniq.tolist(), counts.tolist(), strict=True):
                    self.value_counts[v] = self.value_counts.get(v, 0) + c
                if len(self.value_counts) > self.discrete_max:
                    self.value_counts = None
        self.sketch().update(finite)
        if self._exact is not None:
            if self.count <= EXACT_MAX:
                self._exact.append(finite.copy())
            else:
                self._exact = None
        self.sketch_b64 = ""
        self._bucket_bins = None

    def _add_moments(self, n: int, mean: float, m2: float) -> None:
        # Chan et al. parallel update: stable when merging partitions.
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def _exact_quantiles(self) -> ExactQuantiles | None:
        if not self._exact or sum(map(len, self._exact)) != self.count:
            return None
        return ExactQuantiles(np.sort(np.concatenate(self._exact)))

    def merge(self, other: NumericStats) -> None:
        for stats in (self, other):
            if stats.count and not stats.sketched:
                raise BaselineError(
                    "no quantile sketch (imported from summary statistics such as TFDV's), "
                    "so it cannot be merged; profile the training data itself to merge"
                )
        self._exact = None  # merged edges come from the merged sketches
        self.missing += other.missing
        self.nan += other.nan
        self.inf += other.inf
        self.type_mismatch += other.type_mismatch
        if other.count:
            self._add_moments(other.count, other.mean, other.m2)
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)
            self.integer = self.integer and other.integer
        if self.value_counts is None or other.value_counts is None:
            self.value_counts = None
        else:
            for v, c in other.value_counts.items():
                self.value_counts[v] = self.value_counts.get(v, 0) + c
            if len(self.value_counts) > self.discrete_max:
                self.value_counts = None
        if other.count:
            self.sketch().merge(other.sketch())
        self.sketch_b64 = ""

    def derive(self, bins: int) -> None:
        """Fix bin edges, fractions and the percentile grid from the data seen."""
        self._bucket_bins = None
        if not self.count:
            self.bins, self.grid, self.grid_cdf = None, [], []
            return
        if self.value_counts is not None:
            values = sorted(self.value_counts)
            counts = np.array([self.value_counts[v] for v in values], dtype=np.float64)
            value_fractions = [round(v, 12) for v in (counts / counts.sum()).tolist()]
            self.bins = NumericBins([*value_fractions, 0.0], values=values)
            self.grid = values
            self.grid_cdf = _cdf_from_fractions(value_fractions)
        else:
            sketch = self._exact_quantiles() or self.sketch()
            edges = _unique_inside(
                sketch.get_quantiles([i / bins for i in range(1, bins)]), self.max
            )
            cdf_at_edges = sketch.get_cdf(edges)[:-1] if edges else []
            fractions = np.diff([0.0, *cdf_at_edges, 1.0])
            self.bins = NumericBins(_clean_fractions(fractions), edges=edges)
            # The grid holds every bin edge, so one searchsorted on the grid also
            # gives the bin of each value (see bucket_bins).
            percentiles = sketch.get_quantiles(GRID_RANKS)
            grid = np.clip(np.asarray(percentiles, dtype=np.float64), self.min, self.max)
            self.grid = np.unique([*grid.tolist(), *edges, self.min, self.max]).tolist()
            cdf = list(sketch.get_cdf(self.grid)[:-1])
            cdf[-1] = 1.0
            self.grid_cdf = [round(min(1.0, max(0.0, c)), 12) for c in cdf]
        if not self.sketch_b64 and self._sketch is not None:
            self.sketch_b64 = base64.b64encode(self._sketch.serialize()).decode("ascii")

    def to_json(self) -> dict[str, Any]:
        empty = not self.count
        return {
            "count": self.count,
            "missing": self.missing,
            "nan": self.nan,
            "inf": self.inf,
            "type_mismatch": self.type_mismatch,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "mean": None if empty else self.mean,
            "std": None if empty else self.std,
            "m2": self.m2,  # exact, so a loaded baseline re-serialises to the same hash
            "integer": self.integer,
            "bins": None if self.bins is None else self.bins.to_json(),
            "quantiles": {"grid": self.grid, "cdf": self.grid_cdf},
            "value_counts": None
            if self.value_counts is None
            else [[v, self.value_counts[v]] for v in sorted(self.value_counts)],
            "discrete_max": self.discrete_max,
            # null: imported from summary statistics without a sketch (not mergeable).
            "sketch": {"kll_k": self.sketch_k, "kll_doubles": self.sketch_b64}
            if self.sketched or not self.count
            else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> NumericStats:
        stats = cls(
            count=f.count(data, "count", where),
            missing=f.count(data, "missing", where),
            nan=f.count(data, "nan", where),
            inf=f.count(data, "inf", where),
            type_mismatch=f.count(data, "type_mismatch", where),
            integer=f.boolean(data, "integer", where),
            discrete_max=f.count(data, "discrete_max", where),
        )
        sketched = f.field(data, "sketch", where) is not None
        if sketched:
            sketch = f.obj(data, "sketch", where)
            stats.sketch_k = f.count(sketch, "kll_k", f"{where}.sketch")
            stats.sketch_b64 = f.string(sketch, "kll_doubles", f"{where}.sketch")
        if stats.count:
            stats.min = f.number(data, "min", where)
            stats.max = f.number(data, "max", where)
            stats.mean = f.number(data, "mean", where)
            f.number(data, "std", where)  # shown for readers; m2 is what is read back
            stats.m2 = f.number(data, "m2", where)
            if stats.min > stats.max:
                raise BaselineError(f"{where}: min {stats.min} is above max {stats.max}")
            stats.bins = NumericBins.from_json(f.obj(data, "bins", where), f"{where}.bins")
            quantiles = f.obj(data, "quantiles", where)
            stats.grid = f.increasing(f.numbers(quantiles, "grid", where), f"{where}.grid")
            stats.grid_cdf = f.numbers(quantiles, "cdf", f"{where}.quantiles")
            if not stats.grid or len(stats.grid_cdf) != len(stats.grid):
                raise BaselineError(f"{where}.quantiles: grid and cdf must have equal length")
            missing = set(stats.bins.edges or []) - set(stats.grid)
            if missing:
                raise BaselineError(f"{where}.quantiles.grid: lacks bin edges {sorted(missing)}")
            if sketched:
                stats._load_sketch(where)
        pairs = data.get("value_counts")
        if pairs is None:
            stats.value_counts = None
        elif isinstance(pairs, list) and all(
            isinstance(p, list) and len(p) == 2 and type(p[1]) is int for p in pairs
        ):
            stats.value_counts = {float(v): c for v, c in pairs}
        else:
            raise BaselineError(f"{where}.value_counts: expected [[value, count], ...] or null")
        return stats

    def _load_sketch(self, where: str) -> None:
        """Decode now, so a damaged file fails at load, not at merge."""
        if not self.sketch_b64:
            raise BaselineError(f"{where}.sketch.kll_doubles: empty sketch")
        try:
            self.sketch()
        except BaselineError as exc:
            raise BaselineError(f"{where}.sketch.kll_doubles: {exc}") from None


class ExactQuantiles:
    """The two sketch queries we use, answered exactly from sorted values."""

    def __init__(self, sorted_values: FloatArray) -> None:
        self.values = sorted_values

    def get_quantiles(self, ranks: list[float]) -> list[float]:
        # Like KLL: the smallest item whose normalised rank reaches each fraction.
        # The nudge keeps i/bins * n = 28.000000000000004 from skipping to the 29th.
        nudged = np.clip(np.asarray(ranks, dtype=np.float64) - 1e-12, 0.0, 1.0)
        return np.quantile(self.values, nudged, method="inverted_cdf").tolist()  # type: ignore[no-any-return]

    def get_cdf(self, points: list[float]) -> list[float]:
        below = np.searchsorted(self.values, points, side="right") / len(self.values)
        return [*below.tolist(), 1.0]


def _unique_inside(edges: list[float], maximum: float) -> list[float]:
    # Edges at the maximum would leave an empty last bin; ties collapse.
    return sorted({float(e) for e in edges if e < maximum})


def _clean_fractions(fractions: Any) -> list[float]:
    arr = np.clip(np.asarray(fractions, dtype=np.float64), 0.0, None)
    return [round(v, 12) for v in (arr / arr.sum()).tolist()]


def _cdf_from_fractions(fractions: list[float]) -> list[float]:
    cdf = np.cumsum(fractions).tolist()
    cdf[-1] = 1.0
    return [float(c) for c in cdf]
