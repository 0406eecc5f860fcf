"""Scenarios "user_*": cachefs on the paths users really take (issue 12).

The origin is :class:`cachefs.testing.HTTPOrigin` with 20 ms before every
response, serving in-memory files from **its own process**
(``python -m bench.user_passes origin``), never from the measuring one.
Except ``user_hot_ram`` (a RAM hit is per process by definition), every pass
of every system runs in a **new Python process** (``python -m
bench.user_passes pass``) that times itself after its imports and reports on
stdout; systems are interleaved and repeated, medians and ratios printed.

- ``user_cold_open``: ``fsspec.open("cachefs::http://…")`` per shard, 1 MiB
  ``read`` calls, in one new process with an empty cache, against plain
  fsspec http, ``simplecache::``, ``blockcache::`` (same chaining) and the
  **concurrent-GET ceiling**: aiohttp, 16 concurrent 4 MiB range requests
  covering every shard once, at the same 20 ms latency.
- ``user_cold_loader`` (in :mod:`bench.user_loaders`): cachefs
  ``ShardDataset`` (tar shards) + torch DataLoader, 2 workers, batch 32,
  empty cache, against the same ceiling over the same tars. The epoch time
  includes starting the workers.
- ``user_warm_epoch`` (in :mod:`bench.user_loaders`): the same loader over
  a cache warmed by an untimed epoch, in a new process per epoch, against
  webdataset reading the same tars as local files (page cache warm) with
  the same loader settings.
- ``user_warm_fresh``: ``readinto`` a 1 MiB buffer over warm shards, a new
  process per pass (empty RAM tier, warm disk tier), against ``readinto`` of
  the same bytes from local files (page cache warm), also a new process.
- ``user_hot_ram`` (in :mod:`bench.user_reads`): ``readinto`` 1 MiB from
  the RAM tier (this process) against ``np.copyto`` from huge-page memory (``mmap`` +
  ``madvise(MADV_HUGEPAGE)``); the row says whether the OS granted them
  (``AnonHugePages`` of ``/proc/self/smaps_rollup``).
- ``user_random_fresh`` (in :mod:`bench.user_reads`): the first 1000 4 KiB
  reads at random offsets after ``fsspec.open`` of a warm file, a new
  process per pass, cachefs against ``simplecache::`` and ``blockcache::``
  (each warm, each a new process).
- ``user_small_reads`` (in :mod:`bench.user_reads`): for every registered
  policy, tiers filled by other files first, then a file read front to
  back in 10 KiB reads (what ``tarfile`` does): origin bytes of that file
  ÷ its size, target <= 1.05.

The warm cachefs systems use ``metadata_ttl=None`` (a warmed cache serves
without asking the origin), as ``simplecache`` and local files never ask it
either; the rows say so. Origin counters during each pass are in ``detail``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.procs import Closing, stop_process
from bench.report import Row, as_reference, compare, filesystem_of, median
from cachefs.testing import make_shards

__all__ = [
    "OriginProcess",
    "run_cold_open",
    "run_warm_fresh",
]

KiB, MiB = 2**10, 2**20
ROOT = Path(__file__).resolve().parents[1]
LATENCY = 0.02
HUGE_PAGE = 2 * MiB
ORIGIN_MODEL = (
    "HTTPOrigin (aiohttp) in its own process, in-memory files, loopback TCP, "
    f"{LATENCY * 1000:g} ms before every response"
)
CEILING = "ceiling: 16 concurrent 4MiB GETs, 20 ms"
WARM_OPTIONS = {"metadata_ttl": None}
PAYLOAD = 31 * KiB  # + 1 KiB of tar header and padding = 32 KiB per sample

Result = dict[str, Any]


def _param(args: argparse.Namespace | None, name: str, value: Any) -> Any:
    given = getattr(args, name, None) if args is not None else None
    return value if given is None else given


def _log(scenario: str, text: str) -> None:
    print(f"{scenario}: {text}", file=sys.stderr, flush=True)


# -- the origin process and the pass processes -------------------------------


class OriginProcess(Closing):
    """An :class:`HTTPOrigin` serving ``root`` from a child process."""

    def __init__(self, root: Path, latency: float = LATENCY) -> None:
        spec = json.dumps({"root": str(root), "latency": latency})
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.user_passes", "origin", spec],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError(f"origin process did not start: {line!r}")
        self.port = int(line)

    def url_for(self, path: str) -> str:
        """Return the URL of ``path`` (relative to the served root)."""
        return f"http://127.0.0.1:{self.port}/{quote(path)}"

    def _ask(self, command: str) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._proc.stdout.readline())
        return answer

    def stats(self) -> dict[str, Any]:
        """Counters since the last :meth:`reset` (bytes, requests, per path)."""
        return self._ask("stats")

    def reset(self) -> None:
        """Zero the counters."""
        self._ask("reset")

    def close(self) -> None:
        """Stop the origin process."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        stop_process(self._proc)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def run_pass(spec: dict[str, Any], timeout: float = 300.0) -> Result:
    """Run one pass in a new Python process; return what it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.user_passes", "pass", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"pass {spec['kind']}/{spec['system']} failed:\n{tail}")
    result: Result = json.loads(lines[-1])
    return result


def _measured(origin: OriginProcess, spec: dict[str, Any]) -> Result:
    """One pass with the origin's counters for exactly that pass."""
    origin.reset()
    result = run_pass(spec)
    stats = origin.stats()
    result["origin_by_path"] = stats.pop("bytes_by_path")
    result["origin"] = stats
    return result


