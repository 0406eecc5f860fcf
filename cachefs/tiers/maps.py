"""The chunk maps of this process, bounded across every disk tier.

Each mapping holds a file descriptor (CPython's ``mmap`` duplicates it), so
the maps a process keeps are bounded process-wide, well under its
``RLIMIT_NOFILE`` (:func:`map_limit`). The bytes they map are bounded too
(:func:`map_byte_limit`): under an address-space limit (``ulimit -v``) a
few hundred 4 MiB maps would take it all. Past either bound, or when the
kernel refuses a map, a hit is read with ``pread`` instead
(:func:`pread_all`).
"""

from __future__ import annotations

import errno
import mmap
import os
import resource
import threading
import weakref
from typing import Protocol

from cachefs.bridge import register

__all__ = [
    "MAPS",
    "MapCount",
    "map_byte_limit",
    "map_file",
    "map_limit",
    "pread_all",
]


def map_limit() -> int:
    """Return how many chunk maps this process keeps at most.

    A quarter of the soft ``RLIMIT_NOFILE``, at most 256 and at least 4:
    every map holds a descriptor, and the rest of the process needs its own.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 256
    return max(4, min(256, soft // 4))


#: Mapped bytes without an address-space limit: the descriptor bound rules.
_UNBOUNDED = 1 << 62
_budget: tuple[int, int] = (-1, _UNBOUNDED)  # (RLIMIT_AS soft, budget)


def _vm_size() -> int:
    """Return this process's address space in use (``VmSize``), or 0."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def map_byte_limit() -> int:
    """Return how many bytes this process keeps mapped at most.

    Without an address-space limit (``RLIMIT_AS``), no bound beyond
    :func:`map_limit`. Under one, a quarter of the room the process had
    left when the limit was first seen: the rest is for buffers being
    filled, threads and the libraries loaded.
    """
    global _budget
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == _budget[0]:
        return _budget[1]
    if soft == resource.RLIM_INFINITY or soft <= 0:
        budget = _UNBOUNDED
    else:
        budget = max(0, soft - _vm_size()) // 4
    _budget = (soft, budget)
    return budget


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
        #: Bytes the live maps span.
        self.mapped = 0
        #: Maps the kernel refused (``ENOMEM``): those hits were read instead.
        self.refused = 0
        self._lock = threading.RLock()  # a free can happen under it
        self.holders: weakref.WeakSet[MapHolder] = weakref.WeakSet()

    def opened(self, mapped: mmap.mmap) -> None:
        """Count ``mapped`` until it is freed."""
        size = len(mapped)
        with self._lock:
            self.live += 1
            self.mapped += size
        weakref.finalize(mapped, self._freed, size)

    def _freed(self, size: int) -> None:
        with self._lock:
            self.live -= 1
            self.mapped -= size

    def after_fork(self) -> None:
        """Replace the lock, which another thread may have held at fork."""
        self._lock = threading.RLock()

    def make_room(self, holder: MapHolder, limit: int, nbytes: int = 0) -> bool:
        """Drop the oldest maps held by holders until one more fits.

        One more: of ``nbytes``, within ``limit`` maps and
        :func:`map_byte_limit` bytes. ``holder`` (the one about to map)
        gives up its own first.
        """
        room = map_byte_limit() - nbytes
        if self.live < limit and self.mapped <= room:
            return True
        if room < 0:
            return False
        others = (h for h in list(self.holders) if h is not holder)
        for owner in [holder, *others]:
            while (self.live >= limit or self.mapped > room) and owner.unmap_oldest():
                pass
            if self.live < limit and self.mapped <= room:
                return True
        return False

    def release_all(self) -> None:
        """Drop every map the holders keep (the kernel refused a new one)."""
        for owner in list(self.holders):
            while owner.unmap_oldest():
                pass


#: The one count of this process.
MAPS = MapCount()
register(MAPS)  # its fork hook


# A chunk verified whole when mapped has its pages faulted in by the kernel
# in one call rather than one fault per page; one verified as it is read
# faults in only the blocks read.
_POPULATE = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def map_file(
    fd: int, size: int, holder: MapHolder, limit: int, *, populate: bool
) -> mmap.mmap | None:
    """Map ``size`` bytes of ``fd`` read-only within the process's bounds.

    ``None`` when the map does not fit (``limit`` maps, or the bytes of
    :func:`map_byte_limit`) or the kernel refuses it (``ENOMEM``, out of
    address space) even after every held map is given back: the caller
    reads the file instead.
    """
    if not MAPS.make_room(holder, limit, size):
        return None
    flags = _POPULATE if populate else mmap.MAP_SHARED
    for attempt in range(2):
        try:
            mapped = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                raise
            MAPS.refused += 1
            if attempt:
                return None
            MAPS.release_all()
            continue
        MAPS.opened(mapped)
        return mapped
    return None


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
