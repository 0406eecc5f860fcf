"""Scenario "cold_fill": CPU per GiB landed on a cold read, against references.

The issue-20 table in one run. Data: tar shards (full: 32 x 16 MiB; quick:
16 x 8 MiB) of 32 KiB samples, so the same bytes serve every system,
ShardDataset included. Two origins:

- **nginx** (Debian's package, started here on a free loopback port,
  ``sendfile`` from a tmpfs directory: an origin that costs almost no CPU;
  where nginx is absent, the project's HTTPOrigin in its own process, and
  the rows say so), no added latency, 16 requests in flight;
- **S3**: moto in its own process behind the 20 ms counting proxy of
  :mod:`bench.s3_proxy` (quick: 8 x 8 MiB), with s3torchconnector as the
  reference.

Every pass of every system is a **new process** (``python -m
bench.fill_passes``, or ``curl`` itself) timed after its imports; its CPU is
user + system seconds of the whole process, every thread, plus its reaped
children (DataLoader workers), over the pass. Reported per system: MB/s and
CPU s/GiB landed. Systems on nginx:

- ``curl --parallel`` (16 at a time) to ``/dev/null``, CPU from ``os.wait4``;
- the zero-copy receive reference (:mod:`bench.zero_copy`): asyncio
  ``BufferedProtocol``, socket bytes land straight in 4 MiB buffers;
- the same plus one ``os.pwrite`` per 4 MiB chunk into a file on the cache
  disk (**the reference of the targets**);
- obstore ``get_range_async`` (and + one write per chunk); aiohttp ranged
  GETs, ``read()`` (and + copy into a buffer + one write);
- ``simplecache::`` and ``cachefs::`` through ``fsspec.open`` per file,
  ``readinto`` a 4 MiB buffer; cachefs ``fs.prefetch`` of every file then
  the same reads; cachefs warm (a fresh process over a cache filled by an
  untimed pass, ``metadata_ttl=None``); a cold ``ShardDataset`` epoch
  (torch DataLoader, 2 workers, batch 32), and a warm one over a cache
  filled by an untimed epoch (the loader's own cost: the cold epoch less
  this is its fill's); ``fsspec.open``, ``prefetch``, the warm command and
  the cold epoch again with ``direct_writes=on`` (chunks written past the
  page cache, as ``"auto"`` does for a budget of twice the RAM or more).

Every cachefs pass starts with an empty cache directory on a real disk
(``CACHEFS_BENCH_DISK``, default the system's ``/var/tmp``; the filesystem
type is recorded) and ends when every chunk is stored (``wait_idle``); the
"+ write" references write on the same filesystem. The page cache is not
dropped: written chunks sit in it (and in writeback) as they would for a
user; ``Dirty`` and ``Writeback`` of ``/proc/meminfo`` after each pass are
recorded, and so are the origin's requests and body bytes during each pass
(nginx's access log, the proxy's counters) and each thread's CPU. Every
pass starts from the same memory state: the child says when its imports
are done, and the bench then frees a ballast of memory it touched after
the previous pass (:class:`_Ballast`).

Targets: cachefs fill paths (``fsspec.open``, ``prefetch``, the warm
command, the cold epoch; buffered and direct) CPU s/GiB <=
1.3x the zero-copy receive + write reference (ratio >= 0.769x, ratios are
oriented so > 1 is better) and MB/s >= 0.8x it. For the cold epoch the CPU
target is on its fill's share (:data:`LOADER_FILLS`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import mmap
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.nginx_origin import start_http_origin, tmpfs_dir
from bench.report import Row, as_reference, compare, filesystem_of, median

__all__ = ["REFERENCE", "run"]

MiB, GiB = 2**20, 2**30
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "zero-copy receive + write/chunk"
CFS_OPEN = "cachefs, fsspec.open per file"
CFS_PREFETCH = "cachefs, fs.prefetch"
CFS_CLI_WARM = "cachefs warm -j 16 (the command)"
CFS_WARM = "cachefs warm (disk), fsspec.open per file"
CFS_LOADER = "cachefs ShardDataset, cold epoch"
CFS_LOADER_WARM = "cachefs ShardDataset, warm epoch"
S3TORCH = "s3torchconnector S3IterableDataset"
#: The same fill paths writing past the page cache (``direct_writes=on``):
#: what a one-pass run, or a cache far larger than RAM, gets ("auto" picks it
#: for a disk budget of twice the RAM or more; the bench's default budget is
#: under that here, so the rows above write through the page cache).
DIRECT = ", direct_writes=on"
FILL_PATHS = (CFS_OPEN, CFS_PREFETCH, CFS_CLI_WARM, CFS_LOADER)
FILL_PATHS += tuple(name + DIRECT for name in FILL_PATHS)
#: A loader epoch's CPU holds the loader's own work (worker processes,
#: batches, tar parsing), which no reference does: the CPU target is on its
#: fill's share, the cold epoch less the warm one over the same shards
#: (per repetition); the MB/s target stays on the whole epoch.
LOADER_FILLS = {
    CFS_LOADER: CFS_LOADER + "'s fill (cold less warm)",
    CFS_LOADER + DIRECT: CFS_LOADER + "'s fill (cold less warm)" + DIRECT,
}
CPU_PATHS = tuple(p for p in FILL_PATHS if p not in LOADER_FILLS)
CPU_PATHS += tuple(LOADER_FILLS.values())
CPU_TARGET = f">= {1 / 1.3:.3f}x"  # CPU <= 1.3x the reference's
RATE_TARGET = ">= 0.8x"

Result = dict[str, Any]


def _log(text: str) -> None:
    print(f"cold_fill: {text}", file=sys.stderr, flush=True)


def _param(args: argparse.Namespace | None, name: str, value: Any) -> Any:
    given = getattr(args, name, None) if args is not None else None
    return value if given is None else given


def _disk_root() -> Path:
    base = Path(os.environ.get("CACHEFS_BENCH_DISK") or "/var/tmp")
    return Path(tempfile.mkdtemp(prefix="cachefs-cold-fill-", dir=base))


def _empty(scratch: Path) -> None:
    """Free a pass's data now; its inodes go when the scenario's disk goes.

    Every file is truncated (its blocks freed) and left in place. ext4
    without a journal (this bench's usual cache disk) skips, when it
    allocates an inode, every inode freed in the last 5 s, or 305 s while
    their inode-table block is dirty: removing a pass's few hundred chunk
    files and shard directories made the next pass's file creations scan
    past them, a cost of the bench's own cleanup that landed on whichever
    system came next, in proportion to the files it creates (cachefs's disk
    writer: 0.28-0.37 s a pass after removals, 0.18-0.21 s after a sync and
    6 s of quiet). A cache filling on a filesystem that evicts as fast as
    it fills pays that too; a first fill does not.
    """
    for path in scratch.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                os.truncate(path, 0)


class _Ballast:
    """Memory the bench holds between passes and frees as each pass starts.

    Every pass starts with the same amount of memory just freed: the state
    of a node whose page cache recycles, the same for every system. Without
    it, the state depended on what the previous pass freed and on how long
    this one took to import. On a VM that hands free memory back to its host
    (``virtio_balloon`` free page reporting, after about 2 s), touching
    memory freed longer ago costs a host fault per page: 512 MiB of buffered
    writes measured 0.2-0.5 CPU s/GiB right after a free and 2.3-2.6 s/GiB
    8 s later, so a system that imported torch (seconds) after a pass that wrote
    nothing paid that for all its memory and the reference, after a pass
    that freed its files, did not.
    """

    def __init__(self) -> None:
        self.nbytes = 0
        self._map: mmap.mmap | None = None

    def hold(self) -> None:
        """Touch :attr:`nbytes` of memory (no-op while held)."""
        if self._map is not None or self.nbytes <= 0:
            return
        pages = -(-self.nbytes // mmap.PAGESIZE)
        held = mmap.mmap(-1, pages * mmap.PAGESIZE)
        held[:: mmap.PAGESIZE] = b"\x01" * pages  # one write fault per page
        self._map = held

    def release(self) -> None:
        """Free the held memory now."""
        if self._map is not None:
            self._map.close()
            self._map = None


BALLAST = _Ballast()


def _ballast_for(dataset: int) -> int:
    """Memory freed as each pass starts: more than the hungriest pass takes.

    The pass's page cache (the dataset), landing buffers and staged chunks
    of each DataLoader worker, the workers themselves, and a margin.
    """
    return 4 * dataset + 256 * MiB


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Dirty", "Writeback", "Cached"):
                out[key + "_kB"] = int(rest.split()[0])
    except OSError:
        pass
    return out


# -- one pass in a new process ----------------------------------------------------


def _wait(proc: subprocess.Popen[str], timeout: float) -> tuple[int, float]:
    """Reap ``proc`` with ``os.wait4``; return its status and its CPU seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise TimeoutError(f"pass still running after {timeout:.0f} s")
        time.sleep(0.01)


def _start_when_ready(
    proc: subprocess.Popen[str], ready: int, go: int, timeout: float
) -> None:
    """Wait for the child's imports, free the ballast, let it start.

    A child not ready within ``timeout`` seconds is killed (the caller's
    reaping then reports the failed pass).
    """
    got = b""
    if select.select([ready], [], [], timeout)[0]:
        with contextlib.suppress(OSError):
            got = os.read(ready, 1)  # empty: the child died before it was ready
    else:
        proc.kill()
    BALLAST.release()
    if got:
        with contextlib.suppress(OSError):  # BrokenPipe: it died meanwhile
            os.write(go, b"g")


def _child(spec: dict[str, Any], timeout: float = 600.0) -> Result:
    """Run one pass in ``python -m bench.fill_passes``; return its JSON line.

    The child imports what it needs and says so; the bench's ballast is
    freed then (:class:`_Ballast`), and the child starts its pass.
    """
    BALLAST.hold()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    open_fds = [ready_r, ready_w, go_r, go_w]

    def close(*fds: int) -> None:
        for fd in fds:
            if fd in open_fds:
                open_fds.remove(fd)
                os.close(fd)

    spec = {**spec, "start_fds": [ready_w, go_r]}
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        contextlib.ExitStack() as stack,
    ):
        stack.callback(lambda: close(*list(open_fds)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fill_passes", json.dumps(spec)],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            text=True,
            pass_fds=(ready_w, go_r),
        )
        close(ready_w, go_r)  # the child's ends
        _start_when_ready(proc, ready_r, go_w, timeout)
        close(ready_r, go_w)
        code, cpu_total = _wait(proc, timeout)
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
        if code != 0 or not lines:
            tail = "\n".join(err.read().strip().splitlines()[-12:])
            raise RuntimeError(f"pass {spec['kind']} failed (exit {code}):\n{tail}")
    result: Result = json.loads(lines[-1])
    result["cpu_process_total_s"] = cpu_total
    return result


def _curl(urls: list[str], timeout: float = 600.0) -> Result:
    """``curl --parallel`` every URL to /dev/null; CPU of the curl process."""
    argv = ["curl", "--parallel", "--parallel-max", "16", "-s", "-f"]
    for url in urls:
        argv += ["-o", "/dev/null", url]
    argv += ["-w", "%{size_download}\\n"]
    BALLAST.hold()
    BALLAST.release()  # curl needs no imports: freed as it starts
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, text=True)
        code, cpu = _wait(proc, timeout)
        seconds = time.perf_counter() - t0
        out.seek(0)
        sizes = [int(x) for x in out.read().split() if x.isdigit()]
    if code != 0:
        raise RuntimeError(f"curl exited with status {code}")
    return {"seconds": seconds, "bytes": sum(sizes), "cpu_s": cpu}


