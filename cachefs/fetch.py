"""Origin reads: one boundary to the target filesystem.

The :class:`Fetcher` runs every call to the target — natively for async
targets, on a worker thread for sync ones — caps concurrent requests and bytes
in flight, retries transient faults with exponential backoff and jitter, and
maps failures to builtin exceptions that name the URL and range.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from cachefs.bridge import call
from cachefs.buffers import landing_buffer, pread_into, read_into_buffer, skip
from cachefs.config import FetchConfig
from cachefs.errors import (
    OriginResponseError,
    ShortReadError,
    StaleVersionError,
    classify,
)
from cachefs.receive.pool import ConnectionPool
from cachefs.receive.ranged import DirectGet, Unsupported, stream_range
from cachefs.receive.read import RangeRead, check_content_range, total_of
from cachefs.receive.s3 import SignedGets, s3_get
from cachefs.receive.targets import http_get
from cachefs.tiers.maps import map_byte_limit

__all__ = ["FetchStats", "Fetcher", "RangeRead"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Local ``preadv`` reads on the executor at once (a thread costs an arena).
LOCAL_READS = 2
_local_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
_local_slots = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class FetchStats:
    """Counters of origin traffic.

    Attributes
    ----------
    requests
        Ranged data requests sent (retries included).
    bytes
        Data bytes received.
    retries
        Requests repeated after a transient fault.
    errors
        Reads that failed for good.
    metadata_requests
        ``info``/``ls`` calls made to the origin.
    direct
        Data requests whose body the direct receive client landed in chunk
        buffers (:mod:`cachefs.receive`); the rest went through the target.
    connections
        Connections the direct client opened (keep-alive reuses them).
    """

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    errors: int = 0
    metadata_requests: int = 0
    direct: int = 0
    connections: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return asdict(self)


class _ByteBudget:
    """Caps the bytes of requests in flight; a larger request runs alone."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> int:
        n = min(n, self.cap)
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.cap)
            self.used += n
        return n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


