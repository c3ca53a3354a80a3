from __future__ import annotations

import gzip
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar import __version__
from sidecar.baseline import Baseline
from sidecar.cli import main
from sidecar.demo import serving_rows

COLORS = ("red", "green", "blue")
FEATURES = {"x", "color", "when", "z", "epoch", "score"}
# What `check --json` documents for every feature, and what it may add.
DOCUMENTED_KEYS = {
    "values",
    "missing",
    "nonfinite",
    "out_of_range_low",
    "out_of_range_high",
    "type_mismatch",
    "unseen_category",
    "shape_mismatch",
    "psi",
    "js_distance",
    "linf",
    "wasserstein",
    "ks",
    "mean_shift",
    "scale_ratio",
    "drifted",
    "diagnosis",
    "notes",
}
OPTIONAL_KEYS = {"kind", "role", "p_value"}
COUNT_KEYS = (
    "values",
    "missing",
    "nonfinite",
    "out_of_range_low",
    "out_of_range_high",
    "type_mismatch",
    "unseen_category",
    "shape_mismatch",
)


def rows(n: int = 300) -> list[dict[str, Any]]:
    """Deterministic rows: the first 300 are the training set; 300 again are a clean window.

    x takes 100 values in [10, 19.9] and z 50 values in [0, 49] (quantile bins), colours
    and hours repeat evenly, `epoch` is a plain number and `score` the model output.
    """
    return [
        {
            "x": 10 + (i * 37 % 100) / 10,
            "color": COLORS[i % 3],
            "when": f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
            "z": float(i * 13 % 50),
            "epoch": 1_767_225_600 + 3600 * i,
            "score": (i % 10) / 10,
        }
        for i in range(n)
    ]


def write_lines(path: Path, lines: list[Any]) -> Path:
    """One JSON body a line (gzipped for .gz); str items are written verbatim."""
    data = b"".join(
        (line.encode() if isinstance(line, str) else orjson.dumps(line)) + b"\n" for line in lines
    )
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    header = list(records[0])
    lines = [",".join(header)] + [",".join(str(r[k]) for k in header) for r in records]
    data = "\n".join(lines).encode() + b"\n"
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def check_json(
    capsys: pytest.CaptureFixture[str], baseline: Path, requests: Path, *args: object
) -> list[dict[str, Any]]:
    code, out, err = run(capsys, "check", "-b", baseline, requests, "--json", *args)
    assert (code, err) == (0, "")
    return [orjson.loads(line) for line in out.splitlines()]


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("skew-sidecar: error: ")
    assert err.count("\n") == 1 and err.endswith("\n")
    for fragment in fragments:
        assert fragment in err


def report_table(text: str) -> list[tuple[str, str]]:
    """(feature, verdict) of each row of the report table (the one with a verdict column)."""
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("feature") and "verdict" in line
    )
    table = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = line.split()
        table.append((cells[0], cells[-2]))  # the verdict, before the diagnosis column
    return table


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("baseline")
    train = write_lines(folder / "train.jsonl", rows())
    out = folder / "baseline.json"
    assert main(["profile", str(train), "-o", str(out), "--prediction-column", "score", "-q"]) == 0
    return out


# -- profile -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "fmt"),
    [
        ("train.jsonl", "jsonl"),
        ("train.csv", "csv"),
        ("train.jsonl.gz", "jsonl"),
        ("train.csv.gz", "csv"),
    ],
)
def test_profile_writes_a_baseline_that_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, filename: str, fmt: str
) -> None:
    path = tmp_path / filename
    if fmt == "csv":
        write_csv(path, rows())
    else:
        write_lines(path, rows())
    out = tmp_path / "baseline.json"
    code, stdout, err = run(capsys, "profile", path, "-o", out)
    assert (code, err) == (0, "")
    assert stdout.splitlines()[0].startswith("baseline ")
    assert stdout.splitlines()[-1] == f"wrote {out}"
    loaded = Baseline.load(out)
    assert loaded.rows == 300
    assert [(s.path, s.format, s.rows) for s in loaded.sources] == [(str(path), fmt, 300)]
    kinds = {name: f.kind for name, f in loaded.features.items()}
    assert kinds == {
        "x": "numeric",
        "color": "categorical",
        "when": "timestamp",
        "z": "numeric",
        "epoch": "numeric",
        "score": "numeric",
    }
    assert all(f.count == 300 and f.role == "input" for f in loaded.features.values())
    x: Any = loaded.features["x"].stats
    assert (x.min, x.max) == (10.0, pytest.approx(19.9))


