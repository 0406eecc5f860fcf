"""``cachefs stats`` and ``cachefs ls``: what a cache directory holds.

They work on the on-disk layout (see the architecture page, "On-disk
layout") without an origin and without a :class:`~cachefs.CacheFileSystem`,
through the readers of the disk tier's own package, :mod:`cachefs.tiers.layout`,
for chunk files and :class:`~cachefs.metadata.MetadataCache` for version
records (in the first cache directory). A chunk file's name is
``FileVersion(...).key(chunk_size, i).digest``, so the files of a record are
found from the record. Reading changes nothing.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import fsspec

from cachefs.chunks import ChunkKey, FileVersion
from cachefs.cli.format import EXIT_OK, fmt_bytes, fmt_time, table
from cachefs.cli.settings import Settings
from cachefs.metadata import MetadataCache, StoredRecord
from cachefs.tiers import layout

__all__ = [
    "CacheView",
    "ChunkFile",
    "FileStatus",
    "UrlPattern",
    "cmd_ls",
    "cmd_stats",
    "display_url",
    "open_view",
]


@dataclass(frozen=True, slots=True)
class ChunkFile:
    """One entry under ``chunks/<xx>/``, as a scan saw it."""

    digest: str
    path: Path
    size: int
    mtime: float
    #: Whether the budget counts it: a chunk-named regular file.
    counted: bool


@dataclass(frozen=True, slots=True)
class FileStatus:
    """How much of one recorded file version is on disk."""

    record: StoredRecord
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
        Accept directories and files another user owns or others can write.

    Raises
    ------
    NotADirectoryError, PermissionError
        For a directory that cannot be a cache directory (see
        :func:`~cachefs.tiers.layout.inspect_root`).
    """

    def __init__(
        self, dirs: Sequence[Path], chunk_size: int, *, trust_cache_dir: bool = False
    ) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.chunk_size = chunk_size
        self.trust_cache_dir = trust_cache_dir
        self.present = [
            layout.inspect_root(d, trust=trust_cache_dir) for d in self.dirs
        ]
        self._scans: dict[Path, list[ChunkFile]] = {}

    @property
    def roots(self) -> list[Path]:
        """The cache directories that exist."""
        return [d for d, here in zip(self.dirs, self.present, strict=True) if here]

    def forget(self) -> None:
        """Drop what was scanned, after the directories changed."""
        self._scans.clear()

    def files_in(self, root: Path) -> list[ChunkFile]:
        """Return every entry of ``root``'s chunk shards, scanned once per view."""
        if root not in self._scans:
            found = []
            if self.present[self.dirs.index(root)]:
                for path, size, mtime, counted in layout.chunk_listing(root):
                    found.append(ChunkFile(path.name, path, size, mtime, counted))
            self._scans[root] = found
        return self._scans[root]

    def chunks(self) -> dict[str, ChunkFile]:
        """Return the counted chunk files of all directories, by digest."""
        found: dict[str, ChunkFile] = {}
        for root in self.dirs:
            for cf in self.files_in(root):
                if cf.counted:
                    found.setdefault(cf.digest, cf)
        return found

    def counted_bytes(self, root: Path) -> int:
        """Return the bytes of ``root``'s chunk files, as the budget counts them."""
        return sum(cf.size for cf in self.files_in(root) if cf.counted)

    def records(self) -> tuple[list[StoredRecord], list[tuple[Path, str]]]:
        """Return the sound version records and each damaged record with why."""
        if not self.present[0]:
            return [], []
        return MetadataCache.stored_records(
            self.dirs[0] / "meta", trust=self.trust_cache_dir
        )

    def keys(self, version: FileVersion) -> list[ChunkKey]:
        """Return the keys of every chunk of ``version`` at this chunk size."""
        n = version.chunk_count(self.chunk_size)
        return [version.key(self.chunk_size, i) for i in range(n)]

    def chunk_keys(self, records: Sequence[StoredRecord]) -> dict[str, ChunkKey]:
        """Map the digest of every chunk of ``records`` to its key."""
        return {k.digest: k for r in records for k in self.keys(r.version)}

    def status(self, record: StoredRecord, chunks: dict[str, ChunkFile]) -> FileStatus:
        """Return how much of ``record``'s file is in ``chunks``."""
        keys = self.keys(record.version)
        cached = cached_bytes = 0
        last: float | None = None
        for key in keys:
            cf = chunks.get(key.digest)
            if cf is not None:
                cached += 1
                cached_bytes += key.length
                last = cf.mtime if last is None else max(last, cf.mtime)
        return FileStatus(record, len(keys), cached, cached_bytes, last)

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
        chunks = self.chunks()
        return [self.status(r, chunks) for r in records]


def open_view(settings: Settings, log: Callable[[str], None]) -> CacheView:
    """Return the view of the configured cache; note directories missing."""
    view = CacheView(
        settings.cache_dirs,
        settings.chunk_size,
        trust_cache_dir=settings.trust_cache_dir,
    )
    for d, present in zip(view.dirs, view.present, strict=True):
        if not present:
            log(f"note: cache dir {d} does not exist (empty cache)")
    return view


