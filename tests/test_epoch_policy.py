"""Epoch policy vs LRU on shuffled epoch scans of a dataset 2x the disk budget.

Hit rates are measured from origin traffic, not from internal counters.
"""

from __future__ import annotations

import pytest

from bench.epoch_scan import hit_rates
from cachefs.testing import make_shards
from cachefs.tiers.disk import CHUNK_HEADER

KiB = 1024
CHUNK = 64 * KiB
FILES = make_shards(32, 256 * KiB, seed=21, prefix="epoch/")  # 8 MiB, 128 chunks
DATASET = sum(len(v) for v in FILES.values())


@pytest.fixture(scope="module")
def rates() -> dict[str, list[float]]:
    return {policy: hit_rates(FILES, policy, CHUNK) for policy in ("epoch", "lru")}


def test_epoch_policy_reaches_the_bound(rates):
    # The bound: what fits in the budget, chunk headers included.
    bound = (DATASET // 2) / (DATASET + (DATASET // CHUNK) * CHUNK_HEADER.size)
    assert rates["epoch"][0] == 0.0  # a cold first epoch
    for rate in rates["epoch"][1:]:
        assert rate >= 0.95 * bound


def test_lru_falls_below_the_epoch_policy(rates):
    assert sum(rates["lru"][1:]) < sum(rates["epoch"][1:])
