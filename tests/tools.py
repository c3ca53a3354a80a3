"""Programs from Debian's packages that tests run for real (prometheus, nginx, chromium).

`required(...)` finds one; a test without it is skipped with the install hint, except
under CI (the CI variable set), where it fails: CI installs them (.ci/run) and must run
their tests, not skip them silently.
"""

from __future__ import annotations

import os
import shutil

import pytest


def required(*names: str, hint: str, tests: str, also_in: str | None = None) -> str:
    """The path of the first of `names` on PATH (or in `also_in`, a PATH-like string);
    skips the calling test, or fails it under CI, naming the `tests` that need it."""
    for name in names:
        path = shutil.which(name) or (also_in and shutil.which(name, path=also_in))
        if path:
            return path
    message = f"{' or '.join(names)} is not installed: {hint}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the {tests} tests, not skip them")
    pytest.skip(message)
