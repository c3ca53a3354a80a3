"""Skewed traffic reaches a person: SkewMiddleware, Prometheus, Alertmanager, a webhook.

A uvicorn app with SkewMiddleware (model "churn", 1-second windows), a real Prometheus
scraping it every second with deploy/prometheus/alert_rules.yml, a real Alertmanager
with deploy/prometheus/alertmanager.yml, and a webhook receiver of the test's own
standing in for the chat and the pager. Both configs are the shipped files with shorter
durations: every duration of the rules divided by SPEEDUP, Alertmanager's group_wait and
group_interval in seconds (and its receivers' URLs pointed at the webhook). Nothing else
changes: the shipped rules, routes and inhibitions are what is tested.

The traffic: a 100-row request four times a second, matching training, then skewed, then
matching again. Skewed: x sent in thousandths (x1000: out of range, PSI far off, a unit
change) and c in capitals (categories never seen in training, PSI far off, a vocabulary
mismatch). Between mixes the sender pauses until the window holding its last rows has
closed: no window mixes the two (half a skewed window can put PSI between the warning
and critical thresholds, which would resolve the critical before the warning).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from sidecar import Baseline, SkewMiddleware, metrics_app
from sidecar.worker import Monitor
from tests.prometheus import (
    Prometheus,
    alertmanager_binary,
    binary,
    run_alertmanager,
    run_prometheus,
)
from tests.servers import serve

ROOT = Path(__file__).resolve().parent.parent
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alert_rules.yml"
ALERTMANAGER = ROOT / "deploy" / "prometheus" / "alertmanager.yml"
SPEEDUP = 120  # a minute of the shipped rules is half a second here
ALERTMANAGER_TIMING = {"group_wait": "3s", "group_interval": "1s"}
ROWS = 100  # per request: each request alone fills a window (min_window_rows)
SEND_EVERY = 0.25  # seconds between two requests
TIMEOUT = 120.0  # the longest any step may take, on a slow shared machine
MODEL = "churn"
DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# A window older than this many seconds is ignored (the PSI alerts): a duration too.
AGE_BOUND = re.compile(r"(time\(\) - \w+ < )(\d+)")

# What the skew fires (alertname, feature), per receiver; and the inhibited warnings.
CHAT = {("SkewFeatureOutOfRange", "x"), ("SkewFeatureUnseenCategory", "c")}
PAGER = {("SkewFeaturePSICritical", "x"), ("SkewFeaturePSICritical", "c")}
INHIBITED = {("SkewFeaturePSIWarning", "x"), ("SkewFeaturePSIWarning", "c")}
DIAGNOSIS = {"x": "unit_change", "c": "vocabulary_mismatch"}


def rows(skewed: bool) -> list[dict[str, Any]]:
    """x: 0..99 once each (ten training bins, equally full); c: a, b, c in turn."""
    return [
        {"x": float(i % 100) * (1000 if skewed else 1), "c": ("ABC" if skewed else "abc")[i % 3]}
        for i in range(ROWS)
    ]


# -- the test copies of the configs ---------------------------------------------------------


def shorter(duration: str) -> str:
    """A Prometheus duration divided by SPEEDUP, in milliseconds."""
    parts = DURATION.findall(duration)
    assert "".join(n + unit for n, unit in parts) == duration, duration
    return f"{sum(int(n) * UNIT_MS[unit] for n, unit in parts) // SPEEDUP}ms"


def faster_rules(rules: dict[str, Any]) -> dict[str, Any]:
    """Every `for:`, range and window-age bound of the rules divided by SPEEDUP."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = shorter(rule["for"])
            expr = re.sub(r"\[(\w+)\]", lambda m: f"[{shorter(m.group(1))}]", rule["expr"])
            rule["expr"] = AGE_BOUND.sub(
                lambda m: f"{m.group(1)}{int(m.group(2)) / SPEEDUP:g}", expr
            )
    return rules


