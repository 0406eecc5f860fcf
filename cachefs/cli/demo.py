"""Stream a small training dataset through cachefs, epoch by epoch, beside fsspec.

The demo needs nothing beyond an install. It writes a small WebDataset-style
dataset (tar shards of samples of a few KiB) into memory, serves it from a
local HTTP origin that waits ``--latency`` seconds on every request, and
reads it for ``--epochs`` epochs through a :class:`torch.utils.data.
DataLoader` (``--workers`` workers; the plain iterable when torch is not
installed), once through cachefs and once through plain fsspec http on the
same origin. Each epoch prints a row: samples per second, the share of the
bytes read that did not come from the origin, origin MiB, and the seconds the
loop spent waiting for data.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import random
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from cachefs.chunks import parse_size
from cachefs.cli.demo_origin import DemoOrigin
from cachefs.data.dataset import ShardDataset
from cachefs.data.shards import Sample
from cachefs.filesystem import CacheFileSystem

__all__ = [
    "DemoOptions",
    "EpochRow",
    "add_arguments",
    "main",
    "make_dataset",
    "run_cli",
    "run_demo",
]

MiB = 2**20


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings (see :func:`add_arguments` for each one)."""

    shards: int = 16
    shard_size: int = 8 * MiB
    sample_size: int = 4096
    epochs: int = 3
    workers: int = 2
    batch_size: int = 64
    latency: float = 0.02
    step: float = 0.0
    chunk_size: int = MiB
    cache_dir: str | None = None
    seed: int = 0
    baseline: bool = True


_QUICK = {"shards": 8, "shard_size": 2 * MiB, "latency": 0.01}


@dataclass(frozen=True)
class EpochRow:
    """One epoch of one system, as measured."""

    system: str
    epoch: int
    samples: int
    seconds: float
    wait: float
    origin_bytes: int
    read_bytes: int

    @property
    def rate(self) -> float:
        """Samples per second."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def hit_rate(self) -> float:
        """Share of the bytes read that the origin did not have to send."""
        if not self.read_bytes:
            return 0.0
        return min(max(1.0 - self.origin_bytes / self.read_bytes, 0.0), 1.0)


def _size(text: str) -> int:
    try:
        return parse_size(text, "size", allow_zero=False)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (for ``cachefs demo``)."""
    d = DemoOptions()
    parser.add_argument(
        "--quick", action="store_true", help="a smaller dataset (8 x 2 MiB)"
    )
    parser.add_argument(
        "--shards", type=_count, default=None, help=f"number of shards ({d.shards})"
    )
    parser.add_argument(
        "--shard-size", type=_size, default=None, help="bytes per shard (8MiB)"
    )
    parser.add_argument(
        "--sample-size", type=_size, default=None, help="mean bytes per sample (4KiB)"
    )
    parser.add_argument(
        "--epochs", type=_count, default=None, help=f"epochs to read ({d.epochs})"
    )
    parser.add_argument(
        "--workers", type=_count, default=None, help=f"DataLoader workers ({d.workers})"
    )
    parser.add_argument(
        "--batch-size",
        type=_count,
        default=None,
        help=f"samples per batch ({d.batch_size})",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=None,
        help=f"seconds the origin waits per request ({d.latency})",
    )
    parser.add_argument(
        "--step",
        type=float,
        default=None,
        help="seconds of simulated training work per batch (0)",
    )
    parser.add_argument(
        "--chunk-size", type=_size, default=None, help="cachefs chunk size (1MiB)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="keep the cache here (default: a temp dir)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the data and the order (0)"
    )
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        default=True,
        help="skip the plain fsspec run",
    )


