"""``cachefs warm``: fetch files into the node's cache ahead of training.

URLs are expanded on the target (globs, directory prefixes; a URL that
names an existing path is taken literally, ``[``, ``?`` and ``*``
included), sorted, and split between ranks with
:meth:`cachefs.data.world.World.rank_share` — the split the datasets use —
so each node warms exactly its ranks' shards. The
files are fetched as :meth:`CacheFileSystem.prefetch` fetches them (chunks
already on disk are skipped: a second warm costs no origin bytes), with
``-j`` requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from fsspec.asyn import sync
from fsspec.spec import AbstractFileSystem

from cachefs.bridge import call_sync
from cachefs.chunks import FileVersion
from cachefs.cli.format import Heartbeat, Progress, fmt_bytes, fmt_duration
from cachefs.cli.inspect import display_url
from cachefs.cli.settings import Settings, make_fs, url_protocol
from cachefs.data.world import World
from cachefs.filesystem import CacheFileSystem
from cachefs.prefetch import PrefetchHandle

__all__ = ["WarmResult", "disk_refusal", "expand_urls", "run_warm"]

# Explicit prefetch needs a staging budget; this one when config turned it off.
_STAGING_FALLBACK = 256 * 2**20


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _waiting(
    heartbeat: Heartbeat | None, what: str
) -> contextlib.AbstractContextManager[None]:
    return (
        heartbeat.waiting(what) if heartbeat is not None else contextlib.nullcontext()
    )


class BoundedListing:
    """The target's ``info``, ``find`` and ``glob``, through the fetcher.

    Each call is bounded by ``request_timeout`` and retried like a read (the
    raw target waits as long as its own client does), and nothing is
    recorded in the cache: an HTTP index page is not a file to remember.
    :meth:`ask_infos` asks for many infos at once; :meth:`info` then answers
    from them, and :meth:`asked` hands them on (a warm learns each named
    file's version from them, not from a second request).
    """

    def __init__(self, fs: CacheFileSystem, limit: int = 16) -> None:
        self._fs = fs
        self.limit = max(limit, 1)
        self._infos: dict[str, dict[str, Any] | Exception] = {}

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        fs = self._fs
        return call_sync(fs.loop, fs.fetcher.metadata, method, path, **kwargs)

    def ask_infos(self, paths: Sequence[str]) -> None:
        """Ask for the info of every path in ``paths``, :attr:`limit` at a time.

        One origin round trip for a list of named files instead of one per
        file in turn. A path's failure is kept and raised by :meth:`info`.
        """
        todo = [p for p in dict.fromkeys(paths) if p not in self._infos]
        if not todo:
            return
        fs = self._fs
        answers = call_sync(fs.loop, _ask_infos, fs.fetcher, todo, self.limit)
        for path, answer in zip(todo, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
            self._infos[path] = answer

    def asked(self, path: str) -> dict[str, Any] | None:
        """Return the info :meth:`ask_infos` got for ``path``, if it got one."""
        answer = self._infos.get(path)
        return dict(answer) if isinstance(answer, dict) else None

    def info(self, path: str) -> dict[str, Any]:
        """Return the target's info of ``path``."""
        answer = self._infos.get(path)
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return dict(answer)
        info: dict[str, Any] = self._call("info", path)
        return info

    def find(self, path: str, maxdepth: int | None = None) -> list[str]:
        """Return the files below ``path``."""
        files: list[str] = self._call("find", path, maxdepth=maxdepth)
        return files

    def glob(self, pattern: str) -> list[str]:
        """Return the paths ``pattern`` matches."""
        paths: list[str] = self._call("glob", pattern)
        return paths


async def _ask_infos(
    fetcher: Any, paths: Sequence[str], limit: int
) -> list[dict[str, Any] | BaseException]:
    gate = asyncio.Semaphore(limit)

    async def one(path: str) -> dict[str, Any]:
        async with gate:
            info: dict[str, Any] = await fetcher.metadata("info", path)
        return info

    return await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)


