"""Scenario "cluster": the cluster model, validated on real node processes, projected.

Validation: ``N`` node processes (each its own ``cache_dir``: its "NVMe", RAM
tier off), optionally sharing a directory as the shared tier, read a dataset
over several epochs, each epoch shuffled with a seeded permutation and split
across nodes as ``DistributedSampler`` does. The origin is the loopback HTTP
origin in its own process, with a bandwidth cap per response. Per epoch, the
origin's byte counter gives origin bytes and each node's ``cache_stats()``
the disk- and shared-tier hit bytes. :func:`bench.cluster_model.simulate` runs
the same orders with the same budgets; the table shows model / measured, and
the target is agreement within 10% (``min(r, 1/r) >= 0.9``) over all epochs.

Projection: :func:`bench.cluster_model.expected` at the research cluster's
scale (see :data:`PROJECTION`), against the aim of about 1 GB/s per GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.cluster_model import (
    Cluster,
    EpochFigures,
    Shards,
    expected,
    node_streams,
    shuffle_order,
    simulate,
)
from bench.procs import stop_process
from bench.report import Row, Target
from cachefs.tiers.disk import CHUNK_HEADER

__all__ = ["PROJECTION", "measure", "project", "run"]

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
GB, TB, PB, EB = 1e9, 1e12, 1e15, 1e18
TARGET = ">= 0.9x"  # agreement min(model/measured, measured/model)
AIM_PER_GPU = 1 * GB  # 16 TB/s for 16,000 GPUs
SEED = 7

_ORIGIN = """
import json, sys
from cachefs.testing import HTTPOrigin, make_shards
count, size, bandwidth = json.loads(sys.argv[1])
files = make_shards(count, size, seed=11, prefix="cluster/")
with HTTPOrigin(files=files, bandwidth=bandwidth) as origin:
    print(json.dumps([origin.url_for(n) for n in sorted(files)]), flush=True)
    for line in sys.stdin:
        if line.strip() != "stats":
            break
        print(json.dumps({"bytes_sent": origin.stats.bytes_sent}), flush=True)
"""

_NODE = """
import json, sys, time
from cachefs import CacheFileSystem
cfg = json.loads(sys.argv[1])
fs = CacheFileSystem(target_protocol="http", cache_dir=cfg["cache_dir"], ram_limit=0,
                     disk_limit=cfg["disk_limit"], chunk_size=cfg["chunk"],
                     policy=cfg["policy"], shared=cfg["shared"], metadata_ttl=None,
                     readahead=0, skip_instance_cache=True)
print("ready", flush=True)
for line in sys.stdin:
    urls = json.loads(line)
    if urls is None:
        break
    t0 = time.perf_counter()
    for url in urls:
        fs.cat_file(url)
    fs.wait_idle()
    s = fs.cache_stats()
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "disk": s["disk"]["hit_bytes"],
                      "shared": s.get("shared", {}).get("hit_bytes", 0)}), flush=True)
