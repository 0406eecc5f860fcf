"""Read a cache directory from outside: records, chunk files, verification.

The ``cachefs`` command's ``stats``, ``ls``, ``verify``, ``evict`` and
``clear`` work on the on-disk layout (see the architecture page, "On-disk
layout") without an origin and without a :class:`~cachefs.CacheFileSystem`:

- ``<dir>/meta/*.json``: version records (protocol, path, size, token,
  fetched), in the first cache directory;
- ``<dir>/chunks/<d[:2]>/<digest>``: chunk files, the digest being
  ``FileVersion(...).key(chunk_size, i).digest``;
- ``<dir>/usage``: the directory's byte counter.

Reading changes nothing. Removal goes through :class:`DiskTier` and
:class:`MetadataCache`, which keep the usage counter right and are safe while
other processes read: a removed chunk is fetched again, never seen partial.
Nothing is read, listed or removed through a symlink: a symlink found in the
layout is reported (and ``--repair`` removes the link, never its target).
"""

from __future__ import annotations

import contextlib
import fnmatch
import mmap
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec

from cachefs.chunks import ChunkKey, FileVersion
from cachefs.metadata import MISSING, MetadataCache, decode_record, record_damage
from cachefs.policy import LRUPolicy
from cachefs.tiers.disk import (
    DiskTier,
    check_dir,
    is_chunk_name,
    open_dir,
    remove_below,
)
from cachefs.tiers.record import CHUNK_HEADER, RecordCodec

__all__ = [
    "CacheView",
    "ChunkFile",
    "Damage",
    "FileStatus",
    "Record",
    "UrlPattern",
    "check_chunk_file",
    "clear_dirs",
    "evict_files",
    "remove_damaged",
    "remove_stray",
]

#: The directories of the layout; none may be a symlink.
_SUBDIRS = ("chunks", "tmp", "locks", "meta", "index")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# A maintenance command must not trigger an eviction of its own.
_NO_LIMIT = sys.maxsize


@dataclass(frozen=True, slots=True)
class ChunkFile:
    """One file under ``chunks/``, as a scan saw it."""

    digest: str
    path: Path
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class Record:
    """A persisted version record."""

    version: FileVersion
    fetched: float
    file: Path


@dataclass(frozen=True, slots=True)
class FileStatus:
    """How much of one recorded file version is on disk."""

    record: Record
    chunks: int
    cached_chunks: int
    cached_bytes: int
    last_access: float | None

    @property
    def fraction(self) -> float:
        """Fraction of the file's bytes on disk (1.0 for an empty file)."""
        size = self.record.version.size
        return self.cached_bytes / size if size else 1.0

    @property
    def url(self) -> str:
        """The file's URL as a user would type it."""
        return display_url(self.record.version.protocol, self.record.version.path)


@dataclass(frozen=True, slots=True)
class Damage:
    """A chunk file that failed verification."""

    path: Path
    reason: str
    size: int


def display_url(protocol: str, path: str) -> str:
    """Return ``path`` of ``protocol`` as a URL (local paths stay paths)."""
    if "://" in path or protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def canonical_protocol(protocol: str) -> str:
    """Return the protocol name the cache records for ``protocol``.

    ``https`` is recorded as ``http``, ``local`` as ``file``, ``s3a`` as
    ``s3``: the first protocol of the target filesystem class.
    """
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError:
        return protocol  # known to fsspec, package missing: records say so too
    except ValueError as exc:
        raise ValueError(f"unknown protocol {protocol!r} ({exc})") from None
    proto = cls.protocol
    return proto if isinstance(proto, str) else str(proto[0])


@dataclass(frozen=True, slots=True)
class UrlPattern:
    """A URL, URL prefix or glob, matched against recorded files.

    A record matches when its path equals the pattern's path, lies below it
    (``pattern + "/"``), or, for a pattern with ``*``, ``?`` or ``[``,
    matches it as a glob (``*`` also spans ``/``). A pattern that equals a
    recorded path names that file only (see :meth:`CacheView.files`), so
    ``data[1].bin`` is the file of that name, not ``data1.bin``.
    """

    text: str
    protocol: str
    path: str

    @classmethod
    def parse(cls, url: str) -> UrlPattern:
        """Parse ``url`` (``s3://b/k``, ``http://h/p``, ``/local`` ...)."""
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"bad URL {url!r}: empty")
        text = url.removeprefix("cachefs::")
        if "::" in text:
            raise ValueError(f"bad URL {url!r}: chained URLs are not supported")
        proto, _ = fsspec.core.split_protocol(text)
        proto = proto or "file"
        canonical = canonical_protocol(proto)
        try:
            fs_cls = fsspec.get_filesystem_class(proto)
            path = str(fs_cls._strip_protocol(text))
        except ImportError:
            path = text.split("://", 1)[-1]
        if text.endswith("/") and not path.endswith("/"):
            path += "/"
        return cls(url, canonical, path)

    @property
    def is_glob(self) -> bool:
        """Whether the pattern holds glob characters."""
        return any(c in self.path for c in "*?[")

    def names(self, version: FileVersion) -> bool:
        """Whether ``version``'s file lies at or under this pattern, literally."""
        if version.protocol != self.protocol:
            return False
        path, mine = version.path, self.path.rstrip("/")
        return path == mine or path.startswith(mine + "/")

    def matches(self, version: FileVersion, *, literal: bool = False) -> bool:
        """Whether ``version``'s file lies at or under this pattern.

        With ``literal``, glob characters are taken as themselves.
        """
        if self.names(version):
            return True
        if literal or not self.is_glob or version.protocol != self.protocol:
            return False
        return fnmatch.fnmatchcase(version.path, self.path)


