"""Scenario "consumer_wait": how long a consumer that computes waits for data.

A cold epoch over the shards of :mod:`bench.cold_shards` (same origin, same
latency) by a consumer that computes after every 1 MiB read: with demand
reads only, with readahead, with ``fs.prefetch`` and readahead, and with
compute alone (no I/O). The target is the wait with prefetch against the
wait on demand. See ``docs/bench/cold_shards.md``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cold_shards import (
    STEP,
    MiB,
    Run,
    _cachefs_stats,
    _measure,
    _param,
    _setup,
    _summary,
)
from bench.report import Row, as_reference, compare, filesystem_of, median
from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards

__all__ = ["CONSUMER_DEFAULTS", "CONSUMER_QUICK", "run_consumer_wait"]

#: Parameters of a full ``consumer_wait`` run and of ``--quick``.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "shards": 8,
    "size": 16 * MiB,
    "reps": 5,
    "latency": 0.02,
    "compute_per_mib": 0.004,
}
CONSUMER_QUICK: dict[str, Any] = {
    "shards": 4,
    "size": 8 * MiB,
    "reps": 3,
    "latency": 0.02,
    "compute_per_mib": 0.004,
}

DEMAND = "cachefs demand only"
PREFETCH = "cachefs prefetch+readahead"
READAHEAD = "cachefs readahead only"
COMPUTE = "compute only (no I/O)"
FETCH_ONLY = "cachefs prefetch, no compute"

ROW_WAIT = "1 consumer wait"
ROW_EPOCH = "2 epoch time"
ROW_COUNTER = "3 cachefs wait_seconds"
ROW_PF_STATS = "4 prefetch chunks"

CONSUMER_SYSTEMS = (DEMAND, PREFETCH, READAHEAD, COMPUTE, FETCH_ONLY)


# -- consumer_wait ---------------------------------------------------------------


def _consumer_pass(
    cache_root: Path | None,
    urls: list[str],
    compute_per_mib: float,
    *,
    prefetch: bool,
    total_bytes: int,
    **options: Any,
) -> Callable[[], Run]:
    """A cold epoch of a consumer that computes after every 1 MiB read.

    ``Run.seconds`` is the epoch time; ``extra["wait_s"]`` the time spent
    inside ``prefetch``, ``open`` and ``read`` calls. With ``cache_root``
    ``None`` the consumer only computes (no I/O; its reads are free).
    """

    def compute(nbytes: int) -> None:
        if compute_per_mib:
            time.sleep(compute_per_mib * nbytes / MiB)

    def run() -> Run:
        if cache_root is None:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(total_bytes // STEP):
                compute(STEP)
            if total_bytes % STEP:
                compute(total_bytes % STEP)
            t1 = time.perf_counter()
            idle: dict[str, Any] = {"wait_s": 0.0, "open_wait_s": 0.0}
            return Run(t1 - t0, total_bytes, 0.0, time.process_time() - c0, extra=idle)
        cache_dir = Path(tempfile.mkdtemp(prefix="cfs-", dir=cache_root))
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(cache_dir),
            skip_instance_cache=True,
            **options,
        )
        first = 0.0
        try:
            waited = opened = 0.0
            total = 0
            c0, t0 = time.process_time(), time.perf_counter()
            handle = None
            if prefetch:
                handle = fs.prefetch(urls)
                waited += time.perf_counter() - t0
            for url in urls:
                a = time.perf_counter()
                f = fs.open(url, "rb")
                b = time.perf_counter()
                opened += b - a
                waited += b - a
                with f:
                    while True:
                        a = time.perf_counter()
                        data = f.read(STEP)
                        b = time.perf_counter()
                        waited += b - a
                        if not data:
                            break
                        if not first:
                            first = b - t0
                        total += len(data)
                        compute(len(data))
            t1 = time.perf_counter()
            cpu = time.process_time() - c0
            stats = _cachefs_stats(fs)
            extra: dict[str, Any] = {
                "wait_s": waited,
                "open_wait_s": opened,
                "cache_stats": stats,
            }
            if handle is not None:
                extra["prefetch_finished"] = handle.wait(60)
                extra["prefetch_failed"] = [f"{p}: {e!r}" for p, e in handle.failed]
            fs.wait_idle(60)
        finally:
            fs.close()
            del fs
            shutil.rmtree(cache_dir, ignore_errors=True)
        return Run(t1 - t0, total, first, cpu, extra=extra)

    return run


def run_consumer_wait(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Run the consumer-wait scenario; return its rows (see the module docstring).

    ``args`` may set ``size`` (bytes per shard) and ``reps``; unset ones take
    the :data:`CONSUMER_QUICK` or :data:`CONSUMER_DEFAULTS` values.
    """
    table = (CONSUMER_DEFAULTS, CONSUMER_QUICK)
    n, size, reps, latency, model = _setup("consumer_wait", args, quick, table)
    per_mib = float(_param(None, "compute_per_mib", quick, table))
    dataset = n * size

    files = make_shards(n, size, seed=1602)
    paths = list(files)
    with (
        HTTPOrigin(files, latency=latency) as origin,
        tempfile.TemporaryDirectory(prefix="cachefs-bench-wait-") as tmp_name,
    ):
        del files
        tmp = Path(tmp_name)
        urls = [origin.url_for(p) for p in paths]
        common_pass = {"total_bytes": dataset}
        systems: dict[str, Callable[[], Run]] = {
            DEMAND: _consumer_pass(
                tmp,
                urls,
                per_mib,
                prefetch=False,
                prefetch_limit=0,
                readahead=0,
                **common_pass,
            ),
            PREFETCH: _consumer_pass(tmp, urls, per_mib, prefetch=True, **common_pass),
            READAHEAD: _consumer_pass(
                tmp, urls, per_mib, prefetch=False, **common_pass
            ),
            COMPUTE: _consumer_pass(None, urls, per_mib, prefetch=False, **common_pass),
            FETCH_ONLY: _consumer_pass(tmp, urls, 0.0, prefetch=True, **common_pass),
        }
        runs = _measure("consumer_wait", origin, systems, reps, dataset)
        tmp_fs = filesystem_of(tmp)

    compute_s = median([r.seconds for r in runs[COMPUTE]])
    fetch_s = median([r.seconds for r in runs[FETCH_ONLY]])
    common = {
        "origin_model": model,
        "latency_s": latency,
        "shards": n,
        "shard_bytes": size,
        "dataset_bytes": dataset,
        "read_bytes": STEP,
        "compute_s_per_mib": per_mib,
        "compute_only_epoch_s": compute_s,
        "cold_fetch_epoch_s": fetch_s,
        "compute_over_fetch": compute_s / fetch_s if fetch_s else None,
        "reps": reps,
        "tmp_filesystem": tmp_fs,
        "wait_measured_as": "time inside fs.prefetch, fs.open and f.read calls",
    }

    def detail(name: str) -> dict[str, Any]:
        d = {**common, **_summary(runs[name], n, dataset)}
        d["wait_s"] = [r.extra.get("wait_s") for r in runs[name]]
        d["open_wait_s"] = [r.extra.get("open_wait_s") for r in runs[name]]
        return d

    def ms(values: list[float]) -> list[float]:
        return [v * 1000 for v in values]

    wait: dict[str, Row] = {}
    epoch: dict[str, Row] = {}
    for name in CONSUMER_SYSTEMS:
        d = detail(name)
        w = ms([r.extra["wait_s"] for r in runs[name]])
        e = ms([r.seconds for r in runs[name]])
        wait[name] = Row(ROW_WAIT, name, median(w), "ms waited", w, detail=d)
        epoch[name] = Row(ROW_EPOCH, name, median(e), "ms/epoch", e, detail=d)

    rows: list[Row] = [
        as_reference(wait[DEMAND]),
        compare(wait[PREFETCH], wait[DEMAND], ">= 10x"),
        compare(wait[READAHEAD], wait[DEMAND]),
        as_reference(epoch[COMPUTE]),
        compare(epoch[DEMAND], epoch[COMPUTE]),
        compare(epoch[PREFETCH], epoch[COMPUTE]),
        compare(epoch[READAHEAD], epoch[COMPUTE]),
        compare(epoch[FETCH_ONLY], epoch[COMPUTE]),
    ]
    # cachefs's own counter of time readers waited for the origin.
    for name in (PREFETCH, READAHEAD, FETCH_ONLY, DEMAND):
        counters = [r.extra["cache_stats"]["router"] for r in runs[name]]
        values = ms([c["wait_seconds"] for c in counters])
        rows.append(
            Row(
                ROW_COUNTER,
                name,
                median(values),
                "ms",
                values,
                detail=wait[name].detail,
            )
        )
    for name in (PREFETCH, READAHEAD):
        counters = [r.extra["cache_stats"]["prefetch"] for r in runs[name]]
        for what in ("issued", "used", "wasted", "failed"):
            values = [float(c[what]) for c in counters]
            rows.append(
                Row(
                    f"{ROW_PF_STATS}",
                    f"{name}: {what}",
                    median(values),
                    "chunks",
                    values,
                    detail=wait[name].detail,
                )
            )
    return rows
