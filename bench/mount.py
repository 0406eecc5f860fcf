"""Scenario "mount" (issue 22): reads through the FUSE mount against local files.

The same bytes read three ways: local files (their pages in the page cache:
the bar a mount is held to), cachefs in-process over a warm disk tier, and
the mount (``cachefs.mount``) over that warm disk tier with no RAM tier, so
a first read through the mount is a disk-tier hit every time.

Rows: sequential 1 MiB reads, first read (the mount's page cache dropped
with ``POSIX_FADV_DONTNEED``) and re-read (kept across opens:
``keep_cache``); 4 KiB random reads at first touch. Targets: re-read >= 0.8x
local; first read >= 0.3x local; 4 KiB first touch <= 15x local latency
(ratio >= 0.067x). The daemon's CPU seconds per GiB of first reads are in
the rows' details.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import Row, as_reference, compare, median
from cachefs import CacheFileSystem
from cachefs.mount import mount

__all__ = ["run"]

MiB = 2**20
GiB = 2**30
BLOCK = MiB
SMALL = 4096


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _seq(paths: list[Path]) -> float:
    """Read ``paths`` in 1 MiB reads; return seconds."""
    buf = bytearray(BLOCK)
    began = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - began


def _random(path: Path, offsets: list[int]) -> float:
    """Do 4 KiB preads at ``offsets``; return seconds per read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        began = time.perf_counter()
        for off in offsets:
            os.pread(fd, SMALL, off)
        return (time.perf_counter() - began) / len(offsets)
    finally:
        os.close(fd)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Run the scenario; see the module docstring."""
    n_files, size = (2, 32 * MiB) if quick else (4, 128 * MiB)
    reps = 3 if quick else 5
    total = n_files * size
    with tempfile.TemporaryDirectory(prefix="cachefs-bench-mount-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        rng = random.Random(0)
        names = [f"file-{i}.bin" for i in range(n_files)]
        for name in names:
            (data / name).write_bytes(rng.randbytes(size))
        cache = str(root / "cache")
        options = {"cache_dir": cache, "chunk_size": "4MiB", "disk_limit": "8GiB"}
        # Warm the disk tier (in-process), as a job on the node would.
        fs = CacheFileSystem(
            target_protocol="file", skip_instance_cache=True, **options
        )
        for name in names:
            fs.cat_file(str(data / name))
        fs.wait_idle(timeout=120)
        local = [data / n for n in names]
        offsets = [rng.randrange(0, size - SMALL) // SMALL * SMALL for _ in range(2000)]
        mp = root / "mnt"
        mp.mkdir()
        handle = mount(str(data), mp, ram_limit=0, **options)
        try:
            mounted = [mp / n for n in names]
            samples: dict[str, list[float]] = {}

            def add(name: str, value: float) -> None:
                samples.setdefault(name, []).append(value)

            def inproc_seq() -> float:
                buf = bytearray(BLOCK)
                began = time.perf_counter()
                for path in local:
                    with fs.open(str(path), "rb") as f:
                        while f.readinto(buf):
                            pass
                return time.perf_counter() - began

            def inproc_random() -> float:
                with fs.open(str(local[0]), "rb") as f:
                    began = time.perf_counter()
                    for off in offsets:
                        f.seek(off)
                        f.read(SMALL)
                    return (time.perf_counter() - began) / len(offsets)

            cpu = 0.0
            for _ in range(reps):
                _seq(local)  # local pages in the page cache: the bar
                add("local seq", total / _seq(local) / 1e9)
                add("cachefs in-process seq", total / inproc_seq() / 1e9)
                for path in mounted:
                    _drop(path)
                before = _cpu_seconds(handle.pid)
                add("mount seq first", total / _seq(mounted) / 1e9)
                cpu += _cpu_seconds(handle.pid) - before
                add("mount seq re-read", total / _seq(mounted) / 1e9)
                add("local 4k", _random(local[0], offsets) * 1e6)
                add("cachefs in-process 4k", inproc_random() * 1e6)
                _drop(mounted[0])
                add("mount 4k first", _random(mounted[0], offsets) * 1e6)
            detail = {
                "bytes": total,
                "files": n_files,
                "daemon_cpu_s_per_gib_first_read": cpu / (reps * total / GiB),
                "read_ahead": handle.read_ahead,
                "reps": reps,
            }
        finally:
            handle.unmount()
            fs.close()

    def row(label: str, name: str, unit: str) -> Row:
        s = samples[name]
        return Row(label, name, median(s), unit, s, detail=detail)

    seq_ref = as_reference(row("seq 1 MiB", "local seq", "GB/s"))
    rand_ref = as_reference(row("4 KiB random", "local 4k", "us/read"))
    cmp: Callable[..., Row] = compare
    return [
        seq_ref,
        cmp(row("seq 1 MiB", "cachefs in-process seq", "GB/s"), seq_ref),
        cmp(row("seq 1 MiB", "mount seq re-read", "GB/s"), seq_ref, ">= 0.8x"),
        cmp(row("seq 1 MiB", "mount seq first", "GB/s"), seq_ref, ">= 0.3x"),
        rand_ref,
        cmp(row("4 KiB random", "cachefs in-process 4k", "us/read"), rand_ref),
        cmp(row("4 KiB random", "mount 4k first", "us/read"), rand_ref, ">= 0.067x"),
    ]
