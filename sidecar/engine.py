"""Row checks and window accumulation against a baseline: numpy over columns, no I/O.

`Engine.check(rows)` extracts one column per baseline feature from a batch of
rows, classifies values by type in C-level passes (`set(map(type, col))`) and
accumulates counts with a handful of vectorised numpy calls per feature and
batch, never one numpy call per value. `Engine.close_window()` hands the
accumulated window to `report.build_report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from .baseline import Baseline, Feature
from .categorical import CategoricalStats, category_key
from .compiled import compiled
from .flatten import flatten
from .numeric import NumericStats
from .sequences import ListStats, list_shape, numeric_elements, shape_key
from .timestamps import Instant, TimestampStats, parse_epoch, parse_iso

# NumericBlock's counts in one compiled pass (sidecar/_block.c), else numpy's calls.
_count_block = compiled("_block", "count")
_count_slots = compiled("_block", "count_slots")  # CategoricalChecker.add_slots, all at once

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class _Absent:
    """Marks a key missing from a row (null values are None)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
_NUMBER_TYPES = frozenset({int, float})
_MISSING_TYPES = frozenset({type(None), _Absent})
_DICTS = frozenset({dict})
BLOCK_ROWS = 32  # rows the numeric block gathers between two pauses
# What a mismatched value was, for the diagnosis ("numbers arriving as strings").
MISMATCH_TYPES = ("number_string", "string", "int", "float", "bool", "list", "dict", "other")
_MISMATCH_SLOT = {int: 2, float: 3, bool: 4, list: 5, dict: 6}


def no_pause() -> None:
    """The default `pause` of the checks: run straight through (offline checks)."""


class FeatureWindow:
    """Counts for one feature over one window; every field is a plain sum."""

    def __init__(self, bins: int, grid: int = 0, vocabulary: int = 0) -> None:
        self.values = 0  # present, of the right type (finite or not)
        self.missing = 0
        self.absent = 0  # the key itself was missing (a subset of missing)
        self.nonfinite = 0
        self.type_mismatch = 0
        self.low = 0
        self.high = 0
        self.unseen = 0
        self.shape_mismatch = 0
        self.mismatch_types: IntArray = np.zeros(len(MISMATCH_TYPES), dtype=np.int64)
        self.bin_counts: IntArray = np.zeros(bins, dtype=np.int64)
        self.grid_counts: IntArray = np.zeros(grid + 1 if grid else 0, dtype=np.int64)
        self.vocabulary_counts: IntArray = np.zeros(vocabulary, dtype=np.int64)
        self.weekday_counts: IntArray = np.zeros(0, dtype=np.int64)
        self.finite = 0
        self.sum_dev = 0.0  # sum of (x - training mean)
        self.sumsq_dev = 0.0
        self.below_sum = 0.0  # sum of (training min - x) over x below the range
        self.above_sum = 0.0
        self.offsets: dict[str, int] = {}
        self.lengths: FeatureWindow | None = None

    def add(self, other: FeatureWindow) -> None:
        """Add another window's counts (same feature) into this one."""
        for name, value in vars(other).items():
            if name == "lengths":
                if self.lengths is not None and value is not None:
                    self.lengths.add(value)
            elif name == "offsets":
                for key, n in value.items():
                    self.offsets[key] = self.offsets.get(key, 0) + n
            else:
                setattr(self, name, getattr(self, name) + value)


