from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Message, Receive, Scope, Send

from sidecar import Baseline, BaselineError
from sidecar.metrics import metrics_app
from sidecar.middleware import SkewMiddleware
from sidecar.worker import Sample
from tests.asgi import Lifespan, request


def training_rows(n: int = 2000) -> list[dict[str, Any]]:
    return [{"x": float(i % 100), "c": "abc"[i % 3], "score": (i % 10) / 10} for i in range(n)]


@pytest.fixture
def baseline() -> Baseline:
    from sidecar.profile import ProfileOptions

    return Baseline.from_records(training_rows(), ProfileOptions(prediction=frozenset({"score"})))


async def predict(req: Request) -> Response:
    try:
        body = orjson.loads(await req.body())
    except orjson.JSONDecodeError:
        return JSONResponse({"error": "invalid JSON"}, status_code=400)
    rows = body if isinstance(body, list) else [body]
    return JSONResponse({"predictions": [0.5 for _ in rows]})


async def ignore_body(req: Request) -> Response:
    return JSONResponse({"ok": True})


async def consume(req: Request) -> Response:
    await req.body()
    return JSONResponse({"ok": True})


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/ignore", ignore_body, methods=["POST"]),
            Route("/consume", consume, methods=["POST"]),
            Route("/healthz", ignore_body, methods=["GET", "POST"]),
        ]
    )


_created: list[SkewMiddleware] = []


@pytest.fixture(autouse=True)
def stop_monitors() -> Any:
    """No test leaves a worker thread behind, even when it fails."""
    yield
    while _created:
        _created.pop().monitor.stop()


def tap(baseline: Baseline, **options: Any) -> tuple[SkewMiddleware, CollectorRegistry]:
    registry = CollectorRegistry()
    options.setdefault("window_seconds", 3600)
    options.setdefault("model", "m")
    mw = SkewMiddleware(make_app(), baseline=baseline, registry=registry, **options)
    _created.append(mw)
    return mw, registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model": "m", **labels})


def body(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row)


@pytest.mark.parametrize(
    "chunks",
    [
        [body({"x": 1.0, "c": "a"})],
        [b""],
        # over 64 KiB in several chunks, split inside the JSON
        [
            c
            for c in (lambda b: [b[i : i + 30_000] for i in range(0, len(b), 30_000)])(
                orjson.dumps([{"x": float(i), "c": "b" * 20} for i in range(3000)])
            )
        ],
    ],
    ids=["one chunk", "empty", "chunked 100 KiB"],
)
def test_app_and_client_see_the_same_messages_with_and_without_the_tap(
    baseline: Baseline, chunks: list[bytes]
) -> None:
    seen: list[list[Message]] = []

    def recording_app() -> Any:
        inner = make_app()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            received: list[Message] = []

            async def rec() -> Message:
                message = await receive()
                received.append(message)
                return message

            await inner(scope, rec, send)
            seen.append(received)

        return app

    plain = asyncio.run(request(recording_app(), chunks=chunks))
    mw = SkewMiddleware(recording_app(), baseline=baseline, registry=CollectorRegistry())
    tapped = asyncio.run(request(mw, chunks=chunks))
    mw.monitor.stop()
    assert tapped.messages == plain.messages
    assert seen[0] == seen[1]
    assert plain.status in (200, 400, 500)


def test_sampled_requests_are_checked_and_exported_after_the_window(baseline: Baseline) -> None:
    mw, registry = tap(baseline)

    async def run() -> None:
        for i in range(150):
            await request(mw, chunks=[body({"x": 1000.0 + i, "c": "a"})])

    asyncio.run(run())
    mw.monitor.stop()  # flushes the last window
    assert value(registry, "skew_requests_sampled_total") == 150
    assert value(registry, "skew_requests_seen_total") == 150
    assert value(registry, "skew_rows_checked_total") == 150
    assert value(registry, "skew_feature_values_total", feature="score") == 150  # responses
    assert value(registry, "skew_feature_out_of_range_total", feature="x", side="high") == 150
    assert value(registry, "skew_feature_out_of_range_total", feature="x", side="low") == 0
    assert value(registry, "skew_feature_values_total", feature="c") == 150
    assert value(registry, "skew_feature_missing_total", feature="c") == 0
    assert value(registry, "skew_feature_drifted", feature="x") == 1
    assert value(registry, "skew_feature_psi", feature="x") > 1  # type: ignore[operator]
    assert value(registry, "skew_feature_drifted", feature="c") == 1  # only "a" is sent
    assert value(registry, "skew_window_rows") == 150
    info = {"baseline_hash": baseline.baseline_hash, "schema_version": "1"}
    assert value(registry, "skew_baseline_info", **info) == 1
    assert value(registry, "skew_monitor_batch_seconds_count") >= 1  # type: ignore[operator]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/predict"), ("POST", "/healthz"), ("POST", "/metrics"), ("PUT", "/predict")],
)
def test_unwatched_methods_and_paths_are_not_sampled(
    baseline: Baseline, method: str, path: str
) -> None:
    mw, registry = tap(baseline)
    asyncio.run(request(mw, method=method, path=path, chunks=[body({"x": 1.0})]))
    mw.monitor.stop()
    assert value(registry, "skew_requests_sampled_total") == 0
    assert not mw.monitor.running


