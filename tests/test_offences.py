"""Offences: one value at a time, the same verdict as the engine's vectorised counts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sidecar import Baseline, Engine, ProfileSettings
from sidecar.engine import ABSENT
from sidecar.offences import REASONS, Offences, counters
from sidecar.profile import ProfileOptions


def training(n: int = 600) -> list[dict[str, Any]]:
    return [
        {
            "x": float(i % 100),
            "c": "abc"[i % 3],
            "flag": i % 2 == 0,
            "t": f"2026-01-0{1 + i % 5}T{i % 24:02d}:00:00+00:00",
            "v": [i % 10, i % 10 + 1, i % 10 + 2],
            "optional": None if i % 4 == 0 else float(i),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return Baseline.from_records(training())


CASES: list[tuple[str, Any, str | None]] = [
    ("x", 50.0, None),
    ("x", 50, None),
    ("x", 500.0, "out_of_range/high"),
    ("x", -5, "out_of_range/low"),
    ("x", "12", "type_mismatch"),
    ("x", True, "type_mismatch"),
    ("x", math.nan, "nonfinite"),
    ("x", -math.inf, "nonfinite"),
    ("x", 10**400, "nonfinite"),
    ("x", None, "missing"),
    ("x", ABSENT, "missing"),
    ("c", "a", None),
    ("c", "z", "unseen_category"),
    ("c", 3, "type_mismatch"),
    ("c", ["a"], "type_mismatch"),
    ("flag", True, None),
    ("flag", "true", "type_mismatch"),
    ("t", "2026-01-02T03:00:00+00:00", None),
    ("t", "yesterday", "type_mismatch"),
    ("t", 1767225600, "type_mismatch"),
    ("v", [1, 2, 3], None),
    ("v", [1, 2], "shape_mismatch"),
    ("v", [[1, 2, 3]], "shape_mismatch"),
    ("v", [1, 2, 99], "out_of_range/high"),
    ("v", [-1, 2, 3], "out_of_range/low"),
    ("v", [1, math.nan, 3], "nonfinite"),
    ("v", ["a", "b", "c"], "type_mismatch"),
    ("v", "1,2,3", "type_mismatch"),
    ("optional", None, None),  # missing in training too: not an offence
    ("optional", ABSENT, None),
    ("optional", 1e9, "out_of_range/high"),
]


@pytest.mark.parametrize(("feature", "value", "reason"), CASES)
def test_a_value_offends_exactly_when_the_engine_counts_it(
    baseline: Baseline, feature: str, value: Any, reason: str | None
) -> None:
    engine = Engine(baseline)
    offences = Offences(baseline.features[feature], engine.checkers[feature])
    window = engine.window.features[feature]
    before = counters(window)
    engine.check([{} if value is ABSENT else {feature: value}])
    moved = [REASONS[i] for i in offences.watched if counters(window)[i] != before[i]]
    assert offences.reason(value) == reason
    assert offences.moved(before, counters(window)) is (reason is not None)
    if reason is not None:
        assert reason in moved


def test_unseen_categories_do_not_offend_a_capped_vocabulary() -> None:
    rows = [{"c": f"v{i}"} for i in range(50)]
    baseline = Baseline.from_records(rows, ProfileOptions(ProfileSettings(vocabulary_cap=10)))
    engine = Engine(baseline)
    offences = Offences(baseline.features["c"], engine.checkers["c"])
    assert not baseline.features["c"].stats.vocabulary_complete  # type: ignore[union-attr]
    assert offences.reason("never seen") is None


def test_the_last_offending_values_come_newest_first_and_at_most_the_limit(
    baseline: Baseline,
) -> None:
    engine = Engine(baseline)
    offences = Offences(baseline.features["c"], engine.checkers["c"])
    column = ["a", "z1", "b", "z2", 7, "z3", "c"]
    assert offences.last(column, 10) == [
        (5, "unseen_category"),
        (4, "type_mismatch"),
        (3, "unseen_category"),
        (1, "unseen_category"),
    ]
    assert offences.last(column, 2) == [(5, "unseen_category"), (4, "type_mismatch")]


def test_numbers_found_in_one_pass_agree_with_the_value_by_value_rules(
    baseline: Baseline,
) -> None:
    engine = Engine(baseline)
    offences = Offences(baseline.features["x"], engine.checkers["x"])
    rng = np.random.default_rng(5)
    column: list[Any] = rng.normal(50, 40, 500).tolist()
    column[17] = math.nan
    column[300] = 10**400  # too big for float64: saturates to +inf, like the engine
    column[301] = 3  # an int among floats
    one_pass = offences.last(column, len(column))
    by_value = [
        (i, why) for i in reversed(range(len(column))) if (why := offences.reason(column[i]))
    ]
    assert one_pass == by_value
    assert (17, "nonfinite") in one_pass and (300, "nonfinite") in one_pass
    assert len(one_pass) > 50
