"""Every Prometheus family, rendered at scrape time from the monitors' reports.

One collector per registry serves every monitor registered with it, so several
models in one process share metric names without duplicate registrations. Label
values come only from the baseline (model, feature and bin names) and from fixed
sets (results, reasons): request bodies never become labels.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
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
    dropped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    queue_capacity: int = 0
    windows: int = 0
    export_bins: bool = True
    batch_buckets: list[int] = field(default_factory=list)  # per bucket, +Inf last
    batch_sum: float = 0.0


class SkewCollector(Collector):
    """Renders all monitors of one registry."""

    def __init__(self) -> None:
        self._monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, monitor: Monitor) -> None:
        with self._lock:
            self._monitors.add(monitor)

    def describe(self) -> Iterable[Metric]:
        # Registering must not call collect(): monitors may not be running yet.
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            monitors = list(self._monitors)
        snapshots = [m.snapshot() for m in monitors]
        yield from render(snapshots)


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, SkewCollector] = (
    weakref.WeakKeyDictionary()
)
_COLLECTORS_LOCK = threading.Lock()


def collector_for(registry: CollectorRegistry) -> SkewCollector:
    """The registry's skew collector, registered on first use."""
    with _COLLECTORS_LOCK:
        collector = _COLLECTORS.get(registry)
        if collector is None:
            collector = _COLLECTORS[registry] = SkewCollector()
            registry.register(collector)
        return collector


def render(snapshots: list[MonitorSnapshot]) -> Iterator[Metric]:
    def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=["model", *labels])

    def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["model", *labels])

    info = gauge(
        "skew_baseline_info", "The baseline each model is compared against (value 1).",
        "baseline_hash", "schema_version",
    )  # fmt: skip
    seen = counter("skew_requests_seen", "Requests on watched methods and paths.")
    sampled = counter("skew_requests_sampled", "Requests whose bodies were queued for checking.")
    dropped = counter("skew_samples_dropped", "Watched requests not checked, by reason.", "reason")
    errors = counter(
        "skew_monitor_errors", "Failures inside the monitor, never raised into the app.", "stage"
    )
    rows = counter("skew_rows_checked", "Request rows checked against the baseline.")
    unknown = counter(
        "skew_unknown_features", "Values of keys that are not baseline features (names not kept)."
    )
    per_feature = {
        field_name: counter(name, doc, "feature") for name, doc, field_name in FEATURE_COUNTERS
    }
    out_of_range = counter(
        "skew_feature_out_of_range", "Values outside the training range.", "feature", "side"
    )
    bins = counter(
        "skew_feature_bin", "Serving values per fixed baseline bin (additive across replicas).",
        "feature", "bin",
    )  # fmt: skip
    fractions = gauge(
        "skew_feature_baseline_fraction", "Training fraction of each baseline bin.",
        "feature", "bin",
    )  # fmt: skip
    measures = {
        name: gauge(f"skew_feature_{name}", f"{name} of the last completed window.", "feature")
        for name in MEASURES
    }
    drifted = gauge(
        "skew_feature_drifted",
        "1 if the last window's verdict is drift, else 0; absent without a verdict.",
        "feature",
    )
    window_rows = gauge("skew_window_rows", "Request rows in the last completed window.")
    window_end = gauge("skew_window_end_timestamp_seconds", "When the last window closed.")
    queue_depth = gauge("skew_queue_depth", "Samples waiting to be checked.")
    queue_capacity = gauge("skew_queue_capacity", "Samples beyond this many are dropped.")
    batch_seconds = HistogramMetricFamily(
        "skew_monitor_batch_seconds",
        "The monitor's own processing time per batch (off the event loop).",
        labels=["model"],
    )
    for snap in snapshots:
        m = snap.model
        info.add_metric([m, snap.baseline_hash, str(snap.schema_version)], 1)
        seen.add_metric([m], snap.seen)
        sampled.add_metric([m], snap.sampled)
        for reason in DROP_REASONS:
            dropped.add_metric([m, reason], snap.dropped.get(reason, 0))
        for stage in ERROR_STAGES:
            errors.add_metric([m, stage], snap.errors.get(stage, 0))
        queue_depth.add_metric([m], snap.queue_depth)
        queue_capacity.add_metric([m], snap.queue_capacity)
        if snap.batch_buckets:
            bounds = [*(str(b) for b in BATCH_BUCKETS), "+Inf"]
            cumulative = list(itertools.accumulate(snap.batch_buckets))
            batch_seconds.add_metric(
                [m], list(zip(bounds, cumulative, strict=True)), snap.batch_sum
            )
        if snap.totals:
            rows.add_metric([m], snap.totals[0].rows)
            unknown.add_metric([m], sum(t.unknown_features for t in snap.totals))
        for total in snap.totals:
            for r in total.features.values():
                for field_name, family in per_feature.items():
                    count = getattr(r, field_name)
                    if count is not None:  # None: not knowable (a pruned vocabulary)
                        family.add_metric([m, r.name], count)
                out_of_range.add_metric([m, r.name, "low"], r.out_of_range_low)
                out_of_range.add_metric([m, r.name, "high"], r.out_of_range_high)
                # Every bin exists from the first scrape (at 0): none is missing from
                # a rate() window.
                for label, count, fraction in zip(
                    r.bin_labels, r.bin_counts, r.baseline_fractions, strict=True
                ):
                    if snap.export_bins:
                        bins.add_metric([m, r.name, label], count)
                    fractions.add_metric([m, r.name, label], fraction)
        if snap.windows:
            window_rows.add_metric([m], snap.last_window[0].rows if snap.last_window else 0)
            window_end.add_metric([m], snap.window_end)
        for window in snap.last_window:
            for r in window.features.values():
                for name in MEASURES:
                    value = getattr(r, name)
                    if value is not None and not math.isnan(value):
                        measures[name].add_metric([m, r.name], value)
                if r.drifted is not None:
                    drifted.add_metric([m, r.name], 1.0 if r.drifted else 0.0)
    yield from (info, seen, sampled, dropped, errors, rows, unknown)
    yield from per_feature.values()
    yield from (out_of_range, bins, fractions)
    yield from measures.values()
    yield from (drifted, window_rows, window_end, queue_depth, queue_capacity, batch_seconds)


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """A /metrics ASGI app that renders in a thread, so a scrape never stalls the loop.

    prometheus_client's make_asgi_app renders on the event loop (tens of ms for
    thousands of series); serving requests would wait that long at every scrape.
    """
    from prometheus_client import REGISTRY

    target = registry if registry is not None else REGISTRY

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope.get("headers") or [])
        accept = headers.get(b"accept", b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        loop = asyncio.get_running_loop()
        output = await loop.run_in_executor(None, encoder, target)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode("latin-1"))],
            }
        )
        await send({"type": "http.response.body", "body": output})

    return app
