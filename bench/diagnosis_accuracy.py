"""How often the diagnosis names the right bug, and how often it names one that is not there.

For each case of tests/diagnosis_cases.py (one known bug in one feature) and for clean
streams, draws many (training set, serving window) pairs and records the top diagnosis
of every feature. Prints the hit rate per case, the confusion (wrong names for the
broken feature) and the false-diagnosis rate on the features no bug touched, split into
named fingerprints and plain `distribution_shift` (which follows the drift verdict, so
it inherits the verdict's own false-alarm rate).

    python -m bench.diagnosis_accuracy [--seeds 100] [--rows 300] [--train 2000]
"""

from __future__ import annotations

import argparse
from collections import Counter

from tests.diagnosis_cases import CASES, CLEAN, baseline, run, top_kinds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--baselines", type=int, default=5, help="training sets, reused")
    args = parser.parse_args()
    bases = [baseline(args.train, seed) for seed in range(args.baselines)]
    print(
        f"{args.seeds} serving windows of {args.rows} rows per case, "
        f"{args.baselines} training sets of {args.train} rows"
    )
    print(f"{'case':<38} {'expected':<20} {'hit':>6}  {'wrong names (count)':<30} {'false':>9}")
    clean_checks = clean_false = clean_shift = 0
    for case in [CLEAN, *CASES]:
        hits = 0
        wrong: Counter[str] = Counter()
        checks = false = 0
        for seed in range(args.seeds):
            kinds = top_kinds(run(case, bases[seed % len(bases)], args.rows, 1000 + seed))
            if case.feature:
                got = kinds.pop(case.feature)
                hits += got == case.kind
                if got != case.kind:
                    wrong[got or "(none)"] += 1
            checks += len(kinds)
            false += sum(1 for k in kinds.values() if k)
            clean_shift += sum(1 for k in kinds.values() if k == "distribution_shift")
        clean_checks += checks
        clean_false += false
        hit = f"{hits / args.seeds:.0%}" if case.feature else "-"
        names = ", ".join(f"{k} {n}" for k, n in wrong.most_common(3)) or "-"
        print(
            f"{case.name:<38} {case.kind or '(none)':<20} {hit:>6}  {names:<30} "
            f"{false:>3}/{checks:<5}"
        )
    named = clean_false - clean_shift
    print(
        f"false diagnoses on untouched features: {clean_false}/{clean_checks} "
        f"= {clean_false / clean_checks:.3%} ({named} named fingerprints = "
        f"{named / clean_checks:.3%}, {clean_shift} distribution_shift from drift verdicts)"
    )


if __name__ == "__main__":
    main()
