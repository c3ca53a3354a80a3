"""The compiled sampler (sidecar/_sampling.c) against the Python one: the same
decisions and counts, step by step, and the same errors. (No scipy here: the build
tests run this file in fresh venvs of other Python versions and under sanitizers.)"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.sampling import COMPILED, PythonSampler, Sampler
from tests.clock import Clock

compiled_only = pytest.mark.skipif(not COMPILED, reason="the compiled sampler was not built")


def trace(sampler: PythonSampler, clock: Clock, steps: list[float]) -> list[tuple[object, ...]]:
    """What a sampler decides and counts, request by request, as the clock moves by
    each step."""
    seen = []
    for step in steps:
        clock.now += step
        sampler.countdown -= 1
        taken = sampler.countdown <= 0 and sampler.take()
        seen.append(
            (taken, sampler.countdown, sampler.seen, sampler.rate_limited, sampler.thinning,
             sampler._tokens, sampler._estimated_at)
        )  # fmt: skip
    return seen


@compiled_only
@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([0.0, 0.01, 0.3, 1.0]),
    cap=st.sampled_from([0.5, 3.0, 100.0, 1e9]),
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(st.sampled_from([0.0, 1e-4, 0.003, 0.03, 0.4, 2.5]), min_size=1, max_size=3_000),
)
@example(rate=1.0, cap=3.0, seed=1, steps=[0.03] * 300)  # the bucket runs dry: overload
@example(rate=0.3, cap=100.0, seed=2, steps=[1e-4] * 3_000 + [0.003] * 2_000)  # thinning
def test_the_compiled_sampler_decides_and_counts_as_the_python_one_step_by_step(
    rate: float, cap: float, seed: int, steps: list[float]
) -> None:
    python_clock, compiled_clock = Clock(), Clock()
    python = PythonSampler(rate, cap, clock=python_clock, seed=seed)
    compiled = Sampler(rate, cap, clock=compiled_clock, seed=seed)
    assert trace(compiled, compiled_clock, steps) == trace(python, python_clock, steps)


@compiled_only
def test_the_compiled_sampler_reads_time_monotonic_itself() -> None:
    sampler = Sampler(1.0, 1e9)
    before = time.monotonic()
    assert sampler.take()
    after = time.monotonic()
    assert before <= sampler._filled_at <= after


@compiled_only
@pytest.mark.parametrize(
    ("clock", "error"),
    [
        (lambda: 1 / 0, ZeroDivisionError),
        (lambda: "noon", TypeError),
        (lambda: Decimal("1.5"), TypeError),  # Python's `now - float` refuses it too
        (None, TypeError),
    ],
)
def test_a_failing_clock_raises_from_take_as_in_python(
    clock: Callable[[], object], error: type[Exception]
) -> None:
    for kind in (PythonSampler, Sampler):
        sampler = kind(1.0, 10.0, clock=time.monotonic)
        sampler.clock = clock  # type: ignore[assignment]
        with pytest.raises(error):
            sampler.take()


@compiled_only
def test_gaps_drawn_ahead_that_are_not_a_list_go_the_python_way() -> None:
    sampler = Sampler(0.5, 1e9, seed=1)
    sampler._gaps = (5, 7)  # type: ignore[assignment]
    with pytest.raises(AttributeError, match="pop"):
        sampler.take()  # as PythonSampler._draw: a tuple has no pop()
    sampler._gaps = []
    drawn = sampler._drawn
    assert sampler.take()
    assert sampler._drawn == drawn + sampler.countdown


@compiled_only
def test_a_monotonic_patched_before_import_is_called_not_bypassed() -> None:
    """The compiled clock fast path is for the built-in time.monotonic only: a stand-in
    patched over it before the import (freezegun's way) is called like any clock."""
    script = (
        "import time\n"
        "time.monotonic = lambda: 1000.0\n"
        "from sidecar.sampling import COMPILED, Sampler\n"
        "assert COMPILED\n"
        "sampler = Sampler(1.0, 1e9)\n"
        "sampler.take()\n"
        "print(sampler._filled_at)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1000.0"
