"""Build a baseline on a Dask cluster: profile partitions in parallel, merge the partials.

Each partition becomes a partial baseline (a pandas DataFrame profiled like
`Baseline.from_dataframe`); partials are merged in a tree on the workers, `FAN_IN`
at a time, so the client only ever receives one baseline. Counts, min/max,
vocabularies (up to the vocabulary cap), value counts and types add up exactly;
mean and variance combine with Chan's formula; quantile edges come from the merged
KLL sketches, within the sketch's rank error of the single-process edges.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .baseline import Baseline, Source
from .profile import ProfileOptions, profile_dataframe
from .readers import ReaderError

__all__ = ["FAN_IN", "profile_dask", "profile_parquet_dataset"]

# Partial baselines merged per task: few enough that one task stays small.
FAN_IN = 8


def profile_dask(ddf: Any, options: ProfileOptions | None = None) -> Baseline:
    """The baseline of a Dask DataFrame, computed on the current Dask scheduler."""
    dask, _, _ = _import_dask()
    # The progress callback belongs to this process; workers report nothing.
    options = dataclasses.replace(options or ProfileOptions(), progress=None)
    level = [dask.delayed(_profile_partition)(part, options) for part in ddf.to_delayed()]
    if not level:
        return profile_dataframe(ddf._meta, options)
    while len(level) > 1:
        level = [
            dask.delayed(_merge_partials)(*level[i : i + FAN_IN])
            for i in range(0, len(level), FAN_IN)
        ]
    (merged,) = dask.compute(level[0])
    return Baseline.from_json(merged, "merged partitions")


def profile_parquet_dataset(
    url: str,
    options: ProfileOptions | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Baseline:
    """Profile a Parquet dataset (a directory, glob or any fsspec URL) through Dask.

    Runs on the cluster at `scheduler` when given, else on a local cluster of
    `workers` single-threaded processes (default: one per core).
    """
    _, dd, _ = _import_dask()
    try:
        ddf = dd.read_parquet(url, storage_options=dict(storage_options or {}))
    except (OSError, ValueError) as exc:
        raise ReaderError(f"{url}: not a readable Parquet dataset: {exc}") from None
    with _client(workers, scheduler):
        baseline = profile_dask(ddf, options)
    baseline.sources = [Source(url, "parquet", baseline.rows)]
    return baseline


def _profile_partition(df: Any, options: ProfileOptions) -> dict[str, Any]:
    # JSON, not the Baseline: it pickles without the sketches' C++ objects.
    return profile_dataframe(df, options).to_json()


def _merge_partials(*partials: dict[str, Any]) -> dict[str, Any]:
    first, *rest = (Baseline.from_json(p, f"partition {i}") for i, p in enumerate(partials))
    return first.merge(*rest).to_json() if rest else first.to_json()


@contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    _, _, distributed = _import_dask()
    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"--workers must be at least 1, got {n}")
    # ":0": the scheduler's HTTP server on a free port, never a clash on 8787.
    with (
        distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _import_dask() -> tuple[Any, Any, Any]:
    try:
        import dask
        import dask.dataframe as dd
        import distributed
    except ImportError:
        raise ReaderError("the Dask engine needs dask: pip install 'skew-sidecar[dask]'") from None
    return dask, dd, distributed