def test_a_client_disconnecting_mid_body_drops_the_sample_without_hanging(
    baseline: Baseline,
) -> None:
    mw, registry = tap(baseline)
    chunks = [b'{"x": 1', b".0, ", b'"c": "a"}']

    def outcome(app: Any) -> str:
        try:
            asyncio.run(asyncio.wait_for(request(app, chunks=chunks, disconnect_after=1), 5))
        except Exception as exc:  # the app's own reaction to the disconnect
            return type(exc).__name__
        return "no error"

    assert outcome(mw) == outcome(make_app()) == "ClientDisconnect"
    mw.monitor.stop()
    assert value(registry, "skew_requests_sampled_total") == 0
    assert value(registry, "skew_samples_dropped_total", reason="body_incomplete") == 1


def test_an_app_that_never_reads_the_body_does_not_hang_and_is_counted(
    baseline: Baseline,
) -> None:
    mw, registry = tap(baseline)
    chunks = [b'{"x": 1.0,', b' "c": "a"}']
    result = asyncio.run(asyncio.wait_for(request(mw, path="/ignore", chunks=chunks), 5))
    mw.monitor.stop()
    assert result.status == 200
    assert value(registry, "skew_samples_dropped_total", reason="body_incomplete") == 1


def test_bodies_over_the_size_limit_are_dropped_and_counted(baseline: Baseline) -> None:
    mw, registry = tap(baseline, max_body_bytes=100)
    big = orjson.dumps([{"x": 1.0, "c": "a"}] * 50)
    result = asyncio.run(request(mw, chunks=[big[:80], big[80:]]))
    mw.monitor.stop()
    assert result.status == 200
    assert value(registry, "skew_samples_dropped_total", reason="too_large") == 1
    assert value(registry, "skew_rows_checked_total") == 0


def test_lifespan_starts_the_worker_and_shutdown_flushes_it_and_leaves_no_thread(
    baseline: Baseline,
) -> None:
    mw, registry = tap(baseline, model="lifespan")

    async def run() -> None:
        life = Lifespan(mw)
        assert (await life.startup())["type"] == "lifespan.startup.complete"
        assert mw.monitor.running
        for _ in range(20):
            await request(mw, chunks=[body({"x": 5.0, "c": "b"})])
        assert (await life.shutdown())["type"] == "lifespan.shutdown.complete"

    asyncio.run(run())
    assert not mw.monitor.running
    assert not [t for t in threading.enumerate() if t.name == "skew-monitor-lifespan"]
    assert registry.get_sample_value("skew_window_rows", {"model": "lifespan"}) == 20


def test_a_mounted_app_without_lifespan_starts_the_worker_on_the_first_sample(
    baseline: Baseline,
) -> None:
    registry = CollectorRegistry()
    inner = SkewMiddleware(make_app(), baseline=baseline, model="m", registry=registry)
    outer = Starlette(routes=[Mount("/model", app=inner)])
    asyncio.run(request(outer, path="/model/predict", chunks=[body({"x": 1.0, "c": "a"})]))
    assert inner.monitor.running
    inner.monitor.stop()
    assert value(registry, "skew_rows_checked_total") == 1


def test_a_missing_baseline_fails_at_construction_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(BaselineError, match="nope.json"):
        SkewMiddleware(make_app(), baseline=missing, registry=CollectorRegistry())


