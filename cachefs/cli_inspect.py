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
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import mmap
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec

from cachefs.chunks import FileVersion
from cachefs.metadata import MetadataCache
from cachefs.policy import LRUPolicy
from cachefs.tiers.disk import DiskTier
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
]

_DIGEST_RE = re.compile(r"^[0-9a-f]{40}$")
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
    matches it as a glob (``*`` also spans ``/``).
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

    def matches(self, version: FileVersion) -> bool:
        """Whether ``version``'s file lies at or under this pattern."""
        if version.protocol != self.protocol:
            return False
        path, mine = version.path, self.path
        if self.is_glob:
            return fnmatch.fnmatchcase(path, mine)
        return path == mine.rstrip("/") or path.startswith(mine.rstrip("/") + "/")


def _lstat_dir(path: Path) -> bool:
    """Return whether ``path`` is a directory; False if it does not exist.

    Raises ``NotADirectoryError`` / ``PermissionError`` with the path named
    when it cannot be a cache directory.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise NotADirectoryError(
            f"cache dir {str(path)!r}: a parent of it is not a directory"
        ) from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"cache dir {str(path)!r} is not a plain directory")
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
    """

    def __init__(self, dirs: Sequence[Path], chunk_size: int) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.chunk_size = chunk_size
        self.present = [_lstat_dir(d) for d in self.dirs]
        self._chunks: dict[str, ChunkFile] | None = None
        self._scans: dict[Path, list[ChunkFile]] = {}

    # -- raw listings ---------------------------------------------------------

    def scan(self, root: Path) -> Iterator[ChunkFile]:
        """Yield every file under ``root/chunks`` (damaged ones included)."""
        try:
            shards = sorted(os.scandir(root / "chunks"), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for shard in shards:
            if not shard.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed meanwhile
                yield ChunkFile(entry.name, Path(entry.path), st.st_size, st.st_mtime)

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
                    if _DIGEST_RE.match(cf.digest):
                        found.setdefault(cf.digest, cf)
            self._chunks = found
        return self._chunks

    def records(self) -> tuple[list[Record], list[Path]]:
        """Return the valid version records and the unreadable record files."""
        meta = self.dirs[0] / "meta"
        good: list[Record] = []
        bad: list[Path] = []
        if not self.present[0]:
            return good, bad
        try:
            names = sorted(os.listdir(meta))
        except (FileNotFoundError, NotADirectoryError):
            return good, bad
        for name in names:
            if not name.endswith(".json"):
                continue  # a record being written
            path = meta / name
            try:
                raw = json.loads(path.read_text())
                version = FileVersion(
                    str(raw["protocol"]),
                    str(raw["path"]),
                    int(raw["size"]),
                    str(raw["token"]),
                )
                fetched = float(raw["fetched"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                bad.append(path)
                continue
            good.append(Record(version, fetched, path))
        good.sort(key=lambda r: (r.version.protocol, r.version.path))
        return good, bad

    def usage_counter(self, root: Path) -> int | None:
        """Return the directory's persisted byte counter, or ``None``."""
        try:
            with open(root / "usage", "rb") as fh:
                raw = fh.read(8)
        except OSError:
            return None
        return int.from_bytes(raw, "little") if len(raw) == 8 else None

    @staticmethod
    def tmp_files(root: Path) -> int:
        """Return how many files are being written (or were left) in ``tmp/``."""
        try:
            return len(os.listdir(root / "tmp"))
        except OSError:
            return 0

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
        """Return the status of every recorded file matching any pattern."""
        records, _ = self.records()
        if patterns:
            records = [
                r for r in records if any(p.matches(r.version) for p in patterns)
            ]
        return [self.status(r) for r in records]

    def expected_lengths(self, records: Sequence[Record]) -> dict[str, int]:
        """Map the digest of every chunk of ``records`` to its length."""
        out: dict[str, int] = {}
        for record in records:
            version = record.version
            for i in range(version.chunk_count(self.chunk_size)):
                key = version.key(self.chunk_size, i)
                out[key.digest] = key.length
        return out


# -- verification ---------------------------------------------------------------


def check_chunk_file(path: Path, expected: int | None) -> str | None:
    """Verify one chunk file; return why it is damaged, or ``None``.

    Parameters
    ----------
    path
        The chunk file (``chunks/<d[:2]>/<digest>``).
    expected
        The chunk's length when its file is known, else ``None`` (the header
        and checksum are still checked).
    """
    name = path.name
    if not _DIGEST_RE.match(name) or path.parent.name != name[:2]:
        return "has an unexpected name"
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
        if st.st_size < CHUNK_HEADER.size:
            return f"is truncated ({st.st_size} bytes, shorter than its header)"
        with mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) as mapped:
            view = memoryview(mapped)
            try:
                return _check_record(view, expected)
            finally:
                view.release()
    finally:
        os.close(fd)


def _check_record(view: memoryview, expected: int | None) -> str | None:
    length = CHUNK_HEADER.unpack_from(view)[5]
    if expected is not None and length != expected:
        return f"holds {length} bytes, the chunk has {expected}"
    record = RecordCodec.parse(view, length)
    if record is None:
        return "failed its header or CRC32C check"
    try:
        if record.compressed and RecordCodec().decode(record, length) is None:
            return "does not decompress to its length"
    finally:
        record.payload.release()
    return None


def remove_damaged(path: Path) -> int:
    """Delete a damaged chunk file and lower its directory's counter.

    Returns the bytes removed (0 if the file was already gone).
    """
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        return 0
    root = path.parent.parent.parent  # <root>/chunks/<xx>/<name>
    tier = DiskTier(root, _NO_LIMIT, LRUPolicy())
    return size if tier.remove(path.name) else 0


# -- removal --------------------------------------------------------------------


def _tiers(view: CacheView) -> list[DiskTier]:
    return [
        DiskTier(d, _NO_LIMIT, LRUPolicy())
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
    meta = MetadataCache(None, view.dirs[0] / "meta") if view.present[0] else None
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
        with contextlib.suppress(FileNotFoundError):
            status.record.file.unlink()
        if on_file is not None:
            on_file(status)
    return removed, nbytes


def clear_dirs(view: CacheView) -> tuple[int, int, int]:
    """Remove every chunk file and record; return chunks, bytes, records."""
    chunks = view.chunks()
    nbytes = sum(cf.size for cf in chunks.values())
    count = len(chunks)
    for tier in _tiers(view):
        tier.clear()
    records = 0
    for root, present in zip(view.dirs, view.present, strict=True):
        if not present:
            continue
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(root / "meta"):
                if name.endswith(".json"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(root / "meta" / name)
                        records += 1
    view._chunks = None
    view._scans.clear()
    return count, nbytes, records
