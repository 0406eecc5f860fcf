"""Test machinery shipped with cachefs: origins that behave and misbehave.

Like ``zarr.testing``, this lives in the package so that the project's tests,
its benchmarks and users' own test suites share one implementation.
"""
