"""ShardDataset through real DataLoaders, processes and a real HTTP origin.

Shards are tar files written by Python's tarfile (``cachefs.cli.demo.
make_dataset``), served by ``cachefs.testing.HTTPOrigin`` and read through a
CacheFileSystem whose chunks are smaller than a shard.
"""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from torch.utils.data import DataLoader, IterableDataset

from cachefs import CacheFileSystem
from cachefs.cli.demo import make_dataset
from cachefs.data.dataset import ShardDataset, expand_urls, to_bytes
from cachefs.data.errors import ShardFormatError
from cachefs.data.world import World
from cachefs.testing import HTTPOrigin

REPO = Path(__file__).resolve().parents[1]
SHARDS = 7
TOO_MANY_WORKERS = pytest.mark.filterwarnings(
    # torch suggests at most os.cpu_count() workers; CI machines have 2 cores.
    "ignore:This DataLoader will create:UserWarning"
)
NO_ACCELERATOR = pytest.mark.filterwarnings(
    # pin_memory=True is exercised on CPU-only machines too; it pins on CUDA.
    "ignore:'pin_memory' argument is set as true but no accelerator:UserWarning"
)

Key = tuple[str, str]


@pytest.fixture(scope="module")
def dataset_files() -> tuple[dict[str, bytes], list[int]]:
    files, counts = make_dataset(SHARDS, 40 * 1024, 1024, seed=3)
    return {f"ds/{k.split('/')[-1]}": v for k, v in files.items()}, counts


@pytest.fixture(scope="module")
def ds_origin(dataset_files) -> Iterator[HTTPOrigin]:
    with HTTPOrigin(files=dict(dataset_files[0])) as server:
        yield server


@pytest.fixture
def urls(ds_origin, dataset_files) -> list[str]:
    return [ds_origin.url_for(p) for p in sorted(dataset_files[0])]


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[CacheFileSystem]:
    fs = CacheFileSystem(
        target_protocol="http",
        cache_dir=str(tmp_path / "cache"),
        chunk_size="16KiB",
        skip_instance_cache=True,
    )
    yield fs
    fs.wait_idle()


@pytest.fixture
def all_keys(urls, dataset_files) -> set[Key]:
    counts = dataset_files[1]
    return {
        (url, f"{s:04d}/{i:06d}")
        for s, url in enumerate(urls)
        for i in range(counts[s])
    }


def keys(samples) -> list[Key]:
    return [(s["__url__"], s["__key__"]) for s in samples]


def loader_keys(loader: DataLoader) -> list[Key]:
    out: list[Key] = []
    for batch in loader:
        out += list(zip(batch["__url__"], batch["__key__"], strict=True))
    return out


def epochs(ds: ShardDataset, n: int, read: Callable[[], list[Key]]) -> list[list[Key]]:
    out = []
    for e in range(n):
        ds.set_epoch(e)
        out.append(read())
    return out


# -- in one process ------------------------------------------------------------


def test_each_epoch_delivers_every_sample_once(fs, urls, all_keys):
    ds = ShardDataset(urls, fs, seed=1)
    assert isinstance(ds, IterableDataset)
    assert len(ds) == len(all_keys) == ds.total_samples
    orders = epochs(ds, 3, lambda: keys(ds))
    for order in orders:
        assert len(order) == len(set(order)) and set(order) == all_keys
    assert orders[0] != orders[1] != orders[2]
    again = ShardDataset(urls, fs, seed=1)
    assert epochs(again, 3, lambda: keys(again)) == orders
    other = ShardDataset(urls, fs, seed=2)
    assert keys(other) != orders[0]
    fixed = ShardDataset(urls, fs, shuffle=False)
    assert keys(fixed) == sorted(all_keys)


def test_samples_are_views_of_the_cache(fs, urls, dataset_files):
    ds = ShardDataset(urls, fs, shuffle=False)
    sample = next(iter(ds))
    assert sample["__key__"] == "0000/000000"
    assert isinstance(sample["bin"], memoryview) and sample["bin"].readonly
    shard = dataset_files[0]["ds/shard-0000.tar"]
    with tarfile.open(fileobj=io.BytesIO(shard)) as tf:
        f = tf.extractfile("0000/000000.bin")
        assert f is not None and bytes(sample["bin"]) == f.read()
    decoded = next(iter(ShardDataset(urls, fs, decode="bytes")))
    assert isinstance(decoded["bin"], bytes)
    assert to_bytes({"a": memoryview(b"x"), "b": 1}) == {"a": b"x", "b": 1}


