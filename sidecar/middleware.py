"""The ASGI tap: decide sampling, tee the bodies, enqueue. Nothing heavy happens here.

The app receives and sends exactly what it would without the middleware: the
wrappers pass every message through unchanged and only keep references to body
chunks of sampled requests. Any failure inside the tap is counted and swallowed.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Awaitable, Collection, Iterator, Mapping
from typing import Any, TypeAlias

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admin import protected
from .baseline import Baseline, BaselineError
from .compiled import compiled
from .debug import debug_app
from .evidence import EvidenceOptions
from .gate import Gate
from .metrics import UNKNOWN_MODEL_REQUESTS
from .models import Routes, model_from_path
from .multiprocess import multiprocess_dir
from .report import DriftRule
from .sampling import Sampler
from .tap import DatagramSink
from .worker import Extractor, Monitor, Sample, _bump

HEALTH_PATHS = frozenset(
    {"/metrics", "/health", "/healthz", "/ready", "/readyz", "/live", "/livez", "/ping"}
)
ROUTE_CACHE_SIZE = 4096
BaselineSource: TypeAlias = "str | os.PathLike[str] | Baseline"


class _Target:
    """Where one model's samples go, and its sampler."""

    __slots__ = ("monitor", "queue", "sample_responses", "sampler")

    def __init__(self, monitor: Monitor | DatagramSink, sampler: Sampler, responses: bool) -> None:
        self.monitor = monitor
        self.sampler = sampler
        self.sample_responses = responses and monitor.checks_responses
        # The compiled tap puts samples in the compiled queue itself (no submit call).
        self.queue = None
        if isinstance(monitor, Monitor) and monitor._triaged:
            self.queue = monitor._queue


