"""Baseline hot reload: a file change, SIGHUP or POST /admin/reload; the new baseline
applies between windows, skew_baseline_info changes, counters do not go down, and a
file that does not load is refused with a log line while the old baseline stays."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from sidecar import Baseline, SkewMiddleware
from sidecar.profile import ProfileOptions
from sidecar.serve import Sidecar
from sidecar.worker import Monitor, Sample
from tests.asgi import request
from tests.servers import eventually
from tests.test_hostile import Recorder
from tests.test_serve import TIMEOUT, _wait_for_line, cli_process

ROW = orjson.dumps({"x": 50.0, "c": "a", "z": 1.0})


def make(high: float, with_z: bool = False) -> Baseline:
    rows: list[dict[str, Any]] = [
        {"x": float(i % 100) * high / 100, "c": "abc"[i % 3], "score": (i % 10) / 10}
        for i in range(1000)
    ]
    if with_z:
        for row in rows:
            row["z"] = 1.0
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


OLD, NEW = make(100.0), make(40.0, with_z=True)


def info(registry: CollectorRegistry, baseline: Baseline) -> float | None:
    labels = {"model": "m", "baseline_hash": baseline.baseline_hash, "schema_version": "1"}
    return registry.get_sample_value("skew_baseline_info", labels)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model": "m", **labels})


def test_a_new_baseline_applies_from_the_next_window_and_no_counter_goes_down() -> None:
    registry = CollectorRegistry()
    monitor = Monitor(OLD, model="m", registry=registry)
    for _ in range(10):
        monitor.submit(Sample([ROW]))
    monitor.process_pending()
    unknown = value(registry, "skew_unknown_features_total")
    monitor.replace_baseline(NEW)
    assert info(registry, OLD) == 1  # the open window is judged by the old baseline
    monitor.close_window(final=False)  # due only at the window's end: nothing yet
    assert info(registry, OLD) == 1
    monitor.close_window()
    assert info(registry, OLD) is None and info(registry, NEW) == 1
    assert value(registry, "skew_window_rows") == 10
    assert value(registry, "skew_feature_out_of_range_total", feature="x", side="high") == 0
    for _ in range(5):
        monitor.submit(Sample([ROW]))
    monitor.process_pending()
    assert value(registry, "skew_requests_sampled_total") == 15
    assert value(registry, "skew_samples_checked_total") == 15
    assert value(registry, "skew_rows_checked_total") == 15
    assert value(registry, "skew_feature_values_total", feature="c") == 15  # unchanged: kept
    assert value(registry, "skew_feature_values_total", feature="x") == 15  # new bins, counts kept
    assert value(registry, "skew_feature_out_of_range_total", feature="x", side="high") == 5
    assert value(registry, "skew_feature_values_total", feature="z") == 5  # new: from 0
    assert value(registry, "skew_unknown_features_total") == unknown  # z is known now


def test_a_changed_file_is_picked_up_by_the_worker_and_a_corrupt_one_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "baseline.json"
    OLD.save(path)
    registry = CollectorRegistry()
    mw = SkewMiddleware(
        Recorder(),
        baseline=str(path),
        model="m",
        registry=registry,
        window_seconds=3600,
        baseline_poll_seconds=0.01,
    )
    monitor = mw.monitor
    assert isinstance(monitor, Monitor)

    async def post(n: int) -> None:
        for _ in range(n):
            assert (await request(mw, chunks=[ROW])).status == 200

    try:
        with caplog.at_level(logging.WARNING, logger="sidecar"):
            asyncio.run(post(5))  # starts the worker
            path.write_text('{"schema_version": 1, "features": ')  # a half-written file
            assert eventually(lambda: "refused" in caplog.text)
        assert caplog.text.count("refused") == 1
        assert "baseline.json" in caplog.text
        assert monitor.baseline_hash == OLD.baseline_hash
        NEW.save(path)
        assert eventually(lambda: monitor._next_baseline is not None)
        asyncio.run(post(5))
    finally:
        monitor.stop()  # the last window closes: the new baseline applies after it
    assert info(registry, NEW) == 1
    assert value(registry, "skew_requests_seen_total") == 10
    assert value(registry, "skew_window_rows") == 10


def test_the_admin_call_reloads_and_answers_422_for_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    OLD.save(path)
    app = Sidecar({"m": OLD}, baseline_files={"m": str(path)}, window_seconds=3600)

    def reload() -> tuple[int, Any]:
        answer = asyncio.run(request(app, path="/admin/reload", chunks=[b""]))
        return answer.status, orjson.loads(answer.body)

    assert reload() == (
        200,
        {"models": {"m": {"status": "unchanged", "baseline_hash": OLD.baseline_hash}}},
    )
    path.write_text("not a baseline")
    status, answer = reload()
    assert status == 422 and answer["models"]["m"]["status"] == "refused"
    assert answer["models"]["m"]["baseline_hash"] == OLD.baseline_hash
    NEW.save(path)
    assert reload() == (
        200,
        {"models": {"m": {"status": "next_window", "baseline_hash": NEW.baseline_hash}}},
    )
    monitor = app.monitors["m"]
    monitor.close_window()
    assert monitor.baseline_hash == NEW.baseline_hash
    get = asyncio.run(request(app, method="GET", path="/admin/reload"))
    assert get.status == 405


def test_sighup_reloads_the_sidecar_baselines_between_windows(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    OLD.save(path)
    args = ("-b", f"m={path}", "--port", "0", "--window-seconds", "0.5")
    seen: list[str] = []
    with cli_process(*args) as (process, lines):
        port = _wait_for_line(lines, r"Uvicorn running on http://127\.0\.0\.1:(\d+)", seen)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
            assert client.post("/predict", content=ROW).status_code == 204
            NEW.save(path)
            process.send_signal(signal.SIGHUP)
            _wait_for_line(lines, rf"now checking against baseline {NEW.baseline_hash}", seen)
            text = client.get("/metrics").text
            assert client.get("/readyz").status_code == 200
        assert f'baseline_hash="{NEW.baseline_hash}"' in text
        assert OLD.baseline_hash not in text
        assert 'skew_requests_seen_total{model="m"} 1.0' in text
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