class NumericChecker:
    def __init__(self, stats: NumericStats) -> None:
        self.stats = stats
        self.empty = stats.bins is None
        bins = stats.bins
        self.values_bins = None if bins is None or bins.values is None else np.array(bins.values)
        self.n_bins = 1 if bins is None else len(bins.fractions)
        self.grid = np.array(stats.grid)
        self.min, self.max, self.mean = stats.min, stats.max, stats.mean

    def new_window(self) -> FeatureWindow:
        return FeatureWindow(self.n_bins, len(self.grid))

    def check(self, column: Sequence[Any], window: FeatureWindow) -> None:
        kinds = set(map(type, column))
        if not kinds <= _NUMBER_TYPES:
            column = _drop_missing(column, kinds, window)
            numbers = [v for v in column if type(v) is int or type(v) is float]
            if len(numbers) < len(column):
                window.type_mismatch += len(column) - len(numbers)
                _count_types([v for v in column if type(v) not in _NUMBER_TYPES], window)
            column = numbers
        if column:
            self.add(_to_array(column), window)

    def add(self, x: FloatArray, window: FeatureWindow) -> None:
        window.values += len(x)
        # Finite values have a finite sum, so one reduction covers the usual batch.
        if not math.isfinite(x.sum()):
            finite_mask = np.isfinite(x)
            window.nonfinite += int(len(x) - finite_mask.sum())
            x = x[finite_mask]
        if not len(x) or self.empty:
            window.finite += len(x)
            return
        window.finite += len(x)
        # The range first: values outside the training range are the exception.
        if x.min() < self.min:
            below = x < self.min
            window.low += int(below.sum())
            window.below_sum += float((self.min - x[below]).sum())
        if x.max() > self.max:
            above = x > self.max
            window.high += int(above.sum())
            window.above_sum += float((x[above] - self.max).sum())
        self.count_buckets(x, window)
        dev = x - self.mean
        window.sum_dev += float(dev.sum())
        window.sumsq_dev += float(np.dot(dev, dev))

    def count_buckets(self, x: FloatArray, window: FeatureWindow) -> None:
        """Grid (and, for discrete features, bin) counts of finite values."""
        # One binary search per value: the grid holds every bin edge.
        buckets = np.searchsorted(self.grid, x)
        window.grid_counts += np.bincount(buckets, minlength=len(self.grid) + 1)
        if self.values_bins is not None:
            self.count_bins(buckets, x, window)

    def count_bins(self, buckets: IntArray, x: FloatArray, window: FeatureWindow) -> None:
        """Discrete: the grid is the training values; a bucket is a bin on equality."""
        hit = buckets < len(self.grid)
        hit[hit] = self.grid[buckets[hit]] == x[hit]
        buckets = np.where(hit, buckets, self.n_bins - 1)  # the bin of values never seen
        window.bin_counts += np.bincount(buckets, minlength=self.n_bins)


