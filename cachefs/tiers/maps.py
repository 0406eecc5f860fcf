"""The chunk maps of this process, bounded across every disk tier.

Each mapping holds a file descriptor (CPython's ``mmap`` duplicates it), so
the maps a process keeps are bounded process-wide, well under its
``RLIMIT_NOFILE`` (:func:`map_limit`); past the bound a hit is read with
``pread`` instead (:func:`pread_all`).
"""

from __future__ import annotations

import mmap
import os
import resource
import threading
import weakref
from typing import Protocol

__all__ = ["MAPS", "MapCount", "map_limit", "pread_all"]


def map_limit() -> int:
    """Return how many chunk maps this process keeps at most.

    A quarter of the soft ``RLIMIT_NOFILE``, at most 256 and at least 4:
    every map holds a descriptor, and the rest of the process needs its own.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 256
    return max(4, min(256, soft // 4))


class MapHolder(Protocol):
    """A holder of maps that can let its least recently used one go."""

    def unmap_oldest(self) -> bool:
        """Drop the least recently used map; return whether one was held."""
        ...


class MapCount:
    """The live chunk maps of this process, across every disk tier.

    A map is live from its creation until its ``mmap`` object is freed: when
    neither a tier nor a consumer's memoryview holds it. A map a consumer
    still holds cannot be closed (it has exported buffers) and keeps its
    descriptor; it is counted until then, so the bound holds whatever
    consumers keep.
    """

    def __init__(self) -> None:
        self.live = 0
        self._lock = threading.RLock()  # a free can happen under it
        self.holders: weakref.WeakSet[MapHolder] = weakref.WeakSet()

    def opened(self, mapped: mmap.mmap) -> None:
        """Count ``mapped`` until it is freed."""
        with self._lock:
            self.live += 1
        weakref.finalize(mapped, self._freed)

    def _freed(self) -> None:
        with self._lock:
            self.live -= 1

    def make_room(self, holder: MapHolder, limit: int) -> bool:
        """Drop the oldest maps held by holders until one more fits.

        ``holder`` (the one about to map) gives up its own first.
        """
        if self.live < limit:
            return True
        others = (h for h in list(self.holders) if h is not holder)
        for owner in [holder, *others]:
            while self.live >= limit and owner.unmap_oldest():
                pass
            if self.live < limit:
                return True
        return False


#: The one count of this process.
MAPS = MapCount()


def pread_all(fd: int, size: int) -> bytes:
    """Read ``size`` bytes from ``fd`` at offset 0 (fewer if it shrank)."""
    parts = []
    offset = 0
    while offset < size:
        piece = os.pread(fd, size - offset, offset)
        if not piece:
            break
        parts.append(piece)
        offset += len(piece)
    return b"".join(parts) if len(parts) != 1 else parts[0]
