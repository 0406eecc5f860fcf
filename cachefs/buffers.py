"""Buffers that origin bytes land in: huge pages where the OS grants them.

A chunk is copied once on its way in (from the socket's pieces into one
buffer) and read many times. Landing it in transparent huge pages makes each
later copy out of it (``readinto``) cheaper: fewer TLB misses over 4 MiB.
The kernel grants huge pages to an anonymous mapping that asks for them
(``MADV_HUGEPAGE``) when ``/sys/kernel/mm/transparent_hugepage/enabled`` is
``always`` or ``madvise``; elsewhere the buffer is ordinary memory.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Awaitable, Callable

from cachefs.errors import ShortReadError

__all__ = ["HUGE_PAGE", "landing_buffer", "read_into_buffer"]

#: Size of a transparent huge page on x86-64 and most arm64 kernels.
HUGE_PAGE = 2 * 2**20


def landing_buffer(nbytes: int) -> memoryview:
    """Return a writable buffer of ``nbytes``, in huge pages when worth it.

    Buffers of a huge page or more are anonymous mappings rounded up to whole
    huge pages and advised ``MADV_HUGEPAGE``; smaller ones, and sizes whose
    rounding would waste over an eighth, are bytearrays.
    The mapping is freed when the last view of it is released.
    """
    size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    if nbytes < HUGE_PAGE or size - nbytes > nbytes // 8:
        # Small, or a tail that would waste over 1/8 of its mapping.
        return memoryview(bytearray(nbytes))
    # Private: Python's default for an anonymous map is MAP_SHARED, which is
    # shmem, and shmem gets huge pages only under a separate setting.
    mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):  # no THP: plain pages
        mapped.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(mapped)[:nbytes]


async def read_into_buffer(
    read: Callable[[int], Awaitable[bytes]], nbytes: int
) -> memoryview:
    """Read exactly ``nbytes`` with ``read(max)`` into one landing buffer.

    Raises
    ------
    ShortReadError
        If the stream ends first.
    """
    out = landing_buffer(nbytes)
    got = 0
    while got < nbytes:
        piece = await read(nbytes - got)
        if not piece:
            raise ShortReadError(f"origin closed after {got} of {nbytes} bytes")
        out[got : got + len(piece)] = piece
        got += len(piece)
    return out
