"""Soak: 4 processes, one cache directory, a faulty origin, small budgets.

Four real processes (two reader threads each) share one cache directory and
read from a real HTTP origin on loopback that fails 5% of its GETs, the kind
of fault rotating every second (503, 429, reset, short body, stall). The RAM
and disk budgets are a fraction of the data, so chunks are evicted and
fetched again all along. Every byte read is compared with the origin's data;
each process samples its RSS and open descriptors after a warm-up and at the
end, and both must stay flat. Descriptors of shard directories and of chunk
maps (CPython's ``mmap`` keeps one per map) grow with the chunks a run has
touched, not with time: each is checked against its bound by design instead.

It runs about 45 s of reading by default (the CI suite); ``pytest
--soak-seconds 600 tests/test_soak.py`` (or ``CACHEFS_SOAK_SECONDS=600``)
runs longer. The figures are printed and written to ``soak.json`` in the
test's tmp directory.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cachefs.testing import HTTPOrigin, make_shards

REPO = Path(__file__).resolve().parents[1]
KiB, MiB = 2**10, 2**20

PROCESSES = 4
THREADS = 2
FILES = 16
FILE_SIZE = MiB + 12_345  # not a multiple of the chunk size
CHUNK = 128 * KiB
RAM_LIMIT = MiB  # per process; the data is 16x that
DISK_LIMIT = 4 * MiB  # shared; the data is 4x that
FAULT_RATE = 0.05
FAULT_KINDS = ("503", "429", "reset", "short", "stall")
SEED = 11

# RSS may grow by this much after the warm-up (allocator and import noise);
# a leak of chunks, maps or buffers over a soak grows far past it.
RSS_SLACK = 32 * MiB
FD_SLACK = 16


CHILD = r"""
import json, os, random, stat, sys, threading, time
import fsspec
from cachefs.testing import make_shards
from cachefs.tiers.maps import map_limit

cfg = json.loads(sys.argv[1])
files = make_shards(cfg["files"], cfg["file_size"], seed=cfg["seed"], prefix="soak/")
names = sorted(files)
urls = {n: cfg["base"] + "/" + n for n in names}
fs = fsspec.filesystem(
    "cachefs", target_protocol="http", cache_dir=cfg["cache_dir"],
    ram_limit=cfg["ram_limit"], disk_limit=cfg["disk_limit"],
    chunk_size=cfg["chunk"], retries=8, request_timeout=20,
    prefetch_limit=2 * cfg["chunk"] * 4, readahead=4 * cfg["chunk"],
    skip_instance_cache=True,
)
cs = cfg["chunk"]
RECORDS = os.path.join(os.path.realpath(cfg["cache_dir"]), "chunks") + os.sep


def sample():
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    kinds = {}
    dirs = records = 0
    fds = os.listdir("/proc/self/fd")
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            is_dir = stat.S_ISDIR(os.stat(f"/proc/self/fd/{fd}").st_mode)
        except OSError:
            continue
        if is_dir:
            # The disk tier keeps a descriptor per shard directory it has
            # used (at most 257, by design): they grow with the shards a run
            # reaches, not with time, so they are counted apart.
            dirs += 1
            continue
        if target.startswith(RECORDS):
            # Each chunk map holds a descriptor (CPython's mmap duplicates
            # it); the maps are bounded by map_limit() by design and grow
            # with the chunks a run has touched, so they are counted apart.
            records += 1
            continue
        kind = target.split(":")[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"t": time.monotonic(), "rss": rss, "fds": len(fds) - dirs - records,
            "dir_fds": dirs, "record_fds": records, "maps": maps, "kinds": kinds}


counts = {"bytes": 0, "ops": 0}
errors = []
lock = threading.Lock()


def check(name, start, got):
    want = files[name][start:start + len(got)]
    if bytes(got) != want:
        errors.append(f"{name}[{start}:{start + len(got)}]: wrong bytes")
        return False
    return True


