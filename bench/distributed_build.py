"""Distributed build: wall time and peak memory per worker, one process vs Dask.

Generates a Parquet dataset (24 numeric + 8 categorical columns by default) one file
at a time, so the generator never holds more than one file's rows; then builds the
baseline twice:

- single process: `skew-sidecar profile part-*.parquet` in a child process (peak RSS
  of that child, from wait4);
- Dask: `profile_parquet_dataset` on a LocalCluster of `--workers` single-threaded
  worker processes started beforehand (start-up reported apart): each file (or, with
  few files, each range of row groups) is one piece, read and profiled on a worker by
  the single-process reader; peak RSS of each worker read inside the worker after the
  build.

Prints one table. The issue's size is 50 million rows x 32 columns (about 11 GB of
Parquet; hours on a small machine):

    python -m bench.distributed_build --rows 2000000 --workers 2        # quick
    python -m bench.distributed_build --rows 50000000 --workers 8 --dir /data/bench --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NUMERIC = 24
CATEGORICAL = 8
VOCABULARY = 1000
ROOT = Path(__file__).resolve().parent.parent


def write_dataset(folder: Path, rows: int, rows_per_file: int, seed: int = 0) -> int:
    """Write `rows` rows as Parquet files of `rows_per_file`; returns the bytes written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocabulary = pa.array([f"v{i:04d}" for i in range(VOCABULARY)])
    # Zipf-like category frequencies: a few common values and a long tail.
    weights = 1.0 / np.arange(1, VOCABULARY + 1)
    weights /= weights.sum()
    written = 0
    for index, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        columns: dict[str, Any] = {}
        for i in range(NUMERIC):
            if i % 3 == 0:
                columns[f"num_{i}"] = rng.normal(50, 10, n)
            elif i % 3 == 1:
                columns[f"num_{i}"] = rng.lognormal(3, 1, n)
            else:
                columns[f"num_{i}"] = rng.integers(0, 10_000, n)
        for i in range(CATEGORICAL):
            codes = pa.array(rng.choice(VOCABULARY, n, p=weights).astype(np.int32))
            columns[f"cat_{i}"] = pa.DictionaryArray.from_arrays(
                codes, vocabulary
            ).dictionary_decode()
        path = folder / f"part-{index:05d}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=100_000)
        written += path.stat().st_size
    return written


def single_process(files: list[Path], out: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of `skew-sidecar profile` on the files."""
    cmd = [sys.executable, "-m", "sidecar", "profile", *map(str, files), "-o", str(out), "-q"]
    started = time.monotonic()
    child = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"profile failed with exit status {os.waitstatus_to_exitcode(status)}")
    cpu = usage.ru_utime + usage.ru_stime
    return time.monotonic() - started, cpu, usage.ru_maxrss / 1024


def _usage() -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of the calling process (run inside each worker)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def on_dask(folder: Path, workers: int) -> tuple[float, float, float, list[float], int]:
    """Cluster start-up s, build s, workers' CPU s, peak RSS (MB) of each worker, pieces."""
    from distributed import Client, LocalCluster

    from sidecar.dask_profile import profile_parquet_dataset
    from sidecar.parquet_dataset import ParquetDataset

    started = time.monotonic()
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        startup = time.monotonic() - started
        before = client.run(_usage)
        started = time.monotonic()
        baseline = profile_parquet_dataset(str(folder), scheduler=cluster.scheduler_address)
        build = time.monotonic() - started
        after = client.run(_usage)
    pieces = len(ParquetDataset.find(str(folder)).pieces(workers))
    idle = ", ".join(f"{rss:.0f}" for _, rss in before.values())
    print(f"dask workers at start: {idle} MB RSS")
    print(f"dask baseline: {baseline.rows:,} rows, {len(baseline.features)} features")
    cpu = sum(after[w][0] - before[w][0] for w in after)
    return startup, build, cpu, [rss for _, rss in after.values()], pieces


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rows-per-file", type=int, default=250_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dir", help="where to write the dataset (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset")
    parser.add_argument("--skip-single", action="store_true", help="only the Dask path")
    args = parser.parse_args()

    folder = Path(args.dir or tempfile.mkdtemp(prefix="skew-dist-"))
    data = folder / "train"
    data.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    size = write_dataset(data, args.rows, args.rows_per_file)
    files = sorted(data.glob("*.parquet"))
    print(
        f"generated {args.rows:,} rows x {NUMERIC + CATEGORICAL} columns, {len(files)} files, "
        f"{size / 1e6:,.0f} MB Parquet in {time.monotonic() - started:.0f} s"
    )
    results = []
    if not args.skip_single:
        wall, cpu, peak = single_process(files, folder / "single.json")
        results.append(("single process", 1, wall, cpu, f"{peak:.0f}"))
    startup, build, cpu, peaks, pieces = on_dask(data, args.workers)
    per_worker = " / ".join(f"{p:.0f}" for p in peaks)
    results.append((f"dask ({pieces} pieces)", args.workers, build, cpu, per_worker))
    print(f"dask cluster start-up: {startup:.1f} s (not in the build time)")
    print(
        f"{'path':<26} {'workers':>7} {'build s':>8} {'CPU s':>7} {'rows/s':>10}  "
        "peak RSS MB per worker"
    )
    for name, workers, wall, cpu, memory in results:
        print(
            f"{name:<26} {workers:>7} {wall:>8.1f} {cpu:>7.1f} {args.rows / wall:>10,.0f}  {memory}"
        )
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