class Fetcher:
    """Reads byte ranges and metadata from the target filesystem.

    Parameters
    ----------
    target
        The filesystem holding the data.
    max_requests
        Concurrent origin requests (data and ``info``) at most.
    max_inflight
        Bytes of data requests in flight at most.
    retries
        Times a transient fault is retried before the read fails.
    backoff
        First retry delay in seconds; doubles each retry, with jitter.
    timeout
        Seconds one request may take before it counts as a transient fault;
        ``None`` waits forever.
    """

    def __init__(
        self,
        target: AbstractFileSystem,
        *,
        max_requests: int = 16,
        max_inflight: int = 256 * 2**20,
        retries: int = 4,
        backoff: float = 0.05,
        timeout: float | None = 60.0,
    ) -> None:
        self.target = target
        self.max_requests = max_requests
        self.max_inflight = max_inflight
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.stats = FetchStats()
        self._limits: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore, _ByteBudget]
        self._limits_loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[asyncio.AbstractEventLoop, ConnectionPool] = {}
        self._signed: SignedGets = {}

    def _caps(self) -> tuple[asyncio.Semaphore, _ByteBudget]:
        # asyncio primitives belong to one loop; a forked child has a new one.
        loop = asyncio.get_running_loop()
        if self._limits_loop is not loop:
            # Under ``ulimit -v``, bytes in flight get a quarter of the room.
            cap = min(self.max_inflight, max(map_byte_limit(), 16 * 2**20))
            self._limits = (
                loop,
                asyncio.Semaphore(self.max_requests),
                _ByteBudget(cap),
            )
            self._limits_loop = loop
        return self._limits[1], self._limits[2]

    def pool(self) -> ConnectionPool:
        """Return the running loop's pool of origin connections."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None or pool.closed:
            pool = self._pools[loop] = ConnectionPool(
                self.max_requests, on_open=self._opened
            )
            # A fetcher dropped with connections idle closes them on its loop.
            weakref.finalize(self, _close_soon, loop, pool)
        return pool

    def close_connections(self) -> None:
        """Close the running loop's idle and busy origin connections.

        Reads in flight on them fail (and are retried); later reads open
        new connections.
        """
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            pool.close()

    @classmethod
    def from_config(cls, target: AbstractFileSystem, config: FetchConfig) -> Fetcher:
        """Return a fetcher of ``target`` with the settings of ``config``."""
        return cls(
            target,
            max_requests=config.max_requests,
            max_inflight=config.max_inflight,
            retries=config.retries,
            timeout=config.timeout,
        )

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a target method by its sync name, natively when async."""
        return await call(self.target, method, *args, **kwargs)

    async def info(self, path: str) -> dict[str, Any]:
        """Return the target's ``info`` for ``path`` (retried, mapped)."""
        sem, _ = self._caps()

        async def once() -> dict[str, Any]:
            async with sem:
                self.stats.metadata_requests += 1
                result: dict[str, Any] = await self._with_timeout(
                    self.call("info", path)
                )
            return result

        return await self._retrying(once, f"info of {path}")

    async def metadata(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call a listing method (``ls``, ``find``, ...) of the target on ``path``.

        Bounded by ``timeout`` per attempt and retried like a read, so a
        silent origin fails with an error naming the call and the path.
        """
        sem, _ = self._caps()

        async def once() -> Any:
            async with sem:
                self.stats.metadata_requests += 1
                return await self._with_timeout(self.call(method, path, **kwargs))

        return await self._retrying(once, f"{method} of {path}")

    async def stream(
        self,
        path: str,
        start: int,
        stop: int,
        piece: int,
        *,
        on_piece: Callable[[int, bytes | memoryview], None],
        token: str | None = None,
        size: int | None = None,
        on_info: Callable[[dict[str, Any]], None] | None = None,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Read ``[start, stop)`` of ``path`` in one ranged request.

        Each ``piece``-aligned part is handed to ``on_piece(offset, data)`` as
        soon as it has arrived, so readers of the first chunks of a long
        coalesced range need not wait for the last. A transient fault is
        retried from the first byte not yet delivered.

        Parameters
        ----------
        path, start, stop
            The range; ``stop`` may lie past the end of the file (clipped).
        piece
            Delivery granularity (the chunk size); parts end on multiples of
            it or at the end of the range.
        on_piece
            Called on the event loop with each part.
        token
            A version token the response must match (over HTTP, by ETag):
            bytes of two versions never mix in the cache.
        size
            The size of the version being read, when known: a response that
            reports another size is a :class:`StaleVersionError`.
        on_info
            Called once with the file's info before the first part. Over HTTP
            it comes from the response headers (size from Content-Range, the
            ETag): a file is opened without a separate HEAD round trip.
        pace
            Awaited between parts (direct receive): the next waits for it.

        Raises
        ------
        FileNotFoundError, PermissionError
            As the origin reports them.
        ConnectionError, TimeoutError
            When transient faults persist past ``retries``; the message names
            the path and the range.
        StaleVersionError
            When the origin's ETag or size no longer matches the version.
        OriginResponseError
            When the response is not what was asked: another range, an
            encoded body, no usable size.
        """
        read = RangeRead(path, start, stop, piece, on_piece, token, on_info, size)
        read.pace = pace
        http = _is_http(self.target)

        async def once() -> None:
            if http:
                async with self._request_slot(stop - read.pos):
                    await self._with_timeout(self._stream_http(read))
            elif _is_s3(self.target):
                async with self._request_slot(stop - read.pos):
                    await self._with_timeout(self._stream_s3(read))
            else:
                await self._stream_generic(read)

        await self._retrying(once, f"{path} bytes {start}-{stop - 1}")

    @contextlib.asynccontextmanager
    async def _request_slot(self, nbytes: int) -> AsyncIterator[None]:
        """Hold one of ``max_requests`` slots and ``nbytes`` of the byte cap."""
        sem, budget = self._caps()
        async with sem:
            held = await budget.acquire(nbytes)
            try:
                self.stats.requests += 1
                yield
            finally:
                await budget.release(held)

    async def _stream_generic(self, read: RangeRead) -> None:
        """Any target: ``info`` (once), then one ``cat_file`` of the rest."""
        if not read.learned and (read.size is None or read.token is None):
            info = await self.info(read.path)
            if info.get("type") == "directory" or info.get("size") is None:
                raise IsADirectoryError(f"{read.path} is a directory")
            read.seen(info)
        hi = read.end()
        if hi <= read.pos:
            return
        if isinstance(self.target, LocalFileSystem):
            await self._pread_local(read, hi)
            return
        async with self._request_slot(hi - read.pos):
            data = await self._with_timeout(
                self.call("cat_file", read.path, start=read.pos, end=hi)
            )
        self._check_length(read, len(data), hi)
        self.stats.bytes += len(data)
        read.deliver_all(memoryview(data), read.pos, hi)

    async def _pread_local(self, read: RangeRead, hi: int) -> None:
        """Read a local file with ``preadv`` into landing buffers.

        ``cat_file`` would build one ``bytes`` in an executor thread's malloc
        arena (64 MiB of address space per thread; a cold pass failed under
        ``ulimit -v``). The chunks' own anonymous maps are filled by
        ``preadv``: from the page cache on the loop (``RWF_NOWAIT``), the
        rest on the executor, :data:`LOCAL_READS` at a time.
        """
        sizes, pos = [], read.pos
        while pos < hi:
            sizes.append(min(read.piece - pos % read.piece, hi - pos))
            pos += sizes[-1]
        path = self.target._strip_protocol(read.path)
        want = hi - read.pos
        if read.pace is not None:
            await self._with_timeout(read.pace())  # no new buffers until it has room
        async with self._request_slot(want):
            buffers = [landing_buffer(n) for n in sizes]
            got = pread_into(path, read.pos, buffers, nowait=True)
            if got < want:
                loop = asyncio.get_running_loop()
                slots = _local_slots.get(loop)
                if slots is None:
                    slots = _local_slots[loop] = asyncio.Semaphore(LOCAL_READS)
                rest = skip(buffers, got)
                async with slots:
                    got += await self._with_timeout(
                        loop.run_in_executor(
                            None, pread_into, path, read.pos + got, rest
                        )
                    )
        self._check_length(read, got, hi)
        self.stats.bytes += got
        for buf in buffers:
            read.deliver(buf)

    @staticmethod
    def _check_length(read: RangeRead, got: int, hi: int) -> None:
        """Refuse a generic read that returned another length than asked."""
        if got == hi - read.pos:
            return
        if got < hi - read.pos and not read.learned:  # the known version ends later
            raise StaleVersionError(
                f"{read.path} changed at the origin: {read.what()} returned "
                f"{got} bytes, the version being read has {read.size}; "
                "reopen it to read the new version"
            )
        raise ShortReadError(f"origin returned {got} bytes for {read.what()}")

    async def _stream_s3(self, read: RangeRead) -> None:
        """One ranged GET of a presigned URL, landing in the chunks' buffers.

        Targets whose options a presigned GET does not carry go through
        s3fs (:meth:`_stream_s3fs`).
        """
        get = await s3_get(self.target, read.path, self._signed)
        if not await self._stream_direct(get, read, if_match=read.etag()):
            await self._stream_s3fs(read)  # nothing was delivered: s3fs reads it

    async def _stream_s3fs(self, read: RangeRead) -> None:
        """One GetObject; parts delivered as they arrive, info from its headers.

        A known version makes the request conditional (``If-Match`` on its
        ETag): S3 refuses (412) once the object changed.
        """
        target: Any = self.target
        bucket, key, version_id = target.split_path(read.path)
        request: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "Range": f"bytes={read.pos}-{read.stop - 1}",
        }
        etag = read.etag()
        if etag is not None:
            request["IfMatch"] = etag
        if version_id:
            request["VersionId"] = version_id
        try:
            response = await target._call_s3("get_object", **request)
        except OSError as exc:
            # s3fs maps these to plain OSErrors; the botocore cause says which.
            cause = getattr(exc.__cause__, "response", None) or {}
            code = cause.get("Error", {}).get("Code")
            if code == "PreconditionFailed":
                raise StaleVersionError(
                    f"{read.path} changed at the origin (ETag is no longer "
                    f"{etag}); reopen it to read the new version"
                ) from exc
            if code == "InvalidRange":  # an empty object, or past its end
                read.seen(await self.info(read.path))
                return
            raise
        body = response["Body"]
        try:
            length = int(response["ContentLength"])
            if response.get("ContentRange"):
                size = check_content_range(read, response["ContentRange"], length)
            else:  # a whole object (the range covered it all)
                if read.pos:
                    raise OriginResponseError(
                        f"{read.what()}: the origin sent the whole object "
                        "without a ContentRange"
                    )
                size = length
            info: dict[str, Any] = {"name": read.path, "size": size, "type": "file"}
            if response.get("ETag"):
                info["ETag"] = response["ETag"]
            read.seen(info)
            hi = read.end()
            while read.pos < hi:
                data = await read_into_buffer(body.read, read.next_part(hi))
                self.stats.bytes += len(data)
                read.deliver(data)
        finally:
            body.close()

    async def _stream_http(self, read: RangeRead) -> None:
        """One ranged GET; its body lands straight in the chunks' buffers.

        The direct client (:mod:`cachefs.receive`) reads what it can
        reproduce faithfully; other targets and responses (redirects,
        chunked bodies, custom sessions) go through fsspec's session.
        """
        get = http_get(self.target, read.path)
        if not await self._stream_direct(get, read):
            # Nothing was delivered: the general client reads it.
            await self._stream_aiohttp(read)

    async def _stream_direct(
        self, get: DirectGet | None, read: RangeRead, *, if_match: str | None = None
    ) -> bool:
        """Read ``read`` with the direct client; ``False`` if it cannot.

        ``False`` when there is no direct GET for the target or the response
        is one the direct client does not reproduce (:class:`Unsupported`,
        raised before anything is delivered), so the caller's fallback reads
        the whole range.
        """
        if get is None:
            return False
        try:
            await stream_range(
                self.pool(),
                get,
                read,
                on_bytes=self._count,
                size_of=lambda: self._size_of(read.path),
                if_match=if_match,
            )
        except Unsupported:
            return False
        self.stats.direct += 1
        return True

    def _opened(self) -> None:
        self.stats.connections += 1

    def _count(self, n: int) -> None:
        self.stats.bytes += n

    async def _size_of(self, path: str) -> int:
        return int((await self.info(path))["size"])

    async def _stream_aiohttp(self, read: RangeRead) -> None:
        """One ranged GET through fsspec's HTTP session, checked as it lands.

        The identity encoding is asked for (as fsspec's own http does): a
        compressed body's length says nothing about the file's. A 206 must
        cover exactly the range asked, a 200 the whole file, and both the
        size of a version already known.
        """
        target: Any = self.target
        kwargs = dict(target.kwargs)
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Range"] = f"bytes={read.pos}-{read.stop - 1}"
        headers["Accept-Encoding"] = "identity"
        session = await target.set_session()
        url = read.path
        async with session.get(target.encode_url(url), headers=headers, **kwargs) as r:
            if r.status == 404:
                raise FileNotFoundError(url)
            encoding = r.headers.get("Content-Encoding", "identity").strip().lower()
            if r.status != 416:
                r.raise_for_status()
            if encoding not in ("", "identity"):
                raise OriginResponseError(
                    f"{read.what()}: the origin sent a {encoding}-encoded body "
                    "although the identity encoding was asked for; its length "
                    "is not the file's, so it is refused"
                )
            body: bytes | None = None
            if r.status == 416:  # the range starts past the end
                size = total_of(r.headers.get("Content-Range"))
                if size is None:
                    size = int((await self.info(url))["size"])
            elif r.status == 206:
                size = check_content_range(
                    read, r.headers.get("Content-Range", ""), r.content_length
                )
            elif r.status == 200:  # the server ignored the range: the whole file
                if r.content_length is None:  # chunked: the body is the size
                    body = await r.read()
                    size = len(body)
                else:
                    size = r.content_length
            else:
                raise OriginResponseError(
                    f"{read.what()}: unexpected HTTP status {r.status}"
                )
            info: dict[str, Any] = {"name": url, "size": size, "type": "file"}
            for field in ("ETag", "Last-Modified"):
                if r.headers.get(field):
                    info[field] = r.headers[field]
            read.seen(info)
            hi = read.end()
            if r.status == 416 or hi <= read.pos:
                return
            if body is not None:
                self.stats.bytes += hi - read.pos
                read.deliver_all(memoryview(body), 0, hi)
                return
            if r.status == 200 and read.pos:
                await r.content.readexactly(read.pos)  # what the range excluded
            while read.pos < hi:
                n = read.next_part(hi)
                try:
                    data = await read_into_buffer(r.content.read, n)
                except ShortReadError as exc:
                    raise ShortReadError(f"{exc} of {read.what()}") from exc
                self.stats.bytes += n
                read.deliver(data)

    async def _with_timeout(self, coro: Awaitable[T]) -> T:
        if self.timeout is None:
            return await coro
        return await asyncio.wait_for(coro, self.timeout)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        delay = self.backoff
        for tries in range(self.retries + 1):
            try:
                return await attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = classify(exc)
                if kind.transient and tries < self.retries:
                    self.stats.retries += 1
                    log.debug("cachefs: retrying %s after %r", what, exc)
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay *= 2
                    continue
                self.stats.errors += 1
                if isinstance(exc, kind.builtin) and not kind.transient:
                    raise
                attempts = f" after {tries + 1} attempts" if kind.transient else ""
                detail = str(exc) or (
                    f"no answer within request_timeout={self.timeout} s"
                    if isinstance(exc, TimeoutError)
                    else "no detail given"
                )
                raise kind.builtin(
                    f"cachefs: reading {what} failed{attempts}: "
                    f"{type(exc).__name__}: {detail}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _close_soon(loop: asyncio.AbstractEventLoop, pool: ConnectionPool) -> None:
    """Close ``pool`` on ``loop`` (its transports are the loop's)."""
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(pool.close)


def _is_http(target: AbstractFileSystem) -> bool:
    from fsspec.implementations.http import HTTPFileSystem

    return isinstance(target, HTTPFileSystem)


def _is_s3(target: AbstractFileSystem) -> bool:
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return False
    return isinstance(target, S3FileSystem)
