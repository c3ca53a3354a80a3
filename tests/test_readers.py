from __future__ import annotations

import gzip
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidecar.readers import (
    Chunk,
    ReaderError,
    file_format,
    iter_column_chunks,
    iter_dataframe_chunks,
    iter_file_chunks,
    iter_parquet_chunks,
    iter_record_chunks,
)


def write(path: Path, text: str) -> Path:
    """Write text as UTF-8, gzipped when the name ends in .gz."""
    data = text.encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def concat(chunks: Iterable[Chunk]) -> dict[str, list[object]]:
    """All chunks as one table; a column absent from a chunk is None there."""
    table: dict[str, list[object]] = {}
    rows = 0
    for chunk in chunks:
        for values in chunk.columns.values():
            assert len(values) == chunk.rows
        for name, values in chunk.columns.items():
            table.setdefault(name, [None] * rows).extend(values)
        rows += chunk.rows
        for values in table.values():
            values.extend([None] * (rows - len(values)))
    return table


# -- CSV and TSV ---------------------------------------------------------------------


CSV_TABLE = {"id": ["1", "2", "3"], "name": ["a", None, "c d"], "score": ["0.5", "1.5", None]}


@pytest.mark.parametrize(
    ("filename", "format"),
    [
        ("train.csv", None),
        ("train.tsv", None),
        ("train.csv.gz", None),
        ("TRAIN.TSV.GZ", None),
        ("export.txt", "csv"),
        ("export.gz", "tsv"),
    ],
)
def test_csv_and_tsv_round_trip_as_text(tmp_path: Path, filename: str, format: str | None) -> None:
    sep = "\t" if "tsv" in (format or filename.lower()) else ","
    lines = [
        sep.join(["id", "name", "score"]),
        f"1{sep}a{sep}0.5",
        f"2{sep}{sep}1.5",
        f"3{sep}c d{sep}",
    ]
    path = write(tmp_path / filename, "\n".join(lines) + "\n")

    chunks = list(iter_file_chunks(path, format=format))

    assert [c.text for c in chunks] == [True]
    assert chunks[0].rows == 3
    assert chunks[0].columns == CSV_TABLE


def test_csv_handles_a_bom_crlf_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", '\ufeffid,text\r\n1,"a\r\nb"\r\n\r\n2,"x,y"\r\n')
    (chunk,) = iter_file_chunks(path)
    assert chunk.columns == {"id": ["1", "2"], "text": ["a\r\nb", "x,y"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3\n", "3: expected 2 fields, got 1"),
        ("a,b\n1,2,3\n", "2: expected 2 fields, got 3"),
        ('a,b\n1,"x\ny"\n2\n', "4: expected 2 fields, got 1"),
        ('a,b\n1,"x\ny",z\n', "2: expected 2 fields, got 3"),
        ("a,b,a\n1,2,3\n", "1: duplicate column name 'a'"),
    ],
)
def test_malformed_csv_names_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "train.csv", text)
    assert _message(path) == f"{path}:{message}"


def test_csv_parser_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "long.csv", "a\nshort\n" + "x" * 200_000 + "\n")
    assert _message(path).startswith(f"{path}:3: field larger than field limit")


def test_csv_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"name\ncaf\xe9\n")
    assert "latin.csv: not UTF-8 text" in _message(path)


# -- JSON lines ------------------------------------------------------------------------


JSONL_TEXT = """\
{"id": 1, "user": {"age": 30, "geo": {"country": "DE"}}, "tags": ["x", "y"]}

{"id": 2, "user": {"age": null}, "score": 0.5, "ok": true}
{"id": 3, "tags": [], "user": {"geo": {"country": "FR"}}}
"""

JSONL_TABLE = {
    "id": [1, 2, 3],
    "user.age": [30, None, None],
    "user.geo.country": ["DE", None, "FR"],
    "tags": [["x", "y"], None, []],
    "score": [None, 0.5, None],
    "ok": [None, True, None],
}


