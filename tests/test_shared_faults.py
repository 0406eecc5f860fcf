"""The shared tier under faults: a read-only or full directory, an S3
endpoint that accepts connections and never answers, a FIFO or a directory
at a record's path. Each costs a read at most one ``request_timeout``
(never the lease time, never forever), the bytes are exact, and the fault
is counted. The parts are real: tmpfs mounts (we run as root), a loopback
socket that never answers used as the S3 endpoint, moto's S3 server behind
a loopback proxy that can black-hole it, node processes reading over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachefs.chunks import ChunkKey, FileVersion
from cachefs.testing import HTTPOrigin
from cachefs.tiers.shared import SharedTier

pytest_plugins = ("tests.s3_server",)

KiB = 1024
REPO = Path(__file__).resolve().parents[1]
CHUNK = 256_000
SIZE = 4 * CHUNK  # four chunks: a 4-chunk cat_file, as in the issue

# A node: reads each URL whole, timing each read; waits for its publishes.
NODE = """
import hashlib, json, sys, time
from cachefs import CacheFileSystem
urls, cache_dir, shared, lease, timeout = json.loads(sys.argv[1])
fs = CacheFileSystem(target_protocol="http", cache_dir=cache_dir, shared=shared,
                     chunk_size="256kB", shared_lease=lease, request_timeout=timeout,
                     skip_instance_cache=True)
for url in urls:
    fs.info(url)
out = {"digests": [], "elapsed": []}
for url in urls:
    t0 = time.monotonic()
    out["digests"].append(hashlib.sha256(fs.cat_file(url)).hexdigest())
    out["elapsed"].append(time.monotonic() - t0)
t0 = time.monotonic()
fs.wait_idle(timeout=60)
out["idle"] = time.monotonic() - t0
out["stats"] = fs.cache_stats()
print(json.dumps(out))
"""


def run_node(
    urls: list[str],
    cache_dir: Path,
    shared: str | dict[str, Any],
    *,
    lease: float = 30.0,
    timeout: float = 1.0,
) -> tuple[dict[str, Any], list[str]]:
    """Run a node; return its report and the cachefs lines it logged."""
    args = json.dumps([urls, str(cache_dir), shared, lease, timeout])
    # 60 s: the old code took 30-150 s or hung; the new one takes seconds.
    done = subprocess.run(
        [sys.executable, "-c", NODE, args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    logged = [line for line in done.stderr.splitlines() if "cachefs:" in line]
    return json.loads(done.stdout), logged


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def files() -> dict[str, bytes]:
    return {f"f{i}.bin": os.urandom(SIZE) for i in range(2)}


@pytest.fixture
def origin(files: dict[str, bytes]) -> Iterator[HTTPOrigin]:
    with HTTPOrigin(files=files) as server:
        yield server


# -- tmpfs mounts --------------------------------------------------------------


def mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at teardown."""
    points: list[Path] = []
    yield points
    for point in points:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_read_only_shared_directory_reads_from_the_origin_at_once(
    files, origin, tmp_path, mounts
):
    """A lease that cannot be written is a fault, not a lease held by another
    node: the read goes to the origin at once (the old code waited the whole
    lease time, 30 s here), and the fault is counted and logged once."""
    shared = tmp_path / "ro"
    mount_tmpfs(shared, "size=1m,ro")
    mounts.append(shared)
    urls = [origin.url_for(n) for n in sorted(files)]
    report, logged = run_node(urls, tmp_path / "node", f"file://{shared}")
    print(f"read-only shared dir: reads took {report['elapsed']} s")
    assert report["digests"] == [sha(files[n]) for n in sorted(files)]
    assert max(report["elapsed"]) < 10  # lease time 30 s: not waited for
    assert origin.stats.bytes_sent == 2 * SIZE
    stats = report["stats"]["shared"]
    assert stats["lease_failures"] >= 1
    assert stats["leases"] == 0 and stats["lease_waits"] == 0
    assert stats["puts"] == 0 and stats["errors"] >= 1
    # Logged once for the leases, once for the publishes: not per chunk.
    assert len([x for x in logged if "lease" in x]) == 1, logged
    assert len([x for x in logged if "publishing" in x]) == 1, logged


