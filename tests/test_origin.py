"""Tests of the benchmark HTTP origin server (real sockets, real clients)."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp
import fsspec
import pytest
from fsspec.asyn import sync
from fsspec.implementations.http import HTTPFileSystem

from cachefs.testing import HTTPOrigin, make_shards

SIZE = 300_000
FILES = {
    **make_shards(3, SIZE, seed=1, prefix="data/"),
    "data/sub/notes.txt": b"hello world\n",
    "top.bin": b"0123456789",
}
SHARD = "data/shard-0000.bin"
DATA = FILES[SHARD]


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, Message, bytes]:
    """GET/HEAD with urllib; HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read()


@pytest.fixture
def origin() -> Iterator[HTTPOrigin]:
    with HTTPOrigin(FILES) as server:
        yield server


@pytest.fixture
def fs() -> Iterator[HTTPFileSystem]:
    filesystem = fsspec.filesystem("http", skip_instance_cache=True)
    yield filesystem
    session = sync(filesystem.loop, filesystem.set_session)
    sync(filesystem.loop, session.close)


# -- basic HTTP semantics ---------------------------------------------------


def test_full_get(origin: HTTPOrigin) -> None:
    status, headers, body = fetch(origin.url_for(SHARD))
    assert status == 200
    assert body == DATA
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Accept-Ranges"] == "bytes"
    assert "Content-Encoding" not in headers
    assert "Content-Range" not in headers
    stats = origin.stats
    assert (stats.requests, stats.get_requests, stats.head_requests) == (1, 1, 0)
    assert stats.bytes_sent == SIZE
    assert stats.bytes_by_path == {SHARD: SIZE}


@pytest.mark.parametrize(
    ("spec", "start", "stop"),
    [
        ("bytes=10-99", 10, 100),
        ("bytes=0-0", 0, 1),
        ("bytes=299000-", 299_000, SIZE),
        ("bytes=-25", SIZE - 25, SIZE),
        ("bytes=-999999999", 0, SIZE),
        ("bytes=299990-999999999", 299_990, SIZE),
    ],
)
def test_range_get(origin: HTTPOrigin, spec: str, start: int, stop: int) -> None:
    status, headers, body = fetch(origin.url_for(SHARD), headers={"Range": spec})
    assert status == 206
    assert body == DATA[start:stop]
    assert headers["Content-Length"] == str(stop - start)
    assert headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert origin.stats.bytes_sent == stop - start


@pytest.mark.parametrize(
    "spec", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-10000000", "bytes=-0"]
)
def test_unsatisfiable_range(origin: HTTPOrigin, spec: str) -> None:
    status, headers, _ = fetch(origin.url_for(SHARD), headers={"Range": spec})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert origin.stats.bytes_sent == 0


def test_malformed_range_is_ignored(origin: HTTPOrigin) -> None:
    status, _, body = fetch(origin.url_for(SHARD), headers={"Range": "bytes=9-3"})
    assert (status, body) == (200, DATA)


@pytest.mark.parametrize("path", ["missing.bin", "data/nope/", "data/shard-0000.bin/"])
def test_missing_is_404(origin: HTTPOrigin, path: str) -> None:
    assert fetch(origin.url_for(path))[0] == 404
    assert fetch(origin.url_for(path), method="HEAD")[0] == 404


