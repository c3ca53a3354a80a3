"""bench/serving_ab.py: A and B alternate in one process, and each B phase is compared
with the A phases on either side."""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench_modules import bench_modules


@pytest.fixture(scope="module")
def ab() -> Iterator[Any]:
    with bench_modules("serving_load", "serving_ab") as modules:
        yield modules["serving_ab"]


def phase(
    ab: Any, app: int, rps: float, cpu_us: float, off_loop_us: float = 0.0, switches: int = 0
) -> Any:
    """One second of a phase with the given throughput and CPU per request."""
    requests = int(rps)
    process = cpu_us * requests / 1e6
    loop = process - off_loop_us * requests / 1e6
    return ab.Phase(app, 1.0, requests, loop, process, switches)


def test_each_b_phase_is_compared_with_the_mean_of_its_neighbouring_a_phases(ab: Any) -> None:
    phases = [
        phase(ab, 0, 9000, 110.0),
        phase(ab, 1, 8800, 112.0, off_loop_us=1.5),
        phase(ab, 0, 9200, 108.0),
        phase(ab, 1, 9000, 111.0, off_loop_us=1.0),
        phase(ab, 0, 9400, 106.0),
    ]
    first, second = ab.pairs(phases, warmup=0)
    assert first.rps == pytest.approx(8800 / 9100)
    assert first.cpu == pytest.approx(112.0 / 109.0)
    assert first.off_loop_us == pytest.approx(1.5)
    assert first.loop == pytest.approx((112.0 - 1.5) / 109.0)
    assert second.rps == pytest.approx(9000 / 9300)
    assert second.a_cpu_us == pytest.approx(107.0)


def test_each_pair_counts_context_switches_per_thousand_requests_in_a_and_b(ab: Any) -> None:
    phases = [
        phase(ab, 0, 10000, 100.0, switches=30),
        phase(ab, 1, 8000, 100.0, switches=80),
        phase(ab, 0, 10000, 100.0, switches=50),
    ]
    (pair,) = ab.pairs(phases, warmup=0)
    assert pair.a_switches == pytest.approx(4.0)  # (3 + 5) / 2 per 1,000 requests
    assert pair.b_switches == pytest.approx(10.0)


def test_phases_in_the_warm_up_and_b_phases_without_an_a_after_them_are_left_out(
    ab: Any,
) -> None:
    phases = [phase(ab, i % 2, 9000, 110.0) for i in range(6)]  # A B A B A B
    assert len(ab.pairs(phases, warmup=0)) == 2  # the last B has no A after it
    assert len(ab.pairs(phases, warmup=1)) == 1  # the first A is warm-up: so is its B
    assert len(ab.pairs(phases, warmup=2)) == 1
    assert ab.pairs(phases, warmup=3) == []
    assert [p.rps for p in ab.pairs(phases, warmup=0)] == [1.0, 1.0]


def test_the_alternator_switches_apps_and_records_each_phase_after_the_skip(
    ab: Any, tmp_path: Path
) -> None:
    calls = [0, 0]

    def app(index: int) -> Any:
        async def served(scope: Any, receive: Any, send: Any) -> None:
            calls[index] += 1
            await asyncio.sleep(0.001)

        return served

    out = tmp_path / "phases"
    alternator = ab.Alternator((app(0), app(1)), phase=0.2, skip=0.05, out=str(out))

    async def drive() -> list[str]:
        sent: list[dict[str, Any]] = []
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await alternator({"type": "lifespan"}, receive, send)
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.75
        while loop.time() < end:
            await alternator({"type": "http"}, receive, send)
        return [m["type"] for m in sent]

    lifespan = asyncio.run(drive())
    assert lifespan == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    lines = [line.split() for line in out.read_text().splitlines()]
    assert 2 <= len(lines) <= 3  # switches at 0.2, 0.4 and 0.6 s (a slow machine is late)
    assert [int(fields[0]) for fields in lines] == [0, 1, 0][: len(lines)]
    for fields in lines:
        seconds, requests = float(fields[1]), int(fields[2])
        # Counted from 0.05 s after a switch to the next: 0.15 s, later if timers are late.
        assert 0.149 <= seconds < 0.4
        assert 0 < requests <= seconds / 0.001
    phases = ab.read_phases(str(out))
    for before, after in zip(phases, phases[1:], strict=False):
        assert before.end <= after.start  # the skipped 0.05 s lies between them
    for p in phases:  # the counted part's bounds on perf's clock, time.monotonic()
        assert p.end - p.start == pytest.approx(p.seconds, abs=0.01)
        # Each request's 1 ms sleep blocks the loop in epoll: a voluntary switch at least.
        assert p.switches >= p.requests // 2
    assert calls[0] > 0 and calls[1] > 0
    assert sum(calls) == alternator.requests


