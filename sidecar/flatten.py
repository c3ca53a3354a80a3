"""Nested records -> flat feature names: `{"a": {"b": 1}}` becomes `{"a.b": 1}`.

The profiler and the serving-side engine both call `flatten`, so a training column
and a serving feature get the same name however deeply the payload nests it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["flatten"]


def flatten(record: Mapping[str, object], *, max_depth: int = 32) -> dict[str, object]:
    """Join nested dict keys with dots; every other value (lists included) is kept as is.

    When no value is a dict and every key is a string the input dict itself is
    returned (a shallow copy for other mappings), so callers must not mutate the
    result. Dicts nested deeper than `max_depth` levels are kept whole under their
    dotted prefix, and an empty dict contributes no names (`{"a": {}}` has no
    features, like `{}`). Non-string keys are converted with `str()`. When two paths
    give the same name (`{"a.b": 1, "a": {"b": 2}}`) the later one wins.
    """
    for key, value in record.items():
        if isinstance(value, dict) or type(key) is not str:
            return _flatten_nested(record, max_depth)
    return record if isinstance(record, dict) else dict(record)


def _flatten_nested(record: Mapping[str, object], max_depth: int) -> dict[str, object]:
    # An explicit stack instead of recursion: hostile nesting cannot exhaust the
    # interpreter stack whatever max_depth is, and key order stays depth-first.
    out: dict[str, object] = {}
    stack: list[tuple[str, Iterator[tuple[Any, object]]]] = [("", iter(record.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            name = prefix + (key if type(key) is str else str(key))
            if isinstance(value, dict) and len(stack) <= max_depth:
                stack.append((name + ".", iter(value.items())))
                break
            out[name] = value
        else:
            stack.pop()
    return out