def expand_urls(
    target: AbstractFileSystem | BoundedListing,
    urls: Sequence[str],
    recursive: bool,
    *,
    heartbeat: Heartbeat | None = None,
) -> list[str]:
    """Return the sorted, unique files that ``urls`` name on ``target``.

    A URL is a file, a directory or prefix (its files; with ``recursive``,
    also those of its subdirectories) or a glob. Each origin call runs
    inside ``heartbeat.waiting`` so that a slow one is named.

    Raises
    ------
    FileNotFoundError
        Naming the first URL that matches nothing.
    """
    found: set[str] = set()
    _ask_infos_of(target, urls, heartbeat)
    for url in urls:
        files = _expand_one(target, url, recursive, heartbeat)
        if not files:
            raise FileNotFoundError(f"no such file or directory: {url}")
        found.update(files)
    return sorted(found)


def _expand_one(
    target: AbstractFileSystem | BoundedListing,
    url: str,
    recursive: bool,
    heartbeat: Heartbeat | None,
) -> list[str]:
    if _has_magic(url) and not _names_a_path(target, url, heartbeat):
        out: list[str] = []
        with _waiting(heartbeat, f"the listing of {url}"):
            matches = target.glob(url)
        _ask_infos_of(target, matches, heartbeat)
        for match in matches:
            out += _expand_plain(target, match, recursive, heartbeat, quiet=True)
        return out
    return _expand_plain(target, url, recursive, heartbeat, quiet=False)


def _ask_infos_of(
    target: AbstractFileSystem | BoundedListing,
    paths: Sequence[str],
    heartbeat: Heartbeat | None,
) -> None:
    """Ask for the infos of ``paths`` at once (one round trip, not one each)."""
    if not isinstance(target, BoundedListing) or not paths:
        return
    more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
    with _waiting(heartbeat, f"the info of {paths[0]}{more}"):
        target.ask_infos(paths)


def _names_a_path(
    target: AbstractFileSystem | BoundedListing,
    url: str,
    heartbeat: Heartbeat | None,
) -> bool:
    """Whether ``url``, glob characters and all, names an existing path.

    ``a[1].bin`` is a file's real name more often than a pattern for
    ``a1.bin``: taken literally when it exists (as ``ls`` and ``evict``
    take a recorded name), matched as a glob only when it does not.
    """
    try:
        with _waiting(heartbeat, f"the info of {url}"):
            target.info(url)
    except FileNotFoundError:
        return False
    return True


def _expand_plain(
    target: AbstractFileSystem | BoundedListing,
    url: str,
    recursive: bool,
    heartbeat: Heartbeat | None,
    *,
    quiet: bool,
) -> list[str]:
    try:
        with _waiting(heartbeat, f"the info of {url}"):
            info: dict[str, Any] | None = target.info(url)
    except FileNotFoundError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
            # fsspec's http reports an unreachable host as a missing file.
            raise OSError(
                f"cannot reach {url}: {' '.join(str(cause).split())}"
            ) from exc
        info = None
    is_file = info is not None and info.get("type") != "directory"
    # An HTTP "directory" is an HTML index page: list it before calling it a file.
    if is_file and not (info or {}).get("mimetype", "").startswith("text/html"):
        return [url]
    try:
        with _waiting(heartbeat, f"the listing of {url}"):
            files = list(target.find(url, maxdepth=None if recursive else 1))
    except (FileNotFoundError, NotADirectoryError):
        files = []
    if files:
        return files
    if is_file:
        return [url]
    if info is not None and not recursive and not quiet:
        raise FileNotFoundError(
            f"no files directly under {url} (add --recursive for subdirectories)"
        )
    return []


