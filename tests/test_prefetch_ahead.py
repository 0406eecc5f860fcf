"""How far an explicit prefetch runs ahead of its reader.

A prefetch with a reader keeps staged and in flight what hides the origin's
wait (``PrefetchHandle.ahead``), not the whole ``prefetch_limit``: bytes
landed long before their reader takes them are memory a cold pass pays for
in page faults. Once the reader leaves staged chunks waiting
(``staging.READER_IDLE``), the whole budget applies again, so a prefetch
nobody reads is never held back.
"""

from __future__ import annotations

import time

import pytest

import cachefs.prefetch
import cachefs.tiers.staging
from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20
FILES = 24
SIZE = 4 * MiB
BATCH = 2 * MiB  # max_coalesce: the prefetch's batch
LIMIT = 64 * MiB


@pytest.fixture
def small_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bound of 8 MiB (and at most 16 batches of 2 MiB, 32 MiB, however
    # the origin's wait is measured) inside a 64 MiB budget.
    monkeypatch.setattr(cachefs.prefetch, "AHEAD_FLOOR", 8 * MiB)


def _fs(make_fs, **more):
    return make_fs(
        chunk_size="1MiB",
        max_coalesce=BATCH,
        prefetch_limit=LIMIT,
        prefetch_hold=60.0,
        readahead=0,
        ram_limit="16MiB",
        disk_limit="1GiB",
        **more,
    )


def test_a_prefetch_stays_within_its_bound_while_its_reader_reads(
    make_fs, small_floor, monkeypatch
):
    # The bound never gives way here, however slow the machine, and this
    # origin's responses count as fast whatever rate it reaches.
    monkeypatch.setattr(cachefs.tiers.staging, "READER_IDLE", 600.0)
    monkeypatch.setattr(cachefs.prefetch, "FAST_BODY", 0.0)
    files = make_shards(FILES, SIZE, seed=21)
    with HTTPOrigin(files=files) as origin:
        fs = _fs(make_fs)
        urls = [origin.url_for(n) for n in sorted(files)]
        handle = fs.prefetch(urls)
        for name, url in zip(sorted(files), urls, strict=True):
            with fs.open(url, "rb") as f:
                got = b""
                while piece := f.read(MiB):
                    got += piece
                    time.sleep(0.01)  # a reader slower than the origin
            assert got == files[name]
        assert handle.wait(timeout=60) and not handle.failed
        stats = fs.cache_stats()["prefetch"]
        # The whole 64 MiB budget would have been filled by a reader this
        # slow; within the bound, at most 16 batches were ever ahead.
        assert 0 < stats["peak_staged_bytes"] <= 16 * BATCH
        assert stats["wasted"] == 0
        # The reader's open (readahead off: a metadata call) waits for the
        # prefetch's first read of its file when one is under way, so no
        # chunk comes from the origin twice.
        fs.wait_idle()
        assert origin.stats.bytes_sent == FILES * SIZE


def test_a_prefetch_nobody_reads_gets_the_whole_budget(make_fs, small_floor):
    files = make_shards(FILES, SIZE, seed=22)
    with HTTPOrigin(files=files) as origin:
        fs = _fs(make_fs)
        urls = [origin.url_for(n) for n in sorted(files)]
        began = time.monotonic()
        handle = fs.prefetch(urls)
        # Held to the bound with nobody taking, it would wait prefetch_hold
        # (60 s) per bound's worth; it finishes in a fraction of that.
        finished = handle.wait(timeout=30)
        if not finished:
            handle.cancel()
        assert finished, (
            f"stalled at {handle.progress} after {time.monotonic() - began:.1f} s"
        )
        assert not handle.failed
        fs.wait_idle()
        stats = fs.cache_stats()["prefetch"]
        assert stats["peak_staged_bytes"] > 16 * BATCH  # past the bound
        assert origin.stats.bytes_sent == FILES * SIZE
        for name, url in zip(sorted(files), urls, strict=True):
            assert fs.cat_file(url) == files[name]
        assert origin.stats.bytes_sent == FILES * SIZE


def test_slow_responses_get_the_whole_budget_in_flight(
    make_fs, small_floor, monkeypatch
):
    # Each response comes in at 4 MiB/s, far under FAST_BODY: more of them
    # in flight bring more, so the bound (four 2 MiB batches here) must not
    # hold once the first body has been measured. Nobody reads, and the
    # bound would not give way for that either (READER_IDLE): held to it,
    # the prefetch would wait prefetch_hold (60 s) for a reader.
    monkeypatch.setattr(cachefs.tiers.staging, "READER_IDLE", 600.0)
    files = make_shards(16, 2 * MiB, seed=23)
    with HTTPOrigin(files=files, bandwidth=4 * MiB) as origin:
        fs = _fs(make_fs)
        urls = [origin.url_for(n) for n in sorted(files)]
        handle = fs.prefetch(urls)
        finished = handle.wait(timeout=30)
        if not finished:
            handle.cancel()
        assert finished, f"held to the bound: {handle.progress}"
        assert not handle.failed
        rate = handle._pacing.body_rate
        assert rate is not None and rate < cachefs.prefetch.FAST_BODY
        assert origin.stats.max_concurrent > 8 * MiB // BATCH
        for name, url in zip(sorted(files), urls, strict=True):
            assert fs.cat_file(url) == files[name]
        assert origin.stats.bytes_sent == 16 * 2 * MiB
