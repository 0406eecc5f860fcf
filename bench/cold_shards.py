"""Scenarios "cold_shards" and "consumer_wait": cold shards over a slow HTTP origin.

Both scenarios read shards from :class:`cachefs.testing.HTTPOrigin` with 20 ms of
latency before every response (an object store round trip). The origin is an
aiohttp server in a background thread **of this process**: it shares the GIL
and the CPU with the client, so every figure here is a client+origin figure on
the same cores. The ``ceiling`` rows measure what that origin model can serve.

``cold_shards`` reads every shard front to back in 1 MiB reads, shard after
shard. Every system starts cold in each repetition: a fresh filesystem
instance (``skip_instance_cache=True``), fresh cache storage, and fsspec's
HTTP instance cache cleared so no aiohttp session (pooled connections)
carries over from one system to the next. Systems, interleaved and repeated:

- ``http (plain fsspec)``: ``fsspec.filesystem("http")`` ``open``/``read``;
- ``simplecache``: fsspec ``simplecache::`` over http (whole-file download);
- ``blockcache``: fsspec ``blockcache::`` over http (5 MiB blocks, mmap);
- ``cachefs readahead``: ``CacheFileSystem(target_protocol="http")`` with its
  defaults (adaptive readahead up to 64 MiB);
- ``cachefs prefetch``: the same, plus ``fs.prefetch(shard_urls)`` before
  reading (the data-loader use case);
- ``ceiling: 1 GET/shard, 0 ms``: one whole-file GET per shard with the
  origin's latency set to 0 for that system (``http.client``, one keep-alive
  connection, body read into a preallocated buffer): the physical ceiling of
  this origin model;
- ``aiohttp 1 GET/shard, 0 ms`` (context): the same through an aiohttp
  client session (``await resp.read()``), the HTTP stack fsspec's http
  filesystem and cachefs use: the ceiling of that client stack in this
  process;
- ``1 GET/shard, 20 ms`` (context): one whole-file ``http.client`` GET per
  shard at the scenario's latency, i.e. the best a client that fetches one
  shard at a time can do.

The origin logs a traceback for every response whose client hung up before
the body was sent (fsspec's http file objects do that when they close); the
scenarios silence exactly those records and count them per pass
(``aborted_responses`` in each row's ``detail``).

Rows: (1) throughput of the cachefs variants vs the peers, with targets;
(2) every system vs the ceiling; (3) origin requests per shard and (4) origin
bytes per byte read (read amplification), from ``origin.stats``.

``consumer_wait`` simulates a data loader's consumer: after each 1 MiB read
it "computes" for a fixed time per MiB (a sleep, which releases the GIL like
GPU work would), sized so that the consumer alone needs about as long as the
cold fetch. It measures the time the consumer spends inside ``prefetch``,
``open`` and ``read`` calls (waiting for data) with cachefs fetching on
demand only (``prefetch_limit=0, readahead=0``) and with
``fs.prefetch(shard_urls)`` plus default readahead. Target: the wait with
prefetch is at most 10 % of the wait without (ratio >= 10x).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import fsspec
from fsspec.implementations.http import HTTPFileSystem

from bench.peers import build_peer, open_file
from bench.report import Row, as_reference, compare, filesystem_of, median
from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards

__all__ = [
    "DEFAULTS",
    "ORIGIN_MODEL",
    "QUICK",
    "run",
]

MiB = 2**20
STEP = MiB

#: Parameters of a full ``cold_shards`` run and of ``--quick``.
DEFAULTS: dict[str, Any] = {"shards": 16, "size": 16 * MiB, "reps": 3, "latency": 0.02}
QUICK: dict[str, Any] = {"shards": 8, "size": 8 * MiB, "reps": 3, "latency": 0.02}

ORIGIN_MODEL = (
    "aiohttp HTTPOrigin in a background thread of the benchmark process "
    "(shares the GIL and the CPUs with the client), in-memory shards, "
    "loopback TCP, {latency_ms:g} ms sleep before every response's headers"
)

PLAIN = "http (plain fsspec)"
SIMPLE = "simplecache"
BLOCK = "blockcache"
CFS_RA = "cachefs readahead"
CFS_PF = "cachefs prefetch"
CEILING = "ceiling: 1 GET/shard, 0 ms"
CEILING_AIO = "aiohttp 1 GET/shard, 0 ms"
GET_LAT = "1 GET/shard, 20 ms"

ROW_PEERS = "1 cold seq 1MiB, MB/s"
ROW_CEILING = "2 vs ceiling"
ROW_REQUESTS = "3 origin requests"
ROW_AMPLIFICATION = "4 origin bytes/read"

#: Systems of ``cold_shards``, in the order of the first repetition.
SYSTEMS = (PLAIN, SIMPLE, BLOCK, CFS_RA, CFS_PF, CEILING, CEILING_AIO, GET_LAT)


def _param(
    args: argparse.Namespace | None,
    name: str,
    quick: bool,
    table: tuple[dict[str, Any], dict[str, Any]],
) -> Any:
    value = getattr(args, name, None) if args is not None else None
    if value is None:
        value = (table[1] if quick else table[0])[name]
    return value


def _log(scenario: str, text: str) -> None:
    print(f"{scenario}: {text}", file=sys.stderr, flush=True)


# -- one cold run of one system ------------------------------------------------


@dataclass(slots=True)
class Run:
    """What one cold pass of one system measured."""

    seconds: float
    bytes_read: int
    first_byte_s: float
    cpu_s: float
    origin: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class _AbortCounter(logging.Filter):
    """Counts, and hides, the origin's tracebacks for clients that hung up."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionError):
            self.count += 1
            return False
        return True


