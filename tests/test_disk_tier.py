"""DiskTier on real files: round trips, atomic publishing, damage, budget, safety.

Chunk files are damaged in place with ordinary file operations, symlinks are
planted with ``os.symlink`` and a full disk is a real, tiny tmpfs mounted in a
private user+mount namespace (skipped where the kernel does not allow one).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cachefs import CacheFileSystem
from cachefs.chunks import ChunkKey, FileVersion, version_token
from cachefs.policy import make_policy
from cachefs.testing import HTTPOrigin, make_shards
from cachefs.tiers.disk import CHUNK_HEADER, DiskTier
from cachefs.tiers.record import record_overhead

MiB = 2**20
KiB = 2**10
REPO = Path(__file__).resolve().parents[1]
CS = 64 * KiB  # chunk size of the unit tests
ENTRY = record_overhead(CS) + CS  # bytes one full chunk occupies on disk


def tier_at(root: Path, limit: int = 64 * MiB) -> DiskTier:
    return DiskTier(root, limit, make_policy("lru"))


def version(name: str = "/x", size: int = 1 << 30, token: str = "tok") -> FileVersion:
    return FileVersion("http", name, size, token)


def payload(i: int, n: int = CS) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (n // 32) + b"\x5a" * (n % 32)


def chunk_files(root: Path) -> list[Path]:
    return [p for p in (root / "chunks").rglob("*") if not p.is_dir()]


def disk_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in chunk_files(root))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- round trip ---------------------------------------------------------------


def test_put_get_round_trip(tmp_path):
    tier = tier_at(tmp_path / "cache")
    v = version(size=2 * CS + 100)  # the last chunk is short
    keys = [v.key(CS, i) for i in range(3)]
    datas = [payload(0), payload(1), payload(2, 100)]
    for key, data in zip(keys, datas, strict=True):
        assert key.length == len(data)
        assert tier.put(key, data) is True
    for key, data in zip(keys, datas, strict=True):
        view = tier.get(key)
        assert isinstance(view, memoryview)
        assert view.readonly
        assert view == data
        with pytest.raises(TypeError):
            view[0] = 0
    # Misses: an absent index, another version, another chunk size.
    assert tier.get(v.key(CS, 3)) is None
    assert tier.get(version(size=2 * CS + 100, token="other").key(CS, 0)) is None
    assert tier.get(v.key(2 * CS, 0)) is None
    st = tier.stats
    assert (st.puts, st.put_bytes) == (3, sum(map(len, datas)))
    assert (st.hits, st.misses, st.checksum_failures) == (3, 3, 0)
    assert len(tier) == 3
    assert (
        tier.usage()
        == disk_bytes(tier.root)
        == sum(record_overhead(len(d)) + len(d) for d in datas)
    )
    for path in chunk_files(tier.root):
        assert mode(path) == 0o600
    # A bytearray or memoryview input is stored the same way.
    key = version().key(CS, 7)
    assert tier.put(key, memoryview(bytearray(payload(7))))
    assert tier_at(tier.root).get(key) == payload(7)


@pytest.mark.parametrize("direct", [False, True])
def test_chunks_are_published_atomically(tmp_path, direct):
    tier = DiskTier(
        tmp_path / "cache", 1 << 40, make_policy("lru"), direct_writes=direct
    )
    size = 256 * KiB
    # Written with O_DIRECT (where the filesystem takes it), the header is
    # padded to 4 KiB (format 6).
    full = record_overhead(size, aligned=tier.direct_writes) + size
    chunks_dir = tier.root / "chunks"
    stop = threading.Event()
    seen: set[str] = set()
    partial: list[tuple[str, int]] = []

    def watch() -> None:
        # Look at every file under chunks/ as fast as possible while puts run.
        while not stop.is_set():
            for shard in os.scandir(chunks_dir):
                with contextlib.suppress(FileNotFoundError), os.scandir(shard) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        seen.add(entry.name)
                        if st.st_size != full:
                            partial.append((entry.name, st.st_size))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        v = version()
        for i in range(150):
            assert tier.put(v.key(size, i), payload(i, size))
            assert os.listdir(tier.root / "tmp") == []
    finally:
        stop.set()
        watcher.join()
    assert partial == []
    assert len(seen) > 0
    files = chunk_files(tier.root)
    assert len(files) == 150
    for path in files:
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode)
        assert st.st_size == full
        assert st.st_nlink == 1  # the temporary name is gone
    assert tier.stats.checksum_failures == 0


# -- damage ---------------------------------------------------------------------


def _flip_payload_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        at = CHUNK_HEADER.size + (path.stat().st_size - CHUNK_HEADER.size) // 2
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def _truncate_payload(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1000)


def _truncate_header(path: Path) -> None:
    os.truncate(path, CHUNK_HEADER.size // 2)


def _overwrite_magic(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"XXXX")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped-payload-byte": _flip_payload_byte,
    "truncated-payload": _truncate_payload,
    "truncated-header": _truncate_header,
    "bad-magic": _overwrite_magic,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_chunk_is_dropped_by_a_fresh_tier(tmp_path, damage):
    root = tmp_path / "cache"
    tier = tier_at(root)
    v = version()
    good, bad = v.key(CS, 0), v.key(CS, 1)
    assert tier.put(good, payload(0))
    assert tier.put(bad, payload(1))
    path = tier.path_for(bad.digest)
    assert path.is_file()
    DAMAGE[damage](path)

    fresh = tier_at(root)  # a new process would see the file like this
    assert fresh.get(bad) is None
    assert not path.exists(), "a damaged chunk file was left on disk"
    assert fresh.stats.checksum_failures == 1
    assert fresh.get(good) == payload(0)  # the neighbour is unharmed
    assert fresh.get(bad) is None  # now a plain miss, not a second failure
    assert fresh.stats.checksum_failures == 1
    # Storing the chunk again makes it whole.
    assert fresh.put(bad, payload(1))
    assert tier_at(root).get(bad) == payload(1)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_chunk_is_refetched_through_the_filesystem(
    origin, shard_files, make_fs, cache_dir, damage
):
    name = sorted(shard_files)[0]
    data = shard_files[name]
    url = origin.url_for(name)
    fs = make_fs()
    assert fs.cat_file(url) == data
    fs.wait_idle()
    v = FileVersion("http", url, len(data), version_token(fs.info(url)))
    key = v.key(MiB, 1)
    path = tier_at(cache_dir).path_for(key.digest)
    assert path.is_file()
    DAMAGE[damage](path)

    origin.reset_stats()
    fresh = make_fs(ram_limit=0)  # nothing in RAM: the disk tier answers
    assert fresh.cat_file(url) == data
    fresh.wait_idle()
    assert fresh.cache_stats()["disk"]["checksum_failures"] == 1
    # Only the damaged chunk came from the origin again.
    assert origin.stats.bytes_sent == MiB
    check = tier_at(cache_dir)
    assert check.get(key) == data[MiB : 2 * MiB]
    assert check.stats.checksum_failures == 0


# -- directory safety ---------------------------------------------------------


def test_cache_dir_is_created_owner_only(origin, shard_files, tmp_path):
    root = tmp_path / "deep" / "cache"
    old = os.umask(0)  # the modes must not depend on a restrictive umask
    try:
        tier = tier_at(root)
        assert tier.put(version().key(CS, 0), payload(0))
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "fs-cache"),
            chunk_size="1MiB",
            skip_instance_cache=True,
        )
        name = sorted(shard_files)[0]
        assert fs.cat_file(origin.url_for(name)) == shard_files[name]
        fs.wait_idle()
    finally:
        os.umask(old)
    for base in (root, tmp_path / "fs-cache"):
        assert mode(base) == 0o700
        for dirpath, dirnames, filenames in os.walk(base):
            for d in dirnames:
                assert mode(Path(dirpath) / d) == 0o700, Path(dirpath) / d
            for f in filenames:
                p = Path(dirpath) / f
                assert not mode(p) & 0o077, f"{p} is readable by others"


def test_symlinked_cache_dir_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    link = tmp_path / "cache"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(OSError, match=str(link)):
        tier_at(link)
    with pytest.raises(OSError, match=str(link)):
        CacheFileSystem(
            target_protocol="http", cache_dir=str(link), skip_instance_cache=True
        )
    assert os.listdir(real) == []  # nothing was created through the link
    # A subdirectory replaced by a symlink is refused as well.
    root = tmp_path / "ok"
    tier_at(root)
    shutil.rmtree(root / "chunks")
    (root / "chunks").symlink_to(real, target_is_directory=True)
    with pytest.raises(OSError, match="chunks"):
        tier_at(root)
    assert os.listdir(real) == []


def test_symlink_at_chunk_path_is_not_followed_on_write(tmp_path):
    tier = tier_at(tmp_path / "cache")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    key = version().key(CS, 0)
    path = tier.path_for(key.digest)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.symlink_to(victim)
    tier.put(key, payload(0))
    assert victim.read_bytes() == b"precious"
    view = tier.get(key)
    assert view is None or view == payload(0)
    assert victim.read_bytes() == b"precious"
    # Once the planted link is gone the chunk is stored for real.
    assert tier.put(key, payload(0))
    assert tier_at(tier.root).get(key) == payload(0)
    assert not path.is_symlink()
    assert victim.read_bytes() == b"precious"


def test_symlink_at_chunk_path_is_not_followed_on_read(tmp_path):
    key = version().key(CS, 0)
    # A genuine, valid chunk file, but outside the cache directory.
    donor = tier_at(tmp_path / "donor")
    assert donor.put(key, payload(0))
    outside = tmp_path / "outside-chunk"
    shutil.copyfile(donor.path_for(key.digest), outside)
    before = outside.read_bytes()

    root = tmp_path / "cache"
    tier_at(root)
    path = tier_at(root).path_for(key.digest)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.symlink_to(outside)
    fresh = tier_at(root)
    assert fresh.get(key) is None
    assert outside.read_bytes() == before


@pytest.mark.parametrize("case", ["write", "read-and-discard"])
def test_symlinked_shard_dir_is_not_followed(tmp_path, case):
    """A symlink in place of ``chunks/<xx>/`` must not lead outside the cache."""
    root = tmp_path / "cache"
    tier = tier_at(root)
    key = version().key(CS, 0)
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = tier.path_for(key.digest).parent
    shard.symlink_to(outside, target_is_directory=True)
    if case == "write":
        tier.put(key, payload(0))
        assert os.listdir(outside) == [], "a chunk was written outside cache_dir"
    else:
        precious = outside / key.digest
        precious.write_bytes(b"precious, not a chunk")
        fresh = tier_at(root)
        view = fresh.get(key)
        assert view is None or view == payload(0)
        fresh.discard(key)
        assert precious.exists(), "a file outside cache_dir was deleted"
        assert precious.read_bytes() == b"precious, not a chunk"


# -- budget -------------------------------------------------------------------


def _sleep_past_mtime_granularity() -> None:
    # File times come from the kernel's coarse clock (a few ms per tick);
    # recency is the file mtime, so entries must differ by more than a tick.
    time.sleep(0.03)


def test_budget_evicts_least_recently_used(tmp_path):
    # Five chunks fit; the sixth goes over and eviction to the 95 % low
    # watermark then removes exactly one.
    limit = 5 * ENTRY + ENTRY // 2
    tier = tier_at(tmp_path / "cache", limit)
    v = version()
    keys = [v.key(CS, i) for i in range(8)]
    for i in range(5):
        assert tier.put(keys[i], payload(i))
        _sleep_past_mtime_granularity()
    assert tier.usage() == 5 * ENTRY
    assert tier.get(keys[0]) == payload(0)  # touch the oldest: now the newest
    _sleep_past_mtime_granularity()
    assert tier.put(keys[5], payload(5))  # over budget: evict to 95 %
    present = [tier.path_for(k.digest).exists() for k in keys[:6]]
    assert present == [True, False, True, True, True, True]
    assert tier.stats.evictions == 1
    assert tier.usage() == disk_bytes(tier.root) <= limit
    # A fresh tier (another process) sees and reads the same survivors.
    other = tier_at(tier.root, limit)
    assert [other.get(k) is not None for k in keys[:6]] == present
    assert other.get(keys[0]) == payload(0)


def test_budget_holds_while_putting_far_more_than_the_limit(tmp_path):
    limit = 6 * ENTRY + ENTRY // 2
    tier = tier_at(tmp_path / "cache", limit)
    v = version()
    keys = [v.key(CS, i) for i in range(20)]
    for i, key in enumerate(keys):
        assert tier.put(key, payload(i))
        assert tier.usage() <= limit
        assert tier.usage() == disk_bytes(tier.root)
        _sleep_past_mtime_granularity()
    survivors = [k.index for k in keys if tier.path_for(k.digest).exists()]
    assert survivors == list(range(20 - len(survivors), 20))  # the newest ones
    assert len(survivors) >= 5
    assert tier.stats.evictions == 20 - len(survivors)
    for i in survivors:
        assert tier.get(keys[i]) == payload(i)


def test_chunk_larger_than_the_budget_is_rejected(tmp_path):
    tier = tier_at(tmp_path / "cache", limit=CS)  # the header does not fit
    key = version().key(CS, 0)
    assert tier.put(key, payload(0)) is False
    assert tier.stats.rejected == 1
    assert tier.get(key) is None
    assert chunk_files(tier.root) == []
    assert tier.usage() == 0


def test_chunks_survive_a_restart(tmp_path):
    root = tmp_path / "cache"
    tier = tier_at(root)
    v = version()
    keys: list[ChunkKey] = [v.key(CS, i) for i in range(6)]
    for i, key in enumerate(keys):
        assert tier.put(key, payload(i))
    usage = tier.usage()
    del tier
    again = tier_at(root)
    assert len(again) == 6
    assert again.usage() == usage == disk_bytes(root)
    for i, key in enumerate(keys):
        assert again.get(key) == payload(i)
    assert again.stats.checksum_failures == 0


# -- a full disk --------------------------------------------------------------

# Runs inside a private mount namespace whose cache_dir is a tiny tmpfs.
FULL_CHILD = r"""
import hashlib, json, sys, warnings
import fsspec

