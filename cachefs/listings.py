"""Directory listings cached under the metadata TTL rules, on disk too.

``ls`` and ``find`` results of the target (and the fact that a path is a
directory) are kept for ``metadata_ttl`` seconds like versions and misses:
in memory, and as records in the disk tier, so a new process — or one whose
origin is down, with ``metadata_ttl=None`` — globs a warmed dataset without
the origin.

A record on disk may have been planted or damaged, so it is trusted only
whole: at most :data:`MAX_RECORD` bytes and :data:`MAX_ENTRIES` entries, a
CRC32C over its canonical JSON, filed under the name its own protocol, kind,
path and parameters give, every entry a flat object of JSON scalars with a
string ``name`` and a known ``type``. Anything else is dropped (and asked of
the origin again). Records are opened through a descriptor of their
directory, never following a symlink, and must be regular files the user
owns (unless ``trust_cache_dir``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cachefs.tiers.disk import secure_dir
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
    "MAX_ENTRIES",
    "MAX_RECORD",
    "ListingCache",
    "clean_entry",
    "decode_listing",
    "encode_listing",
    "listing_name",
]

log = logging.getLogger(__name__)

_FORMAT = 1
_SUFFIX = ".listing"
#: Largest listing record read or written, in bytes.
MAX_RECORD = 32 << 20
#: Most entries one listing record may hold.
MAX_ENTRIES = 200_000
_MAX_STRING = 4096
_KINDS = frozenset({"ls", "find", "dir"})
_TYPES = frozenset({"file", "directory", "other", "link"})


def listing_name(protocol: str, kind: str, path: str, params: str) -> str:
    """Return the file name of the listing record of these arguments."""
    digest = hashlib.blake2b(
        f"{protocol}\0{kind}\0{path}\0{params}".encode(), digest_size=20
    )
    return digest.hexdigest() + _SUFFIX


def _scalar(value: Any) -> bool:
    if value is None or type(value) in (bool, int):
        return True
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is str and len(value) <= _MAX_STRING and "\0" not in value


def clean_entry(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return the storable part of a listing entry, or ``None`` if it has none.

    Keeps the fields whose values are JSON scalars (a datetime such as
    s3fs's ``LastModified`` is left out); the entry needs a string ``name``.
    """
    name = entry.get("name")
    if not isinstance(name, str) or not _scalar(name) or not name:
        return None
    kept = {k: v for k, v in entry.items() if isinstance(k, str) and _scalar(v)}
    if kept.get("type") not in _TYPES:
        kept["type"] = "file"
    return kept


def encode_listing(
    protocol: str,
    kind: str,
    path: str,
    params: str,
    entries: list[dict[str, Any]],
    fetched: float,
) -> bytes | None:
    """Return the stored form of a listing, or ``None`` if it is too large."""
    if len(entries) > MAX_ENTRIES:
        return None
    body: dict[str, Any] = {
        "format": _FORMAT,
        "protocol": protocol,
        "kind": kind,
        "path": path,
        "params": params,
        "fetched": fetched,
        "entries": entries,
    }
    raw = seal(body)
    return raw if len(raw) <= MAX_RECORD else None


def decode_listing(
    raw: bytes,
) -> tuple[str, str, str, str, list[dict[str, Any]], float]:
    """Verify and parse a stored listing record.

    Returns
    -------
    protocol, kind, path, params, entries, fetched

    Raises
    ------
    ValueError
        If the record is damaged; the message says how.
    """
    body = load_json(raw, MAX_RECORD)
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise ValueError("is not a listing record of a known format")
    check_crc(body)
    if set(body) != {
        "format",
        "protocol",
        "kind",
        "path",
        "params",
        "fetched",
        "entries",
    }:
        raise ValueError("has unexpected fields")
    protocol, kind, path, params = (
        body[k] for k in ("protocol", "kind", "path", "params")
    )
    if not all(isinstance(s, str) for s in (protocol, path, params)) or not protocol:
        raise ValueError("has a protocol, path or parameters that are not strings")
    if kind not in _KINDS:
        raise ValueError(f"has an unknown kind {kind!r}")
    fetched = body["fetched"]
    if bad_time(fetched):
        raise ValueError(f"has a bad time {fetched!r}")
    entries = body["entries"]
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise ValueError("has a bad list of entries")
    for entry in entries:
        if not isinstance(entry, dict) or clean_entry(entry) != entry:
            raise ValueError("has a bad entry")
    return protocol, kind, path, params, entries, float(fetched)


