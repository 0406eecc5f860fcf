"""A configurable HTTP origin server for tests and benchmarks.

`HTTPOrigin` serves an in-memory mapping of files and/or a directory tree on
loopback from an aiohttp application running in a background thread. It
implements the parts of HTTP that :class:`fsspec.implementations.http.
HTTPFileSystem` relies on (HEAD, single byte ranges, strong ETags, HTML
directory indexes) and can inject latency, bandwidth limits and faults.
`make_shards` makes the deterministic files it usually serves.

Only core dependencies are imported here; :func:`make_shards` alone needs
numpy (the ``test`` and ``bench`` extras), imported when called.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import os
import random
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from cachefs.testing.loopback import LoopbackServer

__all__ = ["FAULT_KINDS", "HTTPOrigin", "OriginStats", "make_shards"]

#: Accepted values of `HTTPOrigin.fault_kind`.
FAULT_KINDS = frozenset({"503", "429", "reset", "stall", "short"})
_CHUNK = 64 * 1024
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True)
class OriginStats:
    """Snapshot of the request counters of an `HTTPOrigin`.

    Attributes
    ----------
    requests : int
        All requests handled (any method, any status).
    get_requests : int
        GET requests, including directory listings and 404s.
    head_requests : int
        HEAD requests.
    bytes_sent : int
        File body bytes actually written for GET requests (listings and error
        bodies are not counted).
    faults : int
        Faults injected.
    max_concurrent : int
        Highest number of requests in flight at the same time.
    bytes_by_path : Mapping[str, int]
        `bytes_sent` broken down by file path (no leading slash).
    """

    requests: int = 0
    get_requests: int = 0
    head_requests: int = 0
    bytes_sent: int = 0
    faults: int = 0
    max_concurrent: int = 0
    bytes_by_path: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    size: int
    etag: str
    mtime: float
    data: bytes | None = None
    disk_path: Path | None = None


class _Abort(Exception):
    """Raised inside a handler to drop the connection without a response."""


class _Unsatisfiable(Exception):
    """Raised by `_parse_range` for a range that starts past the end."""


def _etag(data: bytes) -> str:
    return '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"'


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return ``(start, stop)`` for a single byte range, or None to ignore it."""
    match = _RANGE_RE.match(header) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        if int(last) == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - int(last)), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, size if not last else min(int(last) + 1, size)


