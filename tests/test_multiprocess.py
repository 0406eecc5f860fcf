"""Several real processes sharing one cache directory over a real HTTP origin.

Each child is a fresh interpreter (``subprocess``) that builds its own
``fsspec.filesystem("cachefs", ...)``; nothing is shared with the test process
but the cache directory and the origin. Children that must overlap wait for a
file flag, created once every child has signalled that it is ready.

The "second read from a new process costs no origin bytes" case lives in
``tests/test_filesystem.py::test_new_process_reads_from_disk``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachefs.chunks import FileVersion, version_token
from cachefs.policy import make_policy
from cachefs.testing import HTTPOrigin, make_shards
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.record import record_overhead

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0

# One child: build a cachefs filesystem, optionally wait for the "go" flag,
# read every URL whole, wait until the disk writes are done, report as JSON.
CHILD = r"""
import hashlib, json, os, sys, time
import fsspec

args = json.loads(sys.argv[1])
fs = fsspec.filesystem(
    "cachefs",
    target_protocol="http",
    cache_dir=args["cache_dir"],
    chunk_size="1MiB",
    skip_instance_cache=True,
    **args["options"],
)
if args.get("ready"):
    open(args["ready"], "x").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(args["go"]):
        if time.monotonic() > deadline:
            sys.exit("child: no go signal within 60 s")
        time.sleep(0.0005)
digests = {}
for url in args["urls"]:
    digests[url] = hashlib.sha256(fs.cat_file(url)).hexdigest()
fs.wait_idle()
stats = fs.cache_stats()
stats["disk"].pop("dirs", None)
print(json.dumps({
    "pid": os.getpid(),
    "digests": digests,
    "router": stats["router"],
    "disk": stats["disk"],
    "origin": stats["origin"],
}))
"""


# One child that stores one chunk in a DiskTier and exits.
CHILD_PUT = r"""
import sys
from cachefs.chunks import FileVersion
from cachefs.policy import make_policy
from cachefs.tiers.disk import DiskTier

