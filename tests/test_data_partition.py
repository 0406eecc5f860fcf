"""Partition arithmetic: World.rank_samples/worker_range and rank_plan."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from cachefs.data.partition import cut, length, rank_plan
from cachefs.data.world import World


def expand(spans):
    return [(s, i) for s, a, b in spans for i in range(a, b)]


def test_rank_samples_drop_and_pad():
    assert World(0, 3).rank_samples(10) == 3
    assert World(0, 3).rank_samples(10, drop_last=False) == 4
    assert World(0, 4).rank_samples(3) == 0
    assert World(0, 4).rank_samples(3, drop_last=False) == 1
    with pytest.raises(ValueError, match="total"):
        World().rank_samples(-1)


def test_worker_ranges_tile_the_rank_and_match_across_ranks():
    for n in (0, 1, 7, 100):
        for k in (1, 2, 3, 4):
            parts = [World(0, 1, w, k).worker_range(n) for w in range(k)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1
            # Another rank with the same count splits it alike.
            assert [World(2, 3, w, k).worker_range(n) for w in range(k)] == parts


def test_cut_wraps_and_joins():
    spans = [(0, 0, 3), (1, 0, 0), (2, 5, 7)]
    assert cut(spans, 1, 4) == [(0, 1, 3), (2, 5, 6)]
    assert cut(spans, 3, 8) == [(2, 5, 7), (0, 0, 3)]
    assert cut(spans, 4, 11) == [(2, 6, 7), (0, 0, 3), (2, 5, 7), (0, 0, 1)]
    assert cut([(0, 0, 2), (0, 2, 5)], 0, 5) == [(0, 0, 5)]
    assert cut([], 0, 0) == []
    with pytest.raises(ValueError):
        cut([(0, 0, 0)], 0, 1)


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_plans_are_disjoint_equal_and_cover(drop_last):
    rng = random.Random(5)
    for _ in range(200):
        world_size = rng.randint(1, 6)
        counts = [rng.choice([0, 1, 5, 20, 33]) for _ in range(rng.randint(0, 9))]
        shards = list(range(len(counts)))
        sequences = []
        for r in range(world_size):
            own = World(r, world_size).rank_share(shards)
            rng.shuffle(own)
            sequences.append([(s, 0, counts[s]) for s in own])
        total = sum(counts)
        n = World(0, world_size).rank_samples(total, drop_last=drop_last)
        plans = [rank_plan(sequences, n, r) for r in range(world_size)]
        assert [length(p) for p in plans] == [n] * world_size
        seen = Counter(x for p in plans for x in expand(p))
        everything = {(s, i) for s in shards for i in range(counts[s])}
        assert set(seen) <= everything
        if drop_last:
            assert all(c == 1 for c in seen.values())
            assert len(everything - set(seen)) == total % world_size
        else:
            assert set(seen) == everything
            assert sum(seen.values()) - total == n * world_size - total
        # A rank keeps its own shards' samples when it has enough.
        for r, plan in enumerate(plans):
            own = {s for s, _, _ in sequences[r]}
            if length(sequences[r]) >= n:
                assert {s for s, _, _ in plan} <= own