# -- systems ----------------------------------------------------------------------


class _Passes:
    """Builds each system's pass: a callable returning a result."""

    def __init__(
        self,
        disk: Path,
        urls: list[str],
        sizes: list[int],
        counts: Callable[[], tuple[int, int]],
    ) -> None:
        self.disk, self.urls, self.sizes = disk, urls, sizes
        self.counts = counts
        self.extra: dict[str, Any] = {}

    def _scratch(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.disk))

    def child(
        self, kind: str, *, cache: bool = False, **more: Any
    ) -> Callable[[], Result]:
        def run() -> Result:
            scratch = self._scratch(f"{kind}-")
            spec = {
                "kind": kind,
                "urls": self.urls,
                "sizes": self.sizes,
                "cache_dir": str(scratch / "cache") if cache else None,
                "out_dir": str(scratch),
                **self.extra,
                **more,
            }
            try:
                result = _child(spec)
                # Before the files go: how much of what it wrote is dirty.
                result["meminfo_after"] = _meminfo()
            finally:
                _empty(scratch)
            return result

        return run

    def warm(
        self, disk: Path, kind: str = "fsspec_open", **more: Any
    ) -> Callable[[], Result]:
        """A fresh process over a cache filled once, untimed, when first run."""
        cache_dir = disk / f"warm-cache-{kind}"
        spec = {
            "kind": kind,
            "system": "cachefs",
            "urls": self.urls,
            "sizes": self.sizes,
            "cache_dir": str(cache_dir),
            "options": {"metadata_ttl": None},
            **self.extra,
            **more,
        }

        def run() -> Result:
            if not cache_dir.exists():
                _log("filling the cache for the warm passes (untimed)")
                _child(spec)
                self.counts()  # the fill's requests are not the pass's
            return _child(spec)

        return run


