from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from datasketches import kll_doubles_sketch
from distributed import Client, LocalCluster

from sidecar.baseline import Baseline
from sidecar.categorical import CategoricalStats
from sidecar.cli import main
from sidecar.numeric import NumericStats
from sidecar.profile import ProfileOptions
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
    distributed: Baseline, single: Baseline, frame: pd.DataFrame, continuous: set[str]
) -> None:
    assert distributed.rows == single.rows == len(frame)
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
                data = frame[name].dropna().to_numpy()
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
    _assert_same_baseline(distributed, single, frame, continuous={"x", "amount", "maybe"})
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


def test_cli_profiles_a_parquet_directory_on_the_running_cluster(
    client: Client, frame: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(ROWS), 4)):
        frame.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    out = tmp_path / "baseline.json"
    args = ["profile", "--engine", "dask", str(folder), "-o", str(out), "-q"]
    assert main([*args, "--scheduler", client.scheduler.address]) == 0
    baseline = Baseline.load(out)
    single = Baseline.from_dataframe(pd.read_parquet(folder))
    _assert_same_baseline(baseline, single, frame, continuous={"x", "amount", "maybe"})
    assert [(s.path, s.format, s.rows) for s in baseline.sources] == [
        (str(folder), "parquet", ROWS)
    ]


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
    ],
)
def test_cli_rejects_bad_dask_input_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["profile", *args, "-o", str(tmp_path / "b.json")]) == 2
    assert message in capsys.readouterr().err
