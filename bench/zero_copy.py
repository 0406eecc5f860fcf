"""The zero-copy receive reference of ``cold_fill``: a minimal HTTP/1.1 range client.

One :class:`asyncio.BufferedProtocol` per keep-alive connection. Headers are
received into a 1 KiB scratch buffer (so at most that many body bytes are
ever copied, once per response); from then on ``get_buffer`` hands the
kernel a slice of the 4 MiB buffer the range lands in, so every other byte
goes from the socket straight into its buffer. The client is deliberately
minimal (fixed request headers, ``Content-Length`` bodies only, ``206`` and
the exact length checked), which is what makes it the floor a real client's
receive path is measured against.

:func:`fetch_ranges` runs ``connections`` such connections over a list of
``(path, start, stop)`` ranges; with ``write_to`` every landed range is also
written once (``os.pwrite``) into a file per path, on the caller's
filesystem: the "receive + write per chunk" reference.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

__all__ = ["RangeProtocol", "fetch_ranges"]

HEADER_BUFFER = 1024
CHUNK = 4 * 2**20


class RangeProtocol(asyncio.BufferedProtocol):
    """Receive one ranged response at a time into a caller's buffer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._head = bytearray(HEADER_BUFFER)
        self._head_len = 0
        self._body: memoryview | None = None
        self._want = 0
        self._got = 0
        self._done: asyncio.Future[int] | None = None
        self._in_body = False
        self.header_copied = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc or ConnectionError("connection closed"))

    def request(
        self, head: bytes, into: memoryview, length: int
    ) -> asyncio.Future[int]:
        """Send a request ``head``; the body of ``length`` bytes lands in ``into``."""
        assert self.transport is not None
        self._body, self._want, self._got = into, length, 0
        self._head_len, self._in_body = 0, False
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(head)
        return self._done

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._in_body and self._got < self._want:
            assert self._body is not None
            return self._body[self._got : self._want]
        if self._head_len == len(self._head):
            self._head.extend(bytes(HEADER_BUFFER))
        return memoryview(self._head)[self._head_len :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._in_body:
            self._got += nbytes
        else:
            self._head_len += nbytes
            end = self._head.find(b"\r\n\r\n", 0, self._head_len)
            if end < 0:
                return
            self._start_body(end + 4)
        done = self._done
        if self._got >= self._want and done is not None and not done.done():
            done.set_result(self._got)

    def _start_body(self, header_end: int) -> None:
        head = bytes(self._head[:header_end]).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        fields = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (ln.partition(":") for ln in lines if ln)
        )
        error = None
        if status_line.split(" ", 2)[1:2] != ["206"]:
            error = f"expected 206, got {status_line!r}"
        elif int(fields.get("content-length", -1)) != self._want:
            error = f"content-length {fields.get('content-length')} != {self._want}"
        if error is not None:
            assert self._done is not None
            self._done.set_exception(OSError(error))
            assert self.transport is not None
            self.transport.close()
            return
        assert self._body is not None
        extra = self._head_len - header_end
        if extra:
            # The only copy: body bytes that came with the headers (< 1 KiB).
            self._body[:extra] = self._head[header_end : self._head_len]
            self.header_copied += extra
        self._got, self._in_body = extra, True


async def fetch_ranges(
    host: str,
    port: int,
    ranges: Sequence[tuple[str, int, int]],
    *,
    connections: int = 16,
    write_to: Callable[[str], str] | None = None,
) -> dict[str, int]:
    """Fetch every ``(path, start, stop)`` range over ``connections`` connections.

    Parameters
    ----------
    host, port
        The HTTP/1.1 origin (keep-alive, ``Range`` requests).
    ranges
        URL paths (``/name``) and byte spans, each at most :data:`CHUNK` long.
    connections
        Requests in flight (one per connection).
    write_to
        When given, maps a URL path to a local file name; each landed range
        is written once at its offset there (``os.pwrite``).

    Returns
    -------
    dict
        ``bytes`` landed and ``header_copied`` (body bytes that arrived with
        the headers and were copied once).
    """
    queue: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
    for r in ranges:
        queue.put_nowait(r)
    fds: dict[str, int] = {}
    if write_to is not None:
        for path in {p for p, _, _ in ranges}:
            fds[path] = os.open(write_to(path), os.O_WRONLY | os.O_CREAT, 0o600)
    totals = {"bytes": 0, "header_copied": 0}
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        transport, proto = await loop.create_connection(RangeProtocol, host, port)
        buf = memoryview(bytearray(CHUNK))
        try:
            while True:
                try:
                    path, start, stop = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                head = (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Range: bytes={start}-{stop - 1}\r\n\r\n"
                ).encode()
                n = await proto.request(head, buf, stop - start)
                if path in fds:
                    os.pwrite(fds[path], buf[:n], start)
                totals["bytes"] += n
        finally:
            totals["header_copied"] += proto.header_copied
            transport.close()

    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
    finally:
        for fd in fds.values():
            os.close(fd)
    return totals