def test_shuffle_buffer_keeps_exactly_once(fs, urls, all_keys):
    plain = ShardDataset(urls, fs, seed=4)
    buffered = ShardDataset(urls, fs, seed=4, shuffle_buffer=16)
    first, second = keys(buffered), keys(buffered)
    assert sorted(first) == sorted(all_keys) and first == second
    assert first != keys(plain)


@pytest.mark.parametrize("world_size", [2, 3, 5])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_and_workers_split_an_epoch(fs, urls, all_keys, world_size, drop_last):
    total = len(all_keys)
    seen: Counter[Key] = Counter()
    for rank in range(world_size):
        ds = ShardDataset(
            urls, fs, rank=rank, world_size=world_size, drop_last=drop_last, seed=9
        )
        per_rank = ds.samples_per_rank
        got: list[Key] = []
        for worker in range(3):
            world = World(rank, world_size, worker, 3)
            got += [
                (url, f"{url[-8:-4]}/{i:06d}")
                for url, a, b in ds.plan(epoch=1, world=world)
                for i in range(a, b)
            ]
        assert len(got) == per_rank == len(ds)
        seen.update(got)
    if drop_last:
        assert per_rank == total // world_size
        assert max(seen.values()) == 1
        assert len(all_keys - set(seen)) == total % world_size
    else:
        assert set(seen) == all_keys
        assert sum(seen.values()) == per_rank * world_size


def test_prefetch_gets_this_consumers_ranges_and_is_cancelled(fs, urls, monkeypatch):
    calls: list[list[Any]] = []
    handles: list[Any] = []
    real = fs.prefetch

    def spy(items):
        calls.append(list(items))
        handle = real(items)
        cancel = handle.cancel

        def counted_cancel():
            handles.append(handle)
            cancel()

        handle.cancel = counted_cancel
        return handle

    monkeypatch.setattr(fs, "prefetch", spy)
    ds = ShardDataset(urls, fs, seed=5)
    plan = ds.plan()
    for _ in ds:
        pass
    assert len(calls) == 1
    assert [item[0] for item in calls[0]] == [url for url, _, _ in plan]
    # Indexed shards: exact byte ranges, contiguous within a shard.
    assert all(isinstance(end, int) and end > start for _, start, end in calls[0])
    assert len(handles) == 1
    it = iter(ds)
    next(it)
    it.close()  # iteration ended early: the prefetch is cancelled
    assert len(calls) == 2 and len(handles) == 2


def test_index_is_built_once_and_kept_in_the_cache_dir(urls, ds_origin, tmp_path):
    def make() -> CacheFileSystem:
        return CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "c"),
            chunk_size="16KiB",
            skip_instance_cache=True,
            ram_limit=0,
        )

    first = make()
    ds = ShardDataset(urls, first)
    first.wait_idle()
    assert len(list((tmp_path / "c" / "index").iterdir())) == SHARDS
    ds_origin.reset_stats()
    second = ShardDataset(urls, make())
    assert ds_origin.stats.bytes_sent == 0  # no shard read again
    assert second.sample_counts == ds.sample_counts


