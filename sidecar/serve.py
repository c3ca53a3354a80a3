"""`skew-sidecar serve`: the sidecar process. One or several baselines, samples by HTTP.

Samples arrive two ways, told apart by their headers, on any path but the app's own
(below):

- mirrored requests (nginx `mirror`, Envoy/Istio request mirroring): the body is read
  up to `max_body_bytes`, queued for the model's monitor, and answered 204 at once;
  the primary never waits on the check, which runs in the monitor's thread;
- payload-logger CloudEvents in binary mode (KServe's inference logger, Seldon's
  request logger; see cloudevents.py): request and response events are joined and
  checked as one exchange.

`/metrics`, `/healthz`, `/readyz` and the debug page (`/skew`, `/skew.json`) are served
by the same app. Settings come from flags or `SKEW_SIDECAR_*` environment variables,
read in `ServeSettings.resolve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.config import Config
from starlette.types import Receive, Scope, Send

from .admin import protected, reload_app
from .baseline import Baseline, BaselineError
from .cloudevents import (
    OUTCOMES,
    CloudEventError,
    Exchange,
    Joiner,
    is_cloudevent,
    is_structured,
    read_headers,
)
from .debug import debug_app
from .evidence import EvidenceOptions
from .metrics import metrics_app
from .middleware import _Tap
from .models import DEFAULT_MODEL, Routes, model_from_path, parse_baseline_spec
from .proxy import Proxy, UpstreamError, reply_502
from .report import DriftRule
from .sampling import TokenBucket
from .tap import TapAddress, TapBatch, TapCounts, TapFormatError, TapLedger, bind, decode
from .worker import Monitor, Sample, _bump

logger = logging.getLogger("sidecar.serve")

ENV_PREFIX = "SKEW_SIDECAR_"
# What operators call: served on --admin-port when given, behind --admin-token when set.
OPERATOR_PATHS = frozenset({"/metrics", "/skew", "/skew.json", "/admin/reload"})
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
RESERVED_PATHS = OPERATOR_PATHS | HEALTH_PATHS
# What happened to each CloudEvent (skew_sidecar_cloudevents_total{result}).
EVENT_RESULTS = ("accepted", "duplicate", "ignored", "invalid")
# What happened to each datagram from a tap (skew_sidecar_tap_datagrams_total{result}).
TAP_RESULTS = ("sample", "batch", "counts", "invalid", "unknown_model")
# Settings that are lists: repeatable flags, comma-separated variables.
_FIELD_LISTS = ("redact_fields", "hash_fields")
_LISTS = ("baseline", "tap", *_FIELD_LISTS)
INSTALL_HINT = "the serve command needs uvicorn: pip install 'skew-sidecar[serve]'"


@dataclass(frozen=True)
class ServeSettings:
    """Every setting of `serve`; each has a flag and a SKEW_SIDECAR_<NAME> variable."""

    baseline: tuple[str, ...] = ()  # PATH or NAME=PATH; the variable is comma-separated
    tap: tuple[str, ...] = ()  # datagram tap addresses: unix:///path or udp://host:port
    host: str = "127.0.0.1"
    port: int = 8090
    sample_rate: float = 1.0
    max_samples_per_second: float = 1000.0  # per model
    max_body_bytes: int = 1 << 20
    window_seconds: float = 60.0
    min_window_rows: int = 100
    queue_size: int = 10_000
    join_wait_seconds: float = 5.0
    max_pending: int = 10_000
    max_pending_bytes: int = 64 << 20
    log_level: str = "info"
    upstream: str = ""  # reverse proxy mode: forward to this model server and tap
    upstream_timeout: float = 60.0
    evidence: int = 0  # offending values kept per feature; 0: evidence off
    evidence_total: int = 1000  # per model
    redact_fields: tuple[str, ...] = ()  # comma-separated in the variable
    hash_fields: tuple[str, ...] = ()
    redaction_key: str = field(default="", repr=False)  # empty: a random key per process
    request_id_header: str = "x-request-id"
    baseline_poll_seconds: float = 0.0  # 0: baselines reload only on SIGHUP or the admin call
    admin_host: str = "127.0.0.1"
    admin_port: int = 0  # 0: /metrics, /skew and /admin/reload are served on --port
    admin_token: str = field(default="", repr=False)  # empty: no token asked for
    max_connections: int = 1000  # beyond, uvicorn answers 503

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            flag = "--" + name.replace("_", "-")
            value = getattr(self, name)
            return ValueError(f"{flag} ({ENV_PREFIX}{name.upper()}) {rule}, got {value!r}")

        if not 0.0 <= self.sample_rate <= 1.0:
            raise bad("sample_rate", "must be between 0 and 1")
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            raise bad("upstream", "must be an http:// or https:// URL")
        for name in (
            "max_samples_per_second",
            "window_seconds",
            "join_wait_seconds",
            "upstream_timeout",
        ):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        for name in (
            "max_body_bytes",
            "min_window_rows",
            "queue_size",
            "max_pending",
            "max_pending_bytes",
            "evidence_total",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.evidence < 0:
            raise bad("evidence", "must be 0 (off) or more")
        if len(self.redaction_key.encode()) > 64:
            raise ValueError(
                f"--redaction-key ({ENV_PREFIX}REDACTION_KEY) must be at most 64 bytes, "
                f"got {len(self.redaction_key.encode())}"
            )
        if not 0 <= self.port <= 65535:
            raise bad("port", "must be between 0 and 65535")
        if not 0 <= self.admin_port <= 65535 or (self.admin_port and self.admin_port == self.port):
            raise bad("admin_port", "must be 0 (off) or a port other than --port")
        if self.baseline_poll_seconds < 0:
            raise bad("baseline_poll_seconds", "must be 0 (off) or more")
        if self.admin_token and (not self.admin_token.isprintable() or " " in self.admin_token):
            raise ValueError(
                f"--admin-token ({ENV_PREFIX}ADMIN_TOKEN) must be printable without spaces"
            )
        if self.log_level.lower() not in ("critical", "error", "warning", "info", "debug"):
            raise bad("log_level", "must be one of critical, error, warning, info, debug")

    @classmethod
    def resolve(
        cls, flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> ServeSettings:
        """Flags that were given, else SKEW_SIDECAR_* variables, else the defaults.
        The only place the sidecar reads the environment."""
        config = Config(environ=environ, env_prefix=ENV_PREFIX)
        values: dict[str, Any] = {}
        for f in fields(cls):
            given = flags.get(f.name)
            if f.name in _LISTS:
                specs = given or config(f.name.upper(), default="").split(",")
                if f.name in _FIELD_LISTS:  # field names have no commas: flags split too
                    specs = [name for spec in specs for name in spec.split(",")]
                values[f.name] = tuple(s.strip() for s in specs if s.strip())
            elif given is not None:
                values[f.name] = given
            else:
                values[f.name] = config(f.name.upper(), cast=type(f.default), default=f.default)
        return cls(**values)

    def evidence_options(self) -> EvidenceOptions | None:
        """The evidence settings, or None when evidence is off."""
        if not self.evidence:
            return None
        return EvidenceOptions(
            per_feature=self.evidence,
            max_total=self.evidence_total,
            redact=self.redact_fields,
            hash=self.hash_fields,
            key=self.redaction_key.encode() or None,
            request_id_header=self.request_id_header,
        )


def baseline_paths(specs: Sequence[str]) -> dict[str, str]:
    """Each model's baseline file, from `PATH` / `NAME=PATH` specs."""
    parsed = [parse_baseline_spec(spec) for spec in specs]
    return {name if name is not None else DEFAULT_MODEL: path for name, path in parsed}


