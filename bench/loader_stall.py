"""Scenario "loader_stall": a training loop fed by a data loader, with compute.

The demo's dataset (tar shards of ~4 KiB samples) is served by an HTTP origin
with 20 ms per request and read for three epochs through ``ShardDataset``
(a torch DataLoader with 2 workers when torch is installed, the plain
iterable otherwise), with a fixed simulated training step per batch (50 ms,
see :data:`STEP`). For
cachefs and for plain fsspec http over the same origin it records, per epoch,
the time the loop waited for a batch and the epoch time. Targets: once warm
(epochs 2 and 3), cachefs's wait is <= 5% of the epoch. Reported for context:
cold-epoch (epoch 1) throughput of cachefs against plain fsspec, with the
training step and without it (a second, one-epoch run).
"""

from __future__ import annotations

import argparse
import dataclasses

from bench.report import Row, Target
from cachefs.cli.demo import DemoOptions, EpochRow, run_demo

__all__ = ["run"]

MiB = 2**20
TARGET = "<= 0.05x"
#: Simulated training step per batch of 64 samples, in seconds. Below about
#: 40 ms the DataLoader's own cost of handing a batch from a worker to the
#: loop (about 2 ms here, the same with data already in memory) is what the
#: loop waits for, not storage.
STEP = 0.05


def _rows_for(rows: list[EpochRow], system: str) -> list[EpochRow]:
    return sorted((r for r in rows if r.system == system), key=lambda r: r.epoch)


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Measure data-wait time per epoch with cachefs and plain fsspec."""
    opts = DemoOptions(
        shards=8 if quick else 16,
        shard_size=(2 if quick else 8) * MiB,
        epochs=3,
        latency=0.02,
        step=STEP,
    )
    measured = run_demo(opts)
    target = Target.parse(TARGET)
    out: list[Row] = []
    for system in ("cachefs", "fsspec http"):
        for r in _rows_for(measured, system):
            share = r.wait / r.seconds if r.seconds else 0.0
            judged = system == "cachefs" and r.epoch > 0
            out.append(
                Row(
                    row=f"epoch {r.epoch + 1} wait share",
                    system=system,
                    value=share,
                    unit="of epoch",
                    samples=[share],
                    reference="epoch time",
                    ratio=share,
                    target=TARGET if judged else None,
                    met=target.check(share) if judged else None,
                    detail={
                        "epoch": r.epoch + 1,
                        "wait_seconds": r.wait,
                        "epoch_seconds": r.seconds,
                        "samples_per_s": r.rate,
                        "hit_rate": r.hit_rate,
                        "origin_bytes": r.origin_bytes,
                        "workers": opts.workers,
                        "step_s": opts.step,
                        "origin": "HTTP, 20 ms per request",
                    },
                )
            )
    # Cold throughput with and without the training step: with it, both
    # systems run at the step's pace; without it, at the loader's.
    no_step = run_demo(dataclasses.replace(opts, step=0.0, epochs=1))
    for label, rows in (("with step", measured), ("no step", no_step)):
        cold = {s: _rows_for(rows, s)[0] for s in ("cachefs", "fsspec http")}
        for system in ("fsspec http", "cachefs"):
            out.append(
                Row(
                    row=f"epoch 1 (cold), {label}",
                    system=system,
                    value=cold[system].rate,
                    unit="samples/s",
                    samples=[cold[system].rate],
                    reference="fsspec http",
                    ratio=cold[system].rate / max(cold["fsspec http"].rate, 1e-9),
                )
            )
    return out
