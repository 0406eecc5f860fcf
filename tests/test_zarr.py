"""zarr v3 reading through cachefs, and the ZarrWindows dataset helper."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

from cachefs import CacheFileSystem
from cachefs.data import World
from cachefs.data.zarr_windows import ZarrWindows
from cachefs.testing import HTTPOrigin

SHAPE = (256, 192)
CHUNKS = (32, 32)  # an 8 x 6 grid of 4 KiB chunks

# zarr warns when FsspecStore gets a filesystem created without
# asynchronous=True; these tests pass one on purpose.
SYNC_FS_WARNING = (
    "ignore:fs .* was not created with `asynchronous=True`:zarr.errors.ZarrUserWarning"
)


def make_values() -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 1000, SHAPE, dtype="int32")


@pytest.fixture(scope="module")
def values() -> np.ndarray[Any, Any]:
    return make_values()


@pytest.fixture(scope="module")
def data_dir(
    tmp_path_factory: pytest.TempPathFactory, values: np.ndarray[Any, Any]
) -> Path:
    """A directory with three arrays written by zarr itself."""
    root = tmp_path_factory.mktemp("zarr")
    v3 = zarr.create_array(
        store=str(root / "v3.zarr"), shape=SHAPE, chunks=CHUNKS, dtype="int32"
    )
    v3[:] = values
    v2 = zarr.create_array(
        store=str(root / "v2.zarr"),
        shape=SHAPE,
        chunks=CHUNKS,
        dtype="int32",
        zarr_format=2,
    )
    v2[:] = values
    sharded = zarr.create_array(
        store=str(root / "sharded.zarr"),
        shape=SHAPE,
        chunks=CHUNKS,
        shards=(128, 96),
        dtype="int32",
    )
    sharded[:] = values
    return root


@pytest.fixture
def served(data_dir: Path) -> Iterator[HTTPOrigin]:
    with HTTPOrigin(root=data_dir) as origin:
        yield origin


def cache_options(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "cache_dir": str(tmp_path / "cache"),
        "chunk_size": "64KiB",
        "skip_instance_cache": True,
    }
    options.update(extra)
    return options


# -- reading ------------------------------------------------------------------


def test_open_array_over_a_chained_file_url(
    data_dir: Path, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    arr = zarr.open_array(
        f"cachefs::file://{data_dir}/v3.zarr",
        mode="r",
        storage_options={"cachefs": cache_options(tmp_path)},
    )
    assert isinstance(arr.store, FsspecStore)
    fs = arr.store.fs
    assert isinstance(fs, CacheFileSystem)
    # zarr asks for an asynchronous instance: cachefs runs natively in its loop.
    assert fs.asynchronous
    np.testing.assert_array_equal(arr[:], values)
    np.testing.assert_array_equal(arr[40:77, 5:150], values[40:77, 5:150])
    before = fs.cache_stats()["origin"]["bytes"]
    np.testing.assert_array_equal(arr[:], values)
    assert fs.cache_stats()["origin"]["bytes"] == before


def test_fsspec_store_with_an_async_instance_over_http(
    served: HTTPOrigin, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    fs = CacheFileSystem(
        target_protocol="http", asynchronous=True, **cache_options(tmp_path)
    )
    store = FsspecStore(fs=fs, path=served.url_for("v3.zarr"), read_only=True)
    arr = zarr.open_array(store, mode="r")
    served.latency = 0.02
    served.reset_stats()
    np.testing.assert_array_equal(arr[:], values)
    # 48 chunk objects behind 20 ms of latency each: fetched in parallel.
    assert served.stats.max_concurrent > 1
    sent = served.stats.bytes_sent
    assert sent > 0
    # Reading the same region again, or reopening the array, costs nothing.
    np.testing.assert_array_equal(arr[:], values)
    again = zarr.open_array(
        FsspecStore(fs=fs, path=served.url_for("v3.zarr"), read_only=True), mode="r"
    )
    np.testing.assert_array_equal(again[100:200, 10:20], values[100:200, 10:20])
    assert served.stats.bytes_sent == sent


def test_open_array_over_a_chained_http_url(
    served: HTTPOrigin, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    url = "cachefs::" + served.url_for("v3.zarr")
    options = {"cachefs": cache_options(tmp_path)}
    arr = zarr.open_array(url, mode="r", storage_options=options)
    np.testing.assert_array_equal(arr[:64, :64], values[:64, :64])
    sent = served.stats.bytes_sent
    np.testing.assert_array_equal(arr[:64, :64], values[:64, :64])
    assert served.stats.bytes_sent == sent
    # A second process (a new instance on the same cache directory) reads the
    # region from the disk tier.
    fresh = zarr.open_array(url, mode="r", storage_options=options)
    assert isinstance(fresh.store, FsspecStore)
    assert isinstance(arr.store, FsspecStore)
    assert fresh.store.fs is not arr.store.fs
    np.testing.assert_array_equal(fresh[:64, :64], values[:64, :64])
    assert served.stats.bytes_sent == sent


def test_zarr_v2_array(
    served: HTTPOrigin, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    arr = zarr.open_array(
        "cachefs::" + served.url_for("v2.zarr"),
        mode="r",
        storage_options={"cachefs": cache_options(tmp_path)},
    )
    assert arr.metadata.zarr_format == 2
    np.testing.assert_array_equal(arr[:], values)


def test_sharded_array_reads_inner_chunks_by_range(
    served: HTTPOrigin, data_dir: Path, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # Small cache chunks, so that ranged reads of a shard stay small.
    fs = CacheFileSystem(
        target_protocol="http",
        asynchronous=True,
        readahead=0,
        **cache_options(tmp_path, chunk_size="4KiB"),
    )
    store = FsspecStore(fs=fs, path=served.url_for("sharded.zarr"), read_only=True)
    arr = zarr.open_array(store, mode="r")
    served.reset_stats()
    np.testing.assert_array_equal(arr[0:32, 0:32], values[0:32, 0:32])
    shard_size = (data_dir / "sharded.zarr" / "c" / "0" / "0").stat().st_size
    # One inner chunk and the shard index, not the whole shard.
    assert 0 < served.stats.bytes_sent < shard_size / 2
    np.testing.assert_array_equal(arr[:], values)


@pytest.mark.filterwarnings(SYNC_FS_WARNING)
def test_sync_instance_through_a_mapper(
    served: HTTPOrigin, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    # zarr turns the synchronous instance into an asynchronous one through
    # fs.to_json(): the options must survive that round trip.
    fs = CacheFileSystem(target_protocol="http", **cache_options(tmp_path))
    arr = zarr.open_array(fs.get_mapper(served.url_for("v3.zarr")), mode="r")
    assert isinstance(arr.store, FsspecStore)
    assert arr.store.fs.asynchronous
    assert arr.store.fs.chunk_size == fs.chunk_size
    np.testing.assert_array_equal(arr[:], values)


@pytest.mark.filterwarnings(SYNC_FS_WARNING)
def test_sync_instance_in_fsspec_store_over_http(
    served: HTTPOrigin, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    """A plain (synchronous) CacheFileSystem handed to zarr's FsspecStore.

    zarr awaits the instance's async methods on zarr's own event loop, while
    the instance's http target belongs to cachefs's loop.
    """
    fs = CacheFileSystem(target_protocol="http", **cache_options(tmp_path))
    store = FsspecStore(fs=fs, path=served.url_for("v3.zarr"), read_only=True)
    arr = zarr.open_array(store, mode="r")
    np.testing.assert_array_equal(arr[:], values)
    # Its caches are the ones the synchronous API sees.
    sent = served.stats.bytes_sent
    assert fs.cat_file(served.url_for("v3.zarr/c/0/0"))
    assert served.stats.bytes_sent == sent


# -- ZarrWindows ----------------------------------------------------------------


def test_windows_equal_numpy_slices_and_are_prefetched(
    served: HTTPOrigin, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    windows = ZarrWindows(
        "cachefs::" + served.url_for("v3.zarr"),
        window_shape=(40, 50),
        n_windows=24,
        batch_size=8,
        seed=3,
        storage_options={"cachefs": cache_options(tmp_path)},
        world=World(),
    )
    assert windows.fs is not None and windows.fs.asynchronous
    origins = windows.windows()
    assert len(origins) == len(windows) == 24
    got = list(windows)
    assert len(got) == 24
    for origin, window in zip(origins, got, strict=True):
        r, c = origin
        np.testing.assert_array_equal(window, values[r : r + 40, c : c + 50])
    stats = windows.fs.cache_stats()["prefetch"]
    assert stats["issued"] > 0
    assert stats["used"] > 0
    batches = list(windows.batches())
    assert [b.shape for b in batches] == [(8, 40, 50)] * 3


def test_window_keys_follow_the_chunk_grid_and_key_encoding(
    data_dir: Path, tmp_path: Path
) -> None:
    v3 = ZarrWindows(
        str(data_dir / "v3.zarr"), window_shape=(40, 50), n_windows=1, world=World()
    )
    # Rows 30-69 touch chunk rows 0-2; columns 60-109 chunk columns 1-3.
    assert v3.chunk_keys((30, 60)) == [
        f"c/{r}/{c}" for r in range(3) for c in (1, 2, 3)
    ]
    assert v3.chunk_keys((32, 64)) == [f"c/{r}/{c}" for r in (1, 2) for c in (2, 3)]
    v2 = ZarrWindows(
        str(data_dir / "v2.zarr"), window_shape=(1, 1), n_windows=1, world=World()
    )
    assert v2.chunk_keys((255, 191)) == ["7.5"]
    sharded = ZarrWindows(
        str(data_dir / "sharded.zarr"),
        window_shape=(40, 50),
        n_windows=1,
        world=World(),
    )
    # Storage objects of a sharded array are shards (128 x 96).
    assert sharded.chunk_keys((100, 90)) == ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]
    # Without a CacheFileSystem there is nothing to prefetch through.
    assert v3.fs is None
    np.testing.assert_array_equal(next(iter(v3)), v3.read(v3.windows()[0]))


def test_windows_with_an_explicit_filesystem_and_v2_keys(
    served: HTTPOrigin, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    fs = CacheFileSystem(
        target_protocol="http", asynchronous=True, **cache_options(tmp_path)
    )
    windows = ZarrWindows(
        served.url_for("v2.zarr"),
        window_shape=(64, 64),
        n_windows=6,
        batch_size=3,
        fs=fs,
        lookahead=0,
        world=World(),
    )
    assert windows.fs is fs
    for origin, window in zip(windows.windows(), windows, strict=True):
        r, c = origin
        np.testing.assert_array_equal(window, values[r : r + 64, c : c + 64])
    assert fs.cache_stats()["prefetch"]["issued"] > 0
    paths = windows.batch_paths([(0, 0)])
    assert paths[0] == served.url_for("v2.zarr") + "/0.0"


def test_windows_are_seeded_per_epoch_and_split_over_consumers(
    data_dir: Path,
) -> None:
    def make(world: World, seed: int = 1) -> ZarrWindows:
        return ZarrWindows(
            str(data_dir / "v3.zarr"),
            window_shape=(16, 16),
            n_windows=40,
            seed=seed,
            world=world,
        )

    one = make(World())
    assert one.windows() == make(World()).windows()
    assert one.windows() != make(World(), seed=2).windows()
    epoch0 = one.windows()
    one.set_epoch(1)
    assert one.windows() != epoch0
    assert one.windows(epoch=0) == epoch0
    for r, c in epoch0:
        assert 0 <= r <= SHAPE[0] - 16 and 0 <= c <= SHAPE[1] - 16
    shares = [
        make(World(rank=rank, world_size=2, worker=w, num_workers=2)).windows()
        for rank in range(2)
        for w in range(2)
    ]
    assert sum(len(s) for s in shares) == 40
    assert sorted(o for s in shares for o in s) == sorted(epoch0)


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"window_shape": (16,)}, ValueError, "window_shape"),
        ({"window_shape": (16, 0)}, ValueError, "window_shape"),
        ({"window_shape": (300, 16)}, ValueError, "window_shape"),
        ({"window_shape": "16"}, TypeError, "window_shape"),
        ({"n_windows": 0}, ValueError, "n_windows"),
        ({"batch_size": 1.5}, TypeError, "batch_size"),
        ({"lookahead": -1}, ValueError, "lookahead"),
        ({"fs": object()}, TypeError, "fs"),
    ],
)
def test_bad_arguments_name_the_parameter(
    data_dir: Path, kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    options: dict[str, Any] = {"window_shape": (16, 16), "n_windows": 4}
    options.update(kwargs)
    with pytest.raises(error, match=names):
        ZarrWindows(str(data_dir / "v3.zarr"), **options)
    with pytest.raises(TypeError, match="array"):
        ZarrWindows(42, window_shape=(1,), n_windows=1)


def test_windows_of_a_local_array_prefetch_through_a_file_cache(
    data_dir: Path, values: np.ndarray[Any, Any], tmp_path: Path
) -> None:
    arr = zarr.open_array(str(data_dir / "v3.zarr"), mode="r")
    fs = CacheFileSystem(target_protocol="file", **cache_options(tmp_path))
    windows = ZarrWindows(
        arr, window_shape=(32, 32), n_windows=4, fs=fs, world=World(), lookahead=0
    )
    assert windows.batch_paths([(0, 0)]) == [f"{data_dir}/v3.zarr/c/0/0"]
    handle = windows.prefetch(windows.windows())
    assert handle is not None and handle.wait(timeout=30)
    assert not handle.failed
    assert fs.cache_stats()["prefetch"]["issued"] > 0
    for (r, c), window in zip(windows.windows(), windows, strict=True):
        np.testing.assert_array_equal(window, values[r : r + 32, c : c + 32])
    memory = zarr.create_array(store={}, shape=(4,), chunks=(2,), dtype="int32")
    with pytest.raises(TypeError, match="fs="):
        ZarrWindows(memory, window_shape=(2,), n_windows=1, fs=fs)
