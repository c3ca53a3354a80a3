"""An ASGI app served by uvicorn in a background thread of this process.

The listening socket is bound here, before the thread starts: a port in use is an
OSError naming the address, and the port the kernel picked (port 0) is known at
once. uvicorn installs no signal handlers outside the main thread, so Ctrl-C stays
with the caller, who stops the server with `stop()` (or by leaving the `with` block).
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

from starlette.types import ASGIApp

INSTALL_HINT = "needs uvicorn: pip install 'skew-sidecar[serve]'"


class BackgroundServer:
    """`with BackgroundServer(app) as server:` serves `app` at `server.url` until the
    block ends; the app's lifespan startup has completed when the block starts, and
    its shutdown (and the thread) when the block is left."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 10.0,
        stop_timeout: float = 15.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0-65535 (0: any free port), got {port}")
        try:
            import uvicorn
        except ImportError:
            raise ImportError(f"serving over HTTP {INSTALL_HINT}") from None
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,  # the caller's logging, not uvicorn's handlers
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted sockets only then
        # (with proto 0 every response waits 40 ms for a delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                "choose another port"
            ) from None
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="skew-demo-server")
        self._thread.daemon = True  # never keeps the interpreter alive; stop() joins it
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        try:
            while not self._server.started and self._thread.is_alive():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start within {self.start_timeout} s")
                time.sleep(0.01)
        except BaseException:  # Ctrl-C too: no server left running
            self.stop()
            raise
        if not self._server.started:
            self.stop()
            raise RuntimeError("the server failed during startup (see the log above)")

    def _run(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except SystemExit:  # uvicorn's way out of a failed startup, logged by uvicorn
            pass

    def stop(self) -> None:
        """Stop accepting, let open requests finish, run the lifespan shutdown, join."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._server.should_exit = True
            thread.join(self.stop_timeout)
            if thread.is_alive():
                raise RuntimeError(f"the server did not stop within {self.stop_timeout} s")
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
