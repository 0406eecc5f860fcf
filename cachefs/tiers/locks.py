"""Cross-process locks of a disk tier: ``flock`` on lock-stripe files.

A process fetching a chunk holds its stripe's lock until the chunk is
published, so other processes on the node wait instead of fetching it again.
The kernel drops a lock when its holder dies; a forked child closes the
copies it inherited at once (every lock descriptor of the package is opened
through :func:`cachefs.bridge.open_lock_fd`, whose fork hook does that).
"""

from __future__ import annotations

import fcntl
import os
import warnings
from pathlib import Path

from cachefs.bridge import close_lock_fd, open_lock_fd
from cachefs.tiers.dirs import NOFOLLOW, open_dir

__all__ = ["StripeLock"]

_UNLOCKED_WARNED = False


def _warn_unlocked(path: Path, exc: OSError) -> None:
    global _UNLOCKED_WARNED
    if not _UNLOCKED_WARNED:
        _UNLOCKED_WARNED = True
        warnings.warn(
            f"cachefs: cannot create lock file {str(path)!r} ({exc.strerror}); "
            "reading on without cross-process single-flight",
            ResourceWarning,
            stacklevel=4,
        )


class StripeLock:
    """An exclusive ``flock`` on one of the tier's lock stripes.

    Chunks whose digests share a 4-hex-digit prefix share a stripe; a process
    fetching a chunk holds its stripe until the chunk is published, so other
    processes wait instead of fetching it again. The kernel drops the lock if
    the holder dies; a forked child drops its inherited copies at once.

    Parameters
    ----------
    path
        The stripe's lock file (created on first use).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._pid = 0

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return whether it was taken.

        If the lock file cannot be created (no inodes left, a read-only
        directory), the caller proceeds without cross-process exclusion: a
        chunk may then be fetched twice, but the reader is not failed.
        """
        try:
            fd = open_lock_fd(self._open)
        except OSError as exc:
            _warn_unlocked(self._path, exc)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            close_lock_fd(fd)
            return False
        self._fd, self._pid = fd, os.getpid()
        return True

    def _open(self) -> int:
        dfd = open_dir(self._path.parent)
        try:
            return os.open(
                self._path.name, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600, dir_fd=dfd
            )
        finally:
            os.close(dfd)

    def release(self) -> None:
        """Release the lock (idempotent; a no-op in a forked child)."""
        fd, self._fd = self._fd, None
        if fd is not None and self._pid == os.getpid():
            close_lock_fd(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None and self._pid == os.getpid()
