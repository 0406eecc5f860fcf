"""Fetches in one process share their stripes' locks (cachefs.tiers.stripes).

Chunk keys share a lock stripe when their digests share 4 hex digits. A
process fetching two such keys at once took the stripe twice, and ``flock``
refused the second hold even in the same process: the second fetch took its
own process for another one and waited for it, or, streaming a file's first
read, dropped that chunk's bytes and fetched them again (an origin read
counted twice; tests/test_data_halfcache.py saw it under load).
"""

from __future__ import annotations

import itertools
import subprocess
import sys

from cachefs import CacheFileSystem
from cachefs.chunks import ChunkKey, FileVersion
from cachefs.policy import make_policy
from cachefs.testing import HTTPOrigin
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.locks import STRIPES_FILE, StripeLock, stripe_of

KiB = 2**10

# Another process trying a stripe: exit 0 if it got it, 1 if refused.
OTHER = r"""
import sys
from pathlib import Path
from cachefs.tiers.locks import StripeLock
sys.exit(0 if StripeLock(Path(sys.argv[1]), int(sys.argv[2])).try_acquire() else 1)
"""


def _colliding(version: FileVersion, chunk: int) -> tuple[ChunkKey, ChunkKey]:
    """Two keys of ``version`` whose digests share a stripe."""
    seen: dict[str, ChunkKey] = {}
    for i in itertools.count():
        key = version.key(chunk, i)
        other = seen.setdefault(key.digest[:4], key)
        if other is not key:
            return other, key
    raise AssertionError("unreachable")


def _other_process_gets(path, offset) -> bool:
    argv = [sys.executable, "-c", OTHER, str(path), str(offset)]
    run = subprocess.run(argv, timeout=60)
    return run.returncode == 0


def test_keys_of_one_stripe_share_its_lock_in_a_process(tmp_path):
    tier = DiskTier(tmp_path / "disk", 2**30, make_policy("lru"))
    a, b = _colliding(FileVersion("http", "/x", 2**40, "t"), 4 * KiB)
    stripe = tmp_path / "disk" / "locks" / STRIPES_FILE
    offset = stripe_of(a.digest)
    first, second = tier.stripe_lock(a), tier.stripe_lock(b)
    assert first.try_acquire()
    assert second.try_acquire()  # was refused: the same process, another fd
    assert first.held and second.held
    assert not _other_process_gets(stripe, offset)
    first.release()
    assert not _other_process_gets(stripe, offset)  # the second fetch still holds it
    first.release()  # idempotent: does not end the second hold
    assert not StripeLock(stripe, offset).try_acquire()
    second.release()
    assert _other_process_gets(stripe, offset)


CHUNK = 4 * KiB
DATA = bytes(range(256)) * (64 * CHUNK // 256)


def _cache(tmp_path, **options) -> CacheFileSystem:
    """A filesystem over http with 4 KiB chunks under ``tmp_path/cache``."""
    return CacheFileSystem(
        target_protocol="http",
        cache_dir=str(tmp_path / "cache"),
        chunk_size=CHUNK,
        skip_instance_cache=True,
        **options,
    )


def test_a_first_read_keeps_a_chunk_whose_stripe_another_fetch_holds(tmp_path):
    # The file's first read streams every chunk; one of them shares its
    # stripe with a chunk another fetch of this process holds. Before, that
    # chunk's bytes were dropped and fetched again: 1 chunk more at the origin.
    chunk, data = CHUNK, DATA
    with HTTPOrigin(files={"f.bin": data}) as origin:
        # A wait for the stripe lasts about 2 s.
        fs = _cache(tmp_path, request_timeout=1, retries=0)
        try:
            url = origin.url_for("f.bin")
            info = fs.info(url)  # the version only: no chunk is read
            tpath = fs._target_path(url)
            version = fs.resolver.known(tpath)
            assert version is not None and info["size"] == len(data)
            # A key of another file (same version token, size) whose stripe
            # collides with one of this file's chunks.
            keys = {version.key(chunk, i).digest[:4]: i for i in range(64)}
            other = FileVersion("http", "/elsewhere", 2**40, version.token)
            held = next(
                k
                for i in itertools.count()
                if (k := other.key(chunk, i)).digest[:4] in keys
            )
            disk = fs.router.disk
            lock = disk.stripe_lock(held)
            assert lock.try_acquire()  # another fetch of this process holds it
            try:
                fs.resolver.metadata.drop(fs.resolver.protocol, tpath)
                fs.resolver.infos.clear()
                origin.reset_stats()
                assert fs.cat_file(url) == data
                fs.wait_idle()
                router = fs.cache_stats()["router"]
                assert origin.stats.bytes_sent == len(data), router
                assert router["waited"] == 0
            finally:
                lock.release()
        finally:
            fs.close()


def test_a_cold_fill_creates_one_lock_file_not_one_per_chunk(tmp_path):
    # Every stripe is a byte of locks/stripes: a fill allocates an inode per
    # chunk file, not another per lock (ext4 without a journal scans its
    # recently deleted inodes at each allocation; cold_fill measures it).
    with HTTPOrigin(files={"f.bin": DATA}) as origin:
        fs = _cache(tmp_path)
        try:
            assert fs.cat_file(origin.url_for("f.bin")) == DATA
            fs.wait_idle()
            locks = fs.router.disks[0].root / "locks"
            assert sorted(p.name for p in locks.iterdir()) == [STRIPES_FILE]
            assert len(fs.router.disk) == 64
        finally:
            fs.close()
