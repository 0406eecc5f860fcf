"""A small HTTP origin for ``cachefs demo``: in-memory files on loopback.

It serves what fsspec's HTTP filesystem needs (HEAD, single byte ranges,
strong ETags), waits ``latency`` seconds before answering each request (the
round trip to remote storage) and counts the body bytes it sends. It runs an
aiohttp application on ``127.0.0.1`` (port 0) in a daemon thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Mapping

from aiohttp import web

from cachefs.testing.loopback import LoopbackServer

__all__ = ["DemoOrigin"]

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_PIECE = 256 * 1024  # bytes written at a time


class DemoOrigin(LoopbackServer):
    """Serve ``files`` (path -> bytes) over HTTP with a per-request latency.

    Parameters
    ----------
    files
        The files, by path (``"shards/shard-0000.tar"``).
    latency
        Seconds each request waits before it is answered.
    """

    def __init__(self, files: Mapping[str, bytes], latency: float = 0.0) -> None:
        super().__init__()
        self.files = {path.strip("/"): bytes(data) for path, data in files.items()}
        self.etags = {
            path: '"' + hashlib.blake2b(data, digest_size=8).hexdigest() + '"'
            for path, data in self.files.items()
        }
        self.latency = latency
        self.requests = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()

    def url_for(self, path: str) -> str:
        """Return the URL of ``path``."""
        return f"{self.url}/{path.strip('/')}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        path = request.match_info["tail"]
        data = self.files.get(path)
        with self._lock:
            self.requests += 1
        if data is None:
            return web.Response(status=404, text="not found")
        size = len(data)
        headers = {
            "ETag": self.etags[path],
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, stop, status = 0, size, 200
        match = _RANGE.match(request.headers.get("Range", "").replace(" ", ""))
        if match and any(match.groups()):
            first, last = match.groups()
            if first:
                start, stop = int(first), min(int(last) + 1, size) if last else size
            else:  # a suffix: the last N bytes
                start = max(size - int(last), 0)
            if start >= size or stop <= start:
                headers["Content-Range"] = f"bytes */{size}"
                return web.Response(status=416, headers=headers)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = stop - start
        await response.prepare(request)
        if request.method == "GET":
            body = memoryview(data)[start:stop]
            for pos in range(0, len(body), _PIECE):
                await response.write(body[pos : pos + _PIECE])
            with self._lock:
                self.bytes_sent += stop - start
        await response.write_eof()
        return response
