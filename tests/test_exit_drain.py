"""A process that exits while its fills stream keeps what they bring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20


def test_exit_mid_stream_stores_every_chunk(tmp_path: Path) -> None:
    files = make_shards(1, 8 * MiB, seed=4)
    ((name, data),) = files.items()
    cache = str(tmp_path / "cache")
    with HTTPOrigin(files=files, latency=0.02, bandwidth=32 * MiB) as origin:
        url = origin.url_for(name)
        script = (
            "import fsspec\n"
            f"with fsspec.open('cachefs::{url}', cachefs={{'cache_dir': {cache!r},"
            " 'chunk_size': '1MiB', 'metadata_ttl': None}) as f:\n"
            "    assert len(f.read(10)) == 10\n"  # the rest is still streaming
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "cannot schedule" not in proc.stderr, proc.stderr
        origin.reset_stats()
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=cache,
            chunk_size="1MiB",
            metadata_ttl=None,
            skip_instance_cache=True,
        )
        assert fs.cat_file(url) == data
        assert origin.stats.bytes_sent == 0
