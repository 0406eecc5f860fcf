"""The per-node disk tier: checksummed chunk files shared by processes.

Layout under the tier's root (created 0700)::

    chunks/<d[:2]>/<digest>   one file per chunk: header [+ codec config] + payload
    tmp/                      files being written; renamed into chunks/
    locks/<d[:4]>             flock stripes for cross-process single-flight
    usage                     the node-wide byte counter (flock-guarded)

A chunk file becomes visible only complete (written under ``tmp/``, then
hard-linked into place), carries a CRC32C of its payload and is verified the
first time a process maps it; a damaged file is removed and counted, never
served. Hits are ``mmap`` slices: no copy, no system call after the first.

With a numcodecs codec, chunks that compress are stored compressed and the
codec's JSON config is recorded in the file, so a cache written with one
setting reads correctly under another; those chunks are decoded on each map.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import stat
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachefs.chunks import ChunkKey
from cachefs.policy import DiskEntry, EvictionPolicy
from cachefs.tiers.base import TierStats
from cachefs.tiers.record import CHUNK_HEADER, RecordCodec

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["CHUNK_HEADER", "DiskTier", "StripeLock"]  # CHUNK_HEADER: re-export

log = logging.getLogger(__name__)

# Evict down to this fraction of the budget, so scans are amortised.
_LOW_WATERMARK = 0.95
# A reader refreshes a chunk's mtime (its recency for LRU) at most this often.
_TOUCH_INTERVAL = 5.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _secure_dir(path: Path) -> None:
    """Create ``path`` owner-only, refusing a symlink in its place."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(
            f"cache_dir {str(path)!r} is not a plain directory (symlink refused)"
        )


_UNLOCKED_WARNED = False


def _warn_unlocked(path: Path, exc: OSError) -> None:
    global _UNLOCKED_WARNED
    if not _UNLOCKED_WARNED:
        _UNLOCKED_WARNED = True
        warnings.warn(
            f"cachefs: cannot create lock file {str(path)!r} ({exc.strerror}); "
            "reading on without cross-process single-flight",
            ResourceWarning,
            stacklevel=4,
        )


#: Descriptors of the stripe locks this process holds.
_HELD: set[int] = set()


def _close_inherited_locks() -> None:
    # flock belongs to the open file description, which a forked child
    # shares: the child's copies would keep the parent's locks held for as
    # long as the child lives (a persistent DataLoader worker). Close them.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class StripeLock:
    """An exclusive ``flock`` on one of the tier's lock stripes.

    Chunks whose digests share a 4-hex-digit prefix share a stripe; a process
    fetching a chunk holds its stripe until the chunk is published, so other
    processes wait instead of fetching it again. The kernel drops the lock if
    the holder dies; a forked child drops its inherited copies at once.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._pid = 0

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return whether it was taken.

        If the lock file cannot be created (no inodes left, a read-only
        directory), the caller proceeds without cross-process exclusion: a
        chunk may then be fetched twice, but the reader is not failed.
        """
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        except OSError as exc:
            _warn_unlocked(self._path, exc)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)
        return True

    def release(self) -> None:
        """Release the lock (idempotent; a no-op in a forked child)."""
        fd, self._fd = self._fd, None
        if fd is not None and self._pid == os.getpid():
            _HELD.discard(fd)
            os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None and self._pid == os.getpid()


