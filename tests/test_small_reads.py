"""Small reads with full tiers: a chunk in hand is never fetched twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachefs import CacheFileSystem, available_policies
from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20


@pytest.mark.parametrize("policy", available_policies())
@pytest.mark.parametrize("readahead", [0, "4MiB"])
def test_small_reads_with_full_tiers_read_each_byte_once(
    tmp_path: Path, policy: str, readahead: int | str
) -> None:
    files = make_shards(2, 8 * MiB, seed=5)
    filler, name = sorted(files)
    with HTTPOrigin(files=files) as origin:
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "cache"),
            chunk_size="1MiB",
            ram_limit="2MiB",
            disk_limit="4MiB",
            policy=policy,
            readahead=readahead,
            skip_instance_cache=True,
        )
        fs.cat_file(origin.url_for(filler))  # fill both tiers
        fs.wait_idle()
        origin.reset_stats()
        out = bytearray()
        with fs.open(origin.url_for(name), "rb") as f:
            while piece := f.read(10 * 1024):  # tarfile-sized reads
                out += piece
        assert out == files[name]
        fs.wait_idle()
        sent = origin.stats.bytes_by_path.get(name, 0)
        assert sent <= 1.05 * len(files[name]), f"{sent / len(files[name]):.2f}x"


def test_fresh_reader_of_a_warm_cache_schedules_no_readahead(tmp_path: Path) -> None:
    files = make_shards(1, 8 * MiB, seed=6)
    ((name, data),) = files.items()
    options = {
        "target_protocol": "http",
        "cache_dir": str(tmp_path / "cache"),
        "chunk_size": "1MiB",
        "metadata_ttl": None,
        "skip_instance_cache": True,
    }
    with HTTPOrigin(files=files) as origin:
        url = origin.url_for(name)
        warm = CacheFileSystem(**options)
        warm.cat_file(url)
        warm.wait_idle()
        origin.reset_stats()
        fresh = CacheFileSystem(**options, ram_limit=0)  # as a new worker would
        buf = bytearray(256 * 1024)
        out = bytearray()
        with fresh.open(url, "rb") as f:
            while n := f.readinto(buf):
                out += buf[:n]
        assert out == data
        assert origin.stats.requests == 0
        # Chunks on disk count as held: the loop is never woken for them.
        assert fresh.cache_stats()["router"]["readahead_wakeups"] == 0