@pytest.mark.parametrize(
    "filename", ["train.jsonl", "train.ndjson", "train.json", "train.jsonl.gz", "train.json.gz"]
)
def test_json_lines_round_trip_flattened_with_late_keys_padded(
    tmp_path: Path, filename: str
) -> None:
    (chunk,) = iter_file_chunks(write(tmp_path / filename, JSONL_TEXT))
    assert chunk.text is False
    assert chunk.rows == 3
    assert chunk.columns == JSONL_TABLE
    assert list(chunk.columns) == list(JSONL_TABLE)  # first-appearance order


def test_json_lines_skip_a_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    (chunk,) = iter_file_chunks(path)
    assert chunk.columns == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}\n{"a": \n', "train.jsonl:2: invalid JSON: "),
        ('{"a": 1}\n\n{"a": x}\n', "train.jsonl:3: invalid JSON: unexpected character"),
        ('{"a": 1}\n[1, 2]\n', "train.jsonl:2: expected a JSON object, got list"),
        ('{"a": 1}\n"text"\n', "train.jsonl:2: expected a JSON object, got str"),
        ("null\n", "train.jsonl:1: expected a JSON object, got null"),
        ('[{"a": 1}]\n', "train.jsonl:1: expected a JSON object, got list (one object per line"),
    ],
)
def test_malformed_json_lines_name_the_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path / "train.jsonl", text)
    assert _message(path).startswith(f"{path}:")
    assert message in _message(path)


# -- Parquet ------------------------------------------------------------------------------


def _parquet(path: Path, rows: int = 3) -> Path:
    berlin = timezone(timedelta(hours=2))
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "user": pa.array(
                [{"age": 30 + i, "geo": {"country": "DE"}} for i in range(rows - 1)] + [None],
                pa.struct([("age", pa.int32()), ("geo", pa.struct([("country", pa.string())]))]),
            ),
            "seen": pa.array(
                [datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=berlin)] * (rows - 1) + [None],
                pa.timestamp("ns", tz="+02:00"),
            ),
            "naive": pa.array([datetime(2024, 1, 2)] * rows, pa.timestamp("ms")),
            "day": pa.array([datetime(2024, 1, 2).date()] * rows, pa.date32()),
            "tags": pa.array([["a"]] * rows, pa.list_(pa.string())),
            "price": pa.array([Decimal("1.50")] * rows, pa.decimal128(5, 2)),
        }
    )
    pq.write_table(table, path)
    return path


def test_parquet_round_trips_structs_and_timestamps(tmp_path: Path) -> None:
    (chunk,) = iter_file_chunks(_parquet(tmp_path / "train.parquet"))
    assert chunk.text is False
    assert chunk.rows == 3
    assert chunk.columns == {
        "id": [0, 1, 2],
        "user.age": [30, 31, None],
        "user.geo.country": ["DE", "DE", None],
        "seen": ["2024-01-02T03:04:05.123456+02:00"] * 2 + [None],
        "naive": ["2024-01-02T00:00:00"] * 3,
        "day": ["2024-01-02"] * 3,
        "tags": [["a"]] * 3,
        "price": [1.5] * 3,
    }


def _row_groups(path: Path) -> Path:
    """Four row groups of 10 rows: ids 0..39."""
    pq.write_table(pa.table({"id": pa.array(range(40), pa.int64())}), path, row_group_size=10)
    return path


def test_parquet_reads_only_the_row_groups_asked_for(tmp_path: Path) -> None:
    path = str(_row_groups(tmp_path / "train.parquet"))
    chunks = list(iter_parquet_chunks(path, row_groups=(1, 2), chunk_rows=8))
    assert concat(chunks) == {"id": list(range(10, 30))}


