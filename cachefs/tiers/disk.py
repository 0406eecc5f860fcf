"""The per-node disk tier: checksummed chunk files shared by processes.

Layout under the tier's root (created 0700)::

    chunks/<d[:2]>/<digest>   one file per chunk: header [+ codec config] + payload
    tmp/                      files being written; renamed into chunks/
    locks/<d[:4]>             flock stripes for cross-process single-flight
    usage                     the node-wide byte counter (flock-guarded)

A chunk file becomes visible only complete (written under ``tmp/``, then
hard-linked into place), carries a CRC32C bound to its key and is verified
the first time a process maps it; a damaged file is removed and counted,
never served. Hits are ``mmap`` slices: no copy, no system call after the
first.

Every file operation goes through a directory descriptor opened without
following symlinks, so nothing outside the cache directory is read, written
or removed. The directory and its subdirectories must be the user's own and
writable by no one else, and chunk files must be the user's; otherwise the
tier refuses them unless built with ``trust_cache_dir=True``.

Each mapping holds a file descriptor (CPython's ``mmap`` duplicates it), so
the maps a process keeps are bounded process-wide, well under its
``RLIMIT_NOFILE``; past the bound a hit is read with ``pread`` instead.

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
import re
import resource
import secrets
import shutil
import stat
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachefs.chunks import ChunkKey
from cachefs.policy import DiskEntry, EvictionPolicy
from cachefs.tiers.base import TierStats
from cachefs.tiers.record import CHUNK_HEADER, RecordCodec

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "CHUNK_HEADER",  # re-export
    "DiskTier",
    "StripeLock",
    "check_dir",
    "is_chunk_name",
    "map_limit",
    "open_dir",
    "parse_flag",
    "remove_below",
    "secure_dir",
]

log = logging.getLogger(__name__)

# Evict down to this fraction of the budget, so scans are amortised.
_LOW_WATERMARK = 0.95
# A reader refreshes a chunk's mtime (its recency for LRU) at most this often.
_TOUCH_INTERVAL = 5.0
# A chunk is read whole once when mapped (its checksum), so its pages are
# faulted in by the kernel in one call rather than one fault per page.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW
_DIGEST_RE = re.compile(r"[0-9a-f]{40}")
_TRUST_HINT = "or pass trust_cache_dir=True (--trust-cache-dir) if you mean it"


# -- directories the cache owns ------------------------------------------------


def parse_flag(value: Any, name: str) -> bool:
    """Return ``value`` as a bool (``True``, ``"yes"``, ``1``, ...).

    Raises
    ------
    ValueError
        If ``value`` is not a boolean or a boolean word; names ``name``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
    raise ValueError(f"{name}={value!r} is not a boolean (true or false)")


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
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(
            f"cache_dir {str(path)!r} is not a plain directory (symlink refused)"
        )
    if trust:
        return
    uid = os.geteuid()
    if st.st_uid != uid:
        raise PermissionError(
            f"cache_dir {str(path)!r} is owned by uid {st.st_uid}, not by you "
            f"(uid {uid}): records planted there would be served. Use a "
            f"directory of your own, or `chown -R {uid} {path}`, {_TRUST_HINT}"
        )
    if st.st_mode & 0o022:
        raise PermissionError(
            f"cache_dir {str(path)!r} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): records planted there would be "
            f"served. Run `chmod 700 {path}`, {_TRUST_HINT}"
        )


