"""Payload-logger CloudEvents: reading their headers, and joining requests to responses.

KServe's inference logger and Seldon Core's request logger POST one CloudEvent per
request and one per response, in binary content mode: the body is the payload as the
model server saw it, the event attributes are `ce-*` headers (CloudEvents HTTP protocol
binding 1.0, section 3.1: https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/
bindings/http-protocol-binding.md#31-binary-content-mode). The two loggers differ in
how a request and its response are tied together:

- KServe (`pkg/logger/worker.go`, `handler.go`): types `org.kubeflow.serving.inference.
  request` / `.response`; both events carry the same `ce-id`; extensions
  `ce-inferenceservicename`, `ce-namespace`, `ce-component`, `ce-endpoint`,
  `ce-metadata`. The response event is sent with the *request's* Content-Type, and
  only for status 200.
- Seldon Core (`executor/logger/worker.go`, `executor/predictor/predictor_process.go`):
  types `io.seldon.serving.inference.request` / `.response` (and `io.seldon.serving.
  feedback`); every event gets a fresh `ce-id`, the pair shares `ce-requestid` (the
  prediction's puid); extensions `ce-modelid`, `ce-inferenceservicename` (the
  SeldonDeployment), `ce-namespace`, `ce-endpoint` (the predictor), `ce-protocol`.

Nothing here touches HTTP servers or the clock directly: `Joiner` takes a clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import unquote

Kind = Literal["request", "response"]
Outcome = Literal["joined", "timed_out", "evicted", "flushed"]
OUTCOMES: tuple[Outcome, ...] = ("joined", "timed_out", "evicted", "flushed")

# ce-type -> what the event carries; None: a known type the monitor has no use for.
EVENT_TYPES: dict[str, Kind | None] = {
    "org.kubeflow.serving.inference.request": "request",
    "org.kubeflow.serving.inference.response": "response",
    "io.seldon.serving.inference.request": "request",
    "io.seldon.serving.inference.response": "response",
    "io.seldon.serving.feedback": None,
}
SPEC_VERSIONS = ("1.0", "0.3")  # 0.3 used the same ce-* headers for these attributes
MAX_ATTRIBUTE_LENGTH = 1024  # ids are kept in memory for deduplication: bounded


class CloudEventError(ValueError):
    """Headers that do not make a usable binary-mode CloudEvent; names the header."""


def is_cloudevent(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Binary mode is recognised by its ce-specversion (or ce-type) header. A plain
    inference request may carry ce-id (KServe reuses a client's ce-id), so that
    header alone does not make an event."""
    return any(key in (b"ce-specversion", b"ce-type") for key, _ in headers)


def is_structured(content_type: str) -> bool:
    """Structured or batched mode: the attributes are inside the JSON body."""
    return content_type.strip().lower().startswith("application/cloudevents")


@dataclass(frozen=True)
class EventHeaders:
    """The attributes of one binary-mode event that the sidecar uses."""

    id: str
    type: str
    source: str
    kind: Kind | None  # None: a known type with no payload to check (Seldon feedback)
    key: str  # what joins the request and its response: ce-requestid, else ce-id
    model: str | None  # ce-inferenceservicename


def read_headers(headers: Iterable[tuple[bytes, bytes]]) -> EventHeaders:
    """The event's attributes from ASGI header pairs; CloudEventError names a missing,
    repeated, empty, too long or unsupported header."""
    values: dict[str, str] = {}
    for raw_key, raw_value in headers:
        key = raw_key.decode("latin-1").lower()
        if not key.startswith("ce-"):
            continue
        if key in values:
            raise CloudEventError(f"{key}: given more than once")
        # The binding percent-encodes characters outside printable ASCII (3.1.3.2).
        values[key] = unquote(raw_value.decode("latin-1").strip())

    def required(name: str) -> str:
        value = values.get(name)
        if value is None:
            raise CloudEventError(f"{name}: missing (a binary-mode CloudEvent needs it)")
        return checked(name, value)

    def checked(name: str, value: str) -> str:
        if not value:
            raise CloudEventError(f"{name}: empty")
        if len(value) > MAX_ATTRIBUTE_LENGTH:
            raise CloudEventError(f"{name}: longer than {MAX_ATTRIBUTE_LENGTH} characters")
        return value

    version = required("ce-specversion")
    if version not in SPEC_VERSIONS:
        raise CloudEventError(
            f"ce-specversion: {version!r} is not supported (expected {SPEC_VERSIONS[0]})"
        )
    event_type = required("ce-type")
    if event_type not in EVENT_TYPES:
        raise CloudEventError(
            f"ce-type: {event_type!r} is not a KServe or Seldon inference request or "
            f"response (expected one of {', '.join(EVENT_TYPES)})"
        )
    event_id = required("ce-id")
    source = required("ce-source")
    if event_type.startswith("io.seldon."):
        key = required("ce-requestid")  # Seldon's ce-id differs between the two events
    else:
        request_id = values.get("ce-requestid")
        key = event_id if request_id is None else checked("ce-requestid", request_id)
    model = values.get("ce-inferenceservicename") or None
    if model is not None:
        model = checked("ce-inferenceservicename", model)
    return EventHeaders(event_id, event_type, source, EVENT_TYPES[event_type], key, model)