class _UnknownModels(Collector):
    """Requests naming a model without a baseline: counted, the name never kept."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler  # rate 0: it only counts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = UNKNOWN_MODEL_REQUESTS
        yield CounterMetricFamily(family.name, family.help, value=self.sampler.seen)


_UNROUTED: Any = object()  # a path not looked at yet


class SkewMiddleware(Gate):
    """Samples inference requests (and responses) and checks them against a baseline.

    ```python
    app.add_middleware(SkewMiddleware, baseline="baseline.json", model="churn")
    ```

    `baseline` may also map model names to baselines: the model is then read from
    multi-model paths (`/v1/models/{name}:predict`, `/v2/models/{name}/infer`), other
    paths go to `model` (if it is one of them, or to the only one), and a name without
    a baseline is counted in `skew_unknown_model_requests_total`, never a label.

    With `PROMETHEUS_MULTIPROC_DIR` set (several worker processes), the monitors write
    their metrics to prometheus_client's per-process files instead of `registry`
    (None still turns the export off): serve `metrics_app()` or
    `multiprocess_registry()`, which add up every worker's.

    `baseline_poll_seconds=5` watches baseline files: a new version is loaded by the
    worker and applies from the next window (running totals carry over); one that does
    not load is refused with a log line and the old baseline stays. `reload_baselines()`
    looks at once.

    `evidence=EvidenceOptions(...)` keeps recent offending values per feature (found in
    the worker, redacted as configured); `debug_path="/skew"` serves the debug page there
    and its JSON at `/skew.json` (GET; those paths are never sampled). Both are off by
    default: the page shows request data, so serve it where only operators reach it, or
    give `debug_token=` (requests then need `Authorization: Bearer <token>`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        baseline: BaselineSource | Mapping[str, BaselineSource] | None = None,
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
        evidence: EvidenceOptions | None = None,
        debug_path: str | None = None,
        baseline_poll_seconds: float | None = None,
        debug_token: str | None = None,
    ) -> None:
        Sampler(sample_rate, max_samples_per_second)  # validates both, before any loading
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        if debug_path is not None and (
            not debug_path.startswith("/") or debug_path.endswith(("/", ".json"))
        ):
            raise ValueError(
                f"debug_path must be a path like '/skew' (the JSON is served at "
                f"'/skew.json'), got {debug_path!r}"
            )
        self.app = app
        # Calls go through the type's `__call__` (the gate); `self.__call__`, which
        # servers inspect to tell ASGI 3 from ASGI 2, is a coroutine function.
        self.__dict__["__call__"] = _async_twin(weakref.ref(self))
        monitors: dict[str, Monitor | DatagramSink] = {}
        multiprocess = False
        if sink is not None:
            if baseline is not None or extractor is not None or evidence is not None:
                raise ValueError(
                    "SkewMiddleware(sink=...) ships samples to the sidecar, which holds the "
                    "baseline, extracts rows and keeps evidence: give baseline=, extractor= "
                    "and evidence= to the sidecar (skew-sidecar serve --evidence N)"
                )
            if debug_path is not None:
                raise ValueError(
                    "SkewMiddleware(sink=..., debug_path=...): nothing is checked here; "
                    "the sidecar serves /skew"
                )
            # Checked in the sidecar process: samples go as datagrams, nothing else here.
            monitors[model] = DatagramSink(sink, model=model)
        elif baseline is None:
            raise ValueError("SkewMiddleware needs a baseline (checked here) or a sink=")
        else:
            named = baseline if isinstance(baseline, Mapping) else {model: baseline}
            if not named:
                raise ValueError("SkewMiddleware(baseline={}): no model to check")
            # Several worker processes: counts add up through prometheus_client's files.
            multiprocess = registry is not None and multiprocess_dir() is not None
            for name, source in named.items():
                monitors[name] = made = Monitor(
                    _load(source, name),
                    model=name,
                    queue_size=queue_size,
                    window_seconds=window_seconds,
                    rule=DriftRule(min_rows=min_window_rows),
                    extractor=extractor,
                    registry=registry,
                    export_bins=export_bins,  # off for very wide models: bins x features
                    multiprocess=multiprocess,
                    evidence=evidence,
                )
                if baseline_poll_seconds is not None and not isinstance(source, Baseline):
                    made.watch_baseline(source, baseline_poll_seconds)
        self.targets = {
            name: _Target(m, Sampler(sample_rate, max_samples_per_second), sample_responses)
            for name, m in monitors.items()
        }
        for target in self.targets.values():
            target.monitor.sampler = target.sampler  # it exports seen and refused counts
        default: str | None = model if model in monitors else next(iter(monitors))
        if len(monitors) > 1 and model not in monitors:
            default = None  # several models and no default: unnamed paths are unknown
        self.routes = Routes(frozenset(monitors), default)
        # The default model's monitor (the only one, usually).
        self.monitor = monitors[default if default is not None else next(iter(monitors))]
        self._unknown = _Target(self.monitor, Sampler(0.0, 1.0), False)
        if len(monitors) > 1 and registry is not None:
            if isinstance(self.monitor, Monitor) and self.monitor.mirror is not None:
                self.monitor.mirror.unknown_models = self._unknown.sampler
            else:
                registry.register(_UnknownModels(self._unknown.sampler))
        self.methods = frozenset(m.upper() for m in methods)
        self.paths = tuple(paths) if paths is not None else None
        # The debug page's paths: empty (one falsy check per request) unless asked for.
        self.debug_paths: frozenset[str] = frozenset()
        if debug_path is not None:
            self.debug_paths = frozenset({debug_path, debug_path + ".json"})
            exclude_paths = frozenset(exclude_paths) | self.debug_paths
            checked = [m for m in monitors.values() if isinstance(m, Monitor)]
            self.debug_app = protected(debug_app(lambda: checked), debug_token)
        self.exclude_paths = frozenset(exclude_paths)
        self.max_body_bytes = max_body_bytes
        self._routed: dict[str, _Target | None] = {}  # path -> target, for the first paths

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """One request's way through the middleware, returned for the caller to await
        (the app's own coroutine, for most requests). The compiled gate takes unsampled
        requests on paths it has seen itself and sends the rest here."""
        # With the Python gate, every request pays for this branch: a few dict lookups and
        # one decrement (the compiled gate does them for most requests).
        kind = scope["type"]
        if kind == "http":
            if self.debug_paths and scope["path"] in self.debug_paths:
                return self.debug_app(scope, receive, send)
            if scope["method"] in self.methods:
                target = self._routed.get(scope["path"], _UNROUTED)
                if target is _UNROUTED:
                    target = self._route(scope["path"])
                if target is not None:
                    sampler = target.sampler
                    sampler.countdown -= 1
                    if sampler.countdown <= 0:
                        return self._sampled(target, scope, receive, send)
        elif kind == "lifespan":
            return self._lifespan(scope, receive, send)
        return self.app(scope, receive, send)

    def _sampled(
        self, target: _Target, scope: Scope, receive: Receive, send: Send
    ) -> Awaitable[None]:
        """The sampler's countdown ran out: tap this request unless the cap refuses."""
        tap = None
        try:
            if target.sampler.take():
                monitor = target.monitor
                if not monitor.started:
                    monitor.start()  # mounted sub-apps never see lifespan events
                tap = Tap(
                    monitor,
                    target.queue,
                    target.sample_responses,
                    self.max_body_bytes,
                    scope,
                    receive,
                    send,
                )
        except Exception:
            target.monitor._error("worker")
        if tap is None:
            return self.app(scope, receive, send)
        if target.sample_responses:
            return self.app(scope, tap.receive, tap.send)
        # Nothing to read in the response: the request is submitted once its body is
        # complete, and `send` goes untouched.
        return self.app(scope, tap.receive, send)

    def reload_baselines(self) -> None:
        """Look at the baseline files now (with baseline_poll_seconds); each monitor's
        worker loads its file and the new baseline applies from the next window."""
        for target in self.targets.values():
            if isinstance(target.monitor, Monitor):
                target.monitor.reload()

    def _route(self, path: str) -> _Target | None:
        """The target of requests to `path` (None: not watched); remembered for the first
        paths seen (paths with ids in them must not grow the memory without bound)."""
        try:
            target: _Target | None = None
            excluded = path in self.exclude_paths or path.rstrip("/") in self.exclude_paths
            if not excluded and (self.paths is None or path.startswith(self.paths)):
                name = model_from_path(path) if len(self.targets) > 1 else None
                model = self.routes.resolve(name)
                target = self._unknown if model is None else self.targets[model]
        except Exception:
            self.monitor._error("worker")
            return None
        if len(self._routed) < ROUTE_CACHE_SIZE:
            self._routed[path] = target
        return target

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the workers once the app's startup completed; stop them (flushing the
        last windows) when shutdown begins. A failed startup starts nothing."""

        def stop_all() -> None:
            for target in self.targets.values():
                try:
                    target.monitor.stop()
                except Exception:
                    target.monitor._error("worker")

        async def wrapped_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                # Joining the threads flushes the last windows; not on the loop.
                await asyncio.get_running_loop().run_in_executor(None, stop_all)
            return message

        async def wrapped_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                for target in self.targets.values():
                    try:
                        target.monitor.start()
                    except Exception:
                        target.monitor._error("worker")
            await send(message)

        await self.app(scope, wrapped_receive, wrapped_send)


def _async_twin(middleware: weakref.ref[SkewMiddleware]) -> ASGIApp:
    """A call of the middleware as an `async def`, for servers that look at
    `app.__call__` to tell ASGI 3 from ASGI 2 (uvicorn, hypercorn, asgiref) or call it by
    that name. It holds the middleware weakly: kept in the middleware's own `__dict__`,
    a bound method would make every middleware a reference cycle."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        self = middleware()
        if self is None:
            raise RuntimeError("SkewMiddleware called after it was freed")
        await type(self).__call__(self, scope, receive, send)

    return call


