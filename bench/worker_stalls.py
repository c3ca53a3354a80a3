"""How long the in-process worker keeps the event loop waiting (the GIL), side by side.

One process per run, pinned to one core (the serving core's situation; `--cores 0,1`
lets the worker thread run beside the loop, as in a server not pinned): an asyncio loop
spins (`await asyncio.sleep(0)`, like a loop with requests always ready) and submits
serving_load.py's request and response as samples at a fixed rate; the worker thread
checks them. Every gap between two loop iterations longer than 100 µs is a stall:
time the loop could not run because the worker (or the GC, or the OS) had the core.
Runs alternate between "none" (no samples: the floor) and the monitor; the table shows
medians over rounds.

    python bench/worker_stalls.py [--rate 870] [--seconds 6] [--rounds 3] [--other DIR]
                                  [--cores 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = "--child"
THRESHOLDS_US = (100, 300, 600, 1000)


def child(rate: float, seconds: float, baseline_path: str) -> None:
    import serving_load
    from prometheus_client import CollectorRegistry

    from sidecar import Baseline
    from sidecar.worker import Monitor, Sample

    monitor = Monitor(Baseline.load(baseline_path), registry=CollectorRegistry())
    request = serving_load.request_body()
    response = b'{"predictions":[0.540353]}'
    headers = ((b"content-type", b"application/json"), (b"content-length", b"700"))
    if rate > 0:
        monitor.start()

    async def spin() -> list[float]:
        gaps: list[float] = []
        clock = time.perf_counter
        start = previous = next_sample = clock()
        while previous - start < seconds:
            await asyncio.sleep(0)
            now = clock()
            gaps.append(now - previous)
            previous = now
            while rate > 0 and next_sample <= now:
                sample = Sample((request,), (response,), 200, headers, headers)
                monitor.submit(sample, len(request) + len(response))
                next_sample += 1 / rate
        return gaps

    gaps = asyncio.run(spin())
    monitor.stop()
    stalls = [g for g in gaps if g > 1e-4]
    result = {f"over_{t}us": sum(g > t / 1e6 for g in stalls) for t in THRESHOLDS_US}
    result["stalled_ms"] = sum(stalls) * 1e3
    result["longest_ms"] = max(gaps) * 1e3
    result["checked"] = monitor.counts.checked
    print(json.dumps(result))


def run(
    rate: float, seconds: float, baseline_path: str, source: str, cores: str = "0"
) -> dict[str, float]:
    """One child process on `cores`; `source`: the checkout whose sidecar package it
    imports."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, source])}
    command = ["taskset", "-c", cores, sys.executable, __file__, CHILD, str(rate), str(seconds)]
    out = subprocess.run(
        [*command, baseline_path], env=env, check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=870.0, help="samples per second")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--other", help="another checkout of the repository, run side by side (before/after)"
    )
    parser.add_argument("--cores", default="0", help="the cores the process may run on")
    parser.add_argument(CHILD, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(float(args.child[0]), float(args.child[1]), args.child[2])
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import serving_load

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "baseline.json")
        serving_load.write_baseline(path)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sources = {"monitor": repo}
        if args.other:
            sources[f"monitor ({args.other})"] = os.path.abspath(args.other)
        results: dict[str, list[dict[str, float]]] = {"none": []}
        for _ in range(args.rounds):
            results["none"].append(run(0.0, args.seconds, path, repo, args.cores))
            for name, source in sources.items():
                results.setdefault(name, []).append(
                    run(args.rate, args.seconds, path, source, args.cores)
                )
    print(
        f"event-loop stalls in {args.seconds:g} s, worker checking {args.rate:g} samples/s "
        f"on cores {args.cores}; medians of {args.rounds} rounds"
    )
    keys = [f"over_{t}us" for t in THRESHOLDS_US] + ["stalled_ms", "longest_ms"]
    print("| run | " + " | ".join(k.replace("_", " ") for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, rounds in results.items():
        cells = [statistics.median(r[k] for r in rounds) for k in keys]
        print(f"| {name} | " + " | ".join(f"{c:,.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