class DiskTier:
    """Chunk files in one cache directory, budgeted across processes.

    Parameters
    ----------
    root
        The tier's directory; created owner-only if missing.
    limit
        Byte budget for this directory, kept across all processes using it.
    policy
        Eviction policy; ranks the scanned entries when over budget.
    max_maps
        How many chunk mappings this process keeps open.
    codec
        A numcodecs codec to compress chunks with, or ``None``.
    """

    name = "disk"

    def __init__(
        self,
        root: str | os.PathLike[str],
        limit: int,
        policy: EvictionPolicy,
        *,
        max_maps: int = 1024,
        codec: Any = None,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.limit = limit
        self.policy = policy
        self.stats = TierStats()
        self.max_maps = max_maps
        self.codec = codec
        self._records = RecordCodec(codec)
        for sub in ("", "chunks", "tmp", "locks"):
            _secure_dir(self.root / sub if sub else self.root)
        self._chunks = self.root / "chunks"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        self._usage_path = self.root / "usage"
        self._maps: OrderedDict[str, tuple[memoryview, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._full_warned = False
        self._clean_tmp()

    # -- reads ---------------------------------------------------------------

    def path_for(self, digest: str) -> Path:
        """Return where the chunk named ``digest`` lives."""
        return self._chunks / digest[:2] / digest

    def get(self, key: ChunkKey) -> memoryview | None:
        """Return a view of the chunk's payload, or ``None``."""
        digest = key.digest
        entry = self._maps.get(digest)
        if entry is not None:
            view, touched = entry
            now = time.monotonic()
            if now - touched > _TOUCH_INTERVAL:
                self._touch(digest, now)
            try:  # noqa: SIM105 - the hot path; suppress() costs more
                self._maps.move_to_end(digest)
            except KeyError:  # unmapped by another thread meanwhile
                pass
            self.stats.hits += 1
            self.stats.hit_bytes += view.nbytes
            return view
        loaded = self._map(digest, key.length)
        if loaded is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self.stats.hit_bytes += loaded.nbytes
        return loaded

    def is_mapped(self, key: ChunkKey) -> bool:
        """Whether this process has ``key`` mapped (no system call)."""
        return key.digest in self._maps

    def contains(self, key: ChunkKey) -> bool:
        """Return whether a file exists for ``key`` (not verified)."""
        digest = key.digest
        if digest in self._maps:
            return True
        with self._shard(digest, create=False) as dfd:
            if dfd is None:
                return False
            try:
                st = os.stat(digest, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            return stat.S_ISREG(st.st_mode)

    @contextlib.contextmanager
    def _shard(self, digest: str, *, create: bool) -> Iterator[int | None]:
        """Open ``chunks/<d[:2]>`` without following a symlink put there.

        Every chunk file operation goes through this descriptor, so nothing
        outside the cache directory is ever read, written or removed. A
        symlink or stray file in a shard's place is replaced when ``create``.
        """
        shard = self._chunks / digest[:2]
        flags = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW
        try:
            dfd = os.open(shard, flags)
        except FileNotFoundError:
            if not create:
                yield None
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(shard, 0o700)
            dfd = os.open(shard, flags)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            log.warning("cachefs: %s is not a directory; replacing it", shard)
            if not create:
                yield None
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(shard)
            os.mkdir(shard, 0o700)
            dfd = os.open(shard, flags)
        try:
            yield dfd
        finally:
            os.close(dfd)

    def _map(self, digest: str, expected: int) -> memoryview | None:
        with self._shard(digest, create=False) as dfd:
            if dfd is None:
                return None
            try:
                fd = os.open(digest, os.O_RDONLY | _NOFOLLOW, dir_fd=dfd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    self._drop_damaged(digest, "is a symlink")
                return None
        try:
            size = os.fstat(fd).st_size
            if size < CHUNK_HEADER.size:
                self._drop_damaged(digest, "is truncated")
                return None
            mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        view = memoryview(mapped)
        record = RecordCodec.parse(view, expected)
        chunk: memoryview | None = None
        if record is not None:
            if not record.compressed:
                chunk = record.payload
            else:
                chunk = self._records.decode(record, expected)
                record.payload.release()  # decoded bytes need no mapping
                record = None
        now = time.monotonic()
        if chunk is None or record is None:
            view.release()
            mapped.close()
            if chunk is None:
                self._drop_damaged(digest, "failed its checksum")
            else:
                self._touch(digest, now)
            return chunk
        self._touch(digest, now)
        with self._lock:
            self._maps[digest] = (chunk, now)
            while len(self._maps) > self.max_maps:
                # The mapping closes once no consumer holds a view of it.
                self._maps.popitem(last=False)
        return chunk

    def _touch(self, digest: str, now: float) -> None:
        with contextlib.suppress(OSError), self._shard(digest, create=False) as dfd:
            if dfd is not None:
                os.utime(digest, dir_fd=dfd, follow_symlinks=False)
        entry = self._maps.get(digest)
        if entry is not None:
            self._maps[digest] = (entry[0], now)

    def _drop_damaged(self, digest: str, why: str) -> None:
        self.stats.checksum_failures += 1
        log.warning(
            "cachefs: dropping chunk file %s: it %s", self.path_for(digest), why
        )
        self.remove(digest)

    def remove(self, digest: str) -> bool:
        """Unlink the chunk file ``digest`` and count it off, under the lock.

        Returns whether a file was removed. Safe while other processes read:
        they fetch the chunk again.
        """
        with self._lock:
            self._maps.pop(digest, None)
        with self._usage_locked() as ufd, self._shard(digest, create=False) as dfd:
            if dfd is None:
                return False
            try:
                st = os.stat(digest, dir_fd=dfd, follow_symlinks=False)
                os.unlink(digest, dir_fd=dfd)
            except FileNotFoundError:
                return False
            if stat.S_ISREG(st.st_mode):
                self._write_usage(ufd, max(self._read_usage(ufd) - st.st_size, 0))
        return True

    # -- writes --------------------------------------------------------------

    def put(self, key: ChunkKey, data: Buffer) -> bool:
        """Write the chunk atomically; return whether it is now stored.

        A full disk is not an error for the reader: the chunk is not stored,
        a warning is issued once, and reads go on from the origin.
        """
        length = memoryview(data).nbytes
        head, payload = self._records.encode(memoryview(data).cast("B"))
        size = len(head) + payload.nbytes
        if not self.policy.admit(size, self.usage(), self.limit):
            self.stats.rejected += 1
            return False
        digest = key.digest
        tmp = self._tmp / f"{digest}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            self._write_new(tmp, head, payload)
            published = self._publish(tmp, digest, size)
        except OSError as exc:
            self.stats.rejected += 1
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._warn_full(exc)
                return False
            raise
        finally:
            self._unlink_quietly(tmp)
        if published:
            self.stats.puts += 1
            self.stats.put_bytes += length
        return True

    def _publish(self, tmp: Path, digest: str, size: int) -> bool:
        """Link ``tmp`` into place and count it, in one locked step.

        ``link`` publishes only if absent, so a concurrent writer of the same
        chunk is not counted twice; doing it under the usage lock keeps the
        counter equal to the files an eviction scan sees.
        """
        with self._usage_locked() as ufd, self._shard(digest, create=True) as dfd:
            assert dfd is not None
            try:
                os.link(tmp, digest, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                st = os.stat(digest, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    return False
                os.unlink(digest, dir_fd=dfd)  # not ours: a planted link
                os.link(tmp, digest, dst_dir_fd=dfd, follow_symlinks=False)
            counted = os.pread(ufd, 8, 0)
            if len(counted) == 8:
                usage = int.from_bytes(counted, "little") + size
            else:  # no counter yet: the scan sees the new file too
                usage = sum(e.size for e in self._scan())
            if usage > self.limit:
                usage = self._evict_locked()
            self._write_usage(ufd, usage)
        return True

    def _write_new(self, path: Path, header: bytes, payload: memoryview) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        fd = os.open(path, flags, 0o600)
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

    def _warn_full(self, exc: OSError) -> None:
        if not self._full_warned:
            self._full_warned = True
            warnings.warn(
                f"cachefs: cache_dir {str(self.root)!r} is full ({exc.strerror}); "
                "reading on without caching to it",
                ResourceWarning,
                stacklevel=3,
            )

    def discard(self, key: ChunkKey) -> None:
        """Remove the chunk's file if present."""
        self.remove(key.digest)

    def clear(self) -> None:
        """Remove every chunk file (other processes simply refetch)."""
        with self._lock:
            self._maps.clear()
        with self._usage_locked() as fd:
            for entry in self._scan():
                self._unlink_chunk(entry.name)
            self._write_usage(fd, 0)

    # -- budget --------------------------------------------------------------

    def usage(self) -> int:
        """Return the node-wide bytes this directory holds (from the counter)."""
        try:
            with open(self._usage_path, "rb") as fh:
                raw = fh.read(8)
        except FileNotFoundError:
            return 0
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0

    def __len__(self) -> int:
        return sum(1 for _ in self._scan())

    def _read_usage(self, fd: int) -> int:
        raw = os.pread(fd, 8, 0)
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0

    @contextlib.contextmanager
    def _usage_locked(self) -> Iterator[int]:
        # A fresh descriptor per use: flock is per open file description, so
        # a descriptor inherited across fork would not exclude the parent.
        fd = os.open(self._usage_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _write_usage(fd: int, usage: int) -> None:
        os.pwrite(fd, usage.to_bytes(8, "little"), 0)

    def _evict_locked(self) -> int:
        """Evict to the low watermark; return the true usage afterwards."""
        entries = list(self._scan())
        usage = sum(e.size for e in entries)
        if usage <= self.limit:
            return usage  # the counter had drifted; the scan is the truth
        target = int(self.limit * _LOW_WATERMARK)
        for entry in self.policy.rank(entries):
            if usage <= target:
                break
            with self._lock:
                self._maps.pop(entry.name, None)
            if self._unlink_chunk(entry.name):
                usage -= entry.size
                self.stats.evictions += 1
                self.stats.evicted_bytes += entry.size
        return usage

    def _scan(self) -> Iterator[DiskEntry]:
        try:
            shards = list(os.scandir(self._chunks))
        except FileNotFoundError:
            return
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError), os.scandir(shard) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield DiskEntry(entry.name, st.st_size, st.st_mtime)

    def _unlink_chunk(self, digest: str) -> bool:
        with self._shard(digest, create=False) as dfd:
            if dfd is None:
                return False
            try:
                os.unlink(digest, dir_fd=dfd)
            except FileNotFoundError:
                return False
        return True

    # -- cross-process single flight -----------------------------------------

    def stripe_lock(self, key: ChunkKey) -> StripeLock:
        """Return the (unacquired) cross-process lock for ``key``'s stripe."""
        return StripeLock(self._locks / key.digest[:4])

    def file_lock(self, name: str) -> StripeLock:
        """Return the (unacquired) cross-process lock for one origin file.

        Held while a process learns a new file's version from a ranged read,
        so other processes wait for that read instead of repeating it.
        """
        digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        return StripeLock(self._locks / f"file-{digest[:4]}")

    # -- housekeeping --------------------------------------------------------

    def after_fork(self) -> None:
        """Replace the lock, which another thread may have held at fork."""
        self._lock = threading.Lock()

    @staticmethod
    def _unlink_quietly(path: Path) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def _clean_tmp(self) -> None:
        """Remove temporary files left by processes that died mid-write."""
        try:
            names = os.listdir(self._tmp)
        except FileNotFoundError:
            return
        for name in names:
            parts = name.split(".")
            pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
            if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                continue
            self._unlink_quietly(self._tmp / name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