def test_head(origin: HTTPOrigin) -> None:
    status, headers, body = fetch(origin.url_for(SHARD), method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["Content-Length"] == str(SIZE)
    assert (
        headers["ETag"] == '"' + hashlib.blake2b(DATA, digest_size=8).hexdigest() + '"'
    )
    assert (
        abs(parsedate_to_datetime(headers["Last-Modified"]).timestamp() - time.time())
        < 60
    )
    assert "Content-Encoding" not in headers
    stats = origin.stats
    assert (stats.head_requests, stats.get_requests, stats.bytes_sent) == (1, 0, 0)


def test_if_none_match(origin: HTTPOrigin) -> None:
    etag = fetch(origin.url_for(SHARD), method="HEAD")[1]["ETag"]
    assert fetch(origin.url_for(SHARD), headers={"If-None-Match": etag})[0] == 304
    assert fetch(origin.url_for(SHARD), headers={"If-None-Match": '"x"'})[0] == 200


def test_set_file_changes_etag_and_last_modified(
    origin: HTTPOrigin, fs: HTTPFileSystem
) -> None:
    url = origin.url_for("top.bin")
    before = fs.info(url)
    origin.set_file("top.bin", b"new content")
    after = fs.info(url)
    assert after["size"] == len(b"new content")
    assert after["ETag"] != before["ETag"]
    assert after["Last-Modified"] != before["Last-Modified"]
    assert fs.cat_file(url) == b"new content"
    origin.set_file("added/file.txt", b"abc")
    assert fs.cat_file(origin.url_for("added/file.txt")) == b"abc"
    origin.remove_file("top.bin")
    assert fetch(url)[0] == 404


# -- fsspec HTTPFileSystem ----------------------------------------------------


def test_fsspec_listing(origin: HTTPOrigin, fs: HTTPFileSystem) -> None:
    base = origin.url
    shards = [f"{base}/data/shard-{i:04d}.bin" for i in range(3)]
    assert fs.ls(f"{base}/data", detail=False) == [*shards, f"{base}/data/sub/"]
    assert fs.ls(f"{base}/data/", detail=False) == [*shards, f"{base}/data/sub/"]
    entries = {e["name"]: e["type"] for e in fs.ls(f"{base}/data")}
    assert entries[f"{base}/data/sub/"] == "directory"
    assert entries[shards[0]] == "file"
    assert fs.ls(base + "/", detail=False) == [f"{base}/data/", f"{base}/top.bin"]
    assert fs.find(f"{base}/data") == [*shards, f"{base}/data/sub/notes.txt"]
    assert fs.glob(f"{base}/data/*.bin") == shards
    assert fs.isdir(f"{base}/data")


def test_fsspec_reads(origin: HTTPOrigin, fs: HTTPFileSystem) -> None:
    url = origin.url_for(SHARD)
    info = fs.info(url)
    assert info["size"] == SIZE
    assert info["ETag"].startswith('"')
    assert fs.cat_file(url) == DATA
    assert fs.cat_file(url, start=100, end=200) == DATA[100:200]
    assert fs.cat_file(url, start=-10) == DATA[-10:]
    with fs.open(url, block_size=4096) as f:
        f.seek(123_456)
        assert f.read(1000) == DATA[123_456:124_456]
        f.seek(SIZE - 5)
        assert f.read() == DATA[-5:]


def test_disk_root(tmp_path: Path, fs: HTTPFileSystem) -> None:
    (tmp_path / "dir" / "deep").mkdir(parents=True)
    (tmp_path / "dir" / "a.bin").write_bytes(b"a" * 1000)
    (tmp_path / "dir" / "deep" / "b.bin").write_bytes(b"b" * 10)
    with HTTPOrigin(root=tmp_path, files={"mem.bin": b"m"}) as server:
        base = server.url
        assert fs.ls(f"{base}/dir", detail=False) == [
            f"{base}/dir/a.bin",
            f"{base}/dir/deep/",
        ]
        assert fs.ls(base, detail=False) == [f"{base}/dir/", f"{base}/mem.bin"]
        url = server.url_for("dir/a.bin")
        assert fs.cat_file(url, start=10, end=20) == b"a" * 10
        etag = fs.info(url)["ETag"]
        (tmp_path / "dir" / "a.bin").write_bytes(b"c" * 500)
        assert fs.info(url)["ETag"] != etag
        assert fs.cat_file(url) == b"c" * 500
        assert fetch(server.url_for("dir/../../etc/passwd"))[0] == 404
        assert server.stats.bytes_by_path == {"dir/a.bin": 510}


# -- latency, bandwidth, concurrency -------------------------------------------


def test_latency(origin: HTTPOrigin) -> None:
    origin.latency = 0.2
    t0 = time.perf_counter()
    assert fetch(origin.url_for("top.bin"), method="HEAD")[0] == 200
    assert time.perf_counter() - t0 >= 0.19


def test_bandwidth_cap() -> None:
    payload = make_shards(1, 1_000_000, prefix="")["shard-0000.bin"]
    with HTTPOrigin({"big.bin": payload}, bandwidth=4_000_000) as server:
        t0 = time.perf_counter()
        status, _, body = fetch(server.url_for("big.bin"))
        elapsed = time.perf_counter() - t0
    assert (status, body) == (200, payload)
    assert 0.2 <= elapsed < 5.0


def test_max_concurrent(origin: HTTPOrigin) -> None:
    origin.latency = 0.3

    async def burst(n: int) -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                async with session.get(origin.url_for("top.bin")) as resp:
                    await resp.read()
                    return resp.status

            return await asyncio.gather(*(one() for _ in range(n)))

    assert asyncio.run(burst(6)) == [200] * 6
    assert origin.max_concurrent == 6
    assert origin.stats.max_concurrent == 6
    assert origin.stats.requests == 6
    # The server ends a request's count after the client has its body: wait
    # for it (bounded) so the reset sees none in flight, whatever the load.
    deadline = time.monotonic() + 10
    while origin._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    origin.reset_stats()
    stats = origin.stats
    assert (stats.requests, stats.max_concurrent, stats.bytes_sent) == (0, 0, 0)
    assert stats.bytes_by_path == {}


# -- fault injection -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["503", "429"])
def test_status_faults(origin: HTTPOrigin, kind: str) -> None:
    origin.fault_rate, origin.fault_kind = 1.0, kind
    status, headers, _ = fetch(origin.url_for(SHARD))
    assert status == int(kind)
    if kind == "429":
        assert headers["Retry-After"] == "0"
    # HEAD requests and directory listings are never faulted.
    assert fetch(origin.url_for(SHARD), method="HEAD")[0] == 200
    assert fetch(origin.url_for("data/"))[0] == 200
    assert origin.stats.faults == 1
    assert origin.stats.bytes_sent == 0


def test_reset_fault(origin: HTTPOrigin) -> None:
    origin.fault_rate, origin.fault_kind = 1.0, "reset"
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        fetch(origin.url_for(SHARD))
    assert origin.stats.faults == 1

    async def get() -> bytes:
        async with (
            aiohttp.ClientSession() as session,
            session.get(origin.url_for(SHARD)) as resp,
        ):
            return await resp.read()

    with pytest.raises(aiohttp.ClientConnectionError):
        asyncio.run(get())
    origin.fault_rate = 0.0
    assert fetch(origin.url_for(SHARD))[2] == DATA


def test_short_fault(origin: HTTPOrigin) -> None:
    origin.fault_rate, origin.fault_kind = 1.0, "short"
    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=5)
    try:
        conn.request("GET", "/" + SHARD, headers={"Range": "bytes=1000-"})
        resp = conn.getresponse()
        assert resp.status == 206
        assert resp.getheader("Content-Length") == str(SIZE - 1000)
        with pytest.raises(http.client.IncompleteRead) as err:
            resp.read()
    finally:
        conn.close()
    half = (SIZE - 1000) // 2
    assert err.value.partial == DATA[1000 : 1000 + half]
    assert origin.stats.bytes_sent == half


