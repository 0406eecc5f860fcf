"""Scenario "epoch_scan": hit rate per epoch and policy on shuffled scans.

A dataset twice the disk budget is read whole, four epochs, each in a new
random order (epoch-based training), through cachefs with the RAM tier off so
the disk tier alone decides. Hit rates come from the origin's byte counter:
``1 - origin bytes / dataset bytes``. Each policy is compared with the bound
``disk budget / dataset`` (chunk headers included). Targets in epochs 2-4:
the epoch policy >= 0.95x of the bound, the default (``adaptive``, which also
keeps recency for other access) >= 0.9x; ``lru`` is shown for comparison.
Origin: the HTTP origin on loopback, no latency (latency does not change hit rates).

A second part, "zarr random", reads a zarr array over the same origin in
random windows, 80% of them in a hot fifth of the array, with the disk budget
half the array: there recency matters, and the default must hit at least
0.9x what ``lru`` hits.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import warnings
from pathlib import Path

from bench.report import Row, Target
from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards
from cachefs.tiers.disk import CHUNK_HEADER

__all__ = ["run"]

EPOCHS = 4
TARGETS = {"epoch": ">= 0.95x", "adaptive": ">= 0.9x"}


def hit_rates(
    files: dict[str, bytes], policy: str, chunk: int, epochs: int = EPOCHS
) -> list[float]:
    """Return the hit rate of each epoch for ``policy``."""
    dataset = sum(len(v) for v in files.values())
    with (
        HTTPOrigin(files=files) as origin,
        tempfile.TemporaryDirectory() as cache_dir,
    ):
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=cache_dir,
            ram_limit=0,
            disk_limit=dataset // 2,
            chunk_size=chunk,
            policy=policy,
            metadata_ttl=None,
            readahead=0,
            skip_instance_cache=True,
        )
        names = sorted(files)
        rates = []
        for epoch in range(epochs):
            order = names[:]
            random.Random(epoch).shuffle(order)
            before = origin.stats.bytes_sent
            for name in order:
                fs.cat_file(origin.url_for(name))
            fs.wait_idle()
            rates.append(1 - (origin.stats.bytes_sent - before) / dataset)
        fs.close()
    return rates


def zarr_files(side: int, chunk: int) -> dict[str, bytes]:
    """Return the files of a ``side x side`` float64 zarr array, by name."""
    import numpy as np
    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "random.zarr"
        arr = zarr.create_array(
            store=str(root), shape=(side, side), chunks=(chunk, chunk), dtype="f8"
        )
        arr[:] = np.random.default_rng(7).random((side, side))
        return {
            f"zarr/{p.relative_to(Path(tmp)).as_posix()}": p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }


def zarr_hit_rate(files: dict[str, bytes], policy: str, side: int, reads: int) -> float:
    """Return the hit rate of ``reads`` random windows, 80% in a hot fifth."""
    import numpy as np
    import zarr
    from zarr.storage import FsspecStore

    dataset = sum(len(v) for k, v in files.items() if "/c/" in k)
    with (
        HTTPOrigin(files=files) as origin,
        tempfile.TemporaryDirectory() as cache_dir,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # zarr: fs not created asynchronous
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=cache_dir,
            ram_limit=0,
            disk_limit=dataset // 2,
            chunk_size=64 << 10,
            policy=policy,
            metadata_ttl=None,
            readahead=0,
            skip_instance_cache=True,
            asynchronous=True,
        )
        store = FsspecStore(fs=fs, path=origin.url_for("zarr/random.zarr"))
        arr = zarr.open_array(store, mode="r")
        rng = random.Random(11)
        window, hot = side // 8, side // 5
        arr[0:window, 0:window]  # metadata read once, before counting
        before, wanted = origin.stats.bytes_sent, 0
        for _ in range(reads):
            top = hot - window if rng.random() < 0.8 else side - window
            row, col = rng.randrange(top + 1), rng.randrange(top + 1)
            block = arr[row : row + window, col : col + window]
            wanted += np.asarray(block).nbytes
        sent = origin.stats.bytes_sent - before
        fs.close()
    return 1 - sent / max(wanted, 1)


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure epoch and LRU hit rates against the cache/dataset bound."""
    count, size, chunk = (32, 1 << 20, 256 << 10) if quick else (64, 4 << 20, 1 << 20)
    files = make_shards(count, size, seed=5, prefix="epochs/")
    dataset = count * size
    bound = (dataset // 2) / (dataset + (dataset // chunk) * CHUNK_HEADER.size)
    rows: list[Row] = []
    for policy in ("adaptive", "epoch", "lru"):
        rates = hit_rates(files, policy, chunk)
        goal = TARGETS.get(policy)
        for epoch, rate in enumerate(rates, start=1):
            ratio = rate / bound
            judged = goal is not None and epoch > 1
            rows.append(
                Row(
                    row=f"epoch {epoch}",
                    system=f"cachefs policy={policy}",
                    value=rate,
                    unit="hit rate",
                    samples=[rate],
                    reference="bound",
                    ratio=ratio,
                    target=goal if judged else None,
                    met=Target.parse(goal).check(ratio) if goal and judged else None,
                    detail={
                        "bound": bound,
                        "dataset_bytes": dataset,
                        "disk_limit": dataset // 2,
                        "chunk_size": chunk,
                    },
                )
            )
    side = 512 if quick else 1024
    zfiles = zarr_files(side, 64)
    reads = 150 if quick else 600
    zrates = {p: zarr_hit_rate(zfiles, p, side, reads) for p in ("lru", "adaptive")}
    for policy, rate in zrates.items():
        ratio = rate / zrates["lru"] if zrates["lru"] else float("nan")
        judged = policy == "adaptive"
        rows.append(
            Row(
                row="zarr random (hot fifth)",
                system=f"cachefs policy={policy}",
                value=rate,
                unit="hit rate",
                samples=[rate],
                reference="lru",
                ratio=ratio,
                target=">= 0.9x" if judged else None,
                met=Target.parse(">= 0.9x").check(ratio) if judged else None,
                detail={"side": side, "reads": reads, "chunk": 64},
            )
        )
    return rows