def secure_dir(path: Path, *, trust: bool = False) -> None:
    """Create ``path`` owner-only if missing, then :func:`check_dir` it."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    check_dir(path, os.lstat(path), trust=trust)


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
        return _remove_entry(parts[-1], fd) is not None
    finally:
        os.close(fd)


def _remove_entry(name: str, dir_fd: int) -> os.stat_result | None:
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


def is_chunk_name(shard: str, name: str) -> bool:
    """Whether ``chunks/<shard>/<name>`` is where a chunk file may live."""
    return _DIGEST_RE.fullmatch(name) is not None and name[:2] == shard


# -- descriptors held by maps --------------------------------------------------


def map_limit() -> int:
    """Return how many chunk maps this process keeps at most.

    A quarter of the soft ``RLIMIT_NOFILE``, at most 256 and at least 4:
    every map holds a descriptor, and the rest of the process needs its own.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 256
    return max(4, min(256, soft // 4))


class _MapCount:
    """The live chunk maps of this process, across every disk tier.

    A map is live from its creation until its ``mmap`` object is freed: when
    neither a tier nor a consumer's memoryview holds it. A map a consumer
    still holds cannot be closed (it has exported buffers) and keeps its
    descriptor; it is counted until then, so the bound holds whatever
    consumers keep.
    """

    def __init__(self) -> None:
        self.live = 0
        self._lock = threading.RLock()  # a free can happen under it
        self.tiers: weakref.WeakSet[DiskTier] = weakref.WeakSet()

    def opened(self, mapped: mmap.mmap) -> None:
        with self._lock:
            self.live += 1
        weakref.finalize(mapped, self._freed)

    def _freed(self) -> None:
        with self._lock:
            self.live -= 1

    def make_room(self, tier: DiskTier, limit: int) -> bool:
        """Drop the oldest maps held by tiers until one more fits."""
        if self.live < limit:
            return True
        for owner in [tier, *(t for t in list(self.tiers) if t is not tier)]:
            while self.live >= limit and owner._unmap_oldest():
                pass
            if self.live < limit:
                return True
        return False


_MAPS = _MapCount()


# -- cross-process locks --------------------------------------------------------

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
            dfd = open_dir(self._path.parent)
            try:
                fd = os.open(
                    self._path.name,
                    os.O_RDWR | os.O_CREAT | _NOFOLLOW,
                    0o600,
                    dir_fd=dfd,
                )
            finally:
                os.close(dfd)
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
        How many chunk mappings this tier keeps open at most; the process as
        a whole keeps at most :func:`map_limit` across all tiers.
    codec
        A numcodecs codec to compress chunks with, or ``None``.
    trust_cache_dir
        Use ``root`` even if another user owns it or others can write it,
        and serve chunk files another user owns. Off by default: such a
        directory is refused with ``PermissionError``.

    Attributes
    ----------
    last_refusal
        The latest ``OSError`` a chunk write met (read-only directory, full
        disk, ...), or ``None``: the chunk was not stored and reads went on.
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
        trust_cache_dir: bool = False,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.limit = limit
        self.policy = policy
        self.stats = TierStats()
        self.max_maps = max_maps
        self.codec = codec
        self.trust_cache_dir = trust_cache_dir
        self.last_refusal: OSError | None = None
        self._records = RecordCodec(codec)
        for sub in ("", "chunks", "tmp", "locks"):
            secure_dir(self.root / sub if sub else self.root, trust=trust_cache_dir)
        self._chunks = self.root / "chunks"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        self._usage_path = self.root / "usage"
        self._maps: OrderedDict[str, tuple[memoryview, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._full_warned = False
        self._refusals_logged: set[int | None] = set()
        self._uid = os.geteuid()
        _MAPS.tiers.add(self)
        self._clean_tmp()

    # -- reads ---------------------------------------------------------------

    def path_for(self, digest: str) -> Path:
        """Return where the chunk named ``digest`` lives."""
        return self._chunks / digest[:2] / digest

    def get(self, key: ChunkKey) -> memoryview | None:
        """Return a view of the chunk's payload, or ``None``.

        Raises
        ------
        PermissionError
            If the chunk's file belongs to another user (see
            ``trust_cache_dir``).
        """
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
        try:
            cfd = open_dir(self._chunks)
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
                log.warning(
                    "cachefs: %s is not a directory; replacing it", self._chunks / shard
                )
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
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._drop_damaged(digest, "is not a regular file")
                return None
            if st.st_uid != self._uid and not self.trust_cache_dir:
                raise PermissionError(
                    f"cachefs: chunk file {str(self.path_for(digest))!r} is owned by "
                    f"uid {st.st_uid}, not by you (uid {self._uid}), so it may be "
                    f"planted. Remove the cache directory {str(self.root)!r} or "
                    f"`chown -R {self._uid}` it, {_TRUST_HINT}"
                )
            size = st.st_size
            if size < CHUNK_HEADER.size:
                self._drop_damaged(digest, "is truncated")
                return None
            limit = min(self.max_maps, map_limit())
            mapped: mmap.mmap | None = None
            if _MAPS.make_room(self, limit):
                mapped = mmap.mmap(fd, size, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
                _MAPS.opened(mapped)
                view = memoryview(mapped)
            else:
                # Consumers hold every map we may keep: read a copy, keep no
                # descriptor.
                view = memoryview(_pread_all(fd, size))
        finally:
            os.close(fd)
        record, why = RecordCodec.check(view, expected, digest)
        chunk: memoryview | None = None
        raw = False
        if record is not None:
            if record.compressed:
                chunk = self._records.decode(record, expected)
                record.payload.release()  # decoded bytes need no mapping
                if chunk is None:
                    why = "does not decompress to its length"
            else:
                chunk, raw = record.payload, True
        record = None
        now = time.monotonic()
        if mapped is not None and not raw:
            view.release()
            mapped.close()
        if chunk is None:
            self._drop_damaged(digest, why)
            return None
        self._touch(digest, now)
        if raw and mapped is not None:
            with self._lock:
                self._maps[digest] = (chunk, now)
                while len(self._maps) > limit:
                    # The mapping closes once no consumer holds a view of it.
                    self._maps.popitem(last=False)
        return chunk

    def _unmap_oldest(self) -> bool:
        """Drop this tier's least recently used map; whether one was held."""
        with self._lock:
            if not self._maps:
                return False
            self._maps.popitem(last=False)
        return True

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
            st = _remove_entry(digest, dfd)
            if st is None:
                return False
            if stat.S_ISREG(st.st_mode):
                self._write_usage(ufd, max(self._read_usage(ufd) - st.st_size, 0))
        return True

    # -- writes --------------------------------------------------------------

    def put(self, key: ChunkKey, data: Buffer) -> bool:
        """Write the chunk atomically; return whether it is now stored.

        A write the disk refuses (full, read-only, no permission) is not an
        error for the reader: the chunk is not stored, the refusal is kept in
        :attr:`last_refusal`, logged once per errno (and a full disk warned
        about once), and reads go on from the origin.
        """
        length = memoryview(data).nbytes
        digest = key.digest
        head, payload = self._records.encode(memoryview(data).cast("B"), digest)
        size = len(head) + payload.nbytes
        if not self.policy.admit(size, self.usage(), self.limit):
            self.stats.rejected += 1
            return False
        tmp = f"{digest}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            tfd = open_dir(self._tmp)
        except OSError as exc:
            self._refused(exc)
            return False
        try:
            self._write_new(tfd, tmp, head, payload)
            published = self._publish(tfd, tmp, digest, size)
        except OSError as exc:
            self._refused(exc)
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=tfd)
            os.close(tfd)
        if published:
            self.stats.puts += 1
            self.stats.put_bytes += length
        return True

    def _refused(self, exc: OSError) -> None:
        """Count and report a write the disk refused."""
        self.stats.rejected += 1
        self.last_refusal = exc
        if exc.errno not in self._refusals_logged:
            self._refusals_logged.add(exc.errno)
            name = errno.errorcode.get(exc.errno or 0, "?")
            log.warning(
                "cachefs: cache_dir %s refused a chunk write: %s (errno %s %s); "
                "reading on without caching those chunks",
                self.root,
                exc.strerror or exc,
                exc.errno,
                name,
            )
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self._warn_full(exc)

    def _publish(self, tfd: int, tmp: str, digest: str, size: int) -> bool:
        """Link ``tmp`` into place and count it, in one locked step.

        ``link`` publishes only if absent, so a concurrent writer of the same
        chunk is not counted twice; doing it under the usage lock keeps the
        counter equal to the files an eviction scan sees.
        """
        with self._usage_locked() as ufd, self._shard(digest, create=True) as dfd:
            assert dfd is not None
            try:
                os.link(
                    tmp, digest, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False
                )
            except FileExistsError:
                st = os.stat(digest, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    return False
                if stat.S_ISDIR(st.st_mode):  # not ours: a planted directory
                    shutil.rmtree(digest, dir_fd=dfd)
                else:  # not ours: a planted link
                    os.unlink(digest, dir_fd=dfd)
                os.link(
                    tmp, digest, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False
                )
            counted = os.pread(ufd, 8, 0)
            if len(counted) == 8:
                usage = int.from_bytes(counted, "little") + size
            else:  # no counter yet: the scan sees the new file too
                usage = sum(e.size for e in self._scan())
            if usage > self.limit:
                usage = self._evict_locked()
            self._write_usage(ufd, usage)
        return True

    @staticmethod
    def _write_new(dfd: int, name: str, header: bytes, payload: memoryview) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
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

    def _warn_full(self, exc: OSError) -> None:
        if not self._full_warned:
            self._full_warned = True
            warnings.warn(
                f"cachefs: cache_dir {str(self.root)!r} is full ({exc.strerror}); "
                "reading on without caching to it",
                ResourceWarning,
                stacklevel=4,
            )

    def discard(self, key: ChunkKey) -> None:
        """Remove the chunk's file if present."""
        self.remove(key.digest)

    def clear(self) -> None:
        """Remove everything under ``chunks/`` (other processes simply refetch).

        Stray files and directories go too; symlinks are removed, never
        followed.
        """
        with self._lock:
            self._maps.clear()
        with self._usage_locked() as fd:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                cfd = open_dir(self._chunks)
                try:
                    for name in os.listdir(cfd):
                        with contextlib.suppress(FileNotFoundError):
                            remove_below(self._chunks, [name])
                finally:
                    os.close(cfd)
            self._write_usage(fd, 0)

    # -- budget --------------------------------------------------------------

    def usage(self) -> int:
        """Return the node-wide bytes this directory holds (from the counter)."""
        try:
            fd = os.open(self._usage_path, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return 0
        try:
            return self._read_usage(fd)
        finally:
            os.close(fd)

    def recount(self) -> tuple[int, int]:
        """Set the usage counter to the bytes the chunk files hold.

        Returns the counter's value before and after. Done under the usage
        lock, so it is exact while other processes publish and evict.
        """
        with self._usage_locked() as fd:
            raw = os.pread(fd, 8, 0)
            before = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            after = sum(e.size for e in self._scan())
            self._write_usage(fd, after)
        return before, after

    def __len__(self) -> int:
        return sum(1 for _ in self._scan())

    @staticmethod
    def _read_usage(fd: int) -> int:
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
        """Yield the chunk files: the budget counts these and nothing else.

        Anything else under ``chunks/`` (a misplaced or oddly named file, a
        symlink, a directory) is a stray: not counted, never a chunk, and
        removed by ``cachefs verify --repair`` and ``clear``.
        """
        try:
            cfd = open_dir(self._chunks)
        except OSError:
            return
        try:
            shards = os.listdir(cfd)
            for shard in shards:
                if len(shard) != 2:
                    continue
                try:
                    dfd = open_dir(shard, dir_fd=cfd)
                except OSError:
                    continue  # gone, or not a directory: a stray
                try:
                    with os.scandir(dfd) as it:
                        entries = list(it)
                    for entry in entries:
                        if not is_chunk_name(shard, entry.name):
                            continue
                        try:
                            st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if stat.S_ISREG(st.st_mode):
                            yield DiskEntry(entry.name, st.st_size, st.st_mtime)
                finally:
                    os.close(dfd)
        finally:
            os.close(cfd)

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

    def _clean_tmp(self) -> None:
        """Remove temporary files left by processes that died mid-write."""
        try:
            tfd = open_dir(self._tmp)
        except OSError:
            return
        try:
            for name in os.listdir(tfd):
                parts = name.split(".")
                pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
                if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                    continue
                with contextlib.suppress(OSError):
                    remove_below(self._tmp, [name])
        finally:
            os.close(tfd)


def _pread_all(fd: int, size: int) -> bytes:
    """Read ``size`` bytes from ``fd`` at offset 0 (fewer if it shrank)."""
    parts = []
    offset = 0
    while offset < size:
        piece = os.pread(fd, size - offset, offset)
        if not piece:
            break
        parts.append(piece)
        offset += len(piece)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
