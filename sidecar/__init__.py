"""skew-sidecar: catch training/serving skew in production."""

__version__ = "0.1.0"

from .baseline import Baseline, BaselineError, ProfileSettings
from .debug import skew_app
from .engine import Engine
from .evidence import EvidenceOptions
from .metrics import metrics_app
from .middleware import SkewMiddleware
from .multiprocess import multiprocess_registry
from .profile import ProfileOptions
from .report import DriftRule, FeatureReport, WindowReport, build_report

__all__ = [
    "Baseline",
    "BaselineError",
    "DriftRule",
    "Engine",
    "EvidenceOptions",
    "FeatureReport",
    "ProfileOptions",
    "ProfileSettings",
    "SkewMiddleware",
    "WindowReport",
    "__version__",
    "build_report",
    "metrics_app",
    "multiprocess_registry",
    "skew_app",
]
