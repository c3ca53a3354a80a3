"""`skew-sidecar demo`: a model server with SkewMiddleware on localhost, fed over HTTP.

The baseline is built from the embedded training set (sidecar/demo.py); the demo
churn model is served by uvicorn in a background thread with `/metrics` and the
debug page `/skew`; the main thread replays a serving stream to it, clean at first,
then with one more classic bug every phase, and prints each bug as the monitor names
it. Ctrl-C or the end of `duration` stops the replay and the server, then a table
says which bug was named as what, and how fast.
"""

from __future__ import annotations

import http.client
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import orjson
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .background import BackgroundServer
from .baseline import Baseline
from .demo import LIVE_BUGS, Bug, churn_score, live_row, training_rows
from .detections import Tracker, format_event, format_summary
from .evidence import EvidenceOptions
from .metrics import metrics_app
from .middleware import SkewMiddleware
from .profile import ProfileOptions
from .worker import Monitor

__all__ = ["LiveOptions", "model_app", "run_live"]

MODEL = "churn"
PREDICT_PATH = f"/v1/models/{MODEL}:predict"
SEEN_SERIES = f'skew_requests_seen_total{{model="{MODEL}"}}'
MIN_DURATION = 8.0


@dataclass(frozen=True)
class LiveOptions:
    """How long and how hard the live demo runs.

    The run is split into equal phases: a clean one, then one per bug (each bug stays
    once injected). Windows close three times a phase (at most once a second), so a
    bug is named within a phase.
    """

    duration: float = 30.0
    port: int = 0
    training_rows: int = 5000
    requests_per_second: float = 40.0
    rows_per_request: int = 8
    seed: int = 11
    bugs: Sequence[Bug] = LIVE_BUGS

    def __post_init__(self) -> None:
        if not self.duration >= MIN_DURATION:
            raise ValueError(
                f"--duration must be at least {MIN_DURATION:g} s (a clean phase and "
                f"{len(self.bugs)} bugs), got {self.duration:g}"
            )

    @property
    def phase_seconds(self) -> float:
        return self.duration / (len(self.bugs) + 1)

    @property
    def window_seconds(self) -> float:
        return min(1.0, self.phase_seconds / 3)


def model_app(
    baseline: Baseline, registry: CollectorRegistry, window_seconds: float
) -> SkewMiddleware:
    """The demo churn model (KServe v1 `instances` in, `predictions` out) behind
    SkewMiddleware, with /metrics and the debug page /skew."""

    async def predict(request: Request) -> Response:
        try:
            instances = (await request.json())["instances"]
            rows = [row if isinstance(row, dict) else {} for row in instances]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"instances": [...]}'}, status_code=400)
        return JSONResponse({"predictions": [churn_score(row) for row in rows]})

    model = Starlette(routes=[Route(PREDICT_PATH, predict, methods=["POST"])])
    metrics = metrics_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # /metrics itself, not Mount's redirect to /metrics/
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await model(scope, receive, send)

    return SkewMiddleware(
        app,
        baseline=baseline,
        model=MODEL,
        window_seconds=window_seconds,
        registry=registry,
        evidence=EvidenceOptions(),
        debug_path="/skew",
    )