def _interleave(
    scenario: str,
    systems: dict[str, Callable[[], Result]],
    reps: int,
) -> dict[str, list[Result]]:
    """Run every system ``reps`` times, rotating which one goes first."""
    names = list(systems)
    runs: dict[str, list[Result]] = {n: [] for n in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            result = systems[name]()
            runs[name].append(result)
            _log(scenario, f"rep {rep + 1}/{reps} {name}: {result['seconds']:.3f} s")
    return runs


def _cold(
    origin: OriginProcess, tmp: Path, spec: dict[str, Any]
) -> Callable[[], Result]:
    """A pass with a new, empty cache directory (removed afterwards)."""

    def run() -> Result:
        cache_dir = Path(tempfile.mkdtemp(prefix="cold-", dir=tmp))
        try:
            return _measured(origin, {**spec, "cache_dir": str(cache_dir)})
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)

    return run


def _rate(runs: list[Result], scale: float, key: str = "bytes") -> list[float]:
    return [r[key] / r["seconds"] / scale for r in runs]


def _origin_summary(runs: list[Result]) -> dict[str, Any]:
    return {
        "origin_bytes_median": median([r["origin"]["bytes_sent"] for r in runs]),
        "origin_requests_median": median([r["origin"]["requests"] for r in runs]),
        "origin_head_requests_median": median(
            [r["origin"]["head_requests"] for r in runs]
        ),
        "origin_max_concurrent": max(r["origin"]["max_concurrent"] for r in runs),
        "seconds": [r["seconds"] for r in runs],
    }


def _row(
    label: str,
    system: str,
    samples: list[float],
    unit: str,
    detail: dict[str, Any],
) -> Row:
    return Row(label, system, median(samples), unit, samples, detail=detail)


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# -- user_cold_open -----------------------------------------------------------


