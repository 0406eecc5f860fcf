"""Scenario "warm_jobs": ``cachefs warm -j 16`` against 16 concurrent plain GETs.

Issue 20's target: ``cachefs warm -j 16`` from an origin that caps each
response's bandwidth takes at most 1.25x as long as 16 concurrent plain GETs
of the same files (ratio >= 0.8x). With the cap, a file's body takes
``size / cap`` seconds however many requests run beside it, so the floor
of every system that keeps 16 requests in flight is that, and anything
above it is start-up, per-file requests before the data, or storing.

The origin is :class:`cachefs.testing.HTTPOrigin` in its own process,
each response capped (full: 16 files of 8 MiB at 4 MB/s, a 2.1 s floor;
quick: 16 of 2 MiB at 2 MB/s, 1.05 s; ``--size`` changes the file size,
not the cap). Two configurations, each with its own origin and the same
target: no added latency (the issue's setup), then 20 ms before every
response, where each request made before the data (a file's info) costs a
round trip, and one made per file in turn costs one per file. Every
system runs as a user runs it, each pass in a new process, timed by this
process from start to exit:

- ``cachefs warm URL... -j 16 --cache-dir D --json`` (``python -m cachefs``,
  what the ``cachefs`` script runs), each pass into an empty cache
  directory on a real disk (``CACHEFS_BENCH_DISK``, default ``/var/tmp``);
- ``fsspec.filesystem("http").cat(urls)`` (fsspec's own 16 concurrent GETs,
  bytes kept in memory): **the reference**;
- ``cachefs warm -j 1`` for contrast, one pass only and only without
  latency (the files one after another: 16 times the floor);
- the floor, ``size / cap``.

Systems are interleaved over the repetitions, starting at a rotating
position. Reported: process seconds and MB/s, the seconds each child
counts itself (warm's ``--json`` ``seconds``, from its first info request
to the last chunk stored; fsspec's from after its imports), and per pass
the origin's GET and HEAD requests and its peak of requests in flight.
The child processes get no ``FSSPEC_CACHEFS*`` variables and an empty
fsspec configuration directory, so the user's settings do not move the
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import stop_process
from bench.report import Row, as_reference, compare, filesystem_of, median

__all__ = ["FLOOR", "PLAIN", "TARGET", "WARM", "run"]

MiB, MB = 2**20, 1e6
ROOT = Path(__file__).resolve().parents[1]
FILES = 16
LATENCY = 0.02  # seconds before every response, in the second configuration
TARGET = ">= 0.8x"
WARM = "cachefs warm -j 16 (the command)"
WARM_1 = "cachefs warm -j 1 (the command, one pass)"
PLAIN = 'fsspec.filesystem("http").cat(urls)'
FLOOR = "floor: file size / cap"

_ORIGIN = """
import json, sys
from cachefs.testing import HTTPOrigin, make_shards
count, size, bandwidth, latency = json.loads(sys.argv[1])
files = make_shards(count, size, seed=20, prefix="warm-jobs/")
with HTTPOrigin(files=files, bandwidth=bandwidth, latency=latency) as origin:
    print(json.dumps([origin.url_for(n) for n in sorted(files)]), flush=True)
    for line in sys.stdin:
        if line.strip() == "reset":
            origin.reset_stats()
        s = origin.stats
        print(json.dumps({"gets": s.get_requests, "heads": s.head_requests,
                          "bytes": s.bytes_sent, "peak": s.max_concurrent}),
              flush=True)
