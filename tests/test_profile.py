from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sidecar.baseline import Baseline, ProfileSettings
from sidecar.profile import (
    ProfileOptions,
    Profiler,
    profile_columns,
    profile_dataframe,
    profile_files,
    profile_records,
)
from sidecar.readers import Chunk

UTC = timezone.utc


def feature(baseline: Baseline, name: str) -> dict[str, Any]:
    """A feature as the baseline file spells it."""
    return baseline.features[name].to_json()


def rank(sorted_data: np.ndarray[Any, Any], x: Any) -> np.ndarray[Any, Any]:
    """Fraction of the data at or below x: the rank a bin edge stands for."""
    return np.searchsorted(sorted_data, x, side="right") / len(sorted_data)


# -- numeric -------------------------------------------------------------------------


def test_float_column_is_numeric_with_moments_equal_to_numpy() -> None:
    rng = np.random.default_rng(1)
    finite = rng.normal(3.0, 2.0, size=3000)
    values: list[Any] = [*finite.tolist(), None, None, math.nan, math.inf, -math.inf, math.inf]
    rng.shuffle(values)

    stats = feature(profile_columns({"x": values}), "x")

    assert stats["kind"] == "numeric"
    assert stats["role"] == "input"
    assert stats["types"] == {"number": 3004}
    assert (stats["count"], stats["missing"], stats["nan"], stats["inf"]) == (3000, 2, 1, 3)
    assert stats["type_mismatch"] == 0
    assert stats["integer"] is False
    assert stats["min"] == finite.min()
    assert stats["max"] == finite.max()
    assert stats["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(finite.std(ddof=0), rel=1e-12)
    assert stats["value_counts"] is None


@pytest.mark.parametrize(
    ("values", "integer"),
    [
        ([1, 2, 3, -4], True),
        ([1.0, 2.0, 1e15], True),
        ([1, 2, 2.5], False),
        ([0.1, 0.2], False),
    ],
)
def test_integer_ness_is_recorded(values: list[float], integer: bool) -> None:
    assert feature(profile_columns({"x": values}), "x")["integer"] is integer


@pytest.mark.parametrize(
    "distribution",
    [
        lambda rng: rng.normal(size=40_000),
        lambda rng: rng.lognormal(sigma=1.5, size=40_000),
        lambda rng: rng.integers(0, 1_000_000, size=40_000).astype(float),
        lambda rng: np.concatenate([rng.uniform(0, 1, 30_000), rng.uniform(100, 101, 10_000)]),
    ],
    ids=["normal", "lognormal", "wide-integers", "bimodal"],
)
def test_quantile_edges_sit_at_deciles_within_the_sketch_rank_error(distribution: Any) -> None:
    data = distribution(np.random.default_rng(2))
    exact = np.sort(data)

    stats = feature(profile_columns({"x": data.tolist()}), "x")
    edges = np.array(stats["bins"]["edges"])
    fractions = np.array(stats["bins"]["fractions"])

    assert "values" not in stats["bins"]
    assert len(edges) == 9
    assert np.all(np.diff(edges) > 0)
    # KLL k=400 has ~0.7% normalized rank error; 1.5% leaves room for bad luck.
    assert np.abs(rank(exact, edges) - np.arange(1, 10) / 10).max() < 0.015
    deciles = np.arange(1, 10) / 10
    assert np.all(np.quantile(data, deciles - 0.015, method="inverted_cdf") <= edges)
    assert np.all(edges <= np.quantile(data, deciles + 0.015, method="inverted_cdf"))
    assert math.isclose(fractions.sum(), 1.0, abs_tol=1e-12)
    true_fractions = np.diff([0.0, *rank(exact, edges), 1.0])
    assert np.abs(fractions - true_fractions).max() < 0.015


def test_a_few_thousand_values_get_exactly_the_decile_edges_of_numpy() -> None:
    data = np.random.default_rng(9).lognormal(size=5000)

    stats = feature(profile_columns({"x": data.tolist()}, ProfileOptions(chunk_rows=999)), "x")

    deciles = np.arange(1, 10) / 10
    assert stats["bins"]["edges"] == np.quantile(data, deciles, method="inverted_cdf").tolist()
    true_fractions = np.diff([0.0, *rank(np.sort(data), stats["bins"]["edges"]), 1.0])
    np.testing.assert_allclose(stats["bins"]["fractions"], true_fractions, atol=1e-12)


def test_small_continuous_column_gets_exact_decile_edges() -> None:
    data = np.arange(1, 101, dtype=float) + 0.5

    stats = feature(profile_columns({"x": data.tolist()}), "x")

    exact = np.sort(data)
    np.testing.assert_allclose(rank(exact, stats["bins"]["edges"]), np.arange(1, 10) / 10)
    np.testing.assert_allclose(stats["bins"]["fractions"], [0.1] * 10)


def test_discrete_numeric_gets_one_bin_per_value_with_exact_fractions() -> None:
    rng = np.random.default_rng(3)
    data = rng.choice([-1.0, 0.0, 2.5, 7.0], size=1001, p=[0.1, 0.5, 0.3, 0.1])

    stats = feature(profile_columns({"x": data.tolist()}, ProfileOptions(chunk_rows=100)), "x")

    values, counts = np.unique(data, return_counts=True)
    assert stats["bins"]["values"] == values.tolist()
    # Fractions are stored to 12 decimals.
    assert stats["bins"]["fractions"] == pytest.approx([*(counts / 1001).tolist(), 0.0], abs=1e-12)
    assert stats["value_counts"] == [
        [v, c] for v, c in zip(values.tolist(), counts.tolist(), strict=True)
    ]
    assert stats["integer"] is False


@pytest.mark.parametrize("chunk_rows", [4, 1000])
@pytest.mark.parametrize(("distinct", "discrete"), [(5, True), (5 + 1, False)])
def test_discrete_max_decides_between_value_bins_and_quantile_bins(
    distinct: int, discrete: bool, chunk_rows: int
) -> None:
    options = ProfileOptions(settings=ProfileSettings(discrete_max=5), chunk_rows=chunk_rows)
    values = [float(i % distinct) for i in range(60)]

    stats = feature(profile_columns({"x": values}, options), "x")

    assert ("values" in stats["bins"]) is discrete
    assert (stats["value_counts"] is not None) is discrete


def test_column_of_only_nan_and_inf_has_no_bins() -> None:
    stats = feature(profile_columns({"x": [math.nan, math.inf, -math.inf, None]}), "x")

    assert stats["kind"] == "numeric"
    assert (stats["count"], stats["nan"], stats["inf"], stats["missing"]) == (0, 1, 2, 1)
    assert stats["bins"] is None
    assert stats["min"] is None and stats["mean"] is None


def test_ints_beyond_float_range_count_as_infinite() -> None:
    values = [10**400, -(10**400), 2**64, 1, 2]

    stats = feature(profile_columns({"x": values}), "x")

    assert stats["kind"] == "numeric"
    assert (stats["count"], stats["inf"], stats["nan"]) == (3, 2, 0)
    assert stats["max"] == float(2**64)
    assert stats["min"] == 1.0
    assert stats["mean"] == pytest.approx((2**64 + 3) / 3)


# -- categorical ---------------------------------------------------------------------


def test_string_column_has_an_exact_vocabulary_and_top_k_bins() -> None:
    rng = np.random.default_rng(4)
    values = rng.choice(list("abcdefg"), size=500, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.06, 0.04])
    column: list[Any] = [*values.tolist(), None, None]
    options = ProfileOptions(settings=ProfileSettings(top_k=3), chunk_rows=64)

    stats = feature(profile_columns({"c": column}, options), "c")

    truth = Counter(values.tolist())
    ranked = sorted(truth.items(), key=lambda kv: (-kv[1], kv[0]))
    assert stats["kind"] == "categorical"
    assert stats["value_type"] == "string"
    assert (stats["count"], stats["missing"], stats["distinct"]) == (500, 2, 7)
    assert stats["vocabulary"] == dict(truth)
    assert stats["vocabulary_complete"] is True
    assert stats["other_count"] == 0
    assert stats["bins"]["values"] == [k for k, _ in ranked[:3]] + ["__other__"]
    top = [c / 500 for _, c in ranked[:3]]
    assert stats["bins"]["fractions"] == pytest.approx([*top, 1 - sum(top)], abs=1e-12)


