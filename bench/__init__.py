"""Benchmark and test helpers for :mod:`cachefs` (HTTP origin server, data)."""
