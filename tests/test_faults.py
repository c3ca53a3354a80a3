"""Faults inside the monitor and around it: the app keeps serving, the numbers stay true.

Worker crashes and broken extractors, sustained overload, a sidecar that is down or slow
behind the datagram tap, clock jumps, and shutdown while samples keep coming."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from sidecar import Baseline, SkewMiddleware
from sidecar.metrics import DROP_REASONS
from sidecar.profile import ProfileOptions
from sidecar.tap import DatagramSink
from sidecar.worker import Monitor, Sample
from tests.asgi import request
from tests.servers import eventually
from tests.test_hostile import Recorder, assert_every_request_accounted, counted

ROW = orjson.dumps({"x": 5.0, "c": "a"})


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [{"x": float(i % 100), "c": "abc"[i % 3], "score": i % 2} for i in range(2000)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


_created: list[Monitor] = []


@pytest.fixture(autouse=True)
def stop_monitors() -> Iterator[None]:
    yield
    while _created:
        _created.pop().stop()


def tapped(baseline: Baseline, **options: Any) -> tuple[SkewMiddleware, CollectorRegistry]:
    registry = CollectorRegistry()
    options = {"model": "m", "window_seconds": 3600, "max_samples_per_second": 1e9, **options}
    mw = SkewMiddleware(Recorder(), baseline=baseline, registry=registry, **options)
    _created.append(mw.monitor)  # type: ignore[arg-type]
    return mw, registry


def post_all(mw: SkewMiddleware, n: int, body: bytes = ROW) -> list[int]:
    async def run() -> list[int]:
        return [(await request(mw, chunks=[body])).status for _ in range(n)]

    return asyncio.run(run())


class Crash(BaseException):
    """Escapes the worker loop's `except Exception`, as SystemExit would."""


# -- the worker ---------------------------------------------------------------------------


def test_a_crashed_worker_is_restarted_and_the_app_keeps_serving(baseline: Baseline) -> None:
    mw, registry = tapped(baseline)
    monitor = mw.monitor
    assert isinstance(monitor, Monitor)
    real = monitor.process_pending
    crashes = [Crash()]

    def crash_once() -> int:
        if crashes:
            raise crashes.pop()
        return real()

    monitor.process_pending = crash_once  # type: ignore[method-assign]
    assert post_all(mw, 20) == [200] * 20
    assert eventually(lambda: monitor.restarts == 1)  # at its first wake-up
    assert post_all(mw, 10) == [200] * 10
    monitor.stop()  # the restarted loop checks everything queued
    assert monitor.restarts == 1 and not monitor.disabled
    counts = counted(registry)
    assert counts["checked"] == 30
    assert counts["seen"] == 30
    assert (
        registry.get_sample_value("skew_monitor_errors_total", {"model": "m", "stage": "worker"})
        == 1
    )


def test_a_worker_that_keeps_crashing_disables_the_monitor_with_one_log_line(
    baseline: Baseline, caplog: pytest.LogCaptureFixture
) -> None:
    mw, registry = tapped(baseline)
    monitor = mw.monitor
    assert isinstance(monitor, Monitor)

    def always() -> int:
        raise Crash()

    monitor.process_pending = always  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="sidecar"):
        assert post_all(mw, 5) == [200] * 5  # the first sample starts the worker
        assert eventually(lambda: monitor.disabled)
        assert post_all(mw, 30) == [200] * 30
    disabled = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(disabled) == 1
    assert not monitor.running
    monitor.stop()
    counts = counted(registry)
    assert counts["monitor_disabled"] + counts["checked"] == 35
    assert counts["monitor_disabled"] >= 30
    assert registry.get_sample_value("skew_queue_depth", {"model": "m"}) == 0


