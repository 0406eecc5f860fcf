"""A stopped lock holder holds up another process for one fetch's budget only.

Process A takes a cross-process lock through its own cache (a file's lock,
held while a new file's version is learned, or a chunk's stripe lock, held
while it is fetched) and is stopped with ``SIGSTOP``. Process B, with
``request_timeout=1, retries=1``, must read exact bytes after waiting about
one fetch's budget (2 s), not for as long as A stays stopped, and count the
wait it gave up (``router.waited_out``).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import time

import pytest

from cachefs.testing import HTTPOrigin, make_shards
from tests._drivers import spawn_driver

MiB = 2**20
STOPPED_AT_MOST = 30.0  # A stays stopped until B is done, or this long

# A: take the lock named on the command line, say so, then sit (stopped).
HOLDER = r"""
import json, sys, time
from cachefs import CacheFileSystem

args = json.loads(sys.argv[1])
fs = CacheFileSystem(target_protocol="http", cache_dir=args["cache_dir"],
                     chunk_size="1MiB", skip_instance_cache=True)
tpath = fs._target_path(args["url"])
if args["lock"] == "file":
    lock = fs.router.file_lock(fs.resolver.protocol, tpath)
else:
    fs.info(args["url"])  # learn the version only: no chunk is read
    version = fs.resolver.known(tpath)
    lock = fs.router.disk.stripe_lock(fs.resolver.keys(version, 0, 1)[0])
assert lock.try_acquire()
print("holding", flush=True)
time.sleep(120)
"""

# B: read the file whole with a tight fetch budget; report bytes and time.
READER = r"""
import hashlib, json, sys, time
from cachefs import CacheFileSystem

args = json.loads(sys.argv[1])
fs = CacheFileSystem(target_protocol="http", cache_dir=args["cache_dir"],
                     chunk_size="1MiB", skip_instance_cache=True,
                     request_timeout=1, retries=1)
began = time.monotonic()
data = fs.cat_file(args["url"])
took = time.monotonic() - began
fs.wait_idle()
print(json.dumps({"sha": hashlib.sha256(data).hexdigest(), "took": took,
                  "router": fs.cache_stats()["router"]}))
"""


def wait_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"holder did not take its lock within {timeout} s:\n{err}")
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("lock", ["file", "stripe"])
def test_a_stopped_lock_holder_costs_one_fetch_budget(tmp_path, lock):
    files = make_shards(1, 3 * MiB + 5, seed=31, prefix="stopped/")
    (name, data), *_ = files.items()
    with HTTPOrigin(files=files) as origin:
        args = {"cache_dir": str(tmp_path / "cache"), "url": origin.url_for(name)}
        holder = spawn_driver(HOLDER, {**args, "lock": lock})
        reader = None
        try:
            assert wait_line(holder, 60.0) == "holding"
            os.kill(holder.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            reader = spawn_driver(READER, args)
            try:
                # The old code waits as long as A is stopped: give up at 30 s.
                out, err = reader.communicate(timeout=STOPPED_AT_MOST)
            except subprocess.TimeoutExpired:
                pytest.fail(f"B waited {STOPPED_AT_MOST} s on a stopped A ({lock})")
            assert reader.returncode == 0, err
            waited = time.monotonic() - stopped
        finally:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.communicate()
            if reader is not None and reader.poll() is None:
                reader.kill()
                reader.communicate()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["sha"] == hashlib.sha256(data).hexdigest()
    assert report["router"]["waited_out"] >= 1
    # One budget is 2.1 s (two tries of 1 s, one backoff); 15 s is slack for
    # a busy machine, far below "as long as A stays stopped".
    assert report["took"] < 15.0, report
    print(f"{lock} lock: B read in {report['took']:.2f} s ({waited:.2f} s with start)")
