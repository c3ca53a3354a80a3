"""The worker's batch fast path (`Monitor._extract_batch`) counts and checks exactly what
the per-sample path (`Monitor._extract`) does, for usual and odd exchanges alike."""

from __future__ import annotations

import gzip
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import Baseline, records, worker
from sidecar.profile import ProfileOptions
from sidecar.worker import Monitor, Sample
from tests.hostile import corpus
from tests.state import assert_same_state, monitor_state


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [
        {
            "x": float(i % 100),
            "y": i % 7,
            "c": "abc"[i % 3],
            "d": "uv"[i % 2],
            "v": [1.0, 2.0],
            "score": (i % 10) / 10,
        }
        for i in range(2000)
    ]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


def _per_sample(monitor: Monitor) -> Monitor:
    """The monitor, made to take `_extract` for every sample."""

    def extract_batch(n: int, requests: list[Any], responses: list[Any], columns: Any) -> None:
        for _ in range(n):
            monitor._extract(monitor._queue.popleft(), requests, responses)

    monitor._extract_batch = extract_batch  # type: ignore[method-assign]
    return monitor


def _same(baseline: Baseline, samples: list[Sample]) -> None:
    fast = Monitor(baseline, registry=None, queue_size=100_000)
    slow = _per_sample(Monitor(baseline, registry=None, queue_size=100_000))
    for monitor in (fast, slow):
        for sample in samples:
            monitor.submit(sample)
        assert monitor.process_pending() == len(samples)
    assert_same_state(monitor_state(fast), monitor_state(slow))


_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["a", "b", "zz", "7"])
)
_record = st.fixed_dictionaries(
    {"x": _scalar, "y": _scalar, "c": _scalar, "d": _scalar, "v": st.lists(_scalar, max_size=3)},
    optional={"extra": _scalar, "instances": st.lists(_scalar, max_size=2)},
)
_request = _record | st.lists(_record, max_size=3) | st.fixed_dictionaries({"x": _scalar}) | _scalar
_prediction = _scalar | st.lists(_scalar, max_size=2) | st.dictionaries(st.just("score"), _scalar)
_response = (
    st.builds(lambda p: {"predictions": p}, st.lists(_prediction, max_size=3))
    | st.builds(lambda p: {"predictions": p, "model": "m"}, st.lists(_prediction, max_size=2))
    | st.builds(lambda p: {"outputs": p}, st.lists(_prediction, max_size=2))
    | _prediction
)
# Mostly the usual exchange (one plain chunk): the fast path must see most samples.
_headers = st.sampled_from(["", "", "", "", "gzip", "br", "identity", "bad"])
_chunks = st.sampled_from([1, 1, 1, 0, 2])


def _encode(document: Any, encoding: str, chunks: int) -> tuple[list[bytes], list[Any]]:
    try:
        data = orjson.dumps(document)
    except orjson.JSONEncodeError:  # integers beyond 64 bits: json reads them
        data = repr(document).encode()
    data = data.replace(b"nan", b"NaN").replace(b"inf", b"Infinity")
    headers: list[Any] = [(b"content-type", b"application/json")]
    if encoding == "bad":
        headers.append((b"content-encoding",))  # unreadable: counted by the slow path
    elif encoding:
        headers.append((b"Content-Encoding", encoding.encode()))
        if encoding == "gzip":
            data = gzip.compress(data)
    cut = len(data) // max(chunks, 1)
    parts = [data] if chunks <= 1 else [data[:cut], data[cut:]]
    return parts if chunks else [], headers


@st.composite
def _samples(draw: st.DrawFn) -> Sample:
    request, headers = _encode(draw(_request), draw(_headers), draw(_chunks))
    response, response_headers = _encode(draw(_response), draw(_headers), draw(_chunks))
    if draw(st.integers(0, 7)) == 0:
        request = [b"{not json"] if draw(st.booleans()) else [b""]
    if draw(st.integers(0, 7)) == 0:
        response = [b"[1, "]
    # Statuses a server sends, and odd ones a caller of submit() might pass.
    status = draw(st.sampled_from([200, 200, 201, 400, 500, 299, 300, 2**70, 250.5, True]))
    return Sample(request, response, status, headers, response_headers)


_header_key = st.sampled_from(
    [b"content-encoding", b"Content-Encoding", b"CONTENT-ENCODING", b"content-type", b"x" * 16]
)
_header_value = st.sampled_from([b"", b"gzip", b"identity", bytearray(b"br"), "gzip", 3, 0, None])
_header = st.tuples(_header_key, _header_value) | st.sampled_from([(b"content-encoding",), 5])


@given(st.lists(_header, max_size=4))
def test_the_fast_identity_check_agrees_with_content_encoding(headers: list[Any]) -> None:
    """`_identity` is `not content_encoding(headers)` inlined, and False where that
    raises (the slow path counts those headers)."""
    try:
        expected = not worker.content_encoding(headers)
    except Exception:
        expected = False
    assert worker._identity(headers) is expected


