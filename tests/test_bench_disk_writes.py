"""The disk_writes scenario measures every way of writing it names."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import disk_writes


def test_disk_writes_quick_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_TMP", str(tmp_path))
    rows = disk_writes.run(True)
    systems = {r.system: r for r in rows}
    assert {"DiskTier.put", "writev", "writev + DONTNEED", "O_DIRECT"} <= set(systems)
    put = systems["DiskTier.put"]
    assert put.value > 0 and put.ratio == pytest.approx(1.0)
    for row in rows:
        if "unavailable" in row.detail:  # O_DIRECT on a filesystem without it
            assert math.isnan(row.value)
            continue
        assert row.value > 0 and row.detail["read_back_cpu_ms_per_chunk"] > 0
