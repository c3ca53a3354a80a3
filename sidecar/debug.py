"""GET /skew and /skew.json: what each model's monitor knows, for a human on call.

Per model, the features ranked by severity with their diagnoses, baseline and serving
histograms and recent evidence. `page_data` builds the JSON; `page.render_page` turns
the same data into HTML. Both run in a thread, never on the event loop.

`SkewMiddleware(debug_path="/skew")` serves it from the app, `skew-sidecar serve` at
/skew, and `skew_app()` is an ASGI app to mount anywhere (a path ending in `.json`
gets the JSON).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .evidence import Evidence
from .metrics import monitors_of
from .page import CSP, render_page
from .report import FeatureReport

if TYPE_CHECKING:
    from .worker import Monitor

__all__ = ["debug_app", "page_data", "skew_app"]


def page_data(monitors: Iterable[Monitor]) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    return {
        "version": __version__,
        "generated_at": time.time(),
        "models": [_model(monitor) for monitor in monitors],
    }


def _model(monitor: Monitor) -> dict[str, Any]:
    snap = monitor.snapshot()
    windows = snap.last_window or snap.totals
    reports: list[FeatureReport] = [r for w in windows for r in w.features.values()]
    reports.sort(key=lambda r: r.severity(), reverse=True)
    log = monitor.evidence
    recent = log.recent() if log is not None else {}
    return {
        "model": snap.model,
        "baseline_hash": snap.baseline_hash,
        "rows_checked": snap.totals[0].rows if snap.totals else 0,
        "windows": snap.windows,
        "window_end": snap.window_end,
        "window_rows": snap.last_window[0].rows if snap.last_window else 0,
        "histograms_from": "last_window" if snap.last_window else "since_start",
        "evidence": {
            "enabled": log is not None,
            "per_feature": log.per_feature if log is not None else 0,
            "max_total": log.max_total if log is not None else 0,
        },
        "features": [_feature(r, recent.get(r.name, [])) for r in reports],
    }


def _feature(r: FeatureReport, evidence: list[Evidence]) -> dict[str, Any]:
    total = sum(r.bin_counts)
    return {
        "name": r.name,
        **r.to_json(),
        "histogram": {
            "bins": list(r.bin_labels),
            "baseline": list(r.baseline_fractions),
            "serving": [c / total if total else 0.0 for c in r.bin_counts],
            "serving_counts": list(r.bin_counts),
        },
        "evidence": [e.to_json() for e in evidence],
    }


def _render(monitors: Callable[[], Iterable[Monitor]], path: str) -> tuple[bytes, bytes]:
    """The body and content type for a path: JSON for `.json`, else the page."""
    data = page_data(monitors())
    if path.endswith(".json"):
        return orjson.dumps(data), b"application/json"
    # A relative link: right wherever the app is mounted.
    name = path.rstrip("/").rsplit("/", 1)[-1] or "skew"
    return render_page(data, json_href=name + ".json").encode(), b"text/html; charset=utf-8"


def debug_app(monitors: Callable[[], Iterable[Monitor]]) -> ASGIApp:
    """An ASGI app for GET/HEAD of the page (or its JSON) of these monitors."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            body = b"GET the page or its JSON"
            headers = [(b"allow", b"GET, HEAD"), (b"content-type", b"text/plain")]
            await _send(send, 405, headers, body)
            return
        loop = asyncio.get_running_loop()
        body, content_type = await loop.run_in_executor(None, _render, monitors, scope["path"])
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            # Evidence is recent request data: not cached, not sniffed, nothing loaded.
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", CSP.encode()),
            (b"referrer-policy", b"no-referrer"),
        ]
        await _send(send, 200, headers, b"" if method == "HEAD" else body)

    return app


def skew_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """The page of every monitor exporting to `registry` (default: prometheus_client's
    REGISTRY), to mount anywhere: a path ending in `.json` gets the JSON.

    ```python
    app.add_route("/skew", skew_app())
    app.add_route("/skew.json", skew_app())
    ```
    """
    target = registry if registry is not None else REGISTRY
    return debug_app(lambda: sorted(monitors_of(target), key=lambda m: m.model))


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