class NumericBlock:
    """Every numeric feature of an engine, checked as one (rows x features) array.

    The per-feature path costs a dozen numpy calls per feature and batch, which
    dominates for the small batches of a serving monitor. Here the range, moment,
    finiteness and grid counts are one call each for all features; only the bucket
    search stays per feature. It applies to batches where every value is a finite int
    or float and every row has every feature; `check` returns False for any other
    batch, untouched.
    """

    def __init__(self, checkers: Mapping[str, NumericChecker]) -> None:
        self.names = list(checkers)
        self.checkers = list(checkers.values())
        self.getter = itemgetter(*self.names)
        self.min = np.array([c.min for c in self.checkers], dtype=np.float64)
        self.max = np.array([c.max for c in self.checkers], dtype=np.float64)
        self.mean = np.array([c.mean for c in self.checkers], dtype=np.float64)
        # Grid counts of all features from one bincount: feature j's buckets are
        # offset into row j of a (features x widest grid) array.
        self.buckets = [len(c.grid) + 1 for c in self.checkers]
        self.width = max(self.buckets)
        self.offsets = (np.arange(len(self.checkers)) * self.width)[:, None]
        self.discrete = [j for j, c in enumerate(self.checkers) if c.values_bins is not None]
        # For the compiled count: every grid in one array, feature j's from starts[j].
        self.grid = np.concatenate([c.grid for c in self.checkers]).astype(np.float64)
        self.starts = np.cumsum([0, *(len(c.grid) for c in self.checkers)]).astype(np.int64)

    def check(
        self,
        rows: Sequence[dict[str, Any]],
        windows: Mapping[str, FeatureWindow],
        pause: Callable[[], None] = no_pause,
    ) -> bool:
        n, k = len(rows), len(self.checkers)
        x = np.empty((n, k), dtype=np.float64)
        # Gathered in chunks of rows, with `pause` between them: this per-value part is
        # most of the block's time, and the worker offers the GIL only where it pauses.
        for start in range(0, n, BLOCK_ROWS):
            try:
                values = list(map(self.getter, rows[start : start + BLOCK_ROWS]))
            except KeyError:
                return False
            if not set(map(type, chain.from_iterable(values))) <= _NUMBER_TYPES:
                return False
            m = len(values)
            try:
                x[start : start + m] = np.fromiter(
                    chain.from_iterable(values), np.float64, m * k
                ).reshape(m, k)
            except OverflowError:
                return False
            pause()
        if not np.isfinite(x).all():
            return False
        self.add(x, windows)
        return True

    def add(self, x: FloatArray, windows: Mapping[str, FeatureWindow]) -> None:
        """Count a (rows x features) array of finite values, columns in `names` order:
        the grid counts into the windows' arrays, then the sums folded in."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        features = [windows[name] for name in self.names]
        count = self._count_numpy if _count_block is None else self._count_compiled
        buckets, sums = count(x, features)
        n = len(x)
        low, high, below_sum, above_sum, sum_dev, sumsq_dev = sums
        for j, window in enumerate(features):
            window.values += n
            window.finite += n
            if low[j]:
                window.low += int(low[j])
                window.below_sum += below_sum[j]
            if high[j]:
                window.high += int(high[j])
                window.above_sum += above_sum[j]
            window.sum_dev += sum_dev[j]
            window.sumsq_dev += sumsq_dev[j]
        for j in self.discrete:
            self.checkers[j].count_bins(buckets[j], x[:, j], features[j])

    def _count_compiled(
        self, x: FloatArray, features: list[FeatureWindow]
    ) -> tuple[IntArray, list[list[float]]]:
        """sidecar/_block.c's one pass: (buckets per feature, the six sums per feature)."""
        n, k = x.shape
        buckets = np.empty((k, n), dtype=np.int64)
        sums = np.zeros((6, k), dtype=np.float64)
        counts = [w.grid_counts for w in features]
        _count_block(
            x, self.grid, self.starts, self.min, self.max, self.mean, buckets, counts, sums
        )
        return buckets, sums.tolist()

    def _count_numpy(
        self, x: FloatArray, features: list[FeatureWindow]
    ) -> tuple[IntArray, list[list[float]]]:
        """The same with numpy, where the extension was not built."""
        n, k = x.shape
        below, above = x < self.min, x > self.max
        low, high = below.sum(axis=0).tolist(), above.sum(axis=0).tolist()
        zeros = [0.0] * k
        below_sum = np.where(below, self.min - x, 0.0).sum(axis=0).tolist() if any(low) else zeros
        above_sum = np.where(above, x - self.max, 0.0).sum(axis=0).tolist() if any(high) else zeros
        dev = x - self.mean
        sum_dev = dev.sum(axis=0).tolist()
        sumsq_dev = np.einsum("ij,ij->j", dev, dev).tolist()
        columns = x.T.copy()  # contiguous rows of one feature for the bucket search
        # The method, not np.searchsorted: its dispatch costs as much as a short search.
        buckets = np.array(
            [c.grid.searchsorted(col) for c, col in zip(self.checkers, columns, strict=True)]
        ).reshape(k, n)
        counts = np.bincount((buckets + self.offsets).ravel(), minlength=k * self.width)
        grid_counts = counts.reshape(k, self.width)
        for j, window in enumerate(features):
            window.grid_counts += grid_counts[j, : self.buckets[j]]
        return buckets, [low, high, below_sum, above_sum, sum_dev, sumsq_dev]


def fold_slots(window: FeatureWindow, n: int, unseen: int, nulls: int, absent: int) -> None:
    """A categorical window's totals for n slots counted, of which these were unseen,
    null and absent (the vocabulary counts are added by the caller)."""
    window.missing += nulls + absent
    window.absent += absent
    window.values += n - nulls - absent
    window.unseen += unseen