def faster_alertmanager(config: dict[str, Any], webhook: str) -> dict[str, Any]:
    """ALERTMANAGER_TIMING on every route that sets it; webhooks to `webhook`/<receiver>."""
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        for key, value in ALERTMANAGER_TIMING.items():
            if key in route:
                route[key] = value
        routes.extend(route.get("routes", []))
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook}/{receiver['name']}"
    return config


def masked(value: Any) -> Any:
    """`value` (a parsed config) with every duration and window-age bound replaced."""
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str):
        return AGE_BOUND.sub(r"\1N", DURATION.sub("D", value))
    return value


def test_the_test_configs_are_the_shipped_ones_with_shorter_durations() -> None:
    shipped = yaml.safe_load(ALERT_RULES.read_text())
    fast = faster_rules(yaml.safe_load(ALERT_RULES.read_text()))
    assert masked(fast) == masked(shipped)
    psi = fast["groups"][0]["rules"][5]
    assert (psi["alert"], psi["for"]) == ("SkewFeaturePSICritical", "7500ms")
    assert "< 30)" in psi["expr"] and "[" not in psi["expr"]
    out_of_range = fast["groups"][0]["rules"][0]["expr"]
    assert "[5000ms]" in out_of_range and "[10m]" not in out_of_range

    config = yaml.safe_load(ALERTMANAGER.read_text())
    fast_config = faster_alertmanager(yaml.safe_load(ALERTMANAGER.read_text()), "http://hook")
    (skew,) = fast_config["route"]["routes"]
    assert (skew["group_wait"], skew["group_interval"]) == ("3s", "1s")
    assert skew["repeat_interval"] == config["route"]["routes"][0]["repeat_interval"]
    urls = [h["url"] for r in fast_config["receivers"] for h in r.get("webhook_configs", [])]
    assert urls == ["http://hook/skew-chat", "http://hook/skew-pager"]
    # Put back what changed: the rest is the shipped config.
    skew.update({k: config["route"]["routes"][0][k] for k in ALERTMANAGER_TIMING})
    for fast_receiver, receiver in zip(fast_config["receivers"], config["receivers"], strict=True):
        for fast_hook, hook in zip(
            fast_receiver.get("webhook_configs", []),
            receiver.get("webhook_configs", []),
            strict=True,
        ):
            fast_hook["url"] = hook["url"]
    assert fast_config == config


# -- the pieces ----------------------------------------------------------------------------


@dataclass
class Notification:
    receiver: str
    at: float  # time.monotonic() on arrival
    body: dict[str, Any]

    @property
    def status(self) -> str:
        status: str = self.body["status"]
        return status

    def alerts(self, status: str) -> set[tuple[str, str]]:
        """(alertname, feature) of the alerts in it with that status."""
        return {
            (a["labels"]["alertname"], a["labels"].get("feature", ""))
            for a in self.body["alerts"]
            if a["status"] == status
        }