def load_baselines(specs: Sequence[str]) -> tuple[dict[str, Baseline], Routes]:
    """Load every `PATH` / `NAME=PATH`; BaselineError names the model and the file."""
    parsed = [parse_baseline_spec(spec) for spec in specs]
    routes = Routes.from_specs([name for name, _ in parsed])
    baselines = {}
    for name, path in parsed:
        model = name if name is not None else DEFAULT_MODEL
        try:
            baselines[model] = Baseline.load(path)
        except BaselineError as exc:
            raise BaselineError(f"model {model!r}: {exc}") from None
    return baselines, routes


class _Half:
    """One event's model, body chunks and header list, waiting for the other half."""

    __slots__ = ("chunks", "headers", "model", "size")

    def __init__(
        self, model: str, chunks: list[bytes], headers: Sequence[tuple[bytes, bytes]]
    ) -> None:
        self.model = model
        self.chunks = chunks
        self.headers = headers
        self.size = sum(map(len, chunks))


@dataclass
class _Counts:
    """Process-level counts that belong to no model (plain ints, written on the loop)."""

    unknown_model: int = 0
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_RESULTS, 0))
    datagrams: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TAP_RESULTS, 0))
    upstream_errors: int = 0
    exchanges: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))


class _SidecarCollector(Collector):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts = self.sidecar.counts
        yield CounterMetricFamily(
            "skew_sidecar_unknown_model",
            "Samples naming a model that has no baseline (the name is not kept).",
            value=counts.unknown_model,
        )
        yield _by_label(
            "skew_sidecar_cloudevents", "Payload-logger CloudEvents received.",
            "result", counts.events,
        )  # fmt: skip
        yield _by_label(
            "skew_sidecar_exchanges",
            "CloudEvent exchanges handed to a monitor: joined, or one half alone.",
            "outcome", counts.exchanges,
        )  # fmt: skip
        yield _by_label(
            "skew_sidecar_tap_datagrams",
            "Datagrams from in-app taps: one sample, a batch of them, counts reports, and "
            "rejected ones.",
            "result", counts.datagrams,
        )  # fmt: skip
        yield CounterMetricFamily(
            "skew_sidecar_upstream_errors",
            "Proxied requests the upstream model server did not answer (answered 502).",
            value=counts.upstream_errors,
        )
        yield GaugeMetricFamily(
            "skew_sidecar_tap_processes",
            "Serving processes whose counts the sidecar keeps (tap incarnations).",
            value=len(self.sidecar.ledger),
        )
        joiner = self.sidecar.joiner
        yield GaugeMetricFamily(
            "skew_sidecar_pending_exchanges",
            "CloudEvent exchanges waiting for their other half.",
            value=len(joiner),
        )
        yield GaugeMetricFamily(
            "skew_sidecar_pending_bytes",
            "Body bytes held by CloudEvent exchanges waiting for their other half.",
            value=joiner.pending_bytes,
        )


