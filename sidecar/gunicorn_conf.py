"""gunicorn settings for several workers checking in-process (multiprocess mode).

    PROMETHEUS_MULTIPROC_DIR=/run/skew-metrics gunicorn -c python:sidecar.gunicorn_conf \\
        -k uvicorn_worker.UvicornWorker -w 4 app:app

Two server hooks, both doing nothing unless `PROMETHEUS_MULTIPROC_DIR` is set (so this
file is harmless with the datagram tap or one process):

- `on_starting` (in the master, once, before any worker): empties the directory of the
  value files an earlier run left, which would otherwise be added to this run's counts.
  Worker restarts (a crash, `max_requests`, HUP) keep the files: counters of every
  worker that ran in this server's life still add up.
- `child_exit` (in the master, as it reaps a worker): `mark_process_dead`, so the gauges
  of a worker that is gone leave the next scrape (every skew gauge has a `live` mode).
  `multiprocess_registry()` also drops them at each scrape by checking pids; the hook is
  exact even when the kernel has already given the pid to another process.

With a gunicorn.conf.py of your own, import them there:
`from sidecar.gunicorn_conf import child_exit, on_starting`.
"""

from __future__ import annotations

import logging
from typing import Protocol

from prometheus_client.multiprocess import mark_process_dead

from .multiprocess import clear_files, multiprocess_dir

logger = logging.getLogger("sidecar.gunicorn")


class _Worker(Protocol):
    pid: int


def on_starting(server: object) -> None:
    path = multiprocess_dir()
    if path is not None:
        removed = clear_files(path)
        if removed:
            logger.info("removed %d value files of an earlier run from %s", len(removed), path)


def child_exit(server: object, worker: _Worker) -> None:
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(worker.pid, path)  # type: ignore[no-untyped-call]
