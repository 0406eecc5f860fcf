"""Bad input fails at once, with a builtin exception that names the thing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import fsspec
import pytest

from cachefs import CacheFileSystem


def build(tmp_path: Path, **kwargs: object) -> CacheFileSystem:
    options: dict[str, object] = {
        "target_protocol": "memory",
        "cache_dir": str(tmp_path / "c"),
        "skip_instance_cache": True,
    }
    options.update(kwargs)
    return CacheFileSystem(**options)


@pytest.mark.parametrize(
    ("name", "value", "exc"),
    [
        ("ram_limit", -1, ValueError),
        ("ram_limit", "lots", ValueError),
        ("ram_limit", "12 parsecs", ValueError),
        ("ram_limit", 1.5, TypeError),
        ("disk_limit", "-3GiB", ValueError),
        ("disk_limit", True, TypeError),
        ("chunk_size", 0, ValueError),
        ("chunk_size", "0MiB", ValueError),
        ("chunk_size", None, TypeError),
        ("max_inflight", 0, ValueError),
        ("max_coalesce", "x", ValueError),
        ("max_requests", 0, ValueError),
        ("max_requests", "eight", ValueError),
        ("max_requests", 8.0, TypeError),
        ("metadata_ttl", -1, ValueError),
        ("metadata_ttl", "sixty", ValueError),
        ("metadata_ttl", [60], TypeError),
        ("request_timeout", -0.5, ValueError),
        ("retries", -1, ValueError),
        ("policy", "mru-ish", ValueError),
        ("cache_dir", [], ValueError),
        ("cache_dir", 42, TypeError),
    ],
)
def test_bad_option_names_the_parameter(tmp_path, name, value, exc):
    with pytest.raises(exc, match=name):
        build(tmp_path, **{name: value})


def test_unknown_policy_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="lru"):
        build(tmp_path, policy="nope")


def test_exactly_one_target(tmp_path):
    with pytest.raises(TypeError, match="exactly one of fs= or target_protocol="):
        CacheFileSystem(cache_dir=str(tmp_path), skip_instance_cache=True)
    with pytest.raises(TypeError, match="exactly one"):
        CacheFileSystem(
            target_protocol="memory",
            fs=fsspec.filesystem("memory"),
            skip_instance_cache=True,
        )
    with pytest.raises(TypeError, match="fs must be an fsspec filesystem"):
        CacheFileSystem(fs="memory", skip_instance_cache=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_protocol='nosuchproto'"):
        CacheFileSystem(target_protocol="nosuchproto", skip_instance_cache=True)
    with pytest.raises(TypeError, match="target_options must be a dict"):
        CacheFileSystem(
            target_protocol="memory",
            target_options=["x"],  # type: ignore[arg-type]
            skip_instance_cache=True,
        )


def test_sizes_accept_strings_and_zero_turns_tiers_off(tmp_path):
    fs = build(tmp_path, ram_limit="512MiB", disk_limit="2GiB", chunk_size="64kB")
    assert fs.ram_limit == 512 * 2**20
    assert fs.disk_limit == 2 * 2**30
    assert fs.chunk_size == 64_000
    off = build(tmp_path, ram_limit=0, disk_limit="0")
    assert off.router.ram is None and off.router.disks == []


def test_unsupported_modes(tmp_path):
    fs = build(tmp_path)
    fs.pipe_file("/f.bin", b"abc")
    with pytest.raises(ValueError, match="mode='r\\+b'"):
        fs.open("/f.bin", "r+b")
    http = CacheFileSystem(
        target_protocol="http", cache_dir=str(tmp_path / "h"), skip_instance_cache=True
    )
    with pytest.raises(io.UnsupportedOperation, match=r"mode=.wb.*http"):
        http.open("http://127.0.0.1:9/x.bin", "wb")


def test_missing_paths_are_file_not_found(tmp_path):
    fs = build(tmp_path)
    with pytest.raises(FileNotFoundError):
        fs.cat_file("/does/not/exist")
    with pytest.raises(FileNotFoundError):
        fs.open("/does/not/exist")
    with pytest.raises(FileNotFoundError):
        fs.info("/does/not/exist")


def test_directory_is_not_a_file(tmp_path):
    local = build(tmp_path, target_protocol="file")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        local.cat_file(str(tmp_path / "d"))


def test_cache_dir_symlink_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    os.symlink(real, link)
    with pytest.raises(NotADirectoryError, match="link"):
        build(tmp_path, cache_dir=str(link))


def test_cache_dir_created_owner_only(tmp_path):
    build(tmp_path, cache_dir=str(tmp_path / "fresh"))
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
