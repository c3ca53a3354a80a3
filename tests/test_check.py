from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.baseline import Baseline
from sidecar.check import BATCH_ROWS, InputProblems, check_file
from sidecar.profile import ProfileOptions
from sidecar.report import WindowReport

COLORS = ("red", "green", "blue")


def rows(n: int) -> list[dict[str, Any]]:
    """Deterministic rows: x spread evenly over [10, 19.9], three colours, a model score."""
    return [
        {"x": 10 + (i * 37 % 100) / 10, "color": COLORS[i % 3], "score": (i % 10) / 10}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return Baseline.from_records(rows(300), ProfileOptions(prediction=frozenset({"score"})))


def write_lines(path: Path, lines: list[Any]) -> Path:
    """One request body a line; str items are written verbatim (for broken lines)."""
    data = b"".join(
        (line.encode() if isinstance(line, str) else orjson.dumps(line)) + b"\n" for line in lines
    )
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def check(baseline: Baseline, path: Path, **kwargs: Any) -> list[WindowReport]:
    return list(check_file(baseline, path, **kwargs))


# -- windows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "window_rows"),
    [
        (10, 3),
        (9, 3),
        (10, 10),
        (10, 100),
        (7, 1),
        (BATCH_ROWS + 1, BATCH_ROWS),
        (2500, 1000),  # windows straddle the 1024-row batches
    ],
)
def test_window_rows_splits_m_rows_into_ceil_m_over_n_windows_that_add_up(
    baseline: Baseline, tmp_path: Path, total: int, window_rows: int
) -> None:
    path = write_lines(tmp_path / "requests.jsonl", rows(total))
    reports = check(baseline, path, window_rows=window_rows)
    assert len(reports) == math.ceil(total / window_rows)
    assert sum(r.rows for r in reports) == total
    assert all(r.rows == window_rows for r in reports[:-1])
    assert all(r.features["x"].values == r.rows for r in reports)


def test_without_window_rows_the_whole_file_is_one_window(
    baseline: Baseline, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "requests.jsonl", rows(2500))
    [report] = check(baseline, path)
    assert report.rows == 2500


def test_a_line_holding_a_list_of_records_counts_each_record_as_a_row(
    baseline: Baseline, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "requests.jsonl", [rows(1)[0], rows(3), [], rows(2)])
    [report] = check(baseline, path)
    assert report.rows == 6
    assert report.features["x"].values == 6
    # A list's records may straddle a window boundary.
    assert [r.rows for r in check(baseline, path, window_rows=4)] == [4, 2]


def test_items_of_a_list_that_are_not_objects_are_rejected_rows(
    baseline: Baseline, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "requests.jsonl", [[rows(1)[0], 5, "row", None]])
    [report] = check(baseline, path)
    assert (report.rows, report.rejected_rows) == (1, 3)


def test_an_empty_file_gives_one_empty_window(baseline: Baseline, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "requests.jsonl", [])
    [report] = check(baseline, path)
    assert report.rows == 0
    assert set(report.features) == {"x", "color"}
    assert all(f.values == 0 and f.drifted is None for f in report.features.values())


@pytest.mark.parametrize("window_rows", [0, -1])
def test_window_rows_below_one_is_rejected(
    baseline: Baseline, tmp_path: Path, window_rows: int
) -> None:
    path = write_lines(tmp_path / "requests.jsonl", rows(3))
    with pytest.raises(ValueError, match="window_rows must be positive"):
        check(baseline, path, window_rows=window_rows)


# -- unusable lines ------------------------------------------------------------------------


def test_unusable_lines_are_counted_and_noted_with_their_line_numbers(
    baseline: Baseline, tmp_path: Path
) -> None:
    lines: list[Any] = [rows(1)[0], "not json", "", "42", "null", rows(1)[0], '{"x": ']
    path = write_lines(tmp_path / "requests.jsonl", lines)
    problems = InputProblems()
    [report] = check(baseline, path, problems=problems)
    assert report.rows == 2
    assert (problems.invalid_json, problems.not_rows, problems.total) == (2, 2, 4)
    assert [note.split(":")[0] for note in problems.first_lines] == [
        "line 2",
        "line 4",
        "line 5",
        "line 7",
    ]
    assert "invalid JSON" in problems.first_lines[0]
    assert "expected a JSON object or a list of objects" in problems.first_lines[1]


def test_input_problems_keep_only_the_first_five_lines(baseline: Baseline, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "requests.jsonl", ["{"] * 8)
    problems = InputProblems()
    check(baseline, path, problems=problems)
    assert problems.invalid_json == 8
    assert [note.split(":")[0] for note in problems.first_lines] == [
        f"line {i}" for i in range(1, 6)
    ]


def test_a_line_that_is_a_list_without_any_record_is_an_unusable_line(
    baseline: Baseline, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "requests.jsonl", [rows(1)[0], [1, 2]])
    problems = InputProblems()
    check(baseline, path, problems=problems)
    assert problems.not_rows == 1
    assert problems.first_lines[0].startswith("line 2:")


# -- gzip --------------------------------------------------------------------------------


def test_gzip_request_files_give_the_same_reports_as_plain_ones(
    baseline: Baseline, tmp_path: Path
) -> None:
    lines: list[Any] = [*rows(150), "not json"]
    plain = write_lines(tmp_path / "requests.jsonl", lines)
    packed = write_lines(tmp_path / "requests.jsonl.gz", lines)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    plain_problems, packed_problems = InputProblems(), InputProblems()
    expected = [r.to_json() for r in check(baseline, plain, problems=plain_problems)]
    got = [r.to_json() for r in check(baseline, packed, problems=packed_problems)]
    assert got == expected
    assert expected[0]["rows"] == 150
    assert packed_problems == plain_problems


def test_gzipped_requests_are_detected_by_content_like_training_files(
    baseline: Baseline, tmp_path: Path
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows(20))))
    problems = InputProblems()
    [report] = check(baseline, path, problems=problems)
    assert problems.total == 0
    assert report.rows == 20


# -- roles and unknown features ----------------------------------------------------------


def test_prediction_features_are_checked_only_when_asked(
    baseline: Baseline, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "requests.jsonl", rows(50))
    [inputs] = check(baseline, path)
    [both] = check(baseline, path, roles=("input", "prediction"))
    assert set(inputs.features) == {"x", "color"}
    assert set(both.features) == {"x", "color", "score"}
    assert both.features["score"].role == "prediction"
    assert both.features["score"].values == 50


def test_keys_missing_from_the_baseline_count_as_unknown_features(
    baseline: Baseline, tmp_path: Path
) -> None:
    lines = [{"x": 12.0, "color": "red", "extra": i, "more": None} for i in range(5)]
    [report] = check(baseline, write_lines(tmp_path / "requests.jsonl", lines))
    assert report.unknown_features == 10


def test_a_prediction_column_in_requests_is_not_an_unknown_feature(
    baseline: Baseline, tmp_path: Path
) -> None:
    [report] = check(baseline, write_lines(tmp_path / "requests.jsonl", rows(5)))
    assert report.unknown_features == 0
