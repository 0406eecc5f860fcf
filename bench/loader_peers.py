"""Scenario "loader_peers": cachefs against the data loaders users pick instead.

Origin: moto's S3 server in its own process behind a loopback proxy in
another (:mod:`bench.s3_proxy`) that adds 20 ms to every request and counts
the bytes of every response, so origin bytes are measured the same way for
every system. The same samples (ids 0..n-1, 31 KiB of random bytes each) are
written, untimed, in each library's own format (:mod:`bench.peer_formats`):
tar shards (webdataset, cachefs, s3torchconnector, JuiceFS), LitData
chunks (``litdata.optimize``) and MDS shards (MosaicML ``MDSWriter``), all
with about the same shard size.

Systems, each read by a torch DataLoader with 2 workers and batch 32:

- cachefs ``ShardDataset`` over the tars (prefetch on, sample counts given);
- webdataset over ``cachefs::s3://`` (a ``gopen`` scheme registered here);
- LitData ``StreamingDataset`` (``StreamingDataLoader``);
- MosaicML streaming ``StreamingDataset`` over MDS;
- s3torchconnector ``S3IterableDataset`` over the tars (objects sharded
  across workers, streamed; no cache of its own: big configuration only);
- JuiceFS (:mod:`bench.juicefs`: SQLite metadata, data in a bucket of the
  same origin, FUSE mount, local cache sized like the others, the read
  options of its tuning guide) with webdataset reading the tars as files of
  the mount; the tars are written through a mount first, untimed, and each
  configuration mounts again with an empty cache;
- webdataset over plain ``s3://`` (fsspec/s3fs, no cache; big config only).

Two configurations: ``big`` (every cache 4x the data set, epochs 0-2) and
``half`` (every cache limited to half the data set with the library's own
knob, epochs 0-3). Each (system, configuration) runs in a fresh process with
fresh cache directories; it imports its system's libraries before the
clock starts (imports are once per program, as in ``cold_fill`` and the
``user_*`` scenarios), and the system's set-up (filesystem, clients,
datasets, loader) is timed and counted in epoch 0. Reported per epoch:
samples/s, origin bytes ÷ the system's own data-set size, and whether every
sample id came exactly once.
Targets (reported, not asserted): cachefs ``ShardDataset`` >= 1.2x the best
peer in the cold epoch and in each warm epoch of ``big``; at ``half``, origin
bytes per epoch from epoch 1 <= 1.1x the bound 1 - cache/dataset.

``CACHEFS_BENCH_PEERS=cachefs,LitData`` limits a run to the systems whose
names contain one of the words. A library that is not installed gets a
"not installed" row; one that fails gets a row with its error.
``python -m bench.loader_peers --one SPEC`` is the child entry point (one
system, one configuration; prints one JSON line).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from bench.juicefs import READ_OPTIONS
from bench.peer_formats import (
    _cachefs_sample,
    _collate,
    _register_gopen,
    _s3torch_samples,
    _streaming,
    _upload,
    _write_litdata,
    _write_mds,
    _write_tars,
)
from bench.report import Row
from cachefs.policy import DEFAULT_POLICY

__all__ = ["SYSTEMS", "run"]

KiB, MiB = 2**10, 2**20
WORKERS = 2
BATCH = 32
CACHEFS = "cachefs ShardDataset"
S3TORCH = "s3torchconnector S3IterableDataset"
JUICEFS = "JuiceFS (FUSE) + webdataset"
#: Systems without a cache of their own: run in the big configuration only.
UNCACHED = ("webdataset + plain s3", S3TORCH)
SYSTEMS = (
    CACHEFS,
    "webdataset + cachefs::s3",
    "LitData StreamingDataset",
    "MosaicML streaming (MDS)",
    S3TORCH,
    JUICEFS,
    "webdataset + plain s3",
)
#: The package each system needs beyond cachefs and torch.
_NEEDS = {
    CACHEFS: (),
    "webdataset + cachefs::s3": ("webdataset",),
    "LitData StreamingDataset": ("litdata",),
    "MosaicML streaming (MDS)": ("streaming",),
    S3TORCH: ("s3torchconnector",),
    JUICEFS: ("webdataset",),
    "webdataset + plain s3": ("webdataset",),
}
_PREFIX = {
    CACHEFS: "tars",
    "webdataset + cachefs::s3": "tars",
    "webdataset + plain s3": "tars",
    "LitData StreamingDataset": "litdata",
    "MosaicML streaming (MDS)": "mds",
    S3TORCH: "tars",
    JUICEFS: "tars",
}


# -- one system, one configuration (a child process) -------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch.utils.data as tud

    system, proxy, bucket = spec["system"], spec["proxy"], spec["bucket"]
    cache_dir, limit, epochs = spec["cache_dir"], spec["cache_limit"], spec["epochs"]
    from bench.s3_proxy import KEY, REGION, SECRET

    s3_options = {"endpoint_url": proxy, "key": KEY, "secret": SECRET}
    os.environ.update(
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        S3_ENDPOINT_URL=proxy,
    )
    origin = _stats_client(proxy)
    origin.reset()
    _preload(system)
    t_setup = time.perf_counter()
    epoch_fn: Any
    tars = [f"{bucket}/tars/shard-{s:05d}.tar" for s in range(spec["shards"])]
    if system == CACHEFS:
        from cachefs import CacheFileSystem
        from cachefs.data.dataset import ShardDataset

        fs = CacheFileSystem(
            target_protocol="s3",
            target_options={**s3_options, "skip_instance_cache": True},
            cache_dir=cache_dir,
            disk_limit=limit,
            ram_limit=spec["ram_limit"],
            policy=spec["policy"],
        )
        ds = ShardDataset(
            tars,
            fs,
            decode=_cachefs_sample,
            sample_counts=spec["counts"],
            seed=0,
        )
        loader = tud.DataLoader(
            ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
        )

        def epoch_fn(e: int) -> Any:
            ds.set_epoch(e)
            return loader

    elif system == S3TORCH:
        ds = _s3torch_samples(spec, tars)
        loader = tud.DataLoader(
            ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
        )

        def epoch_fn(e: int) -> Any:
            return loader

    elif system == JUICEFS:
        import webdataset as wds

        def epoch_fn(e: int) -> Any:
            # The tars as files of the JuiceFS mount the parent started.
            paths = [f"{spec['mount']}/{t.split('/', 1)[1]}" for t in tars]
            random.Random(e).shuffle(paths)
            ds = wds.WebDataset(paths, shardshuffle=False, empty_check=False).map(
                lambda s: (int(s["__key__"]), s["bin"])
            )
            return tud.DataLoader(
                ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
            )

    elif system.startswith("webdataset"):
        import webdataset as wds

        cachefs_options = {
            "cache_dir": cache_dir,
            "disk_limit": limit,
            "ram_limit": spec["ram_limit"],
            "policy": spec["policy"],
        }
        _register_gopen(s3_options, cachefs_options)
        scheme = "cachefs::s3://" if "cachefs" in system else "s3://"

        def epoch_fn(e: int) -> Any:
            urls = [scheme + t for t in tars]
            random.Random(e).shuffle(urls)
            ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(
                lambda s: (int(s["__key__"]), s["bin"])
            )
            return tud.DataLoader(
                ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
            )

    elif system.startswith("LitData"):
        import litdata
        from litdata.streaming import downloader

        # LitData's fast path downloads chunks with obstore, whose client
        # refuses an http:// endpoint unless allowed; real S3 is https.
        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
        ds = litdata.StreamingDataset(
            f"s3://{bucket}/litdata",
            cache_dir=cache_dir,
            shuffle=True,
            max_cache_size=limit,
            storage_options={
                "endpoint_url": proxy,
                "aws_access_key_id": KEY,
                "aws_secret_access_key": SECRET,
                "region_name": REGION,
            },
        )
        loader = litdata.StreamingDataLoader(
            ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
        )

        def epoch_fn(e: int) -> Any:
            return loader

    else:
        dataset_cls = _streaming()[0]
        ds = dataset_cls(
            remote=f"s3://{bucket}/mds",
            local=cache_dir,
            shuffle=True,
            batch_size=BATCH,
            cache_limit=limit,
            # The default block (262,144 samples) spans the whole data set, so
            # with a cache below it every shard is needed at once and evicted
            # before use; the docs size the block to what the cache holds.
            shuffle_block_size=spec["shuffle_block"],
        )
        loader = tud.DataLoader(
            ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=_collate
        )

        def epoch_fn(e: int) -> Any:
            return loader

    setup_s = time.perf_counter() - t_setup
    setup_bytes = _total(origin.stats())
    out = []
    for e in range(epochs):
        origin.reset()
        seen: Counter[int] = Counter()
        delivered = 0
        t0 = time.perf_counter()
        for ids, nbytes in epoch_fn(e):
            seen.update(ids)
            delivered += nbytes
        seconds = time.perf_counter() - t0
        stats = origin.stats()
        n = spec["samples"]
        out.append(
            {
                "epoch": e,
                "seconds": seconds,
                "samples": sum(seen.values()),
                "duplicates": sum(c - 1 for c in seen.values() if c > 1),
                "missing": sum(1 for i in range(n) if i not in seen),
                "delivered_bytes": delivered,
                "origin_bytes": _total(stats),
                "requests": stats["requests"],
            }
        )
    return {"setup_s": setup_s, "setup_bytes": setup_bytes, "epochs": out}


def _preload(system: str) -> None:
    """Import what ``system`` needs before the clock starts.

    Imports happen once per program, not once per epoch; the passes of
    ``cold_fill`` and the ``user_*`` scenarios keep them out of the timed
    pass too, for every system alike. What a system builds (clients,
    sessions, models it parses) stays in the timed set-up.
    """
    import fsspec

    modules = {
        CACHEFS: ("cachefs", "cachefs.data.dataset"),
        S3TORCH: ("s3torchconnector",),
        JUICEFS: ("webdataset",),
        "LitData StreamingDataset": ("litdata", "litdata.streaming.downloader"),
    }.get(system, ("webdataset", "cachefs") if "webdataset" in system else ())
    for name in modules:
        importlib.import_module(name)
    if system == CACHEFS or "webdataset +" in system:
        # The S3 target's library (s3fs, aiobotocore), imported on first use.
        fsspec.get_filesystem_class("s3")
    if system.startswith("MosaicML"):
        _streaming()


def _total(stats: dict[str, Any]) -> int:
    return sum(int(v) for v in stats["bytes"].values())


def _stats_client(proxy: str) -> Any:
    from bench.s3_proxy import Origin

    return Origin(moto_url="", proxy_url=proxy, procs=[])


# -- the scenario (parent process) -------------------------------------------


def _missing(system: str) -> str | None:
    for package in ("torch", *_NEEDS[system]):
        if importlib.util.find_spec(package) is None:
            return package
    return None


def _run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.loader_peers", "--one", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
        tail = (errors or lines or ["?"])[-1].strip()
        return {
            "error": f"exit {proc.returncode}: {tail[:300]}",
            "stderr_tail": "\n".join(lines[-40:]),
        }
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _info_row(label: str, system: str, text: str) -> Row:
    return Row(
        row=label,
        system=system,
        value=0.0,
        unit="samples/s",
        detail={"status": text},
    )


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure samples/s, origin bytes and delivery per epoch for every system."""
    try:
        import botocore  # noqa: F401
        import moto  # noqa: F401
        import s3fs  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        print(f"loader_peers: skipped ({exc}); pip install -e '.[bench,torch]'")
        return []
    shards = 16 if quick else 32
    shard_bytes = (4 if quick else 8) * MiB
    per_shard = shard_bytes // (32 * KiB)
    n = shards * per_shard
    timeout = 240.0 if quick else 900.0
    # CACHEFS_BENCH_PEERS="cachefs,LitData" runs only the systems whose
    # names contain one of the words (a shorter run while developing).
    only = [w for w in os.environ.get("CACHEFS_BENCH_PEERS", "").split(",") if w]
    systems = [s for s in SYSTEMS if not only or any(w in s for w in only)]
    from bench.s3_proxy import start_origin

    origin = start_origin()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cachefs-peers-") as tmp:
            root = Path(tmp)
            client = origin.client()
            bucket = "peers"
            client.create_bucket(Bucket=bucket)
            sizes: dict[str, int] = {}
            counts = _write_tars(root / "tars", shards, per_shard)
            sizes["tars"] = _upload(client, bucket, root / "tars", "tars")
            problems: dict[str, str] = {}
            for prefix, writer, package in (
                ("litdata", _write_litdata, "litdata"),
                ("mds", _write_mds, "streaming"),
            ):
                if importlib.util.find_spec(package) is None:
                    continue
                try:
                    # The writers print progress bars: keep the table readable.
                    with (
                        open(os.devnull, "w") as null,
                        contextlib.redirect_stdout(null),
                        contextlib.redirect_stderr(null),
                    ):
                        writer(root / prefix, n, shard_bytes)
                    sizes[prefix] = _upload(client, bucket, root / prefix, prefix)
                except Exception as exc:
                    problems[prefix] = f"writing failed: {type(exc).__name__}: {exc}"
            volume, why = None, None
            if JUICEFS in systems and _missing(JUICEFS) is None:
                volume, why = _juicefs_volume(origin, root, bucket)
                if why is not None:
                    problems["juicefs"] = why
            configs = (("big", 3), ("half", 4))
            for config, epochs in configs:
                for system in systems:
                    label = f"{config}: samples/s"
                    missing = _missing(system)
                    if missing is not None:
                        rows.append(
                            _info_row(label, system, f"not installed ({missing})")
                        )
                        continue
                    prefix = _PREFIX[system]
                    if prefix in problems or (system == JUICEFS and volume is None):
                        why = problems.get(prefix) or problems.get("juicefs", "?")
                        rows.append(_info_row(label, system, why))
                        continue
                    if system in UNCACHED and config == "half":
                        continue  # no cache: the half configuration is the same
                    size = sizes[prefix]
                    limit = 4 * size if config == "big" else size // 2
                    cache_dir = root / "cache" / f"{config}-{SYSTEMS.index(system)}"
                    spec = {
                        "system": system,
                        "proxy": origin.proxy_url,
                        "bucket": bucket,
                        "cache_dir": str(cache_dir),
                        "cache_limit": limit,
                        # At half, RAM would add to the cache: the disk
                        # budget is the whole cache, like the peers'.
                        "ram_limit": "256MiB" if config == "big" else 0,
                        # The default a user gets (issue 21: a default that
                        # reaches the bound without being asked for).
                        "policy": DEFAULT_POLICY,
                        "epochs": epochs,
                        "shards": shards,
                        "counts": counts,
                        "samples": n,
                        "shuffle_block": n if config == "big" else 2 * per_shard,
                    }
                    print(f"loader_peers: {config} {system} ...", flush=True)
                    if system == JUICEFS and volume is not None:
                        with volume.mount(cache_dir, limit, *READ_OPTIONS) as mnt:
                            spec["mount"] = str(mnt.path)
                            result = _run_child(spec, timeout)
                    else:
                        result = _run_child(spec, timeout)
                    shutil.rmtree(cache_dir, ignore_errors=True)
                    if "error" in result:
                        row = _info_row(label, system, result["error"])
                        row.detail["stderr_tail"] = result.get("stderr_tail", "")
                        rows.append(row)
                        continue
                    rows += _rows(config, system, result, size, limit, n)
    finally:
        origin.stop()
    return _judge(rows)


