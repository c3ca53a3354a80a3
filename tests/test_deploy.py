"""deploy/, the Dockerfile and what they rely on, checked without a cluster or Docker.

The Prometheus rules and the dashboard's queries run against a real Prometheus in
tests/test_prometheus.py, and the image with the manifests' settings in a real Docker
in tests/test_container.py; here: the exporter facts the rules assume, file formats,
names that must agree across files, and the example app and traffic script.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from sidecar import Baseline, ProfileOptions, SkewMiddleware, demo
from sidecar.serve import ENV_PREFIX, ServeSettings, Sidecar
from tests.promql import vector_selectors
from tests.servers import eventually, serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "skew-sidecar.json"
RULE_FILES = (
    DEPLOY / "prometheus" / "recording_rules.yml",
    DEPLOY / "prometheus" / "alert_rules.yml",
)


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in deploy/kubernetes, by (kind, name)."""
    out = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in load_all(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


# -- what the rules assume of the exporter --------------------------------------------------


def every_kind_baseline() -> Baseline:
    rows = [
        {
            "n": float(i % 37),
            "cat": "abcd"[i % 4],
            "tokens": list(range(i % 5 + 1)),
            "ts": f"2026-01-0{1 + i % 9}T{i % 24:02d}:00:00Z",
            "score": (i % 7) / 7,
        }
        for i in range(500)
    ]
    return Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"})))


def test_every_bin_series_is_exported_at_zero_before_any_traffic() -> None:
    """The recording rules' increase() counts a replica's first values only if each bin
    series exists (at 0) before them: a series born at 3 would lose those 3."""
    baseline = every_kind_baseline()
    assert {f.kind for f in baseline.features.values()} == {
        "numeric",
        "categorical",
        "list",
        "timestamp",
    }
    registry = CollectorRegistry()
    app = SkewMiddleware(Starlette(), baseline=baseline, model="m", registry=registry)
    bins: dict[str, dict[str, float]] = {}
    fractions: dict[str, dict[str, float]] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "skew_feature_bin_total":
                bins.setdefault(s.labels["feature"], {})[s.labels["bin"]] = s.value
            elif s.name == "skew_feature_baseline_fraction":
                fractions.setdefault(s.labels["feature"], {})[s.labels["bin"]] = s.value
    assert set(bins) == set(baseline.features) == set(fractions)
    for feature, counts in bins.items():
        assert set(counts) == set(fractions[feature]), feature
        assert set(counts.values()) == {0.0}, feature
        assert sum(fractions[feature].values()) == pytest.approx(1.0)
    assert len(bins["ts"]) == 24
    assert app.monitor.model == "m"


def exported_families() -> set[str]:
    """Every family name a tap (one model or several) and a sidecar process export, as
    Prometheus sees them."""
    registry, multi_registry = CollectorRegistry(), CollectorRegistry()
    baseline = every_kind_baseline()
    app = SkewMiddleware(Starlette(), baseline=baseline, registry=registry)
    sidecar = Sidecar({"default": baseline}, registry=registry)
    # Several models in one tap: skew_unknown_model_requests_total as well.
    SkewMiddleware(Starlette(), baseline={"a": baseline, "b": baseline}, registry=multi_registry)
    names: set[str] = set()
    for family in [*registry.collect(), *multi_registry.collect()]:
        names.update(s.name for s in family.samples)
        names.add(family.name)
    # The last window's families have samples only after a window: add them by name.
    names.update(
        f"skew_feature_{m}"
        for m in ("psi", "js_distance", "linf", "wasserstein", "ks", "mean_shift", "scale_ratio")
    )
    names.update(("skew_feature_drifted", "skew_window_rows", "skew_window_end_timestamp_seconds"))
    assert app.monitor is not None and sidecar.ready is False
    return names


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (ours: skew_* or recording-rule names)."""
    return set(re.findall(r"\b(skew_[a-z_]+|[a-z_]+:[a-z_]+:[a-z0-9_]+)\b", expr))


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_metric_the_rules_and_the_dashboard_select_is_exported_or_recorded() -> None:
    known = exported_families() | recorded_names()
    expressions = [
        rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ] + dashboard_expressions()
    used = set().union(*(metric_names(e) for e in expressions))
    assert used - known == set()
    assert {"skew_feature_bin_total", "skew_feature_baseline_fraction"} <= used
    assert {"skew_sidecar_unknown_model_total", "skew_unknown_model_requests_total"} <= used


# -- Alertmanager -------------------------------------------------------------------------------


def alerts_by_name() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULE_FILES[1].read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def carried_labels(rule: dict[str, Any]) -> set[str] | None:
    """The labels an alert carries besides its own: those of the outermost aggregation
    (the first `by (...)` in our expressions), or None when the expression keeps every
    series label (no aggregation: the target's labels and the metric's)."""
    found = re.search(r"\bby \(([^)]*)\)", rule["expr"])
    return None if found is None else {label.strip() for label in found.group(1).split(",")}


def matched_alerts(matchers: list[str], alerts: dict[str, dict[str, Any]]) -> set[str]:
    """The alerts of alert_rules.yml that a list of alertname matchers selects."""
    (matcher,) = [m for m in matchers if m.startswith("alertname")]
    parsed = re.fullmatch(r'alertname(=~|=)"?([^"]*)"?', matcher)
    assert parsed is not None, matcher
    operator, value = parsed.groups()
    pattern = value if operator == "=~" else re.escape(value)
    return {name for name in alerts if re.fullmatch(pattern, name)}


def test_the_alertmanager_example_groups_and_inhibits_by_labels_the_alerts_carry() -> None:
    """Its inhibit rules name alerts that exist and compare labels both sides carry (a
    label missing on both is equal everywhere: the rule would reach across deployments
    or features); the skew route groups by labels every per-model alert carries.
    tests/test_prometheus.py runs the config in a real Alertmanager."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "alertmanager.yml").read_text())
    alerts = alerts_by_name()
    (skew,) = config["route"]["routes"]
    assert matched_alerts(skew["matchers"], alerts) == set(alerts)
    for name, rule in alerts.items():
        carried = carried_labels(rule)
        if carried is not None and "model" in carried:
            assert set(skew["group_by"]) <= carried, name
    assert skew["group_by"] == ["namespace", "job", "model"]
    critical, stale = config["inhibit_rules"]
    assert matched_alerts(critical["source_matchers"], alerts) == {"SkewFeaturePSICritical"}
    assert matched_alerts(critical["target_matchers"], alerts) == {"SkewFeaturePSIWarning"}
    assert matched_alerts(stale["source_matchers"], alerts) == {
        "SkewNoTraffic",
        "SkewSamplingStopped",
    }
    assert matched_alerts(stale["target_matchers"], alerts) == {
        "SkewFeaturePSIWarning",
        "SkewFeaturePSICritical",
    }
    assert critical["equal"] == ["namespace", "job", "model", "feature"]
    assert stale["equal"] == ["namespace", "job", "model"]
    for rule in config["inhibit_rules"]:
        for side in ("source_matchers", "target_matchers"):
            for name in matched_alerts(rule[side], alerts):
                carried = carried_labels(alerts[name])
                if carried is None:  # every series label: namespace, job, model, instance
                    assert "feature" not in rule["equal"], name
                else:
                    assert set(rule["equal"]) <= carried, (name, side)
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], skew, *skew["routes"]]
    assert {r["receiver"] for r in routes} <= receivers