url, cache_dir = sys.argv[1], sys.argv[2]
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fs = fsspec.filesystem(
        "cachefs", target_protocol="http", cache_dir=cache_dir,
        chunk_size="1MiB", max_coalesce="1MiB", skip_instance_cache=True,
    )
    try:
        for attempt in range(2):
            out[f"sha{attempt}"] = hashlib.sha256(fs.cat_file(url)).hexdigest()
        fs.wait_idle()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    disk = fs.cache_stats()["disk"]
    out["disk"] = {k: disk[k] for k in ("puts", "rejected")}
out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
print(json.dumps(out))
"""


def _run_on_tmpfs(
    mnt: Path, options: str, argv: list[str]
) -> subprocess.CompletedProcess[str]:
    script = 'mount -t tmpfs -o "$1" cachefs-test "$2" && shift 2 && exec "$@"'
    return subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            script,
            "sh",
            options,
            str(mnt),
            *argv,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def tiny_tmpfs(
    tmp_path,
) -> Callable[[str, list[str]], subprocess.CompletedProcess[str]]:
    """Run a command with a fresh tmpfs (mount options given) at ``tmp_path/mnt``."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = _run_on_tmpfs(mnt, "size=1m", ["true"])
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}")
    return lambda options, argv: _run_on_tmpfs(mnt, options, argv)