@contextlib.contextmanager
def _counting_aborts() -> Iterator[_AbortCounter]:
    logger = logging.getLogger("aiohttp.server")
    counter = _AbortCounter()
    logger.addFilter(counter)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)


def _fresh_http_state() -> None:
    """Drop fsspec's cached HTTP instances (and, through GC, their sessions)."""
    HTTPFileSystem.clear_instance_cache()
    gc.collect()


def _origin_delta(origin: HTTPOrigin, aborted: int) -> dict[str, int]:
    s = origin.stats
    return {
        "aborted_responses": aborted,
        "requests": s.requests,
        "get_requests": s.get_requests,
        "head_requests": s.head_requests,
        "bytes_sent": s.bytes_sent,
        "max_concurrent": s.max_concurrent,
        "faults": s.faults,
    }


def _read_all(f: Any, marks: dict[str, float]) -> int:
    """Read ``f`` to its end in 1 MiB reads; return the bytes read."""
    total = 0
    while True:
        data = f.read(STEP)
        if not data:
            return total
        if "first" not in marks:
            marks["first"] = time.perf_counter()
        total += len(data)


def _fs_pass(fs_factory: Callable[[], Any], urls: list[str]) -> Callable[[], Run]:
    """A cold pass through an fsspec filesystem built by ``fs_factory``."""

    def run() -> Run:
        marks: dict[str, float] = {}
        c0, t0 = time.process_time(), time.perf_counter()
        fs = fs_factory()
        total = 0
        for url in urls:
            with open_file(fs, url) as f:
                total += _read_all(f, marks)
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
        return Run(t1 - t0, total, marks.get("first", t1) - t0, cpu)

    return run


def _cachefs_pass(
    cache_root: Path, urls: list[str], *, prefetch: bool, **options: Any
) -> Callable[[], Run]:
    """A cold pass through a fresh ``CacheFileSystem`` (optionally prefetching)."""

    def run() -> Run:
        cache_dir = Path(tempfile.mkdtemp(prefix="cfs-", dir=cache_root))
        marks: dict[str, float] = {}
        c0, t0 = time.process_time(), time.perf_counter()
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(cache_dir),
            skip_instance_cache=True,
            **options,
        )
        try:
            handle = fs.prefetch(urls) if prefetch else None
            total = 0
            for url in urls:
                with fs.open(url, "rb") as f:
                    total += _read_all(f, marks)
            t1 = time.perf_counter()
            cpu = time.process_time() - c0
            extra: dict[str, Any] = {}
            if handle is not None:
                extra["prefetch_finished"] = handle.wait(60)
                extra["prefetch_progress"] = list(handle.progress)
                extra["prefetch_failed"] = [f"{p}: {e!r}" for p, e in handle.failed]
            w0 = time.perf_counter()
            fs.wait_idle(60)
            extra["wait_idle_after_s"] = time.perf_counter() - w0
            extra["cache_stats"] = _cachefs_stats(fs)
        finally:
            fs.close()
            del fs
            shutil.rmtree(cache_dir, ignore_errors=True)
        return Run(t1 - t0, total, marks.get("first", t1) - t0, cpu, extra=extra)

    return run


def _cachefs_stats(fs: CacheFileSystem) -> dict[str, Any]:
    stats = fs.cache_stats()
    return {k: stats[k] for k in ("origin", "router", "prefetch") if k in stats}


