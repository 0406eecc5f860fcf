"""Origin reads: one boundary to the target filesystem.

The :class:`Fetcher` runs every call to the target — natively for async
targets, on a worker thread for sync ones — caps concurrent requests and bytes
in flight, retries transient faults with exponential backoff and jitter, and
maps failures to builtin exceptions that name the URL and range.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from fsspec.spec import AbstractFileSystem

from cachefs.errors import ShortReadError, StaleVersionError, classify

__all__ = ["FetchStats", "Fetcher"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    """

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    errors: int = 0
    metadata_requests: int = 0

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

    def _caps(self) -> tuple[asyncio.Semaphore, _ByteBudget]:
        # asyncio primitives belong to one loop; a forked child has a new one.
        loop = asyncio.get_running_loop()
        if self._limits_loop is not loop:
            self._limits = (
                loop,
                asyncio.Semaphore(self.max_requests),
                _ByteBudget(self.max_inflight),
            )
            self._limits_loop = loop
        return self._limits[1], self._limits[2]

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a target method by its sync name, natively when async."""
        target = self.target
        if target.async_impl:
            coro = getattr(target, "_" + method)(*args, **kwargs)
            if target.asynchronous or target.loop is asyncio.get_running_loop():
                return await coro
            fut = asyncio.run_coroutine_threadsafe(coro, target.loop)
            return await asyncio.wrap_future(fut)
        return await asyncio.to_thread(getattr(target, method), *args, **kwargs)

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

    async def fetch(
        self, path: str, start: int, stop: int, token: str | None = None
    ) -> bytes:
        """Return exactly the bytes ``[start, stop)`` of ``path``.

        With ``token`` (a version token) over HTTP, the response's ETag must
        match it, so bytes of two versions never mix in the cache.

        Raises
        ------
        FileNotFoundError, PermissionError
            As the origin reports them.
        ConnectionError, TimeoutError
            When transient faults persist past ``retries``; the message names
            the path and the range.
        StaleVersionError
            When the origin's ETag no longer matches ``token``.
        """
        sem, budget = self._caps()
        http = _is_http(self.target)

        async def once() -> bytes:
            async with sem:
                held = await budget.acquire(stop - start)
                try:
                    self.stats.requests += 1
                    if http:
                        info, data = await self._with_timeout(
                            _http_get_range(self.target, path, start, stop)
                        )
                        _check_version(path, info, token)
                    else:
                        data = await self._with_timeout(
                            self.call("cat_file", path, start=start, end=stop)
                        )
                finally:
                    await budget.release(held)
            if len(data) != stop - start:
                raise ShortReadError(
                    f"origin returned {len(data)} bytes for a {stop - start}-byte range"
                )
            self.stats.bytes += len(data)
            return bytes(data) if not isinstance(data, bytes) else data

        return await self._retrying(once, f"{path} bytes {start}-{stop - 1}")

    async def fetch_with_info(
        self, path: str, start: int, stop: int
    ) -> tuple[dict[str, Any], bytes]:
        """Return ``path``'s info and its bytes ``[start, stop)`` (clipped).

        Over HTTP this is one ranged GET: the response's ``Content-Range``
        and ``ETag`` carry the size and version, so opening a file costs no
        separate HEAD round trip. Other targets ask ``info`` first.
        """
        if not _is_http(self.target):
            info = await self.info(path)
            if info.get("type") == "directory" or info.get("size") is None:
                return info, b""
            size = int(info["size"])
            lo, hi = min(start, size), min(stop, size)
            return info, (await self.fetch(path, lo, hi) if hi > lo else b"")
        sem, budget = self._caps()

        async def once() -> tuple[dict[str, Any], bytes]:
            async with sem:
                held = await budget.acquire(stop - start)
                try:
                    self.stats.requests += 1
                    info, body = await self._with_timeout(
                        _http_get_range(self.target, path, start, stop)
                    )
                finally:
                    await budget.release(held)
            self.stats.bytes += len(body)
            return info, body

        return await self._retrying(once, f"{path} bytes {start}-{stop - 1}")

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
                raise kind.builtin(
                    f"cachefs: reading {what} failed{attempts}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _check_version(path: str, info: dict[str, Any], token: str | None) -> None:
    etag = info.get("ETag")
    if token is None or etag is None or not token.startswith("ETag:"):
        return
    if f"ETag:{str(etag).strip()}" != token:
        raise StaleVersionError(
            f"{path} changed at the origin (ETag {etag}, expected "
            f"{token[5:]}); reopen it to read the new version"
        )


def _is_http(target: AbstractFileSystem) -> bool:
    from fsspec.implementations.http import HTTPFileSystem

    return isinstance(target, HTTPFileSystem)


async def _http_get_range(
    target: Any, url: str, start: int, stop: int
) -> tuple[dict[str, Any], bytes]:
    """One ranged GET through fsspec's HTTP session; info from its headers."""
    kwargs = dict(target.kwargs)
    headers = dict(kwargs.pop("headers", None) or {})
    headers["Range"] = f"bytes={start}-{stop - 1}"
    session = await target.set_session()
    async with session.get(target.encode_url(url), headers=headers, **kwargs) as r:
        if r.status == 404:
            raise FileNotFoundError(url)
        if r.status == 416:  # the range starts past the end
            size = int(r.headers.get("Content-Range", "*/0").rpartition("/")[2])
            body = b""
        else:
            r.raise_for_status()
            body = await r.read()
            if r.status == 206:
                size = int(r.headers["Content-Range"].rpartition("/")[2])
            else:  # the server ignored the range and sent everything
                size = len(body)
                body = body[start:stop]
    want = max(0, min(stop, size) - start)
    if len(body) != want:
        raise ShortReadError(f"origin returned {len(body)} bytes for {want}")
    info: dict[str, Any] = {"name": url, "size": size, "type": "file"}
    for field in ("ETag", "Last-Modified"):
        if r.headers.get(field):
            info[field] = r.headers[field]
    return info, body