root = sys.argv[1]
limit, size, index = (int(a) for a in sys.argv[2:5])
tier = DiskTier(root, limit, make_policy("lru"))
key = FileVersion("http", "/race.bin", 1 << 30, "tok").key(size, index)
assert tier.put(key, bytes([index % 256]) * size)
"""


def spawn(args: dict[str, Any] | list[str], code: str = CHILD) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    argv = args if isinstance(args, list) else [json.dumps(args)]
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed (rc={proc.returncode}):\n{err}"
    return json.loads(out.strip().splitlines()[-1])


def run_together(
    tmp_path: Path, jobs: list[dict[str, Any]], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Start one child per job, release them at once, return their reports."""
    go = tmp_path / "go"
    procs = []
    readies = []
    try:
        for i, job in enumerate(jobs):
            ready = tmp_path / f"ready-{i}"
            readies.append(ready)
            procs.append(spawn({**job, "ready": str(ready), "go": str(go)}))
        deadline = time.monotonic() + START_TIMEOUT
        while not all(r.exists() for r in readies):
            for p in procs:
                if p.poll() is not None:
                    _, err = p.communicate()
                    pytest.fail(f"child exited early (rc={p.returncode}):\n{err}")
            assert time.monotonic() < deadline, "children did not become ready"
            time.sleep(0.005)
        go.touch()
        return [finish(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def quiesce(origin: HTTPOrigin, timeout: float = 10.0) -> None:
    """Reset the origin's counters once no request is in flight.

    Responses still streaming to a killed child would otherwise be counted.
    """
    deadline = time.monotonic() + timeout
    while True:
        origin.reset_stats()  # max_concurrent restarts at the in-flight count
        if origin.max_concurrent == 0:
            return
        assert time.monotonic() < deadline, "origin requests did not drain"
        time.sleep(0.01)


def chunk_files(cache_dir: Path) -> list[Path]:
    return [p for p in (cache_dir / "chunks").rglob("*") if not p.is_dir()]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def big_origin() -> Iterator[tuple[HTTPOrigin, dict[str, bytes]]]:
    files = make_shards(1, 64 * MiB, seed=11, prefix="big/")
    with HTTPOrigin(files=files, latency=0.0) as server:
        yield server, files


@pytest.mark.slow
def test_single_flight_across_processes(tmp_path, big_origin):
    origin, files = big_origin
    ((name, data),) = files.items()
    url = origin.url_for(name)
    cache_dir = tmp_path / "cache"
    # Slow enough that the four readers' fetches overlap in time.
    origin.latency = 0.02
    origin.bandwidth = 8 * MiB
    job = {
        "cache_dir": str(cache_dir),
        "urls": [url],
        "options": {"max_coalesce": "4MiB"},
    }
    reports = run_together(tmp_path, [job] * 4)
    want = sha(data)
    for report in reports:
        assert report["digests"] == {url: want}
    sent = origin.stats.bytes_sent
    fills = [r["router"]["fills"] for r in reports]
    waited = sum(r["router"]["waited"] for r in reports)
    assert sent <= 1.25 * len(data), (sent, fills)
    assert sum(fills) * MiB <= 1.25 * len(data), fills
    # The readers really overlapped: some waited for a chunk another fetched.
    assert waited > 0, reports


@pytest.mark.slow
def test_sigkill_while_filling_leaves_no_bad_data(tmp_path, make_fs, cache_dir):
    files = make_shards(1, 32 * MiB, seed=12, prefix="slow/")
    ((name, data),) = files.items()
    chunks = len(data) // MiB
    with HTTPOrigin(files=files, latency=0.01) as origin:
        origin.bandwidth = 4 * MiB  # per connection: 4 of them give ~2 s
        url = origin.url_for(name)
        proc = spawn(
            {
                "cache_dir": str(cache_dir),
                "urls": [url],
                "options": {"max_coalesce": "1MiB", "max_requests": 4},
            }
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not cache_dir.exists() or len(chunk_files(cache_dir)) < 4:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "child stored no chunk"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        present = len(chunk_files(cache_dir))
        assert 4 <= present < chunks, "the kill did not land mid-fill"

        # A write the dead process had in progress: a partial chunk in tmp/.
        # One from a live process must be left alone.
        tmp = cache_dir / "tmp"
        dead = tmp / f"{'ab' * 20}.{proc.pid}.deadbeef"
        dead.write_bytes(b"CFSC" + data[: MiB // 2])
        live = tmp / f"{'cd' * 20}.{os.getppid()}.c0ffee00"
        live.write_bytes(b"CFSC" + data[:100])

        origin.bandwidth = None
        quiesce(origin)
        fs = make_fs(ram_limit=0)
        assert not dead.exists(), "tmp file of a dead pid was not cleaned"
        assert live.exists(), "tmp file of a live pid was removed"
        live.unlink()
        assert fs.cat_file(url) == data
        fs.wait_idle()
        # Stored chunks were trusted, exactly the missing ones were refetched.
        assert origin.stats.bytes_sent == (chunks - present) * MiB
        assert fs.cache_stats()["disk"]["checksum_failures"] == 0
        info = fs.info(url)

    assert sorted(os.listdir(cache_dir / "tmp")) == []
    # Every chunk file on disk verifies in a fresh tier and holds exact bytes.
    version = FileVersion("http", url, len(data), version_token(info))
    tier = DiskTier(cache_dir, 1 << 40, make_policy("lru"))
    for i in range(chunks):
        view = tier.get(version.key(MiB, i))
        assert view is not None, f"chunk {i} missing after the refill"
        assert view == data[i * MiB : (i + 1) * MiB], f"chunk {i} differs"
    assert tier.stats.checksum_failures == 0
    assert len(chunk_files(cache_dir)) == chunks


@pytest.mark.slow
def test_disk_budget_holds_across_processes(tmp_path):
    limit = 24 * MiB
    files = make_shards(9, 8 * MiB, seed=13, prefix="budget/")
    names = sorted(files)
    cache_dir = tmp_path / "cache"
    with HTTPOrigin(files=files, latency=0.0) as origin:
        jobs = [
            {
                "cache_dir": str(cache_dir),
                "urls": [origin.url_for(n) for n in names[i::3]],
                "options": {"disk_limit": limit},
            }
            for i in range(3)
        ]
        reports = run_together(tmp_path, jobs)
        for job, report in zip(jobs, reports, strict=True):
            want = {origin.url_for(n): sha(files[n]) for n in names}
            assert report["digests"] == {u: want[u] for u in job["urls"]}
    assert sum(len(d) for d in files.values()) >= 3 * limit
    on_disk = chunk_files(cache_dir)
    real = sum(p.lstat().st_size for p in on_disk)
    assert real <= 1.10 * limit, (real, limit)
    assert all(p.stat().st_size == record_overhead(MiB) + MiB for p in on_disk)
    assert sum(r["disk"]["evictions"] for r in reports) > 0
    usage = DiskTier(cache_dir, limit, make_policy("lru")).usage()
    assert usage == real, (usage, real)
    assert os.listdir(cache_dir / "tmp") == []


@pytest.mark.slow
def test_usage_counter_exact_when_publishes_race_an_eviction(tmp_path):
    """Two processes publish into a full tier at the same moment.

    A third process holds the flock on ``<root>/usage`` (what any process
    does while it publishes, counts or evicts) while both children start, so
    both queue for it; the first through goes over budget and evicts. The
    counter must equal the bytes on disk afterwards.
    """
    size = 64 * 1024
    entry = record_overhead(size) + size
    limit = 40 * entry
    root = tmp_path / "cache"
    tier = DiskTier(root, limit, make_policy("lru"))
    version = FileVersion("http", "/race.bin", 1 << 30, "tok")
    for i in range(40):
        assert tier.put(version.key(size, i), bytes([i]) * size)
    assert tier.usage() == limit
    new = [version.key(size, 100), version.key(size, 101)]
    with open(root / "usage", "rb+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        procs = [
            spawn([str(root), str(limit), str(size), str(k.index)], CHILD_PUT)
            for k in new
        ]
        try:
            # Both children write their temp file, then wait for the lock.
            deadline = time.monotonic() + START_TIMEOUT
            while len(list((root / "tmp").iterdir())) < len(new):
                for p in procs:
                    assert p.poll() is None, p.communicate()[1]
                assert time.monotonic() < deadline, "children wrote nothing"
                time.sleep(0.002)
            # Published only under the lock: nothing is visible yet.
            assert not any(tier.path_for(k.digest).exists() for k in new)
        finally:
            fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    real = sum(p.lstat().st_size for p in chunk_files(root))
    assert real <= limit
    assert DiskTier(root, limit, make_policy("lru")).usage() == real, (
        "usage counter drifted from the bytes on disk"
    )
