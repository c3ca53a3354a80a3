"""The fast text writer against prometheus_client's generate_latest, byte for byte.

Every comparison renders the same monitors both ways: generate_latest over the
Metric objects of `render` (what any exposition of the registry shows), and
`TextWriter` (what metrics_app serves). Monitors run no thread here: samples are
checked with process_pending() and windows closed with close_window(), so nothing
changes between the two renders.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from starlette.applications import Starlette
from starlette.routing import Mount

from sidecar import Baseline, ProfileOptions
from sidecar.metrics import (
    FAMILIES,
    MonitorSnapshot,
    TextWriter,
    collector_for,
    exposition,
    metrics_app,
    render,
)
from sidecar.report import DriftRule, FeatureReport, WindowReport
from sidecar.worker import Monitor, Sample
from tests.servers import serve

TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
# What Prometheus sends: 2.x before 2.49, and 3.x with its default scrape_protocols.
PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,"
    "*/*;q=0.2"
)
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
ODD = 'a "quoted"\\back\\slashed\nnew-lined name'  # every character label values escape


def training_rows(n: int = 2000, odd: str = ODD) -> list[dict[str, Any]]:
    """Numeric, categorical, list and timestamp inputs, a column named `odd`, and a
    prediction column (score)."""
    return [
        {
            "x": float(i % 100),
            "c": "abc"[i % 3],
            "v": [float(i % 7)] * (1 + i % 4),
            "ts": (T0 + timedelta(minutes=37 * i)).isoformat(),
            odd: ['say "hi"', "back\\slash", "two\nlines"][i % 3],
            "score": (i % 10) / 10,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    options = ProfileOptions(prediction=frozenset({"score"}))
    return Baseline.from_records(training_rows(), options)


def extractor(body: Any) -> list[Any]:
    """One row per body; a body with "boom" fails extraction (counted as an error)."""
    if isinstance(body, dict) and "boom" in body:
        raise RuntimeError("boom")
    return body if isinstance(body, list) else [body]


def sample(row: Any, score: Any = 0.5) -> Sample:
    return Sample([orjson.dumps(row)], [orjson.dumps({"predictions": [score]})])


def traffic(monitor: Monitor, n: int = 40, shift: float = 0.0) -> None:
    """Rows of every outcome: in and out of range, NaN, missing, wrong types, unseen
    categories, unknown keys; invalid JSON, an extraction error; then checked."""
    monitor.submit(Sample([b'{"x": NaN, "c": "a"}']))
    monitor.submit(Sample([b"{not json"]))
    monitor.submit(Sample([orjson.dumps({"boom": 1})]))
    for i in range(n):
        row = {
            "x": float(i % 100) + shift,
            "c": "abcd"[i % 4],
            "v": [1.0] * (1 + i % 6),
            "ts": (T0 + timedelta(hours=i)).isoformat(),
            ODD: 'say "hi"',
            "extra": i,
        }
        if i % 5 == 0:
            row["x"] = "NaN-ish"
        if i % 7 == 0:
            del row["c"]
        monitor.submit(sample(row, score=2.0 if i % 3 else 0.25))
    monitor.process_pending()


def monitor(baseline: Baseline, registry: CollectorRegistry, **options: Any) -> Monitor:
    options.setdefault("model", "m")
    options.setdefault("window_seconds", 3600)
    return Monitor(baseline, registry=registry, extractor=extractor, **options)


def assert_text_is_generate_latest(registry: CollectorRegistry) -> str:
    """The fast text equals generate_latest over the registry (which holds only the
    skew collector); returns it."""
    text = collector_for(registry).text()
    assert text == generate_latest(registry).decode()
    return text


def families(text: str) -> list[str]:
    """The exposition's families (HELP line to the next HELP), sorted: the same
    content in any family order."""
    return sorted("# HELP " + block for block in text.split("# HELP ")[1:])


# -- equal to generate_latest ------------------------------------------------------------


def test_an_empty_monitor_renders_as_generate_latest(baseline: Baseline) -> None:
    registry = CollectorRegistry()
    m = monitor(baseline, registry)  # held: the collector keeps monitors weakly
    text = assert_text_is_generate_latest(registry)
    assert 'skew_feature_bin_total{bin="a",feature="c",model="m"} 0.0\n' in text
    assert m.snapshot().windows == 0
    assert "skew_feature_psi{" not in text  # no window yet


def test_a_monitor_with_traffic_and_a_closed_window_renders_as_generate_latest(
    baseline: Baseline,
) -> None:
    registry = CollectorRegistry()
    m = monitor(baseline, registry, queue_size=60, rule=DriftRule(min_rows=10))
    assert_text_is_generate_latest(registry)  # warms the line cache with zeros
    traffic(m, n=70)  # 10 beyond the queue: dropped as queue_full
    m.close_window()
    text = assert_text_is_generate_latest(registry)
    # Every kind of series is there: the comparison is not vacuous.
    for line in (
        'skew_samples_dropped_total{model="m",reason="queue_full"} 13.0',
        'skew_samples_dropped_total{model="m",reason="invalid_json"} 1.0',
        'skew_monitor_errors_total{model="m",stage="extract"} 1.0',
        'skew_feature_out_of_range_total{feature="score",model="m",side="high"}',
        'skew_feature_type_mismatch_total{feature="x",model="m"} ',
        'skew_feature_unseen_category_total{feature="c",model="m"} ',
        'skew_feature_shape_mismatch_total{feature="v",model="m"} ',
        'skew_feature_bin_total{bin="len other",feature="v",model="m"} 18.0',
        'skew_feature_bin_total{bin="00h",feature="ts",model="m"}',
        'skew_feature_psi{feature="x",model="m"} ',
        'skew_feature_drifted{feature="score",model="m"} 1.0',
        'skew_monitor_batch_seconds_bucket{le="+Inf",model="m"} 1.0',
        'skew_monitor_batch_seconds_count{model="m"} 1.0',
        'skew_unknown_features_total{model="m"} 57.0',
        "skew_window_end_timestamp_seconds{",
    ):
        assert line in text
    # Counters move and the closed window stays: cached lines must follow the values.
    traffic(m, n=30, shift=1000.0)
    assert_text_is_generate_latest(registry)
    m.close_window()
    assert_text_is_generate_latest(registry)


def test_label_values_are_escaped_as_generate_latest_escapes_them(baseline: Baseline) -> None:
    registry = CollectorRegistry()
    m = monitor(baseline, registry, model='model "one"\\\n', rule=DriftRule(min_rows=10))
    traffic(m)
    m.close_window()
    text = assert_text_is_generate_latest(registry)
    feature = 'feature="a \\"quoted\\"\\\\back\\\\slashed\\nnew-lined name"'
    assert f'skew_feature_values_total{{{feature},model="model \\"one\\"\\\\\\n"}}' in text
    assert 'bin="say \\"hi\\"",' in text
    assert 'bin="two\\nlines",' in text


def test_several_models_render_as_generate_latest(baseline: Baseline) -> None:
    other = Baseline.from_records(training_rows(500, odd="y"))
    registry = CollectorRegistry()
    first = monitor(baseline, registry, model="first", rule=DriftRule(min_rows=10))
    second = monitor(other, registry, model="second", export_bins=False)
    third = monitor(baseline, registry, model="third")
    traffic(first)
    first.close_window()
    traffic(second, n=10)
    del third  # gone before the scrape: not rendered
    gc.collect()
    text = assert_text_is_generate_latest(registry)
    assert 'skew_feature_bin_total{bin="a",feature="c",model="first"}' in text
    assert 'model="second"' in text
    assert 'skew_feature_bin_total{bin="a",feature="c",model="second"}' not in text
    assert 'skew_feature_baseline_fraction{bin="a",feature="c",model="second"}' in text
    assert 'model="third"' not in text


def test_a_registry_whose_monitors_are_gone_renders_the_headers_only(
    baseline: Baseline,
) -> None:
    registry = CollectorRegistry()
    m = monitor(baseline, registry)
    del m
    gc.collect()
    text = assert_text_is_generate_latest(registry)
    assert text.count("# TYPE ") == len(FAMILIES)
    assert "{" not in text


class Rendered:
    """A collector of the Metric objects `render` built: generate_latest's input."""

    def __init__(self, snapshots: list[MonitorSnapshot]) -> None:
        self.metrics = list(render(snapshots))

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def report(**fields: Any) -> WindowReport:
    values: dict[str, Any] = {
        "name": "x",
        "kind": "numeric",
        "role": "input",
        "values": 0,
        "missing": 0,
        "nonfinite": 0,
        "out_of_range_low": 0,
        "out_of_range_high": 0,
        "type_mismatch": 0,
        "unseen_category": None,
        "shape_mismatch": 0,
        **fields,
    }
    feature = FeatureReport(**values)
    return WindowReport(
        rows=7, rejected_rows=0, unknown_features=0, baseline_hash="h", min_rows=1,
        features={feature.name: feature},
    )  # fmt: skip


