"""The benchmarks' HTTP origin: :mod:`cachefs.testing.origin`, re-exported.

`HTTPOrigin` (loopback HTTP with ranges, ETags, latency, bandwidth caps and
injected faults) and `make_shards` live in the package, so that the test
suite depends on cachefs alone. New code imports them from
:mod:`cachefs.testing`; this module keeps the old import path working.
"""

from __future__ import annotations

from cachefs.testing.origin import FAULT_KINDS, HTTPOrigin, OriginStats, make_shards

__all__ = ["FAULT_KINDS", "HTTPOrigin", "OriginStats", "make_shards"]
