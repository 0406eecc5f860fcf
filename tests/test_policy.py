"""The policy registry, the LRU policy and the default (adaptive) policy.

The adaptive policy is replayed over traces against a model of the disk
tier's scans; bench/epoch_scan.py and tests/test_epoch_policy.py measure it
through the real disk tier.
"""

from __future__ import annotations

import random
import sys
import threading

import pytest

from cachefs.policy import (
    DEFAULT_POLICY,
    AdaptivePolicy,
    DiskEntry,
    EpochPolicy,
    EvictionPolicy,
    LRUPolicy,
    available_policies,
    make_policy,
    register_policy,
)


def test_registry_knows_lru_and_rejects_unknown():
    assert "lru" in available_policies()
    assert isinstance(make_policy("lru"), LRUPolicy)
    with pytest.raises(ValueError, match="policy='bogus'"):
        make_policy("bogus")


def test_register_rejects_nameless_and_duplicates():
    class Nameless(EvictionPolicy):
        pass

    with pytest.raises(ValueError, match="no name"):
        register_policy(Nameless)

    class Clash(EvictionPolicy):
        name = "lru"

    with pytest.raises(ValueError, match="already registered"):
        register_policy(Clash)


@pytest.mark.parametrize("name", available_policies())
def test_every_policy_names_each_victim_once(name):
    policy = make_policy(name)
    for key in "abcd":
        policy.inserted(key)
    policy.accessed("a")
    victims = []
    for victim in policy.victims():
        victims.append(victim)
        policy.removed(victim)
        if len(victims) == 4:
            break
    assert len(set(victims)) == len(victims)


@pytest.mark.parametrize("name", ["lru", "adaptive"])
def test_victims_tolerate_hits_from_other_threads(name):
    # The RAM tier calls accessed() without its lock: a hit's move_to_end
    # may land between victims()'s iter() and next(). A switch interval of
    # a microsecond makes that interleaving common instead of rare.
    policy = make_policy(name)
    keys = [f"k{i}" for i in range(64)]
    for key in keys:
        policy.inserted(key)
    done = threading.Event()

    def hits() -> None:
        while not done.is_set():
            for key in keys:
                policy.accessed(key)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=hits)
    thread.start()
    try:
        for _ in range(20_000):
            victim = next(policy.victims())
            assert victim in keys
            policy.removed(victim)
            policy.inserted(victim)
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(before)


def test_lru_order_and_rank():
    policy = LRUPolicy()
    for key in "abc":
        policy.inserted(key)
    policy.accessed("a")
    policy.accessed("zz")  # a key removed meanwhile is ignored
    first = next(policy.victims())
    assert first == "b"
    entries = [
        DiskEntry("x", 1, 30.0),
        DiskEntry("y", 1, 10.0),
        DiskEntry("z", 1, 20.0),
    ]
    assert [e.name for e in policy.rank(entries)] == ["y", "z", "x"]


def _simulate(policy: EvictionPolicy, trace: list[int], capacity: int) -> list[bool]:
    """Replay ``trace`` over a disk tier of ``capacity`` unit chunks.

    The tier is modelled as the disk tier behaves: an access refreshes the
    entry's mtime, a miss adds one, and a tier over budget hands the policy
    a scan and evicts its ranking's front down to 95% of the budget.
    """
    mtimes: dict[str, float] = {}
    hits = []
    policy.admit(1, 0, capacity)
    for step, key in enumerate(trace):
        name, now = f"{key:040x}", 100.0 * (step + 1)
        hits.append(name in mtimes)
        mtimes[name] = now
        if len(mtimes) > capacity:
            scan = [DiskEntry(n, 1, t) for n, t in mtimes.items()]
            if isinstance(policy, AdaptivePolicy):
                ranked = policy.rank(scan, now)
            else:
                ranked = policy.rank(scan)
            for entry in ranked:
                if len(mtimes) <= int(capacity * 0.95):
                    break
                del mtimes[entry.name]
    return hits


def _epochs(items: int, epochs: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    trace = []
    for _ in range(epochs):
        order = list(range(items))
        rng.shuffle(order)
        trace += order
    return trace


def test_default_is_adaptive():
    assert DEFAULT_POLICY == "adaptive"
    assert isinstance(make_policy(DEFAULT_POLICY), AdaptivePolicy)


@pytest.mark.parametrize("shuffled", [True, False])
def test_adaptive_reaches_the_bound_on_cyclic_epochs(shuffled):
    # A data set twice the tier, read whole each epoch: LRU evicts each chunk
    # just before its next read; the default keeps what it holds.
    items, capacity = 128, 64
    trace = _epochs(items, 5) if shuffled else list(range(items)) * 5
    bound = capacity / items
    for policy, floor in ((AdaptivePolicy(), 0.9), (LRUPolicy(), None)):
        hits = _simulate(policy, trace, capacity)
        rates = [sum(hits[e * items : (e + 1) * items]) / items for e in range(5)]
        if floor is None:
            assert max(rates[1:]) < 0.5 * bound
        else:
            assert min(rates[1:]) >= floor * bound


def test_adaptive_follows_a_working_set_that_moves():
    # A hot set smaller than the tier moves twice; the epoch policy keeps the
    # first one forever, the default follows it as LRU does.
    rng = random.Random(3)
    capacity, hot, phase = 64, 48, 3000
    trace = [p * 1000 + rng.randrange(hot) for p in range(3) for _ in range(phase)]
    for policy in (AdaptivePolicy(), LRUPolicy()):
        hits = _simulate(policy, trace, capacity)
        for p in range(3):
            assert sum(hits[p * phase : (p + 1) * phase]) / phase > 0.9
    # The epoch policy's ranking (the model admits everything) stays stuck.
    hits = _simulate(EpochPolicy(), trace, capacity)
    assert sum(hits[2 * phase :]) / phase < 0.5


def test_adaptive_keeps_skewed_random_access_as_lru_does():
    rng = random.Random(5)
    weights = [1 / (i + 1) for i in range(640)]
    trace = rng.choices(range(640), weights=weights, k=20000)
    rates = {}
    for policy in (AdaptivePolicy(), LRUPolicy()):
        hits = _simulate(policy, trace, 64)[5000:]
        rates[policy.name] = sum(hits) / len(hits)
    assert rates["adaptive"] >= 0.9 * rates["lru"]


def test_adaptive_forgets_what_it_evicts():
    # A chunk evicted and fetched again is a new file: not a re-read one.
    policy = AdaptivePolicy()
    policy.admit(1, 0, 2)
    first = [DiskEntry("a", 1, 1.0), DiskEntry("b", 1, 2.0), DiskEntry("c", 1, 3.0)]
    assert [e.name for e in policy.rank(first, 3.0)] == ["c", "b", "a"]
    # "c" and "b" went; "c" came back with a new mtime, "a" was re-read.
    again = [DiskEntry("a", 1, 4.0), DiskEntry("c", 1, 5.0), DiskEntry("d", 1, 6.0)]
    assert [e.name for e in policy.rank(again, 6.0)] == ["d", "c", "a"]
