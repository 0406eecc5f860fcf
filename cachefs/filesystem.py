"""``CacheFileSystem``: the fsspec face of the cache (protocol ``cachefs``).

Reads go through the chunk router; metadata calls pass through to the target
and are cached for ``metadata_ttl`` seconds; writes pass through and
invalidate what the cache holds for the paths they touch.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook must come first
import contextlib
import functools
import io
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import AbstractFileSystem
from fsspec.utils import stringify_path

from cachefs.bridge import call_sync, name_timeouts_of
from cachefs.chunks import ChunkKey, FileVersion, parse_size, version_token
from cachefs.errors import StaleVersionError, is_absent
from cachefs.fetch import Fetcher
from cachefs.file import CachedFile
from cachefs.metadata import MetadataCache, TTLCache
from cachefs.policy import EvictionPolicy, make_policy
from cachefs.prefetch import PrefetchHandle, PrefetchItem, Staging
from cachefs.router import ChunkRouter
from cachefs.tiers.disk import DiskTier, parse_flag
from cachefs.tiers.ram import RamTier
from cachefs.tiers.shared import SharedTier
from cachefs.writes import WriteThroughFile

__all__ = ["CacheFileSystem", "default_cache_dir"]

_PREFIXES = ("cachefs::", "cachefs://")
_LIVE: dict[int, weakref.ref[CacheFileSystem]] = {}
# At exit, fills still writing to disk get this long to finish.
_EXIT_DRAIN_SECONDS = 10.0


def _drain_at_exit() -> None:
    for ref in list(_LIVE.values()):
        fs = ref()
        if fs is not None and not fs.asynchronous and fs.router.disks:
            # Best effort: the interpreter is going away.
            with contextlib.suppress(Exception):
                fs.wait_idle(timeout=_EXIT_DRAIN_SECONDS)


# The drain must run before concurrent.futures refuses new work at exit (its
# own hook runs when threading shuts down, before atexit): a fill still
# streaming would otherwise lose its disk writes ("cannot schedule new
# futures after interpreter shutdown"). Threading's exit hooks run newest
# first, so registering after concurrent.futures is imported puts this one
# ahead of it; atexit is the fallback where that hook does not exist.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_drain_at_exit)
else:  # pragma: no cover - every CPython >= 3.9 has it
    atexit.register(_drain_at_exit)


def _after_fork_in_child() -> None:
    # Locks another thread held at fork would never be released in the
    # child; the parent's fetches, loop and sessions are not the child's.
    for ref in list(_LIVE.values()):
        fs = ref()
        if fs is not None:
            fs._forked = True
            fs.router.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

_WRITE_MODES = frozenset({"wb", "ab", "xb"})


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/cachefs`` (``~/.cache/cachefs`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(base) / "cachefs"


def _check_count(value: Any, name: str, *, minimum: int = 1) -> int:
    from cachefs.chunks import parse_count  # one parser: see chunks.py

    return parse_count(value, name, minimum=minimum)


def _check_seconds(value: Any, name: str, *, allow_none: bool) -> float | None:
    from cachefs.chunks import parse_seconds  # one parser, the CLI's too

    return parse_seconds(value, name, allow_none=allow_none)


_T = TypeVar("_T")


def _on_own_loop(
    method: Callable[..., Coroutine[Any, Any, _T]],
) -> Callable[..., Coroutine[Any, Any, _T]]:
    """Run an async method on the filesystem's loop, whoever awaits it.

    A non-``asynchronous`` instance keeps its fetches, sessions and locks on
    fsspec's loop; a library awaiting its coroutines from another loop (zarr's
    ``FsspecStore`` does) is served by handing the call over to that loop.
    """

    @functools.wraps(method)
    async def on_own_loop(self: CacheFileSystem, *args: Any, **kwargs: Any) -> _T:
        if not self.asynchronous and asyncio.get_running_loop() is not self.loop:
            coro = method(self, *args, **kwargs)
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
            return await asyncio.wrap_future(fut)
        return await method(self, *args, **kwargs)

    return on_own_loop


_CODECS = {"zstd": {"id": "zstd", "level": 1}, "lz4": {"id": "lz4"}}


def _make_codec(compression: Any) -> Any:
    """Return a numcodecs codec for the ``compression`` keyword (or None)."""
    if compression is None:
        return None
    import numcodecs
    from numcodecs.abc import Codec

    if isinstance(compression, Codec):
        return compression
    config = _CODECS.get(compression) if isinstance(compression, str) else compression
    if not isinstance(config, dict):
        raise ValueError(
            f"compression={compression!r} is not a codec; use None, "
            f"{', '.join(repr(n) for n in _CODECS)}, a numcodecs config dict "
            "or a codec object"
        )
    try:
        return numcodecs.get_codec(dict(config))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"compression={compression!r}: {exc}") from exc


def _keep(
    views: dict[ChunkKey, memoryview], key: ChunkKey, fut: asyncio.Future[memoryview]
) -> None:
    """Add a fetched chunk to ``views`` (a done callback; failures are left)."""
    if not fut.cancelled() and fut.exception() is None:
        views[key] = fut.result()


class _CacheFileSystemType(type(AsyncFileSystem)):  # type: ignore[misc]
    """fsspec's instance cache, with settings normalised and named timeouts."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("target_options"):
            # URL chaining always passes ``target_options={}``: the same
            # settings as none at all, so the same instance.
            kwargs.pop("target_options", None)
        # fsspec's token hashes the keywords in the order given: sorted, the
        # same settings make the same token however they were spelled.
        obj = super().__call__(*args, **dict(sorted(kwargs.items())))
        name_timeouts_of(obj)
        return obj


