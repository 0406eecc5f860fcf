"""The FUSE request handlers: a thin face over :class:`Tree` and :class:`OpenFile`.

pyfuse3 runs the handlers as trio tasks in the daemon's main thread. A read
whose chunks are cached is answered inline there (a memoryview into the
cache, copied once into the kernel's reply); a miss and every metadata call
are handed to the cache's asyncio loop (:meth:`CacheOperations.on_loop`) and
awaited without blocking the other requests, for at most ``wait_bound``
seconds, so no request ever hangs on a silent origin.

The kernel's page cache is kept across opens of a file whose version has not
changed since its last open (``keep_cache``), and dropped when the cache has
learned a new version (JuiceFS does the same with mtimes); opens with
``O_DIRECT``, or every open with ``direct_io``, bypass it (as Mountpoint for
S3 does). Errors become ``ENOENT`` for a missing file and ``EIO`` for any
other failure, each logged once with the URL and the range.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import pyfuse3
import trio

from cachefs.errors import StaleVersionError
from cachefs.mount.control import STATS_XATTR
from cachefs.mount.reader import OpenFile
from cachefs.mount.tree import Node, Tree

__all__ = ["CacheOperations", "errno_of"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A metadata_ttl of None (trust forever) as a kernel timeout: long, but far
# from the kernel's overflow of seconds into jiffies.
_FOREVER = 30 * 86400.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def errno_of(exc: BaseException) -> int:
    """Return the errno a failed request answers the kernel with."""
    if isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if isinstance(exc, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(exc, IsADirectoryError):
        return errno.EISDIR
    if isinstance(exc, PermissionError):
        return errno.EACCES
    return errno.EIO


class CacheOperations(pyfuse3.Operations):
    """The handlers of a read-only mount of one :class:`Tree`.

    Parameters
    ----------
    tree
        The mounted namespace (and through it, the cache).
    direct_io
        Serve every open with direct I/O (no kernel page cache).
    wait_bound
        Seconds a request waits for the cache's loop at most (``None``: no
        bound); past it the request fails with ``EIO``.
    """

    def __init__(
        self, tree: Tree, *, direct_io: bool = False, wait_bound: float | None = None
    ) -> None:
        super().__init__()
        self.tree = tree
        self.fs = tree.fs
        self.direct_io = direct_io
        self.wait_bound = wait_bound
        ttl = self.fs.metadata_ttl
        self.timeout = _FOREVER if ttl is None else float(ttl)
        self._files: dict[int, OpenFile] = {}
        self._next_fh = 1
        #: The version token each inode was last opened at.
        self._opened: dict[int, str] = {}
        #: The version token last seen per inode (open, stat); a new one is
        #: pushed to the kernel (:meth:`invalidator`).
        self._seen: dict[int, str] = {}
        self._stale_send, self._stale_recv = trio.open_memory_channel[int](math.inf)
        self._logged: set[tuple[str, str]] = set()
        self._uid, self._gid = os.getuid(), os.getgid()
        #: Counters read through :data:`STATS_XATTR`: what reached the
        #: daemon (a read the kernel's page cache served is not here).
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "opens",
                "keep_cache_opens",
                "reads",
                "read_bytes",
                "largest_read",
                "inline_hits",
                "misses",
                "invalidated",
            ),
            0,
        )

    # -- crossing into the cache's loop ----------------------------------------

    async def on_loop(
        self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any
    ) -> T:
        """Run ``func(*args)`` on the cache's loop; await it from trio.

        Raises
        ------
        TimeoutError
            If it has not finished within ``wait_bound`` seconds (it is
            cancelled; a fetch other readers share goes on).
        """
        fut = asyncio.run_coroutine_threadsafe(func(*args), self.fs.loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            # RunFinishedError: the daemon is shutting down.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut.add_done_callback(wake)
        bound = self.wait_bound if self.wait_bound is not None else float("inf")
        with trio.move_on_after(bound):
            await done.wait()
        if not fut.done():
            fut.cancel()
            raise TimeoutError(f"no answer from the cache within {bound:g} s")
        return fut.result()

    # -- telling the kernel of new versions --------------------------------------

    def saw_version(self, inode: int, token: str) -> None:
        """Note that ``inode`` is at version ``token``; a new one drops its caches.

        The kernel keeps a file's attributes for the attribute timeout from
        whenever it last asked, and its pages while it holds them, so a
        version the cache learns (here, from the origin or from a record
        another process on the node left) would show only that much later.
        A changed token is queued for :meth:`invalidator`, which tells the
        kernel to forget the inode's attributes and pages at once.
        """
        before = self._seen.get(inode)
        self._seen[inode] = token
        if before is not None and before != token:
            self._stale_send.send_nowait(inode)

    async def invalidator(self) -> None:
        """Push the queued inodes' invalidations to the kernel, until cancelled.

        Run as a task of its own, never inside a request handler: the
        kernel's notification must not wait on a request this process is
        still answering, so each goes from a worker thread.
        """
        async for inode in self._stale_recv:
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, False)
            except OSError as exc:  # ENOENT: the kernel holds nothing of it
                log.debug("cachefs mount: invalidating inode %d: %s", inode, exc)
                continue
            self.stats["invalidated"] += 1

    def _fail(self, exc: BaseException, what: str, path: str | None) -> NoReturn:
        code = errno_of(exc)
        if code != errno.ENOENT:
            key = (path or "?", type(exc).__name__)
            if key not in self._logged:
                self._logged.add(key)
                url = self.fs.fs.unstrip_protocol(path) if path else "?"
                log.error("cachefs mount: %s of %s failed: %s", what, url, exc)
        raise pyfuse3.FUSEError(code) from exc

    # -- attributes ------------------------------------------------------------

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        attr.st_mode = node.mode
        attr.st_nlink = 2 if node.is_dir else 1
        attr.st_uid = self._uid
        attr.st_gid = self._gid
        attr.st_size = node.size
        attr.st_blksize = 1 << 17
        attr.st_blocks = -(-node.size // 512)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        # A size the listing did not give is asked for again at once.
        timeout = self.timeout if node.exact else 0.0
        attr.entry_timeout = timeout
        attr.attr_timeout = timeout
        return attr

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        """Return the attributes of ``name`` in directory ``parent_inode``."""
        text = os.fsdecode(name)
        if text in (".", ".."):
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            node = await self.on_loop(self.tree.lookup, parent_inode, text)
        except Exception as exc:
            self._fail(exc, "lookup", self.tree.path_of(parent_inode))
        return self._attrs(node)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        """Return the attributes of ``inode`` (a new version after the TTL)."""
        try:
            node = await self.on_loop(self.tree.refresh, inode)
        except Exception as exc:
            self._fail(exc, "stat", self.tree.path_of(inode))
        if not node.is_dir:
            version = self.fs.resolver.known(node.path)
            if version is not None:
                self.saw_version(inode, version.token)
        return self._attrs(node)

    # -- directories -----------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        """Open directory ``inode`` (its handle is its inode)."""
        if self.tree.path_of(inode) is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not self.tree.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """List directory ``fh`` from entry ``start_id`` on."""
        try:
            nodes = await self.on_loop(self.tree.listing, fh)
        except Exception as exc:
            self._fail(exc, "listing", self.tree.path_of(fh))
        for index in range(start_id, len(nodes)):
            node = nodes[index]
            name = os.fsencode(node.path.rstrip("/").rpartition("/")[2])
            if not pyfuse3.readdir_reply(token, name, self._attrs(node), index + 1):
                break

    # -- files -----------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        """Open file ``inode`` read-only at the version the cache knows now."""
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self.tree.path_of(inode)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.tree.is_dir(inode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        try:
            version = self.fs.resolver.known(path)
            if version is None:
                version = await self.on_loop(self.tree.version, inode)
        except Exception as exc:
            self._fail(exc, "open", path)
        # The page cache holds this version's bytes only if the last open
        # read the same version; a new one drops it (no keep_cache).
        keep = self._opened.get(inode) == version.token
        self._opened[inode] = version.token
        # Attributes the kernel holds may be older than this version (its
        # timer started when it last asked): they are dropped now, not at
        # their timeout; this open already drops the pages (no keep_cache).
        self.saw_version(inode, version.token)
        self.stats["opens"] += 1
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = OpenFile(
            version, self.fs.router, self.fs.chunk_size, self.fs.readahead
        )
        direct = self.direct_io or bool(flags & getattr(os, "O_DIRECT", 0))
        self.stats["keep_cache_opens"] += keep and not direct
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep and not direct, direct_io=direct)

    # pyfuse3 takes any contiguous buffer; its stub says bytes.
    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        """Return ``size`` bytes at ``off``: inline on a hit, via the loop on a miss."""
        f = self._files.get(fh)
        if f is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        stats = self.stats
        stats["reads"] += 1
        stats["read_bytes"] += size
        if size > stats["largest_read"]:
            stats["largest_read"] = size
        view = f.cached(off, size)
        if view is not None:
            stats["inline_hits"] += 1
            return view
        stats["misses"] += 1
        miss = f.miss(off, size)
        try:
            views = await self.on_loop(f.fetch, miss)
        except Exception as exc:
            if isinstance(exc, StaleVersionError):
                # The origin changed under this open: the next open (after
                # the cache forgets the old version) reads the new one.
                self.fs.invalidate(f.version.path)
            what = f"read of bytes {miss.start}-{miss.stop}"
            self._fail(exc, what, f.version.path)
        return f.deliver(miss, views)

    async def release(self, fh: int) -> None:
        """Close handle ``fh``."""
        f = self._files.pop(fh, None)
        if f is not None:
            f.close()

    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        """Return the daemon's counters as JSON for :data:`STATS_XATTR` on the root."""
        if inode == pyfuse3.ROOT_INODE and os.fsdecode(name) == STATS_XATTR:
            return json.dumps(self.stats).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        """Return a read-only filesystem's statistics (no free space)."""
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 1 << 17
        data.f_blocks = data.f_bfree = data.f_bavail = 0
        data.f_files = data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data