fs.close()
"""


@dataclass(frozen=True, slots=True)
class Setup:
    """One validation run: the machine-sized cluster and its dataset."""

    nodes: int
    shards: Shards
    disk_fraction: float  # node disk budget / dataset
    shared: bool
    policy: str
    epochs: int
    origin_cap: float  # bytes/s per response

    @property
    def label(self) -> str:
        tier = "+shared" if self.shared else ""
        return f"{self.nodes} nodes{tier} {self.policy}"

    def cluster(self) -> Cluster:
        """The model of this setup: one origin stream per node at the cap."""
        return Cluster(
            nodes=self.nodes,
            gpus_per_node=1,
            nvme_bytes=int(self.shards.nbytes * self.disk_fraction),
            nvme_bw=1 * GB,
            nic_bw=self.origin_cap,
            shared_bytes=math.inf if self.shared else 0,
            shared_bw=1 * GB,
            origin_bw=self.origin_cap * self.nodes,
            policy=self.policy,
            record_overhead=CHUNK_HEADER.size,
        )


def _start(script: str, arg: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(arg)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _ask(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline()


def measure(setup: Setup) -> list[dict[str, float]]:
    """Run ``setup`` on real processes; return per-epoch measured figures."""
    sh = setup.shards
    origin = _start(_ORIGIN, [sh.count, sh.shard_bytes, setup.origin_cap])
    nodes: list[subprocess.Popen[str]] = []
    out: list[dict[str, float]] = []
    try:
        assert origin.stdout is not None
        urls = json.loads(origin.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="cachefs-cluster-") as tmp:
            shared = f"file://{tmp}/shared" if setup.shared else None
            for n in range(setup.nodes):
                cfg = {
                    "cache_dir": f"{tmp}/node{n}",
                    "disk_limit": int(sh.nbytes * setup.disk_fraction),
                    "chunk": sh.chunk_bytes,
                    "policy": setup.policy,
                    "shared": shared,
                }
                nodes.append(_start(_NODE, cfg))
            for proc in nodes:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError("a node process failed to start")
            before = {"disk": [0.0] * setup.nodes, "shared": [0.0] * setup.nodes}
            origin_before = 0.0
            for epoch in range(setup.epochs):
                order = shuffle_order(sh.count, SEED, epoch)
                streams = node_streams(order, setup.nodes, 1)
                for proc, stream in zip(nodes, streams, strict=True):
                    assert proc.stdin is not None
                    proc.stdin.write(json.dumps([urls[i] for i in stream]) + "\n")
                    proc.stdin.flush()
                replies = []
                for proc in nodes:
                    assert proc.stdout is not None
                    replies.append(json.loads(proc.stdout.readline()))
                sent = json.loads(_ask(origin, "stats"))["bytes_sent"]
                read = sum(len(s) for s in streams) * sh.shard_bytes
                fig = {
                    "epoch": epoch,
                    "read_bytes": read,
                    "origin_bytes": sent - origin_before,
                    "disk_bytes": sum(r["disk"] for r in replies) - sum(before["disk"]),
                    "shared_bytes": sum(r["shared"] for r in replies)
                    - sum(before["shared"]),
                    "seconds": max(r["seconds"] for r in replies),
                }
                out.append(fig)
                origin_before = sent
                before = {
                    "disk": [r["disk"] for r in replies],
                    "shared": [r["shared"] for r in replies],
                }
    finally:
        for proc in [*nodes, origin]:
            if proc.stdin is not None and proc.poll() is None:
                try:
                    proc.stdin.write("null\n")
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in [*nodes, origin]:
            stop_process(proc, 30)
    return out


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as strings (results are strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _agreement(model: float, measured: float) -> float:
    """``min(r, 1/r)`` of ``r = model / measured``; 1 when both are ~0."""
    tiny = 1e-3
    if abs(model) < tiny and abs(measured) < tiny:
        return 1.0
    if model <= 0 or measured <= 0:
        return 0.0
    r = model / measured
    return min(r, 1 / r)


def _validation_rows(setup: Setup, measured: list[dict[str, float]]) -> list[Row]:
    model = simulate(
        setup.cluster(), setup.shards, setup.epochs, orders=None, seed=SEED
    )
    rows: list[Row] = []
    worst = 1.0
    for fig, meas in zip(model, measured, strict=True):
        read = meas["read_bytes"]
        pairs = {
            "origin": (fig.origin_fraction, meas["origin_bytes"] / read),
            "disk hit": (fig.disk_hit, meas["disk_bytes"] / read),
        }
        if setup.shared:
            pairs["shared hit"] = (fig.shared_hit, meas["shared_bytes"] / read)
        for name, (m, r) in pairs.items():
            worst = min(worst, _agreement(m, r))
            ratio = m / r if r > 0 else (1.0 if m == 0 else math.nan)
            rows.append(
                Row(
                    row=f"{setup.label} e{fig.epoch} {name}",
                    system="model",
                    value=m,
                    unit="fraction",
                    samples=[m],
                    reference="measured",
                    ratio=ratio,
                    detail={"measured": r, "epoch": fig.epoch, "metric": name},
                )
            )
    target = Target.parse(TARGET)
    secs_model = [f.seconds for f in model]
    secs_meas = [m["seconds"] for m in measured]
    rows.append(
        Row(
            row=f"{setup.label} agreement",
            system="model",
            value=worst,
            unit="min(r, 1/r)",
            samples=[worst],
            reference="measured",
            ratio=worst,
            target=TARGET,
            met=target.check(worst),
            detail=_finite(
                {
                    "setup": asdict(setup),
                    "dataset_bytes": setup.shards.nbytes,
                    "measured": measured,
                    "model": [asdict(f) for f in model],
                    "model_seconds": secs_model,
                    "measured_seconds": secs_meas,
                }
            ),
        )
    )
    return rows


# -- projection --------------------------------------------------------------------

#: The research cluster, as assumed for the projection (see docs/scaling.md).
PROJECTION: dict[str, Any] = {
    "nodes": 760,
    "gpus_per_node": 8,
    "nvme_per_node": 15 * TB,  # DGX A100 data-cache NVMe
    "nvme_bw": 25 * GB,  # per node, 4 Gen4 NVMe drives
    "nic_bw": 25 * GB,  # per node, 2 x 100 Gb/s storage links
    "shared_bytes": 46 * PB,
    "shared_bw": 16 * TB,  # the cache tier's aggregate aim
    "origin_bw": 2 * TB,  # bulk storage, aggregate
    "chunk": 64 << 20,
    "epochs": 4,
    "datasets": {"1 EB": 1 * EB, "10 PB": 10 * PB},
}


def _layouts(p: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The same 46 PB placed two ways: on the nodes, or as a shared tier."""
    return {
        "46 PB on nodes": {
            "nvme_bytes": p["shared_bytes"] / p["nodes"],
            "shared_bytes": 0,
        },
        "15 TB NVMe + 46 PB shared": {
            "nvme_bytes": p["nvme_per_node"],
            "shared_bytes": p["shared_bytes"],
        },
    }


