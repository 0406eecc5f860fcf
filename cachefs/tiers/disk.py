"""The per-node disk tier: checksummed chunk files shared by processes.

Layout under the tier's root (created 0700)::

    chunks/<d[:2]>/<digest>   one file per chunk: header [+ codec config] + payload
    tmp/                      files being written; renamed into chunks/
    locks/stripes             a byte-range lock per stripe: cross-process single flight
    usage                     the node-wide byte counter (flock-guarded)

A chunk file becomes visible only complete (written under ``tmp/``, then
hard-linked into place under the usage lock, where it is also admitted),
and carries a CRC32C per block, bound to its key (:mod:`cachefs.tiers.record`).
A reader verifies the blocks it reads, the first time it reads them
(:meth:`DiskTier.get_span`; :meth:`DiskTier.get` verifies all); a damaged
file is removed and counted, never served. Hits are ``mmap`` slices: no
copy, no system call after the first.

The layout as the ``cachefs`` command reads it is :mod:`cachefs.tiers.layout`.
Every file operation goes through a directory descriptor opened without
following symlinks and kept open (:class:`~cachefs.tiers.chunkfiles.DirCache`),
so nothing outside the cache directory is read, written or removed. The
directory and its subdirectories must be the user's own and writable by no
one else, and chunk files must be the user's; otherwise the
tier refuses them unless built with ``trust_cache_dir=True``.

The maps a process keeps are bounded (:mod:`cachefs.tiers.maps`). Chunk
files are written buffered, or with ``O_DIRECT`` where
:mod:`cachefs.tiers.direct` decides so.

With a numcodecs codec, chunks that compress are stored compressed and the
codec's JSON config is recorded in the file, so a cache written with one
setting reads correctly under another; those chunks are decoded on each map.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachefs.chunks import ChunkKey, parse_flag  # parse_flag: re-export
from cachefs.policy import EvictionPolicy
from cachefs.tiers import direct
from cachefs.tiers.base import TierStats
from cachefs.tiers.chunkfiles import (
    DirCache,
    WriteRefusals,
    is_chunk_name,
    link_chunk,
    scan_chunks,
    write_tmp,
)
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
from cachefs.tiers.locks import FILE_STRIPES, STRIPES_FILE, stripe_of
from cachefs.tiers.maps import MAPS, map_file, map_limit, pread_all
from cachefs.tiers.record import CHUNK_HEADER, BlockCheck, RecordCodec
from cachefs.tiers.stripes import SharedStripe, StripeHolds
from cachefs.tiers.usage import UsageCounter

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "CHUNK_HEADER",  # re-export
    "DiskTier",
    "check_dir",
    "is_chunk_name",
    "map_limit",
    "open_dir",
    "parse_flag",
    "remove_below",
    "secure_dir",
]

log = logging.getLogger(__name__)

_LOW_WATERMARK = 0.95  # evict down to this fraction: scans are amortised
_TOUCH_INTERVAL = 5.0  # seconds between a reader's mtime (LRU recency) refreshes
_MIN_RECORD = 32  # the smallest record (a format 2 header); shorter is damage


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
    direct_writes, node_limit
        Write chunks with ``O_DIRECT`` (``True``), buffered (``False``), or
        as :func:`cachefs.tiers.direct.choose` decides for a node budget of
        ``node_limit`` (default ``limit``) (``None``).

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
        direct_writes: bool | None = None,
        node_limit: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.limit = limit
        self.policy = policy
        self.stats = TierStats()
        self.max_maps = max_maps
        self.codec = codec
        self.trust_cache_dir = trust_cache_dir
        self.verified_bytes = 0  # payload bytes readers verified
        self._records = RecordCodec(codec)
        for sub in ("", "chunks", "tmp", "locks"):
            secure_dir(self.root / sub if sub else self.root, trust=trust_cache_dir)
        self._chunks = self.root / "chunks"
        self._tmp = self.root / "tmp"
        self._stripes = StripeHolds(self.root / "locks" / STRIPES_FILE)
        self._dirs = DirCache(self._chunks, self._tmp)
        self._usage = UsageCounter(self.root / "usage")
        # digest -> (payload view, last touch, blocks still unverified or None)
        self._maps: OrderedDict[str, tuple[memoryview, float, BlockCheck | None]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self._refusals = WriteRefusals(self.root)
        self._uid = os.geteuid()
        MAPS.holders.add(self)
        clean_tmp(self._tmp)
        self._direct = direct.Choice(
            direct_writes, self.root, self._tmp, node_limit or limit
        )

    @property
    def direct_writes(self) -> bool:
        """Whether chunks are written with ``O_DIRECT`` (see ``tiers.direct``)."""
        return self._direct.on

    @property
    def dir_opens(self) -> int:
        """Directories this tier opened: a handful per process, not per chunk."""
        return self._dirs.opens

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._dirs.close()
            self._stripes.close()

    # -- reads ---------------------------------------------------------------

    def path_for(self, digest: str) -> Path:
        """Return where the chunk named ``digest`` lives."""
        return self._chunks / digest[:2] / digest

    def get(self, key: ChunkKey) -> memoryview | None:
        """Return a view of the chunk's payload, all of it verified, or ``None``.

        Raises
        ------
        PermissionError
            If the chunk's file belongs to another user (see
            ``trust_cache_dir``).
        """
        found = self.get_span(key, 0, None)
        return None if found is None else found[0]

    def get_span(
        self, key: ChunkKey, lo: int, hi: int | None
    ) -> tuple[memoryview, bool] | None:
        """Return the chunk's payload with bytes ``[lo, hi)`` verified, or ``None``.

        The flag says whether all of it is verified: without it, only
        ``view[lo:hi]`` may be read, and a later read of other bytes asks
        again (each block is checked once per map). ``hi`` ``None`` means
        the end, so the whole chunk is verified. A block that fails its
        check drops the chunk: the reader fetches it again.

        Raises
        ------
        PermissionError
            If the chunk's file belongs to another user (see
            ``trust_cache_dir``).
        """
        digest = key.digest
        entry = self._maps.get(digest)
        if entry is None:
            if (loaded := self._map(digest, key.length, lo, hi)) is None:
                self.stats.misses += 1
                return None
            view, blocks = loaded
        else:
            view, touched, blocks = entry
            now = time.monotonic()
            if now - touched > _TOUCH_INTERVAL:
                self._touch(digest, now)
            try:  # noqa: SIM105 - the hot path; suppress() costs more
                self._maps.move_to_end(digest)
            except KeyError:  # unmapped by another thread meanwhile
                pass
        whole = True
        if blocks is not None:
            if not blocks.verify(lo, hi):  # counts into verified_bytes
                self._drop_damaged(digest, blocks.why)
                self.stats.misses += 1
                return None
            whole = blocks.complete
            if whole:
                with self._lock:
                    if digest in self._maps:
                        self._maps[digest] = (view, time.monotonic(), None)
        self.stats.hits += 1
        self.stats.hit_bytes += view.nbytes
        return view, whole

    def blocks_of(self, key: ChunkKey) -> BlockCheck | None:
        """Return the block check of ``key``'s map; ``None``: unmapped, or whole."""
        entry = self._maps.get(key.digest)
        return None if entry is None else entry[2]

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
        for _ in range(2):
            with self._dirs.shard(digest, create=False) as dfd:
                if dfd is None:
                    return False
                try:
                    st = os.stat(digest, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    if self._dirs.stale(digest[:2]):
                        continue  # the shard was removed under us: look again
                    return False
                return stat.S_ISREG(st.st_mode)
        return False

    def _open_chunk(self, digest: str) -> int | None:
        """Open the chunk file read-only, never through a symlink."""
        for _ in range(2):
            with self._dirs.shard(digest, create=False) as dfd:
                if dfd is None:
                    return None
                try:
                    return os.open(digest, os.O_RDONLY | NOFOLLOW, dir_fd=dfd)
                except FileNotFoundError:
                    if not self._dirs.stale(digest[:2]):
                        return None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        self._drop_damaged(digest, "is a symlink")
                    return None
        return None

    def _map(
        self, digest: str, expected: int, lo: int, hi: int | None
    ) -> tuple[memoryview, BlockCheck | None] | None:
        fd = self._open_chunk(digest)
        if fd is None:
            return None
        lazy = lo > 0 or hi is not None
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
            if size < _MIN_RECORD:
                self._drop_damaged(digest, "is truncated")
                return None
            limit = min(self.max_maps, map_limit())
            mapped = map_file(fd, size, self, limit, populate=not lazy)
            if mapped is not None:
                view = memoryview(mapped)
            else:
                # Consumers hold every map we may keep, or the kernel refused
                # one: read a copy, keep no descriptor, verify it whole.
                view = memoryview(pread_all(fd, size))
                lazy = False
            with contextlib.suppress(OSError):  # its recency for LRU (_touch's)
                os.utime(fd)  # through the descriptor: no lookup by name
        finally:
            os.close(fd)
        record, why = RecordCodec.check(view, expected, digest, lazy=lazy)
        chunk: memoryview | None = None
        blocks: BlockCheck | None = None
        raw = False
        if record is not None:
            if record.compressed:
                chunk = self._records.decode(record, expected)
                record.payload.release()  # decoded bytes need no mapping
                if chunk is None:
                    why = "does not decompress to its length"
            else:
                chunk, raw, blocks = record.payload, True, record.blocks
                if blocks is not None:
                    blocks.sink = self
        if blocks is None and chunk is not None:
            self.verified_bytes += chunk.nbytes  # checked whole just now
        record = None
        now = time.monotonic()
        if mapped is not None and not raw:
            view.release()
            mapped.close()
        if chunk is None:
            self._drop_damaged(digest, why)
            return None
        if raw and mapped is not None:
            with self._lock:
                self._maps[digest] = (chunk, now, blocks)
                while len(self._maps) > limit:
                    # The mapping closes once no consumer holds a view of it.
                    self._maps.popitem(last=False)
        return chunk, blocks

    def unmap_oldest(self) -> bool:
        """Drop this tier's least recently used map; whether one was held."""
        with self._lock:
            if not self._maps:
                return False
            self._maps.popitem(last=False)
        return True

    def _touch(self, digest: str, now: float) -> None:
        with (
            contextlib.suppress(OSError),
            self._dirs.shard(digest, create=False) as dfd,
        ):
            if dfd is not None:
                os.utime(digest, dir_fd=dfd, follow_symlinks=False)
        entry = self._maps.get(digest)
        if entry is not None:
            self._maps[digest] = (entry[0], now, entry[2])

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
        with (
            self._usage.locked() as ufd,
            self._dirs.shard(digest, create=False) as dfd,
        ):
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
        return self.put_many([(key, data)])[0]

    def put_many(self, items: Sequence[tuple[ChunkKey, Buffer]]) -> list[bool]:
        """Write several chunks, publishing them under one usage lock.

        Each is written to its own file under ``tmp/`` in one ``writev``,
        then admitted by the policy against the usage counted under the
        lock (so concurrent writers cannot overshoot the budget), linked
        into place and counted. Returns whether each is now stored.
        """
        stored = [False] * len(items)
        usage = self.usage()
        written: list[tuple[int, str, str, int, int]] = []
        bypass = self.direct_writes and self.codec is None
        try:
            for i, (key, data) in enumerate(items):
                view = memoryview(data).cast("B")
                aligned = bypass and view.nbytes >= direct.MIN_DIRECT
                head, payload = self._records.encode(view, key.digest, aligned=aligned)
                size = len(head) + payload.nbytes
                if not self.policy.admit(size, usage, self.limit):
                    self.stats.rejected += 1
                    continue
                try:
                    tmp = write_tmp(self._dirs, key.digest, head, payload, aligned)
                except OSError as exc:
                    self._refused(exc)
                    continue
                written.append((i, tmp, key.digest, size, view.nbytes))
            if written:
                self._publish(written, stored)
        except OSError as exc:
            self._refused(exc)
        finally:
            for _, tmp, *_rest in written:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self._dirs.tmp())
        return stored

    def _refused(self, exc: OSError) -> None:
        """Count and report a write the disk refused."""
        self.stats.rejected += 1
        self._refusals.note(exc)

    @property
    def last_refusal(self) -> OSError | None:
        """The latest ``OSError`` a chunk write met, or ``None``."""
        return self._refusals.last

    def _publish(
        self, written: list[tuple[int, str, str, int, int]], stored: list[bool]
    ) -> None:
        """Admit, link and count written records, in one locked step.

        Admission sees the usage every process has counted: decided
        outside the lock, writers racing for the last room would all get
        in and evict one another. ``link`` publishes only if absent, so a
        concurrent writer of the same chunk is not counted twice; doing it
        under the usage lock keeps the counter equal to the files an
        eviction scan sees.
        """
        with self._usage.locked() as ufd:
            counted = self._usage.read_raw(ufd)
            if counted is not None:
                usage = counted
            else:  # no counter yet: scan what is there
                usage = sum(e.size for e in scan_chunks(self._chunks))
            tfd = self._dirs.tmp()
            for i, tmp, digest, size, length in written:
                if not self.policy.admit(size, usage, self.limit):
                    self.stats.rejected += 1
                    continue
                stored[i] = True
                if link_chunk(self._dirs, tfd, tmp, digest):
                    usage += size
                    self.stats.puts += 1
                    self.stats.put_bytes += length
            if usage > self.limit:
                usage = self._evict_locked()
            self._usage.write(ufd, usage)

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
            self._dirs.forget_all()  # the shards kept open are gone
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
        with self._dirs.shard(digest, create=False) as dfd:
            if dfd is None:
                return False
            try:
                os.unlink(digest, dir_fd=dfd)
            except FileNotFoundError:
                return False
        return True

    # -- cross-process single flight -----------------------------------------

    def stripe_lock(self, key: ChunkKey) -> SharedStripe:
        """Return the (unacquired) lock of ``key``'s stripe (shared in-process)."""
        return self._stripes.lock(stripe_of(key.digest))

    def file_lock(self, name: str) -> SharedStripe:
        """Return the (unacquired) cross-process lock for one origin file.

        Held while a process learns a new file's version from a ranged read,
        so other processes wait for that read instead of repeating it.
        """
        digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        return self._stripes.lock(FILE_STRIPES + stripe_of(digest))

    # -- housekeeping --------------------------------------------------------

    def after_fork(self) -> None:
        """Replace the locks, which another thread may have held at fork."""
        self._lock = threading.Lock()
        self._dirs.after_fork()
        self._stripes.after_fork()

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