def test_profile_quiet_prints_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    train = write_lines(tmp_path / "train.jsonl", rows(20))
    assert run(capsys, "profile", train, "-o", tmp_path / "b.json", "-q") == (0, "", "")
    assert Baseline.load(tmp_path / "b.json").rows == 20


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--categorical", "x,z"], {"x": ("categorical", "input"), "z": ("categorical", "input")}),
        (
            ["--categorical", "x", "--categorical", "z"],
            {"x": ("categorical", "input"), "z": ("categorical", "input")},
        ),
        (
            ["--categorical", " x , z ,"],
            {"x": ("categorical", "input"), "z": ("categorical", "input")},
        ),
        (["--exclude", "color,z"], {"color": None, "z": None, "x": ("numeric", "input")}),
        (["--exclude", "color", "--exclude", "z"], {"color": None, "z": None}),
        (["--prediction-column", "score"], {"score": ("numeric", "prediction")}),
        (
            ["--prediction-column", "score,color"],
            {"score": ("numeric", "prediction"), "color": ("categorical", "prediction")},
        ),
        (["--timestamp", "epoch"], {"epoch": ("timestamp", "input")}),
        (["--numeric", "score", "--categorical", "score"], {"score": ("categorical", "input")}),
    ],
)
def test_profile_column_options_take_effect_in_the_saved_baseline(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    options: list[str],
    expected: dict[str, tuple[str, str] | None],
) -> None:
    train = write_lines(tmp_path / "train.jsonl", rows())
    out = tmp_path / "baseline.json"
    code, _, err = run(capsys, "profile", train, "-o", out, "-q", *options)
    assert (code, err) == (0, "")
    features = Baseline.load(out).features
    for name, want in expected.items():
        if want is None:
            assert name not in features
        else:
            assert (features[name].kind, features[name].role) == want
    untouched = FEATURES - set(expected)
    assert untouched <= set(features)
    # The saved file says the same as the loaded object.
    saved = orjson.loads(out.read_bytes())["features"]
    assert {n: (f["kind"], f["role"]) for n, f in saved.items()} == {
        n: (f.kind, f.role) for n, f in features.items()
    }


def test_profile_timestamp_option_reads_epoch_seconds_from_json_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = write_lines(tmp_path / "train.jsonl", rows(48))
    out = tmp_path / "baseline.json"
    assert run(capsys, "profile", train, "-o", out, "-q", "--timestamp", "epoch")[0] == 0
    stats: Any = Baseline.load(out).features["epoch"].stats
    assert (stats.count, stats.type_mismatch, stats.encoding) == (48, 0, "epoch_s")
    assert stats.hour_counts == [2] * 24  # one row an hour for two days


