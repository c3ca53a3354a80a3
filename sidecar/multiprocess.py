"""Several worker processes checking in-process: prometheus_client's multiprocess mode.

With `PROMETHEUS_MULTIPROC_DIR` set before the server starts (uvicorn --workers N,
gunicorn), each worker checks its own share of the traffic and writes its metrics to
files of its own in that directory; whichever worker answers a scrape adds them up
(prometheus_client's `MultiProcessCollector`). That mode does not see custom
collectors, so each Monitor mirrors its snapshot into prometheus_client metrics of the
same names and labels, from its worker thread, at most once per `flush_seconds` (and
at once when a window closed, and at stop):

- counters by deltas: per series the mirror keeps the highest value it passed on and
  adds only what a newer snapshot counts beyond it. Syncing twice adds nothing, and a
  lower reading (the sampler's count read from another thread mid-update) takes
  nothing back and is not mistaken for a reset.
- gauges by value, each family with the multiprocess mode of `GAUGE_MODES`.
- the batch histogram, observed per batch.

Names and label values come from `Series.add`, the mapping the single-process export
uses, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from .metrics import (
    BASELINE_FRACTION,
    BASELINE_INFO,
    BATCH_BUCKETS,
    BATCH_SECONDS,
    DIAGNOSIS,
    DRIFTED,
    FAMILIES,
    MEASURE_FAMILIES,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    UNKNOWN_MODEL_REQUESTS,
    WINDOW_END,
    WINDOW_ROWS,
    Family,
    Labels,
    Series,
    SkippedInThread,
    set_text_collector,
)
from .multiprocess_text import FileText, Unsupported

if TYPE_CHECKING:
    from .sampling import Sampler
    from .worker import Monitor

logger = logging.getLogger("sidecar.multiprocess")

ENV = "PROMETHEUS_MULTIPROC_DIR"
GaugeMode = Literal["livemax", "livemostrecent", "livesum"]

# Series of the last closed window: set together when a window closes.
WINDOW_FAMILIES = frozenset(
    {*MEASURE_FAMILIES.values(), DRIFTED, DIAGNOSIS, WINDOW_ROWS, WINDOW_END}
)
# How the scrape combines each gauge over processes. `live` modes count only running
# processes (see multiprocess_registry for how dead ones are found).
GAUGE_MODES: dict[Family, GaugeMode] = {
    # 1 for each baseline a running worker checks against: a baseline replaced (workers
    # restarted on a new file) leaves with the last worker that used it.
    BASELINE_INFO: "livemax",
    # Equal in every worker with the same baseline; if they differ, the worker that set
    # it last (the most recently started) wins, never a sum or a max of fractions.
    BASELINE_FRACTION: "livemostrecent",
    # The last window any running worker closed, over that worker's share of traffic:
    # rows, end time, measures and verdicts all set at the same moment by one worker.
    **{family: "livemostrecent" for family in WINDOW_FAMILIES},
    # Samples waiting in all running workers, against all their queues' capacity.
    QUEUE_DEPTH: "livesum",
    QUEUE_CAPACITY: "livesum",
}


def multiprocess_dir() -> str | None:
    """`PROMETHEUS_MULTIPROC_DIR` when multiprocess mode is on, else None: the one place
    that reads it, once, when a middleware or a metrics app is built.

    prometheus_client picks its per-process value files when it is imported, so the
    variable must be set before that: in the shell that starts the server.
    """
    path = os.environ.get(ENV) or os.environ.get(ENV.lower())
    if not path:
        return None
    if not os.path.isdir(path):
        raise ValueError(
            f"{ENV}={path!r} is not a directory: create it, empty, before the server starts"
        )
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ValueError(
            f"{ENV}={path!r} was set after prometheus_client was imported, so its metrics "
            "are not written to files: set it in the environment that starts the server"
        )
    return path


class MirrorMetrics:
    """A prometheus_client metric per skew family, in no registry: in multiprocess mode
    their values live in this process's files. One set per process (`shared`)."""

    def __init__(self) -> None:
        self.metrics: dict[Family, Any] = {}  # Counter or Gauge
        for family in FAMILIES:
            labels = family.labels
            if family.type == "counter":
                self.metrics[family] = Counter(family.name, family.help, labels, registry=None)
            elif family.type == "gauge":
                self.metrics[family] = Gauge(
                    family.name,
                    family.help,
                    labels,
                    registry=None,
                    multiprocess_mode=GAUGE_MODES[family],
                )
        self.batch_seconds = Histogram(
            BATCH_SECONDS.name,
            BATCH_SECONDS.help,
            BATCH_SECONDS.labels,
            buckets=BATCH_BUCKETS,
            registry=None,
        )
        self._unknown_models: Counter | None = None
        self._lock = threading.Lock()

    @property
    def unknown_models(self) -> Counter:
        """Created on first use: a metric without labels has a series from creation, and
        this one exists only with several models."""
        with self._lock:
            if self._unknown_models is None:
                family = UNKNOWN_MODEL_REQUESTS
                self._unknown_models = Counter(family.name, family.help, registry=None)
            return self._unknown_models

    def collectors(self) -> list[Collector]:
        """Every metric created so far (tests register them to read values back)."""
        out: list[Collector] = [*self.metrics.values(), self.batch_seconds]
        if self._unknown_models is not None:
            out.append(self._unknown_models)
        return out