class CategoricalChecker:
    def __init__(self, stats: CategoricalStats) -> None:
        self.stats = stats
        vocabulary = list(stats.vocabulary)
        self.size = len(vocabulary)
        # Slots: vocabulary..., unseen, null, absent.
        self.index: dict[Any, int] = {key: i for i, key in enumerate(vocabulary)}
        self.unseen_slot = self.size
        # Bins are derived from the vocabulary counts at report time.
        self.n_bins = len(stats.top) + 1
        self.value_type = stats.value_type
        if self.value_type == "string":
            self.accepted: frozenset[type] = frozenset({str})
        elif self.value_type == "bool":
            self.accepted = frozenset({bool})
            self.index = {key == "true": i for key, i in self.index.items() if key in _BOOLS}
        elif self.value_type == "number":
            self.accepted = frozenset({int, float})
        else:
            self.accepted = frozenset({str, int})
        self.index[None] = self.size + 1
        self.index[ABSENT] = self.size + 2
        self.direct = self.value_type in ("string", "bool")
        self.direct_types = self.accepted | _MISSING_TYPES  # columns that need no keys

    def new_window(self) -> FeatureWindow:
        return FeatureWindow(self.n_bins, vocabulary=self.size + 1)

    def check(self, column: Sequence[Any], window: FeatureWindow) -> None:
        kinds = set(map(type, column))
        if not self.direct or not kinds <= self.direct_types:
            column = self._keys(column, kinds, window)
        slots = np.fromiter(
            map(self.index.get, column, repeat(self.unseen_slot)), np.int64, len(column)
        )
        self.add_slots(slots, window)

    def add_slots(self, slots: IntArray, window: FeatureWindow) -> None:
        """Count values by their slot in `index` (the unseen slot for the rest)."""
        counts = np.bincount(slots, minlength=self.size + 3)
        # Python ints in one call: numpy scalars cost more than the counting.
        unseen, nulls, absent = counts[self.size :].tolist()
        fold_slots(window, len(slots), unseen, nulls, absent)
        window.vocabulary_counts += counts[: self.size + 1]

    def _keys(self, column: Sequence[Any], kinds: set[type], window: FeatureWindow) -> list[Any]:
        """Slow path: vocabulary keys for accepted values; mismatches dropped and counted."""
        accepted = self.accepted
        keys: list[Any] = []
        mismatched = []
        for v in column:
            t = type(v)
            if t in accepted:
                keys.append(v if self.direct else category_key(v))
            elif v is None or v is ABSENT:
                keys.append(v)
            else:
                mismatched.append(v)
        window.type_mismatch += len(mismatched)
        _count_types(mismatched, window)
        return keys


_BOOLS = ("true", "false")


class TimestampChecker:
    def __init__(self, stats: TimestampStats) -> None:
        self.stats = stats
        self.encoding = stats.encoding
        self.known_offsets = set(stats.offsets)

    def new_window(self) -> FeatureWindow:
        window = FeatureWindow(24)
        window.weekday_counts = np.zeros(7, dtype=np.int64)
        return window

    def check(self, column: Sequence[Any], window: FeatureWindow) -> None:
        kinds = set(map(type, column))
        if kinds & _MISSING_TYPES:
            column = _drop_missing(column, kinds, window)
        instants: list[Instant] = []
        mismatched = []
        iso = self.encoding == "iso"
        for v in column:
            t = type(v)
            instant: Instant | None = None
            if iso and t is str:
                instant = parse_iso(v)
            elif not iso and (t is int or t is float):
                instant = parse_epoch(v, self.encoding)
            if instant is None:
                mismatched.append(v)
            else:
                instants.append(instant)
        window.type_mismatch += len(mismatched)
        _count_types(mismatched, window)
        if not instants:
            return
        window.values += len(instants)
        window.bin_counts += np.bincount([i.hour for i in instants], minlength=24)
        window.weekday_counts += np.bincount([i.weekday for i in instants], minlength=7)
        for instant in instants:
            key = instant.offset if instant.offset in self.known_offsets else "other"
            window.offsets[key] = window.offsets.get(key, 0) + 1


