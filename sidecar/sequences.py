"""Training statistics of list-valued features: token ids, embeddings, tensors."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _fields as f
from ._fields import BaselineError
from .numeric import NumericStats

MAX_SHAPES = 100
ELEMENT_TYPES = ("number", "string", "empty")


def list_shape(value: list[Any]) -> tuple[int, ...]:
    """Shape along the first element at each level: cheap, exact for rectangular data."""
    shape = []
    node: Any = value
    while isinstance(node, list):
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    return tuple(shape)


def shape_key(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def numeric_elements(value: list[Any], ndim: int) -> np.ndarray[Any, Any] | None:
    """All elements as float64, or None when they are not all numbers (or ragged)."""
    if ndim == 1:
        if not all(type(v) in (int, float) for v in value):
            return None
        try:
            return np.array(value, dtype=np.float64)
        except OverflowError:
            return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    return arr.ravel()


@dataclass
class ListStats:
    """Length distribution (binned like a numeric feature), shapes and element range."""

    element_type: str = "empty"
    count: int = 0
    missing: int = 0
    type_mismatch: int = 0
    lengths: NumericStats = field(default_factory=NumericStats)
    shapes: Counter[str] = field(default_factory=Counter)
    shapes_complete: bool = True
    element_count: int = 0
    element_nonfinite: int = 0
    element_min: float = math.inf
    element_max: float = -math.inf
    element_integer: bool = True

    def add_shape(self, key: str) -> None:
        if key in self.shapes or len(self.shapes) < MAX_SHAPES:
            self.shapes[key] += 1
        else:
            self.shapes_complete = False

    def add_elements(self, elements: np.ndarray[Any, Any]) -> None:
        finite = elements[np.isfinite(elements)]
        self.element_nonfinite += len(elements) - len(finite)
        if not len(finite):
            return
        self.element_count += len(finite)
        self.element_min = min(self.element_min, float(finite.min()))
        self.element_max = max(self.element_max, float(finite.max()))
        if self.element_integer and not bool((finite == np.floor(finite)).all()):
            self.element_integer = False

    def merge(self, other: ListStats) -> None:
        if self.element_type == "empty":
            self.element_type = other.element_type
        elif other.element_type not in ("empty", self.element_type):
            raise BaselineError(
                f"cannot merge lists of {self.element_type} with lists of {other.element_type}"
            )
        self.count += other.count
        self.missing += other.missing
        self.type_mismatch += other.type_mismatch
        self.lengths.merge(other.lengths)
        for key, c in other.shapes.items():
            if key in self.shapes or len(self.shapes) < MAX_SHAPES:
                self.shapes[key] += c
            else:
                self.shapes_complete = False
        self.shapes_complete = self.shapes_complete and other.shapes_complete
        self.element_count += other.element_count
        self.element_nonfinite += other.element_nonfinite
        self.element_min = min(self.element_min, other.element_min)
        self.element_max = max(self.element_max, other.element_max)
        self.element_integer = self.element_integer and other.element_integer

    def derive(self, bins: int) -> None:
        self.lengths.derive(bins)
        self.shapes = Counter(dict(sorted(self.shapes.items(), key=lambda kv: -kv[1])))

    def to_json(self) -> dict[str, Any]:
        has_elements = self.element_count > 0
        return {
            "count": self.count,
            "missing": self.missing,
            "type_mismatch": self.type_mismatch,
            "element_type": self.element_type,
            "shapes": dict(self.shapes),
            "shapes_complete": self.shapes_complete,
            "element": {
                "count": self.element_count,
                "nonfinite": self.element_nonfinite,
                "min": self.element_min if has_elements else None,
                "max": self.element_max if has_elements else None,
                "integer": self.element_integer,
            },
            "length": self.lengths.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> ListStats:
        element = f.obj(data, "element", where)
        ew = f"{where}.element"
        stats = cls(
            element_type=f.string(data, "element_type", where, ELEMENT_TYPES),
            count=f.count(data, "count", where),
            missing=f.count(data, "missing", where),
            type_mismatch=f.count(data, "type_mismatch", where),
            lengths=NumericStats.from_json(f.obj(data, "length", where), f"{where}.length"),
            shapes=Counter(f.counts_map(data, "shapes", where)),
            shapes_complete=f.boolean(data, "shapes_complete", where),
            element_count=f.count(element, "count", ew),
            element_nonfinite=f.count(element, "nonfinite", ew),
            element_integer=f.boolean(element, "integer", ew),
        )
        if stats.element_count:
            stats.element_min = f.number(element, "min", ew)
            stats.element_max = f.number(element, "max", ew)
        return stats