def reader(seed, deadline):
    rng = random.Random(seed)
    while time.monotonic() < deadline and not errors:
        name = rng.choice(names)
        data, url = files[name], urls[name]
        size = len(data)
        op = rng.random()
        n = 0
        try:
            if op < 0.35:
                start = rng.randrange(size)
                end = min(size, start + rng.randint(1, 3 * cs))
                got = fs.cat_file(url, start, end)
                if len(got) != end - start:
                    errors.append(f"{name}[{start}:{end}]: {len(got)} bytes")
                check(name, start, got)
                n = len(got)
            elif op < 0.65:
                with fs.open(url, "rb") as f:
                    pos = 0
                    while True:
                        buf = f.read(rng.choice([64 * 1024, cs, 3 * cs + 7]))
                        if not buf:
                            break
                        if not check(name, pos, buf):
                            break
                        pos += len(buf)
                if pos != size and not errors:
                    errors.append(f"{name}: sequential read ended at {pos}")
                n = pos
            elif op < 0.85:
                starts = [rng.randrange(size) for _ in range(4)]
                ends = [min(size, s + rng.randint(1, 2 * cs)) for s in starts]
                got = fs.cat_ranges([url] * 4, starts, ends)
                for s, e, g in zip(starts, ends, got):
                    if isinstance(g, BaseException):
                        raise g
                    if len(g) != e - s:
                        errors.append(f"{name}[{s}:{e}]: {len(g)} bytes")
                    check(name, s, g)
                    n += len(g)
            else:
                start = rng.randrange(size)
                buf = bytearray(rng.randint(1, 2 * cs))
                with fs.open(url, "rb") as f:
                    f.seek(start)
                    k = f.readinto(buf)
                if k != min(len(buf), size - start):
                    errors.append(f"{name}[{start}:]: readinto gave {k}")
                check(name, start, buf[:k])
                n = k
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
        with lock:
            counts["bytes"] += n
            counts["ops"] += 1


began = time.monotonic()
warm_until = began + cfg["warmup"]
deadline = began + cfg["seconds"]
threads = [
    threading.Thread(target=reader, args=(cfg["seed"] * 100 + cfg["rank"] * 10 + i,
                                          deadline))
    for i in range(cfg["threads"])
]
for t in threads:
    t.start()
samples = []
start_bytes = None
while any(t.is_alive() for t in threads):
    time.sleep(0.5)
    if start_bytes is None and time.monotonic() >= warm_until:
        start_bytes = counts["bytes"]
        samples.append(sample())
    elif start_bytes is not None:
        samples.append(sample())
for t in threads:
    t.join()
