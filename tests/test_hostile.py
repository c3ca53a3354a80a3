"""Hostile and odd input: the app sees exactly what it would without the monitor, every
sampled body is counted once (checked, or dropped under a reason), nothing from a body
becomes a label, and memory stays bounded.

The big corpus (tests/hostile.py) runs in-process, message by message; hypothesis draws
more bodies, datagrams and JSON documents."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import tracemalloc
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from sidecar import Baseline, EvidenceOptions, SkewMiddleware
from sidecar.diagnosis import KINDS as DIAGNOSIS_KINDS
from sidecar.metrics import DROP_REASONS, ERROR_STAGES
from sidecar.profile import ProfileOptions
from sidecar.serve import Sidecar
from sidecar.tap import TapFormatError, decode
from sidecar.worker import Monitor, Sample
from tests.asgi import request
from tests.hostile import GZIP, JSON, KINDS, Body, corpus

WORKER_REASONS = ("invalid_json", "unsupported_encoding", "unrecognised_payload", "too_large")


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [
        {"x": float(i % 100), "c": "abc"[i % 3], "score": (i % 10) / 10, "v": [1.0, 2.0]}
        for i in range(2000)
    ]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


class Recorder:
    """A raw ASGI app that reads the whole body and answers with a digest of it, in two
    chunks; it keeps every message it received and sent."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.sent: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = b""
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] != "http.request":
                break
            data += message.get("body", b"")
            if not message.get("more_body", False):
                break
        digest = hashlib.sha256(data).hexdigest()
        answer = orjson.dumps({"predictions": [0.5], "bytes": len(data), "sha256": digest})
        for message in (
            {"type": "http.response.start", "status": 200, "headers": [(b"x-n", b"1")]},
            {"type": "http.response.body", "body": answer[:10], "more_body": True},
            {"type": "http.response.body", "body": answer[10:]},
        ):
            self.sent.append(message)
            await send(message)


def middleware(
    baseline: Baseline, app: Any, **options: Any
) -> tuple[SkewMiddleware, CollectorRegistry]:
    registry = CollectorRegistry()
    options = {
        "model": "m",
        "window_seconds": 3600,
        "max_samples_per_second": 1e9,
        "queue_size": 100_000,
        **options,
    }
    return SkewMiddleware(app, baseline=baseline, registry=registry, **options), registry


def counted(registry: CollectorRegistry, model: str = "m") -> dict[str, float]:
    """seen, checked, each drop reason and the error total, as exported."""

    def v(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"model": model, **labels}) or 0.0

    out = {"seen": v("skew_requests_seen_total"), "checked": v("skew_samples_checked_total")}
    out.update({r: v("skew_samples_dropped_total", reason=r) for r in DROP_REASONS})
    out["errors"] = sum(v("skew_monitor_errors_total", stage=s) for s in ERROR_STAGES)
    return out


def assert_every_request_accounted(counts: dict[str, float], n: int) -> None:
    dropped = sum(counts[r] for r in DROP_REASONS)
    assert counts["seen"] == n
    assert counts["checked"] + dropped == n, counts
    assert counts["errors"] == 0, counts


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def series(registry: CollectorRegistry) -> set[SeriesKey]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for metric in registry.collect()
        for s in metric.samples
    }


async def run_both(
    mw: SkewMiddleware, plain: Recorder, tapped: Recorder, bodies: Iterable[Body]
) -> None:
    """Each body to the plain app and through the middleware: the client and the app
    must see the same messages both times."""
    for body in bodies:
        received, sent = len(tapped.received), len(tapped.sent)
        plain.received.clear()
        plain.sent.clear()
        a = await request(plain, chunks=body.chunks, headers=body.headers)
        b = await request(mw, chunks=body.chunks, headers=body.headers)
        assert b.messages == a.messages, body.kind
        assert tapped.received[received:] == plain.received, body.kind
        assert tapped.sent[sent:] == plain.sent, body.kind
        del tapped.received[:], tapped.sent[:]


# -- the corpus ---------------------------------------------------------------------------


