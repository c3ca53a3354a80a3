"""The ASGI tap: decide sampling, tee the bodies, enqueue. Nothing heavy happens here.

The app receives and sends exactly what it would without the middleware: the
wrappers pass every message through unchanged and only keep references to body
chunks of sampled requests. Any failure inside the tap is counted and swallowed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Collection
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .baseline import Baseline, BaselineError
from .report import DriftRule
from .sampling import Sampler
from .tap import DatagramSink
from .worker import Extractor, Monitor, Sample, _bump

HEALTH_PATHS = frozenset(
    {"/metrics", "/health", "/healthz", "/ready", "/readyz", "/live", "/livez", "/ping"}
)
ROUTE_CACHE_SIZE = 4096


class SkewMiddleware:
    """Samples inference requests (and responses) and checks them against a baseline.

    ```python
    app.add_middleware(SkewMiddleware, baseline="baseline.json", model="churn")
    ```
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        baseline: str | os.PathLike[str] | Baseline | None = None,
        model: str = "default",
        sink: str | None = None,
        sample_rate: float = 1.0,
        max_samples_per_second: float = 1000.0,
        methods: Collection[str] = ("POST",),
        paths: Collection[str] | None = None,
        exclude_paths: Collection[str] = HEALTH_PATHS,
        max_body_bytes: int = 1 << 20,
        queue_size: int = 10_000,
        window_seconds: float = 60.0,
        min_window_rows: int = 100,
        sample_responses: bool = True,
        registry: CollectorRegistry | None = REGISTRY,
        extractor: Extractor | None = None,
        export_bins: bool = True,
    ) -> None:
        sampler = Sampler(sample_rate, max_samples_per_second)  # validates both
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        self.app = app
        self.monitor: Monitor | DatagramSink
        if sink is not None:
            if baseline is not None or extractor is not None:
                raise ValueError(
                    "SkewMiddleware(sink=...) ships samples to the sidecar, which holds the "
                    "baseline and extracts rows: give baseline= and extractor= to the sidecar"
                )
            # Checked in the sidecar process: one datagram per sample, nothing else here.
            self.monitor = DatagramSink(sink, model=model)
        elif baseline is None:
            raise ValueError("SkewMiddleware needs a baseline (checked here) or a sink=")
        else:
            # Load now: a bad baseline fails the app's startup, not its first request.
            if isinstance(baseline, Baseline):
                loaded = baseline
            else:
                try:
                    loaded = Baseline.load(baseline)
                except BaselineError as exc:
                    raise BaselineError(f"SkewMiddleware(model={model!r}): {exc}") from None
            self.monitor = Monitor(
                loaded,
                model=model,
                queue_size=queue_size,
                window_seconds=window_seconds,
                rule=DriftRule(min_rows=min_window_rows),
                extractor=extractor,
                registry=registry,
                export_bins=export_bins,  # off for very wide models: bins x features series
            )
        self.sampler = self.monitor.sampler = sampler
        self.methods = frozenset(m.upper() for m in methods)
        self.paths = tuple(paths) if paths is not None else None
        self.exclude_paths = frozenset(exclude_paths)
        self.max_body_bytes = max_body_bytes
        self.sample_responses = sample_responses and self.monitor.checks_responses
        self._watched: dict[str, bool] = {}  # path -> watched, for the first paths seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every request pays for this branch: a few dict lookups and one decrement.
        if scope["type"] == "http" and scope["method"] in self.methods:
            watched = self._watched.get(scope["path"])
            if watched is None:
                watched = self._route(scope["path"])
            if watched:
                sampler = self.sampler
                sampler.countdown -= 1
                if sampler.countdown <= 0 and self._take():
                    tap = _Tap(self, scope, receive, send)
                    if self.sample_responses:
                        await self.app(scope, tap.receive, tap.send)
                    else:
                        # Nothing to read in the response: the request is submitted once
                        # its body is complete, and `send` goes untouched.
                        await self.app(scope, tap.receive, send)
                    return
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _route(self, path: str) -> bool:
        """Whether requests to `path` are watched; remembered for the first paths seen
        (paths with ids in them must not grow the memory without bound)."""
        try:
            watched = not (path in self.exclude_paths or path.rstrip("/") in self.exclude_paths)
            if self.paths is not None and not path.startswith(self.paths):
                watched = False
        except Exception:
            self.monitor._error("worker")
            return False
        if len(self._watched) < ROUTE_CACHE_SIZE:
            self._watched[path] = watched
        return watched

    def _take(self) -> bool:
        """The sampler's countdown ran out: sample this request unless the cap refuses."""
        try:
            if not self.sampler.take():
                return False
            if not self.monitor.started:
                self.monitor.start()  # mounted sub-apps never see lifespan events
            return True
        except Exception:
            self.monitor._error("worker")
            return False

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the worker once the app's startup completed; stop it (flushing the last
        window) when shutdown begins. A failed startup starts nothing."""

        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                try:
                    # Joining the thread flushes the last window; not on the loop.
                    await asyncio.get_running_loop().run_in_executor(None, self.monitor.stop)
                except Exception:
                    self.monitor._error("worker")
            return message

        async def wrapped_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    self.monitor.start()
                except Exception:
                    self.monitor._error("worker")
            await send(message)

        await self.app(scope, wrapped_receive, wrapped_send)


class _Tap:
    """Per-request state: references to body chunks and header lists, never copies.

    `receive` and `send` are bound methods of this object, not closures: one
    allocation per sampled request instead of three.
    """

    __slots__ = (
        "_receive",
        "_send",
        "finished",
        "headers",
        "middleware",
        "overflow",
        "request",
        "request_done",
        "request_size",
        "response",
        "response_headers",
        "response_size",
        "status",
    )

    def __init__(
        self, middleware: SkewMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.middleware = middleware
        self._receive = receive
        self._send = send
        self.request: list[bytes] = []
        self.request_size = 0
        self.request_done = False
        self.response: list[bytes] = []
        self.response_size = 0
        self.status = 0
        self.overflow = False
        self.finished = False
        self.headers = scope["headers"]  # read in the worker (Content-Encoding)
        self.response_headers: Any = ()

    async def receive(self) -> Message:
        message = await self._receive()
        try:
            if not self.request_done:
                kind = message["type"]
                if kind == "http.request":
                    body = message.get("body", b"")
                    if body:
                        self.request_size += len(body)
                        if self.request_size <= self.middleware.max_body_bytes:
                            self.request.append(body)
                        else:
                            self.overflow = True
                    if not message.get("more_body", False):
                        self.request_done = True
                        if not self.middleware.sample_responses:
                            self.finish()
                elif kind == "http.disconnect":
                    self.finish()  # the client left mid-body: counted once, nothing queued
        except Exception:
            self.middleware.monitor._error("worker")
        return message

    async def send(self, message: Message) -> None:
        await self._send(message)  # the client first; the tap only looks afterwards
        try:
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body", b"")
                if body:
                    self.response_size += len(body)
                    if self.response_size <= self.middleware.max_body_bytes:
                        self.response.append(body)
                if not message.get("more_body", False):
                    self.finish()
            elif kind == "http.response.start":
                self.status = message["status"]
                self.response_headers = message.get("headers", ())
        except Exception:
            self.middleware.monitor._error("worker")

    def finish(self) -> None:
        if self.finished:
            return  # a disconnect finished it before the response did
        self.finished = True
        monitor = self.middleware.monitor
        if self.overflow:
            _bump(monitor.counts.dropped, "too_large")
        elif not self.request_done:
            _bump(monitor.counts.dropped, "body_incomplete")  # the app did not read it all
        elif not self.request:
            _bump(monitor.counts.dropped, "empty_body")
        else:
            # A response over the size limit is left out; the request is still checked.
            too_big = self.response_size > self.middleware.max_body_bytes
            response = () if too_big else self.response
            monitor.submit(
                Sample(self.request, response, self.status, self.headers, self.response_headers)
            )
