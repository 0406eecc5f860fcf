"""Scenario "s3_cold": cold sequential shards from an S3-protocol origin.

Origin: moto's S3 server on loopback (``bench.s3_origin``, in a thread of
this process, so it shares the GIL with the clients), reached through s3fs.
Shards (full: 8 x 16 MiB; quick: 4 x 8 MiB) are read shard after shard in
1 MiB reads, each system starting cold (fresh cache storage, fresh instances):
plain s3fs, ``simplecache::s3``, cachefs with its readahead, and cachefs with
an explicit prefetch of the shard list. Reported: MB/s (median of the
repetitions, systems interleaved) and the ratio to plain s3fs. No targets:
the cold-shard targets are set on the HTTP origin (``cold_shards``); this
scenario shows the same comparison over the S3 protocol.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.report import Row, median
from cachefs.testing import make_shards

__all__ = ["run"]

MiB = 2**20
READ = MiB


def _drain(open_file: Callable[[str], Any], paths: list[str]) -> None:
    for path in paths:
        with open_file(path) as f:
            while f.read(READ):
                pass


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure cold throughput over moto's S3 server."""
    try:
        import fsspec
        import s3fs  # noqa: F401

        from bench.s3_origin import start_s3_server
        from cachefs import CacheFileSystem
    except ImportError as exc:
        print(f"s3_cold: skipped ({exc}); pip install 'moto[server]' s3fs")
        return []
    count, size = (4, 8 * MiB) if quick else (8, 16 * MiB)
    reps = 3
    server, s3 = start_s3_server()
    try:
        bucket = s3.new_bucket("bench")
        client = s3.client()
        shards = make_shards(count, size, seed=13, prefix="shards/")
        for key, data in shards.items():
            client.put_object(Bucket=bucket, Key=key, Body=data)
        paths = [f"{bucket}/{key}" for key in sorted(shards)]
        total = count * size

        def plain() -> None:
            fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3.target_options)
            _drain(lambda p: fs.open(p, "rb"), paths)

        def simplecache() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                fs = fsspec.filesystem(
                    "simplecache",
                    target_protocol="s3",
                    target_options={**s3.target_options, "skip_instance_cache": True},
                    cache_storage=tmp,
                    skip_instance_cache=True,
                )
                _drain(lambda p: fs.open(p, "rb"), paths)

        def cachefs(prefetch: bool) -> Callable[[], None]:
            def go() -> None:
                with tempfile.TemporaryDirectory() as tmp:
                    fs = CacheFileSystem(
                        target_protocol="s3",
                        target_options={
                            **s3.target_options,
                            "skip_instance_cache": True,
                        },
                        cache_dir=tmp,
                        skip_instance_cache=True,
                    )
                    if prefetch:
                        fs.prefetch(paths)
                    _drain(lambda p: fs.open(p, "rb"), paths)
                    fs.close()
                    fs.wait_idle()

            return go

        systems: dict[str, Callable[[], None]] = {
            "s3fs (plain)": plain,
            "simplecache::s3": simplecache,
            "cachefs readahead": cachefs(False),
            "cachefs prefetch": cachefs(True),
        }
        samples: dict[str, list[float]] = {name: [] for name in systems}
        for rep in range(reps):
            names = list(systems)
            names = names[rep % len(names) :] + names[: rep % len(names)]
            for name in names:
                began = time.perf_counter()
                systems[name]()
                samples[name].append(total / (time.perf_counter() - began) / 1e6)
    finally:
        server.stop()
    base = median(samples["s3fs (plain)"])
    return [
        Row(
            row=f"cold seq 1MiB, {count} x {size >> 20} MiB over S3 (moto)",
            system=name,
            value=median(values),
            unit="MB/s",
            samples=values,
            reference="s3fs (plain)",
            ratio=median(values) / base,
            detail={"origin": "moto S3 server on loopback, in-process thread"},
        )
        for name, values in samples.items()
    ]
