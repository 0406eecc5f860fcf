"""The origin boundary (:class:`cachefs.fetch.Fetcher`) over injected faults.

The origin is a real filesystem (fsspec's in-memory one, or a local
directory) behind :class:`cachefs.testing.LatencyFileSystem`, which adds
latency and fails chosen calls: no part of cachefs is mocked.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

from cachefs.chunks import version_token
from cachefs.errors import StaleVersionError
from cachefs.fetch import Fetcher
from cachefs.testing import LatencyFileSystem

KiB = 2**10
PIECE = 64 * KiB
SIZE = 5 * PIECE + 123  # the last piece is short

#: A sync filesystem and a directory on it.
Store = tuple[AbstractFileSystem, str]


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A sync filesystem and a directory on it, holding nothing yet."""
    if request.param == "local":
        yield LocalFileSystem(), str(tmp_path)
        return
    fs = MemoryFileSystem(skip_instance_cache=True)
    root = f"/fetcher-{random.Random().getrandbits(64):x}"
    fs.makedirs(root, exist_ok=True)
    yield fs, root
    fs.rm(root, recursive=True)


def put(store: Store, name: str, size: int = SIZE) -> bytes:
    """Write a file of ``size`` deterministic bytes; return its content."""
    fs, root = store
    data = random.Random(name).randbytes(size)
    fs.pipe_file(f"{root}/{name}", data)
    return data


class Collector:
    """Receives the pieces of one read, checking each lands once, in order."""

    def __init__(self, start: int = 0) -> None:
        self.buffer = bytearray()
        self.start = start
        self.offsets: list[int] = []

    def __call__(self, offset: int, data: bytes | memoryview) -> None:
        assert offset == self.start + len(self.buffer), "a piece out of order"
        self.offsets.append(offset)
        self.buffer += data


async def read(
    fetcher: Fetcher, path: str, start: int = 0, stop: int = SIZE, **kwargs: object
) -> Collector:
    got = Collector(start)
    await fetcher.stream(path, start, stop, PIECE, on_piece=got, **kwargs)  # type: ignore[arg-type]
    return got


def fetcher_over(fs: AbstractFileSystem, **kwargs: object) -> Fetcher:
    options: dict[str, object] = {"retries": 3, "backoff": 0.001}
    options.update(kwargs)
    return Fetcher(fs, **options)  # type: ignore[arg-type]


async def test_a_clean_read_delivers_every_piece_once(store: Store) -> None:
    data = put(store, "a.bin")
    fs = LatencyFileSystem(store[0], latency=0.001)
    got = await read(fetcher_over(fs), f"{store[1]}/a.bin")
    assert bytes(got.buffer) == data
    assert got.offsets == list(range(0, SIZE, PIECE))


async def test_retries_after_injected_faults_deliver_the_exact_bytes(
    store: Store,
) -> None:
    data = put(store, "a.bin")
    fs = LatencyFileSystem(store[0], fail_first=2)
    fetcher = fetcher_over(fs)
    got = await read(fetcher, f"{store[1]}/a.bin", 1000, SIZE)
    assert bytes(got.buffer) == data[1000:]
    assert fs.faults == 2 and fs.calls["cat_file"] == 3
    assert fetcher.stats.retries == 2 and fetcher.stats.errors == 0
    assert fetcher.stats.bytes == SIZE - 1000


async def test_a_short_read_is_retried(store: Store) -> None:
    data = put(store, "a.bin")
    fs = LatencyFileSystem(store[0], short_every=2)
    fetcher = fetcher_over(fs)
    path = f"{store[1]}/a.bin"
    assert bytes((await read(fetcher, path)).buffer) == data  # call 1: whole
    got = await read(fetcher, path)  # call 2: short, call 3: whole
    assert bytes(got.buffer) == data
    assert fs.faults == 1 and fetcher.stats.retries == 1


async def test_a_read_that_stays_short_fails_and_delivers_nothing(store: Store) -> None:
    put(store, "a.bin")
    fs = LatencyFileSystem(store[0], short_every=1)
    fetcher = fetcher_over(fs, retries=2)
    got = Collector()
    with pytest.raises(ConnectionError, match=r"a\.bin bytes 0-.* after 3 attempts"):
        await fetcher.stream(f"{store[1]}/a.bin", 0, SIZE, PIECE, on_piece=got)
    assert got.offsets == [] and fetcher.stats.errors == 1


async def test_a_short_read_of_a_known_version_is_stale_not_retried(
    store: Store,
) -> None:
    put(store, "a.bin")
    path = f"{store[1]}/a.bin"
    token = version_token(store[0].info(path))
    fs = LatencyFileSystem(store[0], short_every=1)
    fetcher = fetcher_over(fs)
    with pytest.raises(StaleVersionError):
        await read(fetcher, path, token=token, size=SIZE)
    assert fs.calls["cat_file"] == 1 and fetcher.stats.retries == 0


