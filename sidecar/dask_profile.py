"""Build a baseline on a Dask cluster: profile pieces in parallel, merge the partials.

`profile_parquet_dataset` cuts a Parquet dataset into files (or, with few files,
ranges of row groups) and profiles each on a worker with the single-process Parquet
reader and profiler, so values mean what they mean to `skew-sidecar profile FILE`
(NaN is a value, null is missing). `profile_dask` profiles the pandas partitions of a
Dask DataFrame as `Baseline.from_dataframe` would (NaN is missing, as in pandas).

Partial baselines are merged in a tree on the workers, `FAN_IN` at a time, so the
client only ever receives one baseline. Counts, min/max, vocabularies (up to the
vocabulary cap), value counts and types add up exactly; mean and variance combine
with Chan's formula; quantile edges come from the merged KLL sketches, within the
sketch's rank error of the single-process edges.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .baseline import Baseline, Source
from .parquet_dataset import ParquetDataset, ParquetPiece
from .profile import ProfileOptions, profile_chunks, profile_dataframe
from .readers import ReaderError, iter_parquet_chunks

__all__ = ["FAN_IN", "profile_dask", "profile_parquet_dataset"]

# Partial baselines merged per task: few enough that one task stays small.
FAN_IN = 8


def profile_dask(ddf: Any, options: ProfileOptions | None = None) -> Baseline:
    """The baseline of a Dask DataFrame, computed on the current Dask scheduler."""
    dask, _ = _import_dask()
    options = _for_workers(options)
    partials = [dask.delayed(_profile_partition)(part, options) for part in ddf.to_delayed()]
    if not partials:
        return profile_dataframe(ddf._meta, options)
    return _merge_tree(dask, partials)


def profile_parquet_dataset(
    url: str,
    options: ProfileOptions | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Baseline:
    """Profile a Parquet dataset (a file, directory, glob or any fsspec URL) on Dask.

    Runs on the cluster at `scheduler` when given, else on a local cluster of
    `workers` single-threaded processes (default: one per core).
    """
    dask, _ = _import_dask()
    dataset = ParquetDataset.find(url, storage_options)
    options = _for_workers(options)
    with _client(workers, scheduler) as client:
        slots = sum(client.nthreads().values())
        partials = [
            dask.delayed(_profile_piece)(piece, dataset.filesystem, options)
            for piece in dataset.pieces(slots)
        ]
        baseline = _merge_tree(dask, partials, client)
    baseline.sources = [Source(url, "parquet", baseline.rows)]
    return baseline


def _for_workers(options: ProfileOptions | None) -> ProfileOptions:
    # The progress callback belongs to this process; workers report nothing.
    return dataclasses.replace(options or ProfileOptions(), progress=None)


def _merge_tree(dask: Any, level: list[Any], scheduler: Any = None) -> Baseline:
    """Merge delayed partials `FAN_IN` at a time, in order, until one is left."""
    while len(level) > 1:
        level = [
            dask.delayed(_merge_partials)(*level[i : i + FAN_IN])
            for i in range(0, len(level), FAN_IN)
        ]
    (merged,) = dask.compute(level[0], scheduler=scheduler)
    return Baseline.from_json(merged, "merged partitions")


# Partials travel as JSON, not as Baselines: JSON pickles without the sketches' C++ objects.


def _profile_partition(df: Any, options: ProfileOptions) -> dict[str, Any]:
    return profile_dataframe(df, options).to_json()


def _profile_piece(piece: ParquetPiece, filesystem: Any, options: ProfileOptions) -> dict[str, Any]:
    chunks = iter_parquet_chunks(
        piece.path,
        row_groups=piece.row_groups,
        filesystem=filesystem,
        chunk_rows=options.chunk_rows,
    )
    return profile_chunks(chunks, options).to_json()


def _merge_partials(*partials: dict[str, Any]) -> dict[str, Any]:
    first, *rest = (Baseline.from_json(p, f"partition {i}") for i, p in enumerate(partials))
    return first.merge(*rest).to_json() if rest else first.to_json()


@contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    _, distributed = _import_dask()
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


def _import_dask() -> tuple[Any, Any]:
    try:
        import dask
        import distributed
    except ImportError:
        raise ReaderError("the Dask engine needs dask: pip install 'skew-sidecar[dask]'") from None
    return dask, distributed
