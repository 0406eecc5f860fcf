"""The policy registry and the LRU policy."""

from __future__ import annotations

import pytest

from cachefs.policy import (
    DiskEntry,
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
