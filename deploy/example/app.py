"""A tiny model server for deploy/compose.yaml: the demo churn model behind SkewMiddleware.

    BASELINE=baseline.json uvicorn --factory --app-dir deploy/example app:create_app

With SKEW_SINK=unix:///run/skew/tap.sock instead, samples go to a sidecar (the pod in
deploy/kubernetes/model-server.yaml) and nothing is checked in this process.

KServe v1 protocol: POST /v1/models/churn:predict with {"instances": [{...}, ...]}
answers {"predictions": [...]}; /metrics serves the skew_* families.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from sidecar import SkewMiddleware, metrics_app
from sidecar.demo import churn_score  # the demo model: what its training data was labelled with


async def predict(request: Request) -> Response:
    try:
        payload = await request.json()
        instances = payload["instances"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'expected {"instances": [...]}'}, status_code=400)
    rows = [row if isinstance(row, dict) else {} for row in instances]
    return JSONResponse({"predictions": [churn_score(row) for row in rows]})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(
    baseline: str | None = None,
    registry: CollectorRegistry = REGISTRY,
    window_seconds: float = 30,
    sink: str | None = None,
) -> SkewMiddleware:
    """The app; `baseline` defaults to the BASELINE environment variable, `sink` to
    SKEW_SINK (given one, samples go to the sidecar there)."""
    app = Starlette(
        routes=[
            Route("/v1/models/churn:predict", predict, methods=["POST"]),
            Route("/healthz", healthz),
            Mount("/metrics", app=metrics_app(registry)),
        ]
    )
    sink = sink or os.environ.get("SKEW_SINK")
    if sink:
        return SkewMiddleware(app, sink=sink, model="churn", registry=registry)
    return SkewMiddleware(
        app,
        baseline=baseline or os.environ.get("BASELINE", "baseline.json"),
        model="churn",
        window_seconds=window_seconds,
        registry=registry,
    )