T = TypeVar("T")


@dataclass(frozen=True)
class Exchange(Generic[T]):
    """A request and its response, or the half that arrived; ready to be checked."""

    key: Hashable
    request: T | None
    response: T | None
    outcome: Outcome  # joined; or alone: timed_out, evicted (table full), flushed


class _Pending(Generic[T]):
    __slots__ = ("deadline", "nbytes", "request", "response")

    def __init__(self, deadline: float, nbytes: int) -> None:
        self.deadline = deadline
        self.nbytes = nbytes  # of the one half waiting
        self.request: T | None = None
        self.response: T | None = None


def _no_size(item: Any) -> int:
    return 0


class Joiner(Generic[T]):
    """Pairs request and response events by key, in either order.

    The first half of an exchange waits at most `wait_seconds` for the other; after
    that `expire()` hands it over alone (a logger in request-only mode never sends
    responses). At most `max_pending` exchanges wait, holding at most `max_bytes` (as
    measured by `size(item)`): past either, the oldest are handed over alone at once.
    Halves already handed over are remembered for
    `remember_seconds` (at most `max_remembered` of them), so a redelivered event is
    recognised as a duplicate rather than starting a new exchange.

    Not thread-safe: one event loop calls it. Deadlines are `clock()` values.
    """

    def __init__(
        self,
        *,
        wait_seconds: float = 5.0,
        max_pending: int = 10_000,
        max_bytes: int | None = None,
        size: Callable[[T], int] = _no_size,
        remember_seconds: float = 60.0,
        max_remembered: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not wait_seconds > 0:
            raise ValueError(f"wait_seconds must be positive, got {wait_seconds!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        if max_remembered < 1:
            raise ValueError(f"max_remembered must be at least 1, got {max_remembered!r}")
        self.wait_seconds = wait_seconds
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.size = size
        self.pending_bytes = 0
        self.remember_seconds = remember_seconds
        self.max_remembered = max_remembered
        self.clock = clock
        # Insertion order is deadline order (one wait for all): expiry pops from the front.
        self._pending: OrderedDict[Hashable, _Pending[T]] = OrderedDict()
        self._done: OrderedDict[tuple[Hashable, Kind], float] = OrderedDict()

    def __len__(self) -> int:
        """Exchanges waiting for their other half."""
        return len(self._pending)

    def seen(self, key: Hashable, kind: Kind) -> bool:
        """Whether this half already arrived (waiting, or handed over and remembered)."""
        entry = self._pending.get(key)
        if entry is not None:
            half = entry.request if kind == "request" else entry.response
            if half is not None:
                return True
        until = self._done.get((key, kind))
        return until is not None and until > self.clock()

    def add(self, key: Hashable, kind: Kind, item: T) -> list[Exchange[T]] | None:
        """Record one half. Returns None for a duplicate (ignored); otherwise the
        exchanges now complete: this one if its other half was waiting, or the oldest
        waiting ones if the table is over its bounds (this one too, if it alone is)."""
        if self.seen(key, kind):
            return None
        entry = self._pending.get(key)
        if entry is not None:  # the other half is waiting: joined
            del self._pending[key]
            self.pending_bytes -= entry.nbytes
            if kind == "request":
                entry.request = item
            else:
                entry.response = item
            return [self._hand_over(key, entry, "joined")]
        entry = _Pending(self.clock() + self.wait_seconds, self.size(item))
        if kind == "request":
            entry.request = item
        else:
            entry.response = item
        self._pending[key] = entry
        self.pending_bytes += entry.nbytes
        out = []
        while len(self._pending) > self.max_pending or (
            self.max_bytes is not None and self.pending_bytes > self.max_bytes
        ):
            oldest, evicted = self._pending.popitem(last=False)
            self.pending_bytes -= evicted.nbytes
            out.append(self._hand_over(oldest, evicted, "evicted"))
        return out

    def expire(self) -> list[Exchange[T]]:
        """Hand over, alone, every half whose wait is over; forget old duplicates."""
        now = self.clock()
        out = []
        while self._pending:
            key, entry = next(iter(self._pending.items()))
            if entry.deadline > now:
                break
            del self._pending[key]
            self.pending_bytes -= entry.nbytes
            out.append(self._hand_over(key, entry, "timed_out"))
        while self._done and next(iter(self._done.values())) <= now:
            self._done.popitem(last=False)
        return out

    def flush(self) -> list[Exchange[T]]:
        """Hand over everything still waiting (at shutdown)."""
        out = [self._hand_over(key, entry, "flushed") for key, entry in self._pending.items()]
        self._pending.clear()
        self.pending_bytes = 0
        return out

    def _hand_over(self, key: Hashable, entry: _Pending[T], outcome: Outcome) -> Exchange[T]:
        until = self.clock() + self.remember_seconds
        halves: tuple[tuple[Kind, T | None], ...] = (
            ("request", entry.request),
            ("response", entry.response),
        )
        for kind, item in halves:
            if item is not None:
                self._done[(key, kind)] = until
                self._done.move_to_end((key, kind))
        while len(self._done) > self.max_remembered:
            self._done.popitem(last=False)
        return Exchange(key, entry.request, entry.response, outcome)
