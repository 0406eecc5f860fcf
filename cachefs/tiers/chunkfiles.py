"""Chunk files under a disk tier's ``chunks/``: shards, scans, writes.

A chunk named by its digest ``d`` lives at ``chunks/<d[:2]>/<d>``. Every
operation goes through a shard's directory descriptor opened without
following symlinks (:func:`open_shard`); the budget counts the chunk files
:func:`scan_chunks` finds and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from cachefs.policy import DiskEntry
from cachefs.tiers.dirs import NOFOLLOW, open_dir

__all__ = ["is_chunk_name", "open_shard", "scan_chunks", "write_new"]

log = logging.getLogger("cachefs.tiers.disk")

_DIGEST_RE = re.compile(r"[0-9a-f]{40}")


def is_chunk_name(shard: str, name: str) -> bool:
    """Whether ``chunks/<shard>/<name>`` is where a chunk file may live."""
    return _DIGEST_RE.fullmatch(name) is not None and name[:2] == shard


@contextlib.contextmanager
def open_shard(chunks: Path, digest: str, *, create: bool) -> Iterator[int | None]:
    """Open ``chunks/<digest[:2]>`` without following a symlink put there.

    Yields the shard's descriptor, or ``None`` when it is missing and not
    ``create``. A symlink or stray file in a shard's place is replaced when
    ``create``.
    """
    try:
        cfd = open_dir(chunks)
    except OSError as exc:
        if create:
            raise
        if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            raise
        yield None
        return
    try:
        shard = digest[:2]
        try:
            dfd = open_dir(shard, dir_fd=cfd)
        except FileNotFoundError:
            if not create:
                yield None
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(shard, 0o700, dir_fd=cfd)
            dfd = open_dir(shard, dir_fd=cfd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            log.warning("cachefs: %s is not a directory; replacing it", chunks / shard)
            if not create:
                yield None
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(shard, dir_fd=cfd)
            os.mkdir(shard, 0o700, dir_fd=cfd)
            dfd = open_dir(shard, dir_fd=cfd)
    finally:
        os.close(cfd)
    try:
        yield dfd
    finally:
        os.close(dfd)


def chunk_entries(
    chunks: Path, *, ordered: bool = False
) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield ``(shard, name, stat)`` of every entry in ``chunks/<shard>/``.

    Strays included (see :func:`scan_chunks` for the chunk files alone);
    nothing is followed through a symlink. ``ordered`` sorts shards and
    names (for listings people read).
    """
    try:
        cfd = open_dir(chunks)
    except OSError:
        return
    try:
        shards = os.listdir(cfd)
        for shard in sorted(shards) if ordered else shards:
            try:
                dfd = open_dir(shard, dir_fd=cfd)
            except OSError:
                continue  # gone, or not a directory: a stray
            try:
                names = os.listdir(dfd)
                for name in sorted(names) if ordered else names:
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed meanwhile
                    yield shard, name, st
            finally:
                os.close(dfd)
    finally:
        os.close(cfd)


def scan_chunks(chunks: Path) -> Iterator[DiskEntry]:
    """Yield the chunk files under ``chunks``: the budget counts these only.

    Anything else under ``chunks/`` (a misplaced or oddly named file, a
    symlink, a directory) is a stray: not counted, never a chunk, and
    removed by ``cachefs verify --repair`` and ``clear``.
    """
    for shard, name, st in chunk_entries(chunks):
        if is_chunk_name(shard, name) and stat.S_ISREG(st.st_mode):
            yield DiskEntry(name, st.st_size, st.st_mtime)


def write_new(dfd: int, name: str, header: bytes, payload: memoryview) -> None:
    """Write ``header`` then ``payload`` to a new file ``name`` in ``dfd``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
    fd = os.open(name, flags, 0o600, dir_fd=dfd)
    try:
        todo = [memoryview(header), payload]
        while todo:
            written = os.writev(fd, todo)
            while todo and written >= todo[0].nbytes:
                written -= todo[0].nbytes
                todo.pop(0)
            if todo and written:
                todo[0] = todo[0][written:]
    finally:
        os.close(fd)