def cmd_stats(
    settings: Settings, args: Any, out: TextIO, log: Callable[[str], None]
) -> int:
    """``cachefs stats``."""
    view = open_view(settings, log)
    chunks = view.chunks()
    records, bad = view.records()
    statuses = [view.status(r, chunks) for r in records]
    owned = set(view.chunk_keys(records))
    other = [cf for d, cf in chunks.items() if d not in owned]
    share = settings.disk_limit // len(view.dirs)
    dirs: list[dict[str, Any]] = []
    for root, present in zip(view.dirs, view.present, strict=True):
        files = view.files_in(root)
        dirs.append(
            {
                "path": str(root),
                "exists": present,
                "limit": share,
                "usage": layout.usage_counter(root) if present else None,
                "bytes": sum(cf.size for cf in files),
                "chunks": len(files),
                "tmp_files": layout.tmp_count(root) if present else 0,
            }
        )
    full = sum(1 for s in statuses if s.cached_chunks == s.chunks)
    empty = sum(1 for s in statuses if s.cached_chunks == 0 and s.chunks)
    doc: dict[str, Any] = {
        "chunk_size": settings.chunk_size,
        "ram": {"limit": settings.ram_limit, "per_process": True},
        "disk": {
            "limit": settings.disk_limit,
            "usage": sum(d["usage"] or 0 for d in dirs),
            "bytes": sum(d["bytes"] for d in dirs),
            "chunks": sum(d["chunks"] for d in dirs),
            "tmp_files": sum(d["tmp_files"] for d in dirs),
            "dirs": dirs,
        },
        "files": {
            "known": len(statuses),
            "full": full,
            "partial": len(statuses) - full - empty,
            "empty": empty,
            "size": sum(s.record.version.size for s in statuses),
            "cached_bytes": sum(s.cached_bytes for s in statuses),
            "unreadable_records": len(bad),
        },
        "other_chunks": {
            "chunks": len(other),
            "bytes": sum(cf.size for cf in other),
        },
    }
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    _print_stats(settings, doc, out, log, bool(statuses), len(other))
    return EXIT_OK


def _print_stats(
    settings: Settings,
    doc: dict[str, Any],
    out: TextIO,
    log: Callable[[str], None],
    known: bool,
    other: int,
) -> None:
    dirs = doc["disk"]["dirs"]
    rows = [["ram", fmt_bytes(settings.ram_limit), "-", "-", "-", "per process"]]
    for i, entry in enumerate(dirs):
        usage = entry["usage"]
        rows.append(
            [
                "disk" if len(dirs) == 1 else f"disk{i}",
                fmt_bytes(entry["limit"]),
                "-" if usage is None else fmt_bytes(usage),
                fmt_bytes(entry["bytes"]),
                str(entry["chunks"]),
                entry["path"] + ("" if entry["exists"] else " (missing)"),
            ]
        )
    out.write(f"chunk size {fmt_bytes(settings.chunk_size)}\n\n")
    headers = ["tier", "budget", "usage", "on disk", "chunks", "where"]
    out.write(table(headers, rows, right=(1, 2, 3, 4)) + "\n\n")
    f = doc["files"]
    out.write(
        f"files: {f['known']} known, {f['full']} fully cached, "
        f"{f['partial']} partly, {f['empty']} not cached "
        f"({fmt_bytes(f['cached_bytes'])} of {fmt_bytes(f['size'])})\n"
    )
    if other:
        out.write(
            f"other chunks: {other} ({fmt_bytes(doc['other_chunks']['bytes'])})"
            " belong to no known file at this chunk size\n"
        )
        if known and not f["cached_bytes"]:
            log(
                "hint: no known file has a chunk on disk; was the cache filled "
                "with another --chunk-size?"
            )
    if f["unreadable_records"]:
        out.write(
            f"unreadable records: {f['unreadable_records']} (ignored by readers)\n"
        )
    if doc["disk"]["tmp_files"]:
        out.write(f"temporary files: {doc['disk']['tmp_files']}\n")


def cmd_ls(
    settings: Settings, args: Any, out: TextIO, log: Callable[[str], None]
) -> int:
    """``cachefs ls``."""
    patterns = [UrlPattern.parse(u) for u in args.urls]
    statuses = open_view(settings, log).files(patterns)
    if args.json:
        doc = [
            {
                "url": s.url,
                "protocol": s.record.version.protocol,
                "path": s.record.version.path,
                "token": s.record.version.token,
                "size": s.record.version.size,
                "chunks": s.chunks,
                "cached_chunks": s.cached_chunks,
                "cached_bytes": s.cached_bytes,
                "fraction": round(s.fraction, 6),
                "last_access": s.last_access,
                "fetched": s.record.fetched,
            }
            for s in statuses
        ]
        out.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    if not statuses:
        log("no cached files" + (" match" if patterns else ""))
        return EXIT_OK
    rows = [
        [
            f"{100 * s.fraction:.0f}%",
            fmt_bytes(s.record.version.size),
            fmt_time(s.last_access),
            s.record.version.token,
            s.url,
        ]
        for s in statuses
    ]
    headers = ["cached", "size", "last access", "version", "path"]
    out.write(table(headers, rows, right=(0, 1)) + "\n")
    return EXIT_OK
