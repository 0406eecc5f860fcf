"""One ranged read in progress, and the checks every response must pass.

:class:`RangeRead` says where a read is (a retry resumes at its first byte
not yet delivered) and what it learned of the file; the functions check a
response's Content-Range and version against it. Both receive paths (the
direct client of :mod:`cachefs.receive.ranged` and the general ones in
:mod:`cachefs.fetch`) use them, so a response is held to the same rules
whichever client read it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cachefs.chunks import version_token
from cachefs.errors import OriginResponseError, StaleVersionError
from cachefs.receive.parse import parse_content_range

__all__ = ["RangeRead", "check_content_range", "check_version", "total_of"]


@dataclass(slots=True)
class RangeRead:
    """One ranged read in progress: where it is, and what it has learned.

    A retry resumes at :attr:`pos`. Once the file's size and version are
    known (given, or learned from the first response), every response must
    agree with them: a file that changed size or ETag under the read is a
    :class:`StaleVersionError`, never a read that ends early or mixes bytes.
    """

    path: str
    pos: int
    stop: int
    piece: int
    on_piece: Callable[[int, bytes | memoryview], None]
    token: str | None = None
    on_info: Callable[[dict[str, Any]], None] | None = None
    size: int | None = None
    learned: bool = False
    #: Awaited after each part is delivered, before the next is received:
    #: the pace of whatever takes the parts (the disk writer), or ``None``.
    pace: Callable[[], Awaitable[None]] | None = None

    def seen(self, info: dict[str, Any]) -> None:
        """Check a response's info against the version; note it the first time."""
        check_version(self.path, info, self.token)
        size = int(info["size"])
        if self.size is not None and size != self.size:
            raise StaleVersionError(
                f"{self.path} changed at the origin: it now has {size} bytes, "
                f"the version being read has {self.size}; reopen it to read "
                "the new version"
            )
        if not self.learned:
            self.learned = True
            self.size = size
            self.token = self.token or version_token(info)
            if self.on_info is not None:
                self.on_info(info)

    def what(self) -> str:
        """Name the read in messages: URL and byte range."""
        return f"{self.path} bytes {self.pos}-{self.stop - 1}"

    def end(self) -> int:
        """Return where the read stops (the range's end, clipped to the file)."""
        return self.stop if self.size is None else min(self.stop, self.size)

    def etag(self) -> str | None:
        """Return the ETag the read must match, if its version has one."""
        token = self.token
        return token[5:] if token and token.startswith("ETag:") else None

    def next_part(self, hi: int) -> int:
        """Return the length of the next ``piece``-aligned part before ``hi``."""
        return min(self.piece - self.pos % self.piece, hi - self.pos)

    def deliver(self, data: bytes | memoryview) -> None:
        """Hand the part at :attr:`pos` to the reader and move past it."""
        self.on_piece(self.pos, data)
        self.pos += len(data)

    def deliver_all(self, whole: memoryview, base: int, hi: int) -> None:
        """Deliver ``[pos, hi)`` from ``whole`` (file bytes from ``base``).

        Parts are ``piece``-aligned slices of ``whole``: no copy.
        """
        while self.pos < hi:
            n = self.next_part(hi)
            self.deliver(whole[self.pos - base : self.pos - base + n])


def total_of(content_range: str | None) -> int | None:
    """Return the total of ``bytes .../TOTAL``, or ``None`` if it has none."""
    total = (content_range or "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def check_content_range(read: RangeRead, header: str, length: int | None) -> int:
    """Check a partial response covers exactly the range asked; return the size.

    ``bytes FIRST-LAST/TOTAL`` must start at the first byte asked, end at the
    last byte asked (or the file's last), and agree with the body's length.
    """
    parsed = parse_content_range(header)
    if parsed is None:
        raise OriginResponseError(
            f"{read.what()}: the origin's Content-Range {header!r} is not "
            "'bytes FIRST-LAST/TOTAL'"
        )
    first, last, total = parsed
    total = total if total is not None else read.size
    if total is None:
        raise OriginResponseError(
            f"{read.what()}: the origin's Content-Range {header!r} gives no size"
        )
    if read.size is not None and total != read.size:
        return total  # the file changed: RangeRead.seen says so
    want_last = min(read.stop, total) - 1
    if first != read.pos or last != want_last:
        raise OriginResponseError(
            f"{read.what()}: the origin answered Content-Range {header!r}, "
            f"not bytes {read.pos}-{want_last}"
        )
    if length is not None and length != last - first + 1:
        raise OriginResponseError(
            f"{read.what()}: Content-Range {header!r} but {length} body bytes"
        )
    return total


def check_version(path: str, info: dict[str, Any], token: str | None) -> None:
    """Refuse ``info`` whose ETag is not the one ``token`` names."""
    etag = info.get("ETag")
    if token is None or etag is None or not token.startswith("ETag:"):
        return
    if f"ETag:{str(etag).strip()}" != token:
        raise StaleVersionError(
            f"{path} changed at the origin (ETag {etag}, expected "
            f"{token[5:]}); reopen it to read the new version"
        )
