"""An HTTP origin that misbehaves on purpose, in a process of its own.

Real origins and the proxies in front of them do not always answer what was
asked: a range shifted, a gzip body, a file that shrank between two reads, a
connection that never answers. This server plays each of those, chosen by the
first segment of the request path, so that tests can prove every byte the
cache serves is the origin's and every wait ends::

    GET /<mode>/<name>      serve file <name> the way <mode> says
    PUT /_files/<name>      set (or replace) file <name> to the request body
    GET /_stats             JSON: requests per mode

Modes (``mode`` or ``mode-N`` where N is a parameter):

``plain``     correct ranged server with ETag and Last-Modified
``noetag``    correct, but no ETag nor Last-Modified
``norange``   ignores Range: 200 with the whole body and its Content-Length
``shift``     206 whose Content-Range (and body) start N bytes later than
              asked (default 1)
``gzip``      gzip body (200, whole file) when the client accepts gzip,
              identity ranges otherwise (a server with compression on)
``gzipalways`` gzip body whatever the client asked
``chunked``   200 with the whole body, chunked (no Content-Length)
``short``     206 with honest headers, the body cut at half, then closed
``reset``     headers sent, then the connection reset
``drip``      honest 206 sent N bytes at a time (default 1024), 0.2 s apart
``blackhole`` the connection is accepted and never answered
``flaky``     N % (default 30) of requests answer 503, seeded per server
``flip``      the first GET of a file serves it; every later one serves a
              new version (same size, other bytes, other ETag)

Run it with ``python -m cachefs.testing.misbehaving_origin``; it prints
``PORT <n>`` on its first line once listening on ``127.0.0.1`` (port 0:
parallel runs never collide). :class:`MisbehavingOrigin` does that for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import re
import socket
import struct
import subprocess
import sys
import urllib.request
from collections import Counter
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["MODES", "MisbehavingOrigin"]

MODES = (
    "plain",
    "noetag",
    "norange",
    "shift",
    "gzip",
    "gzipalways",
    "chunked",
    "short",
    "reset",
    "drip",
    "blackhole",
    "flaky",
    "flip",
)
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.generation: dict[str, int] = {}
        self.served: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.rng = random.Random(1234)
        self.never = asyncio.Event()


def _etag(data: bytes, generation: int) -> str:
    digest = hashlib.md5(data + struct.pack("<Q", generation), usedforsecurity=False)
    return f'"{digest.hexdigest()}"'


def _flipped(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def _span(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a ``bytes=a-b`` header; ``None`` for no range."""
    match = _RANGE.match(header or "")
    if match is None:
        return None
    start = int(match.group(1))
    stop = size if not match.group(2) else min(int(match.group(2)) + 1, size)
    return start, stop


def _reset(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _handle(request: web.Request) -> web.StreamResponse:
    state: _State = request.app["state"]
    head, _, name = request.path.lstrip("/").partition("/")
    if head == "_files" and request.method == "PUT":
        state.files[name] = await request.read()
        state.generation[name] = state.generation.get(name, 0) + 1
        return web.Response(status=204)
    if head == "_stats":
        return web.json_response(dict(state.requests))
    mode, _, param = head.partition("-")
    if mode not in MODES:
        return web.Response(status=404, text=f"unknown mode {mode!r}")
    state.requests[mode] += 1
    if mode == "blackhole":
        await state.never.wait()  # accepted, never answered
    data = state.files.get(name)
    if data is None:
        return web.Response(status=404, text="404: Not Found")
    generation = state.generation[name]
    if mode == "flip":
        state.served[name] += request.method == "GET"
        if state.served[name] > int(request.method == "GET"):
            data, generation = _flipped(data), generation + 1_000_000
    if mode == "flaky" and state.rng.random() < int(param or 30) / 100:
        return web.Response(status=503, text="injected fault")
    size = len(data)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    if mode != "noetag":
        headers["ETag"] = _etag(data, generation)
        headers["Last-Modified"] = "Mon, 01 Jan 2024 00:00:00 GMT"
    gzipped = mode == "gzipalways" or (
        mode == "gzip" and "gzip" in request.headers.get("Accept-Encoding", "")
    )
    span = (
        None
        if mode in ("norange", "chunked") or gzipped
        else _span(request.headers.get("Range"), size)
    )
    if request.method == "HEAD":
        if gzipped:
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=gzip.compress(data), headers=headers)
        return web.Response(headers={**headers, "Content-Length": str(size)})
    if span is None:
        whole = gzip.compress(data) if gzipped else data
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=200, headers=headers)
        if mode == "chunked":
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(whole)
        await resp.prepare(request)
        await resp.write(whole)
        await resp.write_eof()
        return resp
    start, stop = span
    if start >= size:
        # As many servers do, a 416 carries no validators: only the total.
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    if mode == "shift":
        start = min(start + int(param or 1), size - 1)
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    resp = web.StreamResponse(status=206, headers=headers)
    resp.content_length = stop - start
    await resp.prepare(request)
    body = memoryview(data)[start:stop]
    if mode == "reset":
        await resp.write(b"")
        _reset(request)
        return resp
    if mode == "short":
        await resp.write(body[: len(body) // 2])
        _reset(request)
        return resp
    if mode == "drip":
        step = int(param or 1024)
        for pos in range(0, len(body), step):
            await resp.write(body[pos : pos + step])
            await asyncio.sleep(0.2)
    else:
        await resp.write(body)
    await resp.write_eof()
    return resp


async def _serve() -> None:
    app = web.Application(client_max_size=1 << 30)
    app["state"] = _State()
    app.router.add_route("*", "/{tail:.*}", _handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    await web.SockSite(runner, sock).start()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    # Serve until the parent closes our stdin (or kills us).
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


class MisbehavingOrigin:
    """Run the misbehaving origin in a child process for the ``with`` block.

    Examples
    --------
    >>> with MisbehavingOrigin() as origin:  # doctest: +SKIP
    ...     origin.put("a.bin", b"x" * 100)
    ...     url = origin.url("shift", "a.bin")
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> Self:
        """Start the server process and wait until it listens."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cachefs.testing.misbehaving_origin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"misbehaving origin failed to start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def url(self, mode: str, name: str) -> str:
        """Return the URL of ``name`` served the way ``mode`` says."""
        return f"http://127.0.0.1:{self.port}/{mode}/{name}"

    def put(self, name: str, data: bytes) -> None:
        """Set or replace file ``name`` (every mode serves the same files)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_files/{name}", data=data, method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def requests(self) -> dict[str, int]:
        """Return how many requests each mode has answered (or swallowed)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/_stats", timeout=10
        ) as resp:
            counts: dict[str, int] = json.loads(resp.read())
        return counts

    def stop(self) -> None:
        """Stop the server process."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    asyncio.run(_serve())