def test_boolean_column_is_a_bool_categorical() -> None:
    stats = feature(profile_columns({"b": [True, False, True, None, True]}), "b")

    assert stats["kind"] == "categorical"
    assert stats["value_type"] == "bool"
    assert stats["vocabulary"] == {"true": 3, "false": 1}
    assert stats["bins"] == {"values": ["true", "false", "__other__"], "fractions": [0.75, 0.25, 0]}
    assert stats["missing"] == 1


def test_vocabulary_cap_keeps_the_most_frequent_values_and_counts_the_rest() -> None:
    # Value i appears 20 - i times: 12 distinct values with distinct counts.
    values = [f"v{i}" for i in range(12) for _ in range(20 - i)]
    options = ProfileOptions(settings=ProfileSettings(vocabulary_cap=5, top_k=2))

    stats = feature(profile_columns({"c": values}, options), "c")

    assert stats["count"] == len(values)
    assert stats["vocabulary"] == {f"v{i}": 20 - i for i in range(5)}
    assert stats["vocabulary_complete"] is False
    assert stats["distinct"] == 5
    assert stats["other_count"] == sum(20 - i for i in range(5, 12))
    assert stats["bins"]["values"] == ["v0", "v1", "__other__"]
    assert stats["bins"]["fractions"] == pytest.approx([20 / 174, 19 / 174, 135 / 174])


