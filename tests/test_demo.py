from __future__ import annotations

import numpy as np
import pytest

from sidecar.baseline import Baseline
from sidecar.demo import LIVE_BUGS, Bug, churn_score, live_row, serving_rows, training_rows
from sidecar.diagnosis import KINDS
from sidecar.engine import Engine
from sidecar.profile import ProfileOptions
from sidecar.report import WindowReport, build_report

ROWS = 300  # a window of the live demo holds about this many


@pytest.fixture(scope="module")
def base() -> Baseline:
    return Baseline.from_records(
        training_rows(), ProfileOptions(prediction=frozenset({"churn_score"}))
    )


def window(base: Baseline, bugs: list[Bug], seed: int) -> WindowReport:
    rng = np.random.default_rng(seed)
    engine = Engine(base, roles=("input",))
    engine.check([live_row(rng, bugs) for _ in range(ROWS)])
    return build_report(engine.close_window(), base)


def top_kinds(report: WindowReport) -> dict[str, str]:
    return {name: f.diagnosis[0].kind if f.diagnosis else "" for name, f in report.features.items()}


@pytest.mark.parametrize("bug", LIVE_BUGS, ids=[b.title for b in LIVE_BUGS])
def test_each_live_bug_alone_is_named_by_its_kind_and_nothing_else_is(
    base: Baseline, bug: Bug
) -> None:
    for seed in range(3):
        kinds = top_kinds(window(base, [bug], seed))
        assert kinds.pop(bug.feature) == bug.kind, f"seed {seed}"
        assert set(kinds.values()) == {""}, f"seed {seed}: {kinds}"


def test_all_live_bugs_at_once_are_each_named_by_their_kind(base: Baseline) -> None:
    kinds = top_kinds(window(base, list(LIVE_BUGS), seed=0))
    assert {b.feature: kinds[b.feature] for b in LIVE_BUGS} == {
        b.feature: b.kind for b in LIVE_BUGS
    }


def test_live_bugs_break_distinct_features_with_known_kinds(base: Baseline) -> None:
    features = [b.feature for b in LIVE_BUGS]
    assert len(set(features)) == len(features)
    assert set(features) <= base.features.keys()
    assert {b.kind for b in LIVE_BUGS} <= set(KINDS)


def test_live_rows_carry_no_model_output_and_the_clean_ones_match_training(
    base: Baseline,
) -> None:
    row = live_row(np.random.default_rng(0), [])
    assert "churn_score" not in row
    assert set(row) == {name.split(".")[0] for name in base.features} - {"churn_score"}


def test_the_demo_model_scores_training_rows_as_they_were_labelled() -> None:
    for row in training_rows(50):
        assert churn_score(row) == pytest.approx(row["churn_score"], abs=1e-4)


@pytest.mark.parametrize(
    "row",
    [{}, {"monthly_charges": "12,50"}, {"monthly_charges": 1e9, "tenure_months": None}],
)
def test_the_demo_model_answers_bad_inputs_with_a_score(row: dict[str, object]) -> None:
    assert 0 <= churn_score(row) <= 1


def test_the_offline_serving_stream_is_the_same_on_every_run() -> None:
    assert list(serving_rows(20)) == list(serving_rows(20))
