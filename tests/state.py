"""A Monitor's whole state as a flat dict, for tests that compare two ways of counting."""

from __future__ import annotations

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
        "bytes": monitor._bytes_out,
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
