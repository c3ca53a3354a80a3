"""deploy/nginx/skew-mirror.conf in a real nginx (tests/nginx.py), between a real model
server and a real sidecar (uvicorn on loopback): every client gets the model server's
answer byte for byte, the sidecar gets every body intact, and a sidecar that stalls or
is gone costs a client at most the mirror's timeouts."""

from __future__ import annotations

import hashlib
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar import Baseline
from tests.nginx import (
    LISTEN,
    MODEL_SERVER,
    SHIPPED,
    SIDECAR,
    mirror_conf,
    run_nginx,
    silent_server,
    unaccepting_server,
)
from tests.servers import eventually, free_port, serve
from tests.test_serve import REQUEST, ROW, sidecar

TIMEOUT = httpx.Timeout(5.0)
# The mirror location's timeouts, as shipped (seconds).
TIMEOUTS = {
    name: int(ms) / 1000
    for name, ms in re.findall(r"(proxy_\w+_timeout) (\d+)ms;", SHIPPED.read_text())
}
# Slack for a noisy machine: a request may take the mirror's timeout plus this, no more.
BOUND = 0.5
REQUESTS = 10
MIRROR = 'subrequest: "/_skew_mirror"'  # in nginx's error lines about the mirror


async def predict(request: Request) -> Response:
    """A model server: predictions for {"instances": [...]}, 400 for anything else; the
    answer also names what it received, so a changed body would show."""
    body = await request.body()
    received = {"path": request.url.path, "bytes": len(body)}
    received["sha256"] = hashlib.sha256(body).hexdigest()
    try:
        instances = orjson.loads(body)["instances"]
        predictions = [round(float(row["x"]) / 100, 3) for row in instances]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": 'expected {"instances": [...]}', **received}, 400)
    return JSONResponse({"predictions": predictions, **received})


MODEL = Starlette(routes=[Route("/{path:path}", predict, methods=["POST", "PUT"])])


def rows(n: int) -> list[dict[str, object]]:
    return [{"x": float(i % 100), "c": "abc"[i % 3]} for i in range(n)]


def instances(n: int) -> bytes:
    return orjson.dumps({"instances": rows(n)})


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return Baseline.from_records(rows(1000))


def answer(response: httpx.Response) -> tuple[int, str, bytes]:
    return response.status_code, response.headers["content-type"], response.content


