"""Serve ASGI apps over real HTTP: uvicorn on loopback, in a background thread; or
several worker processes (uvicorn --workers, gunicorn) in a subprocess."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

# uvicorn_workers or gunicorn_workers: (factory, environment) -> the base URL while open.
Workers = Callable[[str, Mapping[str, str]], AbstractContextManager[str]]

START_TIMEOUT = 5.0
STOP_TIMEOUT = 10.0


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1 and a free port; yield its base URL.

    The lifespan runs: the block starts after startup completes, and leaving it
    closes the connections, runs the lifespan shutdown and joins the thread.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,  # the kernel picks a free port; read back from the listening socket
        lifespan="on",
        log_level="warning",
        # No handlers of uvicorn's own: records propagate to pytest's log capture
        # instead of a stream bound to one test's captured stderr.
        log_config=None,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    exit_codes: list[object] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exc:  # uvicorn's way out of a failed startup
            exit_codes.append(exc.code)

    thread = threading.Thread(target=run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        if not eventually(lambda: server.started or not thread.is_alive(), START_TIMEOUT):
            raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT} s")
        if not server.started:
            raise RuntimeError(
                f"uvicorn exited during startup with {exit_codes} (see the captured log)"
            )
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
    if thread.is_alive():
        raise RuntimeError(f"uvicorn did not shut down within {STOP_TIMEOUT} s")


def free_port() -> int:
    """A port that was free a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def uvicorn_workers(factory: str, env: Mapping[str, str], workers: int = 2) -> Iterator[str]:
    """`uvicorn --factory <factory> --workers N` in a subprocess (the repository on its
    path) on a free port; yield its base URL; leaving the block stops it (SIGTERM, so
    the workers run their lifespan shutdown) and waits."""
    repo = Path(__file__).resolve().parent.parent
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", factory, "--factory", "--workers", str(workers),
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with _running(command, env, repo):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def gunicorn_workers(factory: str, env: Mapping[str, str], workers: int = 2) -> Iterator[str]:
    """`gunicorn -k uvicorn_worker.UvicornWorker -w N` with the shipped settings
    (`-c python:sidecar.gunicorn_conf`) in a subprocess, as `uvicorn_workers` runs
    uvicorn: the factory is called in each worker (`module:build()`), never in the
    master. Leaving the block stops it with SIGTERM (workers shut down gracefully)."""
    repo = Path(__file__).resolve().parent.parent
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", f"{factory}()", "-c", "python:sidecar.gunicorn_conf",
        "-k", "uvicorn_worker.UvicornWorker", "-w", str(workers), "-b", f"127.0.0.1:{port}",
        "--log-level", "warning", "--graceful-timeout", "10",
    ]  # fmt: skip
    with _running(command, env, repo):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def _running(command: list[str], env: Mapping[str, str], repo: Path) -> Iterator[None]:
    """The server command in a subprocess (the repository on its path); stopped with
    SIGTERM (its workers shut down gracefully) and waited for on leaving."""
    server = subprocess.Popen(command, env={**env, "PYTHONPATH": str(repo)}, cwd=repo)
    try:
        yield
    finally:
        server.terminate()
        server.wait(30)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM `process` and wait for it to end; SIGKILL it after STOP_TIMEOUT seconds."""
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