class ListChecker:
    def __init__(self, stats: ListStats) -> None:
        self.stats = stats
        self.lengths = NumericChecker(stats.lengths)
        self.shapes = set(stats.shapes)
        self.ndims = {len(key.split("x")) for key in stats.shapes}
        self.min_len, self.max_len = stats.lengths.min, stats.lengths.max
        self.numbers = stats.element_type == "number"
        self.element_min, self.element_max = stats.element_min, stats.element_max
        # Trained on flat lists (token ids, embeddings): the batch path applies.
        self.flat = self.ndims == {1}
        self.flat_lengths = np.array(
            sorted(int(key) for key in stats.shapes if key.isdigit()), dtype=np.int64
        )

    def new_window(self) -> FeatureWindow:
        window = FeatureWindow(0)
        window.lengths = self.lengths.new_window()
        return window

    def check(self, column: Sequence[Any], window: FeatureWindow) -> None:
        kinds = set(map(type, column))
        if kinds & _MISSING_TYPES:
            column = _drop_missing(column, kinds, window)
        lists = [v for v in column if type(v) is list]
        if len(lists) < len(column):
            window.type_mismatch += len(column) - len(lists)
            _count_types([v for v in column if type(v) is not list], window)
        if not lists:
            return
        window.values += len(lists)
        lengths = np.fromiter(map(len, lists), np.int64, len(lists))
        if window.lengths is not None:
            self.lengths.add(lengths.astype(np.float64), window.lengths)
        if self.flat and set(map(type, chain.from_iterable(lists))) <= _NUMBER_TYPES:
            try:
                self._check_flat(lists, lengths, window)
                return
            except OverflowError:
                pass  # integers beyond float64: the per-row path saturates them
        for value in lists:
            self._check_one(value, window)

    def _check_flat(self, lists: list[Any], lengths: IntArray, window: FeatureWindow) -> None:
        """Flat lists of numbers, vectorised over the whole batch."""
        if self.stats.shapes_complete:
            window.shape_mismatch += int((~np.isin(lengths, self.flat_lengths)).sum())
        else:
            window.shape_mismatch += int(
                ((lengths < self.min_len) | (lengths > self.max_len)).sum()
            )
        total = int(lengths.sum())
        if not total or not self.numbers:
            return
        elements = np.fromiter(chain.from_iterable(lists), np.float64, total)
        starts = (np.cumsum(lengths) - lengths)[lengths > 0]
        finite = np.isfinite(elements)
        if not finite.all():
            window.nonfinite += int((np.add.reduceat(~finite, starts) > 0).sum())
            elements[~finite] = self.element_min  # neutral for the range checks below
        window.low += int((np.minimum.reduceat(elements, starts) < self.element_min).sum())
        window.high += int((np.maximum.reduceat(elements, starts) > self.element_max).sum())

    def _check_one(self, value: list[Any], window: FeatureWindow) -> None:
        shape = list_shape(value)
        if self.stats.shapes_complete:
            if shape_key(shape) not in self.shapes:
                window.shape_mismatch += 1
        elif len(shape) not in self.ndims or not self.min_len <= shape[0] <= self.max_len:
            window.shape_mismatch += 1
        if not value or not self.numbers:
            return
        elements = numeric_elements(value, len(shape))
        if elements is None:
            window.type_mismatch += 1
            return
        finite = np.isfinite(elements)
        if not finite.all():
            window.nonfinite += 1
            elements = elements[finite]
        if len(elements):
            if elements.min() < self.element_min:
                window.low += 1
            if elements.max() > self.element_max:
                window.high += 1


Checker = NumericChecker | CategoricalChecker | TimestampChecker | ListChecker