def test_given_sample_counts_need_no_index(
    fs, urls, ds_origin, dataset_files, all_keys
):
    counts = dataset_files[1]
    ds_origin.reset_stats()
    ds = ShardDataset(urls, fs, sample_counts=counts, rank=1, world_size=2)
    assert ds_origin.stats.requests == 0
    assert ds.sample_counts == counts
    ds2 = ShardDataset(
        urls,
        fs,
        sample_counts=dict(zip(urls, counts, strict=True)),
        rank=0,
        world_size=2,
    )
    got = keys(ds) + keys(ds2)
    assert len(got) == len(set(got)) == 2 * (len(all_keys) // 2)


@pytest.mark.parametrize("delta", [1, -1])
def test_wrong_sample_counts_are_a_format_error(fs, urls, dataset_files, delta):
    counts = list(dataset_files[1])
    counts[0] += delta
    ds = ShardDataset(urls, fs, sample_counts=counts, shuffle=False)
    with pytest.raises(ShardFormatError, match=r"shard-0000\.tar"):
        list(ds)


def test_raw_shards_whole_and_records(tmp_path):
    data = tmp_path / "raw"
    data.mkdir()
    blobs = [os.urandom(4096 * (i + 1)) for i in range(3)]
    for i, blob in enumerate(blobs):
        (data / f"r{i}.bin").write_bytes(blob)
    fs = CacheFileSystem(
        target_protocol="file",
        cache_dir=str(tmp_path / "cache"),
        chunk_size="8KiB",
        skip_instance_cache=True,
    )
    whole = ShardDataset(str(data / "r*.bin"), fs, format="raw", shuffle=False)
    assert [bytes(s["data"]) for s in whole] == blobs
    records = ShardDataset(
        str(data / "r{0..2}.bin"), fs, format="raw", record_size=1024, shuffle=False
    )
    got = list(records)
    assert len(got) == len(records) == 24
    assert b"".join(bytes(s["data"]) for s in got) == b"".join(blobs)
    assert got[5]["__key__"] == "r1.bin/1"
    (data / "r3.bin").write_bytes(b"x" * 1500)
    with pytest.raises(
        ShardFormatError, match=r"r3.bin: shard size 1500 .*offset 1024"
    ):
        ShardDataset(str(data / "r3.bin"), fs, format="raw", record_size=1024)
    fs.wait_idle()


def test_urls_from_globs_and_braces(fs, ds_origin, urls):
    assert expand_urls(ds_origin.url + "/ds/*.tar", fs) == urls
    assert expand_urls(ds_origin.url + "/ds/shard-{0000..0006}.tar", fs) == urls
    assert expand_urls(ds_origin.url + "/ds/shard-000{1,3}.tar", fs) == [
        urls[1],
        urls[3],
    ]
    with pytest.raises(FileNotFoundError, match="no shards match"):
        expand_urls(ds_origin.url + "/ds/*.zip", fs)
    assert ShardDataset(ds_origin.url + "/ds/*.tar", fs).urls == urls


def test_plain_fsspec_filesystem_reads_the_same(fs, urls):
    plain = fsspec.filesystem("http", skip_instance_cache=True)
    a = ShardDataset(urls, plain, seed=3, decode="bytes")
    b = ShardDataset(urls, fs, seed=3, decode="bytes")
    assert [s["bin"] for s in a] == [s["bin"] for s in b]


def test_default_filesystem_caches_the_urls_protocol(urls, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ds = ShardDataset(urls[:2])
    assert isinstance(ds.fs, CacheFileSystem) and ds.fs.target_protocol == "http"
    assert ds.fs.cache_dirs[0] == tmp_path / "xdg" / "cachefs"
    assert len(list(ds)) == ds.total_samples
    ds.fs.wait_idle()


def test_pickles_outside_a_process_start(fs, urls):
    ds = ShardDataset(urls, fs, seed=6)
    ds.set_epoch(3)
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.epoch == 3 and keys(copy) == keys(ds)
    copy.set_epoch(4)
    assert ds.epoch == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"format": "zip"}, ValueError, "format"),
        ({"record_size": 16}, ValueError, "record_size"),
        ({"format": "raw", "record_size": 0}, ValueError, "record_size"),
        ({"shuffle_buffer": -1}, ValueError, "shuffle_buffer"),
        ({"decode": 3}, TypeError, "decode"),
        ({"seed": "x"}, TypeError, "seed"),
        ({"shuffle": 1}, TypeError, "shuffle"),
        ({"sample_counts": [1, 2]}, ValueError, "sample_counts"),
        ({"sample_counts": {"x": 1}}, ValueError, "sample_counts"),
        ({"rank": 3, "world_size": 2}, ValueError, "rank"),
    ],
)
def test_bad_arguments_name_the_parameter(fs, urls, kwargs, error, match):
    with pytest.raises(error, match=match):
        ShardDataset(urls, fs, **kwargs)


def test_no_urls_is_an_error(fs):
    with pytest.raises(ValueError, match="urls"):
        ShardDataset([], fs)
    with pytest.raises(TypeError, match="fs"):
        ShardDataset(["x"], fs=object())  # type: ignore[arg-type]


