"""The compiled parts, built in the ways the suite's own build does not cover.

- **Other Python versions.** The suite runs on one interpreter (the machine's 3.11). The
  C extensions lean on APIs that moved between versions (a Python subclass inherits
  vectorcall only from 3.12 on; reference-count and GC details of the C API changed in
  3.12 and 3.13), and so did asyncio. For 3.10 (the oldest `requires-python` admits)
  and 3.13 (the newest here), the package is installed into a fresh venv with pip,
  extensions built as a user's pip builds them, and the gate's, the reader's, the
  middleware's and the worker's tests run there.
- **AddressSanitizer and UBSan.** The gate runs on every request and the reader on
  request bodies from anyone: a read past a buffer there is a crash or a leak in the
  model server. Both extensions are built with `-fsanitize=address,undefined` and the
  gate's, reader's, middleware's and hostile-input tests run against them, with
  PYTHONMALLOC=malloc so every bytes object is a block of its own whose end ASan sees.

The tests run from a copy of tests/ with no sidecar/ beside it, so `import sidecar`
finds the build under test, and CI=true is set for them: a compiled part that did not
build fails its test instead of leaving the pure-Python fallback in its place. The
three builds run at once (two cores: about 90 s in all, against 130 one after another).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tools import required

REPO = Path(__file__).resolve().parent.parent
EXTENSIONS = ("_gate", "_records", "_tap", "_block", "_sampling")
VERSIONS = ("3.10", "3.13")
VERSION_TESTS = (
    "test_engine.py",
    "test_gate.py",
    "test_records.py",
    "test_middleware.py",
    "test_sample_queue.py",
    "test_sampling_compiled.py",
    "test_tap_awaiting.py",
    "test_worker.py",
)
# What those tests import beyond the package and its `serve` extra.
TEST_REQUIREMENTS = ("pytest>=8", "hypothesis>=6.100", "fastapi>=0.115", "httpx>=0.27")
SANITIZED_TESTS = (
    "test_engine.py",
    "test_gate.py",
    "test_records.py",
    "test_middleware.py",
    "test_hostile.py",
    "test_sample_queue.py",
    "test_sampling_compiled.py",
    "test_tap_awaiting.py",
)
# Runs the middleware tests again in pure Python: nothing compiled to sanitize.
NOT_SANITIZED = "not test_the_python_gate_passes_the_middleware_tests"
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all")
PYENV = os.pathsep.join(sorted(glob.glob("/root/.pyenv/versions/3.*/bin")))

Run = subprocess.CompletedProcess[str]


@dataclass
class Outcome:
    run: Run  # the last step run: the first that failed, or the tests
    reports: str = ""  # what the sanitizers wrote


def find_interpreter(version: str) -> str | None:
    """pyenv's build of `version` (its shims on PATH run only the selected one), else
    the one on PATH."""
    return shutil.which(f"python{version}", path=PYENV) or shutil.which(f"python{version}")


def find_libasan() -> str | None:
    """ASan's runtime, preloaded into the (uninstrumented) interpreter."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    done = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = done.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def copy_tests(work: Path) -> None:
    shutil.copytree(REPO / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))


def run_steps(steps: list[list[str]], work: Path, env: dict[str, str]) -> Run:
    """Each step in turn, up to the first that fails; the last one run."""
    for step in steps:
        done = subprocess.run(step, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            break
    return done


def ci_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "CI": "true", **extra}
    env.pop("SKEW_SIDECAR_PURE_PYTHON", None)
    return env


def on_version(python: str, work: Path) -> Outcome:
    """Install a copy of the package (sources only: nothing built for this interpreter
    lands in the repository) with `python`, and run VERSION_TESTS with it."""
    source = work / "source"
    shutil.copytree(
        REPO / "sidecar", source / "sidecar", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    copy_tests(work)
    venv_python = str(work / "venv" / "bin" / "python")
    steps = [
        [python, "-m", "venv", str(work / "venv")],
        [
            venv_python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
            f"{source}[serve]", *TEST_REQUIREMENTS,
        ],
        [
            venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            *(f"tests/{name}" for name in VERSION_TESTS),
        ],
    ]  # fmt: skip
    env = ci_env()
    env.pop("PYTHONPATH", None)
    return Outcome(run_steps(steps, work, env))


def sanitized(libasan: str, work: Path) -> Outcome:
    """Build the extensions with ASan and UBSan beside a copy of the package, for this
    interpreter, and run SANITIZED_TESTS against them."""
    package = work / "package" / "sidecar"
    shutil.copytree(REPO / "sidecar", package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    copy_tests(work)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    include = sysconfig.get_paths()["include"]
    steps = [
        [
            "gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", *SANITIZE,
            f"-I{include}", "-o", str(package / f"{name}{suffix}"), str(package / f"{name}.c"),
        ]
        for name in EXTENSIONS
    ]  # fmt: skip
    steps.append(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", NOT_SANITIZED,
            *(f"tests/{name}" for name in SANITIZED_TESTS),
        ]
    )  # fmt: skip
    logs = work / "sanitizer"
    logs.mkdir()
    env = ci_env(
        PYTHONPATH=str(package.parent),
        PYTHONMALLOC="malloc",
        LD_PRELOAD=libasan,
        # Reports go to files: pytest's capture would lose what a dying process wrote.
        ASAN_OPTIONS=f"detect_leaks=0:log_path={logs / 'asan'}",
        UBSAN_OPTIONS=f"print_stacktrace=1:log_path={logs / 'ubsan'}",
    )
    done = run_steps(steps, work, env)
    return Outcome(done, "\n".join(p.read_text()[:6000] for p in sorted(logs.iterdir())))


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Outcome]]]:
    """Every build whose tools are here, started at once; a test finds its own missing."""
    jobs: dict[str, Future[Outcome]] = {}
    with ThreadPoolExecutor(3) as pool:
        for version in VERSIONS:
            python = find_interpreter(version)
            if python is not None:
                jobs[version] = pool.submit(on_version, python, tmp_path_factory.mktemp(version))
        libasan = find_libasan()
        if libasan is not None:
            jobs["sanitized"] = pool.submit(sanitized, libasan, tmp_path_factory.mktemp("asan"))
        yield jobs


def assert_passed(label: str, outcome: Outcome) -> None:
    done = outcome.run
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else ""
    # Nothing skipped either: under CI a missing part fails rather than skips.
    passed = " passed" in summary and not any(
        word in summary for word in ("failed", "skipped", "error")
    )
    assert done.returncode == 0 and passed and not outcome.reports, (
        f"{label}: {' '.join(map(str, done.args[:4]))}... exited {done.returncode}\n"
        f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n{outcome.reports}"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_the_compiled_parts_build_and_pass_their_tests_on_python(
    builds: dict[str, Future[Outcome]], version: str
) -> None:
    if version not in builds:
        required(
            f"python{version}",
            hint=f"install CPython {version} (pyenv install {version})",
            tests=f"Python {version}",
        )
    assert_passed(f"Python {version}", builds[version].result())


def test_the_compiled_parts_pass_their_tests_under_address_and_undefined_sanitizers(
    builds: dict[str, Future[Outcome]],
) -> None:
    if "sanitized" not in builds:
        required(
            "libasan.so (gcc -print-file-name=libasan.so)",
            hint="install gcc and libasan8 (apt-get install -y gcc libasan8)",
            tests="AddressSanitizer",
        )
    assert_passed("ASan/UBSan", builds["sanitized"].result())
