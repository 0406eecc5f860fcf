"""Start, find and stop mounts: the caller's side of the daemon.

:func:`mount` starts :mod:`cachefs.mount.daemon` in a process of its own
and returns once the mount answers (or fails with the daemon's reason); the
:class:`Mount` it returns unmounts on :meth:`Mount.unmount` or on leaving a
``with`` block. :func:`unmount` works on any mount point, a dead daemon's
included (``ENOTCONN``), and never waits on the mount itself: whether a path
is mounted is read from ``/proc/self/mountinfo``, not by a ``stat`` that a
hung daemon could block.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "STATS_XATTR",
    "Mount",
    "check_mountpoint",
    "is_mounted",
    "mount",
    "unmount",
]

#: The mount root's extended attribute that reads the daemon's counters
#: (JSON): ``os.getxattr(mountpoint, STATS_XATTR)``; see :meth:`Mount.stats`.
STATS_XATTR = "user.cachefs.stats"

_EXTRA_HINT = "install the fuse extra: pip install 'cachefs[fuse]'"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    """Whether ``mountpoint`` is a mount point now (no I/O on the mount)."""
    target = os.path.abspath(os.fspath(mountpoint))
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return os.path.ismount(target)
    return any(_unescape(line.split()[4]) == target for line in lines)


def unmount(mountpoint: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
    """Unmount ``mountpoint``; lazily if it is busy or its daemon is dead.

    Tries ``fusermount3 -u``, then ``fusermount3 -u -z`` (lazy: detached
    now, gone once the last open file closes), then ``umount -l``.

    Raises
    ------
    ValueError
        If ``mountpoint`` is not a mount point.
    OSError
        If it is still mounted after every way was tried.
    """
    path = os.path.abspath(os.fspath(mountpoint))
    if not is_mounted(path):
        raise ValueError(f"mountpoint {path!r} is not mounted")
    errors = []
    for cmd in (["fusermount3", "-u"], ["fusermount3", "-u", "-z"], ["umount", "-l"]):
        if shutil.which(cmd[0]) is None:
            errors.append(f"{cmd[0]}: not installed")
            continue
        try:
            done = subprocess.run(
                [*cmd, path], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            errors.append(f"{' '.join(cmd)}: no answer in {timeout:g} s")
            continue
        if not is_mounted(path):
            return
        errors.append(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    raise OSError(f"cannot unmount {path}: " + "; ".join(errors))


class Mount:
    """A running mount started by :func:`mount`.

    Attributes
    ----------
    url, mountpoint
        What is mounted where.
    process
        The daemon serving it.
    read_ahead
        What the daemon did to the mount's ``read_ahead_kb``.
    """

    def __init__(
        self, url: str, mountpoint: Path, process: subprocess.Popen[bytes], said: str
    ) -> None:
        self.url = url
        self.mountpoint = mountpoint
        self.process = process
        self.read_ahead = said

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def stats(self) -> dict[str, int]:
        """Return the daemon's counters (one request through the mount).

        ``reads`` and ``read_bytes`` count the read requests that reached
        the daemon (a read the kernel's page cache served is not one),
        ``largest_read`` the largest asked for, ``inline_hits`` and
        ``misses`` how they were served, ``opens`` and ``keep_cache_opens``
        the opens and those that kept the page cache, ``invalidated`` the
        inodes whose kernel cache was dropped for a new version.
        """
        raw = os.getxattr(self.mountpoint, STATS_XATTR)
        stats: dict[str, int] = json.loads(raw)
        return stats

    def unmount(self, timeout: float = 10.0) -> None:
        """Unmount and wait for the daemon to exit (killed after ``timeout``)."""
        if is_mounted(self.mountpoint) and self.process.poll() is None:
            # The daemon unmounts itself on SIGTERM, cleanly.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if is_mounted(self.mountpoint):
            unmount(self.mountpoint, timeout=timeout)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"Mount({self.url!r} at {str(self.mountpoint)!r}, pid {self.pid})"


def check_mountpoint(mountpoint: str | os.PathLike[str]) -> None:
    """Refuse a mount point that cannot be mounted, saying why.

    Raises
    ------
    ValueError
        If it is not a directory or is mounted already.
    OSError
        If this machine has no ``/dev/fuse``.
    ImportError
        Without the ``fuse`` extra (pyfuse3 and trio).
    """
    mountpoint = Path(mountpoint)
    if not mountpoint.is_dir():
        raise ValueError(f"mountpoint {str(mountpoint)!r} is not a directory")
    if is_mounted(mountpoint):
        raise ValueError(f"mountpoint {str(mountpoint)!r} is already mounted")
    if not os.path.exists("/dev/fuse"):
        raise OSError("/dev/fuse is missing: this machine cannot mount FUSE")
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"cachefs mount needs pyfuse3 and trio: {_EXTRA_HINT}"
        ) from exc


def mount(
    url: str,
    mountpoint: str | os.PathLike[str],
    *,
    direct_io: bool = False,
    read_ahead_kb: int = 1024,
    ready_timeout: float = 60.0,
    stderr: Any = None,
    **cache_options: Any,
) -> Mount:
    """Mount ``url`` read-only at ``mountpoint``; return once it answers.

    Parameters
    ----------
    url
        The directory to mount, as a target URL (``s3://bucket/data``,
        ``https://host/data``, a local path).
    mountpoint
        An existing directory.
    direct_io
        Bypass the kernel's page cache for every open (``O_DIRECT`` opens
        always do).
    read_ahead_kb
        The mount's kernel readahead, raised where the kernel allows it
        (root); ``0`` keeps the kernel's default.
    ready_timeout
        Seconds to wait for the mount to answer.
    stderr
        Where the daemon logs (a file object or descriptor; default: this
        process's stderr).
    **cache_options
        :class:`~cachefs.CacheFileSystem` keywords, JSON-serialisable
        (``cache_dir``, ``ram_limit``, ``metadata_ttl``, ``target_options``
        ...). A job using the same settings shares the mount's disk tier.

    Returns
    -------
    Mount
        Call :meth:`Mount.unmount` (or use it in a ``with`` block).

    Raises
    ------
    ValueError
        For a mount point that is not a directory or is mounted already.
    ImportError
        Without the ``fuse`` extra.
    OSError
        If the daemon fails or does not answer within ``ready_timeout``.
    """
    path = Path(os.path.abspath(os.fspath(mountpoint)))
    check_mountpoint(path)
    try:
        options = json.dumps(cache_options)
    except TypeError as exc:
        raise TypeError(f"cache options must be JSON-serialisable: {exc}") from None
    read_end, write_end = os.pipe()
    cmd = [
        sys.executable,
        "-m",
        "cachefs.mount.daemon",
        url,
        str(path),
        "--options",
        options,
        "--read-ahead-kb",
        str(int(read_ahead_kb)),
        "--ready-fd",
        str(write_end),
    ]
    if direct_io:
        cmd.append("--direct-io")
    try:
        process = subprocess.Popen(
            cmd,
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # a terminal's Ctrl-C is not the daemon's
        )
    finally:
        os.close(write_end)
    try:
        said = _await_ready(read_end, process, path, ready_timeout)
    except BaseException:
        _abandon(process, path)
        raise
    finally:
        os.close(read_end)
    return Mount(url, path, process, said)


def _await_ready(
    fd: int, process: subprocess.Popen[bytes], path: Path, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError(f"mount at {path} did not answer within {timeout:g} s")
        readable, _, _ = select.select([fd], [], [], min(left, 0.5))
        if readable:
            chunk = os.read(fd, 4096)
            got += chunk
            if not chunk:  # the daemon closed it: ready, or dead
                break
        elif process.poll() is not None:
            break
    if got.startswith(b"ready\n"):
        return got[len(b"ready\n") :].decode(errors="replace").strip()
    code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    raise OSError(f"mount daemon exited with status {code} before the mount answered")


def _abandon(process: subprocess.Popen[bytes], path: Path) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if is_mounted(path):
        unmount(path)
