"""HTTP/1.1 as plain functions over bytes: no sockets here (sans-IO).

The receive path sends one ``GET`` at a time on a keep-alive connection and
reads back a head (status line and fields) followed by a body of a known
``Content-Length``. This module writes the request and parses the head; the
I/O lives in :mod:`cachefs.receive.protocol`. Everything here is a function
of its arguments, so it is tested without a server: heads split across reads,
garbled status lines, bad lengths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "HEAD_LIMIT",
    "HTTPProtocolError",
    "Head",
    "parse_content_range",
    "parse_head",
    "request_head",
]

#: Largest response head accepted (status line and fields), in bytes.
HEAD_LIMIT = 64 * 2**10

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_B = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)$")


class HTTPProtocolError(ConnectionError):
    """The peer sent something that is not an HTTP/1.1 response.

    A connection error (hence retried): a proxy or a server that garbles one
    response may answer the next one well, and nothing of it is kept.
    """


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed response head.

    Attributes
    ----------
    status
        The status code.
    reason
        The reason phrase (may be empty).
    minor
        The HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    fields
        Field values by lower-case name; repeated fields joined by ``", "``.
    """

    status: int
    reason: str
    minor: int
    fields: Mapping[str, str]

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return field ``name`` (any case), or ``default``."""
        return self.fields.get(name.lower(), default)

    @property
    def length(self) -> int | None:
        """The body's ``Content-Length``, or ``None`` if not given.

        Raises
        ------
        HTTPProtocolError
            If it is not a non-negative integer, or repeated with two values.
        """
        value = self.fields.get("content-length")
        if value is None:
            return None
        values = {v.strip() for v in value.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise HTTPProtocolError(f"bad Content-Length {value!r}")
        return int(values.pop())

    @property
    def chunked(self) -> bool:
        """Whether the body uses a transfer coding (chunked or other)."""
        coding = self.fields.get("transfer-encoding", "").strip().lower()
        return coding not in ("", "identity")

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one."""
        tokens = {
            t.strip().lower() for t in self.fields.get("connection", "").split(",")
        }
        if self.minor == 0:
            return "keep-alive" in tokens
        return "close" not in tokens


def parse_head(data: bytes | bytearray | memoryview) -> tuple[Head, int] | None:
    """Parse the response head at the start of ``data``.

    Returns ``(head, consumed)`` once the blank line that ends the head has
    arrived (bytes past ``consumed`` belong to the body), else ``None``.

    Raises
    ------
    HTTPProtocolError
        If the status line or a field is malformed, or the head exceeds
        :data:`HEAD_LIMIT` without ending.
    """
    raw = bytes(data[: HEAD_LIMIT + 4]) if not isinstance(data, bytes) else data
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        if len(raw) > HEAD_LIMIT:
            raise HTTPProtocolError(f"response head longer than {HEAD_LIMIT} bytes")
        if raw and not b"HTTP/1.".startswith(raw[:7]):
            raise HTTPProtocolError(f"not an HTTP/1 response: {raw[:40]!r}")
        return None
    lines = raw[:end].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise HTTPProtocolError(f"bad status line {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN_B.fullmatch(name) is None:
            # Includes obsolete line folding (a leading space), as h11 does.
            raise HTTPProtocolError(f"bad header field {line[:80]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    reason = (match.group(3) or b"").decode("latin-1")
    head = Head(int(match.group(2)), reason, int(match.group(1)), fields)
    return head, end + 4


def request_head(method: str, target: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """Return the bytes of a request head: request line, fields, blank line.

    Raises
    ------
    ValueError
        If a field name is not a token or a value holds CR, LF or NUL (it
        would split the request), naming the field.
    """
    if _BAD_VALUE.search(target) or " " in target or not target:
        raise ValueError(f"request target {target!r} is not a valid HTTP target")
    out = [f"{method} {target} HTTP/1.1"]
    for name, value in fields:
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"HTTP header name {name!r} is not a valid token")
        if _BAD_VALUE.search(value):
            raise ValueError(f"HTTP header {name!r} has a line break or NUL")
        out.append(f"{name}: {value}")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


def parse_content_range(value: str) -> tuple[int, int, int | None] | None:
    """Parse ``bytes FIRST-LAST/TOTAL``; ``TOTAL`` may be ``*`` (``None``).

    Returns ``None`` for anything else (another unit, a missing part, an
    unsatisfied-range form ``bytes */TOTAL``), or when LAST < FIRST.
    """
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        return None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, last, total
