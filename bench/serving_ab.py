"""The tap's cost on one server process, against the no-op middleware in the same process.

bench/serving_load.py compares variants that each run in their own server process, and
server processes of the same code differ by a few percent of CPU per request for their
whole life (memory layout, hash seed): 12 rounds of fresh processes still leave a 95 %
interval about 4 points wide, too wide to tell 0.99x from 0.97x.

Here each server process holds two copies of the app, one behind the no-op middleware
(A) and one behind the variant (B), and an outer dispatcher sends every request to A or
B, switching every `--phase` seconds: A, B, A, B, ... under one continuous wrk run. Each
phase records its requests, wall time and CPU (the event-loop thread, and the rest of
the process: the monitor's worker) from `--skip` seconds after its start, so work left
over from the previous phase (the worker wakes at least once a second) is not counted
in it. Each B phase is compared with the mean of the A phases on either side (linear
drift cancels), and the report shows the median of those ratios with a 95 % interval,
over every pair of every process. Several processes (`--processes`) sample the layout
effect; the per-process medians show how much it moves the marginal cost.

With `--variants noop` (the default list includes it) B is a second copy of the no-op
middleware: an A/A control whose ratio must come out 1.000, or the method is biased.

    python bench/serving_ab.py [--variants noop,skew-0.1,skew-1.0] [--processes 3]
                               [--duration 60] [--phase 2] [--skip 1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import serving_load as sl
from starlette.types import ASGIApp, Receive, Scope, Send

VARIANT_ENV = "SERVING_AB_VARIANT"
OUT_ENV = "SERVING_AB_OUT"
PHASE_ENV = "SERVING_AB_PHASE"
SKIP_ENV = "SERVING_AB_SKIP"
IN_PROCESS = (
    "noop", "skew-0.0", "skew-0.1", "skew-1.0", "skew-all", "sink-1.0-apart", "sink-1.0-drain",
    "skew-0.1-tap-only", "skew-0.1-queue-only", "skew-all-tap-only", "skew-0.1-no-pause",
    "sink-0.1-apart", "skew-0.0-pure", "skew-0.1-pure", "sink-0.1-pure-apart",
)  # fmt: skip


# -- the server side (imported by uvicorn in the child process) ---------------------------


class Alternator:
    """Sends each request to apps[0] or apps[1], switching every `phase` seconds, and
    appends one line per phase to `out`: which app, then wall seconds, requests,
    event-loop CPU seconds and process CPU seconds from `skip` seconds into the phase."""

    def __init__(self, apps: tuple[ASGIApp, ASGIApp], phase: float, skip: float, out: str):
        if not 0 <= skip < phase:
            raise ValueError(f"--skip must be in [0, phase), got {skip} with phase {phase}")
        self.apps = apps
        self.phase = phase
        self.skip = skip
        self.out = out
        self.current = 0
        self.requests = 0
        self.started = False
        self.mark: tuple[float, int, float, float] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if not self.started:
            self.started = True
            asyncio.get_running_loop().call_later(self.skip, self._mark)
        self.requests += 1  # both phases pay the same dispatch
        await self.apps[self.current](scope, receive, send)

    def _now(self) -> tuple[float, int, float, float]:
        return time.perf_counter(), self.requests, time.thread_time(), time.process_time()

    def _mark(self) -> None:
        self.mark = self._now()
        asyncio.get_running_loop().call_later(self.phase - self.skip, self._switch)

    def _switch(self) -> None:
        end = self._now()
        if self.mark is not None:
            deltas = [b - a for a, b in zip(self.mark, end, strict=True)]
            with open(self.out, "a") as f:
                f.write(f"{self.current} " + " ".join(f"{d:.9g}" for d in deltas) + "\n")
        self.current = 1 - self.current
        asyncio.get_running_loop().call_later(self.skip, self._mark)


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Completes startup and shutdown: the monitors start on their first sample."""
    while True:
        message = await receive()
        kind = message["type"].replace("lifespan.", "")
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return


