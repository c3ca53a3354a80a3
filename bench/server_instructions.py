"""Instructions per request of the whole uvicorn server, for each HTTP stack installed.

bench/tap_overhead.py counts the tap's instructions in-process, without a server; the
share they take of a real request depends on what the server spends around them. This
runs bench/serving_load.py's app (the bare app, then behind the no-op middleware) in
uvicorn under `valgrind --tool=callgrind`, sends N and then 3N requests on one
keep-alive connection, and prints (Ir(3N) - Ir(N)) / 2N: the server's instructions per
request, start-up and shutdown cancelled out.

Only the app and the no-op: the monitor's worker does work per second (it wakes at
least once a second, checks what queued since, closes windows), and under valgrind
a second holds about 50 times fewer requests, so its per-second costs would be charged
to too few of them. Its cost per request is tap_overhead.py's, free of time.

uvicorn picks h11 or httptools and asyncio or uvloop; `uvicorn[standard]` installs the
second of each (what most deployments run). A stack whose packages are missing is left
out with a note.

    python bench/server_instructions.py [-n 300] [--stacks h11/asyncio,httptools/uvloop]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import serving_load as sl

VARIANTS = ("bare", "noop")


def server_instructions(variant: str, requests: int, http: str, loop: str, baseline: str) -> int:
    """Total instructions of a uvicorn process that served `requests` requests."""
    port = sl.free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
            "-m", "uvicorn", "serving_load:app_factory", "--factory", "--app-dir",
            os.path.dirname(os.path.abspath(__file__)), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--no-access-log",
            "--log-level", "warning", "--http", http, "--loop", loop,
        ]  # fmt: skip
        # The same dict layouts in every run, and no idle OpenBLAS threads spinning.
        env = {
            **os.environ,
            sl.VARIANT_ENV: variant,
            sl.BASELINE_ENV: baseline,
            "PYTHONHASHSEED": "0",
            "OPENBLAS_NUM_THREADS": "1",
        }
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            send_requests(port, requests, server)
        finally:
            server.send_signal(signal.SIGINT)  # a clean shutdown: callgrind writes its file
            _, stderr = server.communicate(timeout=300)
        if server.returncode != 0:
            raise RuntimeError(f"uvicorn under valgrind exited {server.returncode}:\n{stderr}")
        with open(out) as f:
            text = f.read()
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if match is None:
        raise RuntimeError("no instruction total in callgrind's output")
    return int(match.group(1))


def send_requests(port: int, n: int, server: subprocess.Popen[bytes]) -> None:
    """n requests, one after another on one connection, each answered 200."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=300, help="N (the runs send N and 3N)")
    parser.add_argument("--stacks", default="h11/asyncio,httptools/uvloop")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on PATH. Install it with: apt-get install -y valgrind")
    stacks = [tuple(stack.split("/")) for stack in args.stacks.split(",")]
    print(f"$ python bench/server_instructions.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"uvicorn, one worker, under callgrind; (Ir(3N) - Ir(N)) / 2N with N={args.n}, "
        "requests one after another on one keep-alive connection"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = os.path.join(tmp, "baseline.json")
        sl.write_baseline(baseline)
        for http, loop in stacks:
            missing = [m for m in (http, loop) if m != "asyncio" and not installed(m)]
            if missing:
                print(f"(left out {http}/{loop}: pip install {' '.join(missing)})")
                continue
            for variant in VARIANTS:
                low = server_instructions(variant, args.n, http, loop, baseline)
                high = server_instructions(variant, 3 * args.n, http, loop, baseline)
                per_request = (high - low) / (2 * args.n)
                sl.progress(f"{http}/{loop} {variant}: {per_request:,.0f} Ir/request")
                rows.append([f"{http}, {loop}", variant, f"{per_request:,.0f}"])
    print()
    print(sl.table(["stack", "app", "Ir per request"], rows))


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
