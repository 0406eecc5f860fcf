"""Router and resolver over a slow, faulty origin (``LatencyFileSystem``).

The origin is a local directory behind :class:`cachefs.testing.LatencyFileSystem`
(as zarr tests stores behind its ``LatencyStore``): real bytes, real tiers,
real fetcher; only the distance and the faults are made up. The wrapper's
call counts are the witness.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fsspec.implementations.local import LocalFileSystem

from cachefs.config import CacheConfig
from cachefs.fetch import Fetcher
from cachefs.metadata import MetadataCache
from cachefs.policy import make_policy
from cachefs.router import ChunkRouter
from cachefs.testing import LatencyFileSystem
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.ram import RamTier
from cachefs.versions import VersionResolver

T = TypeVar("T")
MiB = 2**20
CHUNK = 256 * 2**10


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[str, bytes]:
    data = random.Random(5).randbytes(6 * CHUNK + 777)
    path = tmp_path / "origin" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    return str(path), data


@asynccontextmanager
async def parts(
    tmp_path: Path, slow: LatencyFileSystem, **settings: Any
) -> AsyncIterator[VersionResolver]:
    """A resolver and its router (RAM + disk) over ``slow``."""
    config = CacheConfig.from_kwargs(chunk_size=CHUNK, **settings)
    fetcher = Fetcher.from_config(slow, config.fetch)
    fetcher.backoff = 0.0
    ram = RamTier(64 * MiB, make_policy("lru"))
    disk = DiskTier(tmp_path / "disk", 64 * MiB, make_policy("lru"))
    router = ChunkRouter(ram, [disk], fetcher, max_coalesce=config.max_coalesce)
    router.loop = asyncio.get_running_loop()
    metadata = MetadataCache(config.metadata_ttl, tmp_path / "disk" / "meta")
    try:
        yield VersionResolver(config, "file", metadata, fetcher, router)
    finally:
        router.cancel_all()
        await router.drain()


def test_concurrent_misses_wait_for_one_slow_read(
    tmp_path: Path, stored: tuple[str, bytes]
) -> None:
    path, data = stored
    slow = LatencyFileSystem(LocalFileSystem(), latency=0.05)

    async def body() -> None:
        async with parts(tmp_path, slow) as resolver:
            version = await resolver.version(path)
            key = version.key(CHUNK, 2)
            slow.calls.clear()
            views = await asyncio.gather(
                *(resolver.router.get_chunks([key]) for _ in range(12))
            )
            assert {bytes(v[0]) for v in views} == {data[key.start : key.stop]}
            assert slow.calls["cat_file"] == 1  # one read, eleven joined it
            assert resolver.router.stats.joined == 11

    run(body)


def test_a_fault_is_retried_and_the_bytes_are_exact(
    tmp_path: Path, stored: tuple[str, bytes]
) -> None:
    path, data = stored
    slow = LatencyFileSystem(
        LocalFileSystem(), latency=0.01, fail_first=1, methods={"cat_file"}
    )

    async def body() -> None:
        async with parts(tmp_path, slow, retries=2) as resolver:
            version = await resolver.version(path)
            keys = resolver.keys(version, 0, version.size)
            views = await resolver.router.get_chunks(keys)
            assert b"".join(bytes(v) for v in views) == data
            # The coalesced read failed once and was read again, whole.
            assert slow.faults == 1 and slow.calls["cat_file"] == 2

    run(body)


def test_a_fault_that_persists_fails_every_waiter_and_leaves_nothing(
    tmp_path: Path, stored: tuple[str, bytes]
) -> None:
    path, data = stored
    slow = LatencyFileSystem(LocalFileSystem(), latency=0.01, methods={"cat_file"})

    async def body() -> None:
        async with parts(tmp_path, slow, retries=1) as resolver:
            version = await resolver.version(path)
            key = version.key(CHUNK, 4)
            slow.fail_rate = 1.0
            results = await asyncio.gather(
                *(resolver.router.get_chunks([key]) for _ in range(6)),
                return_exceptions=True,
            )
            # Every waiter gets the error, which names the path it read.
            assert len(results) == 6
            assert all(isinstance(r, ConnectionError) for r in results), results
            assert all(path in str(r) for r in results)
            assert slow.calls["cat_file"] == 2  # the read and its one retry
            assert resolver.router.inflight(key) is None
            assert resolver.router.get_cached(key) is None
            slow.fail_rate = 0.0
            (view,) = await resolver.router.get_chunks([key])
            assert bytes(view) == data[key.start : key.stop]

    run(body)


def test_a_version_is_learned_once_through_a_fault(
    tmp_path: Path, stored: tuple[str, bytes]
) -> None:
    path, data = stored
    slow = LatencyFileSystem(
        LocalFileSystem(), latency=0.02, fail_first=1, methods={"info"}
    )

    async def body() -> None:
        async with parts(tmp_path, slow, retries=2) as resolver:
            version = await resolver.version(path)
            assert version.size == len(data)
            assert slow.calls["info"] == 2 and slow.faults == 1  # one retry
            assert await resolver.version(path) == version
            assert slow.calls["info"] == 2  # known now: no third call
        # Another resolver on the same disk (another process) knows it too.
        async with parts(tmp_path, slow) as other:
            assert other.known(path) == version
            assert slow.calls["info"] == 2

    run(body)
