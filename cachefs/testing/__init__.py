"""Test machinery shipped with cachefs: origins, fault wrappers, tier suites.

Like ``zarr.testing``, this lives in the package so that the project's tests,
its benchmarks and users' own test suites share one implementation:

:mod:`cachefs.testing.origin`
    `HTTPOrigin`, a loopback HTTP origin with latency and injected faults,
    and `make_shards`, deterministic files for it to serve.
:mod:`cachefs.testing.misbehaving_origin`
    `MisbehavingOrigin`, an origin that answers what was not asked.
:mod:`cachefs.testing.latency`
    `LatencyFileSystem`, any fsspec filesystem with latency and faults added.
:mod:`cachefs.testing.tiers`
    `TierTests` and `AsyncTierTests`, the suites every cache tier passes
    (they import pytest; nothing else here does).

Importing this package needs only cachefs's core dependencies.
"""

from __future__ import annotations

from cachefs.testing.latency import LatencyFileSystem
from cachefs.testing.loopback import LoopbackServer
from cachefs.testing.origin import HTTPOrigin, OriginStats, make_shards

__all__ = [
    "HTTPOrigin",
    "LatencyFileSystem",
    "LoopbackServer",
    "OriginStats",
    "make_shards",
]
