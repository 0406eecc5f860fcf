"""A cache directory's layout read from outside (the ``cachefs`` command).

These only read, so they take a directory rather than a tier: building a
:class:`~cachefs.tiers.disk.DiskTier` creates missing directories and cleans
``tmp/``, while ``cachefs stats``/``ls``/``verify`` change nothing (only
:func:`remove_stray` removes, and only when asked to repair). Each returns
plain data; nothing follows a symlink.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cachefs.tiers.chunkfiles import chunk_entries, is_chunk_name
from cachefs.tiers.dirs import NOFOLLOW, check_dir, open_dir, remove_below
from cachefs.tiers.record import CHUNK_HEADER, RecordCodec
from cachefs.tiers.usage import UsageCounter

__all__ = [
    "check_chunk_file",
    "chunk_listing",
    "inspect_root",
    "layout_strays",
    "remove_stray",
    "tmp_count",
    "usage_counter",
]


def inspect_root(root: Path, *, trust: bool = False) -> bool:
    """Return whether the cache directory ``root`` exists (False if not).

    Raises
    ------
    NotADirectoryError
        If ``root`` is a symlink or no directory, or a parent is no directory.
    PermissionError
        If ``root`` is not readable, or another user's or writable by
        others (unless ``trust``).
    """
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise NotADirectoryError(
            f"cache dir {str(root)!r}: a parent of it is not a directory"
        ) from None
    check_dir(root, st, trust=trust)
    if not os.access(root, os.R_OK | os.X_OK):
        raise PermissionError(f"cache dir {str(root)!r} is not readable")
    return True


def layout_strays(root: Path) -> list[tuple[Path, str, int]]:
    """Return ``(path, why, size)`` of what does not belong in the layout.

    A symlink or non-directory in place of ``chunks/``, ``tmp/``,
    ``locks/``, ``meta/`` or ``index/``, and anything directly under
    ``chunks/`` that is not a shard directory.
    """
    found: list[tuple[Path, str, int]] = []
    for sub in ("chunks", "tmp", "locks", "meta", "index"):
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(root / sub)
            if stat.S_ISLNK(st.st_mode):
                found.append((root / sub, "is a symlink (not followed)", 0))
            elif not stat.S_ISDIR(st.st_mode):
                found.append((root / sub, "is not a directory", st.st_size))
    try:
        cfd = open_dir(root / "chunks")
    except OSError:
        return found
    try:
        for name in sorted(os.listdir(cfd)):
            try:
                st = os.stat(name, dir_fd=cfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = root / "chunks" / name
            if stat.S_ISLNK(st.st_mode):
                found.append((path, "is a symlink (not followed)", 0))
            elif not stat.S_ISDIR(st.st_mode):
                found.append((path, "is a stray file", st.st_size))
            elif len(name) != 2 or not set(name) <= set("0123456789abcdef"):
                found.append((path, "is a stray directory", 0))
    finally:
        os.close(cfd)
    return found


def chunk_listing(root: Path) -> Iterator[tuple[Path, int, float, bool]]:
    """Yield ``(path, size, mtime, counted)`` of each entry in ``chunks/<xx>/``.

    Damaged, misnamed and non-regular entries too; ``counted`` says
    whether the budget counts it (a chunk-named regular file).
    """
    chunks = root / "chunks"
    for shard, name, st in chunk_entries(chunks, ordered=True):
        counted = is_chunk_name(shard, name) and stat.S_ISREG(st.st_mode)
        yield chunks / shard / name, st.st_size, st.st_mtime, counted


def usage_counter(root: Path) -> int | None:
    """Return ``root``'s persisted byte counter, or ``None`` if unreadable."""
    try:
        fd = os.open(root / "usage", os.O_RDONLY | NOFOLLOW)
    except OSError:
        return None
    try:
        return UsageCounter.read_raw(fd)
    finally:
        os.close(fd)


def tmp_count(root: Path) -> int:
    """Return how many files are being written (or were left) in ``tmp/``."""
    try:
        fd = open_dir(root / "tmp")
    except OSError:
        return 0
    try:
        return len(os.listdir(fd))
    finally:
        os.close(fd)


def check_chunk_file(
    path: Path, expected: int | None, *, trust: bool = False
) -> str | None:
    """Verify the chunk file ``path`` as a reader would; return why not.

    ``expected`` is the chunk's length when known (the header's is taken
    otherwise). ``None`` when sound, or gone meanwhile. No codec outside
    the allow-list is built.
    """
    if not is_chunk_name(path.parent.name, path.name):
        return "has an unexpected name (misplaced or stray)"
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be opened ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if st.st_uid != os.geteuid() and not trust:
            return f"is owned by uid {st.st_uid}, not by you"
        if st.st_size < CHUNK_HEADER.size:
            return f"is truncated ({st.st_size} bytes, shorter than its header)"
        with mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            record, why = RecordCodec.check(view, expected, path.name)
            try:
                length = CHUNK_HEADER.unpack_from(view)[5]
                if (
                    record is not None
                    and record.compressed
                    and RecordCodec().decode(record, length) is None
                ):
                    why = "does not decompress to its length"
            finally:
                if record is not None:
                    record.payload.release()
                record = None
                view.release()
        return why or None
    finally:
        os.close(fd)


def remove_stray(root: Path, path: Path) -> bool:
    """Remove ``path`` below the cache dir ``root``; a symlink itself only."""
    return remove_below(root, list(path.relative_to(root).parts))
