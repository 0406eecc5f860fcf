"""The mounted tree: inode numbers, directory listings and file attributes.

Everything here runs on the cache's event loop (the coroutines) or in any
thread (the lookups by inode); nothing imports the FUSE binding, so the
namespace is tested and reasoned about apart from the kernel protocol.

Listings come from the target through :meth:`CacheFileSystem._ls` (cached
there under ``metadata_ttl``); a file's size comes from the version the cache
knows, learned from the origin once the TTL has run out. With
``metadata_ttl=None`` and the origin unreachable, a directory lists the files
whose versions the cache dir records: a warmed tree mounts offline.
"""

from __future__ import annotations

import logging
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachefs.chunks import FileVersion
from cachefs.errors import is_absent
from cachefs.filesystem import CacheFileSystem
from cachefs.metadata import MetadataCache

__all__ = ["ROOT_INODE", "Node", "Tree"]

log = logging.getLogger(__name__)

#: The inode of the mount's root directory (FUSE's ``FUSE_ROOT_ID``).
ROOT_INODE = 1


@dataclass(frozen=True, slots=True)
class Node:
    """What the mount says about one path.

    Attributes
    ----------
    inode
        Its inode number in this mount.
    path
        Its path on the target filesystem.
    is_dir
        A directory (else a regular file).
    size
        Bytes (0 for a directory).
    mtime_ns
        Modification time, nanoseconds since the epoch.
    exact
        Whether ``size`` comes from a known version or the target's info
        (else the listing gave none, and the kernel must ask again).
    """

    inode: int
    path: str
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    exact: bool = True

    @property
    def mode(self) -> int:
        """``st_mode``: read-only for everyone (the mount refuses writes)."""
        return (stat.S_IFDIR | 0o555) if self.is_dir else (stat.S_IFREG | 0o444)


def _mtime_ns(entry: dict[str, Any], default: int) -> int:
    value = entry.get("mtime", entry.get("created"))
    if isinstance(value, int | float) and value > 0:
        return int(value * 1e9)
    return default


def _name(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2]