# -- Grafana ------------------------------------------------------------------------------------


def test_the_dashboard_takes_its_data_source_from_a_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ours = {"type": "prometheus", "uid": "${datasource}"}
    for variable in ("namespace", "job", "model", "feature"):
        assert variables[variable]["datasource"] == ours
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ours, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ours, panel["title"]
            assert 'model="$model"' in target["expr"] or "skew_sidecar_" in target["expr"]
    assert "${" not in json.dumps(dashboard).replace("${datasource}", "")


FLEET = ('namespace=~"$namespace"', 'job=~"$job"')


def test_the_dashboard_lets_an_operator_pick_namespaces_and_jobs_then_model_and_feature() -> None:
    """namespace and job: several values or All (`.*`, which also matches series without
    the label, as under compose); each variable's values are those of the earlier ones'
    choice, so the variables come in that order."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    assert [v["name"] for v in variables] == ["datasource", "namespace", "job", "model", "feature"]
    by_name = {v["name"]: v for v in variables}
    queries = {
        "namespace": "label_values(skew_baseline_info, namespace)",
        "job": 'label_values(skew_baseline_info{namespace=~"$namespace"}, job)',
        "model": 'label_values(skew_baseline_info{namespace=~"$namespace", job=~"$job"}, model)',
        "feature": "label_values(skew_feature_baseline_fraction"
        '{namespace=~"$namespace", job=~"$job", model="$model"}, feature)',
    }
    for name, query in queries.items():
        variable = by_name[name]
        assert variable["type"] == "query"
        assert variable["query"]["query"] == variable["definition"] == query
        assert variable["refresh"] == 2  # on time range change: new deployments appear
        fleet = name in ("namespace", "job")
        assert variable["multi"] is variable["includeAll"] is fleet, name
        if fleet:
            assert variable["allValue"] == ".*"
            assert variable["current"]["value"] == ["$__all"]


def test_every_selector_of_every_panel_query_filters_by_namespace_and_job() -> None:
    selectors = [s for expr in dashboard_expressions() for s in vector_selectors(expr)]
    assert len(selectors) >= 40
    for selector in selectors:
        matchers = [m.strip() for m in selector.matchers.split(",")]
        assert set(FLEET) <= set(matchers), selector


@pytest.mark.parametrize(
    ("expr", "selectors"),
    [
        ('sum by (a) (rate(x{a="}"}[5m]))', [("x", 'a="}"')]),
        ("max(y) / on (b) group_left (c) z > 0.5", [("y", ""), ("z", "")]),
        ("histogram_quantile(0.99, sum by (le) (w_bucket[$__rate_interval]))", [("w_bucket", "")]),
        (
            'a:b:c{m=~"x|y"} and ignoring (d) e offset 5m or vector(1e-4)',
            [
                ("a:b:c", 'm=~"x|y"'),
                ("e", ""),
            ],
        ),
    ],
)
def test_the_selector_scanner_finds_every_vector_selector_and_nothing_else(
    expr: str, selectors: list[tuple[str, str]]
) -> None:
    found = vector_selectors(expr)
    assert [(s.name, s.matchers) for s in found] == selectors
    for s in found:
        assert expr[s.start : s.end].startswith(s.name)


def test_the_dashboard_has_the_panels_an_operator_needs() -> None:
    by_title = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    for title, needle in [
        ("Requests and rows checked", "skew_requests_sampled_total"),
        ("Dropped samples by reason", "skew_samples_dropped_total"),
        ("Batch processing time", "skew_monitor_batch_seconds_bucket"),
        ("Features ranked by drift", "model_feature:skew_feature_psi:fleet1h"),
        ("Out of range", "skew_feature_out_of_range_total"),
        ("Missing", "skew_feature_missing_total"),
        ("Wrong type", "skew_feature_type_mismatch_total"),
        ("Baseline vs serving fraction per bin: $feature", "skew_feature_bin_total"),
    ]:
        assert any(needle in t["expr"] for t in by_title[title]["targets"]), title
    ranked = by_title["Features ranked by drift"]
    sort = next(t for t in ranked["transformations"] if t["id"] == "sortBy")
    assert sort["options"]["sort"] == [{"field": "fleet PSI (1h)", "desc": True}]


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "skew-sidecar.yml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


# -- compose, Docker ------------------------------------------------------------------------


def test_compose_file_is_valid_and_every_file_it_mounts_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {
        "baseline",
        "churn-model",
        "skew-sidecar",
        "nginx",
        "traffic",
        "prometheus",
        "grafana",
    }
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, mount)
            else:
                assert source in compose["volumes"], (name, mount)
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert services["prometheus"]["volumes"] == ["./prometheus:/etc/prometheus:ro"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert targets == {"churn-model:8000", "skew-sidecar:8090"}
    assert set(config["rule_files"]) == {p.name for p in RULE_FILES}


def skew_sidecar_variables() -> dict[str, str]:
    """Every SKEW_SIDECAR_* variable set in deploy/ and the Dockerfile: where it is set."""
    found = {}
    for path in [ROOT / "Dockerfile", *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]:
        for name in re.findall(rf"\b{ENV_PREFIX}([A-Z_]+)", path.read_text()):
            found[name] = str(path.relative_to(ROOT))
    return found


def test_every_skew_sidecar_variable_set_in_deploy_is_a_setting() -> None:
    settings = {f.name.upper() for f in fields(ServeSettings)}
    variables = skew_sidecar_variables()
    assert {"BASELINE", "HOST", "PORT"} <= set(variables)
    assert {name: where for name, where in variables.items() if name not in settings} == {}


def test_the_dockerfile_runs_serve_as_a_non_root_user_on_all_interfaces() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # The official image by default (tests/test_container.py builds on a local one).
    assert re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M) == ["python:3.11-slim"]
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert "pip wheel --no-cache-dir --wheel-dir /wheels '.[serve]'" in text
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert user.isdigit() and int(user) > 0
    assert 'ENTRYPOINT ["skew-sidecar"]' in text and 'CMD ["serve"]' in text
    assert "SKEW_SIDECAR_HOST=0.0.0.0" in text
    copied = {
        path.rstrip("/")
        for source in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M)
        for path in source.split()
    }
    assert {"pyproject.toml", "setup.py", "README.md", "sidecar"} <= copied
    for path in copied:
        assert (ROOT / path).exists(), path
    # Everything is ignored but what is copied.
    ignored = (ROOT / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    exceptions = [i for i, line in enumerate(ignored) if line.startswith("!")]
    assert ignored.index("*") < min(exceptions)  # later lines win in .dockerignore
    assert allowed == copied


# -- Kubernetes -------------------------------------------------------------------------------


def test_the_prometheusrule_manifest_is_the_generators_output() -> None:
    script = KUBERNETES / "make_prometheusrule.py"
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    committed = (KUBERNETES / "prometheusrule.yaml").read_text()
    assert result.stdout == committed, f"rerun: python {script.relative_to(ROOT)} > ..."
    rule = yaml.safe_load(committed)
    groups = [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == groups


def test_the_sidecar_container_shares_the_tap_socket_and_is_scraped() -> None:
    objects = manifests()
    pod = objects[("Deployment", "churn-model")]["spec"]["template"]
    tap = {v["name"]: v for v in pod["spec"]["volumes"]}["skew-tap"]
    model, sidecar = containers(objects[("Deployment", "churn-model")]).values()
    for container in (model, sidecar):
        assert {"name": "skew-tap", "mountPath": "/run/skew"} in container["volumeMounts"]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["SKEW_SIDECAR_HOST"] == "0.0.0.0"
    assert env["SKEW_SIDECAR_BASELINE"] == "churn=/etc/skew/churn.json"
    assert env["SKEW_SIDECAR_TAP"] == "unix:///run/skew/tap.sock"
    assert "emptyDir" in tap and pod["spec"]["securityContext"]["fsGroup"] > 0
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True

    monitor = objects[("PodMonitor", "skew-sidecar")]["spec"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    for name in ("churn-model", "skew-sidecar"):
        deployment = objects[("Deployment", name)]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert monitor["selector"]["matchLabels"].items() <= labels.items(), name
        ports = {p["name"] for c in containers(deployment).values() for p in c.get("ports", [])}
        assert endpoint["port"] in ports, name


def test_kserve_logs_requests_and_responses_to_the_sidecar_service() -> None:
    objects = manifests()
    logger = objects[("InferenceService", "sklearn-iris")]["spec"]["predictor"]["logger"]
    assert logger["mode"] == "all"
    service = objects[("Service", "skew-sidecar")]["spec"]
    assert logger["url"] == f"http://skew-sidecar:{service['ports'][0]['port']}"
    (sidecar,) = containers(objects[("Deployment", "skew-sidecar")]).values()
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    # The CloudEvents name the InferenceService: its baseline must be named the same.
    assert "sklearn-iris=" in env["SKEW_SIDECAR_BASELINE"]


def test_the_nginx_mirror_cannot_hold_up_the_primary_for_long() -> None:
    conf = (DEPLOY / "nginx" / "skew-mirror.conf").read_text()
    locations = dict(re.findall(r"location ([^{]+?) \{(.*?)\n    \}", conf, re.S))
    primary, mirror = locations["/"], locations["= /_skew_mirror"]
    assert "mirror /_skew_mirror;" in primary and "mirror_request_body on;" in primary
    assert "internal;" in mirror and "proxy_pass http://skew_sidecar$request_uri;" in mirror
    timeouts = dict(re.findall(r"(proxy_\w+_timeout) (\d+)ms;", mirror))
    assert set(timeouts) == {"proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"}
    assert all(int(ms) <= 500 for ms in timeouts.values())
    # The upstreams are the compose services and the Kubernetes Services of deploy/.
    servers = set(re.findall(r"server (\S+);", conf))
    assert servers == {"churn-model:8000", "skew-sidecar:8090"}
    objects = manifests()
    for host in servers:
        name, port = host.split(":")
        assert int(port) in {p["port"] for p in objects[("Service", name)]["spec"]["ports"]}
    mirrored = objects[("Deployment", "churn-model-mirrored")]["spec"]["template"]["spec"]
    assert mirrored["volumes"][0]["configMap"]["name"] == "skew-nginx-mirror"


# -- the example app and the traffic script -------------------------------------------------------


def test_the_example_app_serves_predictions_and_the_traffic_script_feeds_it(
    tmp_path: Path,
) -> None:
    spec = importlib.util.spec_from_file_location("example_app", DEPLOY / "example" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    baseline = Baseline.from_records(
        demo.training_rows(500), ProfileOptions(prediction=frozenset({"churn_score"}))
    )
    baseline.save(tmp_path / "baseline.json")
    rows = tmp_path / "serving.jsonl"
    rows.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in demo.serving_rows(20)))
    registry = CollectorRegistry()
    app = module.create_app(str(tmp_path / "baseline.json"), registry)
    with serve(app) as url:
        endpoint = url + "/v1/models/churn:predict"
        response = httpx.post(endpoint, json={"instances": list(demo.training_rows(2))})
        assert response.status_code == 200
        assert [0 < p < 1 for p in response.json()["predictions"]] == [True, True]
        assert httpx.post(endpoint, content=b"not json").status_code == 400
        result = subprocess.run(
            [
                sys.executable,
                str(DEPLOY / "example" / "traffic.py"),
                endpoint,
                str(rows),
                "--seconds",
                "1",
                "--rate",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        sent = int(re.search(r"traffic: (\d+) requests sent, 0 failed", result.stdout)[1])  # type: ignore[index]
        assert sent >= 5

        def checked() -> float:
            return registry.get_sample_value("skew_rows_checked_total", {"model": "churn"}) or 0

        # 2 rows, then 4 per replayed request; the tap checks them a moment later.
        assert eventually(lambda: checked() == 2 + 4 * sent, 5), checked()
        metrics = httpx.get(url + "/metrics", follow_redirects=True).text
        assert 'skew_feature_bin_total{bin="' in metrics
