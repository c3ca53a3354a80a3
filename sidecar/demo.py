"""The embedded demo data set: a churn model's training table and a skewed serving stream.

Generated from a fixed seed, so the demo needs no download and is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

CONTRACTS = ["month-to-month", "one_year", "two_year"]
PAYMENTS = ["card", "bank_transfer", "electronic_check", "mailed_check"]
COUNTRIES = [f"C{i:02d}" for i in range(30)]
OSES = ["android", "ios", "web"]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

# What the serving stream gets wrong, as a reader of the report should find it.
INJECTED_SKEW = {
    "monthly_charges": "sent in cents instead of dollars (x100)",
    "signup_time": "sent as naive local time, 5 hours ahead of the UTC used in training",
    "query_tokens": "tokenized with a larger vocabulary (ids up to 30,000)",
    "payment_method": "a new category 'crypto' in 15% of requests",
    "age": "sent as a string in 10% of requests",
    "support_calls": "missing from 30% of requests",
}


def _row(rng: np.random.Generator) -> dict[str, Any]:
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
        "churn_score": round(float(score), 4),
    }


def training_rows(n: int = 5000, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield _row(rng)


def serving_rows(n: int = 2000, seed: int = 11) -> Iterator[dict[str, Any]]:
    """Requests as a buggy serving path sends them (see INJECTED_SKEW)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        row = _row(rng)
        row["monthly_charges"] = round(row["monthly_charges"] * 100)
        local = datetime.fromisoformat(row["signup_time"].replace("Z", "+00:00"))
        row["signup_time"] = (local + timedelta(hours=5)).replace(tzinfo=None).isoformat()
        length = len(row["query_tokens"])
        row["query_tokens"] = np.minimum(rng.zipf(1.3, length) * 4, 29999).astype(int).tolist()
        if rng.random() < 0.15:
            row["payment_method"] = "crypto"
        if rng.random() < 0.10:
            row["age"] = str(row["age"])
        if rng.random() < 0.30:
            del row["support_calls"]
        del row["churn_score"]  # the model computes it
        yield row
