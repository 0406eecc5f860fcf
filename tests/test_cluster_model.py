"""Invariants of the cluster model (bench/cluster_model.py), real model code."""

from __future__ import annotations

import math

import pytest

from bench.cluster_model import Cluster, Shards, expected, node_streams, simulate

SHARDS = Shards(count=512, shard_bytes=1 << 20, chunk_bytes=1 << 20)


def cluster(policy: str, nvme: float, *, nodes: int = 1, shared: float = 0) -> Cluster:
    return Cluster(
        nodes=nodes,
        gpus_per_node=2,
        nvme_bytes=nvme,
        nvme_bw=1e9,
        nic_bw=1e9,
        shared_bytes=shared,
        shared_bw=1e10,
        origin_bw=1e9,
        policy=policy,
    )


def test_streams_split_every_shard_once_per_epoch():
    streams = node_streams(list(range(100)), nodes=4, gpus_per_node=2)
    seen = sorted(s for stream in streams for s in stream)
    assert set(seen) == set(range(100))
    assert len(seen) == 104  # padded to a multiple of the 8 ranks


@pytest.mark.parametrize("policy", ["lru", "epoch"])
def test_a_cache_holding_the_dataset_reads_the_origin_once(policy):
    figs = simulate(cluster(policy, 2 * SHARDS.nbytes), SHARDS, 3, seed=1)
    assert figs[0].origin_bytes == SHARDS.nbytes
    assert [f.origin_bytes for f in figs[1:]] == [0, 0]


def test_epoch_policy_at_half_the_dataset_fetches_half_per_epoch():
    figs = simulate(cluster("epoch", SHARDS.nbytes / 2), SHARDS, 4, seed=2)
    for f in figs[1:]:
        assert f.origin_fraction == pytest.approx(0.5, abs=0.01)
    lru = simulate(cluster("lru", SHARDS.nbytes / 2), SHARDS, 4, seed=2)
    assert all(
        b.origin_fraction > a.origin_fraction + 0.2
        for a, b in zip(figs[1:], lru[1:], strict=True)
    )


@pytest.mark.parametrize("policy", ["lru", "epoch"])
def test_expectation_matches_the_simulation(policy):
    shards = Shards(count=4096, shard_bytes=1 << 20, chunk_bytes=1 << 20)
    c = cluster(policy, shards.nbytes / 8, nodes=4, shared=shards.nbytes / 3)
    sim = simulate(c, shards, 4, seed=3)
    exp = expected(c, shards.nbytes, shards.chunk_bytes, 4)
    for s, e in zip(sim, exp, strict=True):
        assert e.disk_hit == pytest.approx(s.disk_hit, abs=0.02)
        # independence of disk and shared contents: a few % off (see expected)
        assert e.origin_fraction == pytest.approx(s.origin_fraction, abs=0.05)


def test_node_local_caches_miss_under_a_cross_node_shuffle():
    # Each epoch a node reads a new random 1/N: a node's disk serves only
    # (its size / dataset), however large the cluster's total.
    d = 1e15
    c = Cluster(100, 8, d / 100, 1e10, 1e10, 0, 1e12, 1e12, policy="epoch")
    assert expected(c, d, 1 << 26, 3)[-1].disk_hit == pytest.approx(0.01, rel=0.05)
    shared = Cluster(100, 8, 0, 1e10, 1e10, d, 1e12, 1e12, policy="epoch")
    last = expected(shared, d, 1 << 26, 3)[-1]
    assert last.origin_bytes == 0 and math.isfinite(last.per_gpu_bw)
