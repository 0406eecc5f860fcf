"""Child processes of ``cold_fill``: one system, one cold pass, its own CPU.

``python -m bench.fill_passes SPEC`` imports what the system needs, then
times one pass and prints one JSON line: ``seconds``, ``bytes`` landed and
``cpu_s``, the user + system seconds of this process (every thread) plus
those of its reaped children (DataLoader workers) between the start and the
end of the pass, from :func:`resource.getrusage`, and
``context_switches``, those of its threads alive at the end. Start-up and imports are
outside the pass, for every system alike; the parent also records the whole
process's CPU from ``os.wait4``.

A cachefs pass ends when every fetched chunk is stored on disk
(``wait_idle``), so its disk writes count, as the references' ``os.pwrite``
calls do.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["PASSES", "main"]

MiB = 2**20
CHUNK = 4 * MiB
INFLIGHT = 16
# FP_WORKERS: the DataLoader workers of a ShardDataset pass (0: in-process,
# for profiling the whole pass in one process).
WORKERS = int(os.environ.get("FP_WORKERS", "2"))
BATCH = 32

Spec = dict[str, Any]


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each live Python thread, by name (from /proc, Linux)."""
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # Fields 14 and 15 of stat (utime, stime), counted after the ")".
        cpu = (int(fields[11]) + int(fields[12])) / tick
        name = t.name.split(" (")[0]
        out[name] = round(out.get(name, 0.0) + cpu, 3)
    return out


