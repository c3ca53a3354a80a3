"""The bench scripts as modules, for the tests of their arithmetic and load generators."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench"


@contextmanager
def bench_modules(*names: str) -> Iterator[dict[str, ModuleType]]:
    """Loads bench/NAME.py for each name, in order, under its own name (the scripts
    import each other and their dataclasses look themselves up in sys.modules)."""
    sys.path.insert(0, str(BENCH))
    try:
        modules = {}
        for name in names:
            spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            modules[name] = module
        yield modules
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.path.remove(str(BENCH))
