"""Soak: SkewMiddleware under real uvicorn for minutes, good and hostile bodies mixed.

One uvicorn process (the app below, SkewMiddleware with its defaults, /metrics mounted)
takes wrk's load (closed loop, Lua cycling through the bodies of tests/hostile.py: valid
rows, invalid UTF-8, truncated JSON, 100k-level nesting, huge numbers, NaN, long strings,
many and random keys, wrong content types, multipart, gzip incl. bombs, empty bodies)
in intervals; between intervals the script reads the server's RSS (/proc) and scrapes
/metrics: the number of series and the monitor's counts. The app answers 200 to a JSON
body and 400 otherwise, never 5xx: a 5xx, or a socket error, would be the monitor's.

    apt-get update && apt-get install -y wrk
    python bench/soak.py --duration 180 --interval 15 --warmup 30 [--connections 32]

Bounded: it stops after --duration seconds (plus the warm-up) and stops the server.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/hostile.py: the corpus

from tests.hostile import corpus  # noqa: E402

MAX_BODY = 256 << 10  # bodies beyond are left out: the rate stays high

APP = """
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from sidecar import SkewMiddleware, metrics_app


async def predict(request: Request) -> JSONResponse:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return JSONResponse({"error": "invalid JSON"}, status_code=400)
    rows = body if isinstance(body, list) else [body]
    return JSONResponse({"predictions": [0.5] * len(rows)})


routes = [Route("/predict", predict, methods=["POST"]), Mount("/metrics", metrics_app())]
app = Starlette(routes=routes)
app.add_middleware(SkewMiddleware, baseline=BASELINE, model="soak", window_seconds=10)
"""

LUA = """
local bodies = {}
local count = 0
local dir = "%(dir)s"

local function load()
for i = 1, %(n)d do
  local f = io.open(dir .. "/" .. i .. ".body", "rb")
  local body = f:read("*a")
  f:close()
  local h = io.open(dir .. "/" .. i .. ".headers", "r")
  local headers = {}
  for line in h:lines() do
    local k, v = line:match("^([^:]+): (.*)$")
    headers[k] = v
  end
  h:close()
  bodies[i] = wrk.format("POST", "/predict", headers, body)
end
count = #bodies
end

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  load()  -- here, not at load time: wrk.host is known only now
  i = id * 997
  s2xx, s4xx, s5xx = 0, 0, 0
end
function request()
  i = i %% count + 1
  return bodies[i]