@dataclass
class WarmResult:
    """What one warm did; :meth:`as_json` is the ``--json`` output."""

    rank: int
    world_size: int
    paths: list[str]
    size: int = 0
    cached_before: int = 0
    origin_bytes: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    #: Why the disk did not store chunks (see :func:`disk_refusal`), if it did not.
    disk_error: str | None = None

    @property
    def complete(self) -> bool:
        """Whether every file asked for is now fully on disk."""
        return not self.failed and not self.incomplete

    def as_json(self) -> dict[str, Any]:
        """Return the documented JSON summary."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "files": len(self.paths),
            "bytes": self.size,
            "cached_before": self.cached_before,
            "origin_bytes": self.origin_bytes,
            "seconds": round(self.seconds, 6),
            "complete": self.complete,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "incomplete": self.incomplete,
            "disk_error": self.disk_error,
            "paths": self.paths,
        }


async def _learn(
    fs: CacheFileSystem,
    paths: Sequence[str],
    limit: int,
    heartbeat: Heartbeat | None,
    asked: Callable[[str], dict[str, Any] | None],
) -> list[FileVersion | BaseException | None]:
    """Learn each file's version, asking the origin ``limit`` at a time.

    A version this node holds as fresh (``metadata_ttl``) is taken as
    the resolver takes it. Otherwise ``asked(path)``, the info the listing
    just got from the origin, gives it: one info request per file named,
    not two. Files without one (found by ``find``) are asked for.
    ``None`` for a directory.
    """
    resolver = fs.resolver
    gate = asyncio.Semaphore(limit)

    async def one(path: str) -> FileVersion | None:
        tpath = resolver.target_path(path)
        known = resolver.known(tpath)
        if known is not None:
            return known
        info = asked(path)
        # An HTML page may be a listing: the resolver asks whether it is one.
        if info is not None and info.get("mimetype") != "text/html":
            is_dir = info.get("type") == "directory"
            return None if is_dir else resolver.from_info(tpath, info)
        async with gate:
            with _waiting(heartbeat, f"the info of {_url(fs, path)}"):
                info = await resolver.info(tpath)
        if info.get("type") == "directory":
            return None
        # With metadata_ttl=0 nothing is kept: the info itself gives it.
        return resolver.known(tpath) or resolver.from_info(tpath, info)

    return await asyncio.gather(*(one(p) for p in paths), return_exceptions=True)


def _versions(
    fs: CacheFileSystem,
    paths: Sequence[str],
    limit: int,
    heartbeat: Heartbeat | None = None,
    asked: Callable[[str], dict[str, Any] | None] = lambda path: None,
) -> tuple[list[FileVersion], list[tuple[str, str]]]:
    """Learn every file's version (at most one metadata request each, at once)."""
    versions: list[FileVersion] = []
    failed: list[tuple[str, str]] = []
    learned = sync(fs.loop, _learn, fs, paths, limit, heartbeat, asked)
    for path, version in zip(paths, learned, strict=True):
        if isinstance(version, BaseException):
            if not isinstance(version, Exception):
                raise version
            failed.append((path, _describe(version)))
        elif version is not None:
            versions.append(version)
    return versions, failed


def _url(fs: CacheFileSystem, path: str) -> str:
    """Return a target path as the user's kind of URL (as ``ls`` shows it)."""
    return display_url(fs.target_protocol, path)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.strerror is None:
        text = f"not found: {text}"
    return text.splitlines()[0]


def _cached_bytes(fs: CacheFileSystem, version: FileVersion) -> tuple[int, int]:
    """Return ``(bytes cached, bytes missing)`` of ``version``.

    Cached means on this node's disk tier or, when warming to the shared
    tier (no disk tier), present there.
    """
    have = missing = 0
    disk = fs.router.disk
    shared = fs.router.shared if disk is None else None
    for i in range(version.chunk_count(fs.chunk_size)):
        key = version.key(fs.chunk_size, i)
        if disk is not None:
            present = disk.contains(key)
        elif shared is not None:
            present = bool(shared.fs.exists(shared.path_for(key.digest)))
        else:
            present = False
        if present:
            have += key.length
        else:
            missing += key.length
    return have, missing


def warm(
    fs: CacheFileSystem,
    urls: Sequence[str],
    *,
    recursive: bool,
    world: World,
    jobs: int,
    progress_stream: TextIO,
    show_progress: bool,
    interval: float = 5.0,
) -> WarmResult:
    """Fetch the files ``urls`` name (this rank's share) into ``fs``'s disk tier.

    While it runs, ``progress_stream`` gets progress lines and, whenever
    nothing has moved for ``interval`` seconds, a line naming what it is
    waiting for (a listing, a file's info, a file's bytes).
    """
    heartbeat = Heartbeat(
        progress_stream, "warm", interval=interval, enabled=show_progress
    )
    with heartbeat:
        return _warm(
            fs,
            urls,
            recursive=recursive,
            world=world,
            jobs=jobs,
            progress_stream=progress_stream,
            show_progress=show_progress,
            interval=interval,
            heartbeat=heartbeat,
        )