def snapshot(model: str = "m", **fields: Any) -> MonitorSnapshot:
    counts = {k: v for k, v in fields.items() if k not in FeatureReport.JSON_FIELDS[8:]}
    return MonitorSnapshot(
        model=model,
        baseline_hash="h",
        schema_version=3,
        totals=[report(**counts)],
        last_window=[report(**fields)],
        window_end=1_715_000_000.123456,
        windows=1,
        batch_buckets=[1] * 12,
        batch_sum=1e-7,
    )


EDGE_VALUES = [
    pytest.param({"values": 999_999, "missing": 1_000_000, "nonfinite": 123_456_789}, id="ints"),
    pytest.param({"values": 10**17, "missing": 2**53 + 1}, id="huge ints"),
    pytest.param({"psi": math.inf, "mean_shift": -math.inf, "ks": math.nan}, id="inf nan"),
    pytest.param({"linf": -0.0, "mean_shift": 0.0, "scale_ratio": 0}, id="zeros"),
    pytest.param({"wasserstein": 1234567.891, "js_distance": 1e-300, "ks": 5e-7}, id="floats"),
    pytest.param({"mean_shift": -1234567.5, "scale_ratio": 999999.9999999999}, id="edges"),
    pytest.param(
        {
            "bin_labels": ("(-inf, 1]", "other"),
            "bin_counts": (3, 10**6),
            "baseline_fractions": (math.nan, math.inf),
        },
        id="bins",
    ),
]


