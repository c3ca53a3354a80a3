"""/metrics render cost with several worker processes (prometheus_client multiprocess mode).

W worker processes (real ones) each run a monitor of the 32-feature model of
bench/serving_load.py (24 numeric + 8 categorical inputs and a prediction column) in
multiprocess mode, as under `gunicorn -w W` or `uvicorn --workers W`: 2,000 requests
checked, a window closed, the counts synced into their files in one
PROMETHEUS_MULTIPROC_DIR. This process renders /metrics from that directory:

  prometheus_client       generate_latest over a CollectorRegistry holding a
                          MultiProcessCollector: what prometheus_client documents, and
                          what metrics_app served before
  sidecar                 sidecar.metrics.exposition(multiprocess_registry(dir)): what
                          metrics_app serves now (sidecar/multiprocess_text.py)
  sidecar, first scrape   the first render of a new registry: every file parsed and the
                          plan built, as after new series appear (wall)
  single process          for comparison: the same model's monitor in one process with
                          the same traffic, in a registry of its own, rendered by
                          metrics_app's fast writer (one worker's series)

Between two renders (not timed) every worker checks 10 more requests and syncs its
files, every third time closing a window, as between two scrapes: values change, the
series stay. Both outputs are compared byte for byte before each timed round. The
variants run interleaved, the order alternating each round; the table shows medians over
rounds of the mean per render, wall and this thread's CPU.

    python bench/multiprocess_render.py [--workers 1,2,4,8] [--rounds 5] [--renders 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import orjson
from metrics_render import timed
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from serving_load import score, training_rows, write_baseline

from sidecar import Baseline, multiprocess_registry
from sidecar.metrics import exposition
from sidecar.worker import Monitor, Sample

BENCH = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("prometheus_client", "sidecar")


def worker(baseline_path: str, seed: int) -> None:
    """A worker process: checks traffic into its files, then more on each `feed` line."""
    monitor = Monitor(
        Baseline.load(baseline_path),
        model="churn",
        registry=CollectorRegistry(),
        multiprocess=True,
        queue_size=10_000,
    )
    assert monitor.mirror is not None, "PROMETHEUS_MULTIPROC_DIR is not set"

    def feed(rows: list[dict[str, Any]]) -> None:
        check(monitor, rows)
        assert monitor.mirror is not None
        monitor.mirror.sync(force=True)

    feed(training_rows(2000, seed=seed))
    monitor.close_window()
    feed([])
    print("ready", flush=True)
    fed = 0
    for line in sys.stdin:
        if line.strip() != "feed":
            break
        fed += 1
        feed(training_rows(10, seed=seed * 1000 + fed))
        if fed % 3 == 0:
            monitor.close_window()
            feed([])
        print("ok", flush=True)


def check(monitor: Monitor, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        response = orjson.dumps({"predictions": [score(row)]})
        monitor.submit(Sample([orjson.dumps(row)], [response]))
    monitor.process_pending()


class Workers:
    def __init__(self, n: int, baseline_path: str, directory: str) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        env["PYTHONPATH"] = os.pathsep.join([BENCH, env.get("PYTHONPATH", "")])
        command = [sys.executable, os.path.join(BENCH, "multiprocess_render.py"), "--worker"]
        self.processes = [
            subprocess.Popen(
                [*command, baseline_path, str(seed)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for seed in range(10, 10 + n)
        ]
        self._expect("ready")

    def feed(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("feed\n")
            process.stdin.flush()
        self._expect("ok")

    def _expect(self, word: str) -> None:
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != word:
                sys.exit(f"worker {process.pid}: {line!r} instead of {word!r}")

    def stop(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in self.processes:
            process.wait(30)


def series(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if not line.startswith(b"#"))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--renders", type=int, default=20, help="renders per variant per round")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline_path = os.path.join(tmp, "baseline.json")
        write_baseline(baseline_path)
        single = CollectorRegistry()
        monitor = Monitor(Baseline.load(baseline_path), model="churn", registry=single)
        check(monitor, training_rows(2000, seed=10))
        monitor.close_window()

        def between_single() -> None:
            check(monitor, training_rows(10, seed=7))

        single_ms = statistics.median(
            timed(lambda: exposition(single), between_single, args.renders)[0]
            for _ in range(args.rounds)
        )
        single_series = series(exposition(single)[0])

        for n in (int(w) for w in args.workers.split(",")):
            directory = os.path.join(tmp, f"metrics-{n}")
            os.mkdir(directory)
            workers = Workers(n, baseline_path, directory)
            try:
                slow = CollectorRegistry()
                MultiProcessCollector(slow, directory)
                fast = multiprocess_registry(directory)
                variants: dict[str, Callable[[], object]] = {
                    "prometheus_client": lambda: generate_latest(slow),  # noqa: B023
                    "sidecar": lambda: exposition(fast),  # noqa: B023
                }
                results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
                for round_ in range(args.rounds):
                    if exposition(fast)[0] != generate_latest(slow):
                        sys.exit(f"{n} workers: the texts differ")
                    order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
                    for name in order:
                        results[name].append(timed(variants[name], workers.feed, args.renders))
                # A first scrape (or one after new series): files parsed, plan built.
                cold = statistics.median(
                    timed(lambda: exposition(multiprocess_registry(directory)), workers.feed, 1)[0]  # noqa: B023
                    for _ in range(args.rounds)
                )
                text = generate_latest(slow)
                files = len([f for f in os.listdir(directory) if f.endswith(".db")])
                rows.append((n, files, series(text), len(text), results, cold))
            finally:
                workers.stop()

    print(
        f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.renders} renders; "
        f"single process ({single_series} series), metrics_app's writer: {single_ms:.2f} ms"
    )
    print()
    print(
        f"{'workers':>7} {'files':>5} {'series':>6} {'bytes':>7} | "
        f"{'wall ms: prometheus_client':>26} {'sidecar':>7} {'ratio':>6} | "
        f"{'CPU ms: prometheus_client':>25} {'sidecar':>7} | {'sidecar, first scrape ms':>24}"
    )
    for n, files, count, size, results, cold in rows:
        wall = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
        cpu = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
        print(
            f"{n:>7} {files:>5} {count:>6} {size:>7} | "
            f"{wall['prometheus_client']:>26.2f} {wall['sidecar']:>7.2f} "
            f"{wall['prometheus_client'] / wall['sidecar']:>5.1f}x | "
            f"{cpu['prometheus_client']:>25.2f} {cpu['sidecar']:>7.2f} | {cold:>24.2f}"
        )


if __name__ == "__main__":
    main()
