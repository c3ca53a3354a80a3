"""Operator endpoints kept to operators: a bearer token, a port of their own, and a
bound on connections."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar import Baseline, SkewMiddleware
from sidecar.admin import protected
from sidecar.profile import ProfileOptions
from sidecar.serve import ServeSettings, Sidecar
from tests.asgi import request
from tests.servers import eventually, free_port
from tests.test_hostile import Recorder
from tests.test_serve import TIMEOUT, _wait_for_line, cli_process

ROW = orjson.dumps({"x": 1.0, "c": "a"})
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [{"x": float(i % 100), "c": "abc"[i % 3], "score": i % 2} for i in range(500)]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def on_port(app: ASGIApp, port: int) -> ASGIApp:
    """`app` as a connection to local port `port` sees it."""

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "server": ("127.0.0.1", port)}, receive, send)

    return inner


def status(app: ASGIApp, path: str, method: str = "GET", **options: Any) -> int:
    return asyncio.run(request(app, method=method, path=path, chunks=[ROW], **options)).status


@pytest.mark.parametrize("path", ["/metrics", "/skew", "/skew.json", "/admin/reload"])
def test_with_a_token_operator_paths_answer_401_without_it(baseline: Baseline, path: str) -> None:
    app = Sidecar({"default": baseline}, admin_token=TOKEN)
    method = "POST" if path == "/admin/reload" else "GET"
    answer = asyncio.run(request(app, method=method, path=path))
    assert answer.status == 401
    assert (b"www-authenticate", b'Bearer realm="skew-sidecar"') in answer.headers
    assert status(app, path, method, headers=bearer("wrong")) == 401
    assert status(app, path, method, headers=[(b"authorization", TOKEN.encode())]) == 401
    assert status(app, path, method, headers=bearer(TOKEN)) == 200
    assert (
        status(app, path, method, headers=[(b"authorization", b"bearer " + TOKEN.encode())]) == 200
    )


def test_health_and_samples_need_no_token(baseline: Baseline) -> None:
    app = Sidecar({"default": baseline}, admin_token=TOKEN)
    assert status(app, "/healthz") in (200, 503)  # no 401: open to the kubelet
    assert status(app, "/readyz") == 503  # not started here
    assert status(app, "/predict", "POST") == 204


def test_with_an_admin_port_operator_paths_are_served_only_there(baseline: Baseline) -> None:
    app = Sidecar({"default": baseline}, admin_port=9091)
    main, admin = on_port(app, 8090), on_port(app, 9091)
    for path in ("/metrics", "/skew.json"):
        assert status(main, path) == 404
        assert status(admin, path) == 200
    assert status(main, "/predict", "POST") == 204
    assert status(admin, "/predict", "POST") == 404  # no samples on the admin port
    assert status(admin, "/readyz") == 503 and status(main, "/readyz") == 503


def test_the_middleware_debug_page_can_require_a_token(baseline: Baseline) -> None:
    mw = SkewMiddleware(
        Recorder(), baseline=baseline, registry=CollectorRegistry(), debug_path="/skew",
        debug_token=TOKEN,
    )  # fmt: skip
    assert status(mw, "/skew") == 401
    assert status(mw, "/skew.json", headers=bearer(TOKEN)) == 200
    assert status(mw, "/predict", "POST") == 200


def test_protected_refuses_a_token_that_cannot_be_sent_in_a_header() -> None:
    with pytest.raises(ValueError, match="printable"):
        protected(Recorder(), "two words")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"port": 8090, "admin_port": 8090}, "--admin-port"),
        ({"admin_port": 70000}, "--admin-port"),
        ({"max_connections": 0}, "--max-connections"),
        ({"admin_token": "a b"}, "--admin-token"),
        ({"baseline_poll_seconds": -1.0}, "--baseline-poll-seconds"),
    ],
)
def test_bad_security_settings_are_named(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServeSettings.resolve(flags, environ={})


def test_serve_binds_the_admin_port_apart_and_bounds_connections(
    baseline: Baseline, tmp_path: Any
) -> None:
    path = tmp_path / "baseline.json"
    baseline.save(path)
    port, admin = free_port(), free_port()
    args = (
        "-b", str(path), "--port", str(port), "--admin-port", str(admin),
        "--max-connections", "4",
    )  # fmt: skip
    seen: list[str] = []
    environ_token = {"SKEW_SIDECAR_ADMIN_TOKEN": TOKEN}
    with cli_process(*args, env=environ_token) as (process, lines):
        _wait_for_line(lines, r"Application startup complete", seen)
        main_url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
        with httpx.Client(timeout=TIMEOUT) as client:
            assert client.get(main_url + "/metrics").status_code == 404
            assert client.get(admin_url + "/metrics").status_code == 401
            auth = {"authorization": f"Bearer {TOKEN}"}
            assert client.get(admin_url + "/metrics", headers=auth).status_code == 200
            assert client.post(main_url + "/predict", content=ROW).status_code == 204
            assert client.get(admin_url + "/healthz").status_code == 200
        # Idle connections up to the bound: the next request is answered 503 at once.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            assert eventually(lambda: httpx.get(main_url + "/readyz").status_code == 503)
        finally:
            for sock in idle:
                sock.close()
        assert eventually(lambda: httpx.get(main_url + "/readyz").status_code == 200)