def test_parquet_reports_progress_over_the_row_groups_asked_for(tmp_path: Path) -> None:
    path = _row_groups(tmp_path / "train.parquet")
    calls: list[tuple[int, int]] = []
    chunks = iter_parquet_chunks(
        str(path), row_groups=(2, 3), chunk_rows=10, progress=lambda *a: calls.append(a)
    )
    assert sum(chunk.rows for chunk in chunks) == 20
    size = path.stat().st_size
    assert calls == [(size // 2, size), (size, size)]


def test_parquet_reads_through_an_fsspec_filesystem_as_from_disk(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    path = _parquet(tmp_path / "train.parquet", rows=5)
    memory = fsspec.filesystem("memory")
    memory.pipe("/readers-test/train.parquet", path.read_bytes())
    try:
        remote = list(iter_parquet_chunks("/readers-test/train.parquet", filesystem=memory))
    finally:
        memory.rm("/readers-test", recursive=True)
    assert remote == list(iter_file_chunks(path))


def test_a_missing_file_on_an_fsspec_filesystem_is_named(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    chunks = iter_parquet_chunks(
        "/readers-test/none.parquet", filesystem=fsspec.filesystem("memory")
    )
    with pytest.raises(ReaderError, match="/readers-test/none.parquet: not a readable Parquet"):
        next(chunks)


def test_a_file_that_is_not_parquet_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.pq", "not parquet at all")
    assert f"{path}: not a readable Parquet file" in _message(path)


def test_reading_parquet_without_pyarrow_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _parquet(tmp_path / "train.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ReaderError, match=r"pip install 'skew-sidecar\[parquet\]'"):
        iter_file_chunks(path)


# -- files in general --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("a.csv", "csv"),
        ("a.TSV", "tsv"),
        ("dir.v2/a.jsonl.gz", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.json", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
    ],
)
def test_file_format_comes_from_the_extension(filename: str, expected: str) -> None:
    assert file_format(filename) == expected


@pytest.mark.parametrize(
    ("filename", "format", "message"),
    [
        ("train.txt", None, "train.txt: unknown file type .txt; expected one of .csv, .tsv"),
        ("train", None, "train: unknown file type (no extension)"),
        ("train.parquet.gz", None, "train.parquet.gz: Parquet compresses internally"),
        ("train.csv", "xml", "train.csv: unknown format 'xml'; expected one of csv, tsv"),
    ],
)
def test_unknown_formats_are_rejected_when_called(
    tmp_path: Path, filename: str, format: str | None, message: str
) -> None:
    path = write(tmp_path / filename, "a\n1\n")
    with pytest.raises(ReaderError) as info:
        iter_file_chunks(path, format=format)  # not iterated: checked eagerly
    assert message in str(info.value)


def test_a_missing_file_is_named_when_called(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(ReaderError, match="nope.csv: no such file"):
        iter_file_chunks(path)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "data.csv").mkdir()
    with pytest.raises(ReaderError, match="data.csv: is a directory"):
        iter_file_chunks(tmp_path / "data.csv")


def test_a_truncated_gzip_file_is_named(tmp_path: Path) -> None:
    data = gzip.compress(("a,b\n" + "1,2\n" * 1000).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    assert str(path) in _message(path)


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("empty.csv", ""),
        ("header_only.csv", "a,b\n"),
        ("blank.tsv", "\n\n"),
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n"),
        ("empty.csv.gz", ""),
    ],
)
def test_an_empty_file_yields_no_chunks(tmp_path: Path, filename: str, text: str) -> None:
    assert list(iter_file_chunks(write(tmp_path / filename, text))) == []


def test_an_empty_parquet_file_yields_no_chunks(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.int64())}), path)
    assert list(iter_file_chunks(path)) == []


