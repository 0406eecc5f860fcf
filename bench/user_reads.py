"""Scenarios "user_hot_ram", "user_random_fresh", "user_small_reads" (issue 12).

Reads after the first: a hot RAM tier against huge-page memcpy, the first
1000 random reads of a warm file in a new process, and ``tarfile``-sized
reads with full tiers. The origin, the pass processes and the rules are
those of :mod:`bench.user_paths` (its module docstring lists every user-path
scenario).
"""

from __future__ import annotations

import argparse
import math
import mmap
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import Row, as_reference, compare, interleaved, median
from bench.user_paths import (
    HUGE_PAGE,
    ORIGIN_MODEL,
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
    _row,
    _write_files,
    run_pass,
)
from cachefs import CacheFileSystem
from cachefs.policy import available_policies
from cachefs.testing import make_shards

__all__ = ["run_hot_ram", "run_random_fresh", "run_small_reads"]


# -- user_hot_ram -------------------------------------------------------------------


def _anon_huge_kib() -> int:
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return -1


def _page_copy(
    src: np.ndarray[Any, Any], huge: bool
) -> tuple[Any, np.ndarray[Any, Any], int]:
    """Copy ``src`` into 2 MiB-aligned private anonymous memory.

    ``huge`` advises ``MADV_HUGEPAGE``, else ``MADV_NOHUGEPAGE`` (numpy
    itself advises huge pages for large arrays, so a plain copy is no 4 KiB
    page baseline). Returns the map, the aligned array over it and the KiB of
    huge pages the OS granted (``AnonHugePages`` before and after; -1 if
    unknown).
    """
    before = _anon_huge_kib()
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    region = mmap.mmap(-1, src.nbytes + HUGE_PAGE, flags=flags)
    advice = getattr(mmap, "MADV_HUGEPAGE" if huge else "MADV_NOHUGEPAGE", None)
    if advice is not None:
        region.madvise(advice)
    whole = np.frombuffer(region, dtype=np.uint8)
    start = -whole.ctypes.data % HUGE_PAGE
    aligned = whole[start : start + src.nbytes]
    aligned[:] = src
    after = _anon_huge_kib()
    granted = after - before if before >= 0 and after >= 0 else -1
    return region, aligned, granted


def _copy_pass(src: np.ndarray[Any, Any]) -> Callable[[], None]:
    dst = np.empty(MiB, dtype=np.uint8)
    size = src.nbytes

    def run() -> None:
        for off in range(0, size, MiB):
            n = min(MiB, size - off)
            np.copyto(dst[:n], src[off : off + n])

    return run


def _readinto_pass(fs: CacheFileSystem, url: str) -> Callable[[], None]:
    buf = bytearray(MiB)

    def run() -> None:
        with fs.open(url, "rb") as f:
            readinto = f.readinto
            while readinto(buf):
                pass

    return run


