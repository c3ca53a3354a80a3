"""SkewMiddleware's per-request gate: the compiled one (sidecar/_gate.c) when it was
built, else a plain base class and the same decision made in Python.

Every request to a Starlette/FastAPI app passes the gate, sampled or not. In Python it
costs about as much as a no-op middleware does again: calling an instance's
`__call__`, then a few dict lookups and the sampler's countdown. The compiled gate does
the same lookups through the C API and hands unsampled requests to the app without
running any Python; everything else (sampled requests, paths not seen yet, lifespan,
websocket, the debug page) it passes to `SkewMiddleware._dispatch`, the Python
decision, so both gates behave the same.

`SKEW_SIDECAR_PURE_PYTHON=1` in the environment selects the Python gate even where the
compiled one was built (sidecar/compiled.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .compiled import PURE_PYTHON_ENV, compiled, pure_python_requested

__all__ = ["COMPILED", "PURE_PYTHON_ENV", "Gate", "PythonGate", "pure_python_requested"]


class PythonGate:
    """The Python gate's base: a subclass's `__call__` is its own `_dispatch`, the
    function itself (no frame of its own: it returns the app's coroutine), as the
    compiled gate calls `_dispatch` by name."""

    app: ASGIApp
    methods: frozenset[str]
    _routed: dict[str, Any]
    debug_paths: frozenset[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_dispatch" in cls.__dict__:
            cls.__call__ = cls.__dict__["_dispatch"]  # type: ignore[method-assign]

    if TYPE_CHECKING:  # what both gates do (the compiled one in C)

        def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]: ...


if TYPE_CHECKING:
    Gate = PythonGate
else:
    Gate = compiled("_gate", "Gate") or PythonGate
COMPILED = Gate is not PythonGate
