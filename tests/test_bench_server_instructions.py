"""bench/server_instructions.py: the whole server under callgrind, the monitor's time
stretched by valgrind's slowdown, and the cost of a sample derived from two rates."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import Baseline
from tests.bench_modules import bench_modules


@pytest.fixture(scope="module")
def si() -> Iterator[Any]:
    with bench_modules("serving_load", "server_instructions") as modules:
        yield modules["server_instructions"]


@pytest.fixture
def switch_interval() -> Iterator[float]:
    """The interpreter's switch interval, put back after the test (the scaled build
    stretches it for the whole process, as it should in the server it runs in)."""
    before = sys.getswitchinterval()
    yield before
    sys.setswitchinterval(before)


def test_the_time_scaled_monitor_stretches_its_time_constants_and_slows_its_samplers_clock(
    si: Any, tmp_path: Path, switch_interval: float
) -> None:
    from prometheus_client import CollectorRegistry

    from sidecar import SkewMiddleware

    path = tmp_path / "baseline.json"
    Baseline.from_records([{"x": float(i)} for i in range(50)]).save(path)
    options = {"baseline": str(path), "registry": CollectorRegistry(), "sample_rate": 0.1}
    plain = SkewMiddleware(None, **options)  # type: ignore[arg-type]
    options["registry"] = CollectorRegistry()
    scaled = si.sl._time_scaled(SkewMiddleware, 25.0)(None, **options)
    before, after = plain.monitor, scaled.monitor
    assert after.flush_seconds == pytest.approx(25 * before.flush_seconds)
    assert after.window_seconds == pytest.approx(25 * before.window_seconds)
    assert after._deadline - after.clock() == pytest.approx(after.window_seconds, abs=1.0)
    assert after.pacer.slice == pytest.approx(25 * before.pacer.slice)
    assert after.pacer.busy_pause == pytest.approx(25 * before.pacer.busy_pause)
    # The sampler keeps its cap but reads a clock 25 times slower, so the cap and the
    # re-estimates come per request as at full speed: 40 samples a real second.
    sampler = next(iter(scaled.targets.values())).sampler
    assert sampler.max_per_second == 1000.0
    assert sampler.clock() == pytest.approx(time.monotonic() / 25, abs=1e-3)
    assert sampler._estimated_at == pytest.approx(sampler.clock(), abs=1e-3)
    assert sampler._filled_at == sampler._estimated_at
    assert sys.getswitchinterval() == pytest.approx(25 * switch_interval)
    # Closing a window starts the next one (a new deadline); the scaled monitor's does not.
    before._deadline = after._deadline = 0.0
    before.close_window()
    after.close_window()
    assert before._deadline > 0.0
    assert after._deadline == 0.0


def test_the_cost_of_a_sample_comes_from_the_rate_actually_sampled(si: Any) -> None:
    per_request = {"noop-loaded": 300_000.0, "skew-0.0": 299_000.0, "skew-0.1": 302_000.0}
    notes = si.prediction("stack", per_request, {"skew-0.1": 0.075, "skew-0.0": 0.0})
    # 3,000 more per request at 0.075 sampled: 40,000 a sample; at exactly 0.1, 4,000
    # on top of the decision's 299,000, 3,000 over the floor.
    assert "a sample costs 40,000 Ir" in notes[0]
    assert "the decision alone -1,000 per request" in notes[0]
    assert "+3,000 Ir per request over the no-op with numpy loaded" in notes[1]
    assert f"{300_000 / 303_000:.4f}x predicted" in notes[1]


def test_no_prediction_without_the_three_runs_it_needs_or_without_a_sample(si: Any) -> None:
    per_request = {"noop-loaded": 300_000.0, "skew-0.1": 302_000.0}
    assert si.prediction("stack", per_request, {"skew-0.1": 0.1}) == []
    per_request["skew-0.0"] = 299_000.0
    assert si.prediction("stack", per_request, {"skew-0.1": 0.0, "skew-0.0": 0.0}) == []


def test_a_variant_over_a_floor_shows_the_instructions_and_the_throughput_they_predict(
    si: Any,
) -> None:
    assert si.over(303_000.0, 300_000.0) == "+3,000 (0.9901x)"
    assert si.over(297_000.0, 300_000.0) == "-3,000 (1.0101x)"
    assert si.over(300_000.0, None) == ""
    assert si.over(300_000.0, 300_000.0) == ""  # the floor itself


def test_the_collector_s_share_is_its_inclusive_count_in_callgrind_s_annotation(
    si: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    annotated = (
        "2,265,835,149 (100.0%)  PROGRAM TOTALS\n"
        "  116,337,954 ( 5.13%)  Python-3.11.7/Modules/gcmodule.c:gc_collect_main"
        " [/usr/lib/libpython3.11.so.1.0]\n"
        "    1,000,000 ( 0.04%)  Python-3.11.7/Modules/gcmodule.c:gc_collect_main'2"
        " [/usr/lib/libpython3.11.so.1.0]\n"
    )
    calls: list[list[str]] = []

    def run(command: list[str], **_: Any) -> Any:
        calls.append(command)
        return type("Done", (), {"stdout": annotated})()

    monkeypatch.setattr(si.subprocess, "run", run)
    assert si.collector_instructions("callgrind.out") == 116_337_954
    assert calls[0][0] == "callgrind_annotate" and "--inclusive=yes" in calls[0]
    annotated = "2,265,835,149 (100.0%)  PROGRAM TOTALS\n"  # no collection at all
    assert si.collector_instructions("callgrind.out") == 0


def test_over_several_layouts_a_variant_s_count_is_their_median_with_the_range(si: Any) -> None:
    assert si.per_layout([301_000.0, 304_000.0, 302_000.0]) == (302_000.0, " (301,000–304,000)")
    assert si.per_layout([300_000.0]) == (300_000.0, "")  # one layout: no range to show