def make_checker(feature: Feature) -> Checker:
    stats = feature.stats
    if isinstance(stats, NumericStats):
        return NumericChecker(stats)
    if isinstance(stats, CategoricalStats):
        return CategoricalChecker(stats)
    if isinstance(stats, TimestampStats):
        return TimestampChecker(stats)
    return ListChecker(stats)


def _getter(names: list[str]) -> itemgetter[Any] | None:
    """itemgetter of 2+ names returns tuples, which zip(*) transposes into columns."""
    return itemgetter(*names) if len(names) >= 2 else None


def _drop_missing(column: Sequence[Any], kinds: set[type], window: FeatureWindow) -> Sequence[Any]:
    if not kinds & _MISSING_TYPES:
        return column
    absent = column.count(ABSENT)
    nulls = column.count(None)
    window.missing += absent + nulls
    window.absent += absent
    return [v for v in column if v is not None and v is not ABSENT]


def _count_types(values: Sequence[Any], window: FeatureWindow) -> None:
    """Count mismatched values by type (MISMATCH_TYPES); strings split on whether
    they spell a number."""
    for v in values:
        t = type(v)
        if t is str:
            window.mismatch_types[1 - _spells_number(v)] += 1
        else:
            window.mismatch_types[_MISMATCH_SLOT.get(t, 7)] += 1


def _spells_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _to_array(column: Sequence[Any]) -> FloatArray:
    try:
        return np.array(column, dtype=np.float64)
    except OverflowError:
        return np.array([_big(v) for v in column], dtype=np.float64)


