"""A tiny model server for deploy/compose.yaml: the demo churn model behind SkewMiddleware.

    BASELINE=baseline.json uvicorn --factory --app-dir deploy/example app:create_app

KServe v1 protocol: POST /v1/models/churn:predict with {"instances": [{...}, ...]}
answers {"predictions": [...]}; /metrics serves the skew_* families.
"""

from __future__ import annotations

import math
import os
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from sidecar import SkewMiddleware, metrics_app


def churn_score(row: dict[str, Any]) -> float:
    """The score the demo's training data was labelled with (sidecar/demo.py)."""
    try:
        charges = float(row.get("monthly_charges", 0))
        tenure = float(row.get("tenure_months", 0))
    except (TypeError, ValueError):
        return 0.5
    logit = -1.0 + 0.02 * charges - 0.05 * tenure + (row.get("contract") == "month-to-month")
    logit = max(-50.0, min(50.0, logit))  # cents for dollars must not overflow exp()
    return round(1 / (1 + math.exp(-logit)), 4)


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
    baseline: str | None = None, registry: CollectorRegistry = REGISTRY, window_seconds: float = 30
) -> SkewMiddleware:
    """The app; `baseline` defaults to the BASELINE environment variable."""
    app = Starlette(
        routes=[
            Route("/v1/models/churn:predict", predict, methods=["POST"]),
            Route("/healthz", healthz),
            Mount("/metrics", app=metrics_app(registry)),
        ]
    )
    return SkewMiddleware(
        app,
        baseline=baseline or os.environ.get("BASELINE", "baseline.json"),
        model="churn",
        window_seconds=window_seconds,
        registry=registry,
    )