class Tree:
    """Paths and inodes of one mount over a :class:`CacheFileSystem`.

    Parameters
    ----------
    fs
        The cache the mount reads through.
    root
        The target path mounted at the mount point.
    """

    def __init__(self, fs: CacheFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or root
        self._paths: dict[int, str] = {ROOT_INODE: self.root}
        self._inodes: dict[str, int] = {self.root: ROOT_INODE}
        self._dirs: set[str] = {self.root}
        self._born = time.time_ns()
        self._offline: dict[str, dict[str, bool]] | None = None
        self._offline_logged = False

    # -- inode numbers -------------------------------------------------------

    def inode_of(self, path: str) -> int:
        """Return ``path``'s inode number, giving it one if it has none."""
        path = path.rstrip("/") or path
        inode = self._inodes.get(path)
        if inode is None:
            inode = len(self._paths) + 1
            self._paths[inode] = path
            self._inodes[path] = inode
        return inode

    def path_of(self, inode: int) -> str | None:
        """Return the target path of ``inode``, or ``None`` if unknown."""
        return self._paths.get(inode)

    def is_dir(self, inode: int) -> bool:
        """Whether ``inode`` was seen as a directory."""
        path = self._paths.get(inode)
        return path is not None and path in self._dirs

    # -- nodes ---------------------------------------------------------------

    def _file(self, path: str, size: int | None, mtime_ns: int) -> Node:
        version = self.fs.resolver.known(path)
        if version is not None:
            size = version.size
        return Node(
            self.inode_of(path),
            path,
            False,
            size or 0,
            mtime_ns or self._born,
            exact=size is not None,
        )

    def _dir(self, path: str, mtime_ns: int = 0) -> Node:
        self._dirs.add(path.rstrip("/") or path)
        return Node(self.inode_of(path), path, True, 0, mtime_ns or self._born)

    def node_from_entry(self, entry: dict[str, Any]) -> Node:
        """Return the node of one listing entry (no I/O)."""
        path = str(entry["name"])
        mtime = _mtime_ns(entry, 0)
        if entry.get("type") == "directory":
            return self._dir(path, mtime)
        size = entry.get("size")
        return self._file(path, None if size is None else int(size), mtime)

    async def listing(self, inode: int) -> list[Node]:
        """Return the nodes of directory ``inode``, sorted by name.

        Raises
        ------
        FileNotFoundError
            If ``inode`` is unknown or the directory is gone.
        NotADirectoryError
            If ``inode`` is a file.
        OSError
            If the origin fails and nothing recorded answers for it.
        """
        path = self._paths.get(inode)
        if path is None:
            raise FileNotFoundError(f"inode {inode}")
        if path not in self._dirs:
            raise NotADirectoryError(path)
        try:
            entries = await self.fs._ls(path, detail=True)
        except OSError as exc:
            if is_absent(exc) or self.fs.metadata_ttl is not None:
                raise
            entries = self._offline_entries(path, exc)
        nodes = {}
        for entry in entries:
            node = self.node_from_entry(entry)
            if node.path.rstrip("/") != path:
                nodes[_name(node.path)] = node
        return [nodes[name] for name in sorted(nodes)]

    async def lookup(self, parent: int, name: str) -> Node:
        """Return the node ``name`` in directory ``parent``.

        Raises
        ------
        FileNotFoundError
            If the directory has no such entry.
        """
        for node in await self.listing(parent):
            if _name(node.path) == name:
                if node.is_dir or node.exact:
                    return node
                return await self.refresh(node.inode)
        raise FileNotFoundError(f"{self._paths.get(parent)}/{name}")

    async def refresh(self, inode: int) -> Node:
        """Return ``inode``'s node, learning a file's version if not known.

        After ``metadata_ttl`` the version is asked of the origin again, so
        a changed file shows its new size here.
        """
        path = self._paths.get(inode)
        if path is None:
            raise FileNotFoundError(f"inode {inode}")
        if path in self._dirs:
            return self._dir(path)
        info = await self.fs.resolver.info(path)
        if info.get("type") == "directory":
            return self._dir(path, _mtime_ns(info, 0))
        version = await self.version(inode)
        return Node(
            inode, path, False, version.size, _mtime_ns(info, self._born), exact=True
        )

    async def version(self, inode: int) -> FileVersion:
        """Return the version of file ``inode`` a read would use now."""
        path = self._paths.get(inode)
        if path is None:
            raise FileNotFoundError(f"inode {inode}")
        return await self.fs.resolver.version(path)

    # -- offline -------------------------------------------------------------

    def _offline_entries(self, path: str, exc: OSError) -> list[dict[str, Any]]:
        """List ``path`` from the version records in the cache dir."""
        if self._offline is None:
            self._offline = self._recorded_tree()
        children = self._offline.get(path)
        if children is None:
            raise exc
        if not self._offline_logged:
            self._offline_logged = True
            log.warning(
                "cachefs mount: listing %s failed (%s); listing the files the "
                "cache dir records (metadata_ttl=None)",
                path,
                exc,
            )
        return [
            {
                "name": f"{path}/{name}",
                "type": "directory" if is_dir else "file",
                "size": None,
            }
            for name, is_dir in sorted(children.items())
        ]

    def _recorded_tree(self) -> dict[str, dict[str, bool]]:
        """Map each directory below the root to its children (name: is_dir)."""
        tree: dict[str, dict[str, bool]] = {}
        disks = self.fs.router.disks
        if not disks:
            return tree
        records, _ = MetadataCache.stored_records(
            Path(disks[0].root) / "meta", trust=self.fs.config.trust_cache_dir
        )
        prefix = self.root + "/"
        for record in records:
            version = record.version
            if version.protocol != self.fs.target_protocol:
                continue
            if not version.path.startswith(prefix):
                continue
            parts = version.path[len(prefix) :].split("/")
            here = self.root
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                tree.setdefault(here, {})[part] = not last
                here = f"{here}/{part}"
        return tree