def _big(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return float("inf") if v > 0 else float("-inf")


class Window:
    """All feature windows plus row-level counts for one window."""

    def __init__(self, checkers: Mapping[str, Checker]) -> None:
        self.rows = 0
        self.rejected_rows = 0  # items that were not JSON objects
        self.keys = 0  # total keys over accepted rows (to count unknown features)
        self.features = {name: c.new_window() for name, c in checkers.items()}

    @property
    def unknown_features(self) -> int:
        """Key occurrences not in the baseline: all keys minus the known ones present."""
        known = sum(self.rows - w.absent for w in self.features.values())
        return self.keys - known

    def add(self, other: Window) -> None:
        """Add another window of the same engine into this one (running totals)."""
        self.rows += other.rows
        self.rejected_rows += other.rejected_rows
        self.keys += other.keys
        for name, window in self.features.items():
            window.add(other.features[name])


class Engine:
    """Checks batches of rows against one baseline and accumulates a window."""

    def __init__(
        self, baseline: Baseline, *, roles: Sequence[str] = ("input", "prediction")
    ) -> None:
        self.baseline = baseline
        # Requests carry inputs; model outputs (role "prediction") come from responses.
        self.checkers: dict[str, Checker] = {
            name: make_checker(feature)
            for name, feature in baseline.features.items()
            if feature.role in roles
        }
        self.nested = any("." in name for name in baseline.features)
        self.window = Window(self.checkers)
        # Baseline features left out by role are known keys, not unknown ones.
        self.skipped = [name for name in baseline.features if name not in self.checkers]
        numeric = {
            name: c
            for name, c in self.checkers.items()
            if isinstance(c, NumericChecker) and not c.empty
        }
        self.block = NumericBlock(numeric) if len(numeric) >= 2 else None
        # The features the block does not check, and their column getter.
        self._rest = [name for name in self.checkers if name not in numeric or not self.block]
        self._rest_getter = _getter(self._rest)
        self._getter = _getter(list(self.checkers))
        self._skip_fast = 0
        # check_columns' layout: numeric features, then string categorical ones.
        self.numbers = numeric
        self.categories = {
            name: c
            for name, c in self.checkers.items()
            if isinstance(c, CategoricalChecker) and c.value_type == "string"
        }
        self._category_sizes = np.array([c.size for c in self.categories.values()], np.int64)

    @property
    def takes_columns(self) -> bool:
        """Whether every checked feature is one `check_columns` takes: numeric (with a
        training range) or a string category, with no dotted (nested) names."""
        return not self.nested and len(self.numbers) + len(self.categories) == len(self.checkers)

    def check(self, rows: Sequence[Any], pause: Callable[[], None] = no_pause) -> None:
        """Accumulate a batch of rows (dicts) into the current window. `pause` is called
        between features (the worker offers the GIL there when its slice is up, or
        steps aside for the serving thread)."""
        if not set(map(type, rows)) <= _DICTS:
            kept = [row for row in rows if isinstance(row, dict)]
            self.window.rejected_rows += len(rows) - len(kept)
            rows = kept
        if not rows:
            return
        if self.nested:
            rows = [flatten(row) for row in rows]
        window = self.window
        n = len(rows)
        window.rows += n
        keys = sum(map(len, rows))
        features = window.features.values()
        absent_before = sum(w.absent for w in features)
        # Huge finite values may overflow the squared sums: inf is the honest result.
        with np.errstate(over="ignore", invalid="ignore"):
            if self.block is not None and self.block.check(rows, window.features, pause):
                names, getter = self._rest, self._rest_getter
            else:
                names, getter = list(self.checkers), self._getter
            for name, column in zip(names, self._columns(rows, names, getter), strict=True):
                pause()
                self.checkers[name].check(column, window.features[name])
        present = n * len(self.checkers) - (sum(w.absent for w in features) - absent_before)
        if keys > present:  # keys beyond the checked features: skipped ones are not unknown
            for name in self.skipped:
                keys -= sum(map(dict.__contains__, rows, repeat(name, n)))
        window.keys += keys

    def check_columns(
        self, numbers: FloatArray, slots: IntArray, pause: Callable[[], None] = no_pause
    ) -> None:
        """Accumulate rows already read into columns (sidecar.records), each row holding
        every feature once: `numbers` the finite values of `self.numbers` (rows x
        features), `slots` each of `self.categories`' values' slot in its checker's
        index. The same counts as `check` of the same rows as dicts."""
        window = self.window
        n = len(numbers)
        window.rows += n
        window.keys += n * len(self.checkers)
        features = window.features
        with np.errstate(over="ignore", invalid="ignore"):
            if self.block is not None:
                self.block.add(numbers, features)
            else:
                for j, (name, number) in enumerate(self.numbers.items()):
                    number.add(numbers[:, j], features[name])
            pause()
            if _count_slots is not None and self.categories:
                self._add_slots_compiled(slots, features)
            else:
                for j, (name, category) in enumerate(self.categories.items()):
                    category.add_slots(slots[:, j], features[name])

    def _add_slots_compiled(self, slots: IntArray, features: Mapping[str, FeatureWindow]) -> None:
        """Every categorical column's `add_slots` in one compiled pass (sidecar/_block.c):
        the known and unseen slots counted straight into the windows' arrays."""
        windows = [features[name] for name in self.categories]
        totals = np.zeros((len(windows), 3), dtype=np.int64)
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        counts = [w.vocabulary_counts for w in windows]
        _count_slots(slots, self._category_sizes, counts, totals)
        for window, (unseen, nulls, absent) in zip(windows, totals.tolist(), strict=True):
            fold_slots(window, len(slots), unseen, nulls, absent)

    def _columns(
        self,
        rows: Sequence[dict[str, Any]],
        names: list[str],
        getter: itemgetter[Any] | None,
    ) -> list[Sequence[Any]]:
        """One sequence of values per named feature (ABSENT where a key is missing)."""
        if getter is not None and self._skip_fast <= 0:
            try:
                # C-level gather and transpose; fails on the first row lacking a key.
                return list(zip(*map(getter, rows), strict=True))
            except KeyError:
                self._skip_fast = 16  # rows here lack keys: use the safe path for a while
        self._skip_fast -= 1
        n = len(rows)
        get = dict.get
        return [list(map(get, rows, repeat(name, n), repeat(ABSENT, n))) for name in names]

    def close_window(self) -> Window:
        """Return the finished window and start a new one."""
        finished, self.window = self.window, Window(self.checkers)
        return finished
