"""Typed field access for validating baseline JSON, with errors that name the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class BaselineError(ValueError):
    """A baseline file or object is invalid; the message names the file and field."""


def field(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise BaselineError(f"{where}: missing field {key!r}")
    return data[key]


def obj(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = field(data, key, where)
    if not isinstance(value, Mapping):
        raise BaselineError(f"{where}.{key}: expected an object, got {type(value).__name__}")
    return value


def count(data: Mapping[str, Any], key: str, where: str) -> int:
    value = field(data, key, where)
    if type(value) is not int or value < 0:
        raise BaselineError(f"{where}.{key}: expected a non-negative integer, got {value!r}")
    return value


def number(data: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> float:
    """A finite number; with optional=True, null is read as NaN (for empty features)."""
    value = field(data, key, where)
    if value is None and optional:
        return math.nan
    if type(value) not in (int, float) or not math.isfinite(value):
        raise BaselineError(f"{where}.{key}: expected a finite number, got {value!r}")
    return float(value)


def boolean(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = field(data, key, where)
    if type(value) is not bool:
        raise BaselineError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def string(data: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...] = ()) -> str:
    value = field(data, key, where)
    if not isinstance(value, str):
        raise BaselineError(f"{where}.{key}: expected a string, got {value!r}")
    if choices and value not in choices:
        raise BaselineError(f"{where}.{key}: expected one of {', '.join(choices)}; got {value!r}")
    return value


def numbers(data: Mapping[str, Any], key: str, where: str) -> list[float]:
    value = field(data, key, where)
    if not isinstance(value, list):
        raise BaselineError(f"{where}.{key}: expected a list of numbers")
    for i, item in enumerate(value):
        if type(item) not in (int, float) or not math.isfinite(item):
            raise BaselineError(f"{where}.{key}[{i}]: expected a finite number, got {item!r}")
    return [float(v) for v in value]


def counts_map(data: Mapping[str, Any], key: str, where: str) -> dict[str, int]:
    value = obj(data, key, where)
    for name, c in value.items():
        if type(c) is not int or c < 0:
            raise BaselineError(f"{where}.{key}[{name!r}]: expected a non-negative integer")
    return dict(value)


def fractions(values: list[float], where: str) -> list[float]:
    """Bin fractions must be non-negative and sum to 1 (to rounding)."""
    if any(v < 0 for v in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise BaselineError(f"{where}: fractions must be non-negative and sum to 1")
    return values


def increasing(values: list[float], where: str) -> list[float]:
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise BaselineError(f"{where}: values must be strictly increasing")
    return values
