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
import errno
import mmap
import os
from collections.abc import Awaitable, Callable, Sequence

from cachefs.errors import ShortReadError

__all__ = [
    "HUGE_PAGE",
    "landing_buffer",
    "pread_into",
    "read_into_buffer",
    "skip",
]

#: Size of a transparent huge page on x86-64 and most arm64 kernels.
HUGE_PAGE = 2 * 2**20
# Buffers one preadv call takes at most (POSIX guarantees 16; Linux has 1024).
_IOV_MAX = max(
    16, min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16, 1024)
)


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


def pread_into(
    path: str, offset: int, buffers: Sequence[memoryview], *, nowait: bool = False
) -> int:
    """Fill ``buffers``, in order, with a local file's bytes from ``offset``.

    One ``preadv`` per up to ``IOV_MAX`` buffers, straight into them (no
    intermediate ``bytes``). Returns the bytes read: less than the buffers
    hold where the file ends first, or, with ``nowait``, where the page
    cache does not hold the rest (``RWF_NOWAIT``: such a call never waits
    for the disk, so it may run on an event loop; where the kernel or the
    filesystem lacks it, it reads nothing).

    The caller allocates the buffers (landing buffers are anonymous maps,
    returned to the kernel when freed): a worker thread running this
    allocates nothing large, and its malloc arena keeps nothing.
    """
    flags = getattr(os, "RWF_NOWAIT", None) if nowait else 0
    if flags is None:
        return 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        got = 0
        rest = skip(buffers, 0)
        while rest:
            want = sum(v.nbytes for v in rest[:_IOV_MAX])
            try:
                n = os.preadv(fd, rest[:_IOV_MAX], offset + got, flags)
            except OSError as exc:
                if nowait and exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP):
                    break  # not cached, or no RWF_NOWAIT here: a thread reads it
                raise
            got += n
            if n == 0 or (nowait and n < want):
                break  # the end of the file, or of what the cache holds
            rest = skip(rest, n)
        return got
    finally:
        os.close(fd)


def skip(buffers: Sequence[memoryview], nbytes: int) -> list[memoryview]:
    """Return byte views of what follows the first ``nbytes`` of ``buffers``."""
    out = []
    for buf in buffers:
        view = memoryview(buf).cast("B")
        if nbytes >= view.nbytes:
            nbytes -= view.nbytes
            continue
        out.append(view[nbytes:])
        nbytes = 0
    return out