def _warm(
    fs: CacheFileSystem,
    urls: Sequence[str],
    *,
    recursive: bool,
    world: World,
    jobs: int,
    progress_stream: TextIO,
    show_progress: bool,
    interval: float,
    heartbeat: Heartbeat,
) -> WarmResult:
    # Every listing call bounded by request_timeout and retried, so a silent
    # origin ends the warm with an error naming the URL.
    listing = BoundedListing(fs, jobs)
    files = expand_urls(listing, urls, recursive, heartbeat=heartbeat)
    mine = world.rank_share(files)
    result = WarmResult(world.rank, world.world_size, [_url(fs, p) for p in mine])
    started = time.monotonic()
    versions, failed = _versions(fs, mine, jobs, heartbeat, listing.asked)
    result.failed = [(_url(fs, p), e) for p, e in failed]
    result.size = sum(v.size for v in versions)
    result.cached_before = sum(_cached_bytes(fs, v)[0] for v in versions)
    base = int(fs.cache_stats()["origin"]["bytes"])
    # One clock for the progress line and the summary: origin bytes per
    # second since the warm began (listing versions and storing included).
    progress = Progress(
        progress_stream,
        "warm",
        result.size,
        interval=interval,
        enabled=show_progress,
        started=started,
    )

    def moved() -> int:
        return int(fs.cache_stats()["origin"]["bytes"]) - base

    handle = _fetch_all(fs, versions, jobs) if versions else None
    try:
        if handle is not None:
            heartbeat.probe = lambda: _bytes_of(fs, handle)
            tick = 0.1 if progress.tty else min(0.5, interval)
            seen = (0, 0)
            while not handle.wait(timeout=tick):
                now = (handle.done_bytes, moved())
                if now != seen:
                    seen = now
                    heartbeat.moved()
                progress.update(*now)
            heartbeat.probe = None
            with heartbeat.waiting("the fetched chunks to be stored in the cache"):
                fs.wait_idle()
    except BaseException:
        if handle is not None:
            handle.cancel()
        raise
    result.origin_bytes = moved()
    progress.close(result.size if handle is None else handle.done_bytes, moved())
    result.seconds = time.monotonic() - started
    if handle is not None:
        seen_urls = {p for p, _ in result.failed}
        for path, exc in handle.failed:
            if _url(fs, path) not in seen_urls:
                seen_urls.add(_url(fs, path))
                result.failed.append((_url(fs, path), _describe(exc)))
        for version in versions:
            url = _url(fs, version.path)
            if url not in seen_urls and _cached_bytes(fs, version)[1]:
                result.incomplete.append(url)
    if result.incomplete:
        result.disk_error = disk_refusal(fs)
    return result


def _fetch_all(
    fs: CacheFileSystem, versions: Sequence[FileVersion], jobs: int
) -> PrefetchHandle:
    """Start fetching every chunk of ``versions``, ``jobs`` batches at once.

    ``fs.prefetch`` keeps two batches in flight, so that a reader's next
    shard arrives first; a warm has no reader, and ``-j`` asks for ``jobs``
    requests in flight (each batch is one coalesced request).
    """
    if fs.router.staging is None:
        raise ValueError("warm needs prefetch, but prefetch_limit is 0")
    handle = PrefetchHandle(
        fs.resolver, fs.router, [v.path for v in versions], depth=jobs
    )
    handle.start(None if fs.asynchronous else fs.loop)
    return handle


def _bytes_of(fs: CacheFileSystem, handle: PrefetchHandle) -> str | None:
    path = handle.waiting_on
    return None if path is None else f"the bytes of {_url(fs, path)}"


