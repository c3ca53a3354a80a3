"""Why a value offends its feature: the engine's rules, one value at a time.

The engine counts offences in vectorised passes and keeps no row indices. For evidence,
the worker compares each feature's counters before and after a batch (`counters`), and
only for a feature whose counters moved does `Offences.last` look at that feature's
values again to find the offending ones, newest first. Nothing here runs when evidence
is off, and a clean batch costs one counter read per feature.

A missing value offends only a feature that training never saw missing, and an unseen
category only a feature whose vocabulary is complete: otherwise they are ordinary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any

import numpy as np

from .baseline import Feature
from .categorical import CategoricalStats, category_key
from .engine import (
    ABSENT,
    CategoricalChecker,
    Checker,
    ListChecker,
    NumericChecker,
    TimestampChecker,
)
from .sequences import list_shape, numeric_elements, shape_key
from .timestamps import parse_epoch, parse_iso

__all__ = ["REASONS", "Offences", "counters"]

LOW, HIGH = "out_of_range/low", "out_of_range/high"
REASONS = (
    "missing",
    "type_mismatch",
    "shape_mismatch",
    "nonfinite",
    LOW,
    HIGH,
    "unseen_category",
)
# The window counters that move when a value offends (FeatureWindow fields).
counters = attrgetter(
    "missing", "type_mismatch", "shape_mismatch", "nonfinite", "low", "high", "unseen"
)
_NUMBERS = frozenset({int, float})
_MISSING = frozenset({type(None), type(ABSENT)})


class Offences:
    """Finds the offending values of one feature, by its checker's rules."""

    def __init__(self, feature: Feature, checker: Checker) -> None:
        self.name = feature.name
        self.checker = checker
        self.missing_offends = feature.stats.missing == 0
        stats = feature.stats
        self.unseen_offends = isinstance(stats, CategoricalStats) and stats.vocabulary_complete
        # Counter slots (in `counters` order) whose moves are worth a look.
        self.watched = [i for i in range(len(REASONS)) if i != 0 or self.missing_offends]
        if not self.unseen_offends:
            self.watched.remove(6)

    def moved(self, before: tuple[int, ...], after: tuple[int, ...]) -> bool:
        """Whether a watched counter moved between two `counters` readings."""
        return any(after[i] != before[i] for i in self.watched)

    def last(self, column: Sequence[Any], limit: int) -> list[tuple[int, str]]:
        """(index, reason) of the last `limit` offending values in `column`, newest first."""
        checker = self.checker
        kinds = set(map(type, column))
        if isinstance(checker, NumericChecker) and not checker.empty and kinds <= _NUMBERS:
            return self._last_numbers(checker, column, limit)
        candidates: Iterable[int] = range(len(column) - 1, -1, -1)
        if isinstance(checker, CategoricalChecker) and checker.direct:
            if kinds <= checker.accepted | _MISSING:
                # Only values outside the vocabulary (unseen, null, absent) can offend.
                slots = np.fromiter(
                    map(checker.index.get, column, repeat(checker.unseen_slot)),
                    np.int64,
                    len(column),
                )
                candidates = np.flatnonzero(slots >= checker.unseen_slot)[::-1].tolist()
        found: list[tuple[int, str]] = []
        reason = self.reason
        for i in candidates:
            why = reason(column[i])
            if why is not None:
                found.append((i, why))
                if len(found) >= limit:
                    break
        return found

    def _last_numbers(
        self, checker: NumericChecker, column: Sequence[Any], limit: int
    ) -> list[tuple[int, str]]:
        """All ints and floats: one vectorised pass instead of a Python loop."""
        try:
            x = np.array(column, dtype=np.float64)
        except OverflowError:
            x = np.array([_saturated(v) for v in column], dtype=np.float64)
        bad = ~np.isfinite(x) | (x < checker.min) | (x > checker.max)
        where = np.flatnonzero(bad)[::-1][:limit].tolist()
        # Every flagged value has a reason; "nonfinite" only spells it out for mypy.
        return [(i, _number_reason(float(x[i]), checker) or "nonfinite") for i in where]

    def reason(self, value: Any) -> str | None:
        """Why the engine counts `value` against this feature; None if it does not."""
        if value is None or value is ABSENT:
            return "missing" if self.missing_offends else None
        checker = self.checker
        if isinstance(checker, NumericChecker):
            if type(value) not in _NUMBERS:
                return "type_mismatch"
            x = _saturated(value)
            if checker.empty:  # no training values: only non-finite ones are counted
                return None if math.isfinite(x) else "nonfinite"
            return _number_reason(x, checker)
        if isinstance(checker, CategoricalChecker):
            return self._category_reason(checker, value)
        if isinstance(checker, TimestampChecker):
            return None if _parses(checker, value) else "type_mismatch"
        return _list_reason(checker, value)

    def _category_reason(self, checker: CategoricalChecker, value: Any) -> str | None:
        if type(value) not in checker.accepted:
            return "type_mismatch"
        key = value if checker.direct else category_key(value)
        if self.unseen_offends and checker.index.get(key, checker.unseen_slot) == (
            checker.unseen_slot
        ):
            return "unseen_category"
        return None


def _saturated(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _number_reason(x: float, checker: NumericChecker) -> str | None:
    if not math.isfinite(x):
        return "nonfinite"
    if x < checker.min:
        return LOW
    if x > checker.max:
        return HIGH
    return None


def _parses(checker: TimestampChecker, value: Any) -> bool:
    t = type(value)
    if checker.encoding == "iso":
        return t is str and parse_iso(value) is not None
    return t in _NUMBERS and parse_epoch(value, checker.encoding) is not None


def _list_reason(checker: ListChecker, value: Any) -> str | None:
    """ListChecker's rules for one value: its shape, then its elements."""
    if type(value) is not list:
        return "type_mismatch"
    shape = list_shape(value)
    if checker.stats.shapes_complete:
        if shape_key(shape) not in checker.shapes:
            return "shape_mismatch"
    elif len(shape) not in checker.ndims or not checker.min_len <= shape[0] <= checker.max_len:
        return "shape_mismatch"
    if not value or not checker.numbers:
        return None
    elements = numeric_elements(value, len(shape))
    if elements is None:
        return "type_mismatch"
    finite = np.isfinite(elements)
    if not finite.all():
        return "nonfinite"
    if elements.min() < checker.element_min:
        return LOW
    if elements.max() > checker.element_max:
        return HIGH
    return None
