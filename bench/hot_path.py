"""Scenario "hot path": what a warm read costs, against memcpy and peers.

Everything is warm before timing: the origin is a local file (in the page
cache), each cache has read the whole file once, and the disk tier's writes
have finished. Rows:

1. ``read_view`` in 1 MiB steps over a RAM-resident file vs ``np.copyto`` of
   the same bytes from a preloaded array (zero copy must beat one copy);
2. ``readinto`` (1 MiB buffer) from the RAM tier vs the same ``np.copyto``;
3. sequential 1 MiB reads of a disk-resident file (``ram_limit=0``, so every
   read is a disk-tier hit), ``readinto`` and ``read``, vs unbuffered local
   file reads and vs fsspec ``simplecache`` reading its local copy;
4. 4 KiB random reads (``seek`` + ``read(4096)`` at a fixed pseudo-random
   list of offsets) through one open file: cachefs RAM and disk tiers vs
   ``simplecache`` and ``blockcache``.

Ratios are ``> 1`` when cachefs is faster. The origin check of every cachefs
system (origin bytes during timing) is recorded in the row's ``detail``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fsspec.spec import AbstractFileSystem

from bench.peers import build_cachefs, build_peer, open_file, warm
from bench.report import Row, as_reference, compare, filesystem_of, interleaved, median
from cachefs import CacheFileSystem

__all__ = ["DEFAULTS", "QUICK", "run"]

MiB = 2**20
STEP = MiB
RANDOM_READ = 4096
CHUNK_SIZE = 4 * MiB

#: Parameters of a full run and of ``--quick``.
DEFAULTS: dict[str, Any] = {
    "size": 64 * MiB,
    "reps": 7,
    "reads": 20_000,
    "min_time": 0.2,
}
QUICK: dict[str, Any] = {"size": 16 * MiB, "reps": 5, "reads": 4_000, "min_time": 0.1}

ROW_VIEW = "1 view 1MiB seq, RAM"
ROW_RAM_READINTO = "2 readinto 1MiB, RAM"
ROW_DISK_SEQ = "3 seq 1MiB, disk tier"
ROW_RANDOM = "4 random 4KiB, warm"

BLOCKCACHE_NOTE = (
    "over a local target fsspec's blockcache reads the origin file directly "
    "(LocalFileOpener), bypassing its mmap block cache"
)

Pass = Callable[[], object]


def _param(args: argparse.Namespace | None, name: str, quick: bool) -> Any:
    value = getattr(args, name, None) if args is not None else None
    if value is None:
        value = (QUICK if quick else DEFAULTS)[name]
    return value


# -- passes: one call reads the whole file (or the whole offset list) --------


def _numpy_copy(src: np.ndarray[Any, Any], step: int) -> Pass:
    dst = np.empty(step, dtype=np.uint8)
    size = src.nbytes

    def run() -> None:
        for off in range(0, size, step):
            n = min(step, size - off)
            np.copyto(dst[:n], src[off : off + n])

    return run


def _cachefs_view(fs: CacheFileSystem, path: str, size: int, step: int) -> Pass:
    steps = range(-(-size // step))

    def run() -> None:
        with fs.open(path, "rb") as f:
            view = f.read_view
            for _ in steps:
                view(step)

    return run


def _readinto(opener: Callable[[], Any], step: int) -> Pass:
    buf = bytearray(step)

    def run() -> None:
        with opener() as f:
            readinto = f.readinto
            while readinto(buf):
                pass

    return run


def _read(opener: Callable[[], Any], step: int) -> Pass:
    def run() -> None:
        with opener() as f:
            read = f.read
            while read(step):
                pass

    return run


def _random(opener: Callable[[], Any], offsets: list[int]) -> Pass:
    def run() -> None:
        with opener() as f:
            seek, read = f.seek, f.read
            for off in offsets:
                seek(off)
                read(RANDOM_READ)

    return run


def _fs_opener(fs: AbstractFileSystem, path: str) -> Callable[[], Any]:
    return lambda: open_file(fs, path)


def _local_opener(path: str) -> Callable[[], Any]:
    return lambda: open(path, "rb", buffering=0)


# -- measuring ---------------------------------------------------------------


def _origin_counters(fs: CacheFileSystem) -> tuple[int, int]:
    origin = fs.cache_stats()["origin"]
    return int(origin.get("requests", 0)), int(origin.get("bytes", 0))


def _measure(
    row: str,
    systems: dict[str, Pass],
    *,
    unit: str,
    per_call: float,
    reps: int,
    min_time: float,
    caches: dict[str, CacheFileSystem],
    detail: dict[str, Any],
) -> dict[str, Row]:
    """Time ``systems`` interleaved; return one uncompared row per system.

    ``per_call`` is the bytes one call moves (unit ``GB/s``) or the number of
    operations it makes (``us/read``).
    """
    print(
        f"hot_path: {row}: {len(systems)} systems x {reps} reps",
        file=sys.stderr,
        flush=True,
    )
    before = {name: _origin_counters(fs) for name, fs in caches.items()}
    seconds, loops = interleaved(systems, reps, min_time)
    rows: dict[str, Row] = {}
    for name, times in seconds.items():
        if unit == "GB/s":
            samples = [per_call / t / 1e9 for t in times]
        else:
            samples = [t / per_call * 1e6 for t in times]
        extra: dict[str, Any] = {**detail, "loops_per_sample": loops[name]}
        extra["seconds_per_call"] = median(times)
        fs = caches.get(name)
        if fs is not None:
            req0, bytes0 = before[name]
            req1, bytes1 = _origin_counters(fs)
            extra["origin_requests_during_timing"] = req1 - req0
            extra["origin_bytes_during_timing"] = bytes1 - bytes0
            extra["cache_stats"] = fs.cache_stats()
        rows[name] = Row(row, name, median(samples), unit, samples, detail=extra)
    return rows


def _options(fs: CacheFileSystem) -> dict[str, Any]:
    names = ("ram_limit", "disk_limit", "chunk_size", "readahead", "metadata_ttl")
    return {name: getattr(fs, name, None) for name in names}


def _check_warm(rows: dict[str, Row]) -> list[str]:
    """Return a warning per cachefs system that reached the origin while timed."""
    return [
        f"{r.system}: {r.detail['origin_bytes_during_timing']} origin bytes "
        "during timing (not warm)"
        for r in rows.values()
        if r.detail.get("origin_bytes_during_timing")
    ]


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Run the hot-path scenario; return its rows (see the module docstring).

    ``args`` may set ``size`` (bytes), ``reps``, ``reads`` and ``min_time``;
    unset ones take the :data:`QUICK` or :data:`DEFAULTS` values.
    """
    size = int(_param(args, "size", quick))
    reps = int(_param(args, "reps", quick))
    reads = int(_param(args, "reads", quick))
    min_time = float(_param(args, "min_time", quick))
    if size < RANDOM_READ:
        raise ValueError(f"size must be >= {RANDOM_READ} bytes, got {size}")
    if reps < 1 or reads < 1:
        raise ValueError("reps and reads must be >= 1")

    with tempfile.TemporaryDirectory(prefix="cachefs-bench-") as tmp_name:
        tmp = Path(tmp_name)
        origin_dir = tmp / "origin"
        origin_dir.mkdir()
        path = str(origin_dir / "data.bin")
        data = np.random.default_rng(20240601).integers(
            0, 256, size=size, dtype=np.uint8
        )
        data.tofile(path)
        del data

        budget = max(2 * size, 2**30)
        ram_fs = build_cachefs(
            tmp / "cachefs-ram",
            ram_limit=budget,
            disk_limit=0,
            chunk_size=CHUNK_SIZE,
        )
        disk_fs = build_cachefs(
            tmp / "cachefs-disk",
            ram_limit=0,
            disk_limit=max(2 * size, 8 * 2**30),
            chunk_size=CHUNK_SIZE,
        )
        simple = build_peer("simplecache", tmp / "peers")
        block = build_peer("blockcache", tmp / "peers")
        for fs in (ram_fs, disk_fs, simple, block):
            warm(fs, path)
        # A second pass maps and verifies every disk-tier chunk file once.
        warm(disk_fs, path)
        with open(path, "rb") as f:  # the origin itself, into the page cache
            while f.read(4 * MiB):
                pass

        common = {
            "file_bytes": size,
            "chunk_size": CHUNK_SIZE,
            "reps": reps,
            "min_sample_s": min_time,
            "tmp_filesystem": filesystem_of(tmp),
            "cachefs_ram": _options(ram_fs),
            "cachefs_disk": _options(disk_fs),
        }
        local = _local_opener(path)
        rows: list[Row] = []
        warnings: list[str] = []

        # rows 1 and 2: RAM tier vs one numpy copy -------------------------
        src = np.fromfile(path, dtype=np.uint8)
        mem = _measure(
            ROW_VIEW,
            {
                "numpy copyto": _numpy_copy(src, STEP),
                "cachefs read_view (RAM)": _cachefs_view(ram_fs, path, size, STEP),
                "cachefs readinto (RAM)": _readinto(_fs_opener(ram_fs, path), STEP),
            },
            unit="GB/s",
            per_call=size,
            reps=reps,
            min_time=min_time,
            caches={
                "cachefs read_view (RAM)": ram_fs,
                "cachefs readinto (RAM)": ram_fs,
            },
            detail={**common, "step_bytes": STEP},
        )
        del src
        warnings += _check_warm(mem)
        ref = mem["numpy copyto"]
        rows += [
            as_reference(ref, row_label=ROW_VIEW),
            compare(mem["cachefs read_view (RAM)"], ref, ">= 2.0x"),
            as_reference(ref, row_label=ROW_RAM_READINTO),
            compare(
                mem["cachefs readinto (RAM)"],
                ref,
                ">= 0.8x",
                row_label=ROW_RAM_READINTO,
            ),
        ]

        # row 3: sequential 1 MiB reads of a disk-resident file -------------
        seq = _measure(
            ROW_DISK_SEQ,
            {
                "local readinto": _readinto(local, STEP),
                "local read": _read(local, STEP),
                "simplecache readinto": _readinto(_fs_opener(simple, path), STEP),
                "simplecache read": _read(_fs_opener(simple, path), STEP),
                "cachefs readinto (disk)": _readinto(_fs_opener(disk_fs, path), STEP),
                "cachefs read (disk)": _read(_fs_opener(disk_fs, path), STEP),
                "cachefs read_view (disk)": _cachefs_view(disk_fs, path, size, STEP),
            },
            unit="GB/s",
            per_call=size,
            reps=reps,
            min_time=min_time,
            caches={
                "cachefs readinto (disk)": disk_fs,
                "cachefs read (disk)": disk_fs,
                "cachefs read_view (disk)": disk_fs,
            },
            detail={**common, "step_bytes": STEP},
        )
        warnings += _check_warm(seq)
        rows += [
            as_reference(seq["local readinto"]),
            as_reference(seq["local read"]),
            as_reference(seq["simplecache readinto"]),
            as_reference(seq["simplecache read"]),
            compare(seq["cachefs readinto (disk)"], seq["local readinto"], ">= 0.9x"),
            compare(
                seq["cachefs readinto (disk)"], seq["simplecache readinto"], ">= 1x"
            ),
            compare(seq["cachefs read (disk)"], seq["local read"], ">= 0.9x"),
            compare(seq["cachefs read (disk)"], seq["simplecache read"], ">= 1x"),
            compare(seq["cachefs read_view (disk)"], seq["local readinto"]),
        ]

        # row 4: 4 KiB random reads through one open file -------------------
        rng = random.Random(4096)
        offsets = [rng.randrange(0, size - RANDOM_READ + 1) for _ in range(reads)]
        rnd = _measure(
            ROW_RANDOM,
            {
                "local file (unbuffered)": _random(local, offsets),
                "simplecache": _random(_fs_opener(simple, path), offsets),
                "blockcache": _random(_fs_opener(block, path), offsets),
                "cachefs RAM": _random(_fs_opener(ram_fs, path), offsets),
                "cachefs disk": _random(_fs_opener(disk_fs, path), offsets),
            },
            unit="us/read",
            per_call=reads,
            reps=reps,
            min_time=min_time,
            caches={"cachefs RAM": ram_fs, "cachefs disk": disk_fs},
            detail={**common, "reads": reads, "read_bytes": RANDOM_READ},
        )
        warnings += _check_warm(rnd)
        block_ref = as_reference(rnd["blockcache"])
        block_ref.detail["note"] = BLOCKCACHE_NOTE
        rows += [
            as_reference(rnd["local file (unbuffered)"]),
            as_reference(rnd["simplecache"]),
            block_ref,
        ]
        for name in ("cachefs RAM", "cachefs disk"):
            rows += [
                compare(rnd[name], rnd["simplecache"], ">= 1x"),
                compare(rnd[name], rnd["blockcache"], ">= 1x"),
                compare(rnd[name], rnd["local file (unbuffered)"]),
            ]
        for row in rows:
            if warnings:
                row.detail["warnings"] = warnings
        for warning in warnings:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    return rows
