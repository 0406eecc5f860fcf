"""Scenario "loader_peers": cachefs against the data loaders users pick instead.

Origin: moto's S3 server in its own process behind a loopback proxy in
another (:mod:`bench.s3_proxy`) that adds 20 ms to every request and counts
the bytes of every response, so origin bytes are measured the same way for
every system. The same samples (ids 0..n-1, 31 KiB of random bytes each) are
written, untimed, in each library's own format: tar shards (webdataset and
cachefs), LitData chunks (``litdata.optimize``) and MDS shards (MosaicML
``MDSWriter``), all with about the same shard size.

Systems, each read by a torch DataLoader with 2 workers and batch 32:

- cachefs ``ShardDataset`` over the tars (prefetch on, sample counts given);
- webdataset over ``cachefs::s3://`` (a ``gopen`` scheme registered here);
- LitData ``StreamingDataset`` (``StreamingDataLoader``);
- MosaicML streaming ``StreamingDataset`` over MDS;
- webdataset over plain ``s3://`` (fsspec/s3fs, no cache; big config only).

Two configurations: ``big`` (every cache 4x the data set, epochs 0-2) and
``half`` (every cache limited to half the data set with the library's own
knob, epochs 0-3). Each (system, configuration) runs in a fresh process with
fresh cache directories. Reported per epoch: samples/s, origin bytes ÷ the
system's own data-set size, and whether every sample id came exactly once.
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
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from bench.report import Row

__all__ = ["SYSTEMS", "run"]

KiB, MiB = 2**10, 2**20
#: Payload bytes per sample: with its 1 KiB of tar header and padding a
#: sample fills 32 KiB of a tar shard.
PAYLOAD = 31 * KiB
WORKERS = 2
BATCH = 32
CACHEFS = "cachefs ShardDataset"
SYSTEMS = (
    CACHEFS,
    "webdataset + cachefs::s3",
    "LitData StreamingDataset",
    "MosaicML streaming (MDS)",
    "webdataset + plain s3",
)
#: The package each system needs beyond cachefs and torch.
_NEEDS = {
    CACHEFS: (),
    "webdataset + cachefs::s3": ("webdataset",),
    "LitData StreamingDataset": ("litdata",),
    "MosaicML streaming (MDS)": ("streaming",),
    "webdataset + plain s3": ("webdataset",),
}
_PREFIX = {
    CACHEFS: "tars",
    "webdataset + cachefs::s3": "tars",
    "webdataset + plain s3": "tars",
    "LitData StreamingDataset": "litdata",
    "MosaicML streaming (MDS)": "mds",
}


def _payload(i: int) -> bytes:
    return random.Random(i).randbytes(PAYLOAD)


# -- writing each library's format (untimed) --------------------------------


def _write_tars(out: Path, shards: int, per_shard: int) -> list[int]:
    out.mkdir(parents=True)
    counts = []
    for s in range(shards):
        ids = range(s * per_shard, (s + 1) * per_shard)
        with tarfile.open(
            out / f"shard-{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT
        ) as tar:
            for i in ids:
                data = _payload(i)
                info = tarfile.TarInfo(f"{i:08d}.bin")
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        counts.append(len(ids))
    return counts


def _litdata_item(i: int) -> dict[str, Any]:
    return {"id": i, "data": _payload(i)}


def _write_litdata(out: Path, n: int, shard_bytes: int) -> None:
    import litdata

    litdata.optimize(
        fn=_litdata_item,
        inputs=list(range(n)),
        output_dir=str(out),
        chunk_bytes=shard_bytes,
        num_workers=1,
        mode="overwrite",
    )


def _write_mds(out: Path, n: int, shard_bytes: int) -> None:
    writer_cls = _streaming()[1]
    with writer_cls(
        out=str(out),
        columns={"id": "int", "data": "bytes"},
        size_limit=shard_bytes,
        compression=None,
    ) as writer:
        for i in range(n):
            writer.write({"id": i, "data": _payload(i)})


def _upload(client: Any, bucket: str, root: Path, prefix: str) -> int:
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            total += path.stat().st_size
    return total


# -- peers' imports and glue -------------------------------------------------


def _streaming() -> tuple[Any, Any]:
    """Import MosaicML streaming's dataset and MDS writer.

    ``import streaming`` runs ``streaming/__init__.py``, which imports
    ``streaming.vision`` (torchvision) and ``streaming.base.dataloader``
    (transformers) even though neither ``StreamingDataset`` nor ``MDSWriter``
    uses them; torchvision from PyPI does not load beside the CPU build of
    torch. So the two package modules are created from their real specs
    without running their ``__init__``, and the real submodules are imported
    from them: no stand-in code, only the eager imports skipped.
    """
    if "streaming.base.dataset" not in sys.modules:
        for name in ("streaming", "streaming.base"):
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)
            if spec is None:
                raise ImportError(f"No module named {name!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            if name == "streaming.base":
                sys.modules["streaming"].base = module  # type: ignore[attr-defined]
    from streaming.base.dataset import StreamingDataset
    from streaming.base.format.mds.writer import MDSWriter

    return StreamingDataset, MDSWriter


def _register_gopen(
    s3_options: dict[str, Any], cachefs_options: dict[str, Any]
) -> None:
    """Let webdataset open ``s3://`` and ``cachefs::s3://`` URLs with fsspec.

    webdataset 1.0's ``gopen`` knows neither scheme (its S3 recipe is a
    ``pipe:aws s3 cp`` URL); cachefs will ship this glue (issue 14).
    """
    import fsspec

    # ``webdataset.gopen`` is also the name of the function: take the module.
    gopen = importlib.import_module("webdataset.gopen")

    def fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
        if url.startswith("cachefs::"):
            return fsspec.open(url, mode, s3=s3_options, cachefs=cachefs_options).open()
        return fsspec.open(url, mode, **s3_options).open()

    gopen.gopen_schemes["s3"] = fsspec_open
    gopen.gopen_schemes["cachefs"] = fsspec_open


def _cachefs_sample(sample: dict[str, Any]) -> tuple[int, bytes]:
    data = sample["bin"]
    return int(sample["__key__"]), data.tobytes() if isinstance(
        data, memoryview
    ) else data


def _collate(batch: list[Any]) -> tuple[list[int], int]:
    ids, nbytes = [], 0
    for item in batch:
        if isinstance(item, dict):
            i, data = item["id"], item["data"]
        else:
            i, data = item
        ids.append(int(i))
        nbytes += len(data)
    return ids, nbytes


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
                    if prefix in problems:
                        rows.append(_info_row(label, system, problems[prefix]))
                        continue
                    if system == "webdataset + plain s3" and config == "half":
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
                        "policy": "epoch",
                        "epochs": epochs,
                        "shards": shards,
                        "counts": counts,
                        "samples": n,
                        "shuffle_block": n if config == "big" else 2 * per_shard,
                    }
                    print(f"loader_peers: {config} {system} ...", flush=True)
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