def _skip_reason(system: str) -> str | None:
    needs = {
        "curl": None,
        "obstore": "obstore",
        "s3torch": "s3torchconnector",
        "torch": "torch",
        "aiohttp": "aiohttp",
    }
    if system == "curl":
        return None if shutil.which("curl") else "curl not installed"
    package = needs[system]
    if package and importlib.util.find_spec(package) is None:
        return f"{package} not importable"
    return None


def _interleave(
    systems: dict[str, Callable[[], Result]],
    reps: int,
    counts: Callable[[], tuple[int, int]] | None = None,
) -> dict[str, list[Result]]:
    # CACHEFS_BENCH_FILL_ONLY="zero-copy,cachefs,!ShardDataset" runs only the
    # systems whose names contain one of the words and none of the "!" words
    # (a short run while developing, a test).
    words = [w for w in os.environ.get("CACHEFS_BENCH_FILL_ONLY", "").split(",") if w]
    only = [w for w in words if not w.startswith("!")]
    never = [w[1:] for w in words if w.startswith("!")]
    names = [
        s
        for s in systems
        if (not only or any(w in s for w in only)) and not any(w in s for w in never)
    ]
    runs: dict[str, list[Result]] = {n: [] for n in names}
    for rep in range(reps if names else 0):  # a filter may leave a part empty
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if counts is not None:
                counts()  # what came before this pass
            result = systems[name]()
            if counts is not None:
                result["origin_requests"], result["origin_bytes"] = counts()
            runs[name].append(result)
            rate = result["bytes"] / result["seconds"] / 1e6
            cpu = result["cpu_s"] / (result["bytes"] / GiB)
            _log(f"rep {rep + 1}/{reps} {name}: {rate:,.0f} MB/s, {cpu:.2f} CPU s/GiB")
    return runs