# -- DataLoader workers and processes --------------------------------------------


@TOO_MANY_WORKERS
@pytest.mark.parametrize("workers", [0, 2, 4])
def test_dataloader_fork_workers(fs, urls, all_keys, workers):
    ds = ShardDataset(urls, fs, seed=11, decode="bytes")
    extra: dict[str, Any] = {}
    if workers:
        extra = {"multiprocessing_context": "fork", "persistent_workers": True}
    loader = DataLoader(ds, batch_size=5, num_workers=workers, **extra)
    orders = epochs(ds, 3, lambda: loader_keys(loader))
    for order in orders:
        assert len(order) == len(all_keys) and set(order) == all_keys
    assert orders[0] != orders[1] != orders[2]
    # The same seed gives the same orders (a fresh loader, fresh workers).
    again = ShardDataset(urls, fs, seed=11, decode="bytes")
    loader2 = DataLoader(again, batch_size=5, num_workers=workers, **extra)
    assert epochs(again, 2, lambda: loader_keys(loader2)) == orders[:2]


def _key_and_frozen(sample: dict[str, Any]) -> tuple[str, int]:
    return sample["__key__"], gc.get_freeze_count()


def test_forked_workers_freeze_what_they_inherited(fs, urls, all_keys):
    # A forked worker's first full collection would walk (and copy) the
    # parent's whole heap; the building process itself is never frozen.
    before = gc.get_freeze_count()
    ds = ShardDataset(urls, fs, seed=5, decode=_key_and_frozen)
    assert len(list(ds)) == len(all_keys)
    assert gc.get_freeze_count() == before
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    got = list(loader)
    assert sorted(k for k, _ in got) == sorted(k for _, k in all_keys)
    assert min(n for _, n in got) > 0
    assert gc.get_freeze_count() == before


@NO_ACCELERATOR
def test_dataloader_spawn_persistent_pinned(fs, urls, all_keys):
    ds = ShardDataset(urls, fs, seed=11, decode="bytes")
    loader = DataLoader(
        ds,
        batch_size=5,
        num_workers=2,
        multiprocessing_context="spawn",
        persistent_workers=True,
        pin_memory=True,
    )
    orders = epochs(ds, 2, lambda: loader_keys(loader))
    for order in orders:
        assert len(order) == len(all_keys) and set(order) == all_keys
    assert orders[0] != orders[1]
    # Fork and spawn workers read the same orders for the same seed.
    same = ShardDataset(urls, fs, seed=11, decode="bytes")
    forked = DataLoader(
        same, batch_size=5, num_workers=2, multiprocessing_context="fork"
    )
    assert epochs(same, 2, lambda: loader_keys(forked)) == orders


def test_worker_format_error_reaches_the_main_process(
    fs, urls, ds_origin, dataset_files
):
    data = bytearray(dataset_files[0]["ds/shard-0003.tar"])
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        offset = tf.getmembers()[6].offset  # the header of the 4th sample's .bin
    data[offset + 5] ^= 0xFF
    ds_origin.set_file("ds/broken.tar", bytes(data))
    url = ds_origin.url_for("ds/broken.tar")
    ds = ShardDataset([url], fs, sample_counts=[dataset_files[1][3]], decode="bytes")
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(ShardFormatError, match=rf"broken\.tar.*offset {offset}"):
        loader_keys(loader)


RANK_CHILD = r"""
import json, sys
from torch.utils.data import DataLoader
from cachefs import CacheFileSystem
from cachefs.data.dataset import ShardDataset

args = json.loads(sys.argv[1])
fs = CacheFileSystem(target_protocol="http", cache_dir=args["cache_dir"],
                     chunk_size="16KiB", skip_instance_cache=True)
ds = ShardDataset(args["urls"], fs, seed=21, decode="bytes")
loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
out = {"len": len(ds), "epochs": []}
for epoch in range(2):
    ds.set_epoch(epoch)
    keys = []
    for batch in loader:
        keys += [[u, k] for u, k in zip(batch["__url__"], batch["__key__"])]
    out["epochs"].append(keys)
fs.wait_idle()
print(json.dumps(out))
"""


