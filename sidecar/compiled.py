"""The optional compiled parts (sidecar/_gate.c, _records.c, _tap.c, _block.c and
_sampling.c): each is used where the install could build it, else the same work runs
in Python.

`SKEW_SIDECAR_PURE_PYTHON=1` in the environment selects Python even where they were
built (the tests run both ways).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

PURE_PYTHON_ENV = "SKEW_SIDECAR_PURE_PYTHON"


def pure_python_requested() -> bool:
    """`SKEW_SIDECAR_PURE_PYTHON` set to anything but empty or 0."""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def compiled(module: str, name: str) -> Any:
    """`name` from the compiled `sidecar.<module>`, or None: not built, or not wanted."""
    if pure_python_requested():
        return None
    try:
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    except ImportError:  # installed where no C compiler was found
        return None