def _juicefs_volume(origin: Any, root: Path, bucket: str) -> tuple[Any, str | None]:
    """Format a JuiceFS volume on the origin and write the tars through it.

    Returns the volume, or ``None`` and the reason JuiceFS cannot run here.
    """
    from bench.juicefs import Volume, why_not
    from bench.s3_proxy import KEY, SECRET

    why = why_not()
    if why is not None:
        return None, why
    try:
        origin.client().create_bucket(Bucket="juicefs")
        volume = Volume(root / "juicefs", f"{origin.proxy_url}/juicefs", KEY, SECRET)
        # Written untimed, through a mount whose cache is then thrown away.
        with volume.mount(root / "juicefs-write-cache", 2**30) as mnt:
            (mnt.path / "tars").mkdir()
            for path in sorted((root / "tars").iterdir()):
                shutil.copyfile(path, mnt.path / "tars" / path.name)
        shutil.rmtree(root / "juicefs-write-cache", ignore_errors=True)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return None, f"JuiceFS could not run here: {exc}"
    return volume, None


def _rows(
    config: str,
    system: str,
    result: dict[str, Any],
    size: int,
    limit: int,
    n: int,
) -> list[Row]:
    out = []
    bound = max(0.0, 1.0 - limit / size)
    for ep in result["epochs"]:
        e = ep["epoch"]
        origin = ep["origin_bytes"] + (result["setup_bytes"] if e == 0 else 0)
        seconds = ep["seconds"] + (result["setup_s"] if e == 0 else 0.0)
        exact = ep["duplicates"] == 0 and ep["missing"] == 0 and ep["samples"] == n
        detail = {
            "config": config,
            "epoch": e,
            "seconds": seconds,
            "samples": ep["samples"],
            "duplicates": ep["duplicates"],
            "missing": ep["missing"],
            "exactly_once": exact,
            "origin_bytes": origin,
            "origin_requests": ep["requests"],
            "dataset_bytes": size,
            "cache_limit": limit,
            "bound": bound,
            "setup_s_in_epoch_0": result["setup_s"],
        }
        rate = ep["samples"] / seconds if seconds else float("nan")
        out.append(
            Row(
                row=f"{config}: samples/s, epoch {e}",
                system=system,
                value=rate,
                unit="samples/s",
                samples=[rate],
                detail=detail,
            )
        )
        out.append(
            Row(
                row=f"{config}: origin ÷ dataset, epoch {e}",
                system=system,
                value=origin / size,
                unit="x dataset",
                samples=[origin / size],
                detail=detail,
            )
        )
        out.append(
            Row(
                row=f"{config}: exactly once, epoch {e}",
                system=system,
                value=1.0 if exact else 0.0,
                unit="ok",
                samples=[1.0 if exact else 0.0],
                detail=detail,
            )
        )
    return out


