"""deploy/prometheus and the dashboard against real parts: promtool, a real Prometheus
scraping tapped apps served by uvicorn, and a real Alertmanager with the example config.

One Prometheus (scrape and rule evaluation every second) scrapes six targets:

- churn-a, churn-b: two replicas of model "churn", SkewMiddleware with its own registry
  and /metrics each, 1-second windows. They get the same skewed mix of rows, 3:1;
  churn-a also gets 100 bodies that are not JSON (dropped samples).
- canary-old, canary-new: model "canary" on two different baselines. canary-old's
  extractor always fails (100 requests, no row checked); canary-new gets no traffic.
- sidecar: `skew-sidecar serve`'s app for model "fraud", sent one request for an
  unknown model.
- multi: one SkewMiddleware for models "a" and "b" (multi-model paths), sent a request
  for each and one for a model it has no baseline for.

The traffic is designed so that every alert in deploy/prometheus/alert_rules.yml holds.
Prometheus loads the recording rules as they are and a copy of the alert rules whose
`for:` is 0s (the real durations are minutes; promtool's tests cover them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from sidecar import Baseline, SkewMiddleware, metrics_app
from sidecar.diagnosis import KINDS
from sidecar.measures import js_distance, psi
from sidecar.models import Routes
from sidecar.serve import Sidecar
from tests.prometheus import (
    Prometheus,
    alertmanager_binary,
    binary,
    run_alertmanager,
    run_prometheus,
)
from tests.servers import eventually, serve

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"
RECORDING = RULES / "recording_rules.yml"
ALERTING = RULES / "alert_rules.yml"
ALERTMANAGER_CONFIG = RULES / "alertmanager.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "skew-sidecar.json"
JSON = {"content-type": "application/json"}

# One unit of the skewed mix (40 rows). x was trained on 0..99 (ten bins of 0.1), c on
# a, b, c (a third each). x: 16 above the max, 4 below the min, 8 in (49, 59], 4 in
# (9, 19], 4 rows without x and 4 with x as a string: 32 binned values. c: 20 a, 10 b,
# 10 never seen in training (binned as __other__), no c at all.
UNIT_X: list[Any] = [500.0] * 16 + [-5.0] * 4 + [55.0] * 8 + [15.0] * 4 + [None] * 4 + ["12"] * 4
UNIT_C = ["a"] * 20 + ["b"] * 10 + ["zzz"] * 10
UNITS = {"churn-a": 3, "churn-b": 1}
CANARY_REQUESTS = 100
# Bodies that are not JSON, to churn-a: dropped samples, enough for SkewSamplesDropped's
# minimum of 100 samples (taken plus dropped) in its window.
INVALID_REQUESTS = 100


def unit() -> list[dict[str, Any]]:
    rows = []
    for x, c in zip(UNIT_X, UNIT_C, strict=True):
        row: dict[str, Any] = {"c": c}
        if x is not None:
            row["x"] = x
        rows.append(row)
    return rows


# -- promtool ----------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_promtool_accepts_the_rule_files_and_the_example_config() -> None:
    rules = promtool("check", "rules", str(RECORDING), str(ALERTING))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout
    assert "SUCCESS: 13 rules found" in rules.stdout
    config = promtool("check", "config", str(RULES / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_every_rule_pass() -> None:
    files = sorted(str(p) for p in (RULES / "tests").glob("*.yml"))
    assert len(files) == 2
    result = promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_promtool_tests_cover_every_alert_firing_and_silent() -> None:
    alerts = {
        r["alert"] for g in yaml.safe_load(ALERTING.read_text())["groups"] for r in g["rules"]
    }
    tests = yaml.safe_load((RULES / "tests" / "alert_rules_test.yml").read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert firing == alerts
    assert silent == alerts


DEPLOYMENT = ("namespace", "job")  # what tells two deployments of one model apart


def aggregations(expr: str) -> list[list[str]]:
    """The label lists of every `by (...)` and `on (...)` in an expression."""
    return [
        [label.strip() for label in labels.split(",")]
        for labels in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr)
    ]


def test_every_per_model_aggregation_of_the_alerts_keeps_the_deployment() -> None:
    """Two deployments of one model name (staging and prod) are never summed, counted
    or compared together: every sum, max, count or match that keeps `model` also keeps
    namespace and job."""
    rules = [r for g in yaml.safe_load(ALERTING.read_text())["groups"] for r in g["rules"]]
    per_model = 0
    for rule in rules:
        for labels in aggregations(rule["expr"]):
            if "model" in labels:
                per_model += 1
                assert labels[: len(DEPLOYMENT) + 1] == [*DEPLOYMENT, "model"], (
                    rule["alert"],
                    labels,
                )
    assert per_model >= 30


def test_every_aggregation_of_the_recording_rules_keeps_the_deployment() -> None:
    """The fleet PSI and JS, and their guards (100 values, one baseline), are per
    deployment too: every `by` and `on` starts with namespace, job, model, so staging's
    bin counts or baseline never reach prod's measures."""
    rules = [r for g in yaml.safe_load(RECORDING.read_text())["groups"] for r in g["rules"]]
    matched = 0
    for rule in rules:
        for labels in aggregations(rule["expr"]):
            matched += 1
            assert labels[: len(DEPLOYMENT) + 1] == [*DEPLOYMENT, "model"], (
                rule["record"],
                labels,
            )
    assert matched >= 20


