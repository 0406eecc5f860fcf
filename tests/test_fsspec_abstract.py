"""fsspec's own abstract test-suite (copy, get, put, open, pipe) run on cachefs.

The suite writes through cachefs and reads back through it, so it checks both
pass-through and that writes invalidate what the cache held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import fsspec.tests.abstract as abstract
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from cachefs import CacheFileSystem


class LocalTargetFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, tmp_path_factory: pytest.TempPathFactory) -> CacheFileSystem:
        return CacheFileSystem(
            fs=fsspec.filesystem("file", auto_mkdir=True),
            cache_dir=str(tmp_path_factory.mktemp("cache")),
            chunk_size=1024,
            skip_instance_cache=True,
        )

    @pytest.fixture
    def fs_path(self, tmp_path: Path) -> str:
        return str(tmp_path / "remote")


class MemoryTargetFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, tmp_path_factory: pytest.TempPathFactory) -> Any:
        MemoryFileSystem.store.clear()
        MemoryFileSystem.pseudo_dirs.clear()
        MemoryFileSystem.pseudo_dirs.append("")
        fs = CacheFileSystem(
            target_protocol="memory",
            cache_dir=str(tmp_path_factory.mktemp("cache")),
            chunk_size=1024,
            skip_instance_cache=True,
        )
        yield fs
        MemoryFileSystem.store.clear()
        MemoryFileSystem.pseudo_dirs.clear()
        MemoryFileSystem.pseudo_dirs.append("")

    @pytest.fixture
    def fs_join(self) -> Any:
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self) -> str:
        return "/cachefs-abstract"


class TestLocalCopy(abstract.AbstractCopyTests, LocalTargetFixtures):  # type: ignore[misc]
    pass


class TestLocalGet(abstract.AbstractGetTests, LocalTargetFixtures):  # type: ignore[misc]
    pass


class TestLocalPut(abstract.AbstractPutTests, LocalTargetFixtures):  # type: ignore[misc]
    pass


class TestLocalOpen(abstract.AbstractOpenTests, LocalTargetFixtures):  # type: ignore[misc]
    pass


class TestLocalPipe(abstract.AbstractPipeTests, LocalTargetFixtures):  # type: ignore[misc]
    pass


class TestMemoryCopy(abstract.AbstractCopyTests, MemoryTargetFixtures):  # type: ignore[misc]
    pass


class TestMemoryGet(abstract.AbstractGetTests, MemoryTargetFixtures):  # type: ignore[misc]
    pass


class TestMemoryPut(abstract.AbstractPutTests, MemoryTargetFixtures):  # type: ignore[misc]
    pass


class TestMemoryOpen(abstract.AbstractOpenTests, MemoryTargetFixtures):  # type: ignore[misc]
    pass


class TestMemoryPipe(abstract.AbstractPipeTests, MemoryTargetFixtures):  # type: ignore[misc]
    pass
