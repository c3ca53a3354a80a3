"""Timestamps (ISO-8601 strings or epoch numbers): parsing and training statistics."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from . import _fields as f
from ._fields import BaselineError

ENCODINGS = ("iso", "epoch_s", "epoch_ms")
NAIVE = "naive"
MAX_OFFSETS = 64
_ISO_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def looks_like_iso(values: Iterable[object], *, sample: int = 100) -> bool:
    """True when (nearly) all of the first `sample` strings start like an ISO datetime."""
    seen = hits = 0
    for v in values:
        if not isinstance(v, str):
            continue
        seen += 1
        hits += bool(_ISO_PREFIX.match(v))
        if seen >= sample:
            break
    return seen > 0 and hits >= 0.95 * seen


@dataclass(frozen=True)
class Instant:
    epoch: float  # seconds since 1970 UTC (naive times read as UTC)
    hour: int  # wall-clock hour as written, what a feature extractor would see
    weekday: int  # Monday = 0
    offset: str  # "+02:00", "naive", or "+00:00" for epoch numbers


def parse_iso(value: str) -> Instant | None:
    if not _ISO_PREFIX.match(value):
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    offset = dt.utcoffset()
    if offset is None:
        epoch = (dt.replace(tzinfo=timezone.utc) - _EPOCH).total_seconds()
        key = NAIVE
    else:
        epoch = (dt - _EPOCH).total_seconds()
        key = _offset_key(offset)
    return Instant(epoch, dt.hour, dt.weekday(), key)


def parse_epoch(value: float, encoding: str) -> Instant | None:
    try:
        seconds = value / 1000.0 if encoding == "epoch_ms" else float(value)
        if not math.isfinite(seconds):
            return None
        dt = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return None
    return Instant(seconds, dt.hour, dt.weekday(), "+00:00")


def _offset_key(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def iso_from_epoch(epoch: float) -> str:
    return (_EPOCH + timedelta(seconds=epoch)).isoformat().replace("+00:00", "Z")


@dataclass
class TimestampStats:
    encoding: str = "iso"
    count: int = 0
    missing: int = 0
    type_mismatch: int = 0  # present but not a parseable timestamp of this encoding
    min: float = math.inf
    max: float = -math.inf
    offsets: Counter[str] = field(default_factory=Counter)
    hour_counts: list[int] = field(default_factory=lambda: [0] * 24)
    weekday_counts: list[int] = field(default_factory=lambda: [0] * 7)

    def update(self, instants: Iterable[Instant]) -> None:
        for t in instants:
            self.count += 1
            self.min = min(self.min, t.epoch)
            self.max = max(self.max, t.epoch)
            self.hour_counts[t.hour] += 1
            self.weekday_counts[t.weekday] += 1
            if t.offset in self.offsets or len(self.offsets) < MAX_OFFSETS:
                self.offsets[t.offset] += 1

    def merge(self, other: TimestampStats) -> None:
        if other.count and self.count and other.encoding != self.encoding:
            raise BaselineError(
                f"cannot merge {self.encoding} timestamps with {other.encoding} ones"
            )
        if not self.count:
            self.encoding = other.encoding
        self.count += other.count
        self.missing += other.missing
        self.type_mismatch += other.type_mismatch
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.offsets.update(other.offsets)
        self.hour_counts = [a + b for a, b in zip(self.hour_counts, other.hour_counts, strict=True)]
        self.weekday_counts = [
            a + b for a, b in zip(self.weekday_counts, other.weekday_counts, strict=True)
        ]

    def derive(self) -> None:
        self.offsets = Counter(dict(sorted(self.offsets.items(), key=lambda kv: -kv[1])))

    def to_json(self) -> dict[str, Any]:
        empty = not self.count
        return {
            "encoding": self.encoding,
            "count": self.count,
            "missing": self.missing,
            "type_mismatch": self.type_mismatch,
            "min": None if empty else iso_from_epoch(self.min),
            "max": None if empty else iso_from_epoch(self.max),
            "min_epoch": None if empty else self.min,
            "max_epoch": None if empty else self.max,
            "utc_offsets": dict(self.offsets),
            "hour_counts": self.hour_counts,
            "weekday_counts": self.weekday_counts,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> TimestampStats:
        stats = cls(
            encoding=f.string(data, "encoding", where, ENCODINGS),
            count=f.count(data, "count", where),
            missing=f.count(data, "missing", where),
            type_mismatch=f.count(data, "type_mismatch", where),
            offsets=Counter(f.counts_map(data, "utc_offsets", where)),
        )
        if stats.count:
            stats.min = f.number(data, "min_epoch", where)
            stats.max = f.number(data, "max_epoch", where)
        for key, size in (("hour_counts", 24), ("weekday_counts", 7)):
            values = f.field(data, key, where)
            if (
                not isinstance(values, list)
                or len(values) != size
                or any(type(v) is not int or v < 0 for v in values)
            ):
                raise BaselineError(f"{where}.{key}: expected {size} non-negative integers")
            if sum(values) != stats.count:
                raise BaselineError(f"{where}.{key}: counts do not add up to count")
            setattr(stats, key, list(values))
        return stats