def _rows(
    prefix: str,
    runs: dict[str, list[Result]],
    skipped: dict[str, str],
    dataset: int,
    reference: str,
    common: dict[str, Any],
    targeted: tuple[str, ...],
    cpu_targeted: tuple[str, ...],
) -> list[Row]:
    rate_label, cpu_label = f"{prefix}: MB/s", f"{prefix}: CPU s/GiB"
    rates: dict[str, Row] = {}
    cpus: dict[str, Row] = {}
    for system, results in runs.items():
        for r in results:
            if r["bytes"] != dataset:
                raise AssertionError(f"{system} landed {r['bytes']} of {dataset} bytes")
        rate = [r["bytes"] / r["seconds"] / 1e6 for r in results]
        cpu = [r["cpu_s"] / (r["bytes"] / GiB) for r in results]
        detail = {
            **common,
            "seconds": [r["seconds"] for r in results],
            "cpu_s": [r["cpu_s"] for r in results],
            "cpu_process_total_s": [r.get("cpu_process_total_s") for r in results],
            "meminfo_after": results[-1].get("meminfo_after", {}),
            "origin_bytes": [r.get("origin_bytes") for r in results],
            "origin_requests": [r.get("origin_requests") for r in results],
            "thread_cpu_s_last": results[-1].get("thread_cpu_s", {}),
        }
        rates[system] = Row(
            rate_label, system, median(rate), "MB/s", rate, detail=detail
        )
        cpus[system] = Row(
            cpu_label, system, median(cpu), "CPU s/GiB", cpu, detail=detail
        )
    warm = cpus.get(CFS_LOADER_WARM)
    for cold, fill in LOADER_FILLS.items():
        if warm is not None and cold in cpus:
            share = [
                c - w for c, w in zip(cpus[cold].samples, warm.samples, strict=True)
            ]
            detail = {**common, "cold_cpu_s_per_gib": cpus[cold].samples}
            detail["warm_cpu_s_per_gib"] = warm.samples
            cpus[fill] = Row(
                cpu_label, fill, median(share), "CPU s/GiB", share, detail=detail
            )
    rows: list[Row] = []
    for by, label, target, paths in (
        (rates, rate_label, RATE_TARGET, targeted),
        (cpus, cpu_label, CPU_TARGET, cpu_targeted),
    ):
        ref = by.get(reference)
        for system, row in by.items():
            if ref is None:
                rows.append(row)
            elif system == reference:
                rows.append(as_reference(row))
            else:
                rows.append(compare(row, ref, target if system in paths else None))
        unit = "MB/s" if by is rates else "CPU s/GiB"
        for system, reason in skipped.items():
            rows.append(
                Row(label, system, 0.0, unit, detail={"status": f"skipped: {reason}"})
            )
    return rows


