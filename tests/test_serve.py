"""`skew-sidecar serve`: the sidecar app over real HTTP (uvicorn on loopback, httpx), its
routing, settings and command line. The join logic alone is in test_cloudevents.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.types import Message

from sidecar import Baseline
from sidecar.cli import build_parser, main
from sidecar.evidence import EvidenceOptions
from sidecar.models import Routes, model_from_path, parse_baseline_spec
from sidecar.profile import ProfileOptions
from sidecar.serve import ServeSettings, Sidecar
from tests.asgi import request
from tests.servers import eventually, serve

TIMEOUT = httpx.Timeout(5.0)
ROW = orjson.dumps({"x": 1.0, "c": "a"})
REQUEST = orjson.dumps({"instances": [{"x": 1.0, "c": "a"}, {"x": 2.0, "c": "b"}]})
RESPONSE = orjson.dumps({"predictions": [0.5, 0.6]})


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    """x: numbers 0..99; c: "a" | "b" | "c"; score: the model output 0..0.9."""
    rows = [{"x": float(i % 100), "c": "abc"[i % 3], "score": (i % 10) / 10} for i in range(2000)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


@pytest.fixture(scope="module")
def baseline_file(baseline: Baseline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "baseline.json"
    baseline.save(path)
    return path


def sidecar(
    baseline: Baseline, models: tuple[str | None, ...] = (None,), **options: Any
) -> Sidecar:
    """A Sidecar routing like `--baseline` options naming `models` (None: unnamed), all
    with the same baseline, its own registry, and no window closing on the clock."""
    routes = Routes.from_specs(list(models))
    options.setdefault("window_seconds", 3600)
    return Sidecar(dict.fromkeys(routes.models, baseline), routes=routes, **options)


def value(app: Sidecar, name: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(name, labels)


def ce(
    kind: str, key: str, model: str | None = "default", flavour: str = "kserve"
) -> dict[str, str]:
    """Headers of a payload-logger event, as KServe or Seldon send them."""
    if flavour == "kserve":
        headers = {"ce-id": key, "ce-type": f"org.kubeflow.serving.inference.{kind}"}
    else:  # a fresh ce-id per event; the pair shares ce-requestid
        headers = {
            "ce-id": str(uuid.uuid4()),
            "ce-requestid": key,
            "ce-type": f"io.seldon.serving.inference.{kind}",
        }
    headers.update(
        {
            "ce-specversion": "1.0",
            "ce-source": "http://model:8080/",
            "content-type": "application/json",
        }
    )
    if model is not None:
        headers["ce-inferenceservicename"] = model
    return headers


# -- the mirror receiver --------------------------------------------------------------


def test_mirrored_requests_on_any_path_and_host_are_answered_204_and_checked(
    baseline: Baseline,
) -> None:
    app = sidecar(baseline)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        statuses = [
            client.post("/predict", content=ROW).status_code,
            # Envoy and Istio add -shadow to the Host of a mirrored request.
            client.post("/score", content=ROW, headers={"host": "churn-shadow:8080"}).status_code,
            client.put("/v1/models/churn:predict", content=REQUEST).status_code,
        ]
        responses = [client.post("/predict", content=ROW) for _ in range(2)]
    assert statuses == [204, 204, 204]
    assert [(r.status_code, r.content) for r in responses] == [(204, b"")] * 2
    # After shutdown: everything queued was checked.
    assert value(app, "skew_requests_seen_total", model="default") == 5
    assert value(app, "skew_requests_sampled_total", model="default") == 5
    assert value(app, "skew_rows_checked_total", model="default") == 6
    assert value(app, "skew_feature_values_total", model="default", feature="x") == 6


def test_a_mirrored_request_is_answered_at_once_while_its_monitor_is_busy(
    baseline: Baseline,
) -> None:
    app = sidecar(baseline)
    monitor = app.monitors["default"]
    release = threading.Event()
    check = monitor.process_pending

    def busy() -> int:
        release.wait(10)
        return check()

    monitor.process_pending = busy  # type: ignore[method-assign]
    try:
        with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            statuses = [client.post("/predict", content=ROW).status_code for _ in range(3)]
            queued = value(app, "skew_queue_depth", model="default")
            checked = value(app, "skew_rows_checked_total", model="default")
            release.set()
    finally:
        release.set()
    assert statuses == [204, 204, 204]
    assert (queued, checked) == (3, 0)  # answered while nothing had been checked yet
    assert value(app, "skew_rows_checked_total", model="default") == 3


def test_bodies_over_the_cap_are_answered_413_and_counted_as_too_large(
    baseline: Baseline,
) -> None:
    app = sidecar(baseline, max_body_bytes=1000)
    exactly = orjson.dumps({"x": 1.0, "c": "a", "pad": ""})
    exactly = exactly.replace(b'""', b'"' + b"." * (1000 - len(exactly)) + b'"')
    assert len(exactly) == 1000

    def chunked() -> Iterator[bytes]:
        yield from [b" " * 600] * 3  # no Content-Length: the cap is found while reading

    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        declared = client.post("/predict", content=b" " * 5000)
        streamed = client.post("/predict", content=chunked())
        at_cap = client.post("/predict", content=exactly)
        event = client.post("/", content=b" " * 5000, headers=ce("request", "big"))
    assert (declared.status_code, declared.text) == (413, "body larger than max_body_bytes (1000)")
    assert (streamed.status_code, at_cap.status_code, event.status_code) == (413, 204, 413)
    assert value(app, "skew_samples_dropped_total", model="default", reason="too_large") == 3
    assert value(app, "skew_rows_checked_total", model="default") == 1
    assert value(app, "skew_sidecar_pending_exchanges") == 0


def test_a_body_over_the_cap_is_not_read_beyond_the_cap(baseline: Baseline) -> None:
    app = sidecar(baseline, max_body_bytes=1000)

    async def post(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        """(status, body messages the app received)"""
        messages: list[Message] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        received = 0
        statuses: list[int] = []

        async def receive() -> Message:
            nonlocal received
            received += 1
            return messages[received - 1]

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
        await app(scope, receive, send)
        return statuses[0], received

    # 400-byte chunks: the third passes the cap; the last two are never asked for.
    assert asyncio.run(post([b" " * 400] * 5, [])) == (413, 3)
    # A declared length over the cap: answered before reading anything.
    assert asyncio.run(post([b" " * 400] * 5, [(b"content-length", b"2000")])) == (413, 0)
    assert value(app, "skew_samples_dropped_total", model="default", reason="too_large") == 2
    assert value(app, "skew_requests_sampled_total", model="default") == 0


def test_sample_rate_zero_counts_requests_as_seen_but_reads_no_body(baseline: Baseline) -> None:
    app = sidecar(baseline, sample_rate=0.0)
    mirrored = asyncio.run(request(app, path="/predict", chunks=[ROW]))
    event = asyncio.run(
        request(app, path="/", chunks=[REQUEST], headers=_pairs(ce("request", "k")))
    )
    assert (mirrored.status, event.status) == (204, 200)
    assert value(app, "skew_requests_seen_total", model="default") == 2
    assert value(app, "skew_requests_sampled_total", model="default") == 0
    assert value(app, "skew_sidecar_cloudevents_total", result="accepted") == 1
    assert len(app.joiner) == 0


def test_both_halves_of_an_exchange_get_the_same_sampling_decision(baseline: Baseline) -> None:
    app = sidecar(baseline, sample_rate=0.5, join_wait_seconds=30)

    async def post_all() -> None:
        for i in range(40):
            for kind, body in (("response", RESPONSE), ("request", REQUEST)):
                exchange = await request(
                    app, path="/", chunks=[body], headers=_pairs(ce(kind, f"k{i}"))
                )
                assert exchange.status == 200

    asyncio.run(post_all())
    # Sampled: CRC-32 of the key below sample_rate * 2**32, which holds for 22 of these
    # 40 keys; each one joined, none waits for an unsampled other half.
    assert value(app, "skew_sidecar_exchanges_total", outcome="joined") == 22
    assert len(app.joiner) == 0
    assert value(app, "skew_sidecar_cloudevents_total", result="accepted") == 80
    assert value(app, "skew_requests_seen_total", model="default") == 40
    assert value(app, "skew_requests_sampled_total", model="default") == 22


def test_the_per_model_cap_drops_and_counts_samples_beyond_it(baseline: Baseline) -> None:
    app = sidecar(baseline, max_samples_per_second=2, clock=lambda: 100.0)  # time stands still
    statuses = [asyncio.run(request(app, chunks=[ROW])).status for _ in range(5)]
    assert statuses == [204] * 5
    assert value(app, "skew_requests_seen_total", model="default") == 5
    assert value(app, "skew_requests_sampled_total", model="default") == 2
    assert value(app, "skew_samples_dropped_total", model="default", reason="rate_limited") == 3


def _pairs(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


def test_other_methods_and_structured_cloudevents_get_a_clear_answer(baseline: Baseline) -> None:
    app = sidecar(baseline)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        get = client.get("/predict")
        structured = client.post(
            "/", content=b"{}", headers={"content-type": "application/cloudevents+json"}
        )
        invalid = client.post("/", content=REQUEST, headers={**ce("request", "k"), "ce-id": ""})
        missing = client.post("/", content=REQUEST, headers={"ce-specversion": "1.0"})
    assert (get.status_code, get.headers["allow"]) == (405, "POST, PUT")
    assert structured.status_code == 415
    assert structured.text.startswith("structured-mode CloudEvents are not supported")
    assert (invalid.status_code, invalid.text) == (400, "invalid CloudEvent: ce-id: empty")
    assert missing.status_code == 400
    assert (
        missing.text == "invalid CloudEvent: ce-type: missing (a binary-mode CloudEvent needs it)"
    )
    assert value(app, "skew_sidecar_cloudevents_total", result="invalid") == 3
    assert value(app, "skew_requests_seen_total", model="default") == 0


# -- payload-logger CloudEvents --------------------------------------------------------


@pytest.mark.parametrize("flavour", ["kserve", "seldon"])
@pytest.mark.parametrize("first", ["request", "response"])
def test_request_and_response_events_are_joined_in_either_order(
    baseline: Baseline, flavour: str, first: str
) -> None:
    app = sidecar(baseline, join_wait_seconds=30)
    bodies = {"request": REQUEST, "response": RESPONSE}
    second = "response" if first == "request" else "request"
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        one = client.post("/", content=bodies[first], headers=ce(first, "id-1", flavour=flavour))
        pending = value(app, "skew_sidecar_pending_exchanges")
        two = client.post("/", content=bodies[second], headers=ce(second, "id-1", flavour=flavour))
        joined = value(app, "skew_sidecar_exchanges_total", outcome="joined")
    assert (one.status_code, one.content, two.status_code) == (200, b"", 200)
    assert (pending, joined) == (1, 1)
    assert value(app, "skew_sidecar_exchanges_total", outcome="flushed") == 0
    assert value(app, "skew_sidecar_cloudevents_total", result="accepted") == 2
    assert value(app, "skew_requests_seen_total", model="default") == 1
    assert value(app, "skew_requests_sampled_total", model="default") == 1
    assert value(app, "skew_rows_checked_total", model="default") == 2
    assert value(app, "skew_feature_values_total", model="default", feature="score") == 2


def test_a_duplicate_event_is_ignored(baseline: Baseline) -> None:
    app = sidecar(baseline, join_wait_seconds=30)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        statuses = [
            client.post("/", content=REQUEST, headers=ce("request", "id-1")).status_code,
            client.post("/", content=REQUEST, headers=ce("request", "id-1")).status_code,
            client.post("/", content=RESPONSE, headers=ce("response", "id-1")).status_code,
            client.post("/", content=RESPONSE, headers=ce("response", "id-1")).status_code,
            client.post("/", content=REQUEST, headers=ce("request", "id-1")).status_code,
        ]
    assert statuses == [200] * 5
    assert value(app, "skew_sidecar_cloudevents_total", result="duplicate") == 3
    assert value(app, "skew_sidecar_cloudevents_total", result="accepted") == 2
    assert value(app, "skew_sidecar_exchanges_total", outcome="joined") == 1
    assert value(app, "skew_rows_checked_total", model="default") == 2


def test_a_request_whose_response_never_comes_is_checked_after_the_wait(
    baseline: Baseline,
) -> None:
    app = sidecar(baseline, join_wait_seconds=0.2)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        started = time.monotonic()
        assert client.post("/", content=REQUEST, headers=ce("request", "alone")).status_code == 200
        assert value(app, "skew_sidecar_pending_exchanges") == 1
        assert eventually(lambda: value(app, "skew_sidecar_pending_exchanges") == 0)
        waited = time.monotonic() - started
    assert 0.2 <= waited < 2
    assert value(app, "skew_sidecar_exchanges_total", outcome="timed_out") == 1
    assert value(app, "skew_sidecar_exchanges_total", outcome="flushed") == 0
    assert value(app, "skew_rows_checked_total", model="default") == 2
    assert value(app, "skew_feature_values_total", model="default", feature="score") == 0


def test_the_pending_table_is_bounded_and_shutdown_checks_what_still_waits(
    baseline: Baseline,
) -> None:
    app = sidecar(baseline, join_wait_seconds=30, max_pending=2)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for key in ("a", "b", "c"):
            assert client.post("/", content=REQUEST, headers=ce("request", key)).status_code == 200
        evicted = value(app, "skew_sidecar_exchanges_total", outcome="evicted")
        pending = value(app, "skew_sidecar_pending_exchanges")
        held = value(app, "skew_sidecar_pending_bytes")
    assert (evicted, pending, held) == (1, 2, 2 * len(REQUEST))
    assert value(app, "skew_sidecar_pending_bytes") == 0
    assert value(app, "skew_sidecar_exchanges_total", outcome="flushed") == 2
    assert value(app, "skew_requests_seen_total", model="default") == 3
    assert value(app, "skew_rows_checked_total", model="default") == 6


def test_seldon_feedback_events_are_acknowledged_and_ignored(baseline: Baseline) -> None:
    app = sidecar(baseline)
    headers = {**ce("request", "k", flavour="seldon"), "ce-type": "io.seldon.serving.feedback"}
    exchange = asyncio.run(request(app, path="/", chunks=[b"{}"], headers=_pairs(headers)))
    assert exchange.status == 200
    assert value(app, "skew_sidecar_cloudevents_total", result="ignored") == 1
    assert len(app.joiner) == 0


# -- several models --------------------------------------------------------------------


def test_samples_are_routed_by_model_path_or_inference_service_name(baseline: Baseline) -> None:
    app = sidecar(baseline, models=(None, "churn", "fraud"), join_wait_seconds=30)
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for path in (
            "/v1/models/churn:predict",
            "/v1/models/churn/versions/2:predict",
            "/v2/models/fraud/infer",
            "/v2/models/fraud/versions/7/infer",
            "/predict",  # no model named: the unnamed baseline
            "/v1/models/other:predict",  # no baseline of its own: the unnamed one too
        ):
            assert client.post(path, content=ROW).status_code == 204
        for kind, body in (("request", REQUEST), ("response", RESPONSE)):
            response = client.post("/", content=body, headers=ce(kind, "e1", model="fraud"))
            assert response.status_code == 200
    seen = {m: value(app, "skew_requests_seen_total", model=m) for m in app.monitors}
    rows = {m: value(app, "skew_rows_checked_total", model=m) for m in app.monitors}
    assert seen == {"churn": 2, "fraud": 3, "default": 2}
    assert rows == {"churn": 2, "fraud": 4, "default": 2}
    assert value(app, "skew_sidecar_unknown_model_total") == 0


def test_an_unknown_model_is_counted_and_never_becomes_a_label(baseline: Baseline) -> None:
    app = sidecar(baseline, models=("churn", "fraud"))  # named only: no catch-all
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        statuses = [
            client.post("/v1/models/mystery-model:predict", content=ROW).status_code,
            client.post("/predict", content=ROW).status_code,  # names no model at all
            client.post(
                "/", content=REQUEST, headers=ce("request", "e1", model="mystery-model")
            ).status_code,
        ]
        exposition = client.get("/metrics").text
    assert statuses == [204, 204, 200]
    assert value(app, "skew_sidecar_unknown_model_total") == 3
    assert "skew_sidecar_unknown_model_total 3.0" in exposition
    assert "mystery" not in exposition
    for model in ("churn", "fraud"):
        assert value(app, "skew_requests_seen_total", model=model) == 0
    assert len(app.joiner) == 0


# -- health and lifecycle ---------------------------------------------------------------


def test_readyz_and_healthz_follow_the_lifespan_and_the_monitor_threads(
    baseline: Baseline,
) -> None:
    app = sidecar(baseline, models=("churn", "fraud"))

    def get(path: str) -> tuple[int, bytes]:
        exchange = asyncio.run(request(app, method="GET", path=path))
        return exchange.status, exchange.body

    assert get("/readyz") == (503, b"not ready")
    assert get("/healthz")[0] == 503
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        ready = client.get("/readyz")
        healthy = client.get("/healthz")
        app.monitors["fraud"].stop()  # a worker thread gone
        unhealthy = client.get("/healthz")
        still_ready = client.get("/readyz/").status_code
    assert (ready.status_code, ready.text) == (200, "ready")
    assert (healthy.status_code, healthy.text) == (200, "ok")
    assert unhealthy.status_code == 503
    assert unhealthy.text == "monitor thread not running for model(s): fraud"
    assert still_ready == 200
    assert get("/readyz") == (503, b"not ready")  # after shutdown


def test_shutdown_flushes_the_last_window_of_every_model(baseline: Baseline) -> None:
    app = sidecar(baseline, models=("churn", "fraud"))  # one-hour windows: only shutdown
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for i in range(12):
            body = orjson.dumps({"x": 500.0 + i, "c": "a"})
            assert client.post("/v1/models/churn:predict", content=body).status_code == 204
        assert client.post("/v2/models/fraud/infer", content=ROW).status_code == 204
        assert value(app, "skew_window_rows", model="churn") is None
    assert not any(m.running for m in app.monitors.values())
    assert value(app, "skew_window_rows", model="churn") == 12
    assert value(app, "skew_window_rows", model="fraud") == 1
    assert (value(app, "skew_feature_psi", model="churn", feature="x") or 0) > 1
    assert (value(app, "skew_window_end_timestamp_seconds", model="churn") or 0) > 0


@contextlib.contextmanager
def cli_process(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """`skew-sidecar serve ARGS` in a child process (with `env` added to the environment);
    its stderr lines arrive in a queue. Leaving the block kills the process if it is
    still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    stderr = process.stderr
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        reader.join(5)
        stderr.close()


