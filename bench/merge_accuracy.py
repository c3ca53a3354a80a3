"""How close merged bin edges are to exact quantiles.

Profiles P partitions of one data set separately, merges the baselines (KLL sketch
merge), and measures each merged decile edge by its rank in the whole data:
|rank(edge) - i/10|. Also the fraction error of each bin. Prints one table.

    python bench/merge_accuracy.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from sidecar.baseline import Baseline
from sidecar.profile import profile_columns

DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.normal(0, 1, n),
    "lognormal": lambda rng, n: rng.lognormal(0, 1, n),
    "uniform": lambda rng, n: rng.uniform(0, 1, n),
    "bimodal": lambda rng, n: np.where(
        rng.random(n) < 0.3, rng.normal(-3, 0.5, n), rng.normal(2, 1, n)
    ),
}


def edge_errors(data: np.ndarray[Any, Any], baseline: Baseline) -> tuple[float, float]:
    stats: Any = baseline.features["x"].stats
    edges = np.array(stats.bins.edges)
    ordered = np.sort(data)
    ranks = np.searchsorted(ordered, edges, side="right") / len(data)
    targets = np.arange(1, len(edges) + 1) / (len(edges) + 1)
    true_fractions = np.diff([0.0, *ranks, 1.0])
    return float(np.abs(ranks - targets).max()), float(
        np.abs(true_fractions - np.array(stats.bins.fractions)).max()
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.rows:,} values, 10 bins, KLL k=400; worst over {args.repeats} repeats")
    print(
        f"{'distribution':<12} {'partitions':>10} {'max |rank err|':>15} {'max |fraction err|':>19}"
    )
    for name, draw in DISTRIBUTIONS.items():
        for parts in (1, 4, 16):
            worst_rank = worst_fraction = 0.0
            for seed in range(args.repeats):
                data = draw(np.random.default_rng(seed), args.rows)
                pieces = [profile_columns({"x": chunk}) for chunk in np.array_split(data, parts)]
                merged = pieces[0].merge(*pieces[1:]) if parts > 1 else pieces[0]
                rank, fraction = edge_errors(data, merged)
                worst_rank, worst_fraction = max(worst_rank, rank), max(worst_fraction, fraction)
            print(f"{name:<12} {parts:>10} {worst_rank:>15.4f} {worst_fraction:>19.4f}")


if __name__ == "__main__":
    main()
