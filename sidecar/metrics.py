"""Every Prometheus family, rendered at scrape time from the monitors' reports.

One collector per registry serves every monitor registered with it, so several
models in one process share metric names without duplicate registrations. Label
values come only from the baseline (model, feature and bin names) and from fixed
sets (results, reasons): request bodies never become labels.

The families are described once (`FAMILIES`) and `Series.add` is the one place that
maps a snapshot onto them. Two writers read the result: `render` builds
prometheus_client Metric objects (for `collect()`, so any exposition of the registry
works), and `TextWriter` writes the text format directly, byte for byte as
`generate_latest` would, several times faster: `metrics_app` serves that.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Receive, Scope, Send

from .report import WindowReport

if TYPE_CHECKING:
    from .worker import Monitor

# Upper bounds of skew_monitor_batch_seconds (seconds).
BATCH_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

MEASURES = ("psi", "js_distance", "linf", "wasserstein", "ks", "mean_shift", "scale_ratio")
# Why a watched request's body was not checked (skew_samples_dropped_total{reason}).
DROP_REASONS = (
    "rate_limited",
    "queue_full",
    "too_large",
    "body_incomplete",
    "invalid_json",
    "unsupported_encoding",
    "unrecognised_payload",
    "empty_body",
    "sink_busy",  # datagram tap: the sidecar is behind (socket buffer full)
    "sink_unavailable",  # datagram tap: no sidecar listening
    "lost_in_transit",  # datagram tap: sent, never received (counted by the sidecar)
    "no_rows",  # a known format with no rows: an empty batch, or items that are not rows
    "monitor_error",  # the monitor failed on this sample (skew_monitor_errors_total)
    "monitor_disabled",  # the worker crashed more than max_restarts times
)
ERROR_STAGES = ("parse", "extract", "check", "report", "worker")
# Per-feature counters: family name, help, and the FeatureReport field it reads.
FEATURE_COUNTERS = (
    ("skew_feature_values", "Values present with the trained type.", "values"),
    ("skew_feature_missing", "Rows without the feature (absent or null).", "missing"),
    ("skew_feature_nonfinite", "NaN or infinite values.", "nonfinite"),
    ("skew_feature_type_mismatch", "Values of another type than trained.", "type_mismatch"),
    (
        "skew_feature_unseen_category",
        "Categories not in the training vocabulary.",
        "unseen_category",
    ),
    ("skew_feature_shape_mismatch", "List shapes never seen in training.", "shape_mismatch"),
)


@dataclass
class MonitorSnapshot:
    """What one monitor exposes at a scrape; built by the monitor under its lock."""

    model: str
    baseline_hash: str
    schema_version: int
    totals: list[WindowReport]  # cumulative counts since start: requests, then responses
    last_window: list[WindowReport]  # measures of the last closed window
    window_end: float  # unix time of the last closed window, 0 before the first
    seen: int = 0
    sampled: int = 0
    checked: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    queue_capacity: int = 0
    windows: int = 0
    export_bins: bool = True
    batch_buckets: list[int] = field(default_factory=list)  # per bucket, +Inf last
    batch_sum: float = 0.0
    # Kinds of bug each feature has been diagnosed with (sidecar.diagnosis.KINDS).
    diagnosed: dict[str, frozenset[str]] = field(default_factory=dict)
    # Evidence (when on): (feature, reason) -> (request id, unix time) of the newest
    # offending value with a request id; exemplars of the violation counters.
    exemplars: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)


# -- the families -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, a cheap dict key
class Family:
    """One metric family: name (a counter's without `_total`), help, type, and label
    names in add_metric order (model first)."""

    name: str
    help: str
    type: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name


def _counter(name: str, doc: str, *labels: str) -> Family:
    return Family(name, doc, "counter", ("model", *labels))


def _gauge(name: str, doc: str, *labels: str) -> Family:
    return Family(name, doc, "gauge", ("model", *labels))


BASELINE_INFO: Family = _gauge(
    "skew_baseline_info", "The baseline each model is compared against (value 1).",
    "baseline_hash", "schema_version",
)  # fmt: skip
REQUESTS_SEEN = _counter("skew_requests_seen", "Requests on watched methods and paths.")
REQUESTS_SAMPLED = _counter(
    "skew_requests_sampled", "Requests whose bodies were queued for checking."
)
SAMPLES_CHECKED = _counter(
    "skew_samples_checked",
    "Sampled requests whose rows were checked; the others are dropped, by reason.",
)
SAMPLES_DROPPED = _counter(
    "skew_samples_dropped", "Watched requests not checked, by reason.", "reason"
)
MONITOR_ERRORS = _counter(
    "skew_monitor_errors", "Failures inside the monitor, never raised into the app.", "stage"
)
ROWS_CHECKED = _counter("skew_rows_checked", "Request rows checked against the baseline.")
UNKNOWN_FEATURES = _counter(
    "skew_unknown_features", "Values of keys that are not baseline features (names not kept)."
)
# FeatureReport field -> family.
FEATURE_COUNTER_FAMILIES = {
    field_name: _counter(name, doc, "feature") for name, doc, field_name in FEATURE_COUNTERS
}
OUT_OF_RANGE = _counter(
    "skew_feature_out_of_range", "Values outside the training range.", "feature", "side"
)
FEATURE_BIN = _counter(
    "skew_feature_bin", "Serving values per fixed baseline bin (additive across replicas).",
    "feature", "bin",
)  # fmt: skip
BASELINE_FRACTION: Family = _gauge(
    "skew_feature_baseline_fraction", "Training fraction of each baseline bin.", "feature", "bin"
)
# FeatureReport field -> family.
MEASURE_FAMILIES: dict[str, Family] = {
    name: _gauge(f"skew_feature_{name}", f"{name} of the last completed window.", "feature")
    for name in MEASURES
}
DRIFTED: Family = _gauge(
    "skew_feature_drifted",
    "1 if the last window's verdict is drift, else 0; absent without a verdict.",
    "feature",
)
DIAGNOSIS: Family = _gauge(
    "skew_feature_diagnosis",
    "1 while the last window's diagnosis names this kind of bug, 0 after it clears.",
    "feature", "kind",
)  # fmt: skip
WINDOW_ROWS: Family = _gauge("skew_window_rows", "Request rows in the last completed window.")
WINDOW_END: Family = _gauge("skew_window_end_timestamp_seconds", "When the last window closed.")
QUEUE_DEPTH: Family = _gauge("skew_queue_depth", "Samples waiting to be checked.")
QUEUE_CAPACITY: Family = _gauge("skew_queue_capacity", "Samples beyond this many are dropped.")
BATCH_SECONDS = Family(
    "skew_monitor_batch_seconds",
    "The monitor's own processing time per batch (off the event loop).",
    "histogram",
    ("model",),
)

# Several models behind one middleware: not a per-model family (no `model` label), and
# only exported when there are several models.
UNKNOWN_MODEL_REQUESTS = Family(
    "skew_unknown_model_requests",
    "Watched requests naming a model that has no baseline (the name is not kept).",
    "counter",
    (),
)

# Exposition order.
FAMILIES: tuple[Family, ...] = (
    BASELINE_INFO,
    REQUESTS_SEEN,
    REQUESTS_SAMPLED,
    SAMPLES_CHECKED,
    SAMPLES_DROPPED,
    MONITOR_ERRORS,
    ROWS_CHECKED,
    UNKNOWN_FEATURES,
    *FEATURE_COUNTER_FAMILIES.values(),
    OUT_OF_RANGE,
    FEATURE_BIN,
    BASELINE_FRACTION,
    *MEASURE_FAMILIES.values(),
    DRIFTED,
    DIAGNOSIS,
    WINDOW_ROWS,
    WINDOW_END,
    QUEUE_DEPTH,
    QUEUE_CAPACITY,
    BATCH_SECONDS,
)
# The `le` label values of skew_monitor_batch_seconds_bucket, +Inf last.
BUCKET_BOUNDS = (*(str(b) for b in BATCH_BUCKETS), "+Inf")

Labels = tuple[str, ...]


class Series:
    """Every series of some monitors, per family: label values and a value.

    `add` is the one place that maps snapshot fields onto families; the writers
    only format what it collected.
    """

    def __init__(self) -> None:
        self.values: dict[Family, list[tuple[Labels, float]]] = {
            family: [] for family in FAMILIES if family.type != "histogram"
        }
        # skew_monitor_batch_seconds: labels, cumulative bucket counts (+Inf last), sum.
        self.histograms: list[tuple[Labels, list[int], float]] = []
        # Violation counters' exemplars (OpenMetrics only): family -> labels -> exemplar.
        self.exemplars: dict[Family, dict[Labels, Exemplar]] = {}

    def add(self, snap: MonitorSnapshot) -> None:
        out = self.values
        m = snap.model
        model = (m,)
        out[BASELINE_INFO].append(((m, snap.baseline_hash, str(snap.schema_version)), 1))
        out[REQUESTS_SEEN].append((model, snap.seen))
        out[REQUESTS_SAMPLED].append((model, snap.sampled))
        out[SAMPLES_CHECKED].append((model, snap.checked))
        dropped = out[SAMPLES_DROPPED]
        for reason in DROP_REASONS:
            dropped.append(((m, reason), snap.dropped.get(reason, 0)))
        errors = out[MONITOR_ERRORS]
        for stage in ERROR_STAGES:
            errors.append(((m, stage), snap.errors.get(stage, 0)))
        out[QUEUE_DEPTH].append((model, snap.queue_depth))
        out[QUEUE_CAPACITY].append((model, snap.queue_capacity))
        if snap.batch_buckets:
            cumulative = list(itertools.accumulate(snap.batch_buckets))
            self.histograms.append((model, cumulative, snap.batch_sum))
        if snap.totals:
            out[ROWS_CHECKED].append((model, snap.totals[0].rows))
            unknown = sum(t.unknown_features for t in snap.totals)
            out[UNKNOWN_FEATURES].append((model, unknown))
        counters = [(name, out[family]) for name, family in FEATURE_COUNTER_FAMILIES.items()]
        out_of_range, bins, fractions = out[OUT_OF_RANGE], out[FEATURE_BIN], out[BASELINE_FRACTION]
        for total in snap.totals:
            for r in total.features.values():
                feature = (m, r.name)
                for field_name, rows in counters:
                    count = getattr(r, field_name)
                    if count is not None:  # None: not knowable (a pruned vocabulary)
                        rows.append((feature, count))
                out_of_range.append(((m, r.name, "low"), r.out_of_range_low))
                out_of_range.append(((m, r.name, "high"), r.out_of_range_high))
                # Every bin exists from the first scrape (at 0): none is missing from
                # a rate() window.
                for label, count, fraction in zip(
                    r.bin_labels, r.bin_counts, r.baseline_fractions, strict=True
                ):
                    labels = (m, r.name, label)
                    if snap.export_bins:
                        bins.append((labels, count))
                    fractions.append((labels, fraction))
        if snap.windows:
            window_rows = snap.last_window[0].rows if snap.last_window else 0
            out[WINDOW_ROWS].append((model, window_rows))
            out[WINDOW_END].append((model, snap.window_end))
        measures = [(name, out[family]) for name, family in MEASURE_FAMILIES.items()]
        drifted = out[DRIFTED]
        for window in snap.last_window:
            for r in window.features.values():
                feature = (m, r.name)
                for name, rows in measures:
                    value = getattr(r, name)
                    if value is not None and not math.isnan(value):
                        rows.append((feature, value))
                if r.drifted is not None:
                    drifted.append((feature, 1.0 if r.drifted else 0.0))
        # A kind once diagnosed stays a series (at 0 once it clears): bounded by
        # features x the fixed kinds.
        current = {r.name: {d.kind for d in r.diagnosis} for w in snap.last_window
                   for r in w.features.values()}  # fmt: skip
        diagnosis = out[DIAGNOSIS]
        for name, kinds in snap.diagnosed.items():
            now = current.get(name, set())
            for kind in sorted(kinds):
                diagnosis.append(((m, name, kind), 1.0 if kind in now else 0.0))
        for (name, reason), (request_id, at) in snap.exemplars.items():
            family, extra = _VIOLATIONS[reason]
            exemplar = Exemplar({"request_id": request_id}, 1.0, at)
            self.exemplars.setdefault(family, {})[(m, name) + extra] = exemplar


# Evidence reason (offences.REASONS) -> the counter it counts in, and its labels after
# model and feature.
_VIOLATIONS: dict[str, tuple[Family, Labels]] = {
    **{
        reason: (FEATURE_COUNTER_FAMILIES[reason], ())
        for reason in ("missing", "type_mismatch", "shape_mismatch", "nonfinite")
    },
    "unseen_category": (FEATURE_COUNTER_FAMILIES["unseen_category"], ()),
    "out_of_range/low": (OUT_OF_RANGE, ("low",)),
    "out_of_range/high": (OUT_OF_RANGE, ("high",)),
}


# -- writer 1: prometheus_client Metric objects ------------------------------------------


def render(snapshots: list[MonitorSnapshot]) -> Iterator[Metric]:
    """The families as prometheus_client Metric objects, in FAMILIES order."""
    series = Series()
    for snap in snapshots:
        series.add(snap)
    for family in FAMILIES:
        labels = list(family.labels)
        if family.type == "histogram":
            histogram = HistogramMetricFamily(family.name, family.help, labels=labels)
            for values, cumulative, total in series.histograms:
                buckets = list(zip(BUCKET_BOUNDS, cumulative, strict=True))
                histogram.add_metric(values, buckets, total)
            yield histogram
            continue
        if family.type == "counter":
            counter = CounterMetricFamily(family.name, family.help, labels=labels)
            exemplars = series.exemplars.get(family, {})
            for values, value in series.values[family]:
                counter.add_metric(values, value, exemplar=exemplars.get(values))
            yield counter
            continue
        gauge = GaugeMetricFamily(family.name, family.help, labels=labels)
        for values, value in series.values[family]:
            gauge.add_metric(values, value)
        yield gauge


# -- writer 2: the text format ----------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(names: tuple[str, ...], values: Labels) -> str:
    """`{name="value",...}` sorted by name, as generate_latest writes labels."""
    pairs = sorted(zip(names, values, strict=True))
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


# prometheus_client's float formatting (Go's), typed.
_go_float: Callable[[float], str] = floatToGoString


def _number(value: float) -> str:
    """floatToGoString(value), the common cases first: it formats every sample."""
    if type(value) is int:
        if 0 <= value < 1_000_000:
            return f"{value}.0"
    elif type(value) is float and -math.inf < value < 1e6:  # not NaN, no exponent switch
        return repr(value)
    return _go_float(value)


def _header(family: Family) -> str:
    name = family.sample_name
    doc = family.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {family.type}\n"


_HEADERS = {family: _header(family) for family in FAMILIES}
# Cached lines beyond twice the last exposition's series, plus this, are stale.
_CACHE_SLACK = 1_000


class TextWriter:
    """Writes families in the text format 0.0.4, as generate_latest would.

    Each series' line is cached by family and label values, with the value it was
    written for: label strings are escaped and sorted once, and a value that has not
    changed since the last scrape (baseline fractions, quiet bins, last window's
    measures) is not formatted again. Label values come only from baselines and fixed
    sets, so the cache holds about one entry per exported series; when it holds over
    twice the last exposition's series (models removed, baselines replaced) it starts
    again.
    """

    def __init__(self) -> None:
        # family -> label values -> (prefix `name{labels} `, value, line)
        self._cache: dict[Family, dict[Labels, tuple[str, float, str]]] = {
            family: {} for family in FAMILIES
        }

    def text(self, snapshots: Iterable[MonitorSnapshot]) -> str:
        """The families of these monitors, equal to generate_latest's for render()'s."""
        lines: dict[Family, list[str]] = {family: [] for family in FAMILIES}
        for snap in snapshots:
            series = Series()
            series.add(snap)
            self._write(series, lines)
        cached = sum(len(cache) for cache in self._cache.values())
        if cached > 2 * sum(len(out) for out in lines.values()) + _CACHE_SLACK:
            for cache in self._cache.values():
                cache.clear()
        return "".join(_HEADERS[family] + "".join(lines[family]) for family in FAMILIES)

    def _write(self, series: Series, lines: dict[Family, list[str]]) -> None:
        for family, rows in series.values.items():
            cache = self._cache[family]
            out = lines[family]
            for labels, value in rows:
                entry = cache.get(labels)
                # Equal non-zero numbers format alike; zeros may not (-0.0 == 0.0).
                if entry is not None and value and entry[1] == value:
                    out.append(entry[2])
                    continue
                if entry is None:
                    prefix = family.sample_name + _label_text(family.labels, labels) + " "
                else:
                    prefix = entry[0]
                line = prefix + _number(value) + "\n"
                cache[labels] = (prefix, value, line)
                out.append(line)
        out = lines[BATCH_SECONDS]
        name, names = BATCH_SECONDS.name, BATCH_SECONDS.labels
        for labels, cumulative, total in series.histograms:
            for bound, count in zip(BUCKET_BOUNDS, cumulative, strict=True):
                text = _label_text((*names, "le"), (*labels, bound))
                out.append(f"{name}_bucket{text} {_number(count)}\n")
            text = _label_text(names, labels)
            out.append(f"{name}_count{text} {_number(cumulative[-1])}\n")
            out.append(f"{name}_sum{text} {_number(total)}\n")


def _offer_gil() -> None:
    """Between slices of a render: lets a waiting event loop run (see worker.py)."""
    time.sleep(0)


# -- the collector ----------------------------------------------------------------------


class SkippedInThread:
    """For a collector that also writes its own text: while `skipped()` is open,
    `collect()` yields nothing in that thread (the text is written apart; the registry's
    other collectors still go through generate_latest). Other threads are unaffected."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def is_skipped(self) -> bool:
        return getattr(self._local, "skipped", False)

    @contextmanager
    def skipped(self) -> Iterator[None]:
        self._local.skipped = True
        try:
            yield
        finally:
            self._local.skipped = False


class SkewCollector(SkippedInThread, Collector):
    """Renders all monitors of one registry."""

    def __init__(self) -> None:
        super().__init__()
        self._monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._writer = TextWriter()

    def add(self, monitor: Monitor) -> None:
        with self._lock:
            self._monitors.add(monitor)

    def describe(self) -> Iterable[Metric]:
        # Registering must not call collect(): monitors may not be running yet.
        return []

    def collect(self) -> Iterator[Metric]:
        if self.is_skipped:
            return
        # No slices here: collect() may run on the event loop (make_asgi_app).
        yield from render([monitor.snapshot() for monitor in self._current()])

    def text(self) -> str:
        """The families in the text format: what generate_latest writes for collect()."""
        return self._writer.text(self._snapshots())

    def _snapshots(self) -> Iterator[MonitorSnapshot]:
        # In slices: the registry's other collectors, then per model its snapshot
        # (0.7 ms for 32 features, and it may wait for the worker's check in progress)
        # and its lines (0.3 ms), so a scrape never holds the GIL for long at a time.
        # text() runs in a thread, never on the event loop.
        for monitor in self._current():
            _offer_gil()
            snapshot = monitor.snapshot()
            _offer_gil()
            yield snapshot

    def _current(self) -> list[Monitor]:
        with self._lock:
            return list(self._monitors)


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, SkewCollector] = (
    weakref.WeakKeyDictionary()
)
_COLLECTORS_LOCK = threading.Lock()


