"""The per-request gate: the compiled one (sidecar/_gate.c) and the Python one decide
the same, and the compiled one runs no Python for unsampled requests."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import subprocess
import sys
import weakref
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from sidecar import Baseline
from sidecar.gate import COMPILED, PURE_PYTHON_ENV, pure_python_requested
from sidecar.middleware import SkewMiddleware
from sidecar.sampling import COMPILED as SAMPLER_COMPILED
from sidecar.sampling import PythonSampler, Sampler
from tests.asgi import request

ROOT = Path(__file__).resolve().parent.parent
compiled_only = pytest.mark.skipif(not COMPILED, reason="the compiled gate is not built here")


@pytest.fixture
def baseline() -> Baseline:
    return Baseline.from_records([{"x": float(i % 10)} for i in range(200)])


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


class Counting(SkewMiddleware):
    """Counts the requests that take the Python decision (all of them, with the Python
    gate: a subclass's `_dispatch` is its `__call__` there)."""

    dispatched = 0

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        self.dispatched += 1
        return super()._dispatch(scope, receive, send)


def middleware(
    baseline: Baseline, cls: type[SkewMiddleware] = SkewMiddleware, **options: Any
) -> Any:
    mw = cls(app, baseline=baseline, registry=CollectorRegistry(), **options)
    mw.monitor.started = True  # samples stay queued, no thread to stop
    return mw


def scope(method: str = "POST", path: str = "/predict") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


async def receive() -> Message:
    return {"type": "http.request", "body": b'{"x": 1}'}


async def send(message: Message) -> None:
    pass


def run(mw: Any, n: int, **kwargs: str) -> None:
    async def drive() -> None:
        for _ in range(n):
            await mw(scope(**kwargs), receive, send)

    asyncio.run(drive())


def test_ci_builds_the_compiled_gate() -> None:
    """Where CI runs, a C compiler is there: the tests must cover the compiled gate."""
    if not os.environ.get("CI"):
        pytest.skip("outside CI, a machine without a compiler runs the Python gate")
    assert COMPILED or pure_python_requested()


@compiled_only
def test_unsampled_requests_on_a_known_path_never_reach_python(baseline: Baseline) -> None:
    mw = middleware(baseline, Counting, sample_rate=0.0)
    run(mw, 100)
    run(mw, 10, method="GET")  # not watched: passed through, in C too
    assert mw.dispatched == 1  # the first request, which routed the path
    sampler = mw.targets["default"].sampler
    assert sampler.seen == 100  # the countdown went down in C


def test_both_gates_sample_and_count_every_request_alike(baseline: Baseline) -> None:
    mw = middleware(baseline, Counting, sample_rate=1.0)
    run(mw, 50)
    sampler = mw.targets["default"].sampler
    assert sampler.seen == 50
    assert mw.monitor._queue.sampled == 50
    assert len(mw.monitor._queue) == 50
    # Compiled: only the first request (it routed the path) took the Python decision;
    # the others were tapped by Python from C.
    assert mw.dispatched == (1 if COMPILED else 50)


def test_the_rate_cap_still_decides_sampled_requests(baseline: Baseline) -> None:
    mw = middleware(baseline, sample_rate=1.0, max_samples_per_second=10)
    sampler = mw.targets["default"].sampler
    sampler.clock = lambda: sampler._estimated_at  # no re-estimate, however slow the run
    run(mw, 40)
    assert sampler.seen == 40
    assert mw.monitor._queue.sampled == 10  # a second's worth of tokens
    assert sampler.rate_limited == 30


def python_sampler(mw: SkewMiddleware) -> PythonSampler:
    """The Python sampler in place of the default target's, whose countdown may be set
    to values the compiled one cannot hold."""
    sampler = PythonSampler(0.0, 1.0)
    mw.targets["default"].sampler = mw.monitor.sampler = sampler
    return sampler


@pytest.mark.parametrize(
    "odd",
    ["scope is a dict subclass", "path is not a str", "methods is a list", "huge countdown"],
)
def test_what_the_compiled_gate_does_not_expect_goes_the_python_way(
    baseline: Baseline, odd: str
) -> None:
    mw = middleware(baseline, Counting, sample_rate=0.0)
    run(mw, 1)
    given: Any = scope()
    if odd == "scope is a dict subclass":
        given = type("Scope", (dict,), {})(given)
    elif odd == "path is not a str":
        mw._routed[b"/predict"] = mw._routed["/predict"]
        given["path"] = b"/predict"
    elif odd == "methods is a list":
        mw.methods = ["POST"]
    else:
        python_sampler(mw).countdown = 1 << 70  # the compiled sampler's is 64 bits

    async def one() -> None:
        await mw(given, receive, send)

    before = mw.targets["default"].sampler.seen
    asyncio.run(one())
    assert mw.dispatched == 2
    assert mw.targets["default"].sampler.seen == before + 1


@compiled_only
@pytest.mark.skipif(not SAMPLER_COMPILED, reason="the compiled sampler is not built here")
@pytest.mark.parametrize("rate", [0.0, 0.25, 1.0])
def test_the_compiled_sampler_is_counted_down_in_its_struct(
    baseline: Baseline, rate: float
) -> None:
    """No Python for requests between samples: the gate decrements the compiled
    sampler's countdown in place, and every request is counted as seen."""
    mw = middleware(baseline, Counting, sample_rate=rate)
    sampler = mw.targets["default"].sampler
    assert type(sampler) is Sampler
    run(mw, 400)
    assert sampler.seen == 400
    sampled = mw.monitor._queue.sampled
    assert mw.dispatched == 1  # the path's first request (samples go to _sampled)
    assert (
        (sampled == 0) if rate == 0.0 else (sampled == 400 if rate == 1.0 else 50 < sampled < 150)
    )


@compiled_only
@pytest.mark.skipif(not SAMPLER_COMPILED, reason="the compiled sampler is not built here")
def test_a_sampler_class_with_its_own_countdown_is_counted_down_through_it(
    baseline: Baseline,
) -> None:
    """The gate decrements the struct only for classes that keep SamplerCore's
    `countdown`: a subclass's property is used as Python would use it."""
    written: list[int] = []

    class Watched(Sampler):  # type: ignore[misc, valid-type]
        @property
        def countdown(self) -> int:
            return 5

        @countdown.setter
        def countdown(self, value: int) -> None:
            written.append(value)

    mw = middleware(baseline, sample_rate=0.0)
    run(mw, 1)  # routes the path
    mw.targets["default"].sampler = Watched(0.0, 1.0)
    written.clear()  # its __init__'s
    run(mw, 3)
    assert written == [4, 4, 4]


@compiled_only
def test_requests_to_unwatched_paths_pass_in_c_once_routed(baseline: Baseline) -> None:
    mw = middleware(baseline, Counting)
    run(mw, 20, path="/healthz")  # excluded: routed to no target (None)
    assert mw.dispatched == 1
    assert mw._routed["/healthz"] is None
    assert mw.targets["default"].sampler.seen == 0


@pytest.mark.parametrize(("countdown", "sampled"), [(1, 1), (2, 0), (True, 1), (1.0, 1), (3.0, 0)])
def test_the_request_whose_countdown_reaches_zero_is_sampled(
    baseline: Baseline, countdown: object, sampled: int
) -> None:
    mw = middleware(baseline, sample_rate=0.0)
    run(mw, 1)  # routes the path
    sampler = python_sampler(mw)  # any countdown; and _draw is looked up in Python
    sampler.countdown = countdown  # type: ignore[assignment]
    sampler._gap = 1  # what the sampler counts as this gap's requests when it ends
    sampler._draw = lambda: 1 << 62  # then never again
    run(mw, 1)
    assert mw.monitor._queue.sampled == sampled
    assert sampler.countdown == (1 << 62 if sampled else countdown - 1)


def test_a_methods_set_subclass_is_asked_as_python_would(baseline: Baseline) -> None:
    class Everything(frozenset[str]):
        def __contains__(self, item: object) -> bool:
            return True

    mw = middleware(baseline, sample_rate=0.0)
    mw.methods = Everything({"POST"})
    run(mw, 3, method="GET")
    assert mw.targets["default"].sampler.seen == 3  # GET counted as watched


def test_a_scope_without_a_method_fails_as_it_would_in_python(baseline: Baseline) -> None:
    mw = middleware(baseline)
    with pytest.raises(KeyError, match="method"):
        mw({"type": "http", "path": "/predict"}, receive, send)


def test_keyword_calls_are_served(baseline: Baseline) -> None:
    mw = middleware(baseline, sample_rate=0.0)
    asyncio.run(mw(scope=scope(), receive=receive, send=send))
    assert mw.targets["default"].sampler.seen == 1


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_the_gate_keeps_no_reference_to_a_request(baseline: Baseline, rate: float) -> None:
    mw = middleware(baseline, sample_rate=rate, max_samples_per_second=1e9)
    run(mw, 1)
    request_scope = scope()
    target = mw._routed["/predict"]
    held = (request_scope, receive, send, target, target.sampler, app, mw)
    counts = [sys.getrefcount(x) for x in held]

    async def drive() -> None:
        for _ in range(1000):
            await mw(request_scope, receive, send)

    asyncio.run(drive())
    mw.monitor._queue.clear()  # the samples hold the scope's headers, not the scope
    assert [sys.getrefcount(x) for x in held] == counts


def test_a_dropped_middleware_is_freed_at_once(baseline: Baseline) -> None:
    """No reference cycle of its own: freed without waiting for the cyclic GC."""
    mw = middleware(baseline)
    ref = weakref.ref(mw)
    gc.disable()
    try:
        del mw
        assert ref() is None
    finally:
        gc.enable()


def test_a_middleware_in_a_reference_cycle_is_collected(baseline: Baseline) -> None:
    mw = middleware(baseline, sample_rate=0.0)
    mw.app = mw  # a cycle through the gate's own member
    ref = weakref.ref(mw)
    del mw
    gc.collect()
    assert ref() is None


def test_servers_that_inspect_the_app_take_it_for_asgi3(baseline: Baseline) -> None:
    """uvicorn, hypercorn and asgiref look at `app.__call__` to tell ASGI 3 from 2."""
    from uvicorn.config import Config

    mw = middleware(baseline)
    assert inspect.iscoroutinefunction(mw.__call__)  # hypercorn
    if sys.version_info < (3, 14):  # deprecated there
        assert asyncio.iscoroutinefunction(mw.__call__)  # asgiref, uvicorn
    config = Config(mw, log_config=None)
    config.load()
    assert config.interface == "asgi3"
    # Called by that name, it does what a call does.
    exchange = asyncio.run(request(mw.__call__, chunks=[b'{"x": 1}']))
    assert (exchange.status, exchange.body) == (200, b"{}")
    assert mw.monitor._queue.sampled == 1


def test_the_middleware_adds_no_coroutine_of_its_own_to_a_request(baseline: Baseline) -> None:
    for rate in (0.0, 1.0):
        mw = middleware(baseline, sample_rate=rate)
        returned = mw(scope(), receive, send)
        assert asyncio.iscoroutine(returned) and returned.cr_code is app.__code__
        returned.close()


@pytest.mark.skipif(pure_python_requested(), reason="already the Python gate")
def test_the_python_gate_passes_the_middleware_tests() -> None:
    """The fallback where no compiler was found runs the tap's own tests too."""
    env = {**os.environ, PURE_PYTHON_ENV: "1"}
    files = [
        "tests/test_gate.py",
        "tests/test_middleware.py",
        "tests/test_hostile.py",
        "tests/test_tap_awaiting.py",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


@compiled_only
def test_a_sampler_that_deletes_the_body_limit_while_deciding_does_not_crash_the_gate(
    baseline: Baseline,
) -> None:
    """The gate holds what it read before running the sampler's Python (UBSan found a
    NULL dereference here once)."""
    mw = middleware(baseline, sample_rate=1.0)
    run(mw, 1)  # routes the path

    class Deleting:
        countdown = 0

        def take(self) -> bool:
            del mw.max_body_bytes
            return True

    mw.targets["default"].sampler = Deleting()
    before = mw.monitor._queue.sampled
    run(mw, 1)
    assert mw.monitor._queue.sampled == before + 1  # tapped with the limit it had read