def test_profile_timestamp_option_reads_epoch_seconds_from_csv(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = write_csv(tmp_path / "train.csv", rows(48))
    out = tmp_path / "baseline.json"
    code, _, err = run(capsys, "profile", train, "-o", out, "-q", "--timestamp", "epoch")
    assert (code, err) == (0, "")
    stats: Any = Baseline.load(out).features["epoch"].stats
    assert (stats.count, stats.type_mismatch) == (48, 0)


def test_profile_categorical_option_on_csv_keeps_numbers_as_category_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = write_csv(tmp_path / "train.csv", [{"zip": z, "n": 1} for z in ("02139", "10001")])
    out = tmp_path / "baseline.json"
    assert run(capsys, "profile", train, "-o", out, "-q", "--categorical", "zip")[0] == 0
    stats: Any = Baseline.load(out).features["zip"].stats
    assert set(stats.vocabulary) == {"02139", "10001"}  # leading zero kept


@pytest.mark.parametrize("bins", [2, 5, 10])
def test_profile_bins_setting_is_saved_and_used_for_quantile_bins(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bins: int
) -> None:
    train = write_lines(tmp_path / "train.jsonl", rows())
    out = tmp_path / "baseline.json"
    assert run(capsys, "profile", train, "-o", out, "-q", "--bins", bins)[0] == 0
    saved = orjson.loads(out.read_bytes())
    assert saved["settings"]["bins"] == bins
    for name in ("x", "z"):
        assert len(saved["features"][name]["bins"]["edges"]) == bins - 1
        assert saved["features"][name]["bins"]["fractions"] == pytest.approx([1 / bins] * bins)
    assert Baseline.load(out).settings.bins == bins


def test_profile_bins_split_evenly_divisible_data_into_equal_bins(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = write_lines(tmp_path / "train.jsonl", [{"v": float(i)} for i in range(100)])
    out = tmp_path / "baseline.json"
    assert run(capsys, "profile", train, "-o", out, "-q", "--bins", 25)[0] == 0
    bins = orjson.loads(out.read_bytes())["features"]["v"]["bins"]
    assert bins["edges"] == [float(v) for v in range(3, 99, 4)]
    assert bins["fractions"] == pytest.approx([0.04] * 25)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--bins", "1"], "bins must be an integer >= 2, got 1"),
        (["--bins", "0"], "bins must be an integer >= 2, got 0"),
        (["--top-k", "0"], "top_k"),
        (["--vocabulary-cap", "0"], "vocabulary_cap"),
        (["--discrete-max", "0"], "discrete_max"),
        (["--sketch-k", "4"], "sketch_k"),
        (["--chunk-rows", "0"], "chunk_rows"),
    ],
)
def test_profile_rejects_bad_settings_in_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, options: list[str], fragment: str
) -> None:
    train = write_lines(tmp_path / "train.jsonl", rows(10))
    out = tmp_path / "baseline.json"
    code, stdout, err = run(capsys, "profile", train, "-o", out, *options)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("missing.csv", None),
        ("missing.jsonl", None),
        ("empty.csv", ""),
        ("header_only.csv", "a,b\n"),
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n\n"),
    ],
)
def test_profile_of_a_missing_or_empty_training_file_fails_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, filename: str, content: str | None
) -> None:
    path = tmp_path / filename
    if content is not None:
        path.write_text(content)
    out = tmp_path / "baseline.json"
    code, stdout, err = run(capsys, "profile", path, "-o", out)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(path))
    assert not out.exists()


def test_profile_names_the_missing_file_among_several(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = write_lines(tmp_path / "a.jsonl", rows(10))
    code, _, err = run(capsys, "profile", good, tmp_path / "b.jsonl", "-o", tmp_path / "o.json")
    assert code == 2
    assert_one_line_error(err, f"{tmp_path / 'b.jsonl'}: no such file")


@pytest.mark.parametrize(
    ("filename", "content", "line"),
    [
        ("train.jsonl", '{"a": 1}\n{"a": \n', 2),
        ("train.jsonl", '{"a": 1}\n{"a": 2}\n[{"a": 3}]\n', 3),
        ("train.jsonl", '{"a": 1}\n42\n', 2),
        ("train.jsonl", '{"a": 1}\n\n{"a": 2}\nnot json\n', 4),
        ("train.csv", "a,b\n1,2\n3\n", 3),
    ],
)
def test_profile_of_malformed_training_data_fails_naming_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, filename: str, content: str, line: int
) -> None:
    path = tmp_path / filename
    path.write_text(content)
    code, stdout, err = run(capsys, "profile", path, "-o", tmp_path / "baseline.json")
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, f"{path}:{line}: ")