end
function response(status, headers, body)
  if status >= 500 then s5xx = s5xx + 1
  elseif status >= 400 then s4xx = s4xx + 1
  else s2xx = s2xx + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("s2xx"); b = b + t:get("s4xx"); c = c + t:get("s5xx")
  end
  local e = summary.errors
  io.write(string.format("SOAK %%d %%d %%d %%d %%d %%d %%.0f %%.0f %%.0f\\n",
    summary.requests, a, b, c, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def write_corpus(folder: Path, n: int) -> int:
    written = 0
    for body in corpus(n, seed=11, heavy_every=5):
        data = body.data
        if len(data) > MAX_BODY:
            continue
        written += 1
        (folder / f"{written}.body").write_bytes(data)
        headers = [f"{k.decode()}: {v.decode()}" for k, v in body.headers]
        (folder / f"{written}.headers").write_text("\n".join(headers) + "\n")
    return written


def baseline_file(folder: Path) -> Path:
    from sidecar import Baseline
    from sidecar.profile import ProfileOptions

    rows = [{"x": float(i % 100), "c": "abc"[i % 3], "score": 0.5} for i in range(5000)]
    path = folder / "baseline.json"
    Baseline.from_records(rows, ProfileOptions(prediction=frozenset({"score"}))).save(path)
    return path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(url: str) -> tuple[int, dict[str, float]]:
    text = urllib.request.urlopen(url + "/metrics/", timeout=10).read().decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    wanted: dict[str, float] = {}
    for line in samples:
        name, _, value = line.rpartition(" ")
        if 'model="soak"' not in name:
            continue
        reason = re.search(r'reason="(\w+)"', name)
        key = name.partition("{")[0] + ":" + (reason[1] if reason else "")
        wanted[key] = wanted.get(key, 0.0) + float(value)
    return len(samples), wanted


def wrk(url: str, script: Path, seconds: int, connections: int) -> list[float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url + "/predict"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("SOAK "))
    return [float(v) for v in line.split()[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=180, help="seconds measured")
    parser.add_argument("--interval", type=int, default=15, help="seconds between readings")
    parser.add_argument("--warmup", type=int, default=30, help="seconds before the first")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--bodies", type=int, default=2_300, help="corpus size (cycled)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        bodies = folder / "bodies"
        bodies.mkdir()
        n = write_corpus(bodies, args.bodies)
        script = folder / "soak.lua"
        script.write_text(LUA % {"dir": bodies, "n": n})
        path = baseline_file(folder)
        (folder / "soak_app.py").write_text(f"BASELINE = {str(path)!r}\n" + APP)
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": f"{folder}:{ROOT}"}
        command = [
            sys.executable, "-m", "uvicorn", "soak_app:app", "--port", str(port),
            "--no-access-log", "--log-level", "warning", "--backlog", "4096",
        ]  # fmt: skip
        server = subprocess.Popen(command, env=env, cwd=folder)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait(url)
            return _soak(server.pid, url, script, n, args)
        finally:
            server.terminate()
            server.wait(30)


def _soak(pid: int, url: str, script: Path, n: int, args: Any) -> int:
    print(f"{n} bodies cycled; warm-up {args.warmup} s, then {args.duration} s in readings")
    wrk(url, script, args.warmup, args.connections)
    rss0, (series0, counts0) = rss_mib(pid), scrape(url)
    rows = []
    totals = [0.0] * 6
    elapsed = 0
    while elapsed < args.duration:
        seconds = min(args.interval, args.duration - elapsed)
        requests, ok, client_err, server_err, sock_err, _, p50, p99, worst = wrk(
            url, script, seconds, args.connections
        )
        elapsed += seconds
        for i, v in enumerate((requests, ok, client_err, server_err, sock_err)):
            totals[i] += v
        series, counts = scrape(url)
        rows.append(
            (elapsed, requests / seconds, p50 / 1e3, p99 / 1e3, worst / 1e3, server_err,
             sock_err, rss_mib(pid), series, counts)
        )  # fmt: skip
    print()
    print("| t (s) | req/s | p50 ms | p99 ms | max ms | 5xx | socket errors | RSS MiB | series |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t, rate, p50, p99, worst, s5, se, rss, series, _ in rows:
        print(
            f"| {t} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {worst:.1f} | {s5:.0f} | {se:.0f} "
            f"| {rss:.1f} | {series} |"
        )
    counts = rows[-1][-1]
    seen, checked = (
        counts.get("skew_requests_seen_total:", 0),
        counts.get("skew_samples_checked_total:", 0),
    )
    dropped = {
        k.split(":")[1]: v
        for k, v in counts.items()
        if k.startswith("skew_samples_dropped_total") and v
    }
    print()
    print(
        f"requests {totals[0]:,.0f}: 2xx {totals[1]:,.0f}, 4xx {totals[2]:,.0f} (the app's own"
        f" answer to a body that is not JSON), 5xx {totals[3]:,.0f}, socket errors {totals[4]:,.0f}"
    )
    print(
        f"RSS after warm-up {rss0:.1f} MiB, at the end {rows[-1][7]:.1f} MiB "
        f"({rows[-1][7] - rss0:+.1f} MiB); series after warm-up {series0}, at the end {rows[-1][8]}"
    )
    print(
        f"monitor: seen {seen:,.0f}, checked {checked:,.0f}, dropped {sum(dropped.values()):,.0f} "
        f"({', '.join(f'{k} {v:,.0f}' for k, v in sorted(dropped.items()))}); "
        f"errors {counts.get('skew_monitor_errors_total:', 0):.0f}"
    )
    unaccounted = seen - checked - sum(dropped.values()) - counts.get("skew_queue_depth:", 0)
    print(f"seen - checked - dropped - queued = {unaccounted:,.0f} (in flight at the scrape)")
    del counts0
    return 1 if totals[3] or totals[4] else 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/metrics/", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the soak server did not start")


if __name__ == "__main__":
    sys.exit(main())
