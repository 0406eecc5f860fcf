"""``fs.prefetch(paths)`` with nobody reading: the staging area never stalls it.

Staged chunks that the disk tier holds cost nothing to drop (their reader
maps them there), so a prefetch longer than ``prefetch_limit`` streams onto
disk instead of waiting ``prefetch_hold`` for a reader that is not there.
Only chunks that exist nowhere else (no disk tier) wait for their reader.
"""

from __future__ import annotations

import time

import pytest

from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20
HOLD = 60.0  # what the old code waited before dropping an unread chunk
FILES = 32
SIZE = 4 * MiB


def test_prefetch_with_nobody_reading_does_not_wait_the_hold(make_fs):
    files = make_shards(FILES, SIZE, seed=12)
    with HTTPOrigin(files=files) as origin:
        # 128 MiB asked for through an 8 MiB staging area.
        fs = make_fs(
            chunk_size="4MiB",
            prefetch_limit="8MiB",
            prefetch_hold=HOLD,
            ram_limit="16MiB",
            disk_limit="1GiB",
        )
        urls = [origin.url_for(name) for name in sorted(files)]
        began = time.monotonic()
        handle = fs.prefetch(urls)
        # The old code stalls here for HOLD seconds per budget's worth; a
        # fifth of one hold is far more than the new code needs.
        finished = handle.wait(timeout=HOLD / 5)
        took = time.monotonic() - began
        if not finished:
            handle.cancel()
        assert finished, f"prefetch stalled: {handle.progress} after {took:.1f} s"
        assert not handle.failed
        fs.wait_idle()
        stats = fs.cache_stats()["prefetch"]
        # Every chunk is on disk: what was dropped unread was spilled there.
        assert len(fs.router.disks[0]) == FILES
        assert stats["spilled"] > 0 and stats["wasted"] == 0
        assert stats["peak_staged_bytes"] <= 8 * MiB
        sent = origin.stats.bytes_sent
        assert sent == FILES * SIZE  # each byte fetched once
        # Read back from disk, exact, without one more origin byte.
        for name, url in zip(sorted(files), urls, strict=True):
            assert fs.cat_file(url) == files[name]
        assert origin.stats.bytes_sent == sent
        print(f"prefetch of {FILES} x {SIZE // MiB} MiB unread: {took:.2f} s")


def test_without_a_disk_tier_unread_chunks_still_wait_for_their_reader(make_fs):
    # Chunks held nowhere else keep their hold: dropping them would cost a
    # second origin read when their reader comes.
    files = make_shards(3, 4 * MiB, seed=13)
    with HTTPOrigin(files=files) as origin:
        fs = make_fs(
            chunk_size="4MiB",
            prefetch_limit="8MiB",
            prefetch_hold=HOLD,
            disk_limit=0,
        )
        urls = [origin.url_for(name) for name in sorted(files)]
        handle = fs.prefetch(urls)
        deadline = time.monotonic() + 30
        while not handle.progress[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.progress[0] == 4 * MiB  # the first file, staged, unread
        assert not handle.wait(timeout=1.0)  # the next wait for room
        stats = fs.cache_stats()["prefetch"]
        assert stats["spilled"] == 0 and stats["wasted"] == 0
        assert stats["staged_bytes"] == 4 * MiB
        handle.cancel()
        fs.close()


@pytest.mark.parametrize("hold", [0.0, HOLD])
def test_with_no_hold_a_stored_chunk_leaves_staging_at_once(make_fs, hold):
    # prefetch_hold=0 (``cachefs warm``: nobody will read): each chunk of a
    # huge page or more leaves staging as soon as the disk tier holds it, so
    # its landing buffer takes the next chunk; with a hold, staged chunks
    # wait for their reader (the budget here is large enough for all).
    files = make_shards(4, 8 * MiB, seed=14)
    with HTTPOrigin(files=files) as origin:
        fs = make_fs(
            chunk_size="2MiB",
            prefetch_limit="64MiB",
            prefetch_hold=hold,
            ram_limit=0,
            disk_limit="1GiB",
        )
        urls = [origin.url_for(name) for name in sorted(files)]
        handle = fs.prefetch(urls)
        assert handle.wait(timeout=60) and not handle.failed
        fs.wait_idle()
        stats = fs.cache_stats()["prefetch"]
        assert len(fs.router.disks[0]) == 16
        if hold:
            assert stats["staged_bytes"] == 32 * MiB and stats["spilled"] == 0
        else:
            assert stats["staged_bytes"] == 0 and stats["spilled"] == 16
        assert stats["wasted"] == 0
        sent = origin.stats.bytes_sent
        assert sent == 32 * MiB
        for name, url in zip(sorted(files), urls, strict=True):
            assert fs.cat_file(url) == files[name]
        assert origin.stats.bytes_sent == sent
        fs.close()
