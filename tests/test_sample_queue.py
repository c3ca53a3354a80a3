"""The queue between the serving path and the worker (sidecar/sample_queue.py and its
compiled twin in sidecar/_tap.c): bounded by samples and bytes, in order, waking the
worker once per batch. (No scipy here: the build tests run this file in fresh venvs
of other Python versions and under sanitizers.)"""

from __future__ import annotations

import gc
from collections import deque
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.compiled import compiled
from sidecar.sample_queue import PythonSampleQueue
from sidecar.worker import Sample

COMPILED = compiled("_tap", "SampleQueue")
KINDS = [PythonSampleQueue] + ([COMPILED] if COMPILED is not None else [])


@pytest.fixture(params=KINDS, ids=lambda kind: kind.__module__)
def kind(request: pytest.FixtureRequest) -> Any:
    return request.param


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def sample(tag: int = 0) -> Sample:
    return Sample([b"body %d" % tag], headers=[(b"content-type", b"application/json")])


def test_samples_come_out_in_order_with_their_bytes_released(kind: Any) -> None:
    queue = kind(1000, 1 << 20, 10_000, Wakes())
    samples = [sample(i) for i in range(300)]  # past the compiled ring's first growth
    for i, s in enumerate(samples[:100]):
        assert queue.put(s, i)
    out = [queue.popleft() for _ in range(40)]  # the ring's start moves on
    for i, s in enumerate(samples[100:], start=100):
        assert queue.put(s, i)  # it wraps, then grows with the start inside
    assert list(queue) == samples[40:]
    out += [queue.popleft() for _ in range(len(queue))]
    assert out == samples
    assert (len(queue), queue.bytes, queue.sampled) == (0, 0, 300)
    with pytest.raises(IndexError):
        queue.popleft()


def test_a_sample_over_the_sample_or_byte_bound_is_refused_and_left_untouched(
    kind: Any,
) -> None:
    queue = kind(3, 100, 10_000, Wakes())
    assert queue.put(sample(), 60) and queue.put(sample(), 40)
    refused = sample()
    assert not queue.put(refused, 1)  # 101 bytes
    assert queue.bytes == 100 and isinstance(refused.headers, list)
    assert queue.put(sample(), 0)
    assert not queue.put(sample(), 0)  # a fourth sample
    queue.popleft()
    assert queue.bytes == 40
    assert queue.put(sample(), 60)  # room again, by samples and by bytes
    queue.limit = 0  # a disabled monitor refuses everything
    queue.clear()
    assert not queue.put(sample(), 0)
    assert (len(queue), queue.bytes, queue.sampled) == (0, 0, 4)


def test_a_queued_sample_counts_its_size_and_keeps_its_header_lists_as_tuples(kind: Any) -> None:
    # Lists would be tracked by the cyclic GC and promoted with the waiting sample.
    queue = kind(10, 1000, 10_000, Wakes())
    s = Sample([b"x"], [b"y"], 201, [(b"a", b"1")], [(b"b", b"2")])
    assert queue.put(s, 2)
    assert queue.bytes == 2
    assert s.headers == ((b"a", b"1"),) and s.response_headers == ((b"b", b"2"),)
    with pytest.raises(ValueError, match="negative"):
        queue.put(sample(), -1)


def test_the_worker_is_woken_once_per_full_batch_until_it_says_it_woke(kind: Any) -> None:
    wakes = Wakes()
    queue = kind(100, 1 << 20, 3, wakes)
    for _ in range(2):
        queue.put(sample(), 1)
    assert wakes.count == 0
    for _ in range(5):
        queue.put(sample(), 1)
    assert wakes.count == 1 and queue.woken
    queue.woken = False  # the worker woke (and took nothing yet)
    queue.put(sample(), 1)
    assert wakes.count == 2


def test_a_failing_wake_is_raised_to_the_caller_with_the_sample_queued(kind: Any) -> None:
    def broken() -> None:
        raise RuntimeError("no worker")

    queue = kind(10, 1000, 1, broken)
    with pytest.raises(RuntimeError, match="no worker"):
        queue.put(sample(), 5)
    assert (len(queue), queue.bytes, queue.sampled) == (1, 5, 1)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 40)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("clear"), st.just(0)),
    ),
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(operations=OPERATIONS, limit=st.integers(0, 150), max_bytes=st.integers(0, 500))
def test_every_sequence_of_puts_and_takes_matches_a_bounded_deque(
    operations: list[tuple[str, int]], limit: int, max_bytes: int
) -> None:
    for kind in KINDS:
        queue = kind(limit, max_bytes, 10_000, Wakes())
        model: deque[tuple[Sample, int]] = deque()
        sampled = 0
        for i, (op, size) in enumerate(operations):
            if op == "put":
                s = sample(i)
                room = len(model) < limit and sum(n for _, n in model) + size <= max_bytes
                assert queue.put(s, size) == room
                if room:
                    model.append((s, size))
                    sampled += 1
            elif op == "pop" and model:
                assert queue.popleft() is model.popleft()[0]
            elif op == "clear":
                queue.clear()
                model.clear()
            assert len(queue) == len(model)
            assert queue.bytes == sum(n for _, n in model)
        assert list(queue) == [s for s, _ in model]
        assert queue.sampled == sampled


@pytest.mark.skipif(COMPILED is None, reason="the compiled tap was not built")
def test_the_compiled_tap_refuses_a_sample_class_without_the_slots_it_writes() -> None:
    class Loose:
        request = response = status = headers = response_headers = None

    with pytest.raises(TypeError, match="request is not a slot of"):
        compiled("_tap", "use_sample")(Loose)


def test_iterating_while_a_finalizer_puts_gives_a_consistent_snapshot(kind: Any) -> None:
    # Allocating the snapshot may collect garbage, whose finalizers may put (the
    # compiled queue once wrote past the end of a tuple sized before: ASan caught it).
    queue = kind(1000, 1 << 30, 10_000, Wakes())
    first = [sample(i) for i in range(3)]
    for s in first:
        queue.put(s, 1)

    class Putter:
        def __del__(self) -> None:
            for i in range(50):
                queue.put(sample(100 + i), 1)

    def garbage() -> None:
        cycle = Putter()
        cycle.self = cycle  # type: ignore[attr-defined]

    threshold = gc.get_threshold()
    gc.collect()
    gc.disable()
    try:
        garbage()
        gc.enable()
        gc.set_threshold(1)
        snapshot = list(queue)
    finally:
        gc.set_threshold(*threshold)
        gc.enable()
    gc.collect()
    assert len(queue) == 53
    assert snapshot[:3] == first and snapshot == list(queue)[: len(snapshot)]
