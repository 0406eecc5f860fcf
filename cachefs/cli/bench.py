"""``cachefs bench``: read throughput on the user's own storage.

Four passes over the same byte ranges, each with ``--jobs`` threads calling
``cat_file(path, start, end)`` on blocks of ``--block-size``:

``fsspec``
    the target filesystem alone (no cache), the baseline;
``cold``
    a cache filesystem over an empty cache directory: origin to cache,
    including the time to store every chunk on disk;
``warm``
    a fresh filesystem object with ``ram_limit=0``: disk-tier hits;
``hot``
    a fresh filesystem object that read everything once: RAM-tier hits, or
    mapped disk chunks served in place from the page cache (skipped with
    ``ram_limit=0``; noted when the data exceeds ``ram_limit``).

The cache directory is a temporary one inside the first ``--cache-dir``
(same disk), removed afterwards: the user's cache is left as it was.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import fsspec

from cachefs.chunks import parse_size
from cachefs.cli.format import Heartbeat, fmt_bytes, fmt_duration, table
from cachefs.cli.settings import Settings, keyword_defaults, make_fs, url_protocol
from cachefs.cli.warm import expand_urls
from cachefs.filesystem import CacheFileSystem

__all__ = ["PassResult", "run_bench"]

Block = tuple[str, int, int]


@dataclass(frozen=True)
class PassResult:
    """One timed pass."""

    name: str
    seconds: float
    nbytes: int
    origin_bytes: int | None
    note: str = ""

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """Return the pass as documented in ``docs/cli.md``."""
        return {
            "seconds": round(self.seconds, 6),
            "bytes": self.nbytes,
            "bytes_per_second": round(self.rate, 1),
            "origin_bytes": self.origin_bytes,
            "note": self.note,
        }


def _read_all(
    cat: Callable[[str, int, int], bytes],
    blocks: Sequence[Block],
    jobs: int,
    heartbeat: Heartbeat | None = None,
    name: str = "",
) -> int:
    """Read ``blocks`` with ``jobs`` threads; return the bytes read.

    The threads are daemons and the calling thread waits in short steps, so
    Ctrl-C ends the command at once even while a read hangs on the origin
    (a thread pool would join its workers, and so wait for that read).
    """
    todo: queue.SimpleQueue[Block] = queue.SimpleQueue()
    for block in blocks:
        todo.put(block)
    done: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def read(block: Block) -> int:
        if heartbeat is None:
            return len(cat(*block))
        path, lo, hi = block
        with heartbeat.waiting(f"the {name} pass: bytes {lo}-{hi} of {path}"):
            return len(cat(*block))

    def work() -> None:
        while not stop.is_set():
            try:
                block = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((read(block), None))
            except BaseException as exc:  # handed to the caller, raised there
                done.put((0, exc))
                return

    for i in range(min(jobs, len(blocks))):
        threading.Thread(target=work, name=f"cachefs-bench-{i}", daemon=True).start()
    total = 0
    try:
        for _ in blocks:
            while True:
                try:
                    nbytes, exc = done.get(timeout=0.25)
                    break
                except queue.Empty:
                    continue
            if exc is not None:
                raise exc
            total += nbytes
    finally:
        stop.set()
    return total


def _timed(
    name: str,
    cat: Callable[[str, int, int], bytes],
    blocks: Sequence[Block],
    jobs: int,
    expected: int,
    after: Callable[[], None] | None = None,
    heartbeat: Heartbeat | None = None,
) -> tuple[float, int]:
    began = time.perf_counter()
    got = _read_all(cat, blocks, jobs, heartbeat, name)
    if after is not None:
        waiting = (
            heartbeat.waiting(f"the {name} pass: chunks to be stored in the cache")
            if heartbeat is not None
            else contextlib.nullcontext()
        )
        with waiting:
            after()
    seconds = time.perf_counter() - began
    if got != expected:
        raise OSError(f"bench {name} pass read {got} bytes, expected {expected}")
    return seconds, got


def _ranged(fs: Any) -> Callable[[str, int, int], bytes]:
    """Return ``cat_file`` of ``fs`` taking the range by keyword.

    Filesystems put other parameters before ``start`` and ``end`` (s3fs's
    ``cat_file(path, version_id, start, end)``), so the range is never
    passed positionally.
    """

    def cat(path: str, start: int, end: int) -> bytes:
        data: bytes = fs.cat_file(path, start=start, end=end)
        return data

    return cat


def _origin(fs: CacheFileSystem) -> int:
    return int(fs.cache_stats()["origin"]["bytes"])


def bench(
    settings: Settings,
    protocol: str,
    files: Sequence[str],
    sizes: Sequence[int],
    *,
    block_size: int,
    jobs: int,
    heartbeat: Heartbeat | None = None,
    on_pass: Callable[[PassResult], None] | None = None,
) -> list[PassResult]:
    """Run the four passes; return their results in order.

    Each block read runs inside ``heartbeat.waiting``, so that a pass stuck
    on the origin says which bytes it waits for; ``on_pass`` gets each
    pass's result as soon as it ends.
    """
    blocks = [
        (path, lo, min(lo + block_size, size))
        for path, size in zip(files, sizes, strict=True)
        for lo in range(0, size, block_size)
    ]
    total = sum(sizes)
    results: list[PassResult] = []

    def record(result: PassResult) -> None:
        results.append(result)
        if on_pass is not None:
            on_pass(result)

    target = fsspec.filesystem(
        protocol, skip_instance_cache=True, **settings.target_options
    )
    secs, got = _timed(
        "fsspec", _ranged(target), blocks, jobs, total, heartbeat=heartbeat
    )
    record(PassResult("fsspec", secs, got, got))

    root = settings.cache_dirs[0]
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench-", dir=root)
    common: dict[str, Any] = {
        "cache_dir": scratch,
        "disk_limit": max(settings.disk_limit, 2 * total),
    }
    if "shared" in keyword_defaults():
        common["shared"] = None  # cold means from the origin, not a shared tier
    try:
        cold = make_fs(settings, protocol, ram_limit=0, **common)
        try:
            secs, got = _timed(
                "cold",
                _ranged(cold),
                blocks,
                jobs,
                total,
                after=cold.wait_idle,
                heartbeat=heartbeat,
            )
            record(PassResult("cold", secs, got, _origin(cold)))
        finally:
            cold.close()

        warm = make_fs(settings, protocol, ram_limit=0, metadata_ttl=None, **common)
        try:
            secs, got = _timed(
                "warm", _ranged(warm), blocks, jobs, total, heartbeat=heartbeat
            )
            record(PassResult("warm", secs, got, _origin(warm)))
        finally:
            warm.close()

        if settings.ram_limit:
            hot = make_fs(settings, protocol, metadata_ttl=None, **common)
            try:
                # Fill the RAM tier.
                _read_all(_ranged(hot), blocks, jobs, heartbeat, "hot (fill)")
                secs, got = _timed(
                    "hot", _ranged(hot), blocks, jobs, total, heartbeat=heartbeat
                )
                # RAM usage is no test of fit: chunks the disk tier has mapped
                # are served in place (page cache), never copied into RAM.
                note = "data exceeds --ram-limit" if total > settings.ram_limit else ""
                record(PassResult("hot", secs, got, _origin(hot), note))
            finally:
                hot.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def run_bench(settings: Settings, args: Any, out: TextIO, err: TextIO) -> int:
    """Run ``cachefs bench``; return the exit code.

    Unless ``--quiet``, stderr names what the command waits for whenever
    nothing has moved for ``--progress-interval`` seconds.
    """
    heartbeat = Heartbeat(
        err,
        "bench",
        interval=getattr(args, "progress_interval", 5.0),
        enabled=not args.quiet,
    )
    with heartbeat:
        return _run_bench(settings, args, out, err, heartbeat)


def _run_bench(
    settings: Settings, args: Any, out: TextIO, err: TextIO, heartbeat: Heartbeat
) -> int:
    args.urls = [u.removeprefix("cachefs::") for u in args.urls]
    protocol = url_protocol(args.urls)
    block_size = parse_size(
        args.block_size or settings.chunk_size, "--block-size", allow_zero=False
    )
    target = fsspec.filesystem(
        protocol, skip_instance_cache=True, **settings.target_options
    )
    files = expand_urls(target, args.urls, args.recursive, heartbeat=heartbeat)
    talk = not args.quiet and not args.json
    # Sizes asked 16 (or --jobs) at a time: one round trip per file in
    # sequence made a bench of many files over a slow origin silent for
    # seconds before its first pass.
    with (
        heartbeat.waiting(f"the info of {len(files)} files"),
        concurrent.futures.ThreadPoolExecutor(max(16, args.jobs)) as pool,
    ):
        sizes = [int(info["size"]) for info in pool.map(target.info, files)]
    total = sum(sizes)
    if talk:
        err.write(f"bench: {len(files)} files, {fmt_bytes(total)}\n")
        err.flush()

    def passed(result: PassResult) -> None:
        if talk:
            err.write(
                f"bench: {result.name} pass: {fmt_bytes(result.nbytes)} in "
                f"{fmt_duration(result.seconds)} ({fmt_bytes(result.rate)}/s)\n"
            )
            err.flush()

    results = bench(
        settings,
        protocol,
        files,
        sizes,
        block_size=block_size,
        jobs=args.jobs,
        heartbeat=heartbeat,
        on_pass=passed,
    )
    if args.json:
        doc = {
            "files": len(files),
            "bytes": total,
            "block_size": block_size,
            "jobs": args.jobs,
            "chunk_size": settings.chunk_size,
            "ram_limit": settings.ram_limit,
            "passes": {r.name: r.as_json() for r in results},
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    base = results[0].rate
    rows = [
        [
            r.name,
            fmt_bytes(r.nbytes),
            fmt_duration(r.seconds),
            f"{fmt_bytes(r.rate)}/s",
            f"{r.rate / base:.2f}x" if base else "-",
            "-" if r.origin_bytes is None else fmt_bytes(r.origin_bytes),
            r.note,
        ]
        for r in results
    ]
    headers = ["pass", "bytes", "time", "throughput", "vs fsspec", "origin", "note"]
    out.write(table(headers, rows, right=(1, 2, 3, 4, 5)) + "\n")
    return 0