fs.wait_idle()
end = sample()
first = samples[0] if samples else end
elapsed = end["t"] - first["t"]
stats = fs.cache_stats()
out = {
    "rank": cfg["rank"],
    "ops": counts["ops"],
    "bytes": counts["bytes"],
    "measured_bytes": counts["bytes"] - (start_bytes or 0),
    "measured_seconds": elapsed,
    "start": first,
    "end": end,
    "peak_rss": max(s["rss"] for s in samples + [end]),
    "peak_fds": max(s["fds"] for s in samples + [end]),
    # The busiest point of the first half: connections come and go with the
    # load, so "flat" means the end stays under what the start already saw.
    "early_peak_fds": max(
        s["fds"] for s in samples[: max(1, len(samples) // 2)] or [end]
    ),
    "peak_record_fds": max(s["record_fds"] for s in samples + [end]),
    "map_limit": map_limit(),
    "origin": stats["origin"],
    "disk_usage": stats.get("disk", {}).get("usage"),
    "errors": errors[:10],
}
fs.close()
print(json.dumps(out))
"""


def _soak_seconds(config: pytest.Config) -> float:
    given = config.getoption("--soak-seconds")
    if given is None:
        given = float(os.environ.get("CACHEFS_SOAK_SECONDS", "45"))
    return float(given)


def _rotate_faults(origin: HTTPOrigin, stop: threading.Event) -> None:
    for kind in itertools.cycle(FAULT_KINDS):
        origin.fault_kind = kind
        if stop.wait(1.0):
            return


def _disk_bytes(cache_dir: Path) -> int:
    chunks = cache_dir / "chunks"
    return sum(
        p.stat().st_size
        for p in chunks.rglob("*")
        if p.is_file() and not p.is_symlink()
    )


def test_soak(request, tmp_path):
    seconds = _soak_seconds(request.config)
    files = make_shards(FILES, FILE_SIZE, seed=SEED, prefix="soak/")
    cache_dir = tmp_path / "cache"
    stop = threading.Event()
    with HTTPOrigin(
        files=files, fault_rate=FAULT_RATE, stall_seconds=0.3, seed=SEED
    ) as origin:
        rotor = threading.Thread(target=_rotate_faults, args=(origin, stop))
        rotor.start()
        base = origin.url_for("x").rsplit("/", 1)[0]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        procs = []
        try:
            for rank in range(PROCESSES):
                cfg = {
                    "rank": rank,
                    "base": base,
                    "files": FILES,
                    "file_size": FILE_SIZE,
                    "seed": SEED,
                    "cache_dir": str(cache_dir),
                    "ram_limit": RAM_LIMIT,
                    "disk_limit": DISK_LIMIT,
                    "chunk": CHUNK,
                    "threads": THREADS,
                    "seconds": seconds,
                    "warmup": min(10.0, max(3.0, seconds * 0.2)),
                }
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", CHILD, json.dumps(cfg)],
                        cwd=REPO,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            outputs = [p.communicate(timeout=seconds + 60) for p in procs]
        finally:
            stop.set()
            rotor.join()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        origin_stats = origin.stats
    reports = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-4000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))

    total = sum(r["measured_bytes"] for r in reports)
    span = max(r["measured_seconds"] for r in reports)
    summary = {
        "seconds": seconds,
        "processes": PROCESSES,
        "threads_per_process": THREADS,
        "data_bytes": FILES * FILE_SIZE,
        "ram_limit": RAM_LIMIT,
        "disk_limit": DISK_LIMIT,
        "chunk_size": CHUNK,
        "fault_rate": FAULT_RATE,
        "faults_injected": origin_stats.faults,
        "origin_requests": origin_stats.requests,
        "origin_bytes": origin_stats.bytes_sent,
        "ops": sum(r["ops"] for r in reports),
        "bytes_checked": sum(r["bytes"] for r in reports),
        "throughput_bytes_per_second": total / span if span > 0 else 0.0,
        "disk_bytes_at_end": _disk_bytes(cache_dir),
        "per_process": [
            {
                "rank": r["rank"],
                "rss_start": r["start"]["rss"],
                "rss_end": r["end"]["rss"],
                "rss_peak": r["peak_rss"],
                "fds_start": r["start"]["fds"],
                "fds_end": r["end"]["fds"],
                "fds_peak": r["peak_fds"],
                "fds_early_peak": r["early_peak_fds"],
                "maps_start": r["start"]["maps"],
                "maps_end": r["end"]["maps"],
                "record_fds_end": r["end"]["record_fds"],
                "record_fds_peak": r["peak_record_fds"],
                "map_limit": r["map_limit"],
                "kinds_end": r["end"]["kinds"],
                "errors": r["errors"],
            }
            for r in reports
        ],
    }
    (tmp_path / "soak.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsoak summary ({tmp_path / 'soak.json'}):")
    print(json.dumps(summary, indent=2))

    for r in reports:
        assert not r["errors"], r["errors"]
        assert r["ops"] > 0
        assert r["end"]["fds"] <= r["early_peak_fds"] + FD_SLACK, r
        assert r["end"]["dir_fds"] <= 257 + 8, r  # shards and tmp/, by design
        # Chunk maps, one descriptor each, within their bound (a reader
        # thread or the writer may hold one more while it maps or writes).
        assert r["peak_record_fds"] <= r["map_limit"] + 8, r
        assert r["end"]["rss"] <= r["start"]["rss"] + RSS_SLACK, r
    assert origin_stats.faults > 0  # the faults really happened
    # Budgets held: what is on disk at rest is within the shared budget.
    assert summary["disk_bytes_at_end"] <= DISK_LIMIT * 1.05 + PROCESSES * CHUNK
