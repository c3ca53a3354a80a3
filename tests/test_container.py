"""The Dockerfile's image run by a real Docker daemon, as deploy/ runs it.

Each container gets the environment and security context its manifest gives it
(deploy/kubernetes): a read-only root file system, every capability dropped, no
privilege escalation, user 10001. The pod of model-server.yaml (a model server and the
sidecar sharing a socket volume) runs as two containers sharing a Docker volume.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar import Baseline, demo
from tests import containers
from tests.containers import container, docker, logs, metric_total, published
from tests.servers import eventually

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
ROWS = 40  # requests sent in each test: under the sidecar's default cap of 1,000/s


@pytest.fixture(scope="module")
def image() -> str:
    containers.daemon()
    return containers.build_image()


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The baselines deploy/kubernetes names, readable by user 10001: churn.json (the
    demo's training data) and sklearn-iris.json."""
    directory = tmp_path_factory.mktemp("baselines")
    Baseline.from_records(list(demo.training_rows(1000))).save(directory / "churn.json")
    iris = [{"sepal_length": 4.3 + i % 36 / 10, "petal_width": i % 25 / 10} for i in range(300)]
    Baseline.from_records(iris).save(directory / "sklearn-iris.json")
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


def manifest_container(file: str, name: str) -> dict[str, Any]:
    """A container's spec from a Deployment in deploy/kubernetes."""
    for doc in yaml.safe_load_all((KUBERNETES / file).read_text()):
        if doc and doc["kind"] == "Deployment":
            for spec in doc["spec"]["template"]["spec"]["containers"]:
                if spec["name"] == name:
                    return dict(spec)
    raise AssertionError(f"no container {name!r} in {file}")


def run_options(spec: dict[str, Any]) -> list[str]:
    """`docker run` options for a manifest container's env and securityContext."""
    options: list[str] = []
    for variable in spec.get("env", []):
        options += ["-e", f"{variable['name']}={variable['value']}"]
    context = spec.get("securityContext", {})
    if "runAsUser" in context:
        options += ["--user", str(context["runAsUser"])]
    if context.get("readOnlyRootFilesystem"):
        options += ["--read-only"]
    if context.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    for capability in context.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", capability]
    return options


