"""Cross-node single flight: four "nodes" (separate processes, separate disk
tiers) share one shared tier and read the same file at once; each chunk
comes from the origin about once. Origin traffic is measured at the origin
(a real HTTP server on loopback); the shared tier is a real directory or a
real bucket on moto's S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cachefs.testing import HTTPOrigin

pytest_plugins = ("tests.s3_server",)

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]
SIZE = 64 * MiB

# A node: waits for the common start time, reads the file whole, reports.
NODE = """
import hashlib, json, sys, time
from cachefs import CacheFileSystem
url, cache_dir, shared, lease, start = json.loads(sys.argv[1])
fs = CacheFileSystem(target_protocol="http", cache_dir=cache_dir, shared=shared,
                     chunk_size="1MiB", shared_lease=lease, skip_instance_cache=True)
fs.info(url)
time.sleep(max(0.0, start - time.time()))
t0 = time.monotonic()
digest = hashlib.sha256(fs.cat_file(url)).hexdigest()
elapsed = time.monotonic() - t0
fs.wait_idle()
print(json.dumps({"digest": digest, "elapsed": elapsed, "stats": fs.cache_stats()}))
"""


def start_node(
    url: str, cache_dir: Path, shared: str | dict[str, Any], lease: float, start: float
) -> subprocess.Popen[str]:
    args = json.dumps([url, str(cache_dir), shared, lease, start])
    return subprocess.Popen(
        [sys.executable, "-c", NODE, args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def run_cluster(
    origin: HTTPOrigin, tmp_path: Path, shared: str | dict[str, Any], nodes: int = 4
) -> list[dict[str, Any]]:
    url = origin.url_for("big.bin")
    start = time.time() + 3.0  # every node imported and ready: then all at once
    procs = [
        start_node(url, tmp_path / f"node-{i}", shared, 30.0, start)
        for i in range(nodes)
    ]
    return [finish(p) for p in procs]


@pytest.fixture(scope="module")
def big() -> bytes:
    return os.urandom(SIZE)


def check_single_flight(results: list[dict[str, Any]], origin: HTTPOrigin, big: bytes):
    want = hashlib.sha256(big).hexdigest()
    assert [r["digest"] for r in results] == [want] * len(results)
    ratio = origin.stats.bytes_sent / len(big)
    waits = sum(r["stats"]["shared"]["lease_waits"] for r in results)
    leases = sum(r["stats"]["shared"]["leases"] for r in results)
    print(f"origin bytes / file = {ratio:.3f}; leases {leases}, waits {waits}")
    assert ratio <= 1.25
    assert leases >= SIZE // MiB  # each chunk was leased by someone
    assert waits > 0  # and the nodes did meet on the same chunks


def test_four_nodes_fetch_each_chunk_once_via_a_directory(big, tmp_path):
    shared = f"file://{tmp_path / 'shared'}"
    with HTTPOrigin(files={"big.bin": big}, latency=0.05) as origin:
        results = run_cluster(origin, tmp_path, shared)
        check_single_flight(results, origin, big)
    assert not list((tmp_path / "shared" / "leases").iterdir())  # all released


def test_four_nodes_fetch_each_chunk_once_via_s3(big, tmp_path, s3_server, s3_bucket):
    shared = {
        "protocol": "s3",
        "root": f"{s3_bucket}/cache",
        "options": s3_server.target_options,
    }
    with HTTPOrigin(files={"big.bin": big}, latency=0.05) as origin:
        results = run_cluster(origin, tmp_path, shared)
        check_single_flight(results, origin, big)
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="cache/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert not [k for k in keys if k.startswith("cache/leases/")]  # all released


def test_a_killed_lease_holder_delays_the_others_by_the_lease_time(big, tmp_path):
    lease = 2.0
    shared_dir = tmp_path / "shared"
    shared = f"file://{shared_dir}"
    data = big[: 16 * MiB]
    with HTTPOrigin(files={"big.bin": data}, bandwidth=1000) as origin:
        url = origin.url_for("big.bin")
        # The doomed node: its origin reads crawl, so it holds its leases.
        doomed = start_node(url, tmp_path / "doomed", shared, lease, 0.0)
        leases = shared_dir / "leases"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if leases.is_dir() and len(list(leases.iterdir())) >= 16:
                break
            time.sleep(0.05)
        else:
            doomed.kill()
            pytest.fail(f"no leases taken: {doomed.communicate()[1]}")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.communicate(timeout=30)
        killed = time.time()
        origin.bandwidth = None
        start = time.time() + 1.0
        procs = [
            start_node(url, tmp_path / f"node-{i}", shared, lease, start)
            for i in range(3)
        ]
        results = [finish(p) for p in procs]
    want = hashlib.sha256(data).hexdigest()
    assert [r["digest"] for r in results] == [want] * 3
    elapsed = [r["elapsed"] for r in results]
    # The dead node's leases were met, and taken over once expired.
    assert start - killed < lease
    assert sum(r["stats"]["shared"]["lease_takeovers"] for r in results) > 0
    print(f"survivors' read times: {[round(e, 2) for e in elapsed]} s")
    assert max(elapsed) <= lease + 1.5


def test_engines_without_an_atomic_create_get_no_leases(tmp_path):
    from cachefs import CacheFileSystem
    from cachefs.tiers.lease import lease_kind

    assert lease_kind("file") == "link"
    assert lease_kind("s3") == "conditional-put"
    assert lease_kind("memory") is None and lease_kind("gcs") is None
    fs = CacheFileSystem(
        target_protocol="memory",
        cache_dir=str(tmp_path / "c"),
        shared="memory://shared-no-leases",
        skip_instance_cache=True,
    )
    fs.pipe_file("/y.bin", b"abc" * 5000)
    assert fs.cat_file("/y.bin") == b"abc" * 5000  # as before: fetched, published
    fs.wait_idle()
    stats = fs.cache_stats()["shared"]
    assert stats["puts"] == 1 and stats["leases"] == 0 and stats["errors"] == 0
    with pytest.raises(ValueError, match="shared_lease"):
        CacheFileSystem(
            target_protocol="memory",
            shared=str(tmp_path / "s"),
            shared_lease=-1,
            skip_instance_cache=True,
        )


def test_a_slow_lease_holder_renews_its_lease_and_fetches_once(tmp_path):
    """The origin answers after 2.5 s, longer than the 1 s lease: the holder
    renews its lease while it fetches, so the other node waits for it
    instead of taking the lease over; the chunk leaves the origin once (the
    old code let the lease expire and fetched it twice)."""
    lease = 1.0
    data = os.urandom(MiB)  # one chunk
    shared = f"file://{tmp_path / 'shared'}"
    with HTTPOrigin(files={"one.bin": data}, latency=2.5) as origin:
        url = origin.url_for("one.bin")
        start = time.time() + 10.0  # imported, info() done (2.5 s): then both
        procs = [
            start_node(url, tmp_path / f"node-{i}", shared, lease, start)
            for i in range(2)
        ]
        results = [finish(p) for p in procs]
        sent = origin.stats.bytes_sent
    want = hashlib.sha256(data).hexdigest()
    assert [r["digest"] for r in results] == [want] * 2
    stats = [r["stats"]["shared"] for r in results]
    print(f"slow holder: reads took {[round(r['elapsed'], 2) for r in results]} s")
    assert sent == len(data)  # fetched once, not twice
    assert sum(s["leases"] for s in stats) == 1
    assert sum(s["lease_renewals"] for s in stats) >= 2
    assert sum(s["lease_takeovers"] for s in stats) == 0
    assert sum(s["lease_waits"] for s in stats) == 1  # and it waited
