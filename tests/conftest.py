"""Shared fixtures: a real HTTP origin on loopback and cache factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20


@pytest.fixture(scope="session")
def shard_files() -> dict[str, bytes]:
    """Four 3 MiB + 12345-byte shards: sizes that do not divide by chunks."""
    return make_shards(4, 3 * MiB + 12345, seed=7)


@pytest.fixture
def origin(shard_files: dict[str, bytes]) -> Iterator[HTTPOrigin]:
    """A fresh HTTP origin (port 0) serving ``shard_files``."""
    with HTTPOrigin(files=dict(shard_files)) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment for a ``cachefs`` subprocess: no user fsspec config/cache."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC")}
    home = tmp_path / "home"
    home.mkdir()
    clean.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        FSSPEC_CONFIG_DIR=str(tmp_path / "fsspec-config"),
    )
    return clean


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_fs(cache_dir: Path) -> Callable[..., CacheFileSystem]:
    """Build a ``CacheFileSystem`` over http with small chunks by default."""

    def make(**kwargs: Any) -> CacheFileSystem:
        options: dict[str, Any] = {
            "target_protocol": "http",
            "cache_dir": str(cache_dir),
            "chunk_size": "1MiB",
            "skip_instance_cache": True,
        }
        options.update(kwargs)
        return CacheFileSystem(**options)

    return make


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=None,
        help="seconds of reading in tests/test_soak.py "
        "(default $CACHEFS_SOAK_SECONDS or 45)",
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    # A longer soak gets a longer timeout than the suite's.
    given = config.getoption("--soak-seconds")
    if given is None:
        return
    for item in items:
        if item.path.name == "test_soak.py":
            item.add_marker(pytest.mark.timeout(float(given) + 120))
