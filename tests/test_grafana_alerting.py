"""deploy/grafana/alerting: Grafana-managed alerting equivalent to deploy/prometheus.

Grafana itself does not run here. These tests check the files against Grafana's
documented file-provisioning format and against the Prometheus rules and Alertmanager
example they mirror; tests/test_prometheus.py runs every query they hold against a real
Prometheus after skewed traffic and compares the series with the alerts Prometheus fires.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.diagnosis import KINDS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTING = DEPLOY / "grafana" / "alerting"
GENERATOR = DEPLOY / "grafana" / "make_alerting.py"
PROMETHEUS_RULES = DEPLOY / "prometheus" / "alert_rules.yml"
ALERTMANAGER = DEPLOY / "prometheus" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "skew-sidecar.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
EXPRESSIONS_UID = "__expr__"
# Grafana's rule uid: at most 40 letters, digits, `-` and `_` (file-provisioning docs).
UID = re.compile(r"[A-Za-z0-9_-]{1,40}")


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ALERTING / name).read_text(encoding="utf-8"))
    return document


def grafana_rules() -> dict[str, dict[str, Any]]:
    return {r["title"]: r for g in load("alert_rules.yml")["groups"] for r in g["rules"]}


def prometheus_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(PROMETHEUS_RULES.read_text(encoding="utf-8"))["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def data(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["refId"]: node for node in rule["data"]}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(skew_[a-z_]+|[a-z_]+:[a-z_]+:[a-z0-9_]+)\b", expr))


GRAFANA = grafana_rules()
PROMETHEUS = prometheus_rules()
PANELS = {p["id"]: p for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]}


def test_the_rule_file_is_the_generators_output() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR)], capture_output=True, text=True, timeout=60, check=True
    )
    committed = (ALERTING / "alert_rules.yml").read_text(encoding="utf-8")
    assert result.stdout == committed, f"rerun: python {GENERATOR.relative_to(ROOT)} > ..."


def test_every_file_is_a_version_1_provisioning_file_of_the_resources_it_names() -> None:
    resources = {path.name: set(load(path.name)) for path in ALERTING.glob("*.yml")}
    assert resources == {
        "alert_rules.yml": {"apiVersion", "groups"},
        "contact_points.yml": {"apiVersion", "contactPoints"},
        "notification_policies.yml": {"apiVersion", "muteTimes", "policies"},
    }
    assert {load(name)["apiVersion"] for name in resources} == {1}


def test_every_rule_group_and_rule_has_the_fields_grafana_requires() -> None:
    groups = load("alert_rules.yml")["groups"]
    assert [g["name"] for g in groups] == [
        g["name"] for g in yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"]
    ]
    uids = []
    for group in groups:
        assert group["orgId"] == 1 and group["folder"] and group["interval"] == "1m"
        for rule in group["rules"]:
            assert {"uid", "title", "condition", "data", "for", "noDataState"} <= set(rule)
            assert UID.fullmatch(rule["uid"]), rule["uid"]
            uids.append(rule["uid"])
            assert rule["condition"] in data(rule), rule["title"]
            assert rule["noDataState"] in ("NoData", "Alerting", "OK"), rule["title"]
            assert rule["execErrState"] in ("Error", "Alerting", "OK"), rule["title"]
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["title"]
            for node in rule["data"]:
                assert set(node) == {"refId", "relativeTimeRange", "datasourceUid", "model"}
                assert set(node["relativeTimeRange"]) == {"from", "to"}
                assert node["model"]["refId"] == node["refId"]
    assert len(uids) == len(set(uids)) == len(GRAFANA)


def test_the_queries_use_the_provisioned_prometheus_data_source() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    for title, rule in GRAFANA.items():
        for ref, node in data(rule).items():
            if node["datasourceUid"] == EXPRESSIONS_UID:
                assert node["model"]["datasource"] == {"type": "__expr__", "uid": "__expr__"}
                continue
            assert node["datasourceUid"] == source["uid"], (title, ref)
            assert node["model"]["datasource"] == {"type": source["type"], "uid": source["uid"]}
            assert node["model"]["instant"] is True, (title, ref)


def test_every_prometheus_alert_has_a_grafana_rule_with_its_query_duration_and_labels() -> None:
    assert set(GRAFANA) == set(PROMETHEUS)
    for name, prometheus in PROMETHEUS.items():
        grafana = GRAFANA[name]
        assert data(grafana)["query"]["model"]["expr"] == prometheus["expr"], name
        assert grafana["for"] == prometheus.get("for", "0s"), name
        assert grafana["labels"] == prometheus["labels"], name


def test_a_rule_alerts_on_every_series_its_query_returns_and_is_ok_without_data() -> None:
    """As Grafana converts Prometheus rules: any value (number, NaN, infinity) alerts."""
    for name, rule in GRAFANA.items():
        nodes = data(rule)
        assert set(nodes) - {"diagnosis"} == {"query", "prometheus_math", "threshold"}, name
        math, threshold = nodes["prometheus_math"]["model"], nodes["threshold"]["model"]
        assert math["type"] == "math"
        assert math["expression"] == "is_number($query) || is_nan($query) || is_inf($query)"
        assert threshold["type"] == "threshold" and threshold["expression"] == "prometheus_math"
        assert threshold["conditions"] == [{"evaluator": {"type": "gt", "params": [0]}}]
        assert rule["condition"] == "threshold", name
        assert (rule["noDataState"], rule["execErrState"]) == ("OK", "Error"), name


def test_annotations_are_prometheus_ones_with_the_value_taken_from_the_query() -> None:
    for name, prometheus in PROMETHEUS.items():
        annotations = dict(GRAFANA[name]["annotations"])
        assert set(annotations) == set(prometheus["annotations"]) | {"dashboard_url"}, name
        for key, text in prometheus["annotations"].items():
            if key == "diagnosis":
                continue
            assert annotations[key] == text.replace("$value", "$values.query.Value"), name
        rendered = " ".join(annotations.values())
        # Grafana's templates have no query function; $value there is a string of all
        # the values, not the number.
        assert "| query" not in rendered and not re.search(r"\$value\b", rendered), name


def test_every_rule_links_to_the_dashboard_panel_of_its_alert() -> None:
    """The panel shows a metric the alert reads (the PSI alerts: the bins of the
    alert's feature); the URL sets the dashboard's model and feature to the alert's."""
    uid = json.loads(DASHBOARD.read_text())["uid"]
    for name, rule in GRAFANA.items():
        assert rule["dashboardUid"] == uid, name
        panel = PANELS[rule["panelId"]]
        shown = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        if name.startswith("SkewFeaturePSI"):
            assert "$feature" in panel["title"] and "skew_feature_bin_total" in shown
        else:
            assert shown & metric_names(PROMETHEUS[name]["expr"]), (name, panel["title"])
        url = rule["annotations"]["dashboard_url"]
        assert re.fullmatch(rf".+/d/{uid}/{uid}\?(.*&)?viewPanel={panel['id']}", url), url
        carried = set(re.findall(r"\$labels\.(\w+)", PROMETHEUS[name]["annotations"]["summary"]))
        for label in ("model", "feature"):
            variable = f"var-{label}={{{{ $labels.{label} | urlquery }}}}&"
            assert (variable in url) == (label in carried), (name, label)


def test_the_diagnosis_sentences_name_every_kind_the_engine_knows_in_its_order() -> None:
    template = PROMETHEUS["SkewFeatureOutOfRange"]["annotations"]["diagnosis"]
    kinds = re.findall(r'eq \$d\.Labels\.kind "(\w+)"', template)
    assert kinds == list(KINDS)
    with_diagnosis = {n for n, r in PROMETHEUS.items() if "diagnosis" in r["annotations"]}
    assert with_diagnosis == {n for n in PROMETHEUS if n.startswith("SkewFeature")}
    assert {PROMETHEUS[n]["annotations"]["diagnosis"] for n in with_diagnosis} == {template}


@pytest.mark.parametrize("name", sorted(n for n in PROMETHEUS if n.startswith("SkewFeature")))
def test_the_grafana_diagnosis_numbers_the_kinds_as_its_annotation_reads_them(name: str) -> None:
    rule = GRAFANA[name]
    query = data(rule)["diagnosis"]["model"]["expr"]
    numbered = re.findall(r'\{kind="(\w+)"\}\) == 1\) \* (\d+)', query)
    assert [(kind, int(n)) for kind, n in numbered] == [(k, i + 1) for i, k in enumerate(KINDS)]
    # Never no data: that would put the whole rule in the NoData state.
    assert query.rstrip().endswith("or vector(0)")
    annotation = rule["annotations"]["diagnosis"]
    branches = re.findall(r"eq \.Value (\d+)\.0 \}\}(\w+): ", annotation)
    assert [(kind, int(n)) for n, kind in branches] == [(k, i + 1) for i, k in enumerate(KINDS)]
    prometheus = PROMETHEUS[name]["annotations"]["diagnosis"]
    for kind, sentence in re.findall(r'kind "(\w+)" \}\}(.*?)\{\{ end', prometheus):
        assert f"}}}}{sentence}{{{{" in annotation, kind


def test_the_notification_policy_groups_and_routes_as_the_alertmanager_example() -> None:
    alertmanager = yaml.safe_load(ALERTMANAGER.read_text())
    (am_skew,) = alertmanager["route"]["routes"]
    (root,) = load("notification_policies.yml")["policies"]
    (skew,) = root["routes"]
    assert skew["object_matchers"] == [["alertname", "=~", "Skew.+"]]
    assert am_skew["matchers"] == ['alertname=~"Skew.+"']
    for key in ("receiver", "group_by", "group_wait", "group_interval", "repeat_interval"):
        assert skew[key] == am_skew[key], key
    critical, info = skew["routes"]
    am_critical, am_info = am_skew["routes"]
    assert critical["object_matchers"] == [["severity", "=", "critical"]]
    assert am_critical["matchers"] == ['severity="critical"']
    assert (critical["receiver"], critical["repeat_interval"]) == (
        am_critical["receiver"],
        am_critical["repeat_interval"],
    )
    # Alertmanager's skew-info receiver has no integration: nothing is sent. Grafana has
    # no such contact point: the info policy is muted every day instead.
    assert info["object_matchers"] == [["severity", "=", "info"]]
    assert am_info["matchers"] == ['severity="info"']
    (info_receiver,) = [r for r in alertmanager["receivers"] if r["name"] == am_info["receiver"]]
    assert set(info_receiver) == {"name"}
    (always,) = load("notification_policies.yml")["muteTimes"]
    assert info["mute_time_intervals"] == [always["name"]]
    assert always["time_intervals"] == [{"weekdays": ["monday:sunday"]}]


def test_every_contact_point_a_policy_names_is_provisioned_as_in_alertmanager() -> None:
    points = {p["name"]: p for p in load("contact_points.yml")["contactPoints"]}
    (root,) = load("notification_policies.yml")["policies"]
    named = {root["receiver"]}
    stack = list(root["routes"])
    while stack:
        route = stack.pop()
        named.add(route["receiver"])
        stack.extend(route.get("routes", []))
    assert named == set(points) | {"grafana-default-email"}  # Grafana's own default
    receivers = {r["name"]: r for r in yaml.safe_load(ALERTMANAGER.read_text())["receivers"]}
    uids = []
    for name, point in points.items():
        (receiver,) = point["receivers"]
        uids.append(receiver["uid"])
        assert UID.fullmatch(receiver["uid"])
        (webhook,) = receivers[name]["webhook_configs"]
        assert receiver["type"] == "webhook"
        assert receiver["settings"]["url"] == webhook["url"]
    assert len(uids) == len(set(uids))


def test_compose_provisions_the_alerting_files_in_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/alerting:/etc/grafana/provisioning/alerting:ro" in mounts
    targets = [m.split(":")[1] for m in mounts]
    for target in targets:  # no mount point inside another, read-only, mount
        assert not any(target.startswith(other + "/") for other in targets), target
