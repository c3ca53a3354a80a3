"""Build a baseline by streaming column chunks through per-column profilers."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .baseline import Baseline, Feature, ProfileSettings, Source, Stats, derive, now_iso
from .categorical import CategoricalStats, category_key
from .numeric import NumericStats
from .readers import (
    Chunk,
    file_format,
    iter_column_chunks,
    iter_dataframe_chunks,
    iter_file_chunks,
    iter_record_chunks,
)
from .sequences import ListStats, list_shape, numeric_elements, shape_key
from .timestamps import Instant, TimestampStats, looks_like_iso, parse_epoch, parse_iso

__all__ = ["ProfileOptions", "profile_chunks", "profile_files", "profile_records"]


@dataclass(frozen=True)
class ProfileOptions:
    """What to profile and how; column overrides win over type inference."""

    settings: ProfileSettings = field(default_factory=ProfileSettings)
    categorical: frozenset[str] = frozenset()
    numeric: frozenset[str] = frozenset()
    timestamp: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    prediction: frozenset[str] = frozenset()
    chunk_rows: int = 10_000  # memory is bounded by one chunk of rows
    progress: Callable[[int, int], None] | None = None

    def kind_of(self, name: str) -> str | None:
        for kind in ("categorical", "numeric", "timestamp"):
            if name in getattr(self, kind):
                return kind
        return None


class ColumnProfiler:
    """Routes each value to the statistics of its type; the kind is decided at the end.

    Keeping one accumulator per observed type makes inference independent of row
    order: a column of numbers with a few stray strings stays numeric and records
    the strings as training-time type mismatches.
    """

    def __init__(self, name: str, options: ProfileOptions) -> None:
        self.name = name
        self.settings = options.settings
        self.override = options.kind_of(name)
        self.role = "prediction" if name in options.prediction else "input"
        self.missing = 0
        self.types: Counter[str] = Counter()
        self.numeric: NumericStats | None = None
        self.strings: CategoricalStats | None = None
        self.booleans: CategoricalStats | None = None
        self.lists: ListStats | None = None
        self.timestamps: TimestampStats | None = None
        self._strings_are_timestamps: bool | None = None
        self._number_lists = 0
        self._string_lists = 0
        self._text = TextCells(
            self._new_categorical("text"), always_parse=self.override == "numeric"
        )

    # -- routing ----------------------------------------------------------------

    def add(self, values: list[Any], text: bool) -> None:
        missing = values.count(None)
        if missing:
            self.missing += missing
            values = [v for v in values if v is not None]
        if not values:
            return
        if text:
            self._add_text(values)
            return
        kinds = set(map(type, values))
        if kinds <= {int, float}:
            self._add_numbers(values)
        elif kinds == {str}:
            self._add_strings(values)
        else:
            self._add_mixed(values)

    def _add_text(self, values: list[str]) -> None:
        """CSV cells: untyped text, read as numbers, booleans, timestamps or categories."""
        self._count("text", len(values))
        if self.override == "timestamp":
            self._add_timestamp_cells(values)
            return
        if self._strings_are_timestamps is None:
            self._strings_are_timestamps = self.override is None and looks_like_iso(values)
        if self.override == "categorical" or self._strings_are_timestamps:
            self._add_strings(values, text=True, counted=True)
            return
        numbers = self._text.add(values)
        if len(numbers):
            self._numeric().update(numbers)

    def _add_timestamp_cells(self, values: list[str]) -> None:
        """Cells of a --timestamp CSV column: epoch numbers or ISO strings, cell by cell."""
        parsed = [_parse_float(v) for v in values]
        numbers = [p for p in parsed if p is not None]
        strings = [v for v, p in zip(values, parsed, strict=True) if p is None]
        if numbers:
            self._add_numbers(numbers, counted=True)
        if strings:
            if self.timestamps is not None and self.timestamps.encoding != "iso":
                self.timestamps.type_mismatch += len(strings)
            else:
                self._add_strings(strings, text=True, counted=True)

    def _add_mixed(self, values: list[Any]) -> None:
        numbers: list[Any] = []
        strings: list[str] = []
        bools: list[bool] = []
        lists: list[list[Any]] = []
        for v in values:
            t = type(v)
            if t is int or t is float:
                numbers.append(v)
            elif t is str:
                strings.append(v)
            elif t is bool:
                bools.append(v)
            elif t is list:
                lists.append(v)
            else:
                self._count("object", 1)
        if numbers:
            self._add_numbers(numbers)
        if strings:
            self._add_strings(strings)
        if bools:
            self._count("bool", len(bools))
            if self.booleans is None:
                self.booleans = self._new_categorical("bool")
            self.booleans.update(map(category_key, bools))
        if lists:
            self._add_lists(lists)

    def _add_numbers(self, values: list[Any], counted: bool = False) -> None:
        if not counted:
            self._count("number", len(values))
        if self.override == "categorical":
            self._strings_of("number").update(map(category_key, values))
            return
        if self.override == "timestamp":
            stats = self._timestamps("epoch_ms" if abs(values[0]) > 1e11 else "epoch_s")
            self._add_instants(stats, (parse_epoch(v, stats.encoding) for v in values))
            return
        self._numeric().update(_floats(values))

    def _add_strings(self, values: list[str], text: bool = False, counted: bool = False) -> None:
        if not counted:
            self._count("string", len(values))
        if self._strings_are_timestamps is None:
            self._strings_are_timestamps = self.override == "timestamp" or (
                self.override is None and looks_like_iso(values)
            )
        if self._strings_are_timestamps:
            self._add_instants(self._timestamps("iso"), map(parse_iso, values))
        else:
            self._strings_of("text" if text else "string").update(values)

    def _add_lists(self, values: list[list[Any]]) -> None:
        self._count("list", len(values))
        stats = self._lists()
        lengths = np.fromiter(map(len, values), dtype=np.float64, count=len(values))
        stats.lengths.update(lengths)
        stats.count += len(values)
        for value in values:
            shape = list_shape(value)
            stats.add_shape(shape_key(shape))
            if not value:
                continue
            elements = numeric_elements(value, len(shape))
            if elements is not None:
                self._number_lists += 1
                stats.add_elements(elements)
            elif all(type(v) is str for v in value):
                self._string_lists += 1
            else:
                stats.type_mismatch += 1

    def _add_instants(self, stats: TimestampStats, instants: Iterable[Instant | None]) -> None:
        parsed = []
        for t in instants:
            if t is None:
                stats.type_mismatch += 1
            else:
                parsed.append(t)
        stats.update(parsed)

    # -- accumulators -------------------------------------------------------------

    def _count(self, kind: str, n: int) -> None:
        self.types[kind] += n

    def _numeric(self) -> NumericStats:
        if self.numeric is None:
            s = self.settings
            self.numeric = NumericStats(sketch_k=s.sketch_k, discrete_max=s.discrete_max)
        return self.numeric

    def _new_categorical(self, value_type: str) -> CategoricalStats:
        s = self.settings
        return CategoricalStats(
            vocabulary_cap=s.vocabulary_cap, top_k=s.top_k, value_type=value_type
        )

    def _strings_of(self, value_type: str) -> CategoricalStats:
        if self.strings is None:
            self.strings = self._new_categorical(value_type)
        return self.strings

    def _lists(self) -> ListStats:
        if self.lists is None:
            s = self.settings
            self.lists = ListStats(
                lengths=NumericStats(sketch_k=s.sketch_k, discrete_max=s.discrete_max)
            )
        return self.lists

    def _timestamps(self, encoding: str) -> TimestampStats:
        if self.timestamps is None:
            self.timestamps = TimestampStats(encoding=encoding)
        return self.timestamps

    # -- the verdict --------------------------------------------------------------

    def finish(self) -> Feature:
        present = sum(self.types.values())
        if self._text.cells:
            self._finish_text()
        categorical = _larger(self.strings, self.booleans)
        if self.lists is not None:
            numbers_win = self._number_lists >= self._string_lists
            self.lists.element_type = _element_type(self._number_lists, self._string_lists)
            # Lists whose elements are of the other type are mismatches.
            self.lists.type_mismatch += self._string_lists if numbers_win else self._number_lists
        by_kind: dict[str, Stats | None] = {
            "numeric": self.numeric,
            "categorical": categorical,
            "timestamp": self.timestamps,
            "list": self.lists,
        }
        kind = self.override or max(by_kind, key=lambda k: _kind_weight(by_kind[k]))
        stats = by_kind[kind]
        if stats is None:
            stats = _empty_stats(kind, self.settings)
        stats.missing += self.missing
        # Everything present that this kind's statistics did not take is a mismatch.
        stats.type_mismatch = present - _accepted(stats)
        feature = Feature(self.name, kind, stats, self.role, dict(self.types))
        derive(feature, self.settings)
        return feature

    def _finish_text(self) -> None:
        """A CSV column of mostly numbers is numeric; otherwise every cell is a category."""
        text = self._text
        if self.override == "numeric" or (text.numbers * 2 > text.cells and not text.strings_mode):
            self.strings = None
            return
        categories = text.categories
        if categories is None:
            return  # dropped while the column looked numeric: it stays numeric
        self.numeric = None
        if set(categories.vocabulary) <= _BOOL_SPELLINGS:
            booleans = self._new_categorical("bool")
            for key, n in categories.vocabulary.items():
                booleans.vocabulary[key.lower()] += n
            booleans.count = categories.count
            self.strings, self.booleans = None, booleans
        else:
            self.strings = categories


class TextCells:
    """CSV cells of one column: numbers parsed, every cell also kept as a category.

    The categories (a vocabulary pruned like any other) make a text column's
    statistics the same whatever the chunking; number parsing stops once a column
    is clearly text, because failed float() calls are slow.
    """

    # Cells seen before a mostly-text column stops parsing numbers.
    DECIDE_AFTER = 1000

    def __init__(self, categories: CategoricalStats, always_parse: bool = False) -> None:
        self.always_parse = always_parse
        self.cells = 0
        self.numbers = 0
        self.strings_mode = False
        self.categories: CategoricalStats | None = categories

    def add(self, values: list[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
        self.cells += len(values)
        numbers = np.empty(0, dtype=np.float64)
        if not self.strings_mode:
            try:
                numbers = np.fromiter(map(float, values), np.float64, len(values))
            except ValueError:
                parsed = [_parse_float(v) for v in values]
                numbers = np.array([p for p in parsed if p is not None], dtype=np.float64)
            self.numbers += len(numbers)
            # Clearly text: stop parsing (the column can no longer turn numeric).
            self.strings_mode = (
                not self.always_parse
                and self.cells >= self.DECIDE_AFTER
                and self.numbers * 2 < self.cells
            )
        if self.categories is not None:
            numeric = not self.strings_mode and self.numbers * 2 > self.cells
            if numeric and len(self.categories.vocabulary) > self.categories.vocabulary_cap:
                self.categories = None  # a numeric column: its categories are not needed
            else:
                self.categories.update(values)
        return numbers


def _parse_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _larger(a: CategoricalStats | None, b: CategoricalStats | None) -> CategoricalStats | None:
    if a is None or b is None:
        return a or b
    return a if a.count >= b.count else b


def _element_type(numbers: int, strings: int) -> str:
    if not numbers and not strings:
        return "empty"
    return "number" if numbers >= strings else "string"


def _kind_weight(stats: Stats | None) -> int:
    """How many values were routed to these statistics."""
    if stats is None:
        return -1
    if isinstance(stats, TimestampStats):
        return stats.count + stats.type_mismatch
    if isinstance(stats, ListStats):
        return stats.count
    return _accepted(stats)


def _accepted(stats: Stats) -> int:
    """How many values are valid for this kind (the rest are type mismatches)."""
    if isinstance(stats, NumericStats):
        return stats.count + stats.nan + stats.inf
    if isinstance(stats, ListStats):
        return stats.count - stats.type_mismatch
    return stats.count


def _empty_stats(kind: str, settings: ProfileSettings) -> Stats:
    if kind == "categorical":
        return CategoricalStats(vocabulary_cap=settings.vocabulary_cap, top_k=settings.top_k)
    if kind == "timestamp":
        return TimestampStats()
    if kind == "list":
        return ListStats()
    return NumericStats(sketch_k=settings.sketch_k, discrete_max=settings.discrete_max)


def _floats(values: list[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        # Integers beyond float range: keep their sign as infinity.
        return np.array([_to_float(v) for v in values], dtype=np.float64)


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


_BOOL_SPELLINGS = {"true", "false", "True", "False", "TRUE", "FALSE"}


class Profiler:
    """Feed chunks, then ask for the baseline. Memory is bounded by the chunk size."""

    def __init__(self, options: ProfileOptions | None = None) -> None:
        self.options = options or ProfileOptions()
        self.columns: dict[str, ColumnProfiler] = {}
        self.rows = 0

    def add(self, chunk: Chunk) -> None:
        for name, values in chunk.columns.items():
            if name in self.options.exclude:
                continue
            column = self.columns.get(name)
            if column is None:
                column = self.columns[name] = ColumnProfiler(name, self.options)
                column.missing += self.rows  # absent from every earlier row
            column.add(values, chunk.text)
        for name, column in self.columns.items():
            if name not in chunk.columns:
                column.missing += chunk.rows
        self.rows += chunk.rows

    def baseline(self, sources: Sequence[Source] = ()) -> Baseline:
        features = {name: col.finish() for name, col in self.columns.items()}
        return Baseline(
            features=features,
            rows=self.rows,
            settings=self.options.settings,
            sources=list(sources),
            created_at=now_iso(),
        )


def profile_chunks(
    chunks: Iterable[Chunk], options: ProfileOptions | None = None, sources: Sequence[Source] = ()
) -> Baseline:
    profiler = Profiler(options)
    for chunk in chunks:
        profiler.add(chunk)
    return profiler.baseline(sources)


def profile_records(
    records: Iterable[Mapping[str, Any]], options: ProfileOptions | None = None
) -> Baseline:
    options = options or ProfileOptions()
    return profile_chunks(iter_record_chunks(records, chunk_rows=options.chunk_rows), options)


def profile_columns(
    columns: Mapping[str, Sequence[Any]], options: ProfileOptions | None = None
) -> Baseline:
    options = options or ProfileOptions()
    return profile_chunks(iter_column_chunks(columns, chunk_rows=options.chunk_rows), options)


def profile_dataframe(df: Any, options: ProfileOptions | None = None) -> Baseline:
    options = options or ProfileOptions()
    return profile_chunks(iter_dataframe_chunks(df, chunk_rows=options.chunk_rows), options)


def profile_files(
    paths: Sequence[str | os.PathLike[str]], options: ProfileOptions | None = None
) -> Baseline:
    options = options or ProfileOptions()
    profiler = Profiler(options)
    sources = []
    for path in paths:
        before = profiler.rows
        for chunk in _file_chunks(path, options):
            profiler.add(chunk)
        sources.append(Source(os.fspath(path), file_format(path), profiler.rows - before))
    return profiler.baseline(sources)


def _file_chunks(path: str | os.PathLike[str], options: ProfileOptions) -> Iterator[Chunk]:
    return iter_file_chunks(path, chunk_rows=options.chunk_rows, progress=options.progress)