def _wait_for_line(lines: queue.Queue[str], pattern: str, seen: list[str]) -> re.Match[str]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def test_sigterm_stops_accepting_and_flushes_the_last_window(baseline_file: Path) -> None:
    args = ("--baseline", str(baseline_file), "--port", "0", "--window-seconds", "3600")
    seen: list[str] = []
    with cli_process(*args) as (process, lines):
        port = _wait_for_line(lines, r"Uvicorn running on http://127\.0\.0\.1:(\d+)", seen)[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
            assert client.get("/readyz").status_code == 200
            for _ in range(3):
                assert client.post("/predict", content=ROW).status_code == 204
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        _wait_for_line(lines, r"model default: stopped; last window 3 rows; 1 window\(s\)", seen)
        _wait_for_line(lines, r"stopped: every last window flushed", seen)
    # uvicorn shuts down gracefully, then re-raises SIGTERM to end as its default would.
    assert process.returncode in (0, -signal.SIGTERM)
    text = "".join(seen)
    assert "Traceback" not in text
    assert text.index("ready: model(s) default") < text.index("shutting down")


def test_a_bad_baseline_fails_startup_with_one_line_and_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text('{"schema_version": 1, "features": ')
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--baseline", f"churn={bad}", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"skew-sidecar: error: model 'churn': {bad}")
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no baseline: give --baseline PATH or --baseline NAME=PATH"),
        (["-b", "a.json", "-b", "b.json"], "2 baselines without a model name: name them"),
        (["-b", "churn=a.json", "-b", "churn=b.json"], "model 'churn' has more than one"),
        (["-b", "{missing}"], "model 'default': {missing}"),
        (["-b", "{good}", "--sample-rate", "2"], "--sample-rate (SKEW_SIDECAR_SAMPLE_RATE) must"),
    ],
)
def test_bad_serve_options_exit_2_with_a_message(
    args: list[str],
    message: str,
    baseline_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SKEW_SIDECAR_BASELINE", raising=False)
    paths = {"missing": str(tmp_path / "nope.json"), "good": str(baseline_file)}
    assert main(["serve", *(a.format(**paths) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skew-sidecar: error: " + message.format(**paths)), err


def test_without_uvicorn_serve_prints_an_install_hint(
    baseline_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    assert main(["serve", "--baseline", str(baseline_file)]) == 2
    assert capsys.readouterr().err == (
        "skew-sidecar: error: the serve command needs uvicorn: pip install 'skew-sidecar[serve]'\n"
    )


# -- settings -------------------------------------------------------------------------


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    environ = {
        "SKEW_SIDECAR_BASELINE": "churn=/b/churn.json, /b/default.json",
        "SKEW_SIDECAR_HOST": "0.0.0.0",
        "SKEW_SIDECAR_PORT": "9000",
        "SKEW_SIDECAR_SAMPLE_RATE": "0.25",
        "OTHER_PORT": "1",
    }
    settings = ServeSettings.resolve({"port": 9100, "host": None, "baseline": None}, environ)
    assert settings == ServeSettings(
        baseline=("churn=/b/churn.json", "/b/default.json"),
        host="0.0.0.0",
        port=9100,  # the flag wins
        sample_rate=0.25,
    )
    assert ServeSettings.resolve({"baseline": ["x.json"]}, environ).baseline == ("x.json",)
    assert ServeSettings.resolve({}, {}) == ServeSettings()


def test_evidence_settings_come_from_flags_and_variables_and_are_off_by_default() -> None:
    assert ServeSettings().evidence_options() is None
    args = build_parser().parse_args(
        ["serve", "--evidence", "5", "--redact-fields", "email, phone", "--redact-fields", "ssn"]
    )
    environ = {
        "SKEW_SIDECAR_HASH_FIELDS": "user_id,account",
        "SKEW_SIDECAR_REDACTION_KEY": "s3cret",
        "SKEW_SIDECAR_REQUEST_ID_HEADER": "ce-id",
        "SKEW_SIDECAR_REDACT_FIELDS": "ignored: the flag wins",
    }
    settings = ServeSettings.resolve(vars(args), environ)
    assert settings.evidence_options() == EvidenceOptions(
        per_feature=5,
        max_total=1000,
        redact=("email", "phone", "ssn"),
        hash=("user_id", "account"),
        key=b"s3cret",
        request_id_header="ce-id",
    )
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SKEW_SIDECAR_EVIDENCE": "-1"}, "--evidence (SKEW_SIDECAR_EVIDENCE) must be 0 (off)"),
        (
            {"SKEW_SIDECAR_REDACTION_KEY": "k" * 65},
            "--redaction-key (SKEW_SIDECAR_REDACTION_KEY) must be at most 64 bytes, got 65",
        ),
        ({"SKEW_SIDECAR_PORT": "http"}, "Config 'SKEW_SIDECAR_PORT' has value 'http'. Not a valid"),
        (
            {"SKEW_SIDECAR_MAX_BODY_BYTES": "0"},
            "--max-body-bytes (SKEW_SIDECAR_MAX_BODY_BYTES) must be at least 1, got 0",
        ),
        (
            {"SKEW_SIDECAR_JOIN_WAIT_SECONDS": "-1"},
            "--join-wait-seconds (SKEW_SIDECAR_JOIN_WAIT_SECONDS) must be positive, got -1.0",
        ),
        (
            {"SKEW_SIDECAR_LOG_LEVEL": "loud"},
            "--log-level (SKEW_SIDECAR_LOG_LEVEL) must be one of critical, error, warning",
        ),
    ],
)
def test_a_bad_setting_is_named_with_its_flag_or_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        ServeSettings.resolve({}, environ)
    assert str(info.value).startswith(message)


# -- model names (sidecar/models.py) -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/models/churn:predict", "churn"),
        ("/v1/models/churn/versions/3:predict", "churn"),
        ("/v1/models/churn/labels/stable:predict", "churn"),
        ("/v2/models/churn/infer", "churn"),
        ("/v2/models/churn/infer/", "churn"),
        ("/v2/models/churn/versions/2/infer", "churn"),
        ("/v2/models/my.model_v1-2/infer", "my.model_v1-2"),
        ("/v1/models/churn:explain", None),
        ("/v1/models/churn", None),
        ("/v2/models/churn/ready", None),
        ("/v2/models/churn", None),
        ("/v2/models//infer", None),
        ("/api/v1/models/churn:predict", None),
        ("/predict", None),
        ("/", None),
    ],
)
def test_model_from_path_reads_the_multi_model_inference_routes(
    path: str, model: str | None
) -> None:
    assert model_from_path(path) == model


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("baseline.json", (None, "baseline.json")),
        ("churn=baseline.json", ("churn", "baseline.json")),
        ("churn=dir/a=b.json", ("churn", "dir/a=b.json")),
        ("runs/lr=0.1/baseline.json", (None, "runs/lr=0.1/baseline.json")),
    ],
)
def test_baseline_specs_are_name_equals_path_or_a_path(
    spec: str, parsed: tuple[str | None, str]
) -> None:
    assert parse_baseline_spec(spec) == parsed