@pytest.fixture
def big_file_origin():
    files = make_shards(1, 8 * MiB + 5, seed=21, prefix="full/")
    with HTTPOrigin(files=files) as server:
        ((name, data),) = files.items()
        yield server.url_for(name), data


@pytest.mark.parametrize(
    "options",
    [
        pytest.param("size=3m", id="no-space"),
        pytest.param("size=64m,nr_inodes=14", id="no-inodes"),
    ],
)
def test_full_disk_degrades_to_pass_through(
    tiny_tmpfs, big_file_origin, options, tmp_path
):
    url, data = big_file_origin
    cache_dir = tmp_path / "mnt" / "cache"
    run = tiny_tmpfs(options, [sys.executable, "-c", FULL_CHILD, url, str(cache_dir)])
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in report, report
    want = hashlib.sha256(data).hexdigest()
    assert report["sha0"] == report["sha1"] == want
    assert report["disk"]["rejected"] > 0  # the disk really was full
    full = [w for w in report["warnings"] if "is full" in w]
    assert len(full) == 1, report["warnings"]  # warned once, not per chunk
    assert str(cache_dir) in full[0]


def test_a_forked_child_does_not_keep_the_parents_locks(tmp_path):
    """flock is shared with a forked child; the child must drop its copies."""
    tier = DiskTier(tmp_path / "cache", 1 << 20, make_policy("lru"))
    key = FileVersion("http", "/fork.bin", 10, "tok").key(4, 0)
    lock = tier.stripe_lock(key)
    assert lock.try_acquire()
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives on, like a persistent DataLoader worker
        os.close(write_end)
        os.write(ready_write, b"r")  # fork handlers have run by now
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    assert os.read(ready_read, 1) == b"r"
    try:
        lock.release()
        again = tier.stripe_lock(key)
        assert again.try_acquire(), "the child kept the parent's lock"
        again.release()
    finally:
        os.write(write_end, b"x")
        os.close(write_end)
        os.waitpid(pid, 0)


