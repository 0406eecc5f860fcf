"""Small reads with full tiers: a chunk in hand is never fetched twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.origin import HTTPOrigin, make_shards
from cachefs import CacheFileSystem, available_policies

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