def _drop(request: web.BaseRequest, reset: bool) -> None:
    """Close the client connection; with `reset`, send a TCP RST if possible."""
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(AttributeError, OSError):
            linger = struct.pack("ii", 1, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        transport.abort()
    else:
        transport.close()


class HTTPOrigin(LoopbackServer):
    """HTTP/1.1 origin server on ``127.0.0.1`` running in a daemon thread.

    Parameters
    ----------
    files : Mapping[str, bytes], optional
        In-memory files, keyed by path such as ``"data/shard-0000.tar"``.
    root : str or os.PathLike, optional
        Directory served from disk, read at request time. In-memory files take
        precedence over files on disk with the same path.
    latency : float, default 0.0
        Seconds slept before sending the headers of every response.
    bandwidth : float, optional
        Cap on body bytes per second for each response; None for no cap.
    fault_rate : float, default 0.0
        Fraction of GET requests for files that fail (HEAD requests and
        directory listings never fail).
    fault_kind : str, default "503"
        ``"503"`` or ``"429"`` (status with ``Retry-After: 0``), ``"reset"``
        (connection reset before the headers), ``"stall"`` (sleep
        `stall_seconds`, then answer normally) or ``"short"`` (full
        Content-Length, connection closed after half of the body).
    stall_seconds : float, default 30.0
        Duration of a ``"stall"`` fault.
    seed : int, default 0
        Seed of the random generator that picks failing requests; each GET of a
        file draws one number, so sequential runs are reproducible.

    Notes
    -----
    All these settings are plain attributes read at request time and may be
    changed while the server runs; assigning `seed` restarts the generator.
    """

    def __init__(
        self,
        files: Mapping[str, bytes] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        latency: float = 0.0,
        bandwidth: float | None = None,
        fault_rate: float = 0.0,
        fault_kind: str = "503",
        stall_seconds: float = 30.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._files: dict[str, _Entry] = {}
        self._disk_etags: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._root = Path(root) if root is not None else None
        self.latency = latency
        self.bandwidth = bandwidth
        if fault_kind not in FAULT_KINDS:
            raise ValueError(f"fault_kind must be one of {sorted(FAULT_KINDS)}")
        self.fault_rate = fault_rate
        self.fault_kind = fault_kind
        self.stall_seconds = stall_seconds
        self._rng = random.Random(seed)
        self._seed = seed
        self._in_flight = 0
        self._stats = OriginStats()
        self._by_path: dict[str, int] = {}
        for path, data in (files or {}).items():
            self.set_file(path, data)

    @property
    def seed(self) -> int:
        """Seed of the fault generator; assigning it (again) restarts the sequence."""
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        with self._lock:
            self._seed = seed
            self._rng.seed(seed)

    def set_file(self, path: str, data: bytes) -> None:
        """Create or replace the in-memory file `path` (new ETag and mtime).

        Parameters
        ----------
        path : str
            File path, with or without a leading slash.
        data : bytes
            New content.
        """
        key = path.strip("/")
        data = bytes(data)
        with self._lock:
            old = self._files.get(key)
            # Keep Last-Modified strictly increasing (it has 1 s resolution).
            mtime = time.time() if old is None else max(time.time(), old.mtime + 1)
            self._files[key] = _Entry(len(data), _etag(data), mtime, data=data)

    def remove_file(self, path: str) -> None:
        """Remove the in-memory file `path`; raise KeyError if absent."""
        with self._lock:
            del self._files[path.strip("/")]

    # -- addresses ---------------------------------------------------------

    def url_for(self, path: str) -> str:
        """Return the full, percent-encoded URL of `path`."""
        return f"{self.url}/{quote(path.lstrip('/'))}"

    # -- statistics --------------------------------------------------------

    @property
    def stats(self) -> OriginStats:
        """Consistent snapshot of the counters (see `OriginStats`)."""
        with self._lock:
            return replace(self._stats, bytes_by_path=dict(self._by_path))

    @property
    def max_concurrent(self) -> int:
        """Highest number of requests in flight at once since the last reset."""
        with self._lock:
            return self._stats.max_concurrent

    def reset_stats(self) -> None:
        """Zero all counters (the fault generator is not re-seeded)."""
        with self._lock:
            self._stats = OriginStats(max_concurrent=self._in_flight)
            self._by_path = {}

    def _bump(self, **deltas: int) -> None:
        with self._lock:
            new = {k: getattr(self._stats, k) + v for k, v in deltas.items()}
            self._stats = replace(self._stats, **new)

    def _count_bytes(self, key: str, n: int) -> None:
        with self._lock:
            self._by_path[key] = self._by_path.get(key, 0) + n
            self._stats = replace(self._stats, bytes_sent=self._stats.bytes_sent + n)

    # -- request handling --------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, raising `_Abort` as soon as the server is shutting down."""
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return
        raise _Abort

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
            peak = max(self._stats.max_concurrent, self._in_flight)
            self._stats = replace(self._stats, max_concurrent=peak)
        is_get = request.method == "GET"
        self._bump(requests=1, get_requests=int(is_get), head_requests=int(not is_get))
        try:
            return await self._respond(request, request.path.lstrip("/"))
        except _Abort:
            _drop(request, reset=True)
            return web.Response(status=503)  # never reaches the client
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _respond(self, request: web.Request, rel: str) -> web.StreamResponse:
        if self.latency > 0:
            await self._sleep(self.latency)
        key = rel.rstrip("/")
        entry = None if rel.endswith("/") or not key else await self._lookup(key)
        if entry is None:
            children = self._children(key)
            if children is None:
                return web.Response(status=404, text="404: Not Found")
            return self._listing(key, children)
        headers = {
            "ETag": entry.etag,
            "Last-Modified": formatdate(entry.mtime, usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        fault = self._draw_fault() if request.method == "GET" else None
        if fault in ("503", "429"):
            retry = {"Retry-After": "0"} if fault == "429" else {}
            return web.Response(status=int(fault), text="injected fault", headers=retry)
        if fault == "reset":
            raise _Abort
        if fault == "stall":
            await self._sleep(self.stall_seconds)
        inm = request.headers.get("If-None-Match")
        if inm and (inm.strip() == "*" or entry.etag in re.split(r"\s*,\s*", inm)):
            return web.Response(status=304, headers=headers)
        status, start, stop = 200, 0, entry.size
        if request.method == "GET":
            try:
                span = _parse_range(request.headers.get("Range"), entry.size)
            except _Unsatisfiable:
                headers["Content-Range"] = f"bytes */{entry.size}"
                return web.Response(status=416, headers=headers)
            if span is not None:
                status, (start, stop) = 206, span
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{entry.size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = stop - start
        await resp.prepare(request)
        if request.method == "GET":
            end = start + (stop - start) // 2 if fault == "short" else stop
            await self._stream(resp, key, entry, start, end)
            if fault == "short":
                _drop(request, reset=False)
                return resp
        await resp.write_eof()
        return resp

    def _draw_fault(self) -> str | None:
        with self._lock:
            hit = self._rng.random() < self.fault_rate
        if not hit:
            return None
        if self.fault_kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault_kind {self.fault_kind!r}")
        self._bump(faults=1)
        return self.fault_kind

    async def _stream(
        self, resp: web.StreamResponse, key: str, entry: _Entry, start: int, stop: int
    ) -> None:
        if entry.data is not None:
            view = memoryview(entry.data)[start:stop]
        else:
            view = memoryview(await asyncio.to_thread(_read_disk, entry, start, stop))
        loop = asyncio.get_running_loop()
        bandwidth, t0 = self.bandwidth, loop.time()
        for pos in range(0, len(view), _CHUNK):
            chunk = view[pos : pos + _CHUNK]
            # Count before writing so a client never sees bytes not yet counted;
            # a chunk the socket refuses is taken back.
            self._count_bytes(key, len(chunk))
            try:
                await resp.write(chunk)
            except ConnectionError:
                self._count_bytes(key, -len(chunk))
                raise
            if bandwidth:
                delay = t0 + (pos + len(chunk)) / bandwidth - loop.time()
                if delay > 0:
                    await self._sleep(delay)

    async def _lookup(self, key: str) -> _Entry | None:
        with self._lock:
            entry = self._files.get(key)
        if entry is None and self._root is not None:
            entry = await asyncio.to_thread(self._disk_entry, key)
        return entry

    def _disk_path(self, key: str) -> Path | None:
        parts = key.split("/") if key else []
        if self._root is None or any(p in ("", ".", "..") for p in parts):
            return None
        return self._root.joinpath(*parts)

    def _disk_entry(self, key: str) -> _Entry | None:
        path = self._disk_path(key)
        try:
            st = path.stat() if path is not None else None
        except OSError:
            return None
        if path is None or st is None or not stat.S_ISREG(st.st_mode):
            return None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._disk_etags.get(key)
        if cached is None or cached[0] != signature:
            cached = (signature, _etag(path.read_bytes()))
            with self._lock:
                self._disk_etags[key] = cached
        return _Entry(st.st_size, cached[1], st.st_mtime, disk_path=path)

    def _children(self, key: str) -> dict[str, bool] | None:
        """Map direct child name -> is_directory, or None if `key` is no dir."""
        prefix = key + "/" if key else ""
        out: dict[str, bool] = {}
        with self._lock:
            names = list(self._files)
        for name in names:
            if name.startswith(prefix):
                child, sep, _ = name[len(prefix) :].partition("/")
                out[child] = out.get(child, False) or bool(sep)
        path = self._disk_path(key)
        on_disk = path is not None and path.is_dir()
        if path is not None and on_disk:
            with os.scandir(path) as it:
                for item in it:
                    out[item.name] = out.get(item.name, False) or item.is_dir()
        return out if out or on_disk or not key else None

    @staticmethod
    def _listing(key: str, children: Mapping[str, bool]) -> web.Response:
        base = f"/{key}/" if key else "/"
        links = "".join(
            f'<li><a href="{html.escape(quote(base + name + "/" * is_dir))}">'
            f"{html.escape(name)}</a></li>\n"
            for name, is_dir in sorted(children.items())
        )
        body = (
            f"<!DOCTYPE html>\n<html><head><title>Index of {html.escape(base)}"
            f"</title></head>\n<body><ul>\n{links}</ul></body></html>\n"
        )
        return web.Response(text=body, content_type="text/html")


def _read_disk(entry: _Entry, start: int, stop: int) -> bytes:
    assert entry.disk_path is not None
    with open(entry.disk_path, "rb") as f:
        f.seek(start)
        return f.read(stop - start)


def make_shards(
    n: int, size: int, seed: int = 0, prefix: str = "shards/"
) -> dict[str, bytes]:
    """Generate deterministic pseudo-random files.

    Parameters
    ----------
    n : int
        Number of files.
    size : int
        Size of each file in bytes.
    seed : int, default 0
        Seed of :func:`numpy.random.default_rng`.
    prefix : str, default "shards/"
        Prepended to every name.

    Returns
    -------
    dict[str, bytes]
        ``{f"{prefix}shard-{i:04d}.bin": content}`` for ``i`` in ``range(n)``.

    Raises
    ------
    ImportError
        If numpy is not installed (it is in the ``test`` and ``bench`` extras).
    """
    # Imported here: numpy is no core dependency, and the bytes must stay
    # those numpy's generator gives (benchmark references were made with them).
    import numpy as np

    rng = np.random.default_rng(seed)
    return {f"{prefix}shard-{i:04d}.bin": rng.bytes(size) for i in range(n)}
