"""False-alarm rate of the drift verdict on undrifted samples, and its power on real shifts.

For each training size and window size, draws many (baseline, window) pairs from one
distribution and counts how often the fixed PSI > 0.1 rule and the verdict fire;
then the same with a 0.5-std mean shift. Prints one table.

    python bench/false_alarms.py [--trials 300]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from sidecar.engine import Engine
from sidecar.profile import profile_records
from sidecar.report import DriftRule, build_report


def one_trial(
    seed: int, n_train: int, n_window: int, shift: float, kind: str
) -> tuple[float, bool]:
    rng = np.random.default_rng(seed)
    if kind == "numeric":
        train: list[Any] = rng.lognormal(0, 0.5, n_train).tolist()
        serve: list[Any] = (rng.lognormal(0, 0.5, n_window) + shift * 0.5).tolist()
    else:
        p = np.arange(12, 0, -1, dtype=float)
        p /= p.sum()
        q = np.roll(p, 1) * shift + p * (1 - shift)
        train = rng.choice(12, n_train, p=p).astype(str).tolist()
        serve = rng.choice(12, n_window, p=q).astype(str).tolist()
    baseline = profile_records([{"x": v} for v in train])
    engine = Engine(baseline)
    engine.check([{"x": v} for v in serve])
    report = build_report(engine.close_window(), baseline, DriftRule())
    feature = report.features["x"]
    return feature.psi or 0.0, bool(feature.drifted)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    rule = DriftRule()
    print(
        f"verdict rule: G-test p < {rule.alpha} and PSI >= {rule.psi_floor}; "
        f"{args.trials} trials per row"
    )
    print(
        f"{'kind':<12} {'train':>7} {'window':>7} {'shift':>6} "
        f"{'PSI>0.1':>8} {'verdict':>8} {'median PSI':>11}"
    )
    for kind, shift in (
        ("numeric", 0.0),
        ("numeric", 0.5),
        ("categorical", 0.0),
        ("categorical", 1.0),
    ):
        for n_train in (265, 5_000, 100_000):
            for n_window in (100, 1_000, 10_000):
                results = [one_trial(s, n_train, n_window, shift, kind) for s in range(args.trials)]
                psis = np.array([r[0] for r in results])
                verdicts = np.array([r[1] for r in results])
                print(
                    f"{kind:<12} {n_train:>7} {n_window:>7} {shift:>6} "
                    f"{(psis > 0.1).mean():>8.1%} {verdicts.mean():>8.1%} "
                    f"{np.median(psis):>11.4f}"
                )


if __name__ == "__main__":
    main()
