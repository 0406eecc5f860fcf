"""Small text helpers of the ``cachefs`` command: sizes, times, tables, progress."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

__all__ = ["Progress", "fmt_bytes", "fmt_duration", "fmt_time", "table"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: float) -> str:
    """Return ``n`` bytes as ``"512 B"``, ``"3.0 MiB"``, ``"1.2 GiB"``."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def fmt_duration(seconds: float) -> str:
    """Return ``seconds`` as ``"0.42 s"``, ``"12.3 s"`` or ``"1:02:03"``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def fmt_time(stamp: float | None) -> str:
    """Return a local timestamp, or ``"-"``."""
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()
) -> str:
    """Return ``rows`` as aligned columns; columns in ``right`` align right."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


class Progress:
    """A progress display: one redrawn line on a terminal, periodic lines elsewhere.

    Parameters
    ----------
    stream
        Where to write (the command uses stderr).
    label
        The line's first word.
    total
        Bytes expected.
    interval
        Seconds between lines when ``stream`` is not a terminal.
    enabled
        ``False`` writes nothing (``--quiet``).
    """

    def __init__(
        self,
        stream: TextIO,
        label: str,
        total: int,
        *,
        interval: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.interval = interval
        self.enabled = enabled
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.started = time.monotonic()
        self._last = self.started  # the first line after one interval
        self._width = 0
        self.done = 0
        self.moved = 0

    def line(self) -> str:
        """Return the current progress line (no line ending)."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.moved / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        left = max(self.total - self.done, 0)
        if left == 0:
            eta = "done"
        elif rate > 0:
            eta = "ETA " + fmt_duration(left / rate)
        else:
            eta = "ETA -"
        return (
            f"{self.label} {pct:5.1f}%  {fmt_bytes(self.done)} / "
            f"{fmt_bytes(self.total)}  {fmt_bytes(rate)}/s  {eta}"
        )

    def update(self, done: int, moved: int, *, force: bool = False) -> None:
        """Record ``done`` bytes complete, ``moved`` of them transferred now."""
        self.done = min(done, self.total)
        self.moved = moved
        if not self.enabled:
            return
        now = time.monotonic()
        gap = 0.1 if self.tty else self.interval
        if not force and now - self._last < gap:
            return
        self._last = now
        text = self.line()
        if self.tty:
            pad = max(self._width - len(text), 0)
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, done: int, moved: int) -> None:
        """Draw the final state and end the line."""
        self.update(done, moved, force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
