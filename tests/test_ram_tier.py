"""The RAM tier: zero-copy views under a byte budget."""

from __future__ import annotations

import threading

from cachefs.chunks import FileVersion
from cachefs.policy import make_policy
from cachefs.tiers import RamTier, Tier

V = FileVersion("memory", "/f", 100 * 1024, "t")


def key(i: int):
    return V.key(1024, i)


def test_protocol_and_round_trip():
    tier = RamTier(10_000, make_policy("lru"))
    assert isinstance(tier, Tier)
    data = bytearray(b"x" * 1024)
    assert tier.get(key(0)) is None
    assert tier.put(key(0), data)
    view = tier.get(key(0))
    assert view is not None and view.readonly and bytes(view) == bytes(data)
    assert view.obj is data  # no copy was made
    assert tier.stats.hits == 1 and tier.stats.misses == 1


def test_budget_and_lru_eviction():
    tier = RamTier(4 * 1024, make_policy("lru"))
    for i in range(4):
        tier.put(key(i), bytes(1024))
    tier.get(key(0))  # 0 is now the most recent
    tier.put(key(4), bytes(1024))
    assert key(1) not in tier and key(0) in tier and key(4) in tier
    assert tier.usage() <= tier.limit
    assert tier.stats.evictions == 1
    assert not tier.put(key(9), bytes(5 * 1024))  # larger than the budget
    assert tier.stats.rejected == 1


def test_evicted_view_stays_valid():
    tier = RamTier(1024, make_policy("lru"))
    tier.put(key(0), b"a" * 1024)
    view = tier.get(key(0))
    tier.put(key(1), b"b" * 1024)
    assert key(0) not in tier
    assert view is not None and bytes(view) == b"a" * 1024


def test_concurrent_get_and_put_keep_the_budget():
    tier = RamTier(64 * 1024, make_policy("lru"))
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(2000):
                k = key((i + offset) % 100)
                if tier.get(k) is None:
                    tier.put(k, bytes(1024))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert tier.usage() == sum(1024 for _ in range(len(tier))) <= tier.limit
