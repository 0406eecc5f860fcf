"""Shard indexes: sample counts (and tar sample offsets), kept once.

A dataset must know every shard's sample count before an epoch starts, so
that each rank can be given the same number of samples. A raw shard's count
follows from its size; a tar shard's takes one pass over its headers. That
pass records where each sample starts, so a reader can later start in the
middle of a shard, and its result is kept in the cache directory
(``<cache_dir>/index/``) under the shard's *version* (ETag, else size and
mtime): a changed shard is indexed again, an unchanged one never.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachefs.chunks import FileVersion

__all__ = ["IndexStore", "ShardIndex"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True, slots=True)
class ShardIndex:
    """What a dataset knows of one shard before reading it.

    Attributes
    ----------
    samples
        Number of samples in the shard.
    bounds
        For tar shards indexed by a scan: the offset where each sample's
        first header starts, then the offset where the archive ends
        (``samples + 1`` entries). ``None`` when only the count is known
        (given by the user); a reader that starts mid-shard then skips
        samples from the start of the shard.
    """

    samples: int
    bounds: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")
        if self.bounds is not None and len(self.bounds) != self.samples + 1:
            raise ValueError(
                f"bounds must have samples + 1 = {self.samples + 1} entries, "
                f"got {len(self.bounds)}"
            )


class IndexStore:
    """Tar shard indexes persisted under ``root``, keyed by file version.

    Records are written to a temporary name and renamed into place, so
    processes indexing the same shard at once never see half a record.
    Failing to read or write a record is never an error: the shard is
    simply indexed (again).

    Parameters
    ----------
    root
        The directory, created owner-only (0700); a symlink in its place is
        refused.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700, parents=True)
        st = os.lstat(root)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(
                f"index directory {str(root)!r} is not a plain directory"
            )

    def _path(self, version: FileVersion, kind: str) -> Path:
        name = "\0".join(
            (kind, version.protocol, version.path, str(version.size), version.token)
        )
        return self.root / (hashlib.blake2b(name.encode(), digest_size=20).hexdigest())

    def get(self, version: FileVersion, kind: str) -> ShardIndex | None:
        """Return the stored index of ``version`` read as ``kind``, or ``None``."""
        try:
            record: dict[str, Any] = json.loads(self._path(version, kind).read_text())
            if record["version"] != [
                kind,
                version.protocol,
                version.path,
                version.size,
                version.token,
            ]:
                return None
            bounds = record["bounds"]
            return ShardIndex(
                int(record["samples"]),
                None if bounds is None else tuple(int(b) for b in bounds),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, version: FileVersion, kind: str, index: ShardIndex) -> None:
        """Store ``index`` for ``version`` read as ``kind`` (best effort)."""
        record = {
            "version": [
                kind,
                version.protocol,
                version.path,
                version.size,
                version.token,
            ],
            "samples": index.samples,
            "bounds": None if index.bounds is None else list(index.bounds),
        }
        final = self._path(version, kind)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, separators=(",", ":"))
            os.replace(tmp, final)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