@pytest.mark.parametrize(
    ("names", "routes", "resolved"),
    [
        # One unnamed baseline: "check everything against this".
        ([None], Routes(frozenset({"default"}), "default", True), ["default"] * 3),
        # One named baseline: samples without a name go to it, other names do not.
        (["churn"], Routes(frozenset({"churn"}), "churn"), ["churn", "churn", None]),
        (["churn", "fraud"], Routes(frozenset({"churn", "fraud"})), ["churn", None, None]),
        (
            [None, "churn"],
            Routes(frozenset({"churn", "default"}), "default", True),
            ["churn", "default", "default"],
        ),
    ],
)
def test_routes_send_named_unnamed_and_unknown_samples_where_documented(
    names: list[str | None], routes: Routes, resolved: list[str | None]
) -> None:
    assert Routes.from_specs(names) == routes
    assert [routes.resolve(n) for n in ("churn", None, "mystery")] == resolved


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([None, "default"], "an unnamed --baseline is model 'default', and --baseline default="),
        ([], "no baseline"),
    ],
)
def test_conflicting_baseline_names_are_rejected(names: list[str | None], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Routes.from_specs(names)


# -- evidence ------------------------------------------------------------------------------


def test_the_sidecar_keeps_evidence_of_mirrored_requests_with_their_ids(
    baseline: Baseline,
) -> None:
    evidence = EvidenceOptions(hash=("c",), key=b"k")
    app = sidecar(baseline, evidence=evidence)
    openmetrics = {"accept": "application/openmetrics-text; version=1.0.0"}
    with serve(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        bad = orjson.dumps({"x": 500.0, "c": "zzz"})
        client.post("/predict", content=bad, headers={"x-request-id": "req-1"})
        client.post("/predict", content=ROW, headers={"x-request-id": "req-2"})  # clean
        assert eventually(lambda: value(app, "skew_rows_checked_total", model="default") == 2)
        data = client.get("/skew.json").json()
        metrics = client.get("/metrics", headers=openmetrics).text
    features = {f["name"]: f for f in data["models"][0]["features"]}
    assert [(e["value"], e["request_id"]) for e in features["x"]["evidence"]] == [
        ("500.0", "req-1")
    ]
    assert features["c"]["evidence"][0]["value"].startswith("blake2b:")
    high = 'skew_feature_out_of_range_total{feature="x",model="default",side="high"} 1.0'
    assert f'{high} # {{request_id="req-1"}} 1.0 ' in metrics
