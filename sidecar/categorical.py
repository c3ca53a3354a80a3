"""Training statistics of a categorical feature: vocabulary, top-K bins, `__other__`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _fields as f
from ._fields import BaselineError

OTHER = "__other__"
# "text": from untyped sources (CSV), where a serving int may spell a category.
VALUE_TYPES = ("string", "bool", "number", "text")


def category_key(value: object) -> str:
    """Vocabulary key of a value: booleans as JSON spells them, strings as they are."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


@dataclass
class CategoricalStats:
    """Exact vocabulary up to `vocabulary_cap` distinct values, so "unseen" is exact.

    Past the cap the rarest values are pruned (their mass goes to `other_count`) and
    the vocabulary is marked incomplete: unseen-category counts are then not exact
    and the engine reports them as unknown rather than guessing.
    """

    vocabulary_cap: int = 10_000
    top_k: int = 20
    value_type: str = "string"
    count: int = 0
    missing: int = 0
    type_mismatch: int = 0
    vocabulary: Counter[str] = field(default_factory=Counter)
    vocabulary_complete: bool = True
    other_count: int = 0
    top: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)

    def bin_of_vocabulary(self) -> npt.NDArray[np.int64]:
        """Bin of each vocabulary entry (top-K index, else `__other__`), plus a last
        entry for unseen values, which also fall in `__other__`."""
        top = {key: i for i, key in enumerate(self.top)}
        other = len(self.top)
        bins = [top.get(key, other) for key in self.vocabulary]
        return np.array([*bins, other], dtype=np.int64)

    def update(self, keys: Iterable[str]) -> None:
        before = self.vocabulary.total()
        self.vocabulary.update(keys)
        self.count += self.vocabulary.total() - before
        # Prune lazily at 2x the cap so streaming stays cheap.
        if len(self.vocabulary) > 2 * self.vocabulary_cap:
            self._prune()

    def _prune(self) -> None:
        if len(self.vocabulary) <= self.vocabulary_cap:
            return
        kept = self.vocabulary.most_common(self.vocabulary_cap)
        self.other_count += self.vocabulary.total() - sum(c for _, c in kept)
        self.vocabulary = Counter(dict(kept))
        self.vocabulary_complete = False

    def merge(self, other: CategoricalStats) -> None:
        if other.value_type != self.value_type and other.count and self.count:
            raise BaselineError(
                f"cannot merge a {self.value_type} categorical with a {other.value_type} one"
            )
        if not self.count:
            self.value_type = other.value_type
        self.count += other.count
        self.missing += other.missing
        self.type_mismatch += other.type_mismatch
        self.vocabulary.update(other.vocabulary)
        self.other_count += other.other_count
        self.vocabulary_complete = self.vocabulary_complete and other.vocabulary_complete
        self._prune()

    def derive(self) -> None:
        self._prune()
        ranked = sorted(self.vocabulary.items(), key=lambda kv: (-kv[1], kv[0]))
        self.vocabulary = Counter(dict(ranked))
        self.top = [k for k, _ in ranked[: self.top_k]]
        if self.count:
            top_mass = [self.vocabulary[k] / self.count for k in self.top]
            self.fractions = [*top_mass, max(0.0, 1.0 - sum(top_mass))]
        else:
            self.fractions = []

    def to_json(self) -> dict[str, Any]:
        return {
            "value_type": self.value_type,
            "count": self.count,
            "missing": self.missing,
            "type_mismatch": self.type_mismatch,
            "distinct": len(self.vocabulary),
            "vocabulary_complete": self.vocabulary_complete,
            "vocabulary_cap": self.vocabulary_cap,
            "other_count": self.other_count,
            "top_k": self.top_k,
            "bins": {"values": [*self.top, OTHER], "fractions": self.fractions},
            "vocabulary": dict(self.vocabulary),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> CategoricalStats:
        stats = cls(
            vocabulary_cap=f.count(data, "vocabulary_cap", where),
            top_k=f.count(data, "top_k", where),
            value_type=f.string(data, "value_type", where, VALUE_TYPES),
            count=f.count(data, "count", where),
            missing=f.count(data, "missing", where),
            type_mismatch=f.count(data, "type_mismatch", where),
            vocabulary=Counter(f.counts_map(data, "vocabulary", where)),
            vocabulary_complete=f.boolean(data, "vocabulary_complete", where),
            other_count=f.count(data, "other_count", where),
        )
        if stats.vocabulary.total() + stats.other_count != stats.count:
            raise BaselineError(
                f"{where}.vocabulary: counts add up to "
                f"{stats.vocabulary.total() + stats.other_count}, but count is {stats.count}"
            )
        bins = f.obj(data, "bins", where)
        values = f.field(bins, "values", f"{where}.bins")
        fractions = f.numbers(bins, "fractions", f"{where}.bins")
        if stats.count:
            f.fractions(fractions, f"{where}.bins.fractions")
        if not isinstance(values, list) or not values or values[-1] != OTHER:
            raise BaselineError(f"{where}.bins.values: expected top values then {OTHER!r}")
        if stats.count and len(values) != len(fractions):
            raise BaselineError(f"{where}.bins: values and fractions differ in length")
        for v in values[:-1]:
            if v not in stats.vocabulary:
                raise BaselineError(f"{where}.bins.values: {v!r} is not in the vocabulary")
        stats.top = list(values[:-1])
        stats.fractions = fractions
        return stats
