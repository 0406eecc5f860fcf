"""What the ``cachefs`` command prints: sizes, times, tables, progress, exit codes."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TextIO

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Heartbeat",
    "Progress",
    "fmt_bytes",
    "fmt_duration",
    "fmt_time",
    "report",
    "table",
]

#: Exit codes: success; the operation did not fully succeed (a file not
#: cached, a damaged chunk, a missing file); a usage error (bad option,
#: size, URL or JSON); interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

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


def report(args: Any, out: TextIO, doc: dict[str, Any], text: str) -> int:
    """Print ``doc`` as JSON with ``--json``, else ``text`` unless ``--quiet``."""
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    elif not args.quiet:
        out.write(text + "\n")
    return EXIT_OK


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
    started
        The ``time.monotonic()`` the rate is counted from (default: now);
        give the command's own start so the last line's rate and the
        summary's are one figure.
    """

    def __init__(
        self,
        stream: TextIO,
        label: str,
        total: int,
        *,
        interval: float = 5.0,
        enabled: bool = True,
        started: float | None = None,
    ) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.interval = interval
        self.enabled = enabled
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.started = time.monotonic() if started is None else started
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


class Heartbeat:
    """Say what a command waits for when nothing has moved for a while.

    Steps that may wait on the origin (an info, a listing, a file's bytes)
    run inside :meth:`waiting`; work that moves calls :meth:`moved`. When
    nothing has moved for ``interval`` seconds, a daemon thread writes one
    line naming the oldest step still waiting, and again every ``interval``
    seconds while that lasts::

        warm: waiting 10.0 s for the info of http://host/data.bin

    Parameters
    ----------
    stream
        Where to write (the command uses stderr).
    label
        The line's first word.
    interval
        Seconds without movement before a line, and between lines.
    enabled
        ``False`` writes nothing (``--quiet``).
    """

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        interval: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self.stream = stream
        self.label = label
        self.interval = max(interval, 0.05)
        self.enabled = enabled
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        #: Extra steps asked for at each beat (``None`` when there is none),
        #: for waits that are tracked elsewhere (a prefetch's current file).
        self.probe: Callable[[], str | None] | None = None
        self._steps: dict[int, tuple[str, float]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._last_move = time.monotonic()
        self._last_line = self._last_move
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self._thread = threading.Thread(
                target=self._beat, name="cachefs-heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def moved(self) -> None:
        """Record that work moved (bytes arrived, a step ended)."""
        self._last_move = time.monotonic()

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Mark ``what`` (``"the info of URL"``) as waited for while inside."""
        token = next(self._ids)
        with self._lock:
            self._steps[token] = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                del self._steps[token]
            self.moved()

    def line(self) -> str | None:
        """Return the line to write now, or ``None`` when nothing waits."""
        now = time.monotonic()
        with self._lock:
            steps = list(self._steps.values())
        what: str | None
        if steps:
            what, since = steps[0]
            if len(steps) > 1:
                what += f" (and {len(steps) - 1} more)"
        else:
            what = self.probe() if self.probe is not None else None
            since = self._last_move
        if what is None:
            return None
        return f"{self.label}: waiting {fmt_duration(now - since)} for {what}"

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval / 4, 1.0)):
            now = time.monotonic()
            if now - max(self._last_move, self._last_line) < self.interval:
                continue
            text = self.line()
            if text is None:
                continue
            self._last_line = now
            # On a terminal, the progress line is redrawn under this one.
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
            self.stream.flush()