def test_full_shared_directory_reads_at_once_and_leaves_no_temporary_files(
    files, origin, tmp_path, mounts
):
    shared = tmp_path / "full"
    mount_tmpfs(shared, "size=64k")
    mounts.append(shared)
    fd = os.open(shared / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: the tmpfs is full
    finally:
        os.close(fd)
    urls = [origin.url_for(n) for n in sorted(files)]
    report, _ = run_node(urls, tmp_path / "node", f"file://{shared}")
    print(f"full shared dir: reads took {report['elapsed']} s")
    assert report["digests"] == [sha(files[n]) for n in sorted(files)]
    assert max(report["elapsed"]) < 10
    assert origin.stats.bytes_sent == 2 * SIZE
    stats = report["stats"]["shared"]
    assert stats["lease_failures"] >= 1 and stats["lease_waits"] == 0
    assert stats["puts"] == 0
    left = [p for p in shared.rglob("*") if p.is_file() and p.name != "filler"]
    assert left == []  # no leases/*.tmp, no tmp/* records


# -- an S3 endpoint that never answers ---------------------------------------


class BlackHole:
    """A loopback TCP port that accepts connections and never answers.

    With ``forward_to`` set and :attr:`open` true, connections are piped
    to that address instead (a proxy that can be black-holed).
    """

    def __init__(self, forward_to: tuple[str, int] | None = None) -> None:
        self.forward_to = forward_to
        self.open = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(conn)
            if self.open and self.forward_to is not None:
                upstream = socket.create_connection(self.forward_to)
                self._held.append(upstream)
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(
                        target=self._pipe, args=(a, b), daemon=True
                    ).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def hole() -> Iterator[BlackHole]:
    server = BlackHole()
    yield server
    server.close()


@pytest.mark.parametrize("lease", [30.0, 0.0], ids=["leases-on", "leases-off"])
def test_black_holed_s3_shared_tier_costs_one_timeout(
    files, origin, tmp_path, hole, lease
):
    """Every call to the shared tier is bounded by request_timeout (1 s);
    after one timeout the tier is skipped: the second file's read waits for
    no timeout (its lookups are counted as skipped, and no more timeouts
    are counted), and publishing does not hold up wait_idle. The old code
    never returned (150 s seen)."""
    shared = {
        "protocol": "s3",
        "root": "bucket/cache",
        "options": {
            "key": "k",
            "secret": "s",
            "client_kwargs": {"endpoint_url": hole.url},
        },
    }
    urls = [origin.url_for(n) for n in sorted(files)]
    report, logged = run_node(urls, tmp_path / "node", shared, lease=lease, timeout=1.0)
    first, second = report["elapsed"]
    print(f"black-holed S3 ({lease=}): reads took {first:.2f}, {second:.2f} s, "
          f"wait_idle {report['idle']:.2f} s")  # fmt: skip
    assert report["digests"] == [sha(files[n]) for n in sorted(files)]
    assert first < 10  # one timeout (1 s) and the origin
    assert second < 3  # skipped: no timeout waited (counted below: <= 4 in all)
    assert report["idle"] < 5
    assert origin.stats.bytes_sent == 2 * SIZE
    stats = report["stats"]["shared"]
    assert 1 <= stats["timeouts"] <= 4  # the first read's concurrent lookups
    assert stats["skipped"] >= 4  # the second file's lookups, the publishes
    assert stats["puts"] == 0 and stats["hits"] == 0
    assert len([x for x in logged if "did not answer" in x]) == 1, logged


def key_of(name: str, index: int = 0) -> ChunkKey:
    return ChunkKey(FileVersion("http", name, 4 * CHUNK, "etag"), CHUNK, index)


def test_breaker_skips_the_tier_then_tries_it_again(s3_server, s3_bucket):
    """After a timeout the tier is skipped for ``skip_time``; then one call
    probes it (the others still skip): a dead tier opens the breaker again,
    a live one closes it and is used."""
    import s3fs

    host_port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    proxy = BlackHole(forward_to=(host_port[0], int(host_port[1])))

    async def scenario() -> None:
        fs = s3fs.S3FileSystem(
            key=s3_server.key,
            secret=s3_server.secret,
            client_kwargs={"endpoint_url": proxy.url},
            asynchronous=True,
            skip_instance_cache=True,
        )
        tier = SharedTier(
            fs, f"{s3_bucket}/cache", lease_time=0, timeout=1.0, skip_time=2.0
        )
        key = key_of("a")
        chunk = memoryview(os.urandom(CHUNK))
        try:
            t0 = time.monotonic()
            assert await tier.get(key) is None
            took = time.monotonic() - t0
            print(f"breaker: first lookup took {took:.2f} s (timeout 1 s)")
            assert 0.9 < took < 5 and tier.stats.timeouts == 1
            t0 = time.monotonic()
            assert await tier.get(key) is None  # skipped: no wait at all
            await tier.put(key, chunk)
            assert time.monotonic() - t0 < 0.9  # less than one timeout
            assert tier.stats.skipped == 2 and tier.stats.timeouts == 1
            # Skip time over, still dead: one probe waits, the others skip.
            await asyncio.sleep(2.1)
            t0 = time.monotonic()
            found = await asyncio.gather(*(tier.get(key) for _ in range(3)))
            assert found == [None] * 3 and time.monotonic() - t0 < 5
            assert tier.stats.timeouts == 2 and tier.stats.skipped == 4
            # Alive again: after the skip time the probe gets through and the
            # tier is used as before.
            proxy.open = True
            await asyncio.sleep(2.1)
            await tier.put(key, chunk)
            assert tier.stats.puts == 1
            got = await tier.get(key)
            assert got is not None and bytes(got) == bytes(chunk)
            assert tier.stats.timeouts == 2 and tier.stats.hits == 1
        finally:
            await fs.set_session()  # the session exists: close it cleanly
            await fs._s3.close()

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()


# -- things other than records at a record's path ----------------------------


def records_of(shared: Path) -> list[Path]:
    return sorted(p for p in (shared / "chunks").rglob("*") if p.is_file())


def test_a_fifo_at_a_record_path_is_damage_not_a_hang(files, origin, tmp_path):
    shared = tmp_path / "shared"
    urls = [origin.url_for("f0.bin")]
    run_node(urls, tmp_path / "a", f"file://{shared}")
    victim = records_of(shared)[0]
    victim.unlink()
    os.mkfifo(victim)
    origin.reset_stats()
    report, _ = run_node(urls, tmp_path / "b", f"file://{shared}")
    print(f"FIFO at a record path: read took {report['elapsed'][0]:.2f} s")
    assert report["digests"] == [sha(files["f0.bin"])]
    assert report["elapsed"][0] < 10  # the old code hung for good
    assert report["stats"]["shared"]["checksum_failures"] == 1
    assert origin.stats.bytes_sent == CHUNK  # that chunk only, again
    assert victim.is_file()  # the FIFO removed, the record published again
    assert len(records_of(shared)) == 4


def test_a_directory_at_a_record_path_is_removed_and_replaced(files, origin, tmp_path):
    shared = tmp_path / "shared"
    urls = [origin.url_for("f0.bin")]
    run_node(urls, tmp_path / "a", f"file://{shared}")
    victim = records_of(shared)[0]
    victim.unlink()
    victim.mkdir()
    (victim / "junk").write_bytes(b"x" * 100)
    origin.reset_stats()
    report, _ = run_node(urls, tmp_path / "b", f"file://{shared}")
    assert report["digests"] == [sha(files["f0.bin"])]
    stats = report["stats"]["shared"]
    assert stats["checksum_failures"] == 1 and stats["puts"] == 1
    assert origin.stats.bytes_sent == CHUNK
    # A regular record again (the old code moved each new record into it).
    assert victim.is_file() and len(records_of(shared)) == 4
    origin.reset_stats()
    again, _ = run_node(urls, tmp_path / "c", f"file://{shared}")
    assert origin.stats.bytes_sent == 0
    assert again["stats"]["shared"]["hits"] == 4
