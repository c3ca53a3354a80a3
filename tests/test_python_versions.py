"""The compiled parts and the serving path on the oldest and newest CPython we support.

The suite runs on one interpreter (the machine's 3.11). The C extensions lean on APIs
that moved between versions (a Python subclass inherits vectorcall only from 3.12 on;
the GC and reference-count details of the C API changed in 3.12 and 3.13), and so did
asyncio. So for 3.10 (the oldest `requires-python` admits) and 3.13 (the newest here),
this test installs the package into a fresh venv with pip, building the extensions the
way a user's pip does, and runs there the tests of the compiled gate, the record
reader, the middleware and the worker. CI=true is set for them, so an extension that
failed to build fails its test instead of leaving the pure-Python fallback in its place.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.tools import required

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ("3.10", "3.13")
TESTS = ("test_gate.py", "test_records.py", "test_middleware.py", "test_worker.py")
# What those tests import beyond the package and its `serve` extra.
TEST_REQUIREMENTS = ("pytest>=8", "hypothesis>=6.100", "fastapi>=0.115", "httpx>=0.27")
PYENV = os.pathsep.join(sorted(glob.glob("/root/.pyenv/versions/3.*/bin")))


def interpreter(version: str) -> str:
    """pyenv's build of `version` (its shims on PATH run only the selected one), else
    the one on PATH; skipped without one, failed under CI."""
    return shutil.which(f"python{version}", path=PYENV) or required(
        f"python{version}",
        hint=f"install CPython {version} (pyenv install {version})",
        tests="other Python versions'",
    )


def run_on(python: str, work: Path) -> subprocess.CompletedProcess[str]:
    """Install a copy of the package with `python` and run the tests in TESTS with it.

    The package is copied (sources only) so that nothing built for this interpreter
    lands in the repository, and the tests run from a copy of tests/ with no sidecar/
    beside it: `import sidecar` must find the installed package, extensions and all.
    """
    source = work / "source"
    shutil.copytree(
        REPO / "sidecar",
        source / "sidecar",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    steps = [
        [python, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
            "--disable-pip-version-check", f"{source}[serve]", *TEST_REQUIREMENTS,
        ],
        [
            str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-rs", *(f"tests/{name}" for name in TESTS),
        ],
    ]  # fmt: skip
    env = {**os.environ, "CI": "true"}
    env.pop("PYTHONPATH", None)
    env.pop("SKEW_SIDECAR_PURE_PYTHON", None)
    for step in steps:
        done = subprocess.run(step, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return done
    return done


def test_the_compiled_parts_build_and_pass_their_tests_on_the_oldest_and_newest_python(
    tmp_path: Path,
) -> None:
    pythons = {version: interpreter(version) for version in VERSIONS}
    running = sys.version_info[:2]
    # Two cores: both versions at once take about as long as one.
    with ThreadPoolExecutor(len(pythons)) as pool:
        runs = {
            version: pool.submit(run_on, python, tmp_path / version)
            for version, python in pythons.items()
            if tuple(map(int, version.split("."))) != running
        }
        results = {version: run.result() for version, run in runs.items()}
    failed = {v: r for v, r in results.items() if r.returncode != 0}
    assert not failed, "\n\n".join(
        f"Python {v}: {' '.join(r.args[:3])}... exited {r.returncode}\n{r.stdout[-4000:]}"
        f"\n{r.stderr[-4000:]}"
        for v, r in failed.items()
    )
    for version, done in results.items():
        summary = done.stdout.strip().splitlines()[-1]
        # Nothing skipped either: under CI a missing part fails rather than skips.
        assert " passed" in summary and "failed" not in summary and "skipped" not in summary, (
            version,
            done.stdout[-4000:],
        )
