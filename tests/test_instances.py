"""One cache per process and configuration, however users reach it."""

from __future__ import annotations

from pathlib import Path

import fsspec

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards


def test_a_thousand_urls_share_one_instance_and_one_ram_budget(
    tmp_path: Path,
) -> None:
    files = make_shards(1000, 4096, seed=3)
    options = {"cache_dir": str(tmp_path / "cache"), "ram_limit": "1MiB"}
    with HTTPOrigin(files=files) as origin:
        instances = set()
        for name, data in files.items():
            with fsspec.open("cachefs::" + origin.url_for(name), cachefs=options) as f:
                assert f.read() == data
                instances.add(id(f.fs))
        assert len(instances) == 1
        fs = fsspec.filesystem("cachefs", target_protocol="http", **options)
        assert id(fs) in instances  # fsspec.filesystem finds the same one
        assert CacheFileSystem(target_protocol="http", **options) is fs
        ram = fs.cache_stats()["ram"]
        assert ram["usage"] <= 2**20 < 1000 * 4096
        assert ram["evictions"] > 0  # one budget: 4 MB of files went through it
