"""The tap's cost on one server process, against the no-op middleware in the same process.

bench/serving_load.py compares variants that each run in their own server process, and
server processes of the same code differ by a few percent of CPU per request for their
whole life (memory layout, hash seed): 12 rounds of fresh processes still leave a 95 %
interval about 4 points wide, too wide to tell 0.99x from 0.97x.

Here each server process holds two copies of the app, one behind the no-op middleware
(A) and one behind the variant (B), and an outer dispatcher sends every request to A or
B, switching every `--phase` seconds: A, B, A, B, ... under one continuous wrk run. Each
phase records its requests, wall time, CPU (the event-loop thread, and the rest of
the process: the monitor's worker) and the process's context switches (a thread that
wakes shows there) from `--skip` seconds after its start, so work left
over from the previous phase (the worker wakes at least once a second) is not counted
in it. Each B phase is compared with the mean of the A phases on either side (linear
drift cancels), and the report shows the median of those ratios with a 95 % interval,
over every pair of every process. Several processes (`--processes`) sample the layout
effect; the per-process medians show how much it moves the marginal cost.

With `--variants noop` (the default list includes it) B is a second copy of the no-op
middleware: an A/A control whose ratio must come out 1.000, or the method is biased.

With `--perf`, each server runs under `perf record` (the cpu-clock event, which needs no
hardware counters) and the report adds, per variant, where B's CPU per request differs
from A's: µs per request by thread (the event loop or another), library and function,
from the samples in the counted part of each phase. On a virtual machine the kernel's
share moves by a couple of µs per request between phases (A/A included), but the
user-space rows are steady: that is how a numpy call per sample on the loop was found.

    python bench/serving_ab.py [--variants noop,skew-0.1,skew-1.0] [--processes 3]
                               [--duration 60] [--phase 2] [--skip 1] [--perf]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import serving_load as sl
from starlette.types import ASGIApp, Receive, Scope, Send

VARIANT_ENV = "SERVING_AB_VARIANT"
OUT_ENV = "SERVING_AB_OUT"
PHASE_ENV = "SERVING_AB_PHASE"
SKIP_ENV = "SERVING_AB_SKIP"
IN_PROCESS = (
    "noop", "skew-0.0", "skew-0.1", "skew-1.0", "skew-all", "sink-1.0-apart", "sink-1.0-drain",
    "skew-0.1-tap-only", "skew-0.1-queue-only", "skew-all-tap-only", "skew-0.1-no-pause",
    "noop-wakes300", "noop-wakes1000",
    "sink-0.1-apart", "skew-0.0-pure", "skew-0.1-pure", "sink-0.1-pure-apart",
)  # fmt: skip


# -- the server side (imported by uvicorn in the child process) ---------------------------


class Alternator:
    """Sends each request to apps[0] or apps[1], switching every `phase` seconds, and
    appends one line per phase to `out`: which app, then wall seconds, requests,
    event-loop CPU seconds, process CPU seconds and the process's context switches from
    `skip` seconds into the phase, then the counted part's bounds."""

    def __init__(
        self,
        apps: tuple[ASGIApp, ASGIApp],
        phase: float,
        skip: float,
        out: str,
        b_phase: threading.Event | None = None,
    ):
        if not 0 <= skip < phase:
            raise ValueError(f"--skip must be in [0, phase), got {skip} with phase {phase}")
        self.apps = apps
        self.phase = phase
        self.skip = skip
        self.out = out
        self.b_phase = b_phase  # set while B serves, clear while A does
        if b_phase is not None:
            b_phase.clear()
        self.current = 0
        self.requests = 0
        self.started = False
        self.mark: tuple[float, int, float, float, int] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if not self.started:
            self.started = True
            asyncio.get_running_loop().call_later(self.skip, self._mark)
        self.requests += 1  # both phases pay the same dispatch
        await self.apps[self.current](scope, receive, send)

    def _now(self) -> tuple[float, int, float, float, int]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        switches = usage.ru_nvcsw + usage.ru_nivcsw
        return time.monotonic(), self.requests, time.thread_time(), time.process_time(), switches

    def _mark(self) -> None:
        self.mark = self._now()
        asyncio.get_running_loop().call_later(self.phase - self.skip, self._switch)

    def _switch(self) -> None:
        end = self._now()
        if self.mark is not None:
            deltas = [b - a for a, b in zip(self.mark, end, strict=True)]
            bounds = f" {self.mark[0]:.6f} {end[0]:.6f}"  # on perf's clock: CLOCK_MONOTONIC
            with open(self.out, "a") as f:
                f.write(f"{self.current} " + " ".join(f"{d:.9g}" for d in deltas) + bounds + "\n")
        self.current = 1 - self.current
        if self.b_phase is not None:
            (self.b_phase.set if self.current else self.b_phase.clear)()
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
    # The waking variants' thread wakes in B's phases only, so A does not pay for it.
    return Alternator((a, b), phase, skip, os.environ[OUT_ENV], b_phase=sl.WAKING)


