"""Offline check: run the engine over a file of request bodies, one JSON body a line."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

import orjson

from .baseline import Baseline
from .engine import Engine
from .extract import rows_from_body
from .report import DriftRule, WindowReport, build_report

BATCH_ROWS = 1024


@dataclass
class InputProblems:
    """Lines that could not be used; the run goes on and says so."""

    invalid_json: int = 0
    not_rows: int = 0
    first_lines: list[str] = field(default_factory=list)

    def note(self, line: int, reason: str) -> None:
        if len(self.first_lines) < 5:
            self.first_lines.append(f"line {line}: {reason}")

    @property
    def total(self) -> int:
        return self.invalid_json + self.not_rows


def check_file(
    baseline: Baseline,
    path: str | os.PathLike[str],
    *,
    rule: DriftRule | None = None,
    window_rows: int | None = None,
    problems: InputProblems | None = None,
    roles: tuple[str, ...] = ("input",),
) -> Iterator[WindowReport]:
    """Yield one report per window (the whole file unless window_rows splits it)."""
    if window_rows is not None and window_rows < 1:
        raise ValueError(f"window_rows must be positive, got {window_rows}")
    problems = problems if problems is not None else InputProblems()
    engine = Engine(baseline, roles=roles)
    pending: list[Any] = []
    windows = 0
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            problems.invalid_json += 1
            problems.note(number, f"invalid JSON: {exc}")
            continue
        rows = rows_from_body(body)
        if rows is None or not all(type(row) is dict for row in rows):
            problems.not_rows += 1
            shown = orjson.dumps(body)[:60].decode("utf-8", "replace")
            problems.note(number, f"expected a JSON object or a list of objects, got {shown}")
            if rows is None:
                continue
        pending.extend(rows)  # the engine counts items that are not objects as rejected
        if len(pending) >= BATCH_ROWS:
            for report in _drain(engine, pending, window_rows, rule):
                windows += 1
                yield report
    for report in _drain(engine, pending, window_rows, rule):
        windows += 1
        yield report
    if engine.window.rows or engine.window.rejected_rows or not windows:
        yield build_report(engine.close_window(), baseline, rule)


def _drain(
    engine: Engine, pending: list[Any], window_rows: int | None, rule: DriftRule | None
) -> Iterator[WindowReport]:
    """Check the pending rows in batches, closing a window every window_rows rows."""
    while pending:
        take = BATCH_ROWS
        if window_rows:
            take = min(take, window_rows - engine.window.rows)
        engine.check(pending[:take])
        del pending[:take]
        if window_rows and engine.window.rows >= window_rows:
            yield build_report(engine.close_window(), engine.baseline, rule)


def _lines(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """Lines of a plain or gzipped file (told apart by content, like the training
    readers); read and decompression errors name the file."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.peek(2)[:2] == b"\x1f\x8b"
            stream: IO[bytes] = cast(IO[bytes], gzip.GzipFile(fileobj=raw)) if gzipped else raw
            yield from stream
    except (OSError, EOFError, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckInputError(f"{os.fspath(path)}: {reason}") from None


class CheckInputError(ValueError):
    """The requests file cannot be read; the message names it."""