# -- the two origins --------------------------------------------------------------


def _nginx_part(quick: bool, args: argparse.Namespace | None, disk: Path) -> list[Row]:
    from bench.user_loaders import _write_tars

    n = int(_param(args, "files", 16 if quick else 32))
    size = int(_param(args, "size", 8 * MiB if quick else 16 * MiB))
    # Seven full repetitions: single passes of every system here swing by 2-4x
    # with the machine's state (fresh memory, other load), so the median
    # needs more of them than the other scenarios' five.
    reps = int(_param(args, "reps", 3 if quick else 7))
    root = tmpfs_dir("cachefs-cold-fill-")
    try:
        shutil.rmtree(root)
        counts = _write_tars(root, n, size)
        names = sorted(p.name for p in root.iterdir())
        sizes = [(root / p).stat().st_size for p in names]
        BALLAST.nbytes = _ballast_for(sum(sizes))
        with start_http_origin(root) as origin:
            _log(f"origin: {origin.label}")
            urls = [origin.url_for(p) for p in names]
            passes = _Passes(disk, urls, sizes, origin.take_counts)
            skipped: dict[str, str] = {}
            systems: dict[str, Callable[[], Result]] = {}
            if (why := _skip_reason("curl")) is None:
                systems["curl --parallel to /dev/null"] = lambda: _curl(urls)
            else:
                skipped["curl --parallel to /dev/null"] = why
            systems["zero-copy receive (BufferedProtocol)"] = passes.child("zero_copy")
            systems[REFERENCE] = passes.child("zero_copy", write=True)
            if (why := _skip_reason("obstore")) is None:
                systems["obstore get_range_async"] = passes.child("obstore")
                systems["obstore + write/chunk"] = passes.child("obstore", write=True)
            else:
                skipped["obstore get_range_async"] = why
            systems["aiohttp ranged GETs, read()"] = passes.child("aiohttp")
            systems["aiohttp + copy + write/chunk"] = passes.child(
                "aiohttp", write=True
            )
            systems["fsspec simplecache::, fsspec.open per file"] = passes.child(
                "fsspec_open", cache=True, system="simplecache"
            )
            systems[CFS_OPEN] = passes.child(
                "fsspec_open", cache=True, system="cachefs"
            )
            systems[CFS_PREFETCH] = passes.child("prefetch", cache=True)
            systems[CFS_CLI_WARM] = passes.child("cli_warm", cache=True)
            on = {"direct_writes": "on"}
            systems[CFS_OPEN + DIRECT] = passes.child(
                "fsspec_open", cache=True, system="cachefs", options=on
            )
            systems[CFS_PREFETCH + DIRECT] = passes.child(
                "prefetch", cache=True, options=on
            )
            systems[CFS_CLI_WARM + DIRECT] = passes.child(
                "cli_warm", cache=True, cli_args=["--direct-writes", "on"]
            )
            systems[CFS_WARM] = passes.warm(disk)
            if (why := _skip_reason("torch")) is None:
                systems[CFS_LOADER] = passes.child(
                    "shard_loader", cache=True, counts=counts
                )
                systems[CFS_LOADER + DIRECT] = passes.child(
                    "shard_loader", cache=True, counts=counts, options=on
                )
                systems[CFS_LOADER_WARM] = passes.warm(
                    disk, "shard_loader", counts=counts
                )
            else:
                skipped[CFS_LOADER] = why
            # One untimed write pass first: the first pass that writes this
            # much after a pause measured up to 2.7x the CPU of the next ones
            # (whichever system it was), which would land on whichever
            # system the rotation puts first.
            _log("warm-up: one untimed receive + write pass")
            passes.child("zero_copy", write=True)()
            runs = _interleave(systems, reps, passes.counts)
            label = origin.label
    finally:
        shutil.rmtree(root, ignore_errors=True)
    common = {
        "origin": label,
        "files": n,
        "file_bytes": size,
        "dataset_bytes": sum(sizes),
        "in_flight": 16,
        "added_latency_s": 0.0,
        "cache_filesystem": filesystem_of(disk),
        "page_cache": "not dropped",
        "freed_at_pass_start_bytes": BALLAST.nbytes,
        "process": "one new process per pass, CPU = user+sys of all its threads "
        "and reaped children over the pass",
    }
    # The label names the origin actually measured.
    prefix = "1 nginx" if label.startswith("nginx ") else "1 HTTPOrigin (no nginx)"
    rows = _rows(
        prefix, runs, skipped, sum(sizes), REFERENCE, common, FILL_PATHS, CPU_PATHS
    )
    for row in rows:
        # A warm read is no fill: its own row, so that no summary takes it
        # for cachefs's best cold figure.
        if row.system in (CFS_WARM, CFS_LOADER_WARM):
            row.row = row.row.replace(f"{prefix}:", f"{prefix}, warm:")
    return rows


