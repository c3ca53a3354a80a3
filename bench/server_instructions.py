"""Instructions per request of the whole uvicorn server, for each HTTP stack installed.

bench/tap_overhead.py counts the tap's instructions in-process, without a server; the
share they take of a real request depends on what the server spends around them. This
runs bench/serving_load.py's app (bare, behind the no-op middleware, behind
SkewMiddleware) in uvicorn under `valgrind --tool=callgrind`, sends N and then 3N
requests on one keep-alive connection, and prints (Ir(3N) - Ir(N)) / 2N: the server's
instructions per request, start-up and shutdown cancelled out. For SkewMiddleware that
is the whole process: the tap on the event loop, the monitor's worker thread checking
every sample (requests and responses; the queued ones at shutdown too), and the GIL
hand-overs between them.

Time has to be scaled for the monitor. It does work per second (it wakes at least once
every flush_seconds, the sampler re-estimates its cap once a second) and paces itself in
time (200 µs GIL slices, 1 ms pauses, the interpreter's 5 ms switch interval); under
valgrind a second holds about 25 times less work, so that work would be charged to 25
times fewer requests, and the GIL would change hands 25 times as often. So the runs of
the monitor's variants stretch those constants by the measured slowdown: the server's
CPU per request under valgrind (the no-op's N run) over its CPU per request at full
speed (the no-op served natively, the same client). Left unscaled, and so charged in
full: the sampler's once-a-second estimate. Left out: closing a window (10-13 ms once a
window, a minute by default; see serving_load._time_scaled for why).

The floors. `noop` is the no-op middleware in a process that never imported numpy;
`noop-loaded` the same with sidecar imported and a baseline loaded, as every numpy-based
model server is (importing numpy alone makes each C printf in the process take glibc's
slow path: the libquadmath it bundles registers printf hooks). `over` is the variant's
instructions per request over the floor's, and the throughput ratio they predict.
`of which GC` is the cyclic collector's share, the noisiest part: a full collection
scans everything the process holds, and whether one falls in a run moves its count per
request by thousands (see collector_instructions). `sampled` is the share of the extra
2N requests the sampler took (it draws at random, and its cap may thin). From skew-0.0
and skew-0.1 the notes derive what a sample costs and the ratio at exactly 0.1, with
the collector's instructions and without them.

    python bench/server_instructions.py [-n 3000] [--stacks h11/asyncio,httptools/uvloop]
        [--variants bare,noop,noop-loaded,skew-0.0,skew-0.1] [--time-scale S]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import serving_load as sl

VARIANTS = "bare,noop,noop-loaded,skew-0.0,skew-0.1"
CHOICES = ("bare", "noop", "noop-loaded", *(v for v in sl.SKEW_OPTIONS if v.startswith("skew-")))
NATIVE_REQUESTS = 20_000  # for the server's CPU per request at full speed


@dataclass
class Served:
    instructions: int
    cpu_seconds_per_request: float  # the server process's, over the requests sent
    sampled: float  # skew_requests_sampled_total at the end (nan without the monitor)
    collector: int = 0  # the instructions of the cyclic GC's collections


def server_instructions(
    variant: str,
    requests: int,
    http: str,
    loop: str,
    baseline: str,
    scale: float = 1.0,
    seed: int = 0,
) -> Served:
    """Total instructions of a uvicorn process that served `requests` requests."""
    port = sl.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            *uvicorn(http, loop),
        ]
        served = serve(command, variant, requests, baseline, port, scale, seed)
        with open(out) as f:
            text = f.read()
        served.collector = collector_instructions(out)
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if match is None:
        raise RuntimeError("no instruction total in callgrind's output")
    served.instructions = int(match.group(1))
    return served


def collector_instructions(out: str) -> int:
    """The cyclic GC's instructions in a callgrind file (gc_collect_main, inclusive). Its
    full collections come when enough objects have survived, each scanning every object
    the process holds (millions of instructions with numpy and a baseline loaded), so
    whether one falls in a run or not moves that run's count per request by thousands."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", out],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"^\s*([\d,]+) .*gcmodule\.c:gc_collect_main \[", annotated, re.M)
    return int(match.group(1).replace(",", "")) if match else 0