@pytest.mark.parametrize("fields", EDGE_VALUES)
def test_values_format_as_floatToGoString_formats_them(fields: dict[str, Any]) -> None:
    snapshots = [snapshot(**fields)]
    expected = generate_latest(Rendered(snapshots)).decode()
    assert TextWriter().text(snapshots) == expected


def test_cached_lines_follow_values_that_compare_equal_but_print_differently() -> None:
    writer = TextWriter()
    sequence: list[dict[str, Any]] = [
        {"mean_shift": 0.0, "psi": 1},
        {"mean_shift": -0.0, "psi": 1.0},
        {"mean_shift": 0, "psi": 1.0},
        {"mean_shift": -0.0, "psi": 2},
        {"mean_shift": math.nan, "psi": math.nan},
        {"mean_shift": 0.0, "psi": 2.0},
    ]
    for fields in sequence:
        snapshots = [snapshot(**fields)]
        expected = generate_latest(Rendered(snapshots)).decode()
        assert writer.text(snapshots) == expected


def test_the_line_cache_forgets_models_no_longer_exported() -> None:
    writer = TextWriter()
    series = 0
    for i in range(200):
        text = writer.text([snapshot(model=f"model-{i}")])
        series = text.count("\n") - 2 * len(FAMILIES)
    cached = sum(len(lines) for lines in writer._cache.values())
    assert cached <= 2 * series + 1_000


# -- what metrics_app serves ---------------------------------------------------------------