@pytest.mark.parametrize("filename", ["big.csv", "big.csv.gz", "big.jsonl", "big.parquet"])
def test_progress_grows_and_ends_at_the_file_size(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    if filename.endswith(".parquet"):
        pq.write_table(pa.table({"a": list(range(1000))}), path, row_group_size=100)
    elif ".jsonl" in filename:
        write(path, "".join(f'{{"a": {i}}}\n' for i in range(1000)))
    else:
        write(path, "a\n" + "".join(f"{i}\n" for i in range(1000)))
    calls: list[tuple[int, int]] = []

    chunks = list(iter_file_chunks(path, chunk_rows=100, progress=lambda *c: calls.append(c)))

    size = path.stat().st_size
    assert len(chunks) == 10
    assert len(calls) >= 10
    assert all(total == size for _, total in calls)
    done = [read for read, _ in calls]
    assert done == sorted(done)
    assert calls[-1] == (size, size)


# -- in-memory data -----------------------------------------------------------------------


def test_records_are_flattened_with_later_keys_padded() -> None:
    records: list[dict[str, object]] = [
        {"a": 1, "b": {"c": 2}},
        {"d": [1, 2]},
        {"b": {"c": None, "e": "x"}},
    ]
    (chunk,) = iter_record_chunks(records)
    assert chunk.text is False
    assert chunk.columns == {
        "a": [1, None, None],
        "b.c": [2, None, None],
        "d": [None, [1, 2], None],
        "b.e": [None, None, "x"],
    }


def test_a_record_that_is_not_a_mapping_is_named_by_index() -> None:
    records: list[Any] = [{"a": 1}, {"a": 2}, 7]
    with pytest.raises(ReaderError, match=r"^record 2: expected a mapping, got int$"):
        list(iter_record_chunks(records, chunk_rows=1))


def test_columns_convert_numpy_values_to_python_ones() -> None:
    columns: dict[str, Any] = {
        "x": [1, "a", None],
        "i": np.arange(3, dtype=np.int32),
        "f": np.array([1.5, np.nan, 3.0]),
        "b": np.array([True, False, True]),
        "t": np.array(["2024-01-02T03:04:05.123456789", "NaT", "2024-01-02"], "datetime64[ns]"),
        "d": np.array(["2024-01-02", "NaT", "2024-01-03"], "datetime64[D]"),
        "v": np.zeros((3, 2)),
    }
    (chunk,) = iter_column_chunks(columns)
    assert chunk.rows == 3
    assert chunk.columns == {
        "x": [1, "a", None],
        "i": [0, 1, 2],
        "f": [1.5, None, 3.0],
        "b": [True, False, True],
        "t": ["2024-01-02T03:04:05.123456", None, "2024-01-02T00:00:00.000000"],
        "d": ["2024-01-02", None, "2024-01-03"],
        "v": [[0.0, 0.0]] * 3,
    }
    assert {type(v) for v in chunk.columns["i"]} == {int}


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"a": [1, 2], "b": [1]}, "column 'b' has 1 values but column 'a' has 2"),
        ({"a": np.arange(2), "b": np.arange(3)}, "column 'b' has 3 values but column 'a' has 2"),
        ({"a": "abc"}, "column 'a': expected a sequence of values, got str"),
    ],
)
def test_bad_columns_are_named(columns: dict[str, Any], message: str) -> None:
    with pytest.raises(ReaderError, match=message):
        iter_column_chunks(columns)


def test_dataframes_read_pandas_missing_values_as_none() -> None:
    utc = timezone.utc
    df = pd.DataFrame(
        {
            "f": [1.5, np.nan, 3.0],
            "i": pd.array([1, None, 3], dtype="Int64"),
            "n": np.array([1, 2, 3], dtype=np.int64),
            "s": ["a", None, "c"],
            "b": [True, False, True],
            "t": pd.to_datetime(
                ["2024-01-02 03:04:05.123456789", None, "2024-01-03"], format="ISO8601"
            ),
            "tz": pd.to_datetime(["2024-01-02 03:04:05", None, None]).tz_localize(utc),
            "o": [np.int64(4), pd.NA, np.float64(0.5)],
            "nested": [{"a": 1, "b": {"c": 2}}, None, {"a": 3}],
            7: ["x", "y", "z"],
        }
    )
    (chunk,) = iter_dataframe_chunks(df)
    assert chunk.rows == 3
    assert chunk.text is False
    assert chunk.columns == {
        "f": [1.5, None, 3.0],
        "i": [1, None, 3],
        "n": [1, 2, 3],
        "s": ["a", None, "c"],
        "b": [True, False, True],
        "t": ["2024-01-02T03:04:05.123456", None, "2024-01-03T00:00:00"],
        "tz": ["2024-01-02T03:04:05+00:00", None, None],
        "o": [4, None, 0.5],
        "nested.a": [1, None, 3],
        "nested.b.c": [2, None, None],
        "nested": [None, None, None],
        "7": ["x", "y", "z"],
    }
    assert all(type(v) in (int, float, str, bool, type(None)) for v in chunk.columns["o"])


