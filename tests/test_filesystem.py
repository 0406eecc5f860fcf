"""CacheFileSystem against a real HTTP origin: bytes, traffic, coherence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachefs import CachedFile, CacheFileSystem
from cachefs.testing import HTTPOrigin

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]


def first(files: dict[str, bytes]) -> tuple[str, bytes]:
    name = sorted(files)[0]
    return name, files[name]


def test_whole_file_and_ranges_are_exact(origin, shard_files, make_fs):
    fs = make_fs()
    name, data = first(shard_files)
    url = origin.url_for(name)
    assert fs.cat_file(url) == data
    assert fs.cat_file(url, 10, MiB + 10) == data[10 : MiB + 10]
    assert fs.cat_file(url, -100) == data[-100:]
    assert fs.cat_file(url, 5, -5) == data[5:-5]
    assert fs.cat_file(url, len(data) - 1, len(data) + 99) == data[-1:]
    assert fs.cat_file(url, 50, 50) == b""
    assert fs.cat_file(url, len(data) + 10) == b""


def test_second_read_costs_no_origin_bytes(origin, shard_files, make_fs):
    fs = make_fs()
    name, data = first(shard_files)
    url = origin.url_for(name)
    assert fs.cat_file(url) == data
    sent = origin.stats.bytes_sent
    assert sent == len(data)  # one pass, no read amplification
    assert fs.cat_file(url) == data
    with fs.open(url) as f:
        assert f.read() == data
    assert origin.stats.bytes_sent == sent


def test_new_process_reads_from_disk(origin, shard_files, make_fs, cache_dir):
    fs = make_fs()
    name, data = first(shard_files)
    url = origin.url_for(name)
    assert fs.cat_file(url) == data
    fs.wait_idle()
    origin.reset_stats()
    code = (
        "import fsspec, hashlib, sys\n"
        f"fs = fsspec.filesystem('cachefs', target_protocol='http', "
        f"cache_dir={str(cache_dir)!r}, chunk_size='1MiB')\n"
        f"sys.stdout.write(hashlib.sha256(fs.cat_file({url!r})).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    import hashlib

    assert out.stdout == hashlib.sha256(data).hexdigest()
    assert origin.stats.bytes_sent == 0


def test_metadata_ttl_none_serves_with_origin_down(shard_files, make_fs):
    name, data = first(shard_files)
    with HTTPOrigin(files=dict(shard_files)) as server:
        url = server.url_for(name)
        fs = make_fs(metadata_ttl=None)
        assert fs.cat_file(url) == data
        fs.wait_idle()
    fresh = make_fs(metadata_ttl=None, ram_limit=0)
    assert fresh.cat_file(url) == data
    assert fresh.info(url)["size"] == len(data)
    with fresh.open(url) as f:
        f.seek(MiB - 3)
        assert f.read(6) == data[MiB - 3 : MiB + 3]


def test_origin_change_seen_after_ttl(origin, make_fs):
    origin.set_file("changing.bin", b"a" * 3000)
    url = origin.url_for("changing.bin")
    fs = make_fs(metadata_ttl=0.3, chunk_size=1024)
    assert fs.cat_file(url) == b"a" * 3000
    origin.set_file("changing.bin", b"b" * 2500)
    assert fs.cat_file(url) == b"a" * 3000  # still within the TTL
    time.sleep(0.35)
    assert fs.cat_file(url) == b"b" * 2500
    with fs.open(url) as f:
        assert f.read() == b"b" * 2500


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    reads=st.lists(
        st.tuples(st.integers(0, 4 * 4096), st.integers(0, 6000)),
        min_size=1,
        max_size=8,
    ),
    ram=st.sampled_from([0, 10_000, 1 << 20]),
)
def test_random_reads_are_byte_exact(origin, make_fs, tmp_path_factory, reads, ram):
    data = bytes(range(256)) * 64 + b"tail"  # 16388 bytes: a short last chunk
    origin.set_file("exact.bin", data)
    url = origin.url_for("exact.bin")
    fs = make_fs(
        chunk_size=4096,
        ram_limit=ram,
        cache_dir=str(tmp_path_factory.mktemp("c")),
    )
    with fs.open(url) as f:
        for offset, length in reads:
            f.seek(offset)
            assert f.read(length) == data[offset : offset + length]
            assert f.tell() == min(offset + length, len(data)) or offset > len(data)
            buf = bytearray(length)
            f.seek(offset)
            n = f.readinto(buf)
            assert bytes(buf[:n]) == data[offset : offset + length]
            f.seek(offset)
            assert bytes(f.read_view(length)) == data[offset : offset + length]
            assert (
                fs.cat_file(url, offset, offset + length)
                == data[offset : offset + length]
            )


def test_read_view_is_zero_copy_inside_a_chunk(origin, shard_files, make_fs):
    fs = make_fs()
    name, data = first(shard_files)
    with fs.open(origin.url_for(name)) as f:
        assert isinstance(f, CachedFile)
        f.seek(100)
        v1 = f.read_view(1000)
        f.seek(100)
        v2 = f.read_view(1000)
        assert v1.readonly
        assert bytes(v1) == data[100:1100]
        # Both views point at the same cached buffer: nothing was copied.
        assert v1.obj is v2.obj
        with pytest.raises(TypeError):
            v1[0] = 1  # type: ignore[index]


def test_file_object_api(origin, shard_files, make_fs):
    fs = make_fs()
    name, data = first(shard_files)
    with fs.open(origin.url_for(name), "rb") as f:
        assert f.readable() and f.seekable() and not f.writable()
        assert f.seek(-10, os.SEEK_END) == len(data) - 10
        assert f.read() == data[-10:]
        assert f.read(5) == b""
        f.seek(3)
        assert f.seek(4, os.SEEK_CUR) == 7
        assert f.read(3) == data[7:10]
        with pytest.raises(ValueError, match="negative seek"):
            f.seek(-1)
        with pytest.raises(ValueError, match="whence"):
            f.seek(0, 7)
    with pytest.raises(ValueError, match="closed"):
        f.read(1)
    # text mode goes through io.TextIOWrapper on top of the binary file
    origin.set_file("hello.txt", "héllo\nworld\n".encode())
    with fs.open(origin.url_for("hello.txt"), "rt") as t:
        assert t.readlines() == ["héllo\n", "world\n"]


def test_cat_ranges_and_cat(origin, shard_files, make_fs):
    fs = make_fs()
    names = sorted(shard_files)
    urls = [origin.url_for(n) for n in names]
    starts = [0, MiB - 5, 2 * MiB, 7]
    ends = [10, MiB + 5, 3 * MiB + 100, 7]
    got = fs.cat_ranges(urls, starts, ends)
    want = [shard_files[n][s:e] for n, s, e in zip(names, starts, ends, strict=True)]
    assert got == want
    both = fs.cat(urls[:2])
    assert both == {urls[0]: shard_files[names[0]], urls[1]: shard_files[names[1]]}
    missing = origin.url_for("nope.bin")
    res = fs.cat_ranges([missing], [0], [1], on_error="return")
    assert isinstance(res[0], FileNotFoundError)


def test_coalesced_and_concurrent_fetch(origin, shard_files, make_fs):
    fs = make_fs(max_coalesce="2MiB", ram_limit=0)
    name, data = first(shard_files)
    assert fs.cat_file(origin.url_for(name)) == data
    # 4 chunks of 1 MiB: the first GET (which also tells the size, so no
    # HEAD) takes two of them, the other two are coalesced into one GET.
    assert origin.stats.get_requests == 2
    assert origin.stats.head_requests == 0
    assert origin.stats.bytes_sent == len(data)


def test_request_cap_is_respected(origin, shard_files, make_fs):
    origin.latency = 0.05
    fs = make_fs(max_requests=2, max_coalesce="1MiB")
    urls = [origin.url_for(n) for n in sorted(shard_files)]
    fs.cat(urls)
    assert origin.max_concurrent == 2
    assert fs.cache_stats()["origin"]["requests"] == 16


def test_metadata_passes_through_and_is_cached(origin, shard_files, make_fs):
    fs = make_fs()
    names = sorted(shard_files)
    base = origin.url_for("shards/")
    listing = fs.ls(base, detail=False)
    assert sorted(listing) == sorted(origin.url_for(n) for n in names)
    assert fs.exists(origin.url_for(names[0]))
    assert not fs.exists(origin.url_for("shards/missing.bin"))
    assert fs.size(origin.url_for(names[1])) == len(shard_files[names[1]])
    assert fs.isfile(origin.url_for(names[1]))
    found = fs.find(base)
    assert sorted(found) == sorted(origin.url_for(n) for n in names)
    assert sorted(fs.glob(base + "*.bin")) == sorted(found)
    before = origin.stats.requests
    fs.info(origin.url_for(names[1]))
    fs.ls(base)
    assert origin.stats.requests == before  # served from the metadata cache


def test_open_needs_no_extra_round_trip_when_info_known(origin, shard_files, make_fs):
    fs = make_fs()
    name, data = first(shard_files)
    url = origin.url_for(name)
    fs.info(url)
    origin.reset_stats()
    with fs.open(url) as f:
        assert f.read(10) == data[:10]
    assert origin.stats.head_requests == 0


def test_missing_file_is_file_not_found(origin, make_fs):
    fs = make_fs()
    with pytest.raises(FileNotFoundError):
        fs.cat_file(origin.url_for("absent.bin"))
    with pytest.raises(FileNotFoundError):
        fs.open(origin.url_for("absent.bin"))


def test_fsspec_url_chaining_and_entry_point(origin, shard_files, cache_dir):
    name, data = first(shard_files)
    url = origin.url_for(name)
    with fsspec.open(
        f"cachefs::{url}",
        cachefs={"cache_dir": str(cache_dir), "chunk_size": "1MiB"},
    ) as f:
        assert f.read() == data
    fs, path = fsspec.core.url_to_fs(
        f"cachefs::{url}", cachefs={"cache_dir": str(cache_dir)}
    )
    assert isinstance(fs, CacheFileSystem) and path == url
    # The unstripped form routes back: fsspec learns the target from it, and
    # DuckDB routes it to a registered cachefs by its "cachefs://" prefix.
    full = fs.unstrip_protocol(path)
    assert full == f"cachefs://{url}"
    with fsspec.open(full, cachefs={"cache_dir": str(cache_dir)}) as f:
        assert f.read() == data
    # The entry point registers the protocol without importing cachefs first.
    code = (
        "import sys, fsspec\n"
        "assert 'cachefs' not in sys.modules\n"
        "cls = fsspec.get_filesystem_class('cachefs')\n"
        "print(cls.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "cachefs.filesystem"


def test_cache_stats_shape(origin, shard_files, make_fs):
    fs = make_fs()
    name, _ = first(shard_files)
    fs.cat_file(origin.url_for(name))
    hits = fs.cache_stats()["ram"]["hits"]
    fs.cat_file(origin.url_for(name))
    stats = fs.cache_stats()
    json.dumps(stats)
    for tier in ("ram", "disk"):
        for field in ("hits", "misses", "hit_bytes", "evictions", "checksum_failures"):
            assert field in stats[tier]
    assert stats["ram"]["hits"] == hits + 4  # four 1 MiB chunks, all in RAM
    assert stats["origin"]["bytes"] == origin.stats.bytes_sent


def test_pickle_round_trip(origin, shard_files, make_fs):
    import pickle

    fs = make_fs()
    name, data = first(shard_files)
    url = origin.url_for(name)
    clone = pickle.loads(pickle.dumps(fs))
    assert isinstance(clone, CacheFileSystem)
    assert clone.cat_file(url, 0, 100) == data[:100]
    with fs.open(url) as f:
        f.seek(42)
        g = pickle.loads(pickle.dumps(f))
        assert g.read(8) == data[42:50]
        g.close()


def test_tiers_off(origin, shard_files, make_fs, cache_dir):
    name, data = first(shard_files)
    url = origin.url_for(name)
    fs = make_fs(ram_limit=0, disk_limit=0)
    assert fs.cat_file(url) == data
    # The first fill ends before the second read: a read that comes while it
    # is still in flight joins it (single flight), which is not caching.
    fs.wait_idle()
    assert fs.cat_file(url) == data
    assert origin.stats.bytes_sent == 2 * len(data)  # nothing cached
    assert "ram" not in fs.cache_stats() and "disk" not in fs.cache_stats()
    assert not cache_dir.exists()


def test_sync_target_is_offloaded(
    tmp_path: Path, make_fs: Callable[..., CacheFileSystem]
):
    src = tmp_path / "src.bin"
    data = os.urandom(3 * MiB + 7)
    src.write_bytes(data)
    fs = make_fs(target_protocol="file")
    assert fs.cat_file(str(src)) == data
    assert fs.cat_file(f"file://{src}", 5, 10) == data[5:10]
    fs2 = make_fs(target_protocol=None, fs=fsspec.filesystem("memory"))
    fs2.pipe_file("/m/x.bin", data)
    assert fs2.cat_file("memory://m/x.bin") == data


def test_cat_ranges_coalesces_misses_across_ranges(origin, shard_files, make_fs):
    fs = make_fs(ram_limit="64MiB")
    name, data = first(shard_files)
    url = origin.url_for(name)
    fs.info(url)  # the version is known: only data requests follow
    origin.reset_stats()
    starts = [0, MiB, 2 * MiB]
    ends = [MiB, 2 * MiB, 3 * MiB]
    got = fs.cat_ranges([url] * 3, starts, ends)
    assert got == [data[s:e] for s, e in zip(starts, ends, strict=True)]
    assert origin.stats.get_requests == 1  # three adjacent chunks, one GET