def test_megabyte_strings_are_counted_as_categories() -> None:
    big = "x" * 1_000_000
    other = "y" * 1_000_000 + "z"

    stats = feature(profile_records([{"s": big}, {"s": other}, {"s": big}, {"s": "a"}]), "s")

    assert stats["kind"] == "categorical"
    assert stats["vocabulary"] == {big: 2, "a": 1, other: 1}
    assert stats["bins"]["values"][0] == big


# -- lists ---------------------------------------------------------------------------


def test_token_id_lists_record_lengths_shapes_and_the_id_range() -> None:
    rng = np.random.default_rng(5)
    vocab = 1000
    lengths = rng.integers(1, 40, size=400)
    lists = [rng.integers(0, vocab, size=n).tolist() for n in lengths]
    lists[0][0], lists[1][0] = 0, vocab - 1
    options = ProfileOptions(chunk_rows=50)

    stats = feature(profile_columns({"ids": [*lists, None]}, options), "ids")

    assert stats["kind"] == "list"
    assert stats["element_type"] == "number"
    assert (stats["count"], stats["missing"], stats["type_mismatch"]) == (400, 1, 0)
    assert stats["shapes"] == {str(n): c for n, c in Counter(lengths.tolist()).items()}
    assert stats["element"] == {
        "count": int(lengths.sum()),
        "nonfinite": 0,
        "min": 0.0,
        "max": float(vocab - 1),
        "integer": True,
    }
    length = stats["length"]
    assert (length["count"], length["min"], length["max"]) == (400, lengths.min(), lengths.max())
    assert length["mean"] == pytest.approx(lengths.mean(), rel=1e-12)
    assert length["std"] == pytest.approx(lengths.std(), rel=1e-12)


def test_nested_lists_record_their_shape() -> None:
    matrix = [[1.5, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, -12]]

    stats = feature(profile_records([{"m": matrix}, {"m": matrix}, {"m": [[1, 2]]}]), "m")

    assert stats["shapes"] == {"3x4": 2, "1x2": 1}
    assert stats["element"]["count"] == 26
    assert (stats["element"]["min"], stats["element"]["max"]) == (-12.0, 11.0)
    assert stats["element"]["integer"] is False


def test_lists_of_strings_and_empty_lists() -> None:
    stats = feature(profile_records([{"t": ["a", "b"]}, {"t": []}, {"t": ["c"]}]), "t")

    assert stats["element_type"] == "string"
    assert stats["shapes"] == {"2": 1, "0": 1, "1": 1}
    assert stats["element"]["count"] == 0
    assert stats["length"]["mean"] == 1.0


def test_list_element_type_does_not_depend_on_which_list_comes_first() -> None:
    numbers_first = profile_columns({"x": [[1, 2], [3], [4, 5], ["a"]]})
    strings_first = profile_columns({"x": [["a"], [1, 2], [3], [4, 5]]})

    for baseline in (numbers_first, strings_first):
        stats = feature(baseline, "x")
        assert (stats["element_type"], stats["type_mismatch"]) == ("number", 1)