def native_cpu_per_request(http: str, loop: str, baseline: str) -> float:
    """The no-op server's CPU seconds per request at full speed, with the same client."""
    port = sl.free_port()
    return serve(
        uvicorn(http, loop), "noop", NATIVE_REQUESTS, baseline, port, 1.0
    ).cpu_seconds_per_request


def uvicorn(http: str, loop: str) -> list[str]:
    return [
            sys.executable, "-m", "uvicorn", "serving_load:app_factory", "--factory", "--app-dir",
            os.path.dirname(os.path.abspath(__file__)), "--host", "127.0.0.1",
            "--workers", "1", "--no-access-log",
            "--log-level", "warning", "--http", http, "--loop", loop,
    ]  # fmt: skip


def serve(
    command: list[str],
    variant: str,
    requests: int,
    baseline: str,
    port: int,
    scale: float,
    seed: int = 0,
) -> Served:
    """Runs the server, sends it `requests` requests and stops it cleanly (SIGINT: the
    monitor checks what is queued, callgrind writes its file)."""
    # The same dict layouts in every run, and no idle OpenBLAS threads spinning.
    env = {
        **os.environ,
        sl.VARIANT_ENV: variant,
        sl.BASELINE_ENV: baseline,
        sl.TIME_SCALE_ENV: repr(scale),
        "PYTHONHASHSEED": str(seed),
        "OPENBLAS_NUM_THREADS": "1",
    }
    command = [*command, "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        cpu = send_requests(port, requests, server)
        sampled = math.nan
        if variant.startswith("skew-"):
            sampled = sl.skew_counters(port)["skew_requests_sampled_total"]
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=300)
    if server.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {server.returncode}:\n{stderr.decode()}")
    return Served(0, cpu, sampled)


