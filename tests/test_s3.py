"""cachefs over S3 (s3fs), against moto's S3 server on loopback."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pytest

from cachefs import CacheFileSystem

if TYPE_CHECKING:
    from tests.s3_server import S3Server

pytest_plugins = ("tests.s3_server",)

MiB = 2**20
SIZE = 3 * MiB + 12345  # not a multiple of the chunk size


def payload(seed: int, size: int = SIZE) -> bytes:
    return np.random.default_rng(seed).bytes(size)


@pytest.fixture
def make_s3fs(s3_server: S3Server, tmp_path: Path) -> Callable[..., CacheFileSystem]:
    def make(**kwargs: Any) -> CacheFileSystem:
        options: dict[str, Any] = {
            "target_protocol": "s3",
            "target_options": s3_server.target_options,
            "cache_dir": str(tmp_path / "cache"),
            "chunk_size": MiB,
            "skip_instance_cache": True,
        }
        options.update(kwargs)
        return CacheFileSystem(**options)

    return make


def test_chained_url_reads_through_the_cache(
    s3_server: S3Server, put: Callable[[str, bytes], str], tmp_path: Path
) -> None:
    data = payload(1)
    path = put("data/shard-0.bin", data)
    of = fsspec.open(
        f"cachefs::s3://{path}",
        cachefs={"cache_dir": str(tmp_path / "cache"), "chunk_size": MiB},
        s3=s3_server.chained_options,
    )
    with of as f:
        assert f.read() == data
    fs = of.fs
    assert isinstance(fs, CacheFileSystem)
    assert fs.target_protocol == "s3"
    sent = fs.cache_stats()["origin"]["bytes"]
    assert sent == len(data)
    with of as f:
        f.seek(MiB - 10)
        assert f.read(20) == data[MiB - 10 : MiB + 10]
    assert fs.cache_stats()["origin"]["bytes"] == sent


def test_target_options_reads_byte_exact_ranges(
    make_s3fs: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    data = payload(2)
    path = put("blob.bin", data)
    fs = make_s3fs()
    assert fs.info(path)["size"] == len(data)
    assert fs.cat_file(f"s3://{path}") == data
    rng = random.Random(3)
    for _ in range(40):
        a = rng.randrange(len(data))
        b = rng.randrange(a, min(len(data), a + 2 * MiB) + 1)
        assert fs.cat_file(path, a, b) == data[a:b]
    assert fs.cat_file(path, -100) == data[-100:]
    assert fs.cat_file(path, len(data) - 5, len(data) + 50) == data[-5:]
    with fs.open(path, "rb") as f:
        f.seek(2 * MiB + 7)
        assert f.read(MiB) == data[2 * MiB + 7 : 3 * MiB + 7]
    # Every byte came from the origin once: all later reads were hits.
    assert fs.cache_stats()["origin"]["bytes"] == len(data)


def test_cat_ranges_over_s3(
    make_s3fs: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    a, b = payload(4), payload(5, MiB + 1)
    pa, pb = put("a.bin", a), put("b.bin", b)
    missing = pa.replace("a.bin", "nope.bin")
    fs = make_s3fs(ram_limit=0)
    out = fs.cat_ranges(
        [pa, pb, pa, missing, pb],
        [0, MiB - 3, 2 * MiB + 1, 0, None],
        [10, MiB + 1, SIZE, 10, None],
    )
    assert out[0] == a[:10]
    assert out[1] == b[MiB - 3 :]
    assert out[2] == a[2 * MiB + 1 :]
    assert isinstance(out[3], FileNotFoundError)
    assert out[4] == b
    with pytest.raises(FileNotFoundError):
        fs.cat_file(missing)


def test_version_token_is_the_etag(
    make_s3fs: Callable[..., CacheFileSystem],
    put: Callable[[str, bytes], str],
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    path = put("tagged.bin", payload(6, 1000))
    fs = make_s3fs()
    fs.cat_file(path)
    version = fs.metadata.get("s3", path)
    assert version is not None
    assert version.token.startswith("ETag:")
    etag = s3_server.client().head_object(Bucket=s3_bucket, Key="tagged.bin")["ETag"]
    assert version.token == f"ETag:{etag}"


def test_overwrite_is_served_after_metadata_ttl(
    make_s3fs: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    old, new = payload(7), payload(8, SIZE - 1000)
    path = put("moving.bin", old)
    ttl = 0.5
    fs = make_s3fs(metadata_ttl=ttl)
    assert fs.cat_file(path) == old
    started = time.monotonic()
    put("moving.bin", new)
    if time.monotonic() - started < ttl / 2:
        # Within the TTL the cached version is still trusted, whole.
        assert fs.cat_file(path) == old
    time.sleep(ttl + 0.1)
    assert fs.cat_file(path) == new
    assert fs.info(path)["size"] == len(new)
    with fs.open(path, "rb") as f:
        assert f.read() == new


def test_ttl_none_keeps_serving_the_cached_version(
    make_s3fs: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    old, new = payload(9), payload(10)
    path = put("pinned.bin", old)
    fs = make_s3fs(metadata_ttl=None)
    assert fs.cat_file(path) == old
    fs.wait_idle()
    put("pinned.bin", new)
    before = fs.cache_stats()["origin"]
    assert fs.cat_file(path) == old
    assert fs.cat_file(path, MiB, 2 * MiB) == old[MiB : 2 * MiB]
    assert fs.cache_stats()["origin"] == before
    # A new process sharing the cache directory gets the same version.
    again = make_s3fs(metadata_ttl=None)
    assert again.cat_file(path) == old
    assert again.cache_stats()["origin"]["bytes"] == 0


def test_ttl_none_never_mixes_versions(
    make_s3fs: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    """Only chunk 0 is cached when the object changes (same size).

    The rest of the old version is gone from the origin, so a whole read must
    be all of the new version (found stale and re-read), never old chunk 0
    followed by new chunks. Over HTTP cachefs checks each range's ETag; over
    S3 it must do the same (GetObject with IfMatch).
    """
    old, new = payload(11), payload(12)
    path = put("mixed.bin", old)
    fs = make_s3fs(metadata_ttl=None, readahead=0)
    assert fs.cat_file(path, 0, 100) == old[:100]
    put("mixed.bin", new)
    whole = fs.cat_file(path)
    assert len(whole) == len(new)
    sources = [
        "old" if whole[i : i + MiB] == old[i : i + MiB] else "new"
        for i in range(0, len(whole), MiB)
    ]
    # A mix reads like ['old', 'new', 'new', 'new'].
    assert len(set(sources)) == 1, f"chunks came from versions {sources}"
    assert whole in (old, new)


def test_prefetch_over_s3(
    make_s3fs: Callable[..., CacheFileSystem], put: Callable[[str, bytes], str]
) -> None:
    files = {f"shard-{i}.bin": payload(20 + i, MiB + 17 * i) for i in range(4)}
    paths = [put(name, data) for name, data in files.items()]
    fs = make_s3fs()
    handle = fs.prefetch(paths)
    assert handle.wait(timeout=30)
    assert not handle.failed
    sent = fs.cache_stats()["origin"]["bytes"]
    assert sent == sum(len(d) for d in files.values())
    for path, data in zip(paths, files.values(), strict=True):
        assert fs.cat_file(path) == data
    assert fs.cache_stats()["origin"]["bytes"] == sent
    assert fs.cache_stats()["prefetch"]["issued"] >= 4


def test_cli_warm_over_s3_then_read_without_the_origin(
    s3_server: S3Server, put: Callable[[str, bytes], str], tmp_path: Path
) -> None:
    """``cachefs warm s3://...`` with --target-options, then read offline."""
    import json
    import os
    import subprocess
    import sys

    files = {f"warm/part-{i}.bin": payload(40 + i, MiB + 7 * i) for i in range(3)}
    paths = [put(key, data) for key, data in files.items()]
    bucket = paths[0].split("/")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC")}
    env["FSSPEC_CONFIG_DIR"] = str(tmp_path / "no-config")
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "cachefs.cli", "warm", f"s3://{bucket}/warm/",
         "--target-options", json.dumps(s3_server.target_options),
         "--cache-dir", str(cache), "--chunk-size", "1MiB", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files"] == 3
    # The origin is unreachable now: a closed port instead of moto.
    offline = CacheFileSystem(
        target_protocol="s3",
        target_options={
            **s3_server.target_options,
            "endpoint_url": "http://127.0.0.1:9",
        },
        cache_dir=str(cache),
        chunk_size=MiB,
        metadata_ttl=None,
        skip_instance_cache=True,
    )
    for path, data in zip(paths, files.values(), strict=True):
        assert offline.cat_file(path) == data
    assert offline.cache_stats()["origin"]["bytes"] == 0