# -- the fleet -----------------------------------------------------------------------------


def churn_baseline() -> Baseline:
    """x: 0..99 (ten quantile bins); c: "a" | "b" | "c"."""
    return Baseline.from_records([{"x": float(i % 100), "c": "abc"[i % 3]} for i in range(2000)])


def other_baseline() -> Baseline:
    return Baseline.from_records([{"x": float(i % 50), "c": "ab"[i % 2]} for i in range(1000)])


async def predict(request: Request) -> Response:
    try:
        payload = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"error": "invalid JSON"}, status_code=400)
    rows = payload if isinstance(payload, list) else [payload]
    return JSONResponse({"predictions": [0.5] * len(rows)})


def broken_extractor(body: Any) -> Sequence[Any]:
    raise ValueError("this extractor always fails (a test of skew_monitor_errors_total)")


@dataclass
class Target:
    name: str
    registry: CollectorRegistry
    model: str
    app: Any

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"model": self.model, **labels})

    def family(self, name: str, feature: str) -> dict[str, float]:
        """{bin: value} of one feature's per-bin family."""
        return {
            s.labels["bin"]: s.value
            for metric in self.registry.collect()
            for s in metric.samples
            if s.name == name and s.labels.get("feature") == feature
        }


def tapped(name: str, model: str, baseline: Baseline, **options: Any) -> Target:
    registry = CollectorRegistry()
    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Mount("/metrics", app=metrics_app(registry)),
        ]
    )
    tap = SkewMiddleware(
        app,
        baseline=baseline,
        model=model,
        registry=registry,
        window_seconds=1,
        min_window_rows=10,
        **options,
    )
    return Target(name, registry, model, tap)


def multi_model(name: str, baseline: Baseline) -> Target:
    """One SkewMiddleware for models "a" and "b", read from /v2/models/{name}/infer: a
    name without a baseline counts in skew_unknown_model_requests_total."""
    registry = CollectorRegistry()
    app = Starlette(
        routes=[
            Route("/v2/models/{name}/infer", predict, methods=["POST"]),
            Mount("/metrics", app=metrics_app(registry)),
        ]
    )
    tap = SkewMiddleware(
        app,
        baseline={"a": baseline, "b": baseline},
        model="a",
        registry=registry,
        window_seconds=1,
        min_window_rows=10,
    )
    return Target(name, registry, "a", tap)


