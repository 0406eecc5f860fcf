"""A fork while a chunk is being published holds up nobody.

``flock`` locks belong to the open file description, which a forked child
shares. A child that kept a copy of a descriptor its parent holds a lock on
(the usage counter's, during a publish) would hold that lock once the
parent closes its own: the child's writers, and every process of the node
that publishes, would block for as long as the child lives. Every lock
descriptor is closed in the child (:func:`cachefs.bridge.open_lock_fd`).

Each scenario runs in a driver process of its own session (it forks), under
a timeout: a hang fails in seconds and its processes are killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from cachefs.testing import HTTPOrigin, make_shards
from tests._drivers import spawn_driver

KiB = 2**10
MiB = 2**20

# Shared by the drivers: build a cache over the origin, read a URL cold and
# check its bytes against the digests the test gives.
COMMON = r"""
import hashlib, json, os, sys, threading, time
from cachefs import CacheFileSystem

args = json.loads(sys.argv[1])
fs = CacheFileSystem(
    target_protocol="http",
    cache_dir=args["cache_dir"],
    chunk_size=args["chunk_size"],
    skip_instance_cache=True,
)
disk = fs.router.disks[0]

def read_exact(url):
    data = fs.cat_file(url)
    return hashlib.sha256(data).hexdigest() == args["digests"][url]

def reap(pid, within):
    # Wait for a child at most `within` seconds; kill it if it hangs.
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"
"""

# A fork aimed inside a publish: a thread holds the usage lock (as a writer
# does while it links a chunk into place) when the main thread forks.
AIMED = (
    COMMON
    + r"""
held, go = threading.Event(), threading.Event()

def writer():
    with disk._usage.locked():
        held.set()
        go.wait()

thread = threading.Thread(target=writer)
thread.start()
held.wait()
pid = os.fork()
if pid == 0:
    ok = read_exact(args["child_url"])
    fs.wait_idle()
    os._exit(0 if ok and len(disk) >= 1 else 1)
go.set()  # the writer closes its descriptor: the lock must go with it
thread.join()
began = time.monotonic()
ok = read_exact(args["parent_url"])
fs.wait_idle()
parent_took = time.monotonic() - began
child = reap(pid, args["bound"])
print(json.dumps({"parent_ok": ok, "parent_took": parent_took, "child": child,
                  "chunks": len(disk)}))
"""
)

# Forks not aimed: a thread reads cold files in a loop while the main thread
# forks children that read cold files too.
RANDOM = (
    COMMON
    + r"""
urls = args["urls"]
stop = threading.Event()
bad = []

def reader():
    for url in urls[: len(urls) // 2]:
        if stop.is_set():
            break
        if not read_exact(url):
            bad.append(url)

thread = threading.Thread(target=reader)
thread.start()
children, slowest = [], 0.0
theirs = urls[len(urls) // 2 :]
for n in range(args["forks"]):
    time.sleep(0.001 * (n % 7))
    mine = theirs[2 * n : 2 * n + 2]
    began = time.monotonic()
    pid = os.fork()
    if pid == 0:
        ok = all(read_exact(u) for u in mine)
        fs.wait_idle()
        os._exit(0 if ok else 1)
    code = reap(pid, args["bound"])
    slowest = max(slowest, time.monotonic() - began)
    children.append(code)
    if code != 0:
        break  # one hung child is the answer: fail fast
stop.set()
thread.join()
fs.wait_idle()
print(json.dumps({"children": children, "slowest": slowest, "bad": bad}))
"""
)


def run_driver(code: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``code`` in its own session; kill the whole session on a hang."""
    proc = spawn_driver(code, args, new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"driver hung for {timeout} s: a lock kept across fork?")
    finally:
        # Forked children outlive a killed driver: end the session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def digests(origin: HTTPOrigin, files: dict[str, bytes]) -> dict[str, str]:
    return {origin.url_for(n): hashlib.sha256(d).hexdigest() for n, d in files.items()}


def test_a_fork_inside_a_publish_blocks_neither_child_nor_parent(tmp_path):
    files = make_shards(2, 1 * MiB + 7, seed=21, prefix="aimed/")
    with HTTPOrigin(files=files) as origin:
        urls = sorted(digests(origin, files))
        began = time.monotonic()
        report = run_driver(
            AIMED,
            {
                "cache_dir": str(tmp_path / "cache"),
                "chunk_size": "1MiB",
                "digests": digests(origin, files),
                "child_url": urls[0],
                "parent_url": urls[1],
                "bound": 10.0,
            },
            timeout=30.0,
        )
        took = time.monotonic() - began
    assert report["child"] == 0, report  # read exact bytes, published, exited
    assert report["parent_ok"], report
    assert report["parent_took"] < 10.0, report
    assert report["chunks"] == 4  # two chunks of each file, on disk
    print(f"aimed fork: {took:.2f} s, parent's publish {report['parent_took']:.2f} s")


def test_forks_while_a_thread_reads_cold_files_all_finish(tmp_path):
    forks = 30
    files = make_shards(2 * 2 * forks, 192 * KiB, seed=22, prefix="forks/")
    with HTTPOrigin(files=files) as origin:
        began = time.monotonic()
        report = run_driver(
            RANDOM,
            {
                "cache_dir": str(tmp_path / "cache"),
                "chunk_size": "64KiB",
                "digests": digests(origin, files),
                "urls": sorted(digests(origin, files)),
                "forks": forks,
                "bound": 10.0,
            },
            timeout=90.0,
        )
        took = time.monotonic() - began
    assert report["children"] == [0] * forks, report
    assert not report["bad"], report
    print(f"{forks} forks: {took:.2f} s, slowest child {report['slowest']:.2f} s")
