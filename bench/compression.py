"""Scenario "compression": disk-tier bytes and warm reads with numcodecs codecs.

Three kinds of shards, written as local files (the target is ``file``):

- ``tokens u16``: token ids of a language-model corpus, drawn from a Zipf
  distribution (exponent 1) over a 50,257-id vocabulary, the most frequent
  ids the smallest, stored as uint16;
- ``tokens u32``: the same ids stored as uint32;
- ``random``: uniformly random bytes, like JPEG images or other already
  compressed payloads.

For each kind and each codec (none, ``lz4``, ``zstd`` level 1) a cache with
``ram_limit=0`` reads every shard once; *stored* is the size of the files
under ``<cache_dir>/chunks`` (chunk headers included). Then reads are timed
with every chunk a disk-tier hit:

- *warm read, new process*: a fresh ``CacheFileSystem`` on the same
  directory reads every shard (each chunk is opened, checked and, when
  compressed, decoded);
- *repeat read, same process*: that instance reads everything again; an
  uncompressed chunk is still memory-mapped, a compressed one is decoded on
  every hit.

Ratios: stored rows compare bytes, so ``> 1`` means fewer bytes on disk than
without compression (the compression factor); read rows compare GB/s, so
``< 1`` is the read-speed cost of decoding. One target: random bytes must not
grow (stored >= 0.99x of uncompressed), since chunks that do not shrink are
stored raw.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import Row, as_reference, compare, interleaved, median
from cachefs import CacheFileSystem

__all__ = ["CODECS", "DEFAULTS", "QUICK", "run", "shard_data"]

MiB = 2**20
VOCAB = 50_257  # GPT-2's vocabulary size

#: Parameters of a full run and of ``--quick``.
DEFAULTS: dict[str, Any] = {
    "shards": 16,
    "size": 4 * MiB,
    "chunk": 4 * MiB,
    "reps": 5,
    "min_time": 0.3,
}
QUICK: dict[str, Any] = {
    "shards": 8,
    "size": 2 * MiB,
    "chunk": MiB,
    "reps": 3,
    "min_time": 0.1,
}

#: Codec settings compared, by label (``None`` is the reference).
CODECS: dict[str, str | None] = {"none": None, "lz4": "lz4", "zstd": "zstd"}
KINDS = ("tokens u16", "tokens u32", "random")
STORED_TARGET = {"random": ">= 0.99x"}


def _zipf_ids(n: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """``n`` token ids, P(id = k) proportional to 1 / (k + 1)."""
    weights = 1.0 / np.arange(1, VOCAB + 1)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ids: np.ndarray[Any, Any] = np.searchsorted(cdf, rng.random(n), side="right")
    clipped: np.ndarray[Any, Any] = np.minimum(ids, VOCAB - 1)
    return clipped


def shard_data(kind: str, size: int, seed: int) -> bytes:
    """Return ``size`` bytes of shard content of ``kind``."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.bytes(size)
    if kind == "tokens u16":
        return _zipf_ids(size // 2, rng).astype("<u2").tobytes()
    if kind == "tokens u32":
        return _zipf_ids(size // 4, rng).astype("<u4").tobytes()
    raise ValueError(f"unknown shard kind {kind!r}")


def stored_bytes(cache_dir: Path) -> int:
    """Sum of the sizes of the chunk files under ``cache_dir``."""
    return sum(
        p.stat().st_size for p in (cache_dir / "chunks").rglob("*") if p.is_file()
    )


def _cache(cache_dir: Path, chunk: int, codec: str | None) -> CacheFileSystem:
    return CacheFileSystem(
        target_protocol="file",
        cache_dir=str(cache_dir),
        ram_limit=0,
        chunk_size=chunk,
        metadata_ttl=None,
        readahead=0,
        compression=codec,
        skip_instance_cache=True,
    )


def _param(args: argparse.Namespace | None, name: str, base: dict[str, Any]) -> Any:
    value = getattr(args, name, None) if args is not None else None
    return base[name] if value is None else value


def measure_kind(
    kind: str, work: Path, params: dict[str, Any]
) -> tuple[dict[str, int], dict[str, list[float]], dict[str, list[float]], int]:
    """Fill one cache per codec; time warm and repeat reads.

    Returns stored bytes, and GB/s samples of both reads, by codec label, and
    the dataset's size.
    """
    shards, size, chunk = params["shards"], params["size"], params["chunk"]
    src = work / "origin" / kind.replace(" ", "_")
    src.mkdir(parents=True)
    paths = []
    for i in range(shards):
        path = src / f"shard-{i:04d}.bin"
        path.write_bytes(shard_data(kind, size, seed=1000 * KINDS.index(kind) + i))
        paths.append(str(path))
    total = shards * size

    stored: dict[str, int] = {}
    dirs: dict[str, Path] = {}
    for label, codec in CODECS.items():
        cache_dir = work / "cache" / f"{kind.replace(' ', '_')}-{label}"
        fs = _cache(cache_dir, chunk, codec)
        for p in paths:
            fs.cat_file(p)
        fs.wait_idle()
        fs.close()
        stored[label] = stored_bytes(cache_dir)
        dirs[label] = cache_dir

    def read_all(fs: CacheFileSystem) -> None:
        got = 0
        for p in paths:
            got += len(fs.cat_file(p))
        if got != total:
            raise AssertionError(f"read {got} bytes of {total}")

    def new_process(label: str) -> Callable[[], None]:
        def once() -> None:
            fs = _cache(dirs[label], chunk, CODECS[label])
            read_all(fs)
            if fs.cache_stats()["origin"]["bytes"]:
                raise AssertionError("a warm read reached the origin")
            fs.close()

        return once

    warmed = {
        label: _cache(dirs[label], chunk, codec) for label, codec in CODECS.items()
    }
    for fs in warmed.values():
        read_all(fs)

    def same_process(label: str) -> Callable[[], None]:
        return lambda: read_all(warmed[label])

    reps, min_time = params["reps"], params["min_time"]
    seconds_new, _ = interleaved(
        {label: new_process(label) for label in CODECS}, reps, min_time
    )
    seconds_same, _ = interleaved(
        {label: same_process(label) for label in CODECS}, reps, min_time
    )
    for fs in warmed.values():
        if fs.cache_stats()["origin"]["bytes"]:
            raise AssertionError("a repeat read reached the origin")
        fs.close()

    def rates(samples: dict[str, list[float]]) -> dict[str, list[float]]:
        return {k: [total / s / 1e9 for s in v] for k, v in samples.items()}

    return stored, rates(seconds_new), rates(seconds_same), total


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure stored bytes and warm read GB/s per codec and shard kind."""
    base = QUICK if quick else DEFAULTS
    params = {name: _param(args, name, base) for name in base}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cachefs-bench-") as tmp:
        for kind in KINDS:
            stored, new, same, total = measure_kind(kind, Path(tmp), params)
            detail = {
                "dataset_bytes": total,
                "shards": params["shards"],
                "chunk_size": params["chunk"],
            }
            ref_bytes = stored["none"]
            stored_rows = {
                label: Row(
                    row=f"{kind}: stored",
                    system=f"compression={label}",
                    value=stored[label] / MiB,
                    unit="MiB",
                    samples=[stored[label] / MiB],
                    detail={
                        **detail,
                        "stored_bytes": stored[label],
                        "stored_vs_uncompressed": stored[label] / ref_bytes,
                    },
                )
                for label in CODECS
            }
            rows.append(as_reference(stored_rows["none"]))
            for label in list(CODECS)[1:]:
                target = STORED_TARGET.get(kind)
                rows.append(compare(stored_rows[label], stored_rows["none"], target))
            for row_name, samples in (
                ("warm read, new process", new),
                ("repeat read, same process", same),
            ):
                read_rows = {
                    label: Row(
                        row=f"{kind}: {row_name}",
                        system=f"compression={label}",
                        value=median(samples[label]),
                        unit="GB/s",
                        samples=samples[label],
                        detail=dict(detail),
                    )
                    for label in CODECS
                }
                rows.append(as_reference(read_rows["none"]))
                rows.extend(
                    compare(read_rows[label], read_rows["none"])
                    for label in list(CODECS)[1:]
                )
    return rows
