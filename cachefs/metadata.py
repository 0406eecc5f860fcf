"""File metadata (size and version) cached under a TTL.

Versions are kept in memory and, when a disk tier exists, persisted as small
JSON records so that a new process — or one whose origin is unreachable, with
``metadata_ttl=None`` — can serve a warmed cache without asking the origin.

A record is trusted only whole: it carries a CRC32C of its canonical JSON and
every field is validated (a finite, non-negative integer size, string token,
the protocol and path it is filed under). A damaged record is dropped and the
version learned again from the origin. Records are read, written and removed
through a descriptor of the ``meta/`` directory opened without following
symlinks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachefs.chunks import FileVersion
from cachefs.tiers.disk import open_dir, secure_dir
from cachefs.tiers.records_io import (
    RecordDir,
    bad_time,
    check_crc,
    load_json,
    read_record,
    seal,
    write_record,
)

__all__ = [
    "MISSING",
    "MetadataCache",
    "StoredRecord",
    "TTLCache",
    "decode_record",
    "decode_record_mtime",
    "encode_record",
    "record_damage",
    "record_name",
]

log = logging.getLogger(__name__)

#: The token of a record that says the origin has no such file: a miss
#: remembered under the same TTL rules as a version (no version token
#: derived from an origin's info takes this form).
MISSING = "missing:"

_RECORD_FORMAT = 3  # 3 adds the modification time; 2 is still read
_READ_FORMATS = (2, 3)  # 1 (no checksum) is read as damage and learned again
_MAX_RECORD = 1 << 16
_MAX_SIZE = (1 << 63) - 1


def record_name(protocol: str, path: str) -> str:
    """Return the file name of the version record of ``protocol``/``path``."""
    name = hashlib.blake2b(f"{protocol}\0{path}".encode(), digest_size=20)
    return f"{name.hexdigest()}.json"


def record_damage(raw: bytes, name: str) -> str:
    """Return why the version record ``raw`` filed as ``name`` is damaged.

    ``""`` when it is sound: a valid checksummed record, filed under its own
    protocol and path's name. (Whose file it is, and what kind, is checked
    as it is read: :func:`~cachefs.tiers.records_io.read_record`.)
    """
    try:
        version, _ = decode_record(raw)
    except ValueError as exc:
        return str(exc)
    if record_name(version.protocol, version.path) != name:
        return "is filed under another file's name"
    return ""


def encode_record(
    version: FileVersion, fetched: float, mtime: float | None = None
) -> bytes:
    """Return the stored form of ``version`` learned at ``fetched``.

    ``mtime`` is the origin's modification time of the file (seconds since
    the epoch), when it gave one.
    """
    body: dict[str, Any] = {
        "format": _RECORD_FORMAT,
        "protocol": version.protocol,
        "path": version.path,
        "size": version.size,
        "token": version.token,
        "fetched": fetched,
        "mtime": mtime,
    }
    return seal(body)


def decode_record(raw: bytes) -> tuple[FileVersion, float]:
    """Verify and parse a stored version record.

    Raises
    ------
    ValueError
        If the record is damaged; the message says how.
    """
    version, fetched, _ = decode_record_mtime(raw)
    return version, fetched


def decode_record_mtime(raw: bytes) -> tuple[FileVersion, float, float | None]:
    """Verify and parse a stored version record, with the file's mtime.

    Raises
    ------
    ValueError
        If the record is damaged; the message says how.
    """
    body = load_json(raw, _MAX_RECORD)
    if not isinstance(body, dict):
        raise ValueError("is not a JSON object")
    form = body.get("format")
    if form not in _READ_FORMATS:
        raise ValueError(f"has an unknown format ({form!r})")
    check_crc(body)
    fields = {"format", "protocol", "path", "size", "token", "fetched"}
    if set(body) != (fields if form == 2 else fields | {"mtime"}):
        raise ValueError("has unexpected fields")
    mtime = body.get("mtime")
    if mtime is not None and bad_time(mtime):
        raise ValueError(f"has a bad modification time {mtime!r}")
    protocol, path, token = body["protocol"], body["path"], body["token"]
    size, fetched = body["size"], body["fetched"]
    if not isinstance(protocol, str) or not protocol:
        raise ValueError(f"has a bad protocol {protocol!r}")
    if not isinstance(path, str) or not isinstance(token, str):
        raise ValueError("has a path or token that is not a string")
    if type(size) is not int or not 0 <= size <= _MAX_SIZE:
        raise ValueError(f"has a bad size {size!r}")
    if bad_time(fetched):
        raise ValueError(f"has a bad time {fetched!r}")
    version = FileVersion(protocol, path, size, token)
    return version, float(fetched), None if mtime is None else float(mtime)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A sound version record as stored (see :meth:`MetadataCache.stored_records`).

    Attributes
    ----------
    version
        The file version it records.
    fetched
        When it was learned (seconds since the epoch).
    file
        The record's file.
    """

    version: FileVersion
    fetched: float
    file: Path


