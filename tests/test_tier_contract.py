"""Every tier keeps the tier contract (:mod:`cachefs.testing.tiers`).

RAM and disk run :class:`TierTests` under every registered eviction policy;
the shared tier runs :class:`AsyncTierTests` over a local directory, over
fsspec's in-memory filesystem, and over that one behind latency (an async
engine, as object stores are).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from cachefs.chunks import ChunkKey
from cachefs.policy import available_policies, make_policy
from cachefs.testing import LatencyFileSystem
from cachefs.testing.tiers import AsyncTierTests, TierTests
from cachefs.tiers import RamTier
from cachefs.tiers.base import Tier
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.shared import SharedTier, call_fs


@pytest.fixture(params=available_policies())
def policy_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class TestRamTier(TierTests):
    @pytest.fixture
    def make_tier(self, policy_name: str) -> Callable[[int], Tier]:
        return lambda limit: RamTier(limit, make_policy(policy_name))


class TestDiskTier(TierTests):
    @pytest.fixture
    def make_tier(self, tmp_path: Path, policy_name: str) -> Callable[[int], Tier]:
        made = iter(range(1 << 30))

        def make(limit: int) -> Tier:
            root = tmp_path / f"cache-{next(made)}"
            return DiskTier(root, limit, make_policy(policy_name))

        return make

    def read_record(self, tier: Tier, key: ChunkKey) -> bytes:
        assert isinstance(tier, DiskTier)
        return tier.path_for(key.digest).read_bytes()

    def write_record(self, tier: Tier, key: ChunkKey, record: bytes) -> None:
        assert isinstance(tier, DiskTier)
        path = tier.path_for(key.digest)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        # In place (same inode), as a failing disk or a stray writer would.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(record)


class SharedTierTests(AsyncTierTests):
    """The shared tier over one engine (``engine``, a fixture of subclasses)."""

    @pytest.fixture
    def make_tier(self, engine: tuple[fsspec.AbstractFileSystem, str]) -> object:
        fs, root = engine
        return lambda: SharedTier(fs, root, lease_time=0)

    async def read_record(self, tier: SharedTier, key: ChunkKey) -> bytes:
        data: bytes = await call_fs(tier.fs, "cat_file", tier.path_for(key.digest))
        return data

    async def write_record(
        self, tier: SharedTier, key: ChunkKey, record: bytes
    ) -> None:
        await call_fs(tier.fs, "pipe_file", tier.path_for(key.digest), record)


class TestSharedTierOnLocalFiles(SharedTierTests):
    @pytest.fixture
    def engine(self, tmp_path: Path) -> tuple[fsspec.AbstractFileSystem, str]:
        return LocalFileSystem(), str(tmp_path / "shared")

    def test_a_local_engine_publishes_by_rename(self, tier: SharedTier) -> None:
        assert tier.renames


class TestSharedTierInMemory(SharedTierTests):
    @pytest.fixture
    def engine(self) -> Iterator[tuple[MemoryFileSystem, str]]:
        fs = MemoryFileSystem(skip_instance_cache=True)
        # MemoryFileSystem's store is global to the class: a root of our own.
        root = f"/contract-{secrets.token_hex(8)}"
        yield fs, root
        if fs.exists(root):
            fs.rm(root, recursive=True)


class TestSharedTierBehindLatency(SharedTierTests):
    """An async engine with a round trip: calls run on fsspec's own loop."""

    @pytest.fixture
    def engine(self) -> Iterator[tuple[LatencyFileSystem, str]]:
        memory = MemoryFileSystem(skip_instance_cache=True)
        root = f"/contract-{secrets.token_hex(8)}"
        yield LatencyFileSystem(memory, latency=0.002), root
        if memory.exists(root):
            memory.rm(root, recursive=True)