def test_the_rate_cap_bounds_samples_and_counts_the_rest(baseline: Baseline) -> None:
    mw, registry = tap(baseline, max_samples_per_second=5)

    async def run() -> None:
        for _ in range(50):
            await request(mw, chunks=[body({"x": 1.0, "c": "a"})])

    asyncio.run(run())
    mw.monitor.stop()
    sampled = value(registry, "skew_requests_sampled_total")
    skipped = value(registry, "skew_samples_dropped_total", reason="rate_limited")
    assert sampled is not None and skipped is not None
    assert 5 <= sampled <= 7
    assert sampled + skipped == 50


def test_sample_rate_zero_samples_nothing_and_counts_the_skips(baseline: Baseline) -> None:
    mw, registry = tap(baseline, sample_rate=0.0)
    asyncio.run(request(mw, chunks=[body({"x": 1.0})]))
    assert value(registry, "skew_requests_seen_total") == 1
    assert value(registry, "skew_requests_sampled_total") == 0
    assert not mw.monitor.running


def test_a_full_queue_drops_samples_and_counts_them(baseline: Baseline) -> None:
    release = threading.Event()

    def slow_extractor(body: Any) -> list[Any]:
        release.wait(5)
        return [body]

    mw, registry = tap(baseline, queue_size=2, extractor=slow_extractor)

    async def run() -> list[int]:
        return [(await request(mw, chunks=[body({"x": 1.0, "c": "a"})])).status for _ in range(10)]

    statuses = asyncio.run(run())
    release.set()
    mw.monitor.stop()
    assert statuses == [200] * 10
    dropped = value(registry, "skew_samples_dropped_total", reason="queue_full")
    checked = value(registry, "skew_rows_checked_total")
    assert dropped is not None and checked is not None
    assert dropped >= 7
    assert dropped + checked == 10


def test_a_failing_extractor_is_counted_and_never_reaches_the_app(baseline: Baseline) -> None:
    def broken(body: Any) -> list[Any]:
        raise RuntimeError("bug in a user extractor")

    mw, registry = tap(baseline, extractor=broken)

    async def run() -> list[int]:
        return [(await request(mw, chunks=[body({"x": 1.0})])).status for _ in range(3)]

    assert asyncio.run(run()) == [200, 200, 200]
    mw.monitor.stop()
    assert value(registry, "skew_monitor_errors_total", stage="extract") == 3


def test_invalid_json_is_counted_and_the_app_answers_as_usual(baseline: Baseline) -> None:
    mw, registry = tap(baseline)
    plain = asyncio.run(request(make_app(), chunks=[b"{not json"]))
    tapped = asyncio.run(request(mw, chunks=[b"{not json"]))
    mw.monitor.stop()
    assert tapped.messages == plain.messages
    assert value(registry, "skew_samples_dropped_total", reason="invalid_json") == 1


def test_websocket_scopes_pass_straight_through(baseline: Baseline) -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])

    mw = SkewMiddleware(app, baseline=baseline, registry=CollectorRegistry())

    async def nothing() -> Message:
        return {"type": "websocket.connect"}

    async def sink(message: Message) -> None:
        pass

    asyncio.run(mw({"type": "websocket", "path": "/ws"}, nothing, sink))
    assert calls == ["websocket"]
    assert not mw.monitor.running


