"""The cold path's memory: landing buffers used again, RAM left to the page cache."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from cachefs import CacheFileSystem
from cachefs.receive.landing import POOL, LandingPool
from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20


def test_a_mapping_is_used_again_only_once_no_view_of_it_is_left():
    pool = LandingPool(limit=16 * MiB)
    first = pool.take(4 * MiB)
    first[:4] = b"abcd"
    kept = first[1:3].toreadonly()  # a reader's slice holds the mapping
    del first
    second = pool.take(4 * MiB)
    assert (pool.made, pool.reused) == (2, 0)
    second[:4] = b"wxyz"
    assert bytes(kept) == b"bc"  # never overwritten under its reader
    del kept
    third = pool.take(4 * MiB)
    assert pool.reused == 1
    array = np.frombuffer(third, dtype=np.uint8)  # an array keeps it too
    del third
    fourth = pool.take(4 * MiB)
    assert pool.reused == 1 and pool.made == 3
    assert array.base is not None
    del array, second, fourth


def test_the_pool_tracks_a_bounded_number_of_bytes():
    pool = LandingPool(limit=8 * MiB)
    held = [pool.take(4 * MiB) for _ in range(5)]
    assert pool._bytes <= 8 * MiB
    # Small buffers and sizes that would waste their rounding are not pooled.
    assert pool.take(MiB).nbytes == MiB
    assert pool.take(4 * MiB + 1).nbytes == 4 * MiB + 1
    assert pool.made == 5
    del held
    # Free mappings past keep_free are let go of.
    pool = LandingPool(limit=16 * MiB, keep_free=4 * MiB)
    held = [pool.take(4 * MiB) for _ in range(4)]
    assert pool._bytes == 16 * MiB
    pool.trim()
    assert pool._bytes == 16 * MiB  # all in use
    del held[1:]
    pool.trim()
    assert pool._bytes == 8 * MiB  # the one in use and one free
    assert pool.take(4 * MiB) is not None and pool.reused == 1


@pytest.fixture
def big_files() -> dict[str, bytes]:
    return make_shards(2, 24 * MiB, seed=2020)


def _read_all(fs: CacheFileSystem, url: str) -> bytes:
    out = bytearray()
    buf = bytearray(4 * MiB)
    with fs.open(url, "rb") as f:
        while n := f.readinto(buf):
            out += buf[:n]
    return bytes(out)


def test_a_cold_read_leaves_its_chunks_to_the_disk_tier(tmp_path, big_files):
    with HTTPOrigin(files=dict(big_files)) as origin:
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "cache"),
            skip_instance_cache=True,
        )
        try:
            (a, data_a), (b, data_b) = sorted(big_files.items())
            assert _read_all(fs, origin.url_for(a)) == data_a
            fs.wait_idle(60)
            stats = fs.cache_stats()
            # Stored on disk, so not held twice: the RAM tier let them go.
            assert stats["ram"]["chunks"] == 0
            assert stats["disk"]["puts"] == 6
            assert fs.router.fills.released == 6
            # A re-read is served from the disk tier (verified), not the origin.
            sent = origin.stats.bytes_sent
            assert _read_all(fs, origin.url_for(a)) == data_a
            assert origin.stats.bytes_sent == sent
            # The next file lands in the first one's buffers.
            gc.collect()
            reused = POOL.reused
            assert _read_all(fs, origin.url_for(b)) == data_b
            assert POOL.reused > reused
        finally:
            fs.close()


def test_ram_keeps_what_the_disk_cannot_serve_in_place(tmp_path, big_files):
    with HTTPOrigin(files=dict(big_files)) as origin:
        (a, data_a), _ = sorted(big_files.items())
        cases = ({"compression": "zstd"}, {"disk_limit": 0}, {"chunk_size": "1MiB"})
        for options in cases:
            fs = CacheFileSystem(
                target_protocol="http",
                cache_dir=str(tmp_path / f"cache-{len(options)}-{id(options)}"),
                skip_instance_cache=True,
                **options,
            )
            try:
                assert _read_all(fs, origin.url_for(a)) == data_a
                fs.wait_idle(60)
                # A compressed record is decoded on every hit; no disk: RAM;
                # a small chunk costs RAM little and a map more than a RAM hit.
                chunks = fs.cache_stats()["ram"]["chunks"]
                assert chunks == len(data_a) // fs.config.chunk_size, options
                assert fs.router.fills.released == 0
            finally:
                fs.close()


def test_a_whole_read_spanning_chunks_copies_once(tmp_path):
    files = make_shards(1, 8 * MiB, seed=2021)
    ((name, data),) = files.items()
    with HTTPOrigin(files=files) as origin:
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "cache"),
            chunk_size="1MiB",
            skip_instance_cache=True,
        )
        try:
            url = origin.url_for(name)
            with fs.open(url, "rb") as f:
                assert f.read() == data  # cold: fills the tiers
            fs.wait_idle(60)
            with fs.open(url, "rb") as f:
                tracemalloc.start()
                try:
                    got = f.read()
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
            assert got == data
            # The result is the one copy: no whole-size buffer before it.
            assert peak < 1.5 * len(data), peak
        finally:
            fs.close()