def test_ten_thousand_hostile_bodies_reach_the_app_unchanged_and_are_all_accounted(
    baseline: Baseline,
) -> None:
    plain, tapped = Recorder(), Recorder()
    evidence = EvidenceOptions(per_feature=8, redact=("c",))
    mw, registry = middleware(baseline, tapped, evidence=evidence)
    bodies = list(corpus(10_000, seed=6, heavy_every=20))
    assert {b.kind for b in bodies} == set(KINDS)
    warmup = len(KINDS) * 20  # enough rows for verdicts: their series exist from here
    try:
        asyncio.run(run_both(mw, plain, tapped, bodies[:warmup]))
        mw.monitor.stop()  # checks what is queued and closes the window
        before = series(registry)
        asyncio.run(run_both(mw, plain, tapped, bodies[warmup:]))
    finally:
        # The worker checks what is still queued before stop() returns: under the
        # sanitizers (tests/test_builds.py) that takes longer than stop's default 10 s.
        mw.monitor.stop(timeout=300)
    counts = counted(registry)
    assert_every_request_accounted(counts, len(bodies))
    assert counts["checked"] > 0.4 * len(bodies)
    for reason in ("invalid_json", "unsupported_encoding", "too_large", "empty_body", "no_rows"):
        assert counts[reason] > 0, reason
    # Random feature names and hostile values: no new series, and label values only
    # from the baseline and fixed sets.
    after = series(registry)
    # Verdicts and diagnoses appear per feature once it has values: bounded by features.
    assert {s[0] for s in after - before} <= {"skew_feature_drifted", "skew_feature_diagnosis"}
    allowed = {"model": {"m"}, "feature": set(baseline.features), "reason": set(DROP_REASONS)}
    allowed["kind"] = set(DIAGNOSIS_KINDS)
    for name, labels in after:
        for key, label in labels:
            assert label in allowed.get(key, {label}), (name, key, label)
    # A redacted field's values are never kept, whatever arrived.
    assert mw.monitor.evidence is not None
    kept = [e for entries in mw.monitor.evidence.recent().values() for e in entries]
    assert kept
    assert all(e.value in ("[redacted]", "(absent)") for e in kept if e.feature == "c")


# -- one body at a time: the reason it is counted under ----------------------------------


def outcome(
    monitor: Monitor, chunks: list[bytes], headers: Iterable[tuple[bytes, bytes]] = JSON
) -> str:
    """What the monitor made of one sample: "checked" or the drop reason; never an error."""
    before = dict(monitor.counts.rejected), monitor.counts.checked
    monitor.submit(Sample(chunks, headers=list(headers)))
    monitor.process_pending()
    assert not monitor.counts.errors
    if monitor.counts.checked > before[1]:
        return "checked"
    (reason,) = [k for k, n in monitor.counts.rejected.items() if n > before[0].get(k, 0)]
    return reason