def app_factory() -> ASGIApp:
    """uvicorn entry point: A is the no-op middleware, B the variant in the environment."""
    baseline = os.environ.get(sl.BASELINE_ENV, "")
    a = sl.build_app("noop", baseline)
    b = sl.build_app(os.environ[VARIANT_ENV], baseline)
    phase, skip = float(os.environ[PHASE_ENV]), float(os.environ[SKIP_ENV])
    return Alternator((a, b), phase, skip, os.environ[OUT_ENV])


# -- the driver ------------------------------------------------------------------------------


@dataclass
class Phase:
    app: int  # 0: the no-op middleware, 1: the variant
    seconds: float
    requests: int
    loop_cpu: float
    process_cpu: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.process_cpu / self.requests * 1e6

    @property
    def loop_us(self) -> float:
        return self.loop_cpu / self.requests * 1e6

    @property
    def off_loop_us(self) -> float:
        return (self.process_cpu - self.loop_cpu) / self.requests * 1e6


def read_phases(path: str) -> list[Phase]:
    phases = []
    with open(path) as f:
        for line in f:
            app, seconds, requests, loop, process = line.split()
            phases.append(
                Phase(int(app), float(seconds), int(requests), float(loop), float(process))
            )
    return phases


@dataclass
class Pair:
    """One B phase against the mean of the A phases before and after it."""

    rps: float  # B's req/s / A's
    cpu: float  # B's process CPU per request / A's
    loop: float  # B's event-loop CPU per request / A's
    off_loop_us: float  # B's CPU per request off the loop (the worker)
    a_cpu_us: float


def pairs(phases: list[Phase], warmup: int) -> list[Pair]:
    """Every B phase with A phases on both sides, none of them among the first `warmup`."""
    out = []
    for i in range(max(1, warmup + 1), len(phases) - 1):
        before, b, after = phases[i - 1], phases[i], phases[i + 1]
        if b.app != 1 or before.app != 0 or after.app != 0:
            continue
        if min(p.requests for p in (before, b, after)) == 0:
            continue
        a_rps = (before.rps + after.rps) / 2
        a_cpu = (before.cpu_us + after.cpu_us) / 2
        a_loop = (before.loop_us + after.loop_us) / 2
        out.append(Pair(b.rps / a_rps, b.cpu_us / a_cpu, b.loop_us / a_loop, b.off_loop_us, a_cpu))
    return out


def measure(
    variant: str, args: argparse.Namespace, baseline: str, lua: str, body: bytes, tmp: str, n: int
) -> list[Pair]:
    out = os.path.join(tmp, f"{variant}-{n}.phases")
    env = {
        VARIANT_ENV: variant,
        OUT_ENV: out,
        PHASE_ENV: str(args.phase),
        SKIP_ENV: str(args.skip),
    }
    server = sl.start_server(variant, baseline, tmp, "serving_ab:app_factory", env)
    try:
        sl.wait_ready(server, body)
        # The phases start with the first request (wait_ready's): the warm-up is cut below.
        started = time.monotonic()
        command = sl.wrk_command(server.port, args.warmup + args.duration, args.connections, lua)
        subprocess.run(command, capture_output=True, check=True)
        sl.check_sidecar_alive(server)
        # Seconds from the first phase's start to the end of the warm-up.
        warmup = args.warmup + (time.monotonic() - started - args.warmup - args.duration)
    finally:
        sl.stop_servers([server])
    return pairs(read_phases(out), math.ceil(max(0.0, warmup) / args.phase))


def summary(values: list[float]) -> str:
    """The median, and its 95 % interval when there are enough values."""
    interval = sl.interval(values)
    return f"{statistics.median(values):.3f}" + (f" ({interval})" if interval else "")


