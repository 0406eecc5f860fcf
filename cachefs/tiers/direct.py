"""Chunk writes that bypass the page cache (``O_DIRECT``).

A buffered write of a 4 MiB chunk costs its writer the kernel's copy into
freshly allocated page-cache pages; written with ``O_DIRECT``, the device
takes the bytes from the landing buffer itself, at a half to a tenth of
the CPU (docs/architecture.md, "Direct writes"). The price is the next read of the
chunk, which comes from the device instead of memory, so the disk tier
writes this way only where its chunks would mostly leave the page cache
before a next read anyway (:func:`choose`).

``O_DIRECT`` needs the file offset, the length and the memory address of
each write aligned to the device's block: records written this way are
format 6 (payload at a 4 KiB boundary, :mod:`cachefs.tiers.record`), the
header goes through a page-aligned buffer, a payload's last partial block
is written buffered, and a write the kernel refuses (a payload not in
page-aligned memory, such as a compressed one) is redone buffered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import threading
from pathlib import Path

from cachefs.tiers.dirs import NOFOLLOW

__all__ = [
    "ALIGN",
    "AUTO_RAM_FACTOR",
    "MIN_DIRECT",
    "Choice",
    "choose",
    "filesystem_of",
    "probe",
    "write_direct",
]

#: The alignment asked of offsets, lengths and addresses: 4 KiB covers every
#: logical block size Linux devices report (512 B or 4 KiB).
ALIGN = 4096
#: Payloads smaller than this are written buffered: the saving is per byte,
#: and a record's padding to 4 KiB costs more than it saves on small chunks.
MIN_DIRECT = 256 * 1024
#: ``direct_writes="auto"`` bypasses the page cache for a disk budget of at
#: least this many times the machine's RAM. At 1x, the default 32 GiB budget
#: on a 24 GiB machine wrote past the page cache, and the bench's warm
#: scenarios read their first pass from the device: a new process reading a
#: warm cache fell from 0.36x to 0.15x a local file's ``readinto`` speed
#: (docs/architecture.md, "Direct writes").
AUTO_RAM_FACTOR = 2
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
#: Filesystems whose pages are the storage: nothing to bypass.
_MEMORY_FS = {"tmpfs", "ramfs", "hugetlbfs"}


class _Heads(threading.local):
    """One page-aligned buffer per writing thread for a record's header."""

    def __init__(self) -> None:
        self.buffer: mmap.mmap | None = None

    def view(self, header: bytes) -> memoryview:
        size = len(header)
        if self.buffer is None or len(self.buffer) < size:
            self.buffer = mmap.mmap(-1, max(size, ALIGN))
        self.buffer[:size] = header
        return memoryview(self.buffer)[:size]


_HEADS = _Heads()


def _memory_total() -> int:
    """Bytes of RAM on this machine (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def filesystem_of(path: str | os.PathLike[str]) -> str:
    """Return the type of the filesystem holding ``path`` (from /proc/mounts)."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return kind
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


def probe(tmp: Path) -> bool:
    """Whether files in directory ``tmp`` take ``O_DIRECT`` writes.

    Writes one aligned block to a new file and removes it: a filesystem
    that refuses the flag (``EINVAL`` at open or write) says no.
    """
    if not _O_DIRECT:
        return False
    name = tmp / f".direct-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(name, _CREATE | _O_DIRECT, 0o600)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(name)
        return False
    try:
        os.pwrite(fd, _HEADS.view(bytes(ALIGN)), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)


def choose(setting: bool | None, root: Path, tmp: Path, limit: int) -> bool:
    """Decide whether a disk tier writes its chunks with ``O_DIRECT``.

    Parameters
    ----------
    setting
        ``True`` or ``False`` as the user set it; ``None`` to decide here.
    root
        The cache directory (its filesystem decides where nothing else does).
    tmp
        Its ``tmp/`` directory, where the probe file is written.
    limit
        The tier's byte budget.

    Returns
    -------
    bool
        ``False`` where the filesystem refuses the flag, whatever was asked.
        Left to decide: ``True`` when the budget is at least
        :data:`AUTO_RAM_FACTOR` times this machine's RAM, so that most of
        what the tier holds cannot stay in the page cache until it is read
        again; ``False`` for a smaller cache, whose next epoch a buffered
        write lets read from memory, and on memory filesystems.
    """
    if setting is False:
        return False
    if setting is None and (
        limit < AUTO_RAM_FACTOR * _memory_total() or filesystem_of(root) in _MEMORY_FS
    ):
        return False
    return probe(tmp)


class Choice:
    """A tier's :func:`choose`, made at its first write (readers never pay it).

    Parameters are :func:`choose`'s.
    """

    def __init__(self, setting: bool | None, root: Path, tmp: Path, limit: int) -> None:
        self._args = (setting, root, tmp, limit)
        self._on: bool | None = None

    @property
    def on(self) -> bool:
        """Whether the tier writes with ``O_DIRECT``."""
        if self._on is None:
            self._on = choose(*self._args)
        return self._on


def write_direct(dfd: int, name: str, header: bytes, payload: memoryview) -> None:
    """Write a format 6 record to a new file ``name`` in ``dfd``.

    ``header`` is a whole number of 4 KiB pages. The header and the
    payload's whole blocks go in one ``O_DIRECT`` write; a partial last
    block, or everything when the kernel refuses the alignment (``EINVAL``),
    is written buffered.
    """
    fd = os.open(name, _CREATE | _O_DIRECT, 0o600, dir_fd=dfd)
    try:
        whole = payload.nbytes - payload.nbytes % ALIGN
        try:
            at = _write_all(fd, [_HEADS.view(header), payload[:whole]], 0)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            at = 0  # not aligned in memory: all of it through the page cache
        if at < len(header) + payload.nbytes:
            fcntl.fcntl(fd, fcntl.F_SETFL, 0)  # O_DIRECT off for the rest
            if at < len(header):
                rest = [memoryview(header)[at:], payload]
            else:
                rest = [payload[at - len(header) :]]
            _write_all(fd, rest, at)
    finally:
        os.close(fd)


def _write_all(fd: int, parts: list[memoryview], at: int) -> int:
    """``pwritev`` all of ``parts`` from offset ``at``; the offset reached."""
    todo = [p for p in parts if p.nbytes]
    while todo:
        written = os.pwritev(fd, todo, at)
        if written <= 0:
            raise OSError(errno.EIO, "a write made no progress")
        at += written
        while todo and written >= todo[0].nbytes:
            written -= todo[0].nbytes
            todo.pop(0)
        if todo and written:
            todo[0] = todo[0][written:]
    return at