def _switches() -> int:
    """Context switches of this process so far, every thread (Linux)."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:  # voluntary and not
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _ranges(spec: Spec) -> list[tuple[str, int, int]]:
    """``(url, start, stop)`` of every 4 MiB range of every file."""
    return [
        (url, start, min(start + CHUNK, size))
        for url, size in zip(spec["urls"], spec["sizes"], strict=True)
        for start in range(0, size, CHUNK)
    ]


def _out_name(spec: Spec, url: str) -> str:
    return os.path.join(
        spec["out_dir"], urlsplit(url).path.strip("/").replace("/", "_")
    )


# -- HTTP references ------------------------------------------------------------


def _zero_copy(spec: Spec) -> Callable[[], dict[str, Any]]:
    from bench.zero_copy import fetch_ranges

    first = urlsplit(spec["urls"][0])
    host, port = first.hostname or "127.0.0.1", int(first.port or 80)
    ranges = [(urlsplit(u).path, a, b) for u, a, b in _ranges(spec)]
    write_to = None
    if spec.get("write"):

        def write_to(path: str) -> str:
            return os.path.join(spec["out_dir"], path.strip("/").replace("/", "_"))

    def run() -> dict[str, Any]:
        return asyncio.run(
            fetch_ranges(host, port, ranges, connections=INFLIGHT, write_to=write_to)
        )

    return run


def _aiohttp(spec: Spec) -> Callable[[], dict[str, Any]]:
    import aiohttp

    ranges = _ranges(spec)
    write = bool(spec.get("write"))

    async def fetch_all() -> dict[str, Any]:
        limit = asyncio.Semaphore(INFLIGHT)
        fds = {}
        if write:
            fds = {
                u: os.open(_out_name(spec, u), os.O_WRONLY | os.O_CREAT, 0o600)
                for u in spec["urls"]
            }
        connector = aiohttp.TCPConnector(limit=INFLIGHT)
        total = 0

        async def get(url: str, start: int, stop: int) -> None:
            nonlocal total
            headers = {"Range": f"bytes={start}-{stop - 1}"}
            async with limit, session.get(url, headers=headers) as resp:
                if resp.status != 206:
                    raise OSError(f"{url}: status {resp.status}")
                if not write:
                    # Not ``total += len(await ...)``: that reads ``total``
                    # before the await and loses concurrent updates.
                    n = len(await resp.read())
                    total += n
                    return
                # The stream's pieces are copied into one chunk buffer,
                # then written once.
                buf = bytearray(stop - start)
                pos = 0
                async for piece in resp.content.iter_any():
                    buf[pos : pos + len(piece)] = piece
                    pos += len(piece)
                os.pwrite(fds[url], memoryview(buf)[:pos], start)
                total += pos

        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                await asyncio.gather(*(get(*r) for r in ranges))
        finally:
            for fd in fds.values():
                os.close(fd)
        return {"bytes": total}

    return lambda: asyncio.run(fetch_all())


def _obstore_store(spec: Spec) -> tuple[Any, list[tuple[str, int, int]]]:
    from obstore.store import HTTPStore, S3Store

    if spec.get("s3"):
        s3 = spec["s3"]
        store: Any = S3Store(
            s3["bucket"],
            endpoint=s3["endpoint"],
            access_key_id=s3["key"],
            secret_access_key=s3["secret"],
            region=s3["region"],
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )
        ranges = [(u.split("/", 3)[3], a, b) for u, a, b in _ranges(spec)]
        return store, ranges
    first = urlsplit(spec["urls"][0])
    store = HTTPStore.from_url(
        f"{first.scheme}://{first.netloc}", client_options={"allow_http": True}
    )
    return store, [(urlsplit(u).path.lstrip("/"), a, b) for u, a, b in _ranges(spec)]


def _obstore(spec: Spec) -> Callable[[], dict[str, Any]]:
    import obstore

    store, ranges = _obstore_store(spec)
    write = bool(spec.get("write"))

    async def fetch_all() -> dict[str, Any]:
        limit = asyncio.Semaphore(INFLIGHT)
        fds = {}
        if write:
            fds = {
                p: os.open(_out_name(spec, "/" + p), os.O_WRONLY | os.O_CREAT, 0o600)
                for p, _, _ in ranges
            }
        total = 0

        async def get(path: str, start: int, stop: int) -> None:
            nonlocal total
            async with limit:
                data = await obstore.get_range_async(store, path, start=start, end=stop)
            view = memoryview(data)
            if len(view) != stop - start:
                raise OSError(f"{path}: {len(view)} bytes, asked {stop - start}")
            if write:
                os.pwrite(fds[path], view, start)
            total += len(view)

        try:
            await asyncio.gather(*(get(*r) for r in ranges))
        finally:
            for fd in fds.values():
                os.close(fd)
        return {"bytes": total}

    return lambda: asyncio.run(fetch_all())


# -- fsspec and cachefs ---------------------------------------------------------


def _readinto_all(f: Any, buf: bytearray) -> int:
    total = 0
    readinto = f.readinto
    while n := readinto(buf):
        total += n
    return total


def _chained(spec: Spec) -> tuple[str, dict[str, Any]]:
    """The target protocol and its options (plain http, or S3 behind the proxy)."""
    if spec.get("s3"):
        s3 = spec["s3"]
        opts = {"endpoint_url": s3["endpoint"], "key": s3["key"]}
        return "s3", {**opts, "secret": s3["secret"], "skip_instance_cache": True}
    return "http", {}


def _preload(spec: Spec) -> None:
    """Import every module a cachefs or fsspec pass needs before the clock."""
    import fsspec
    import fsspec.implementations.cached

    import cachefs  # noqa: F401

    for protocol in ("cachefs", "simplecache", "s3" if spec.get("s3") else "http"):
        fsspec.get_filesystem_class(protocol)


def _fsspec_open(spec: Spec) -> Callable[[], dict[str, Any]]:
    import fsspec

    _preload(spec)
    kind = spec["system"]
    protocol, target = _chained(spec)
    options = spec.get("options", {})

    def run() -> dict[str, Any]:
        buf = bytearray(CHUNK)
        total = 0
        last = None
        for url in spec["urls"]:
            if kind == "cachefs":
                last = fsspec.open(
                    f"cachefs::{url}",
                    "rb",
                    cachefs={"cache_dir": spec["cache_dir"], **options},
                    **({protocol: target} if target else {}),
                )
            else:
                last = fsspec.open(
                    f"simplecache::{url}",
                    "rb",
                    simplecache={"cache_storage": spec["cache_dir"]},
                    **({protocol: target} if target else {}),
                )
            with last as f:
                total += _readinto_all(f, buf)
        if last is not None and hasattr(last.fs, "wait_idle"):
            last.fs.wait_idle(300)
            return {"bytes": total, **_cachefs_counts(last.fs)}
        return {"bytes": total}

    return run


def _cachefs_counts(fs: Any) -> dict[str, Any]:
    """What a cachefs pass did besides landing bytes: buffers, writes, waits."""
    from dataclasses import asdict

    from cachefs.receive.landing import POOL
    from cachefs.tiers.writer import WRITER

    return {
        "landing_made": POOL.made,
        "landing_reused": POOL.reused,
        "writer": asdict(WRITER.stats),
        "disk": fs.cache_stats()["disk"],
    }


def _cachefs_fs(spec: Spec) -> Any:
    from cachefs import CacheFileSystem

    protocol, target = _chained(spec)
    return CacheFileSystem(
        target_protocol=protocol,
        target_options=target,
        cache_dir=spec["cache_dir"],
        **spec.get("options", {}),
    )


def _prefetch(spec: Spec) -> Callable[[], dict[str, Any]]:
    _preload(spec)

    def run() -> dict[str, Any]:
        fs = _cachefs_fs(spec)
        handle = fs.prefetch(spec["urls"])
        buf = bytearray(CHUNK)
        total = 0
        for url in spec["urls"]:
            with fs.open(url, "rb") as f:
                total += _readinto_all(f, buf)
        handle.wait(300)
        fs.wait_idle(300)
        stats = fs.cache_stats()
        return {
            "bytes": total,
            "prefetch_failed": len(handle.failed),
            # The last first read's body rate: whether the prefetch kept
            # only what hides the origin's wait ahead (cachefs.prefetch).
            "first_read_body_rate": handle._pacing.body_rate,
            "prefetch": stats.get("prefetch", {}),
            "router": stats.get("router", {}),
            **_cachefs_counts(fs),
        }

    return run


def _cli_warm(spec: Spec) -> Callable[[], dict[str, Any]]:
    """``cachefs warm -j 16 URL...`` as the command runs it, in this process."""
    import contextlib
    import io

    from cachefs.cli.main import main as cachefs_main

    _preload(spec)

    def run() -> dict[str, Any]:
        argv = ["warm", *spec["urls"], "--cache-dir", spec["cache_dir"], "-j", "16"]
        argv += spec.get("cli_args", [])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = cachefs_main([*argv, "--json"])
        doc = json.loads(out.getvalue())
        if status != 0 or not doc["complete"]:
            raise RuntimeError(f"cachefs warm exited {status}: {doc}")
        from cachefs.receive.landing import POOL

        # What the command moved from the origin into the disk tier.
        made, reused = POOL.made, POOL.reused
        return {
            "bytes": doc["origin_bytes"],
            "landing_made": made,
            "landing_reused": reused,
        }

    return run


def _sample(sample: dict[str, Any]) -> tuple[int, int]:
    return int(sample["__key__"]), len(sample["bin"])


def _collate(batch: list[tuple[int, int]]) -> tuple[int, int]:
    return len(batch), sum(n for _, n in batch)


def _shard_loader(spec: Spec) -> Callable[[], dict[str, Any]]:
    import torch.utils.data as tud

    from cachefs.data.dataset import ShardDataset

    _preload(spec)

    def run() -> dict[str, Any]:
        fs = _cachefs_fs(spec)
        ds = ShardDataset(
            spec["urls"], fs, decode=_sample, sample_counts=spec["counts"], seed=0
        )
        ds.set_epoch(0)
        loader = tud.DataLoader(
            ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
        )
        samples = payload = 0
        for n, nbytes in loader:
            samples += n
            payload += nbytes
        # The workers filled the disk tier; what they wrote is stored when
        # they exit (DataLoader joins them at the end of the epoch). Every
        # sample delivered means every shard's bytes landed.
        if samples != sum(spec["counts"]):
            raise OSError(f"{samples} samples, expected {sum(spec['counts'])}")
        out = {"bytes": sum(spec["sizes"]), "samples": samples, "payload": payload}
        if WORKERS == 0:  # the fill ran in this process: its counters are here
            out.update(_cachefs_counts(fs))
        return out

    return run


def _s3torch(spec: Spec) -> Callable[[], dict[str, Any]]:
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    s3 = spec["s3"]
    os.environ.update(
        AWS_ACCESS_KEY_ID=s3["key"],
        AWS_SECRET_ACCESS_KEY=s3["secret"],
        AWS_DEFAULT_REGION=s3["region"],
    )

    def run() -> dict[str, Any]:
        ds = S3IterableDataset.from_objects(
            list(spec["urls"]),
            region=s3["region"],
            endpoint=s3["endpoint"],
            s3client_config=S3ClientConfig(force_path_style=True),
        )
        buf = bytearray(CHUNK)
        total = 0
        for reader in ds:
            total += _readinto_all(reader, buf)
        return {"bytes": total}

    return run


PASSES: dict[str, Callable[[Spec], Callable[[], dict[str, Any]]]] = {
    "zero_copy": _zero_copy,
    "aiohttp": _aiohttp,
    "obstore": _obstore,
    "fsspec_open": _fsspec_open,
    "prefetch": _prefetch,
    "cli_warm": _cli_warm,
    "shard_loader": _shard_loader,
    "s3torch": _s3torch,
}


def _await_start(fds: list[int] | None) -> None:
    """Say the imports are done, then wait for the parent's go (if asked).

    The parent frees its memory ballast in between, so every pass starts
    from the same memory state (``bench.cold_fill._Ballast``).
    """
    if not fds:
        return
    ready, go = fds
    os.write(ready, b"r")
    os.close(ready)
    os.read(go, 1)
    os.close(go)


def main(argv: list[str]) -> int:
    """Run one pass (see the module docstring); print its JSON line."""
    if len(argv) != 1:
        print("usage: python -m bench.fill_passes SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    run = PASSES[spec["kind"]](spec)
    _await_start(spec.get("start_fds"))
    before = _thread_cpu()
    s0 = _switches()
    c0, t0 = _cpu(), time.perf_counter()
    result = run()
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    # Threads that ended during the pass are not counted (live ones are).
    result["context_switches"] = _switches() - s0
    # Where the pass's CPU went, per live thread (threads started by the
    # pass count from their start): what the causes of unmet targets cite.
    threads = {
        name: round(spent - before.get(name, 0.0), 3)
        for name, spent in _thread_cpu().items()
    }
    out = {**result, "seconds": seconds, "cpu_s": cpu, "thread_cpu_s": threads}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    status = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The pass is measured and reported: skip interpreter finalization, where
    # obstore's runtime threads abort the process now and then (SIGABRT).
    os._exit(status)