def test_profile_to_a_directory_fails_without_leaving_a_temp_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = write_lines(tmp_path / "train.jsonl", rows(10))
    target = tmp_path / "out"
    target.mkdir()
    code, _, err = run(capsys, "profile", train, "-o", target, "-q")
    assert code == 2
    assert_one_line_error(err, str(target.name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.jsonl"]


def test_profile_warns_about_a_column_with_no_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = write_lines(tmp_path / "train.jsonl", [{"a": i, "b": None} for i in range(10)])
    code, _, err = run(capsys, "profile", train, "-o", tmp_path / "baseline.json")
    assert code == 0
    assert "feature 'b' has no values in training (all missing)" in err


# -- profile merge --------------------------------------------------------------------------


def test_profile_merge_adds_up_partitions_like_profiling_the_whole(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = rows()
    parts = [
        write_lines(tmp_path / f"{n}.jsonl", part)
        for n, part in (("a", data[:120]), ("b", data[120:]))
    ]
    whole = write_lines(tmp_path / "whole.jsonl", data)
    for path in (*parts, whole):
        assert run(capsys, "profile", path, "-o", path.with_suffix(".json"), "-q")[0] == 0
    merged_path = tmp_path / "m.json"
    code, out, err = run(
        capsys, "profile", "merge", tmp_path / "a.json", tmp_path / "b.json", "-o", merged_path
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == f"wrote {merged_path}"
    merged = Baseline.load(merged_path)
    full = Baseline.load(tmp_path / "whole.json")
    assert merged.rows == 300
    assert [s.rows for s in merged.sources] == [120, 180]
    assert set(merged.features) == set(full.features)
    for name, feature in merged.features.items():
        assert (feature.kind, feature.count, feature.missing) == (
            full.features[name].kind,
            300,
            0,
        )
        assert feature.types == full.features[name].types
    color: Any = merged.features["color"].stats
    assert color.vocabulary == {"red": 100, "green": 100, "blue": 100}
    x: Any = merged.features["x"].stats
    full_x: Any = full.features["x"].stats
    assert (x.min, x.max) == (full_x.min, full_x.max)
    assert x.mean == pytest.approx(full_x.mean)
    assert x.std == pytest.approx(full_x.std)


def test_profile_merge_counts_a_column_absent_from_one_partition_as_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = write_lines(tmp_path / "a.jsonl", [{"x": float(i), "extra": "e"} for i in range(30)])
    b = write_lines(tmp_path / "b.jsonl", [{"x": float(i)} for i in range(20)])
    for path in (a, b):
        assert run(capsys, "profile", path, "-o", path.with_suffix(".json"), "-q")[0] == 0
    out = tmp_path / "m.json"
    args = ("profile", "merge", a.with_suffix(".json"), b.with_suffix(".json"), "-o", out, "-q")
    assert run(capsys, *args) == (0, "", "")
    merged = Baseline.load(out)
    assert merged.rows == 50
    assert (merged.features["extra"].count, merged.features["extra"].missing) == (30, 20)


def test_profile_merge_of_baselines_with_different_bins_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = write_lines(tmp_path / "train.jsonl", rows(50))
    for bins in (5, 10):
        out = tmp_path / f"b{bins}.json"
        assert run(capsys, "profile", train, "-o", out, "-q", "--bins", bins)[0] == 0
    merged = tmp_path / "m.json"
    code, stdout, err = run(
        capsys, "profile", "merge", tmp_path / "b5.json", tmp_path / "b10.json", "-o", merged
    )
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, "different settings", "'bins': 5", "'bins': 10")
    assert not merged.exists()


@pytest.mark.parametrize("content", [None, "not json", "[]"])
def test_profile_merge_of_an_unreadable_baseline_fails_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path, content: str | None
) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    merged = tmp_path / "m.json"
    code, _, err = run(capsys, "profile", "merge", baseline, bad, "-o", merged)
    assert code == 2
    assert_one_line_error(err, str(bad))
    assert not merged.exists()


# -- check --json ------------------------------------------------------------------------------


def test_check_json_prints_one_object_per_window_with_the_documented_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = write_lines(tmp_path / "requests.jsonl", rows(250))
    windows = check_json(capsys, baseline, requests, "--window-rows", 100)
    assert [w["rows"] for w in windows] == [100, 100, 50]
    for window in windows:
        assert {"rows", "features"} <= set(window)
        assert window["baseline_hash"] == Baseline.load(baseline).baseline_hash
        assert set(window["features"]) == FEATURES - {"score"}
        for feature in window["features"].values():
            assert DOCUMENTED_KEYS <= set(feature) <= DOCUMENTED_KEYS | OPTIONAL_KEYS


@pytest.mark.parametrize(
    ("feature", "kind", "null", "measured"),
    [
        (
            "x",
            "numeric",
            {"linf", "unseen_category"},
            {"psi", "js_distance", "wasserstein", "ks", "mean_shift", "scale_ratio"},
        ),
        (
            "color",
            "categorical",
            {"wasserstein", "ks", "mean_shift", "scale_ratio"},
            {"psi", "js_distance", "linf", "unseen_category"},
        ),
        (
            "when",
            "timestamp",
            {"wasserstein", "ks", "mean_shift", "scale_ratio", "unseen_category"},
            {"psi", "js_distance", "linf"},
        ),
    ],
)
def test_check_json_measures_that_do_not_apply_to_a_kind_are_null(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    baseline: Path,
    feature: str,
    kind: str,
    null: set[str],
    measured: set[str],
) -> None:
    [window] = check_json(capsys, baseline, write_lines(tmp_path / "r.jsonl", rows()))
    report = window["features"][feature]
    assert (report["kind"], report["role"]) == (kind, "input")
    assert {k for k in null if report[k] is not None} == set()
    assert {k for k in measured if report[k] is None} == set()
    # The clean window is the training set again: no skew, no verdict of drift.
    assert report["psi"] == pytest.approx(0, abs=1e-9)
    assert report["drifted"] is False


@pytest.mark.parametrize(
    ("n", "min_rows", "verdict"),
    [(50, 100, False), (99, 100, False), (100, 100, True), (300, 100, True), (20, 10, True)],
)
def test_check_json_drifted_is_null_for_a_window_below_min_rows(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    baseline: Path,
    n: int,
    min_rows: int,
    verdict: bool,
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", rows(n))
    [window] = check_json(capsys, baseline, requests, "--min-rows", min_rows)
    for feature in window["features"].values():
        if verdict:
            assert isinstance(feature["drifted"], bool)
            assert feature["p_value"] is not None
        else:
            assert feature["drifted"] is None
            assert feature["p_value"] is None
            assert feature["psi"] is not None  # measured, just no verdict


def test_check_json_counts_match_what_was_injected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = rows(200)
    for i in range(0, 4):
        del requests[i]["color"]  # absent
    for i in range(4, 7):
        requests[i]["color"] = None  # null
    for i in range(40, 46):
        requests[i]["color"] = "purple"  # never seen in training
    for i in range(10, 13):
        requests[i]["x"] = "12.5"  # a string in a numeric column
    for i in range(20, 25):
        requests[i]["x"] = 25.0  # above the training max of 19.9
    for i in range(30, 32):
        requests[i]["x"] = 1.0  # below the training min of 10
    for i in range(50, 52):
        requests[i]["when"] = 12345  # a number where training had ISO strings
    for i in range(60, 69):
        del requests[i]["z"]
    [window] = check_json(capsys, baseline, write_lines(tmp_path / "r.jsonl", requests))
    counts = {
        name: tuple(feature[k] for k in COUNT_KEYS) for name, feature in window["features"].items()
    }
    # values, missing, nonfinite, low, high, type_mismatch, unseen, shape
    assert counts == {
        "x": (197, 0, 0, 2, 5, 3, None, 0),
        "color": (193, 7, 0, 0, 0, 0, 6, 0),
        "when": (198, 0, 0, 0, 0, 2, None, 0),
        "z": (191, 9, 0, 0, 0, 0, None, 0),
        "epoch": (200, 0, 0, 0, 0, 0, None, 0),
    }
    assert window["rows"] == 200


def test_check_predictions_adds_the_prediction_columns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", rows())
    [window] = check_json(capsys, baseline, requests, "--predictions")
    assert set(window["features"]) == FEATURES
    assert window["features"]["score"]["role"] == "prediction"
    assert window["features"]["score"]["values"] == 300


# -- check: windows ----------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "window_rows"), [(10, 3), (9, 3), (5, 10), (250, 100), (4, 1)])
def test_check_window_rows_splits_the_file_into_windows_that_add_up(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    baseline: Path,
    total: int,
    window_rows: int,
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", rows(total))
    windows = check_json(capsys, baseline, requests, "--window-rows", window_rows)
    assert len(windows) == math.ceil(total / window_rows)
    assert sum(w["rows"] for w in windows) == total
    assert all(w["rows"] == window_rows for w in windows[:-1])


def test_check_counts_each_record_of_a_list_line_as_a_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    data = rows(13)
    lines: list[Any] = [data[0:3], data[3], data[4:8], data[8:13]]
    requests = write_lines(tmp_path / "r.jsonl", lines)
    assert [w["rows"] for w in check_json(capsys, baseline, requests)] == [13]
    windows = check_json(capsys, baseline, requests, "--window-rows", 5)
    assert [w["rows"] for w in windows] == [5, 5, 3]
    assert [w["features"]["x"]["values"] for w in windows] == [5, 5, 3]


# -- check: bad input ---------------------------------------------------------------------------


def _edited_statistic(baseline: Path, target: Path) -> None:
    data = orjson.loads(baseline.read_bytes())
    data["features"]["x"]["max"] = 99.0
    target.write_bytes(orjson.dumps(data))


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("missing", "cannot read baseline"),
        ("not json", "not valid JSON"),
        ("truncated", "not valid JSON"),
        ("array", "expected a JSON object"),
        ("edited", "the file was edited or damaged after profiling"),
    ],
)
def test_check_with_a_bad_baseline_exits_2_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path, damage: str, fragment: str
) -> None:
    bad = tmp_path / "bad.json"
    if damage == "not json":
        bad.write_text("nope{")
    elif damage == "truncated":
        bad.write_bytes(baseline.read_bytes()[:200])
    elif damage == "array":
        bad.write_text("[]")
    elif damage == "edited":
        _edited_statistic(baseline, bad)
    requests = write_lines(tmp_path / "r.jsonl", rows(5))
    code, stdout, err = run(capsys, "check", "-b", bad, requests)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(bad), fragment)


