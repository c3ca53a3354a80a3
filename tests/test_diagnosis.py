from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from sidecar.baseline import Baseline
from sidecar.check import check_file
from sidecar.diagnosis import KINDS, Diagnosis, diagnose
from sidecar.engine import Engine
from sidecar.render import format_report
from tests.diagnosis_cases import CASES, CLEAN, Case, baseline, run, serving_rows, top_kinds

ROWS = 300  # "within a few hundred sampled rows"
SEEDS = range(3)


@pytest.fixture(scope="module")
def base() -> Baseline:
    return baseline(2000, seed=0)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_bug_is_diagnosed_by_name_and_nothing_else_is(base: Baseline, case: Case) -> None:
    for seed in SEEDS:
        kinds = top_kinds(run(case, base, ROWS, seed))
        assert kinds.pop(case.feature) == case.kind, f"seed {seed}"
        # The features the bug did not touch stay undiagnosed.
        assert set(kinds.values()) == {""}, f"seed {seed}: {kinds}"


def test_clean_streams_get_no_diagnosis(base: Baseline) -> None:
    for seed in range(10):
        kinds = top_kinds(run(CLEAN, base, ROWS, seed))
        assert set(kinds.values()) == {""}, f"seed {seed}: {kinds}"


def test_every_case_kind_is_a_known_kind_and_every_kind_has_a_case() -> None:
    assert {c.kind for c in CASES} == set(KINDS)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_explanations_carry_numbers_and_confidences_lie_in_0_1(base: Baseline, case: Case) -> None:
    found = run(case, base, ROWS, seed=0).features[case.feature].diagnosis
    assert found
    for d in found:
        assert d.kind in KINDS
        assert 0.0 <= d.confidence <= 1.0
        assert re.search(r"\d", d.explanation), d.explanation


def test_a_window_with_too_few_values_gets_no_diagnosis(base: Baseline) -> None:
    cents = next(c for c in CASES if c.kind == "unit_change")
    report = run(cents, base, 20, seed=0)
    assert all(not f.diagnosis for f in report.features.values())


def test_diagnose_without_a_verdict_names_fingerprints_but_no_plain_shift(base: Baseline) -> None:
    shifted = next(c for c in CASES if c.kind == "distribution_shift" and c.feature == "amount")
    engine = Engine(base, roles=("input",))
    engine.check(serving_rows(shifted, ROWS, seed=0))
    window = engine.close_window().features["amount"]
    assert diagnose(window, base.features["amount"]) == []
    (found,) = diagnose(window, base.features["amount"], drifted=True)
    assert found.kind == "distribution_shift"


def test_unit_change_names_the_factor(base: Baseline) -> None:
    cents = next(c for c in CASES if c.name == "amount in cents")
    (found,) = run(cents, base, ROWS, seed=0).features["amount"].diagnosis
    assert found.explanation.startswith("serving values are 100x training")


def test_timezone_shift_names_the_hours(base: Baseline) -> None:
    for name in ("hour +5, wrapped", "timestamp local +5 as naive"):
        case = next(c for c in CASES if c.name == name)
        (found,) = run(case, base, ROWS, seed=0).features[case.feature].diagnosis
        assert "+5 h" in found.explanation


def test_check_json_and_the_table_carry_the_diagnosis(base: Baseline, tmp_path: Path) -> None:
    cents = next(c for c in CASES if c.name == "amount in cents")
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in serving_rows(cents, ROWS, 0)))
    (report,) = check_file(base, path)
    (entry,) = report.to_json()["features"]["amount"]["diagnosis"]
    assert set(entry) == {"kind", "confidence", "explanation"}
    assert entry["kind"] == "unit_change"
    assert report.to_json()["features"]["age"]["diagnosis"] == []
    text = format_report(report)
    assert "unit_change" in text.splitlines()[3]  # worst feature first, after the header
    assert "amount: unit_change: serving values are 100x" in text


def test_diagnosis_json_rounds_the_confidence() -> None:
    d = Diagnosis("unit_change", 0.123456, "x")
    assert d.to_json() == {"kind": "unit_change", "confidence": 0.123, "explanation": "x"}


def test_the_diagnosis_gauge_is_1_while_diagnosed_and_0_after_it_clears() -> None:
    import numpy as np
    import orjson
    from prometheus_client import CollectorRegistry, generate_latest

    from sidecar import Baseline
    from sidecar.metrics import TextWriter
    from sidecar.report import DriftRule
    from sidecar.worker import Monitor, Sample

    rng = np.random.default_rng(3)
    baseline = Baseline.from_records([{"price": float(v)} for v in rng.normal(70, 25, 3000)])
    registry = CollectorRegistry()
    monitor = Monitor(baseline, model="m", registry=registry, rule=DriftRule(min_rows=100))

    def window(scale: float) -> None:
        for v in rng.normal(70, 25, 300):
            monitor.submit(Sample([orjson.dumps({"price": float(v) * scale})]))
        monitor.process_pending()
        monitor.close_window()

    labels = {"model": "m", "feature": "price", "kind": "unit_change"}
    assert registry.get_sample_value("skew_feature_diagnosis", labels) is None
    window(100.0)  # cents instead of dollars
    assert registry.get_sample_value("skew_feature_diagnosis", labels) == 1.0
    window(1.0)
    assert registry.get_sample_value("skew_feature_diagnosis", labels) == 0.0
    # The fast text writer renders the family exactly as prometheus_client does.
    text = TextWriter().text([monitor.snapshot()])
    assert 'skew_feature_diagnosis{feature="price",kind="unit_change",model="m"} 0.0' in text
    assert text in generate_latest(registry).decode()
