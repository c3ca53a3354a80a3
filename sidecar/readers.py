"""Training data of any size -> column chunks of bounded size for the profiler.

Every reader yields `Chunk`s of at most `chunk_rows` rows, so memory is bounded by
the chunk size, not by the file. Nested objects become dotted column names with
`flatten`, the same function the serving side applies to request payloads.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, time
from itertools import chain
from typing import Any

import numpy as np
import orjson

from .flatten import flatten

__all__ = [
    "Chunk",
    "ReaderError",
    "file_format",
    "iter_column_chunks",
    "iter_dataframe_chunks",
    "iter_file_chunks",
    "iter_parquet_chunks",
    "iter_record_chunks",
]

FORMATS = ("csv", "tsv", "jsonl", "parquet")
_ALIASES = {"ndjson": "jsonl", "json": "jsonl", "pq": "parquet"}
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_BLANK = object()
_PLAIN_TYPES = frozenset({str, int, float, bool, list, type(None)})


class ReaderError(ValueError):
    """Training data cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class Chunk:
    """Up to `chunk_rows` rows as columns: every list has `rows` values, None = missing.

    `text` is True when the values are raw CSV strings that still need type parsing,
    False when they already have JSON types (int, float, str, bool, None, list).
    """

    columns: dict[str, list[object]]
    rows: int
    text: bool = False


# -- files ----------------------------------------------------------------------------


def file_format(path: str | os.PathLike[str]) -> str:
    """The format named by a file's extension: "csv", "tsv", "jsonl" or "parquet"."""
    name = os.fspath(path)
    lower = name.lower()
    ext = os.path.splitext(lower.removesuffix(".gz"))[1]
    fmt = _EXTENSIONS.get(ext)
    if fmt is None:
        raise ReaderError(
            f"{name}: unknown file type {ext or '(no extension)'}; expected one of "
            f"{', '.join(_EXTENSIONS)} (optionally gzipped as .gz), or pass format="
        )
    if fmt == "parquet" and lower.endswith(".gz"):
        raise ReaderError(f"{name}: Parquet compresses internally; decompress the .gz first")
    return fmt


def iter_file_chunks(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    chunk_rows: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Chunk]:
    """Stream a CSV, TSV, JSON lines or Parquet file as chunks.

    The format, the file's existence and optional dependencies are checked now,
    before the first chunk is read. Gzip is detected from the content, so `.gz`
    files and gzipped files with any name both work. An empty file yields nothing.
    `progress(bytes_read, bytes_total)` is called after each chunk has been consumed
    (compressed bytes for gzip; estimated from rows for Parquet) and last with
    `bytes_total`.
    """
    name = os.fspath(path)
    fmt = _resolve_format(name, format)
    _check_chunk_rows(chunk_rows)
    if not os.path.exists(name):
        raise ReaderError(f"{name}: no such file")
    if os.path.isdir(name):
        raise ReaderError(f"{name}: is a directory, expected a file")
    if fmt == "parquet":
        return _parquet_chunks(name, chunk_rows, progress, *_import_pyarrow())
    return _text_chunks(name, fmt, chunk_rows, progress)


def _resolve_format(name: str, format: str | None) -> str:
    if format is None:
        return file_format(name)
    fmt = _ALIASES.get(format.lower(), format.lower())
    if fmt not in FORMATS:
        raise ReaderError(
            f"{name}: unknown format {format!r}; expected one of {', '.join(FORMATS)}"
        )
    return fmt


def _text_chunks(
    name: str, fmt: str, chunk_rows: int, progress: Callable[[int, int], None] | None
) -> Iterator[Chunk]:
    try:
        raw = open(name, "rb")
    except OSError as exc:
        raise ReaderError(f"{name}: {exc.strerror or exc}") from None
    with raw:
        total = os.fstat(raw.fileno()).st_size
        reported = -1
        chunks = _guard(name, _parse_text(name, fmt, raw, chunk_rows))
        for chunk in chunks:
            yield chunk
            if progress is not None:
                reported = min(raw.tell(), total)
                progress(reported, total)
    if progress is not None and reported != total:
        progress(total, total)


