"""Latency at a fixed offered load: the tap against the no-op middleware in one process.

bench/serving_load.py measures p99 at a fixed load with each variant in its own server
process and rounds run one after the other. On a shared machine the no-op's own p99
moves by several times between rounds (other jobs come and go), so a ratio of two
rounds' p99 says little about a 10 % goal.

Here each server process holds two copies of the app, one behind the no-op middleware
(A) and one behind the variant (B), and the open-loop generator (wrk2's model, as in
serving_load.py) picks the copy: every `--phase` seconds of its schedule it switches
between A and B, naming the copy in the request's first header (`X-Ab: a` or `b`,
the same length, so both cost the server the same to parse). The offered load is half
the no-op's capacity (measured first, with wrk) unless `--rate` says otherwise. Each
request's latency is filed under the phase it was scheduled in, from `--skip` seconds
after the phase's start, so work the variant left behind (its worker checks queued
samples up to a second later) falls in the next phase's skipped part, not in A. Each B
phase's p50 and p99 are compared with the mean of the A phases on either side; the
report shows the median of those ratios with a 95 % interval over every pair of every
process, and the p99 of all A and all B latencies pooled.

With `--variants noop` B is a second copy of the no-op middleware: an A/A control whose
ratios must come out 1.00, or the method is biased.

    python bench/latency_ab.py [--variants noop,skew-0.1,skew-1.0] [--rate R]
                               [--processes 2] [--duration 120] [--warmup 4] [--phase 4]
                               [--skip 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import serving_ab as ab
import serving_load as sl
from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = b"x-ab"


class HeaderSwitch:
    """Sends each request to apps[0] or apps[1] by its first header (`x-ab: a` or `b`);
    a request without it goes to apps[0]."""

    def __init__(self, apps: tuple[ASGIApp, ASGIApp]) -> None:
        self.a, self.b = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await ab.answer_lifespan(receive, send)
            return
        headers = scope.get("headers")
        first = headers[0] if headers else None
        if first is not None and first[0] == HEADER and first[1] == b"b":
            await self.b(scope, receive, send)
        else:
            await self.a(scope, receive, send)


def app_factory() -> ASGIApp:
    """uvicorn entry point: A is the no-op middleware, B the variant in the environment."""
    baseline = os.environ.get(sl.BASELINE_ENV, "")
    return HeaderSwitch(
        (sl.build_app("noop", baseline), sl.build_app(os.environ[ab.VARIANT_ENV], baseline))
    )


# -- the driver ------------------------------------------------------------------------------


@dataclass
class PhaseLatency:
    app: int  # 0: the no-op middleware, 1: the variant
    latencies: list[float]  # seconds, sorted

    def quantile(self, q: float) -> float:
        xs = self.latencies
        return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else math.nan


@dataclass
class Pair:
    """One B phase against the mean of the A phases before and after it."""

    p50: float  # B's p50 / A's
    p99: float  # B's p99 / A's
    a_p99_ms: float
    b: list[float]  # the latencies, for the pooled quantiles
    a: list[float]


def phases(run: sl.Schedule, phase: float, skip: float) -> list[PhaseLatency]:
    """The run's latencies filed by the phase their request was scheduled in, without
    the first `skip` seconds of each phase."""
    count = math.ceil((run.end - run.start) / phase)
    filed: list[list[float]] = [[] for _ in range(count)]
    for scheduled, latency in zip(run.scheduled, run.latencies, strict=True):
        at = scheduled - run.start
        k = min(count - 1, int(at // phase))
        if at - k * phase >= skip:
            filed[k].append(latency)
    return [PhaseLatency(k % 2, sorted(xs)) for k, xs in enumerate(filed)]


def pairs(filed: list[PhaseLatency], first: int, minimum: int) -> list[Pair]:
    """Every B phase with A phases on both sides, from phase `first` on, each with at
    least `minimum` latencies (a p99 needs a few hundred)."""
    out = []
    for i in range(max(1, first + 1), len(filed) - 1):
        before, b, after = filed[i - 1], filed[i], filed[i + 1]
        if b.app != 1 or min(len(p.latencies) for p in (before, b, after)) < minimum:
            continue
        a_p50 = (before.quantile(0.5) + after.quantile(0.5)) / 2
        a_p99 = (before.quantile(0.99) + after.quantile(0.99)) / 2
        out.append(
            Pair(
                b.quantile(0.5) / a_p50,
                b.quantile(0.99) / a_p99,
                a_p99 * 1e3,
                b.latencies,
                before.latencies,  # each A phase once: the one before
            )
        )
    return out


def request_for(port: int, body: bytes, phase: float) -> sl.RequestFor:
    """The request to send at a time in the schedule: A's in even phases, B's in odd."""

    def request(copy: bytes) -> bytes:
        return (
            f"POST /predict HTTP/1.1\r\nX-Ab: {copy.decode()}\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    a, b = request(b"a"), request(b"b")
    return lambda at: b if int(at // phase) % 2 else a


def capacity(baseline: str, body: bytes, tmp: str, connections: int) -> float:
    """The no-op's req/s, closed loop (wrk, 10 s after 3 s of warm-up)."""
    lua = os.path.join(tmp, "post.lua")
    sl.write_lua(lua, body)
    server = sl.start_server(
        "noop", baseline, tmp, "latency_ab:app_factory", {ab.VARIANT_ENV: "noop"}
    )
    try:
        sl.wait_ready(server, body)
        for duration in (3.0, 10.0):
            command = sl.wrk_command(server.port, duration, connections, lua)
            done = subprocess.run(command, capture_output=True, check=True, text=True)
    finally:
        sl.stop_servers([server])
    return sl.parse_wrk(done.stdout).rps


