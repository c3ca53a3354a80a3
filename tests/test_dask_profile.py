from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketches import kll_doubles_sketch
from distributed import Client, LocalCluster

from sidecar.baseline import Baseline
from sidecar.categorical import CategoricalStats
from sidecar.cli import main
from sidecar.dask_profile import profile_parquet_dataset
from sidecar.numeric import NumericStats
from sidecar.parquet_dataset import ParquetDataset
from sidecar.profile import ProfileOptions, profile_files
from sidecar.timestamps import TimestampStats

ROWS = 12_000
# DataSketches' normalised rank error for k = 400, at 99 % confidence.
RANK_ERROR = kll_doubles_sketch.get_normalized_rank_error(400, False)


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    maybe = rng.normal(10, 3, ROWS)
    maybe[rng.random(ROWS) < 0.1] = np.nan  # pandas' missing
    colors = np.array([f"c{i}" for i in range(30)])
    return pd.DataFrame(
        {
            "x": rng.normal(0, 1, ROWS),
            "amount": rng.lognormal(3, 1, ROWS),
            "n": rng.integers(0, 10, ROWS),
            "maybe": maybe,
            "color": rng.choice(colors, ROWS, p=np.arange(1, 31) / np.arange(1, 31).sum()),
            "flag": rng.random(ROWS) < 0.3,
            "when": pd.Timestamp("2024-03-01") + pd.to_timedelta(rng.integers(0, 86400, ROWS), "s"),
        }
    )


def _rank_error(data: np.ndarray[Any, Any], stats: NumericStats) -> float:
    """Largest |share of the data <= edge - i / bins| over the bin edges."""
    assert stats.bins is not None and stats.bins.edges is not None
    edges = np.array(stats.bins.edges)
    ranks = np.searchsorted(np.sort(data), edges, side="right") / len(data)
    targets = np.arange(1, len(edges) + 1) / (len(edges) + 1)
    return float(np.abs(ranks - targets).max())


def _assert_same_baseline(
    distributed: Baseline, single: Baseline, rows: int, continuous: Mapping[str, Any]
) -> None:
    """Equal except for what merging changes: mean and std to rounding, and
    continuous edges within the KLL rank error (`continuous`: each such feature's
    finite values)."""
    assert distributed.rows == single.rows == rows
    assert list(distributed.features) == list(single.features)
    for name, feat in single.features.items():
        other = distributed.features[name]
        assert (other.kind, other.role, other.types) == (feat.kind, feat.role, feat.types), name
        a, b = other.stats, feat.stats
        assert (a.count, a.missing, a.type_mismatch) == (b.count, b.missing, b.type_mismatch)
        if isinstance(a, NumericStats) and isinstance(b, NumericStats):
            assert (a.min, a.max, a.integer, a.nan, a.inf) == (
                b.min,
                b.max,
                b.integer,
                b.nan,
                b.inf,
            )
            assert a.mean == pytest.approx(b.mean, rel=1e-12, abs=1e-12)
            assert a.std == pytest.approx(b.std, rel=1e-12)
            assert a.value_counts == b.value_counts
            if name in continuous:
                data = continuous[name]
                assert _rank_error(data, b) <= 1 / len(data)  # exact, in one process
                assert _rank_error(data, a) <= RANK_ERROR
            else:
                assert a.bins == b.bins, name
        elif isinstance(a, CategoricalStats) and isinstance(b, CategoricalStats):
            assert a.vocabulary == b.vocabulary and a.vocabulary_complete
            assert (a.top, a.fractions, a.value_type) == (b.top, b.fractions, b.value_type)
        else:
            assert isinstance(a, TimestampStats) and isinstance(b, TimestampStats)
            assert (a.min, a.max, a.hour_counts) == (b.min, b.max, b.hour_counts)
            assert (a.weekday_counts, a.offsets) == (b.weekday_counts, b.offsets)


def test_a_dask_baseline_equals_the_single_process_one(client: Client, frame: pd.DataFrame) -> None:
    ddf = dd.from_pandas(frame, npartitions=11)  # more than FAN_IN: a two-level merge
    distributed = Baseline.from_dask(ddf)
    single = Baseline.from_dataframe(frame)
    _assert_same_baseline(distributed, single, ROWS, _finite(frame, ["x", "amount", "maybe"]))
    assert distributed.features["maybe"].missing == int(frame["maybe"].isna().sum())