"""

# fsspec's http with its defaults, as a user calls it; the clock starts
# after the imports so that start-up shows as process - own seconds.
_PLAIN = """
import json, sys, time
import fsspec
t0 = time.perf_counter()
data = fsspec.filesystem("http").cat(sys.argv[1:])
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "bytes": sum(map(len, data.values()))}))
"""


def _disk_root() -> Path:
    base = Path(os.environ.get("CACHEFS_BENCH_DISK") or "/var/tmp")
    return Path(tempfile.mkdtemp(prefix="cachefs-warm-jobs-", dir=base))


def _child_env(config_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC_CACHEFS")}
    env["FSSPEC_CONFIG_DIR"] = str(config_dir)
    return env


class _Origin:
    """The origin process: URLs on start, counters on request."""

    def __init__(self, count: int, size: int, cap: float, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ORIGIN, json.dumps([count, size, cap, latency])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        line = self._line()
        if not line:
            self.close()
            raise RuntimeError("the origin process failed to start")
        self.urls: list[str] = json.loads(line)

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def ask(self, command: str) -> dict[str, int]:
        """Send ``reset`` or ``stats``; return the counters after it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        counters: dict[str, int] = json.loads(self._line())
        return counters

    def close(self) -> None:
        """End the origin process."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Run ``argv`` to its end; return its seconds and its JSON output."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{argv[2:4]} exited {proc.returncode}: {proc.stderr[-2000:]}"
        )
    doc: dict[str, Any] = json.loads(proc.stdout)
    return seconds, doc


def _warm_pass(
    origin: _Origin, disk: Path, env: dict[str, str], jobs: int
) -> Callable[[], dict[str, Any]]:
    def one() -> dict[str, Any]:
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=disk))
        try:
            argv = [sys.executable, "-m", "cachefs", "warm", *origin.urls]
            argv += ["-j", str(jobs), "--cache-dir", str(cache), "--json", "-q"]
            seconds, doc = _timed(argv, env)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        if not doc["complete"]:
            raise RuntimeError(f"cachefs warm left files uncached: {doc}")
        return {"seconds": seconds, "own_seconds": doc["seconds"]}

    return one


def _plain_pass(origin: _Origin, env: dict[str, str]) -> dict[str, Any]:
    seconds, doc = _timed([sys.executable, "-c", _PLAIN, *origin.urls], env)
    return {"seconds": seconds, "own_seconds": doc["seconds"], "bytes": doc["bytes"]}


def _measure(
    origin: _Origin,
    systems: dict[str, Callable[[], dict[str, Any]]],
    reps: int,
    once: set[str],
) -> dict[str, list[dict[str, Any]]]:
    """Run every system ``reps`` times (those in ``once`` only in the first)."""
    names = list(systems)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if name in once and rep > 0:
                continue
            origin.ask("reset")
            sample = systems[name]()
            sample["origin"] = origin.ask("stats")
            out[name].append(sample)
            print(
                f"  warm_jobs rep {rep + 1}/{reps}: {name}: {sample['seconds']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    return out


def _rows(
    label: str,
    samples: dict[str, list[dict[str, Any]]],
    total: int,
    floor: float,
    facts: dict[str, Any],
) -> list[Row]:
    def row(name: str, unit: str, values: list[float], detail: dict[str, Any]) -> Row:
        return Row(
            row=f"{label}: {unit}",
            system=name,
            value=median(values),
            unit=unit,
            samples=values,
            detail=detail,
        )

    rows: list[Row] = []
    for unit in ("s", "MB/s"):
        built: dict[str, Row] = {}
        for name, runs in samples.items():
            seconds = [r["seconds"] for r in runs]
            own = [r["own_seconds"] for r in runs]
            detail = {
                **facts,
                "process_seconds": seconds,
                "own_seconds": own,
                "own_seconds_median": median(own),
                "start_up_and_exit_median": median(seconds) - median(own),
                "origin": [r["origin"] for r in runs],
            }
            values = seconds if unit == "s" else [total / s / MB for s in seconds]
            built[name] = row(name, unit, values, detail)
        built[FLOOR] = row(
            FLOOR, unit, [floor if unit == "s" else total / floor / MB], dict(facts)
        )
        ref = built[PLAIN]
        rows.append(as_reference(ref))
        for name in (WARM, WARM_1, FLOOR):
            if name in built:
                # One target, on the seconds: the MB/s rows say the same.
                target = TARGET if name == WARM and unit == "s" else None
                rows.append(compare(built[name], ref, target))
    return rows


def _config(
    size: int, cap: float, latency: float, reps: int, contrast: bool
) -> list[Row]:
    """Measure every system against one origin; return its rows."""
    floor = size / cap
    total = FILES * size
    label = f"{FILES} x {size / MiB:g} MiB, {cap / MB:g} MB/s per response"
    if latency:
        label += f", {latency * 1000:g} ms latency"
    disk = _disk_root()
    origin = _Origin(FILES, size, cap, latency)
    try:
        config_dir = disk / "fsspec-config"
        config_dir.mkdir()
        env = _child_env(config_dir)
        systems: dict[str, Callable[[], dict[str, Any]]] = {
            WARM: _warm_pass(origin, disk, env, 16),
            PLAIN: lambda: _plain_pass(origin, env),
        }
        if contrast:
            systems[WARM_1] = _warm_pass(origin, disk, env, 1)
        samples = _measure(origin, systems, reps, once={WARM_1})
    finally:
        origin.close()
        shutil.rmtree(disk, ignore_errors=True)
    for name, runs in samples.items():
        for r in runs:
            if r["origin"]["bytes"] != total:
                raise RuntimeError(f"{name}: origin sent {r['origin']} for {total}")
    facts = {
        "files": FILES,
        "file_bytes": size,
        "cap_bytes_per_s": cap,
        "latency_s": latency,
        "floor_seconds": floor,
        "cache_filesystem": filesystem_of(disk.parent),
        "origin_kind": "HTTPOrigin in its own process",
    }
    return _rows(label, samples, total, floor, facts)


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Time ``cachefs warm -j 16`` and 16 plain GETs from a capped origin."""
    size = getattr(args, "size", None) or (2 * MiB if quick else 8 * MiB)
    reps = getattr(args, "reps", None) or (3 if quick else 5)
    cap = 2e6 if quick else 4e6  # bytes/s per response
    rows = _config(size, cap, 0.0, reps, contrast=True)
    # Requests before the data (each file's info) cost a round trip each
    # time they run in turn: the same with a WAN-like latency shows them.
    return rows + _config(size, cap, LATENCY, reps, contrast=False)