def measure(
    variant: str, args: argparse.Namespace, baseline: str, body: bytes, tmp: str
) -> tuple[list[Pair], sl.Schedule]:
    env = {ab.VARIANT_ENV: variant}
    server = sl.start_server(variant, baseline, tmp, "latency_ab:app_factory", env)
    try:
        sl.wait_ready(server, body)
        for p in server.pids:
            sl.wait_idle(p)
        run = asyncio.run(
            sl.on_schedule(
                server.port,
                request_for(server.port, body, args.phase),
                args.rate,
                args.warmup + args.duration,
                args.connections,
                0.0,
            )
        )
        sl.check_sidecar_alive(server)
    finally:
        sl.stop_servers([server])
    first = math.ceil(args.warmup / args.phase)
    minimum = max(100, int(args.rate * (args.phase - args.skip) / 4))
    return pairs(phases(run, args.phase, args.skip), first, minimum), run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ab.add_arguments(parser, processes=2, duration=120.0, phase=4.0, skip=1.5)
    parser.add_argument("--rate", type=float, help="offered req/s (default: half the no-op's)")
    args = parser.parse_args()
    variants = ab.checked_variants(args)  # wrk measures the no-op's capacity
    os.sched_setaffinity(0, {1})
    body = sl.request_body()
    results: dict[str, list[list[Pair]]] = {v: [] for v in variants}
    lags: list[float] = []
    missing = 0
    with tempfile.TemporaryDirectory(prefix="latency-ab-") as tmp:
        baseline = os.path.join(tmp, "baseline.json")
        sl.write_baseline(baseline)
        if args.rate is None:
            measured = capacity(baseline, body, tmp, args.connections)
            args.rate = round(measured / 2, -1)
            sl.progress(f"the no-op's capacity {measured:.0f} req/s: offering {args.rate:g}")
        for n in range(args.processes):
            for variant in sl.rotated(variants, n):
                got, run = measure(variant, args, baseline, body, tmp)
                results[variant].append(got)
                lags.append(run.lag_p99_ms)
                missing += run.missing
                p99 = statistics.median(p.p99 for p in got) if got else math.nan
                sl.progress(
                    f"process {n + 1}/{args.processes} {variant:<15} {len(got)} pairs, "
                    f"p99 ratio median {p99:.3f}, A's p99 "
                    f"{statistics.median(p.a_p99_ms for p in got) if got else math.nan:.2f} ms"
                )
    report(args, results, max(lags), missing)


def report(
    args: argparse.Namespace, results: dict[str, list[list[Pair]]], lag_ms: float, missing: int
) -> None:
    http, loop = sl.server_stack()
    print(f"$ python bench/latency_ab.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"one uvicorn process per variant and run ({http}, {loop}), core 0; open loop "
        f"{args.rate:g} req/s over {args.connections} connections on core 1; A (no-op "
        f"middleware) and B (the variant) alternate every {args.phase:g} s of the "
        f"schedule, the first {args.skip:g} s of each phase not counted; "
        f"{args.processes} processes x {args.duration:g} s per variant; the generator's "
        f"own lateness (p99 at most {lag_ms:.2f} ms) is subtracted; {missing} requests "
        f"scheduled and not completed"
    )
    print(sl.source_state())
    print()
    header = [
        "B", "pairs", "p99 B/A (95 % interval)", "p50 B/A", "pooled p99 A, B ms",
        "pooled p99 B/A", "per-process p99 B/A",
    ]  # fmt: skip
    rows = []
    for variant, runs in results.items():
        every = [p for run in runs for p in run]
        if not every:
            rows.append([variant, "0", *[""] * (len(header) - 2)])
            continue
        pooled_a = sorted(x for p in every for x in p.a)
        pooled_b = sorted(x for p in every for x in p.b)
        a99, b99 = (xs[int(len(xs) * 0.99)] * 1e3 for xs in (pooled_a, pooled_b))
        per_process = " ".join(
            f"{statistics.median(p.p99 for p in run):.3f}" for run in runs if run
        )
        rows.append(
            [
                variant,
                str(len(every)),
                ab.summary([p.p99 for p in every]),
                ab.summary([p.p50 for p in every]),
                f"{a99:.2f}, {b99:.2f}",
                f"{b99 / a99:.3f}",
                per_process,
            ]
        )
    print(sl.table(header, rows))
    print()
    for variant in ("noop", "skew-0.1", "skew-1.0", "sink-0.1-apart", "sink-1.0-apart"):
        if results.get(variant):
            values = [p.p99 for run in results[variant] for p in run]
            print(sl.goal(f"{variant} p99 vs noop (same process)", values, 1.10, False))


if __name__ == "__main__":
    main()
