"""The Dockerfile's image, built and run by a real Docker daemon.

No registry is reachable here, so the Dockerfile's base (`python:3.11-slim`) is
replaced by a Debian bookworm image built on this machine with debootstrap: Python
3.11, pip and useradd, as the official image has. It trusts the host's certificate
authorities (pip inside the build reaches PyPI through the same proxy the host does).
Built once per Docker daemon and kept under BASE_IMAGE; the sidecar's image is rebuilt
every session (Docker's layer cache makes an unchanged build take a second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.exposition import metric_sum
from tests.tools import required

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "skew-test/python:3.11"
IMAGE = "skew-sidecar:test"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the official python:3.11-slim offers that the Dockerfile and compose.yaml use:
# python and pip on PATH, useradd.
BASE_PACKAGES = "python3,python3-pip,python-is-python3,passwd,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run the docker CLI; its stdout. A failure names the command and its stderr."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def daemon() -> None:
    """Skip (fail under CI) unless the docker CLI and a running daemon are here."""
    required("docker", hint="apt-get install docker.io", tests="container")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        message = "the Docker daemon is not running (start dockerd; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the container tests, not skip them")
        pytest.skip(message)


def image_exists(tag: str) -> bool:
    inspect = ["docker", "image", "inspect", tag]
    return subprocess.run(inspect, capture_output=True, check=False, timeout=30).returncode == 0


def base_image() -> str:
    """BASE_IMAGE, built with debootstrap the first time."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    debootstrap = required("debootstrap", hint="apt-get install debootstrap", tests="container")
    with tempfile.TemporaryDirectory(prefix="skew-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
             str(rootfs), DEBIAN_MIRROR],
            capture_output=True, check=True, timeout=600,
        )  # fmt: skip
        # pip may install into the system Python, as in the official image.
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        if HOST_CA_BUNDLE.exists():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        docker("import", "-c", "ENV LANG=C.UTF-8", "-c", 'CMD ["python3"]', str(archive),
               BASE_IMAGE, timeout=300)  # fmt: skip
    return BASE_IMAGE


def build_image() -> str:
    """The Dockerfile at the top of the repo, built on BASE_IMAGE; its tag."""
    docker(
        "build", "--quiet", "--build-arg", f"PYTHON_IMAGE={base_image()}", "-t", IMAGE, str(ROOT),
        timeout=900,
    )  # fmt: skip
    return IMAGE


@contextmanager
def container(args: Sequence[str], name_prefix: str = "skew-test") -> Iterator[str]:
    """`docker run -d` with `args` (options, image, command); yields the container's name
    and removes it afterwards, also when `docker run` created it but failed to start it."""
    name = f"{name_prefix}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        docker("run", "-d", "--name", name, *args)
        yield name
    finally:
        docker("rm", "-f", name, check=False)


def published(name: str, port: int) -> str:
    """The base URL of the container's `port`, published on the host's loopback."""
    address = docker("port", name, f"{port}/tcp").splitlines()[0]
    host, _, host_port = address.rpartition(":")
    return f"http://127.0.0.1:{host_port}"


def logs(name: str) -> str:
    result = subprocess.run(
        ["docker", "logs", name], capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout + result.stderr


def metric_total(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` with `labels` in the metrics text at `url`
    (0 when there are none, or nothing answers yet)."""
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return 0.0
    return metric_sum(text, name, **labels)
