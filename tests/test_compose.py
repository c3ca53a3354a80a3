"""deploy/compose.yaml brought up by docker-compose against a real Docker daemon.

No registry is reachable here, so three things differ from `docker compose up --build`,
each written into a copy of the file (the services, commands, volumes, healthcheck
and dependencies stay as they are):
- nginx and Prometheus run in stand-in images built from Debian's packages on the
  local Debian image (tests/containers.py), answering the same config paths;
- Grafana is left out (no Debian package; its provisioning is checked elsewhere);
- the project's image is the one tests/containers.py builds, and no port is published
  on the host (the containers are reached at their addresses on the compose network);
- the top-level `name` goes (Debian's docker-compose is 1.29, which predates it; the
  project is named with -p instead).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import containers
from tests.containers import docker, metric_total
from tests.servers import eventually
from tests.tools import required

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# compose image -> (stand-in tag, Dockerfile lines after FROM the local Debian image)
STAND_INS = {
    "nginx:1.27-alpine": (
        "skew-test/nginx:local",
        [
            "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx"
            " && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default",
            'CMD ["nginx", "-g", "daemon off;"]',
        ],
    ),
    "prom/prometheus:v2.53.0": (
        "skew-test/prometheus:local",
        [
            "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends"
            " prometheus && rm -rf /var/lib/apt/lists/*",
            # The official image's entry point and default flags.
            'ENTRYPOINT ["prometheus"]',
            'CMD ["--config.file=/etc/prometheus/prometheus.yml",'
            ' "--storage.tsdb.path=/tmp/prometheus"]',
        ],
    ),
}
LEFT_OUT = ("grafana",)


def stand_in(image: str) -> str:
    tag, lines = STAND_INS[image]
    if not containers.image_exists(tag):
        dockerfile = "\n".join([f"FROM {containers.base_image()}", *lines]) + "\n"
        result = subprocess.run(
            ["docker", "build", "--quiet", "-t", tag, "-"],
            input=dockerfile, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"building the stand-in for {image} failed:\n{result.stderr}")
    return tag


def compose_for_test(image: str) -> dict[str, Any]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    compose.pop("name")
    for name in LEFT_OUT:
        del compose["services"][name]
    for service in compose["services"].values():
        service.pop("ports", None)
        if service.get("image") in STAND_INS:
            service["image"] = stand_in(service["image"])
        elif "build" in service:
            service.pop("build")
            service["image"] = image
    return dict(compose)


def address(project: str, service: str) -> str:
    name = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                  "--filter", f"label=com.docker.compose.service={service}")  # fmt: skip
    assert name, f"no running container for {service}"
    return docker(
        "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    containers.daemon()
    compose_cli = required("docker-compose", hint="apt-get install docker-compose", tests="compose")
    image = containers.build_image()
    path = tmp_path_factory.mktemp("compose") / "compose.yaml"
    path.write_text(yaml.safe_dump(compose_for_test(image), sort_keys=False))
    name = f"skewtest{os.getpid()}"
    command = [compose_cli, "-p", name, "-f", str(path), "--project-directory", str(DEPLOY)]
    try:
        up = subprocess.run(
            [*command, "up", "-d"], capture_output=True, text=True, timeout=600, check=False
        )
        assert up.returncode == 0, up.stderr[-3000:]
        yield name
    finally:
        subprocess.run([*command, "down", "-v", "--timeout", "5"], capture_output=True,
                       timeout=300, check=False)  # fmt: skip


def test_compose_traffic_is_checked_in_process_and_through_the_nginx_mirror(
    project: str,
) -> None:
    model = f"http://{address(project, 'churn-model')}:8000/metrics/"
    sidecar = f"http://{address(project, 'skew-sidecar')}:8090/metrics"
    in_process = lambda: metric_total(model, "skew_rows_checked_total", model="churn")  # noqa: E731
    mirrored = lambda: metric_total(sidecar, "skew_rows_checked_total", model="default")  # noqa: E731
    assert eventually(lambda: in_process() > 0 and mirrored() > 0, 60), (in_process(), mirrored())


def test_compose_prometheus_scrapes_both_and_loads_the_rules(project: str) -> None:
    prometheus = f"http://{address(project, 'prometheus')}:9090"

    def up() -> dict[str, float]:
        try:
            result = httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}, timeout=2)
        except httpx.HTTPError:
            return {}
        return {r["metric"]["job"]: float(r["value"][1]) for r in result.json()["data"]["result"]}

    assert eventually(lambda: up() == {"model-server": 1.0, "skew-sidecar": 1.0}, 60), up()
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    for path in ("recording_rules.yml", "alert_rules.yml"):
        rules = yaml.safe_load((DEPLOY / "prometheus" / path).read_text())["groups"]
        for group in rules:
            for rule in group["rules"]:
                assert rule.get("record", rule.get("alert")) in loaded, (path, rule)