def scrape(client: httpx.Client) -> dict[tuple[str, str], float]:
    """The sidecar's /metrics: {(sample name, "label=value,..."): value}."""
    text = client.get("/metrics").text
    return {
        (s.name, labels(**s.labels)): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(**pairs: str) -> str:
    return ",".join(f"{name}={value}" for name, value in sorted(pairs.items()))


@contextmanager
def model_server() -> Iterator[str]:
    with serve(MODEL) as url:
        yield url.removeprefix("http://")


def test_the_tested_config_is_the_shipped_one_with_only_its_addresses_moved() -> None:
    shipped = SHIPPED.read_text().splitlines()
    tested = mirror_conf(18080, "127.0.0.1:18000", "127.0.0.1:18090").splitlines()
    assert len(tested) == len(shipped)
    changed = [(a.strip(), b.strip()) for a, b in zip(shipped, tested, strict=True) if a != b]
    assert changed == [
        (MODEL_SERVER, "server 127.0.0.1:18000;"),
        (SIDECAR, "server 127.0.0.1:18090;"),
        (LISTEN, "listen 127.0.0.1:18080;"),
    ]
    assert set(TIMEOUTS) == {"proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"}


def test_clients_get_the_model_servers_answers_and_the_sidecar_every_body_intact(
    baseline: Baseline, tmp_path: Path
) -> None:
    big = instances(10_000)  # 185 KiB: many reads and proxy buffers
    too_big = instances(80_000)  # over the sidecar's 1 MiB cap, under nginx's 8m
    assert 150 << 10 < len(big) < 1 << 20 < len(too_big) < 8 << 20

    def chunked() -> Iterator[bytes]:  # no Content-Length: nginx reads it all first
        yield REQUEST[:10]
        yield REQUEST[10:]

    sent = [  # the sidecar counts the first two and the big one under churn, the rest default
        ("POST", "/v1/models/churn:predict", REQUEST),
        ("PUT", "/v1/models/churn/versions/2:predict", ROW),
        ("POST", "/predict", ROW),
        ("POST", "/v1/models/churn:predict", big),
        ("POST", "/predict", b"not json"),
        ("POST", "/predict", too_big),
    ]
    app = sidecar(baseline, models=(None, "churn"))
    with (
        model_server() as model,
        serve(app) as sidecar_url,
        run_nginx(tmp_path, model, sidecar_url.removeprefix("http://")) as nginx,
        httpx.Client(base_url=nginx.url, timeout=TIMEOUT) as client,
        httpx.Client(base_url=f"http://{model}", timeout=TIMEOUT) as direct,
        httpx.Client(base_url=sidecar_url, timeout=TIMEOUT) as metrics,
    ):
        for method, path, body in sent:
            expected = answer(direct.request(method, path, content=body))
            assert answer(client.request(method, path, content=body)) == expected, path
        via_nginx = client.post("/predict", content=chunked())
        assert answer(via_nginx) == answer(direct.post("/predict", content=REQUEST))
        assert orjson.loads(via_nginx.content)["bytes"] == len(REQUEST)

        # The sidecar checks in its monitor threads: poll until every row is in.
        rows = {"churn": 2 + 1 + 10_000, "default": 1 + 2}  # the chunked one: 2 rows
        counted: dict[tuple[str, str], float] = {}

        def checked() -> dict[str, float | None]:
            return {m: counted.get(("skew_rows_checked_total", labels(model=m))) for m in rows}

        def all_checked() -> bool:
            counted.update(scrape(metrics))
            return checked() == rows

        assert eventually(all_checked, 10), checked()
    seen = {m: counted[("skew_requests_seen_total", labels(model=m))] for m in rows}
    assert seen == {"churn": 3, "default": 4}  # each request mirrored exactly once
    assert counted[("skew_samples_dropped_total", labels(model="default", reason="too_large"))] == 1
    assert counted[("skew_sidecar_unknown_model_total", "")] == 0
    log = nginx.errors()
    assert "[error]" not in log, log
    # Over client_body_buffer_size: the primary and the mirror both sent it from a file.
    assert log.count("a client request body is buffered to a temporary file") == 1, log


# Sidecars, from the baseline: each yields its host:port.
Mirror = Callable[[Baseline], AbstractContextManager[str]]


@contextmanager
def answering(baseline: Baseline) -> Iterator[str]:
    with serve(sidecar(baseline)) as url:
        yield url.removeprefix("http://")


def never_answers(baseline: Baseline) -> AbstractContextManager[str]:
    return silent_server()


def never_accepts(baseline: Baseline) -> AbstractContextManager[str]:
    return unaccepting_server()


@contextmanager
def gone(baseline: Baseline) -> Iterator[str]:
    yield f"127.0.0.1:{free_port()}"  # nothing listens: connections are refused


def timed(client: httpx.Client, expected: tuple[int, str, bytes]) -> list[float]:
    """Seconds per request of REQUESTS through `client`, each answered as `expected`."""
    seconds = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        response = client.post("/v1/models/churn:predict", content=REQUEST)
        seconds.append(time.perf_counter() - start)
        assert answer(response) == expected
    return seconds


def ms(seconds: list[float]) -> str:
    return f"{[round(s * 1000) for s in seconds]} ms"


@pytest.mark.parametrize(
    ("mirror", "holds_up", "logged"),
    [
        # Measured (nginx 1.22, 2 cores): each request after the first on one keep-alive
        # connection took 100-102 ms (the read timeout), on fresh connections 1-2 ms.
        (never_answers, TIMEOUTS["proxy_read_timeout"], "while reading response header"),
        # A full accept queue drops the SYN: 49-51 ms (the connect timeout), then 1-2 ms.
        (never_accepts, TIMEOUTS["proxy_connect_timeout"], "upstream timed out"),
        # Refused at once: 1-2 ms either way, as with a sidecar that answers.
        (gone, 0.0, "Connection refused"),
        (answering, 0.0, ""),
    ],
    ids=["never-answers", "never-accepts", "gone", "answering"],
)
def test_a_stalled_or_missing_sidecar_costs_a_client_at_most_the_mirrors_timeout(
    baseline: Baseline, tmp_path: Path, mirror: Mirror, holds_up: float, logged: str
) -> None:
    with (
        model_server() as model,
        mirror(baseline) as sidecar_address,
        run_nginx(tmp_path, model, sidecar_address) as nginx,
        httpx.Client(base_url=f"http://{model}", timeout=TIMEOUT) as direct,
        httpx.Client(base_url=nginx.url, timeout=TIMEOUT) as kept,
        httpx.Client(
            base_url=nginx.url, timeout=TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0)
        ) as fresh,
    ):
        expected = answer(direct.post("/v1/models/churn:predict", content=REQUEST))
        keep_alive, new_connections = timed(kept, expected), timed(fresh, expected)
        # A mirror subrequest outlives its client's answer: wait until the last has ended.
        failures = 2 * REQUESTS if logged else 0
        assert eventually(lambda: nginx.errors().count("[error]") == failures, 5)
        errors = [line for line in nginx.errors().splitlines() if "[error]" in line]
    assert all(MIRROR in line and logged in line for line in errors), errors
    took = f"keep-alive {ms(keep_alive)}, fresh connections {ms(new_connections)}"
    assert max(keep_alive + new_connections) < holds_up + BOUND, took
    # nginx answers the client at once, but reads the next request on the connection
    # only when the mirror subrequest has ended: a keep-alive client waits for that.
    if holds_up:
        assert statistics.median(keep_alive[1:]) > holds_up / 2, took
    else:
        assert statistics.median(keep_alive) < TIMEOUTS["proxy_connect_timeout"], took
    assert statistics.median(new_connections) < TIMEOUTS["proxy_connect_timeout"], took
