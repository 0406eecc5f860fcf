"""ChunkRouter built by hand over real tiers and a real origin.

A real RAM tier, a real :class:`~cachefs.tiers.diskset.DiskSet` of two
directories under ``tmp_path`` and a real :class:`~cachefs.fetch.Fetcher`
over the loopback HTTP origin (``origin`` in conftest): nothing of the code
under test is replaced. The origin's request counter is the witness.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import fsspec
import pytest

from cachefs.chunks import ChunkKey, FileVersion, version_token
from cachefs.fetch import Fetcher
from cachefs.policy import make_policy
from cachefs.router import ChunkRouter
from cachefs.testing import HTTPOrigin
from cachefs.testing.tiers import TierTests, chunk_data, chunk_key
from cachefs.tiers.base import NodeTier, Tier
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.diskset import DiskSet
from cachefs.tiers.ram import RamTier

T = TypeVar("T")
MiB = 2**20
CHUNK = 256 * 2**10


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


@asynccontextmanager
async def router_over(
    tmp_path: Path, *, ram_limit: int = 64 * MiB, retries: int = 0
) -> AsyncIterator[ChunkRouter]:
    """A router over RAM, two disk directories and an HTTP origin."""
    target = fsspec.filesystem("http", asynchronous=True, skip_instance_cache=True)
    session = await target.set_session()
    fetcher = Fetcher(target, retries=retries, backoff=0.0, timeout=10.0)
    ram = RamTier(ram_limit, make_policy("lru")) if ram_limit else None
    disks = DiskSet(
        [DiskTier(tmp_path / f"disk{i}", 64 * MiB, make_policy("lru")) for i in (0, 1)]
    )
    router = ChunkRouter(ram, disks, fetcher, max_coalesce=4 * CHUNK)
    router.loop = asyncio.get_running_loop()
    try:
        yield router
    finally:
        router.cancel_all()
        await router.drain()
        await session.close()


def version_of(origin: HTTPOrigin, name: str, data: bytes) -> FileVersion:
    """The version the origin serves of ``name``, as a resolver learns it."""
    url = origin.url_for(name)
    info = fsspec.filesystem("http", skip_instance_cache=True).info(url)
    return FileVersion("http", url, len(data), version_token(info))


def chunk_of(data: bytes, key: ChunkKey) -> bytes:
    return data[key.start : key.stop]


@pytest.fixture
def one_file(shard_files: dict[str, bytes]) -> tuple[str, bytes]:
    name = sorted(shard_files)[0]
    return name, shard_files[name]


def test_the_tiers_keep_the_protocols(tmp_path: Path) -> None:
    disks = DiskSet([DiskTier(tmp_path / "d", MiB, make_policy("lru"))])
    assert isinstance(disks, NodeTier) and isinstance(disks, Tier)
    assert isinstance(RamTier(MiB, make_policy("lru")), Tier)


def test_concurrent_misses_of_one_chunk_make_one_request(
    origin: HTTPOrigin, one_file: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = one_file
    version = version_of(origin, name, data)
    key = version.key(CHUNK, 3)

    async def body() -> None:
        async with router_over(tmp_path) as router:
            origin.reset_stats()
            views = await asyncio.gather(*(router.get_chunks([key]) for _ in range(16)))
            assert origin.stats.get_requests == 1
            assert router.stats.joined == 15
            assert all(bytes(v[0]) == chunk_of(data, key) for v in views)
            await router.drain()
            assert router.stats.fills == 1
            # Stored below: the chunk's own directory has it, another does not.
            placed = router.disk.tier_for(key) if router.disk else None
            assert placed is not None and placed.contains(key)
            others = [d for d in router.disks if d is not placed]
            assert not any(d.contains(key) for d in others)

    run(body)


def test_adjacent_misses_are_coalesced(
    origin: HTTPOrigin, one_file: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = one_file
    version = version_of(origin, name, data)
    keys = [version.key(CHUNK, i) for i in range(4)]

    async def body() -> None:
        async with router_over(tmp_path) as router:
            origin.reset_stats()
            views = await router.get_chunks(keys)
            await router.drain()
            assert origin.stats.get_requests == 1
            assert (router.stats.coalesced_requests, router.stats.fills) == (1, 4)
            assert [bytes(v) for v in views] == [chunk_of(data, k) for k in keys]

    run(body)


def test_a_disk_hit_is_promoted_to_ram(
    origin: HTTPOrigin, one_file: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = one_file
    version = version_of(origin, name, data)
    key = version.key(CHUNK, 1)

    async def body() -> None:
        async with router_over(tmp_path) as router:
            await router.get_chunks([key])
            await router.drain()
            ram = router.ram
            assert ram is not None
            ram.discard(key)
            disk = router.disk
            assert disk is not None and disk.contains(key)
            origin.reset_stats()
            view = router.get_cached(key)
            assert view is not None and bytes(view) == chunk_of(data, key)
            assert origin.stats.requests == 0
            if disk.in_memory(key):
                # Served in place from its map: a copy in RAM would gain nothing.
                assert router.stats.promotions == 0 and not ram.contains(key)
            else:
                assert router.stats.promotions == 1 and ram.contains(key)

    run(body)


def test_a_read_a_fresh_process_maps_is_served_in_place_and_not_promoted(
    origin: HTTPOrigin, one_file: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = one_file
    version = version_of(origin, name, data)
    key = version.key(CHUNK, 2)

    async def body() -> None:
        async with router_over(tmp_path) as router:
            await router.get_chunks([key])
            await router.drain()
        # A new router over the same directories: the chunk is on disk only.
        async with router_over(tmp_path) as fresh:
            assert fresh.ram is not None and not fresh.ram.contains(key)
            view = fresh.get_cached(key)
            assert view is not None and bytes(view) == chunk_of(data, key)
            disk = fresh.disk
            assert disk is not None and disk.in_memory(key)
            assert fresh.stats.promotions == 0

    run(body)


def test_without_ram_a_disk_hit_is_served_from_disk(
    origin: HTTPOrigin, one_file: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = one_file
    version = version_of(origin, name, data)
    key = version.key(CHUNK, 0)

    async def body() -> None:
        async with router_over(tmp_path, ram_limit=0) as router:
            await router.get_chunks([key])
            await router.drain()
            origin.reset_stats()
            view = router.get_cached(key)
            assert view is not None and bytes(view) == chunk_of(data, key)
            assert origin.stats.requests == 0

    run(body)


def test_a_failed_fetch_fails_every_waiter(
    origin: HTTPOrigin, one_file: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = one_file
    version = version_of(origin, name, data)
    key = version.key(CHUNK, 5)

    async def body() -> None:
        async with router_over(tmp_path) as router:
            origin.reset_stats()
            origin.fault_rate, origin.fault_kind = 1.0, "503"
            try:
                results = await asyncio.gather(
                    *(router.get_chunks([key]) for _ in range(8)),
                    return_exceptions=True,
                )
            finally:
                origin.fault_rate = 0.0
            # One fetch (no retries), and every one of its 8 waiters fails.
            assert origin.stats.get_requests == 1 and router.stats.joined == 7
            assert all(isinstance(r, OSError) for r in results), results
            assert router.inflight(key) is None  # nothing left in flight
            assert router.get_cached(key) is None  # nothing stored
            # The next read fetches again, and gets the bytes.
            view = (await router.get_chunks([key]))[0]
            assert bytes(view) == chunk_of(data, key)

    run(body)


def test_a_short_answer_fails_the_chunks_it_left_out(
    origin: HTTPOrigin, one_file: tuple[str, bytes], tmp_path: Path
) -> None:
    name, data = one_file
    version = version_of(origin, name, data)
    keys = [version.key(CHUNK, i) for i in range(8, 12)]

    async def body() -> None:
        async with router_over(tmp_path) as router:
            origin.fault_rate, origin.fault_kind = 1.0, "short"
            try:
                waits = [router.get_chunks([k]) for k in keys]
                results = await asyncio.gather(*waits, return_exceptions=True)
            finally:
                origin.fault_rate = 0.0
            # Every waiter ends: delivered (an early chunk) or failed.
            for key, result in zip(keys, results, strict=True):
                if isinstance(result, BaseException):
                    assert isinstance(result, OSError), result
                else:
                    assert bytes(result[0]) == chunk_of(data, key)
            assert any(isinstance(r, BaseException) for r in results)
            assert all(router.inflight(k) is None for k in keys)

    run(body)


class TestDiskSetIsATier(TierTests):
    """A set of two directories keeps the contract of one tier."""

    @pytest.fixture
    def make_tier(self, tmp_path: Path) -> Callable[[int], Tier]:
        made = iter(range(1 << 30))

        def make(limit: int) -> Tier:
            root = tmp_path / f"set-{next(made)}"
            shares = (limit - limit // 2, limit // 2)
            return DiskSet(
                [
                    DiskTier(root / f"d{i}", share, make_policy("lru"))
                    for i, share in enumerate(shares)
                ]
            )

        return make

    def test_a_chunk_larger_than_the_budget_is_refused_whole(
        self, make_tier: Callable[[int], Tier]
    ) -> None:
        pytest.skip("a set splits its budget: a chunk must fit one directory's share")


def test_a_chunk_has_one_directory_whatever_the_order(tmp_path: Path) -> None:
    tiers = [DiskTier(tmp_path / f"d{i}", MiB, make_policy("lru")) for i in range(3)]
    keys = [chunk_key(i) for i in range(64)]
    forward, backward = DiskSet(tiers), DiskSet(tiers[::-1])
    assert all(forward.tier_for(k) is backward.tier_for(k) for k in keys)
    # Spread over every directory, and a directory taken away moves only its own.
    assert {forward.tier_for(k).root for k in keys} == {t.root for t in tiers}
    fewer = DiskSet(tiers[:2])
    for key in keys:
        if forward.tier_for(key) is not tiers[2]:
            assert fewer.tier_for(key) is forward.tier_for(key)


def test_a_diskset_stores_in_the_chunks_directory(tmp_path: Path) -> None:
    tiers = [DiskTier(tmp_path / f"d{i}", MiB, make_policy("lru")) for i in range(2)]
    disks = DiskSet(tiers)
    keys = [chunk_key(i) for i in range(16)]
    for key in keys:
        assert disks.put(key, chunk_data(key))
    for key in keys:
        home = disks.tier_for(key)
        assert home.contains(key) and disks.contains(key)
        assert not any(t.contains(key) for t in tiers if t is not home)
        view = disks.get(key)
        assert view is not None and bytes(view) == chunk_data(key)
    assert len(disks) == 16 and disks.stats.puts == 16
    assert disks.usage() == sum(t.usage() for t in tiers)
    assert disks.limit == 2 * MiB
    lock = disks.stripe_lock(keys[0])
    assert lock.try_acquire()
    # The home tier's stripe: another descriptor (another process) is refused.
    from cachefs.tiers.locks import STRIPES_FILE, StripeLock, stripe_of

    home = disks.tier_for(keys[0]).root / "locks" / STRIPES_FILE
    assert not StripeLock(home, stripe_of(keys[0].digest)).try_acquire()
    assert StripeLock(home, stripe_of(keys[0].digest) ^ 1).try_acquire()
    lock.release()


def test_a_wait_for_another_process_lasts_one_fetch_budget(tmp_path: Path) -> None:
    from cachefs.tiers.locks import StripeLock
    from cachefs.tiers.waits import Turn, fetch_budget, wait_turn

    fetcher = Fetcher(fsspec.filesystem("memory"), retries=1, timeout=1.0)
    assert fetch_budget(fetcher) == pytest.approx(2 + 1.5 * 0.05)
    assert fetch_budget(Fetcher(fsspec.filesystem("memory"), timeout=None)) is None
    (tmp_path / "locks").mkdir()
    path = tmp_path / "locks" / "stripe"
    other = StripeLock(path)  # its own descriptor: excludes as another process
    assert other.try_acquire()

    async def scenario() -> None:
        began = asyncio.get_running_loop().time()
        assert await wait_turn(StripeLock(path), 0.2) is Turn.WAITED_OUT
        assert 0.2 <= asyncio.get_running_loop().time() - began < 5
        assert await wait_turn(StripeLock(path), None, lambda: True) is Turn.DONE
        asyncio.get_running_loop().call_later(0.05, other.release)
        mine = StripeLock(path)
        assert await wait_turn(mine, 5.0) is Turn.OURS and mine.held
        mine.release()

    asyncio.run(scenario())