def _guard(name: str, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Name the file in I/O and decompression errors raised while reading chunks."""
    try:
        yield from chunks
    except (OSError, EOFError, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ReaderError(f"{name}: {reason}") from exc


def _parse_text(name: str, fmt: str, raw: io.BufferedReader, chunk_rows: int) -> Iterator[Chunk]:
    stream: io.BufferedReader | gzip.GzipFile = raw
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == "jsonl":
        yield from _jsonl_chunks(name, stream, chunk_rows)
    else:
        yield from _csv_chunks(name, stream, "\t" if fmt == "tsv" else ",", chunk_rows)


def _csv_chunks(
    name: str, stream: io.BufferedReader | gzip.GzipFile, delimiter: str, chunk_rows: int
) -> Iterator[Chunk]:
    # newline="" lets the csv module see quoted newlines; utf-8-sig drops a BOM.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            return
        seen: set[str] = set()
        for column in header:
            if column in seen:
                raise ReaderError(f"{name}:{reader.line_num}: duplicate column name {column!r}")
            seen.add(column)
        width = len(header)
        rows: list[list[str]] = []
        for row in reader:
            if len(row) != width:
                if not row:  # blank line, skipped as pandas does
                    continue
                # line_num is where the row ends; report where it starts.
                line = reader.line_num - sum(cell.count("\n") for cell in row)
                raise ReaderError(f"{name}:{line}: expected {width} fields, got {len(row)}")
            rows.append(row)
            if len(rows) == chunk_rows:
                yield _csv_chunk(header, rows)
                rows = []
        if rows:
            yield _csv_chunk(header, rows)
    except csv.Error as exc:
        raise ReaderError(f"{name}:{reader.line_num}: {exc}") from None
    except UnicodeDecodeError as exc:
        line = reader.line_num + 1
        raise ReaderError(f"{name}: not UTF-8 text near line {line}: {exc.reason}") from None
    finally:
        text.detach()  # the caller owns and closes the byte stream


def _csv_chunk(header: list[str], rows: list[list[str]]) -> Chunk:
    # Transposing with zip(*rows) runs in C; `v or None` turns empty cells into None,
    # and the C-level `"" in values` scan skips that loop for columns without any.
    columns: dict[str, list[object]] = {
        column: [v or None for v in values] if "" in values else list(values)
        for column, values in zip(header, zip(*rows, strict=True), strict=True)
    }
    return Chunk(columns, len(rows), text=True)


def _jsonl_chunks(
    name: str, stream: io.BufferedReader | gzip.GzipFile, chunk_rows: int
) -> Iterator[Chunk]:
    loads = orjson.loads
    records: list[dict[str, object]] = []
    for lineno, line in enumerate(stream, 1):
        try:
            obj = loads(line)
        except orjson.JSONDecodeError:
            # Off the hot path: blank lines, a BOM, or a real error.
            obj = _decode_slowly(name, lineno, line)
            if obj is _BLANK:
                continue
        if type(obj) is not dict:
            hint = " (one object per line, not an array)" if lineno == 1 else ""
            got = "null" if obj is None else type(obj).__name__
            raise ReaderError(f"{name}:{lineno}: expected a JSON object, got {got}{hint}")
        records.append(flatten(obj))
        if len(records) == chunk_rows:
            yield _records_chunk(records)
            records = []
    if records:
        yield _records_chunk(records)


def _decode_slowly(name: str, lineno: int, line: bytes) -> object:
    if lineno == 1:
        line = line.removeprefix(_BOM)
    if not line.strip():
        return _BLANK
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ReaderError(
            f"{name}:{lineno}: invalid JSON: {exc.msg} at column {exc.colno}"
        ) from None


def iter_parquet_chunks(
    path: str,
    *,
    row_groups: Sequence[int] | None = None,
    filesystem: Any = None,
    chunk_rows: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Chunk]:
    """Stream a Parquet file, or only the given row groups of it, as chunks.

    The reader `iter_file_chunks` uses for Parquet, so that a file profiled piece by
    piece (on a Dask cluster) reads exactly as it does whole. `filesystem` is the
    fsspec filesystem holding `path` (None: the local disk). The file is opened when
    the first chunk is asked for.
    """
    _check_chunk_rows(chunk_rows)
    pa, pq = _import_pyarrow()
    return _parquet_chunks(path, chunk_rows, progress, pa, pq, row_groups, filesystem)


def _parquet_chunks(
    name: str,
    chunk_rows: int,
    progress: Callable[[int, int], None] | None,
    pa: Any,
    pq: Any,
    row_groups: Sequence[int] | None = None,
    filesystem: Any = None,
) -> Iterator[Chunk]:
    errors = (pa.ArrowException, OSError)
    with ExitStack() as stack:
        try:
            source = name if filesystem is None else stack.enter_context(filesystem.open(name))
            parquet = pq.ParquetFile(source)
        except errors as exc:
            raise ReaderError(f"{name}: not a readable Parquet file: {exc}") from None
        stack.callback(parquet.close)
        metadata = parquet.metadata
        if row_groups is None:
            total_rows = metadata.num_rows
        else:
            total_rows = sum(metadata.row_group(i).num_rows for i in row_groups)
        total = 0
        if progress is not None:
            total = os.path.getsize(name) if filesystem is None else filesystem.size(name)
        done = 0
        reported = -1
        batches = parquet.iter_batches(batch_size=chunk_rows, row_groups=row_groups)
        while True:
            try:
                batch = next(batches, None)
            except errors as exc:
                raise ReaderError(f"{name}: {exc}") from None
            if batch is None:
                break
            if batch.num_rows == 0:
                continue
            yield Chunk(_arrow_columns(name, batch, pa), batch.num_rows, text=False)
            done += batch.num_rows
            if progress is not None:
                reported = total * done // max(total_rows, 1)
                progress(reported, total)
    if progress is not None and reported != total:
        progress(total, total)


def _arrow_columns(name: str, batch: Any, pa: Any) -> dict[str, list[object]]:
    table = pa.Table.from_batches([batch])
    # flatten() opens one level of structs per call: a.b, then a.b.c.
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    columns: dict[str, list[object]] = {}
    for column, values in zip(table.column_names, table.columns, strict=True):
        try:
            columns[column] = _arrow_values(values, pa)
        except (pa.ArrowException, ValueError, OverflowError) as exc:
            raise ReaderError(f"{name}: column {column!r}: {exc}") from None
    return columns


def _arrow_values(values: Any, pa: Any) -> list[object]:
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_time(kind):
        # Python datetimes stop at microseconds (and Python 3.10 parses only those).
        if kind.unit == "ns":
            unit = pa.timestamp("us", kind.tz) if pa.types.is_timestamp(kind) else pa.time64("us")
            values = values.cast(unit, safe=False)
        return _isoformat(values.to_pylist())
    if pa.types.is_date(kind):
        return _isoformat(values.to_pylist())
    if pa.types.is_decimal(kind):
        return list(values.cast(pa.float64()).to_pylist())
    return list(values.to_pylist())


def _isoformat(values: list[Any]) -> list[object]:
    return [None if v is None else v.isoformat() for v in values]


def _import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ReaderError(
            "reading Parquet needs pyarrow: pip install 'skew-sidecar[parquet]'"
        ) from None
    return pa, pq


# -- in-memory data ---------------------------------------------------------------------


def iter_record_chunks(
    records: Iterable[Mapping[str, object]], *, chunk_rows: int = 50_000
) -> Iterator[Chunk]:
    """Chunks of flattened records, with JSON lines semantics.

    Columns are the union of the chunk's keys in order of first appearance; a key
    absent from a record is None. Errors count records from 0.
    """
    _check_chunk_rows(chunk_rows)
    return _record_chunks(records, chunk_rows)


def _record_chunks(records: Iterable[Mapping[str, object]], chunk_rows: int) -> Iterator[Chunk]:
    batch: list[dict[str, object]] = []
    for index, record in enumerate(records):
        if type(record) is not dict and not isinstance(record, Mapping):
            raise ReaderError(f"record {index}: expected a mapping, got {_type_name(record)}")
        batch.append(flatten(record))
        if len(batch) == chunk_rows:
            yield _records_chunk(batch)
            batch = []
    if batch:
        yield _records_chunk(batch)


def _records_chunk(records: list[dict[str, object]]) -> Chunk:
    return Chunk(_records_columns(records), len(records), text=False)


def _records_columns(records: list[dict[str, object]]) -> dict[str, list[object]]:
    # dict.fromkeys over every key keeps first-appearance order in one C-level pass.
    names = dict.fromkeys(chain.from_iterable(records))
    return {name: [r.get(name) for r in records] for name in names}


def iter_column_chunks(
    columns: Mapping[str, Sequence[object] | np.ndarray[Any, Any]], *, chunk_rows: int = 50_000
) -> Iterator[Chunk]:
    """Chunks of equal-length columns (lists, tuples or numpy arrays).

    numpy values become Python ones; as in pandas, NaN in a numpy float array and
    NaT in a datetime64 array mean missing (None), and datetime64 values become
    ISO-8601 strings. Values in Python sequences are taken as given.
    """
    _check_chunk_rows(chunk_rows)
    rows: int | None = None
    first = ""
    for name, values in columns.items():
        if isinstance(values, (str, bytes)):
            raise ReaderError(f"column {name!r}: expected a sequence of values, got str")
        n = len(values)
        if rows is None:
            rows, first = n, name
        elif n != rows:
            raise ReaderError(f"column {name!r} has {n} values but column {first!r} has {rows}")
    return _column_chunks(dict(columns), rows or 0, chunk_rows)


def _column_chunks(
    columns: dict[str, Sequence[object] | np.ndarray[Any, Any]], rows: int, chunk_rows: int
) -> Iterator[Chunk]:
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        chunk = {name: _slice_values(values, start, stop) for name, values in columns.items()}
        yield Chunk(chunk, stop - start, text=False)


def _slice_values(
    values: Sequence[object] | np.ndarray[Any, Any], start: int, stop: int
) -> list[object]:
    if not isinstance(values, np.ndarray):
        part = values[start:stop]
        return part if isinstance(part, list) else list(part)
    array = values[start:stop]
    if array.dtype.kind == "M":
        if np.datetime_data(array.dtype)[0] in ("ns", "ps", "fs", "as"):
            array = array.astype("datetime64[us]")
        return [None if s == "NaT" else s for s in np.datetime_as_string(array).tolist()]
    out: list[object] = array.tolist()
    if array.dtype.kind == "f":
        for i in np.flatnonzero(np.isnan(array)).tolist():
            out[i] = None
    return out


# -- pandas -------------------------------------------------------------------------------


def iter_dataframe_chunks(df: Any, *, chunk_rows: int = 50_000) -> Iterator[Chunk]:
    """Chunks of a pandas DataFrame, with pandas' idea of missing.

    None, NaN, NaT and pd.NA become None; datetime columns (and datetime, date and
    time objects) become ISO-8601 strings; numpy scalars and arrays become Python
    values. Object columns holding dicts are flattened like records (`col.key`).
    Column names that are not strings are converted with str(); tuples (MultiIndex
    columns) are joined with dots.
    """
    pd = _import_pandas()
    if not isinstance(df, pd.DataFrame):
        raise ReaderError(f"expected a pandas DataFrame, got {type(df).__name__}")
    _check_chunk_rows(chunk_rows)
    names: list[str] = []
    for column in df.columns:
        name = ".".join(map(str, column)) if isinstance(column, tuple) else str(column)
        if name in names:
            raise ReaderError(f"DataFrame column {name!r} appears more than once")
        names.append(name)
    return _dataframe_chunks(df, names, chunk_rows, pd)


def _dataframe_chunks(df: Any, names: list[str], chunk_rows: int, pd: Any) -> Iterator[Chunk]:
    for start in range(0, len(df), chunk_rows):
        part = df.iloc[start : start + chunk_rows]
        columns: dict[str, list[object]] = {}
        for j, name in enumerate(names):
            series = part.iloc[:, j]
            values = _series_values(series, pd)
            if series.dtype == object and any(isinstance(v, dict) for v in values):
                columns.update(_records_columns([flatten({name: v}) for v in values]))
            else:
                columns[name] = values
        yield Chunk(columns, len(part), text=False)


def _series_values(series: Any, pd: Any) -> list[object]:
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        if series.dt.unit == "ns":
            series = series.dt.as_unit("us")  # truncates, like the Parquet reader
        return [None if v is pd.NaT else v.isoformat() for v in series.tolist()]
    values: list[object] = series.tolist()
    for i in np.flatnonzero(series.isna().to_numpy()).tolist():
        values[i] = None
    if series.dtype == object:
        values = [v if type(v) in _PLAIN_TYPES else _python_value(v) for v in values]
    return values


def _python_value(value: object) -> object:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def _import_pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ReaderError(
            "reading a DataFrame needs pandas: pip install 'skew-sidecar[pandas]'"
        ) from None
    return pd


# -- shared ----------------------------------------------------------------------------------


def _check_chunk_rows(chunk_rows: int) -> None:
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__
