"""Evidence: the last few offending values per feature, kept safely (opt-in).

`EvidenceOptions` turns it on. The monitor's worker then checks each batch through
`Recorder.check`, which reads the features' counters around `Engine.check` and, for a
feature whose counters moved, finds its last offending values (`offences.py`) and keeps
them in an `EvidenceLog`: the value (a short preview, dropped or hashed for fields named
sensitive), the reason, the request id from a header and the time. Everything happens
in the worker thread; the serving path does nothing more than without evidence.

Bounded whatever the load: at most `per_feature` entries per feature and `max_total`
per model, a preview at most `PREVIEW_CHARS` long and a request id at most
`REQUEST_ID_CHARS`; a flood of bad rows costs at most a quarter of `per_feature` new
entries per feature and batch. Values never become metric labels; only request ids
become exemplars.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat
from typing import Any

import orjson

from .baseline import Baseline
from .engine import ABSENT, Engine
from .flatten import flatten
from .offences import Offences, counters

__all__ = ["Evidence", "EvidenceLog", "EvidenceOptions", "Recorder", "preview"]

PREVIEW_CHARS = 120
REQUEST_ID_CHARS = 64  # an exemplar's labels may hold 128 characters in all
REDACTED = "[redacted]"
_ITEMS = 5  # list items and object keys shown in a preview
_DEPTH = 3


@dataclass(frozen=True)
class EvidenceOptions:
    """Keep recent offending values: how many, and which fields to drop or hash.

    `per_feature` values are kept per feature (one batch of rows adds at most a quarter
    of them) and `max_total` per model; the request id is read from `request_id_header`.

    `redact` names fields whose values are never kept (shown as "[redacted]"); `hash`
    names fields kept as a keyed BLAKE2b digest (`blake2b:` and 16 hex digits: equal
    values match, the value cannot be read back or guessed without the key). A name
    covers the fields nested under it (`user` covers `user.email`), and a field covers
    the feature it is nested in. `key` defaults to a random one per process; give one
    (up to 64 bytes) for digests that match across replicas and restarts.
    """

    per_feature: int = 20
    max_total: int = 1000
    redact: Collection[str] = ()
    hash: Collection[str] = ()
    key: bytes | None = field(default=None, repr=False)
    request_id_header: str = "x-request-id"

    def __post_init__(self) -> None:
        for name in ("per_feature", "max_total"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(
                    f"EvidenceOptions: {name} must be a positive integer, got {value!r}"
                )
        for name in ("redact", "hash"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(
                    f"EvidenceOptions: {name} must be a collection of field names, got the "
                    f"string {value!r}; write {name}=({value!r},)"
                )
            object.__setattr__(self, name, frozenset(value))
        if self.key is not None and not 1 <= len(self.key) <= 64:
            raise ValueError(
                f"EvidenceOptions: key must be 1 to 64 bytes, got {len(self.key)} bytes"
            )
        if not self.request_id_header or self.request_id_header != self.request_id_header.strip():
            raise ValueError(
                f"EvidenceOptions: request_id_header must be a header name, "
                f"got {self.request_id_header!r}"
            )


@dataclass(frozen=True)
class Evidence:
    """One offending value as kept: never the raw value of a redacted or hashed field."""

    feature: str
    reason: str  # offences.REASONS
    value: str  # a short JSON-like preview, REDACTED, or "blake2b:<hex>"
    request_id: str | None
    time: float  # unix seconds, when the worker checked it

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "value": self.value,
            "request_id": self.request_id,
            "time": self.time,
        }


class EvidenceLog:
    """Ring buffers per feature with one bound over all of them; thread-safe.

    Past `max_total`, the oldest entry of any feature goes. `_order` lists (seq, feature)
    for every entry in arrival order; an entry a feature's own ring already dropped
    stays there until it is reached or the list is compacted (past twice the bound).
    """

    def __init__(self, per_feature: int, max_total: int) -> None:
        self.per_feature = per_feature
        self.max_total = max_total
        self._rings: dict[str, deque[tuple[int, Evidence]]] = {}
        self._order: deque[tuple[int, str]] = deque()
        self._total = 0
        self._seq = 0
        # The newest entry with a request id per (feature, reason): the exemplars.
        self._exemplars: dict[tuple[str, str], Evidence] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._total

    def add(self, entries: Iterable[Evidence]) -> None:
        with self._lock:
            for entry in entries:
                self._add(entry)

    def _add(self, entry: Evidence) -> None:
        ring = self._rings.get(entry.feature)
        if ring is None:
            ring = self._rings[entry.feature] = deque()
        if len(ring) >= self.per_feature:
            ring.popleft()
            self._total -= 1
        self._seq += 1
        ring.append((self._seq, entry))
        self._order.append((self._seq, entry.feature))
        self._total += 1
        while self._total > self.max_total:
            seq, name = self._order.popleft()
            oldest = self._rings[name]
            if oldest and oldest[0][0] == seq:
                oldest.popleft()
                self._total -= 1
        if len(self._order) > 2 * self.max_total:
            heads = {name: ring[0][0] for name, ring in self._rings.items() if ring}
            self._order = deque(
                (seq, name) for seq, name in self._order if seq >= heads.get(name, seq + 1)
            )
        if entry.request_id is not None:
            self._exemplars[entry.feature, entry.reason] = entry

    def recent(self) -> dict[str, list[Evidence]]:
        """Each feature's entries, newest first."""
        with self._lock:
            return {
                name: [entry for _, entry in reversed(ring)]
                for name, ring in self._rings.items()
                if ring
            }

    def exemplars(self) -> dict[tuple[str, str], Evidence]:
        """The newest entry with a request id per (feature, reason)."""
        with self._lock:
            return dict(self._exemplars)


