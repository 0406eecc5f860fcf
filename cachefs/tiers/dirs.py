"""Directories the cache owns: made owner-only, checked, never followed.

Every file operation of the disk tier (and of the metadata store beside it)
goes through a directory descriptor opened without following symlinks, so
nothing outside the cache directory is read, written or removed. A cache
directory must be the user's own and writable by no one else, unless the
user trusts it (``trust_cache_dir=True``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "NOFOLLOW",
    "TRUST_HINT",
    "check_dir",
    "clean_tmp",
    "open_dir",
    "remove_below",
    "remove_entry",
    "secure_dir",
]

#: ``O_NOFOLLOW`` where the platform has it.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW
#: How a refusal tells the user to opt in.
TRUST_HINT = "or pass trust_cache_dir=True (--trust-cache-dir) if you mean it"


def check_dir(path: Path, st: os.stat_result, *, trust: bool) -> None:
    """Refuse ``path`` (lstat ``st``) as a cache directory unless it is safe.

    Safe means a plain directory (not a symlink), owned by this user and
    writable by no one else. With ``trust``, only the first is required.

    Raises
    ------
    NotADirectoryError
        For a symlink or anything but a directory.
    PermissionError
        For a directory another user owns, or one group or others can write;
        the message names the path and the fix.
    """
    if stat.S_ISLNK(st.st_mode):
        raise NotADirectoryError(
            f"cache_dir {str(path)!r} is a symlink, refused (nothing in the "
            f"cache is followed through a symlink): use the directory it "
            f"points to, {os.path.realpath(path)!r}"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(
            f"cache_dir {str(path)!r} is {_kind(st)}, not a directory"
        )
    if trust:
        return
    uid = os.geteuid()
    if st.st_uid != uid:
        raise PermissionError(
            f"cache_dir {str(path)!r} is owned by uid {st.st_uid}, not by you "
            f"(uid {uid}): records planted there would be served. Use a "
            f"directory of your own, or `chown -R {uid} {path}`, {TRUST_HINT}"
        )
    if st.st_mode & 0o022:
        raise PermissionError(
            f"cache_dir {str(path)!r} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): records planted there would be "
            f"served. Run `chmod 700 {path}`, {TRUST_HINT}"
        )


def secure_dir(path: Path, *, trust: bool = False) -> None:
    """Create ``path`` owner-only if missing, then :func:`check_dir` it."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except NotADirectoryError:
        # pathlib names only the leaf; the user needs the file in the way.
        raise NotADirectoryError(
            f"cache_dir {str(path)!r} cannot be created: {_blocker(path)}"
        ) from None
    check_dir(path, os.lstat(path), trust=trust)


def _kind(st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    if stat.S_ISLNK(st.st_mode):
        return "a symlink to something other than a directory"
    return "a special file (device, socket or pipe)"


def _blocker(path: Path) -> str:
    """Say which component above ``path`` is not a directory."""
    for parent in reversed(path.parents):
        try:
            st = os.lstat(parent)
        except OSError:
            break
        if stat.S_ISLNK(st.st_mode) and os.path.isdir(parent):
            continue
        if not stat.S_ISDIR(st.st_mode):
            return f"{str(parent)!r} is {_kind(st)}, not a directory"
    return "a component of the path is not a directory"


def open_dir(path: Path | str, dir_fd: int | None = None) -> int:
    """Open a directory for ``*at`` calls, refusing a symlink in its place."""
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def remove_below(base: Path, parts: Sequence[str]) -> bool:
    """Remove ``base/parts...`` without following a symlink below ``base``.

    A symlink is removed itself, never its target; a directory is removed
    with everything in it (``shutil.rmtree`` on a descriptor, which follows
    no symlink either). Returns whether anything was removed.
    """
    if not parts:
        raise ValueError("remove_below needs a path below base")
    try:
        fd = open_dir(base)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        for part in parts[:-1]:
            try:
                inner = open_dir(part, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                return False
            os.close(fd)
            fd = inner
        return remove_entry(parts[-1], fd) is not None
    finally:
        os.close(fd)


def remove_entry(name: str, dir_fd: int) -> os.stat_result | None:
    """Remove ``name`` in ``dir_fd``; return what it was, ``None`` if gone.

    A directory goes with all it holds, a symlink itself (never its target).
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    return st


def clean_tmp(tmp: Path) -> None:
    """Remove files in ``tmp`` left by processes that died mid-write.

    A temporary name is ``<digest>.<pid>.<random>``; files of a live process
    (this one included) are left alone.
    """
    try:
        tfd = open_dir(tmp)
    except OSError:
        return
    try:
        for name in os.listdir(tfd):
            parts = name.split(".")
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                continue
            with contextlib.suppress(OSError):
                remove_below(tmp, [name])
    finally:
        os.close(tfd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
