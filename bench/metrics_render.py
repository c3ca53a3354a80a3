"""/metrics render cost: prometheus_client's generate_latest vs sidecar's fast text path.

Monitors of the 32-feature model of bench/serving_load.py (24 numeric + 8 categorical
inputs and a prediction column), with traffic and a closed window, in one registry:

  generate_latest   what metrics_app ran before: Metric objects, then prometheus_client
                    formats every sample (the OpenMetrics path still does this)
  fast              sidecar.metrics.exposition, what metrics_app runs now: the skew
                    families written directly (cached lines), the GIL offered between
                    slices (a model's snapshot, its lines)

Render: ms per render, wall and the rendering thread's CPU. Wall includes the fast
path's time.sleep(0) calls (two per model, GIL released; about 70 us each where the
kernel's timer slack is 50 us). Both include the monitors' snapshots, which both take
(last column: their CPU alone).

Event loop stall: renders run in a thread (run_in_executor, as metrics_app does) while
the event loop only ticks; per render, the longest the loop waited between two ticks
(it waits for the GIL). Median and worst over all renders.

A few requests are checked between renders (not timed), as between two scrapes, so
counters move and cached lines are rewritten. The variants run interleaved, the order
alternating each round; tables show medians over rounds of the mean per render.

    python bench/metrics_render.py [--models 1,4,16] [--rounds 7] [--renders 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from serving_load import score, training_rows, write_baseline

from sidecar import Baseline
from sidecar.metrics import exposition
from sidecar.worker import Monitor, Sample

VARIANTS = ("generate_latest", "fast")


def build(
    baseline: Baseline, models: int, rows: list[dict[str, Any]]
) -> tuple[CollectorRegistry, list[Monitor]]:
    """`models` monitors in a fresh registry, each with checked traffic and a window."""
    registry = CollectorRegistry()
    monitors = [
        Monitor(baseline, model=f"model-{i}", registry=registry, queue_size=len(rows) + 1)
        for i in range(models)
    ]
    for monitor in monitors:
        feed(monitor, rows)
        monitor.close_window()
    return registry, monitors


def feed(monitor: Monitor, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        request = orjson.dumps(row)
        response = orjson.dumps({"predictions": [score(row)]})
        monitor.submit(Sample([request], [response]))
    monitor.process_pending()


def timed(render: Callable[[], object], between: Callable[[], None], n: int) -> tuple[float, float]:
    """Mean wall and CPU ms of `n` renders, `between` run (untimed) before each."""
    wall = cpu = 0.0
    for _ in range(n):
        between()
        w0, c0 = time.perf_counter(), time.thread_time()
        render()
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - w0
    return wall / n * 1e3, cpu / n * 1e3


def stalls(render: Callable[[], object], between: Callable[[], None], n: int) -> list[float]:
    """Per render in a thread: the longest gap (ms) between two event loop ticks."""

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        done = False

        async def tick() -> None:
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.ensure_future(tick())
        worst = []
        for _ in range(n):
            between()
            await asyncio.sleep(0.002)
            gaps.clear()
            await loop.run_in_executor(None, render)
            worst.append(max(gaps, default=0.0) * 1e3)
        done = True
        await ticker
        return worst

    return asyncio.run(run())


def measure(
    registry: CollectorRegistry,
    monitors: list[Monitor],
    between_rows: list[dict[str, Any]],
    rounds: int,
    renders: int,
) -> dict[str, Any]:
    def between() -> None:
        for monitor in monitors:
            feed(monitor, between_rows)

    variants: dict[str, Callable[[], object]] = {
        "generate_latest": lambda: generate_latest(registry),
        "fast": lambda: exposition(registry),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    stalled: dict[str, list[float]] = {name: [] for name in variants}
    snapshots: list[float] = []
    for round_ in range(rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(timed(variants[name], between, renders))
            stalled[name].extend(stalls(variants[name], between, renders))
        snapshots.append(timed(lambda: [m.snapshot() for m in monitors], between, renders)[1])
    return {
        "wall": {name: statistics.median(t[0] for t in times[name]) for name in variants},
        "cpu": {name: statistics.median(t[1] for t in times[name]) for name in variants},
        "stall": {name: (statistics.median(s), max(s)) for name, s in stalled.items()},
        "snapshot": statistics.median(snapshots),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", default="1,4,16", help="comma-separated model counts")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--renders", type=int, default=20, help="renders per variant per round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "baseline.json")
        write_baseline(path)
        baseline = Baseline.load(path)
    traffic = training_rows(2000, seed=2)
    between_rows = training_rows(10, seed=3)

    rows = []
    for models in (int(n) for n in args.models.split(",")):
        registry, monitors = build(baseline, models, traffic)
        text = exposition(registry)[0].decode()
        if text != generate_latest(registry).decode():  # only skew families: same bytes
            sys.exit("the fast text differs from generate_latest's")
        series = sum(1 for line in text.splitlines() if not line.startswith("#"))
        rows.append(
            (models, series, measure(registry, monitors, between_rows, args.rounds, args.renders))
        )

    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.renders} renders")
    print()
    print(
        f"{'models':>6} {'series':>7} | {'wall ms: generate_latest':>24} {'fast':>6} {'ratio':>6} "
        f"| {'CPU ms: generate_latest':>23} {'fast':>6} {'ratio':>6} | {'snapshots CPU ms':>16}"
    )
    for models, series, r in rows:
        wall, cpu = r["wall"], r["cpu"]
        print(
            f"{models:>6} {series:>7} | {wall['generate_latest']:>24.2f} {wall['fast']:>6.2f} "
            f"{wall['generate_latest'] / wall['fast']:>5.1f}x "
            f"| {cpu['generate_latest']:>23.2f} {cpu['fast']:>6.2f} "
            f"{cpu['generate_latest'] / cpu['fast']:>5.1f}x | {r['snapshot']:>16.2f}"
        )
    print()
    print(
        f"{'models':>6} {'series':>7} | {'loop stall ms: generate_latest median':>37} {'worst':>6} "
        f"| {'fast median':>11} {'worst':>6}"
    )
    for models, series, r in rows:
        (old, old_worst), (new, new_worst) = r["stall"]["generate_latest"], r["stall"]["fast"]
        print(
            f"{models:>6} {series:>7} | {old:>37.2f} {old_worst:>6.2f} "
            f"| {new:>11.2f} {new_worst:>6.2f}"
        )


if __name__ == "__main__":
    main()
