"""Engine throughput: CPU per row for 32-feature rows, from dicts and from JSON bytes.

Prints one table. Variants run interleaved, several rounds, and the table shows
medians, so machine noise hits every variant alike.

    python bench/engine_throughput.py [--rows 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson

from sidecar.baseline import Baseline
from sidecar.engine import Engine
from sidecar.profile import profile_records

NUMERIC = 24
CATEGORICAL = 8
BATCH = 1000


def scalar_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """24 numeric + 8 categorical features: a typical tabular model's request."""
    rng = np.random.default_rng(seed)
    nums = rng.normal(size=(n, NUMERIC)) * 10 + 50
    cats = rng.integers(0, 40, size=(n, CATEGORICAL))
    rows = []
    for i in range(n):
        row: dict[str, Any] = {f"num_{j}": float(nums[i, j]) for j in range(NUMERIC)}
        row.update({f"cat_{j}": f"value_{cats[i, j]}" for j in range(CATEGORICAL)})
        rows.append(row)
    return rows


def kind_rows(kind: str, n: int, seed: int) -> list[dict[str, Any]]:
    """One-feature rows, to price each kind of feature on its own."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    if kind == "numeric":
        return [{"x": float(v)} for v in rng.normal(size=n)]
    if kind == "categorical":
        return [{"x": f"v{v}"} for v in rng.integers(0, 40, n)]
    if kind == "timestamp":
        return [
            {"x": (start + timedelta(seconds=int(s))).isoformat()}
            for s in rng.integers(0, 10**7, n)
        ]
    return [{"x": rng.integers(0, 5000, int(k)).tolist()} for k in rng.integers(5, 64, n)]


def cpu_per_row(work: Callable[[], int]) -> float:
    start = time.process_time()
    rows = work()
    return (time.process_time() - start) / rows * 1e6


def check_dicts(baseline: Baseline, rows: list[dict[str, Any]]) -> Callable[[], int]:
    def run() -> int:
        engine = Engine(baseline)
        for i in range(0, len(rows), BATCH):
            engine.check(rows[i : i + BATCH])
        return len(rows)

    return run


def check_bytes(baseline: Baseline, bodies: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        engine = Engine(baseline)
        loads = orjson.loads
        for i in range(0, len(bodies), BATCH):
            engine.check([loads(b) for b in bodies[i : i + BATCH]])
        return len(bodies)

    return run


def naive_per_row(baseline: Baseline, rows: list[dict[str, Any]]) -> Callable[[], int]:
    """The design we avoid: numpy calls per row and per value."""
    features = baseline.features

    def run() -> int:
        counts: dict[str, np.ndarray[Any, Any]] = {}
        for row in rows:
            for name, feat in features.items():
                value = row.get(name)
                stats: Any = feat.stats
                if feat.kind == "numeric":
                    arr = np.asarray([value], dtype=np.float64)
                    _ = np.isfinite(arr).all(), (arr < stats.min).any(), (arr > stats.max).any()
                    idx = np.searchsorted(np.asarray(stats.bins.edges), arr)
                    counts.setdefault(name, np.zeros(len(stats.bins.fractions)))[idx] += 1
                else:
                    idx = np.asarray([stats.top.index(value) if value in stats.top else -1])
                    counts.setdefault(name, np.zeros(len(stats.top) + 1))[idx] += 1
        return len(rows)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    baseline = profile_records(scalar_rows(50_000, seed=1))
    rows = scalar_rows(args.rows, seed=2)
    bodies = [orjson.dumps(r) for r in rows]
    naive_rows = rows[: max(1, args.rows // 20)]
    variants: dict[str, Callable[[], int]] = {
        "engine, parsed dicts": check_dicts(baseline, rows),
        "engine, raw JSON bytes (orjson + check)": check_bytes(baseline, bodies),
        "naive per-row numpy (for contrast)": naive_per_row(baseline, naive_rows),
    }
    for kind in ("numeric", "categorical", "timestamp", "list"):
        kind_baseline = profile_records(kind_rows(kind, 20_000, seed=1))
        variants[f"one {kind} feature, parsed dicts"] = check_dicts(
            kind_baseline, kind_rows(kind, args.rows, seed=2)
        )
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved rounds
        for name, work in variants.items():
            results[name].append(cpu_per_row(work))

    print(
        f"engine CPU per row: {NUMERIC} numeric + {CATEGORICAL} categorical features, "
        f"{args.rows} rows, batches of {BATCH}, median of {args.rounds} interleaved rounds"
    )
    print(f"{'variant':<44} {'us/row':>9} {'rows/s':>11} {'min..max us':>14}")
    for name, samples in results.items():
        med = statistics.median(samples)
        print(
            f"{name:<44} {med:>9.2f} {1e6 / med:>11,.0f} {min(samples):>6.2f}..{max(samples):<6.2f}"
        )
    ratio = statistics.median(results["naive per-row numpy (for contrast)"]) / statistics.median(
        results["engine, parsed dicts"]
    )
    print(f"naive / engine (dicts): {ratio:.0f}x")


if __name__ == "__main__":
    main()
