"""The read-only FUSE mount, mounted for real over a loopback HTTP origin.

Every read through a mount runs in a child process with a timeout (a hung
mount must fail a test, never hang the suite), and every mount is unmounted
in teardown. Without /dev/fuse or pyfuse3 the tests skip with the reason;
under CI=true that fails the run instead.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20


def _missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian: fuse3)"
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as exc:
        return f"pyfuse3/trio not importable ({exc}); pip install 'cachefs[fuse]'"
    return None


@pytest.fixture(autouse=True)
def _fuse() -> None:
    why = _missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"FUSE tests cannot run under CI: {why}")
        pytest.skip(why)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = {f"sample-{i:03d}.bin": os.urandom(50_000 + i * 997) for i in range(20)}
ARRAY = np.arange(300_000, dtype=np.float64).reshape(600, 500)


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    shards = make_shards(3, 3 * MiB + 12345, seed=3)
    out = {f"data/{k.rpartition('/')[2]}": v for k, v in shards.items()}
    out["data/nested/deep/small.txt"] = b"hello through the mount\n"
    out["data/samples.tar"] = _tar(MEMBERS)
    out["data/array.npy"] = _npy(ARRAY)
    return out


@pytest.fixture
def web(files: dict[str, bytes]) -> Iterator[HTTPOrigin]:
    with HTTPOrigin(files=dict(files)) as server:
        yield server


def _force_unmount(mountpoint: Path) -> None:
    from cachefs.mount import is_mounted, unmount

    if is_mounted(mountpoint):
        try:
            unmount(mountpoint, timeout=10)
        except OSError:
            subprocess.run(["umount", "-l", str(mountpoint)], timeout=10, check=False)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Mount factory: ``mounts(url, **options)``; all unmounted in teardown."""
    from cachefs.mount import mount

    made: list[Any] = []

    def make(url: str, mountpoint: Path | None = None, **options: Any) -> Any:
        mp = mountpoint or tmp_path / f"mnt{len(made)}"
        mp.mkdir(exist_ok=True)
        options.setdefault("cache_dir", str(tmp_path / "cache"))
        options.setdefault("chunk_size", "1MiB")
        handle = mount(url, mp, ready_timeout=60, **options)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        try:
            handle.unmount(timeout=10)
        finally:
            _force_unmount(handle.mountpoint)


