"""The filesystems cachefs is compared with, built over the same target.

Every caching peer gets its own cache directory under ``root`` so no two
systems share (or pre-warm) each other's storage:

- ``plain``: the target filesystem itself, no cache;
- ``simplecache``: fsspec's whole-file cache, no metadata;
- ``filecache``: fsspec's whole-file cache with metadata and expiry;
- ``blockcache``: fsspec's block cache (sparse local file, mmap).

Note that ``blockcache`` over a *local* target (``"file"``) does not route
reads through its mmap cache: fsspec's ``LocalFileOpener`` reads the origin
file directly, so it measures plain local reads plus fsspec's wrappers.

fsspec's ``MMapCache`` (behind ``blockcache``) drops the file object it maps
without closing it, which raises a ``ResourceWarning`` on every open; open
peers with :func:`open_file`, which silences exactly that warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from cachefs import CacheFileSystem

__all__ = [
    "PEER_NAMES",
    "build_cachefs",
    "build_peer",
    "build_peers",
    "open_file",
    "warm",
]

#: The peers :func:`build_peer` knows, in table order.
PEER_NAMES = ("plain", "simplecache", "filecache", "blockcache")


def build_peer(
    name: str,
    root: str | os.PathLike[str],
    target_protocol: str = "file",
    target_options: dict[str, Any] | None = None,
) -> AbstractFileSystem:
    """Return the peer ``name`` over the target, caching under ``root/name``.

    Parameters
    ----------
    name
        One of :data:`PEER_NAMES`.
    root
        Directory under which the peer's own cache directory is created.
    target_protocol, target_options
        The filesystem being cached.
    """
    options = dict(target_options or {})
    if name == "plain":
        return fsspec.filesystem(target_protocol, skip_instance_cache=True, **options)
    if name not in PEER_NAMES:
        raise ValueError(f"unknown peer {name!r}; choose from {PEER_NAMES}")
    storage = Path(root) / name
    storage.mkdir(parents=True, exist_ok=True)
    return fsspec.filesystem(
        name,
        target_protocol=target_protocol,
        target_options=options,
        cache_storage=str(storage),
        skip_instance_cache=True,
    )


def build_peers(
    root: str | os.PathLike[str],
    names: Sequence[str] = PEER_NAMES,
    target_protocol: str = "file",
    target_options: dict[str, Any] | None = None,
) -> dict[str, AbstractFileSystem]:
    """Return ``{name: filesystem}`` for ``names`` (see :func:`build_peer`)."""
    return {
        name: build_peer(name, root, target_protocol, target_options) for name in names
    }


def build_cachefs(
    cache_dir: str | os.PathLike[str],
    *,
    ram_limit: int | str = "1GiB",
    disk_limit: int | str = "8GiB",
    chunk_size: int | str = "4MiB",
    target_protocol: str = "file",
    target_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> CacheFileSystem:
    """Return a fresh ``CacheFileSystem`` caching under ``cache_dir``."""
    return CacheFileSystem(
        target_protocol=target_protocol,
        target_options=target_options,
        cache_dir=str(cache_dir),
        ram_limit=ram_limit,
        disk_limit=disk_limit,
        chunk_size=chunk_size,
        skip_instance_cache=True,
        **kwargs,
    )


def open_file(fs: AbstractFileSystem, path: str) -> Any:
    """Open ``path`` for reading, hiding fsspec's known ``MMapCache`` fd leak."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="unclosed file", category=ResourceWarning
        )
        return fs.open(path, "rb")


def warm(fs: AbstractFileSystem, path: str, block: int = 4 * 2**20) -> int:
    """Read ``path`` through ``fs`` front to back; return the bytes read.

    For a ``CacheFileSystem`` this also waits for background disk writes.
    """
    total = 0
    with open_file(fs, path) as f:
        while True:
            data = f.read(block)
            if not data:
                break
            total += len(data)
    if isinstance(fs, CacheFileSystem):
        fs.wait_idle()
    return total