async def test_faults_past_the_retries_fail_with_a_builtin_naming_the_range(
    store: Store,
) -> None:
    put(store, "a.bin")
    fs = LatencyFileSystem(store[0], fail_every=1)
    fetcher = fetcher_over(fs, retries=2)
    with pytest.raises(ConnectionError) as failure:
        await read(fetcher, f"{store[1]}/a.bin", 10, 20)
    assert "a.bin bytes 10-19" in str(failure.value)
    assert "after 3 attempts" in str(failure.value)
    assert isinstance(failure.value.__cause__, ConnectionResetError)
    assert fs.calls["cat_file"] == 3 and fetcher.stats.errors == 1


@pytest.mark.parametrize("error", [PermissionError, FileNotFoundError])
async def test_a_permanent_error_is_not_retried(
    store: Store, error: type[OSError]
) -> None:
    put(store, "a.bin")
    fs = LatencyFileSystem(store[0], fail_every=1, error=error)
    fetcher = fetcher_over(fs)
    with pytest.raises(error):
        await read(fetcher, f"{store[1]}/a.bin")
    assert fs.calls["cat_file"] == 1 and fetcher.stats.retries == 0


async def test_a_missing_file_is_file_not_found(store: Store) -> None:
    fs = LatencyFileSystem(store[0])
    with pytest.raises(FileNotFoundError):
        await read(fetcher_over(fs), f"{store[1]}/absent.bin")


async def test_a_silent_origin_times_out_naming_the_range(store: Store) -> None:
    put(store, "a.bin")
    fs = LatencyFileSystem(store[0], latency=0.5, methods=())
    fetcher = fetcher_over(fs, retries=1, timeout=0.05)
    with pytest.raises(TimeoutError, match=r"a\.bin"):
        await read(fetcher, f"{store[1]}/a.bin")
    assert fetcher.stats.retries >= 1


async def test_info_is_retried_too(store: Store) -> None:
    put(store, "a.bin")
    fs = LatencyFileSystem(store[0], fail_first=1, methods=("info",))
    fetcher = fetcher_over(fs)
    info = await fetcher.info(f"{store[1]}/a.bin")
    assert info["size"] == SIZE and fetcher.stats.retries == 1


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_every_concurrent_fetch_ends_delivered_or_failed(
    store: Store, asynchronous: bool
) -> None:
    files = {f"f{i}.bin": put(store, f"f{i}.bin", SIZE + i) for i in range(8)}
    fs = LatencyFileSystem(
        store[0],
        latency=0.002,
        fail_rate=0.3,
        seed=5,
        asynchronous=asynchronous,
    )
    fetcher = fetcher_over(fs, retries=2, max_requests=4)
    reads: list[tuple[str, int, int]] = [
        (name, start, start + 3 * PIECE)
        for name in files
        for start in (0, PIECE // 2, 2 * PIECE)
    ]

    async def one(name: str, start: int, stop: int) -> Collector:
        return await read(fetcher, f"{store[1]}/{name}", start, stop)

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(one(*r) for r in reads), return_exceptions=True), 60
    )
    delivered = 0
    for (name, start, stop), outcome in zip(reads, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, ConnectionError), outcome
            continue
        delivered += 1
        want = files[name][start:stop]
        assert bytes(outcome.buffer) == want
    assert delivered > len(reads) // 2  # most succeed within the retries
    assert fs.faults > 0
    # Requests (data and info) are capped, and did overlap.
    assert 1 < fs.max_concurrent <= 4
    assert fetcher.stats.errors == len(reads) - delivered


async def test_a_cancelled_fetch_leaves_the_fetcher_usable(store: Store) -> None:
    data = put(store, "a.bin")
    fs = LatencyFileSystem(store[0], latency=0.2, methods=())
    fetcher = fetcher_over(fs, max_requests=1)
    task = asyncio.ensure_future(read(fetcher, f"{store[1]}/a.bin"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fs.latency = 0.0
    got = await asyncio.wait_for(read(fetcher, f"{store[1]}/a.bin"), 10)
    assert bytes(got.buffer) == data


def test_the_wrapper_counts_calls_and_faults() -> None:
    memory = MemoryFileSystem(skip_instance_cache=True)
    root = f"/latency-{random.Random().getrandbits(64):x}"
    memory.pipe_file(f"{root}/x", b"0123456789")
    errors: list[tuple[str, str]] = []

    def error(method: str, path: str) -> BaseException:
        errors.append((method, path))
        return TimeoutError(path)

    fs = LatencyFileSystem(memory, fail_every=3, error=error)
    try:
        assert fs.cat_file(f"{root}/x", start=2, end=5) == b"234"
        assert fs.cat_file(f"{root}/x") == b"0123456789"
        with pytest.raises(TimeoutError):
            fs.cat_file(f"{root}/x")
        assert fs.info(f"{root}/x")["size"] == 10  # not a counted method
        assert errors == [("cat_file", f"{root}/x")]
        assert fs.calls == {"cat_file": 3, "info": 1} and fs.faults == 1
    finally:
        memory.rm(root, recursive=True)
