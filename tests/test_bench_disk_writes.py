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
    landing = {r.system: r for r in rows if r.row.startswith("receive + store")}
    assert "anon buffer + buffered write" in landing
    assert "file mapping (MAP_SHARED)" in landing
    for row in landing.values():  # every stored chunk was read back and compared
        assert math.isnan(row.value) or row.value > 0
    rows = [r for r in rows if not r.row.startswith("receive + store")]
    put = systems["DiskTier.put"]
    assert put.value > 0 and put.ratio == pytest.approx(1.0)
    for row in rows:
        if "unavailable" in row.detail:  # O_DIRECT on a filesystem without it
            assert math.isnan(row.value)
            continue
        assert row.value > 0 and row.detail["read_back_cpu_ms_per_chunk"] > 0