_SHARED: dict[object, MirrorMetrics] = {}
_SHARED_LOCK = threading.Lock()


def shared() -> MirrorMetrics:
    """This process's mirror metrics. Two metric objects of one name would write the
    same file entries over each other, so every monitor of a process shares these (per
    value class: a metric keeps the class it was created with)."""
    with _SHARED_LOCK:
        key = values.ValueClass
        metrics = _SHARED.get(key)
        if metrics is None:
            metrics = _SHARED[key] = MirrorMetrics()
        return metrics


class Mirror:
    """Passes one monitor's counts on to multiprocess-aware metrics.

    `sync` and `observe_batch` run in the monitor's worker thread and never raise: a
    failure is counted as a worker error, like any other inside the monitor.
    """

    def __init__(self, monitor: Monitor, metrics: MirrorMetrics | None = None) -> None:
        self.monitor = monitor
        self.metrics = metrics if metrics is not None else shared()
        self.unknown_models: Sampler | None = None  # several models: the middleware's
        self._children: dict[tuple[Family, Labels], Any] = {}
        self._counted: dict[tuple[Family, Labels], float] = {}  # highest value passed on
        self._set: dict[tuple[Family, Labels], float] = {}  # gauges: the value last set
        self._window_series: dict[Family, set[Labels]] = {f: set() for f in WINDOW_FAMILIES}
        self._unknown_counted = 0
        self._windows = 0
        self._synced_at = -math.inf
        self._batch: Any = None

    def observe_batch(self, seconds: float) -> None:
        try:
            if self._batch is None:
                self._batch = self.metrics.batch_seconds.labels(self.monitor.model)
            self._batch.observe(seconds)
        except Exception:
            self.monitor._error("worker")

    def sync(self, force: bool = False) -> None:
        """Pass on what changed since the last sync, if one is due: `force`, a window
        closed, or `flush_seconds` since the last (a snapshot costs about 1 ms for 32
        features)."""
        monitor = self.monitor
        now = monitor.clock()
        if not (
            force
            or now - self._synced_at >= monitor.flush_seconds
            or monitor._windows != self._windows
        ):
            return
        self._synced_at = now
        try:
            self._sync()
        except Exception:
            monitor._error("worker")

    def _sync(self) -> None:
        snapshot = self.monitor.snapshot()
        time.sleep(0)  # offer the GIL to the event loop between the two halves
        series = Series()
        series.add(snapshot)
        window_closed = snapshot.windows != self._windows
        self._windows = snapshot.windows
        for family, rows in series.values.items():
            if family.type == "counter":
                self._count(family, rows)
            elif family not in WINDOW_FAMILIES:
                self._gauge(family, rows)
            elif window_closed:
                self._window(family, rows)
        if self._batch is None:  # the histogram exists (at 0) from the first sync
            self._batch = self.metrics.batch_seconds.labels(self.monitor.model)
        if self.unknown_models is not None:
            seen = self.unknown_models.seen
            if seen > self._unknown_counted:
                self.metrics.unknown_models.inc(seen - self._unknown_counted)
                self._unknown_counted = seen

    def _child(self, family: Family, labels: Labels) -> Any:
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            # Creating a child writes its series at 0 (a counter exists from the first
            # sync, as in the single-process export).
            child = self._children[key] = self.metrics.metrics[family].labels(*labels)
        return child

    def _count(self, family: Family, rows: list[tuple[Labels, float]]) -> None:
        counted = self._counted
        for labels, value in rows:
            key = (family, labels)
            before = counted.get(key)
            if before is None:
                child = self._child(family, labels)
                before = counted[key] = 0
            else:
                child = self._children[key]
            if value > before:
                child.inc(value - before)
                counted[key] = value

    def _gauge(self, family: Family, rows: list[tuple[Labels, float]]) -> None:
        for labels, value in rows:
            key = (family, labels)
            if self._set.get(key) != value:
                self._child(family, labels).set(value)
                self._set[key] = value

    def _window(self, family: Family, rows: list[tuple[Labels, float]]) -> None:
        """All of a closed window's series, set even when unchanged: in 'mostrecent' mode
        the time of setting decides which worker's window a scrape shows. A series the
        window has no value for (exported as absent by one process) becomes NaN, so an
        older window of another worker does not show through."""
        current = set()
        for labels, value in rows:
            self._child(family, labels).set(value)
            current.add(labels)
        known = self._window_series[family]
        for labels in known - current:
            self._child(family, labels).set(math.nan)
        known |= current