def test_fastapi_app_with_add_middleware_is_tapped(baseline: Baseline, tmp_path: Path) -> None:
    from fastapi import FastAPI

    path = tmp_path / "baseline.json"
    baseline.save(path)
    registry = CollectorRegistry()
    app = FastAPI()

    @app.post("/predict")
    async def predict_route(payload: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": [0.5]}

    app.add_middleware(SkewMiddleware, baseline=str(path), model="m", registry=registry)
    app.mount("/metrics", metrics_app(registry))

    async def run() -> bytes:
        life = Lifespan(app)
        await life.startup()
        for _ in range(5):
            result = await request(app, chunks=[body({"x": 2.0, "c": "c"})])
            assert result.status == 200
        await life.shutdown()
        return (await request(app, method="GET", path="/metrics/")).body

    text = asyncio.run(run()).decode()
    assert 'skew_rows_checked_total{model="m"} 5.0' in text
    assert value(registry, "skew_feature_values_total", feature="score") == 5


def test_metrics_app_renders_off_the_event_loop(baseline: Baseline) -> None:
    registry = CollectorRegistry()
    render_threads: list[str] = []

    class Probe:
        def collect(self) -> list[Any]:
            render_threads.append(threading.current_thread().name)
            return []

    registry.register(Probe())  # type: ignore[arg-type]
    result = asyncio.run(request(metrics_app(registry), method="GET", path="/metrics"))
    assert result.status == 200
    assert render_threads and render_threads[0] != threading.main_thread().name


def test_gzip_request_bodies_are_decompressed_off_the_loop(baseline: Baseline) -> None:
    import gzip

    mw, registry = tap(baseline)
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    packed = gzip.compress(orjson.dumps([{"x": 1.0, "c": "a"}] * 4))
    asyncio.run(request(mw, path="/consume", chunks=[packed], headers=headers))
    mw.monitor.stop()
    assert value(registry, "skew_rows_checked_total") == 4


def test_a_gzip_bomb_is_dropped_as_too_large(baseline: Baseline) -> None:
    import gzip

    registry = CollectorRegistry()
    mw = SkewMiddleware(make_app(), baseline=baseline, model="m", registry=registry)
    mw.monitor.max_decompressed_bytes = 10_000
    _created.append(mw)
    headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    bomb = gzip.compress(b'{"c": "' + b"a" * 1_000_000 + b'"}')
    assert len(bomb) < 5_000
    asyncio.run(request(mw, path="/consume", chunks=[bomb], headers=headers))
    mw.monitor.stop()
    assert value(registry, "skew_samples_dropped_total", reason="too_large") == 1
    assert value(registry, "skew_rows_checked_total") == 0


def test_nan_and_infinity_tokens_are_read_and_counted_as_nonfinite(baseline: Baseline) -> None:
    mw, registry = tap(baseline)
    bodies = [b'{"x": NaN, "c": "a"}', b'{"x": Infinity, "c": "b"}', b'{"x": -Infinity}']
    for raw in bodies:
        asyncio.run(request(mw, path="/consume", chunks=[raw]))
    mw.monitor.stop()
    assert value(registry, "skew_feature_nonfinite_total", feature="x") == 3
    assert value(registry, "skew_samples_dropped_total", reason="invalid_json") == 0


def test_a_window_with_too_few_rows_is_extended_not_closed(baseline: Baseline) -> None:
    mw, registry = tap(baseline, window_seconds=0.01, min_window_rows=50)
    monitor = mw.monitor
    for _ in range(10):
        monitor.submit(Sample([orjson.dumps({"x": 1.0, "c": "a"})]))
    monitor.process_pending()
    time.sleep(0.02)
    monitor.close_window(final=False)
    assert value(registry, "skew_window_rows") is None  # extended: not closed yet
    for _ in range(45):
        monitor.submit(Sample([orjson.dumps({"x": 1.0, "c": "a"})]))
    monitor.process_pending()
    monitor.close_window(final=False)
    assert value(registry, "skew_window_rows") == 55


def test_bin_counters_can_be_switched_off_for_wide_models(baseline: Baseline) -> None:
    mw, registry = tap(baseline, export_bins=False)
    asyncio.run(request(mw, path="/consume", chunks=[body({"x": 1.0, "c": "a"})]))
    mw.monitor.stop()
    names = {s.name for metric in registry.collect() for s in metric.samples}
    assert "skew_feature_bin_total" not in names
    assert "skew_feature_baseline_fraction" in names
    assert value(registry, "skew_feature_values_total", feature="x") == 1


@pytest.mark.parametrize(
    ("chunks", "headers", "reason"),
    [
        ([b""], [(b"content-type", b"application/json")], "empty_body"),
        ([b"\x00\x01"], [(b"content-encoding", b"br")], "unsupported_encoding"),
        ([b"not gzip"], [(b"content-encoding", b"gzip")], "invalid_json"),
        ([b'"just a string"'], [], "unrecognised_payload"),
    ],
)
def test_bodies_without_rows_are_counted_by_reason(
    baseline: Baseline, chunks: list[bytes], headers: list[tuple[bytes, bytes]], reason: str
) -> None:
    mw, registry = tap(baseline)
    asyncio.run(request(mw, path="/consume", chunks=chunks, headers=headers))
    mw.monitor.stop()
    assert value(registry, "skew_samples_dropped_total", reason=reason) == 1
    assert value(registry, "skew_rows_checked_total") == 0


def test_excluded_paths_match_with_a_trailing_slash(baseline: Baseline) -> None:
    mw, registry = tap(baseline)
    asyncio.run(request(mw, path="/metrics/", chunks=[body({"x": 1.0})]))
    assert value(registry, "skew_requests_seen_total") == 0


def test_without_prediction_columns_requests_are_checked_and_send_is_not_wrapped() -> None:
    inputs_only = Baseline.from_records([{"x": float(i), "c": "ab"[i % 2]} for i in range(200)])
    sends: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        sends.append(send)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    registry = CollectorRegistry()
    mw = SkewMiddleware(app, baseline=inputs_only, model="m", registry=registry)
    _created.append(mw)

    async def run() -> Any:
        async def receive() -> Message:
            return {"type": "http.request", "body": body({"x": 3.0, "c": "a"})}

        async def send(message: Message) -> None:
            pass

        scope = {"type": "http", "method": "POST", "path": "/p", "headers": []}
        await mw(scope, receive, send)
        return send

    client_send = asyncio.run(run())
    mw.monitor.stop()
    assert sends == [client_send]
    assert value(registry, "skew_rows_checked_total") == 1


def test_an_idle_monitor_with_a_short_window_does_not_spin(baseline: Baseline) -> None:
    from sidecar.worker import Monitor

    monitor = Monitor(baseline, window_seconds=0.05, registry=None, rule=None)
    monitor.start()
    for _ in range(3):  # fewer rows than the minimum: the due window keeps being extended
        monitor.submit(Sample([orjson.dumps({"x": 1.0, "c": "a"})]))
    before = time.process_time()
    time.sleep(1.0)
    used = time.process_time() - before
    monitor.stop()
    assert used < 0.3  # a spinning worker burns ~1 s of CPU here


def multi_model_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/v1/models/{name}:predict", predict, methods=["POST"]),
            Route("/v2/models/{name}/infer", predict, methods=["POST"]),
        ]
    )