def child(code: str, *args: Any, timeout: float = 60) -> Any:
    """Run ``code`` in a fresh Python with ``ARGS`` bound; return its JSON output."""
    script = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + textwrap.dedent(
        code
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


READS = """
import hashlib, mmap, os, random
root, names, seed = ARGS
rng = random.Random(seed)
out = {}
for name in names:
    path = os.path.join(root, name)
    size = os.stat(path).st_size
    with open(path, "rb", buffering=0) as f:          # sequential, 1 MiB reads
        h = hashlib.sha256()
        while block := f.read(1 << 20):
            h.update(block)
        seq = h.hexdigest()
    with open(path, "rb", buffering=0) as f:          # a re-read (page cache)
        again = hashlib.sha256(f.read()).hexdigest()
    spans = [(rng.randrange(size), rng.randrange(1, 70000)) for _ in range(40)]
    fd = os.open(path, os.O_RDONLY)                    # lseek + read, at random
    rand = []
    for off, n in spans:
        os.lseek(fd, off, os.SEEK_SET)
        rand.append(hashlib.sha256(os.read(fd, n)).hexdigest())
    end = os.lseek(fd, 0, os.SEEK_END)
    os.close(fd)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        mm = [hashlib.sha256(m[o : o + n]).hexdigest() for o, n in spans]
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)      # direct I/O
    direct = hashlib.sha256(os.pread(fd, 1 << 20, 0)).hexdigest()
    os.close(fd)
    out[name] = dict(size=size, end=end, seq=seq, again=again, rand=rand, mm=mm,
                     spans=spans, direct=direct)
print(json.dumps(out))
"""


def test_reads_are_exact_bytes(web, mounts, files):
    m = mounts(web.url_for("data"))
    names = ["shard-0000.bin", "shard-0002.bin", "nested/deep/small.txt"]
    got = child(READS, str(m.mountpoint), names, 1)
    for name in names:
        data = files[f"data/{name}"]
        r = got[name]
        assert r["size"] == r["end"] == len(data)
        assert r["seq"] == r["again"] == sha(data)
        assert r["direct"] == sha(data[: 1 << 20])
        want = [sha(data[o : o + n]) for o, n in r["spans"]]
        assert r["rand"] == want
        assert r["mm"] == want


def test_tarfile_and_numpy_load(web, mounts):
    m = mounts(web.url_for("data"))
    got = child(
        """
        import hashlib, os, tarfile, numpy as np
        root = ARGS[0]
        with tarfile.open(os.path.join(root, "samples.tar")) as tar:
            members = {t.name: hashlib.sha256(tar.extractfile(t).read()).hexdigest()
                       for t in tar}
        a = np.load(os.path.join(root, "array.npy"))
        mm = np.load(os.path.join(root, "array.npy"), mmap_mode="r")
        print(json.dumps(dict(members=members, shape=a.shape, sum=float(a.sum()),
                              row=mm[123].tolist() == a[123].tolist())))
        """,
        str(m.mountpoint),
    )
    assert got["members"] == {k: sha(v) for k, v in MEMBERS.items()}
    assert tuple(got["shape"]) == ARRAY.shape
    assert got["sum"] == float(ARRAY.sum())
    assert got["row"]


def test_listing_stat_and_refused_writes(web, mounts, files):
    m = mounts(web.url_for("data"))
    got = child(
        """
        import errno, os
        root = ARGS[0]
        out = dict(top=sorted(os.listdir(root)),
                   deep=os.listdir(os.path.join(root, "nested", "deep")),
                   sizes={n: os.stat(os.path.join(root, n)).st_size
                          for n in os.listdir(root)
                          if not os.path.isdir(os.path.join(root, n))},
                   isdir=os.path.isdir(os.path.join(root, "nested")))
        def code(fn):
            try:
                fn()
            except OSError as exc:
                return errno.errorcode[exc.errno]
            return "ok"
        out["missing"] = code(lambda: os.stat(os.path.join(root, "nope.bin")))
        out["write"] = code(lambda: open(os.path.join(root, "shard-0000.bin"), "r+b"))
        out["create"] = code(lambda: open(os.path.join(root, "new.bin"), "wb"))
        out["mkdir"] = code(lambda: os.mkdir(os.path.join(root, "d")))
        out["unlink"] = code(lambda: os.unlink(os.path.join(root, "array.npy")))
        print(json.dumps(out))
        """,
        str(m.mountpoint),
    )
    top = {k.split("/")[1] for k in files}
    assert got["top"] == sorted(top)
    assert got["deep"] == ["small.txt"]
    assert got["isdir"]
    for name, size in got["sizes"].items():
        assert size == len(files[f"data/{name}"])
    assert got["missing"] == "ENOENT"
    assert got["write"] == got["create"] == got["mkdir"] == got["unlink"] == "EROFS"


def test_many_threads_and_processes(web, mounts, files):
    m = mounts(web.url_for("data"))
    code = """
    import hashlib, os, random
    from concurrent.futures import ThreadPoolExecutor
    root, names, seed = ARGS
    def work(i):
        rng = random.Random(seed * 100 + i)
        out = []
        for _ in range(30):
            name = rng.choice(names)
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            off, n = rng.randrange(size), rng.randrange(1, 3 << 20)
            with open(path, "rb") as f:
                f.seek(off)
                out.append([name, off, n, hashlib.sha256(f.read(n)).hexdigest()])
        return out
    with ThreadPoolExecutor(8) as pool:
        print(json.dumps([r for rs in pool.map(work, range(8)) for r in rs]))
    """
    names = [f"shard-000{i}.bin" for i in range(3)]
    script = "import json, sys\nARGS = json.loads(sys.argv[1])\n" + textwrap.dedent(
        code
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps([str(m.mountpoint), names, s])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in range(3)
    ]
    checked = 0
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err[-3000:]
            for name, off, n, digest in json.loads(out):
                assert digest == sha(files[f"data/{name}"][off : off + n])
                checked += 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert checked == 3 * 8 * 30
    # Each chunk came from the origin about once, whatever the concurrency.
    assert web.stats.bytes_sent <= 2 * sum(len(files[f"data/{n}"]) for n in names)


CAT = """
import hashlib, os
with open(ARGS[0], "rb") as f:
    data = f.read()
print(json.dumps([len(data), hashlib.sha256(data).hexdigest(),
                  os.stat(ARGS[0]).st_size]))
"""


def test_version_change_seen_after_ttl(web, mounts, files):
    # The default request_timeout (60 s): a kept connection that stalled
    # after a small body once hid here behind a short timeout.
    m = mounts(web.url_for("data"), metadata_ttl=1)
    path = str(m.mountpoint / "nested/deep/small.txt")
    old = files["data/nested/deep/small.txt"]
    assert child(CAT, path) == [len(old), sha(old), len(old)]
    new = b"a new version, longer than the old one\n" * 3
    web.set_file("data/nested/deep/small.txt", new)
    time.sleep(2.5)  # past the TTL: the cache and the kernel ask again
    assert child(CAT, path) == [len(new), sha(new), len(new)]


STATS = """
import os
print(os.getxattr(ARGS[0], "user.cachefs.stats").decode())
"""


def test_reread_never_reaches_the_daemon(web, mounts, files):
    # keep_cache across opens of an unchanged version: the second pass is
    # served by the kernel's page cache, not one read request reaches the
    # daemon (its counters, read through the root's xattr).
    m = mounts(web.url_for("data"))
    data = files["data/shard-0001.bin"]
    path = str(m.mountpoint / "shard-0001.bin")
    assert child(CAT, path) == [len(data), sha(data), len(data)]
    first = child(STATS, str(m.mountpoint))
    assert child(CAT, path) == [len(data), sha(data), len(data)]
    again = child(STATS, str(m.mountpoint))
    assert first["reads"] > 0
    assert first["read_bytes"] >= len(data)
    assert first["largest_read"] >= 128 * 1024  # large requests, not pages
    assert again["reads"] == first["reads"]
    assert again["keep_cache_opens"] == first["keep_cache_opens"] + 1


def test_new_version_pushed_to_the_kernel_within_ttl(web, mounts, files, tmp_path):
    from cachefs import CacheFileSystem

    ttl = 5.0
    rel = "nested/deep/small.txt"
    old = files[f"data/{rel}"]
    cache = str(tmp_path / "cache")
    m = mounts(web.url_for("data"), cache_dir=cache, metadata_ttl=ttl)
    path = str(m.mountpoint / rel)
    # Another job on the node learns the old version at t0 and records it
    # in the shared cache dir: fresh for the mount until t0 + ttl.
    fs = CacheFileSystem(
        target_protocol="http",
        cache_dir=cache,
        chunk_size="1MiB",
        metadata_ttl=ttl,
        skip_instance_cache=True,
    )
    assert fs.cat_file(web.url_for(f"data/{rel}")) == old
    t0 = time.monotonic()
    time.sleep(ttl - 1.5)
    # The kernel learns that record's size only now, and would keep it for
    # its own ttl from now: until about t0 + 2 ttl without the push.
    assert child(CAT, path) == [len(old), sha(old), len(old)]
    new = b"a new version, longer than the old one\n" * 3
    web.set_file(f"data/{rel}", new)
    deadline = t0 + ttl + 2.5  # the ttl from when the version was learned
    while True:
        got = child(CAT, path)
        if got == [len(new), sha(new), len(new)]:
            break
        assert time.monotonic() < deadline, f"old bytes or size still seen: {got}"
        time.sleep(0.2)
    assert child(STATS, str(m.mountpoint))["invalidated"] >= 1


def test_offline_after_warming(files, mounts, tmp_path):
    names = ["shard-0001.bin", "nested/deep/small.txt", "array.npy"]
    with HTTPOrigin(files=dict(files)) as server:
        url = server.url_for("data")
        m = mounts(url, metadata_ttl=None)
        child(CAT, str(m.mountpoint / names[0]))
        for name in names:
            child(CAT, str(m.mountpoint / name))
        m.unmount()
    # The origin is gone (its port refuses); a new mount of the warmed tree.
    m = mounts(url, tmp_path / "offline", metadata_ttl=None, request_timeout=2)
    got = child(
        """
        import os
        root = ARGS[0]
        print(json.dumps(dict(top=sorted(os.listdir(root)),
                              deep=os.listdir(os.path.join(root, "nested/deep")))))
        """,
        str(m.mountpoint),
    )
    assert set(got["top"]) >= {"shard-0001.bin", "nested", "array.npy"}
    assert got["deep"] == ["small.txt"]
    for name in names:
        data = files[f"data/{name}"]
        assert child(CAT, str(m.mountpoint / name)) == [len(data), sha(data), len(data)]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachefs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_mount_sigkill_then_umount(web, files, tmp_path):
    from cachefs.mount import is_mounted

    mp = tmp_path / "mnt"
    mp.mkdir()
    cache = str(tmp_path / "cache")
    url = web.url_for("data")
    done = _cli("mount", url, str(mp), "--cache-dir", cache, "--chunk-size", "1MiB")
    try:
        assert done.returncode == 0, done.stderr
        assert "mounted" in done.stdout
        pid = int(done.stdout.split("daemon pid ")[1].split(";")[0])
        data = files["data/shard-0000.bin"]
        assert child(CAT, str(mp / "shard-0000.bin")) == [
            len(data),
            sha(data),
            len(data),
        ]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel ends the connection as the daemon dies
        got = child(
            """
            import errno, os
            try:
                os.stat(ARGS[0])
            except OSError as exc:
                print(json.dumps(errno.errorcode[exc.errno]))
            else:
                print(json.dumps("ok"))
            """,
            str(mp / "not-looked-up-yet.bin"),  # no attributes the kernel kept
        )
        assert got == "ENOTCONN"
        done = _cli("umount", str(mp))
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mp)
        verify = _cli("verify", "--cache-dir", cache)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        _force_unmount(mp)
    assert _cli("umount", str(mp)).returncode == 2  # not mounted: a usage error