def run_cold_open(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Cold ``fsspec.open`` per shard in a new process vs peers and the ceiling."""
    n = 8 if quick else 16
    size = int(_param(args, "size", 8 * MiB if quick else 16 * MiB))
    reps = int(_param(args, "reps", 3 if quick else 5))
    print(f"user_cold_open origin model: {ORIGIN_MODEL}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cachefs-user-cold-") as name:
        tmp = Path(name)
        files = make_shards(n, size, seed=1201)
        _write_files(tmp / "origin", files)
        paths = list(files)
        del files
        with OriginProcess(tmp / "origin") as origin:
            urls = [origin.url_for(p) for p in paths]
            seq = {"kind": "sequential", "urls": urls}
            systems = {
                "http (plain fsspec)": _cold(origin, tmp, {**seq, "system": "plain"}),
                "simplecache::": _cold(origin, tmp, {**seq, "system": "simplecache"}),
                "blockcache::": _cold(origin, tmp, {**seq, "system": "blockcache"}),
                "cachefs::": _cold(origin, tmp, {**seq, "system": "cachefs"}),
                CEILING: _cold(
                    origin,
                    tmp,
                    {
                        "kind": "ceiling",
                        "system": "aiohttp",
                        "urls": urls,
                        "sizes": [size] * n,
                    },
                ),
            }
            runs = _interleave("user_cold_open", systems, reps)
        tmp_fs = filesystem_of(tmp)
    dataset = n * size
    common = {
        "origin_model": ORIGIN_MODEL,
        "shards": n,
        "shard_bytes": size,
        "dataset_bytes": dataset,
        "read_bytes": MiB,
        "tmp_filesystem": tmp_fs,
        "process": "one new Python process per pass, timed after its imports",
    }
    label = "1 cold fsspec.open/shard, new process"
    by: dict[str, Row] = {}
    for system, results in runs.items():
        if any(r["bytes"] != dataset for r in results):
            raise AssertionError(f"{system} did not read {dataset} bytes")
        detail = {
            **common,
            **_origin_summary(results),
            "read_amplification": median(
                [r["origin"]["bytes_sent"] / dataset for r in results]
            ),
            "cpu_s_median": median([r["cpu_s"] for r in results]),
        }
        by[system] = _row(label, system, _rate(results, 1e6), "MB/s", detail)
    cfs = by["cachefs::"]
    ceiling_label = "2 vs concurrent-GET ceiling"
    rows = [
        as_reference(by["http (plain fsspec)"]),
        as_reference(by["simplecache::"]),
        as_reference(by["blockcache::"]),
        compare(cfs, by["blockcache::"], ">= 3x"),
        compare(cfs, by["simplecache::"], ">= 1.5x"),
        compare(cfs, by["http (plain fsspec)"]),
        as_reference(by[CEILING], row_label=ceiling_label),
        compare(cfs, by[CEILING], ">= 0.6x", row_label=ceiling_label),
    ]
    for peer in ("simplecache::", "blockcache::", "http (plain fsspec)"):
        rows.append(compare(by[peer], by[CEILING], row_label=ceiling_label))
    return rows


# -- user_warm_fresh ------------------------------------------------------------


def run_warm_fresh(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Warm disk tier, a new process per pass, ``readinto`` 1 MiB vs local files."""
    n = 8 if quick else 16
    size = int(_param(args, "size", 16 * MiB if quick else 32 * MiB))
    reps = int(_param(args, "reps", 5 if quick else 9))
    print(f"user_warm_fresh origin model: {ORIGIN_MODEL}", flush=True)
    cfs_name = "cachefs:: readinto (metadata_ttl=None)"
    with tempfile.TemporaryDirectory(prefix="cachefs-user-fresh-") as name:
        tmp = Path(name)
        files = make_shards(n, size, seed=1203)
        _write_files(tmp / "origin", files)
        paths = list(files)
        del files
        local = [str(tmp / "origin" / p) for p in paths]
        cache_dir = str(tmp / "cache")
        with OriginProcess(tmp / "origin") as origin:
            urls = [origin.url_for(p) for p in paths]
            _log("user_warm_fresh", "warming the cache (untimed pass)")
            run_pass(
                {
                    "kind": "sequential",
                    "system": "cachefs",
                    "urls": urls,
                    "cache_dir": cache_dir,
                    "options": WARM_OPTIONS,
                    "drain": True,
                }
            )
            fresh = {
                "kind": "fresh_read",
                "cache_dir": cache_dir,
                "options": WARM_OPTIONS,
            }
            systems = {
                cfs_name: lambda: _measured(
                    origin, {**fresh, "system": "cachefs", "files": urls}
                ),
                "local file readinto": lambda: _measured(
                    origin, {**fresh, "system": "local", "files": local}
                ),
                "local file mmap + copy": lambda: _measured(
                    origin, {**fresh, "system": "local mmap", "files": local}
                ),
            }
            runs = _interleave("user_warm_fresh", systems, reps)
        tmp_fs = filesystem_of(tmp)
    dataset = n * size
    common = {
        "origin_model": ORIGIN_MODEL,
        "files": n,
        "file_bytes": size,
        "dataset_bytes": dataset,
        "buffer_bytes": MiB,
        "tmp_filesystem": tmp_fs,
        "process": "one new Python process per pass (empty RAM tier)",
    }
    label = "1 warm disk, new process, readinto 1MiB"
    for system, results in runs.items():
        if any(r["bytes"] != dataset for r in results):
            raise AssertionError(f"{system} did not read {dataset} bytes")
    by = {
        system: _row(
            label,
            system,
            _rate(results, 1e9),
            "GB/s",
            {**common, **_origin_summary(results)},
        )
        for system, results in runs.items()
    }
    return [
        as_reference(by["local file readinto"]),
        compare(by[cfs_name], by["local file readinto"], ">= 0.8x"),
        compare(by["local file mmap + copy"], by["local file readinto"]),
        compare(by[cfs_name], by["local file mmap + copy"]),
    ]
