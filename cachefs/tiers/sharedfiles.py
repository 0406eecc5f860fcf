"""The shared tier's files on a local-style filesystem, handled with care.

On ``file://`` (a local disk, NFS, Lustre, GPFS, ...) the shared tier does
its own file calls rather than fsspec's, because fsspec's open a path as it
finds it: a FIFO at a record's path would block the reader forever, a
directory at a record's path would swallow every record ``mv``-ed onto it.
Here:

- a record is opened as a regular file only (``O_NONBLOCK | O_NOFOLLOW``,
  then ``fstat``): anything else raises :class:`NotARecord`, which the tier
  treats as damage (:func:`remove_damage` takes it away, never following a
  symlink);
- a record is published by ``rename()``, which refuses to replace a
  directory (``mv`` would move the record *into* it);
- a temporary file is removed whatever fails after it was created (a full
  disk leaves nothing behind).

These run on worker threads; each call is bounded by the tier's breaker.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat

__all__ = [
    "NotARecord",
    "link_new",
    "publish",
    "read_regular",
    "remove_damage",
    "replace",
]


class NotARecord(OSError):
    """Something other than a regular file sits at a record's path."""


def read_regular(path: str) -> bytes:
    """Return the bytes of the regular file at ``path``.

    Raises
    ------
    FileNotFoundError
        Nothing is there.
    NotARecord
        A FIFO, a directory, a device, a socket or a symlink is there.
    """
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a
        # writer; O_NOFOLLOW: a symlink fails with ELOOP.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except IsADirectoryError as exc:
        raise NotARecord(errno.EISDIR, "a directory, not a record", path) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARecord(errno.ELOOP, "a symlink, not a record", path) from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a file"
            raise NotARecord(errno.EINVAL, f"{kind}, not a record", path)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def remove_damage(path: str) -> None:
    """Remove whatever sits at ``path``; a directory with its contents.

    Nothing is followed: a symlink is removed itself, and ``rmtree`` refuses
    to walk through one.
    """
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _write_temporary(folder: str, name: str, blob: bytes, tag: str) -> str:
    """Write ``blob`` to a new temporary file in ``folder``; return its path.

    The file is removed again when the write fails (a full disk).
    """
    tmp = os.path.join(folder, f"{name}.{tag}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def publish(tmp_dir: str, final: str, blob: bytes, tag: str) -> None:
    """Write ``blob`` to ``final`` atomically: a temporary file, a rename.

    Raises
    ------
    IsADirectoryError
        A directory sits at ``final`` (it is left there).
    OSError
        The write or the rename failed; no temporary file is left.
    """
    os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
    os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
    tmp = _write_temporary(tmp_dir, os.path.basename(final), blob, tag)
    try:
        os.rename(tmp, final)  # refuses to replace a directory
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def link_new(path: str, blob: bytes, tag: str) -> bool:
    """Create ``path`` holding ``blob`` unless it exists; ``True`` if created.

    The record is written to a temporary name and ``link()``-ed to ``path``,
    which publishes it complete or fails with ``EEXIST`` (atomic on NFS too).
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = _write_temporary(folder, os.path.basename(path), blob, tag)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def replace(path: str, blob: bytes, tag: str) -> None:
    """Replace the file at ``path`` with one holding ``blob``, atomically."""
    tmp = _write_temporary(os.path.dirname(path), os.path.basename(path), blob, tag)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