def test_several_models_are_routed_by_the_model_name_in_the_path(baseline: Baseline) -> None:
    registry = CollectorRegistry()
    mw = SkewMiddleware(
        multi_model_app(),
        baseline={"churn": baseline, "fraud": baseline},
        model="churn",  # where paths without a model name go
        registry=registry,
    )
    paths = ["/v2/models/fraud/infer"] * 3 + ["/v1/models/churn:predict"] * 2 + ["/predict"] * 4
    paths += ["/v2/models/unknown-model/infer"] * 5

    async def run() -> None:
        for path in paths:
            response = await request(mw, path=path, chunks=[body({"x": 1.0, "c": "a"})])
            assert response.status == 200

    asyncio.run(run())
    for target in mw.targets.values():
        target.monitor.stop()
    assert value(registry, "skew_rows_checked_total", model="fraud") == 3
    assert value(registry, "skew_rows_checked_total", model="churn") == 6
    assert value(registry, "skew_requests_seen_total", model="churn") == 6
    assert registry.get_sample_value("skew_unknown_model_requests_total") == 5
    text = generate_latest(registry).decode()
    assert "unknown-model" not in text  # a name without a baseline never becomes a label


def test_without_a_default_model_paths_naming_no_model_are_unknown(baseline: Baseline) -> None:
    registry = CollectorRegistry()
    mw = SkewMiddleware(
        multi_model_app(), baseline={"a": baseline, "b": baseline}, registry=registry
    )
    asyncio.run(request(mw, path="/predict", chunks=[body({"x": 1.0})]))
    asyncio.run(request(mw, path="/v2/models/b/infer", chunks=[body({"x": 1.0})]))
    for target in mw.targets.values():
        target.monitor.stop()
    assert registry.get_sample_value("skew_unknown_model_requests_total") == 1
    assert value(registry, "skew_rows_checked_total", model="b") == 1
    assert value(registry, "skew_rows_checked_total", model="a") == 0


def test_a_bad_baseline_among_several_fails_naming_its_model(
    baseline: Baseline, tmp_path: Path
) -> None:
    with pytest.raises(BaselineError, match="fraud.*nope.json"):
        SkewMiddleware(
            make_app(),
            baseline={"churn": baseline, "fraud": tmp_path / "nope.json"},
            registry=CollectorRegistry(),
        )


