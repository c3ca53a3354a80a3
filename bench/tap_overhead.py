"""Serving-path cost of the tap, in instructions per request (callgrind) and CPU time.

Drives a Starlette app in-process (no sockets) for N requests per variant:

  bare        the app alone
  noop        a pass-through pure-ASGI middleware: the floor for any middleware
  unwatched   SkewMiddleware, GET requests (not watched: pass-through cost)
  skipped     SkewMiddleware, sample_rate=0 (sampling decided, body untouched)
  sampled     SkewMiddleware, every request sampled; the worker thread is held
              back so only serving-path work is counted (tee + enqueue)
  sampled-0.1 as sampled, for every tenth request exactly (the others as skipped): the
              mix the serving path sees at sample_rate 0.1, whose count is 0.9 x skipped
              + 0.1 x sampled if a rare sampled request costs no more instructions
  checked     as sampled, and the worker's checking, in batches of --batch samples
              (the real server's worker saw about 90 at sample_rate 0.1): the
              total CPU of a sampled request, on and off the loop
  outputs     as checked, with a prediction column in the baseline: the responses
              are read, parsed and checked too (as in bench/serving_load.py)
  sink        SkewMiddleware(sink=...): every request sampled and sent as one datagram
              to a Unix socket drained by another process (the serving process's
              whole cost of the datagram tap)

--features numeric (the default) sends 32 float features; --features mixed sends
bench/serving_load.py's request: 24 numeric and 8 categorical string features (40
values each), so the categorical checks are counted too.

With --callgrind, each variant runs under `valgrind --tool=callgrind` at N and 3N
requests, and the table shows (Ir(3N) - Ir(N)) / 2N: instructions per request,
free of start-up cost and machine noise (the garbage collector is off while counting).
Without it, CPU µs per request (median of interleaved rounds).

    python bench/tap_overhead.py                 # CPU time, quick
    python bench/tap_overhead.py --callgrind     # instruction counts (slow)
    python bench/tap_overhead.py --callgrind --features mixed
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

VARIANTS = (
    "bare", "noop", "unwatched", "skipped", "sampled", "sampled-0.1", "checked", "outputs", "sink",
)  # fmt: skip
# The sidecar's stand-in for the sink variant: binds the socket, reads and discards.
DRAIN = """
import os, socket, sys
path = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind(path)
while True:
    sock.recv(1 << 20)