class Webhook:
    """An Alertmanager webhook receiver: every notification it gets, in order."""

    def __init__(self) -> None:
        self.received: list[Notification] = []
        self.app = Starlette(routes=[Route("/{receiver}", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.received.append(Notification(request.path_params["receiver"], time.monotonic(), body))
        return Response(status_code=200)

    def of(self, receiver: str) -> list[Notification]:
        return [n for n in list(self.received) if n.receiver == receiver]


async def predict(request: Request) -> Response:
    return JSONResponse({"predictions": [0.5] * len(orjson.loads(await request.body()))})


class Traffic:
    """A ROWS-row request every SEND_EVERY seconds from a thread, in one mix at a time."""

    def __init__(self, url: str, tap: SkewMiddleware, registry: CollectorRegistry) -> None:
        assert isinstance(tap.monitor, Monitor)
        self.monitor = tap.monitor
        self.registry = registry
        self.skewed = False
        self.sent = 0  # rows
        self._paused = False
        self._lock = threading.Lock()  # held while a request is in flight
        self._stop = threading.Event()
        self._client = httpx.Client(base_url=url, timeout=10.0)
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._paused:
                    body = orjson.dumps(rows(self.skewed))
                    response = self._client.post("/predict", content=body)
                    response.raise_for_status()
                    self.sent += ROWS
            self._stop.wait(SEND_EVERY)

    def switch(self, skewed: bool, prometheus: Prometheus) -> float:
        """Pause until every row sent is checked and its window closed, then send the
        other mix; the moment it starts."""
        with self._lock:
            self._paused = True

        def drained() -> bool:
            checked = self.registry.get_sample_value("skew_rows_checked_total", {"model": MODEL})
            return checked == self.sent and self.monitor.requests.window.rows == 0

        prometheus.wait_for("the last window of the mix to close", drained, TIMEOUT)
        with self._lock:
            self.skewed, self._paused = skewed, False
            return time.monotonic()


@dataclass
class Delivery:
    """Everything the webhook received, and when the mixes changed."""

    webhook: Webhook
    skewed_at: float
    normal_at: float
    inhibited: list[dict[str, Any]] = field(default_factory=list)  # Alertmanager's view

    def of(self, receiver: str) -> list[Notification]:
        return self.webhook.of(receiver)


@pytest.fixture(scope="module")
def delivery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivery]:
    binary("prometheus")  # skip (or fail under CI) before starting anything
    alertmanager_binary("alertmanager", "prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("delivery")
    rules = workdir / "alert_rules.yml"
    rules.write_text(yaml.safe_dump(faster_rules(yaml.safe_load(ALERT_RULES.read_text()))))
    baseline = Baseline.from_records(
        [{"x": float(i % 100), "c": "abc"[i % 3]} for i in range(2000)]
    )
    registry = CollectorRegistry()
    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Mount("/metrics", app=metrics_app(registry)),
        ]
    )
    tap = SkewMiddleware(app, baseline=baseline, model=MODEL, registry=registry, window_seconds=1)
    webhook = Webhook()
    with contextlib.ExitStack() as stack:
        hook_url = stack.enter_context(serve(webhook.app))
        config = workdir / "alertmanager.yml"
        shipped = yaml.safe_load(ALERTMANAGER.read_text())
        config.write_text(yaml.safe_dump(faster_alertmanager(shipped, hook_url)))
        alertmanager = stack.enter_context(run_alertmanager(workdir, config))
        url = stack.enter_context(serve(tap))
        traffic = stack.enter_context(Traffic(url, tap, registry))
        prometheus = stack.enter_context(
            run_prometheus(
                workdir,
                {MODEL: [url.removeprefix("http://")]},
                [rules],
                alertmanagers=[alertmanager.base_url.netloc.decode()],
            )
        )
        prometheus.wait_for(
            "Prometheus to see the rows checked",
            lambda: bool(prometheus.query(f'skew_rows_checked_total{{job="{MODEL}"}} > 0')),
            TIMEOUT,
        )
        assert webhook.received == []  # traffic that matches training alerts no one

        skewed_at = traffic.switch(True, prometheus)
        prometheus.wait_for(
            "a notification to the chat and to the pager",
            lambda: bool(webhook.of("skew-chat") and webhook.of("skew-pager")),
            TIMEOUT,
        )

        warnings: list[dict[str, Any]] = []

        def inhibited() -> bool:
            warnings[:] = alertmanager.get(
                "/api/v2/alerts", params={"filter": 'alertname="SkewFeaturePSIWarning"'}
            ).json()
            return len(warnings) == 2 and all(
                a["status"]["state"] == "suppressed" for a in warnings
            )

        # The warnings fire later than the criticals (`for` 30m against 15m, shortened):
        # once they are in Alertmanager, inhibited, the skew has shown all it will.
        prometheus.wait_for("both PSI warnings inhibited in Alertmanager", inhibited, TIMEOUT)
        normal_at = traffic.switch(False, prometheus)

        def resolved(receiver: str) -> bool:
            notifications = webhook.of(receiver)
            return bool(notifications) and notifications[-1].status == "resolved"

        prometheus.wait_for(
            "resolved notifications to the chat and the pager",
            lambda: resolved("skew-chat") and resolved("skew-pager"),
            TIMEOUT,
        )
        result = Delivery(webhook, skewed_at, normal_at, warnings)
        for receiver in ("skew-chat", "skew-pager"):
            notifications = result.of(receiver)
            print(
                f"{receiver}: first notification {notifications[0].at - skewed_at:.1f} s after "
                f"the skew started, resolved {notifications[-1].at - normal_at:.1f} s after "
                f"traffic matched training again; {len(notifications)} notifications"
            )
        yield result


# -- what reached the webhook --------------------------------------------------------------


@pytest.mark.parametrize(("receiver", "expected"), [("skew-chat", CHAT), ("skew-pager", PAGER)])
def test_the_skew_reaches_each_receiver_as_one_notification_for_the_model(
    delivery: Delivery, receiver: str, expected: set[tuple[str, str]]
) -> None:
    """The first notification lists every alert of the receiver's severity for the model,
    all features together; the ones after it only resolve alerts, announce none."""
    notifications = delivery.of(receiver)
    first = notifications[0]
    assert first.status == "firing"
    assert first.body["groupLabels"] == {"job": MODEL, "model": MODEL}
    assert first.alerts("firing") == expected
    assert first.alerts("resolved") == set()
    assert {n.body["groupKey"] for n in notifications} == {first.body["groupKey"]}
    for later in notifications[1:]:
        assert later.alerts("firing") <= expected


@pytest.mark.parametrize(
    ("receiver", "severity"), [("skew-chat", "warning"), ("skew-pager", "critical")]
)
def test_the_notified_alerts_carry_model_feature_severity_and_diagnosis(
    delivery: Delivery, receiver: str, severity: str
) -> None:
    (rule,) = [
        r
        for g in yaml.safe_load(ALERT_RULES.read_text())["groups"]
        for r in g["rules"]
        if r["alert"] == "SkewFeatureOutOfRange"
    ]
    template = rule["annotations"]["diagnosis"]
    sentences = dict(re.findall(r'kind "(\w+)" \}\}(.*?)\{\{ end', template))
    for alert in delivery.of(receiver)[0].body["alerts"]:
        labels, annotations = alert["labels"], alert["annotations"]
        feature = labels["feature"]
        assert (labels["model"], labels["severity"]) == (MODEL, severity)
        assert annotations["summary"].startswith(f"{MODEL}: feature {feature} ")
        assert annotations["diagnosis"] == sentences[DIAGNOSIS[feature]], labels
        assert annotations["runbook_url"].startswith("docs/runbook.md#")


def test_the_psi_warnings_are_inhibited_by_the_criticals_and_never_notified_firing(
    delivery: Delivery,
) -> None:
    assert {(a["labels"]["feature"], a["status"]["state"]) for a in delivery.inhibited} == {
        ("x", "suppressed"),
        ("c", "suppressed"),
    }
    for alert in delivery.inhibited:
        assert alert["status"]["inhibitedBy"], alert["labels"]
    for notification in delivery.webhook.received:
        assert not notification.alerts("firing") & INHIBITED


@pytest.mark.parametrize(("receiver", "expected"), [("skew-chat", CHAT), ("skew-pager", PAGER)])
def test_every_notified_alert_resolves_after_traffic_matches_training_again(
    delivery: Delivery, receiver: str, expected: set[tuple[str, str]]
) -> None:
    """The last notification resolves every alert the receiver was told of. The chat's
    also lists the PSI warnings as resolved: Alertmanager reports an inhibited alert
    once its inhibitor resolves (prometheus/alertmanager#2754)."""
    last = delivery.of(receiver)[-1]
    assert last.at > delivery.normal_at
    assert last.alerts("firing") == set()
    assert expected <= last.alerts("resolved") <= expected | INHIBITED
