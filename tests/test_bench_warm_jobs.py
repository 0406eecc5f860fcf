"""The warm_jobs scenario runs ``cachefs warm`` and plain GETs and compares them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import SCENARIOS, main
from bench.warm_jobs import FLOOR, PLAIN, TARGET, WARM


def test_warm_jobs_tiny_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "warm_jobs" in SCENARIOS
    monkeypatch.setenv("CACHEFS_BENCH_DISK", str(tmp_path))
    argv = ["warm_jobs", "--quick", "--size", "256KiB", "--reps", "1"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-publish"]) == 0
    assert "## warm_jobs (quick)" in capsys.readouterr().out

    doc = json.loads((tmp_path / "out" / "warm_jobs.json").read_text())
    rows = doc["rows"]
    targeted = [r for r in rows if r["target"] is not None]
    # One target per configuration (no latency, then 20 ms), on the seconds.
    assert [r["system"] for r in targeted] == [WARM, WARM]
    assert all(r["target"] == TARGET and r["unit"] == "s" for r in targeted)
    for row in rows:
        assert row["value"] > 0 and row["samples"], row
        if row["system"] in (WARM, PLAIN):
            origin = row["detail"]["origin"][0]
            # Every byte came from the origin once, 16 GETs, 16 at once.
            assert origin["bytes"] == 16 * 256 * 1024
            assert origin["gets"] == 16 and origin["peak"] == 16
            if row["system"] == WARM:
                assert origin["heads"] == 16  # one info request per file
    floors = [r for r in rows if r["system"] == FLOOR]
    assert floors and all(r["reference"] == PLAIN for r in floors)
    # Nothing of the runs is left behind but the output directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