@pytest.fixture
def registry(baseline: Baseline) -> Iterator[CollectorRegistry]:
    """A monitor with traffic and a closed window, and a counter of the app's own."""
    registry = CollectorRegistry()
    m = monitor(baseline, registry, rule=DriftRule(min_rows=10))
    traffic(m)
    m.close_window()
    Counter("app_predictions", "Predictions served.", ["route"], registry=registry).labels(
        "/predict"
    ).inc(3)
    yield registry
    del m


@pytest.mark.parametrize(
    "accept, text_part",
    [
        ("", ""),
        ("*/*", "*/*"),
        ("text/plain", "text/plain"),
        (PROMETHEUS_2, "text/plain;version=0.0.4;q=0.5"),
        (PROMETHEUS_3, "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain"),
        ("text/plain;version=1.0.0;escaping=underscores", None),
        ("application/openmetrics-text;version=1.0.0,text/*", "text/*"),
    ],
)
def test_the_text_format_is_served_whenever_the_client_accepts_it(
    registry: CollectorRegistry, accept: str, text_part: str | None
) -> None:
    body, content_type = exposition(registry, accept)
    encoder, expected_type = choose_encoder(accept if text_part is None else text_part)
    assert content_type == expected_type
    assert content_type.startswith("text/plain")
    assert body.decode().endswith(collector_for(registry).text())
    assert families(body.decode()) == families(encoder(registry).decode())
    assert 'app_predictions_total{route="/predict"} 3.0\n' in body.decode()


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text",
        "application/openmetrics-text;version=1.0.0",
        # Prometheus with scrape_protocols: [OpenMetricsText1.0.0]
        "application/openmetrics-text;version=1.0.0;q=0.6,*/*;q=0.5",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0,text/*;q=0.0",
        "application/openmetrics-text;version=1.0.0,application/json",
        "text/plain;version=1.0.0;escaping=dots",  # rewrites every skew name
    ],
)
def test_otherwise_prometheus_client_renders_everything_as_before(
    registry: CollectorRegistry, accept: str
) -> None:
    body, content_type = exposition(registry, accept)
    encoder, expected_type = choose_encoder(accept)
    assert content_type == expected_type
    assert body == encoder(registry)


def test_the_text_format_is_the_same_under_every_name_escaping_it_is_served_with(
    registry: CollectorRegistry,
) -> None:
    collector = collector_for(registry)
    with collector.skipped():  # the app's counter alone
        others = generate_latest(registry).decode()
    full = generate_latest(registry).decode()
    assert full.replace(others, "", 1) == collector.text()
    for escaping in (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8, openmetrics.VALUES):
        assert generate_latest(registry, escaping=escaping).decode() == full


def test_a_registry_without_monitors_renders_as_generate_latest() -> None:
    registry = CollectorRegistry()
    Counter("app_predictions", "Predictions served.", registry=registry).inc()
    assert exposition(registry) == (generate_latest(registry), TEXT_0_0_4)


def test_metrics_app_serves_the_apps_own_metrics_too_over_http(
    registry: CollectorRegistry,
) -> None:
    app = Starlette(routes=[Mount("/metrics", app=metrics_app(registry))])
    with serve(app) as url, httpx.Client(base_url=url, timeout=5.0) as client:
        plain = client.get("/metrics/")
        prometheus = client.get("/metrics/", headers={"accept": PROMETHEUS_2})
        om = client.get("/metrics/", headers={"accept": "application/openmetrics-text"})

    expected = families(generate_latest(registry).decode())
    for response in (plain, prometheus):
        assert response.status_code == 200
        assert response.headers["content-type"] == TEXT_0_0_4
        assert families(response.text) == expected
        assert 'app_predictions_total{route="/predict"} 3.0\n' in response.text
        assert response.text.endswith(collector_for(registry).text())
    assert om.status_code == 200
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.content == openmetrics.generate_latest(registry)
    assert 'app_predictions_total{route="/predict"} 3.0\n' in om.text
    assert 'skew_rows_checked_total{model="m"} 41.0\n' in om.text
