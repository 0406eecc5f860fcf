"""Helpers the scenarios share for the child processes and servers they run.

Nothing here is measured: these run around a scenario's timed part, to
stop what it started and to make its helpers context managers.
"""

from __future__ import annotations

import subprocess
from types import TracebackType
from typing import Any, Self

__all__ = ["Closing", "stop_process"]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Wait up to ``timeout`` seconds for ``proc`` to end, then kill it.

    The caller asks it to end first (SIGTERM, closing its stdin, ...); a
    child that does not is killed, so a scenario never hangs on it.
    """
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Closing:
    """A context manager that calls ``self.close()`` on exit."""

    def close(self) -> None:
        """Release what this object holds (subclasses say what)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
