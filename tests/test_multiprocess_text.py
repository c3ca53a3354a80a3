"""The fast multiprocess text: byte for byte what prometheus_client's MultiProcessCollector
and generate_latest write for the same directory, as values, series and files change.

Three processes' files are written from this one: a value class of prometheus_client per
process, each naming a process that runs (so no live gauge file is taken for a dead
process's), each writing files of its own as a worker would.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    values,
)
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from sidecar import Baseline, metrics_app, multiprocess_registry
from sidecar.metrics import exposition
from sidecar.multiprocess import ENV, Mirror, MirrorMetrics
from sidecar.multiprocess_text import FileText, Unsupported
from sidecar.profile import ProfileOptions
from sidecar.worker import Monitor, Sample
from tests.asgi import request


def _running_pids() -> tuple[int, int, int]:
    """Three distinct running processes: this one, its parent and init, or others
    running when those coincide (the suite run detached, under setsid or nohup, has
    init for a parent; run as pid 1 in a container, no parent). Two "processes" with
    one pid would share a file, and two writers corrupt it."""
    pids = list(dict.fromkeys(p for p in (os.getpid(), os.getppid(), 1) if p > 0))
    running = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    pids += [p for p in running if p not in pids][: 3 - len(pids)]
    return pids[0], pids[1], pids[2]


PIDS = _running_pids()
MODES = sorted(Gauge._MULTIPROC_MODES)
MIXED = ("all", "max", "mostrecent")  # one gauge's mode in each process


class Processes:
    """One prometheus_client value class per pid of PIDS, writing to `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.classes = [values.MultiProcessValue(lambda pid=pid: pid) for pid in PIDS]

    def close(self) -> None:
        for value_class in self.classes:
            value_class.close_all_files()  # type: ignore[attr-defined]

    @contextmanager
    def process(self, i: int) -> Iterator[None]:
        """Metrics and series created in the block write process i's files."""
        with mock.patch.dict(os.environ, {ENV: str(self.directory)}):
            with mock.patch.object(values, "ValueClass", self.classes[i]):
                yield


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    directory = tmp_path / "metrics"
    directory.mkdir()
    processes = Processes(directory)
    yield processes
    processes.close()


class Scrapes:
    """The directory rendered both ways. The fast writer is kept between scrapes, as
    metrics_app keeps it, and raises where it would leave the text to prometheus_client."""

    def __init__(self, directory: Path) -> None:
        self.fast = FileText(str(directory))
        self.slow = CollectorRegistry()
        MultiProcessCollector(self.slow, str(directory))

    def both(self) -> tuple[str, str]:
        return self.fast.text(), generate_latest(self.slow).decode()


class Workload:
    """Metrics of every kind and gauge mode, one set per process, as a user's app and
    the skew mirror would create them; `step` writes new values into all of them."""

    def __init__(self, processes: Processes, baseline: Baseline) -> None:
        self.processes = processes
        self.metrics: list[dict[str, Any]] = []
        self.monitors: list[tuple[Monitor, Mirror]] = []
        for i in range(len(PIDS)):
            with processes.process(i):
                metrics: dict[str, Any] = {
                    "requests": Counter(
                        "app_requests", "Requests.", ["path", "code"], registry=None
                    ),
                    "latency": Histogram(
                        "app_latency_seconds", "Latency.", ["route"], registry=None
                    ),
                    "size": Summary(
                        "app_size_bytes", "Sizes\\ of\nbodies.", ["route"], registry=None
                    ),
                    "plain": Counter("app_plain", "No labels.", registry=None),
                }
                for mode in MODES:
                    metrics[mode] = Gauge(
                        f"app_gauge_{mode}",
                        f"{mode}.",
                        ["kind"],
                        multiprocess_mode=mode,
                        registry=None,
                    )
                # One name, another mode in each process: the last file's mode rules.
                metrics["mixed"] = Gauge(
                    "app_gauge_mixed", "Mixed.", multiprocess_mode=MIXED[i], registry=None
                )
                for mode in MODES:  # created before any series is set, set later or never
                    metrics[mode].labels("created-first")
                monitor = Monitor(baseline, model="m", registry=None)
                self.monitors.append((monitor, Mirror(monitor, MirrorMetrics())))
            self.metrics.append(metrics)

    def step(self, k: int, new_series: int = 0) -> None:
        for i, metrics in enumerate(self.metrics):
            with self.processes.process(i):
                metrics["requests"].labels("/a", "200").inc(i + k)
                metrics["requests"].labels('/q"uote\\\n', "500").inc(0.1)
                metrics["plain"].inc(1e7 * k)
                metrics["mixed"].set(i - k)
                metrics["latency"].labels("r").observe(0.003 * (i + 1) * k)
                metrics["latency"].labels("s").observe(7.0)
                metrics["size"].labels("r").observe(100.5 * k)
                for j, mode in enumerate(MODES):
                    gauge = metrics[mode]
                    gauge.labels("a").set([1.5, -0.0, math.inf, math.nan][(i + j + k) % 4])
                    gauge.labels("b").set(i * 10 + k)
                    # Signed zeros, differing between processes and from one step to the next.
                    gauge.labels("zero").set(math.copysign(0.0, (-1) ** (i + k)))
                    if i == k % len(PIDS):
                        gauge.labels("created-first").set(k)
                    if k % 2:
                        gauge.labels("only-odd-steps")  # created, never set: 0 at time 0
                for n in range(new_series):
                    metrics["requests"].labels(f"/new/{k}/{n}", "200").inc()
                monitor, mirror = self.monitors[i]
                for x in range(20 * (i + 1)):
                    body = orjson.dumps({"x": float((x * 7 + k) % 130)})
                    monitor.submit(Sample([body], [b'{"predictions": [0.5]}']))
                monitor.process_pending()
                if k % 2:
                    monitor.close_window()
                mirror.sync(force=True)


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [{"x": float(i % 100), "score": (i % 100) / 100} for i in range(2000)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


def test_the_fast_text_is_prometheus_clients_as_values_then_series_change(
    processes: Processes, baseline: Baseline
) -> None:
    workload = Workload(processes, baseline)
    scrapes = Scrapes(processes.directory)
    workload.step(1)
    fast, slow = scrapes.both()
    assert fast == slow
    assert "app_gauge_all{kind=" in fast and "skew_feature_bin_total{" in fast
    for k in range(2, 6):  # new values and windows, no new series after the first
        workload.step(k)
        fast, slow = scrapes.both()
        assert fast == slow, k
    plans = scrapes.fast.plans
    workload.step(6)
    assert scrapes.both()[0] == scrapes.both()[1]
    assert scrapes.fast.plans == plans  # values alone: files and plan read as they were
    # New series: files grow, past their first 64 KiB (a new mapping) too.
    for k in range(7, 10):
        workload.step(k, new_series=400)
        fast, slow = scrapes.both()
        assert fast == slow, k
    assert scrapes.fast.plans > plans


def test_a_file_made_again_under_its_old_name_is_read_again(processes: Processes) -> None:
    def write(paths: list[str]) -> None:
        with processes.process(2):
            counter = Counter("app_requests", "Requests.", ["path"], registry=None)
            for n, path in enumerate(paths, start=1):
                counter.labels(path).inc(n)

    scrapes = Scrapes(processes.directory)
    write(["/one", "/two"])
    assert scrapes.both()[0] == scrapes.both()[1]
    # A pid reused: the same name and used size, the series in other places.
    file = processes.directory / f"counter_{PIDS[2]}.db"
    file.unlink()
    processes.classes[2].close_all_files()  # type: ignore[attr-defined]
    write(["/two", "/one"])
    fast, slow = scrapes.both()
    assert fast == slow
    assert 'app_requests_total{path="/one"} 2.0' in fast


def test_live_gauges_of_a_dead_process_leave_both_texts_alike(
    processes: Processes, baseline: Baseline
) -> None:
    workload = Workload(processes, baseline)
    scrapes = Scrapes(processes.directory)
    workload.step(1)
    assert scrapes.both()[0] == scrapes.both()[1]
    mark_process_dead(PIDS[1], str(processes.directory))
    fast, slow = scrapes.both()
    assert fast == slow
    assert f'pid="{PIDS[1]}"' not in fast.split("app_gauge_liveall")[1].split("# HELP")[0]


def test_metrics_app_serves_the_fast_text_and_leaves_what_it_cannot_write_to_prometheus_client(
    processes: Processes, caplog: pytest.LogCaptureFixture
) -> None:
    with processes.process(0):
        Counter("app_requests", "Requests.", ["path"], registry=None).labels("/a").inc()
    registry = multiprocess_registry(str(processes.directory))
    slow = Scrapes(processes.directory).slow
    text = asyncio.run(request(metrics_app(registry), method="GET", path="/metrics")).body
    assert (
        text
        == generate_latest(slow)
        == b"""\
# HELP app_requests_total Requests.
# TYPE app_requests_total counter
app_requests_total{path="/a"} 1.0
"""
    )
    with processes.process(0):
        Counter("app.dotted", "A name that needs escaping.", registry=None).inc()
    with pytest.raises(Unsupported, match="app.dotted"):
        FileText(str(processes.directory)).text()
    with caplog.at_level(logging.INFO, logger="sidecar.multiprocess"):
        text, _ = exposition(registry)
    assert text == generate_latest(slow)
    assert b"app_dotted_total 1.0" in text
    assert "rendered by prometheus_client" in caplog.text


def test_the_latest_of_mostrecent_gauges_is_picked_as_prometheus_client_picks_it(
    tmp_path: Path,
) -> None:
    """Equal timestamps: the first file's; at or below 0, or NaN: never set."""
    stamps = {"tie": (5.0, 5.0, 5.0), "later": (1.0, 3.0, 2.0), "unset": (0.0, -1.0, math.nan)}
    for i, pid in enumerate(PIDS):
        written = MmapedDict(str(tmp_path / f"gauge_livemostrecent_{pid}.db"))
        for label, times in stamps.items():
            key = mmap_key("t", "t", ["l"], [label], "T.")
            written.write_value(key, float(i + 1), times[i])
        written.close()
    fast, slow = Scrapes(tmp_path).both()
    assert fast == slow
    assert '\nt{l="later"} 2.0\n' in fast and 'l="unset"' not in fast


def test_an_empty_directory_is_an_empty_text(tmp_path: Path) -> None:
    assert Scrapes(tmp_path).both() == ("", "")


# Operations of a random workload: (process, what, write, label, value).
OPERATIONS = st.lists(
    st.tuples(
        st.integers(0, len(PIDS) - 1),
        st.sampled_from(["counter", "histogram", "summary", *MODES]),
        st.booleans(),  # False: create the series only (0, never set)
        st.sampled_from(["a", "b", "c", "é\n\\"]),
        st.one_of(
            st.floats(-1e9, 1e9, allow_nan=False),
            st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-7, 12345678.9]),
        ),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(OPERATIONS, min_size=1, max_size=4))
def test_random_workloads_render_alike_after_every_batch(
    batches: list[list[tuple[int, str, bool, str, float]]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        processes = Processes(Path(folder))
        scrapes = Scrapes(processes.directory)
        metrics: dict[tuple[int, str], Any] = {}
        try:
            for batch in batches:
                for i, what, write, label, value in batch:
                    with processes.process(i):
                        metric = metrics.get((i, what))
                        if metric is None:
                            metric = metrics[(i, what)] = _metric(what)
                        child = metric.labels(label)
                        if not write:
                            continue
                        if what == "counter":
                            child.inc(abs(value))
                        elif what in ("histogram", "summary"):
                            child.observe(value)
                        else:
                            child.set(value)
                fast, slow = scrapes.both()
                assert fast == slow
        finally:
            processes.close()


def _metric(what: str) -> Any:
    if what == "counter":
        return Counter("r_total", "R.", ["l"], registry=None)
    if what == "histogram":
        return Histogram("r_hist", "R.", ["l"], buckets=(-1.0, 0.5, 1e6), registry=None)
    if what == "summary":
        return Summary("r_summary", "R.", ["l"], registry=None)
    return Gauge(f"r_{what}", "R.", ["l"], multiprocess_mode=what, registry=None)