"""
FEATURES = 32
FEATURE_SETS = ("numeric", "mixed")
CHECKED = ("checked", "outputs")  # the variants whose worker checks, in batches


def training_rows(features: str, n: int) -> list[dict[str, Any]]:
    if features == "mixed":
        from serving_load import training_rows as mixed_rows

        return mixed_rows(n, seed=1)
    return [{f"f{j}": float((i * 7 + j) % 97) for j in range(FEATURES)} for i in range(n)]


def build(variant: str, features: str) -> tuple[Any, Any]:
    import orjson
    from prometheus_client import CollectorRegistry
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from sidecar import Baseline, ProfileOptions
    from sidecar.middleware import SkewMiddleware

    async def predict(request: Request) -> Response:
        await request.body()
        return Response(b'{"predictions":[0.5]}', media_type="application/json")

    app: Any = Starlette(routes=[Route("/predict", predict, methods=["GET", "POST"])])
    if variant == "bare":
        return app, None
    if variant == "noop":
        return NoopMiddleware(app), None
    rows = training_rows(features, 500)
    if variant == "outputs":
        for i, row in enumerate(rows):
            row["prediction"] = (i % 10) / 10
    baseline = Baseline.from_records(
        rows,
        ProfileOptions(
            prediction=frozenset({"prediction"}) if variant == "outputs" else frozenset()
        ),
    )
    options: dict[str, Any] = {
        "registry": CollectorRegistry(),
        "queue_size": 1_000_000,
        "max_samples_per_second": 1e9,
    }
    if variant == "skipped":
        options["sample_rate"] = 0.0
    if variant == "sink":
        return SkewMiddleware(app, sink=drained_socket(), max_samples_per_second=1e9), None
    mw = SkewMiddleware(app, baseline=baseline, **options)
    if variant in ("sampled", "sampled-0.1", "checked", "outputs"):
        mw.monitor.started = True  # no worker thread: loop cost only
    # The worker offers the GIL every 200 µs of wall time: under valgrind (about 50x
    # slower) that would be every few µs of work, and the count would depend on the
    # machine's speed. Not counted: a sleep(0) per 200 µs of checking in a real run.
    mw.monitor.pacer.slice = float("inf")
    if variant == "sampled-0.1":
        every_tenth(next(iter(mw.targets.values())).sampler)
    _ = orjson
    return mw, mw.monitor


def every_tenth(sampler: Any) -> None:
    """Gaps of exactly 10 instead of geometric ones: the same count in every run (the
    gaps drawn ahead are taken from this list by both samplers, Python and compiled)."""
    sampler._gaps = [10] * 1_000_000
    sampler._drawn += 10 - sampler.countdown
    sampler._gap = sampler.countdown = 10


class NoopMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def drained_socket() -> str:
    """A Unix datagram socket read by a child process (on the other core if there is one);
    the child ends with this process."""
    import atexit

    path = os.path.join(tempfile.mkdtemp(prefix="tap-bench-"), "tap.sock")
    drain = subprocess.Popen([sys.executable, "-c", DRAIN, path])
    atexit.register(drain.kill)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(drain.pid, {1})
        os.sched_setaffinity(0, {0})
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("the drain process did not bind its socket")
        time.sleep(0.01)
    return f"unix://{path}"


def body(features: str) -> bytes:
    import orjson

    if features == "mixed":
        from serving_load import request_body

        return request_body()
    return orjson.dumps({f"f{j}": float(j) + 0.5 for j in range(FEATURES)})


async def drive(
    app: Any, n: int, method: str, payload: bytes, monitor: Any = None, batch: int = 0
) -> None:
    """n requests; with a monitor and a batch size, its queue is checked every `batch`
    requests, as the worker would (same thread: the cost is counted, not overlapped)."""
    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip

    async def send(message: Any) -> None:
        pass

    for _ in range(n):
        sent = False

        async def receive() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return {"type": "http.disconnect"}

        await app(dict(scope_base), receive, send)
        if batch and len(monitor._queue) >= batch:
            monitor.process_pending()
    if batch:
        monitor.process_pending()


def run_variant(variant: str, n: int, batch: int, features: str) -> None:
    import gc

    app, monitor = build(variant, features)
    payload = body(features)
    gc.collect()
    # No collections while counting: the count is the path's own instructions. A full
    # collection is one event of millions of instructions, and in the variants whose
    # queue is never drained it scans every sample kept so far: either makes the
    # difference between N and 3N requests jump by thousands per request.
    gc.disable()
    method = "GET" if variant == "unwatched" else "POST"
    os.getppid()  # callgrind starts counting here (--zero-before=getppid)
    asyncio.run(drive(app, n, method, payload, monitor, batch if variant in CHECKED else 0))
    os.getpgrp()  # and stops here (--dump-before=getpgrp)


def cpu_per_request(variant: str, n: int, batch: int, features: str) -> float:
    app, monitor = build(variant, features)
    payload = body(features)
    method = "GET" if variant == "unwatched" else "POST"
    batch = batch if variant in CHECKED else 0
    asyncio.run(drive(app, 200, method, payload, monitor, batch))  # warm up
    if monitor is not None:
        monitor._queue.clear()
    start = time.process_time()
    asyncio.run(drive(app, n, method, payload, monitor, batch))
    return (time.process_time() - start) / n * 1e6


def callgrind_instructions(variant: str, n: int, batch: int, features: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            # Only the requests are counted: imports and set-up vary by millions of
            # instructions from run to run (more than 2N requests' differences).
            "--zero-before=getppid",
            "--dump-before=getpgrp",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            variant,
            str(n),
            "--batch",
            str(batch),
            "--features",
            features,
        ]
        # Same dict layouts in every run; and no OpenBLAS thread pool: its idle threads
        # spin-wait, adding millions of instructions that depend on the schedule.
        env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        with open(out + ".1") as f:  # the dump taken at getpgrp
            text = f.read()
    match = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(
        r"^totals:\s+(\d+)", text, re.M
    )
    if match is None:
        raise RuntimeError("no instruction total in callgrind output")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=90, help="samples per worker batch")
    parser.add_argument("--features", choices=FEATURE_SETS, default="numeric")
    parser.add_argument("--variants", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_variant(args.child[0], int(args.child[1]), args.batch, args.features)
        return
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    if set(variants) - set(VARIANTS):
        sys.exit(f"unknown variants: {', '.join(sorted(set(variants) - set(VARIANTS)))}")
    if "bare" not in variants:
        variants.insert(0, "bare")
    described = f"{FEATURES} features" if args.features == "numeric" else "24+8 features"
    if args.callgrind:
        n = args.n or 500
        print(f"instructions per request, (Ir(3N) - Ir(N)) / 2N with N={n}, {described}")
        base = None
        for variant in variants:
            high = callgrind_instructions(variant, 3 * n, args.batch, args.features)
            low = callgrind_instructions(variant, n, args.batch, args.features)
            per = (high - low) / (2 * n)
            base = base or per
            print(f"{variant:<10} {per:>12,.0f} Ir/request   {per - base:>+10,.0f} vs bare")
        return
    n = args.n or 5000
    results: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            results[variant].append(cpu_per_request(variant, n, args.batch, args.features))
    print(
        f"CPU µs per request, {n} requests, {described}, median of {args.rounds} interleaved rounds"
    )
    bare = statistics.median(results["bare"])
    for variant, samples in results.items():
        med = statistics.median(samples)
        print(f"{variant:<10} {med:>8.1f} µs   {med - bare:>+7.1f} vs bare   x{med / bare:.2f}")


if __name__ == "__main__":
    main()