def disk_refusal(fs: CacheFileSystem) -> str | None:
    """Say why the disk tier did not store chunks, or ``None`` if it did not refuse.

    The tier's latest refused write (``DiskTier.last_refusal``) names the
    cause; without one, a read-only or full file system under a cache
    directory is the cause. ``None`` leaves the budget as the likely one.
    """
    for disk in fs.router.disks:
        exc = getattr(disk, "last_refusal", None)
        if isinstance(exc, OSError):
            name = errno.errorcode.get(exc.errno or 0, "error")
            where = exc.filename if exc.filename is not None else disk.root
            return (
                f"the disk refused writes: {name} ({exc.strerror or exc}) "
                f"at {os.fspath(where)}"
            )
    for disk in fs.router.disks:
        try:
            st = os.statvfs(disk.root)
        except OSError:
            continue
        if st.f_flag & os.ST_RDONLY:
            return f"the disk refused writes: {disk.root} is on a read-only file system"
        if st.f_bavail * st.f_frsize < fs.chunk_size:
            free = fmt_bytes(st.f_bavail * st.f_frsize)
            return (
                f"the disk refused writes: the file system of {disk.root} is full "
                f"({free} free)"
            )
        if st.f_files and not st.f_favail:
            return (
                f"the disk refused writes: the file system of {disk.root} "
                "has no free inodes"
            )
    return None


def run_warm(settings: Settings, args: Any, out: TextIO, err: TextIO, log: Any) -> int:
    """Run ``cachefs warm``; return the exit code."""
    args.urls = [u.removeprefix("cachefs::") for u in args.urls]
    protocol = url_protocol(args.urls)
    world = World(rank=args.rank, world_size=args.world_size)
    to_shared = getattr(args, "to", "node") == "shared"
    if to_shared and not settings.values.get("shared"):
        raise ValueError(
            "warm --to shared needs a shared tier: --shared URL "
            "(or FSSPEC_CACHEFS_SHARED)"
        )
    if settings.disk_limit == 0 and not to_shared:
        raise ValueError("warm needs the disk tier, but --disk-limit is 0")
    staging = settings.values.get("prefetch_limit", "256MiB")
    overrides: dict[str, Any] = {
        # Nothing reads what warm fetches: RAM and staging only pass it on.
        "ram_limit": 0,
        "prefetch_hold": 0.0,
    }
    if to_shared:
        # Straight to the shared tier, once for all nodes: not this node's disk.
        overrides["disk_limit"] = 0
    if staging in (0, "0"):
        overrides["prefetch_limit"] = _STAGING_FALLBACK
    if args.jobs is not None:
        overrides["max_requests"] = args.jobs
    fs = make_fs(settings, protocol, **overrides)
    try:
        result = warm(
            fs,
            args.urls,
            recursive=args.recursive,
            world=world,
            jobs=args.jobs or 16,
            progress_stream=err,
            show_progress=not args.quiet,
            interval=args.progress_interval,
        )
    finally:
        fs.close()
    for path, error in result.failed:
        log(f"failed: {path}: {error}")
    for path in result.incomplete:
        if to_shared:
            where = "the shared tier"
        else:
            where = result.disk_error or "--disk-limit smaller than the data?"
        log(f"not fully cached: {path} ({where})")
    if args.json:
        import json

        out.write(json.dumps(result.as_json(), indent=2) + "\n")
    elif not args.quiet:
        share = (
            f"rank {result.rank} of {result.world_size}: "
            if result.world_size > 1
            else ""
        )
        rate = ""
        if result.origin_bytes and result.seconds > 0:
            rate = f" ({fmt_bytes(result.origin_bytes / result.seconds)}/s)"
        out.write(
            f"{share}warmed {len(result.paths)} files, {fmt_bytes(result.size)}: "
            f"{fmt_bytes(result.origin_bytes)} from origin, "
            f"{fmt_bytes(result.cached_before)} already cached, "
            f"{fmt_duration(result.seconds)}{rate}\n"
        )
        if not result.complete:
            n = len(result.failed) + len(result.incomplete)
            why = f": {result.disk_error}" if result.disk_error else ""
            out.write(f"{n} of {len(result.paths)} files are not fully cached{why}\n")
    return 0 if result.complete else 1