def probe_paths(spec: dict[str, Any]) -> list[str]:
    return [spec[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def ready(base_url: str) -> bool:
    return answers(f"{base_url}/readyz")


def predict_rows(base_url: str) -> None:
    """ROWS KServe v1 requests of one demo row each, every one answered 2xx."""
    with httpx.Client(base_url=base_url, timeout=5) as client:
        for row in demo.training_rows(ROWS, seed=11):
            response = client.post(
                "/v1/models/churn:predict",
                content=json.dumps({"instances": [row]}, default=str).encode(),
                headers={"content-type": "application/json"},
            )
            assert 200 <= response.status_code < 300, response.text


def assert_all_checked(sidecar_url: str, *names: str) -> None:
    """The sidecar's churn model checked exactly ROWS rows (logs of `names` if not)."""

    def checked() -> float:
        return metric_total(f"{sidecar_url}/metrics", "skew_rows_checked_total", model="churn")

    assert eventually(lambda: checked() == ROWS, 10), (checked(), *map(logs, names))


@pytest.fixture
def sidecar(image: str, baselines: Path) -> Iterator[str]:
    """skew-sidecar as deploy/kubernetes/skew-sidecar.yaml runs it (its env, its
    securityContext), the baselines where the manifest mounts them; its base URL."""
    spec = manifest_container("skew-sidecar.yaml", "skew-sidecar")
    mount = spec["volumeMounts"][0]["mountPath"]
    with container(
        [*run_options(spec), "-p", "127.0.0.1::8090", "-v", f"{baselines}:{mount}:ro", image]
    ) as name:
        url = published(name, 8090)
        assert eventually(lambda: ready(url), 30), logs(name)
        yield name


def test_image_runs_the_sidecar_as_user_10001_on_a_read_only_root(sidecar: str) -> None:
    spec = manifest_container("skew-sidecar.yaml", "skew-sidecar")
    url = published(sidecar, 8090)
    for path in probe_paths(spec):
        assert httpx.get(f"{url}{path}", timeout=5).status_code == 200, path
    assert docker("exec", sidecar, "id", "-u") == "10001"
    written = subprocess.run(
        ["docker", "exec", sidecar, "touch", "/probe"], capture_output=True, text=True, check=False
    )
    assert written.returncode != 0
    assert "Read-only file system" in written.stderr


def test_mirrored_requests_to_the_container_are_all_checked(sidecar: str) -> None:
    url = published(sidecar, 8090)
    predict_rows(url)
    assert_all_checked(url, sidecar)


def test_docker_stop_flushes_the_windows_and_exits_cleanly(image: str, baselines: Path) -> None:
    with container(
        ["-e", "SKEW_SIDECAR_BASELINE=churn=/etc/skew/churn.json",
         "-e", "SKEW_SIDECAR_HOST=0.0.0.0",
         "-p", "127.0.0.1::8090", "-v", f"{baselines}:/etc/skew:ro", image]
    ) as name:  # fmt: skip
        url = published(name, 8090)
        assert eventually(lambda: ready(url), 30), logs(name)
        started = time.monotonic()
        docker("stop", "--time", "20", name, timeout=60)
        took = time.monotonic() - started
        status = docker("inspect", "--format", "{{.State.ExitCode}}", name)
        assert took < 10, f"docker stop took {took:.1f} s: SIGTERM was not handled"
        assert status == "0", logs(name)
        assert "every last window flushed" in logs(name)


def test_pod_model_server_taps_into_the_sidecar_through_a_shared_socket_volume(
    image: str, baselines: Path
) -> None:
    """model-server.yaml's pod: SkewMiddleware(sink=unix:///run/skew/tap.sock) in the
    model container, the sidecar listening there; one volume between them."""
    sidecar_spec = manifest_container("model-server.yaml", "skew-sidecar")
    model_spec = manifest_container("model-server.yaml", "model")
    tap = next(e["value"] for e in sidecar_spec["env"] if e["name"] == "SKEW_SIDECAR_TAP")
    socket_dir = next(m["mountPath"] for m in model_spec["volumeMounts"] if m["name"] == "skew-tap")
    baseline_dir = next(
        m["mountPath"] for m in sidecar_spec["volumeMounts"] if m["name"] == "baseline"
    )
    volume = docker("volume", "create")
    try:
        # The pod's fsGroup 10001 makes its emptyDir writable by group 10001 (set-group-ID:
        # what is created there belongs to the group); so here.
        docker("run", "--rm", "--user", "0", "-v", f"{volume}:/v", "--entrypoint", "sh", image,
               "-c", "chown 10001:10001 /v && chmod 2770 /v")  # fmt: skip
        with container(
            [*run_options(sidecar_spec), "-p", "127.0.0.1::8090",
             "-v", f"{volume}:{socket_dir}", "-v", f"{baselines}:{baseline_dir}:ro", image]
        ) as sidecar_name:  # fmt: skip
            sidecar_url = published(sidecar_name, 8090)
            assert eventually(lambda: ready(sidecar_url), 30), logs(sidecar_name)
            with container(
                # Another user than the sidecar's, in the pod's fsGroup: the socket is
                # the group's to write to.
                ["-e", f"SKEW_SINK={tap}", "-p", "127.0.0.1::8000",
                 "--user", "10002", "--group-add", "10001",
                 "-v", f"{volume}:{socket_dir}", "-v", f"{ROOT / 'deploy' / 'example'}:/example:ro",
                 "--entrypoint", "uvicorn", image,
                 "--factory", "--app-dir", "/example", "app:create_app",
                 "--host", "0.0.0.0", "--port", "8000"]
            ) as model_name:  # fmt: skip
                model_url = published(model_name, 8000)
                assert eventually(lambda: answers(f"{model_url}/healthz"), 30), logs(model_name)
                predict_rows(model_url)
                assert_all_checked(sidecar_url, sidecar_name, model_name)
    finally:
        docker("volume", "rm", "-f", volume, check=False)