# -- the aggregated view ------------------------------------------------------------------


def multiprocess_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that adds up the metrics of every worker process: serve it at /metrics
    (`metrics_app(registry)` or prometheus_client's `make_asgi_app(registry)`).

    It is what prometheus_client documents for its multiprocess mode, a fresh
    `CollectorRegistry` holding a `MultiProcessCollector` over `path` (default
    `PROMETHEUS_MULTIPROC_DIR`), plus one step before each scrape: the live gauges of
    processes that no longer run are dropped, as `mark_process_dead` does from
    gunicorn's `child_exit` hook, so a killed worker's live gauges go with it under
    uvicorn as well (which has no such hook). That reads pids from file names: one
    directory per server, shared by no other machine or container.

    `metrics_app(registry)` writes it about ten times faster than prometheus_client,
    the same bytes (multiprocess_text.py); make_asgi_app renders it as prometheus_client
    does.
    """
    directory = path if path is not None else multiprocess_dir()
    if directory is None:
        raise ValueError(
            f"multiprocess_registry(): {ENV} is not set; set it, to an empty directory, "
            "in the environment that starts the server"
        )
    registry = CollectorRegistry()
    aggregated = _Aggregated(directory)
    registry.register(aggregated)
    set_text_collector(registry, aggregated)
    return registry


class _Aggregated(SkippedInThread, Collector):
    """prometheus_client's MultiProcessCollector, written faster in the text format
    (`text()`: the same bytes, see multiprocess_text.py)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        self._slow = CollectorRegistry()
        self._slow.register(self._files)
        self._fast = FileText(path)
        self._lock = threading.Lock()  # the fast writer's caches: one scrape at a time

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        if self.is_skipped:
            return []
        forget_dead_processes(self.path)
        return list(self._files.collect())  # type: ignore[no-untyped-call]

    def text(self) -> str:
        forget_dead_processes(self.path)
        with self._lock:
            try:
                return self._fast.text()
            except Unsupported as exc:
                _log_once(self.path, exc)
        return generate_latest(self._slow).decode("utf-8")


_LOGGED: set[tuple[str, str]] = set()


def _log_once(path: str, exc: Unsupported) -> None:
    if (path, str(exc)) not in _LOGGED:
        _LOGGED.add((path, str(exc)))
        logger.info("%s: rendered by prometheus_client (%s)", path, exc)


def clear_files(path: str) -> list[str]:
    """Remove the value files (`*.db`) left in `path` by an earlier run of the server;
    their names. prometheus_client reads every file in the directory, so counts of a
    previous run would be added to this one's: call it once, before any worker starts
    (gunicorn's `on_starting`; a start script's `rm` does the same)."""
    removed = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".db"):
            try:
                os.remove(os.path.join(path, name))
            except FileNotFoundError:
                continue
            removed.append(name)
    return removed


def forget_dead_processes(path: str) -> list[int]:
    """Remove the live-gauge files of processes that no longer run; their pids."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return []
    pids = set()
    for name in os.listdir(path):  # gauge_livesum_1234.db
        if name.startswith("gauge_live") and name.endswith(".db"):
            digits = name[:-3].rpartition("_")[2]
            if digits.isdigit() and int(digits) > 0:
                pids.add(int(digits))
    dead = sorted(pid for pid in pids if not _running(pid))
    for pid in dead:
        try:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except FileNotFoundError:  # another worker's scrape removed it first
            pass
    return dead


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    try:  # a killed worker its parent has not reaped yet is a zombie: gone too
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[:1]
    except OSError:  # no /proc: trust kill()
        return True
    return state not in ([b"Z"], [b"X"])
