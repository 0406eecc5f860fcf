"""Child processes of the user-path scenarios (:mod:`bench.user_paths`).

Two entry points, each a fresh Python process:

``python -m bench.user_passes origin SPEC``
    Serve every file under ``SPEC["root"]`` from memory with
    :class:`cachefs.testing.HTTPOrigin` (``SPEC["latency"]`` seconds before every
    response), print the port, then answer one JSON line per command read
    from stdin (``stats``, ``reset``) until stdin closes. The origin never
    shares a process, a GIL or an event loop with what is measured.
``python -m bench.user_passes pass SPEC``
    Make one timed pass of one system (``SPEC["kind"]`` and
    ``SPEC["system"]``) and print one JSON line: ``seconds`` (timed inside
    this process, after its imports), ``bytes`` and kind-specific facts.

Imports (fsspec, aiohttp, cachefs, torch) happen before the clock starts for
every system alike: they are the interpreter's cost, not a cache's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["main"]

MiB = 2**20
STEP = MiB
SMALL_READ = 10 * 1024
RANDOM_READ = 4096
CEILING_RANGE = 4 * MiB
CEILING_CONNECTIONS = 16
WORKERS = 2
BATCH = 32


# -- the origin --------------------------------------------------------------


def serve_origin(spec: dict[str, Any]) -> None:
    """Serve ``spec["root"]`` from memory until stdin closes (see module doc)."""
    from cachefs.testing import HTTPOrigin

    # A client that hangs up mid-body (fsspec's http files do on close) makes
    # aiohttp log a traceback: noise here, not a fault.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    root = Path(spec["root"])
    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    with HTTPOrigin(files, latency=float(spec["latency"])) as origin:
        del files
        print(origin.port, flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                origin.reset_stats()
                answer: dict[str, Any] = {"ok": True}
            elif command == "stats":
                s = origin.stats
                answer = {
                    "requests": s.requests,
                    "get_requests": s.get_requests,
                    "head_requests": s.head_requests,
                    "bytes_sent": s.bytes_sent,
                    "max_concurrent": s.max_concurrent,
                    "bytes_by_path": dict(s.bytes_by_path),
                }
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)


# -- helpers -----------------------------------------------------------------


def _open(system: str, url: str, cache_dir: str | None, **options: Any) -> Any:
    """``fsspec.open`` a URL the way a user chains a cache in front of it."""
    import fsspec

    if system == "plain":
        return fsspec.open(url, "rb")
    if system == "cachefs":
        return fsspec.open(
            f"cachefs::{url}", "rb", cachefs={"cache_dir": cache_dir, **options}
        )
    return fsspec.open(
        f"{system}::{url}", "rb", **{system: {"cache_storage": cache_dir}}
    )


def _drain(of: Any) -> None:
    """Let cachefs finish its disk writes (a later pass reuses the cache)."""
    wait_idle = getattr(of.fs, "wait_idle", None)
    if wait_idle is not None:
        wait_idle(120)


def _read_all(f: Any, step: int) -> int:
    total = 0
    while True:
        data = f.read(step)
        if not data:
            return total
        total += len(data)


# -- passes ------------------------------------------------------------------


def _sequential(spec: dict[str, Any]) -> dict[str, Any]:
    """Open every URL with ``fsspec.open`` and read it in ``step`` reads."""
    system, cache_dir = spec["system"], spec.get("cache_dir")
    options = spec.get("options", {})
    step = int(spec.get("step", STEP))
    c0, t0 = time.process_time(), time.perf_counter()
    total = 0
    last = None
    for url in spec["urls"]:
        last = _open(system, url, cache_dir, **options)
        with last as f:
            total += _read_all(f, step)
    t1 = time.perf_counter()
    out = {"seconds": t1 - t0, "bytes": total, "cpu_s": time.process_time() - c0}
    if spec.get("drain") and last is not None:
        _drain(last)
    return out


def _ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """Concurrent ranged GETs (aiohttp) covering every file once."""
    import aiohttp

    ranges = [
        (url, start, min(start + CEILING_RANGE, size))
        for url, size in zip(spec["urls"], spec["sizes"], strict=True)
        for start in range(0, size, CEILING_RANGE)
    ]

    async def fetch_all() -> int:
        limit = asyncio.Semaphore(CEILING_CONNECTIONS)
        connector = aiohttp.TCPConnector(limit=CEILING_CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get(url: str, start: int, stop: int) -> int:
                headers = {"Range": f"bytes={start}-{stop - 1}"}
                async with limit, session.get(url, headers=headers) as resp:
                    resp.raise_for_status()
                    return len(await resp.read())

            sizes = await asyncio.gather(*(get(*r) for r in ranges))
        return sum(sizes)

    c0, t0 = time.process_time(), time.perf_counter()
    total = asyncio.run(fetch_all())
    t1 = time.perf_counter()
    return {
        "seconds": t1 - t0,
        "bytes": total,
        "cpu_s": time.process_time() - c0,
        "requests": len(ranges),
    }


def _fresh_read(spec: dict[str, Any]) -> dict[str, Any]:
    """``readinto`` a 1 MiB buffer over every file (cachefs URL or local path)."""
    buf = bytearray(STEP)
    system = spec["system"]
    options = spec.get("options", {})
    t0 = time.perf_counter()
    total = 0
    for name in spec["files"]:
        if system == "local mmap":
            total += _mmap_copy(name, buf)
            continue
        if system == "local":
            f: Any = open(name, "rb", buffering=0)  # noqa: SIM115
        else:
            f = _open("cachefs", name, spec["cache_dir"], **options).open()
        with f:
            readinto = f.readinto
            while n := readinto(buf):
                total += n
    return {"seconds": time.perf_counter() - t0, "bytes": total}


def _mmap_copy(name: str, buf: bytearray) -> int:
    """Copy a local file through a read-only map into ``buf``, 1 MiB at a time."""
    import mmap

    import numpy as np

    dst = np.frombuffer(buf, dtype=np.uint8)
    with open(name, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        src = np.frombuffer(m, dtype=np.uint8)
        size = src.nbytes
        for off in range(0, size, len(buf)):
            n = min(len(buf), size - off)
            np.copyto(dst[:n], src[off : off + n])
        del src
    return size


def _random(spec: dict[str, Any]) -> dict[str, Any]:
    """Open one file and make the first ``reads`` 4 KiB reads at random offsets."""
    system, url, size = spec["system"], spec["url"], int(spec["size"])
    rng = random.Random(spec.get("seed", 0))
    offsets = [rng.randrange(0, size - RANDOM_READ) for _ in range(spec["reads"])]
    options = spec.get("options", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # fsspec's MMapCache
        t0 = time.perf_counter()
        of = _open(system, url, spec["cache_dir"], **options)
        total = 0
        with of as f:
            first = time.perf_counter()
            for off in offsets:
                f.seek(off)
                total += len(f.read(RANDOM_READ))
        t1 = time.perf_counter()
    return {"seconds": t1 - t0, "bytes": total, "open_s": first - t0}


def _small_reads(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill the tiers with other files, then read the target in 10 KiB reads."""
    options = spec["options"]
    for url in spec["fill"]:
        of = _open("cachefs", url, spec["cache_dir"], **options)
        with of as f:
            _read_all(f, STEP)
        _drain(of)
    of = _open("cachefs", spec["url"], spec["cache_dir"], **options)
    t0 = time.perf_counter()
    with of as f:
        total = _read_all(f, SMALL_READ)
    seconds = time.perf_counter() - t0
    stats = of.fs.cache_stats() if hasattr(of.fs, "cache_stats") else {}
    return {
        "seconds": seconds,
        "bytes": total,
        "router": stats.get("router", {}),
    }


