"""A process's holds on a disk tier's lock stripes, shared by its fetches.

A stripe's ``flock`` keeps *other processes* from fetching the chunks (or
learning the file versions) of that stripe while this one does; inside a
process, each key's single flight is its in-flight future. Two keys of one
stripe fetched at once by the same process used to take the stripe twice,
through two descriptors, and ``flock`` refuses the second even in the same
process: the second fetch then took its own process for another and waited
for it, or (a file's first read) dropped that chunk's bytes as it streamed
by and fetched them again afterwards. With 16 files of 5 chunks (80 keys
over 65,536 stripes) a data set has such a pair about one time in 20 (the
tests' data set has one), and under load their fetches overlap: an origin
read counted twice.

Here the first hold of a stripe in a process takes the ``flock`` and later
holds share it (a count), so the stripe is released when the last fetch
holding it ends; other processes see it held throughout, as before.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cachefs.tiers.locks import StripeLock

__all__ = ["SharedStripe", "StripeHolds"]


class StripeHolds:
    """Holds of this process on the stripes under one lock directory.

    Parameters
    ----------
    root
        The directory of the stripe files.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[StripeLock, int]] = {}
        self._pid = os.getpid()

    def lock(self, name: str) -> SharedStripe:
        """Return the (unacquired) lock of stripe ``name``."""
        return SharedStripe(self, name)

    @property
    def held(self) -> int:
        """Stripes this process holds now."""
        return len(self._held)

    def take(self, name: str) -> bool:
        """Hold stripe ``name``: share this process's hold, or take its lock."""
        with self._lock:
            if self._pid != os.getpid():
                self._reset_locked()
            entry = self._held.get(name)
            if entry is not None:
                self._held[name] = (entry[0], entry[1] + 1)
                return True
            stripe = StripeLock(self.root / name)
            if not stripe.try_acquire():
                return False  # another process holds it
            self._held[name] = (stripe, 1)
            return True

    def give(self, name: str) -> None:
        """End one hold of stripe ``name``; the last one releases its lock."""
        with self._lock:
            if self._pid != os.getpid():
                return  # a forked child holds nothing of its parent's
            entry = self._held.get(name)
            if entry is None:
                return
            if entry[1] > 1:
                self._held[name] = (entry[0], entry[1] - 1)
            else:
                del self._held[name]
                entry[0].release()

    def _reset_locked(self) -> None:
        # The inherited descriptors are the fork hook's to close.
        self._held = {}
        self._pid = os.getpid()

    def after_fork(self) -> None:
        """Forget the parent's holds and lock (another thread may have held it)."""
        self._reset()


class SharedStripe(StripeLock):
    """One fetch's hold on a stripe, shared with the process's other holds.

    Parameters
    ----------
    holds
        The process's holds on the stripes of the tier.
    name
        The stripe.
    """

    def __init__(self, holds: StripeHolds, name: str) -> None:
        super().__init__(holds.root / name)
        self._holds = holds
        self._name = name
        self._mine = 0  # the pid that holds it, 0: not held

    def try_acquire(self) -> bool:
        """Hold the stripe unless another process does; whether it is held."""
        if self.held:
            return True
        if not self._holds.take(self._name):
            return False
        self._mine = os.getpid()
        return True

    def release(self) -> None:
        """End this hold (idempotent; a no-op in a forked child)."""
        if self.held:
            self._mine = 0
            self._holds.give(self._name)

    @property
    def held(self) -> bool:
        """Whether this object holds the stripe."""
        return self._mine == os.getpid()
