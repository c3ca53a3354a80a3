"""Evidence: recent offending values per feature, bounded, redacted, found in the worker."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar import Baseline, EvidenceOptions, SkewMiddleware
from sidecar.evidence import (
    PREVIEW_CHARS,
    REDACTED,
    REQUEST_ID_CHARS,
    Evidence,
    EvidenceLog,
    Redactor,
    digest,
    preview,
    request_id,
)
from sidecar.metrics import collector_for, exposition
from sidecar.worker import Monitor, Sample
from tests.asgi import request

SECRET = "alice@example.com"


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [
        {"x": float(i % 100), "c": "abc"[i % 3], "email": f"u{i % 4}@x", "user": {"ssn": "s"}}
        for i in range(1000)
    ]
    return Baseline.from_records(rows)


def monitor(baseline: Baseline, evidence: EvidenceOptions | None, **options: Any) -> Monitor:
    return Monitor(baseline, model="m", registry=CollectorRegistry(), evidence=evidence, **options)


def sample(row: dict[str, Any], rid: str | None = None) -> Sample:
    headers = [(b"x-request-id", rid.encode())] if rid is not None else []
    return Sample([orjson.dumps(row)], headers=headers)


def entry(feature: str, n: int) -> Evidence:
    return Evidence(feature, "out_of_range/high", str(n), f"r{n}", float(n))


# -- the log ------------------------------------------------------------------------------


def test_the_log_keeps_the_newest_entries_per_feature() -> None:
    log = EvidenceLog(per_feature=3, max_total=100)
    log.add(entry("x", n) for n in range(10))
    assert [e.value for e in log.recent()["x"]] == ["9", "8", "7"]
    assert len(log) == 3


def test_past_the_total_bound_the_oldest_entry_of_any_feature_goes() -> None:
    log = EvidenceLog(per_feature=10, max_total=4)
    log.add([entry("a", 1), entry("b", 2), entry("a", 3), entry("c", 4), entry("b", 5)])
    recent = log.recent()
    assert len(log) == 4
    assert {name: [e.value for e in entries] for name, entries in recent.items()} == {
        "a": ["3"],
        "b": ["5", "2"],
        "c": ["4"],
    }


def test_a_flood_of_offending_rows_keeps_every_bound() -> None:
    log = EvidenceLog(per_feature=5, max_total=50)
    for n in range(20_000):
        log.add([entry(f"f{n % 37}", n)])
    recent = log.recent()
    assert len(log) == sum(map(len, recent.values())) == 50
    assert max(map(len, recent.values())) <= 5
    assert len(log._order) <= 2 * log.max_total + 1  # the bookkeeping stays bounded too
    assert min(e.time for entries in recent.values() for e in entries) >= 20_000 - 50 - 37


def test_exemplars_are_the_newest_entry_with_a_request_id_per_feature_and_reason() -> None:
    log = EvidenceLog(per_feature=5, max_total=50)
    log.add([entry("x", 1), Evidence("x", "out_of_range/high", "2", None, 2.0)])
    log.add([Evidence("x", "missing", "null", "r3", 3.0)])
    exemplars = log.exemplars()
    assert exemplars[("x", "out_of_range/high")].request_id == "r1"
    assert exemplars[("x", "missing")].request_id == "r3"


# -- what is kept of a value ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12, "12"),
        ("12", '"12"'),
        (1.5, "1.5"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Infinity"),
        (True, "true"),
        (None, "null"),
        ([1, 2, 3, 4, 5, 6, 7], "[1, 2, 3, 4, 5, … 2 more]"),
        ({"a": [1, {"b": [2]}]}, '{"a": [1, {"b": […]}]}'),
        (10**1000, "<int of 3322 bits>"),
        ('<script>"x"</script>', '"<script>\\"x\\"</script>"'),
    ],
)
def test_a_preview_is_short_json_like_text(value: Any, text: str) -> None:
    assert preview(value) == text


@pytest.mark.parametrize(
    "value",
    ["y" * 100_000, [list(range(1000))] * 1000, {f"k{i}": "v" * 500 for i in range(1000)}],
    ids=["long string", "big tensor", "wide object"],
)
def test_a_preview_of_a_huge_value_stays_short(value: Any) -> None:
    text = preview(value)
    assert len(text) <= PREVIEW_CHARS
    assert text.endswith(("…", "]", "}"))


def test_redacted_fields_keep_nothing_and_hashed_fields_a_keyed_digest() -> None:
    options = EvidenceOptions(redact=("user",), hash=("email",), key=b"k" * 32)
    redactor = Redactor(options, ["x", "email", "user.ssn", "profile"])
    assert redactor.kept("user.ssn", SECRET) == REDACTED  # nested under a redacted name
    assert redactor.kept("x", 1.5) == "1.5"
    expected = hashlib.blake2b(b'str:"' + SECRET.encode() + b'"', key=b"k" * 32, digest_size=8)
    assert redactor.kept("email", SECRET) == "blake2b:" + expected.hexdigest()
    assert digest(SECRET, b"another key") != expected.hexdigest()
    assert digest("12", b"k") != digest(12, b"k")  # the type is part of what is hashed


def test_a_feature_holding_a_redacted_field_is_redacted_too() -> None:
    # "profile" was a string in training; a serving object may carry profile.email.
    redactor = Redactor(EvidenceOptions(redact=("profile.email",)), ["profile"])
    assert redactor.kept("profile", {"email": SECRET}) == REDACTED


def test_without_a_key_each_process_hashes_with_a_random_one() -> None:
    a = Redactor(EvidenceOptions(hash=("email",)), ["email"])
    b = Redactor(EvidenceOptions(hash=("email",)), ["email"])
    assert a.kept("email", SECRET) != b.kept("email", SECRET)
    assert a.kept("email", SECRET) == a.kept("email", SECRET)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"per_feature": 0}, "per_feature must be a positive integer, got 0"),
        ({"max_total": 1.5}, "max_total must be a positive integer, got 1.5"),
        ({"redact": "email"}, "redact must be a collection of field names, got the string"),
        ({"key": b""}, "key must be 1 to 64 bytes, got 0 bytes"),
        ({"key": b"k" * 65}, "key must be 1 to 64 bytes, got 65 bytes"),
        ({"request_id_header": " x-id"}, "request_id_header must be a header name, got ' x-id'"),
    ],
)
def test_bad_evidence_options_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match="EvidenceOptions: " + message):
        EvidenceOptions(**options)


def test_the_key_never_shows_in_the_options_repr() -> None:
    assert "secret-key" not in repr(EvidenceOptions(key=b"secret-key"))


def test_request_ids_are_printable_and_short() -> None:
    header = b"x-request-id"
    assert request_id([(b"X-Request-Id", b" abc-1 ")], header) == "abc-1"
    assert request_id([(header, b"a\x00b\xffc")], header) == "a?b?c"
    assert request_id([(header, b"r" * 500)], header) == "r" * REQUEST_ID_CHARS
    assert request_id([(b"other", b"x")], header) is None


# -- in the monitor -------------------------------------------------------------------------


def test_the_monitor_keeps_offending_values_with_their_request_ids(baseline: Baseline) -> None:
    m = monitor(baseline, EvidenceOptions(per_feature=8))
    m.submit(sample({"x": 500.0, "c": "a", "email": "u1@x", "user": {"ssn": "s"}}, "r1"))
    m.submit(sample({"x": "12", "c": "zzz", "email": "u1@x", "user": {"ssn": "s"}}, "r2"))
    m.submit(sample({"x": 5.0, "c": "b", "email": "u1@x", "user": {"ssn": "s"}}))  # clean
    m.process_pending()
    assert m.evidence is not None
    recent = m.evidence.recent()
    assert [(e.reason, e.value, e.request_id) for e in recent["x"]] == [
        ("type_mismatch", '"12"', "r2"),
        ("out_of_range/high", "500.0", "r1"),
    ]
    assert [(e.reason, e.value) for e in recent["c"]] == [("unseen_category", '"zzz"')]
    assert set(recent) == {"x", "c"}


def test_rows_of_one_request_share_its_id_and_rows_without_one_have_none(
    baseline: Baseline,
) -> None:
    m = monitor(baseline, EvidenceOptions())
    rows = [{"x": 1000.0 + i} for i in range(3)]
    m.submit(Sample([orjson.dumps(rows)], headers=[(b"x-request-id", b"batch-7")]))
    m.submit(Sample([orjson.dumps({"x": -1.0})]))
    m.process_pending()
    assert m.evidence is not None
    assert [(e.value, e.request_id) for e in m.evidence.recent()["x"]] == [
        ("-1.0", None),
        ("1002.0", "batch-7"),
        ("1001.0", "batch-7"),
        ("1000.0", "batch-7"),
    ]


def test_one_batch_fills_at_most_a_quarter_of_a_feature_s_ring(baseline: Baseline) -> None:
    m = monitor(baseline, EvidenceOptions(per_feature=8), batch_rows=10)
    for i in range(30):  # three batches of ten rows
        m.submit(sample({"x": 1000.0 + i}, f"r{i}"))
    m.process_pending()
    assert m.evidence is not None
    ids = [e.request_id for e in m.evidence.recent()["x"]]
    assert ids == ["r29", "r28", "r19", "r18", "r9", "r8"]  # the last two of each batch


def test_a_flood_of_bad_rows_keeps_the_monitor_within_its_bounds(baseline: Baseline) -> None:
    m = monitor(baseline, EvidenceOptions(per_feature=4, max_total=6), batch_rows=64)
    for i in range(300):
        rows = [{"x": "bad", "c": i, "email": [i] * 1000, "user": {"ssn": 1}}] * 20
        m.submit(Sample([orjson.dumps(rows)], headers=[(b"x-request-id", b"r" * 1000)]))
    m.process_pending()
    assert m.evidence is not None
    recent = m.evidence.recent()
    assert len(m.evidence) == sum(map(len, recent.values())) == 6
    for entries in recent.values():
        assert len(entries) <= 4
        for e in entries:
            assert len(e.value) <= PREVIEW_CHARS
            assert e.request_id is not None and len(e.request_id) <= REQUEST_ID_CHARS


def test_optional_features_and_clean_rows_record_nothing(baseline: Baseline) -> None:
    rows = [{"x": float(i), "note": "n" if i % 2 else None} for i in range(200)]
    m = monitor(Baseline.from_records(rows), EvidenceOptions())
    for i in range(50):
        m.submit(sample({"x": float(i), "note": None}, f"r{i}"))
    m.process_pending()
    assert m.evidence is not None and len(m.evidence) == 0


def test_evidence_is_off_by_default_and_exports_no_exemplars(baseline: Baseline) -> None:
    m = monitor(baseline, None)
    m.submit(sample({"x": 500.0}, "r1"))
    m.process_pending()
    assert m.evidence is None
    assert m.snapshot().exemplars == {}


# -- exemplars -------------------------------------------------------------------------------


def test_violation_counters_carry_request_id_exemplars_in_openmetrics(
    baseline: Baseline,
) -> None:
    m = monitor(baseline, EvidenceOptions())
    m.submit(sample({"x": 500.0, "c": "zzz"}, "req-42"))
    m.submit(sample({"x": "12"}, "req-43"))
    m.process_pending()
    lines = openmetrics(m_registry(m)).decode().splitlines()
    with_exemplars = sorted(line for line in lines if " # {" in line)
    assert [line.split(" # ")[0].split("{")[0] for line in with_exemplars] == [
        "skew_feature_missing_total",  # c, email and user.ssn absent from req-43
        "skew_feature_missing_total",
        "skew_feature_missing_total",
        "skew_feature_out_of_range_total",
        "skew_feature_type_mismatch_total",
        "skew_feature_unseen_category_total",
    ]
    high = next(line for line in with_exemplars if 'side="high"' in line)
    assert high.startswith('skew_feature_out_of_range_total{feature="x",model="m",side="high"}')
    assert ' # {request_id="req-42"} 1.0 ' in high


def m_registry(m: Monitor) -> CollectorRegistry:
    """A registry exporting only this monitor."""
    registry = CollectorRegistry()
    collector_for(registry).add(m)
    return registry


def test_the_text_format_is_byte_identical_with_evidence_on(baseline: Baseline) -> None:
    texts = []
    for options in (None, EvidenceOptions()):
        m = monitor(baseline, options)
        m.submit(sample({"x": 500.0, "c": "zzz", "email": "e", "user": {"ssn": 1}}, "req-1"))
        m.process_pending()
        m.counts.batch_sum = 0.0  # the only timings in the output
        m.counts.batch_buckets = [0] * len(m.counts.batch_buckets)
        registry = m_registry(m)
        fast, _ = exposition(registry, "text/plain;version=0.0.4")
        texts.append((fast, generate_latest(registry)))
    assert texts[0] == texts[1]
    assert b"req-1" not in texts[1][0] + texts[1][1]


# -- end to end: the tap, the worker thread, redaction everywhere ----------------------------


async def predict(req: Request) -> Response:
    await req.body()
    return JSONResponse({"ok": True})


def test_evidence_is_found_in_the_worker_thread_not_on_the_event_loop(
    baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    add = EvidenceLog.add

    def spy(self: EvidenceLog, entries: Any) -> None:
        threads.append(threading.current_thread().name)
        add(self, entries)

    monkeypatch.setattr(EvidenceLog, "add", spy)
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    mw = SkewMiddleware(
        app, baseline=baseline, model="m", registry=None, evidence=EvidenceOptions()
    )
    try:
        headers = ((b"content-type", b"application/json"), (b"x-request-id", b"r-1"))
        result = asyncio.run(request(mw, chunks=[orjson.dumps({"x": 500.0})], headers=headers))
        assert result.status == 200
    finally:
        mw.monitor.stop()
    assert threads and set(threads) == {"skew-monitor-m"}


def test_a_sensitive_value_appears_nowhere(
    baseline: Baseline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = CollectorRegistry()
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    options = EvidenceOptions(redact=("email",), hash=("user",), key=b"key")
    mw = SkewMiddleware(
        app,
        baseline=baseline,
        model="m",
        registry=registry,
        evidence=options,
        debug_path="/skew",
    )
    rows = [
        {"x": 500.0, "c": "zzz", "email": SECRET, "user": {"ssn": SECRET}},  # unseen category
        {"x": 1.0, "c": "a", "email": [SECRET], "user": {"ssn": [SECRET]}},  # wrong type
        # Objects flatten: email.nested and user are unknown keys; email, user.ssn absent.
        {"x": 1.0, "c": "a", "email": {"nested": SECRET}, "user": SECRET},
    ]

    async def run() -> list[bytes]:
        headers = ((b"content-type", b"application/json"), (b"x-request-id", b"r-1"))
        await request(mw, chunks=[orjson.dumps(rows)], headers=headers)
        mw.monitor.stop()  # checks what is queued and closes the window
        pages = [await request(mw, "GET", path) for path in ("/skew", "/skew.json")]
        return [page.body for page in pages]

    try:
        html, json = asyncio.run(run())
    finally:
        mw.monitor.stop()
    log = mw.monitor.evidence  # type: ignore[union-attr]
    assert log is not None
    recent = log.recent()
    assert [e.value for e in recent["email"]] == ["(absent)", REDACTED, REDACTED]
    assert [e.value[:8] for e in recent["user.ssn"]] == ["(absent)", "blake2b:", "blake2b:"]
    assert [e.value for e in recent["c"]] == ['"zzz"']  # not sensitive: kept as it was
    assert b"[redacted]" in html and b"blake2b:" in html
    assert b"[redacted]" in json and b"blake2b:" in json
    shown = {
        "page": html,
        "json": json,
        "metrics": exposition(registry, "text/plain")[0],
        "generate_latest": generate_latest(registry),
        "openmetrics": openmetrics(registry),
        "evidence repr": repr(recent).encode(),
        "log": caplog.text.encode(),
    }
    for where, text in shown.items():
        assert b"alice" not in text, where