def _sample(sample: dict[str, Any]) -> tuple[int, int]:
    return int(sample["__key__"]), len(sample["bin"])


def _collate(batch: list[tuple[int, int]]) -> tuple[int, int]:
    return len(batch), sum(n for _, n in batch)


def _loader(spec: dict[str, Any]) -> dict[str, Any]:
    """One epoch of a torch DataLoader (2 workers, batch 32) over tar shards."""
    import torch.utils.data as tud

    system = spec["system"]
    if system == "cachefs":
        from cachefs import CacheFileSystem
        from cachefs.data.dataset import ShardDataset

        t0 = time.perf_counter()
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=spec["cache_dir"],
            **spec.get("options", {}),
        )
        ds = ShardDataset(
            spec["urls"], fs, decode=_sample, sample_counts=spec["counts"], seed=0
        )
        ds.set_epoch(spec["epoch"])
        loader = tud.DataLoader(
            ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
        )
    else:
        import webdataset as wds

        t0 = time.perf_counter()
        urls = list(spec["urls"])
        random.Random(spec["epoch"]).shuffle(urls)
        wds_ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(
            _sample
        )
        loader = tud.DataLoader(
            wds_ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
        )
    samples = total = 0
    for n, nbytes in loader:
        samples += n
        total += nbytes
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": total, "samples": samples}


PASSES = {
    "sequential": _sequential,
    "ceiling": _ceiling,
    "fresh_read": _fresh_read,
    "random": _random,
    "small_reads": _small_reads,
    "loader": _loader,
}


def _preload() -> None:
    """Import what any pass needs before a clock starts."""
    import aiohttp  # noqa: F401
    import fsspec
    import fsspec.implementations.cached
    import fsspec.implementations.http

    import cachefs  # noqa: F401

    fsspec.get_filesystem_class("cachefs")


def main(argv: list[str]) -> int:
    """Entry point of the child processes (see the module docstring)."""
    if len(argv) == 2 and argv[0] == "origin":
        serve_origin(json.loads(argv[1]))
        return 0
    if len(argv) == 2 and argv[0] == "pass":
        spec = json.loads(argv[1])
        _preload()
        if spec["kind"] == "loader":
            import torch.utils.data  # noqa: F401
        result = PASSES[spec["kind"]](spec)
        print(json.dumps(result), flush=True)
        return 0
    print("usage: python -m bench.user_passes origin|pass SPEC_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