def send_requests(port: int, n: int, server: subprocess.Popen[bytes]) -> float:
    """n requests, one after another on one connection, each answered 200; returns the
    server's CPU seconds per request while it served them."""
    body = sl.request_body()
    request = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    deadline = time.monotonic() + 300  # start-up under valgrind takes a while
    while True:
        try:
            connection = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("uvicorn under valgrind did not start") from None
            time.sleep(0.2)
    with connection, connection.makefile("rb") as responses:
        before = sum(sl.cpu_ticks(server.pid)[:1])
        for _ in range(n):
            connection.sendall(request)
            status = responses.readline()
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {status!r}")
            length = 0
            while (line := responses.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            responses.read(length)
        after = sum(sl.cpu_ticks(server.pid)[:1])
    return (after - before) / os.sysconf("SC_CLK_TCK") / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=3000, help="N (the runs send N and 3N)")
    parser.add_argument("--stacks", default="h11/asyncio,httptools/uvloop")
    parser.add_argument("--variants", default=VARIANTS, help=f"of {', '.join(CHOICES)}")
    parser.add_argument(
        "--seeds", default="0",
        help="hash seeds: each a layout of the process (the floor moves by 0.5 %% between "
        "layouts); per variant, the median over them",
    )  # fmt: skip
    parser.add_argument(
        "--time-scale", type=float, default=None,
        help="the slowdown under valgrind (default: measured per stack)",
    )  # fmt: skip
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on PATH. Install it with: apt-get install -y valgrind")
    stacks = [tuple(stack.split("/")) for stack in args.stacks.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in CHOICES]
    if unknown or (args.time_scale is None and "noop" not in variants):
        sys.exit(f"--variants: unknown {unknown}, or no noop (it measures the time scale)")
    variants.sort(key=lambda v: v != "noop")  # the no-op first: it measures the scale
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"$ python bench/server_instructions.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"uvicorn, one worker, under callgrind; (Ir(3N) - Ir(N)) / 2N with N={args.n}, "
        "requests one after another on one keep-alive connection; hash seeds "
        f"{args.seeds} (a median, with the range, over several)"
    )
    rows = []
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = os.path.join(tmp, "baseline.json")
        sl.write_baseline(baseline)
        for http, loop in stacks:
            missing = [m for m in (http, loop) if m != "asyncio" and not installed(m)]
            if missing:
                print(f"(left out {http}/{loop}: pip install {' '.join(missing)})")
                continue
            scale = args.time_scale
            per_request: dict[str, float] = {}
            sampled: dict[str, float] = {}
            collector: dict[str, float] = {}
            spread: dict[str, str] = {}
            for variant in variants:
                stretch = 1.0 if scale is None or not variant.startswith("skew-") else scale
                runs = []
                for seed in seeds:
                    low, high = (
                        server_instructions(variant, n, http, loop, baseline, stretch, seed)
                        for n in (args.n, 3 * args.n)
                    )
                    runs.append((low, high))
                per_request[variant], spread[variant] = per_layout(
                    [(high.instructions - low.instructions) / (2 * args.n) for low, high in runs]
                )
                collector[variant] = statistics.median(
                    (high.collector - low.collector) / (2 * args.n) for low, high in runs
                )
                sampled[variant] = statistics.fmean(
                    (high.sampled - low.sampled) / (2 * args.n) for low, high in runs
                )
                if variant == "noop" and scale is None:
                    native = native_cpu_per_request(http, loop, baseline)
                    scale = runs[0][0].cpu_seconds_per_request / native
                    notes.append(
                        f"{http}/{loop}: the no-op's CPU per request {native * 1e6:.0f} µs at "
                        f"full speed, {scale * native * 1e6:,.0f} µs under valgrind: "
                        f"time scale {scale:.1f}"
                    )
                sl.progress(f"{http}/{loop} {variant}: {per_request[variant]:,.0f} Ir/request")
            for variant, ir in per_request.items():
                rows.append([
                    f"{http}, {loop}", variant, f"{ir:,.0f}{spread[variant]}",
                    *(over(ir, per_request.get(floor)) for floor in FLOORS),
                    f"{collector[variant]:,.0f}", sl.fmt(sampled[variant], ".4f"),
                ])  # fmt: skip
            notes.extend(prediction(f"{http}/{loop}", per_request, sampled))
            without_gc = {v: ir - collector[v] for v, ir in per_request.items()}
            notes.extend(prediction(f"{http}/{loop} without the GC", without_gc, sampled))
    print()
    header = [
        "stack", "app", "Ir per request", *(f"over {f}" for f in FLOORS), "of which GC", "sampled"
    ]  # fmt: skip
    print(sl.table(header, rows))
    print()
    for note in notes:
        print(f"- {note}")


FLOORS = ("noop", "noop-loaded")


def per_layout(values: list[float]) -> tuple[float, str]:
    """The median of one variant's counts over layouts, and their range to show."""
    if len(values) == 1:
        return values[0], ""
    return statistics.median(values), f" ({min(values):,.0f}–{max(values):,.0f})"


def over(ir: float, floor: float | None) -> str:
    """The variant's instructions over a floor's, and the throughput ratio they predict."""
    if floor is None or ir == floor:
        return ""
    return f"{ir - floor:+,.0f} ({floor / ir:.4f}x)"


def prediction(stack: str, per_request: dict[str, float], sampled: dict[str, float]) -> list[str]:
    """The cost of one sample, from skew-0.1 over skew-0.0 and the share actually sampled,
    and the ratio it predicts at exactly 0.1 against the no-op with numpy loaded."""
    needed = ("noop-loaded", "skew-0.0", "skew-0.1")
    if not all(v in per_request for v in needed) or not sampled["skew-0.1"] > 0:
        return []
    floor, decision, tenth = (per_request[v] for v in needed)
    per_sample = (tenth - decision) / sampled["skew-0.1"]
    at_tenth = decision + 0.1 * per_sample
    return [
        f"{stack}: a sample costs {per_sample:,.0f} Ir (tap, worker, GIL hand-overs; "
        f"{sampled['skew-0.1']:.4f} of the requests sampled); the decision alone "
        f"{decision - floor:+,.0f} per request",
        f"{stack}: at exactly 0.1, {at_tenth - floor:+,.0f} Ir per request over the no-op "
        f"with numpy loaded: {floor / at_tenth:.4f}x predicted (goal >= 0.99x)",
    ]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