@dataclass
class Stack:
    prometheus: Prometheus
    targets: dict[str, Target]
    instances: dict[str, str]  # target name -> host:port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary("prometheus")  # skip (or fail under CI) before starting anything
    churn, other = churn_baseline(), other_baseline()
    sidecar_registry = CollectorRegistry()
    targets = {
        "churn-a": tapped("churn-a", "churn", churn),
        "churn-b": tapped("churn-b", "churn", churn),
        "canary-old": tapped("canary-old", "canary", churn, extractor=broken_extractor),
        "canary-new": tapped("canary-new", "canary", other),
        "sidecar": Target(
            "sidecar",
            sidecar_registry,
            "fraud",
            Sidecar(
                {"fraud": churn},
                routes=Routes.from_specs(["fraud"]),
                registry=sidecar_registry,
                window_seconds=1,
                min_window_rows=10,
            ),
        ),
        "multi": multi_model("multi", other),
    }
    workdir = tmp_path_factory.mktemp("prometheus")
    alerting = workdir / "alert_rules.yml"
    alerting.write_text(yaml.safe_dump(with_for_zero(yaml.safe_load(ALERTING.read_text()))))
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(serve(t.app)) for name, t in targets.items()}
        instances = {name: url.removeprefix("http://") for name, url in urls.items()}
        prometheus = stack.enter_context(
            run_prometheus(workdir, {"skew": list(instances.values())}, [RECORDING, alerting])
        )
        # Every bin series is scraped at 0 before any traffic: increase() then counts
        # every value from the first (the exporter creates all bins at 0, as
        # tests/test_deploy.py checks).
        bins = 2 * (10 + 4)  # two churn replicas, x's ten bins and c's four
        prometheus.wait_for(
            "a first scrape of every target",
            lambda: (
                len(prometheus.query("up == 1")) == len(targets)
                and len(prometheus.query('skew_feature_bin_total{model="churn"} == 0')) == bins
            ),
        )
        send_traffic(urls)
        checked = {name: units * len(UNIT_C) for name, units in UNITS.items()}
        for name, rows in checked.items():
            assert eventually(window_of(targets[name], rows), 10), name
        canary = targets["canary-old"]
        assert eventually(
            lambda: canary.value("skew_monitor_errors_total", stage="extract") == CANARY_REQUESTS,
            10,
        )
        churn_a = targets["churn-a"]
        assert eventually(
            lambda: (
                churn_a.value("skew_samples_dropped_total", reason="invalid_json")
                == INVALID_REQUESTS
            ),
            10,
        )
        assert targets["multi"].registry.get_sample_value("skew_unknown_model_requests_total") == 1
        prometheus.wait_for(
            "the final counts in Prometheus",
            lambda: (
                prometheus.values('skew_window_rows{model="churn"}', "instance")
                == {(instances[name],): float(n) for name, n in checked.items()}
                and prometheus.values('skew_monitor_errors_total{stage="extract"} > 0', "instance")
                == {(instances["canary-old"],): float(CANARY_REQUESTS)}
                and prometheus.values(
                    'skew_samples_dropped_total{reason="invalid_json"} > 0', "instance"
                )
                == {(instances["churn-a"],): float(INVALID_REQUESTS)}
            ),
        )
        final_at = time.time()
        # A rule evaluation after that: the recorded series hold the final counts.
        prometheus.wait_for(
            "a rule evaluation after the final scrape",
            lambda: len(evaluated_after(prometheus, final_at)) == 2,
        )
        yield Stack(prometheus, targets, instances)


def evaluated_after(prometheus: Prometheus, moment: float) -> list[float]:
    """Timestamps of churn's recorded fleet JS distances evaluated after `moment`."""
    series = prometheus.query(
        'timestamp(model_feature:skew_feature_js_distance:fleet1h{model="churn"})'
    )
    return [float(s["value"][1]) for s in series if float(s["value"][1]) > moment]


def window_of(target: Target, rows: int) -> Callable[[], bool]:
    """Whether the target's last closed window holds `rows` request rows."""
    return lambda: target.value("skew_window_rows") == rows


def with_for_zero(rules: dict[str, Any]) -> dict[str, Any]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    return rules


