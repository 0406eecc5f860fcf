"""Result records, timing helpers, machine info and table formatting.

A scenario returns a list of :class:`Row`; each row is one measured system,
optionally compared with a reference system of the same run. A comparison
may carry a target such as ``">= 2.0x"``; the table shows ``MET`` or
``UNMET`` for it and unmet targets are listed again under the table, never
dropped.

Ratios are always oriented so that ``> 1`` means the measured system is
better than its reference: for throughputs ``value / reference``, for times
``reference / value``.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cachefs
from cachefs.tiers.direct import filesystem_of

__all__ = [
    "Result",
    "Row",
    "Target",
    "as_reference",
    "calibrate",
    "compare",
    "filesystem_of",
    "format_table",
    "interleaved",
    "loadavg",
    "machine_info",
    "median",
    "unmet",
]

_TARGET_RE = re.compile(r"^\s*(>=|>|<=|<)\s*([0-9]*\.?[0-9]+)\s*x?\s*$")


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on a ratio, written like ``">= 2.0x"``."""

    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse ``">= 2.0x"``, ``"> 1x"``, ``"<= 0.5x"``..."""
        match = _TARGET_RE.match(text)
        if match is None:
            raise ValueError(f"target {text!r} is not like '>= 2.0x'")
        return cls(match.group(1), float(match.group(2)))

    def check(self, ratio: float) -> bool:
        """Return whether ``ratio`` satisfies the bound."""
        if math.isnan(ratio):
            return False
        if self.op == ">=":
            return ratio >= self.bound
        if self.op == ">":
            return ratio > self.bound
        if self.op == "<=":
            return ratio <= self.bound
        return ratio < self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}x"


@dataclass(slots=True)
class Row:
    """One measured system, optionally compared with a reference.

    Attributes
    ----------
    row
        The scenario row (a short label shared by the systems it compares).
    system
        What was measured.
    value
        Median of ``samples``, in ``unit``.
    unit
        ``"GB/s"`` (higher is better) or a time per operation such as
        ``"us/read"`` (lower is better).
    samples
        One value per repetition, in ``unit``.
    reference
        The system this one is compared with; equal to ``system`` for a
        reference row (ratio 1).
    ratio
        ``> 1`` means ``system`` is better than ``reference``.
    target
        Bound on ``ratio`` (``">= 2x"``), or ``None`` for context rows.
    met
        Whether ``ratio`` meets ``target`` (``None`` without a target).
    detail
        Free-form facts about the measurement (bytes, loops, cache stats).
    """

    row: str
    system: str
    value: float
    unit: str
    samples: list[float] = field(default_factory=list)
    reference: str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger ``value`` is better (throughputs)."""
        return self.unit.endswith("/s")

    def as_dict(self) -> dict[str, Any]:
        """Return the row as JSON-ready data."""
        return asdict(self)


@dataclass(slots=True)
class Result:
    """Everything one scenario run produced."""

    scenario: str
    quick: bool
    rows: list[Row]
    machine: dict[str, Any]
    params: dict[str, Any]
    started_at: str
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data."""
        missed = unmet(self.rows)
        targeted = [r for r in self.rows if r.target is not None]
        return {
            "scenario": self.scenario,
            "quick": self.quick,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "machine": self.machine,
            "params": self.params,
            "summary": {
                "targets": len(targeted),
                "met": len(targeted) - len(missed),
                "unmet": [f"{r.row}: {r.system} vs {r.reference}" for r in missed],
            },
            "rows": [r.as_dict() for r in self.rows],
        }

    def write(self, directory: Path) -> Path:
        """Write ``<directory>/<scenario>.json``; return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.scenario}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n")
        tmp.replace(path)
        return path


# -- statistics and timing ---------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Return the median of ``values`` (``nan`` when empty)."""
    return statistics.median(values) if values else math.nan


def calibrate(fn: Callable[[], object], min_time: float) -> int:
    """Return how many calls of ``fn`` make one sample of ``min_time`` seconds.

    ``fn`` is called once (this also warms it up) and then timed once.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    if elapsed <= 0:
        return 1000
    return max(1, math.ceil(min_time / elapsed))


def _sample(fn: Callable[[], object], loops: int) -> float:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        return (time.perf_counter() - t0) / loops
    finally:
        if was_enabled:
            gc.enable()


def interleaved(
    systems: Mapping[str, Callable[[], object]],
    reps: int,
    min_time: float,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Time every system ``reps`` times, interleaved, in seconds per call.

    Each repetition runs every system once, starting at a rotating position
    so that no system always runs first or last. A sample repeats the call
    enough times (found by :func:`calibrate`) to last about ``min_time``.

    Returns
    -------
    samples, loops
        Seconds per call for each repetition, and calls per sample, by name.
    """
    names = list(systems)
    loops = {name: calibrate(systems[name], min_time) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_sample(systems[name], loops[name]))
    return samples, loops


