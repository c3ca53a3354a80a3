"""A real Prometheus and Alertmanager for tests: the binaries on loopback.

Tests that need them call `binary("prometheus")` (or "promtool") and
`alertmanager_binary(...)`: they skip with the reason when the binary is missing, except
under CI (the CI variable set), where a missing binary fails them: CI installs it
(.ci/run) and must not skip silently.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.servers import eventually, free_port, stop
from tests.tools import required

START_TIMEOUT = 30.0
INSTALL_HINT = "apt-get install --no-install-recommends prometheus (Debian), as .ci/run does"
ALERTMANAGER_HINT = (
    "apt-get install --no-install-recommends prometheus-alertmanager (Debian); "
    "CI needs it in .ci/run"
)

Sample = dict[str, Any]  # one element of an instant vector: {"metric": {...}, "value": [t, "v"]}


def binary(name: str) -> str:
    """The path of a Prometheus binary (prometheus, promtool); skips, or fails under CI."""
    return required(name, hint=INSTALL_HINT, tests="Prometheus")


def alertmanager_binary(*names: str) -> str:
    """The first of `names` on PATH; skips, or fails under CI (the CI variable set)."""
    return required(*names, hint=ALERTMANAGER_HINT, tests="Alertmanager")


class Prometheus:
    """Queries against a running Prometheus through its HTTP API."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self.client = httpx.Client(base_url=url, timeout=10.0)

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query; the result vector (a scalar comes back as one sample)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        response = self.client.get("/api/v1/query", params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {response.status_code} {body}")
        data = body["data"]
        if data["resultType"] == "vector":
            result: list[Sample] = data["result"]
            return result
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise AssertionError(f"query {expr!r}: unexpected result type {data['resultType']}")

    def values(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """An instant query as {(label values...): value}."""
        return {
            tuple(s["metric"].get(label, "") for label in labels): float(s["value"][1])
            for s in self.query(expr)
        }

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels and annotations."""
        body = self.client.get("/api/v1/alerts").json()
        alerts: list[dict[str, Any]] = body["data"]["alerts"]
        return alerts

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float = 20.0, every: float = 0.2
    ) -> None:
        """Poll `check` until it holds; fail naming `what` (and the log's tail) if it never does."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}\n{self.tail()}"
                )
            time.sleep(every)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "prometheus log:\n" + "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.client.close()


def write_config(
    path: Path,
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path],
    interval: str,
    alertmanagers: Sequence[str] = (),
) -> None:
    """prometheus.yml: one scrape job per entry of `targets` (job name -> host:port list),
    alerts sent to the Alertmanagers at `alertmanagers` (host:port).

    JSON is valid YAML, so no YAML writer is needed.
    """
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
            for job, hosts in targets.items()
        ],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
    path.write_text(json.dumps(config, indent=2))


@contextmanager
def run_prometheus(
    workdir: Path,
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
    alertmanagers: Sequence[str] = (),
) -> Iterator[Prometheus]:
    """Start Prometheus on 127.0.0.1 with its storage in `workdir`; yield it once ready.

    Scrapes and rule evaluations run every `interval`; alerts go to `alertmanagers`
    (host:port). Leaving the block stops it (SIGTERM, then SIGKILL after STOP_TIMEOUT
    seconds).
    """
    executable = binary("prometheus")
    config = workdir / "prometheus.yml"
    write_config(config, targets, rule_files, interval, list(alertmanagers))
    log = workdir / "prometheus.log"
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                executable,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _ready(prometheus):
            if process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with status {process.returncode}\n{prometheus.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"prometheus not ready within {START_TIMEOUT} s\n{prometheus.tail()}"
                )
            time.sleep(0.1)
        yield prometheus
    finally:
        prometheus.close()
        stop(process)


def _ready(prometheus: Prometheus) -> bool:
    try:
        return prometheus.client.get("/-/ready", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def run_alertmanager(workdir: Path, config: Path) -> Iterator[httpx.Client]:
    """Alertmanager on 127.0.0.1 with `config` and its storage in `workdir`, no cluster;
    an API client (its base_url is Alertmanager's) once ready."""
    # Debian names the binary prometheus-alertmanager; upstream's is alertmanager.
    executable = alertmanager_binary("alertmanager", "prometheus-alertmanager")
    port = free_port()
    log = workdir / "alertmanager.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                executable,
                f"--config.file={config}",
                f"--storage.path={workdir / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # no gossip port: a single instance
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)

    def ready() -> bool:
        try:
            return client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None  # exited: stop waiting, fail below

    try:
        if not eventually(ready, START_TIMEOUT):
            raise RuntimeError(f"alertmanager not ready within {START_TIMEOUT} s")
        if process.poll() is not None:
            raise RuntimeError(
                f"alertmanager exited with status {process.returncode}\n"
                + log.read_text(errors="replace")
            )
        yield client
    finally:
        client.close()
        stop(process)
