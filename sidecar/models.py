"""Model names: read from inference paths, given on the command line, and routed.

Pure functions and a frozen routing table: nothing here knows about HTTP servers or
Prometheus, so the in-app tap can reuse them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Model names we accept on the command line: Kubernetes-style names, plus the dots and
# underscores MLflow, Triton and TF Serving allow. They become the `model` label.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")

# The multi-model inference routes (the name is one path segment):
#   KServe v1 / TF Serving  /v1/models/{name}:predict
#                           /v1/models/{name}/versions/{v}:predict
#                           /v1/models/{name}/labels/{label}:predict
#   Open Inference Protocol /v2/models/{name}/infer
#   (KServe v2, Triton)     /v2/models/{name}/versions/{v}/infer
# Only predictions: `:explain`, `:classify`, metadata and readiness routes are not
# inference requests whose inputs the baseline describes.
_V1 = re.compile(r"/v1/models/([^/:]+)(?:/(?:versions|labels)/[^/:]+)?:predict/?")
_V2 = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer/?")


def model_from_path(path: str) -> str | None:
    """The model named by a multi-model inference route, or None for any other path.

    >>> model_from_path("/v2/models/churn/versions/3/infer")
    'churn'
    """
    match = _V1.fullmatch(path) or _V2.fullmatch(path)
    return match.group(1) if match else None


DEFAULT_MODEL = "default"


def parse_baseline_spec(spec: str) -> tuple[str | None, str]:
    """`NAME=PATH` -> (NAME, PATH); a bare `PATH` -> (None, PATH).

    A prefix before the first `=` counts as a name only if it is a valid model name, so
    a path that merely contains `=` (`runs/lr=0.1/baseline.json`) stays a path.
    """
    name, sep, path = spec.partition("=")
    if sep and MODEL_NAME.fullmatch(name):
        if not path:
            raise ValueError(f"--baseline {spec!r}: no path after {name}=")
        return name, path
    if not spec:
        raise ValueError("--baseline: empty value; give PATH or NAME=PATH")
    return None, spec


@dataclass(frozen=True)
class Routes:
    """Which model checks a sample, from the model name it carries (or None).

    - a name with a baseline of its own goes to that model;
    - no name goes to `default` (if there is one);
    - a name without a baseline goes to `default` only when `catch_all` is set (one
      unnamed `--baseline PATH`: "check everything against this"); otherwise it is
      unknown and the caller counts it. Either way the name never becomes a label.
    """

    models: frozenset[str]
    default: str | None = None
    catch_all: bool = False

    def __post_init__(self) -> None:
        if self.default is not None and self.default not in self.models:
            raise ValueError(f"default model {self.default!r} has no baseline")
        if self.catch_all and self.default is None:
            raise ValueError("catch_all needs a default model")

    @classmethod
    def from_specs(cls, names: list[str | None]) -> Routes:
        """The routing of `--baseline` options: an unnamed one is model `default` and
        takes every sample not named for another; a single named one also takes samples
        that name no model. Several unnamed ones, or a name given twice, are errors."""
        named = [n for n in names if n is not None]
        unnamed = len(names) - len(named)
        if not names:
            raise ValueError("no baseline: give --baseline PATH or --baseline NAME=PATH")
        if unnamed > 1:
            raise ValueError(
                f"{unnamed} baselines without a model name: name them, --baseline NAME=PATH"
            )
        duplicates = sorted({n for n in named if named.count(n) > 1})
        if duplicates:
            raise ValueError(f"model {duplicates[0]!r} has more than one --baseline")
        if unnamed:
            if DEFAULT_MODEL in named:
                raise ValueError(
                    f"an unnamed --baseline is model {DEFAULT_MODEL!r}, "
                    f"and --baseline {DEFAULT_MODEL}=... names it again"
                )
            return cls(frozenset([*named, DEFAULT_MODEL]), DEFAULT_MODEL, catch_all=True)
        return cls(frozenset(named), named[0] if len(named) == 1 else None)

    def resolve(self, name: str | None) -> str | None:
        """The model to check the sample against, or None (unknown: count, never label)."""
        if name is not None and name in self.models:
            return name
        if name is None or self.catch_all:
            return self.default
        return None
