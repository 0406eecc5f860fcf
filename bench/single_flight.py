"""Scenario "single_flight": several processes read one file at the same time.

N processes on one node (N = 4) read the same file through one cache
directory, all starting together, from the HTTP origin with 20 ms latency and a
per-connection bandwidth cap (so reads overlap in time). Reported per system:
origin bytes / file size (read amplification; cachefs target <= 1.25x) and the
wall time until every process has the whole file. Peers: plain fsspec http (no
cache: every process downloads) and ``simplecache::`` with a shared cache
storage (fsspec issue #639 reports corrupt files in that setup; each reader's
bytes are checked here, and a mismatch is reported, not hidden). cachefs runs
twice: all processes starting together, and starting 50 ms apart (a later
process then finds the first one's fetch under way).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Row, Target
from cachefs.testing import HTTPOrigin, make_shards

__all__ = ["run"]

PROCESSES = 4
#: Start offset between processes in the staggered run.
STAGGER = 0.05
TARGET = "<= 1.25x"
REPO = Path(__file__).resolve().parents[1]

READER = """
import hashlib, json, sys, time
import fsspec
system, url, cache_dir, start_at = json.loads(sys.argv[1])
while time.time() < start_at:
    time.sleep(0.001)
if system == "cachefs":
    from cachefs import CacheFileSystem
    fs = CacheFileSystem(target_protocol="http", cache_dir=cache_dir,
                         skip_instance_cache=True)
    data = fs.cat_file(url)
    fs.wait_idle()
elif system == "simplecache":
    with fsspec.open("simplecache::" + url,
                     simplecache={"cache_storage": cache_dir}) as f:
        data = f.read()
else:
    data = fsspec.filesystem("http", skip_instance_cache=True).cat_file(url)
print(hashlib.sha256(data).hexdigest())
"""


def _race(
    system: str, url: str, cache_dir: str, stagger: float = 0.0
) -> tuple[float, list[str]]:
    start_at = time.time() + 1.5  # let every interpreter start first
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                READER,
                json.dumps([system, url, cache_dir, start_at + i * stagger]),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for i in range(PROCESSES)
    ]
    digests = [p.communicate(timeout=300)[0].strip() for p in procs]
    return time.time() - start_at, digests


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure origin traffic when N processes read one file together."""
    size = (16 if quick else 64) << 20
    files = make_shards(1, size, seed=9, prefix="sf/")
    ((name, data),) = files.items()
    want = hashlib.sha256(data).hexdigest()
    target = Target.parse(TARGET)
    rows = []
    with HTTPOrigin(files=files, latency=0.02, bandwidth=64 << 20) as origin:
        url = origin.url_for(name)
        runs = [
            ("cachefs", 0.0),
            ("cachefs", STAGGER),
            ("simplecache", 0.0),
            ("http", 0.0),
        ]
        for system, stagger in runs:
            with tempfile.TemporaryDirectory() as cache_dir:
                origin.reset_stats()
                wall, digests = _race(system, url, cache_dir, stagger)
                amplification = origin.stats.bytes_sent / size
            judged = system == "cachefs"
            start = "together" if not stagger else f"{stagger * 1000:.0f} ms apart"
            rows.append(
                Row(
                    row=f"{PROCESSES} processes, one {size >> 20} MiB file, {start}",
                    system=system,
                    value=amplification,
                    unit="x file size",
                    samples=[amplification],
                    reference="file size",
                    ratio=amplification,
                    target=TARGET if judged else None,
                    met=target.check(amplification) if judged else None,
                    detail={
                        "wall_seconds": wall,
                        "readers_exact": sum(d == want for d in digests),
                        "readers": PROCESSES,
                        "origin": "HTTP, 20 ms latency, 64 MiB/s per connection",
                    },
                )
            )
    return rows
