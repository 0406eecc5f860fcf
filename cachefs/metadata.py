"""File metadata (size and version) cached under a TTL.

Versions are kept in memory and, when a disk tier exists, persisted as small
JSON records so that a new process — or one whose origin is unreachable, with
``metadata_ttl=None`` — can serve a warmed cache without asking the origin.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cachefs.chunks import FileVersion

__all__ = ["MetadataCache", "TTLCache"]


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
        Directory for persisted records, or ``None`` for memory only.
    """

    def __init__(self, ttl: float | None, root: Path | None) -> None:
        self.ttl = ttl
        self.root = root
        self._memory: dict[tuple[str, str], tuple[FileVersion, float]] = {}
        self._lock = threading.Lock()
        if root is not None:
            root.mkdir(mode=0o700, exist_ok=True)

    def get(self, protocol: str, path: str) -> FileVersion | None:
        """Return the fresh version of ``path``, or ``None``."""
        item = self._memory.get((protocol, path))
        if item is None and self.root is not None:
            item = self._load(protocol, path)
            if item is not None:
                self._memory[(protocol, path)] = item
        if item is None or not _fresh(item[1], self.ttl):
            return None
        return item[0]

    def seen(self, protocol: str, path: str) -> bool:
        """Return whether any version of ``path`` was recorded, fresh or not."""
        if (protocol, path) in self._memory:
            return True
        return self.root is not None and self._record_path(protocol, path).exists()

    def put(self, version: FileVersion) -> None:
        """Record ``version`` as fresh now."""
        now = time.time()
        self._memory[(version.protocol, version.path)] = (version, now)
        if self.root is None or self.ttl == 0:
            return
        record = {
            "protocol": version.protocol,
            "path": version.path,
            "size": version.size,
            "token": version.token,
            "fetched": now,
        }
        final = self._record_path(version.protocol, version.path)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record))
            os.replace(tmp, final)
        except OSError:
            # A metadata record is an optimisation; never fail a read for it.
            with contextlib.suppress(OSError):
                tmp.unlink()

    def drop(self, protocol: str, path: str) -> FileVersion | None:
        """Forget ``path``; return the version that was known, if any."""
        item = self._memory.pop((protocol, path), None)
        if item is None and self.root is not None:
            item = self._load(protocol, path)
        if self.root is not None:
            with contextlib.suppress(FileNotFoundError):
                self._record_path(protocol, path).unlink()
        return item[0] if item else None

    def known_paths(self, protocol: str) -> Iterator[str]:
        """Yield the paths of ``protocol`` this process holds versions for."""
        for proto, path in list(self._memory):
            if proto == protocol:
                yield path

    def _record_path(self, protocol: str, path: str) -> Path:
        assert self.root is not None
        name = hashlib.blake2b(f"{protocol}\0{path}".encode(), digest_size=20)
        return self.root / f"{name.hexdigest()}.json"

    def _load(self, protocol: str, path: str) -> tuple[FileVersion, float] | None:
        try:
            record = json.loads(self._record_path(protocol, path).read_text())
            version = FileVersion(
                record["protocol"], record["path"], int(record["size"]), record["token"]
            )
            stamp = float(record["fetched"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if version.protocol != protocol or version.path != path:
            return None  # a digest collision or a foreign file: not ours
        return version, stamp
