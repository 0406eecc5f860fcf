"""Scenario "dlio" (issue 22): MLPerf Storage's DLIO unet3d_h100 through the mount.

DLIO's ``unet3d_h100`` workload, unchanged except ``num_files_train`` and
``epochs`` (and the folders), run three ways with the page cache dropped
before each run: against local files (the limit), against the mount cold
(an empty cache over an HTTP origin serving the same files with 20 ms
latency per response), and against the mount warm (the same cache again).
Rows: DLIO's accelerator utilisation (AU) per epoch and the bytes the origin
served. Targets: warm AU >= 0.98x local AU; cold epoch AU >= 90%.

DLIO runs in its own virtual environment, never the project's (its pins
clash): ``CACHEFS_DLIO_PYTHON`` names its interpreter (default
``dliovenv/bin/python`` beside the repository's folder). Without DLIO the scenario
is skipped, with the reason in its one row. Install (docs/mount.md)::

    python3 -m venv dliovenv
    dliovenv/bin/pip install torch            # the CPU build
    apt-get install -y libopenmpi-dev openmpi-bin
    dliovenv/bin/pip install --no-deps dlio-benchmark
    dliovenv/bin/pip install hydra-core omegaconf mpi4py h5py pandas psutil \\
        Pillow PyYAML numpy

DLIO's profiler factory imports TensorFlow eagerly (for a profiler this
run never uses); :data:`_LAUNCH` puts a stub of that one module in
``sys.modules`` before DLIO starts, so nothing in its install is edited.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.report import Row, Target, as_reference, compare
from cachefs.mount import mount
from cachefs.testing import HTTPOrigin

__all__ = ["dlio_python", "run"]

MiB = 2**20
BATCH = 7  # unet3d_h100's batch size: files per step (one sample a file)
LATENCY = 0.020

# DLIO's entry point with its eager TensorFlow import made lazy: a stub of
# the profiler module that would import it (the tensorboard profiler is
# the only user, and this run profiles nothing).
_LAUNCH = """
import sys, types

def stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module

class TFProfiler:
    @classmethod
    def get_instance(cls):
        raise RuntimeError("the tensorboard profiler needs TensorFlow")

class dft_fn:  # dftracer's no-op face: decorators pass functions through
    def __init__(self, *args, **kwargs): pass
    def log(self, func=None, **kwargs): return func
    log_init = log_static = log
    def iter(self, iterable, **kwargs): yield from iterable
    def update(self, **kwargs): pass
    def flush(self): pass
    def reset(self): pass
    def __enter__(self): return self
    def __exit__(self, *exc): return False

class dftracer:
    type = None
    def initialize_log(self, *args, **kwargs): return self
    def get_time(self): return 0
    def enter_event(self): pass
    def exit_event(self): pass
    def log_event(self, *args, **kwargs): pass
    def finalize(self): pass

stub("dlio_benchmark.profiler.tf_profiler", TFProfiler=TFProfiler)
stub("dftracer")
stub("dftracer.logger", dftracer=dftracer, dft_fn=dft_fn, DFTRACER_ENABLE=False)
from dlio_benchmark.main import main
sys.argv = ["dlio_benchmark", *sys.argv[1:]]
main()
"""


def dlio_python() -> tuple[str | None, str]:
    """Return DLIO's interpreter, or ``None`` and why it cannot run."""
    beside = Path(__file__).resolve().parents[2] / "dliovenv" / "bin" / "python"
    python = os.environ.get("CACHEFS_DLIO_PYTHON", str(beside))
    if not Path(python).exists():
        return None, f"no DLIO interpreter at {python} (set CACHEFS_DLIO_PYTHON)"
    probe = subprocess.run(
        [python, "-c", "import dlio_benchmark, torch, mpi4py, hydra"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        return None, f"DLIO not importable: {probe.stderr.strip()[-300:]}"
    return python, ""


def _drop_tree(root: Path) -> None:
    os.sync()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _dlio(
    python: str, folder: Path, out: Path, files: int, epochs: int, generate: bool
) -> str:
    args = [
        "workload=unet3d_h100",
        f"++workload.dataset.data_folder={folder}",
        f"++workload.dataset.num_files_train={files}",
        f"++workload.train.epochs={epochs}",
        f"++workload.workflow.generate_data={generate}",
        f"++workload.workflow.train={not generate}",
        "++workload.workflow.checkpoint=False",
        f"++workload.output.folder={out}",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1"}
    env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    done = subprocess.run(
        [python, "-c", _LAUNCH, *args],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
        cwd=out,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"DLIO failed: {(done.stdout + done.stderr)[-3000:]}")
    return done.stdout + done.stderr


def _au(out: Path, log: str) -> list[float]:
    """Return DLIO's AU per epoch (percent), from its summary or its log."""
    for summary in out.rglob("summary.json"):
        data: dict[str, Any] = json.loads(summary.read_text())
        per_epoch = data.get("metric", {}).get("train_au_percentage")
        if per_epoch:
            return [float(v) for v in per_epoch]
    found = re.findall(r"Epoch (\d+).*?AU.*?([\d.]+)", log)
    return [float(v) for _, v in found]


def run(quick: bool, args: argparse.Namespace | None = None) -> list[Row]:
    """Run the scenario; see the module docstring."""
    python, why = dlio_python()
    if python is None:
        return [Row("dlio", f"skipped: {why}", float("nan"), "%", [])]
    steps = 4 if quick else 8
    files, epochs = steps * BATCH, 2
    au: dict[str, list[float]] = {}
    origin_bytes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="cachefs-bench-dlio-") as tmp:
        root = Path(tmp)
        data, cache, mp = root / "data", root / "cache", root / "mnt"
        for d in (root / "gen", mp):
            d.mkdir()
        _dlio(python, data, root / "gen", files, epochs, generate=True)
        dataset = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
        with HTTPOrigin(root=data, latency=LATENCY) as origin:
            for name in ("local", "mount cold", "mount warm"):
                out = root / name.replace(" ", "-")
                out.mkdir()
                _drop_tree(data)
                if cache.exists():
                    _drop_tree(cache)
                if name == "local":
                    au[name] = _au(out, _dlio(python, data, out, files, epochs, False))
                    continue
                before = origin.stats.bytes_sent
                with mount(origin.url_for(""), mp, cache_dir=str(cache)):
                    log = _dlio(python, mp, out, files, epochs, False)
                au[name] = _au(out, log)
                origin_bytes[name] = origin.stats.bytes_sent - before
    detail = {
        "workload": "unet3d_h100",
        "num_files_train": files,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "dataset_bytes": dataset,
        "origin_latency_s": LATENCY,
        "origin_bytes": origin_bytes,
    }
    rows: list[Row] = []
    for epoch in range(epochs):
        label = f"AU epoch {epoch + 1}"

        def row(name: str, label: str = label, epoch: int = epoch) -> Row:
            value = au[name][epoch]
            extra = {"origin_bytes_run": origin_bytes.get(name, 0)}
            return Row(label, name, value, "%", [value], detail={**detail, **extra})

        ref = as_reference(row("local"))
        cold = row("mount cold")
        warm = compare(row("mount warm"), ref, ">= 0.98x")
        # AU is higher-is-better, which report.compare infers from "/s" units
        # only: the ratio and the verdict are taken the right way up here.
        ratio = warm.value / ref.value if ref.value else math.nan
        warm = replace(
            warm,
            ratio=ratio,
            met=Target.parse(">= 0.98x").check(ratio),
            detail=row("mount warm").detail,
        )
        rows += [ref, warm, cold]
    return rows