def _get_pass(
    origin: HTTPOrigin, paths: list[str], size: int, latency: float | None
) -> Callable[[], Run]:
    """One whole-file GET per shard over one keep-alive ``http.client`` connection.

    With ``latency`` set, the origin's latency is that for the duration of
    the pass (and restored after).
    """
    buf = memoryview(bytearray(size))

    def run() -> Run:
        saved = origin.latency
        if latency is not None:
            origin.latency = latency
        marks: dict[str, float] = {}
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=60)
            total = 0
            try:
                for path in paths:
                    conn.request("GET", "/" + quote(path))
                    resp = conn.getresponse()
                    if resp.status != 200:
                        raise OSError(f"origin answered {resp.status} for {path}")
                    length = int(resp.headers["Content-Length"])
                    got = 0
                    while got < length:
                        n = resp.readinto(buf[got:length])
                        if not n:
                            raise OSError(f"short body for {path}")
                        if "first" not in marks:
                            marks["first"] = time.perf_counter()
                        got += n
                    total += got
            finally:
                conn.close()
            t1 = time.perf_counter()
            cpu = time.process_time() - c0
        finally:
            origin.latency = saved
        return Run(t1 - t0, total, marks.get("first", t1) - t0, cpu)

    return run


def _aiohttp_pass(
    origin: HTTPOrigin, urls: list[str], latency: float
) -> Callable[[], Run]:
    """One whole-file GET per shard through a fresh aiohttp session.

    Runs on its own event loop in the calling thread, with the origin's
    latency set to ``latency`` for the pass.
    """

    async def fetch_all(marks: dict[str, float]) -> int:
        total = 0
        async with aiohttp.ClientSession() as session:
            for url in urls:
                async with session.get(url) as resp:
                    resp.raise_for_status()
                    body = await resp.read()
                if "first" not in marks:
                    marks["first"] = time.perf_counter()
                total += len(body)
        return total

    def run() -> Run:
        saved = origin.latency
        origin.latency = latency
        marks: dict[str, float] = {}
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            total = asyncio.run(fetch_all(marks))
            t1 = time.perf_counter()
            cpu = time.process_time() - c0
        finally:
            origin.latency = saved
        return Run(t1 - t0, total, marks.get("first", t1) - t0, cpu)

    return run


