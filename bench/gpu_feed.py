"""Scenario "gpu_feed": host-to-device throughput of batches from the cache.

Raw shards of fixed-size records (say, decoded images) sit in a local
directory, read through cachefs with a warm RAM tier. Rows, in GB/s of
records delivered to the device:

1. torch's own pinned-memory copy bandwidth: one pinned batch-sized tensor
   copied with ``non_blocking=True`` again and again (the ceiling);
2. ``ShardDataset`` in this process: each batch of cached record views packed
   once into pinned memory (``cachefs.data.gpu.pack``) and copied with
   ``non_blocking=True``, two batches in flight;
3. the same through a ``DataLoader`` (2 workers, ``collate``, its
   ``pin_memory=True`` thread).

Runs on a CUDA machine; without one it prints a skip line and exits 0.
``--device cpu`` runs every path with plain CPU copies (a smoke test of the
code, not a measurement). Run it as ``python -m bench.gpu_feed``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.report import Result, Row, as_reference, compare, format_table, machine_info
from bench.report import median as _median
from cachefs import CacheFileSystem

__all__ = ["DEFAULTS", "QUICK", "main", "run"]

MiB = 2**20
DEFAULTS: dict[str, Any] = {
    "record_size": 256 * 1024,
    "batch": 64,
    "shards": 8,
    "shard_size": 64 * MiB,
    "reps": 5,
}
QUICK: dict[str, Any] = {
    "record_size": 64 * 1024,
    "batch": 32,
    "shards": 4,
    "shard_size": 8 * MiB,
    "reps": 3,
}
ROW = "H2D batches"


def _skip_reason(device: str) -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _write_shards(root: Path, shards: int, shard_size: int) -> list[str]:
    paths = []
    for i in range(shards):
        path = root / f"shard-{i:04d}.bin"
        with open(path, "wb") as f:
            f.write(os.urandom(shard_size))
        paths.append(str(path))
    return paths


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("nan")


def _pinned_copy(device: str, nbytes: int, batches: int) -> Callable[[], float]:
    import torch

    pin = device.startswith("cuda")
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    src.fill_(1)  # touch every page before timing
    dst = torch.zeros(nbytes, dtype=torch.uint8, device=device)

    def once() -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(batches):
            dst.copy_(src, non_blocking=True)
        _sync(device)
        return _gbps(nbytes * batches, time.perf_counter() - t)

    return once


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cache_in_process(ds: Any, device: str, batch: int) -> Callable[[], float]:
    from cachefs.data.gpu import pack, to_device

    pin = device.startswith("cuda")

    def once() -> float:
        import torch

        nbytes = 0
        inflight: list[Any] = []
        views: list[memoryview] = []
        _sync(device)
        t = time.perf_counter()
        for sample in ds:
            views.append(sample["data"])
            if len(views) == batch:
                host = pack(views, pin_memory=pin)
                assert isinstance(host, torch.Tensor)  # records: equal lengths
                out = to_device(host, device)
                nbytes += host.numel()
                views = []
                if pin:
                    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                    event.record()
                    # Keep the pinned source alive until its copy is done;
                    # wait for the older of two batches in flight.
                    inflight.append((event, host, out))
                    if len(inflight) > 2:
                        inflight.pop(0)[0].synchronize()
        _sync(device)
        return _gbps(nbytes, time.perf_counter() - t)

    return once


def _cache_dataloader(ds: Any, device: str, batch: int) -> Callable[[], float]:
    from torch.utils.data import DataLoader

    from cachefs.data.gpu import collate, to_device

    loader = DataLoader(
        ds,
        batch_size=batch,
        num_workers=2,
        persistent_workers=True,
        pin_memory=device.startswith("cuda"),
        collate_fn=collate,
    )

    def once() -> float:
        nbytes = 0
        _sync(device)
        t = time.perf_counter()
        for b in loader:
            to_device(b["data"], device)
            nbytes += b["data"].numel()
        _sync(device)
        return _gbps(nbytes, time.perf_counter() - t)

    return once


def run(quick: bool, args: argparse.Namespace) -> list[Row]:
    """Measure the rows (see the module docstring); CUDA or ``--device cpu``."""
    p = dict(QUICK if quick else DEFAULTS)
    for key in p:
        value = getattr(args, key, None)
        if value is not None:
            p[key] = value
    device: str = getattr(args, "device", None) or "cuda"
    rs, batch = p["record_size"], p["batch"]
    shard_size = max(rs, p["shard_size"] // rs * rs)
    with tempfile.TemporaryDirectory(prefix="cachefs-gpu-feed-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        paths = _write_shards(root / "data", p["shards"], shard_size)
        total = shard_size * p["shards"]
        fs = CacheFileSystem(
            target_protocol="file",
            cache_dir=str(root / "cache"),
            ram_limit=2 * total + 64 * MiB,
            chunk_size="4MiB",
            skip_instance_cache=True,
        )
        from cachefs.data.dataset import ShardDataset

        ds = ShardDataset(
            paths, fs, format="raw", record_size=rs, shuffle=False, prefetch=False
        )
        for _ in ds:  # warm the RAM tier (forked workers inherit it)
            pass
        fs.wait_idle()
        systems = {
            "torch pinned copy": _pinned_copy(device, rs * batch, len(ds) // batch),
            "cachefs pack + copy": _cache_in_process(ds, device, batch),
            "cachefs DataLoader": _cache_dataloader(ds, device, batch),
        }
        samples: dict[str, list[float]] = {name: [] for name in systems}
        for fn in systems.values():
            fn()  # warm-up: CUDA context, host allocator, workers
        for _ in range(p["reps"]):
            for name, fn in systems.items():
                samples[name].append(fn())
        del systems
        fs.close()
    detail = {"device": device, **p, "bytes_per_epoch": total}
    rows = [
        Row(ROW, name, _median(vals), "GB/s", samples=vals, detail=dict(detail))
        for name, vals in samples.items()
    ]
    ref = as_reference(rows[0])
    return [ref, *(compare(r, ref) for r in rows[1:])]


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_feed")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--record-size", dest="record_size", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--shards", type=int)
    parser.add_argument("--shard-size", dest="shard_size", type=int)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--out", type=Path, help="write gpu_feed.json here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario; print a skip line and return 0 without CUDA."""
    args = build_parser().parse_args(argv)
    reason = _skip_reason(args.device)
    if reason is not None:
        print(f"gpu_feed: skipped: {reason}")
        return 0
    t0 = time.perf_counter()
    rows = run(args.quick, args)
    print(format_table(rows, title="gpu_feed" + (" (quick)" if args.quick else "")))
    if args.out is not None:
        result = Result(
            scenario="gpu_feed",
            quick=args.quick,
            rows=rows,
            machine=machine_info(),
            params={k: str(v) for k, v in vars(args).items()},
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
            duration_s=round(time.perf_counter() - t0, 3),
        )
        print(f"results in {result.write(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
