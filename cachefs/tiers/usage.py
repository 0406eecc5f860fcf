"""A disk tier's node-wide byte counter: 8 bytes in a flock-guarded file.

Every process using a cache directory publishes and evicts under this lock,
so the counter equals the bytes of the chunk files an eviction scan sees.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from cachefs.bridge import close_lock_fd, open_lock_fd
from cachefs.tiers.dirs import NOFOLLOW

__all__ = ["UsageCounter"]


class UsageCounter:
    """The byte counter of one cache directory.

    Parameters
    ----------
    path
        The counter's file (created on first locked use).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def value(self) -> int:
        """Return the counted bytes (0 when there is no counter yet)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | NOFOLLOW)
        except OSError:
            return 0
        try:
            return self.read(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """Hold the counter's lock; yield its descriptor for read/write."""
        # A fresh descriptor per use: flock is per open file description, so
        # a descriptor inherited across fork would not exclude the parent.
        # Registered, so a child forked while it is held closes its copy: a
        # kept copy would hold the lock once this process closes its own.
        fd = open_lock_fd(self._open)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            close_lock_fd(fd)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600)

    @staticmethod
    def read_raw(fd: int) -> int | None:
        """Return the counter read from ``fd``, or ``None`` if it has none."""
        raw = os.pread(fd, 8, 0)
        return int.from_bytes(raw, "little") if len(raw) == 8 else None

    @classmethod
    def read(cls, fd: int) -> int:
        """Return the counter read from ``fd`` (0 if it has none)."""
        value = cls.read_raw(fd)
        return 0 if value is None else value

    @staticmethod
    def write(fd: int, usage: int) -> None:
        """Store ``usage`` through ``fd`` (hold :meth:`locked`)."""
        os.pwrite(fd, usage.to_bytes(8, "little"), 0)