def send_traffic(urls: dict[str, str]) -> None:
    def post(name: str, path: str, body: bytes, status: int = 200) -> None:
        response = httpx.post(urls[name] + path, content=body, headers=JSON, timeout=5.0)
        assert response.status_code == status, (name, path, response.text)

    # Each replica's rows in one request: one window holds them all.
    for name, units in UNITS.items():
        post(name, "/predict", orjson.dumps(unit() * units))
    # Invalid JSON: dropped samples (no rows, so the churn counts stay as they are).
    asyncio.run(post_many(urls["churn-a"] + "/predict", INVALID_REQUESTS, b'{"x": 1.0,', 400))
    asyncio.run(post_many(urls["canary-old"] + "/predict", CANARY_REQUESTS))
    # Mirrored requests, answered 204: one for the sidecar's model, one for a model it
    # has no baseline for.
    post("sidecar", "/v1/models/fraud:predict", orjson.dumps({"instances": unit()[:4]}), 204)
    post("sidecar", "/v1/models/other:predict", orjson.dumps({"instances": unit()[:4]}), 204)
    # The multi-model tap: a few rows for each of its models (too few for any feature
    # alert, enough for no SkewNoTraffic), and a request for a model it does not know.
    rows = orjson.dumps([{"x": 1.0, "c": "a"}, {"x": 2.0, "c": "b"}])
    for model in ("a", "b", "zzz"):
        post("multi", f"/v2/models/{model}/infer", rows)


async def post_many(
    url: str, n: int, body: bytes = b'{"x": 1.0, "c": "a"}', status: int = 200
) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        responses = await asyncio.gather(
            *(client.post(url, content=body, headers=JSON) for _ in range(n))
        )
    assert [r.status_code for r in responses] == [status] * n


# -- fleet PSI ----------------------------------------------------------------------------


def test_fleet_psi_and_js_equal_the_engines_on_the_summed_bin_counts(stack: Stack) -> None:
    """The recording rules' PSI and JS equal `measures.psi` / `js_distance` on the bin
    counts summed over both replicas, to 1e-6.

    increase() extrapolates each series by a factor set by its own scrape times. All bins
    of one replica share it (same scrapes, all scraped at 0 before the traffic), but the
    two replicas are scraped at different moments within each second, so their factors
    differ by up to a few percent over this short test. That changes the fleet's
    fractions unless every replica sends the same mix; hence the 3:1 split of one mix.
    (With different mixes on the two replicas, the fleet PSI measured 1-4 % off the
    engine's in the first ten seconds, shrinking as the series age: the factors differ
    by about a scrape interval over the series' age within the window.)
    deploy/prometheus/tests/recording_rules_test.yml checks replicas with different
    mixes, where the samples line up and increase() is exact.
    """
    prometheus, a, b = stack.prometheus, stack.targets["churn-a"], stack.targets["churn-b"]
    recorded_psi = prometheus.values(
        'model_feature:skew_feature_psi:fleet1h{model="churn"}', "feature"
    )
    recorded_js = prometheus.values(
        'model_feature:skew_feature_js_distance:fleet1h{model="churn"}', "feature"
    )
    assert set(recorded_psi) == set(recorded_js) == {("x",), ("c",)}

    for feature, expected_counts in {
        # 4 units: x 64 above the max, 16 below, 32 in (49, 59], 16 in (9, 19].
        "x": {"(-inf, 9]": 16, "(9, 19]": 16, "(49, 59]": 32, "(89, +inf)": 64},
        "c": {"a": 80, "b": 40, "__other__": 40},
    }.items():
        bins_a = a.family("skew_feature_bin_total", feature)
        bins_b = b.family("skew_feature_bin_total", feature)
        labels = list(bins_a)
        counts = np.array([bins_a[k] + bins_b[k] for k in labels])
        assert {k: n for k, n in zip(labels, counts, strict=True) if n} == expected_counts
        fractions = np.array(
            [a.family("skew_feature_baseline_fraction", feature)[k] for k in labels]
        )
        engine_psi, engine_js = psi(fractions, counts), js_distance(fractions, counts)
        # The replicas alone see other volumes, so the guard (100 values) needs the sum:
        # x has 96 values on churn-a and 32 on churn-b.
        print(
            f"{feature}: fleet PSI {recorded_psi[(feature,)]!r} engine {engine_psi!r} "
            f"diff {abs(recorded_psi[(feature,)] - engine_psi):.3g}; "
            f"JS {recorded_js[(feature,)]!r} engine {engine_js!r} "
            f"diff {abs(recorded_js[(feature,)] - engine_js):.3g}"
        )
        assert engine_psi > 0.25
        assert recorded_psi[(feature,)] == pytest.approx(engine_psi, abs=1e-6, rel=0)
        assert recorded_js[(feature,)] == pytest.approx(engine_js, abs=1e-6, rel=0)


