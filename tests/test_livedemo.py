"""`skew-sidecar demo`: the live demo over real HTTP, Ctrl-C, and its fallbacks."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar import cli
from sidecar.cli import main
from sidecar.demo import LIVE_BUGS
from tests.exposition import metric_sum
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
SENT = re.compile(
    r"([\d,]+) requests \([\d,]+ rows\) sent over HTTP, 0 failed; "
    r"the server's /metrics counted ([\d,]+)"
)


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def requests_seen(text: str) -> float:
    return metric_sum(text, "skew_requests_seen_total", model="churn")


def watch(port: int, done: threading.Event, seen: dict[str, Any]) -> None:
    """What a user opening the printed URLs gets while the demo runs: /metrics once it
    counts requests, and /skew.json."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while not done.is_set():
            try:
                counted = requests_seen(client.get("/metrics").text)
                page = client.get("/skew.json")
            except httpx.TransportError:  # not listening yet
                counted = 0
            if counted:
                seen["requests"] = counted
                seen["page"] = page.json()
                return
            time.sleep(0.05)


def test_the_live_demo_names_every_injected_bug_over_http_and_shuts_the_server_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    before = set(threading.enumerate())
    seen: dict[str, Any] = {}
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(port, done, seen))
    watcher.start()
    try:
        code, out, err = run(capsys, "demo", "--duration", 12, "--port", port)
    finally:
        done.set()
        watcher.join()
    assert (code, err) == (0, ""), out
    assert f"metrics:    http://127.0.0.1:{port}/metrics" in out
    assert f"debug page: http://127.0.0.1:{port}/skew" in out
    for bug in LIVE_BUGS:
        assert f"inject {bug.title}: {bug.feature}" in out
        assert f"NAMED  {bug.feature}: {bug.kind}, " in out, bug.title
        row = f"{bug.title}  .*{bug.feature}  .*{bug.kind}  .*[\\d.]+ s$"
        assert re.search(row, out, re.MULTILINE), bug.title
    assert f"all {len(LIVE_BUGS)} injected bugs named" in out
    # Every request went through the server: its own counter says so, over HTTP.
    sent, counted = SENT.search(out).groups()  # type: ignore[union-attr]
    assert int(sent.replace(",", "")) == int(counted.replace(",", "")) > 0
    assert seen["requests"] > 0
    assert [m["model"] for m in seen["page"]["models"]] == ["churn"]
    # Stopped: nothing listens, and no thread it started is left.
    assert refused(port)
    assert set(threading.enumerate()) <= before


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_the_live_demo_with_a_summary_and_exit_status_0() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "demo", "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        # Ctrl-C as a terminal delivers it: a test run started in the background (`&`)
        # ignores SIGINT, and the demo would inherit that and never see it.
        preexec_fn=_default_sigint,
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # until the first bug is named: mid-run
            lines.append(line)
            if "NAMED" in line:
                break
        demo.send_signal(signal.SIGINT)
        rest, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out = "".join(lines) + rest
    assert (demo.returncode, err) == (0, ""), out
    assert "summary (interrupted after" in out
    assert "not injected" in out  # the later bugs
    first = LIVE_BUGS[0]
    assert re.search(f"{first.title}  .*{first.kind}  .*[\\d.]+ s$", out, re.MULTILINE)
    assert SENT.search(out)


def test_without_uvicorn_the_demo_runs_offline_with_a_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_uvicorn_installed", lambda: False)
    code, out, err = run(capsys, "demo", "--dir", tmp_path)
    assert code == 0
    assert err.startswith("note: the live demo needs uvicorn (pip install 'skew-sidecar[serve]')")
    assert "what the demo's serving path got wrong:" in out
    assert (tmp_path / "baseline.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--duration", "5"), "--duration must be at least 8 s (a clean phase and 7 bugs), got 5"),
        (("--dir", "somewhere"), "--dir is for --offline (the live demo writes no files)"),
        (("--rows", "0"), "--rows must be at least 1, got 0"),
    ],
)
def test_bad_demo_options_are_refused_with_the_fix(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "demo", *args)
    assert (code, out) == (2, "")
    assert err == f"skew-sidecar: error: {message}\n"


def test_a_demo_port_in_use_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "demo", "--port", port)
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err