def test_check_of_a_missing_requests_file_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    missing = tmp_path / "nope.jsonl"
    code, stdout, err = run(capsys, "check", "-b", baseline, missing)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, f"{missing}: no such file")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--window-rows", "0"], "window_rows must be positive"),
        (["--min-rows", "0"], "min_rows"),
        (["--alpha", "1.5"], "alpha"),
        (["--psi-floor", "-1"], "psi_floor"),
    ],
)
def test_check_rejects_bad_settings_in_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    baseline: Path,
    options: list[str],
    fragment: str,
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", rows(5))
    code, stdout, err = run(capsys, "check", "-b", baseline, requests, *options)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, fragment)


UNUSABLE: list[Any] = [*rows(3), "not json", '"a string"', "", "{", "null", *rows(2)]


@pytest.mark.parametrize(("strict", "code"), [([], 0), (["--strict"], 2)])
def test_check_reports_unusable_lines_with_their_numbers(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    baseline: Path,
    strict: list[str],
    code: int,
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", UNUSABLE)
    got, out, err = run(capsys, "check", "-b", baseline, requests, "--json", *strict)
    assert got == code
    [window] = [orjson.loads(line) for line in out.splitlines()]
    assert window["rows"] == 5  # the usable lines are still checked
    assert err.startswith(
        f"warning: 4 unusable lines in {requests} (2 invalid JSON, 2 not rows); first: line 4: "
    )
    for number in (4, 5, 7, 8):
        assert f"line {number}: " in err
    assert "line 6:" not in err  # blank lines are skipped, not unusable


def test_check_strict_passes_a_clean_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", rows(10))
    code, out, err = run(capsys, "check", "-b", baseline, requests, "--strict")
    assert (code, err) == (0, "")
    assert out.startswith("window: 10 rows")


def test_check_strict_fails_on_a_line_that_is_a_list_without_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", [*rows(3), [1, 2]])
    code, _, err = run(capsys, "check", "-b", baseline, requests, "--strict")
    assert code == 2
    assert "line 4: " in err


def test_check_reads_gzip_request_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    lines: list[Any] = [*rows(150), "not json"]
    plain = write_lines(tmp_path / "r.jsonl", lines)
    packed = write_lines(tmp_path / "r.jsonl.gz", lines)
    code, expected, plain_err = run(capsys, "check", "-b", baseline, plain, "--json")
    assert code == 0
    code, got, packed_err = run(capsys, "check", "-b", baseline, packed, "--json")
    assert code == 0
    assert got == expected
    assert orjson.loads(got)["rows"] == 150
    assert packed_err == plain_err.replace(str(plain), str(packed))
    assert "line 151: invalid JSON" in packed_err


def test_check_of_a_truncated_gzip_file_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    whole = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows()))
    requests = tmp_path / "r.jsonl.gz"
    requests.write_bytes(whole[: len(whole) // 2])
    code, _, err = run(capsys, "check", "-b", baseline, requests)
    assert code == 2
    assert str(requests) in err


def test_check_reads_a_plain_file_named_gz_by_its_content(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = tmp_path / "r.jsonl.gz"
    requests.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows(5)))
    code, out, _ = run(capsys, "check", "-b", baseline, requests, "--json")
    assert code == 0
    assert orjson.loads(out)["rows"] == 5


def test_check_without_a_baseline_option_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", str(tmp_path / "r.jsonl")])
    assert exc.value.code == 2
    assert "-b/--baseline" in capsys.readouterr().err


# -- check: the text table ------------------------------------------------------------------------


def test_check_text_table_puts_a_x100_unit_change_first_as_drift(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = rows()
    for row in requests:
        row["z"] *= 100  # z is last in the baseline, so only sorting puts it first
    code, out, err = run(
        capsys, "check", "-b", baseline, write_lines(tmp_path / "r.jsonl", requests)
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("window: 300 rows, baseline ")
    table = report_table(out)
    assert table[0] == ("z", "DRIFT")
    assert dict(table) == {"z": "DRIFT", "x": "ok", "color": "ok", "when": "ok", "epoch": "ok"}


def test_check_text_table_sorts_every_drifted_feature_before_the_rest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = rows()
    for i, row in enumerate(requests):
        row["z"] *= 100
        row["color"] = "purple" if i % 2 else "red"
    code, out, _ = run(capsys, "check", "-b", baseline, write_lines(tmp_path / "r.jsonl", requests))
    assert code == 0
    verdicts = [verdict for _, verdict in report_table(out)]
    assert verdicts == ["DRIFT", "DRIFT", "ok", "ok", "ok"]
    assert {name for name, verdict in report_table(out) if verdict == "DRIFT"} == {"z", "color"}
    assert "unseen=150" in out


def test_check_text_gives_no_verdict_below_min_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = [{**row, "z": row["z"] * 100} for row in rows(50)]
    code, out, _ = run(capsys, "check", "-b", baseline, write_lines(tmp_path / "r.jsonl", requests))
    assert code == 0
    assert "note: fewer than 100 rows, so no drift verdicts" in out
    assert {verdict for _, verdict in report_table(out)} == {"-"}


def test_check_text_separates_windows_with_a_blank_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, baseline: Path
) -> None:
    requests = write_lines(tmp_path / "r.jsonl", rows(5))
    code, out, _ = run(capsys, "check", "-b", baseline, requests, "--window-rows", 2)
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("window: ")]
    assert [h.split(",")[0] for h in headers] == [
        "window: 2 rows",
        "window: 2 rows",
        "window: 1 rows",
    ]
    assert out.count("\n\nwindow: ") == 2


# -- demo and the module entry point ------------------------------------------------------------


def test_demo_runs_offline_and_flags_the_injected_skews(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object) -> None:
        raise AssertionError("the demo must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    folder = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--offline", "--dir", folder)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in folder.iterdir()) == [
        "baseline.json",
        "serving.jsonl",
        "train.jsonl",
    ]
    assert len((folder / "train.jsonl").read_bytes().splitlines()) == 5000
    assert len((folder / "serving.jsonl").read_bytes().splitlines()) == len(list(serving_rows()))
    baseline = Baseline.load(folder / "baseline.json")
    assert baseline.rows == 5000
    assert baseline.features["churn_score"].role == "prediction"
    verdicts = dict(report_table(out))
    for name in ("monthly_charges", "signup_time", "payment_method"):
        assert verdicts[name] == "DRIFT", name
    for name in ("tenure_months", "contract", "is_senior", "device.os", "country"):
        assert verdicts[name] == "ok", name
    assert "churn_score" not in verdicts  # model outputs are not in requests
    assert f"skew-sidecar check -b {folder / 'baseline.json'} {folder / 'serving.jsonl'}" in out


def test_python_m_sidecar_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"skew-sidecar {__version__}\n"