def run_hot_ram(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Hot RAM-tier ``readinto`` vs memcpy from huge-page memory."""
    size = int(_param(args, "size", 64 * MiB if quick else 256 * MiB))
    reps = int(_param(args, "reps", 5 if quick else 9))
    min_time = float(_param(args, "min_time", 0.1 if quick else 0.3))
    print(f"user_hot_ram origin model: {ORIGIN_MODEL}", flush=True)
    cfs_name = "cachefs readinto (RAM tier)"
    huge_name = "memcpy, huge-page source"
    small_name = "memcpy, 4 KiB-page source"
    with tempfile.TemporaryDirectory(prefix="cachefs-user-hot-") as name:
        tmp = Path(name)
        files = make_shards(1, size, seed=1204)
        _write_files(tmp / "origin", files)
        (path,) = files
        data = np.frombuffer(files[path], dtype=np.uint8)
        with OriginProcess(tmp / "origin") as origin:
            url = origin.url_for(path)
            fs = CacheFileSystem(
                target_protocol="http",
                cache_dir=str(tmp / "cache"),
                ram_limit=2 * size + 64 * MiB,
                skip_instance_cache=True,
            )
            try:
                for _ in range(2):
                    with fs.open(url, "rb") as f:
                        f.read()
                fs.wait_idle(120)
                _region, huge, granted = _page_copy(data, huge=True)
                _small_region, small, small_granted = _page_copy(data, huge=False)
                origin.reset()
                samples, loops = interleaved(
                    {
                        cfs_name: _readinto_pass(fs, url),
                        huge_name: _copy_pass(huge),
                        small_name: _copy_pass(small),
                    },
                    reps,
                    min_time,
                )
                during = origin.stats()["bytes_sent"]
                del huge, small
            finally:
                fs.close()
    granted_text = (
        f"yes ({granted // 1024} MiB of {size // MiB} MiB)"
        if granted >= size // KiB // 2
        else ("unknown" if granted < 0 else f"no ({granted} KiB)")
    )
    common = {
        "origin_model": ORIGIN_MODEL,
        "file_bytes": size,
        "buffer_bytes": MiB,
        "huge_pages_granted": granted_text,
        "anon_huge_pages_kib": granted,
        "anon_huge_pages_kib_4k_source": small_granted,
        "origin_bytes_during_timing": during,
        "process": "the measuring process (a RAM tier is per process)",
    }
    label = f"1 hot RAM readinto 1MiB (huge pages granted: {granted_text})"
    by = {
        system: _row(
            label,
            system,
            [size / s / 1e9 for s in secs],
            "GB/s",
            {**common, "loops": loops[system]},
        )
        for system, secs in samples.items()
    }
    return [
        as_reference(by[huge_name]),
        compare(by[cfs_name], by[huge_name], ">= 0.9x"),
        compare(by[small_name], by[huge_name]),
        compare(by[cfs_name], by[small_name]),
    ]


# -- user_random_fresh --------------------------------------------------------------


def run_random_fresh(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """First 1000 random 4 KiB reads after open, warm caches, new processes."""
    size = int(_param(args, "size", 32 * MiB if quick else 64 * MiB))
    reps = int(_param(args, "reps", 5 if quick else 9))
    reads = int(_param(args, "reads", 1000))
    print(f"user_random_fresh origin model: {ORIGIN_MODEL}", flush=True)
    names = {
        "cachefs:: (metadata_ttl=None)": "cachefs",
        "simplecache::": "simplecache",
        "blockcache::": "blockcache",
    }
    with tempfile.TemporaryDirectory(prefix="cachefs-user-random-") as name:
        tmp = Path(name)
        files = make_shards(1, size, seed=1205)
        _write_files(tmp / "origin", files)
        (path,) = files
        del files
        with OriginProcess(tmp / "origin") as origin:
            url = origin.url_for(path)
            systems: dict[str, Callable[[], Result]] = {}
            for label, system in names.items():
                cache_dir = str(tmp / system)
                options = WARM_OPTIONS if system == "cachefs" else {}
                _log("user_random_fresh", f"warming {label} (untimed pass)")
                run_pass(
                    {
                        "kind": "sequential",
                        "system": system,
                        "urls": [url],
                        "cache_dir": cache_dir,
                        "options": options,
                        "drain": True,
                    }
                )
                spec = {
                    "kind": "random",
                    "system": system,
                    "url": url,
                    "size": size,
                    "reads": reads,
                    "cache_dir": cache_dir,
                    "options": options,
                }
                systems[label] = lambda spec=spec: _measured(origin, spec)
            runs = _interleave("user_random_fresh", systems, reps)
    common = {
        "origin_model": ORIGIN_MODEL,
        "file_bytes": size,
        "reads": reads,
        "read_bytes": 4096,
        "timed": "from fsspec.open to the last read, in a new process",
    }
    label = f"1 first {reads} random 4KiB reads after open, new process"
    by = {
        system: _row(
            label,
            system,
            [r["seconds"] * 1000 for r in results],
            "ms",
            {
                **common,
                **_origin_summary(results),
                "open_s_median": median([r["open_s"] for r in results]),
            },
        )
        for system, results in runs.items()
    }
    cfs = by["cachefs:: (metadata_ttl=None)"]
    return [
        as_reference(by["simplecache::"]),
        as_reference(by["blockcache::"]),
        compare(cfs, by["simplecache::"], ">= 1x"),
        compare(cfs, by["blockcache::"], ">= 1x"),
    ]


# -- user_small_reads ---------------------------------------------------------------


def run_small_reads(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """10 KiB reads with full tiers, every policy: origin bytes ÷ file size."""
    size = int(_param(args, "size", 8 * MiB if quick else 16 * MiB))
    reps = int(_param(args, "reps", 1 if quick else 3))
    fill_files = 4
    ram, disk = size, 2 * size  # the fill (4 x size) overflows both tiers
    print(f"user_small_reads origin model: {ORIGIN_MODEL}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cachefs-user-small-") as name:
        tmp = Path(name)
        files = make_shards(fill_files + 1, size, seed=1206)
        _write_files(tmp / "origin", files)
        target, *fill = list(files)
        del files
        with OriginProcess(tmp / "origin") as origin:
            systems: dict[str, Callable[[], Result]] = {}
            for policy in available_policies():
                spec = {
                    "kind": "small_reads",
                    "system": f"cachefs policy={policy}",
                    "url": origin.url_for(target),
                    "fill": [origin.url_for(p) for p in fill],
                    "options": {"policy": policy, "ram_limit": ram, "disk_limit": disk},
                }
                systems[f"cachefs policy={policy}"] = _cold(origin, tmp, spec)
            runs = _interleave("user_small_reads", systems, reps)
    common = {
        "origin_model": ORIGIN_MODEL,
        "file_bytes": size,
        "read_bytes": 10 * KiB,
        "ram_limit": ram,
        "disk_limit": disk,
        "fill_bytes_before": fill_files * size,
        "bound": "origin bytes <= 1.05 x file size (ratio = file/origin >= 0.952)",
    }
    rows: list[Row] = []
    label = "1 10KiB reads, full tiers: origin ÷ file"
    bound = "bound: file size once"
    for system, results in runs.items():
        amp = [r["origin_by_path"].get(target, 0) / size for r in results]
        detail = {
            **common,
            "router": [r.get("router", {}) for r in results],
            "seconds": [r["seconds"] for r in results],
        }
        value = median(amp)
        ratio = 1.0 / value if value > 0 else math.inf
        rows.append(
            Row(
                label,
                system,
                value,
                "x file",
                amp,
                reference=bound,
                ratio=min(ratio, 1e6),
                target=">= 0.952x",
                met=ratio >= 1 / 1.05,
                detail=detail,
            )
        )
        rates = [size / r["seconds"] / 1e6 for r in results]
        rows.append(
            _row("2 10KiB reads, full tiers: MB/s", system, rates, "MB/s", detail)
        )
    return rows
