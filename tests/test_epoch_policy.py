"""Epoch policy vs LRU on shuffled epoch scans of a dataset 2x the disk budget.

Hit rates are measured from origin traffic, not from internal counters.
"""

from __future__ import annotations

import random

import pytest

from bench.origin import HTTPOrigin, make_shards
from cachefs import CacheFileSystem
from cachefs.tiers.disk import CHUNK_HEADER

KiB = 1024
CHUNK = 64 * KiB
FILES = make_shards(32, 256 * KiB, seed=21, prefix="epoch/")  # 8 MiB, 128 chunks
DATASET = sum(len(v) for v in FILES.values())


def epoch_hit_rates(policy: str, cache_dir: str, epochs: int = 4) -> list[float]:
    limit = DATASET // 2
    with HTTPOrigin(files=FILES) as origin:
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=cache_dir,
            ram_limit=0,
            disk_limit=limit,
            chunk_size=CHUNK,
            policy=policy,
            metadata_ttl=None,
            skip_instance_cache=True,
        )
        names = sorted(FILES)
        rates = []
        for epoch in range(epochs):
            order = names[:]
            random.Random(epoch).shuffle(order)
            before = origin.stats.bytes_sent
            for name in order:
                assert fs.cat_file(origin.url_for(name)) == FILES[name]
                fs.wait_idle()
            rates.append(1 - (origin.stats.bytes_sent - before) / DATASET)
        return rates


@pytest.fixture(scope="module")
def rates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    return {
        policy: epoch_hit_rates(policy, str(tmp_path_factory.mktemp(policy)))
        for policy in ("epoch", "lru")
    }


def test_epoch_policy_reaches_the_bound(rates):
    # The bound: what fits in the budget, chunk headers included.
    bound = (DATASET // 2) / (DATASET + (DATASET // CHUNK) * CHUNK_HEADER.size)
    assert rates["epoch"][0] == 0.0  # a cold first epoch
    for rate in rates["epoch"][1:]:
        assert rate >= 0.95 * bound


def test_lru_falls_below_the_epoch_policy(rates):
    assert sum(rates["lru"][1:]) < sum(rates["epoch"][1:])