DEEP = 100_000
CASES = [
    (b'{"x": 1.0, "c": "a"}', JSON, "checked"),
    (b'{"x": 1, "x": "1", "c": "a"}', JSON, "checked"),  # duplicate keys: the last wins
    (b'{"x": 1e400}', JSON, "checked"),  # beyond float64: a non-finite value
    (b'{"x": ' + b"9" * 5000 + b"}", JSON, "invalid_json"),  # beyond Python's int limit
    (b'{"x": NaN, "c": "b"}', JSON, "checked"),
    (b"[" * DEEP + b"]" * DEEP, JSON, "invalid_json"),
    (b'{"a":' * DEEP + b"1" + b"}" * DEEP, JSON, "invalid_json"),
    (b"[" * DEEP + b"NaN" + b"]" * DEEP, JSON, "invalid_json"),  # the fallback parser too
    (b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}", JSON, "checked"),
    (b'{"c": "\xff"}', JSON, "invalid_json"),
    (b'{"x": 1.0', JSON, "invalid_json"),
    (b"null", JSON, "unrecognised_payload"),
    (b"true", JSON, "unrecognised_payload"),
    (b'"text"', JSON, "unrecognised_payload"),
    (b"[]", JSON, "no_rows"),
    (b'{"instances": []}', JSON, "no_rows"),
    (b"[1, 2, 3]", JSON, "no_rows"),
    (b"{}", JSON, "checked"),  # one row without any feature: all missing
    (b"\xef\xbb\xbf{}", JSON, "invalid_json"),
    (gzip.compress(b'{"x": 2.0}'), GZIP, "checked"),
    (gzip.compress(b'{"x": 2.0}')[:-9], GZIP, "invalid_json"),
    (b'{"x": 2.0}', GZIP, "invalid_json"),
    (b'{"x": 2.0}', (*JSON, (b"content-encoding", b"br")), "unsupported_encoding"),
    (gzip.compress(b" " * (9 << 20)), GZIP, "too_large"),
    (b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b--", JSON, "invalid_json"),
]


@pytest.mark.parametrize(("data", "headers", "expected"), CASES, ids=range(len(CASES)))
def test_each_odd_body_is_checked_or_dropped_under_its_reason(
    baseline: Baseline, data: bytes, headers: tuple[tuple[bytes, bytes], ...], expected: str
) -> None:
    monitor = Monitor(baseline, registry=None)
    assert outcome(monitor, [data], headers) == expected


def test_a_custom_extractor_that_fails_halfway_leaves_no_rows_behind(baseline: Baseline) -> None:
    def half(body: Any) -> Iterator[Any]:
        yield {"x": 1.0}
        raise RuntimeError("bug in a user extractor")

    monitor = Monitor(baseline, registry=None, extractor=half)  # type: ignore[arg-type]
    monitor.submit(Sample([b"{}"]))
    monitor.process_pending()
    assert monitor.counts.rejected == {"monitor_error": 1}
    assert monitor.counts.errors == {"extract": 1}
    assert monitor.requests.window.rows == 0


# -- drawn by hypothesis ------------------------------------------------------------------

ENCODINGS = [(), ((b"content-encoding", b"gzip"),), ((b"content-encoding", b"deflate"),)]


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at a few drawn points (empty chunks allowed)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def json_values() -> st.SearchStrategy[Any]:
    names = st.sampled_from(["x", "c", "v", "score", "instances", "inputs", "data"]) | st.text(
        max_size=8
    )
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(names, inner, max_size=5),
        max_leaves=30,
    )


def test_drawn_bytes_in_drawn_chunks_reach_the_app_unchanged_and_are_accounted(
    baseline: Baseline,
) -> None:
    plain, tapped = Recorder(), Recorder()
    mw, registry = middleware(baseline, tapped)
    bodies: list[Body] = []

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=600).flatmap(split), st.sampled_from(ENCODINGS))
    def one(chunks: list[bytes], encoding: tuple[tuple[bytes, bytes], ...]) -> None:
        body = Body("drawn", tuple(chunks), (*JSON, *encoding))
        bodies.append(body)
        asyncio.run(run_both(mw, plain, tapped, [body]))

    try:
        one()
    finally:
        mw.monitor.stop()
    assert_every_request_accounted(counted(registry), len(bodies))


def test_drawn_json_documents_are_checked_or_dropped_never_an_error(baseline: Baseline) -> None:
    monitor = Monitor(baseline, registry=None, evidence=EvidenceOptions(per_feature=4))

    @settings(max_examples=600, deadline=None)
    @given(json_values(), st.booleans())
    def one(document: Any, gzipped: bool) -> None:
        try:
            data = orjson.dumps(document)
        except orjson.JSONEncodeError:  # integers beyond 64 bits
            data = repr(document).encode()
        if b"nan" in data or b"inf" in data:
            data = data.replace(b"nan", b"NaN").replace(b"inf", b"Infinity")
        headers = GZIP if gzipped else JSON
        assert outcome(monitor, [gzip.compress(data) if gzipped else data], headers)

    one()