class CacheFileSystem(
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
        policy: str | EvictionPolicy = "lru",
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
        **kwargs: Any,
    ) -> None:
        kwargs.pop("fo", None)  # the path fsspec's URL chaining passes along
        super().__init__(**kwargs)
        self.chunk_size = parse_size(chunk_size, "chunk_size", allow_zero=False)
        self.ram_limit = parse_size(ram_limit, "ram_limit")
        self.disk_limit = parse_size(disk_limit, "disk_limit")
        self.metadata_ttl = _check_seconds(
            metadata_ttl, "metadata_ttl", allow_none=True
        )
        retries = _check_count(retries, "retries", minimum=0)
        timeout = _check_seconds(request_timeout, "request_timeout", allow_none=True)
        self.fs = self._make_target(target_protocol, target_options, fs)
        proto = self.fs.protocol
        self.target_protocol = proto if isinstance(proto, str) else proto[0]
        dirs = self._cache_dirs(cache_dir)
        make_policy(policy)  # validate the name before touching the disk
        disks = []
        codec = _make_codec(compression)
        trust = parse_flag(trust_cache_dir, "trust_cache_dir")
        if self.disk_limit:
            share = self.disk_limit // len(dirs)
            disks = [
                DiskTier(
                    d, share, make_policy(policy), codec=codec, trust_cache_dir=trust
                )
                for d in dirs
            ]
        self.cache_dirs = dirs
        ram = RamTier(self.ram_limit, make_policy(policy)) if self.ram_limit else None
        self.fetcher = Fetcher(
            self.fs,
            max_requests=_check_count(max_requests, "max_requests"),
            max_inflight=parse_size(max_inflight, "max_inflight", allow_zero=False),
            retries=retries,
            timeout=timeout,
        )
        self.readahead = parse_size(readahead, "readahead")
        limit = parse_size(prefetch_limit, "prefetch_limit")
        hold = _check_seconds(prefetch_hold, "prefetch_hold", allow_none=False)
        assert hold is not None
        self.router = ChunkRouter(
            ram,
            disks,
            self.fetcher,
            max_coalesce=parse_size(max_coalesce, "max_coalesce", allow_zero=False),
            staging=Staging(limit, hold) if limit else None,
            shared=self._make_shared(shared, codec, shared_lease),
        )
        self._forked = False
        self._resolving: dict[str, asyncio.Future[FileVersion]] = {}
        #: Bytes an open reads with its first request: one chunk, or the
        #: first readahead window once opened files are read sequentially.
        # Optimistic at first (training data is read front to back): the
        # first request of an unseen file covers the readahead window, so its
        # second chunk is not asked for only after the first has arrived.
        # A file read at random narrows later opens to one chunk.
        self._open_span = max(
            self.chunk_size, min(self.readahead, self.router.max_coalesce)
        )
        self._handles: weakref.WeakSet[PrefetchHandle] = weakref.WeakSet()
        if not self.asynchronous:
            self.router.loop = self.loop
        self.metadata = MetadataCache(
            self.metadata_ttl,
            disks[0].root / "meta" if disks else None,
            trust_cache_dir=trust,
        )
        self._infos = TTLCache(self.metadata_ttl)
        self._listings = TTLCache(self.metadata_ttl)
        key = id(self)
        _LIVE[key] = weakref.ref(self, lambda _: _LIVE.pop(key, None))

    # -- construction helpers ------------------------------------------------

    def _make_target(
        self,
        target_protocol: str | None,
        target_options: dict[str, Any] | None,
        fs: AbstractFileSystem | None,
    ) -> AbstractFileSystem:
        if (fs is None) == (target_protocol is None):
            raise TypeError(
                "CacheFileSystem needs exactly one of fs= or target_protocol="
            )
        if fs is not None:
            if target_options:
                raise TypeError("target_options cannot be combined with fs=")
            if not isinstance(fs, AbstractFileSystem):
                raise TypeError(
                    f"fs must be an fsspec filesystem, got {type(fs).__name__}"
                )
            return fs
        if not isinstance(target_protocol, str):
            raise TypeError(
                f"target_protocol must be a str, got {type(target_protocol).__name__}"
            )
        if target_options is not None and not isinstance(target_options, dict):
            raise TypeError(
                f"target_options must be a dict, got {type(target_options).__name__}"
            )
        return self._build_fs(target_protocol, target_options or {}, "target_protocol")

    def _build_fs(
        self, protocol: str, options: dict[str, Any], param: str
    ) -> AbstractFileSystem:
        options = dict(options)
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            raise ValueError(f"{param}={protocol!r}: {exc}") from exc
        if getattr(cls, "async_impl", False):
            # Share our loop so its coroutines run natively in our fetches.
            options.setdefault("asynchronous", self.asynchronous)
            if not self.asynchronous:
                options.setdefault("loop", self.loop)
        built: AbstractFileSystem = cls(**options)
        return built

    def _make_shared(self, shared: Any, codec: Any, lease: Any) -> SharedTier | None:
        """Build the shared tier from ``shared=URL`` or ``shared={...}``."""
        lease_time = _check_seconds(lease, "shared_lease", allow_none=False)
        assert lease_time is not None
        if shared is None:
            return None
        if isinstance(shared, str):
            protocol, root = fsspec.core.split_protocol(shared)
            protocol = protocol or "file"
            options: dict[str, Any] = {}
        elif isinstance(shared, dict):
            unknown = set(shared) - {"protocol", "root", "options"}
            if unknown or not isinstance(shared.get("root"), str):
                raise ValueError(
                    "shared must be a URL or a dict with 'protocol', 'root' and "
                    f"optional 'options', got {shared!r}"
                )
            protocol = shared.get("protocol", "file")
            root = shared["root"]
            options = dict(shared.get("options") or {})
        else:
            raise TypeError(
                f"shared must be a URL or a dict, got {type(shared).__name__}"
            )
        if not isinstance(protocol, str):
            raise TypeError(f"shared protocol must be a str, got {protocol!r}")
        fs = self._build_fs(protocol, options, "shared")
        root = str(fs._strip_protocol(root)).rstrip("/")
        if not root:
            raise ValueError(f"shared={shared!r} names no directory or prefix")
        return SharedTier(fs, root, codec, lease_time=lease_time)

    @staticmethod
    def _cache_dirs(
        cache_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    ) -> list[Path]:
        if cache_dir is None:
            return [default_cache_dir()]
        if isinstance(cache_dir, str | os.PathLike):
            items: list[Any] = [cache_dir]
        elif isinstance(cache_dir, Sequence):
            items = list(cache_dir)
        else:
            raise TypeError(
                "cache_dir must be a path or a list of paths, "
                f"got {type(cache_dir).__name__}"
            )
        if not items:
            raise ValueError("cache_dir must name at least one directory")
        for item in items:
            if not isinstance(item, str | os.PathLike) or not os.fspath(item):
                raise TypeError(f"cache_dir entries must be paths, got {item!r}")
        return [Path(os.fspath(item)).expanduser().absolute() for item in items]

    # -- event loop and fork -------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop that runs fetches (renewed in a forked child)."""
        if self._pid != os.getpid():
            self._reinit_after_fork()
        loop: asyncio.AbstractEventLoop = self._loop
        return loop

    def _reinit_after_fork(self) -> None:
        # DataLoader workers fork: the child gets fsspec's new loop and a
        # fresh target (its sessions belonged to the parent's loop).
        self._pid = os.getpid()
        self._loop = fsspec.asyn.get_loop()
        self.fs = self.fetcher.target = self._renewed(self.fs)
        shared = self.router.shared
        if shared is not None:
            shared.fs = self._renewed(shared.fs)
        if not self._forked:
            self.router.after_fork()
        self._forked = False
        self.router.loop = self._loop

    def _renewed(self, fs: AbstractFileSystem) -> AbstractFileSystem:
        """Rebuild an async filesystem whose loop and sessions were the parent's."""
        if not getattr(fs, "async_impl", False):
            return fs
        options = dict(fs.storage_options)
        if "loop" in options:
            options["loop"] = self._loop
        options["skip_instance_cache"] = True
        renewed: AbstractFileSystem = type(fs)(*fs.storage_args, **options)
        return renewed

    # -- paths ---------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for prefix in _PREFIXES:
            if path.startswith(prefix):
                return path[len(prefix) :]
        return path

    def _target_path(self, path: str) -> str:
        return str(self.fs._strip_protocol(self._strip_protocol(path)))

    def unstrip_protocol(self, name: str) -> str:
        """Return the chained URL ``cachefs::<target URL>`` for ``name``."""
        return "cachefs::" + str(self.fs.unstrip_protocol(self._target_path(name)))

    # -- versions ------------------------------------------------------------

    def _known_version(self, path: str) -> FileVersion | None:
        return self.metadata.get(self.target_protocol, path)

    async def _version(self, path: str) -> FileVersion:
        tpath = self._target_path(path)
        version = self._known_version(tpath)
        if version is not None:
            return version
        info = await self._info(tpath)
        version = self._known_version(tpath)
        if version is None:  # metadata_ttl=0: nothing is kept
            version = self._version_from_info(tpath, info)
        return version

    def _version_from_info(self, path: str, info: dict[str, Any]) -> FileVersion:
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{path} is a directory")
        size = info.get("size")
        if size is None:
            raise OSError(f"the origin reports no size for {path}")
        version = FileVersion(
            self.target_protocol, path, int(size), version_token(info)
        )
        known = self.metadata.get(self.target_protocol, path)
        self.metadata.put(version)
        if known is not None and known != version:
            self._drop_chunks(known)  # the origin changed: dead weight
        return version

    def _drop_chunks(self, version: FileVersion) -> None:
        """Remove every chunk of ``version`` from the tiers."""
        if version.size:
            self.router.discard(self._span_keys(version, 0, version.size))

    def _span_keys(self, version: FileVersion, start: int, stop: int) -> list[ChunkKey]:
        cs = self.chunk_size
        return [version.key(cs, i) for i in range(start // cs, (stop - 1) // cs + 1)]

    @staticmethod
    def _clip(size: int, start: int | None, end: int | None) -> tuple[int, int]:
        start = 0 if start is None else (max(size + start, 0) if start < 0 else start)
        end = size if end is None else (max(size + end, 0) if end < 0 else end)
        return min(start, size), min(end, size)

    @staticmethod
    def _assemble(
        keys: list[ChunkKey], views: Sequence[memoryview], start: int, stop: int
    ) -> bytes:
        if stop <= start:
            return b""
        parts = [
            view[max(start, k.start) - k.start : min(stop, k.stop) - k.start]
            for k, view in zip(keys, views, strict=True)
        ]
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    # -- reads ---------------------------------------------------------------

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Return the bytes of ``path`` in ``[start, end)``.

        A fully cached range is served in the calling thread; only misses
        cross into the event loop.
        """
        version = self._known_version(self._target_path(path))
        if version is not None:
            lo, hi = self._clip(version.size, start, end)
            if hi <= lo:
                return b""
            keys = self._span_keys(version, lo, hi)
            views = [self.router.get_cached(k) for k in keys]
            if all(v is not None for v in views):
                return self._assemble(keys, views, lo, hi)  # type: ignore[arg-type]
        data: bytes = call_sync(
            self.loop, self._cat_file, path, start=start, end=end, **kwargs
        )
        return data

    @_on_own_loop
    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        tpath = self._target_path(path)
        version = self._known_version(tpath)
        first_views: dict[ChunkKey, memoryview] = {}
        if version is None:
            if (start is not None and start < 0) or not self._first_read_fetches(tpath):
                version = await self._version(tpath)
            else:
                # Learn size and version from the first ranged read itself.
                first = (start or 0) // self.chunk_size * self.chunk_size
                span = self.router.max_coalesce
                if end is not None and end >= 0:
                    span = min(span, max(end - first, 1))
                version, first_views = await self._resolve_span(tpath, first, span)
        lo, hi = self._clip(version.size, start, end)
        if hi <= lo:
            return b""
        keys = self._span_keys(version, lo, hi)
        try:
            views = await self.router.get_chunks(keys, first_views)
        except StaleVersionError:
            # The origin changed since the version was cached: forget it and
            # read the new version (never a mix of both).
            self.invalidate(tpath)
            if kwargs.get("_retried"):
                raise
            return await self._cat_file(tpath, start, end, _retried=True)
        return self._assemble(keys, views, lo, hi)

    def _note_access(self, sequential: bool) -> None:
        """Widen the first read of an open after files read sequentially."""
        window = min(self.readahead, self.router.max_coalesce)
        self._open_span = (
            max(window, self.chunk_size) if sequential else self.chunk_size
        )

    def _first_read_fetches(self, tpath: str) -> bool:
        """Whether learning ``tpath``'s version may also fetch its first bytes.

        Only for a file this cache has never seen and with no shared tier:
        otherwise its chunks may be cached already, and a metadata call is
        the cheaper way to learn which version they must match.
        """
        return self.router.shared is None and not self.metadata.seen(
            self.target_protocol, tpath
        )

    async def _resolve_span(
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
        staging = self.router.staging
        pending = self._resolving.get(tpath)
        lock = None if pending else self.router.file_lock(self.target_protocol, tpath)
        if pending is not None or (lock is not None and not lock.try_acquire()):
            if staged and staging is not None:
                staging.unreserve(reserved)
            if pending is not None:
                return await asyncio.shield(pending), {}
            assert lock is not None
            await self.router.acquire(lock)  # another process is reading it
            lock.release()
            return await self._version(tpath), {}
        loop = asyncio.get_running_loop()
        resolving: asyncio.Future[FileVersion] = loop.create_future()
        resolving.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._resolving[tpath] = resolving
        cs = self.chunk_size
        began = time.perf_counter()

        def make_version(info: dict[str, Any]) -> FileVersion:
            self._infos.put(tpath, info)
            return self._version_from_info(tpath, info)

        try:
            stop = start + max(cs, -(-length // cs) * cs)
            version = await self.router.open_stream(
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
                    self.metadata.put_missing(self.target_protocol, tpath)
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
            span_keys = self._span_keys(version, start, min(stop, version.size))
            waits = {k: f for k in span_keys if (f := self.router.inflight(k))}
            if span_keys[0] in waits:
                views[span_keys[0]] = await asyncio.shield(waits.pop(span_keys[0]))
            for key, fut in waits.items():
                fut.add_done_callback(functools.partial(_keep, views, key))
            self.router.stats.wait_seconds += time.perf_counter() - began
        return version, views

    @_on_own_loop
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

        # Resolve each file once, then ask the router for every chunk of
        # every range together, so adjacent misses coalesce across ranges.
        unique = list(dict.fromkeys(self._target_path(p) for p in paths))
        found = await asyncio.gather(
            *(self._version(p) for p in unique), return_exceptions=True
        )
        versions = dict(zip(unique, found, strict=True))
        wanted: dict[ChunkKey, None] = {}
        plans: list[tuple[list[ChunkKey], int, int] | BaseException] = []
        for path, start, end in zip(paths, starts_l, ends_l, strict=True):
            version = versions[self._target_path(path)]
            if isinstance(version, BaseException):
                plans.append(version)
                continue
            lo, hi = self._clip(version.size, start, end)
            keys = self._span_keys(version, lo, hi) if hi > lo else []
            wanted.update(dict.fromkeys(keys))
            plans.append((keys, lo, hi))
        fetched: dict[ChunkKey, memoryview] = {}
        results: list[Any]
        try:
            keys = list(wanted)
            views = await self.router.get_chunks(keys) if keys else []
            fetched = dict(zip(keys, views, strict=True))
        except Exception:
            # Some chunk failed: read range by range, so that each range
            # reports its own outcome, all against the versions resolved
            # above (one call, one version per file: never re-resolved here).
            outcomes = await asyncio.gather(
                *(
                    self.router.get_chunks(plan[0])
                    for plan in plans
                    if not isinstance(plan, BaseException)
                ),
                return_exceptions=True,
            )
            got = iter(outcomes)
            results = []
            for path, plan in zip(paths, plans, strict=True):
                if isinstance(plan, BaseException):
                    results.append(plan)
                    continue
                outcome = next(got)
                if isinstance(outcome, StaleVersionError):
                    self.invalidate(path)  # the next call learns the new one
                results.append(
                    outcome
                    if isinstance(outcome, BaseException)
                    else self._assemble(plan[0], outcome, *plan[1:])
                )
        else:
            results = [
                plan
                if isinstance(plan, BaseException)
                else self._assemble(plan[0], [fetched[k] for k in plan[0]], *plan[1:])
                for plan in plans
            ]
        out: list[bytes | Exception] = []
        for r in results:
            if isinstance(r, BaseException):
                if on_error == "raise" or not isinstance(r, Exception):
                    raise r
                out.append(r)
            else:
                out.append(r)
        return out

    @_on_own_loop
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
        version = await self._version(rpath)
        callback.set_size(version.size)
        step = max(self.chunk_size, self.router.max_coalesce)
        with open(lpath, "wb") as out:
            for lo in range(0, version.size, step):
                hi = min(lo + step, version.size)
                keys = self._span_keys(version, lo, hi)
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
            version = self._known_version(tpath)
            pinned: dict[ChunkKey, memoryview] = {}
            if version is None:
                if self.readahead and self._first_read_fetches(tpath):
                    # The first chunks come with the size: no HEAD round trip.
                    version, pinned = call_sync(
                        self.loop, self._resolve_span, tpath, 0, self._open_span
                    )
                else:
                    version = call_sync(self.loop, self._version, tpath)
            return CachedFile(self, version, pinned)
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

    @_on_own_loop
    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        tpath = self._target_path(path)
        cached = self._infos.get(tpath)
        if cached is not None:
            return dict(cached)
        if self.metadata.is_missing(self.target_protocol, tpath):
            # A miss is remembered like a version: a warmed store's absent
            # keys (zarr's probes) cost no origin request, offline included.
            raise FileNotFoundError(tpath)
        if self.metadata_ttl is None:
            # Versions are trusted forever: a warmed cache answers for its
            # files without the origin (which may be unreachable).
            known = self.metadata.get(self.target_protocol, tpath)
            if known is not None:
                return {
                    "name": tpath,
                    "size": known.size,
                    "type": "file",
                    "version": known.token,
                }
        try:
            info: dict[str, Any] = await self.fetcher.info(tpath)
        except FileNotFoundError as exc:
            if is_absent(exc):
                self.metadata.put_missing(self.target_protocol, tpath)
            raise
        self._infos.put(tpath, info)
        if info.get("type") != "directory" and info.get("size") is not None:
            self._version_from_info(tpath, info)
        return dict(info)

    @_on_own_loop
    async def _isdir(self, path: str) -> bool:
        # The target decides what a directory is (fsspec's http: a page that
        # lists links, whatever its info says); a file this cache knows is
        # not one, and needs no origin request.
        tpath = self._target_path(path)
        if self._known_version(tpath) is not None:
            return False
        cached = self._infos.get(tpath)
        if cached is not None and cached.get("type") == "directory":
            return True
        return bool(await self.fetcher.metadata("isdir", tpath))

    @_on_own_loop
    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        tpath = self._target_path(path)
        listing = self._listings.get(tpath)
        if listing is None:
            listing = await self.fetcher.metadata("ls", tpath, detail=True, **kwargs)
            self._listings.put(tpath, listing)
            for entry in listing:
                # http listings carry no sizes: such entries are no info.
                if entry.get("size") is not None or entry.get("type") == "directory":
                    self._infos.put(entry["name"], entry)
        if detail:
            return [dict(e) for e in listing]
        return [e["name"] for e in listing]

    @_on_own_loop
    async def _find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        **kwargs: Any,
    ) -> Any:
        return await self.fetcher.metadata(
            "find",
            self._target_path(path),
            maxdepth=maxdepth,
            withdirs=withdirs,
            **kwargs,
        )

    # -- writes (pass through, then invalidate) ------------------------------

    @_on_own_loop
    async def _pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        tpath = self._target_path(path)
        try:
            await self.fetcher.call("pipe_file", tpath, value, **kwargs)
        finally:
            self.invalidate(tpath)

    @_on_own_loop
    async def _put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Callback = DEFAULT_CALLBACK,
        **kwargs: Any,
    ) -> None:
        tpath = self._target_path(rpath)
        try:
            await self.fetcher.call(
                "put_file", lpath, tpath, callback=callback, **kwargs
            )
        finally:
            self.invalidate(tpath)

    @_on_own_loop
    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        tpath = self._target_path(path2)
        try:
            await self.fetcher.call(
                "cp_file", self._target_path(path1), tpath, **kwargs
            )
        finally:
            self.invalidate(tpath)

    @_on_own_loop
    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        tpath = self._target_path(path)
        try:
            await self.fetcher.call("rm_file", tpath, **kwargs)
        finally:
            self.invalidate(tpath)

    @_on_own_loop
    async def _rm(
        self,
        path: str | list[str],
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        paths = path if isinstance(path, list) else [path]
        tpaths = [self._target_path(p) for p in paths]
        try:
            await self.fetcher.call(
                "rm", tpaths, recursive=recursive, maxdepth=maxdepth
            )
        finally:
            for tpath in tpaths:
                self.invalidate(tpath, recursive=True)

    @_on_own_loop
    async def _mkdir(
        self, path: str, create_parents: bool = True, **kwargs: Any
    ) -> None:
        self._listings.clear()
        await self.fetcher.call(
            "mkdir", self._target_path(path), create_parents=create_parents, **kwargs
        )

    @_on_own_loop
    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        self._listings.clear()
        await self.fetcher.call("makedirs", self._target_path(path), exist_ok=exist_ok)

    @_on_own_loop
    async def _rmdir(self, path: str) -> None:
        self.invalidate(path, recursive=True)
        await self.fetcher.call("rmdir", self._target_path(path))

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, **kwargs: Any
    ) -> None:
        """Move on the target, then invalidate both sides."""
        try:
            self.fs.mv(
                self._strip_protocol(path1),
                self._strip_protocol(path2),
                recursive=recursive,
                **kwargs,
            )
        finally:
            for p in (path1, path2):
                for one in p if isinstance(p, list) else [p]:
                    self.invalidate(one, recursive=True)

    def invalidate(self, path: str, recursive: bool = False) -> None:
        """Forget what the cache holds for ``path``.

        Drops metadata, listings and the chunks of the known version; with
        ``recursive``, also of every known path below it.
        """
        tpath = self._target_path(path)
        self._infos.clear()
        self._listings.clear()
        paths = [tpath]
        if recursive:
            prefix = tpath.rstrip("/") + "/"
            paths += [
                p
                for p in self.metadata.known_paths(self.target_protocol)
                if p.startswith(prefix)
            ]
        for p in paths:
            old = self.metadata.drop(self.target_protocol, p)
            if old is not None:
                self._drop_chunks(old)

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
        out: dict[str, Any] = {}
        ram = self.router.ram
        if ram is not None:
            out["ram"] = {
                **ram.stats.as_dict(),
                "usage": ram.usage(),
                "limit": ram.limit,
                "chunks": len(ram),
            }
        if self.router.disks:
            disk: dict[str, Any] = {}
            for d in self.router.disks:
                for name, value in d.stats.as_dict().items():
                    disk[name] = disk.get(name, 0) + value
            disk["usage"] = sum(d.usage() for d in self.router.disks)
            disk["limit"] = sum(d.limit for d in self.router.disks)
            disk["dirs"] = [str(d.root) for d in self.router.disks]
            out["disk"] = disk
        if self.router.shared is not None:
            out["shared"] = {
                **self.router.shared.stats.as_dict(),
                "url": self.router.shared.fs.unstrip_protocol(self.router.shared.root),
            }
        if self.router.staging is not None:
            out["prefetch"] = self.router.staging.stats.as_dict()
        out["origin"] = self.fetcher.stats.as_dict()
        out["router"] = self.router.stats.as_dict()
        return out

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
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise TypeError(
                "prefetch takes a list of paths or (path, start, end) tuples"
            )
        if self.router.staging is None:
            raise ValueError("prefetch is off (prefetch_limit=0)")
        handle = PrefetchHandle(self, [self._prefetch_item(i) for i in items])
        if self.asynchronous:
            handle._future = asyncio.get_running_loop().create_task(handle.run())
        else:
            handle._future = asyncio.run_coroutine_threadsafe(handle.run(), self.loop)
        self._handles.add(handle)
        return handle

    def _prefetch_item(self, item: Any) -> PrefetchItem:
        if isinstance(item, str | os.PathLike):
            return self._target_path(os.fspath(item))
        if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str):
            return (self._target_path(item[0]), item[1], item[2])
        raise TypeError(
            f"prefetch items must be paths or (path, start, end) tuples, got {item!r}"
        )

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
        self._infos.clear()
        self._listings.clear()
        for p in list(self.metadata.known_paths(self.target_protocol)):
            self.metadata.drop(self.target_protocol, p)
