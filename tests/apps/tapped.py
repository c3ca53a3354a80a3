"""A model server whose samples go to a sidecar through the datagram tap; run by the
multi-worker test as `uvicorn --workers 2 --factory tests.apps.tapped:build`."""

from __future__ import annotations

import os

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from sidecar import SkewMiddleware


async def predict(request: Request) -> Response:
    row = orjson.loads(await request.body())
    body = orjson.dumps({"predictions": [row["x"] / 100]})
    return Response(body, media_type="application/json", headers={"x-pid": str(os.getpid())})


async def pid(request: Request) -> Response:
    return Response(str(os.getpid()))


def build() -> ASGIApp:
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/pid", pid)])
    return SkewMiddleware(app, sink=os.environ["SKEW_TEST_SINK"], max_samples_per_second=1e6)
