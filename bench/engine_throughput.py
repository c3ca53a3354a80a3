"""Engine throughput: CPU per row for 32-feature rows, from dicts and from JSON bytes.

Prints one table. Variants run interleaved, several rounds, and the table shows
medians, so machine noise hits every variant alike.

With --evidence, the variants are instead the engine with evidence off and on (the
worker's `Recorder.check` around `Engine.check`) on clean rows, rows of which 1% offend,
and a flood where every value of every row offends; the ratios are per round, on/off,
of runs next to each other. `--batch 256` matches the worker's batches.

    python bench/engine_throughput.py [--rows 20000] [--rounds 7] [--batch 1000] [--evidence]
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
from sidecar.evidence import EvidenceLog, EvidenceOptions, Recorder, Redactor
from sidecar.profile import profile_records

NUMERIC = 24
CATEGORICAL = 8
BATCH = 1000  # --batch


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


def offending(rows: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """A copy of rows where `share` of them have one numeric value far above its range
    and one unseen category; share 1.0 is a flood: every value of every row offends."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        row = dict(row)
        if share >= 1.0:
            row.update({f"num_{j}": 1e9 for j in range(NUMERIC)})
            row.update({f"cat_{j}": "never seen" for j in range(CATEGORICAL)})
        elif rng.random() < share:
            row[f"num_{rng.integers(NUMERIC)}"] = 1e9
            row[f"cat_{rng.integers(CATEGORICAL)}"] = "never seen"
        out.append(row)
    return out


def check_with_evidence(baseline: Baseline, rows: list[dict[str, Any]]) -> Callable[[], int]:
    """What the worker does with evidence on: the recorder around the engine."""
    ids = [f"req-{i}" for i in range(len(rows))]

    def run() -> int:
        engine = Engine(baseline)
        options = EvidenceOptions()
        log = EvidenceLog(options.per_feature, options.max_total)
        recorder = Recorder(engine, baseline, log, Redactor(options, baseline.features))
        now = time.time()
        for i in range(0, len(rows), BATCH):
            recorder.check(rows[i : i + BATCH], ids[i : i + BATCH], now)
        return len(rows)

    return run


def evidence_table(baseline: Baseline, rows: list[dict[str, Any]], rounds: int) -> None:
    """Evidence off vs on, interleaved: per round one run of each, next to each other."""
    cases = {
        "clean rows": rows,
        "1% of rows offend": offending(rows, 0.01, seed=3),
        "flood: every value offends": offending(rows, 1.0, seed=3),
    }
    runs = {
        name: (check_dicts(baseline, case), check_with_evidence(baseline, case))
        for name, case in cases.items()
    }
    off: dict[str, list[float]] = {name: [] for name in cases}
    on: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (without, with_evidence) in runs.items():
            off[name].append(cpu_per_row(without))
            on[name].append(cpu_per_row(with_evidence))
    print(
        f"engine CPU per row, evidence off vs on: {NUMERIC} numeric + {CATEGORICAL} "
        f"categorical features, {len(rows)} rows, batches of {BATCH}, {rounds} interleaved "
        "rounds"
    )
    print(f"{'rows':<28} {'off us/row':>10} {'on us/row':>10} {'on/off':>7} {'min..max':>12}")
    for name in cases:
        ratios = [b / a for a, b in zip(off[name], on[name], strict=True)]
        print(
            f"{name:<28} {statistics.median(off[name]):>10.2f} "
            f"{statistics.median(on[name]):>10.2f} {statistics.median(ratios):>7.3f} "
            f"{min(ratios):>5.3f}..{max(ratios):<5.3f}"
        )


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
    global BATCH
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per Engine.check")
    parser.add_argument("--evidence", action="store_true", help="evidence off vs on")
    args = parser.parse_args()
    BATCH = args.batch

    baseline = profile_records(scalar_rows(50_000, seed=1))
    rows = scalar_rows(args.rows, seed=2)
    if args.evidence:
        evidence_table(baseline, rows, args.rounds)
        return
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