# -- every expression returns data -----------------------------------------------------------


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for path in (RECORDING, ALERTING):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("record") or rule["alert"], rule["expr"]))
    return out


GRAFANA_VARIABLES = {
    "${datasource}": "prometheus",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}
# Every deployment (namespace and job set to All: Grafana writes their allValue, `.*`).
DASHBOARD_VARIABLES = {
    **GRAFANA_VARIABLES,
    "$namespace": ".*",
    "$job": ".*",
    "$model": "churn",
    "$feature": "x",
}


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    for variable, value in variables.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_expressions(
    variables: Mapping[str, str] = DASHBOARD_VARIABLES,
) -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], variables)
            assert "$" not in expr, f"panel {panel['title']!r}: unsubstituted variable in {expr}"
            out.append((f"{panel['title']} / {target['refId']}", expr))
    return out


def offered(prometheus: Prometheus, variable: str, chosen: Mapping[str, str]) -> list[str]:
    """The values Grafana offers for a `label_values(selector, label)` variable of the
    dashboard, the earlier variables as `chosen`: Prometheus's label values API over the
    selector, which is what Grafana's Prometheus data source asks."""
    (query,) = [
        v["query"]["query"]
        for v in json.loads(DASHBOARD.read_text())["templating"]["list"]
        if v["name"] == variable
    ]
    found = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert found is not None, query
    selector, label = substitute(found[1], chosen), found[2]
    response = prometheus.client.get(f"/api/v1/label/{label}/values", params={"match[]": selector})
    assert response.status_code == 200, response.text
    values: list[str] = response.json()["data"]
    return values