def test_profile_options_reach_the_workers(client: Client, frame: pd.DataFrame) -> None:
    options = ProfileOptions(
        categorical=frozenset({"n"}),
        exclude=frozenset({"when"}),
        prediction=frozenset({"x"}),
        progress=lambda done, total: None,
    )
    baseline = Baseline.from_dask(dd.from_pandas(frame, npartitions=3), options)
    assert "when" not in baseline.features
    assert baseline.features["n"].kind == "categorical"
    assert baseline.features["x"].role == "prediction"


def _finite(frame: pd.DataFrame, names: list[str]) -> dict[str, Any]:
    return {name: frame[name].dropna().to_numpy() for name in names}


# -- Parquet datasets: each file profiled by the single-process reader ---------------------

FILES = 5
CONTINUOUS = ["x", "amount", "maybe", "late"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five files of 2,400 rows (row groups of 1,000), written with pyarrow so that NaN
    stays NaN: `maybe` has NaN and nulls, `color` is null in the whole first file and
    `flag` in the whole third, only the last two files have `late`."""
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(11)
    colors = np.array([f"c{i}" for i in range(30)])
    n = ROWS // FILES
    for i in range(FILES):
        maybe = rng.normal(10, 3, n)
        maybe[rng.random(n) < 0.1] = np.nan
        columns = {
            "x": pa.array(rng.normal(0, 1, n)),
            "amount": pa.array(rng.lognormal(3, 1, n)),
            "n": pa.array(rng.integers(0, 10, n), mask=rng.random(n) < 0.05),
            "maybe": pa.array(maybe, mask=rng.random(n) < 0.05),
            "color": pa.array(rng.choice(colors, n), mask=np.full(n, i == 0)),
            "flag": pa.array(rng.random(n) < 0.3, mask=np.full(n, i == 2)),
            "when": pa.array(
                np.datetime64("2024-03-01")
                + rng.integers(0, 86_400_000_000, n).astype("timedelta64[us]")
            ),
        }
        if i >= FILES - 2:
            columns["late"] = pa.array(rng.exponential(5, n))
        pq.write_table(pa.table(columns), folder / f"part-{i}.parquet", row_group_size=1_000)
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def _values(files: list[Path], name: str) -> Any:
    """The finite values of a column over the files that have it."""
    tables = [pq.read_table(path) for path in files]
    arrays = [t.column(name).drop_null().to_numpy() for t in tables if name in t.column_names]
    data = np.concatenate(arrays)
    return data[np.isfinite(data)]


def _assert_same_as_single_process(
    distributed: Baseline, single: Baseline, files: list[Path]
) -> None:
    continuous = {name: _values(files, name) for name in CONTINUOUS}
    _assert_same_baseline(distributed, single, single.rows, continuous)


def test_cli_profiles_a_parquet_directory_like_the_single_process_cli(
    client: Client, dataset: Path, tmp_path: Path
) -> None:
    files = _files(dataset)
    assert main(["profile", *map(str, files), "-o", str(tmp_path / "single.json"), "-q"]) == 0
    out = tmp_path / "dask.json"
    args = ["profile", "--engine", "dask", str(dataset), "-o", str(out), "-q"]
    assert main([*args, "--scheduler", client.scheduler.address]) == 0
    single, distributed = Baseline.load(tmp_path / "single.json"), Baseline.load(out)
    _assert_same_as_single_process(distributed, single, files)
    assert [(s.path, s.format, s.rows) for s in distributed.sources] == [
        (str(dataset), "parquet", ROWS)
    ]


def test_nan_in_a_parquet_float_column_is_a_value_and_null_is_missing(
    client: Client, dataset: Path
) -> None:
    baseline = profile_parquet_dataset(str(dataset), scheduler=client.scheduler.address)
    maybe = pa.concat_arrays(
        [pq.read_table(f).column("maybe").combine_chunks() for f in _files(dataset)]
    )
    stats = baseline.features["maybe"].stats
    assert isinstance(stats, NumericStats)
    nan = int(np.isnan(maybe.drop_null().to_numpy()).sum())
    assert (stats.missing, stats.nan) == (maybe.null_count, nan)
    assert nan > 0 and maybe.null_count > 0
    assert stats.count == len(maybe) - maybe.null_count - nan


def test_a_column_null_in_whole_files_keeps_its_kind_and_counts_them_missing(
    client: Client, dataset: Path
) -> None:
    baseline = profile_parquet_dataset(str(dataset), scheduler=client.scheduler.address)
    n = ROWS // FILES
    color, flag, late = (baseline.features[name] for name in ("color", "flag", "late"))
    assert (color.kind, color.types) == ("categorical", {"string": ROWS - n})
    assert color.missing == n  # the whole first file
    assert flag.kind == "categorical" and flag.missing == n  # the whole third file
    assert (late.kind, late.count, late.missing) == ("numeric", 2 * n, (FILES - 2) * n)
    assert list(baseline.features)[-1] == "late"  # first seen last, as in one process


def test_one_large_file_is_profiled_in_row_group_ranges_like_one_process(
    client: Client, dataset: Path
) -> None:
    path = _files(dataset)[-1]  # 3 row groups: cut in 3 for the two workers
    assert len(ParquetDataset.find(str(path)).pieces(2)) == 3
    distributed = profile_parquet_dataset(str(path), scheduler=client.scheduler.address)
    _assert_same_as_single_process(distributed, profile_files([path]), [path])


def test_profile_options_reach_the_parquet_workers(client: Client, dataset: Path) -> None:
    options = ProfileOptions(
        categorical=frozenset({"n"}),
        exclude=frozenset({"when"}),
        prediction=frozenset({"x"}),
        progress=lambda done, total: None,
    )
    baseline = profile_parquet_dataset(str(dataset), options, scheduler=client.scheduler.address)
    assert "when" not in baseline.features
    assert baseline.features["n"].kind == "categorical"
    assert baseline.features["x"].role == "prediction"


def test_a_remote_dataset_is_read_through_fsspec_on_the_workers(dataset: Path) -> None:
    memory = fsspec.filesystem("memory")
    for path in [*_files(dataset), dataset / "_SUCCESS"]:
        memory.pipe(f"/dask-test/train/{path.name}", path.read_bytes())
    # Threads, not processes: the memory filesystem lives in this process.
    try:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster:
            distributed = profile_parquet_dataset(
                "memory://dask-test/train", scheduler=cluster.scheduler_address
            )
    finally:
        memory.rm("/dask-test", recursive=True)
    files = _files(dataset)
    _assert_same_as_single_process(distributed, profile_files(files), files)


def test_a_damaged_file_is_named_in_the_cli_error(
    client: Client, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    for path in _files(dataset):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "part-2.parquet").write_bytes(b"not parquet")
    args = ["profile", "--engine", "dask", str(folder), "-o", str(tmp_path / "b.json")]
    assert main([*args, "--scheduler", client.scheduler.address]) == 2
    assert f"{folder / 'part-2.parquet'}: not a readable Parquet file" in capsys.readouterr().err


def test_a_column_of_different_kinds_in_different_files_is_named_in_the_cli_error(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, values in enumerate([pa.array([1, 2, 3]), pa.array(["a", "b", "c"])]):
        pq.write_table(pa.table({"code": values}), tmp_path / f"part-{i}.parquet")
    args = ["profile", "--engine", "dask", str(tmp_path), "-o", str(tmp_path / "b.json")]
    assert main([*args, "--scheduler", client.scheduler.address]) == 2
    err = capsys.readouterr().err
    assert "feature 'code' is numeric in one baseline and categorical in another" in err
    # The way out the message offers: the strings become type mismatches, as in one process.
    assert main([*args, "--numeric", "code", "--scheduler", client.scheduler.address]) == 0
    code = Baseline.load(tmp_path / "b.json").features["code"]
    single = profile_files(_files(tmp_path), ProfileOptions(numeric=frozenset({"code"})))
    sketchless = [
        {k: v for k, v in f.to_json().items() if k != "sketch"}
        for f in (code, single.features["code"])
    ]
    assert sketchless[0] == sketchless[1]
    assert (code.kind, code.count, code.stats.type_mismatch) == ("numeric", 3, 3)


def test_cli_starts_a_local_cluster_of_the_given_size(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    pd.DataFrame({"x": np.arange(100.0), "c": ["a", "b"] * 50}).to_parquet(folder / "p.parquet")
    out = tmp_path / "baseline.json"
    assert main(["profile", "--engine", "dask", str(folder), "--workers", "2", "-o", str(out)]) == 0
    baseline = Baseline.load(out)
    assert baseline.rows == 100 and baseline.features["c"].count == 100


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "dask", "a", "b"], "--engine dask takes one Parquet dataset"),
        (["--engine", "dask", "d", "--workers", "0"], "--workers must be at least 1"),
        (["--engine", "dask", "no/such/dir"], "no/such/dir: not a readable Parquet dataset"),
        (["--engine", "dask", "."], ".: not a readable Parquet dataset: no .parquet or .pq files"),
    ],
)
def test_cli_rejects_bad_dask_input_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["profile", *args, "-o", str(tmp_path / "b.json")]) == 2
    assert message in capsys.readouterr().err