def _fresh(stamp: float, ttl: float | None) -> bool:
    return ttl is None or time.time() - stamp < ttl


class TTLCache:
    """A small in-memory mapping whose entries expire after ``ttl`` seconds.

    Parameters
    ----------
    ttl
        Lifetime of an entry in seconds; ``None`` keeps entries forever and
        ``0`` keeps nothing.
    """

    def __init__(self, ttl: float | None) -> None:
        self.ttl = ttl
        self._data: dict[Any, tuple[Any, float]] = {}

    def get(self, key: Any) -> Any | None:
        """Return the live value for ``key``, or ``None``."""
        item = self._data.get(key)
        if item is None:
            return None
        if not _fresh(item[1], self.ttl):
            self._data.pop(key, None)
            return None
        return item[0]

    def put(self, key: Any, value: Any) -> None:
        """Store ``value`` under ``key`` (nothing happens when ``ttl == 0``)."""
        if self.ttl != 0:
            self._data[key] = (value, time.time())

    def pop(self, key: Any) -> None:
        """Forget ``key``."""
        self._data.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()


class MetadataCache:
    """Versions of origin files, fresh for ``ttl`` seconds.

    Parameters
    ----------
    ttl
        Seconds a version is trusted without asking the origin again;
        ``None`` trusts it forever.
    root
        Directory for persisted records, or ``None`` for memory only;
        created owner-only, and refused if it is a symlink (or, unless
        ``trust_cache_dir``, if another user owns it or others can write it).
    trust_cache_dir
        See :class:`~cachefs.tiers.disk.DiskTier`.
    """

    def __init__(
        self, ttl: float | None, root: Path | None, *, trust_cache_dir: bool = False
    ) -> None:
        self.ttl = ttl
        self.root = root
        self.trust_cache_dir = trust_cache_dir
        self._memory: dict[
            tuple[str, str], tuple[FileVersion, float, float | None]
        ] = {}
        self._lock = threading.Lock()
        self._records: RecordDir | None = None
        if root is not None:
            secure_dir(root, trust=trust_cache_dir)
            self._records = RecordDir(root, "version records")

    def get(self, protocol: str, path: str) -> FileVersion | None:
        """Return the fresh version of ``path``, or ``None``."""
        item = self._item(protocol, path)
        if item is None or not _fresh(item[1], self.ttl) or item[0].token == MISSING:
            return None
        return item[0]

    def recorded(self, protocol: str, path: str) -> FileVersion | None:
        """Return the last version recorded for ``path``, fresh or expired."""
        item = self._item(protocol, path)
        return None if item is None or item[0].token == MISSING else item[0]

    def mtime(self, protocol: str, path: str) -> float | None:
        """Return the origin's modification time recorded with ``path``'s version.

        ``None`` when no fresh version is known or the origin gave no time.
        """
        item = self._item(protocol, path)
        if item is None or not _fresh(item[1], self.ttl) or item[0].token == MISSING:
            return None
        return item[2]

    def _item(
        self, protocol: str, path: str
    ) -> tuple[FileVersion, float, float | None] | None:
        item = self._memory.get((protocol, path))
        if item is None and self.root is not None:
            item = self._load(protocol, path)
            if item is not None:
                self._memory[(protocol, path)] = item
        return item

    def is_missing(self, protocol: str, path: str) -> bool:
        """Return whether a fresh record says the origin has no ``path``."""
        item = self._item(protocol, path)
        return (
            item is not None and item[0].token == MISSING and _fresh(item[1], self.ttl)
        )

    def put_missing(self, protocol: str, path: str) -> None:
        """Record that the origin has no ``path`` (404), fresh now.

        With ``metadata_ttl=None`` the miss is trusted for as long as the
        record lasts, so a warmed store opens offline without asking again.
        """
        self.put(FileVersion(protocol, path, 0, MISSING))

    def seen(self, protocol: str, path: str) -> bool:
        """Return whether any version of ``path`` was recorded, fresh or not."""
        if (protocol, path) in self._memory:
            return True
        if self.root is None:
            return False
        with self._dir() as dfd:
            if dfd is None:
                return False
            try:
                os.stat(record_name(protocol, path), dir_fd=dfd, follow_symlinks=False)
            except OSError:
                return False
            return True

    def put(self, version: FileVersion, mtime: float | None = None) -> None:
        """Record ``version`` (modified at ``mtime``, if known) as fresh now."""
        now = time.time()
        self._memory[(version.protocol, version.path)] = (version, now, mtime)
        if self.root is None or self.ttl == 0:
            return
        data = encode_record(version, now, mtime)
        with self._dir() as dfd:
            if dfd is not None:
                final = record_name(version.protocol, version.path)
                write_record(dfd, final, data)

    def drop(self, protocol: str, path: str) -> FileVersion | None:
        """Forget ``path``; return the version that was known, if any."""
        item = self._memory.pop((protocol, path), None)
        if item is None and self.root is not None:
            item = self._load(protocol, path)
        if self.root is not None:
            self._unlink(record_name(protocol, path))
        return item[0] if item and item[0].token != MISSING else None

    def known_paths(self, protocol: str) -> Iterator[str]:
        """Yield the paths of ``protocol`` this process holds versions for."""
        for proto, path in list(self._memory):
            if proto == protocol:
                yield path

    def _dir(self) -> contextlib.AbstractContextManager[int | None]:
        """Open the records' directory, never through a symlink."""
        assert self._records is not None
        return self._records.open()

    def _unlink(self, name: str) -> None:
        with self._dir() as dfd:
            if dfd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)

    def _load(
        self, protocol: str, path: str
    ) -> tuple[FileVersion, float, float | None] | None:
        name = record_name(protocol, path)
        with self._dir() as dfd:
            if dfd is None:
                return None
            read = read_record(dfd, name, limit=_MAX_RECORD, trust=self.trust_cache_dir)
            if read is None:
                return None
            why, raw = read
            if not why:  # record_damage's checks, with the record parsed once
                try:
                    item = decode_record_mtime(raw)
                except ValueError as exc:
                    why = str(exc)
                else:
                    if record_name(item[0].protocol, item[0].path) == name:
                        return item
                    why = "is filed under another file's name"
        log.warning(
            "cachefs: dropping version record %s/%s: it %s; learning it again",
            self.root,
            name,
            why,
        )
        self._unlink(name)
        return None

    # -- the records read from outside (the ``cachefs`` command) -------------

    @staticmethod
    def stored_records(
        root: Path, *, trust: bool = False, misses: bool = False
    ) -> tuple[list[StoredRecord], list[tuple[Path, str]]]:
        """Read every version record under ``root``; change nothing.

        Static, so that the command reads a cache without building a cache
        (which would create ``root``). Records are checked as readers check
        them: CRC32C, every field, the name they are filed under; ``root`` is
        not read through a symlink (nothing is found then).

        Parameters
        ----------
        root
            The records' directory (``<cache_dir>/meta``).
        trust
            Accept records another user owns (``trust_cache_dir``).
        misses
            Also return the records of remembered misses (no data).

        Returns
        -------
        records, damaged
            The sound records sorted by protocol and path, and each damaged
            record file with why it is damaged ("version record ...").
        """
        good: list[StoredRecord] = []
        bad: list[tuple[Path, str]] = []
        try:
            dfd = open_dir(root)
        except OSError:
            return good, bad  # missing, or a symlink the layout check reports
        try:
            for name in sorted(os.listdir(dfd)):
                if not name.endswith(".json"):
                    continue  # a record being written
                read = read_record(dfd, name, limit=_MAX_RECORD, trust=trust)
                if read is None:
                    continue
                why, raw = read
                why = why or record_damage(raw, name)
                if why:
                    bad.append((root / name, f"version record {why}"))
                    continue
                version, fetched = decode_record(raw)
                if misses or version.token != MISSING:
                    good.append(StoredRecord(version, fetched, root / name))
        finally:
            os.close(dfd)
        good.sort(key=lambda r: (r.version.protocol, r.version.path))
        return good, bad
