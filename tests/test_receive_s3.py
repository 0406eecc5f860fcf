"""S3 through the direct receive client: presigned ranged GETs against moto."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cachefs import CacheFileSystem
from cachefs.errors import StaleVersionError

if TYPE_CHECKING:
    from tests.s3_server import S3Server

pytest_plugins = ("tests.s3_server",)

MiB = 2**20
SIZE = 3 * MiB + 777


def payload(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def make(s3_server: S3Server, tmp_path: Path) -> Callable[..., CacheFileSystem]:
    def build(
        target_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> CacheFileSystem:
        options: dict[str, Any] = {
            "target_protocol": "s3",
            "target_options": {**s3_server.target_options, **(target_options or {})},
            "cache_dir": str(tmp_path / "cache"),
            "chunk_size": MiB,
            "request_timeout": 10,
            "skip_instance_cache": True,
        }
        options.update(kwargs)
        return CacheFileSystem(**options)

    return build


def test_objects_land_through_presigned_ranged_gets(
    make: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    data = payload(1)
    path = put("a.bin", data)
    fs = make()
    assert fs.cat_file(path, 1000, 2 * MiB + 5) == data[1000 : 2 * MiB + 5]
    with fs.open(path, "rb") as f:
        assert f.read() == data
    fs.wait_idle()
    stats = fs.cache_stats()["origin"]
    assert stats["direct"] >= 2 and stats["direct"] == stats["requests"]
    assert stats["connections"] >= 1
    assert fs.info(path)["size"] == len(data)
    fs.close()


def test_a_missing_object_is_file_not_found(
    make: Callable[..., CacheFileSystem], s3_bucket: str
) -> None:
    fs = make()
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{s3_bucket}/none.bin")
    fs.close()


def test_a_changed_object_is_refused_by_if_match(
    make: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    old, new = payload(2), payload(3)
    path = put("moving.bin", old)
    fs = make(metadata_ttl=None, readahead=0)
    with fs.open(path, "rb") as f:
        assert f.read(100) == old[:100]
        put("moving.bin", new)
        f.seek(2 * MiB)
        with pytest.raises(StaleVersionError, match=r"moving\.bin"):
            f.read(100)
    stats = fs.cache_stats()["origin"]
    assert stats["direct"] == 1 and stats["requests"] == 2  # the second refused
    fs.close()


def test_options_a_presigned_get_cannot_carry_go_through_s3fs(
    make: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    data = payload(4, MiB + 3)
    path = put("extra.bin", data)
    fs = make({"s3_additional_kwargs": {"ChecksumMode": "ENABLED"}})
    assert fs.cat_file(path) == data
    fs.wait_idle()
    assert fs.cache_stats()["origin"]["direct"] == 0
    fs.close()