def add_arguments(
    parser: argparse.ArgumentParser, processes: int, duration: float, phase: float, skip: float
) -> None:
    """The options both A/B benches take (this one, and bench/latency_ab.py)."""
    parser.add_argument("--variants", default="noop,skew-0.1,skew-1.0")
    parser.add_argument(
        "--processes", type=int, default=processes, help="server processes per variant"
    )
    parser.add_argument("--duration", type=float, default=duration, help="measured seconds each")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds not measured")
    parser.add_argument("--phase", type=float, default=phase, help="seconds per phase")
    parser.add_argument("--skip", type=float, default=skip, help="seconds not counted per phase")
    parser.add_argument("--connections", type=int, default=32)


def checked_variants(args: argparse.Namespace) -> list[str]:
    """The variants asked for; exits with the reason when the run cannot be made."""
    variants: list[str] = args.variants.split(",")
    unknown = set(variants) - set(IN_PROCESS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; expected some of {IN_PROCESS}")
    if not 0 <= args.skip < args.phase:
        sys.exit(f"--skip must be in [0, phase), got {args.skip} with --phase {args.phase}")
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH. Install it with: apt-get update && apt-get install -y wrk")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 cores: the server on core 0, the load generator on core 1")
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(parser, processes=3, duration=60.0, phase=2.0, skip=1.0)
    args = parser.parse_args()
    variants = checked_variants(args)
    os.sched_setaffinity(0, {1})
    body = sl.request_body()
    results: dict[str, list[list[Pair]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="serving-ab-") as tmp:
        baseline = os.path.join(tmp, "baseline.json")
        sl.write_baseline(baseline)
        lua = os.path.join(tmp, "post.lua")
        sl.write_lua(lua, body)
        for n in range(args.processes):
            for variant in sl.rotated(variants, n):
                got = measure(variant, args, baseline, lua, body, tmp, n)
                results[variant].append(got)
                median = statistics.median(p.rps for p in got) if got else math.nan
                sl.progress(
                    f"process {n + 1}/{args.processes} {variant:<15} {len(got)} pairs, "
                    f"req/s ratio median {median:.3f}"
                )
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[list[Pair]]]) -> None:
    http, loop = sl.server_stack()
    print(f"$ python bench/serving_ab.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"one uvicorn process per variant and run ({http}, {loop}), core 0; wrk -t1 "
        f"-c{args.connections} on core 1; A (no-op middleware) and B (the variant) "
        f"alternate every {args.phase:g} s, the first {args.skip:g} s of each phase not "
        f"counted; {args.processes} processes x {args.duration:g} s per variant"
    )
    print(sl.source_state())
    print()
    header = [
        "B", "pairs", "req/s B/A (95 % interval)", "CPU/req B/A", "loop CPU/req B/A",
        "off-loop µs/req", "A CPU µs/req", "per-process req/s B/A",
    ]  # fmt: skip
    rows = []
    for variant, runs in results.items():
        every = [p for run in runs for p in run]
        if not every:
            rows.append([variant, "0", *[""] * (len(header) - 2)])
            continue
        per_process = " ".join(
            f"{statistics.median(p.rps for p in run):.3f}" for run in runs if run
        )
        rows.append(
            [
                variant,
                str(len(every)),
                summary([p.rps for p in every]),
                summary([p.cpu for p in every]),
                summary([p.loop for p in every]),
                f"{statistics.median(p.off_loop_us for p in every):.2f}",
                f"{statistics.median(p.a_cpu_us for p in every):.1f}",
                per_process,
            ]
        )
    print(sl.table(header, rows))
    print()
    goals = (
        ("skew-0.1", 0.99), ("skew-1.0", 0.95), ("sink-1.0-apart", 0.97), ("sink-1.0-drain", 0.97),
        ("sink-0.1-apart", 0.99),
    )  # fmt: skip
    for variant, target in goals:
        if results.get(variant):
            values = [p.rps for run in results[variant] for p in run]
            print(sl.goal(f"{variant} req/s vs noop (same process)", values, target, True))


if __name__ == "__main__":
    main()