def _s3_part(quick: bool, disk: Path) -> list[Row]:
    from bench.s3_proxy import KEY, LATENCY, REGION, SECRET, start_origin
    from bench.user_loaders import _write_tars

    n, size, reps = (8, 8 * MiB, 1) if quick else (16, 16 * MiB, 2)
    origin = start_origin()
    try:
        with tempfile.TemporaryDirectory(prefix="cachefs-cold-fill-s3-") as tmp:
            root = Path(tmp) / "tars"
            _write_tars(root, n, size)
            client = origin.client()
            client.create_bucket(Bucket="fill")
            names = sorted(p.name for p in root.iterdir())
            for p in names:
                client.put_object(Bucket="fill", Key=p, Body=(root / p).read_bytes())
            sizes = [(root / p).stat().st_size for p in names]
        BALLAST.nbytes = _ballast_for(sum(sizes))
        urls = [f"s3://fill/{p}" for p in names]

        def counts() -> tuple[int, int]:
            stats = origin.stats()
            origin.reset()
            return int(stats["requests"]), sum(int(n) for n in stats["bytes"].values())

        passes = _Passes(disk, urls, sizes, counts)
        passes.extra["s3"] = {
            "endpoint": origin.proxy_url,
            "bucket": "fill",
            "key": KEY,
            "secret": SECRET,
            "region": REGION,
        }
        skipped: dict[str, str] = {}
        systems: dict[str, Callable[[], Result]] = {}
        if (why := _skip_reason("s3torch")) is None:
            systems[S3TORCH] = passes.child("s3torch")
        else:
            skipped[S3TORCH] = why
        if (why := _skip_reason("obstore")) is None:
            systems["obstore get_range_async"] = passes.child("obstore")
            systems["obstore + write/chunk"] = passes.child("obstore", write=True)
        else:
            skipped["obstore get_range_async"] = why
        systems[CFS_OPEN] = passes.child("fsspec_open", cache=True, system="cachefs")
        systems[CFS_PREFETCH] = passes.child("prefetch", cache=True)
        runs = _interleave(systems, reps, counts)
    finally:
        origin.stop()
    reference = S3TORCH if S3TORCH in runs else "obstore + write/chunk"
    common = {
        "origin": f"moto in its own process behind the counting proxy, "
        f"{LATENCY * 1000:g} ms per request",
        "files": n,
        "file_bytes": size,
        "dataset_bytes": sum(sizes),
        "cache_filesystem": filesystem_of(disk),
        "page_cache": "not dropped",
        "freed_at_pass_start_bytes": BALLAST.nbytes,
    }
    return _rows("2 S3", runs, skipped, sum(sizes), reference, common, (), ())


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Cold fill over nginx and over S3: MB/s and client CPU s/GiB per system."""
    disk = _disk_root()
    _log(f"cache disk: {disk} ({filesystem_of(disk)})")
    try:
        rows = _nginx_part(quick, args, disk)
        if os.environ.get("CACHEFS_BENCH_FILL_S3", "1") != "0":
            try:
                import moto  # noqa: F401
            except ImportError as exc:
                _log(f"S3 part skipped: {exc}")
            else:
                rows += _s3_part(quick, disk)
    finally:
        BALLAST.release()
        shutil.rmtree(disk, ignore_errors=True)
    return rows
