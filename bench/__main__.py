"""Run benchmark scenarios: ``python -m bench [scenario ...] [--quick]``.

Each scenario is a callable ``(quick, args) -> list[Row]`` registered in
:data:`SCENARIOS`. Every system of a scenario is measured in the same run,
interleaved and repeated; the table shows medians and ratios, and the full
result (samples, machine, parameters) goes to ``bench/results/<name>.json``.

Targets are reported, never asserted: the exit status is 0 unless
``--strict`` is given and a target is unmet.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    cluster,
    cold_fill,
    cold_shards,
    compression,
    consumer_wait,
    disk_writes,
    dlio,
    epoch_scan,
    host_memory,
    hot_path,
    loader_peers,
    loader_stall,
    mount,
    publish,
    s3_cold,
    single_flight,
    user_loaders,
    user_paths,
    user_reads,
    warm_jobs,
)
from bench.report import Result, Row, format_table, loadavg, machine_info, unmet
from cachefs import parse_size

__all__ = ["RESULTS_DIR", "SCENARIOS", "Scenario", "main"]

Scenario = Callable[[bool, argparse.Namespace], list[Row]]

#: Registered scenarios, in the order ``python -m bench`` runs them.
SCENARIOS: dict[str, Scenario] = {
    "hot_path": hot_path.run,
    "cold_shards": cold_shards.run,
    "consumer_wait": consumer_wait.run_consumer_wait,
    "epoch_scan": epoch_scan.run,
    "single_flight": single_flight.run,
    "compression": compression.run,
    "loader_stall": loader_stall.run,
    "loader_peers": loader_peers.run,
    "s3_cold": s3_cold.run,
    "disk_writes": disk_writes.run,
    "cluster": cluster.run,
    "user_cold_open": user_paths.run_cold_open,
    "user_cold_loader": user_loaders.run_cold_loader,
    "user_warm_epoch": user_loaders.run_warm_epoch,
    "user_warm_fresh": user_paths.run_warm_fresh,
    "user_hot_ram": user_reads.run_hot_ram,
    "user_random_fresh": user_reads.run_random_fresh,
    "user_small_reads": user_reads.run_small_reads,
    "mount": mount.run,
    "dlio": dlio.run,
    "cold_fill": cold_fill.run,
    "warm_jobs": warm_jobs.run,
}

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _size(text: str) -> int:
    try:
        return parse_size(text, "--size", allow_zero=False)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run cachefs benchmark scenarios (all when none is named).",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"scenario to run: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, fewer repetitions"
    )
    parser.add_argument(
        "--size", type=_size, help="file size, e.g. 64MiB (scenario default)"
    )
    parser.add_argument("--reps", type=_positive, help="repetitions per system")
    parser.add_argument("--reads", type=_positive, help="random reads per sample")
    parser.add_argument(
        "--min-time",
        dest="min_time",
        type=_seconds,
        help="seconds one timed sample lasts at least",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="directory for <scenario>.json (default: bench/results)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the scenarios and exit"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is unmet"
    )
    parser.add_argument(
        "--no-publish",
        dest="publish",
        action="store_false",
        help="do not rewrite docs/bench/results.md and its plots (only a run "
        "into the default --out rewrites them)",
    )
    return parser


def _summary(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _scenario(
    name: str, args: argparse.Namespace, machine: dict[str, Any], params: dict[str, Any]
) -> bool:
    """Run one scenario, print and write its result; whether a target is unmet."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    reported = host_memory.reported_mib()
    t0 = time.perf_counter()
    rows = SCENARIOS[name](args.quick, args)
    extra: dict[str, Any] = {"loadavg_after": loadavg()}
    if reported is not None and (now := host_memory.reported_mib()) is not None:
        # Memory handed back to the host while it ran: 0 when paused.
        extra["page_reporting_mib_during"] = now - reported
    result = Result(
        scenario=name,
        quick=args.quick,
        rows=rows,
        machine=machine,
        params={**params, **extra},
        started_at=started,
        duration_s=round(time.perf_counter() - t0, 3),
    )
    mode = " (quick)" if args.quick else ""
    print()
    print(format_table(rows, title=f"{name}{mode}"))
    path = result.write(args.out)
    print(f"\n{name}: {result.duration_s:.1f} s, results in {path}", flush=True)
    return bool(unmet(rows))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios named in ``argv``; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for name, fn in SCENARIOS.items():
            module = sys.modules.get(fn.__module__)
            print(f"{name}: {_summary(module.__doc__ if module else fn.__doc__)}")
        return 0
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    machine = machine_info()
    print(
        f"machine: {machine['cpu_model']}, {machine['cpus_usable']} usable cores, "
        f"python {machine['python']}, packages {machine['packages']}, "
        f"load {machine['loadavg']}",
        flush=True,
    )
    params = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("scenarios", "list")
    }
    failed = False
    published = Path(args.out).resolve() == RESULTS_DIR.resolve()
    host: dict[str, Any] = {}
    with host_memory.paused(host) if published else contextlib.nullcontext():
        machine["free_page_reporting"] = host.get(
            "free_page_reporting", "left as it was (a run outside bench/results)"
        )
        print(f"free page reporting: {machine['free_page_reporting']}", flush=True)
        for name in names:
            failed = _scenario(name, args, machine, params) or failed
    # Only a run into bench/results rewrites the docs: a run elsewhere (a
    # test, an experiment) must not replace the published figures.
    if args.publish and published:
        page = publish.publish(args.out)
        print(f"report: {page}", flush=True)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
