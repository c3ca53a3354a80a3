"""Profile build: rows/s and peak RSS while streaming a generated training file.

Writes a CSV (or JSON lines) training file of the requested size, then runs
`skew-sidecar profile` on it in a child process and reads the child's peak RSS,
so the figure is the profiler's own memory, not the generator's.

    python bench/profile_build.py --size-mb 200            # quick
    python bench/profile_build.py --size-mb 3000 --keep    # multi-GB, bounded memory
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NUMERIC = 12
CATEGORICAL = 4


def write_csv(path: Path, target_bytes: int, seed: int = 0) -> int:
    import numpy as np

    rng = np.random.default_rng(seed)
    header = [f"num_{i}" for i in range(NUMERIC)] + [f"cat_{i}" for i in range(CATEGORICAL)]
    rows = 0
    with open(path, "w") as out:
        out.write(",".join(header) + "\n")
        while out.tell() < target_bytes:
            n = 50_000
            nums = rng.normal(50, 10, size=(n, NUMERIC)).round(4).astype(str)
            cats = np.char.add("v", rng.integers(0, 500, size=(n, CATEGORICAL)).astype(str))
            table = np.concatenate([nums, cats], axis=1)
            out.write("\n".join(",".join(r) for r in table.tolist()) + "\n")
            rows += n
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        print(write_csv(Path(args.generate), args.size_mb * 1_000_000))
        return

    folder = Path(args.dir or tempfile.mkdtemp(prefix="skew-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.csv"
    started = time.monotonic()
    # Generate in a child so this process stays small for the fork of the profiler.
    generator = [sys.executable, __file__, "--size-mb", str(args.size_mb), "--generate", str(train)]
    rows = int(subprocess.run(generator, check=True, capture_output=True, text=True).stdout)
    size = train.stat().st_size
    print(
        f"generated {size / 1e6:,.0f} MB, {rows:,} rows x {NUMERIC + CATEGORICAL} columns "
        f"in {time.monotonic() - started:.0f} s"
    )

    cmd = [
        sys.executable,
        "-m",
        "sidecar",
        "profile",
        str(train),
        "-o",
        str(folder / "baseline.json"),
        "-q",
    ]
    started = time.monotonic()
    child = subprocess.Popen(cmd)
    # wait4 gives this one child's usage (RUSAGE_CHILDREN would include the generator).
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"profile failed with exit status {child.returncode}")
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"{'input MB':>9} {'rows':>12} {'wall s':>7} {'CPU s':>7} {'rows/s':>10} "
        f"{'MB/s':>6} {'peak RSS MB':>12}"
    )
    print(
        f"{size / 1e6:>9,.0f} {rows:>12,} {wall:>7.1f} {cpu:>7.1f} {rows / wall:>10,.0f} "
        f"{size / 1e6 / wall:>6.1f} {usage.ru_maxrss / 1024:>12.0f}"
    )
    if not args.keep:
        train.unlink()
        os.unlink(folder / "baseline.json")


if __name__ == "__main__":
    main()