# Runs inside a private mount namespace whose cache_dir is a tiny tmpfs: fills
# it (ENOSPC), then remounts it read-only (EROFS).
REFUSAL_CHILD = r"""
import errno, json, logging, subprocess, sys, warnings
from cachefs.chunks import FileVersion
from cachefs.policy import make_policy
from cachefs.tiers.disk import DiskTier

mnt = sys.argv[1]
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("cachefs").addHandler(Keep())
logging.getLogger("cachefs").setLevel(logging.WARNING)
warnings.simplefilter("ignore")
tier = DiskTier(mnt + "/cache", 1 << 30, make_policy("lru"))
version = FileVersion("http", "/refused", 1 << 30, "t")
out = {"stored": 0}
for i in range(64):  # 4 MiB into a 1 MiB tmpfs
    out["stored"] += tier.put(version.key(65536, i), bytes(65536))
out["full"] = [tier.last_refusal.errno, tier.stats.rejected]
subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
for i in range(64, 68):
    tier.put(version.key(65536, i), bytes(65536))
out["readonly"] = tier.last_refusal.errno
out["logged"] = records
print(json.dumps(out))
"""


def test_refused_writes_are_logged_once_per_errno(tiny_tmpfs, tmp_path):
    mnt = tmp_path / "mnt"
    run = tiny_tmpfs("size=1m", [sys.executable, "-c", REFUSAL_CHILD, str(mnt)])
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < report["stored"] < 64
    assert report["full"][0] == errno.ENOSPC
    assert report["full"][1] == 64 - report["stored"]
    assert report["readonly"] == errno.EROFS
    refused = [m for m in report["logged"] if "refused a chunk write" in m]
    assert len(refused) == 2, report["logged"]  # once per cause, not per chunk
    assert f"errno {errno.ENOSPC}" in refused[0]
    assert f"errno {errno.EROFS}" in refused[1]
