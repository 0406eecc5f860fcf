"""Cross-process locks of a disk tier: byte-range locks on one stripe file.

A process fetching a chunk holds its stripe's lock until the chunk is
published, so other processes on the node wait instead of fetching it again.
Every stripe is one byte of ``locks/stripes``, locked with an open file
description lock (``F_OFD_SETLK``): like ``flock`` it belongs to the
descriptor, so two descriptors exclude each other even in one process, and
the kernel drops it when its holder dies. A forked child closes the copies
it inherited at once (every lock descriptor of the package is opened
through :func:`cachefs.bridge.open_lock_fd`, whose fork hook does that).

One file for every stripe, not one file per stripe: creating a lock file
per chunk cost an inode allocation each, about a tenth of a cold fill's CPU
on a filesystem that had just deleted many files (ext4 without a journal
scans recently deleted inodes at each allocation; measured in
``cold_fill``). Lock files of older versions (``locks/<hex>``) are ignored.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import warnings
from pathlib import Path

from cachefs.bridge import close_lock_fd, open_lock_fd
from cachefs.tiers.dirs import NOFOLLOW, open_dir

__all__ = [
    "FILE_STRIPES",
    "STRIPES_FILE",
    "StripeLock",
    "open_stripes",
    "stripe_of",
    "try_lock",
    "unlock",
]

#: The stripe file's name under ``locks/``.
STRIPES_FILE = "stripes"

#: Where the stripes of file-version locks begin (after the chunks' 65,536).
FILE_STRIPES = 0x10000

# struct flock: l_type, l_whence, l_start, l_len, l_pid (native layout, padded
# to the kernel's size); l_pid must be 0 for an OFD lock.
_FLOCK = struct.Struct("@hhqqi4x")
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


def stripe_of(digest: str) -> int:
    """Return the stripe of a hex ``digest``: its first four digits."""
    return int(digest[:4], 16)


def open_stripes(path: Path) -> int | None:
    """Open (creating) the stripe file ``path``; ``None`` if it cannot be.

    The descriptor comes from :func:`cachefs.bridge.open_lock_fd`: a forked
    child closes its copy. When the file cannot be created (no inodes left,
    a read-only directory) the caller goes on without cross-process
    exclusion, warned once: a chunk may then be fetched twice, but no
    reader fails.
    """

    def opener() -> int:
        dfd = open_dir(path.parent)
        try:
            return os.open(
                path.name, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600, dir_fd=dfd
            )
        finally:
            os.close(dfd)

    try:
        return open_lock_fd(opener)
    except OSError as exc:
        _warn_unlocked(path, exc)
        return None


def try_lock(fd: int, offset: int) -> bool:
    """Lock byte ``offset`` of ``fd`` if no other descriptor has; whether taken."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, 0, offset, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int, offset: int) -> None:
    """Unlock byte ``offset`` of ``fd``."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, 0, offset, 1, 0))


class StripeLock:
    """An exclusive lock on one stripe, through a descriptor of its own.

    A process's fetches share one descriptor (:mod:`cachefs.tiers.stripes`);
    this one opens its own, so it excludes them as another process would
    (maintenance commands, tests).

    Parameters
    ----------
    path
        The stripe file (created on first use).
    offset
        The stripe: the byte of the file it locks.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self._path = path
        self._offset = offset
        self._fd: int | None = None
        self._pid = 0

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return whether it was taken.

        If the stripe file cannot be created, the caller proceeds without
        cross-process exclusion (see :func:`open_stripes`).
        """
        fd = open_stripes(self._path)
        if fd is None:
            return True
        if not try_lock(fd, self._offset):
            close_lock_fd(fd)
            return False
        self._fd, self._pid = fd, os.getpid()
        return True

    def release(self) -> None:
        """Release the lock (idempotent; a no-op in a forked child)."""
        fd, self._fd = self._fd, None
        if fd is not None and self._pid == os.getpid():
            close_lock_fd(fd)  # closing the descriptor drops its locks

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None and self._pid == os.getpid()
