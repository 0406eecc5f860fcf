"""Scenario "epoch_scan": hit rate per epoch and policy on shuffled scans.

A dataset twice the disk budget is read whole, four epochs, each in a new
random order (epoch-based training), through cachefs with the RAM tier off so
the disk tier alone decides. Hit rates come from the origin's byte counter:
``1 - origin bytes / dataset bytes``. Each policy is compared with the bound
``disk budget / dataset`` (chunk headers included); the epoch policy's target
is >= 0.95x of the bound in epochs 2-4. Origin: the HTTP origin on loopback,
no latency (latency does not change hit rates).
"""

from __future__ import annotations

import argparse
import random
import tempfile

from bench.report import Row, Target
from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards
from cachefs.tiers.disk import CHUNK_HEADER

__all__ = ["run"]

EPOCHS = 4
TARGET = ">= 0.95x"


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


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure epoch and LRU hit rates against the cache/dataset bound."""
    count, size, chunk = (32, 1 << 20, 256 << 10) if quick else (64, 4 << 20, 1 << 20)
    files = make_shards(count, size, seed=5, prefix="epochs/")
    dataset = count * size
    bound = (dataset // 2) / (dataset + (dataset // chunk) * CHUNK_HEADER.size)
    target = Target.parse(TARGET)
    rows: list[Row] = []
    for policy in ("epoch", "lru"):
        rates = hit_rates(files, policy, chunk)
        for epoch, rate in enumerate(rates, start=1):
            ratio = rate / bound
            judged = policy == "epoch" and epoch > 1
            rows.append(
                Row(
                    row=f"epoch {epoch}",
                    system=f"cachefs policy={policy}",
                    value=rate,
                    unit="hit rate",
                    samples=[rate],
                    reference="bound",
                    ratio=ratio,
                    target=TARGET if judged else None,
                    met=target.check(ratio) if judged else None,
                    detail={
                        "bound": bound,
                        "dataset_bytes": dataset,
                        "disk_limit": dataset // 2,
                        "chunk_size": chunk,
                    },
                )
            )
    return rows