def test_dataframes_with_duplicate_column_names_are_rejected() -> None:
    df = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(ReaderError, match="DataFrame column 'a' appears more than once"):
        iter_dataframe_chunks(df)


def test_reading_a_dataframe_without_pandas_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ReaderError, match=r"pip install 'skew-sidecar\[pandas\]'"):
        iter_dataframe_chunks(object())


@pytest.mark.parametrize(
    "empty",
    [
        lambda: iter_record_chunks([]),
        lambda: iter_column_chunks({}),
        lambda: iter_column_chunks({"a": []}),
        lambda: iter_dataframe_chunks(pd.DataFrame({"a": []})),
    ],
)
def test_empty_in_memory_data_yields_no_chunks(empty: Callable[[], Iterator[Chunk]]) -> None:
    assert list(empty()) == []


# -- chunking ------------------------------------------------------------------------------

ROWS = [{"id": i, "name": f"n{i}", **({"late": i} if i == 4 else {})} for i in range(5)]


def _csv_source(tmp_path: Path, chunk_rows: int) -> Iterator[Chunk]:
    text = "id,name\n" + "".join(f"{r['id']},{r['name']}\n" for r in ROWS)
    return iter_file_chunks(write(tmp_path / "t.csv", text), chunk_rows=chunk_rows)


def _jsonl_source(tmp_path: Path, chunk_rows: int) -> Iterator[Chunk]:
    text = "".join(orjson.dumps(r).decode() + "\n" for r in ROWS)
    return iter_file_chunks(write(tmp_path / "t.jsonl.gz", text), chunk_rows=chunk_rows)


def _parquet_source(tmp_path: Path, chunk_rows: int) -> Iterator[Chunk]:
    return iter_file_chunks(_parquet(tmp_path / "t.parquet", rows=5), chunk_rows=chunk_rows)


SOURCES: dict[str, Callable[[Path, int], Iterator[Chunk]]] = {
    "csv": _csv_source,
    "jsonl": _jsonl_source,
    "parquet": _parquet_source,
    "records": lambda _, n: iter_record_chunks(iter(ROWS), chunk_rows=n),
    "columns": lambda _, n: iter_column_chunks(
        {"id": np.arange(5), "name": [f"n{i}" for i in range(5)]}, chunk_rows=n
    ),
    "dataframe": lambda _, n: iter_dataframe_chunks(pd.DataFrame(ROWS), chunk_rows=n),
}


@pytest.mark.parametrize("source", SOURCES)
def test_chunks_hold_at_most_chunk_rows_and_concatenate_to_the_whole(
    tmp_path: Path, source: str
) -> None:
    read = SOURCES[source]
    chunks = list(read(tmp_path, 2))
    whole = list(read(tmp_path, 1000))
    assert [c.rows for c in chunks] == [2, 2, 1]
    assert len(whole) == 1
    assert concat(chunks) == whole[0].columns


@pytest.mark.parametrize("chunk_rows", [0, -1])
def test_chunk_rows_must_be_positive(chunk_rows: int) -> None:
    with pytest.raises(ValueError, match=f"chunk_rows must be at least 1, got {chunk_rows}"):
        iter_record_chunks([], chunk_rows=chunk_rows)


def _message(path: Path) -> str:
    with pytest.raises(ReaderError) as info:
        list(iter_file_chunks(path))
    return str(info.value)
