"""Readahead, explicit prefetch, retries and lifecycle against a real origin."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cachefs import CacheFileSystem
from cachefs.prefetch import AHEAD_FLOOR
from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20


def read_all(fs: CacheFileSystem, url: str, step: int = 256 * 1024) -> bytes:
    out = bytearray()
    with fs.open(url) as f:
        while chunk := f.read(step):
            out += chunk
    return bytes(out)


def test_sequential_reader_reads_ahead_without_duplicate_fetches(origin, make_fs):
    data = os.urandom(8 * MiB + 5)
    origin.set_file("seq.bin", data)
    origin.latency = 0.01
    fs = make_fs(readahead="4MiB", ram_limit="64MiB")
    url = origin.url_for("seq.bin")
    assert read_all(fs, url) == data
    fs.wait_idle()
    stats = fs.cache_stats()["prefetch"]
    assert stats["issued"] > 0
    assert stats["used"] == stats["issued"]
    assert stats["wasted"] == 0
    # A reader that caught up with a chunk in flight waited on that fetch.
    assert origin.stats.bytes_sent == len(data)


def test_random_reader_gets_no_readahead(origin, make_fs):
    data = os.urandom(6 * MiB)
    origin.set_file("rand.bin", data)
    fs = make_fs(readahead="8MiB")
    url = origin.url_for("rand.bin")
    with fs.open(url) as f:
        for offset in (5 * MiB, 2 * MiB + 7, 4 * MiB + 99, 3 * MiB):
            f.seek(offset)
            assert f.read(1000) == data[offset : offset + 1000]
    fs.wait_idle()
    assert fs.cache_stats()["prefetch"]["issued"] == 0


def test_explicit_prefetch_then_read_costs_no_wait(origin, shard_files, make_fs):
    fs = make_fs(ram_limit="64MiB")
    urls = [origin.url_for(n) for n in sorted(shard_files)]
    handle = fs.prefetch(urls)
    assert handle.wait(timeout=30)
    done, total = handle.progress
    assert done == total == sum(len(v) for v in shard_files.values())
    assert not handle.failed
    sent = origin.stats.bytes_sent
    for url, name in zip(urls, sorted(shard_files), strict=True):
        assert fs.cat_file(url) == shard_files[name]
    assert origin.stats.bytes_sent == sent


def test_prefetch_puts_many_files_first_reads_in_flight_at_once(make_fs):
    # Large files (over 4 MiB) used to be resolved one at a time: a file's
    # first GET waited for the previous file's headers.
    files = make_shards(8, 8 * MiB, seed=13, prefix="wide/")
    # Long enough that one-at-a-time resolution (8 round trips, 4 s) cannot
    # hide inside a busy machine's scheduling noise.
    latency = 0.5
    with HTTPOrigin(files=files, latency=latency) as server:
        fs = make_fs(ram_limit="128MiB", disk_limit=0)
        urls = [server.url_for(n) for n in sorted(files)]
        began = time.perf_counter()
        handle = fs.prefetch(urls)
        assert handle.wait(timeout=30)
        elapsed = time.perf_counter() - began
        assert not handle.failed
        assert handle.progress == (64 * MiB, 64 * MiB)
        stats = server.stats
        # One GET per file, no HEAD; the files' first GETs overlapped: as
        # many as the prefetch keeps ahead before it has measured the
        # origin's wait (AHEAD_FLOOR of 16 MiB first batches: 4), then the
        # rest at once.
        assert stats.head_requests == 0
        assert stats.get_requests == len(files)
        assert stats.max_concurrent >= AHEAD_FLOOR // (16 * MiB)
        # Eight round trips one after another take at least 8 x latency; the
        # overlap is proven by max_concurrent, this only rules out a serial
        # path that happened to overlap its tail.
        assert elapsed < len(files) * latency, elapsed
        assert stats.bytes_sent == 64 * MiB
        for url, name in zip(urls, sorted(files), strict=True):
            assert fs.cat_file(url) == files[name]
        assert server.stats.bytes_sent == 64 * MiB
        fs.close()


def test_prefetch_respects_its_byte_budget(origin, make_fs):
    files = make_shards(6, 3 * MiB, seed=3, prefix="budget/")
    for name, data in files.items():
        origin.set_file(name, data)
    fs = make_fs(prefetch_limit="2MiB", ram_limit="64MiB", disk_limit=0)
    urls = [origin.url_for(n) for n in sorted(files)]
    handle = fs.prefetch(urls)
    # Consume slowly; the prefetcher must stream within its budget.
    for url, name in zip(urls, sorted(files), strict=True):
        assert read_all(fs, url) == files[name]
        time.sleep(0.02)
    assert handle.wait(timeout=30)
    stats = fs.cache_stats()["prefetch"]
    assert 0 < stats["peak_staged_bytes"] <= 2 * MiB
    assert stats["staged_bytes"] == 0


def test_prefetch_ranges_and_failures_are_recorded_not_raised(
    origin, shard_files, make_fs
):
    fs = make_fs()
    name = sorted(shard_files)[0]
    url = origin.url_for(name)
    handle = fs.prefetch([(url, MiB, 2 * MiB), origin.url_for("absent.bin")])
    assert handle.wait(timeout=30)
    assert handle.progress == (MiB, MiB)
    assert [p for p, _ in handle.failed] == [origin.url_for("absent.bin")]
    assert isinstance(handle.failed[0][1], FileNotFoundError)
    with pytest.raises(TypeError, match="prefetch"):
        fs.prefetch("not-a-list")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefetch items"):
        fs.prefetch([42])  # type: ignore[list-item]


def test_cancel_stops_a_prefetch(origin, make_fs):
    files = make_shards(8, 2 * MiB, seed=5, prefix="cancel/")
    for name, data in files.items():
        origin.set_file(name, data)
    origin.latency = 0.05
    fs = make_fs(prefetch_limit="2MiB", max_requests=1)
    handle = fs.prefetch([origin.url_for(n) for n in sorted(files)])
    time.sleep(0.15)
    handle.cancel()
    assert handle.wait(timeout=10)
    fs.wait_idle()
    assert origin.stats.bytes_sent < sum(len(v) for v in files.values())


@pytest.mark.parametrize("kind", ["503", "429", "reset", "short", "stall"])
def test_ten_percent_faults_still_read_everything_exactly(kind, make_fs, tmp_path):
    files = make_shards(4, 2 * MiB + 999, seed=11, prefix="faulty/")
    with HTTPOrigin(files=files, fault_rate=0.1, fault_kind=kind, seed=4) as server:
        server.stall_seconds = 2.0
        fs = make_fs(
            chunk_size="256kB",
            max_coalesce="512kB",
            retries=6,
            request_timeout=0.5,
            cache_dir=str(tmp_path / kind),
        )
        fs.fetcher.backoff = 0.005
        for name, data in sorted(files.items()):
            assert read_all(fs, server.url_for(name)) == data
        assert server.stats.faults > 0
        assert fs.cache_stats()["origin"]["retries"] >= server.stats.faults - 1


def test_persistent_faults_fail_clearly_and_quickly(make_fs, tmp_path):
    data = os.urandom(MiB)
    with HTTPOrigin(
        files={"bad.bin": data}, fault_rate=1.0, fault_kind="503"
    ) as server:
        fs = make_fs(retries=3, cache_dir=str(tmp_path / "c"))
        fs.fetcher.backoff = 0.01
        url = server.url_for("bad.bin")
        fs.info(url)  # HEAD requests are not faulted: only the data fails
        began = time.monotonic()
        with pytest.raises(ConnectionError) as err:
            fs.cat_file(url, 0, 1000)
        assert time.monotonic() - began < 10
        message = str(err.value)
        assert (
            url in message and "bytes 0-" in message and "after 4 attempts" in message
        )
        assert fs.cache_stats()["origin"]["errors"] >= 1


def test_failed_prefetch_is_logged_never_raised(make_fs, tmp_path, caplog):
    data = os.urandom(MiB)
    with HTTPOrigin(
        files={"bad.bin": data}, fault_rate=1.0, fault_kind="reset"
    ) as server:
        fs = make_fs(retries=1, cache_dir=str(tmp_path / "c"))
        fs.fetcher.backoff = 0.001
        handle = fs.prefetch([server.url_for("bad.bin")])
        assert handle.wait(timeout=20)
        assert handle.failed and isinstance(handle.failed[0][1], ConnectionError)
        assert "prefetch of" in caplog.text
        assert fs.cache_stats()["prefetch"]["failed"] >= 1


def test_close_leaves_no_tasks_or_threads(origin, shard_files, make_fs):
    fs = make_fs(readahead="8MiB")
    urls = [origin.url_for(n) for n in sorted(shard_files)]
    fs.cat_file(urls[0])  # start fsspec's loop and the executor
    fs.wait_idle()
    before = threading.active_count()
    origin.latency = 0.05
    for _ in range(3):
        handle = fs.prefetch(urls)
        with fs.open(urls[1]) as f:
            f.read(10)
        fs.close()
        assert handle.wait(timeout=10)
    fs.close()
    gc.collect()
    assert not fs.router._tasks
    assert not fs.router._inflight

    async def ours() -> list[str]:
        import asyncio

        me = asyncio.current_task()
        return [repr(t) for t in asyncio.all_tasks() if t is not me]

    from fsspec.asyn import sync

    assert sync(fs.loop, ours) == []
    assert threading.active_count() <= before + 1  # executor threads are reused


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_usable_after_fork(origin, shard_files, make_fs):
    fs = make_fs()
    names = sorted(shard_files)
    assert fs.cat_file(origin.url_for(names[0])) == shard_files[names[0]]
    fs.wait_idle()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read a cached file and an uncached one
        try:
            os.close(read_end)
            a = fs.cat_file(origin.url_for(names[0]))
            b = read_all(fs, origin.url_for(names[1]))
            digest = hashlib.sha256(a + b).hexdigest().encode()
            os.write(write_end, digest)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        got = pipe.read()
    os.waitpid(pid, 0)
    want = hashlib.sha256(shard_files[names[0]] + shard_files[names[1]])
    assert got.decode() == want.hexdigest()
    # The parent is unaffected.
    assert fs.cat_file(origin.url_for(names[2])) == shard_files[names[2]]


def test_first_reads_in_flight_follow_the_wait_for_the_first_byte():
    # Unit: how many new files' first reads a prefetch keeps in flight. Two
    # until one has ended; then (first byte + body) / body of them, 2 to 16.
    from cachefs.prefetch import FirstReads

    pacing = FirstReads(16)
    pacing.running = 2
    assert not pacing.may_start()
    pacing.finished(0.001, 0.016)  # loopback: the body is the wait
    assert pacing.allowed == 2 and pacing.may_start()
    pacing.running += 1
    pacing.finished(0.5, 0.02)  # a 500 ms origin: as many as allowed
    assert pacing.allowed == 16
    pacing.finished(None, None)  # failed: counted, nothing learned
    assert pacing.running == 0 and pacing.allowed == 16
    pacing.finished(0.05, 0.05)
    assert pacing.allowed == 2


@contextlib.contextmanager
def _first_read_under_way(
    make_fs, readahead, size: int, **origin_options
) -> Iterator[tuple[HTTPOrigin, CacheFileSystem, str, Any, bytes]]:
    """A prefetch of one file whose first read's GET is at the origin.

    Yields the origin, the filesystem, the file's URL, the prefetch's handle
    and the file's bytes.
    """
    data = os.urandom(size)
    with HTTPOrigin(files={"a.bin": data}, fault_rate=1.0, **origin_options) as origin:
        fs = make_fs(readahead=readahead, max_coalesce=size)
        url = origin.url_for("a.bin")
        handle = fs.prefetch([url])
        deadline = time.monotonic() + 30
        while origin.stats.get_requests < 1:
            assert time.monotonic() < deadline, "the prefetch sent no GET"
            time.sleep(0.005)
        yield origin, fs, url, handle, data


@pytest.mark.parametrize("readahead", [0, "4MiB"])
def test_an_open_during_a_prefetchs_first_read_fetches_nothing_twice(
    make_fs, readahead
):
    # Every GET waits 0.5 s before its headers (a "stall" on each); HEADs
    # answer at once. An open that learned the version by a HEAD (readahead
    # off) found none of the first read's chunks in flight yet, their
    # version unknown until those headers, and fetched them again.
    with _first_read_under_way(
        make_fs, readahead, 4 * MiB, fault_kind="stall", stall_seconds=0.5
    ) as (origin, fs, url, handle, data):
        assert read_all(fs, url) == data
        assert handle.wait(timeout=30) and not handle.failed
        fs.wait_idle()
        assert origin.stats.bytes_sent == len(data)
        assert origin.stats.get_requests == 1
        assert origin.stats.head_requests == 0


def test_an_open_waiting_on_a_failed_first_read_learns_the_version_itself(make_fs):
    # Every GET answers 503 (after 0.2 s); HEADs succeed. The open
    # (readahead off) waits for the prefetch's first read under way, which
    # fails: that failure is the prefetch's, and the open learns the version
    # with its own HEAD.
    with _first_read_under_way(make_fs, 0, 2 * MiB, latency=0.2) as (
        origin,
        fs,
        url,
        handle,
        data,
    ):
        with fs.open(url) as f:
            assert f.size == len(data)
        assert handle.wait(timeout=60) and handle.failed
        assert origin.stats.head_requests == 1


@pytest.mark.parametrize("readahead", [0, "4MiB"])
def test_an_open_outlives_a_cancelled_prefetchs_first_read(make_fs, readahead):
    # The open shares the prefetch's first read of the file (GETs answer
    # after 1 s); the prefetch is cancelled meanwhile. The open learns the
    # version itself and reads the file: it used to fail with a TypeError
    # (readahead on), the shared read's cancellation surfacing as None.
    with _first_read_under_way(
        make_fs, readahead, 4 * MiB, fault_kind="stall", stall_seconds=1.0
    ) as (_, fs, url, handle, data):
        got: dict[str, object] = {}

        def reader() -> None:
            try:
                got["data"] = read_all(fs, url)
            except Exception as exc:  # reported by the assertion below
                got["error"] = exc

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.2)  # the open is waiting on the first read by now
        handle.cancel()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert got.get("data") == data, got.get("error")