class TextCollector(Protocol):
    """A collector that writes its own families in the text format (what generate_latest
    writes for its collect()), faster."""

    def text(self) -> str: ...

    def skipped(self) -> AbstractContextManager[None]: ...


# Registries whose text collector is not a SkewCollector (multiprocess_registry's).
_TEXT_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, TextCollector] = (
    weakref.WeakKeyDictionary()
)


def set_text_collector(registry: CollectorRegistry, collector: TextCollector) -> None:
    """exposition() will write `collector`, registered with `registry`, with its text()."""
    with _COLLECTORS_LOCK:
        _TEXT_COLLECTORS[registry] = collector


def monitors_of(registry: CollectorRegistry) -> list[Monitor]:
    """The monitors exporting to this registry (none if it has no skew collector)."""
    with _COLLECTORS_LOCK:
        collector = _COLLECTORS.get(registry)
    return collector._current() if collector is not None else []


def collector_for(registry: CollectorRegistry) -> SkewCollector:
    """The registry's skew collector, registered on first use."""
    with _COLLECTORS_LOCK:
        collector = _COLLECTORS.get(registry)
        if collector is None:
            collector = _COLLECTORS[registry] = SkewCollector()
            registry.register(collector)
        return collector


# -- /metrics ---------------------------------------------------------------------------