def _measure(
    scenario: str,
    origin: HTTPOrigin,
    systems: dict[str, Callable[[], Run]],
    reps: int,
    expected_bytes: int,
) -> dict[str, list[Run]]:
    """Run every system ``reps`` times, interleaved, each pass cold.

    Each repetition starts at a rotating position so no system always runs
    first or last. Before the timed repetitions every system makes one
    untimed pass (imports, first sessions, page faults of the origin data).
    """
    names = list(systems)
    _log(scenario, f"warm-up pass of {len(names)} systems")
    with _counting_aborts() as aborts:
        for name in names:
            _fresh_http_state()
            systems[name]()
        runs: dict[str, list[Run]] = {name: [] for name in names}
        for rep in range(reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                _fresh_http_state()
                origin.reset_stats()
                aborts.count = 0
                result = systems[name]()
                # Let the origin's thread log the responses cut short.
                time.sleep(0.01)
                result.origin = _origin_delta(origin, aborts.count)
                if result.bytes_read != expected_bytes:
                    raise AssertionError(
                        f"{name} read {result.bytes_read} bytes, "
                        f"expected {expected_bytes}"
                    )
                runs[name].append(result)
                _log(
                    scenario,
                    f"rep {rep + 1}/{reps} {name}: {result.seconds:.3f} s, "
                    f"{result.origin['requests']} requests",
                )
        _fresh_http_state()
    return runs


# -- cold_shards -----------------------------------------------------------------


def _summary(runs: list[Run], n_files: int, dataset: int) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return median(values)

    out: dict[str, Any] = {
        "seconds": [r.seconds for r in runs],
        "first_byte_s_median": med([r.first_byte_s for r in runs]),
        "cpu_s_median": med([r.cpu_s for r in runs]),
        "cpu_per_wall_median": med([r.cpu_s / r.seconds for r in runs]),
        "origin_requests_median": med([r.origin["requests"] for r in runs]),
        "origin_get_requests_median": med([r.origin["get_requests"] for r in runs]),
        "origin_head_requests_median": med([r.origin["head_requests"] for r in runs]),
        "origin_bytes_median": med([r.origin["bytes_sent"] for r in runs]),
        "origin_requests_per_shard": med(
            [r.origin["requests"] / n_files for r in runs]
        ),
        "read_amplification": med([r.origin["bytes_sent"] / dataset for r in runs]),
        "origin_max_concurrent": max(r.origin["max_concurrent"] for r in runs),
        "origin_aborted_responses_median": med(
            [r.origin["aborted_responses"] for r in runs]
        ),
        "origin_per_rep": [r.origin for r in runs],
    }
    extras = [r.extra for r in runs if r.extra]
    if extras:
        out["per_rep"] = extras
    return out


def _setup(
    name: str,
    args: argparse.Namespace | None,
    quick: bool,
    table: tuple[dict[str, Any], dict[str, Any]],
) -> tuple[int, int, int, float, str]:
    """Return shards, size, reps, latency and the origin model; print the model."""
    n = int(_param(None, "shards", quick, table))
    size = int(_param(args, "size", quick, table))
    reps = int(_param(args, "reps", quick, table))
    latency = float(_param(None, "latency", quick, table))
    if reps < 1 or size < 1:
        raise ValueError("reps and size must be >= 1")
    model = ORIGIN_MODEL.format(latency_ms=latency * 1000)
    print(f"{name} origin model: {model}", flush=True)
    return n, size, reps, latency, model


def _mbps(runs: list[Run]) -> list[float]:
    return [r.bytes_read / r.seconds / 1e6 for r in runs]


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Run the cold-shards scenario; return its rows (see the module docstring).

    ``args`` may set ``size`` (bytes per shard) and ``reps``; unset ones take
    the :data:`QUICK` or :data:`DEFAULTS` values.
    """
    table = (DEFAULTS, QUICK)
    n, size, reps, latency, model = _setup("cold_shards", args, quick, table)
    dataset = n * size

    files = make_shards(n, size, seed=1601)
    paths = list(files)
    with (
        HTTPOrigin(files, latency=latency) as origin,
        tempfile.TemporaryDirectory(prefix="cachefs-bench-cold-") as tmp_name,
    ):
        del files
        tmp = Path(tmp_name)
        urls = [origin.url_for(p) for p in paths]

        def peer(name: str) -> Callable[[], Any]:
            def build() -> Any:
                root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
                return build_peer(name, root, "http")

            return build

        systems: dict[str, Callable[[], Run]] = {
            PLAIN: _fs_pass(
                lambda: fsspec.filesystem("http", skip_instance_cache=True), urls
            ),
            SIMPLE: _fs_pass(peer("simplecache"), urls),
            BLOCK: _fs_pass(peer("blockcache"), urls),
            CFS_RA: _cachefs_pass(tmp, urls, prefetch=False),
            CFS_PF: _cachefs_pass(tmp, urls, prefetch=True),
            CEILING: _get_pass(origin, paths, size, latency=0.0),
            CEILING_AIO: _aiohttp_pass(origin, urls, latency=0.0),
            GET_LAT: _get_pass(origin, paths, size, latency=None),
        }
        runs = _measure("cold_shards", origin, systems, reps, dataset)
        tmp_fs = filesystem_of(tmp)

    common = {
        "origin_model": model,
        "latency_s": latency,
        "shards": n,
        "shard_bytes": size,
        "dataset_bytes": dataset,
        "read_bytes": STEP,
        "reps": reps,
        "tmp_filesystem": tmp_fs,
        "fsspec_http_instance_cache": "cleared before every pass",
    }
    by: dict[str, Row] = {}
    for name in SYSTEMS:
        detail = {**common, **_summary(runs[name], n, dataset)}
        samples = _mbps(runs[name])
        by[name] = Row(ROW_PEERS, name, median(samples), "MB/s", samples, detail=detail)

    rows: list[Row] = [
        as_reference(by[PLAIN]),
        as_reference(by[SIMPLE]),
        as_reference(by[BLOCK]),
    ]
    for cfs in (CFS_RA, CFS_PF):
        rows += [
            compare(by[cfs], by[BLOCK], ">= 3x"),
            compare(by[cfs], by[SIMPLE], ">= 1.5x"),
            compare(by[cfs], by[PLAIN]),
        ]
    rows.append(as_reference(by[CEILING], row_label=ROW_CEILING))
    for name in (CFS_RA, CFS_PF, CEILING_AIO, GET_LAT, SIMPLE, PLAIN, BLOCK):
        rows.append(compare(by[name], by[CEILING], row_label=ROW_CEILING))
    for name in SYSTEMS:
        d = by[name].detail
        per_shard = [r.origin["requests"] / n for r in runs[name]]
        amp = [r.origin["bytes_sent"] / dataset for r in runs[name]]
        rows.append(
            Row(ROW_REQUESTS, name, median(per_shard), "req/shard", per_shard, detail=d)
        )
        rows.append(Row(ROW_AMPLIFICATION, name, median(amp), "B/B", amp, detail=d))
    return rows
