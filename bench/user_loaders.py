"""Scenarios "user_cold_loader" and "user_warm_epoch": ShardDataset as users run it.

Tar shards (32 KiB samples) behind the 20 ms HTTP origin of
:mod:`bench.user_paths` (its own process); every epoch of every system runs
in a new Python process (:mod:`bench.user_passes`) with a torch DataLoader,
2 workers, batch 32, worker start-up inside the timed epoch. See
:mod:`bench.user_paths` for the shared rules and ``docs/bench/index.md``
for the targets.
"""

from __future__ import annotations

import argparse
import importlib.util
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.report import Row, as_reference, compare
from bench.user_paths import (
    CEILING,
    ORIGIN_MODEL,
    PAYLOAD,
    WARM_OPTIONS,
    KiB,
    MiB,
    OriginProcess,
    Result,
    _cold,
    _interleave,
    _log,
    _measured,
    _origin_summary,
    _param,
    _rate,
    _row,
    run_pass,
)

__all__ = ["run_cold_loader", "run_warm_epoch"]


# -- tar shards and the two loader scenarios ----------------------------------


def _write_tars(root: Path, shards: int, shard_bytes: int) -> list[int]:
    """Write ``shards`` tar files of 32 KiB samples; return samples per shard."""
    root.mkdir(parents=True)
    per_shard = max(1, shard_bytes // (32 * KiB))
    rng = np.random.default_rng(1202)
    for s in range(shards):
        with tarfile.open(
            root / f"shard-{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT
        ) as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                info = tarfile.TarInfo(f"{i:08d}.bin")
                info.size = PAYLOAD
                info.mtime = 0
                tar.addfile(info, _Reader(rng.bytes(PAYLOAD)))
    return [per_shard] * shards


class _Reader:
    """The smallest file object ``tarfile.addfile`` reads from."""

    def __init__(self, data: bytes) -> None:
        self._view, self._pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else self._pos + n
        out = bytes(self._view[self._pos : end])
        self._pos += len(out)
        return out


def _check_samples(runs: dict[str, list[Result]], expected: int) -> None:
    for system, results in runs.items():
        for r in results:
            if "samples" in r and r["samples"] != expected:
                raise AssertionError(f"{system} delivered {r['samples']} samples")


def _torch_missing(scenario: str) -> bool:
    if importlib.util.find_spec("torch") is None:
        print(f"{scenario}: skipped (torch is not installed)", flush=True)
        return True
    return False


def _loader_setup(quick: bool, args: argparse.Namespace | None) -> tuple[int, int, int]:
    n = 16 if quick else 32
    size = int(_param(args, "size", 8 * MiB if quick else 16 * MiB))
    reps = int(_param(args, "reps", 3 if quick else 5))
    return n, size, reps


def run_cold_loader(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Cold ``ShardDataset`` + DataLoader (2 workers) vs the concurrent-GET ceiling."""
    if _torch_missing("user_cold_loader"):
        return []
    n, size, reps = _loader_setup(quick, args)
    print(f"user_cold_loader origin model: {ORIGIN_MODEL}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cachefs-user-loader-") as name:
        tmp = Path(name)
        counts = _write_tars(tmp / "origin", n, size)
        tars = sorted((tmp / "origin").iterdir())
        sizes = [p.stat().st_size for p in tars]
        with OriginProcess(tmp / "origin") as origin:
            urls = [origin.url_for(p.name) for p in tars]
            loader = {"kind": "loader", "urls": urls, "counts": counts, "epoch": 0}
            systems = {
                "cachefs ShardDataset": _cold(
                    origin, tmp, {**loader, "system": "cachefs"}
                ),
                CEILING: _cold(
                    origin,
                    tmp,
                    {
                        "kind": "ceiling",
                        "system": "aiohttp",
                        "urls": urls,
                        "sizes": sizes,
                    },
                ),
            }
            runs = _interleave("user_cold_loader", systems, reps)
    _check_samples(runs, sum(counts))
    dataset = sum(sizes)
    common = {
        "origin_model": ORIGIN_MODEL,
        "shards": n,
        "dataset_bytes": dataset,
        "samples": sum(counts),
        "loader": "torch DataLoader, 2 workers, batch 32, worker start-up timed",
    }
    label = "1 cold loader epoch, tar MB/s"
    by = {
        system: _row(
            label,
            system,
            [dataset / r["seconds"] / 1e6 for r in results],
            "MB/s",
            {**common, **_origin_summary(results)},
        )
        for system, results in runs.items()
    }
    return [
        as_reference(by[CEILING]),
        compare(by["cachefs ShardDataset"], by[CEILING], ">= 0.7x"),
    ]


def run_warm_epoch(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Warm ``ShardDataset`` epoch vs webdataset over local tars, same loader."""
    if _torch_missing("user_warm_epoch"):
        return []
    n, size, reps = _loader_setup(quick, args)
    wds_missing = importlib.util.find_spec("webdataset") is None
    print(f"user_warm_epoch origin model: {ORIGIN_MODEL}", flush=True)
    cfs_name = "cachefs ShardDataset (metadata_ttl=None)"
    wds_name = "webdataset (local files)"
    with tempfile.TemporaryDirectory(prefix="cachefs-user-warm-") as name:
        tmp = Path(name)
        counts = _write_tars(tmp / "origin", n, size)
        tars = sorted((tmp / "origin").iterdir())
        sizes = [p.stat().st_size for p in tars]
        for p in tars:  # page cache warm for the local reader
            p.read_bytes()
        cache_dir = tmp / "cache"
        with OriginProcess(tmp / "origin") as origin:
            urls = [origin.url_for(p.name) for p in tars]
            base = {
                "kind": "loader",
                "counts": counts,
                "cache_dir": str(cache_dir),
                "options": WARM_OPTIONS,
            }
            _log("user_warm_epoch", "warming the cache (untimed epoch)")
            run_pass({**base, "system": "cachefs", "urls": urls, "epoch": 0})
            epoch = iter(range(1, 10**6))
            systems: dict[str, Callable[[], Result]] = {
                cfs_name: lambda: _measured(
                    origin,
                    {**base, "system": "cachefs", "urls": urls, "epoch": next(epoch)},
                ),
            }
            if not wds_missing:
                local = [str(p) for p in tars]
                systems[wds_name] = lambda: _measured(
                    origin,
                    {**base, "system": "webdataset", "urls": local, "epoch": 1},
                )
            runs = _interleave("user_warm_epoch", systems, reps)
    _check_samples(runs, sum(counts))
    common = {
        "origin_model": ORIGIN_MODEL,
        "shards": n,
        "dataset_bytes": sum(sizes),
        "samples": sum(counts),
        "loader": "torch DataLoader, 2 workers, batch 32, worker start-up timed",
        "process": "one new Python process per epoch; cache warmed by an "
        "untimed epoch; local tars in the page cache",
    }
    label = "1 warm loader epoch, samples/s"
    by = {
        system: _row(
            label,
            system,
            _rate(results, 1.0, "samples"),
            "samples/s",
            {**common, **_origin_summary(results)},
        )
        for system, results in runs.items()
    }
    if wds_missing:
        missing = Row(label, wds_name, 0.0, "samples/s", [0.0])
        missing.detail["status"] = "peer not installed (pip install webdataset)"
        return [by[cfs_name], missing]
    return [as_reference(by[wds_name]), compare(by[cfs_name], by[wds_name], ">= 0.8x")]