def compare(
    row: Row,
    reference: Row,
    target: str | None = None,
    *,
    row_label: str | None = None,
) -> Row:
    """Return a copy of ``row`` compared with ``reference`` (same unit)."""
    if row.unit != reference.unit:
        raise ValueError(f"cannot compare {row.unit} with {reference.unit}")
    if row.higher_is_better:
        ratio = row.value / reference.value if reference.value else math.nan
    else:
        ratio = reference.value / row.value if row.value else math.nan
    met = Target.parse(target).check(ratio) if target is not None else None
    detail = dict(row.detail)
    paired = _paired_ratios(row, reference)
    if paired:
        # Systems of one repetition ran close together: per-repetition
        # ratios show how much machine noise moves the headline ratio.
        detail["paired_ratio_median"] = median(paired)
        detail["paired_ratio_range"] = [min(paired), max(paired)]
    return Row(
        row=row_label or row.row,
        system=row.system,
        value=row.value,
        unit=row.unit,
        samples=list(row.samples),
        reference=reference.system,
        ratio=ratio,
        target=str(Target.parse(target)) if target is not None else None,
        met=met,
        detail=detail,
    )


def _paired_ratios(row: Row, reference: Row) -> list[float]:
    if len(row.samples) != len(reference.samples):
        return []
    pairs = zip(row.samples, reference.samples, strict=True)
    if row.higher_is_better:
        return [a / b for a, b in pairs if b > 0]
    return [b / a for a, b in pairs if a > 0]


def as_reference(row: Row, *, row_label: str | None = None) -> Row:
    """Return a copy of ``row`` marked as the reference of its row (ratio 1)."""
    return Row(
        row=row_label or row.row,
        system=row.system,
        value=row.value,
        unit=row.unit,
        samples=list(row.samples),
        reference=row.system,
        ratio=1.0,
        detail=dict(row.detail),
    )


def unmet(rows: Sequence[Row]) -> list[Row]:
    """Return the rows whose target is not met."""
    return [r for r in rows if r.target is not None and not r.met]


# -- machine -----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Describe the machine and software the numbers come from."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "loadavg": loadavg(),
        # cachefs's own version comes from the code that ran, not from a
        # distribution's metadata: the distribution is named fsspec-cachefs,
        # and a stale "cachefs" one (the old name) may linger in a venv.
        "packages": {
            "cachefs": cachefs.__version__,
            **{name: _version(name) for name in ("fsspec", "numpy")},
        },
    }


# -- table -------------------------------------------------------------------

_COLUMNS = ("row", "system", "value", "unit", "ratio vs reference", "target", "met")


def _fmt_value(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


def _fmt_ratio(row: Row) -> str:
    if row.reference is None or row.ratio is None:
        return "-"
    if row.reference == row.system:
        return "(reference)"
    return f"{row.ratio:.2f}x vs {row.reference}"


def _cells(row: Row) -> tuple[str, ...]:
    met = "-" if row.met is None else ("MET" if row.met else "UNMET")
    return (
        row.row,
        row.system,
        _fmt_value(row.value),
        row.unit,
        _fmt_ratio(row),
        row.target or "-",
        met,
    )


def format_table(rows: Sequence[Row], title: str | None = None) -> str:
    """Return ``rows`` as a fixed-width markdown table, plus unmet targets."""
    body = [_cells(r) for r in rows]
    widths = [
        max(len(col), *(len(cells[i]) for cells in body)) if body else len(col)
        for i, col in enumerate(_COLUMNS)
    ]
    numeric = {2}

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    out = []
    if title:
        out += [f"## {title}", ""]
    out.append(line(_COLUMNS))
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [line(cells) for cells in body]
    targeted = [r for r in rows if r.target is not None]
    missed = unmet(rows)
    out.append("")
    out.append(f"targets met: {len(targeted) - len(missed)}/{len(targeted)}")
    for r in missed:
        out.append(
            f"UNMET: {r.row}: {r.system} is {r.ratio:.2f}x {r.reference}, "
            f"target {r.target}"
        )
    return "\n".join(out)