OPENMETRICS = "application/openmetrics-text"


def _text_ranges(accept: str) -> list[str]:
    """The Accept header's ranges that name the text format (q above 0).

    `*/*` does not count: Prometheus appends it to every Accept header, so only the
    text ranges say that its scrape_protocols admit the text format.
    """
    ranges = []
    for entry in accept.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        if media.lower() not in ("text/plain", "text/*"):
            continue
        q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            if float(q) <= 0:
                continue
        except ValueError:
            pass
        ranges.append(entry)
    return ranges


def _keeps_legacy_names(content_type: str) -> bool:
    """True for the text format with a name escaping that leaves legacy Prometheus
    names (every skew name and label name) as they are: 0.0.4, or 1.0.0 with
    underscores, allow-utf-8 or values. `dots` doubles underscores."""
    media, *params = (part.strip() for part in content_type.split(";"))
    escaping = next((p[9:] for p in params if p.startswith("escaping=")), "underscores")
    return media == "text/plain" and escaping in ("underscores", "allow-utf-8", "values")


def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The registry rendered for an Accept header: the body and its content type.

    The text format whenever the client accepts it: every other collector rendered
    by prometheus_client, then the skew families by the fast writer. OpenMetrics
    (or a name escaping that rewrites legacy names) is rendered entirely by
    prometheus_client, as make_asgi_app would.
    """
    encoder, content_type = choose_encoder(accept)
    if content_type.startswith(OPENMETRICS):
        ranges = _text_ranges(accept)
        if ranges:
            encoder, content_type = choose_encoder(",".join(ranges))
    with _COLLECTORS_LOCK:
        collector: TextCollector | None = _COLLECTORS.get(registry)
        if collector is None:
            collector = _TEXT_COLLECTORS.get(registry)
    if collector is None or not _keeps_legacy_names(content_type):
        return encoder(registry), content_type
    with collector.skipped():
        others = encoder(registry)
    return others + collector.text().encode(), content_type


def _default_registry() -> CollectorRegistry:
    """prometheus_client's REGISTRY; in multiprocess mode, every process's metrics added up."""
    from prometheus_client import REGISTRY

    from .multiprocess import multiprocess_dir, multiprocess_registry

    path = multiprocess_dir()
    return REGISTRY if path is None else multiprocess_registry(path)


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """A /metrics ASGI app that renders in a thread, so a scrape never stalls the loop.

    prometheus_client's make_asgi_app renders on the event loop (several ms for a
    32-feature model, mostly formatting each sample); serving requests would wait that
    long at every scrape. Here the skew families are written directly in the text
    format (the same bytes generate_latest writes, several times faster, in slices
    between models), after the registry's other collectors as prometheus_client
    renders them.

    The text format is served whenever the client names it, even after OpenMetrics:
    Prometheus 2.x and 3.x list `text/plain` after OpenMetrics by default and parse
    whichever format the Content-Type names. A client that names OpenMetrics and no
    text format (Prometheus with `scrape_protocols: [OpenMetricsText1.0.0]`; the `*/*`
    it appends does not count) gets OpenMetrics, rendered entirely by prometheus_client
    as before: the way to keep exemplars and `_created` samples of the registry's
    other metrics. So does a text 1.0.0 request with `escaping=dots`.

    Without a registry: prometheus_client's REGISTRY, or, when `PROMETHEUS_MULTIPROC_DIR`
    is set (several worker processes), `multiprocess_registry()`: every worker's
    metrics added up, written by multiprocess_text.py (prometheus_client's bytes).
    """
    target = registry if registry is not None else _default_registry()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope.get("headers") or [])
        accept = headers.get(b"accept", b"").decode("latin-1")
        loop = asyncio.get_running_loop()
        output, content_type = await loop.run_in_executor(None, exposition, target, accept)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": output})

    return app
