"""``CacheFileSystem``: the fsspec face of the cache (protocol ``cachefs``).

Reads go through the chunk router; metadata calls pass through to the target
and are cached for ``metadata_ttl`` seconds; writes pass through and
invalidate what the cache holds for the paths they touch.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import weakref
from collections.abc import Sequence
from inspect import isasyncgenfunction, iscoroutinefunction
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem, async_gen_wrapper, async_methods, private
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import AbstractFileSystem

from cachefs.assembly import build_router, cache_stats, make_target
from cachefs.bridge import call_sync, on_own_loop, register, renewed
from cachefs.chunks import ChunkKey, assemble, clip, span_keys
from cachefs.config import CacheConfig, default_cache_dir, split_keywords
from cachefs.errors import StaleVersionError
from cachefs.fetch import Fetcher
from cachefs.file import CachedFile
from cachefs.listings import ListingCache
from cachefs.metadata import MetadataCache
from cachefs.namespace import NamespaceFace
from cachefs.policy import EvictionPolicy
from cachefs.prefetch import PrefetchHandle, PrefetchItem, prefetch_items
from cachefs.ranges import read_ranges
from cachefs.versions import VersionResolver
from cachefs.writes import WritePassThrough, WriteThroughFile

__all__ = ["CacheFileSystem", "default_cache_dir"]

# At exit, fills still writing to disk get this long to finish.
_EXIT_DRAIN_SECONDS = 10.0
_WRITE_MODES = frozenset({"wb", "ab", "xb"})


class _CacheFileSystemType(type(AsyncFileSystem)):  # type: ignore[misc]
    """fsspec's instance cache, with settings normalised and named timeouts."""

    def __init__(cls, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _mirror_blocking(cls)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("target_options"):
            # URL chaining always passes ``target_options={}``: the same
            # settings as none at all, so the same instance.
            kwargs.pop("target_options", None)
        # fsspec's token hashes the keywords in the order given: sorted, the
        # same settings make the same token however they were spelled.
        obj = super().__call__(*args, **dict(sorted(kwargs.items())))
        if obj.asynchronous and not vars(obj).get("_twin_routed"):
            _route_blocking_calls(obj)
        return obj


# Blocking methods of the class itself (the others are mirrored coroutines).
_BLOCKING = ("cat_file", "_open")


def _mirror_blocking(cls: Any) -> None:
    """Give ``cls`` the blocking twin of each coroutine fsspec would mirror.

    fsspec builds them per instance, and they were wrapped to name their
    timeouts per instance too: 0.26 ms of a new process's first open (issue
    20). Built once per class, by fsspec's rule; each finds its coroutine
    when called, so an override is the one run.
    """
    cls.mirror_sync_methods = False  # fsspec's per-instance pass
    for method in set(async_methods + dir(AsyncFileSystem)):
        name, coro = method[1:], getattr(cls, method, None)
        default = getattr(cls, name, None) is getattr(AbstractFileSystem, name, "")
        gen = isasyncgenfunction(coro)
        if private.match(method) and default and (gen or iscoroutinefunction(coro)):
            mirror = _blocking(method, gen)
            mirror.__name__, mirror.__qualname__ = name, f"{cls.__qualname__}.{name}"
            mirror.__doc__ = coro.__doc__ or getattr(AbstractFileSystem, name).__doc__
            setattr(cls, name, mirror)


def _blocking(method: str, gen: bool) -> Any:
    def mirror(self: CacheFileSystem, *args: Any, **kwargs: Any) -> Any:
        if self.asynchronous:  # no loop of its own: its synchronous twin's
            return getattr(self.sync_twin(), method[1:])(*args, **kwargs)
        if gen:
            return async_gen_wrapper(getattr(self, method), obj=self)(*args, **kwargs)
        return call_sync(self.loop, getattr(self, method), *args, **kwargs)

    return mirror


def _route_blocking_calls(obj: CacheFileSystem) -> None:
    """Serve an asynchronous cache's blocking calls by its synchronous twin.

    fsspec's URL chaining writes ``asynchronous=True`` into a caller's nested
    options dict (zarr asks for it), so the next library handed the same
    dict (pandas) gets an asynchronous cache and calls it synchronously. Its
    blocking methods have no loop to run on; the twin (same settings, same
    tiers) has fsspec's. Coroutines stay the asynchronous cache's own.
    """
    for name in _BLOCKING:  # the mirrored coroutines see to it themselves
        setattr(obj, name, functools.partial(_call_twin, weakref.ref(obj), name))
    obj._twin_routed = True


def _call_twin(
    ref: weakref.ref[CacheFileSystem], name: str, *args: Any, **kwargs: Any
) -> Any:
    obj = ref()
    if obj is None:
        raise ReferenceError("the asynchronous cachefs filesystem is gone")
    return getattr(obj.sync_twin(), name)(*args, **kwargs)


class CacheFileSystem(
    NamespaceFace,
    WritePassThrough,
    AsyncFileSystem,  # type: ignore[misc]
    ChainedFileSystem,  # type: ignore[misc]
    metaclass=_CacheFileSystemType,
):
    """A tiered chunk cache over any fsspec filesystem.

    Parameters
    ----------
    target_protocol
        Protocol of the filesystem to cache (``"http"``, ``"s3"``, ``"file"``,
        ...). Give this or ``fs``, not both.
    target_options
        Keyword arguments for the target filesystem.
    fs
        An already constructed target filesystem instead of
        ``target_protocol``.
    cache_dir
        Directory of the disk tier, or a list of directories (one per disk;
        chunks are spread over them by rendezvous hashing). Defaults to
        ``$XDG_CACHE_HOME/cachefs``.
    ram_limit
        Byte budget of this process's RAM tier; ``0`` turns it off.
    disk_limit
        Byte budget of the disk tier, shared by every process using the same
        directories, split evenly over them; ``0`` turns it off.
    chunk_size
        Size of the chunks files are cut into (default 4 MiB).
    metadata_ttl
        Seconds a file's size and version are trusted before the origin is
        asked again; ``None`` trusts them forever, so a warmed cache serves
        with the origin unreachable.
    policy
        Name of the eviction policy (see :func:`cachefs.available_policies`),
        or a policy instance.
    max_requests
        Concurrent origin requests at most.
    max_inflight
        Bytes of origin requests in flight at most.
    max_coalesce
        Largest single ranged request made by joining adjacent missing chunks.
    retries
        Times a transient origin fault is retried before a read fails.
    request_timeout
        Seconds one origin request may take; ``None`` for no limit.
    readahead
        Largest readahead window of a sequential reader (it starts at one
        chunk and doubles with each sequential read); ``0`` turns it off.
    prefetch_limit
        Bytes fetched ahead (readahead and :meth:`prefetch`) and not yet
        read, at most; ``0`` turns prefetching off.
    prefetch_hold
        Seconds a prefetched chunk is held for its reader before its budget
        may be reclaimed.
    compression
        Compress chunks in the disk tier with a numcodecs codec: ``"zstd"``,
        ``"lz4"``, a codec config dict, a codec object, or ``None`` (the
        default). Chunks that do not shrink by 5% are stored raw. The codec is
        recorded per chunk, so a cache written under one setting reads under
        any other. Compressed chunks cost a decode per disk hit.
    shared
        A cluster-wide tier below the disk tier, on any fsspec filesystem:
        a URL such as ``"file:///mnt/lustre/cachefs"`` or
        ``"s3://bucket/cachefs"``, or ``{"protocol": "s3", "root":
        "bucket/cachefs", "options": {...}}``. Misses look there before the
        origin; chunks fetched from the origin are published there in the
        background. ``None`` (the default) means no shared tier.
    shared_lease
        Seconds a node's lease on a chunk it fetches for the shared tier
        holds (cross-node single flight, see docs/scaling.md): other nodes
        wait up to this long for it to be published there before fetching it
        themselves, and a dead node's lease is taken over after it. Default
        30; ``0`` turns leases off (every node fetches its own misses).
    trust_cache_dir
        Use a cache directory even if another user owns it or others can
        write to it, and serve chunk files another user owns. Off by default:
        such a directory is refused with a ``PermissionError`` naming it and
        the fix (``chmod 700`` or ``chown``), because records planted there
        would be served as the origin's bytes.
    direct_writes
        Write disk chunks with ``O_DIRECT``, bypassing the page cache: a
        half to a tenth of a buffered write's CPU, but the next read of a
        chunk comes from the device, not memory (docs/architecture.md,
        "Direct writes"). ``"auto"`` (the default) writes this way when
        ``disk_limit`` is at least twice the machine's RAM, so most of what
        the cache holds cannot be in the page cache for a next read, and not on
        memory filesystems; a filesystem that refuses the flag is written
        buffered whatever is asked.
    **kwargs
        Passed to :class:`fsspec.asyn.AsyncFileSystem` (``asynchronous``,
        ``loop``, ...).

    Notes
    -----
    Sizes accept ints and strings such as ``"512MiB"`` or ``"2GiB"``.
    """

    protocol = ("cachefs",)
    root_marker = ""
    # URL chaining passes each file's path as ``fo``: left out of the instance
    # token (as fsspec's own caches do), every ``cachefs::`` URL of a process
    # with the same settings reaches one instance, so one RAM budget, one
    # metadata cache and one learned readahead.
    _strip_tokenize_options = ("fo",)

    def __init__(
        self,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fs: AbstractFileSystem | None = None,
        cache_dir: str
        | os.PathLike[str]
        | Sequence[str | os.PathLike[str]]
        | None = None,
        ram_limit: int | str = "1GiB",
        disk_limit: int | str = "32GiB",
        chunk_size: int | str = "4MiB",
        metadata_ttl: float | None = 60.0,
        policy: str | EvictionPolicy = "adaptive",
        max_requests: int = 16,
        max_inflight: int | str = "256MiB",
        max_coalesce: int | str = "16MiB",
        retries: int = 4,
        request_timeout: float | None = 60.0,
        readahead: int | str = "64MiB",
        prefetch_limit: int | str = "256MiB",
        prefetch_hold: float = 30.0,
        compression: str | dict[str, Any] | Any | None = None,
        shared: str | dict[str, Any] | None = None,
        shared_lease: float | str = 30.0,
        trust_cache_dir: bool = False,
        direct_writes: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("fo", None)  # the path fsspec's URL chaining passes along
        # A mistyped setting is an error, not a cache on its defaults; a
        # keyword the target's class names is passed on to it.
        kwargs, passed = split_keywords(kwargs, target_protocol)
        if passed:
            target_options = {**passed, **(target_options or {})}
        super().__init__(**kwargs)
        config = self.config = CacheConfig.from_kwargs(
            cache_dir=cache_dir,
            ram_limit=ram_limit,
            disk_limit=disk_limit,
            chunk_size=chunk_size,
            metadata_ttl=metadata_ttl,
            policy=policy,
            max_requests=max_requests,
            max_inflight=max_inflight,
            max_coalesce=max_coalesce,
            retries=retries,
            request_timeout=request_timeout,
            readahead=readahead,
            prefetch_limit=prefetch_limit,
            prefetch_hold=prefetch_hold,
            compression=compression,
            shared=shared,
            shared_lease=shared_lease,
            trust_cache_dir=trust_cache_dir,
            direct_writes=direct_writes,
        )
        self.chunk_size = config.chunk_size
        self.ram_limit = config.ram_limit
        self.disk_limit = config.disk_limit
        self.metadata_ttl = config.metadata_ttl
        self.readahead = config.readahead
        self.fs = make_target(
            target_protocol,
            target_options,
            fs,
            loop=None if self.asynchronous else self.loop,
        )
        proto = self.fs.protocol
        self.target_protocol = proto if isinstance(proto, str) else proto[0]
        self.cache_dirs = list(config.cache_dirs)
        self.fetcher = Fetcher.from_config(self.fs, config.fetch)
        loop = None if self.asynchronous else self.loop
        self.router = build_router(config, self.fetcher, loop=loop)
        self._forked = False
        self._handles: weakref.WeakSet[PrefetchHandle] = weakref.WeakSet()
        if not self.asynchronous:
            self.router.loop = self.loop
        meta = self.router.disks[0].root / "meta" if self.router.disks else None
        self.metadata = MetadataCache(
            config.metadata_ttl, meta, trust_cache_dir=config.trust_cache_dir
        )
        #: ``ls``/``find`` results and directories, under the same TTL rules.
        self.listings = ListingCache(
            config.metadata_ttl,
            None if meta is None else meta / "listings",
            trust_cache_dir=config.trust_cache_dir,
        )
        self.resolver = VersionResolver(
            config,
            self.target_protocol,
            self.metadata,
            self.fetcher,
            self.router,
            self._target_path,
            self.listings,
        )
        register(self)  # its fork and exit hooks

    # -- event loop and fork -------------------------------------------------

    def sync_twin(self) -> CacheFileSystem:
        """Return the synchronous cache with this one's settings.

        Itself when this cache is not ``asynchronous``; otherwise fsspec's
        (shared) instance built with the same options and no
        ``asynchronous``/``loop``, which serves this cache's blocking calls.
        """
        if not self.asynchronous:
            return self
        twin: CacheFileSystem | None = vars(self).get("_twin")
        if twin is None:
            options = {
                k: v
                for k, v in self.storage_options.items()
                if k not in ("asynchronous", "loop")
            }
            twin = self._twin = type(self)(*self.storage_args, **options)
        return twin

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that runs fetches (renewed in a forked child)."""
        if self._pid != os.getpid():
            self._reinit_after_fork()
        loop: asyncio.AbstractEventLoop = self._loop
        return loop

    def after_fork(self) -> None:
        """Forget the parent's fetches in a forked child (the fork hook)."""
        self._forked = True
        self.router.after_fork()
        self.resolver.after_fork()

    def drain_at_exit(self) -> None:
        """Let fills still writing to disk finish (the exit hook)."""
        if not self.asynchronous and self.router.disks:
            self.wait_idle(timeout=_EXIT_DRAIN_SECONDS)

    def _reinit_after_fork(self) -> None:
        # DataLoader workers fork: the child gets fsspec's new loop and a
        # fresh target (its sessions belonged to the parent's loop).
        self._pid = os.getpid()
        self._loop = fsspec.asyn.get_loop()
        self.fs = self.fetcher.target = renewed(self.fs, self._loop)
        shared = self.router.shared
        if shared is not None:
            shared.fs = renewed(shared.fs, self._loop)
        if not self._forked:
            self.after_fork()
        self._forked = False
        self.router.loop = self._loop

    # -- paths ---------------------------------------------------------------

    # -- reads ---------------------------------------------------------------

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Return the bytes of ``path`` in ``[start, end)``.

        A fully cached range is served in the calling thread; only misses
        cross into the event loop.
        """
        version = self.resolver.known(self._target_path(path))
        if version is not None:
            lo, hi = clip(version.size, start, end)
            if hi <= lo:
                return b""
            keys = span_keys(version, self.chunk_size, lo, hi)
            views = [self.router.get_cached(k) for k in keys]
            if all(v is not None for v in views):
                return assemble(keys, views, lo, hi)  # type: ignore[arg-type]
        data: bytes = call_sync(
            self.loop, self._cat_file, path, start=start, end=end, **kwargs
        )
        return data

    @on_own_loop
    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        tpath = self._target_path(path)
        version, first_views = await self.resolver.version_for_read(tpath, start, end)
        lo, hi = clip(version.size, start, end)
        if hi <= lo:
            return b""
        keys = span_keys(version, self.chunk_size, lo, hi)
        try:
            views = await self.router.get_chunks(keys, first_views)
        except StaleVersionError:
            # The origin changed since the version was cached: forget it and
            # read the new version (never a mix of both).
            self.invalidate(tpath)
            if kwargs.get("_retried"):
                raise
            return await self._cat_file(tpath, start, end, _retried=True)
        return assemble(keys, views, lo, hi)

    @on_own_loop
    async def _cat_ranges(
        self,
        paths: list[str],
        starts: list[int | None] | int | None,
        ends: list[int | None] | int | None,
        max_gap: int | None = None,
        batch_size: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[bytes | Exception]:
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        n = len(paths)
        starts_l = starts if isinstance(starts, list) else [starts] * n
        ends_l = ends if isinstance(ends, list) else [ends] * n
        if len(starts_l) != n or len(ends_l) != n:
            raise ValueError("paths, starts and ends must have the same length")

        return await read_ranges(
            self.resolver,
            self.router,
            [self._target_path(p) for p in paths],
            starts_l,
            ends_l,
            on_error=on_error,
            invalidate=self.invalidate,
        )

    @on_own_loop
    async def _get_file(
        self,
        rpath: str,
        lpath: str,
        callback: Callback = DEFAULT_CALLBACK,
        **kwargs: Any,
    ) -> None:
        if await self._isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        version = await self.resolver.version(self._target_path(rpath))
        callback.set_size(version.size)
        step = max(self.chunk_size, self.router.max_coalesce)
        with open(lpath, "wb") as out:
            for lo in range(0, version.size, step):
                hi = min(lo + step, version.size)
                keys = span_keys(version, self.chunk_size, lo, hi)
                views = await self.router.get_chunks(keys)
                await asyncio.to_thread(out.writelines, views)
                callback.relative_update(hi - lo)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if mode == "rb":
            tpath = self._target_path(path)
            version = self.resolver.known(tpath)
            pinned: dict[ChunkKey, memoryview] = {}
            if version is None:
                # An unseen file's first chunks come with its size: no HEAD.
                version, pinned = call_sync(
                    self.loop, self.resolver.version_for_open, tpath
                )
            return CachedFile(
                self, version, pinned, resolver=self.resolver, router=self.router
            )
        if mode not in _WRITE_MODES:
            raise ValueError(
                f"mode={mode!r} is not supported by cachefs; "
                "use 'rb', or 'wb'/'ab'/'xb' to write through to the target"
            )
        tpath = self._target_path(path)
        try:
            inner = self.fs.open(
                tpath, mode, block_size=block_size, autocommit=autocommit, **kwargs
            )
        except NotImplementedError as exc:
            raise io.UnsupportedOperation(
                f"mode={mode!r}: the {self.target_protocol} target cannot open "
                f"{tpath} for writing"
            ) from exc
        return WriteThroughFile(inner, lambda: self.invalidate(tpath))

    # -- metadata ------------------------------------------------------------

    def invalidate(self, path: str, recursive: bool = False) -> None:
        """Forget what the cache holds for ``path``.

        Drops metadata, listings and the chunks of the known version; with
        ``recursive``, also of every known path below it.
        """
        tpath = self._target_path(path)
        self.listings.clear()
        resolver = self.resolver
        resolver.forget(resolver.known_below(tpath) if recursive else [tpath])

    # -- cache introspection -------------------------------------------------

    def cache_stats(self) -> dict[str, Any]:
        """Return counters per tier and for the origin.

        Returns
        -------
        dict
            ``{"ram": {...}, "disk": {...}, "origin": {...}, "router": {...}}``;
            each tier entry has ``hits``, ``misses``, ``hit_bytes``, ``puts``,
            ``put_bytes``, ``rejected``, ``evictions``, ``evicted_bytes``,
            ``checksum_failures``, ``usage``, ``limit`` and ``chunks``; the
            origin entry has ``requests``, ``bytes``, ``retries``, ``errors``
            and ``metadata_requests``.
        """
        return cache_stats(self.router, self.fetcher)

    # -- prefetch -------------------------------------------------------------

    def prefetch(self, items: Sequence[PrefetchItem]) -> PrefetchHandle:
        """Fetch whole files or byte ranges ahead of their reader, in order.

        Parameters
        ----------
        items
            Paths (whole files) or ``(path, start, end)`` tuples, in the
            order they will be read (a data loader's epoch order).

        Returns
        -------
        PrefetchHandle
            Wait on it (``wait``), inspect it (``progress``, ``failed``) or
            ``cancel`` it. Fetched chunks are held for their reader under
            ``prefetch_limit``, so a long list streams through. Failures are
            logged and recorded on the handle, never raised in another
            thread.
        """
        targets = prefetch_items(items, self._target_path)
        if self.router.staging is None:
            raise ValueError("prefetch is off (prefetch_limit=0)")
        handle = PrefetchHandle(self.resolver, self.router, targets)
        handle.start(None if self.asynchronous else self.loop)
        self._handles.add(handle)
        return handle

    def close(self) -> None:
        """Cancel pending prefetch and readahead and wait for fetches to stop.

        The filesystem stays usable: later reads simply fetch again.
        """
        for handle in list(self._handles):
            handle.cancel()
        if self.asynchronous:
            self.router.cancel_all()
            return
        call_sync(self.loop, self._close_on_loop, timeout=30)

    async def _close_on_loop(self) -> None:
        self.router.cancel_all()
        await self.router.drain()
        self.fetcher.close_connections()

    def wait_idle(self, timeout: float | None = None) -> None:
        """Block until every fetch in flight is stored in its tiers.

        Reads return as soon as their bytes arrive; storing them on disk
        finishes in the background. Call this before handing the cache
        directory to another process that must find everything there.
        """
        call_sync(self.loop, self.router.drain, timeout=timeout)

    def clear_cache(self) -> None:
        """Drop every cached chunk and all metadata (RAM and disk)."""
        if self.router.ram is not None:
            self.router.ram.clear()
        for d in self.router.disks:
            d.clear()
        self.listings.clear()
        self.resolver.clear()
