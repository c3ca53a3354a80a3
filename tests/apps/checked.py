"""A model server checking its samples in-process, in every worker; run by the
multi-process test as `uvicorn --workers 2 --factory tests.apps.checked:build` with
PROMETHEUS_MULTIPROC_DIR set. Every response names the worker in `x-pid`."""

from __future__ import annotations

import os

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar import Baseline, SkewMiddleware, metrics_app


async def predict(request: Request) -> Response:
    row = orjson.loads(await request.body())
    return Response(orjson.dumps({"predictions": [row["x"] / 100]}), media_type="application/json")


def with_pid(app: ASGIApp) -> ASGIApp:
    pid = (b"x-pid", str(os.getpid()).encode())

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), pid]}
            await send(message)

        await app(scope, receive, send_with_pid)

    return wrapped


def build() -> ASGIApp:
    routes = [Route("/predict", predict, methods=["POST"]), Mount("/metrics", metrics_app())]
    checked = SkewMiddleware(
        Starlette(routes=routes),
        baseline=Baseline.load(os.environ["SKEW_TEST_BASELINE"]),
        model="m",
        max_samples_per_second=1e6,
        window_seconds=float(os.environ["SKEW_TEST_WINDOW_SECONDS"]),
        min_window_rows=10,
    )
    return with_pid(checked)
