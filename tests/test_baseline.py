from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from sidecar.baseline import Baseline, BaselineError, ProfileSettings, Source
from sidecar.numeric import NumericStats
from sidecar.profile import ProfileOptions, profile_columns, profile_records

DELETE = object()


def small_baseline() -> Baseline:
    """One feature of each kind, small enough to read in a failure message."""
    rng = np.random.default_rng(0)
    start = datetime(2024, 6, 1)
    return profile_columns(
        {
            "x": rng.normal(size=60).round(3).tolist(),
            "n": [i % 3 for i in range(60)],
            "c": ["a", "b", "a", None] * 15,
            "t": [(start + timedelta(hours=7 * i)).isoformat() + "Z" for i in range(60)],
            "l": [list(range(i % 5 + 1)) for i in range(60)],
            "empty": [None] * 60,
        },
        ProfileOptions(settings=ProfileSettings(top_k=1)),
    )


def edit(data: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with a callable, transform; with DELETE, remove) the field at a dotted path."""
    *parents, key = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[key]
    elif callable(value):
        node[key] = value(node[key])
    else:
        node[key] = value


def rank(sorted_data: np.ndarray[Any, Any], x: Any) -> np.ndarray[Any, Any]:
    """Fraction of the data at or below x: the rank a bin edge stands for."""
    return np.searchsorted(sorted_data, x, side="right") / len(sorted_data)


# -- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("bins", 1), ("top_k", 0), ("vocabulary_cap", 0), ("sketch_k", 4), ("bins", 2.0)],
)
def test_profile_settings_reject_values_out_of_range(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
        ProfileSettings(**{name: value})


# -- files -------------------------------------------------------------------------------


def test_saved_file_is_indented_json_with_identity_fields(tmp_path: Path) -> None:
    baseline = small_baseline()
    baseline.sources = [Source("train.csv", "csv", 60)]
    path = tmp_path / "baseline.json"

    baseline.save(path)

    raw = path.read_bytes()
    assert raw.startswith(b'{\n  "schema_version": 1,\n  "baseline_hash": "')
    assert raw.endswith(b"}\n")
    data = json.loads(raw)
    assert data["schema_version"] == 1
    assert data["rows"] == 60
    assert data["baseline_hash"] == baseline.baseline_hash
    assert len(data["baseline_hash"]) == 16 and int(data["baseline_hash"], 16) >= 0
    assert data["sources"] == [{"path": "train.csv", "format": "csv", "rows": 60}]
    assert data["settings"]["top_k"] == 1
    assert list(data["features"]) == ["x", "n", "c", "t", "l", "empty"]
    assert os.listdir(tmp_path) == ["baseline.json"]


def test_load_restores_every_statistic(tmp_path: Path) -> None:
    baseline = small_baseline()
    baseline.sources = [Source("a.jsonl", "jsonl", 60)]
    path = tmp_path / "baseline.json"
    baseline.save(path)

    loaded = Baseline.load(path)

    assert (loaded.rows, loaded.settings, loaded.sources) == (
        60,
        baseline.settings,
        baseline.sources,
    )
    assert loaded.created_at == baseline.created_at
    for name, feat in baseline.features.items():
        expected, got = feat.to_json(), loaded.features[name].to_json()
        # std is stored, m2 = std**2 * count is what is kept: equal to the last bit or two.
        for data in (expected, got, expected.get("length", {}), got.get("length", {})):
            data.pop("std", None)
        assert got == expected, name
    for name in ("x", "n", "empty"):
        stats, restored = baseline.features[name].stats, loaded.features[name].stats
        assert isinstance(stats, NumericStats) and isinstance(restored, NumericStats)
        assert restored.std == pytest.approx(stats.std, rel=1e-15, nan_ok=True)


def test_saving_a_loaded_baseline_writes_a_file_that_loads_again(tmp_path: Path) -> None:
    small_baseline().save(tmp_path / "a.json")

    Baseline.load(tmp_path / "a.json").save(tmp_path / "b.json")

    assert Baseline.load(tmp_path / "b.json").rows == 60


def test_loaded_baseline_has_the_hash_stored_in_its_file(tmp_path: Path) -> None:
    baseline = profile_columns({"x": [0, 0, 1, 3, 3]})
    path = tmp_path / "baseline.json"
    baseline.save(path)

    loaded = Baseline.load(path)

    assert loaded.baseline_hash == orjson.loads(path.read_bytes())["baseline_hash"]
    assert loaded.baseline_hash == baseline.baseline_hash


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text("old")

    small_baseline().save(path)

    assert Baseline.load(path).rows == 60
    assert sorted(os.listdir(tmp_path)) == ["baseline.json"]


# -- the content hash ----------------------------------------------------------------------


def test_hash_ignores_creation_time_and_sources() -> None:
    first, second = small_baseline(), small_baseline()
    second.created_at = "1999-01-01T00:00:00Z"
    second.sources = [Source("elsewhere.parquet", "parquet", 60)]

    assert first.baseline_hash == second.baseline_hash
    assert first.to_json()["created_at"] != second.to_json()["created_at"]


def test_rebuilding_a_small_data_set_gives_the_same_hash() -> None:
    values = np.random.default_rng(1).lognormal(size=5000).tolist()

    assert (
        profile_columns({"x": values}).baseline_hash == profile_columns({"x": values}).baseline_hash
    )


def _bump_category(b: Baseline, key: str) -> None:
    b.features["c"].stats.vocabulary[key] += 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "change",
    [
        lambda b: setattr(b, "rows", b.rows + 1),
        lambda b: setattr(b.features["x"].stats, "missing", 1),
        lambda b: setattr(b.features["x"].stats, "mean", b.features["x"].stats.mean + 1e-12),
        lambda b: setattr(b.features["x"], "role", "prediction"),
        lambda b: setattr(b, "settings", ProfileSettings(top_k=2)),
        lambda b: b.features.update(renamed=b.features.pop("x")),
        lambda b: _bump_category(b, "a"),
        lambda b: b.features["t"].stats.hour_counts.__setitem__(0, 99),  # type: ignore[union-attr]
        lambda b: b.features["l"].stats.shapes.update({"9": 1}),  # type: ignore[union-attr]
        pytest.param(lambda b: _bump_category(b, "sketch"), id="category-named-sketch"),
    ],
)
def test_hash_changes_when_a_statistic_changes(change: Callable[[Baseline], None]) -> None:
    baseline = profile_columns(
        {
            "x": [1.5, 2.5, 4.0],
            "c": ["a", "sketch", "b"],
            "t": ["2024-01-01T00:00:00"] * 3,
            "l": [[1], [2, 3], []],
        }
    )
    before = baseline.baseline_hash

    change(baseline)

    assert baseline.baseline_hash != before


# -- corrupt files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("schema_version", 2, "schema_version: this skew-sidecar reads version 1, the file has 2"),
        ("schema_version", DELETE, "missing field 'schema_version'"),
        ("rows", DELETE, "missing field 'rows'"),
        ("rows", -1, ".rows: expected a non-negative integer, got -1"),
        ("baseline_hash", DELETE, "missing field 'baseline_hash'"),
        ("baseline_hash", 7, ".baseline_hash: expected a string, got 7"),
        ("settings", DELETE, "missing field 'settings'"),
        ("settings.bins", 1, ".settings: bins must be an integer >= 2, got 1"),
        ("settings.colour", 3, ".settings: ProfileSettings.__init__() got an unexpected keyword"),
        ("features", [], ".features: expected an object, got list"),
        ("features.x", [], "features.x: expected an object"),
        ("features.x.kind", "histogram", "features.x.kind: expected one of numeric, categorical"),
        ("features.x.kind", DELETE, "features.x: missing field 'kind'"),
        ("features.x.role", "target", "features.x.role: expected one of input, prediction"),
        ("features.x.types", {"number": -1}, "features.x.types['number']: expected a non-neg"),
        ("features.x.count", -5, "features.x.count: expected a non-negative integer, got -5"),
        ("features.x.count", 3.0, "features.x.count: expected a non-negative integer, got 3.0"),
        ("features.x.nan", True, "features.x.nan: expected a non-negative integer, got True"),
        ("features.x.missing", DELETE, "features.x: missing field 'missing'"),
        ("features.x.mean", "1.5", "features.x.mean: expected a finite number, got '1.5'"),
        ("features.x.integer", 1, "features.x.integer: expected true or false, got 1"),
        ("features.x.min", 1e9, "features.x: min 1000000000.0 is above max"),
        (
            "features.x.bins.fractions",
            lambda fr: [v / 2 for v in fr],
            "features.x.bins.fractions: fractions must be non-negative and sum to 1",
        ),
        (
            "features.x.bins.fractions",
            lambda fr: [fr[0] + fr[1] + 0.25, -0.25, *fr[2:]],
            "features.x.bins.fractions: fractions must be non-negative and sum to 1",
        ),
        (
            "features.x.bins.fractions",
            lambda fr: fr[:-2] + [fr[-2] + fr[-1]],
            "features.x.bins: expected 10 fractions",
        ),
        (
            "features.x.bins.edges",
            lambda e: [e[0], *e[:-1]],
            "features.x.bins.edges: values must be strictly increasing",
        ),
        (
            "features.x.bins.edges",
            lambda e: e[::-1],
            "features.x.bins.edges: values must be strictly increasing",
        ),
        (
            "features.x.bins.edges",
            lambda e: [e[0], "1", *e[2:]],
            "features.x.bins.edges[1]: expected a finite number, got '1'",
        ),
        ("features.x.quantiles.grid", lambda g: g[::-1], "features.x.grid: values must be"),
        ("features.x.sketch.kll_doubles", "", "features.x.sketch.kll_doubles: empty sketch"),
        ("features.x.value_counts", "many", "features.x.value_counts: expected [[value, count]"),
        ("features.n.bins.values", lambda v: v[::-1], "features.n.bins.values: values must be"),
        ("features.c.value_type", "blob", "features.c.value_type: expected one of string"),
        (
            "features.c.vocabulary.a",
            lambda n: n + 1,
            "features.c.vocabulary: counts add up to 46, but count is 45",
        ),
        ("features.c.vocabulary.a", -1, "features.c.vocabulary['a']: expected a non-negative"),
        ("features.c.bins.values", ["zzz", "__other__"], "features.c.bins.values: 'zzz' is not"),
        ("features.c.bins.values", ["a"], "features.c.bins.values: expected top values then"),
        ("features.t.hour_counts", lambda h: h[:-1], "features.t.hour_counts: expected 24 non"),
        ("features.t.weekday_counts", [0] * 7, "features.t.weekday_counts: counts do not add"),
        ("features.t.encoding", "epoch_ns", "features.t.encoding: expected one of iso, epoch_s"),
        ("features.t.min_epoch", None, "features.t.min_epoch: expected a finite number, got None"),
        ("features.l.element_type", "tensor", "features.l.element_type: expected one of number"),
        ("features.l.length.count", -1, "features.l.length.count: expected a non-negative"),
        ("features.l.element.max", "big", "features.l.element.max: expected a finite number"),
        ("features.l.shapes", [], "features.l.shapes: expected an object, got list"),
        (
            "sources",
            [{"path": "a.csv", "format": "csv", "rows": -1}],
            ".sources[0].rows: expected a non-negative integer, got -1",
        ),
        ("features.x.mean", lambda m: m + 1, ".baseline_hash: stored"),
        ("features.c.vocabulary", lambda v: {"b": v["b"], "a": v["a"]}, None),
        ("rows", lambda r: r + 1, ".baseline_hash: stored"),
        ("features.empty.missing", 59, ".baseline_hash: stored"),
    ],
)
def test_corrupt_baseline_files_raise_errors_naming_the_file_and_field(
    tmp_path: Path, path: str, value: Any, message: str | None
) -> None:
    data = small_baseline().to_json()
    edit(data, path, value)
    file = tmp_path / "corrupt.json"
    file.write_bytes(orjson.dumps(data))

    if message is None:  # reordering keys is not a change
        assert Baseline.load(file).rows == 60
        return
    with pytest.raises(BaselineError) as error:
        Baseline.load(file)

    assert str(error.value).startswith(str(file))
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not valid JSON"),
        (b'{"schema_version": 1,', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"schema_version": 1, "rows": NaN}', "not valid JSON"),
        (b'{"rows": 1e999}', "not valid JSON"),
        (b"[]", "expected a JSON object at the top level"),
        (b"null", "expected a JSON object at the top level"),
        (b'"baseline"', "expected a JSON object at the top level"),
        (b"{}", "missing field 'schema_version'"),
    ],
)
def test_files_that_are_not_a_baseline_object_raise_errors_naming_the_file(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    file = tmp_path / "bad.json"
    file.write_bytes(raw)

    with pytest.raises(BaselineError, match=message) as error:
        Baseline.load(file)

    assert str(error.value).startswith(f"{file}: ") or str(error.value).startswith(f"{file}.")


@pytest.mark.parametrize(
    ("field", "value"),
    [("mean", math.inf), ("std", math.nan), ("max", -math.inf)],
)
def test_non_finite_statistics_are_rejected(field: str, value: float) -> None:
    data = small_baseline().to_json()
    data["features"]["x"][field] = value

    with pytest.raises(BaselineError, match=f"^b.json: features.x.{field}: expected a finite"):
        Baseline.from_json(data, "b.json")


@pytest.mark.parametrize("make", [lambda p: p / "missing.json", lambda p: p])
def test_unreadable_paths_raise_an_error_naming_them(
    tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    path = make(tmp_path)

    with pytest.raises(BaselineError, match="cannot read baseline") as error:
        Baseline.load(path)

    assert str(error.value).startswith(f"{path}: ")


def test_a_source_that_is_not_an_object_raises_a_baseline_error() -> None:
    data = small_baseline().to_json()
    data["sources"] = [1]

    with pytest.raises(BaselineError, match=r"^b.json.sources\[0\]: expected an object"):
        Baseline.from_json(data, "b.json")


def test_loading_a_damaged_sketch_raises_an_error_naming_the_file_and_field(
    tmp_path: Path,
) -> None:
    data = small_baseline().to_json()
    data["features"]["x"]["sketch"]["kll_doubles"] = "AAAA"
    file = tmp_path / "b.json"
    file.write_bytes(orjson.dumps(data))

    try:
        Baseline.load(file)
        message = "loaded without an error"
    except BaselineError as exc:
        message = str(exc)

    assert message.startswith(str(file))
    assert "features.x.sketch.kll_doubles" in message


# -- merging ---------------------------------------------------------------------------------


def _training_columns(n: int) -> dict[str, list[Any]]:
    rng = np.random.default_rng(9)
    start = datetime(2024, 1, 1)
    hours = rng.integers(0, 24 * 90, size=n)
    amount: list[Any] = rng.lognormal(3, 1, size=n).tolist()
    for i in rng.choice(n, size=40, replace=False):
        amount[i] = [None, math.nan, math.inf, "n/a"][i % 4]
    return {
        "amount": amount,
        "clicks": rng.poisson(2, size=n).clip(0, 9).tolist(),
        "country": rng.choice(["FR", "DE", "US", "JP", "BR"], size=n).tolist(),
        "member": rng.choice([True, False, None], size=n).tolist(),
        "seen_at": [
            (start + timedelta(hours=int(h))).isoformat() + str(rng.choice(["Z", "+05:30", ""]))
            for h in hours
        ],
        "tokens": [rng.integers(0, 500, size=k).tolist() for k in rng.integers(1, 12, size=n)],
    }


def _rows(columns: dict[str, list[Any]], start: int, stop: int) -> dict[str, list[Any]]:
    return {name: values[start:stop] for name, values in columns.items()}


def _without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


@pytest.mark.parametrize("cuts", [[0.5], [0.1], [0.2, 0.5, 0.9]])
def test_merged_partitions_equal_the_baseline_of_the_whole_data(cuts: list[float]) -> None:
    n = 30_000
    columns = _training_columns(n)
    bounds = [0, *(int(c * n) for c in cuts), n]
    options = ProfileOptions(chunk_rows=7_000)
    whole = profile_columns(columns, options)
    parts = [
        profile_columns(_rows(columns, a, b), options)
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]

    merged = parts[0].merge(*parts[1:])

    assert merged.rows == whole.rows == n
    assert list(merged.features) == list(whole.features)
    for name, feat in whole.features.items():
        expected, got = feat.to_json(), merged.features[name].to_json()
        assert (got["kind"], got["types"]) == (expected["kind"], expected["types"]), name
        if feat.kind in ("categorical", "timestamp"):
            assert got == expected, name
    amount_w, amount_m = whole.features["amount"].to_json(), merged.features["amount"].to_json()
    finite = np.sort([v for v in columns["amount"] if type(v) is float and math.isfinite(v)])
    for stats in (amount_w, amount_m):
        ranks = rank(finite, stats["bins"]["edges"])
        assert np.abs(ranks - np.arange(1, 10) / 10).max() < 0.015
    exact_fields = ("count", "missing", "nan", "inf", "type_mismatch", "min", "max", "integer")
    assert [amount_m[k] for k in exact_fields] == [amount_w[k] for k in exact_fields]
    assert amount_m["mean"] == pytest.approx(amount_w["mean"], rel=1e-9)
    assert amount_m["std"] == pytest.approx(amount_w["std"], rel=1e-9)
    clicks_w, clicks_m = whole.features["clicks"].to_json(), merged.features["clicks"].to_json()
    moments = ("mean", "std", "m2", "sketch")
    assert _without(clicks_m, *moments) == _without(clicks_w, *moments)
    assert clicks_m["mean"] == pytest.approx(clicks_w["mean"], rel=1e-9)
    assert clicks_m["std"] == pytest.approx(clicks_w["std"], rel=1e-9)
    tokens_w, tokens_m = whole.features["tokens"].to_json(), merged.features["tokens"].to_json()
    assert _without(tokens_m, "length") == _without(tokens_w, "length")
    assert tokens_m["length"]["bins"] == tokens_w["length"]["bins"]
    assert tokens_m["length"]["std"] == pytest.approx(tokens_w["length"]["std"], rel=1e-9)


def test_merged_quantile_edges_are_within_the_sketch_rank_error_of_exact_quantiles() -> None:
    rng = np.random.default_rng(10)
    data = np.concatenate([rng.lognormal(size=24_000), rng.normal(50, 5, size=16_000)])
    rng.shuffle(data)
    exact = np.sort(data)
    parts = [profile_columns({"x": part.tolist()}) for part in np.array_split(data, 4)]

    merged = parts[0].merge(*parts[1:]).features["x"].to_json()

    edges = np.array(merged["bins"]["edges"])
    deciles = np.arange(1, 10) / 10
    rank_error = np.abs(rank(exact, edges) - deciles)
    # KLL k=400: ~0.7% normalized rank error (99% confidence); allow 1.5%.
    assert len(edges) == 9
    assert rank_error.max() < 0.015
    assert np.all(np.quantile(data, deciles - 0.015, method="inverted_cdf") <= edges)
    assert np.all(edges <= np.quantile(data, deciles + 0.015, method="inverted_cdf"))
    true_fractions = np.diff([0.0, *rank(exact, edges), 1.0])
    assert np.abs(np.array(merged["bins"]["fractions"]) - true_fractions).max() < 0.015
    assert merged["count"] == 40_000
    assert merged["mean"] == pytest.approx(data.mean(), rel=1e-9)
    assert merged["std"] == pytest.approx(data.std(), rel=1e-9)
    assert (merged["min"], merged["max"]) == (data.min(), data.max())


@pytest.mark.parametrize("only_first", [True, False])
def test_feature_in_one_partition_gets_the_other_rows_as_missing(only_first: bool) -> None:
    with_extra = profile_records([{"a": 1, "extra": "x"}, {"a": 2, "extra": None}])
    without = profile_records([{"a": 3}, {"a": 4}, {"a": 5}])
    first, second = (with_extra, without) if only_first else (without, with_extra)

    merged = first.merge(second)

    extra = merged.features["extra"]
    assert (merged.rows, extra.count, extra.missing) == (5, 1, 4)
    assert extra.to_json()["vocabulary"] == {"x": 1}
    assert (merged.features["a"].count, merged.features["a"].missing) == (5, 0)


def test_merge_keeps_sources_and_leaves_its_inputs_unchanged() -> None:
    first = profile_columns({"x": [1.0, 2.0], "c": ["a", "b"]})
    second = profile_columns({"x": [3.0], "c": ["a"]})
    first.sources = [Source("a.csv", "csv", 2)]
    second.sources = [Source("b.csv", "csv", 1)]
    hashes = (first.baseline_hash, second.baseline_hash)

    merged = first.merge(second)

    assert (first.baseline_hash, second.baseline_hash) == hashes
    assert [s.path for s in merged.sources] == ["a.csv", "b.csv"]
    assert merged.features["c"].to_json()["vocabulary"] == {"a": 2, "b": 1}
    assert merged.created_at.endswith("Z")


def test_merged_baseline_round_trips_through_a_file(tmp_path: Path) -> None:
    columns = _training_columns(2000)
    merged = profile_columns(_rows(columns, 0, 700)).merge(
        profile_columns(_rows(columns, 700, 2000))
    )

    merged.save(tmp_path / "merged.json")
    loaded = Baseline.load(tmp_path / "merged.json")

    assert loaded.rows == 2000
    assert loaded.features["country"].to_json() == merged.features["country"].to_json()


def test_all_null_partition_merges_into_the_kind_of_the_other() -> None:
    empty = profile_records([{"x": None}, {"x": None}])
    strings = profile_records([{"x": "a"}, {"x": "b"}, {"x": "a"}])

    for merged in (empty.merge(strings), strings.merge(empty)):
        stats = merged.features["x"].to_json()
        assert (stats["kind"], stats["count"], stats["missing"]) == ("categorical", 3, 2)
        assert stats["vocabulary"] == {"a": 2, "b": 1}


def test_merging_after_an_all_null_partition_keeps_the_type_counts() -> None:
    empty = profile_records([{"x": None}, {"x": None}])
    strings = profile_records([{"x": "a"}, {"x": "b"}])

    merged = empty.merge(strings)

    assert merged.features["x"].types == {"string": 2}


def test_merge_of_different_kinds_names_the_feature() -> None:
    numbers = profile_records([{"age": 31}, {"age": 40}])
    strings = profile_records([{"age": "thirty"}, {"age": "forty"}])

    with pytest.raises(BaselineError, match="feature 'age' is numeric in one baseline and "):
        numbers.merge(strings)


def test_merge_of_different_categorical_value_types_names_the_feature() -> None:
    strings = profile_records([{"flag": "yes"}])
    bools = profile_records([{"flag": True}])

    with pytest.raises(BaselineError, match="^feature 'flag': cannot merge a string categorical"):
        strings.merge(bools)


def test_merge_of_different_settings_is_refused() -> None:
    first = profile_records([{"x": 1}], ProfileOptions(settings=ProfileSettings(top_k=5)))
    second = profile_records([{"x": 2}])

    with pytest.raises(BaselineError, match="different settings: .*'top_k': 5.* vs .*'top_k': 20"):
        first.merge(second)


def test_merged_vocabulary_over_the_cap_is_marked_incomplete() -> None:
    options = ProfileOptions(settings=ProfileSettings(vocabulary_cap=4))
    first = profile_columns({"c": [f"v{i}" for i in range(4) for _ in range(i + 1)]}, options)
    second = profile_columns({"c": [f"w{i}" for i in range(4) for _ in range(10 + i)]}, options)

    merged = first.merge(second).features["c"].to_json()

    assert merged["count"] == 10 + 46
    assert merged["vocabulary"] == {"w3": 13, "w2": 12, "w1": 11, "w0": 10}
    assert (merged["vocabulary_complete"], merged["other_count"]) == (False, 10)


def test_merge_combines_ranges_integer_ness_and_pruned_counts() -> None:
    options = ProfileOptions(settings=ProfileSettings(vocabulary_cap=2))
    first = profile_records(
        [
            {"x": 1, "ids": [3, 4], "c": "a"},
            {"x": 2, "ids": [5], "c": "a"},
            {"x": 3, "ids": [4], "c": "a"},
            {"c": "b"},
            {"c": "b"},
            {"c": "z"},
        ],
        options,
    )
    second = profile_records(
        [{"x": 0.5, "ids": [-1, 1.5], "c": "b"}, {"x": 10.0, "c": "b"}, {"c": "q"}], options
    )

    assert first.features["c"].to_json()["other_count"] == 1  # "z" was pruned
    for merged in (first.merge(second), second.merge(first)):
        x = merged.features["x"].to_json()
        assert (x["count"], x["missing"], x["min"], x["max"], x["integer"]) == (
            5,
            4,
            0.5,
            10.0,
            False,
        )
        ids = merged.features["ids"].to_json()
        assert ids["element"] == {
            "count": 6,
            "nonfinite": 0,
            "min": -1.0,
            "max": 5.0,
            "integer": False,
        }
        assert ids["shapes"] == {"1": 2, "2": 2}
        c = merged.features["c"].to_json()
        assert (c["count"], c["vocabulary"], c["other_count"]) == (9, {"b": 4, "a": 3}, 2)
        assert c["vocabulary_complete"] is False
