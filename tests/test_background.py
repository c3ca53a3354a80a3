from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sidecar.background import BackgroundServer


def refused(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def app_with_lifespan(events: list[str]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)], lifespan=lifespan)


def test_the_app_is_served_inside_the_block_and_stopped_with_its_thread_after_it() -> None:
    events: list[str] = []
    before = set(threading.enumerate())
    with BackgroundServer(app_with_lifespan(events)) as server:
        assert events == ["startup"]
        assert server.port != 0  # the kernel's choice, read back
        assert httpx.get(server.url + "/").text == "hello"
    assert events == ["startup", "shutdown"]
    assert refused(server.port)
    assert set(threading.enumerate()) <= before


def test_a_port_in_use_is_an_oserror_naming_the_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: .*another port"):
            BackgroundServer(app_with_lifespan([]), port=port).start()


def test_a_failed_startup_is_an_error_and_leaves_no_thread() -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no model file")
        yield

    before = set(threading.enumerate())
    server = BackgroundServer(Starlette(lifespan=lifespan))
    with pytest.raises(RuntimeError, match="failed during startup"):
        server.start()
    assert set(threading.enumerate()) <= before
    assert refused(server.port)


def test_a_port_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="port must be in 0-65535"):
        BackgroundServer(app_with_lifespan([]), port=70000)
