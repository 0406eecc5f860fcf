"""Smoke tests of the benchmark runner: it runs and records every row.

Performance targets are reported by the benchmarks, never asserted here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import SCENARIOS, main
from bench.report import Row, Target, compare, format_table

ROOT = Path(__file__).resolve().parents[1]

# (row prefix, system, reference, target) of every targeted comparison.
HOT_PATH_TARGETS = {
    ("1", "cachefs read_view (RAM)", "numpy copyto", ">= 2x"),
    ("2", "cachefs readinto (RAM)", "numpy copyto", ">= 0.8x"),
    ("3", "cachefs readinto (disk)", "local readinto", ">= 0.9x"),
    ("3", "cachefs readinto (disk)", "simplecache readinto", ">= 1x"),
    ("3", "cachefs read (disk)", "local read", ">= 0.9x"),
    ("3", "cachefs read (disk)", "simplecache read", ">= 1x"),
    ("4", "cachefs RAM", "simplecache", ">= 1x"),
    ("4", "cachefs RAM", "blockcache", ">= 1x"),
    ("4", "cachefs disk", "simplecache", ">= 1x"),
    ("4", "cachefs disk", "blockcache", ">= 1x"),
}


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def test_hot_path_tiny_run_writes_every_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["hot_path", "--quick", "--size", "4MiB", "--reps", "1"]
    argv += ["--reads", "200", "--min-time", "0.001", "--out", str(tmp_path)]
    assert main(argv) == 0

    printed = capsys.readouterr().out
    assert "| row " in printed and "targets met:" in printed

    doc = json.loads((tmp_path / "hot_path.json").read_text())
    assert doc["scenario"] == "hot_path"
    assert doc["quick"] is True
    machine = doc["machine"]
    assert machine["cpu_model"] and machine["python"]
    assert set(machine["packages"]) == {"cachefs", "fsspec", "numpy"}

    rows = doc["rows"]
    assert rows
    for row in rows:
        assert row["row"] and row["system"] and row["unit"] in ("GB/s", "us/read")
        assert _number(row["value"]) and row["value"] > 0, row
        assert _number(row["ratio"]) and row["ratio"] > 0, row
        assert row["reference"], row
        assert row["samples"] and all(_number(s) for s in row["samples"]), row
        assert row["detail"]["file_bytes"] == 4 * 2**20
        if row["target"] is not None:
            assert isinstance(row["met"], bool)
        if "origin_bytes_during_timing" in row["detail"]:
            assert row["detail"]["origin_bytes_during_timing"] == 0, row

    targeted = {
        (r["row"].split()[0], r["system"], r["reference"], r["target"])
        for r in rows
        if r["target"] is not None
    }
    assert targeted == HOT_PATH_TARGETS
    summary = doc["summary"]
    assert summary["targets"] == len(HOT_PATH_TARGETS)
    assert summary["met"] + len(summary["unmet"]) == summary["targets"]


def test_registry_and_cli_list() -> None:
    assert "hot_path" in SCENARIOS
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.startswith("hot_path: ")


def test_unknown_scenario_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no_such_scenario", "--out", "unused"])
    assert exc.value.code == 2
    assert "no_such_scenario" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "ratio", "met"),
    [(">= 2.0x", 2.0, True), (">= 2x", 1.99, False), ("> 1x", 1.0, False)],
)
def test_target_check(text: str, ratio: float, met: bool) -> None:
    assert Target.parse(text).check(ratio) is met


def test_unmet_targets_are_shown() -> None:
    ref = Row("r", "peer", 2.0, "us/read", [2.0])
    slow = compare(Row("r", "cachefs", 4.0, "us/read", [4.0]), ref, ">= 1x")
    fast = compare(Row("r", "cachefs", 1.0, "us/read", [1.0]), ref, ">= 1x")
    assert slow.ratio == pytest.approx(0.5) and slow.met is False
    assert fast.ratio == pytest.approx(2.0) and fast.met is True
    table = format_table([slow, fast])
    assert "UNMET" in table and "targets met: 1/2" in table
    assert "UNMET: r: cachefs is 0.50x peer, target >= 1x" in table


# (row prefix, system, reference, target) of every targeted comparison.
COLD_SHARDS_TARGETS = {
    ("1", "cachefs readahead", "blockcache", ">= 3x"),
    ("1", "cachefs readahead", "simplecache", ">= 1.5x"),
    ("1", "cachefs prefetch", "blockcache", ">= 3x"),
    ("1", "cachefs prefetch", "simplecache", ">= 1.5x"),
}
CONSUMER_WAIT_TARGETS = {
    ("1", "cachefs prefetch+readahead", "cachefs demand only", ">= 10x"),
}


def _check_scenario_doc(
    doc: dict[str, Any], name: str, targets: set[tuple[str, str, str, str]]
) -> None:
    assert doc["scenario"] == name and doc["quick"] is True
    rows = doc["rows"]
    assert rows
    for row in rows:
        assert row["row"] and row["system"] and row["unit"], row
        assert _number(row["value"]) and row["value"] >= 0, row
        assert row["samples"] and all(_number(s) for s in row["samples"]), row
        if row["reference"] is not None:
            assert _number(row["ratio"]) and row["ratio"] > 0, row
        if row["target"] is not None:
            assert isinstance(row["met"], bool), row
        detail = row["detail"]
        assert "GIL" in detail["origin_model"]
        assert detail["shard_bytes"] == 2**20
        assert detail["dataset_bytes"] == detail["shards"] * 2**20
        # Every system's origin traffic is recorded.
        assert _number(detail["origin_bytes_median"])
        assert _number(detail["origin_requests_median"])
    targeted = {
        (r["row"].split()[0], r["system"], r["reference"], r["target"])
        for r in rows
        if r["target"] is not None
    }
    assert targeted == targets
    summary = doc["summary"]
    assert summary["targets"] == len(targets)
    assert summary["met"] + len(summary["unmet"]) == summary["targets"]


def test_cold_shards_and_consumer_wait_tiny_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert {"cold_shards", "consumer_wait"} <= set(SCENARIOS)
    argv = ["cold_shards", "consumer_wait", "--quick", "--size", "1MiB"]
    argv += ["--reps", "1", "--out", str(tmp_path)]
    assert main(argv) == 0

    printed = capsys.readouterr().out
    assert "## cold_shards (quick)" in printed
    assert "## consumer_wait (quick)" in printed
    assert "origin model:" in printed and "targets met:" in printed

    cold = json.loads((tmp_path / "cold_shards.json").read_text())
    _check_scenario_doc(cold, "cold_shards", COLD_SHARDS_TARGETS)
    systems = {r["system"] for r in cold["rows"]}
    assert {
        "http (plain fsspec)",
        "simplecache",
        "blockcache",
        "cachefs readahead",
        "cachefs prefetch",
        "ceiling: 1 GET/shard, 0 ms",
    } <= systems
    by_unit = {(r["row"].split()[0], r["system"]): r for r in cold["rows"]}
    # Reading the whole dataset costs at least one request per shard and at
    # least the dataset's bytes.
    for system in systems:
        assert by_unit[("3", system)]["value"] >= 1, system
        assert by_unit[("4", system)]["value"] >= 1, system
    ceiling = by_unit[("3", "ceiling: 1 GET/shard, 0 ms")]
    assert ceiling["value"] == 1

    wait = json.loads((tmp_path / "consumer_wait.json").read_text())
    _check_scenario_doc(wait, "consumer_wait", CONSUMER_WAIT_TARGETS)
    counters = [r for r in wait["rows"] if r["row"].startswith("3 ")]
    assert any(r["system"] == "cachefs prefetch+readahead" for r in counters)
    issued = {r["system"]: r["value"] for r in wait["rows"] if r["row"][0] == "4"}
    # Shards of one chunk leave readahead nothing to do; prefetch fetches them.
    assert issued["cachefs prefetch+readahead: issued"] >= 1


def test_user_path_scenarios_tiny_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [
        "user_cold_open",
        "user_warm_fresh",
        "user_hot_ram",
        "user_random_fresh",
        "user_small_reads",
    ]
    # The two loader scenarios start torch DataLoader workers in several new
    # processes (seconds each): left out to keep this test short.
    assert {*names, "user_cold_loader", "user_warm_epoch"} <= set(SCENARIOS)
    argv = [*names, "--quick", "--size", "1MiB", "--reps", "1"]
    argv += ["--reads", "100", "--min-time", "0.001", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "origin model: HTTPOrigin (aiohttp) in its own process" in (
        capsys.readouterr().out
    )
    for name in names:
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        targeted = [r for r in doc["rows"] if r["target"] is not None]
        assert targeted, name
        for row in doc["rows"]:
            assert _number(row["value"]) and row["value"] > 0, row
            assert row["samples"] and all(_number(s) for s in row["samples"]), row
        for row in targeted:
            assert _number(row["ratio"]) and isinstance(row["met"], bool), row
    small = json.loads((tmp_path / "user_small_reads.json").read_text())
    policies = {r["system"] for r in small["rows"]}
    assert {"cachefs policy=lru", "cachefs policy=epoch"} <= policies


def test_cold_fill_tiny_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "cold_fill" in SCENARIOS
    # The S3 part and the DataLoader epoch start many more processes: this
    # test runs the HTTP references and the cachefs fill paths only.
    monkeypatch.setenv("CACHEFS_BENCH_FILL_S3", "0")
    monkeypatch.setenv("CACHEFS_BENCH_FILL_ONLY", "zero-copy,cachefs,!ShardDataset")
    monkeypatch.setenv("CACHEFS_BENCH_DISK", str(tmp_path))
    argv = ["cold_fill", "--quick", "--size", "1MiB", "--reps", "1"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert "## cold_fill (quick)" in capsys.readouterr().out

    doc = json.loads((tmp_path / "out" / "cold_fill.json").read_text())
    rows = doc["rows"]
    measured = {
        "zero-copy receive (BufferedProtocol)",
        "zero-copy receive + write/chunk",
        "cachefs, fsspec.open per file",
        "cachefs, fs.prefetch",
        "cachefs warm (disk), fsspec.open per file",
    }
    # "1 nginx", or "1 HTTPOrigin (no nginx)" where nginx is not installed.
    origin = rows[0]["row"].split(":")[0]
    assert origin in ("1 nginx", "1 HTTPOrigin (no nginx)")
    for unit in ("MB/s", "CPU s/GiB"):
        label = f"{origin}: {unit}"
        # The warm read has its own row ("1 nginx, warm: ...").
        by = {r["system"]: r for r in rows if r["row"].replace(", warm", "") == label}
        assert measured <= set(by), label
        for system in measured:
            row = by[system]
            assert row["unit"] == unit
            assert _number(row["value"]) and row["value"] > 0, row
            assert row["reference"] == "zero-copy receive + write/chunk", row
            assert row["detail"]["dataset_bytes"] >= 15 * 2**20
            assert row["detail"]["cache_filesystem"] != "unknown"
            # Each pass started with the same memory just freed.
            assert row["detail"]["freed_at_pass_start_bytes"] >= 4 * 15 * 2**20
        for system in ("cachefs, fsspec.open per file", "cachefs, fs.prefetch"):
            assert by[system]["target"] is not None
            assert isinstance(by[system]["met"], bool)
    # Every scratch and cache directory is removed afterwards.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cold_fill_targets_a_loader_epochs_fill_not_its_loader_work() -> None:
    # The cold epoch's CPU less the warm epoch's, per repetition, carries
    # the CPU target; the whole epoch keeps its MB/s target and its CPU
    # ratio, untargeted.
    from bench import cold_fill as cf

    gib = 2**30

    def passes(cpu_per_gib: list[float], seconds: float) -> list[dict[str, float]]:
        return [{"bytes": gib, "seconds": seconds, "cpu_s": c} for c in cpu_per_gib]

    runs = {
        cf.REFERENCE: passes([1.0, 1.0, 1.0], 1.0),
        cf.CFS_LOADER: passes([2.0, 3.0, 2.2], 1.0),
        cf.CFS_LOADER_WARM: passes([0.9, 1.9, 1.0], 0.5),
    }
    rows = cf._rows(
        "1 nginx", runs, {}, gib, cf.REFERENCE, {}, cf.FILL_PATHS, cf.CPU_PATHS
    )
    by = {(r.row, r.system): r for r in rows}
    fill = by[("1 nginx: CPU s/GiB", cf.LOADER_FILLS[cf.CFS_LOADER])]
    assert fill.samples == pytest.approx([1.1, 1.1, 1.2])
    assert fill.value == pytest.approx(1.1) and fill.target is not None
    assert fill.met is True  # 1.1 <= 1.3 x the reference's 1.0
    whole = by[("1 nginx: CPU s/GiB", cf.CFS_LOADER)]
    assert whole.value == pytest.approx(2.2) and whole.target is None
    assert whole.ratio == pytest.approx(1 / 2.2)
    assert by[("1 nginx: MB/s", cf.CFS_LOADER)].target is not None


def test_cold_fill_kills_a_pass_that_never_says_it_is_ready() -> None:
    # The wait for a child's imports is bounded: one that never signals is
    # killed (its reaping then fails the pass), and the ballast is freed.
    import os
    import subprocess
    import sys

    from bench import cold_fill as cf

    ready_r, ready_w = os.pipe()  # ready_w stays open: no EOF, no signal
    go_r, go_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    cf.BALLAST.nbytes = 2**20
    cf.BALLAST.hold()
    try:
        cf._start_when_ready(proc, ready_r, go_w, 0.2)
        assert proc.wait(timeout=30) != 0  # killed, not finished
        assert cf.BALLAST._map is None
    finally:
        proc.kill()
        proc.wait()
        cf.BALLAST.nbytes = 0
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)


def test_zero_copy_reference_lands_every_byte(tmp_path: Path) -> None:
    import asyncio
    import os

    from bench.zero_copy import fetch_ranges
    from cachefs.testing import HTTPOrigin

    files = {"a.bin": os.urandom(3 * 2**20 + 17), "b.bin": os.urandom(5 * 2**20)}
    step = 2**20 + 3  # ranges that straddle nothing in particular
    ranges = [
        (f"/{name}", start, min(start + step, len(data)))
        for name, data in files.items()
        for start in range(0, len(data), step)
    ]
    with HTTPOrigin(files) as origin:
        got = asyncio.run(
            fetch_ranges(
                "127.0.0.1",
                origin.port,
                ranges,
                connections=3,
                write_to=lambda path: str(tmp_path / path.strip("/")),
            )
        )
    assert got["bytes"] == sum(len(d) for d in files.values())
    # At most the bytes that came with each response's headers are copied.
    assert got["header_copied"] <= 1024 * len(ranges)
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data
    # Anything but the 206 of the exact length asked for is an error.
    with HTTPOrigin(files) as origin, pytest.raises(OSError, match="206"):
        asyncio.run(fetch_ranges("127.0.0.1", origin.port, [("/nope", 0, 10)]))
