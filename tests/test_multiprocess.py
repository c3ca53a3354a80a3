"""Several worker processes checking in-process: prometheus_client's multiprocess mode.

The mirror's arithmetic on in-memory metrics; the per-process files and the added-up
/metrics in this process (a value class of its own writing to a temporary directory);
and the whole path under `uvicorn --workers 2` and gunicorn with two uvicorn workers."""

from __future__ import annotations

import asyncio
import collections
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from sidecar import Baseline, SkewMiddleware, metrics_app, multiprocess
from sidecar.baseline import SCHEMA_VERSION
from sidecar.metrics import BASELINE_FRACTION, FAMILIES, Series
from sidecar.multiprocess import (
    ENV,
    GAUGE_MODES,
    Mirror,
    MirrorMetrics,
    forget_dead_processes,
)
from sidecar.profile import ProfileOptions
from sidecar.worker import Monitor, Sample
from tests.asgi import request
from tests.clock import Clock
from tests.servers import Workers, eventually, gunicorn_workers, uvicorn_workers

MODEL = {"model": "m"}
ROWS = 10  # tests/apps/checked.py's min_window_rows

Key = tuple[str, frozenset[tuple[str, str]]]


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [{"x": float(i % 100), "score": (i % 100) / 100} for i in range(2000)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


def exchange(x: float) -> Sample:
    return Sample([orjson.dumps({"x": x})], [orjson.dumps({"predictions": [x / 100]})])


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


def expected(monitor: Monitor, kind: str = "counter") -> dict[Key, float]:
    """What the single-process export shows for this monitor, per series of `kind`."""
    series = Series()
    series.add(monitor.snapshot())
    return {
        (family.sample_name, frozenset(zip(family.labels, labels, strict=True))): value
        for family, rows in series.values.items()
        if family.type == kind
        for labels, value in rows
    }


def samples(families: Iterable[Metric], kind: str = "counter") -> dict[Key, float]:
    """The skew series of `kind` (counters: their _total samples)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families
        if family.type == kind and family.name.startswith("skew_")
        for s in family.samples
        if kind != "counter" or s.name.endswith("_total")
    }


def mirrored(baseline: Baseline, **options: Any) -> tuple[Monitor, Mirror, CollectorRegistry]:
    """A monitor (no thread) and a mirror into fresh in-memory metrics, read back
    through a registry of their own."""
    options.setdefault("window_seconds", 3600)
    monitor = Monitor(baseline, model="m", registry=None, **options)
    metrics = MirrorMetrics()
    mirror = Mirror(monitor, metrics)
    registry = CollectorRegistry()
    for collector in metrics.collectors():
        registry.register(collector)
    return monitor, mirror, registry


def send(monitor: Monitor, xs: Iterable[float]) -> None:
    for x in xs:
        monitor.counts.seen += 1
        monitor.submit(exchange(x))
    monitor.process_pending()


# -- the mirror ---------------------------------------------------------------------------


def test_every_gauge_family_has_a_live_multiprocess_mode() -> None:
    gauges = {family for family in FAMILIES if family.type == "gauge"}
    assert set(GAUGE_MODES) == gauges
    for mode in GAUGE_MODES.values():
        assert mode in Gauge._MULTIPROC_MODES
        assert mode.startswith("live")  # a worker that is gone takes its gauges along


def test_the_mirror_passes_on_every_counter_once(baseline: Baseline) -> None:
    monitor, mirror, registry = mirrored(baseline)
    send(monitor, [1000.0 if i % 3 == 0 else float(i) for i in range(30)])
    monitor.submit(Sample([b"{broken"]))
    monitor.process_pending()
    mirror.sync(force=True)
    counts = expected(monitor)
    assert counts[key("skew_rows_checked_total", **MODEL)] == 30
    assert counts[key("skew_feature_out_of_range_total", feature="x", side="high", **MODEL)] == 10
    assert counts[key("skew_samples_dropped_total", reason="invalid_json", **MODEL)] == 1
    assert samples(registry.collect()) == counts
    mirror.sync(force=True)  # nothing new: nothing added
    assert samples(registry.collect()) == counts
    send(monitor, [5.0] * 7)
    mirror.sync(force=True)
    assert samples(registry.collect()) == expected(monitor)
    assert registry.get_sample_value("skew_rows_checked_total", MODEL) == 37


def test_a_lower_reading_takes_nothing_back_and_is_not_counted_twice(baseline: Baseline) -> None:
    monitor, mirror, registry = mirrored(baseline)
    monitor.counts.seen = 10
    mirror.sync(force=True)
    # A torn read of the sampler (another thread mid-update), or a count that restarted:
    # never a decrease, and not taken as a reset either (that would add 4 again).
    monitor.counts.seen = 4
    mirror.sync(force=True)
    assert registry.get_sample_value("skew_requests_seen_total", MODEL) == 10
    monitor.counts.seen = 12
    mirror.sync(force=True)
    assert registry.get_sample_value("skew_requests_seen_total", MODEL) == 12


def test_syncs_come_once_per_flush_period_and_at_once_when_a_window_closed(
    baseline: Baseline,
) -> None:
    clock = Clock(100.0)
    monitor, mirror, registry = mirrored(baseline, clock=clock, flush_seconds=1.0)
    mirror.sync()
    monitor.counts.seen = 5
    mirror.sync()  # not due
    assert registry.get_sample_value("skew_requests_seen_total", MODEL) == 0
    clock.now += 1.0
    mirror.sync()
    assert registry.get_sample_value("skew_requests_seen_total", MODEL) == 5
    send(monitor, [1.0, 2.0])
    monitor.close_window()
    mirror.sync()
    assert registry.get_sample_value("skew_window_rows", MODEL) == 2
    assert registry.get_sample_value("skew_requests_seen_total", MODEL) == 7


def test_a_closed_window_sets_its_gauges_and_nan_where_it_has_no_value(
    baseline: Baseline,
) -> None:
    monitor, mirror, registry = mirrored(baseline)
    mirror.sync(force=True)
    assert registry.get_sample_value("skew_window_rows", MODEL) is None  # no window yet
    assert registry.get_sample_value("skew_queue_capacity", MODEL) == 10_000
    send(monitor, [1000.0] * 150)
    monitor.close_window()
    mirror.sync(force=True)
    gauges = expected(monitor, "gauge")
    assert gauges[key("skew_feature_drifted", feature="x", **MODEL)] == 1
    assert samples(registry.collect(), "gauge") == gauges
    # A window in which x has no values: one process exports no psi for x; here it is NaN,
    # so another worker's older window does not show through.
    for _ in range(150):
        monitor.submit(Sample([b'{"y": 1}'], [b'{"predictions": [0.5]}']))
    monitor.process_pending()
    monitor.close_window()
    mirror.sync(force=True)
    assert key("skew_feature_psi", feature="x", **MODEL) not in expected(monitor, "gauge")
    assert math.isnan(registry.get_sample_value("skew_feature_psi", {"feature": "x", **MODEL}))  # type: ignore[arg-type]
    assert registry.get_sample_value("skew_window_rows", MODEL) == 150


# -- the files and the added-up view, in this process --------------------------------------


@pytest.fixture
def multiproc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Multiprocess mode in this process: the variable, and a value class writing files
    (prometheus_client picks its class at import, before any test sets the variable)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv(ENV, str(directory))
    value_class = values.MultiProcessValue()
    monkeypatch.setattr(values, "ValueClass", value_class)
    yield directory
    value_class.close_all_files()
    multiprocess._SHARED.pop(value_class, None)


def test_metrics_app_serves_the_files_added_up_and_no_family_twice(
    baseline: Baseline, multiproc: Path
) -> None:
    registry = CollectorRegistry()
    mw = SkewMiddleware(
        Starlette(), baseline={"m": baseline, "n": baseline}, model="m", registry=registry
    )
    monitor = mw.monitor
    assert isinstance(monitor, Monitor) and monitor.mirror is not None
    # Nothing through the registry: the skew collector would repeat the files' names.
    assert generate_latest(registry) == b""
    asyncio.run(request(mw, path="/v1/models/nope:predict", chunks=[b"{}"]))
    send(monitor, [1000.0 if i % 4 == 0 else float(i) for i in range(40)])
    monitor.close_window()
    monitor.mirror.sync(force=True)
    assert not monitor.started  # no thread: everything above ran here

    text = asyncio.run(request(metrics_app(), method="GET", path="/metrics")).body.decode()
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    families = list(text_string_to_metric_families(text))
    unknown = key("skew_unknown_model_requests_total")
    assert samples(families) == {**expected(monitor), unknown: 1}  # "n" never synced
    assert samples(families, "gauge") == expected(monitor, "gauge")
    batches = samples(families, "histogram")
    assert batches[key("skew_monitor_batch_seconds_count", **MODEL)] >= 1


def test_a_multiproc_dir_that_is_not_a_directory_is_refused_naming_it(
    baseline: Baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(ENV, str(missing))
    with pytest.raises(ValueError, match=f"{ENV}=.*nowhere.* is not a directory"):
        SkewMiddleware(Starlette(), baseline=baseline, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="is not a directory"):
        metrics_app()


def test_a_multiproc_dir_set_after_prometheus_client_was_imported_is_refused(
    baseline: Baseline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)  # what an early import picked
    with pytest.raises(ValueError, match="set after prometheus_client was imported"):
        SkewMiddleware(Starlette(), baseline=baseline, registry=CollectorRegistry())


def test_without_the_variable_monitors_export_through_the_registry_as_before(
    baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(ENV.lower(), raising=False)
    registry = CollectorRegistry()
    mw = SkewMiddleware(Starlette(), baseline=baseline, model="m", registry=registry)
    assert isinstance(mw.monitor, Monitor) and mw.monitor.mirror is None
    assert registry.get_sample_value("skew_requests_seen_total", MODEL) == 0


def test_gunicorn_refuses_to_start_with_the_directory_set_by_its_own_env_setting(
    tmp_path: Path,
) -> None:
    """`gunicorn -e`/raw_env sets the variable after the settings module imported
    prometheus_client in the master, so workers would inherit in-memory metrics:
    on_starting stops gunicorn, naming the fix, before any worker starts."""
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in (ENV, ENV.lower())}
    command = [
        sys.executable, "-m", "gunicorn", "tests.apps.tapped:build()",
        "-c", "python:sidecar.gunicorn_conf", "-k", "uvicorn_worker.UvicornWorker",
        "-b", "127.0.0.1:0", "-e", f"{ENV}={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        env={**env, "PYTHONPATH": str(repo), "SKEW_TEST_SINK": "unix:///nonexistent.sock"},
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "set it in the environment that starts the server" in result.stderr


def test_clearing_the_directory_removes_the_value_files_and_nothing_else(tmp_path: Path) -> None:
    for name in ["counter_12.db", "gauge_livesum_12.db", "histogram_7.db", "notes.txt"]:
        (tmp_path / name).touch()
    removed = multiprocess.clear_files(str(tmp_path))
    assert removed == ["counter_12.db", "gauge_livesum_12.db", "histogram_7.db"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.skipif(sys.platform != "linux", reason="zombies are read from /proc")
def test_live_gauge_files_of_ended_processes_are_removed_and_counter_files_kept(
    tmp_path: Path,
) -> None:
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    zombie = subprocess.Popen([sys.executable, "-c", ""])  # ends, not reaped yet
    try:
        assert eventually(lambda: not multiprocess._running(zombie.pid), 10)
        kept = [f"counter_{ended.pid}.db", f"gauge_livesum_{os.getpid()}.db", "gauge_max_1.db"]
        removed = [f"gauge_livesum_{ended.pid}.db", f"gauge_livemostrecent_{zombie.pid}.db"]
        for name in kept + removed:
            (tmp_path / name).touch()
        assert forget_dead_processes(str(tmp_path)) == sorted([ended.pid, zombie.pid])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    finally:
        zombie.wait()


# -- two worker processes: uvicorn --workers 2, gunicorn -w 2 ------------------------------


def scrape(client: httpx.Client) -> tuple[str, list[Metric]]:
    """Which worker answered, and what it served."""
    response = client.get("/metrics/")
    assert response.status_code == 200, response.text
    return response.headers["x-pid"], list(text_string_to_metric_families(response.text))


def window(gauges: dict[Key, float]) -> tuple[float, float, float] | None:
    """Rows, end and psi of x of the last window these gauges describe."""
    rows = gauges.get(key("skew_window_rows", **MODEL))
    if rows is None:
        return None
    end = gauges[key("skew_window_end_timestamp_seconds", **MODEL)]
    return rows, end, gauges[key("skew_feature_psi", feature="x", **MODEL)]


def window_of(directory: Path, pid: str) -> tuple[float, float, float] | None:
    """The last window of one worker, from its own file."""
    path = directory / f"gauge_livemostrecent_{pid}.db"
    if not path.exists():
        return None
    return window(samples(MultiProcessCollector.merge([str(path)]), "gauge"))


def stale_counts(directory: Path, seen: float) -> Path:
    """A counter file as an earlier run of the server leaves it."""
    path = directory / "counter_999999.db"
    family = next(f for f in FAMILIES if f.name == "skew_requests_seen")
    key = mmap_key(family.name, family.sample_name, ["model"], ["m"], family.help)
    stale = MmapedDict(str(path))
    stale.write_value(key, seen, 0.0)
    stale.close()
    return path


# gunicorn with the shipped settings empties the directory on start; uvicorn has no hook
# (its start script does that).
@pytest.mark.parametrize(
    ("workers", "clears_on_start"),
    [(uvicorn_workers, False), (gunicorn_workers, True)],
    ids=["uvicorn", "gunicorn"],
)
def test_with_two_workers_counters_add_up_and_gauges_follow_their_modes(
    baseline: Baseline, tmp_path: Path, workers: Workers, clears_on_start: bool
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = stale_counts(directory, 1000.0) if clears_on_start else None
    baseline.save(tmp_path / "baseline.json")
    env = {
        **os.environ,
        ENV: str(directory),
        "SKEW_TEST_BASELINE": str(tmp_path / "baseline.json"),
        "SKEW_TEST_WINDOW_SECONDS": "1",
    }
    reference = Monitor(baseline, model="m", registry=None)  # what one process would count
    per_pid: collections.Counter[str] = collections.Counter()
    n = 200
    with workers("tests.apps.checked:build", env) as url:
        # A new connection per request, so requests and scrapes reach both workers.
        close = {"connection": "close"}
        with httpx.Client(base_url=url, headers=close) as client:
            answered: set[str] = set()

            def both_up() -> bool:
                try:
                    answered.add(client.get("/metrics/").headers["x-pid"])
                except httpx.TransportError:
                    pass
                return len(answered) == 2

            assert eventually(both_up, 30), f"{len(answered)} of 2 workers started"
            assert stale is None or not stale.exists()
            # At least n requests, and on until each worker has had enough rows to close
            # a window (the kernel may hand one worker only a few of n connections); a
            # multiple of 4, so a quarter of them are out of range.
            i = 0
            while i < n or i % 4 or (len(per_pid) < 2 or min(per_pid.values()) < 2 * ROWS):
                if i >= 50 * n:
                    break  # asserted below: both workers got requests
                body = orjson.dumps({"x": 1000.0 if i % 4 == 0 else float(i % 100)})
                response = client.post("/predict", content=body)
                per_pid[response.headers["x-pid"]] += 1
                reference.counts.seen += 1
                reference.submit(Sample([body], [response.content], response.status_code))
                i += 1
            n = i
            reference.process_pending()
            assert len(per_pid) == 2, f"requests reached {len(per_pid)} worker(s)"
            counters = expected(reference)
            assert counters[key("skew_requests_seen_total", **MODEL)] == n
            high = key("skew_feature_out_of_range_total", feature="x", side="high", **MODEL)
            assert counters[high] == n / 4

            # Every count reaches the files within a flush period (1 s) or two, and every
            # scrape, whichever worker answers it, shows the sum: exactly what was sent.
            assert eventually(lambda: samples(scrape(client)[1]) == counters, 15)
            scraped_by: set[str] = set()

            def scraped_by_both() -> bool:
                pid, families = scrape(client)
                assert samples(families) == counters
                scraped_by.add(pid)
                return scraped_by == set(per_pid)

            # Which worker accepts a connection is the kernel's choice: as many as it takes.
            assert eventually(scraped_by_both, 30), f"only {scraped_by} answered scrapes"

            # Each worker closed windows over its own rows (1 s, at least 10 rows); a
            # scrape shows the last one closed, all of it from that worker.
            shown: list[Any] = []

            def settled() -> bool:
                before = {pid: window_of(directory, pid) for pid in per_pid}
                gauges = samples(scrape(client)[1], "gauge")
                after = {pid: window_of(directory, pid) for pid in per_pid}
                if before != after or None in after.values():
                    return False
                shown[:] = [gauges, after]
                return True

            assert eventually(settled, 15)
            gauges, windows = shown
            for pid, (rows, _, _) in windows.items():
                assert 10 <= rows <= per_pid[pid]
            # The most recent (within the few ms between a window closing and its sync).
            rows, end, psi = window(gauges) or (0, 0, 0)
            [victim] = [pid for pid, w in windows.items() if w == (rows, end, psi)]
            assert end >= max(w[1] for w in windows.values()) - 0.05
            assert psi > 0.1  # a quarter of the values out of range
            assert gauges[key("skew_queue_capacity", **MODEL)] == 2 * 10_000  # livesum
            info = key(
                "skew_baseline_info",
                baseline_hash=baseline.baseline_hash,
                schema_version=str(SCHEMA_VERSION),
                **MODEL,
            )
            assert gauges[info] == 1  # livemax
            fractions = {
                k: v
                for k, v in expected(reference, "gauge").items()
                if k[0] == BASELINE_FRACTION.name
            }
            assert fractions and all(gauges[k] == v for k, v in fractions.items())

            # The worker whose window is shown is killed: its counts stay (counter files
            # are kept), its live gauges go at the next scrape (the server starts another
            # worker, which has closed no window), so the survivor's window shows. Under
            # gunicorn the master's child_exit hook removes them as it reaps the worker.
            survivor = next(pid for pid in per_pid if pid != victim)
            os.kill(int(victim), signal.SIGKILL)

            def victim_gone() -> bool:
                try:
                    scrape(client)
                except httpx.TransportError:
                    return False
                return not list(directory.glob(f"gauge_live*_{victim}.db"))

            assert eventually(victim_gone, 10)
            assert (directory / f"counter_{victim}.db").exists()
            _, families = scrape(client)
            assert samples(families) == counters

            def survivor_shown() -> bool:
                shown = window(samples(scrape(client)[1], "gauge"))
                return shown is not None and shown == window_of(directory, survivor)

            assert eventually(survivor_shown, 5)