def test_stall_fault(origin: HTTPOrigin) -> None:
    origin.fault_rate, origin.fault_kind, origin.stall_seconds = 1.0, "stall", 0.3
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        fetch(origin.url_for("top.bin"), timeout=0.1)

    async def get() -> bytes:
        timeout = aiohttp.ClientTimeout(total=0.1)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(origin.url_for("top.bin")) as resp,
        ):
            return await resp.read()

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(get())
    # A patient client gets the normal response after the stall.
    t0 = time.perf_counter()
    assert fetch(origin.url_for("top.bin"), timeout=5)[2] == FILES["top.bin"]
    assert time.perf_counter() - t0 >= 0.29
    assert origin.stats.faults == 3


def fault_pattern(seed: int, n: int = 40) -> tuple[list[bool], int]:
    with HTTPOrigin(FILES, fault_rate=0.5, seed=seed) as server:
        failed = [fetch(server.url_for("top.bin"))[0] == 503 for _ in range(n)]
        return failed, server.stats.faults


def test_fault_rate_is_reproducible() -> None:
    first, faults = fault_pattern(seed=7)
    second, _ = fault_pattern(seed=7)
    assert first == second
    assert faults == sum(first)
    assert 10 <= faults <= 30
    assert fault_pattern(seed=8)[0] != first


def test_reseed_while_running(origin: HTTPOrigin) -> None:
    origin.fault_rate = 0.5
    first = [fetch(origin.url_for("top.bin"))[0] for _ in range(20)]
    origin.seed = 0
    assert [fetch(origin.url_for("top.bin"))[0] for _ in range(20)] == first


def test_bad_fault_kind() -> None:
    with pytest.raises(ValueError, match="fault_kind"):
        HTTPOrigin(fault_kind="explode")


# -- lifecycle ----------------------------------------------------------------------


def test_stop_leaves_no_threads(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"z" * 100)
    before = set(threading.enumerate())
    server = HTTPOrigin(root=tmp_path, fault_kind="stall").start()
    assert server.url.startswith("http://127.0.0.1:")
    assert fetch(server.url_for("f.bin"))[2] == b"z" * 100

    # A request stuck in a 30 s stall must not delay shutdown.
    server.fault_rate = 1.0
    errors: list[BaseException] = []

    def stuck() -> None:
        try:
            fetch(server.url_for("f.bin"), timeout=10)
        except Exception as exc:
            errors.append(exc)

    client = threading.Thread(target=stuck)
    client.start()
    deadline = time.monotonic() + 5
    while server.stats.faults == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    server.stop()
    assert time.perf_counter() - t0 < 3
    client.join(5)
    assert len(errors) == 1
    server.stop()  # idempotent
    assert set(threading.enumerate()) == before


def test_make_shards() -> None:
    a = make_shards(2, 1000, seed=3)
    assert list(a) == ["shards/shard-0000.bin", "shards/shard-0001.bin"]
    assert all(len(v) == 1000 for v in a.values())
    assert a == make_shards(2, 1000, seed=3)
    assert a != make_shards(2, 1000, seed=4)
    assert a["shards/shard-0000.bin"] != a["shards/shard-0001.bin"]
