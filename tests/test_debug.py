"""GET /skew and /skew.json: ranked features, diagnoses, histograms, evidence, escaping."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar import Baseline, EvidenceOptions, SkewMiddleware, skew_app
from sidecar.debug import page_data
from sidecar.page import BASELINE_COLOUR, CSP, SERVING_COLOUR, render_page
from sidecar.serve import Sidecar
from sidecar.worker import Monitor, Sample
from tests.asgi import request
from tests.servers import serve

INJECTED = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    rows = [{"x": float(i % 100), "c": "abc"[i % 3], "h": i % 24} for i in range(3000)]
    return Baseline.from_records(rows)


def checked(baseline: Baseline, rows: list[dict[str, Any]], close: bool = True) -> Monitor:
    """A monitor with evidence that checked `rows` (one request each, ids r0, r1, ...)."""
    m = Monitor(baseline, model="m", registry=CollectorRegistry(), evidence=EvidenceOptions())
    for i, row in enumerate(rows):
        m.submit(Sample([orjson.dumps(row)], headers=[(b"x-request-id", f"r{i}".encode())]))
    m.process_pending()
    if close:
        m.close_window()
    return m


def unit_bug(n: int = 400) -> list[dict[str, Any]]:
    """x arrives in cents (x100); c gets an unseen category now and then; h is clean."""
    return [
        {"x": float(i % 100) * 100, "c": INJECTED if i % 10 == 0 else "abc"[i % 3], "h": i % 24}
        for i in range(n)
    ]


def test_features_are_ranked_by_severity_with_their_diagnoses(baseline: Baseline) -> None:
    data = page_data([checked(baseline, unit_bug())])
    (model,) = data["models"]
    assert model["histograms_from"] == "last_window"
    assert model["rows_checked"] == model["window_rows"] == 400
    names = [f["name"] for f in model["features"]]
    assert names == ["x", "c", "h"]
    x = model["features"][0]
    assert x["drifted"] is True
    assert x["diagnosis"][0]["kind"] == "unit_change"
    assert 0 < x["diagnosis"][0]["confidence"] <= 1
    assert "100x" in x["diagnosis"][0]["explanation"]
    assert model["features"][2]["diagnosis"] == []
    html = render_page(data)
    assert html.index(">x</a>") < html.index(">c</a>") < html.index(">h</a>")
    assert "<b>unit_change</b>" in html


def test_each_feature_has_baseline_and_serving_histograms(baseline: Baseline) -> None:
    data = page_data([checked(baseline, unit_bug())])
    features = data["models"][0]["features"]
    html = render_page(data)
    svgs = re.findall(r"<svg class=histogram.*?</svg>", html)
    assert len(svgs) == len(features) == 3
    for feature, svg in zip(features, svgs, strict=True):
        hist = feature["histogram"]
        bins = len(hist["bins"])
        assert bins == len(hist["baseline"]) == len(hist["serving"]) > 1
        assert sum(hist["baseline"]) == pytest.approx(1)
        assert sum(hist["serving"]) == pytest.approx(1)
        assert svg.count('class="bar baseline"') == svg.count('class="bar serving"') == bins
        assert f'fill="{BASELINE_COLOUR}"' in svg and f'fill="{SERVING_COLOUR}"' in svg


def test_before_a_window_closes_the_page_shows_the_rows_since_start(
    baseline: Baseline,
) -> None:
    model = page_data([checked(baseline, unit_bug(20), close=False)])["models"][0]
    assert model["histograms_from"] == "since_start"
    assert model["windows"] == 0 and model["rows_checked"] == 20
    assert sum(model["features"][0]["histogram"]["serving_counts"]) == 20


def test_recent_evidence_is_listed_per_feature_newest_first(baseline: Baseline) -> None:
    data = page_data([checked(baseline, unit_bug(40))])
    c = next(f for f in data["models"][0]["features"] if f["name"] == "c")
    assert [(e["reason"], e["request_id"]) for e in c["evidence"]] == [
        ("unseen_category", f"r{i}") for i in (30, 20, 10, 0)
    ]
    assert data["models"][0]["evidence"] == {"enabled": True, "per_feature": 20, "max_total": 1000}


def test_everything_from_requests_and_baselines_is_escaped() -> None:
    name = '<img src=x onerror="alert(2)">'
    rows = [{name: "abc"[i % 3] + "'\"><svg onload=alert(3)>"} for i in range(300)]
    baseline = Baseline.from_records(rows)
    serving = [{name: INJECTED}] * 50
    m = Monitor(baseline, model="<m&>", registry=CollectorRegistry(), evidence=EvidenceOptions())
    m.submit(Sample([orjson.dumps(serving)], headers=[(b"x-request-id", b"<i>id</i>")]))
    m.process_pending()
    m.close_window()
    html = render_page(page_data([m]))
    for raw in ("<script", "<img", "<svg onload", "<i>", "<m&>"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html
    assert "&lt;i&gt;id&lt;/i&gt;" in html
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html


# -- serving it --------------------------------------------------------------------------


async def predict(req: Request) -> Response:
    await req.body()
    return JSONResponse({"ok": True})


def app_with_page(baseline: Baseline, registry: CollectorRegistry) -> SkewMiddleware:
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    return SkewMiddleware(
        app,
        baseline=baseline,
        model="m",
        registry=registry,
        evidence=EvidenceOptions(),
        debug_path="/skew",
    )


def test_the_middleware_serves_the_page_and_its_json_and_samples_neither(
    baseline: Baseline,
) -> None:
    registry = CollectorRegistry()
    mw = app_with_page(baseline, registry)

    async def run() -> list[Any]:
        await request(mw, chunks=[orjson.dumps({"x": 5000.0, "c": "a", "h": 3})])
        mw.monitor.stop()
        return [
            await request(mw, "GET", "/skew"),
            await request(mw, "GET", "/skew.json"),
            await request(mw, "POST", "/skew"),
            await request(mw, "HEAD", "/skew"),
            await request(mw, "GET", "/skew/other"),
        ]

    try:
        page, json, post, head, other = asyncio.run(run())
    finally:
        mw.monitor.stop()
    headers = dict(page.headers)
    assert page.status == 200
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"content-security-policy"] == CSP.encode()
    assert b'href="skew.json"' in page.body
    data = orjson.loads(json.body)
    assert dict(json.headers)[b"content-type"] == b"application/json"
    assert [f["name"] for f in data["models"][0]["features"]][0] == "x"
    assert data["models"][0]["features"][0]["evidence"][0]["value"] == "5000.0"
    assert (post.status, dict(post.headers)[b"allow"]) == (405, b"GET, HEAD")
    assert (head.status, head.body) == (200, b"")
    assert other.status == 404  # only the two paths: the rest goes to the app
    assert registry.get_sample_value("skew_requests_seen_total", {"model": "m"}) == 1


def test_the_page_is_rendered_off_the_event_loop(
    baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []

    def spy(data: Any, json_href: str = "") -> str:
        threads.append(threading.current_thread())
        return "<!doctype html>"

    monkeypatch.setattr("sidecar.debug.render_page", spy)
    mw = app_with_page(baseline, CollectorRegistry())
    result = asyncio.run(request(mw, "GET", "/skew"))
    assert (result.status, result.body) == (200, b"<!doctype html>")
    assert threads and threads[0] is not threading.main_thread()


def test_skew_app_shows_the_monitors_of_a_registry_wherever_it_is_mounted(
    baseline: Baseline,
) -> None:
    registry = CollectorRegistry()
    monitors = [Monitor(baseline, model=name, registry=registry) for name in ("b", "a")]
    app = skew_app(registry)
    json = asyncio.run(request(app, "GET", "/admin/drift.json"))
    page = asyncio.run(request(app, "GET", "/admin/drift"))
    assert [m["model"] for m in orjson.loads(json.body)["models"]] == ["a", "b"]
    assert len(monitors) == 2  # the registry holds monitors weakly: kept alive until here
    assert b'href="drift.json"' in page.body
    empty = asyncio.run(request(skew_app(CollectorRegistry()), "GET", "/skew"))
    assert b"No model is monitored here." in empty.body


def test_the_sidecar_serves_the_page_for_every_model(baseline: Baseline) -> None:
    app = Sidecar({"a": baseline, "b": baseline}, window_seconds=3600)
    with serve(app) as url, httpx.Client(base_url=url, timeout=5.0) as client:
        page = client.get("/skew")
        data = client.get("/skew.json").json()
        post = client.post("/skew", content=b"{}")
    assert page.status_code == 200 and "Model <code>a</code>" in page.text
    assert [m["model"] for m in data["models"]] == ["a", "b"]
    assert data["models"][0]["evidence"]["enabled"] is False
    assert post.status_code == 405  # not taken for a mirrored request


@pytest.mark.parametrize("path", ["skew", "/skew/", "/skew.json"])
def test_a_bad_debug_path_is_named(baseline: Baseline, path: str) -> None:
    with pytest.raises(ValueError, match=f"debug_path must be a path like '/skew'.*got '{path}'"):
        SkewMiddleware(Starlette(), baseline=baseline, registry=None, debug_path=path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"evidence": EvidenceOptions()}, "give baseline=, extractor= and evidence= to the"),
        ({"debug_path": "/skew"}, "the sidecar serves /skew"),
    ],
)
def test_a_datagram_tap_leaves_evidence_and_the_page_to_the_sidecar(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SkewMiddleware(Starlette(), sink="udp://127.0.0.1:9", registry=None, **options)
