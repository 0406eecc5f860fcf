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
import hashlib
import logging
import mmap
import os
import secrets
import shutil
import stat
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachefs.chunks import ChunkKey, parse_flag  # parse_flag: re-export
from cachefs.policy import EvictionPolicy
from cachefs.tiers.base import TierStats
from cachefs.tiers.chunkfiles import is_chunk_name, open_shard, scan_chunks, write_new
from cachefs.tiers.dirs import (
    NOFOLLOW,
    TRUST_HINT,
    check_dir,
    clean_tmp,
    open_dir,
    remove_below,
    remove_entry,
    secure_dir,
)
from cachefs.tiers.locks import StripeLock
from cachefs.tiers.maps import MAPS, map_limit, pread_all
from cachefs.tiers.record import CHUNK_HEADER, RecordCodec
from cachefs.tiers.usage import UsageCounter

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
        self._usage = UsageCounter(self.root / "usage")
        self._maps: OrderedDict[str, tuple[memoryview, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._full_warned = False
        self._refusals_logged: set[int | None] = set()
        self._uid = os.geteuid()
        MAPS.holders.add(self)
        clean_tmp(self._tmp)

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

    def tier_for(self, key: ChunkKey) -> DiskTier:
        """Return this tier: it stores every key it is given."""
        return self

    def in_memory(self, key: ChunkKey) -> bool:
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

    def _shard(
        self, digest: str, *, create: bool
    ) -> contextlib.AbstractContextManager[int | None]:
        """Open the chunk's shard directory (see :func:`open_shard`)."""
        return open_shard(self._chunks, digest, create=create)

    def _map(self, digest: str, expected: int) -> memoryview | None:
        with self._shard(digest, create=False) as dfd:
            if dfd is None:
                return None
            try:
                fd = os.open(digest, os.O_RDONLY | NOFOLLOW, dir_fd=dfd)
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
                    f"`chown -R {self._uid}` it, {TRUST_HINT}"
                )
            size = st.st_size
            if size < CHUNK_HEADER.size:
                self._drop_damaged(digest, "is truncated")
                return None
            limit = min(self.max_maps, map_limit())
            mapped: mmap.mmap | None = None
            if MAPS.make_room(self, limit):
                mapped = mmap.mmap(fd, size, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
                MAPS.opened(mapped)
                view = memoryview(mapped)
            else:
                # Consumers hold every map we may keep: read a copy, keep no
                # descriptor.
                view = memoryview(pread_all(fd, size))
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

    def unmap_oldest(self) -> bool:
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
        with self._usage.locked() as ufd, self._shard(digest, create=False) as dfd:
            if dfd is None:
                return False
            st = remove_entry(digest, dfd)
            if st is None:
                return False
            if stat.S_ISREG(st.st_mode):
                self._usage.write(ufd, max(self._usage.read(ufd) - st.st_size, 0))
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
            write_new(tfd, tmp, head, payload)
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
        with self._usage.locked() as ufd, self._shard(digest, create=True) as dfd:
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
            counted = self._usage.read_raw(ufd)
            if counted is not None:
                usage = counted + size
            else:  # no counter yet: the scan sees the new file too
                usage = sum(e.size for e in scan_chunks(self._chunks))
            if usage > self.limit:
                usage = self._evict_locked()
            self._usage.write(ufd, usage)
        return True

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
        with self._usage.locked() as fd:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                cfd = open_dir(self._chunks)
                try:
                    for name in os.listdir(cfd):
                        with contextlib.suppress(FileNotFoundError):
                            remove_below(self._chunks, [name])
                finally:
                    os.close(cfd)
            self._usage.write(fd, 0)

    # -- budget --------------------------------------------------------------

    def usage(self) -> int:
        """Return the node-wide bytes this directory holds (from the counter)."""
        return self._usage.value()

    def recount(self) -> tuple[int, int]:
        """Set the usage counter to the bytes the chunk files hold.

        Returns the counter's value before and after. Done under the usage
        lock, so it is exact while other processes publish and evict.
        """
        with self._usage.locked() as fd:
            raw = self._usage.read_raw(fd)
            before = -1 if raw is None else raw
            after = sum(e.size for e in scan_chunks(self._chunks))
            self._usage.write(fd, after)
        return before, after

    def __len__(self) -> int:
        return sum(1 for _ in scan_chunks(self._chunks))

    def _evict_locked(self) -> int:
        """Evict to the low watermark; return the true usage afterwards."""
        entries = list(scan_chunks(self._chunks))
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

    # The layout read from outside (the ``cachefs`` command, which changes
    # nothing but on request) is :mod:`cachefs.tiers.layout`.

    def remove_path(self, path: Path) -> int:
        """Delete the file ``path`` below ``chunks/``, damaged or stray.

        Counted off the budget when the budget counts it; never through a
        symlink. Returns the bytes removed (0 if already gone).
        """
        try:
            size = os.lstat(path).st_size
        except FileNotFoundError:
            return 0
        shard, name = path.parent.name, path.name
        if is_chunk_name(shard, name):
            return size if self.remove(name) else 0
        return size if remove_below(self._chunks, [shard, name]) else 0