class _Console:
    """Plain lines; on a terminal, also a status line redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.status_shown = False

    def line(self, text: str = "") -> None:
        if self.status_shown:
            self.out.write("\r\033[K")
            self.status_shown = False
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.out.flush()
            self.status_shown = True


class _Client:
    """One keep-alive HTTP connection to the demo server; failures are counted."""

    def __init__(self, host: str, port: int) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=10)
        self.sent = 0
        self.rows = 0
        self.failed = 0

    def predict(self, rows: list[dict[str, object]]) -> None:
        body = orjson.dumps({"instances": rows})
        headers = {"content-type": "application/json", "x-request-id": f"demo-{self.sent}"}
        self.sent += 1
        self.rows += len(rows)
        if self._request("POST", PREDICT_PATH, body, headers) is None:
            self.failed += 1

    def requests_seen(self) -> int | None:
        """What the server's /metrics says it saw (None: unreadable)."""
        self.connection.close()  # a fresh connection: Ctrl-C may have cut a request short
        text = self._request("GET", "/metrics", None, {"accept": "text/plain"})
        for line in (text or b"").decode().splitlines():
            if line.startswith(SEEN_SERIES + " "):
                return int(float(line.split()[-1]))
        return None

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> bytes | None:
        try:
            self.connection.request(method, path, body, headers)
            response = self.connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()  # the next request reconnects
            return None
        return data if response.status == 200 else None

    def close(self) -> None:
        self.connection.close()


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """A second Ctrl-C must not leave the server running: ignored while it stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Run:
    def __init__(self, options: LiveOptions, out: TextIO) -> None:
        self.options = options
        self.console = _Console(out)
        self.tracker = Tracker()
        self.windows = 0  # windows the monitor closed, as last seen
        self.started = time.monotonic()
        self.interrupted = False
        self.client: _Client | None = None
        self.counted: int | None = None

    def run(self) -> None:
        options = self.options
        began = time.monotonic()
        baseline = Baseline.from_records(
            training_rows(options.training_rows),
            ProfileOptions(prediction=frozenset({"churn_score"})),
        )
        say = self.console.line
        say(
            f"baseline: {baseline.rows:,} training rows, {len(baseline.features)} features "
            f"({time.monotonic() - began:.1f} s)"
        )
        app = model_app(baseline, CollectorRegistry(), options.window_seconds)
        monitor = app.monitor
        if not isinstance(monitor, Monitor):
            raise TypeError("the demo app checks in-process")
        server = BackgroundServer(app, port=options.port)
        server.start()
        try:
            say(f"model server: {server.url}{PREDICT_PATH}  (SkewMiddleware in-process)")
            say(f"  metrics:    {server.url}/metrics")
            say(f"  debug page: {server.url}/skew  (JSON: {server.url}/skew.json)")
            say(
                f"replaying {options.requests_per_second:g} requests/s of "
                f"{options.rows_per_request} rows for {options.duration:g} s: clean, then one "
                f"more bug every {options.phase_seconds:.1f} s; Ctrl-C ends it"
            )
            say()
            self.client = _Client(server.host, server.port)
            self._replay(self.client, monitor)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            with _interrupts_deferred():
                if self.client is not None:
                    self.counted = self.client.requests_seen()
                    self.client.close()
                server.stop()  # the lifespan shutdown flushes the last window
                self._observe(monitor)

    def _replay(self, client: _Client, monitor: Monitor) -> None:
        options = self.options
        rng = np.random.default_rng(options.seed)
        active: list[Bug] = []
        self.started = start = time.monotonic()
        phase = -1
        next_look = start
        while (now := time.monotonic()) < start + options.duration:
            due = min(int((now - start) / options.phase_seconds), len(options.bugs))
            while phase < due:
                phase += 1
                self._begin(phase, active)
            client.predict([live_row(rng, active) for _ in range(options.rows_per_request)])
            if now >= next_look:
                self._observe(monitor)
                self._status(phase, client)
                next_look = now + 0.2
            wait = start + client.sent / options.requests_per_second - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def _begin(self, phase: int, active: list[Bug]) -> None:
        elapsed = time.monotonic() - self.started
        if phase == 0:
            self.console.line(f"{elapsed:6.1f} s  clean traffic: no bug yet")
            return
        bug = self.options.bugs[phase - 1]
        active.append(bug)
        self.tracker.inject(bug, time.time())
        self.console.line(f"{elapsed:6.1f} s  inject {bug.title}: {bug.feature} {bug.detail}")

    def _observe(self, monitor: Monitor) -> None:
        snap = monitor.snapshot()
        if snap.windows == self.windows:
            return
        self.windows = snap.windows
        elapsed = time.monotonic() - self.started
        for event in self.tracker.observe(snap.last_window, snap.window_end):
            for text in format_event(event, elapsed):
                self.console.line(text)

    def _status(self, phase: int, client: _Client) -> None:
        bugs = self.options.bugs
        what = "clean" if phase == 0 else bugs[phase - 1].title
        self.console.status(
            f"{time.monotonic() - self.started:6.1f} s  phase {phase + 1}/{len(bugs) + 1} "
            f"({what}): {client.sent:,} requests, {self.windows} windows"
        )

    def summary(self) -> int:
        say = self.console.line
        elapsed = time.monotonic() - self.started
        say()
        how = "interrupted" if self.interrupted else "done"
        say(f"summary ({how} after {elapsed:.1f} s of replay):")
        client = self.client
        if client is not None:
            counted = "unreadable" if self.counted is None else f"{self.counted:,}"
            say(
                f"  {client.sent:,} requests ({client.rows:,} rows) sent over HTTP, "
                f"{client.failed} failed; the server's /metrics counted {counted} "
                f"({self.windows} windows checked)"
            )
        for text in format_summary(self.tracker, self.options.bugs):
            say("  " + text)
        if self.interrupted:
            return 0
        return 1 if self.tracker.missed else 0


def run_live(options: LiveOptions, out: TextIO | None = None) -> int:
    """Run the live demo, printing to `out` (default: stdout); 0 if every injected bug
    was named (or on Ctrl-C), else 1."""
    run = _Run(options, out or sys.stdout)
    try:
        run.run()
    except KeyboardInterrupt:  # before the replay: nothing injected yet
        run.interrupted = True
    return run.summary()
