"""VersionResolver: a file's version learned once per process and per node.

Built from real parts (an HTTP target, the fetcher, a router over a RAM
tier, the metadata cache) against the loopback origin; nothing of the code
under test is replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import pytest

from cachefs.config import CacheConfig
from cachefs.errors import StaleVersionError
from cachefs.fetch import Fetcher
from cachefs.metadata import MetadataCache
from cachefs.policy import make_policy
from cachefs.router import ChunkRouter
from cachefs.testing import HTTPOrigin
from cachefs.tiers.ram import RamTier
from cachefs.versions import VersionResolver

T = TypeVar("T")
MiB = 2**20


@asynccontextmanager
async def resolver_of(
    meta: Path | None, **settings: Any
) -> AsyncIterator[VersionResolver]:
    """A resolver over http, its records in ``meta`` (memory only if None)."""
    config = CacheConfig.from_kwargs(chunk_size="1MiB", **settings)
    target = fsspec.filesystem("http", asynchronous=True, skip_instance_cache=True)
    session = await target.set_session()
    fetcher = Fetcher.from_config(target, config.fetch)
    ram = RamTier(64 * MiB, make_policy("lru"))
    router = ChunkRouter(ram, [], fetcher, max_coalesce=config.max_coalesce)
    metadata = MetadataCache(config.metadata_ttl, meta)
    try:
        yield VersionResolver(config, "http", metadata, fetcher, router)
    finally:
        await router.drain()
        await session.close()


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


def test_learned_once_per_process(
    origin: HTTPOrigin, shard_files: dict[str, bytes]
) -> None:
    name = next(iter(shard_files))
    url = origin.url_for(name)

    async def body() -> None:
        async with resolver_of(None) as resolver:
            assert resolver.known(url) is None
            first = await resolver.version(url)
            asked = origin.stats.requests
            assert first.size == len(shard_files[name])
            assert resolver.known(url) == first
            again = await resolver.version(url)
            assert again == first
            assert origin.stats.requests == asked  # the origin is not asked

    run(body)


def test_learned_once_per_node(
    origin: HTTPOrigin, shard_files: dict[str, bytes], tmp_path: Path
) -> None:
    name = next(iter(shard_files))
    url = origin.url_for(name)
    meta = tmp_path / "meta"

    async def learn() -> Any:
        async with resolver_of(meta) as resolver:
            return await resolver.version(url)

    async def look_up() -> Any:
        # Another process on the node: its own resolver, the same records.
        async with resolver_of(meta) as resolver:
            return resolver.known(url), await resolver.version(url)

    first = run(learn)
    asked = origin.stats.requests
    known, again = run(look_up)
    assert known == first == again
    assert origin.stats.requests == asked


def test_first_read_tells_the_version_without_a_head(
    origin: HTTPOrigin, shard_files: dict[str, bytes]
) -> None:
    name = next(iter(shard_files))
    url = origin.url_for(name)
    data = shard_files[name]

    async def body() -> None:
        async with resolver_of(None) as resolver:
            assert resolver.first_read_fetches(url)
            origin.reset_stats()
            # Two readers at once: one request between them.
            (version, views), (other, _) = await asyncio.gather(
                resolver.resolve_span(url, 0, 2 * MiB),
                resolver.resolve_span(url, 0, 2 * MiB),
            )
            assert version == other
            assert version.size == len(data)
            first = resolver.keys(version, 0, 1)[0]
            assert bytes(views[first]) == data[:MiB]
            await resolver.router.drain()
            stats = origin.stats
            assert stats.head_requests == 0
            assert stats.get_requests == 1
            assert not resolver.first_read_fetches(url)  # seen now
            assert await resolver.version(url) == version
            assert origin.stats.requests == 1

    run(body)


def test_a_stale_version_is_forgotten_with_its_chunks(
    origin: HTTPOrigin, shard_files: dict[str, bytes]
) -> None:
    name = next(iter(shard_files))
    url = origin.url_for(name)
    old_data = shard_files[name]

    async def body() -> None:
        async with resolver_of(None) as resolver:
            router = resolver.router
            old = await resolver.version(url)
            keys = resolver.keys(old, 0, old.size)
            await router.get_chunks(keys[:1])
            await router.drain()
            assert router.get_cached(keys[0]) is not None
            origin.set_file(name, b"new" + old_data)
            with pytest.raises(StaleVersionError):
                await router.get_chunks(keys[1:2])  # the origin moved on
            resolver.forget([url])
            assert resolver.known(url) is None
            assert router.get_cached(keys[0]) is None  # no dead weight
            new = await resolver.version(url)
            assert new != old
            assert new.size == old.size + 3
            (view,) = await router.get_chunks(resolver.keys(new, 0, 1))
            assert bytes(view[:3]) == b"new"

    run(body)


def test_a_changed_version_drops_the_old_chunks(
    origin: HTTPOrigin, shard_files: dict[str, bytes]
) -> None:
    name = next(iter(shard_files))
    url = origin.url_for(name)

    async def body() -> None:
        async with resolver_of(None, metadata_ttl=0.5) as resolver:
            router = resolver.router
            old = await resolver.version(url)
            key = resolver.keys(old, 0, 1)[0]
            await router.get_chunks([key])
            await router.drain()
            origin.set_file(name, b"changed")
            # While the version is fresh, info answers from it (as open does);
            # once it expires, the origin is asked and the new one replaces it.
            assert (await resolver.info(url))["size"] == old.size
            await asyncio.sleep(0.6)
            info = await resolver.info(url)
            assert info["size"] == len(b"changed")
            new = resolver.known(url)
            assert new is not None and new.size == len(b"changed")
            assert router.get_cached(key) is None  # the old version's chunk

    run(body)


def test_a_missing_file_is_remembered(origin: HTTPOrigin) -> None:
    url = origin.url_for("absent.bin")

    async def body() -> None:
        async with resolver_of(None) as resolver:
            with pytest.raises(FileNotFoundError):
                await resolver.version(url)
            asked = origin.stats.requests
            with pytest.raises(FileNotFoundError):
                await resolver.version(url)
            assert origin.stats.requests == asked

    run(body)


def test_open_span_follows_how_files_were_read() -> None:
    async def body() -> None:
        async with resolver_of(None, readahead="8MiB") as resolver:
            assert resolver.open_span == 8 * MiB  # optimistic at first
            resolver.note_access(sequential=False)
            assert resolver.open_span == MiB
            resolver.note_access(sequential=True)
            assert resolver.open_span == 8 * MiB

    run(body)


@pytest.mark.parametrize(
    "origin_info",
    [
        {"size": 10, "ETag": '"abc"'},
        {"size": 10, "VersionId": "v7", "LastModified": "2026-01-01"},
        {"size": 10, "mtime": 1765000000.25},
        {"size": 10},
    ],
)
def test_an_info_built_from_a_record_names_the_same_version(origin_info):
    # info() answered from a stored version record (no origin request) must
    # give the token the origin's own info() gave: chunk keys are made of it.
    from cachefs.chunks import token_fields, version_token

    token = version_token(origin_info)
    rebuilt = {"size": 10, **token_fields(token)}
    assert version_token(rebuilt) == token