def grafana_multi_value(values: list[str]) -> str:
    """A multi-value variable with these values selected, as Grafana writes it into a
    Prometheus query: regex-escaped, several as an alternation."""
    escaped = [re.escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def test_every_rule_expression_returns_data_after_the_traffic(stack: Stack) -> None:
    expressions = rule_expressions()
    assert len(expressions) == 21
    empty = [name for name, expr in expressions if not stack.prometheus.query(expr)]
    assert empty == []


def test_every_dashboard_query_returns_data_after_the_traffic(stack: Stack) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    empty = [name for name, expr in expressions if not stack.prometheus.query(expr)]
    assert empty == []


def test_every_dashboard_query_returns_data_for_the_deployments_the_variables_offer(
    stack: Stack,
) -> None:
    """The variables as Grafana fills them: namespace and job set to every value their
    queries offer (no target here carries a namespace, so it offers none and stays All),
    model and feature to one each of the values then offered."""
    prometheus = stack.prometheus
    chosen = dict(GRAFANA_VARIABLES)
    for name in ("namespace", "job"):
        values = offered(prometheus, name, chosen)
        chosen[f"${name}"] = grafana_multi_value(values) if values else ".*"
    assert (chosen["$namespace"], chosen["$job"]) == (".*", "skew")
    assert {"churn", "canary", "fraud", "a", "b"} <= set(offered(prometheus, "model", chosen))
    chosen["$model"] = "churn"
    assert set(offered(prometheus, "feature", chosen)) == {"x", "c"}
    chosen["$feature"] = "x"
    expressions = dashboard_expressions(chosen)
    empty = [name for name, expr in expressions if not prometheus.query(expr)]
    assert empty == []
    # The filters filter: a job no target has leaves every panel empty.
    elsewhere = {**chosen, "$job": "(no-such-job|another)"}
    shown = [name for name, expr in dashboard_expressions(elsewhere) if prometheus.query(expr)]
    assert shown == []


# -- alerts ----------------------------------------------------------------------------------


def firing(prometheus: Prometheus) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    """Firing alerts: name, and the labels that tell them apart (not severity or job)."""
    return {
        (
            alert["labels"]["alertname"],
            frozenset(
                (k, v)
                for k, v in alert["labels"].items()
                if k not in ("alertname", "severity", "job")
            ),
        )
        for alert in prometheus.alerts()
        if alert["state"] == "firing"
    }


def test_every_alert_fires_on_the_traffic_built_for_it_and_no_other(stack: Stack) -> None:
    old, new, sidecar, multi = (
        stack.instances[n] for n in ("canary-old", "canary-new", "sidecar", "multi")
    )
    churn = {"model": "churn"}
    canary = {"model": "canary"}
    expected = {
        (name, frozenset(labels.items()))
        for name, labels in [
            ("SkewFeatureOutOfRange", {**churn, "feature": "x", "side": "high"}),
            ("SkewFeatureOutOfRange", {**churn, "feature": "x", "side": "low"}),
            ("SkewFeatureUnseenCategory", {**churn, "feature": "c"}),
            ("SkewFeatureMissing", {**churn, "feature": "x"}),
            ("SkewFeatureTypeMismatch", {**churn, "feature": "x"}),
            ("SkewFeaturePSIWarning", {**churn, "feature": "x"}),
            ("SkewFeaturePSIWarning", {**churn, "feature": "c"}),
            ("SkewFeaturePSICritical", {**churn, "feature": "x"}),
            ("SkewFeaturePSICritical", {**churn, "feature": "c"}),
            ("SkewSamplesDropped", {**churn, "reason": "invalid_json"}),
            ("SkewSamplingStopped", {**canary, "instance": old}),
            ("SkewNoTraffic", {**canary, "instance": new}),
            ("SkewMonitorErrors", {**canary, "stage": "extract"}),
            ("SkewBaselineChanged", canary),
            ("SkewBaselineMismatch", canary),
            ("SkewUnknownModel", {"instance": sidecar}),
            ("SkewUnknownModel", {"instance": multi}),
        ]
    }
    prometheus = stack.prometheus
    # Alerts of the first seconds (no traffic yet anywhere) resolve at the next evaluation.
    with contextlib.suppress(AssertionError):
        prometheus.wait_for("the expected alerts", lambda: firing(prometheus) == expected)
    assert firing(prometheus) == expected
    # Annotations are rendered with the alert's labels and value.
    alerts = {
        a["labels"]["alertname"]: a for a in stack.prometheus.alerts() if a["state"] == "firing"
    }
    out_of_range = alerts["SkewFeatureOutOfRange"]["annotations"]
    assert re.match(
        r"churn: feature x outside its training range \((high|low)\)", out_of_range["summary"]
    )
    assert out_of_range["runbook_url"] == "docs/runbook.md#skewfeatureoutofrange"


def diagnosis_sentences() -> dict[str, str]:
    """kind -> its sentence in the feature alerts' diagnosis annotation."""
    rules = [r for g in yaml.safe_load(ALERTING.read_text())["groups"] for r in g["rules"]]
    (template,) = {r["annotations"]["diagnosis"] for r in rules if "diagnosis" in r["annotations"]}
    return dict(re.findall(r'kind "(\w+)" \}\}(.*?)\{\{ end', template))


def test_firing_feature_alerts_name_every_kind_the_deployment_diagnosed(stack: Stack) -> None:
    """The diagnosis annotation, rendered by Prometheus: one sentence per kind that
    skew_feature_diagnosis names for the alert's feature, in the order of the kinds."""
    prometheus = stack.prometheus
    diagnosed: dict[str, list[str]] = {}
    for s in prometheus.query('skew_feature_diagnosis{model="churn"} == 1'):
        diagnosed.setdefault(s["metric"]["feature"], []).append(s["metric"]["kind"])
    assert set(diagnosed) == {"x", "c"}
    sentences = diagnosis_sentences()
    feature_alerts = [
        a
        for a in prometheus.alerts()
        if a["state"] == "firing" and a["labels"]["alertname"].startswith("SkewFeature")
    ]
    assert len(feature_alerts) == 9
    for alert in feature_alerts:
        kinds = sorted(set(diagnosed[alert["labels"]["feature"]]))
        expected = " ".join(sentences[kind] for kind in kinds)
        assert alert["annotations"]["diagnosis"] == expected, alert["labels"]


# -- Grafana-managed alerting: the same queries ------------------------------------------------

GRAFANA_RULES = ROOT / "deploy" / "grafana" / "alerting" / "alert_rules.yml"


def grafana_queries() -> dict[tuple[str, str], str]:
    """(rule title, refId) -> PromQL of every data source query of the Grafana rules."""
    groups = yaml.safe_load(GRAFANA_RULES.read_text())["groups"]
    return {
        (rule["title"], node["refId"]): node["model"]["expr"]
        for group in groups
        for rule in group["rules"]
        for node in rule["data"]
        if node["datasourceUid"] != "__expr__"
    }


def test_every_grafana_query_returns_data_after_the_traffic(stack: Stack) -> None:
    queries = grafana_queries()
    assert len(queries) == 13 + 6  # every alert's query, the feature alerts' diagnosis
    empty = [key for key, expr in queries.items() if not stack.prometheus.query(expr)]
    assert empty == []


def test_grafana_rules_alert_on_exactly_the_series_prometheus_alerts_on(stack: Stack) -> None:
    """A Grafana rule alerts on every series its query returns (any value): the same
    label sets as the alerts Prometheus fires on the same rules (`for` aside)."""
    prometheus = stack.prometheus
    queries = {title: expr for (title, ref), expr in grafana_queries().items() if ref == "query"}

    def grafana() -> set[tuple[str, frozenset[tuple[str, str]]]]:
        return {
            (title, frozenset(s["metric"].items()))
            for title, expr in queries.items()
            for s in prometheus.query(expr)
        }

    def prometheus_alerts() -> set[tuple[str, frozenset[tuple[str, str]]]]:
        return {
            (
                a["labels"]["alertname"],
                frozenset(
                    (k, v) for k, v in a["labels"].items() if k not in ("alertname", "severity")
                ),
            )
            for a in prometheus.alerts()
            if a["state"] == "firing"
        }

    with contextlib.suppress(AssertionError):  # alerts of the first seconds resolve first
        prometheus.wait_for("the same alerts", lambda: grafana() == prometheus_alerts())
    assert grafana() == prometheus_alerts()
    assert len(grafana()) == 17


def test_the_grafana_diagnosis_is_the_first_kind_named_in_the_engines_order(
    stack: Stack,
) -> None:
    """Grafana's `diagnosis` query numbers each feature's first diagnosed kind (in
    sidecar.diagnosis.KINDS order, from 1; 0 for none), which its annotation reads."""
    prometheus = stack.prometheus
    expr = grafana_queries()[("SkewFeaturePSICritical", "diagnosis")]
    numbers = {
        (s["metric"].get("model", ""), s["metric"].get("feature", "")): float(s["value"][1])
        for s in prometheus.query(expr)
    }
    diagnosed: dict[tuple[str, str], set[str]] = {}
    for s in prometheus.query("skew_feature_diagnosis == 1"):
        key = (s["metric"]["model"], s["metric"]["feature"])
        diagnosed.setdefault(key, set()).add(s["metric"]["kind"])
    assert {model for model, _ in diagnosed} == {"churn"}
    first = {k: KINDS.index(min(kinds, key=KINDS.index)) + 1.0 for k, kinds in diagnosed.items()}
    assert {k: v for k, v in numbers.items() if v} == first
    assert numbers[("", "")] == 0  # vector(0): never no data


# -- Alertmanager: the example config ------------------------------------------------------


def test_amtool_accepts_the_example_alertmanager_config() -> None:
    result = subprocess.run(
        [alertmanager_binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "2 inhibit rules" in result.stdout


def alert(name: str, severity: str, **labels: str) -> dict[str, dict[str, str]]:
    """An alert with the labels alert_rules.yml gives it (`job`, `model`, ...)."""
    return {"labels": {"alertname": name, "severity": severity, **labels}}


PSI_CRITICAL, PSI_WARNING = "SkewFeaturePSICritical", "SkewFeaturePSIWarning"
# (the alert, silenced by the inhibit rules)
INHIBITION_CASES = [
    # churn in prod: a critical PSI silences the warning of the same feature only.
    (alert(PSI_CRITICAL, "critical", job="prod", model="churn", feature="x"), False),
    (alert(PSI_WARNING, "warning", job="prod", model="churn", feature="x"), True),
    (alert(PSI_WARNING, "warning", job="prod", model="churn", feature="w"), False),
    # churn in staging, the same model name: prod's critical is another deployment's.
    (alert(PSI_WARNING, "warning", job="staging", model="churn", feature="x"), False),
    # fraud in prod: replica a sees no traffic, so fraud's PSI alerts may be stale:
    # both silent. The no-traffic alert itself and a rate alert still notify.
    (alert("SkewNoTraffic", "warning", job="prod", model="fraud", instance="a"), False),
    (alert(PSI_CRITICAL, "critical", job="prod", model="fraud", feature="x"), True),
    (alert(PSI_WARNING, "warning", job="prod", model="fraud", feature="x"), True),
    (alert("SkewFeatureMissing", "warning", job="prod", model="fraud", feature="x"), False),
    # ads, one job in two namespaces: sampling stopped in ns1 silences ns1's PSI only.
    (
        alert("SkewSamplingStopped", "warning", namespace="ns1", job="skew", model="ads"),
        False,
    ),
    (alert(PSI_WARNING, "warning", namespace="ns1", job="skew", model="ads", feature="y"), True),
    (alert(PSI_WARNING, "warning", namespace="ns2", job="skew", model="ads", feature="y"), False),
    # Routing only: info goes to a receiver of its own, other alerts to the default.
    (alert("SkewBaselineChanged", "info", job="prod", model="churn"), False),
    (alert("Watchdog", "none"), False),
]


def key(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(k, "") for k in ("alertname", *DEPLOYMENT, "model", "feature"))


def test_the_example_alertmanager_config_groups_per_model_and_inhibits(
    tmp_path: Path,
) -> None:
    """A real Alertmanager with deploy/prometheus/alertmanager.yml: each inhibit rule
    silences what it should and nothing else, severities reach their receivers, and
    one deployment's model is one group (one notification) per receiver."""
    with run_alertmanager(tmp_path, ALERTMANAGER_CONFIG) as client:
        posted = client.post("/api/v2/alerts", json=[a for a, _ in INHIBITION_CASES])
        assert posted.status_code == 200, posted.text
        expected = {key(a["labels"]): silenced for a, silenced in INHIBITION_CASES}

        def states() -> dict[tuple[str, ...], bool]:
            return {
                key(a["labels"]): a["status"]["state"] == "suppressed"
                for a in client.get("/api/v2/alerts").json()
            }

        # The inhibitor learns of new alerts a moment after they are accepted.
        eventually(lambda: states() == expected, 10)
        assert states() == expected
        for a in client.get("/api/v2/alerts").json():
            assert a["status"]["silencedBy"] == [], a["labels"]
            assert bool(a["status"]["inhibitedBy"]) == expected[key(a["labels"])]

        groups = {
            (g["receiver"]["name"], tuple(sorted(g["labels"].items()))): sorted(
                key(a["labels"])[0] + "/" + a["labels"].get("feature", "") for a in g["alerts"]
            )
            for g in client.get("/api/v2/alerts/groups").json()
        }
    prod, staging = ("job", "prod"), ("job", "staging")
    ns1, ns2, skew = ("namespace", "ns1"), ("namespace", "ns2"), ("job", "skew")
    assert groups == {
        ("skew-pager", (prod, ("model", "churn"))): [f"{PSI_CRITICAL}/x"],
        ("skew-chat", (prod, ("model", "churn"))): [f"{PSI_WARNING}/w", f"{PSI_WARNING}/x"],
        ("skew-chat", (staging, ("model", "churn"))): [f"{PSI_WARNING}/x"],
        ("skew-info", (prod, ("model", "churn"))): ["SkewBaselineChanged/"],
        ("skew-pager", (prod, ("model", "fraud"))): [f"{PSI_CRITICAL}/x"],
        ("skew-chat", (prod, ("model", "fraud"))): [
            "SkewFeatureMissing/x",
            f"{PSI_WARNING}/x",
            "SkewNoTraffic/",
        ],
        ("skew-chat", (skew, ("model", "ads"), ns1)): [f"{PSI_WARNING}/y", "SkewSamplingStopped/"],
        ("skew-chat", (skew, ("model", "ads"), ns2)): [f"{PSI_WARNING}/y"],
        ("default", ()): ["Watchdog/"],
    }
