"""ShardDataset with a cache of half the data set reaches the epoch policy's bound.

The ``epoch`` policy keeps the chunks that filled the cache and lets the
rest bypass it, so from the second epoch on a reader should fetch about
``1 - cache / data set`` = 0.5 of the data set from the origin per epoch,
and the whole data set once in the first. Measured here as users run it:
tar shards on a real HTTP origin (loopback, counting body bytes), a real
torch DataLoader with and without (fork) workers, with and without prefetch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

from cachefs import CacheFileSystem
from cachefs.cli.demo import make_dataset
from cachefs.data.dataset import ShardDataset
from cachefs.data.world import World
from cachefs.testing import HTTPOrigin

KiB, MiB = 2**10, 2**20
SHARDS = 16
EPOCHS = 4
#: Origin bytes / data set allowed per epoch: the bound (1.0 in the first
#: epoch: every chunk once; 0.5 after it) plus, after it, 0.05 for the chunks
#: that straddle the places where two consumers split a shard. The first
#: epoch's extra for a split shard is derived from the plan (split_bytes).
FIRST, LATER = 1.0, 0.55


@pytest.fixture(scope="module")
def shards() -> tuple[dict[str, bytes], list[int]]:
    files, counts = make_dataset(SHARDS, 1 * MiB, 16 * KiB, seed=1)
    return {f"half/{k.split('/')[-1]}": v for k, v in files.items()}, counts


@pytest.fixture
def half_origin(
    shards: tuple[dict[str, bytes], list[int]],
) -> Iterator[HTTPOrigin]:
    # One per test: a run's worker processes may still be closing sessions
    # when the next run starts, and each run counts its own bytes.
    with HTTPOrigin(files=dict(shards[0])) as server:
        yield server


def split_bytes(
    ds: ShardDataset, sizes: dict[str, int], epoch: int, workers: int
) -> int:
    """Bytes of the shards that more than one consumer reads in ``epoch``.

    Taken from the plan (:meth:`ShardDataset.plan`, no I/O), not from a
    run: what two consumers both read is at most those whole shards.
    """
    readers: dict[str, int] = {}
    for w in range(max(workers, 1)):
        for url, _, _ in ds.plan(epoch, World(0, 1, w, max(workers, 1))):
            readers[url] = readers.get(url, 0) + 1
    return sum(sizes[url] for url, n in readers.items() if n > 1)


def ratios(
    origin: HTTPOrigin,
    files: dict[str, bytes],
    counts: list[int] | None,
    cache_dir: Path,
    *,
    prefetch: bool,
    workers: int,
) -> tuple[float, list[float], float]:
    """Return (index pass, [epoch 0, 1, ...], split) as origin bytes / data set.

    ``split``: the bytes of the shards two consumers split in the first
    epoch (:func:`split_bytes`), over the data set.
    """
    total = sum(len(v) for v in files.values())
    fs = CacheFileSystem(
        target_protocol="http",
        cache_dir=str(cache_dir),
        chunk_size="256KiB",
        ram_limit="512KiB",
        disk_limit=total // 2,
        policy="epoch",
        skip_instance_cache=True,
    )
    urls = [origin.url_for(p) for p in sorted(files)]
    origin.reset_stats()
    ds = ShardDataset(
        urls, fs, seed=2, decode="bytes", prefetch=prefetch, sample_counts=counts
    )
    index_pass = origin.stats.bytes_sent / total
    sizes = {origin.url_for(p): len(files[p]) for p in files}
    split = split_bytes(ds, sizes, 0, workers) / total
    extra: dict[str, Any] = {}
    if workers:
        extra = {"multiprocessing_context": "fork", "persistent_workers": True}
    loader: DataLoader[Any] = DataLoader(ds, batch_size=8, num_workers=workers, **extra)
    out = []
    for epoch in range(EPOCHS):
        ds.set_epoch(epoch)
        before = origin.stats.bytes_sent
        seen = sum(len(batch["__key__"]) for batch in loader)
        assert seen == ds.total_samples
        fs.wait_idle()
        out.append((origin.stats.bytes_sent - before) / total)
    del loader  # persistent workers end before the cache directory goes
    fs.close()
    return index_pass, out, split


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("prefetch", [False, True])
def test_known_counts_reach_the_bound(half_origin, shards, tmp_path, prefetch, workers):
    files, counts = shards
    index_pass, got, split = ratios(
        half_origin,
        files,
        counts,
        tmp_path / "cache",
        prefetch=prefetch,
        workers=workers,
    )
    assert index_pass == 0  # counts given: nothing read up front
    # Every chunk once. Besides: two consumers split a shard whose sample
    # offsets nobody knows yet; the second reads the headers (every chunk)
    # of the first one's piece too, and with prefetch the cache, filling in
    # the order chunks arrive, may have no room left for them when the first
    # one reads its piece (known residual, docs/data.md: at most that shard,
    # which the plan names). A chunk whose lock stripe another fetch of the
    # process held was once fetched twice here under load (one chunk more:
    # 1.077 against 1.063); fixed, see tests/test_stripe_holds.py.
    first = FIRST + (split if workers and prefetch else 0)
    assert got[0] <= first, (got, first)
    assert max(got[1:]) <= LATER, got


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("prefetch", [False, True])
def test_indexed_shards_reach_the_bound(
    half_origin, shards, tmp_path, prefetch, workers
):
    files, _ = shards
    index_pass, got, _ = ratios(
        half_origin,
        files,
        None,
        tmp_path / "cache",
        prefetch=prefetch,
        workers=workers,
    )
    # The index pass reads every header, so every chunk, once; the cache
    # keeps half of them and every epoch then reads the other half.
    # The pass (16 threads at once) used to fetch one chunk twice now and
    # then (2 of 20 runs under load): two first reads held chunks of one
    # lock stripe (tests/test_stripe_holds.py). 0 of 20 since.
    assert index_pass <= FIRST
    assert max(got) <= LATER, got