# -- the driver ------------------------------------------------------------------------------


@dataclass
class Phase:
    app: int  # 0: the no-op middleware, 1: the variant
    seconds: float
    requests: int
    loop_cpu: float
    process_cpu: float
    switches: int = 0  # the process's context switches, voluntary and involuntary
    start: float = math.nan  # the counted part's bounds, time.monotonic()
    end: float = math.nan

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

    @property
    def switches_per_k(self) -> float:
        return self.switches / self.requests * 1000


def read_phases(path: str) -> list[Phase]:
    phases = []
    with open(path) as f:
        for line in f:
            app, seconds, requests, loop, process, switches, *bounds = line.split()
            phases.append(
                Phase(
                    int(app),
                    float(seconds),
                    int(requests),
                    float(loop),
                    float(process),
                    int(switches),
                    *map(float, bounds),
                )
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
    a_switches: float  # context switches per 1,000 requests, A's mean and B's
    b_switches: float


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
        a_switches = (before.switches_per_k + after.switches_per_k) / 2
        out.append(
            Pair(
                b.rps / a_rps,
                b.cpu_us / a_cpu,
                b.loop_us / a_loop,
                b.off_loop_us,
                a_cpu,
                a_switches,
                b.switches_per_k,
            )
        )
    return out


PERF_HZ = 4999  # perf record's sampling frequency
PerfKey = tuple[str, str, str]  # thread ("loop" or "other"), library, function
# perf script -F tid,time,ip,sym,dso: "  1234 5678.901234:  7f00ab12 func (/path/lib.so)"
PERF_LINE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


@dataclass
class Profile:
    """perf samples in the counted part of A's and B's phases, and their requests."""

    samples: dict[int, Counter[PerfKey]] = field(
        default_factory=lambda: {0: Counter(), 1: Counter()}
    )
    requests: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})

    def add(self, other: Profile) -> None:
        for app in (0, 1):
            self.samples[app].update(other.samples[app])
            self.requests[app] += other.requests[app]

    def per_request(self, app: int) -> dict[PerfKey, float]:
        """µs of CPU per request by key."""
        requests = self.requests[app]
        return {k: n / PERF_HZ * 1e6 / requests for k, n in self.samples[app].items()}


def attribute(lines: Iterable[str], phases: list[Phase], loop_tid: int, warmup: int) -> Profile:
    """perf script's samples, filed under the phase whose counted part holds them (the
    phases after the first `warmup`); the event loop is the thread whose id is the
    process's."""
    profile = Profile()
    counted = [p for p in phases[warmup:] if not math.isnan(p.start)]
    starts = [p.start for p in counted]
    for line in lines:
        match = PERF_LINE.match(line)
        if match is None:
            continue
        at = float(match.group(2))
        i = bisect.bisect_right(starts, at) - 1
        if i < 0 or at >= counted[i].end:
            continue
        thread = "loop" if int(match.group(1)) == loop_tid else "other"
        key = (thread, os.path.basename(match.group(4)), match.group(3))
        profile.samples[counted[i].app][key] += 1
    for p in counted:
        profile.requests[p.app] += p.requests
    return profile


