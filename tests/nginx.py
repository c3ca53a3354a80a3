"""A real nginx for tests: Debian's binary, in the foreground, unprivileged, on loopback.

`run_nginx(workdir, model_server, sidecar)` runs deploy/nginx/skew-mirror.conf with its
addresses moved to loopback (`mirror_conf`) under a minimal main config whose pid file,
logs and temporary directories are all in `workdir`. `nginx_binary()` skips the test
with the reason when nginx is missing, except under CI (the CI variable set), where a
missing nginx fails it: CI installs it (.ci/run) and must not skip silently.

Upstreams that stall: `silent_server()` accepts connections, reads, and never answers;
`unaccepting_server()` never accepts them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import STOP_TIMEOUT, eventually, free_port, stop
from tests.tools import required

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "nginx" / "skew-mirror.conf"
# What `mirror_conf` replaces in the shipped file; nothing else changes.
LISTEN = "listen 8080;"
MODEL_SERVER = "server churn-model:8000;"
SIDECAR = "server skew-sidecar:8090;"
# Debian installs nginx in /usr/sbin, not on an ordinary user's PATH.
SBIN = "/usr/sbin:/sbin"
INSTALL_HINT = "apt-get install --no-install-recommends nginx (Debian), as .ci/run does"
START_TIMEOUT = 10.0


def nginx_binary() -> str:
    """The path of the nginx binary; skips, or fails under CI."""
    return required("nginx", hint=INSTALL_HINT, tests="nginx", also_in=SBIN)


def mirror_conf(port: int, model_server: str, sidecar: str) -> str:
    """The shipped server block listening on 127.0.0.1:`port`, its upstreams at
    `model_server` and `sidecar` (host:port); byte for byte the file otherwise."""
    text = SHIPPED.read_text()
    for old, new in (
        (LISTEN, f"listen 127.0.0.1:{port};"),
        (MODEL_SERVER, f"server {model_server};"),
        (SIDECAR, f"server {sidecar};"),
    ):
        if text.count(old) != 1:
            raise ValueError(f"{SHIPPED}: expected {old!r} once, found it {text.count(old)} times")
        text = text.replace(old, new)
    return text


def main_config(workdir: Path, server_block: Path) -> str:
    """nginx.conf: everything nginx writes goes to `workdir`; http includes `server_block`.

    As root, the workers run as root too: the default user (nobody) could not enter a
    pytest temporary directory.
    """
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events {}\n"
        "http {\n"
        f"    access_log {workdir / 'access.log'};\n"
        f"{temp}\n"
        f"    include {server_block};\n"
        "}\n"
    )


@dataclass(frozen=True)
class Nginx:
    url: str
    error_log: Path

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""


@contextmanager
def run_nginx(workdir: Path, model_server: str, sidecar: str) -> Iterator[Nginx]:
    """nginx in the foreground with the shipped server block on a free loopback port,
    its upstreams at `model_server` and `sidecar` (host:port), everything it writes in
    `workdir`; yield it once the port accepts connections. Leaving the block stops it
    (SIGTERM, then SIGKILL after STOP_TIMEOUT seconds)."""
    executable = nginx_binary()
    port = free_port()
    (workdir / "skew-mirror.conf").write_text(mirror_conf(port, model_server, sidecar))
    config = workdir / "nginx.conf"
    config.write_text(main_config(workdir, workdir / "skew-mirror.conf"))
    nginx = Nginx(f"http://127.0.0.1:{port}", workdir / "error.log")
    command = [executable, "-p", str(workdir), "-c", str(config), "-e", str(nginx.error_log)]
    with open(workdir / "stderr.log", "wb") as out:
        process = subprocess.Popen(
            [*command, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if not eventually(lambda: _accepts(port) or process.poll() is not None, START_TIMEOUT):
            raise RuntimeError(f"nginx not listening within {START_TIMEOUT} s\n{nginx.errors()}")
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with status {process.returncode}\n{nginx.errors()}")
        yield nginx
    finally:
        stop(process)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


@contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server on loopback that accepts every connection and reads everything sent,
    but never answers; yield its host:port. Leaving the block closes every connection."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        listener.settimeout(0.05)
        closed = threading.Event()

        def read(connection: socket.socket) -> None:
            with closing(connection):
                connection.settimeout(0.05)
                while not closed.is_set():
                    try:
                        if not connection.recv(1 << 16):
                            return
                    except TimeoutError:
                        continue
                    except OSError:
                        return

        def accept() -> None:
            readers = []
            while not closed.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                reader = threading.Thread(target=read, args=(connection,), daemon=True)
                reader.start()
                readers.append(reader)
            for reader in readers:
                reader.join(STOP_TIMEOUT)

        acceptor = threading.Thread(target=accept, name="silent-server", daemon=True)
        acceptor.start()
        try:
            yield f"127.0.0.1:{listener.getsockname()[1]}"
        finally:
            closed.set()
            acceptor.join(STOP_TIMEOUT)


@contextmanager
def unaccepting_server() -> Iterator[str]:
    """A listening socket whose accept queue is full and never drained: the kernel drops
    new connection attempts, so connecting to it times out; yield its host:port."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        # Linux queues one connection beyond a backlog of 0: this one fills the queue.
        with socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT):
            yield f"127.0.0.1:{port}"