# -- timestamps ----------------------------------------------------------------------


def test_iso_timestamps_count_hours_weekdays_and_utc_offsets_as_written() -> None:
    rng = np.random.default_rng(6)
    start = datetime(2024, 3, 1)
    suffixes = ["+02:00", "-05:30", "Z", ""]
    texts = []
    for seconds, suffix in zip(
        rng.integers(0, 60 * 86400, size=300), rng.choice(suffixes, size=300), strict=True
    ):
        wall = start + timedelta(seconds=int(seconds))
        texts.append(wall.isoformat(sep=str(rng.choice(["T", " "]))) + suffix)

    stats = feature(profile_columns({"t": [*texts, None]}, ProfileOptions(chunk_rows=70)), "t")

    parsed = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in texts]
    epochs = [(d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp() for d in parsed]
    offsets = Counter(
        {"+02:00": "+02:00", "-05:30": "-05:30", "Z": "+00:00", "": "naive"}[s]
        for s in (t[19:] for t in texts)
    )
    assert stats["kind"] == "timestamp"
    assert stats["encoding"] == "iso"
    assert (stats["count"], stats["missing"], stats["type_mismatch"]) == (300, 1, 0)
    assert stats["hour_counts"] == np.bincount([d.hour for d in parsed], minlength=24).tolist()
    assert (
        stats["weekday_counts"] == np.bincount([d.weekday() for d in parsed], minlength=7).tolist()
    )
    assert stats["utc_offsets"] == dict(offsets)
    assert (stats["min_epoch"], stats["max_epoch"]) == (min(epochs), max(epochs))
    first = datetime.fromtimestamp(min(epochs), UTC)
    assert stats["min"] == first.isoformat().replace("+00:00", "Z")


def test_unparseable_strings_in_a_timestamp_column_are_type_mismatches() -> None:
    texts = [f"2024-01-{d:02d}T10:00:00" for d in range(1, 29)] * 4
    texts[50] = "2024-02-30T10:00:00"

    stats = feature(profile_columns({"t": texts}), "t")

    assert stats["kind"] == "timestamp"
    assert (stats["count"], stats["type_mismatch"]) == (111, 1)
    assert stats["hour_counts"][10] == 111


@pytest.mark.parametrize(("scale", "encoding"), [(1, "epoch_s"), (1000, "epoch_ms")])
def test_epoch_numbers_are_timestamps_with_a_timestamp_override(scale: int, encoding: str) -> None:
    rng = np.random.default_rng(7)
    seconds = rng.integers(1_600_000_000, 1_700_000_000, size=200)
    values: list[Any] = [int(s) * scale for s in seconds] + [math.nan, "soon", None]
    options = ProfileOptions(timestamp=frozenset({"t"}))

    stats = feature(profile_columns({"t": values}, options), "t")

    moments = [datetime.fromtimestamp(int(s), UTC) for s in seconds]
    assert stats["kind"] == "timestamp"
    assert stats["encoding"] == encoding
    assert (stats["count"], stats["type_mismatch"], stats["missing"]) == (200, 2, 1)
    assert stats["utc_offsets"] == {"+00:00": 200}
    assert stats["hour_counts"] == np.bincount([m.hour for m in moments], minlength=24).tolist()
    assert (
        stats["weekday_counts"] == np.bincount([m.weekday() for m in moments], minlength=7).tolist()
    )
    assert (stats["min_epoch"], stats["max_epoch"]) == (seconds.min(), seconds.max())


def test_without_an_override_epoch_numbers_are_numeric() -> None:
    assert feature(profile_columns({"t": [1_700_000_000, 1_700_000_001]}), "t")["kind"] == "numeric"


def test_int_beyond_float_range_is_a_type_mismatch_in_an_epoch_timestamp_column() -> None:
    options = ProfileOptions(timestamp=frozenset({"t"}))

    stats = feature(profile_columns({"t": [1_700_000_000, 10**400]}, options), "t")

    assert (stats["count"], stats["type_mismatch"]) == (1, 1)


# -- records and data frames -----------------------------------------------------------


def test_nested_objects_are_flattened_to_dotted_names() -> None:
    records = [
        {"user": {"age": 31, "geo": {"country": "FR"}}, "n": 1},
        {"user": {"age": 40, "geo": {"country": "DE"}}, "n": 2},
        {"user": {"age": 25}, "n": 3},
    ]

    baseline = profile_records(records)

    assert list(baseline.features) == ["user.age", "user.geo.country", "n"]
    assert feature(baseline, "user.age")["mean"] == pytest.approx(32.0)
    country = feature(baseline, "user.geo.country")
    assert country["vocabulary"] == {"FR": 1, "DE": 1}
    assert country["missing"] == 1


def test_dataframe_columns_are_profiled_with_pandas_missing_values() -> None:
    df = pd.DataFrame(
        {
            "a": [1.5, np.nan, 3.0],
            "b": ["x", None, "y"],
            "c": pd.to_datetime(["2024-01-01 10:00", None, "2024-01-02 11:00"]),
        }
    )

    baseline = profile_dataframe(df)

    summary = {n: (f.kind, f.count, f.missing) for n, f in baseline.features.items()}
    assert summary == {
        "a": ("numeric", 2, 1),
        "b": ("categorical", 2, 1),
        "c": ("timestamp", 2, 1),
    }
    assert feature(baseline, "c")["hour_counts"][10:12] == [1, 1]


# -- overrides -----------------------------------------------------------------------


def test_categorical_override_turns_numbers_into_a_number_vocabulary() -> None:
    options = ProfileOptions(categorical=frozenset({"zip"}))

    stats = feature(profile_columns({"zip": [75001, 10115, 75001, None]}, options), "zip")

    assert stats["kind"] == "categorical"
    assert stats["value_type"] == "number"
    assert stats["vocabulary"] == {"75001": 2, "10115": 1}
    assert stats["missing"] == 1


def test_excluded_columns_are_left_out() -> None:
    options = ProfileOptions(exclude=frozenset({"secret", "user.email"}))
    records = [{"secret": "s", "user": {"email": "e", "age": 3}, "x": 1}]

    baseline = profile_records(records, options)

    assert list(baseline.features) == ["user.age", "x"]


def test_prediction_columns_get_the_prediction_role() -> None:
    options = ProfileOptions(prediction=frozenset({"score"}))

    baseline = profile_columns({"score": [0.1, 0.9], "x": [1, 2]}, options)

    assert baseline.features["score"].role == "prediction"
    assert baseline.features["x"].role == "input"
    assert feature(baseline, "score")["role"] == "prediction"


def test_numeric_override_keeps_a_mostly_string_column_numeric() -> None:
    values: list[Any] = ["a", "b", "c", "d", 1, 2.5, None]

    inferred = feature(profile_columns({"x": values}), "x")
    forced = feature(profile_columns({"x": values}, ProfileOptions(numeric=frozenset({"x"}))), "x")

    assert inferred["kind"] == "categorical"
    assert forced["kind"] == "numeric"
    assert (forced["count"], forced["type_mismatch"], forced["missing"]) == (2, 4, 1)
    assert (forced["min"], forced["max"]) == (1.0, 2.5)


def test_numeric_override_on_a_column_without_numbers_gives_empty_statistics() -> None:
    options = ProfileOptions(numeric=frozenset({"x"}))

    stats = feature(profile_columns({"x": ["a", "b"]}, options), "x")

    assert (stats["kind"], stats["count"], stats["type_mismatch"]) == ("numeric", 0, 2)
    assert stats["bins"] is None


# -- mixed types ---------------------------------------------------------------------


def test_numeric_column_with_a_few_strings_stays_numeric() -> None:
    values: list[Any] = [float(i) for i in range(95)] + ["n/a"] * 3 + ["?", True]

    stats = feature(profile_columns({"x": values}), "x")

    assert stats["kind"] == "numeric"
    assert stats["count"] == 95
    assert stats["type_mismatch"] == 5
    assert stats["types"] == {"number": 95, "string": 4, "bool": 1}
    assert stats["mean"] == pytest.approx(47.0)


@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])
def test_kind_and_counts_do_not_depend_on_whether_strings_or_numbers_come_first(
    chunk_rows: int,
) -> None:
    numbers = np.random.default_rng(8).normal(size=200).tolist()
    strings = ["n/a"] * 5 + ["unknown"] * 3
    options = ProfileOptions(chunk_rows=chunk_rows)

    first = feature(profile_columns({"x": strings + numbers}, options), "x")
    last = feature(profile_columns({"x": numbers + strings}, options), "x")

    assert first["kind"] == "numeric"
    assert (first["count"], first["type_mismatch"]) == (200, 8)
    for moment in ("mean", "std", "m2"):
        assert first.pop(moment) == pytest.approx(last.pop(moment), rel=1e-12)
    first.pop("sketch")
    last.pop("sketch")
    assert first == last