def test_a_broken_extractor_costs_one_log_line_and_every_sample_is_counted(
    baseline: Baseline, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(body: Any) -> list[Any]:
        raise KeyError("features")

    mw, registry = tapped(baseline, extractor=broken)
    with caplog.at_level(logging.ERROR, logger="sidecar"):
        assert post_all(mw, 50) == [200] * 50
        mw.monitor.stop()
    assert len([r for r in caplog.records if "extract failed" in r.getMessage()]) == 1
    counts = counted(registry)
    assert counts["monitor_error"] == 50
    assert_every_request_accounted({**counts, "errors": 0}, 50)


# -- overload -----------------------------------------------------------------------------


def test_under_sustained_overload_the_queue_stays_bounded_and_checked_numbers_are_exact(
    baseline: Baseline,
) -> None:
    gate = threading.Event()

    def gated(body: Any) -> list[Any]:
        gate.wait(10)
        return body if isinstance(body, list) else [body]

    mw, registry = tapped(baseline, queue_size=40, extractor=gated)
    monitor = mw.monitor
    assert isinstance(monitor, Monitor)
    depths: list[int] = []
    rows = [{"x": float(i), "c": "b"} for i in range(3)]

    async def run() -> list[int]:
        statuses = []
        for _ in range(2_000):
            statuses.append((await request(mw, chunks=[orjson.dumps(rows)])).status)
            depths.append(len(monitor._queue))
        return statuses

    statuses = asyncio.run(run())
    gate.set()
    monitor.stop()
    assert statuses == [200] * 2_000
    assert max(depths) <= 40
    counts = counted(registry)
    assert counts["queue_full"] >= 2_000 - 41 - monitor.batch_samples
    assert_every_request_accounted(counts, 2_000)
    # What was checked is exact: three rows and three x values per checked sample.
    checked = counts["checked"]
    assert registry.get_sample_value("skew_rows_checked_total", {"model": "m"}) == 3 * checked
    x = registry.get_sample_value("skew_feature_values_total", {"model": "m", "feature": "x"})
    assert x == 3 * checked


def test_the_queue_is_bounded_by_the_body_bytes_it_holds(baseline: Baseline) -> None:
    monitor = Monitor(baseline, registry=None, max_queue_bytes=10_000)
    big = Sample([b" " * 4_000 + ROW])
    assert monitor.submit(big) and monitor.submit(big)
    assert not monitor.submit(big)
    assert monitor.submit(Sample([ROW]))  # a small one still fits
    assert monitor.counts.dropped == {"queue_full": 1}
    monitor.process_pending()
    assert monitor.submit(big) and monitor.submit(big)  # room again once checked
    with pytest.raises(ValueError, match="max_queue_bytes must be positive, got 0"):
        Monitor(baseline, registry=None, max_queue_bytes=0)


# -- the datagram tap ---------------------------------------------------------------------


def test_with_the_sidecar_down_then_slow_the_app_never_waits_and_drops_are_counted(
    baseline: Baseline,
) -> None:
    with tempfile.TemporaryDirectory(prefix="skewtap-") as folder:
        path = f"{folder}/tap.sock"
        now = [100.0]
        app = Recorder()
        mw = SkewMiddleware(app, sink=f"unix://{path}", model="m", registry=CollectorRegistry())
        sink = mw.monitor
        assert isinstance(sink, DatagramSink)
        sink.clock = lambda: now[0]
        try:
            down = post_all(mw, 50)
            # The sidecar comes up but never reads: its buffer fills.
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            receiver.bind(path)
            now[0] += 1.0  # the sink's next reconnect
            slow = post_all(mw, 500, orjson.dumps({"c": "x" * 2_000}))
            receiver.close()
        finally:
            sink.stop()
    assert down == slow[:50] == [200] * 50 and set(slow) == {200}
    seen, dropped = sink.counts.exported(sink.sampler)
    assert seen == 550
    assert dropped.get("sink_unavailable", 0) >= 50
    assert dropped.get("sink_busy", 0) > 0
    assert sink.sent + sum(dropped.values()) == 550
    assert set(dropped) <= set(DROP_REASONS)


# -- clocks -------------------------------------------------------------------------------


def test_windows_follow_the_monotonic_clock_whatever_the_wall_clock_does(
    baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monitor = Monitor(
        baseline,
        registry=None,
        window_seconds=60,
        flush_seconds=0.01,
        clock=lambda: now[0],
        rule=None,
    )
    _created.append(monitor)
    wall = [time.time()]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    monitor.start()
    for _ in range(150):
        monitor.submit(Sample([ROW]))
    wall[0] -= 86_400  # the wall clock jumps back a day: nothing closes, nothing stalls
    assert eventually(lambda: monitor.counts.checked == 150)
    assert monitor._windows == 0
    wall[0] += 10 * 86_400  # and forward ten days: still nothing
    now[0] += 59.0
    for _ in range(50):
        monitor.submit(Sample([ROW]))
    assert eventually(lambda: monitor.counts.checked == 200)
    assert monitor._windows == 0
    now[0] += 1.0  # the monotonic clock reaches the window's end
    assert eventually(lambda: monitor._windows == 1)
    assert monitor.snapshot().last_window[0].rows == 200


# -- shutdown -----------------------------------------------------------------------------


def test_shutdown_under_load_flushes_the_last_window_and_leaves_no_thread(
    baseline: Baseline,
) -> None:
    monitor = Monitor(baseline, model="shutdown", registry=None, queue_size=2_000)
    monitor.start()
    stop = threading.Event()
    submitted = [0]

    def load() -> None:
        while not stop.is_set():
            monitor.submit(Sample([ROW]))
            submitted[0] += 1

    producer = threading.Thread(target=load)
    producer.start()
    assert eventually(lambda: monitor.counts.checked > 1_000)
    monitor.stop()
    stop.set()
    producer.join()
    assert not [t for t in threading.enumerate() if t.name == "skew-monitor-shutdown"]
    c, sampled = monitor.counts, monitor._queue.sampled
    assert sampled == c.checked + sum(c.rejected.values()) + len(monitor._queue)
    assert sampled + c.dropped.get("queue_full", 0) == submitted[0]
    snap = monitor.snapshot()
    assert snap.windows == 1  # the last window was closed at stop
    # Everything queued before stop returned was checked; later samples wait in the queue.
    assert snap.totals[0].rows == c.checked
    assert snap.last_window[0].rows <= c.checked