def _judge(rows: list[Row]) -> list[Row]:
    """Set references and targets: cachefs vs the best peer; origin vs bound."""
    by_label: dict[str, list[Row]] = {}
    for r in rows:
        by_label.setdefault(r.row, []).append(r)
    for label, group in by_label.items():
        if "samples/s, epoch" in label and label.startswith("big"):
            peers = [
                r
                for r in group
                if "cachefs" not in r.system and r.value == r.value and r.value > 0
            ]
            if not peers:
                continue
            best = max(peers, key=lambda r: r.value)
            for r in group:
                r.reference = best.system
                r.ratio = r.value / best.value
                if r.system == CACHEFS:
                    r.target = ">= 1.2x"
                    r.met = r.ratio >= 1.2
        elif "origin" in label and label.startswith("half"):
            epoch = int(label.rsplit(" ", 1)[1])
            for r in group:
                bound = r.detail["bound"]
                r.reference = "bound (1 - cache/dataset)"
                # > 1 is better: the bound over the bytes read.
                r.ratio = min(bound / max(r.value, 1e-9), 1e6)
                if "cachefs" in r.system and epoch >= 1:
                    # origin <= 1.1 x bound  <=>  bound / origin >= 1 / 1.1
                    r.target = ">= 0.909x"
                    r.met = r.ratio >= 1 / 1.1
    return rows


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--one":
        try:
            result = _child(json.loads(argv[1]))
        except Exception as exc:
            traceback.print_exc()
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result), flush=True)
        return 0
    print("usage: python -m bench.loader_peers --one SPEC_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