def test_the_alternator_sets_the_b_phase_event_exactly_while_b_serves(
    ab: Any, tmp_path: Path
) -> None:
    b_phase = threading.Event()
    b_phase.set()  # as the waking variants' module starts it
    seen: list[set[bool]] = [set(), set()]

    def app(index: int) -> Any:
        async def served(scope: Any, receive: Any, send: Any) -> None:
            seen[index].add(b_phase.is_set())
            await asyncio.sleep(0.001)

        return served

    alternator = ab.Alternator(
        (app(0), app(1)), phase=0.1, skip=0.02, out=str(tmp_path / "phases"), b_phase=b_phase
    )
    assert not b_phase.is_set()  # A serves first

    async def drive() -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.55
        while loop.time() < end:
            await alternator({"type": "http"}, None, None)

    asyncio.run(drive())
    assert seen == [{False}, {True}]


def test_the_waking_variant_wakes_only_while_its_event_is_set(ab: Any) -> None:
    sl = sys.modules["serving_load"]
    sl.WAKING.clear()
    sl.start_waking(1000)
    thread = next(t for t in threading.enumerate() if t.name == "waking")

    def switches() -> int:  # the waking thread's own, from the kernel
        status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
        return int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])  # type: ignore[index]

    before = switches()
    time.sleep(0.2)
    idle = switches()
    sl.WAKING.set()
    time.sleep(0.2)
    waking = switches()
    sl.WAKING.clear()  # left cleared: the daemon thread waits out the test run
    # Cleared, it waits on the event; set, it sleeps a millisecond at a time.
    assert idle - before <= 2
    assert waking - idle > 50


def test_the_alternator_refuses_a_skip_as_long_as_the_phase(ab: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--skip"):
        ab.Alternator((None, None), phase=1.0, skip=1.0, out=str(tmp_path / "x"))


def perf_line(tid: int, at: float, function: str, library: str) -> str:
    return f"  {tid} {at:.6f}:  7f00ab12 {function} (/usr/lib/{library})"


def test_perf_samples_are_filed_under_the_counted_phase_and_thread_they_fall_in(ab: Any) -> None:
    def counted(app: int, start: float, requests: int) -> Any:
        return ab.Phase(app, 1.0, requests, 0.0, 0.0, start=start, end=start + 1.0)

    # Warm-up A, then A B A, each counted for 1 s from 10, 12, 14 and 16 s.
    phases = [
        counted(0, 10.0, 1),
        counted(0, 12.0, 100),
        counted(1, 14.0, 50),
        counted(0, 16.0, 100),
    ]
    lines = [
        perf_line(7, 10.5, "warm", "libpython.so"),  # in the warm-up phase: left out
        perf_line(7, 12.5, "eval", "libpython.so"),
        perf_line(7, 13.5, "skipped", "libpython.so"),  # between two counted parts
        perf_line(7, 14.2, "eval", "libpython.so"),
        perf_line(7, 14.4, "take", "_sampling.so"),
        perf_line(7, 14.5, "take", "_sampling.so"),
        perf_line(8, 14.6, "check", "_records.so"),  # another thread: the worker
        perf_line(7, 16.9, "eval", "libpython.so"),
        perf_line(7, 17.5, "after", "libpython.so"),  # after the last counted part
        "not a sample line",
    ]
    profile = ab.attribute(lines, phases, loop_tid=7, warmup=1)
    assert profile.requests == {0: 200, 1: 50}
    assert profile.samples[0] == {("loop", "libpython.so", "eval"): 2}
    assert profile.samples[1] == {
        ("loop", "libpython.so", "eval"): 1,
        ("loop", "_sampling.so", "take"): 2,
        ("other", "_records.so", "check"): 1,
    }
    a, b = profile.per_request(0), profile.per_request(1)
    one_sample = 1e6 / ab.PERF_HZ  # µs of CPU
    assert a[("loop", "libpython.so", "eval")] == pytest.approx(2 * one_sample / 200)
    assert b[("loop", "libpython.so", "eval")] == pytest.approx(one_sample / 50)
    report = ab.profile_report("skew-0.1", profile)
    assert "200 and 50 requests counted" in report
    functions, libraries = report.split("by thread and library")
    rows = [
        line.split("|")[3].strip()
        for line in functions.splitlines()
        if "| loop" in line or "| other" in line
    ]
    assert rows == ["take", "check", "eval"]  # B's excess, largest first, each once
    assert "_sampling.so" in libraries.splitlines()[3]


def test_a_perf_record_that_wrote_nothing_is_named_with_its_likely_cause(
    ab: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "skew-0.1-0.perf"
    with pytest.raises(RuntimeError, match="perf record wrote no .*skew-0.1-0.perf.*paranoid"):
        ab.perf_profile(str(missing), [], loop_tid=1, warmup=0)
