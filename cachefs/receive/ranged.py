"""One ranged GET whose body lands in chunk buffers, checked like any other.

:func:`stream_range` sends ``GET`` with ``Range`` and ``Accept-Encoding:
identity`` on a pooled connection, checks the head (status, encoding,
Content-Range against the range asked, size and ETag against the version
read) and lands each ``piece``-aligned part of the body in its own landing
buffer, which is handed to the reader as is: the kernel's copy out of the
socket is the only one.

A response this small client does not read (a redirect, a chunked or
close-delimited body, a 1xx) raises :class:`Unsupported` before any byte is
delivered; the fetcher then asks fsspec's general client.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cachefs.errors import (
    OriginResponseError,
    ShortReadError,
    StaleVersionError,
    status_class,
)
from cachefs.receive.parse import Head, request_head
from cachefs.receive.pool import ConnectionPool, Endpoint
from cachefs.receive.read import RangeRead, check_content_range, total_of

__all__ = ["DirectGet", "Unsupported", "stream_range"]


class Unsupported(Exception):
    """The response needs a general HTTP client; nothing was delivered."""


@dataclass(frozen=True, slots=True)
class DirectGet:
    """A GET the direct client can send: where, what, with which fields.

    Attributes
    ----------
    endpoint
        Host, port and TLS context.
    target
        The request target: the URL's encoded path and query.
    fields
        Request header fields (``Host`` first), before ``Range``.
    url
        The URL, for messages and ``FileNotFoundError``.
    """

    endpoint: Endpoint
    target: str
    fields: tuple[tuple[str, str], ...]
    url: str

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The TLS context, or ``None`` for plain HTTP."""
        return self.endpoint.tls


async def stream_range(
    pool: ConnectionPool,
    get: DirectGet,
    read: RangeRead,
    *,
    on_bytes: Callable[[int], None],
    size_of: Callable[[], Awaitable[int]],
    if_match: str | None = None,
) -> None:
    """Read ``[read.pos, read.stop)`` with one GET; deliver parts as they land.

    Parameters
    ----------
    pool
        Where the connection comes from and goes back to.
    get
        The request.
    read
        The read in progress: checked against, delivered to, advanced.
    on_bytes
        Called with the number of body bytes of each part delivered.
    size_of
        Returns the file's size when a 416 does not say it.
    if_match
        An ETag sent as ``If-Match``: a 412 answer is then a changed file.

    Raises
    ------
    Unsupported
        Before delivering anything, for a response this client does not read.
    FileNotFoundError, PermissionError, ConnectionError, TimeoutError, OSError
        For error statuses, as :func:`cachefs.errors.status_class` maps them.
    OriginResponseError, StaleVersionError, ShortReadError
        As the checks find.
    """
    fields = [
        *get.fields,
        ("Range", f"bytes={read.pos}-{read.stop - 1}"),
        ("Accept-Encoding", "identity"),
    ]
    if if_match is not None:
        fields.append(("If-Match", if_match))
    request = request_head("GET", get.target, fields)
    async with pool.request(get.endpoint, request) as (conn, head):
        size = await _check_head(read, head, get.url, size_of, if_match)
        hi = read.end()
        if head.status == 416 or size is None or hi <= read.pos:
            return
        sizes = []
        pos = read.pos
        while pos < hi:
            n = min(read.piece - pos % read.piece, hi - pos)
            sizes.append(n)
            pos += n
        length = head.length
        assert length is not None
        conn.receive(
            length,
            read.pos if head.status == 200 else 0,
            sizes,
            hold_back=read.pace is not None,
        )
        for k, n in enumerate(sizes, 1):
            try:
                view = await conn.next_piece()
            except ShortReadError as exc:
                raise ShortReadError(f"{exc} of {read.what()}") from exc
            on_bytes(n)
            read.deliver(view)
            if read.pace is not None and k < len(sizes):
                await read.pace()


async def _check_head(
    read: RangeRead,
    head: Head,
    url: str,
    size_of: Callable[[], Awaitable[int]],
    if_match: str | None,
) -> int | None:
    """Check a response head against the read; return the file's size.

    Also tells ``read`` what the head says of the file (``read.seen``).
    """
    status = head.status
    if status in (404, 410):
        raise FileNotFoundError(url)
    if status == 412 and if_match is not None:
        raise StaleVersionError(
            f"{read.path} changed at the origin (ETag is no longer {if_match}); "
            "reopen it to read the new version"
        )
    if status < 200 or 300 <= status < 400:
        raise Unsupported(f"HTTP {status}")  # interim or redirect
    if status >= 400 and status != 416:
        kind = status_class(status)
        raise kind.builtin(f"{read.what()}: HTTP {status} {head.reason}".rstrip())
    encoding = (head.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise OriginResponseError(
            f"{read.what()}: the origin sent a {encoding}-encoded body "
            "although the identity encoding was asked for; its length "
            "is not the file's, so it is refused"
        )
    if status == 416:  # the range starts past the end
        size = total_of(head.get("Content-Range"))
        if size is None:
            size = await size_of()
    elif status in (200, 206):
        if head.chunked or head.length is None:
            raise Unsupported("a body without Content-Length")
        if status == 206:
            size = check_content_range(
                read, head.get("Content-Range") or "", head.length
            )
        else:  # the server ignored the range: the whole file
            size = head.length
    else:
        raise OriginResponseError(f"{read.what()}: unexpected HTTP status {status}")
    info: dict[str, Any] = {"name": url, "size": size, "type": "file"}
    for field in ("ETag", "Last-Modified"):
        value = head.get(field)
        if value:
            info[field] = value
    read.seen(info)
    return size