def _load(source: BaselineSource, model: str) -> Baseline:
    """Load now: a bad baseline fails the app's startup, not its first request."""
    if isinstance(source, Baseline):
        return source
    try:
        return Baseline.load(source)
    except BaselineError as exc:
        raise BaselineError(f"SkewMiddleware(model={model!r}): {exc}") from None


Chunks: TypeAlias = "tuple[bytes, ...] | list[bytes]"


def _kept(chunks: Chunks, body: bytes) -> Chunks:
    """`chunks` and `body`: a tuple while there are few chunks (most bodies have one), a
    list beyond (appends stay linear however many chunks a client sends).

    Tuples because samples wait in the queue for up to a second: see `Monitor.submit`.
    """
    if type(chunks) is tuple:
        return (*chunks, body) if len(chunks) < 8 else [*chunks, body]
    chunks.append(body)  # type: ignore[union-attr]
    return chunks


class _Tap:
    """Per-request state: references to body chunks and header lists, never copies.

    `receive` and `send` are bound methods of this object, not closures: one
    allocation per sampled request instead of three. sidecar/_tap.c is the same
    class compiled (`Tap` below), used where it was built.
    """

    __slots__ = (
        "_receive",
        "_send",
        "finished",
        "headers",
        "limit",
        "overflow",
        "request",
        "request_done",
        "request_size",
        "response",
        "response_headers",
        "response_size",
        "status",
        "monitor",
        "responses",
    )

    def __init__(
        self,
        monitor: Monitor | DatagramSink,
        queue: object,  # the compiled tap's way to the queue: this one calls submit
        responses: bool,
        limit: int,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        self.monitor = monitor
        self.responses = responses  # the response is read too: submitted when it ends
        self.limit = limit
        self._receive = receive
        self._send = send
        self.request: Chunks = ()
        self.request_size = 0
        self.request_done = False
        self.response: Chunks = ()
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
                        if self.request_size <= self.limit:
                            self.request = _kept(self.request, body)
                        else:
                            self.overflow = True
                    if not message.get("more_body", False):
                        self.request_done = True
                        if not self.responses:
                            self.finish()
                elif kind == "http.disconnect":
                    self.finish()  # the client left mid-body: counted once, nothing queued
        except Exception:
            self.monitor._error("worker")
        return message

    def send(self, message: Message) -> Awaitable[None]:
        """Looks at the message, then returns the server's own `send(message)` for the
        app to await: a plain function, so no coroutine of its own per message."""
        try:
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body", b"")
                if body:
                    self.response_size += len(body)
                    if self.response_size <= self.limit:
                        self.response = _kept(self.response, body)
                if not message.get("more_body", False):
                    self.finish()
            elif kind == "http.response.start":
                self.status = message["status"]
                self.response_headers = message.get("headers", ())
        except Exception:
            self.monitor._error("worker")
        return self._send(message)

    def finish(self) -> None:
        if self.finished:
            return  # a disconnect finished it before the response did
        self.finished = True
        monitor = self.monitor
        if self.overflow:
            _bump(monitor.counts.dropped, "too_large")
        elif not self.request_done:
            _bump(monitor.counts.dropped, "body_incomplete")  # the app did not read it all
        elif not self.request:
            _bump(monitor.counts.dropped, "empty_body")
        else:
            # A response over the size limit is left out; the request is still checked.
            too_big = self.response_size > self.limit
            response = () if too_big else self.response
            size = self.request_size + (0 if too_big else self.response_size)
            monitor.submit(
                Sample(self.request, response, self.status, self.headers, self.response_headers),
                size,
            )


def _compiled_tap() -> Any:
    """sidecar._tap.Tap, told which Sample class to submit, or None."""
    tap = compiled("_tap", "Tap")
    if tap is not None:
        compiled("_tap", "use_sample")(Sample)
    return tap


# The compiled tap where it was built: the same looking, without a Python frame per
# message (a sampled request cost 23,000 instructions more than an unsampled one).
Tap: Any = _compiled_tap() or _Tap
