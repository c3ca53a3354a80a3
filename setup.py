"""The compiled parts, optional: without a C compiler the package installs and runs
the same code in pure Python (sidecar/gate.py, sidecar/records.py), only slower."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sidecar._gate",
            ["sidecar/_gate.c"],
            depends=["sidecar/_sampling.h", "sidecar/_counted.h"],
            optional=True,
        ),
        Extension("sidecar._records", ["sidecar/_records.c"], optional=True),
        Extension(
            "sidecar._tap", ["sidecar/_tap.c"], depends=["sidecar/_counted.h"], optional=True
        ),
        Extension("sidecar._block", ["sidecar/_block.c"], optional=True),
        Extension(
            "sidecar._sampling",
            ["sidecar/_sampling.c"],
            depends=["sidecar/_sampling.h"],
            optional=True,
        ),
    ]
)
