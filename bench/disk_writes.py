"""disk_writes: what a disk-tier write costs, and what the alternatives cost.

Cold reads spend much of their CPU storing chunks: on 2 cores, a writer thread
competes with the fetches. This scenario measures, per 4 MiB chunk, the CPU
time of the writing thread and the wall time, for:

- ``DiskTier.put``: what cachefs does with buffered writes (record header
  and block checks, a buffered ``writev`` into ``tmp/``, ``link`` into
  place, the usage counter; ``direct_writes=False``);
- ``DiskTier.put, O_DIRECT``: the same with ``direct_writes=True``, the
  chunk in page-aligned memory as a landing buffer holds it (format 6
  records, one ``O_DIRECT`` write each);
- ``writev``: a plain buffered write of the same bytes (the floor of the
  buffered path);
- ``O_DIRECT``: the bytes copied into an aligned buffer and written past the
  page cache;
- ``writev + DONTNEED``: a buffered write whose pages are then dropped;
- batch size: the same bytes written in 1 MiB pieces as they arrive, and
  four chunks in one ``writev`` (per-chunk cost of bigger batches).

and (:mod:`bench.landing`) where a chunk received from a socket should
land on its way to its file: a reused buffer then a buffered or ``O_DIRECT``
write, or the file's own ``MAP_SHARED`` mapping;

and, for each way of writing, the cost of reading the chunks back with ``mmap`` and a
checksum once a repeat's chunks are written and synced (what the next epoch
pays): writes that skip or drop the page cache make that read go to the
device. The details give the fill's CPU in s/GiB, its MB/s until the bytes
are on the device (``os.sync`` after the repeat: buffered writes are not
done when ``write`` returns), and the read-back's MB/s. Set ``BENCH_TMP`` to
a directory on a real disk (``/tmp`` may be tmpfs, which refuses
``O_DIRECT``). Rows report CPU ms per chunk;
ratios are against ``DiskTier.put`` (> 1: cheaper than cachefs). No target:
this scenario is the measurement behind the choice in docs/operations.md.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import crc32c

from bench.landing import run_landing
from bench.report import Row
from cachefs.chunks import ChunkKey, FileVersion
from cachefs.policy import make_policy
from cachefs.tiers.disk import DiskTier

CHUNK = 4 << 20
PIECE = 1 << 20
BATCH = 4


def _read_back(path: str) -> tuple[float, float]:
    """CPU and wall seconds to map ``path`` and checksum it (the next hit's cost)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
            crc32c.crc32c(mapped)
    finally:
        os.close(fd)
    return time.thread_time() - c0, time.perf_counter() - t0


def _writers(root: Path, data: bytes) -> dict[str, Callable[[int], str]]:
    tier = DiskTier(root / "tier", 1 << 40, make_policy("lru"), direct_writes=False)
    bypass = DiskTier(
        root / "tier-direct", 1 << 40, make_policy("lru"), direct_writes=True
    )
    version = FileVersion("http", "bench/disk_writes", CHUNK * 1_000_000, "t")
    aligned = mmap.mmap(-1, CHUNK)
    aligned[:] = data
    landed = mmap.mmap(-1, CHUNK)
    landed[:] = data
    plain = root / "plain"
    plain.mkdir()

    def put(i: int) -> str:
        key = ChunkKey(version, CHUNK, i)
        tier.put(key, memoryview(data))
        return str(tier.path_for(key.digest))

    def put_direct(i: int) -> str:
        key = ChunkKey(version, CHUNK, i)
        bypass.put(key, memoryview(landed))  # page-aligned, as a landing buffer
        return str(bypass.path_for(key.digest))

    def buffered(i: int, drop: bool = False) -> str:
        path = str(plain / f"b{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.writev(fd, [data])
            if drop:
                os.posix_fadvise(fd, 0, CHUNK, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return path

    def direct(i: int) -> str:
        path = str(plain / f"d{i}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT
        fd = os.open(path, flags, 0o600)
        try:
            aligned[:] = data  # the copy a real writer would make
            os.write(fd, aligned)
        finally:
            os.close(fd)
        return path

    def pieces(i: int) -> str:
        # As a writer that stores each 1 MiB piece the moment it arrives.
        path = str(plain / f"p{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            for off in range(0, CHUNK, PIECE):
                os.write(fd, view[off : off + PIECE])
        finally:
            os.close(fd)
        return path

    def batched(i: int) -> str:
        # BATCH chunks in one writev into one file, every BATCH-th call: the
        # per-chunk cost of writing bigger records less often.
        if i % BATCH != BATCH - 1:
            return ""
        path = str(plain / f"g{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.writev(fd, [data] * BATCH)
        finally:
            os.close(fd)
        return path

    return {
        "DiskTier.put": put,
        "DiskTier.put, O_DIRECT": put_direct,
        "writev": buffered,
        f"write, {PIECE >> 20} MiB pieces": pieces,
        f"writev, {BATCH} chunks per call": batched,
        "O_DIRECT": direct,
        "writev + DONTNEED": lambda i: buffered(i, drop=True),
    }


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure write and read-back CPU per chunk for each way of writing."""
    chunks = 8 if quick else 32
    repeats = 3 if quick else 5
    data = os.urandom(CHUNK)
    write_ms: dict[str, list[float]] = {}
    read_ms: dict[str, list[float]] = {}
    wall_ms: dict[str, list[float]] = {}
    fill_mbs: dict[str, list[float]] = {}
    read_mbs: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    paths: list[str] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        writers = _writers(Path(tmp), data)
        n = 0
        for _ in range(repeats):
            for name, write in writers.items():  # interleaved
                if name in failed:
                    continue
                cpu = wall = back = back_wall = 0.0
                try:
                    os.sync()  # start clean: no writeback of others billed
                    t_fill = time.perf_counter()
                    for _ in range(chunks):
                        c0, t0 = time.thread_time(), time.perf_counter()
                        path = write(n)
                        cpu += time.thread_time() - c0
                        wall += time.perf_counter() - t0
                        n += 1
                        if path:
                            paths.append(path)
                    os.sync()  # buffered bytes are on the device only now
                    fill_s = time.perf_counter() - t_fill
                    for path in paths:  # the next epoch reads them back
                        c_back, w_back = _read_back(path)
                        back += c_back
                        back_wall += w_back
                    paths.clear()
                except OSError as exc:  # e.g. no O_DIRECT on this filesystem
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    paths.clear()
                    continue
                write_ms.setdefault(name, []).append(1e3 * cpu / chunks)
                wall_ms.setdefault(name, []).append(1e3 * wall / chunks)
                read_ms.setdefault(name, []).append(1e3 * back / chunks)
                fill_mbs.setdefault(name, []).append(chunks * CHUNK / fill_s / 1e6)
                read_mbs.setdefault(name, []).append(
                    chunks * CHUNK / back_wall / 1e6 if back_wall else float("nan")
                )
    rows = []
    base = statistics.median(write_ms["DiskTier.put"])
    for name in write_ms:
        value = statistics.median(write_ms[name])
        rows.append(
            Row(
                row=f"write one {CHUNK >> 20} MiB chunk (writer thread CPU)",
                system=name,
                value=value,
                unit="ms/chunk",
                samples=write_ms[name],
                reference="DiskTier.put",
                ratio=base / value if value else None,
                detail={
                    "wall_ms_per_chunk": statistics.median(wall_ms[name]),
                    "fill_cpu_s_per_gib": statistics.median(write_ms[name])
                    * (2**30 / CHUNK)
                    / 1e3,
                    "fill_mb_s_synced": statistics.median(fill_mbs[name]),
                    "read_back_cpu_ms_per_chunk": statistics.median(read_ms[name]),
                    "read_back_mb_s": statistics.median(read_mbs[name]),
                    "chunks_per_repeat": chunks,
                    "repeats": repeats,
                },
            )
        )
    for name, why in failed.items():
        rows.append(
            Row(
                row=f"write one {CHUNK >> 20} MiB chunk (writer thread CPU)",
                system=name,
                value=float("nan"),
                unit="ms/chunk",
                detail={"unavailable": why},
            )
        )
    rows += run_landing(quick)
    return rows
