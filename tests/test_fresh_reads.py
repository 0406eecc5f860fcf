"""The first random reads of a warm file in a new process (issue 20).

Counted, not timed: a file object keeps a disk chunk verified in part in
hand with its block check, so after the first read of a chunk a random
read neither asks the tiers again nor verifies a block twice, and a block
damaged after the chunk was mapped is still never served.
"""

from __future__ import annotations

import os
import random

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin
from tests._blocks import BLOCK, CS, blob, payload_at, warm


def test_random_reads_ask_the_tier_once_per_chunk_and_verify_each_block_once(
    tmp_path, monkeypatch
):
    data = blob(1) + blob(2)
    with HTTPOrigin(files={"f.bin": data}) as origin:
        url = origin.url_for("f.bin")
        opts = warm(tmp_path, url, data)
        origin.reset_stats()
        fs = CacheFileSystem(**opts)
        rng = random.Random(5)
        offsets = [rng.randrange(0, len(data) - 4096) for _ in range(300)]
        listed: list[object] = []
        real_listdir = os.listdir

        def listdir(path: object = ".") -> list[str]:
            listed.append(path)
            return real_listdir(path)  # type: ignore[arg-type]

        with fs.open(url, "rb") as f:
            monkeypatch.setattr(os, "listdir", listdir)  # counted, still real
            for off in offsets:
                f.seek(off)
                assert f.read(4096) == data[off : off + 4096]
            monkeypatch.undo()
        # No directory is listed to read (once, every shard was listed per
        # chunk map: DiskSet's len() taken for its truth).
        assert listed == []
        disk = fs.cache_stats()["disk"]
        blocks = {
            b for off in offsets for b in range(off // BLOCK, (off + 4095) // BLOCK + 1)
        }
        # One lookup per chunk (the old code asked the tier on every read).
        assert disk["hits"] == 2
        assert origin.stats.bytes_sent == 0
        verified = f._router.disk.tier_for(f._key(0)).verified_bytes
        assert verified == len(blocks) * BLOCK  # each block read, once
        fs.close()


def test_a_block_damaged_after_the_map_is_not_served_from_hand(tmp_path):
    data = blob(3)
    with HTTPOrigin(files={"f.bin": data}) as origin:
        url = origin.url_for("f.bin")
        opts = warm(tmp_path, url, data)
        (path,) = [p for p in (tmp_path / "c" / "chunks").rglob("*") if p.is_file()]
        fs = CacheFileSystem(**opts)
        with fs.open(url, "rb") as f:
            f.seek(2 * BLOCK)
            assert f.read(4096) == data[2 * BLOCK : 2 * BLOCK + 4096]
            # The map is shared: damage in the file shows through it.
            with open(path, "r+b") as raw:
                raw.seek(payload_at(path) + 9 * BLOCK + 3)
                raw.write(b"\x00\xff")
            origin.reset_stats()
            f.seek(9 * BLOCK)
            assert f.read(4096) == data[9 * BLOCK : 9 * BLOCK + 4096]
        assert fs.cache_stats()["disk"]["checksum_failures"] == 1
        assert origin.stats.bytes_sent == CS  # the chunk, fetched again
        fs.close()


def test_a_file_object_keeps_no_map_the_tier_let_go(tmp_path):
    from cachefs.tiers.maps import MAPS

    data = blob(4) + blob(5)
    with HTTPOrigin(files={"f.bin": data}) as origin:
        url = origin.url_for("f.bin")
        opts = warm(tmp_path, url, data)
        fs = CacheFileSystem(**opts)
        with fs.open(url, "rb") as f:
            for off in (5000, CS + 5000):
                f.seek(off)
                assert f.read(4096) == data[off : off + 4096]
            live = MAPS.live
            tier = f._router.disk.tier_for(f._key(0))
            while tier.unmap_oldest():
                pass
            # Both maps closed: the file remembered their checks weakly.
            assert MAPS.live == live - 2
            for off in (9000, CS + 9000):  # mapped again, verified again
                f.seek(off)
                assert f.read(4096) == data[off : off + 4096]
            assert MAPS.live == live
        fs.close()


def test_reads_of_any_size_and_place_through_chunks_verified_in_part(tmp_path):
    # Random bytes (blob() repeats every 4 KiB: a read at the wrong offset
    # would pass); sizes inside a block, across blocks and chunks, none,
    # zero, and positions past the end.
    rng = random.Random(11)
    data = rng.randbytes(2 * CS + 5000)
    with HTTPOrigin(files={"f.bin": data}) as origin:
        url = origin.url_for("f.bin")
        opts = warm(tmp_path, url, data)
        origin.reset_stats()
        fs = CacheFileSystem(**opts)
        sizes = [None, -1, 0, 1, 4095, 4096, BLOCK + 1, 3 * BLOCK, CS + 7]
        with fs.open(url, "rb") as f:
            for _ in range(400):
                pos = rng.randrange(0, len(data) + 64)
                size = rng.choice(sizes)
                f.seek(pos)
                end = None if size is None or size < 0 else pos + size
                want = data[pos:end]
                assert f.read(size) == want, (pos, size)
                assert f.tell() == pos + len(want)
        assert origin.stats.bytes_sent == 0
        assert fs.cache_stats()["disk"]["checksum_failures"] == 0
        fs.close()
