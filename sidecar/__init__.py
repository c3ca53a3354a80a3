"""skew-sidecar: catch training/serving skew in production."""

__version__ = "0.1.0"
