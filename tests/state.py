"""A Monitor's whole state as a flat dict, for tests that compare two ways of counting."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sidecar.worker import Monitor


def monitor_state(monitor: Monitor) -> dict[str, Any]:
    """Counts, bytes, and every field of every feature window, arrays as lists."""
    counts = monitor.counts
    out: dict[str, Any] = {
        "checked": counts.checked,
        "rejected": counts.rejected,
        "errors": counts.errors,
        "queued bytes": monitor._queue.bytes,
    }
    for engine in (monitor.requests, monitor.responses):
        window = engine.window
        out[f"rows {sorted(engine.checkers)}"] = (window.rows, window.rejected_rows, window.keys)
        for name, w in window.features.items():
            for key, value in vars(w).items():
                if key != "lengths":
                    out[f"{name}.{key}"] = (
                        value.tolist() if isinstance(value, np.ndarray) else value
                    )
    return out


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two `monitor_state`s hold the same counts; sums of floats may differ in the last
    bits (rows in columns and rows as dicts are added up in other groupings)."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert math.isclose(a[key], b[key], rel_tol=1e-9, abs_tol=1e-9), key
        else:
            assert a[key] == b[key], key