def project(
    p: dict[str, Any] = PROJECTION,
) -> list[tuple[str, Cluster, list[EpochFigures]]]:
    """Return (label, cluster, per-epoch expectation) for every projected case."""
    out = []
    for dname, dbytes in p["datasets"].items():
        for lname, layout in _layouts(p).items():
            for policy in ("epoch", "lru"):
                cluster = Cluster(
                    nodes=p["nodes"],
                    gpus_per_node=p["gpus_per_node"],
                    nvme_bytes=layout["nvme_bytes"],
                    nvme_bw=p["nvme_bw"],
                    nic_bw=p["nic_bw"],
                    shared_bytes=layout["shared_bytes"],
                    shared_bw=p["shared_bw"],
                    origin_bw=p["origin_bw"],
                    policy=policy,
                    record_overhead=CHUNK_HEADER.size,
                )
                figs = expected(cluster, dbytes, p["chunk"], p["epochs"])
                out.append((f"{dname}, {lname}, {policy}", cluster, figs))
    return out


def _projection_rows() -> list[Row]:
    rows: list[Row] = []
    for label, cluster, figs in project():
        last = figs[-1]
        detail = _finite(
            {
                "epoch": last.epoch,
                "cluster": asdict(cluster),
                "per_epoch": [
                    {**asdict(f), "disk_hit": f.disk_hit, "shared_hit": f.shared_hit}
                    for f in figs
                ],
                "origin_pb_per_epoch": last.origin_bytes / PB,
                "disk_hit": last.disk_hit,
                "shared_hit": last.shared_hit,
                "bottleneck": last.bottleneck,
                "epoch_hours": last.seconds / 3600,
            }
        )
        rows.append(
            Row(
                row=f"{label}: per-GPU bandwidth",
                system="model",
                value=last.per_gpu_bw / GB,
                unit="GB/s per GPU",
                samples=[last.per_gpu_bw / GB],
                reference="aim 1 GB/s per GPU",
                ratio=last.per_gpu_bw / AIM_PER_GPU,
                detail=detail,
            )
        )
        for name, value, unit in (
            ("origin traffic", last.origin_bytes / PB, "PB/epoch"),
            ("disk hit", last.disk_hit, "fraction"),
            ("shared hit", last.shared_hit, "fraction"),
        ):
            rows.append(
                Row(
                    row=f"{label}: {name}",
                    system="model",
                    value=value,
                    unit=unit,
                    samples=[value],
                    detail={"epoch": last.epoch},
                )
            )
    return rows


def setups(quick: bool) -> list[Setup]:
    """The validation runs: (no shared, shared) x (epoch, lru)."""
    if quick:
        base = Setup(4, Shards(32, 2 << 20, 512 << 10), 0.5, False, "epoch", 4, 64 * MB)
    else:
        base = Setup(4, Shards(64, 2 << 20, 512 << 10), 0.5, False, "epoch", 5, 64 * MB)
    return [
        replace(base, shared=shared, policy=policy)
        for shared in (False, True)
        for policy in ("epoch", "lru")
    ]


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Validate the model on real node processes, then project it."""
    rows: list[Row] = []
    for setup in setups(quick):
        t0 = time.perf_counter()
        measured = measure(setup)
        rows += _validation_rows(setup, measured)
        print(f"  {setup.label}: {time.perf_counter() - t0:.1f} s", flush=True)
    rows += _projection_rows()
    return rows
