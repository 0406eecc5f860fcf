"""Reads under an address-space limit (``ulimit -v``), issue 19 item 6.

Batch systems often cap a job's address space. A child process sets
``RLIMIT_AS`` to what it already uses plus a headroom smaller than the data
set, then reads every file through a warm cache with ``ram_limit=32MiB``
(and ``prefetch_limit=64MiB``: the default 256 MiB of prefetched chunks
would not fit this headroom). The disk tier's maps must stay within a
budget of the room left (before, up to 256 chunk maps of 4 MiB were kept,
1 GiB of address space outside every budget, and ``mmap`` failed with
``ENOMEM``), and the bytes read must be exact.

The cold pass that fills the cache runs under the same limit. It failed
with ``MemoryError`` before: each ``file://`` read was a ``cat_file`` on the
loop's default executor, which grew a thread per concurrent read, each with
a glibc arena (64 MiB of address space) that kept the freed ranges. Local
reads now land by ``preadv`` in the chunks' own buffers (anonymous maps),
on the loop where the page cache holds the bytes, else on at most
``LOCAL_READS`` executor threads.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]
#: Address space the child may use beyond what it holds after its imports.
HEADROOM = 512 * MiB
FILES = 5
FILE_SIZE = 128 * MiB  # 640 MiB in all: more than the headroom

CHILD = r"""
import hashlib, json, resource, sys
import cachefs
from cachefs import CacheFileSystem
from cachefs.tiers.maps import MAPS

origin, cache, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
names = json.loads(sys.argv[4])

def vm_size():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

if headroom:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + headroom, hard))
fs = CacheFileSystem(
    target_protocol="file",
    cache_dir=cache,
    ram_limit="32MiB",
    prefetch_limit="64MiB",
    disk_limit="2GiB",
    chunk_size="4MiB",
    skip_instance_cache=True,
)
out = {}
buf = bytearray(MiB := 2**20)
view = memoryview(buf)
for name in names:
    digest = hashlib.sha1()
    with fs.open(f"{origin}/{name}", "rb") as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    out[name] = digest.hexdigest()
fs.wait_idle()
disk = fs.cache_stats()["disk"]
print(json.dumps({
    "sha": out,
    "mapped": MAPS.mapped,
    "refused": MAPS.refused,
    "checksum_failures": disk["checksum_failures"],
}))
"""


@pytest.fixture(scope="module")
def data_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Files of distinct bytes (each MiB differs), and their SHA-1s."""
    root = tmp_path_factory.mktemp("origin")
    base = bytes(range(256)) * (MiB // 256)
    sums = {}
    for i in range(FILES):
        name = f"part-{i}.bin"
        digest = hashlib.sha1()
        with open(root / name, "wb") as f:
            for m in range(FILE_SIZE // MiB):
                piece = (i * 1000 + m).to_bytes(8, "little") + base[8:]
                f.write(piece)
                digest.update(piece)
        sums[name] = digest.hexdigest()
    return root, sums


def _read_all(
    origin: Path, cache: Path, names: list[str], headroom: int
) -> dict[str, object]:
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(origin),
            str(cache),
            str(headroom),
            json.dumps(names),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=110,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return report


def test_reads_under_an_address_space_limit(data_set, tmp_path):
    origin, sums = data_set
    cache = tmp_path / "cache"
    names = sorted(sums)
    cold = _read_all(origin, cache, names, HEADROOM)
    assert cold["sha"] == sums
    assert cold["checksum_failures"] == 0
    warm = _read_all(origin, cache, names, HEADROOM)
    assert warm["sha"] == sums
    assert warm["checksum_failures"] == 0
    # The warm pass keeps its maps within the budget: a quarter of the room.
    assert isinstance(warm["mapped"], int)
    assert warm["mapped"] <= HEADROOM // 4
