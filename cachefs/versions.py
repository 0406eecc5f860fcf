"""Which version of a file is read: learned once per process and per node.

A chunk's key names the origin file's version, so nothing is read before the
version is known. :class:`VersionResolver` learns it — from the metadata
cache (this process, or any process sharing the disk tier), from an ``info``
call, or from the first ranged read of a file this cache has never seen,
whose headers carry size and ETag — and remembers it for ``metadata_ttl``
seconds. It also keeps what the first reads of files taught (how far an
open's first request should reach) and forgets a file whose origin changed.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from cachefs.chunks import (
    ChunkKey,
    FileVersion,
    span_keys,
    token_fields,
    version_token,
)
from cachefs.config import CacheConfig
from cachefs.errors import is_absent
from cachefs.fetch import Fetcher
from cachefs.listings import ListingCache
from cachefs.metadata import MetadataCache, TTLCache
from cachefs.router import ChunkRouter

__all__ = ["VersionResolver", "info_mtime"]

_MTIME_FIELDS = ("mtime", "LastModified", "last_modified", "Last-Modified", "updated")
# Protocols whose info cannot tell a directory from a page: a page that
# lists links is one (fsspec's http isdir).
_PAGE_PROTOCOLS = frozenset({"http", "https"})


def info_mtime(info: dict[str, Any]) -> float | None:
    """Return the modification time an ``info`` dict gives, in epoch seconds.

    Reads the fields targets use (``mtime``, s3fs's ``LastModified``, an
    HTTP ``Last-Modified`` header, ...); ``None`` when there is none.
    """
    for name in _MTIME_FIELDS:
        value = info.get(name)
        stamp: float | None = None
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            stamp = value.timestamp()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            stamp = float(value)
        elif isinstance(value, str) and value:
            try:
                stamp = email.utils.parsedate_to_datetime(value).timestamp()
            except (TypeError, ValueError):
                try:
                    parsed = datetime.datetime.fromisoformat(value)
                except ValueError:
                    continue
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=datetime.UTC)
                stamp = parsed.timestamp()
        if stamp is not None and math.isfinite(stamp) and stamp >= 0:
            return stamp
    return None


class VersionResolver:
    """Learns and remembers the versions of a target's files.

    Parameters
    ----------
    config
        The cache's settings (chunk size, ``metadata_ttl``, readahead).
    protocol
        The target's protocol: versions are recorded under it.
    metadata
        The versions known to this node (RAM, and records in the disk tier).
    fetcher
        Origin access, for ``info`` calls.
    router
        The chunk router, for first reads and dropping a stale version's
        chunks.
    target_path
        Turns a user's path (``cachefs::`` URL included) into the target's
        path; see :meth:`target_path`.
    listings
        The listings cache, where a path found to be a directory is recorded
        (an HTTP page that lists links is one, whatever its info says).

    Notes
    -----
    Methods taking ``tpath`` expect a target path. The async methods run on
    the cache's event loop.
    """

    def __init__(
        self,
        config: CacheConfig,
        protocol: str,
        metadata: MetadataCache,
        fetcher: Fetcher,
        router: ChunkRouter,
        target_path: Callable[[str], str] = str,
        listings: ListingCache | None = None,
    ) -> None:
        self.config = config
        self.protocol = protocol
        self.metadata = metadata
        self.fetcher = fetcher
        self.router = router
        self.chunk_size = config.chunk_size
        self.target_path = target_path
        self.listings = listings
        #: Target ``info`` results, fresh for ``metadata_ttl``.
        self.infos = TTLCache(config.metadata_ttl)
        self._resolving: dict[str, asyncio.Future[FileVersion]] = {}
        #: Bytes an open reads with its first request: one chunk, or the
        #: first readahead window once opened files are read sequentially.
        # Optimistic at first (training data is read front to back): the
        # first request of an unseen file covers the readahead window, so its
        # second chunk is not asked for only after the first has arrived.
        # A file read at random narrows later opens to one chunk.
        self.open_span = config.first_window

    # -- what is known -------------------------------------------------------

    def known(self, tpath: str) -> FileVersion | None:
        """Return the version of ``tpath`` this node knows now (no I/O)."""
        return self.metadata.get(self.protocol, tpath)

    def first_read_fetches(self, tpath: str) -> bool:
        """Whether learning ``tpath``'s version may also fetch its first bytes.

        Only for a file this cache has never seen and with no shared tier:
        otherwise its chunks may be cached already, and a metadata call is
        the cheaper way to learn which version they must match.
        """
        return self.router.shared is None and not self.metadata.seen(
            self.protocol, tpath
        )

    def keys(self, version: FileVersion, start: int, stop: int) -> list[ChunkKey]:
        """Return the keys of the chunks of ``version`` in ``[start, stop)``."""
        return span_keys(version, self.chunk_size, start, stop)

    def note_access(self, sequential: bool) -> None:
        """Widen the first read of an open after files read sequentially."""
        self.open_span = self.config.first_window if sequential else self.chunk_size

    # -- learning ------------------------------------------------------------

    async def version(self, tpath: str) -> FileVersion:
        """Return ``tpath``'s version, asking the origin if it is not known.

        A first read of the file already under way in this process
        (:meth:`resolve_span`, a prefetch's or an open's) is awaited instead,
        or after the metadata call when it began meanwhile: its chunks are
        in flight under the version it learns from its headers, and a caller
        that learned the version first would find none of them in flight
        and fetch them again.
        """
        version = self.known(tpath)
        if version is not None:
            return version
        pending = self._resolving.get(tpath)
        if pending is None:
            version = await self._from_origin(tpath)
            pending = self._resolving.get(tpath)
            if pending is None:
                return version
        try:
            shared = await self._shared(pending)
        except Exception:  # the first read's error, not this caller's answer
            shared = None
        if shared is not None:
            return shared
        # The first read failed or its prefetch was cancelled: this caller's
        # own metadata call decides.
        return version if version is not None else await self._from_origin(tpath)

    @staticmethod
    async def _shared(pending: asyncio.Future[FileVersion]) -> FileVersion | None:
        """Await a first read under way; ``None`` if it was cancelled.

        A first read cancelled under its waiters (its prefetch was) answers
        none of them; this caller's own cancellation is raised.
        """
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            if not pending.cancelled():
                raise
            return None

    async def _from_origin(self, tpath: str) -> FileVersion:
        """Learn ``tpath``'s version with a metadata call."""
        info = await self.info(tpath)
        version = self.known(tpath)
        if version is None:  # metadata_ttl=0: nothing is kept
            version = self.from_info(tpath, info)
        return version

    async def version_for_read(
        self, tpath: str, start: int | None, end: int | None
    ) -> tuple[FileVersion, dict[ChunkKey, memoryview]]:
        """Return ``tpath``'s version for a read of ``[start, end)``.

        A file never seen learns it from the first ranged read itself (no
        metadata round trip); its chunks in hand come back too.
        """
        version = self.known(tpath)
        if version is not None:
            return version, {}
        if (start is not None and start < 0) or not self.first_read_fetches(tpath):
            return await self.version(tpath), {}
        cs = self.chunk_size
        first = (start or 0) // cs * cs
        span = self.router.max_coalesce
        if end is not None and end >= 0:
            span = min(span, max(end - first, 1))
        return await self.resolve_span(tpath, first, span)

    async def version_for_open(
        self, tpath: str
    ) -> tuple[FileVersion, dict[ChunkKey, memoryview]]:
        """Return ``tpath``'s version for an open, with its first chunks.

        An unseen file's first request covers :attr:`open_span` bytes, so a
        sequential reader's second chunk is on its way with the first.
        """
        version = self.known(tpath)
        if version is not None:
            return version, {}
        if self.config.readahead and self.first_read_fetches(tpath):
            return await self.resolve_span(tpath, 0, self.open_span)
        return await self.version(tpath), {}

    def from_info(self, tpath: str, info: dict[str, Any]) -> FileVersion:
        """Record the version an ``info`` result gives; return it.

        A version that replaces another one drops the old one's chunks.

        Raises
        ------
        IsADirectoryError
            If ``info`` describes a directory.
        OSError
            If ``info`` has no size.
        """
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{tpath} is a directory")
        size = info.get("size")
        if size is None:
            raise OSError(f"the origin reports no size for {tpath}")
        version = FileVersion(self.protocol, tpath, int(size), version_token(info))
        # An expired version counts: its chunks are dead weight all the same.
        known = self.metadata.recorded(self.protocol, tpath)
        self.metadata.put(version, info_mtime(info))
        if known is not None and known != version:
            self.drop_chunks(known)  # the origin changed: dead weight
        return version

    def is_directory(self, tpath: str) -> bool:
        """Return whether ``tpath`` is recorded as a directory (no I/O)."""
        listings = self.listings
        return listings is not None and (
            listings.get(self.protocol, "dir", tpath) is not None
        )

    def note_directory(self, tpath: str) -> None:
        """Record that ``tpath`` is a directory, for this node's processes."""
        if self.listings is not None:
            self.listings.put(self.protocol, "dir", tpath, [])

    async def info(self, tpath: str) -> dict[str, Any]:
        """Return the target's ``info`` of ``tpath``, cached.

        One rule with :meth:`version`: a fresh version (this process, or a
        record another process left) answers without the origin, as a
        remembered miss or directory does; ``metadata_ttl`` says how long
        each is fresh (``None``: forever, so a warmed cache answers with the
        origin unreachable).
        """
        cached = self.infos.get(tpath)
        if cached is not None:
            return dict(cached)
        if self.metadata.is_missing(self.protocol, tpath):
            # A warmed store's absent keys (zarr's probes) cost no origin
            # request, offline included.
            raise FileNotFoundError(tpath)
        if self.is_directory(tpath):
            return {"name": tpath, "size": 0, "type": "directory"}
        known = self.metadata.get(self.protocol, tpath)
        info: dict[str, Any]
        if known is not None:
            info = {
                "name": tpath,
                "size": known.size,
                "type": "file",
                "version": known.token,
            }
            mtime = self.metadata.mtime(self.protocol, tpath)
            if mtime is not None:
                info["mtime"] = mtime
            # The ETag (or mtime) the token was made of, so that
            # version_token(info) names this version as the origin's did.
            for field, value in token_fields(known.token).items():
                info.setdefault(field, value)  # a recorded float mtime stays
            return info
        try:
            info = await self.fetcher.info(tpath)
        except FileNotFoundError as exc:
            if is_absent(exc):
                self.metadata.put_missing(self.protocol, tpath)
            raise
        if await self._lists_links(tpath, info):
            info = {"name": tpath, "size": 0, "type": "directory"}
            self.note_directory(tpath)
        self.infos.put(tpath, info)
        if info.get("type") != "directory" and info.get("size") is not None:
            self.from_info(tpath, info)
        return dict(info)

    async def _lists_links(self, tpath: str, info: dict[str, Any]) -> bool:
        """Whether ``tpath`` is an HTTP page that is a directory listing.

        fsspec's http reports every URL as a file; its ``isdir`` calls a page
        of links a directory. Only an HTML page is asked (one GET).
        """
        if self.protocol not in _PAGE_PROTOCOLS or info.get("type") == "directory":
            return False
        if info.get("mimetype") != "text/html":
            return False
        return bool(await self.fetcher.metadata("isdir", tpath))

    async def resolve_span(
        self,
        tpath: str,
        start: int,
        length: int,
        *,
        staged: bool = False,
        reserved: int = 0,
    ) -> tuple[FileVersion, dict[ChunkKey, memoryview]]:
        """Learn ``tpath``'s version with a read of ``[start, start+length)``.

        Over HTTP this is one ranged GET whose headers carry size and ETag;
        it returns as soon as they arrive, with the first chunk (handed back
        too: a tier may not admit it), while the rest streams in as fills
        that readers join. Elsewhere it is an ``info`` call and a read. One
        resolution per file runs at a time in a process, and processes
        sharing a disk tier take a per-file lock for it: the others wait,
        then find version and chunks cached. ``staged``/``reserved``: the
        read is a prefetch charged to the staging budget.
        """
        router = self.router
        staging = router.staging
        pending = self._resolving.get(tpath)
        lock = None if pending else router.file_lock(self.protocol, tpath)
        if pending is not None or (lock is not None and not lock.try_acquire()):
            if staged and staging is not None:
                staging.unreserve(reserved)
            if pending is not None:
                shared = await self._shared(pending)
                if shared is None:  # cancelled: this caller learns it itself
                    shared = await self.version(tpath)
                return shared, {}
            assert lock is not None
            await router.acquire(lock)  # another process is reading it
            lock.release()
            return await self.version(tpath), {}
        loop = asyncio.get_running_loop()
        resolving: asyncio.Future[FileVersion] = loop.create_future()
        resolving.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._resolving[tpath] = resolving
        cs = self.chunk_size
        began = time.perf_counter()

        def make_version(info: dict[str, Any]) -> FileVersion:
            self.infos.put(tpath, info)
            return self.from_info(tpath, info)

        try:
            stop = start + max(cs, -(-length // cs) * cs)
            version = await router.open_stream(
                tpath,
                start,
                stop,
                cs,
                make_version,
                lock=lock,
                staged=staged,
                reserved=reserved,
            )
            lock = None  # the stream releases it once its chunks are stored
            resolving.set_result(version)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                resolving.cancel()
            else:
                if is_absent(exc):
                    self.metadata.put_missing(self.protocol, tpath)
                resolving.set_exception(exc)
            raise
        finally:
            self._resolving.pop(tpath, None)
            if lock is not None:
                lock.release()
        views: dict[ChunkKey, memoryview] = {}
        if not staged and start < version.size:
            # The first chunk is awaited; the others of the span are handed
            # back as they arrive, so a reader keeps them even where no tier
            # admits them (a full tier under the epoch policy).
            keys = self.keys(version, start, min(stop, version.size))
            waits = {k: f for k in keys if (f := router.inflight(k))}
            if keys[0] in waits:
                views[keys[0]] = await asyncio.shield(waits.pop(keys[0]))
            for key, fut in waits.items():
                fut.add_done_callback(functools.partial(_keep, views, key))
            router.stats.wait_seconds += time.perf_counter() - began
        return version, views

    # -- forgetting ----------------------------------------------------------

    def drop_chunks(self, version: FileVersion) -> None:
        """Remove every chunk of ``version`` from the tiers."""
        if version.size:
            self.router.discard(self.keys(version, 0, version.size))

    def forget(self, tpaths: Iterable[str]) -> None:
        """Forget the versions (and their chunks) and infos of ``tpaths``."""
        self.infos.clear()
        for tpath in tpaths:
            old = self.metadata.drop(self.protocol, tpath)
            if old is not None:
                self.drop_chunks(old)

    def known_below(self, tpath: str) -> list[str]:
        """Return ``tpath`` and every known path below it."""
        prefix = tpath.rstrip("/") + "/"
        return [tpath] + [
            p for p in self.metadata.known_paths(self.protocol) if p.startswith(prefix)
        ]

    def clear(self) -> None:
        """Forget every version and info (chunks are the tiers' to clear)."""
        self.infos.clear()
        for p in list(self.metadata.known_paths(self.protocol)):
            self.metadata.drop(self.protocol, p)

    def after_fork(self) -> None:
        """Forget the parent's resolutions in flight (they were its loop's)."""
        self._resolving = {}


def _keep(
    views: dict[ChunkKey, memoryview], key: ChunkKey, fut: asyncio.Future[memoryview]
) -> None:
    """Add a fetched chunk to ``views`` (a done callback; failures are left)."""
    if not fut.cancelled() and fut.exception() is None:
        views[key] = fut.result()
