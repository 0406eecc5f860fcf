"""A VM's free page reporting, paused while the bench measures.

A virtual machine with ``virtio_balloon`` free page reporting hands memory
that stayed free for about 2 s back to its host, in blocks of
``page_reporting_order`` (2 MiB here). The next touch of such a page is a
fault the host serves, and the guest counts it as CPU time of whatever
process touched it. A bench pass that runs while a report goes out pays
that for every page it allocates: on this project's VM, 512 MiB written
through the page cache in 4 MiB ``pwrite`` calls cost 1.75-1.87 CPU
s/GiB in the 7 passes of 24 during which the module's ``reported_kib``
counter rose (by 276-304 MiB each) and 0.27-0.45 in the others. Which pass met a report
depended on the clock, not on the system measured, and a longer pass met
one more often: the bimodal rows of ``cold_fill`` up to its fifth round.

A node that owns its memory pays none of this, so the bench pauses
reporting for a run into ``bench/results`` where it can: it writes one
past the largest page order into ``page_reporting_order`` (no free block
is that large, so nothing is reported) and restores the value at the end.
Runs elsewhere (tests, experiments) leave the host alone, as does
``CACHEFS_BENCH_PAGE_REPORTING=leave``. What happened is recorded with each
result: the machine's ``free_page_reporting`` says what was done, and each
scenario's ``page_reporting_mib_during`` how much memory went back to the
host while it ran, where the kernel counts it (0 when paused).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["paused", "reported_mib"]

PARAMS = Path("/sys/module/page_reporting/parameters")
_BUDDYINFO = Path("/proc/buddyinfo")


def reported_mib() -> int | None:
    """Return the MiB reported to the host so far, where the kernel says."""
    try:
        return int((PARAMS / "reported_kib").read_text()) >> 10
    except (OSError, ValueError):
        return None


def _orders() -> int | None:
    """Return how many page orders the allocator has (columns of buddyinfo)."""
    try:
        line = _BUDDYINFO.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    # "Node 0, zone      DMA      0      0 ...": counts follow the zone name.
    return len(line.split()) - 4


@contextlib.contextmanager
def paused(state: dict[str, Any]) -> Iterator[None]:
    """Pause free page reporting for the block; describe it into ``state``.

    ``state["free_page_reporting"]`` says what was done: paused, absent,
    left alone, or why it could not be paused.
    """
    param = PARAMS / "page_reporting_order"
    old: str | None = None
    if os.environ.get("CACHEFS_BENCH_PAGE_REPORTING") == "leave":
        state["free_page_reporting"] = "left as it was (CACHEFS_BENCH_PAGE_REPORTING)"
    elif not param.exists():
        state["free_page_reporting"] = "none on this machine"
    elif (orders := _orders()) is None:
        state["free_page_reporting"] = "active (no /proc/buddyinfo to size it by)"
    else:
        try:
            old = param.read_text().strip()
            param.write_text(str(orders))
            state["free_page_reporting"] = (
                f"paused (page_reporting_order {old} -> {orders} for the run)"
            )
        except OSError as exc:
            old = None
            state["free_page_reporting"] = f"active (could not pause it: {exc})"
    try:
        yield
    finally:
        if old is not None:
            with contextlib.suppress(OSError):
                param.write_text(old)
