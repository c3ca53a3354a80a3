"""The one compiled part, optional: without a C compiler the package installs and
runs the same pure-Python gate (sidecar/gate.py), only slower per request."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sidecar._gate", ["sidecar/_gate.c"], optional=True)])
