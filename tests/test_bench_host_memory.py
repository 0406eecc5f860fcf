"""The bench's pause of a VM's free page reporting, on a stand-in sysfs.

The real parameter belongs to the machine: tests never write it. These
point the module at files in a temporary directory laid out as the
kernel's are, and check what is written, what is restored, and what the
result records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import host_memory
from bench.__main__ import main

# Eleven page orders (0-10), as x86-64 has.
BUDDYINFO = (
    "Node 0, zone      DMA      0      0      0      0      0      0      0      0"
    "      1      1      3\n"
    "Node 0, zone   Normal   9068   5128   4762   3370   1767    953    608    375"
    "    299    202    610\n"
)


@pytest.fixture
def sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    params = tmp_path / "parameters"
    params.mkdir()
    (params / "page_reporting_order").write_text("9\n")
    (params / "reported_kib").write_text("4096\n")
    buddy = tmp_path / "buddyinfo"
    buddy.write_text(BUDDYINFO)
    monkeypatch.setattr(host_memory, "PARAMS", params)
    monkeypatch.setattr(host_memory, "_BUDDYINFO", buddy)
    monkeypatch.delenv("CACHEFS_BENCH_PAGE_REPORTING", raising=False)
    return params


def test_paused_writes_one_past_the_largest_order_and_restores(sysfs: Path) -> None:
    order = sysfs / "page_reporting_order"
    state: dict[str, object] = {}
    with host_memory.paused(state):
        assert order.read_text() == "11"
        assert state["free_page_reporting"] == (
            "paused (page_reporting_order 9 -> 11 for the run)"
        )
    assert order.read_text() == "9"
    assert host_memory.reported_mib() == 4


def test_restored_when_the_run_fails(sysfs: Path) -> None:
    order = sysfs / "page_reporting_order"
    with pytest.raises(RuntimeError), host_memory.paused({}):
        raise RuntimeError("a scenario failed")
    assert order.read_text() == "9"


def test_leave_and_absent_touch_nothing(
    sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = sysfs / "page_reporting_order"
    monkeypatch.setenv("CACHEFS_BENCH_PAGE_REPORTING", "leave")
    state: dict[str, object] = {}
    with host_memory.paused(state):
        assert order.read_text() == "9\n"
    assert "left as it was" in str(state["free_page_reporting"])
    monkeypatch.delenv("CACHEFS_BENCH_PAGE_REPORTING")
    order.unlink()
    with host_memory.paused(state):
        assert not order.exists()
    assert state["free_page_reporting"] == "none on this machine"
    assert host_memory.reported_mib() == 4


def test_a_refused_write_is_reported_not_raised(sysfs: Path) -> None:
    order = sysfs / "page_reporting_order"
    order.unlink()
    order.mkdir()  # reads and writes of it fail as a refused write does
    state: dict[str, object] = {}
    with host_memory.paused(state):
        pass
    assert str(state["free_page_reporting"]).startswith("active (could not pause it")


def test_a_run_outside_bench_results_leaves_the_host_alone(
    sysfs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["single_flight", "--quick", "--out", str(out)]) == 0
    assert (sysfs / "page_reporting_order").read_text() == "9\n"
    doc = json.loads((out / "single_flight.json").read_text())
    assert doc["machine"]["free_page_reporting"] == (
        "left as it was (a run outside bench/results)"
    )
    # The stand-in counter did not move: nothing went back meanwhile.
    assert doc["params"]["page_reporting_mib_during"] == 0
