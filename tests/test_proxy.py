"""`skew-sidecar serve --upstream`: the sidecar as a reverse proxy in front of a model
server, over real HTTP (uvicorn on loopback for both, httpx as the client)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sidecar import Baseline
from sidecar.profile import ProfileOptions
from sidecar.serve import ServeSettings, Sidecar
from tests.servers import eventually, serve


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [{"x": float(i % 100), "score": (i % 100) / 100} for i in range(2000)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


async def predict(request: Request) -> Response:
    row = orjson.loads(await request.body())
    return Response(
        orjson.dumps({"predictions": [row["x"] / 100]}),
        media_type="application/json",
        headers={"x-model-version": "7"},
    )


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(40):
            yield bytes([65 + i % 26]) * 4096  # 160 KiB in 40 chunks

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def compressed(request: Request) -> Response:
    await request.body()
    body = gzip.compress(orjson.dumps({"predictions": [0.5]}))
    return Response(body, headers={"content-encoding": "gzip", "content-type": "application/json"})


async def teapot(request: Request) -> Response:
    return Response(b"short and stout", status_code=418, headers={"x-extra": "a"})


def upstream_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/v2/models/{name}/infer", predict, methods=["POST"]),
            Route("/stream", stream, methods=["GET", "POST"]),
            Route("/gzip", compressed, methods=["POST"]),
            Route("/teapot", teapot, methods=["GET", "POST"]),
        ]
    )


@contextmanager
def proxied(baseline: Baseline, **options: object) -> Iterator[tuple[Sidecar, str, str]]:
    """(sidecar, its URL, the upstream's URL), both served over real HTTP."""
    with serve(upstream_app()) as upstream:
        sidecar = Sidecar(
            {"default": baseline},
            upstream=upstream,
            window_seconds=3600,
            **options,  # type: ignore[arg-type]
        )
        with serve(sidecar) as url:
            yield sidecar, url, upstream


def value(app: Sidecar, name: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(name, labels)


def test_responses_through_the_proxy_equal_the_upstreams(baseline: Baseline) -> None:
    cases = [
        ("POST", "/predict", orjson.dumps({"x": 5.0})),
        ("GET", "/stream", b""),
        ("POST", "/stream", b"x" * 100_000),
        ("POST", "/gzip", b"{}"),
        ("POST", "/teapot", b""),
        ("GET", "/missing", b""),
    ]
    with proxied(baseline) as (_, url, upstream), httpx.Client() as client:
        for method, path, body in cases:
            direct = client.request(method, upstream + path, content=body)
            through = client.request(method, url + path, content=body)
            assert through.status_code == direct.status_code, path
            assert through.content == direct.content, path  # raw bytes: gzip stays gzip
            for header in ("content-type", "content-encoding", "x-model-version", "x-extra"):
                assert through.headers.get(header) == direct.headers.get(header), (path, header)


def test_sampled_posts_are_checked_on_the_way(baseline: Baseline) -> None:
    with proxied(baseline) as (sidecar, url, _), httpx.Client(base_url=url) as client:
        for i in range(30):
            client.post("/predict", content=orjson.dumps({"x": 1000.0 + i}))  # out of range
        client.get("/teapot")  # not an inference request: not counted
        unknown = client.post("/v2/models/unknown/infer", content=orjson.dumps({"x": 1.0}))
        assert unknown.json() == {"predictions": [0.01]}  # forwarded, not checked
        assert eventually(lambda: value(sidecar, "skew_rows_checked_total", model="default") == 30)
    labels = {"model": "default"}
    assert value(sidecar, "skew_requests_seen_total", **labels) == 30
    high = value(sidecar, "skew_feature_out_of_range_total", feature="x", side="high", **labels)
    assert high == 30
    assert value(sidecar, "skew_feature_values_total", feature="score", **labels) == 30
    assert value(sidecar, "skew_sidecar_unknown_model_total") == 1


def test_a_body_over_the_limit_is_forwarded_whole_and_counted_too_large(
    baseline: Baseline,
) -> None:
    big = orjson.dumps({"x": 1.0, "pad": "y" * 5000})
    with proxied(baseline, max_body_bytes=1000) as (sidecar, url, _):
        response = httpx.post(url + "/predict", content=big)
        assert response.json() == {"predictions": [0.01]}
        labels = {"model": "default", "reason": "too_large"}
        assert eventually(lambda: value(sidecar, "skew_samples_dropped_total", **labels) == 1)
    assert value(sidecar, "skew_rows_checked_total", model="default") == 0


def test_an_unreachable_upstream_is_answered_502_and_counted(baseline: Baseline) -> None:
    sidecar = Sidecar({"default": baseline}, upstream="http://127.0.0.1:9", window_seconds=3600)
    with serve(sidecar) as url:
        response = httpx.post(url + "/predict", content=b"{}")
    assert response.status_code == 502
    assert "127.0.0.1:9" in response.text
    assert value(sidecar, "skew_sidecar_upstream_errors_total") == 1


def test_the_upstream_must_be_an_http_url() -> None:
    with pytest.raises(ValueError, match="--upstream"):
        ServeSettings(baseline=("b.json",), upstream="model:8080")
