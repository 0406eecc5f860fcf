"""Origins that misbehave: every byte served is the origin's, every wait ends.

The origin runs in a process of its own (:mod:`cachefs.testing.misbehaving_origin`)
and the first segment of each URL picks how it misbehaves. Each case that used
to hang runs under :func:`bounded`, so a regression fails instead of stalling
the suite.
"""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import pytest

from cachefs import CacheFileSystem
from cachefs.errors import StaleVersionError
from cachefs.testing.misbehaving_origin import MisbehavingOrigin

KiB = 1024
CHUNK = 256 * KiB
T = TypeVar("T")


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def bounded(fn: Callable[[], T], seconds: float = 20.0) -> T:
    """Run ``fn`` in a thread; fail the test if it has not ended in ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still waiting after {seconds} s: the call hangs")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def bad() -> Iterator[MisbehavingOrigin]:
    with MisbehavingOrigin() as server:
        yield server


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., CacheFileSystem]:
    def build(**kwargs: Any) -> CacheFileSystem:
        options: dict[str, Any] = {
            "target_protocol": "http",
            "cache_dir": str(tmp_path / "cache"),
            "chunk_size": CHUNK,
            "retries": 1,
            "request_timeout": 2.0,
            "skip_instance_cache": True,
        }
        options.update(kwargs)
        return CacheFileSystem(**options)

    return build


# -- defect 1: the origin file became shorter than the recorded version --------


@pytest.mark.parametrize("mode", ["plain", "noetag"])
def test_shrunk_file_fails_the_open_reader(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem], mode: str
) -> None:
    name = f"shrink-{mode}.bin"
    old, new = payload(2_000_000, 1), payload(600_000, 2)
    bad.put(name, old)
    fs = make(readahead=0)
    url = bad.url(mode, name)
    with fs.open(url, "rb") as f:
        assert f.read(256 * KiB) == old[: 256 * KiB]
        bad.put(name, new)
        f.seek(1_500_000)
        with pytest.raises(StaleVersionError, match=name):
            bounded(lambda: f.read(100_000))
    # Reopening reads the new version (defect 5: the old one is forgotten).
    assert bounded(lambda: fs.cat_file(url)) == new


@pytest.mark.parametrize("mode", ["plain", "noetag"])
def test_shrunk_file_any_process_reads_the_new_version(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem], mode: str
) -> None:
    name = f"shrink2-{mode}.bin"
    old, new = payload(2_000_000, 3), payload(600_000, 4)
    bad.put(name, old)
    url = bad.url(mode, name)
    assert make(metadata_ttl=None).cat_file(url, 0, 10) == old[:10]
    bad.put(name, new)
    # A second instance (as another process would) trusts the fresh record.
    other = make(metadata_ttl=None)
    assert bounded(lambda: other.cat_file(url, 1_500_000, 1_600_000)) == b""
    assert bounded(lambda: other.cat_file(url, 500_000, 600_000)) == new[500_000:]


def test_shrunk_file_in_a_new_process_does_not_hang(
    bad: MisbehavingOrigin, tmp_path: Path
) -> None:
    name = "shrink3.bin"
    old, new = payload(2_000_000, 5), payload(600_000, 6)
    bad.put(name, old)
    url = bad.url("plain", name)
    script = (
        "import sys; from cachefs import CacheFileSystem\n"
        f"fs = CacheFileSystem(target_protocol='http', cache_dir={str(tmp_path)!r},"
        f" chunk_size={CHUNK}, metadata_ttl=None, request_timeout=2, retries=1)\n"
        f"data = fs.cat_file({url!r}, int(sys.argv[1]), int(sys.argv[2]))\n"
        "sys.stdout.write(str(len(data)))\n"
    )
    run = [sys.executable, "-c", script]
    first = subprocess.run([*run, "0", "10"], capture_output=True, timeout=60)
    assert first.stdout == b"10", first.stderr
    bad.put(name, new)
    second = subprocess.run(
        [*run, "1500000", "1600000"], capture_output=True, timeout=60
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout == b"0"


# -- defect 2: a Content-Range that starts elsewhere than asked --------------


def test_shifted_content_range_is_refused_never_cached(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem]
) -> None:
    data = payload(1_000_000, 7)
    bad.put("shift.bin", data)
    fs = make()
    url = bad.url("shift", "shift.bin")
    with pytest.raises(OSError, match=r"Content-Range") as info:
        bounded(lambda: fs.cat_file(url, 300_000, 400_000))
    assert "shift.bin" in str(info.value)
    with pytest.raises(OSError, match=r"shift\.bin"):
        bounded(lambda: fs.open(url, "rb").read())
    assert fs.cache_stats()["disk"]["puts"] == 0
    assert fs.cache_stats()["ram"]["chunks"] == 0


# -- defect 3: gzip bodies ----------------------------------------------------


def _csv(n_rows: int) -> bytes:
    rows = [f"{i},{i * 7 % 1000},sample-{i % 97},{i / 3:.4f}\n" for i in range(n_rows)]
    return ("id,value,label,score\n" + "".join(rows)).encode()


def test_gzip_capable_server_serves_identity_bytes(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem]
) -> None:
    data = _csv(100_000)
    assert len(gzip.compress(data)) < len(data) // 3
    bad.put("table.csv", data)
    fs = make()
    url = bad.url("gzip", "table.csv")
    assert bounded(lambda: fs.cat_file(url)) == data
    assert fs.info(url)["size"] == len(data)
    with fs.open(url, "rb") as f:
        f.seek(1_000_000)
        assert f.read(5000) == data[1_000_000:1_005_000]


def test_gzip_body_against_the_request_is_refused(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem]
) -> None:
    data = _csv(50_000)
    bad.put("forced.csv", data)
    fs = make()
    url = bad.url("gzipalways", "forced.csv")
    with pytest.raises(OSError, match="gzip") as info:
        bounded(lambda: fs.cat_file(url))
    assert "forced.csv" in str(info.value)
    assert fs.cache_stats()["disk"]["puts"] == 0


# -- defect 4: chunked 200 responses -------------------------------------------


@pytest.mark.parametrize("mode", ["chunked", "norange"])
def test_whole_body_responses_read_exactly(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem], mode: str
) -> None:
    data = payload(900_000, 8)
    bad.put("whole.bin", data)
    fs = make()
    url = bad.url(mode, "whole.bin")
    assert bounded(lambda: fs.cat_file(url, 300_000, 700_000)) == data[300_000:700_000]
    assert bounded(lambda: fs.open(url, "rb").read()) == data
    assert bounded(lambda: fs.cat_file(url)) == data
    # Plain fsspec http reads the same bytes.
    assert fsspec.filesystem("http", skip_instance_cache=True).cat_file(url) == data


# -- defects 5 and 6: versions that change under a reader ----------------------


def test_reopen_after_stale_version_reads_the_new_version(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem]
) -> None:
    data = payload(1_000_000, 9)
    bad.put("flip5.bin", data)
    url = bad.url("flip", "flip5.bin")
    fs = make(metadata_ttl=None, readahead=0)
    with fs.open(url, "rb") as f:  # learns the first version
        assert f.read(100) == data[:100]
        f.seek(3 * CHUNK)
        with pytest.raises(StaleVersionError):
            bounded(lambda: f.read(100))
    flipped = bytes(b ^ 0xFF for b in data)
    with fs.open(url, "rb") as f:
        assert bounded(f.read) == flipped
    # Another instance sharing the cache (another process) agrees.
    other = make(metadata_ttl=None)
    assert bounded(lambda: other.cat_file(url)) == flipped


def test_one_cat_ranges_call_sees_one_version(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem]
) -> None:
    data = payload(1_000_000, 10)
    flipped = bytes(b ^ 0xFF for b in data)
    bad.put("flip6.bin", data)
    url = bad.url("flip", "flip6.bin")
    fs = make(readahead=0)
    assert fs.cat_file(url, 0, 10) == data[:10]  # version 1, chunk 0 cached
    starts, ends = [0, 3 * CHUNK], [100, 3 * CHUNK + 100]
    out = bounded(lambda: fs.cat_ranges([url, url], starts, ends))
    seen = set()
    for r, lo, hi in zip(out, starts, ends, strict=True):
        if isinstance(r, Exception):
            assert isinstance(r, StaleVersionError), repr(r)
            continue
        assert r in (data[lo:hi], flipped[lo:hi])
        seen.add("old" if r == data[lo:hi] else "new")
    assert len(seen) <= 1, f"one call returned two versions: {out!r}"


# -- never hang: silent, slow and broken origins -------------------------------


@pytest.mark.parametrize("call", ["info", "ls", "find", "cat_file", "open"])
def test_black_hole_origin_times_out_naming_the_url(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem], call: str
) -> None:
    bad.put("hole.bin", b"x" * 1000)
    fs = make(request_timeout=0.5, retries=1)
    url = bad.url("blackhole", "hole.bin")
    target = url if call in ("info", "cat_file", "open") else url.rsplit("/", 1)[0]
    method = {"open": lambda u: fs.open(u, "rb").read()}.get(call) or getattr(fs, call)
    with pytest.raises(TimeoutError) as info:
        bounded(lambda: method(target), seconds=15)
    assert "blackhole" in str(info.value), repr(info.value)


def test_slow_drip_times_out_naming_url_and_range(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem]
) -> None:
    bad.put("drip.bin", payload(200_000, 11))
    fs = make(request_timeout=0.6, retries=1)
    url = bad.url("drip", "drip.bin")
    with pytest.raises(TimeoutError) as info:
        bounded(lambda: fs.cat_file(url, 0, 100_000), seconds=15)
    assert "drip.bin" in str(info.value) and "bytes" in str(info.value)


@pytest.mark.parametrize("mode", ["short", "reset"])
def test_broken_bodies_fail_and_cache_nothing(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem], mode: str
) -> None:
    data = payload(600_000, 12)
    bad.put(f"{mode}.bin", data)
    fs = make()
    url = bad.url(mode, f"{mode}.bin")
    with pytest.raises(ConnectionError, match=f"{mode}.bin"):
        bounded(lambda: fs.cat_file(url, 0, 500_000))
    # Whole chunks that arrived before the break may be kept; a partial one
    # never is: whatever the cache serves now is the origin's bytes.
    fs.wait_idle()
    for lo in range(0, 500_000, CHUNK):
        try:
            got = fs.cat_file(url, lo, lo + CHUNK)
        except ConnectionError:
            continue
        assert got == data[lo : lo + CHUNK]


def test_seeded_5xx_faults_still_read_exactly(
    bad: MisbehavingOrigin, make: Callable[..., CacheFileSystem]
) -> None:
    data = payload(3_000_000, 13)
    bad.put("flaky.bin", data)
    fs = make(retries=8, max_coalesce=CHUNK)
    fs.fetcher.backoff = 0.005
    url = bad.url("flaky-30", "flaky.bin")
    assert bounded(lambda: fs.cat_file(url), seconds=60) == data
    assert fs.cache_stats()["origin"]["retries"] > 0


@pytest.mark.parametrize("what", ["file", "directory"])
def test_warm_against_a_black_hole_ends_with_one_line(
    bad: MisbehavingOrigin, tmp_path: Path, what: str
) -> None:
    bad.put("dir/hole.bin", b"x" * 1000)
    url = bad.url("blackhole", "dir/hole.bin" if what == "file" else "dir/")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "FSSPEC_CONFIG_DIR": str(tmp_path / "conf"),
        "FSSPEC_CACHEFS": '{"request_timeout": 0.5, "retries": 1}',
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cachefs.cli", "warm", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "request_timeout=0.5" in proc.stderr and "blackhole" in proc.stderr


# -- every case above goes through the direct receive client --------------------


@pytest.mark.parametrize(
    ("mode", "direct"),
    [
        ("plain", True),
        ("noetag", True),
        ("norange", True),
        ("gzip", True),
        ("chunked", False),  # handed to aiohttp: nothing delivered before
        ("shift", False),
        ("gzipalways", False),
        ("short", False),
        ("reset", False),
    ],
)
def test_the_direct_client_reads_or_refuses_each_case(
    bad: MisbehavingOrigin,
    make: Callable[..., CacheFileSystem],
    mode: str,
    direct: bool,
) -> None:
    data = payload(700_000, 14)
    bad.put(f"direct-{mode}.bin", data)
    fs = make(readahead=0)
    url = bad.url(mode, f"direct-{mode}.bin")
    try:
        got: bytes | None = bounded(lambda: fs.cat_file(url, 100_000, 600_000))
    except OSError:
        got = None
    fs.wait_idle()
    stats = fs.cache_stats()["origin"]
    assert stats["connections"] >= 1, "the direct client sent no request"
    if direct:
        assert got == data[100_000:600_000] and stats["direct"] >= 1
    elif mode == "chunked":
        assert got == data[100_000:600_000] and stats["direct"] == 0
    else:
        assert got is None and stats["direct"] == 0
    fs.close()