def test_categorical_value_type_does_not_depend_on_whether_booleans_or_strings_come_first() -> None:
    options = ProfileOptions(chunk_rows=2)

    bools_first = profile_columns({"x": [True, False, "yes", "no", "maybe", "yes"]}, options)
    strings_first = profile_columns({"x": ["yes", "no", "maybe", "yes", True, False]}, options)

    assert feature(bools_first, "x")["value_type"] == "string"
    assert feature(strings_first, "x")["value_type"] == "string"


# -- CSV -----------------------------------------------------------------------------


def test_csv_columns_are_typed_from_their_cells(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        "id,price,city,member,score,note\n"
        "1,9.5,Paris,true,nan,\n"
        "2,,Berlin,false,inf,hi\n"
        "3,12,Paris,True,1.5,\n"
        "4,7.25,,FALSE,-inf,x\n"
    )

    baseline = profile_files([path], ProfileOptions(chunk_rows=3))

    assert baseline.rows == 4
    assert [(s.path, s.format, s.rows) for s in baseline.sources] == [(str(path), "csv", 4)]
    ident, price = feature(baseline, "id"), feature(baseline, "price")
    assert (ident["kind"], ident["integer"], ident["mean"]) == ("numeric", True, 2.5)
    assert (price["kind"], price["count"], price["missing"]) == ("numeric", 3, 1)
    assert price["integer"] is False
    assert price["mean"] == pytest.approx(np.mean([9.5, 12, 7.25]))
    city = feature(baseline, "city")
    assert (city["kind"], city["value_type"]) == ("categorical", "text")
    assert (city["vocabulary"], city["missing"]) == ({"Paris": 2, "Berlin": 1}, 1)
    member = feature(baseline, "member")
    assert (member["kind"], member["value_type"]) == ("categorical", "bool")
    assert member["vocabulary"] == {"true": 2, "false": 2}
    score = feature(baseline, "score")
    assert (score["count"], score["nan"], score["inf"], score["missing"]) == (1, 1, 2, 0)
    note = feature(baseline, "note")
    assert (note["vocabulary"], note["missing"]) == ({"hi": 1, "x": 1}, 2)


