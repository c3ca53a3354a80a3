from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import pytest

from sidecar.flatten import flatten


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"a": {"b": 1}}, {"a.b": 1}),
        ({"a": {"b": {"c": 1}}, "d": 2}, {"a.b.c": 1, "d": 2}),
        ({"a": [{"b": 1}], "c": None}, {"a": [{"b": 1}], "c": None}),
        ({"a": {"b": 1, "c": [1, 2]}, "d": "x"}, {"a.b": 1, "a.c": [1, 2], "d": "x"}),
        ({"a": {}, "b": 1}, {"b": 1}),
        ({"a": {1: "x", None: "y"}}, {"a.1": "x", "a.None": "y"}),
        ({"a.b": 1, "a": {"b": 2}}, {"a.b": 2}),
        ({}, {}),
    ],
)
def test_flatten_joins_nested_keys_with_dots(
    record: Mapping[str, object], expected: dict[str, object]
) -> None:
    assert flatten(record) == expected


def test_flatten_keeps_first_appearance_order_depth_first() -> None:
    record = {"z": 1, "a": {"y": 2, "b": {"x": 3}}, "c": 4}
    assert list(flatten(record)) == ["z", "a.y", "a.b.x", "c"]


def test_flatten_returns_the_same_dict_when_nothing_nests() -> None:
    record: dict[str, object] = {"a": 1, "b": [1, {"c": 2}], "d": None}
    assert flatten(record) is record


def test_flatten_copies_other_mappings_into_a_dict() -> None:
    flat = flatten(MappingProxyType({"a": 1}))
    assert type(flat) is dict
    assert flat == {"a": 1}


def test_flatten_converts_non_string_keys_at_the_top_level() -> None:
    record: dict[object, object] = {1: "x", "b": 2}
    assert flatten(record) == {"1": "x", "b": 2}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_depth", "expected"),
    [
        (0, {"a": {"b": {"c": 1}}}),
        (1, {"a.b": {"c": 1}}),
        (2, {"a.b.c": 1}),
        (3, {"a.b.c": 1}),
    ],
)
def test_flatten_keeps_objects_beyond_max_depth_as_values(
    max_depth: int, expected: dict[str, object]
) -> None:
    assert flatten({"a": {"b": {"c": 1}}}, max_depth=max_depth) == expected


def _deep(levels: int) -> dict[str, object]:
    record: dict[str, object] = {"leaf": 1}
    for _ in range(levels):
        record = {"k": record}
    return record


def test_flatten_survives_hostile_nesting_with_the_default_depth() -> None:
    flat = flatten(_deep(10_000))
    (name,) = flat
    assert name == ".".join(["k"] * 33)  # the top level plus 32 nested levels
    assert isinstance(flat[name], dict)


def test_flatten_survives_hostile_nesting_without_a_depth_limit() -> None:
    flat = flatten(_deep(10_000), max_depth=20_000)
    assert flat == {"k." * 10_000 + "leaf": 1}
