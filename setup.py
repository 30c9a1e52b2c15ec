"""Packaging shim: metadata lives in pyproject.toml; this file keeps `python setup.py` and
older tooling working."""

from setuptools import setup

setup()