def test_scrapes_reuse_the_running_totals_until_rows_are_checked(baseline: Baseline) -> None:
    from sidecar.worker import Monitor

    monitor = Monitor(baseline, model="m", registry=None)
    monitor.submit(Sample([body({"x": 1.0, "c": "a"})]))
    monitor.process_pending()
    first = monitor.snapshot().totals
    assert monitor.snapshot().totals is first  # nothing new: not rebuilt
    monitor.submit(Sample([body({"x": 2.0, "c": "b"})]))
    monitor.process_pending()
    second = monitor.snapshot().totals
    assert second is not first
    assert second[0].rows == 2
    monitor.close_window()
    assert monitor.snapshot().totals[0].rows == 2


def test_a_sampled_request_starts_the_monitor_again_after_each_stop(baseline: Baseline) -> None:
    """Mounted sub-apps see no lifespan: a sampled request starts the worker, on the
    middleware's first request (the Python path) and on later ones (the compiled gate)."""
    mw, registry = tap(baseline)
    monitor = mw.monitor
    assert not monitor.started
    for checked in (1, 2, 3):
        asyncio.run(request(mw, chunks=[body({"x": 1.0, "c": "a"})]))
        assert monitor.started and monitor.running
        monitor.stop()  # checks what is queued
        assert not monitor.started and not monitor.running
        assert value(registry, "skew_rows_checked_total") == checked


def test_queued_samples_leave_the_garbage_collector_little_to_promote(baseline: Baseline) -> None:
    # Samples wait up to a second for the worker: what the GC still tracks in them after a
    # young collection moves to the older generations, whose collections are long.
    mw, _ = tap(baseline)
    mw.monitor.started = True  # no worker thread: samples stay queued
    n = 300

    async def run() -> None:
        for _ in range(n):
            # A server builds new header lists per request (uvicorn, hypercorn).
            headers = [(b"content-type", b"application/json"), (b"user-agent", b"test")]
            await request(mw, chunks=[body({"x": 1.0, "c": "a"})], headers=headers)

    try:
        gc.collect()
        before = len(gc.get_objects())
        asyncio.run(run())
        gc.collect(0)
        tracked = len(gc.get_objects()) - before
        assert len(mw.monitor._queue) == n
        assert all(s.response for s in mw.monitor._queue)  # responses are kept too
    finally:
        mw.monitor._queue.clear()
    assert tracked <= 2.5 * n  # the Sample (its chunks and headers are tuples of bytes)


class _TapFailure(RuntimeError):
    pass


@pytest.mark.parametrize("failure", ["take", "start", "tap"])
def test_a_failure_while_tapping_is_counted_logged_once_and_the_request_passes_untouched(
    baseline: Baseline, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The cap's decision, the lazy start and the tap's construction are the monitor's:
    what fails there is counted, and the app gets the server's own receive and send.
    The path's first request is routed in Python, the others in the compiled gate."""
    from sidecar.sampling import Sampler

    class Failing(Sampler):  # type: ignore[misc, valid-type]
        def take(self) -> bool:
            raise _TapFailure("take")

    def failing_start() -> None:
        raise _TapFailure("start")

    given: list[tuple[Any, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        given.append((receive, send))
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    mw = SkewMiddleware(
        app, baseline=baseline, registry=CollectorRegistry(), model="m", window_seconds=3600
    )
    _created.append(mw)
    if failure == "take":
        mw.targets["m"].sampler = Failing(1.0, 1000.0)
    elif failure == "start":
        mw.monitor.start = failing_start  # type: ignore[method-assign]
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/predict"}
    if failure != "tap":  # the tap reads the scope's headers, and fails without them
        scope["headers"] = [(b"content-type", b"application/json")]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b'{"x": 1.0}'}

    async def send(message: Message) -> None:
        sent.append(message)

    with caplog.at_level("ERROR", logger="sidecar"):
        for _ in range(3):
            asyncio.run(mw(scope, receive, send))
    assert given == [(receive, send)] * 3
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b'{"x": 1.0}'] * 3
    assert mw.monitor.counts.errors == {"worker": 3}
    assert len(mw.monitor._queue) == 0
    logged = [r for r in caplog.records if "worker failed" in r.getMessage()]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], (_TapFailure, KeyError))
