"""Landing buffers used again once no view of them is left.

A fresh anonymous mapping costs the kernel a page fault and a zeroing of
every page on first touch (``clear_page``), before the socket's bytes are
copied in: on a cold fill that is one more pass over every byte landed. A
reader that streams through a file lets go of each chunk once it has read
it and the disk tier has written it; the mapping can then take the next
chunk's bytes with no fault and no zeroing, as the zero-copy reference's
16 fixed buffers do.

Whether a mapping is free is read from its reference count: every view of
it (a slice, a cast, a read-only view, a NumPy array over one) holds the
one ``memoryview`` export made here, which holds the mapping; when the
count is back to the pool's own references, no byte of it can be seen by
anyone. A mapping still in use (a RAM tier keeps its chunk) is simply not
taken. The pool tracks a bounded number of bytes and keeps a bounded
number of them free (:meth:`LandingPool.trim`, after each batch of disk
writes); a mapping it does not track is freed as usual with its last view.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import threading

from cachefs.buffers import HUGE_PAGE, landing_buffer

__all__ = ["POOL", "LandingPool"]

#: Bytes of mappings the pool keeps track of (free or in use), per process.
DEFAULT_LIMIT = 128 * 2**20
#: Bytes of free mappings kept at most; more are let go (unmapped).
DEFAULT_KEEP_FREE = 64 * 2**20


class LandingPool:
    """Hands out landing buffers, reusing mappings nobody views any more.

    Parameters
    ----------
    limit
        Bytes of mappings tracked at most. A mapping made while the pool is
        full is not tracked: the tracked ones are the oldest, which a reader
        going front to back lets go of first.
    keep_free
        Bytes of free mappings kept at most (see :meth:`trim`); the ones in
        use are the tiers' and readers' memory anyway.
    """

    def __init__(
        self, limit: int = DEFAULT_LIMIT, keep_free: int = DEFAULT_KEEP_FREE
    ) -> None:
        self.limit = limit
        self.keep_free = keep_free
        #: Mappings handed out again, and newly made.
        self.reused = 0
        self.made = 0
        self._lock = threading.Lock()
        self._maps: list[mmap.mmap] = []
        self._bytes = 0

    def take(self, nbytes: int) -> memoryview:
        """Return a writable buffer of ``nbytes`` (contents undefined).

        Sizes :func:`~cachefs.buffers.landing_buffer` would not map (under a
        huge page, or wasteful to round up) are plain new buffers.
        """
        size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
        if nbytes < HUGE_PAGE or size - nbytes > nbytes // 8 or size > self.limit:
            return landing_buffer(nbytes)
        with self._lock:
            for mapped in self._maps:
                # References: the list, this loop's name, the call's argument.
                if len(mapped) == size and sys.getrefcount(mapped) <= 3:
                    self.reused += 1
                    return memoryview(mapped)[:nbytes]
            mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            with contextlib.suppress(AttributeError, OSError):  # no THP: plain pages
                mapped.madvise(mmap.MADV_HUGEPAGE)
            self.made += 1
            if self._bytes + size <= self.limit:
                self._maps.append(mapped)
                self._bytes += size
            return memoryview(mapped)[:nbytes]

    def trim(self) -> None:
        """Let go of free mappings past :attr:`keep_free` bytes."""
        with self._lock:
            free = 0
            kept: list[mmap.mmap] = []
            for mapped in self._maps:
                if sys.getrefcount(mapped) <= 3:
                    free += len(mapped)
                    if free > self.keep_free:
                        self._bytes -= len(mapped)
                        continue
                kept.append(mapped)
            self._maps = kept

    def clear(self) -> None:
        """Forget every mapping (those in use live on with their views)."""
        with self._lock:
            self._maps.clear()
            self._bytes = 0

    def _after_fork(self) -> None:
        # A child writing a mapping shared with its parent would copy its
        # pages: it starts with none.
        self._lock = threading.Lock()
        self._maps = []
        self._bytes = 0


#: The pool of this process.
POOL = LandingPool()
os.register_at_fork(after_in_child=POOL._after_fork)