@settings(max_examples=200, deadline=None)
@given(st.lists(_samples(), max_size=12))
def test_the_batch_fast_path_counts_exactly_what_the_per_sample_path_counts(
    baseline: Baseline, samples: list[Sample]
) -> None:
    _same(baseline, samples)


def test_the_usual_exchange_takes_the_fast_path_and_counts_the_same(baseline: Baseline) -> None:
    row = {"x": 3.0, "y": 2, "c": "a", "d": "u", "v": [1.0, 2.0]}
    samples = [
        Sample([orjson.dumps(row)], [b'{"predictions":[0.5]}'], 200, [], []) for _ in range(5)
    ]
    _same(baseline, samples)


def test_numeric_predictions_are_counted_in_a_column_as_the_rows_would_be(
    baseline: Baseline,
) -> None:
    row = orjson.dumps({"x": 3.0, "y": 2, "c": "a", "d": "u", "v": [1.0, 2.0]})
    predictions = [0.5, 3, -7, 2**53, 2**53 + 1, 2**60, 1e300, True, "x", None, [0.1], 0.25]
    samples = [
        Sample([row], [orjson.dumps({"predictions": [p]})], 200, [], []) for p in predictions
    ]
    _same(baseline, samples)
    monitor = Monitor(baseline, registry=None, queue_size=100)
    assert monitor._prediction_column
    columns: list[Any] = []
    responses: list[Any] = []
    for sample in samples:
        monitor.submit(sample)
    monitor._extract_batch(len(samples), [], responses, columns)
    # The numbers exact as doubles went into the column (read in C where it was built,
    # 2**53 by Python either way: 16 digits); the rest are rows, as before.
    response_columns = [(x, s) for engine, x, s in columns if engine is monitor.responses]
    numbers = [value for x, _ in response_columns for value in x[:, 0].tolist()]
    assert sorted(numbers) == sorted([0.5, 3.0, -7.0, 2.0**53, 1e300, 0.25])
    assert all(s.shape == (len(x), 0) for x, s in response_columns)
    assert responses == [{"score": p} for p in (2**53 + 1, 2**60, True, "x", None, [0.1])]


def test_string_predictions_keep_the_row_path() -> None:
    rows = [{"x": float(i), "label": "ab"[i % 2]} for i in range(100)]
    baseline = Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"label"})))
    assert not Monitor(baseline, registry=None)._prediction_column


def test_a_numeric_prediction_beside_a_second_output_keeps_the_row_path() -> None:
    """With two outputs, `{"predictions": [x]}` names only the first: the other is
    missing from every row, which the column (one output per row) cannot count."""
    rows = [{"x": float(i), "prediction": i / 100, "label": "ab"[i % 2]} for i in range(100)]
    options = ProfileOptions(prediction=frozenset({"prediction", "label"}))
    baseline = Baseline.from_records(rows, options)
    assert not Monitor(baseline, registry=None)._prediction_column
    samples = [Sample([b'{"x": 1.5}'], [b'{"predictions":[0.5]}'], 200, [], []) for _ in range(4)]
    _same(baseline, samples)


def test_the_hostile_corpus_is_counted_the_same_on_both_paths(baseline: Baseline) -> None:
    samples = [
        Sample(list(body.chunks), [b'{"predictions":[0.1]}'], 200, body.headers, [])
        for body in corpus(300, seed=3)
    ]
    _same(baseline, samples)


def test_the_worker_offers_the_gil_once_per_slice_of_work() -> None:
    offers: list[float] = []
    baseline = Baseline.from_records([{"x": float(i), "c": "ab"[i % 2]} for i in range(200)])
    body = orjson.dumps({"x": 1.0, "c": "a"})

    def offered(slice_seconds: float, n: int = 200) -> int:
        offers.clear()
        monitor = Monitor(baseline, registry=None, gil_slice_seconds=slice_seconds)
        monitor.pacer.sleep = offers.append
        for _ in range(n):
            monitor.submit(Sample((body,)))
        monitor.process_pending()
        assert monitor.counts.checked == n
        return len(offers)

    # Every pause point is due with no slice: one offer per sample and per feature.
    assert offered(0.0) >= 200 + 2
    # A slice longer than the batch: never.
    assert offered(60.0) == 0


def test_the_worker_steps_aside_while_requests_arrive_unless_it_falls_behind() -> None:
    """Requests that arrived during its slice: the worker sleeps busy_pause_seconds (the
    serving thread has the core to itself). None, or a queue half full: it only offers
    the GIL (sleep(0))."""
    sleeps: list[float] = []
    requests, behind = 0, False
    pacer = worker.Pacer(0.0, busy_pause_seconds=0.002, sleep=sleeps.append)
    pacer.activity = lambda: requests
    pacer.behind = lambda: behind
    pacer.tick()  # nothing arrived
    requests = 3
    pacer.tick()  # three arrived
    pacer.tick()  # none since
    requests, behind = 4, True
    pacer.tick()  # one arrived, but the queue is filling
    assert sleeps == [0, 0.002, 0, 0]