def test_foreground_sigint_unmounts_cleanly(web, tmp_path):
    from cachefs.mount import is_mounted

    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = [sys.executable, "-m", "cachefs", "mount", "--foreground"]
    cmd += [web.url_for("data"), str(mp), "--cache-dir", str(tmp_path / "c")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mp) and proc.poll() is None:
            assert time.monotonic() < deadline, "never mounted"
            time.sleep(0.1)
        assert child("import os; print(json.dumps(os.listdir(ARGS[0])))", str(mp))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not is_mounted(mp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        _force_unmount(mp)


def test_black_hole_origin_fails_reads_within_bound(web, mounts):
    m = mounts(web.url_for("data"), request_timeout=1, retries=1)
    # Listings and HEADs still answer; every GET of a file stalls for 60 s.
    web.fault_kind, web.stall_seconds, web.fault_rate = "stall", 60, 1.0
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import errno, sys, time
                t = time.monotonic()
                try:
                    open(sys.argv[1], "rb").read()
                except OSError as exc:
                    print(errno.errorcode[exc.errno], time.monotonic() - t)
                else:
                    print("ok", time.monotonic() - t)
                """
            ),
            str(m.mountpoint / "shard-0001.bin"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        # While that read waits on the origin, the mount still answers.
        began = time.monotonic()
        listed = child(
            "import os; print(json.dumps(os.listdir(ARGS[0])))", str(m.mountpoint)
        )
        assert "shard-0001.bin" in listed
        assert time.monotonic() - began < 20
        out, _ = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    code, took = out.split()
    assert code == "EIO"
    assert float(took) < 30  # bounded by request_timeout x tries, not 60 s


def test_bad_input(tmp_path, web):
    from cachefs.mount import mount

    with pytest.raises(ValueError, match="mountpoint"):
        mount(web.url_for("data"), tmp_path / "absent")
    with pytest.raises(TypeError, match="JSON"):
        mount(web.url_for("data"), tmp_path, policy=object())
    assert errno.EROFS  # the refusal tests use it by name
