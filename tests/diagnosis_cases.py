"""Generated training rows and serving streams with exactly one known bug each.

Shared by tests/test_diagnosis.py and bench/diagnosis_accuracy.py. Every row holds
one feature of each common shape; a case breaks one feature and leaves the others
clean, so every run also measures false diagnoses on the untouched features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from sidecar.baseline import Baseline
from sidecar.engine import Engine
from sidecar.profile import profile_records
from sidecar.report import WindowReport, build_report

PLANS = ["basic", "plus", "pro", "team", "enterprise", "unknown"]
PLAN_P = [0.4, 0.25, 0.15, 0.1, 0.09, 0.01]
REVERSED_P = np.array(PLAN_P[4::-1]) / sum(PLAN_P[:5])
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

Row = dict[str, Any]
Bug = Callable[[Row, np.random.Generator], None]


def clean_row(rng: np.random.Generator) -> Row:
    length = int(rng.integers(5, 31))
    hour = int(np.clip(rng.normal(14, 3.5), 0, 23))
    when = START + timedelta(
        days=int(rng.integers(0, 300)), hours=hour, minutes=int(rng.integers(0, 60))
    )
    return {
        "amount": round(float(rng.lognormal(4.0, 0.5)), 2),  # dollars
        "score_z": float(rng.normal(0, 1)),  # standardised in the training pipeline
        "ratio": float(rng.beta(2, 5)),  # a fraction
        "age": int(rng.integers(18, 91)),
        "event_hour": int(np.clip(rng.normal(13, 4), 0, 23)),
        "plan": PLANS[int(rng.choice(len(PLANS), p=PLAN_P))],
        "tokens": np.minimum(rng.zipf(1.3, length), 4999).astype(int).tolist(),
        "embedding": rng.normal(0, 1, 8).round(4).tolist(),
        "created_at": when.isoformat().replace("+00:00", "Z"),
    }


def _set(name: str, fn: Callable[[Any, np.random.Generator], Any], share: float = 1.0) -> Bug:
    def bug(row: Row, rng: np.random.Generator) -> None:
        if rng.random() < share:
            value = fn(row[name], rng)
            if value is _DELETE:
                del row[name]
            else:
                row[name] = value

    return bug


_DELETE = object()


def _local_plus_5(value: str, rng: np.random.Generator) -> str:
    utc = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (utc + timedelta(hours=5)).replace(tzinfo=None).isoformat()


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # the diagnosis expected for `feature`
    feature: str
    bug: Bug


CASES = [
    Case("raw score (training standardised)", "unnormalized", "score_z",
         _set("score_z", lambda v, r: round(v * 15 + 100, 1))),
    Case("amount standardised at serving only", "unnormalized", "amount",
         _set("amount", lambda v, r: (v - 62.0) / 33.0)),
    Case("amount in cents", "unit_change", "amount", _set("amount", lambda v, r: round(v * 100))),
    Case("ratio in percent", "unit_change", "ratio", _set("ratio", lambda v, r: v * 100)),
    Case("amount in thousands", "unit_change", "amount", _set("amount", lambda v, r: v / 1000)),
    Case("age off by 10", "offset_shift", "age", _set("age", lambda v, r: v + 10)),
    Case("hour +5, wrapped", "timezone_shift", "event_hour",
         _set("event_hour", lambda v, r: (v + 5) % 24)),
    Case("timestamp local +5 as naive", "timezone_shift", "created_at",
         _set("created_at", _local_plus_5)),
    Case("renamed plans in 30%", "vocabulary_mismatch", "plan",
         _set("plan", lambda v, r: v.upper(), 0.3)),
    Case("tokenizer with 4x vocabulary", "vocabulary_mismatch", "tokens",
         _set("tokens", lambda v, r: [t * 4 + 3 for t in v])),
    Case("amount as string", "type_change", "amount", _set("amount", lambda v, r: str(v), 0.5)),
    Case("token list as scalar", "type_change", "tokens", _set("tokens", lambda v, r: v[0], 0.3)),
    Case("embedding of 16", "shape_mismatch", "embedding",
         _set("embedding", lambda v, r: v + v)),
    Case("age absent in 40%", "missing_feature", "age", _set("age", lambda v, r: _DELETE, 0.4)),
    Case("ratio always null", "missing_feature", "ratio", _set("ratio", lambda v, r: None)),
    Case("amount 0 in 40%", "default_value_flood", "amount", _set("amount", lambda v, r: 0, 0.4)),
    Case("age -1 in 40%", "default_value_flood", "age", _set("age", lambda v, r: -1, 0.4)),
    Case("ratio stuck at one value (a saturated output)", "default_value_flood", "ratio",
         _set("ratio", lambda v, r: 0.35)),
    Case("plan 'unknown' in 50%", "default_value_flood", "plan",
         _set("plan", lambda v, r: "unknown", 0.5)),
    Case("amount from a wider population", "distribution_shift", "amount",
         _set("amount", lambda v, r: round(float(r.lognormal(4.3, 0.9)), 2))),
    Case("plan mix reversed", "distribution_shift", "plan",
         _set("plan", lambda v, r: PLANS[int(r.choice(5, p=REVERSED_P))])),
]  # fmt: skip
CLEAN = Case("clean", "", "", lambda row, rng: None)


def training_rows(n: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    return [clean_row(rng) for _ in range(n)]


def serving_rows(case: Case, n: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed + 10_000)
    rows = []
    for _ in range(n):
        row = clean_row(rng)
        case.bug(row, rng)
        rows.append(row)
    return rows


def baseline(n: int = 2000, seed: int = 0) -> Baseline:
    return profile_records(training_rows(n, seed))


def run(case: Case, base: Baseline, n: int, seed: int) -> WindowReport:
    engine = Engine(base, roles=("input",))
    engine.check(serving_rows(case, n, seed))
    return build_report(engine.close_window(), base)


def top_kinds(report: WindowReport) -> dict[str, str]:
    """Each feature's most confident diagnosis ("" for none)."""
    return {name: f.diagnosis[0].kind if f.diagnosis else "" for name, f in report.features.items()}