def _options(args: argparse.Namespace) -> DemoOptions:
    values: dict[str, Any] = dict(_QUICK) if getattr(args, "quick", False) else {}
    for name in DemoOptions.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    opts = DemoOptions(**values)
    for name in ("shards", "epochs", "batch_size"):
        if getattr(opts, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if opts.latency < 0 or opts.step < 0:
        raise ValueError("--latency and --step must be >= 0")
    return opts


def make_dataset(
    shards: int, shard_size: int, sample_size: int, seed: int = 0
) -> tuple[dict[str, bytes], list[int]]:
    """Write ``shards`` tar shards of about ``shard_size`` bytes each.

    Each sample is ``<key>.bin`` (random bytes, 0.5 to 1.5 times
    ``sample_size``) and ``<key>.cls`` (a label as ASCII digits).

    Returns
    -------
    files, counts
        Shard bytes by path, and the samples in each shard.
    """
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    counts: list[int] = []
    for s in range(shards):
        buf = io.BytesIO()
        n = 0
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            while buf.tell() < shard_size:
                size = rng.randint(sample_size // 2, sample_size * 3 // 2)
                fields = (
                    ("bin", rng.randbytes(size)),
                    ("cls", str(rng.randrange(1000)).encode()),
                )
                for ext, data in fields:
                    info = tarfile.TarInfo(f"{s:04d}/{n:06d}.{ext}")
                    info.size = len(data)
                    info.mtime = 1_700_000_000
                    tf.addfile(info, io.BytesIO(data))
                n += 1
        files[f"shards/shard-{s:04d}.tar"] = buf.getvalue()
        counts.append(n)
    return files, counts


def decode_label(sample: Sample) -> Sample:
    """Turn a demo sample's ``cls`` field into an int (runs in the workers)."""
    sample["cls"] = int(bytes(sample["cls"]))
    return sample


def _batches(samples: Any, size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _loader(ds: ShardDataset, opts: DemoOptions) -> Any:
    try:
        import torch
        from torch.utils.data import DataLoader

        from cachefs.data.gpu import collate
    except ImportError:
        return None
    return DataLoader(
        ds,
        batch_size=opts.batch_size,
        num_workers=opts.workers,
        persistent_workers=opts.workers > 0,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate,
    )


def _run(
    system: str,
    ds: ShardDataset,
    opts: DemoOptions,
    origin: DemoOrigin,
    read_bytes: int,
) -> list[EpochRow]:
    loader = _loader(ds, opts)
    device = None
    if loader is not None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    rows = []
    for epoch in range(opts.epochs):
        ds.set_epoch(epoch)
        sent = origin.bytes_sent
        samples, wait = 0, 0.0
        began = time.perf_counter()
        batches = iter(loader) if loader is not None else _batches(ds, opts.batch_size)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t
            if batch is None:
                break
            if isinstance(batch, dict):
                samples += len(batch["__key__"])
                if device is not None:
                    from cachefs.data.gpu import to_device

                    to_device(batch, device)
            else:
                samples += len(batch)
            if opts.step:
                time.sleep(opts.step)  # the training step the data feeds
        rows.append(
            EpochRow(
                system,
                epoch,
                samples,
                time.perf_counter() - began,
                wait,
                origin.bytes_sent - sent,
                read_bytes,
            )
        )
    del loader  # stops persistent workers
    gc.collect()
    return rows


def format_table(rows: Sequence[EpochRow]) -> str:
    """Format measured epochs as a text table."""
    header = (
        f"{'system':<12} {'epoch':>5} {'samples/s':>10} {'hit rate':>8} "
        f"{'origin MiB':>10} {'wait s':>7} {'epoch s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.system:<12} {r.epoch:>5} {r.rate:>10,.0f} {r.hit_rate:>8.0%} "
            f"{r.origin_bytes / MiB:>10.1f} {r.wait:>7.2f} {r.seconds:>7.2f}"
        )
    return "\n".join(lines)


def run_cli(args: argparse.Namespace | None = None) -> int:
    """Run the demo with parsed arguments (see :func:`add_arguments`)."""
    if args is None:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args([])
    try:
        opts = _options(args)
    except ValueError as exc:
        print(f"cachefs demo: {exc}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    rows = run_demo(opts, announce=print)
    print(format_table(rows))
    print(
        "hit rate: bytes read that the origin did not send; wait s: time the "
        f"loop waited for batches. Total {time.perf_counter() - began:.1f} s."
    )
    return 0


def run_demo(
    opts: DemoOptions, announce: Callable[[str], object] | None = None
) -> list[EpochRow]:
    """Generate the dataset, serve it, and measure every epoch of each system."""
    files, counts = make_dataset(
        opts.shards, opts.shard_size, opts.sample_size, opts.seed
    )
    total_bytes = sum(len(b) for b in files.values())
    with contextlib.ExitStack() as stack:
        cache_dir = opts.cache_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="cachefs-demo-")
        )
        origin = stack.enter_context(DemoOrigin(files, opts.latency))
        urls = [origin.url_for(path) for path in sorted(files)]
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=cache_dir,
            chunk_size=opts.chunk_size,
            skip_instance_cache=True,
        )
        mode = (
            f"a DataLoader with {opts.workers} workers"
            if _loader_available()
            else "the plain iterable (torch is not installed)"
        )
        if announce is not None:
            announce(
                f"cachefs demo: {opts.shards} tar shards, {sum(counts):,} samples, "
                f"{total_bytes / MiB:.1f} MiB, served over HTTP with "
                f"{opts.latency * 1000:g} ms per request; {opts.epochs} epochs "
                f"through {mode}, batch {opts.batch_size}; cache in {cache_dir}"
            )
        common: dict[str, Any] = {
            "sample_counts": counts,
            "seed": opts.seed,
            "decode": decode_label,
        }
        rows = _run(
            "cachefs",
            ShardDataset(urls, fs, **common),
            opts,
            origin,
            total_bytes,
        )
        fs.wait_idle()
        if opts.baseline:
            plain = fsspec.filesystem("http", skip_instance_cache=True)
            rows += _run(
                "fsspec http",
                ShardDataset(urls, plain, **common),
                opts,
                origin,
                total_bytes,
            )
        fs.close()
    return rows


def _loader_available() -> bool:
    try:
        import torch.utils.data  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cachefs demo`` from command-line arguments."""
    parser = argparse.ArgumentParser(
        prog="cachefs demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
