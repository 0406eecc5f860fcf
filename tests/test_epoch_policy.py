"""Policies on shuffled epoch scans of a dataset 2x the disk budget.

The default (adaptive) and the epoch policy reach the bound; LRU does not.

Hit rates are measured from origin traffic, not from internal counters.
"""

from __future__ import annotations

import pytest

from bench.epoch_scan import hit_rates
from cachefs.policy import DEFAULT_POLICY
from cachefs.testing import make_shards
from cachefs.tiers.record import record_overhead

KiB = 1024
CHUNK = 64 * KiB
FILES = make_shards(32, 256 * KiB, seed=21, prefix="epoch/")  # 8 MiB, 128 chunks
DATASET = sum(len(v) for v in FILES.values())


@pytest.fixture(scope="module")
def rates() -> dict[str, list[float]]:
    policies = ("epoch", "lru", DEFAULT_POLICY)
    return {policy: hit_rates(FILES, policy, CHUNK) for policy in policies}


# The bound: what fits in the budget, chunk headers included.
BOUND = (DATASET // 2) / (DATASET + (DATASET // CHUNK) * record_overhead(CHUNK))


def test_epoch_policy_reaches_the_bound(rates):
    assert rates["epoch"][0] == 0.0  # a cold first epoch
    for rate in rates["epoch"][1:]:
        assert rate >= 0.95 * BOUND


def test_default_policy_reaches_the_bound(rates):
    # LRU, the old default, hit 0.16-0.22 of the data set here (bound 0.5).
    assert rates[DEFAULT_POLICY][0] == 0.0
    for rate in rates[DEFAULT_POLICY][1:]:
        assert rate >= 0.9 * BOUND


def test_lru_falls_below_the_epoch_policy(rates):
    assert sum(rates["lru"][1:]) < sum(rates["epoch"][1:])