class ListingCache:
    """Listings of a target's directories, fresh for ``ttl`` seconds.

    Parameters
    ----------
    ttl
        Seconds a listing is trusted (``metadata_ttl``); ``None`` trusts it
        forever and ``0`` keeps nothing.
    root
        Directory of the persisted records, or ``None`` for memory only;
        created owner-only like the version records' directory.
    trust_cache_dir
        Accept records another user owns (see
        :class:`~cachefs.tiers.disk.DiskTier`).
    """

    def __init__(
        self, ttl: float | None, root: Path | None, *, trust_cache_dir: bool = False
    ) -> None:
        self.ttl = ttl
        self.root = root
        self.trust_cache_dir = trust_cache_dir
        self._memory: dict[tuple[str, str, str, str], tuple[Any, float]] = {}
        self._records: RecordDir | None = None
        if root is not None:
            secure_dir(root, trust=trust_cache_dir)
            self._records = RecordDir(root, "listing records")

    def _fresh(self, fetched: float) -> bool:
        return self.ttl is None or (self.ttl > 0 and time.time() - fetched < self.ttl)

    def get(
        self, protocol: str, kind: str, path: str, params: str = ""
    ) -> list[dict[str, Any]] | None:
        """Return the fresh listing of ``path``, or ``None``.

        The entries are the caller's to change (copies).
        """
        key = (protocol, kind, path, params)
        item = self._memory.get(key)
        if item is None and self.root is not None and self.ttl != 0:
            item = self._load(key)
            if item is not None:
                self._memory[key] = item
        if item is None or not self._fresh(item[1]):
            return None
        return [dict(e) for e in item[0]]

    def put(
        self,
        protocol: str,
        kind: str,
        path: str,
        entries: list[dict[str, Any]],
        params: str = "",
    ) -> None:
        """Record ``entries`` as the listing of ``path``, fresh now."""
        if self.ttl == 0:
            return
        now = time.time()
        kept = [dict(e) for e in entries]
        self._memory[(protocol, kind, path, params)] = (kept, now)
        if self.root is None:
            return
        stored = [c for e in kept if (c := clean_entry(e)) is not None]
        raw = encode_listing(protocol, kind, path, params, stored, now)
        if raw is None:
            return  # too large to persist: this process keeps it in memory
        with self._dir() as dfd:
            if dfd is not None:
                final = listing_name(protocol, kind, path, params)
                write_record(dfd, final, raw, tmp_prefix=".")

    def clear(self) -> int:
        """Forget every listing, in memory and on disk (a write changed one).

        Returns the number of records removed from disk.
        """
        self._memory.clear()
        removed = 0
        if self.root is None:
            return removed
        with self._dir() as dfd:
            if dfd is None:
                return removed
            for name in os.listdir(dfd):
                if name.endswith(_SUFFIX):
                    try:
                        os.unlink(name, dir_fd=dfd)
                    except OSError:
                        continue
                    removed += 1
        return removed

    def _dir(self) -> contextlib.AbstractContextManager[int | None]:
        assert self._records is not None
        return self._records.open()

    def _load(self, key: tuple[str, str, str, str]) -> tuple[Any, float] | None:
        name = listing_name(*key)
        with self._dir() as dfd:
            if dfd is None:
                return None
            read = read_record(dfd, name, limit=MAX_RECORD, trust=self.trust_cache_dir)
            if read is None:
                return None
            why, raw = read
            if not why:
                try:
                    *found, entries, fetched = decode_listing(raw)
                except ValueError as exc:
                    why = str(exc)
                else:
                    if tuple(found) == key:
                        return entries, fetched
                    why = "is filed under another listing's name"
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
        log.warning(
            "cachefs: dropping listing record %s/%s: it %s; listing again",
            self.root,
            name,
            why,
        )
        return None
