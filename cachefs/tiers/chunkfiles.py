"""Chunk files under a disk tier's ``chunks/``: shards, scans, writes.

A chunk named by its digest ``d`` lives at ``chunks/<d[:2]>/<d>``. Every
operation goes through a shard's directory descriptor opened without
following symlinks (:func:`open_shard`, or kept open by :class:`DirCache`);
the budget counts the chunk files :func:`scan_chunks` finds and nothing
else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import secrets
import shutil
import stat
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from cachefs.policy import DiskEntry
from cachefs.tiers.direct import write_direct
from cachefs.tiers.dirs import NOFOLLOW, open_dir

__all__ = [
    "DirCache",
    "WriteRefusals",
    "is_chunk_name",
    "link_chunk",
    "open_shard",
    "scan_chunks",
    "write_new",
    "write_tmp",
]

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


def kept_dirs() -> int:
    """Return how many directory descriptors a tier keeps open at most.

    An eighth of the soft ``RLIMIT_NOFILE``, at most all 256 shards and
    ``tmp/``: the maps (a quarter) and the rest of the process need theirs.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 257
    return max(2, min(257, soft // 8))


class DirCache:
    """Descriptors of a tier's ``chunks/`` shards and ``tmp/``, kept open.

    Opening a directory for each chunk read or written cost four opens and
    closes per chunk; these stay open for the tier's life. A directory
    removed under a kept descriptor (``rm -r``, a symlink planted in its
    place) is noticed when an operation through it finds nothing
    (:meth:`stale`), and opened again, never followed. A replaced
    descriptor is not closed while the tier lives: another thread may be
    using it, and a closed number can be reused by any open.

    Parameters
    ----------
    chunks, tmp
        The tier's ``chunks/`` and ``tmp/`` directories.
    """

    def __init__(self, chunks: Path, tmp: Path) -> None:
        self.chunks = chunks
        self.tmp_path = tmp
        self._fds: dict[str, int] = {}
        self._retired: list[int] = []
        self._lock = threading.Lock()
        # Read once: a getrlimit per chunk looked up was 2 system calls each.
        self._keep = kept_dirs()
        #: Directories this cache opened (a count tests and benchmarks read).
        self.opens = 0

    @contextlib.contextmanager
    def shard(self, digest: str, *, create: bool) -> Iterator[int | None]:
        """Yield the descriptor of ``digest``'s shard; ``None`` if missing.

        With ``create``, a missing shard is made (and a symlink or stray
        file in its place replaced, see :func:`open_shard`). Kept open for
        later calls while fewer than :func:`kept_dirs` are; past that,
        opened for this call only.
        """
        fd = self._fds.get(digest[:2])
        if fd is not None:
            yield fd
            return
        with self._lock:
            fd = self._fds.get(digest[:2])
            keep = fd is None and len(self._fds) < self._keep
            if keep:
                fd = self._open_shard(digest, create=create)
                if fd is not None:
                    self._fds[digest[:2]] = fd
        if fd is not None or keep:
            # Kept, or missing and not to be made: a probe for a chunk not
            # on disk yet costs one failed open, not two.
            yield fd
            return
        with open_shard(self.chunks, digest, create=create) as dfd:
            yield dfd

    def tmp(self) -> int:
        """Return the descriptor of ``tmp/`` (raises ``OSError`` if unusable)."""
        fd = self._fds.get("tmp")
        if fd is None:
            with self._lock:
                fd = self._fds.get("tmp")
                if fd is None:
                    fd = self._fds["tmp"] = open_dir(self.tmp_path)
                    self.opens += 1
        return fd

    def stale(self, name: str) -> bool:
        """Forget the kept ``name`` (a shard, or ``"tmp"``) if it was removed.

        Returns whether it was: the next use opens the directory again.
        """
        fd = self._fds.get(name)
        if fd is None:
            return False
        try:
            gone = os.fstat(fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            with self._lock:
                if self._fds.get(name) == fd:
                    del self._fds[name]
                    self._retired.append(fd)
        return gone

    def forget_all(self) -> None:
        """Reopen every directory on next use (after a clear)."""
        with self._lock:
            self._retired.extend(self._fds.values())
            self._fds.clear()

    def after_fork(self) -> None:
        """Replace the lock, which another thread may have held at fork."""
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every descriptor (the tier is going away)."""
        for fd in [*self._fds.values(), *self._retired]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._retired.clear()

    def _open_shard(self, digest: str, *, create: bool) -> int | None:
        with open_shard(self.chunks, digest, create=create) as dfd:
            if dfd is None:
                return None
            self.opens += 1
            return os.dup(dfd)


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


def write_tmp(
    dirs: DirCache, digest: str, header: bytes, payload: memoryview, bypass: bool
) -> str:
    """Write a record for ``digest`` to a new file in ``tmp/``; its name.

    With ``bypass``, through :func:`cachefs.tiers.direct.write_direct`
    (``O_DIRECT``; the record is format 6). A ``tmp/`` removed under us is
    opened again, once.
    """
    tmp = f"{digest}.{os.getpid()}.{secrets.token_hex(4)}"
    write = write_direct if bypass else write_new
    try:
        write(dirs.tmp(), tmp, header, payload)
    except FileNotFoundError:
        if not dirs.stale("tmp"):
            raise
        write(dirs.tmp(), tmp, header, payload)  # tmp/ was removed: once more
    return tmp


def link_chunk(dirs: DirCache, tfd: int, tmp: str, digest: str) -> bool:
    """Link ``tmp`` (in ``tfd``) into ``digest``'s shard; whether it is new.

    ``False`` when a chunk file of that name is already there (a concurrent
    writer of the same chunk); a directory or symlink planted in its place
    is removed, never followed, and the link made.
    """
    for attempt in range(2):
        with dirs.shard(digest, create=True) as dfd:
            assert dfd is not None
            try:
                os.link(
                    tmp, digest, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False
                )
                return True
            except FileExistsError:
                st = os.stat(digest, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    return False
                if stat.S_ISDIR(st.st_mode):  # not ours: a planted directory
                    shutil.rmtree(digest, dir_fd=dfd)
                else:  # not ours: a planted link
                    os.unlink(digest, dir_fd=dfd)
            except FileNotFoundError:
                # The shard (or tmp/) was removed under us: open it again.
                if attempt or not (dirs.stale(digest[:2]) or dirs.stale("tmp")):
                    raise
    raise FileExistsError(errno.EEXIST, "a chunk's name is taken", digest)


class WriteRefusals:
    """The chunk writes a cache directory refused (full, read-only, ...).

    Each cause (errno) is logged once, a full disk warned about once; the
    reader goes on from the origin.

    Parameters
    ----------
    root
        The cache directory, named in the messages.

    Attributes
    ----------
    last
        The latest refusal, or ``None``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.last: OSError | None = None
        self._logged: set[int | None] = set()
        self._full_warned = False

    def note(self, exc: OSError) -> None:
        """Keep, log (once per errno) and warn about (a full disk) ``exc``."""
        self.last = exc
        if exc.errno not in self._logged:
            self._logged.add(exc.errno)
            name = errno.errorcode.get(exc.errno or 0, "?")
            log.warning(
                "cachefs: cache_dir %s refused a chunk write: %s (errno %s %s); "
                "reading on without caching those chunks",
                self.root,
                exc.strerror or exc,
                exc.errno,
                name,
            )
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not self._full_warned:
            self._full_warned = True
            warnings.warn(
                f"cachefs: cache_dir {str(self.root)!r} is full ({exc.strerror}); "
                "reading on without caching to it",
                ResourceWarning,
                stacklevel=6,
            )