def perf_record(pid: int, path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["perf", "record", "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock", "-F", str(PERF_HZ),
         "-o", path, "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def perf_profile(path: str, phases: list[Phase], loop_tid: int, warmup: int) -> Profile:
    if not os.path.exists(path):  # perf record exited at once: its output went to DEVNULL
        raise RuntimeError(
            f"perf record wrote no {path}: is perf allowed to profile this process? "
            "(kernel.perf_event_paranoid at most 1, or run as root)"
        )
    script = subprocess.run(
        ["perf", "script", "-i", path, "-F", "tid,time,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return attribute(script.splitlines(), phases, loop_tid, warmup)


def measure(
    variant: str, args: argparse.Namespace, baseline: str, lua: str, body: bytes, tmp: str, n: int
) -> tuple[list[Pair], Profile | None]:
    out = os.path.join(tmp, f"{variant}-{n}.phases")
    env = {
        VARIANT_ENV: variant,
        OUT_ENV: out,
        PHASE_ENV: str(args.phase),
        SKIP_ENV: str(args.skip),
    }
    server = sl.start_server(variant, baseline, tmp, "serving_ab:app_factory", env)
    perf_data = os.path.join(tmp, f"{variant}-{n}.perf")
    recorder = None
    try:
        sl.wait_ready(server, body)
        # The phases start with the first request (wait_ready's): the warm-up is cut below.
        started = time.monotonic()
        if args.perf:
            recorder = perf_record(server.process.pid, perf_data)
        command = sl.wrk_command(server.port, args.warmup + args.duration, args.connections, lua)
        subprocess.run(command, capture_output=True, check=True)
        sl.check_sidecar_alive(server)
        # Seconds from the first phase's start to the end of the warm-up.
        warmup = args.warmup + (time.monotonic() - started - args.warmup - args.duration)
    finally:
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
        sl.stop_servers([server])
    phases = read_phases(out)
    skipped = math.ceil(max(0.0, warmup) / args.phase)
    profile = None
    if recorder is not None:
        profile = perf_profile(perf_data, phases, server.process.pid, skipped)
        os.remove(perf_data)
    return pairs(phases, skipped), profile


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
    parser.add_argument(
        "--perf", action="store_true",
        help="record each server with perf and show where B's CPU per request differs",
    )  # fmt: skip
    args = parser.parse_args()
    variants = checked_variants(args)
    if args.perf and shutil.which("perf") is None:
        sys.exit("perf is not on PATH. Install it with: apt-get install -y linux-perf")
    os.sched_setaffinity(0, {1})
    body = sl.request_body()
    results: dict[str, list[list[Pair]]] = {v: [] for v in variants}
    profiles = {v: Profile() for v in variants}
    with tempfile.TemporaryDirectory(prefix="serving-ab-") as tmp:
        baseline = os.path.join(tmp, "baseline.json")
        sl.write_baseline(baseline)
        lua = os.path.join(tmp, "post.lua")
        sl.write_lua(lua, body)
        for n in range(args.processes):
            for variant in sl.rotated(variants, n):
                got, profile = measure(variant, args, baseline, lua, body, tmp, n)
                results[variant].append(got)
                if profile is not None:
                    profiles[variant].add(profile)
                median = statistics.median(p.rps for p in got) if got else math.nan
                sl.progress(
                    f"process {n + 1}/{args.processes} {variant:<15} {len(got)} pairs, "
                    f"req/s ratio median {median:.3f}"
                )
    report(args, results)
    if args.perf:
        for variant, profile in profiles.items():
            print()
            print(profile_report(variant, profile))


def profile_report(variant: str, profile: Profile, rows: int = 15) -> str:
    """The functions whose CPU per request differs most between B and A, and the totals
    by thread and library."""
    a, b = profile.per_request(0), profile.per_request(1)
    if not a or not b:
        return f"{variant}: no perf samples in the counted phases"

    def line(key: tuple[str, ...], a_us: float, b_us: float) -> list[str]:
        return [*key, f"{a_us:.3f}", f"{b_us:.3f}", f"{b_us - a_us:+.3f}"]

    def excess(key: PerfKey) -> float:
        return b.get(key, 0.0) - a.get(key, 0.0)

    ordered = sorted(set(a) | set(b), key=excess, reverse=True)
    falls = [k for k in reversed(ordered[rows:]) if excess(k) < 0]  # B's savings, largest first
    shown = ordered[:rows] + falls[: rows // 3]
    by_function = [line(k, a.get(k, 0.0), b.get(k, 0.0)) for k in shown]
    totals: dict[tuple[str, str], list[float]] = {}
    for app, values in ((0, a), (1, b)):
        for (thread, library, _), us in values.items():
            totals.setdefault((thread, library), [0.0, 0.0])[app] += us
    by_library = [
        line(k, *v) for k, v in sorted(totals.items(), key=lambda kv: kv[1][0] - kv[1][1])
    ][:rows]
    header = ["thread", "library", "A µs/req", "B µs/req", "B - A"]
    return "\n".join([
        f"{variant}: perf, CPU per request by function, A (no-op) and B "
        f"({profile.requests[0]:,} and {profile.requests[1]:,} requests counted; the "
        "kernel's rows move by a few µs between phases on a virtual machine)",
        sl.table(["thread", "library", "function", *header[2:]], by_function),
        "",
        f"{variant}: by thread and library",
        sl.table(header, by_library),
    ])  # fmt: skip


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
        "off-loop µs/req", "A CPU µs/req", "switches/1k req A, B", "per-process req/s B/A",
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
                f"{statistics.median(p.a_switches for p in every):.2f}, "
                f"{statistics.median(p.b_switches for p in every):.2f}",
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
