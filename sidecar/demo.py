"""The embedded demo data set: a churn model's training table, its model, and the bugs
its serving path gets wrong.

Generated from a fixed seed, so the demo needs no download and is the same everywhere.
`serving_rows` is the offline demo's stream (every bug at once); `LIVE_BUGS` are the
bugs the live demo injects one after another (`live_row`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

CONTRACTS = ["month-to-month", "one_year", "two_year"]
PAYMENTS = ["card", "bank_transfer", "electronic_check", "mailed_check"]
COUNTRIES = [f"C{i:02d}" for i in range(30)]
OSES = ["android", "ios", "web"]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

Row = dict[str, Any]
Mutation = Callable[[Row, np.random.Generator], None]

# What the offline serving stream gets wrong, as a reader of the report should find it.
INJECTED_SKEW = {
    "monthly_charges": "sent in cents instead of dollars (x100)",
    "signup_time": "sent as naive local time, 5 hours ahead of the UTC used in training",
    "query_tokens": "tokenized with a larger vocabulary (ids up to 30,000)",
    "payment_method": "a new category 'crypto' in 15% of requests",
    "age": "sent as a string in 10% of requests",
    "support_calls": "missing from 30% of requests",
}


def churn_score(row: Row) -> float:
    """The demo model: the score its training data was labelled with. Bad inputs give
    a score, never an error (a buggy serving path keeps getting answers)."""
    try:
        charges = float(row.get("monthly_charges", 0))
        tenure = float(row.get("tenure_months", 0))
    except (TypeError, ValueError):
        return 0.5
    logit = -1.0 + 0.02 * charges - 0.05 * tenure + (row.get("contract") == "month-to-month")
    logit = max(-50.0, min(50.0, logit))  # cents for dollars must not overflow exp()
    return round(1 / (1 + math.exp(-logit)), 4)


def _row(rng: np.random.Generator) -> Row:
    tenure = int(rng.integers(0, 73))
    charges = float(round(np.exp(rng.normal(4.2, 0.35)), 2))
    hour = int(np.clip(rng.normal(14, 3.5), 0, 23))
    when = START + timedelta(
        days=int(rng.integers(0, 300)), hours=hour, minutes=int(rng.integers(0, 60))
    )
    length = int(rng.integers(5, 31))
    tokens = np.minimum(rng.zipf(1.3, length), 7999).astype(int).tolist()
    contract = CONTRACTS[int(rng.choice(3, p=[0.55, 0.25, 0.2]))]
    score = 1 / (
        1 + np.exp(-(-1.0 + 0.02 * charges - 0.05 * tenure + (contract == "month-to-month")))
    )
    return {
        "tenure_months": tenure,
        "monthly_charges": charges,
        "total_charges": round(charges * max(tenure, 1) * float(rng.uniform(0.9, 1.1)), 2),
        "age": int(rng.integers(18, 91)),
        "support_calls": int(rng.poisson(1.5)),
        "contract": contract,
        "payment_method": PAYMENTS[int(rng.choice(4, p=[0.4, 0.25, 0.25, 0.1]))],
        "country": COUNTRIES[min(int(rng.zipf(1.6)) - 1, 29)],
        "is_senior": bool(rng.random() < 0.16),
        "signup_time": when.isoformat().replace("+00:00", "Z"),
        "query_tokens": tokens,
        "device": {"os": OSES[int(rng.choice(3, p=[0.5, 0.35, 0.15]))]},
        # Weekly usage, standardised by the training pipeline (z-score).
        "usage_score": round(float(rng.normal(0, 1)), 3),
        "churn_score": round(float(score), 4),
    }


def training_rows(n: int = 5000, seed: int = 7) -> Iterator[Row]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield _row(rng)


# -- the bugs ----------------------------------------------------------------------


def raw_usage(row: Row, rng: np.random.Generator) -> None:
    """Minutes per week, as the event log has them: the scaler was not applied."""
    row["usage_score"] = round(row["usage_score"] * 90 + 240)


def in_cents(row: Row, rng: np.random.Generator) -> None:
    row["monthly_charges"] = round(row["monthly_charges"] * 100)


def local_time(row: Row, rng: np.random.Generator) -> None:
    """Naive local time five hours ahead, where training had UTC."""
    utc = datetime.fromisoformat(row["signup_time"].replace("Z", "+00:00"))
    row["signup_time"] = (utc + timedelta(hours=5)).replace(tzinfo=None).isoformat()


def larger_vocabulary(row: Row, rng: np.random.Generator) -> None:
    length = len(row["query_tokens"])
    row["query_tokens"] = np.minimum(rng.zipf(1.3, length) * 4, 29999).astype(int).tolist()


def _sometimes(share: float, change: Callable[[Row], None]) -> Mutation:
    def mutate(row: Row, rng: np.random.Generator) -> None:
        if rng.random() < share:
            change(row)

    return mutate


def _set(name: str, value: Callable[[Any], Any]) -> Callable[[Row], None]:
    def change(row: Row) -> None:
        row[name] = value(row[name])

    return change


def _drop(name: str) -> Callable[[Row], None]:
    def change(row: Row) -> None:
        del row[name]

    return change


crypto_payments = _sometimes(0.15, _set("payment_method", lambda v: "crypto"))
age_as_string = _sometimes(0.10, _set("age", str))
support_calls_missing = _sometimes(0.30, _drop("support_calls"))
tenure_defaults_to_zero = _sometimes(0.40, _set("tenure_months", lambda v: 0))


@dataclass(frozen=True)
class Bug:
    """One bug of the live demo: what goes wrong, in which feature, and the diagnosis
    (one of sidecar.diagnosis.KINDS) that names it."""

    title: str
    feature: str
    kind: str
    detail: str
    mutate: Mutation


LIVE_BUGS = (
    Bug("normalisation missing", "usage_score", "unnormalized",
        "sent in raw minutes per week; training had a z-score", raw_usage),
    Bug("unit change", "monthly_charges", "unit_change",
        "sent in cents instead of dollars", in_cents),
    Bug("time zone", "signup_time", "timezone_shift",
        "sent as naive local time, 5 h ahead of training's UTC", local_time),
    Bug("tokenizer vocabulary", "query_tokens", "vocabulary_mismatch",
        "from a tokenizer with a 4x larger vocabulary", larger_vocabulary),
    Bug("numbers as strings", "age", "type_change",
        "sent as a string by 10% of clients", age_as_string),
    Bug("missing field", "support_calls", "missing_feature",
        "absent from 30% of requests", support_calls_missing),
    Bug("default flood", "tenure_months", "default_value_flood",
        "0 in 40% of requests (a lookup timing out)", tenure_defaults_to_zero),
)  # fmt: skip


def live_row(rng: np.random.Generator, bugs: Sequence[Bug]) -> Row:
    """One request row of the live demo with these bugs in it (no model output)."""
    row = _row(rng)
    del row["churn_score"]  # the model computes it
    for bug in bugs:
        bug.mutate(row, rng)
    return row


def serving_rows(n: int = 2000, seed: int = 11) -> Iterator[Row]:
    """Requests as a buggy serving path sends them (see INJECTED_SKEW)."""
    rng = np.random.default_rng(seed)
    bugs = (
        in_cents,
        local_time,
        larger_vocabulary,
        crypto_payments,
        age_as_string,
        support_calls_missing,
    )
    for _ in range(n):
        row = _row(rng)
        for bug in bugs:
            bug(row, rng)
        del row["churn_score"]  # the model computes it
        yield row
