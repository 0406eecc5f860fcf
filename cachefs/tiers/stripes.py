"""A process's holds on a disk tier's lock stripes, shared by its fetches.

A stripe's lock keeps *other processes* from fetching the chunks (or
learning the file versions) of that stripe while this one does; inside a
process, each key's single flight is its in-flight future. Two keys of one
stripe fetched at once by the same process used to take the stripe twice,
through two descriptors, and the lock refuses the second even in the same
process: the second fetch then took its own process for another and waited
for it, or (a file's first read) dropped that chunk's bytes as it streamed
by and fetched them again afterwards. With 16 files of 5 chunks (80 keys
over 65,536 stripes) a data set has such a pair about one time in 20 (the
tests' data set has one), and under load their fetches overlap: an origin
read counted twice.

Here every stripe is locked through one descriptor of the stripe file,
opened once per process (:mod:`cachefs.tiers.locks`); the first hold of a
stripe takes its byte-range lock and later holds share it (a count), so the
stripe is released when the last fetch holding it ends; other processes see
it held throughout.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cachefs.bridge import close_lock_fd
from cachefs.tiers.locks import open_stripes, try_lock, unlock

__all__ = ["SharedStripe", "StripeHolds"]


class StripeHolds:
    """Holds of this process on the stripes of one stripe file.

    Parameters
    ----------
    path
        The stripe file (``locks/stripes``), created on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}
        self._fd: int | None = None
        self._opened = False
        self._pid = os.getpid()

    def lock(self, offset: int) -> SharedStripe:
        """Return the (unacquired) lock of stripe ``offset``."""
        return SharedStripe(self, offset)

    @property
    def held(self) -> int:
        """Stripes this process holds now."""
        return len(self._held)

    def take(self, offset: int) -> bool:
        """Hold stripe ``offset``: share this process's hold, or take its lock."""
        with self._lock:
            if self._pid != os.getpid():
                self._reset_locked()
            count = self._held.get(offset)
            if count is not None:
                self._held[offset] = count + 1
                return True
            if not self._opened:
                # Opened once; None (no file could be made) means no exclusion.
                self._fd, self._opened = open_stripes(self.path), True
            if self._fd is not None and not try_lock(self._fd, offset):
                return False  # another process holds it
            self._held[offset] = 1
            return True

    def give(self, offset: int) -> None:
        """End one hold of stripe ``offset``; the last one releases its lock."""
        with self._lock:
            if self._pid != os.getpid():
                return  # a forked child holds nothing of its parent's
            count = self._held.get(offset)
            if count is None:
                return
            if count > 1:
                self._held[offset] = count - 1
                return
            del self._held[offset]
            if self._fd is not None:
                unlock(self._fd, offset)

    def close(self) -> None:
        """Close the descriptor (dropping any lock still held)."""
        with self._lock:
            fd, self._fd = self._fd, None
            self._opened = False
            self._held = {}
            if fd is not None and self._pid == os.getpid():
                close_lock_fd(fd)

    def _reset_locked(self) -> None:
        # The inherited descriptor is the fork hook's to close.
        self._held = {}
        self._fd, self._opened = None, False
        self._pid = os.getpid()

    def after_fork(self) -> None:
        """Forget the parent's holds and lock (another thread may have held it)."""
        self._reset()


class SharedStripe:
    """One fetch's hold on a stripe, shared with the process's other holds.

    Parameters
    ----------
    holds
        The process's holds on the stripes of the tier.
    offset
        The stripe.
    """

    def __init__(self, holds: StripeHolds, offset: int) -> None:
        self._holds = holds
        self._offset = offset
        self._mine = 0  # the pid that holds it, 0: not held

    def try_acquire(self) -> bool:
        """Hold the stripe unless another process does; whether it is held."""
        if self.held:
            return True
        if not self._holds.take(self._offset):
            return False
        self._mine = os.getpid()
        return True

    def release(self) -> None:
        """End this hold (idempotent; a no-op in a forked child)."""
        if self.held:
            self._mine = 0
            self._holds.give(self._offset)

    @property
    def held(self) -> bool:
        """Whether this object holds the stripe."""
        return self._mine == os.getpid()