@pytest.mark.parametrize(
    "data",
    [
        b'[{"x": 1.5, "c": "a"}, {"x": NaN, "c": "b", "zz": [1, 2]}]',
        b'{"instances": [[3.0, "c", [1.0, 2.0]]], "\xc3\xa9": 1}',
        gzip.compress(b'{"x": 7.0, "c": "a"}'),
    ],
    ids=["records with NaN", "instances, a non-ASCII key", "gzip"],
)
def test_a_body_split_at_every_byte_reaches_the_app_unchanged_and_is_checked(
    baseline: Baseline, data: bytes
) -> None:
    headers = GZIP if data.startswith(b"\x1f\x8b") else JSON
    bodies = [Body("split", (data[:i], data[i:]), headers) for i in range(len(data) + 1)]
    bodies.append(Body("bytes", tuple(data[i : i + 1] for i in range(len(data))), headers))
    plain, tapped = Recorder(), Recorder()
    mw, registry = middleware(baseline, tapped)
    try:
        asyncio.run(run_both(mw, plain, tapped, bodies))
    finally:
        mw.monitor.stop()
    counts = counted(registry)
    assert_every_request_accounted(counts, len(bodies))
    assert counts["checked"] == len(bodies)


# -- the sidecar's receivers --------------------------------------------------------------


def test_the_sidecar_mirror_receiver_answers_and_accounts_for_every_hostile_body(
    baseline: Baseline,
) -> None:
    app = Sidecar({"default": baseline}, max_samples_per_second=1e9, window_seconds=3600)
    bodies = list(corpus(2_000, seed=7, heavy_every=10))

    async def run() -> list[int]:
        return [
            (await request(app, path="/predict", chunks=b.chunks, headers=b.headers)).status
            for b in bodies
        ]

    statuses = asyncio.run(run())
    monitor = app.monitors["default"]
    monitor.stop()  # never started: checks what is queued here
    monitor.process_pending()
    assert set(statuses) <= {204, 413}
    assert statuses.count(413) == counted(app.registry, "default")["too_large"] - sum(
        1 for b in bodies if b.kind == "gzip_bomb"
    )
    assert_every_request_accounted(counted(app.registry, "default"), len(bodies))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: b"SKT1" + b[:1] + b))
def test_a_drawn_datagram_is_decoded_or_refused_never_raised(datagram: bytes) -> None:
    try:
        decode(datagram)
    except TapFormatError:
        pass


def test_hostile_datagrams_are_counted_and_never_stop_the_receiver(baseline: Baseline) -> None:
    app = Sidecar({"default": baseline}, max_samples_per_second=1e9, window_seconds=3600)
    rng = random.Random(3)
    for _ in range(2_000):
        app.tap_datagram(
            b"SKT1" + rng.choice([b"S", b"C", b"X"]) + rng.randbytes(rng.randint(0, 80))
        )
    results = app.counts.datagrams
    assert sum(results.values()) == 2_000
    assert results["invalid"] > 1_000
    assert len(app.ledger) <= app.ledger.max_processes


# -- memory -------------------------------------------------------------------------------


def _unknown_names_body(rng: random.Random) -> bytes:
    rows = [{"x": 1.0, "c": "a", **{rng.randbytes(8).hex(): 1.0 for _ in range(50)}}]
    return orjson.dumps(rows)


def test_a_flood_of_random_feature_names_does_not_grow_memory(baseline: Baseline) -> None:
    monitor = Monitor(baseline, registry=None, evidence=EvidenceOptions(per_feature=8))
    rng = random.Random(1)

    def flood(n: int) -> None:
        for _ in range(n):
            monitor.submit(Sample([_unknown_names_body(rng)]))
        monitor.process_pending()
        monitor.close_window()
        monitor.snapshot()

    flood(500)  # warm-up: caches, windows, evidence rings
    tracemalloc.start()
    try:
        flood(500)
        start = tracemalloc.take_snapshot()
        flood(3_000)  # 150,000 names never seen before
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in end.compare_to(start, "filename"))
    assert grown < 256 * 1024, grown
    assert monitor.snapshot().totals[0].unknown_features == 4_000 * 50  # counted, not named