def test_ranks_in_separate_processes(urls, all_keys, tmp_path):
    world_size = 3
    env = dict(os.environ, WORLD_SIZE=str(world_size))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    args = json.dumps({"urls": urls, "cache_dir": str(tmp_path / "node-cache")})
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_CHILD, args],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world_size)
    ]
    results = []
    try:
        for child in children:
            out, err = child.communicate(timeout=90)
            assert child.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()
    per_rank = len(all_keys) // world_size
    for epoch in range(2):
        parts = [{tuple(k) for k in r["epochs"][epoch]} for r in results]
        assert [len(r["epochs"][epoch]) for r in results] == [per_rank] * world_size
        assert all(len(p) == per_rank for p in parts)  # no repeats inside a rank
        union = set().union(*parts)
        assert len(union) == per_rank * world_size  # disjoint
        assert union <= all_keys and len(all_keys - union) == len(all_keys) % world_size
    assert [r["len"] for r in results] == [per_rank] * world_size
    assert results[0]["epochs"][0] != results[0]["epochs"][1]


def test_imports_and_iterates_without_torch(tmp_path):
    data = tmp_path / "s.bin"
    data.write_bytes(b"abcdefgh" * 4)
    script = f"""
import sys
sys.modules["torch"] = None  # as if torch were not installed
from cachefs import CacheFileSystem
from cachefs.data.dataset import ShardDataset
fs = CacheFileSystem(target_protocol="file", cache_dir={str(tmp_path / "c")!r},
                     skip_instance_cache=True)
ds = ShardDataset([{str(data)!r}], fs, format="raw", record_size=8)
assert ShardDataset.__mro__[1] is object, ShardDataset.__mro__
assert [bytes(s["data"]) for s in ds] == [b"abcdefgh"] * 4
fs.wait_idle()
print("ok")
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_braces_nest_step_and_pad_as_bash_does(fs, ds_origin, urls):
    base = ds_origin.url + "/ds/shard-"
    # Nested lists: each shard once (it read shard 0000 twice).
    nested = ShardDataset(base + "{0000,{0001,0002}}.tar", fs, shuffle=False)
    assert nested.urls == urls[:3]
    assert expand_urls(base + "{{0000..0001},000{3,5}}.tar", fs) == [
        urls[0],
        urls[1],
        urls[3],
        urls[5],
    ]
    # Steps, with the zero padding of the bounds.
    assert expand_urls(base + "{0000..0006..2}.tar", fs) == urls[::2]
    assert expand_urls(base + "000{6..0..3}.tar", fs) == [urls[6], urls[3], urls[0]]
    assert expand_urls("s-{08..11}.tar", fs) == [
        "s-08.tar",
        "s-09.tar",
        "s-10.tar",
        "s-11.tar",
    ]
    assert expand_urls("s-{0..10..5}-{a,b}", fs) == [
        "s-0-a",
        "s-0-b",
        "s-5-a",
        "s-5-b",
        "s-10-a",
        "s-10-b",
    ]
    with pytest.raises(ValueError, match="unbalanced braces"):
        expand_urls(base + "{0000,0001.tar", fs)


# -- torch's default collate ---------------------------------------------------


def _uneven_tar(shard: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(6):
            payload = bytes([shard, i]) * (100 + 37 * i)  # sizes differ
            info = tarfile.TarInfo(f"{shard:02d}-{i:03d}.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


@pytest.mark.parametrize("workers", [0, 2])
def test_default_collate_batches_samples_of_different_sizes(
    fs: CacheFileSystem, workers: int
) -> None:
    # It failed with "each element in list of batch should be of equal size":
    # default_collate took each memoryview for a sequence of ints.
    files = {f"uneven/{s}.tar": _uneven_tar(s) for s in range(2)}
    with HTTPOrigin(files=files) as origin:
        urls = [origin.url_for(n) for n in sorted(files)]
        ds = ShardDataset(urls, fs=fs, shuffle=False, prefetch=False)
        loader = DataLoader(ds, batch_size=4, num_workers=workers)
        got = {}
        for batch in loader:
            assert all(isinstance(v, bytes) for v in batch["bin"])
            got.update(zip(batch["__key__"], batch["bin"], strict=True))
    assert got == {
        f"{s:02d}-{i:03d}": bytes([s, i]) * (100 + 37 * i)
        for s in range(2)
        for i in range(6)
    }