def test_the_worker_steps_aside_once_inside_each_check(baseline: Baseline) -> None:
    """The engine's check is most of the worker's time: it pauses there as well, with the
    lock a scrape reads under held, but once per check at most (a scrape waits for one
    chunk's work and one pause); its other ticks there only offer the GIL."""
    monitor = Monitor(baseline, registry=None, gil_slice_seconds=0.0, busy_pause_seconds=0.5)
    requests = iter(range(1, 1_000_000))
    monitor.pacer.activity = lambda: next(requests)  # a request during every slice
    sleeps: list[tuple[float, bool]] = []  # (seconds, whether the lock was held)
    monitor.pacer.sleep = lambda seconds: sleeps.append((seconds, monitor._lock.locked()))
    body = orjson.dumps({"x": 1.0, "y": 2, "c": "a", "d": "u", "v": [1.0, 2.0]})
    for _ in range(300):  # three batches (batch_samples 128), each one check
        monitor.submit(Sample((body,)))
    monitor.process_pending()
    assert monitor.counts.checked == 300
    assert not monitor.counts.errors
    assert sleeps.count((0.5, False)) >= 300  # before each sample it parses
    assert sleeps.count((0.5, True)) == 3  # one per check
    # The other ticks of each check: the block's row chunks and the c, d, v features.
    assert sleeps.count((0, True)) >= 3 * 3


def test_the_monitor_paces_its_worker_by_the_requests_its_tap_counts(
    baseline: Baseline,
) -> None:
    from sidecar.sampling import Sampler

    monitor = Monitor(baseline, registry=None, queue_size=4)
    activity = monitor.pacer.activity
    assert activity is not None
    assert activity() == 0  # no tap (the sidecar's monitors): never moves, never pauses
    monitor.sampler = Sampler(0.1, 1000.0, seed=1)
    before = activity()
    monitor.sampler.countdown -= 1  # the middleware counting one request
    assert activity() == before + 1
    assert not monitor.pacer.behind()
    for _ in range(3):
        monitor.submit(Sample((b"{}",)))
    assert monitor.pacer.behind()  # 3 of 4 queued: keep pace
    by_bytes = Monitor(baseline, registry=None, max_queue_bytes=100)
    by_bytes.submit(Sample((b"x" * 40,)))
    assert not by_bytes.pacer.behind()
    by_bytes.submit(Sample((b"x" * 40,)))
    assert by_bytes.pacer.behind()  # 80 of 100 bytes queued
    with pytest.raises(ValueError, match="busy_pause_seconds"):
        Monitor(baseline, registry=None, busy_pause_seconds=-1)


@pytest.mark.skipif(records.identity is None, reason="the compiled reader is not built here")
@given(st.lists(_header, max_size=4) | st.lists(st.tuples(_header_key, _header_value), max_size=3))
def test_the_compiled_identity_check_is_the_python_one_for_headers_servers_send(
    headers: list[Any],
) -> None:
    """True only where `_identity` is; for (bytes, bytes) pairs, exactly `_identity`."""
    assert records.identity is not None
    fast = records.identity(headers)
    assert fast is worker._identity(tuple(headers)) or not fast
    usual = all(
        type(pair) is tuple and len(pair) == 2 and all(type(x) is bytes for x in pair)
        for pair in headers
    )
    if usual:
        assert fast is worker._identity(headers)
        assert records.identity(tuple(headers)) is fast


def test_queue_bounds_given_as_floats_or_infinity_are_taken_as_integers(
    baseline: Baseline,
) -> None:
    monitor = Monitor(baseline, registry=None, queue_size=1e3, max_queue_bytes=math.inf)
    assert (monitor._queue.limit, monitor._queue.max_bytes) == (1000, 1 << 62)
    assert monitor.submit(Sample([b'{"x": 1.0}']))


def test_samples_taken_by_a_sorting_that_fails_are_counted_not_lost() -> None:
    # Wider than any envelope, so the compiled reader takes its bodies.
    flat = Baseline.from_records(
        [{f"n{j}": float(i % 10 + j) for j in range(6)} for i in range(99)]
    )
    monitor = Monitor(flat, registry=None)
    if not monitor._triaged or monitor._reader is None:
        pytest.skip("not compiled here: the worker sorts in Python")
    compiled = monitor._queue

    class TakesTwoThenFails:
        def __len__(self) -> int:
            return len(compiled)

        def popleft(self) -> Sample:
            return compiled.popleft()

        def triage(self, *args: Any) -> Any:
            compiled.popleft(), compiled.popleft()
            raise MemoryError

    for _ in range(5):
        monitor.submit(Sample([orjson.dumps({f"n{j}": 1.0 for j in range(6)})]))
    monitor._queue = TakesTwoThenFails()  # type: ignore[assignment]
    monitor.process_pending()
    assert monitor.counts.errors == {"extract": 1}
    assert monitor.counts.rejected == {"monitor_error": 2}
    assert len(compiled) == 3  # left for the next pass