def _by_label(name: str, doc: str, label: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in counts.items():
        family.add_metric([value], n)
    return family


class Sidecar:
    """The sidecar's ASGI app: mirror receiver, CloudEvents sink, metrics, health.

    Run it with a lifespan (uvicorn does): startup starts one monitor thread per model,
    shutdown hands over the exchanges still waiting and flushes every last window.
    """

    def __init__(
        self,
        baselines: Mapping[str, Baseline],
        *,
        routes: Routes | None = None,
        sample_rate: float = 1.0,
        max_samples_per_second: float = 1000.0,
        max_body_bytes: int = 1 << 20,
        queue_size: int = 10_000,
        window_seconds: float = 60.0,
        min_window_rows: int = 100,
        join_wait_seconds: float = 5.0,
        max_pending: int = 10_000,
        max_pending_bytes: int = 64 << 20,
        taps: Sequence[str] = (),
        upstream: str | None = None,
        upstream_timeout: float = 60.0,
        evidence: EvidenceOptions | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        baseline_files: Mapping[str, str] | None = None,
        baseline_poll_seconds: float = 0.0,
        admin_port: int | None = None,
        admin_token: str | None = None,
    ) -> None:
        if not baselines:
            raise ValueError("Sidecar needs at least one baseline")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {sample_rate!r}")
        if not max_samples_per_second > 0:
            raise ValueError(
                f"max_samples_per_second must be positive, got {max_samples_per_second!r}"
            )
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        if routes is None:
            only = next(iter(baselines)) if len(baselines) == 1 else None
            routes = Routes(frozenset(baselines), only)
        if routes.models != set(baselines):
            raise ValueError(f"routes name {sorted(routes.models)}, baselines {sorted(baselines)}")
        self.routes = routes
        self.joiner: Joiner[_Half] = Joiner(
            wait_seconds=join_wait_seconds,
            max_pending=max_pending,
            max_bytes=max_pending_bytes,
            size=lambda half: half.size,
            clock=clock,
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.monitors = {
            name: Monitor(
                baseline,
                model=name,
                queue_size=queue_size,
                window_seconds=window_seconds,
                rule=DriftRule(min_rows=min_window_rows),
                registry=self.registry,
                evidence=evidence,
            )
            for name, baseline in baselines.items()
        }
        self.caps = {name: TokenBucket(max_samples_per_second, clock) for name in baselines}
        self.sample_rate = sample_rate
        # CloudEvents are sampled by key, so both halves of an exchange agree.
        self._key_threshold = int(sample_rate * 2**32)
        self.max_body_bytes = max_body_bytes

        self._tick = min(0.5, join_wait_seconds / 4)
        self.counts = _Counts()
        self.ready = False
        self._expiry: asyncio.Task[None] | None = None
        self._metrics = metrics_app(self.registry)
        self._debug = debug_app(lambda: list(self.monitors.values()))
        self._random = random.random
        self._logged: set[str] = set()
        self.tap_addresses = [TapAddress.parse(text) for text in taps]
        self.proxy = Proxy(upstream, timeout=upstream_timeout) if upstream else None
        self.ledger = TapLedger()
        self._tap_transports: list[asyncio.DatagramTransport] = []
        self.registry.register(_SidecarCollector(self))
        # Hot reload: each model's file, looked at every baseline_poll_seconds (0: only
        # on SIGHUP and POST /admin/reload).
        for name, path in (baseline_files or {}).items():
            interval = baseline_poll_seconds if baseline_poll_seconds > 0 else math.inf
            self.monitors[name].watch_baseline(path, interval)
        self.admin_port = admin_port or None
        self._operator = {
            "/metrics": protected(self._metrics, admin_token),
            "/skew": protected(self._debug, admin_token),
            "/skew.json": protected(self._debug, admin_token),
            "/admin/reload": protected(reload_app(self.monitors), admin_token),
        }

    def reload(self) -> None:
        """Look at every baseline file now (SIGHUP): the monitors' workers load them."""
        for monitor in self.monitors.values():
            monitor.reload()

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets
        path = scope["path"]
        admin = self.admin_port is not None and _local_port(scope) == self.admin_port
        if path in RESERVED_PATHS or path.rstrip("/") in RESERVED_PATHS:
            path = path.rstrip("/")
            if path in OPERATOR_PATHS:
                if self.admin_port is not None and not admin:
                    await _reply(send, 404, f"served on the admin port ({self.admin_port})")
                else:
                    await self._operator[path](scope, receive, send)
            elif path == "/healthz":
                problem = self.health_problem()
                await _reply(send, 503 if problem else 200, problem or "ok")
            else:
                await _reply(
                    send, 200 if self.ready else 503, "ready" if self.ready else "not ready"
                )
            return
        if admin:
            await _reply(send, 404, "the admin port serves /metrics, /skew, /admin/reload")
            return
        if self.proxy is not None:
            await self._proxied(self.proxy, scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT"):
            await _reply(send, 405, "send samples with POST or PUT", [(b"allow", b"POST, PUT")])
            return
        headers = scope["headers"]
        if is_cloudevent(headers):
            await self._cloudevent(scope, receive, send)
        elif is_structured(_header(headers, b"content-type")):
            self.counts.events["invalid"] += 1
            await _reply(
                send,
                415,
                "structured-mode CloudEvents are not supported: send binary mode "
                "(ce-* headers), as the KServe and Seldon payload loggers do",
            )
        else:
            await self._mirror(scope, receive, send)

    def health_problem(self) -> str:
        """Empty while every monitor thread and the join timer are alive."""
        dead = [name for name, monitor in self.monitors.items() if not monitor.running]
        if dead:
            return f"monitor thread not running for model(s): {', '.join(sorted(dead))}"
        if self._expiry is None or self._expiry.done():
            return "CloudEvents join timer not running"
        return ""

    # -- mirrored requests -----------------------------------------------------------

    async def _mirror(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = model_from_path(scope["path"])
        model = self.routes.resolve(name)
        if model is None:
            self._unknown_model(name)
            await _reply(send, 204)  # the body is never read: uvicorn discards it
            return
        monitor = self.monitors[model]
        monitor.counts.seen += 1
        if not self._chosen(model):
            await _reply(send, 204)
            return
        chunks, problem = await self._read_body(scope, receive)
        if problem:
            _bump(monitor.counts.dropped, problem)
        elif not chunks:
            _bump(monitor.counts.dropped, "empty_body")
        else:
            monitor.submit(Sample(chunks, headers=scope["headers"]))
        await self._answer(send, problem, 204)

    # -- CloudEvents -----------------------------------------------------------------

    async def _cloudevent(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = self.counts.events
        try:
            event = read_headers(scope["headers"])
        except CloudEventError as exc:
            events["invalid"] += 1
            self._log_once("invalid", "first invalid CloudEvent (answered 400): %s", exc)
            await _reply(send, 400, f"invalid CloudEvent: {exc}")
            return
        if event.kind is None:
            events["ignored"] += 1  # Seldon feedback: no payload to check
            await _reply(send, 200)
            return
        name = event.model or model_from_path(scope["path"])
        model = self.routes.resolve(name)
        if model is None:
            events["accepted"] += 1
            self._unknown_model(name)
            await _reply(send, 200)
            return
        key = (model, event.key)
        if self.joiner.seen(key, event.kind):
            events["duplicate"] += 1
            await _reply(send, 200)
            return
        monitor = self.monitors[model]
        if zlib.crc32(event.key.encode("utf-8", "surrogateescape")) >= self._key_threshold:
            events["accepted"] += 1
            if event.kind == "request":
                monitor.counts.seen += 1  # sampled exchanges are counted when handed over
            await _reply(send, 200)
            return
        chunks, problem = await self._read_body(scope, receive)
        if problem:
            events["accepted"] += 1
            _bump(monitor.counts.dropped, problem)
            await self._answer(send, problem, 200)
            return
        done = self.joiner.add(key, event.kind, _Half(model, chunks, scope["headers"]))
        if done is None:  # the same event arrived again while this body was read
            events["duplicate"] += 1
        else:
            events["accepted"] += 1
            for exchange in done:
                self._hand_over(exchange)
        await _reply(send, 200)

    def _hand_over(self, exchange: Exchange[_Half]) -> None:
        """Queue a completed exchange (joined, or one half alone) for its monitor."""
        self.counts.exchanges[exchange.outcome] += 1
        request, response = exchange.request, exchange.response
        half = request if request is not None else response
        if half is None:
            return  # the joiner never hands over an empty exchange
        monitor = self.monitors[half.model]
        monitor.counts.seen += 1
        if not self._allowed(half.model):
            return
        request_chunks = request.chunks if request is not None else []
        response_chunks = response.chunks if response is not None else []
        if not request_chunks and not (response_chunks and monitor.checks_responses):
            _bump(monitor.counts.dropped, "empty_body")
            return
        monitor.submit(
            Sample(
                request_chunks,
                response_chunks,
                200,  # KServe logs responses only for status 200
                request.headers if request is not None else (),
                response.headers if response is not None else (),
            )
        )

    # -- reverse proxy -------------------------------------------------------------------

    async def _proxied(self, proxy: Proxy, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward to the upstream; a sampled POST goes through the middleware's tap,
        which keeps the chunks it sees (up to max_body_bytes) and queues the exchange."""
        if scope["method"] == "POST":
            name = model_from_path(scope["path"])
            model = self.routes.resolve(name)
            if model is None:
                self._unknown_model(name)
            else:
                monitor = self.monitors[model]
                monitor.counts.seen += 1
                if self._chosen(model):
                    tap = _Tap(monitor, None, True, self.max_body_bytes, scope, receive, send)
                    receive, send = tap.receive, tap.send
        try:
            await proxy.forward(scope, receive, send)
        except UpstreamError as exc:
            self.counts.upstream_errors += 1
            self._log_once("upstream", "first failed upstream request (answered 502): %s", exc)
            for message in reply_502(str(exc)):
                await send(message)

    # -- datagrams from in-app taps --------------------------------------------------------

    def tap_datagram(self, data: bytes) -> None:
        """One datagram from a serving process's tap: a sample, or its counts."""
        results = self.counts.datagrams
        try:
            item = decode(data)
        except TapFormatError as exc:
            results["invalid"] += 1
            self._log_once("tap_invalid", "first invalid tap datagram (dropped): %s", exc)
            return
        model = self.routes.resolve(None if item.model == DEFAULT_MODEL else item.model)
        if model is None:
            results["unknown_model"] += 1
            self._unknown_model(item.model)
            return
        monitor = self.monitors[model]
        if isinstance(item, TapCounts):
            results["counts"] += 1
            seen, dropped = self.ledger.report(item)
            monitor.counts.seen += seen
            for reason, n in dropped.items():
                _bump(monitor.counts.dropped, reason, n)
            return
        if isinstance(item, TapBatch):
            results["batch"] += 1
            samples = item.samples
        else:
            results["sample"] += 1
            samples = [item.sample]
        self.ledger.received(item.model, item.incarnation, len(samples))
        for sample in samples:
            # Sampled by the tap already: only the per-model cap applies (many workers).
            if self._allowed(model):
                monitor.submit(sample)

    async def _open_taps(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self.tap_addresses:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _TapProtocol(self), sock=bind(address)
            )
            self._tap_transports.append(transport)
            logger.info("tap: receiving samples on %s", address.text)

    def _close_taps(self) -> None:
        for transport in self._tap_transports:
            transport.close()
        self._tap_transports.clear()
        for address in self.tap_addresses:
            if address.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(address.address)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            try:
                for exchange in self.joiner.expire():
                    self._hand_over(exchange)
            except Exception:  # the timer must outlive a bug in one exchange
                self._log_once("expiry", "CloudEvents join timer failed; still running", exc=True)

    # -- shared ------------------------------------------------------------------------

    def _chosen(self, model: str) -> bool:
        """Whether to check this request: the sample rate, then the model's cap."""
        if self.sample_rate < 1.0 and self._random() >= self.sample_rate:
            return False
        return self._allowed(model)

    def _allowed(self, model: str) -> bool:
        """The model's cap; a refusal is counted as rate_limited."""
        if self.caps[model].take():
            return True
        _bump(self.monitors[model].counts.dropped, "rate_limited")
        return False

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[list[bytes], str]:
        """The body's chunks, or a drop reason: too_large (nothing kept beyond the cap,
        and nothing read at all when Content-Length says so) or body_incomplete."""
        declared = _header(scope["headers"], b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return [], "too_large"
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return [], "body_incomplete"  # the sender went away mid-body
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > self.max_body_bytes:
                    return [], "too_large"
                chunks.append(body)
            if not message.get("more_body", False):
                return chunks, ""

    async def _answer(self, send: Send, problem: str, ok_status: int) -> None:
        if problem == "too_large":
            await _reply(send, 413, f"body larger than max_body_bytes ({self.max_body_bytes})")
        else:
            await _reply(send, ok_status)

    def _unknown_model(self, name: str | None) -> None:
        self.counts.unknown_model += 1
        self._log_once(
            "unknown_model",
            "samples name model %.100r, which has no baseline (models: %s); counted in "
            "skew_sidecar_unknown_model_total, logged once",
            name,
            ", ".join(sorted(self.monitors)),
        )

    def _log_once(self, what: str, message: str, *args: object, exc: bool = False) -> None:
        if what not in self._logged:  # once per kind: bad input must not flood the log
            self._logged.add(what)
            logger.warning(message, *args, exc_info=exc)

    # -- lifecycle ---------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                    await self._open_taps()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> None:
        """Start the monitor threads and the join timer (on the running event loop)."""
        for monitor in self.monitors.values():
            monitor.start()
        self._expiry = asyncio.get_running_loop().create_task(self._expire_forever())
        self.ready = True
        logger.info(
            "ready: model(s) %s; sample rate %g; CloudEvents joined within %g s",
            ", ".join(sorted(self.monitors)),
            self.sample_rate,
            self.joiner.wait_seconds,
        )

    async def stop(self) -> None:
        """Hand over waiting exchanges, then stop every monitor (flushing its window)."""
        self.ready = False
        self._close_taps()
        if self.proxy is not None:
            await self.proxy.aclose()
        logger.info("shutting down: %d CloudEvent exchange(s) pending", len(self.joiner))
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        for exchange in self.joiner.flush():
            self._hand_over(exchange)
        # Joining the threads checks what is queued and flushes the windows: off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._stop_monitors)

    def _stop_monitors(self) -> None:
        for name, monitor in self.monitors.items():
            monitor.stop()
            snap = monitor.snapshot()
            logger.info(
                "model %s: stopped; last window %d rows; %d window(s), %d rows checked in all",
                name,
                snap.last_window[0].rows if snap.last_window else 0,
                snap.windows,
                snap.totals[0].rows if snap.totals else 0,
            )
        logger.info("stopped: every last window flushed")


class _TapProtocol(asyncio.DatagramProtocol):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.sidecar.tap_datagram(data)
        except Exception:  # one bad datagram must not stop the receiver
            self.sidecar._log_once("tap_error", "tap datagram handling failed", exc=True)


def _local_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return server[1] if server else None


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key == name:  # ASGI servers lowercase header names
            return value.decode("latin-1")
    return ""


async def _reply(
    send: Send, status: int, text: str = "", headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = text.encode() if status != 204 else b""
    out = [*headers]
    if body:
        out.append((b"content-type", b"text/plain; charset=utf-8"))
    if status != 204:
        out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def build(settings: ServeSettings) -> Sidecar:
    """Load the baselines (BaselineError on a bad one) and build the app."""
    baselines, routes = load_baselines(settings.baseline)
    for name, baseline in sorted(baselines.items()):
        logger.info(
            "model %s: baseline %s, %d features, %d training rows",
            name,
            baseline.baseline_hash,
            len(baseline.features),
            baseline.rows,
        )
    return Sidecar(
        baselines,
        routes=routes,
        sample_rate=settings.sample_rate,
        max_samples_per_second=settings.max_samples_per_second,
        max_body_bytes=settings.max_body_bytes,
        queue_size=settings.queue_size,
        window_seconds=settings.window_seconds,
        min_window_rows=settings.min_window_rows,
        join_wait_seconds=settings.join_wait_seconds,
        max_pending=settings.max_pending,
        max_pending_bytes=settings.max_pending_bytes,
        taps=settings.tap,
        upstream=settings.upstream or None,
        upstream_timeout=settings.upstream_timeout,
        evidence=settings.evidence_options(),
        baseline_files=baseline_paths(settings.baseline),
        baseline_poll_seconds=settings.baseline_poll_seconds,
        admin_port=settings.admin_port or None,
        admin_token=settings.admin_token or None,
    )


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT: uvicorn stops accepting, lets open requests finish,
    then the lifespan shutdown flushes the windows. Returns 1 if startup failed."""
    try:
        import uvicorn
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = build(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,  # one format for every line: the root logger's
        log_level=settings.log_level.lower(),
        access_log=False,  # a line per mirrored request would drown the rest
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.max_connections,  # beyond: 503 at once
    )
    server = uvicorn.Server(config)
    # SIGHUP: look at every baseline file now (uvicorn leaves SIGHUP alone).
    signal.signal(signal.SIGHUP, lambda signum, frame: app.reload())
    sockets = None
    if settings.admin_port:
        sockets = [
            _listen(settings.host, settings.port),
            _listen(settings.admin_host, settings.admin_port),
        ]
        logger.info("operator endpoints on http://%s:%d", settings.admin_host, settings.admin_port)
    # On SIGTERM uvicorn shuts down gracefully, then re-raises the signal: the process
    # ends as killed by SIGTERM (status 143 in a shell), after the lifespan shutdown.
    server.run(sockets=sockets)
    return 0 if server.started else 1


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)