def test_csv_iso_timestamps_are_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("t\n2024-05-06T07:08:09+01:00\n2024-05-07 23:00:00\n")

    stats = feature(profile_files([path]), "t")

    assert (stats["kind"], stats["count"]) == ("timestamp", 2)
    assert stats["utc_offsets"] == {"+01:00": 1, "naive": 1}
    assert stats["weekday_counts"][:2] == [1, 1]


def test_several_files_are_one_baseline_with_a_source_each(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.jsonl"
    first.write_text("x\n1\n2\n")
    second.write_text('{"x": 3, "y": "a"}\n')

    baseline = profile_files([first, second])

    assert [(s.format, s.rows) for s in baseline.sources] == [("csv", 2), ("jsonl", 1)]
    assert feature(baseline, "x")["mean"] == 2.0
    assert (feature(baseline, "y")["count"], feature(baseline, "y")["missing"]) == (1, 2)


def test_csv_epoch_seconds_are_timestamps_with_a_timestamp_override(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("t,x\n1700000000,1\n,2\n1700003600,3\nnan,4\n")

    stats = feature(profile_files([path], ProfileOptions(timestamp=frozenset({"t"}))), "t")

    assert (stats["kind"], stats["encoding"]) == ("timestamp", "epoch_s")
    assert (stats["count"], stats["missing"], stats["type_mismatch"]) == (2, 1, 1)
    assert (stats["min_epoch"], stats["max_epoch"]) == (1_700_000_000, 1_700_003_600)
    assert stats["hour_counts"][22:] == [1, 1]


def test_one_stray_cell_does_not_spoil_the_epoch_seconds_of_its_chunk(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("t\n1700000000\nsoon\n1700003600\n")

    stats = feature(profile_files([path], ProfileOptions(timestamp=frozenset({"t"}))), "t")

    assert (stats["encoding"], stats["count"], stats["type_mismatch"]) == ("epoch_s", 2, 1)


def test_csv_column_kind_does_not_depend_on_chunk_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("v\na\nb\n" + "".join(f"{i}\n" for i in range(1, 99)))

    kinds = {
        k: feature(profile_files([path], ProfileOptions(chunk_rows=k)), "v")["kind"]
        for k in (3, 1000)
    }

    assert kinds == {3: "numeric", 1000: "numeric"}


def test_numeric_override_keeps_the_numbers_of_a_mostly_text_csv_column(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("v\na\nb\nc\n1\n2.5\n")

    stats = feature(profile_files([path], ProfileOptions(numeric=frozenset({"v"}))), "v")

    assert (stats["kind"], stats["count"], stats["type_mismatch"]) == ("numeric", 2, 3)
    assert (stats["min"], stats["max"]) == (1.0, 2.5)


def test_csv_text_column_keeps_number_like_cells_in_its_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("size\nS\nM\nL\n10\nS\n")

    stats = feature(profile_files([path]), "size")

    assert stats["vocabulary"] == {"S": 2, "M": 1, "L": 1, "10": 1}
    assert stats["type_mismatch"] == 0


def test_csv_text_column_statistics_do_not_depend_on_chunk_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("size\nS\nM\n10\n10\nL\nS\n")

    one, three, six = (
        feature(profile_files([path], ProfileOptions(chunk_rows=k)), "size") for k in (1, 3, 6)
    )

    assert one == three == six


# -- missing values across chunks ------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 5, 1000])
def test_columns_absent_from_some_chunks_count_those_rows_as_missing(chunk_rows: int) -> None:
    records: list[dict[str, Any]] = [{"a": i, "early": "e"} for i in range(4)]
    records += [{"a": i, "late": float(i)} for i in range(4, 9)]
    records += [{"a": 9, "late": None, "empty": None}]

    baseline = profile_records(records, ProfileOptions(chunk_rows=chunk_rows))

    assert baseline.rows == 10
    counts = {n: (f.count, f.missing) for n, f in baseline.features.items()}
    assert counts == {"a": (10, 0), "early": (4, 6), "late": (5, 5), "empty": (0, 10)}


def test_profiler_counts_a_column_first_seen_in_a_later_chunk_as_missing_before() -> None:
    profiler = Profiler()

    profiler.add(Chunk({"a": [1, 2, 3]}, 3))
    profiler.add(Chunk({"b": ["x", None]}, 2))
    profiler.add(Chunk({"a": [4], "b": ["y"]}, 1))
    baseline = profiler.baseline()

    assert baseline.rows == 6
    assert (baseline.features["a"].count, baseline.features["a"].missing) == (4, 2)
    assert (baseline.features["b"].count, baseline.features["b"].missing) == (2, 4)


def test_all_null_column_is_kept_with_every_row_missing(tmp_path: Path) -> None:
    baseline = profile_columns({"x": [None] * 7, "y": list(range(7))})

    stats = feature(baseline, "x")
    assert (stats["count"], stats["missing"], stats["type_mismatch"]) == (0, 7, 0)
    assert stats["kind"] == "numeric"
    assert stats["types"] == {}
    path = tmp_path / "b.json"
    baseline.save(path)
    assert feature(Baseline.load(path), "x") == stats


@pytest.mark.parametrize(("name", "text"), [("empty.jsonl", ""), ("header.csv", "a,b\n")])
def test_empty_training_file_gives_an_empty_baseline(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)

    baseline = profile_files([path])

    assert (baseline.rows, baseline.features) == (0, {})
    assert [s.rows for s in baseline.sources] == [0]
    baseline.save(tmp_path / "b.json")
    assert Baseline.load(tmp_path / "b.json").rows == 0