class Redactor:
    """What is kept of a feature's value: a preview, nothing, or a keyed digest."""

    def __init__(self, options: EvidenceOptions, names: Iterable[str]) -> None:
        self.key = options.key if options.key is not None else os.urandom(32)
        self.modes: dict[str, str] = {}
        for name in names:
            if _covers(options.redact, name):
                self.modes[name] = "redact"
            elif _covers(options.hash, name):
                self.modes[name] = "hash"

    def kept(self, feature: str, value: Any) -> str:
        mode = self.modes.get(feature)
        if mode is None:
            return preview(value)
        if mode == "redact":
            return REDACTED
        return "blake2b:" + digest(value, self.key)


def _covers(fields: Collection[str], name: str) -> bool:
    """Whether a sensitive field is this feature, holds it, or is nested in it."""
    return any(f == name or name.startswith(f + ".") or f.startswith(name + ".") for f in fields)


def digest(value: Any, key: bytes) -> str:
    """Keyed BLAKE2b (8 bytes, hex) of a value's type and canonical JSON."""
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        data = repr(value).encode("utf-8", "surrogateescape")
    data = type(value).__name__.encode() + b":" + data
    return hashlib.blake2b(data, key=key, digest_size=8).hexdigest()


def preview(value: Any) -> str:
    """A short JSON-like text of a value: at most PREVIEW_CHARS, whatever its size."""
    text = _preview(value, 0)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _preview(value: Any, depth: int) -> str:
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        if value.bit_length() > 128:  # str() of a huge int is slow (and capped)
            return f"<int of {value.bit_length()} bits>"
        return str(value)
    if t is float:
        if math.isnan(value):
            return "NaN"
        return repr(value) if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
    if t is str:
        return orjson.dumps(value[:PREVIEW_CHARS]).decode()
    if t is list or t is dict:
        if depth >= _DEPTH:
            return "[…]" if t is list else "{…}"
        if t is list:
            items = [_preview(v, depth + 1) for v in value[:_ITEMS]]
            open_, close = "[", "]"
        else:
            items = [
                f"{orjson.dumps(str(k)[:40]).decode()}: {_preview(v, depth + 1)}"
                for k, v in islice(value.items(), _ITEMS)
            ]
            open_, close = "{", "}"
        if len(value) > _ITEMS:
            items.append(f"… {len(value) - _ITEMS} more")
        return open_ + ", ".join(items) + close
    return f"<{t.__name__}>"


def request_id(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The request id header's value: printable ASCII, at most REQUEST_ID_CHARS."""
    for key, value in headers:
        if key.lower() == name:
            text = value[:REQUEST_ID_CHARS].decode("latin-1").strip()
            return "".join(c if " " <= c <= "~" else "?" for c in text) or None
    return None


class Recorder:
    """Checks batches through one engine and records the offending values it finds."""

    def __init__(
        self, engine: Engine, baseline: Baseline, log: EvidenceLog, redactor: Redactor
    ) -> None:
        self.engine = engine
        self.log = log
        self.redactor = redactor
        self.offences = {
            name: Offences(baseline.features[name], checker)
            for name, checker in engine.checkers.items()
        }
        # At most a quarter of a feature's ring from one batch: a flood costs little,
        # and the ring keeps requests from several batches.
        self.per_batch = max(1, log.per_feature // 4)

    def check(self, rows: Sequence[Any], ids: Sequence[str | None], now: float) -> None:
        """`engine.check(rows)`, then evidence for the features whose counters moved.

        `ids[i]` is the request id of `rows[i]` (None without one); `now` the unix time.
        """
        windows = self.engine.window.features.values()
        before = list(map(counters, windows))
        self.engine.check(rows)
        after = list(map(counters, windows))
        if after == before:  # a clean batch: one comparison
            return
        moved = [
            offences.name
            for offences, a, b in zip(self.offences.values(), before, after, strict=True)
            if a != b and offences.moved(a, b)
        ]
        if moved:
            self.log.add(self._find(moved, rows, ids, now))

    def _find(
        self, names: list[str], rows: Sequence[Any], ids: Sequence[str | None], now: float
    ) -> list[Evidence]:
        if not all(type(row) is dict for row in rows):  # the engine rejected the others
            kept = [(row, rid) for row, rid in zip(rows, ids, strict=True) if type(row) is dict]
            rows, ids = [row for row, _ in kept], [rid for _, rid in kept]
        if self.engine.nested:
            rows = [flatten(row) for row in rows]
        n = len(rows)
        get = dict.get
        out: list[Evidence] = []
        for name in names:
            values = list(map(get, rows, repeat(name, n), repeat(ABSENT, n)))
            for i, reason in reversed(self.offences[name].last(values, self.per_batch)):
                value = values[i]  # oldest first: the ring keeps the newest
                if reason == "missing":
                    text = "null" if value is None else "(absent)"
                else:
                    text = self.redactor.kept(name, value)
                out.append(Evidence(name, reason, text, ids[i], now))
        return out
