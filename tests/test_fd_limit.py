"""Bounded descriptors: a warm cache of thousands of chunks under ``ulimit -n 256``.

CPython's ``mmap`` duplicates the file descriptor it maps, so every chunk a
process keeps mapped holds one. A reader of a warm cache must stay well under
its ``RLIMIT_NOFILE`` whatever the number of cached chunks, and whatever views
it keeps: a fresh process with a soft limit of 256 reads every file of a
warm cache of about 2,000 4 KiB chunks, holds hundreds of zero-copy views at
once, and checks every byte and its descriptor count.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from cachefs import CacheFileSystem

KiB = 2**10
CS = 4 * KiB
N_FILES = 40
FILE_SIZE = 50 * CS + 123  # 51 chunks each: 2,040 chunks in all
REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, os, sys
import fsspec

cache_dir, want_path = sys.argv[1], sys.argv[2]
want = json.load(open(want_path))
fs = fsspec.filesystem(
    "cachefs", target_protocol="file", cache_dir=cache_dir, chunk_size=4096,
    ram_limit=0, metadata_ttl=None, skip_instance_cache=True,
)
def fds():
    return len(os.listdir("/proc/self/fd"))
out = {"start_fds": fds(), "sha_ok": 0, "views_ok": 0}
# Every file, twice: whole-file reads and chunk-by-chunk file reads.
for path, digest in want.items():
    assert hashlib.sha256(fs.cat_file(path)).hexdigest() == digest, path
    with fs.open(path, "rb") as fh:
        parts = []
        while block := fh.read(4096):
            parts.append(block)
    assert hashlib.sha256(b"".join(parts)).hexdigest() == digest, path
    out["sha_ok"] += 1
out["after_reads_fds"] = fds()
# Hold zero-copy views of 400 different chunks at once: a consumer keeps
# their maps alive, and the cache must still bound its own descriptors.
held = []
for path in list(want)[:8]:
    with fs.open(path, "rb") as fh:
        for i in range(50):
            fh.seek(i * 4096)
            held.append((path, i, fh.read_view(4096)))
peak = fds()
for path, i, view in held:
    with open(path + ".orig", "rb") as fh:
        fh.seek(i * 4096)
        assert bytes(view) == fh.read(4096), (path, i)
    out["views_ok"] += 1
out["holding_fds"] = peak
del held, view
out["end_fds"] = fds()
print(json.dumps(out))
"""


def _limit_fds() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def test_a_warm_cache_of_thousands_of_chunks_reads_under_ulimit_256(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    want = {}
    for i in range(N_FILES):
        data = os.urandom(FILE_SIZE)
        path = origin / f"f{i:03d}.bin"
        path.write_bytes(data)
        # The child compares views against these copies (the origin is gone).
        (origin / f"f{i:03d}.bin.orig").write_bytes(data)
        want[str(path)] = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    fs = CacheFileSystem(
        target_protocol="file",
        cache_dir=str(cache),
        chunk_size=CS,
        metadata_ttl=None,
        skip_instance_cache=True,
    )
    for path in want:
        fs.cat_file(path)
    fs.wait_idle()
    n_chunks = sum(1 for p in (cache / "chunks").glob("*/*"))
    assert n_chunks == N_FILES * 51
    for path in want:  # from now on only the cache has the bytes
        os.unlink(path)
    want_path = tmp_path / "want.json"
    want_path.write_text(json.dumps(want))

    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache), str(want_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        preexec_fn=_limit_fds,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["sha_ok"] == N_FILES
    assert report["views_ok"] == 400
    # The cache keeps at most 256 // 4 = 64 maps and 256 // 8 = 32
    # directories open: far under the limit, even with 400 views held by the
    # reader.
    for name in ("after_reads_fds", "holding_fds", "end_fds"):
        assert report[name] - report["start_fds"] <= 64 + 32 + 8, report