def _lstat_dir(path: Path, *, trust: bool = False) -> bool:
    """Return whether ``path`` is a directory; False if it does not exist.

    Raises ``NotADirectoryError`` / ``PermissionError`` with the path named
    when it cannot be a cache directory (a symlink, another user's, one
    others can write: see ``trust_cache_dir``).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise NotADirectoryError(
            f"cache dir {str(path)!r}: a parent of it is not a directory"
        ) from None
    check_dir(path, st, trust=trust)
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"cache dir {str(path)!r} is not readable")
    return True


class CacheView:
    """A read-only view of one cache (one or several directories).

    Parameters
    ----------
    dirs
        The cache directories, in configuration order (records live in the
        first).
    chunk_size
        The chunk size the cache was filled with; chunk names depend on it.
    trust_cache_dir
        Accept directories another user owns or others can write.
    """

    def __init__(
        self, dirs: Sequence[Path], chunk_size: int, *, trust_cache_dir: bool = False
    ) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.chunk_size = chunk_size
        self.trust_cache_dir = trust_cache_dir
        self.present = [_lstat_dir(d, trust=trust_cache_dir) for d in self.dirs]
        self._chunks: dict[str, ChunkFile] | None = None
        self._scans: dict[Path, list[ChunkFile]] = {}

    # -- raw listings ---------------------------------------------------------

    def scan(self, root: Path) -> Iterator[ChunkFile]:
        """Yield every entry of ``root/chunks/<xx>/`` (damaged ones included).

        Shard directories are opened without following symlinks; anything
        else directly under ``chunks/`` is listed by :meth:`strays`.
        """
        chunks = root / "chunks"
        try:
            cfd = open_dir(chunks)
        except OSError:
            return
        try:
            shards = sorted(os.listdir(cfd))
            for shard in shards:
                try:
                    dfd = open_dir(shard, dir_fd=cfd)
                except OSError:
                    continue  # not a directory: a stray
                try:
                    names = sorted(os.listdir(dfd))
                    for name in names:
                        try:
                            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # removed meanwhile
                        path = chunks / shard / name
                        yield ChunkFile(name, path, st.st_size, st.st_mtime)
                finally:
                    os.close(dfd)
        finally:
            os.close(cfd)

    def strays(self, root: Path) -> list[Damage]:
        """Return what does not belong in ``root``'s layout above chunk files.

        A symlink (or non-directory) in place of ``chunks/``, ``tmp/``,
        ``locks/``, ``meta/`` or ``index/``, and anything directly under
        ``chunks/`` that is not a shard directory.
        """
        found: list[Damage] = []
        if not self.present[self.dirs.index(root)]:
            return found
        for sub in _SUBDIRS:
            path = root / sub
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                found.append(Damage(path, "is a symlink (not followed)", 0))
            elif not stat.S_ISDIR(st.st_mode):
                found.append(Damage(path, "is not a directory", st.st_size))
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
                    found.append(Damage(path, "is a symlink (not followed)", 0))
                elif not stat.S_ISDIR(st.st_mode):
                    found.append(Damage(path, "is a stray file", st.st_size))
                elif len(name) != 2 or any(c not in "0123456789abcdef" for c in name):
                    found.append(Damage(path, "is a stray directory", 0))
        finally:
            os.close(cfd)
        return found

    def files_in(self, root: Path) -> list[ChunkFile]:
        """Return :meth:`scan` of ``root`` as a list, scanned once per view."""
        if root not in self._scans:
            present = self.present[self.dirs.index(root)]
            self._scans[root] = list(self.scan(root)) if present else []
        return self._scans[root]

    def chunks(self) -> dict[str, ChunkFile]:
        """Return the chunk files of all directories, by digest (cached)."""
        if self._chunks is None:
            found: dict[str, ChunkFile] = {}
            for root in self.dirs:
                for cf in self.files_in(root):
                    if is_chunk_name(cf.path.parent.name, cf.digest):
                        found.setdefault(cf.digest, cf)
            self._chunks = found
        return self._chunks

    def records(self) -> tuple[list[Record], list[Path]]:
        """Return the valid version records and the unreadable record files."""
        good, bad = self.checked_records()
        return good, [d.path for d in bad]

    def checked_records(self) -> tuple[list[Record], list[Damage]]:
        """Return the valid version records and why each other one is not.

        Records are checked as readers check them: CRC32C, every field, and
        the name they are filed under. ``meta/`` is not read through a
        symlink.
        """
        meta = self.dirs[0] / "meta"
        good: list[Record] = []
        bad: list[Damage] = []
        if not self.present[0]:
            return good, bad
        try:
            dfd = open_dir(meta)
        except OSError:
            return good, bad  # missing, or a symlink: see strays()
        try:
            for name in sorted(os.listdir(dfd)):
                if not name.endswith(".json"):
                    continue  # a record being written
                path = meta / name
                try:
                    fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    bad.append(Damage(path, f"cannot be opened ({exc.strerror})", 0))
                    continue
                with os.fdopen(fd, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    raw = fh.read((1 << 16) + 1)
                why = self._record_damage(name, raw, st)
                if why:
                    bad.append(Damage(path, why, st.st_size))
                    continue
                version, fetched = decode_record(raw)
                if version.token != MISSING:  # a remembered miss holds no data
                    good.append(Record(version, fetched, path))
        finally:
            os.close(dfd)
        good.sort(key=lambda r: (r.version.protocol, r.version.path))
        return good, bad

    def _record_damage(self, name: str, raw: bytes, st: os.stat_result) -> str:
        why = record_damage(raw, st, name, trust=self.trust_cache_dir)
        return f"version record {why}" if why else ""

    def usage_counter(self, root: Path) -> int | None:
        """Return the directory's persisted byte counter, or ``None``."""
        try:
            fd = os.open(root / "usage", os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return None
        try:
            raw = os.pread(fd, 8, 0)
        finally:
            os.close(fd)
        return int.from_bytes(raw, "little") if len(raw) == 8 else None

    def counted_bytes(self, root: Path) -> int:
        """Return the bytes of ``root``'s chunk files, as the budget counts them."""
        return sum(
            cf.size
            for cf in self.files_in(root)
            if is_chunk_name(cf.path.parent.name, cf.digest)
            and stat.S_ISREG(_lstat_mode(cf.path))
        )

    @staticmethod
    def tmp_files(root: Path) -> int:
        """Return how many files are being written (or were left) in ``tmp/``."""
        try:
            fd = open_dir(root / "tmp")
        except OSError:
            return 0
        try:
            return len(os.listdir(fd))
        finally:
            os.close(fd)

    # -- per file --------------------------------------------------------------

    def status(self, record: Record) -> FileStatus:
        """Return how much of ``record``'s file is on disk."""
        version = record.version
        chunks = self.chunks()
        n = version.chunk_count(self.chunk_size)
        cached = cached_bytes = 0
        last: float | None = None
        for i in range(n):
            key = version.key(self.chunk_size, i)
            cf = chunks.get(key.digest)
            if cf is not None:
                cached += 1
                cached_bytes += key.length
                last = cf.mtime if last is None else max(last, cf.mtime)
        return FileStatus(record, n, cached, cached_bytes, last)

    def files(self, patterns: Sequence[UrlPattern] = ()) -> list[FileStatus]:
        """Return the status of every recorded file matching any pattern.

        A pattern that equals (or is a directory above) a recorded path is
        taken literally, glob characters and all; only a pattern that names
        no recorded file is matched as a glob.
        """
        records, _ = self.records()
        if patterns:
            literal = {
                i
                for i, p in enumerate(patterns)
                if any(p.names(r.version) for r in records)
            }
            records = [
                r
                for r in records
                if any(
                    p.matches(r.version, literal=i in literal)
                    for i, p in enumerate(patterns)
                )
            ]
        return [self.status(r) for r in records]

    def chunk_keys(self, records: Sequence[Record]) -> dict[str, ChunkKey]:
        """Map the digest of every chunk of ``records`` to its key."""
        out: dict[str, ChunkKey] = {}
        for record in records:
            version = record.version
            for i in range(version.chunk_count(self.chunk_size)):
                key = version.key(self.chunk_size, i)
                out[key.digest] = key
        return out

    def expected_lengths(self, records: Sequence[Record]) -> dict[str, int]:
        """Map the digest of every chunk of ``records`` to its length."""
        return {d: k.length for d, k in self.chunk_keys(records).items()}


# -- verification ---------------------------------------------------------------


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def check_chunk_file(
    path: Path, expected: int | None, *, trust: bool = False
) -> str | None:
    """Verify one chunk file; return why it is damaged, or ``None``.

    Parameters
    ----------
    path
        The chunk file (``chunks/<d[:2]>/<digest>``).
    expected
        The chunk's length when its file is known, else ``None`` (the header,
        the checksum, the key the record is bound to and its codec are still
        checked).
    trust
        Accept a file another user owns (``trust_cache_dir``).
    """
    name = path.name
    if not is_chunk_name(path.parent.name, name):
        return "has an unexpected name (misplaced or stray)"
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None  # removed meanwhile: nothing to verify
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
            try:
                return _check_record(view, expected, name)
            finally:
                view.release()
    finally:
        os.close(fd)


def _check_record(view: memoryview, expected: int | None, digest: str) -> str | None:
    record, why = RecordCodec.check(view, expected, digest)
    if record is None:
        return why
    try:
        length = CHUNK_HEADER.unpack_from(view)[5]
        if record.compressed and RecordCodec().decode(record, length) is None:
            return "does not decompress to its length"
    finally:
        record.payload.release()
    return None


def remove_damaged(path: Path, *, trust: bool = False) -> int:
    """Delete a damaged chunk file and lower its directory's counter.

    The file at ``path`` itself is removed, wherever it lies under
    ``chunks/``, never through a symlink; the counter is lowered only for a
    file the budget counts. Returns the bytes removed (0 if already gone).
    """
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        return 0
    shard, name = path.parent.name, path.name
    root = path.parent.parent.parent  # <root>/chunks/<xx>/<name>
    if is_chunk_name(shard, name):
        tier = DiskTier(root, _NO_LIMIT, LRUPolicy(), trust_cache_dir=trust)
        return size if tier.remove(name) else 0
    return size if remove_below(root / "chunks", [shard, name]) else 0


def remove_stray(root: Path, path: Path) -> bool:
    """Remove ``path`` (a stray below the cache dir ``root``) without following.

    A symlink is removed itself, never what it points to.
    """
    parts = path.relative_to(root).parts
    return remove_below(root, list(parts))


# -- removal --------------------------------------------------------------------


def _tiers(view: CacheView) -> list[DiskTier]:
    return [
        DiskTier(d, _NO_LIMIT, LRUPolicy(), trust_cache_dir=view.trust_cache_dir)
        for d, present in zip(view.dirs, view.present, strict=True)
        if present
    ]


def evict_files(
    view: CacheView,
    statuses: Sequence[FileStatus],
    on_file: Callable[[FileStatus], None] | None = None,
) -> tuple[int, int]:
    """Remove the chunks and records of ``statuses``' files.

    Chunks go first, then the record, so an interrupted eviction leaves a
    record that ``ls`` still shows. Readers in other processes fetch removed
    chunks again.

    Returns
    -------
    tuple of int
        Chunk files and bytes removed.
    """
    tiers = _tiers(view)
    chunks = view.chunks()
    removed = nbytes = 0
    meta = (
        MetadataCache(None, view.dirs[0] / "meta", trust_cache_dir=view.trust_cache_dir)
        if view.present[0]
        else None
    )
    for status in statuses:
        version = status.record.version
        for i in range(version.chunk_count(view.chunk_size)):
            key = version.key(view.chunk_size, i)
            cf = chunks.pop(key.digest, None)
            for tier in tiers:
                tier.discard(key)
            if cf is not None:
                removed += 1
                nbytes += cf.size
        if meta is not None:
            meta.drop(version.protocol, version.path)
        if on_file is not None:
            on_file(status)
    return removed, nbytes


def clear_dirs(view: CacheView) -> tuple[int, int, int]:
    """Remove every chunk file and record; return chunks, bytes, records.

    Strays under ``chunks/`` go too. A symlink in place of one of the
    layout's directories is removed itself; nothing is deleted through it.
    """
    chunks = view.chunks()
    nbytes = sum(cf.size for cf in chunks.values())
    count = len(chunks)
    for root, present in zip(view.dirs, view.present, strict=True):
        if present:
            for stray in view.strays(root):
                if stray.path.parent == root:  # a symlinked subdirectory
                    remove_stray(root, stray.path)
    for tier in _tiers(view):
        tier.clear()
    records = 0
    for root, present in zip(view.dirs, view.present, strict=True):
        if not present:
            continue
        try:
            dfd = open_dir(root / "meta")
        except OSError:
            continue
        try:
            for name in os.listdir(dfd):
                if name.endswith(".json"):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(name, dir_fd=dfd)
                        records += 1
        finally:
            os.close(dfd)
    view._chunks = None
    view._scans.clear()
    return count, nbytes, records
